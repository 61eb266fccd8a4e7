//! A store on a local directory: the embedded default, and a "mothership" backup on a USB disk or
//! a NAS. Same semantics as S3: whole-object atomic writes, key-ordered listing.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ObjectInfo, ObjectStore, StoreError, StoreResult};

/// Temporary files are written beside their target with this prefix and never listed.
const TEMP_PREFIX: &str = ".chatvault-tmp-";
/// Temporary files older than this are leftovers of a killed writer (a write takes seconds).
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// An object store on a local directory.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    root: PathBuf,
    /// Operations run, shared by clones (see [`ObjectStore::requests_sent`]).
    operations: Arc<AtomicU64>,
}

fn io_error(error: std::io::Error) -> StoreError {
    StoreError::Io(error.to_string())
}

impl DirectoryStore {
    /// A store rooted at `root` (created on the first write).
    pub fn new(root: PathBuf) -> Self {
        DirectoryStore {
            root,
            operations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The path of `key`, refusing keys that could escape the root (see
    /// [`validate_key`](super::validate_key)) or collide with temporary files.
    fn path_of(&self, key: &str) -> StoreResult<PathBuf> {
        super::validate_key(key)?;
        if key
            .split('/')
            .any(|segment| segment.starts_with(TEMP_PREFIX))
        {
            return Err(StoreError::Other(format!(
                "invalid object key {key:?}: segments starting with {TEMP_PREFIX:?} are reserved"
            )));
        }
        Ok(self.root.join(key))
    }

    /// Runs one operation's file work off the async threads, and counts it.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.operations.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StoreError::Io(format!("I/O task failed: {e}")))?
    }
}

/// Creates `dir` and its missing ancestors, and makes each new directory entry durable by
/// syncing its parent.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(path) = cursor {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        cursor = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Makes a directory's entries (a rename, a new file) durable. Not possible on Windows, where
/// directories cannot be opened as files; NTFS journals the metadata instead.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    if cfg!(windows) {
        return Ok(());
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `body` to a temporary file and moves it to `path`: replacing what is there, or
/// (`replace` false) only if nothing is, as one atomic step (a hard link, which fails if the
/// name exists). Returns whether it wrote.
fn write_atomically(path: &Path, body: &[u8], replace: bool) -> StoreResult<bool> {
    use std::io::Write;
    let parent = path
        .parent()
        .ok_or_else(|| StoreError::Other("object path without a parent".into()))?;
    create_dirs_durably(parent).map_err(io_error)?;
    let unique: [u8; 12] =
        crate::random::array().map_err(|_| StoreError::Io("no randomness".into()))?;
    let temp = parent.join(format!("{TEMP_PREFIX}{}", crate::hex::encode(&unique)));
    let result = (|| {
        // `create_new`: never follow or reuse whatever might already be at the temporary name.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(body)?;
        file.sync_all()?;
        drop(file);
        let written = if replace {
            std::fs::rename(&temp, path)?;
            true
        } else {
            let linked = match std::fs::hard_link(&temp, path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            std::fs::remove_file(&temp)?;
            linked
        };
        // Make the rename (or link) itself durable.
        sync_dir(parent)?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io_error)
}

/// Opens `path` for reading; `None` if it does not exist.
fn open(path: &Path) -> StoreResult<Option<std::fs::File>> {
    match std::fs::File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// Reads the whole file at `path` (object `key`), refusing it when it holds more than `max_len`
/// bytes: by the opened file's size before reading anything, and by reading at most
/// `max_len + 1` bytes, so a file that grows under the reader (or a special file without a size,
/// such as a link to `/dev/zero`) cannot take more memory.
fn read_whole(path: &Path, key: &str, max_len: u64) -> StoreResult<Option<Vec<u8>>> {
    use std::io::Read;
    let Some(file) = open(path)? else {
        return Ok(None);
    };
    let too_large = || StoreError::TooLarge {
        key: key.to_owned(),
        limit: max_len,
    };
    let len = file.metadata().map_err(io_error)?.len();
    if len > max_len {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(io_error)?;
    if body.len() as u64 > max_len {
        return Err(too_large());
    }
    Ok(Some(body))
}

/// Reads `range` of the file at `path`, clamped to its end; never more than the range's length.
fn read_range(path: &Path, range: Range<u64>) -> StoreResult<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(mut file) = open(path)? else {
        return Ok(None);
    };
    let len = file.metadata().map_err(io_error)?.len();
    let end = range.end.min(len);
    let start = range.start.min(end);
    file.seek(SeekFrom::Start(start)).map_err(io_error)?;
    let mut body = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
    file.take(end - start)
        .read_to_end(&mut body)
        .map_err(io_error)?;
    Ok(Some(body))
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> StoreResult<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue; // not a key this store wrote
        };
        if name.starts_with(TEMP_PREFIX) {
            // A writer killed mid-write leaves its temporary file; once it is old enough that no
            // live writer can own it, listing removes it (best effort).
            let stale = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let path = entry.path();
        let key = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .map(|p| p.replace(std::path::MAIN_SEPARATOR, "/"))
            .ok_or_else(|| StoreError::Other("path outside the store".into()))?;
        let file_type = entry.file_type().map_err(io_error)?;
        if file_type.is_dir() {
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            let metadata = entry.metadata().map_err(io_error)?;
            let modified_ms = metadata
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            out.push(ObjectInfo {
                key,
                size: metadata.len(),
                modified_ms,
            });
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl ObjectStore for DirectoryStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        let path = self.path_of(key)?;
        self.blocking(move || write_atomically(&path, &body, true).map(|_| ()))
            .await
    }

    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> StoreResult<bool> {
        let path = self.path_of(key)?;
        self.blocking(move || write_atomically(&path, &body, false))
            .await
    }

    async fn get(&self, key: &str, max_len: u64) -> StoreResult<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        self.blocking(move || read_whole(&path, &key, max_len))
            .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        self.blocking(move || read_range(&path, range)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        self.blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &prefix, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path_of(key)?;
        self.blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(e)),
            _ => Ok(()),
        })
        .await
    }

    fn requests_sent(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listing_removes_temporary_files_of_killed_writers_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path().to_path_buf());
        store.put("a/object", b"kept".to_vec()).await.unwrap();
        let stale = dir.path().join("a").join(format!("{TEMP_PREFIX}0001"));
        let fresh = dir.path().join("a").join(format!("{TEMP_PREFIX}0002"));
        std::fs::write(&stale, b"half a chunk").unwrap();
        std::fs::write(&fresh, b"being written").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        let listed = store.list("").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "a/object");
        assert!(!stale.exists(), "a stale temporary file is removed");
        assert!(fresh.exists(), "a recent one may belong to a live writer");
    }
}
