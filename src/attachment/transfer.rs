//! Moving attachment content between a local file and the bucket, one chunk at a time, so memory
//! stays at a few chunks whatever the file size, and an interrupted transfer resumes where it
//! stopped.
//!
//! - **Upload** hashes the file once to get its content id (the chunks' names and key), lists
//!   which chunks the bucket already has (another device's upload of the same file, or this
//!   device's interrupted one) and sends only the missing ones, in order. A kill mid-upload costs
//!   at most the chunk that was in flight. Before returning it lists again, so the reference it
//!   returns names only content that is complete in the bucket.
//! - **Download** writes verified plaintext to `<dest>.<id prefix>.part`, hashing it on the way
//!   (after a restart, the part already on disk is read back into the hash), checks the whole
//!   against its content id and renames it to `dest`. After a kill it keeps the whole chunks
//!   already written and fetches the rest. Chunks made only of padding are never fetched: the
//!   reference's exact size (authenticated inside the message) says where the content ends.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{DecodeProblem, Error, IntegrityProblem, Result};
use crate::format::ObjectKind;
use crate::keys::{KeyEpochs, VaultKeys};
use crate::store::ObjectStore;
use crate::vault::CancelToken;

use super::stream::{self, ContentHasher};
use super::{Attachment, ContentId};

/// Receives progress of one transfer (called from the transferring task; keep it quick).
pub trait TransferListener: Send + Sync {
    /// `done` of `total` bytes of the file are in place (sent or already present; received and
    /// written).
    fn on_progress(&self, done: u64, total: u64);
}

/// What a transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes of chunk objects sent (upload) or received (download).
    pub bytes_transferred: u64,
    /// Chunks sent or received.
    pub chunks_transferred: u64,
    /// Chunks not transferred because they were already in place (in the bucket for an upload:
    /// deduplicated or resumed; in the partial file for a download: resumed).
    pub chunks_skipped: u64,
    /// Requests sent to the store.
    pub requests: u64,
}

fn read_error(path: &Path, error: std::io::Error) -> Error {
    Error::invalid_input(format!("cannot read {}: {error}", path.display()))
}

fn write_error(path: &Path, error: std::io::Error) -> Error {
    Error::LocalState(format!("cannot write {}: {error}", path.display()))
}

/// The first pass over a file: its content id and a digest of each chunk's bytes, so the second
/// pass notices a file that changed in between instead of uploading a mix of two versions.
struct Fingerprint {
    size: u64,
    content_id: ContentId,
    /// The first 16 bytes of each chunk's SHA-256 (enough to notice a change, half the memory).
    chunk_digests: Vec<[u8; 16]>,
}

/// Hashes the file at `path`: its content id and a short digest per chunk.
fn fingerprint(
    keys: &VaultKeys,
    path: &Path,
    chunk_size: u32,
    cancel: &CancelToken,
) -> Result<Fingerprint> {
    let mut file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let mut hasher = ContentHasher::new(keys.attachment(), chunk_size);
    let mut buffer = vec![0u8; chunk_size as usize];
    let mut size = 0u64;
    let mut chunk_digests = Vec::new();
    loop {
        cancel.check()?;
        let filled = read_full(&mut file, &mut buffer).map_err(|e| read_error(path, e))?;
        if filled == 0 {
            break;
        }
        hasher.update(&buffer[..filled]);
        chunk_digests.push(short_digest(&buffer[..filled]));
        size += filled as u64;
        if size.div_ceil(u64::from(chunk_size)) > super::MAX_CHUNKS {
            return Err(Error::invalid_input(format!(
                "{} needs more than {} chunks of {chunk_size} bytes; use a larger chunk size",
                path.display(),
                super::MAX_CHUNKS
            )));
        }
        if size > super::MAX_ATTACHMENT_SIZE {
            return Err(Error::invalid_input(format!(
                "{} exceeds the {}-byte attachment limit",
                path.display(),
                super::MAX_ATTACHMENT_SIZE
            )));
        }
        if filled < buffer.len() {
            break;
        }
    }
    Ok(Fingerprint {
        size,
        content_id: hasher.finish(),
        chunk_digests,
    })
}

fn short_digest(bytes: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(bytes);
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    short
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The chunks of `attachment` the bucket holds whole (by listed size).
async fn chunks_present(
    store: &dyn ObjectStore,
    root: &str,
    attachment: &Attachment,
    report: &mut TransferReport,
) -> Result<BTreeSet<u64>> {
    report.requests += 1;
    let listed = store
        .list(&format!("{root}{}", attachment.chunk_prefix()))
        .await?;
    Ok(listed
        .into_iter()
        .filter_map(|object| {
            let (id, index) = super::parse_chunk_name(object.key.strip_prefix(root)?)?;
            let whole = id == attachment.content_id
                && index < attachment.chunk_count()
                && object.size
                    == stream::chunk_object_len(attachment.size, attachment.chunk_size, index);
            whole.then_some(index)
        })
        .collect())
}

/// Uploads the file at `path` as an attachment named `name` of type `mime`, in chunks of
/// `chunk_size`, skipping chunks the bucket already has. Returns the reference to put in a
/// message.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    store: &dyn ObjectStore,
    root: &str,
    keys: &impl KeyEpochs,
    path: &Path,
    name: &str,
    mime: &str,
    chunk_size: u32,
    listener: Option<&dyn TransferListener>,
    cancel: &CancelToken,
) -> Result<(Attachment, TransferReport)> {
    let mut report = TransferReport::default();
    // New content goes under the attachment key of the newest epoch this device writes in.
    let (key_epoch, keys) = keys.newest();
    let probe = Attachment {
        content_id: ContentId([0; 32]),
        size: 0,
        chunk_size,
        name: name.to_owned(),
        mime: mime.to_owned(),
        key_epoch,
    };
    probe.validate()?;
    // Hashing a large video takes seconds: keep it off the async workers.
    let fingerprint = {
        let keys = keys.clone();
        let path = path.to_owned();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || fingerprint(&keys, &path, chunk_size, &cancel))
            .await
            .map_err(|e| Error::LocalState(format!("hashing task failed: {e}")))??
    };
    let attachment = Attachment {
        content_id: fingerprint.content_id,
        size: fingerprint.size,
        ..probe
    };
    let total = attachment.size;
    let chunk = u64::from(chunk_size);
    let content_of = |index: u64| stream::chunk_content_len(total, chunk_size, index);
    let present = chunks_present(store, root, &attachment, &mut report).await?;
    let file_key = stream::file_key(keys.attachment(), &attachment.content_id);
    let count = attachment.chunk_count();
    let (skipped, mut missing): (Vec<u64>, Vec<u64>) =
        (0..count).partition(|i| present.contains(i));
    report.chunks_skipped = skipped.len() as u64;
    let mut done: u64 = skipped.iter().map(|&i| content_of(i)).sum();
    if let Some(listener) = listener {
        listener.on_progress(done, total);
    }
    let mut file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let mut buffer = Vec::with_capacity(chunk_size as usize);
    // Reads chunk `index`'s share of the file, checks it against the first pass, and seals it.
    let mut seal = |index: u64| -> Result<Vec<u8>> {
        let plain_len = stream::chunk_plain_len(attachment.size, chunk_size, index) as usize;
        let content_len = content_of(index) as usize;
        buffer.clear();
        buffer.resize(plain_len, 0);
        if content_len > 0 {
            file.seek(SeekFrom::Start(index * chunk))
                .map_err(|e| read_error(path, e))?;
            let filled = read_full(&mut file, &mut buffer[..content_len])
                .map_err(|e| read_error(path, e))?;
            let digest = short_digest(&buffer[..filled]);
            if filled != content_len
                || fingerprint.chunk_digests.get(index as usize) != Some(&digest)
            {
                return Err(Error::invalid_input(format!(
                    "{} changed while it was being uploaded; attach it again",
                    path.display()
                )));
            }
        }
        stream::seal_chunk(
            &file_key,
            keys.vault_id(),
            index,
            index + 1 == count,
            &buffer,
        )
    };
    // One PUT in flight at a time, so an interruption costs at most one chunk; the next chunk is
    // read and sealed while the current one travels.
    missing.reverse();
    let mut next = match missing.pop() {
        Some(index) => Some((index, seal(index)?)),
        None => None,
    };
    while let Some((index, object)) = next.take() {
        cancel.check()?;
        report.bytes_transferred += object.len() as u64;
        report.requests += 1;
        let following = missing.pop();
        let name = format!("{root}{}", attachment.chunk_name(index));
        let (sent, sealed) = tokio::join!(store.put(&name, object), async {
            following
                .map(|i| seal(i).map(|object| (i, object)))
                .transpose()
        });
        sent?;
        next = sealed?;
        report.chunks_transferred += 1;
        done += content_of(index);
        if let Some(listener) = listener {
            listener.on_progress(done, total);
        }
    }
    // Every chunk must be there now: another device's garbage collection may have removed a chunk
    // this upload counted on; say so rather than hand out a reference to incomplete content.
    let present = chunks_present(store, root, &attachment, &mut report).await?;
    if let Some(missing) = (0..count).find(|i| !present.contains(i)) {
        return Err(Error::Integrity(IntegrityProblem::MissingObject {
            name: attachment.chunk_name(missing),
        }));
    }
    Ok((attachment, report))
}

/// Where a download keeps its verified prefix until it is complete.
pub fn partial_path(dest: &Path, content_id: &ContentId) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.part", &content_id.to_hex()[..16]));
    dest.with_file_name(name)
}

/// Downloads `attachment` to `dest` (replacing it), resuming a partial download left at the same
/// destination.
pub async fn download(
    store: &dyn ObjectStore,
    root: &str,
    keys: &impl KeyEpochs,
    attachment: &Attachment,
    dest: &Path,
    listener: Option<&dyn TransferListener>,
    cancel: &CancelToken,
) -> Result<TransferReport> {
    attachment.validate()?;
    let keys = *keys
        .trees(attachment.key_epoch)
        .first()
        .ok_or(Error::Decode {
            kind: ObjectKind::ChatData,
            problem: DecodeProblem::KeyEpoch {
                expected: keys.newest().0,
                found: attachment.key_epoch,
            },
        })?;
    let mut report = TransferReport::default();
    let total = attachment.size;
    let chunk = u64::from(attachment.chunk_size);
    let count = attachment.chunk_count();
    // Chunks holding content; the rest are padding and never fetched.
    let content_chunks = total.div_ceil(chunk);
    let part = partial_path(dest, &attachment.content_id);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .map_err(|e| write_error(&part, e))?;
    let part_len = file.metadata().map_err(|e| write_error(&part, e))?.len();
    let first = if part_len >= total {
        content_chunks
    } else {
        part_len / chunk
    };
    report.chunks_skipped = first;
    let kept = first.saturating_mul(chunk).min(total);
    file.set_len(kept).map_err(|e| write_error(&part, e))?;
    // The content id is computed as the file is written; what an earlier run left is read back
    // from disk, so a partial file damaged between two runs is caught too.
    let mut hasher = ContentHasher::new(keys.attachment(), attachment.chunk_size);
    if kept > 0 {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| write_error(&part, e))?;
        let mut buffer = vec![0u8; attachment.chunk_size as usize];
        let mut left = kept;
        while left > 0 {
            let want = left.min(chunk) as usize;
            let filled =
                read_full(&mut file, &mut buffer[..want]).map_err(|e| write_error(&part, e))?;
            if filled != want {
                break; // shorter than its length said: the final check fails
            }
            hasher.update(&buffer[..filled]);
            left -= filled as u64;
        }
    }
    file.seek(SeekFrom::Start(kept))
        .map_err(|e| write_error(&part, e))?;
    if let Some(listener) = listener {
        listener.on_progress(kept, total);
    }
    let file_key = stream::file_key(keys.attachment(), &attachment.content_id);
    for index in first..content_chunks {
        cancel.check()?;
        let name = attachment.chunk_name(index);
        report.requests += 1;
        // The reference (authenticated inside its message) fixes each chunk object's exact
        // length: a longer body is refused before it fills memory; a shorter one fails to open.
        let object_len = stream::chunk_object_len(total, attachment.chunk_size, index);
        let object = store
            .get(&format!("{root}{name}"), object_len)
            .await?
            .ok_or_else(|| {
                Error::Integrity(IntegrityProblem::MissingObject { name: name.clone() })
            })?;
        report.bytes_transferred += object.len() as u64;
        let plain_len = stream::chunk_plain_len(total, attachment.chunk_size, index) as usize;
        let plain = stream::open_chunk(
            &file_key,
            keys.vault_id(),
            index,
            index + 1 == count,
            plain_len,
            &object,
        )?;
        let content_len = stream::chunk_content_len(total, attachment.chunk_size, index) as usize;
        let (content, padding) = plain.split_at(content_len.min(plain.len()));
        if padding.iter().any(|&b| b != 0) {
            return Err(Error::decode(
                ObjectKind::AttachmentChunk,
                DecodeProblem::Malformed("non-zero padding".into()),
            ));
        }
        hasher.update(content);
        file.write_all(content).map_err(|e| write_error(&part, e))?;
        report.chunks_transferred += 1;
        if let Some(listener) = listener {
            listener.on_progress(((index + 1) * chunk).min(total), total);
        }
    }
    file.sync_all().map_err(|e| write_error(&part, e))?;
    drop(file);
    // The chunks authenticated themselves; this also catches a reference whose content id lies
    // about its content, and a partial file damaged on disk between two runs.
    if hasher.finish() != attachment.content_id {
        let _ = std::fs::remove_file(&part);
        return Err(Error::decode(
            ObjectKind::AttachmentChunk,
            DecodeProblem::Malformed("downloaded content does not match its content id".into()),
        ));
    }
    std::fs::rename(&part, dest).map_err(|e| write_error(dest, e))?;
    Ok(report)
}
