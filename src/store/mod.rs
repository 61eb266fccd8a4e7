//! Object stores: where sealed objects live. Three backends share one contract:
//!
//! - [`MemoryStore`]: in process, for tests;
//! - a directory store (the embedded default; also a "mothership" backup on a USB disk or NAS);
//! - an S3 store for any S3-compatible bucket.
//!
//! The contract is deliberately small, so that correctness never depends on what some
//! "S3-compatible" services get wrong: every object is written once under a name no other writer
//! uses, nothing needs compare-and-swap, and listing is the only way to discover objects.
//! Keys are relative to the store's own prefix and use `/` as separator.
//!
//! The contract, as every backend implements it and `tests/store_contract.rs` checks it:
//! - keys follow [`validate_key`] (the same rules everywhere: non-empty `/`-separated segments,
//!   no `.`/`..`, no backslash or control characters); invalid keys fail with
//!   [`StoreError::Other`] before any I/O;
//! - a key must not also be a "directory" of another key (`a` and `a/b` cannot both exist: the
//!   directory store maps keys to files);
//! - [`ObjectStore::list`] takes a plain string prefix (`"a/b"` matches `a/b/c` and `a/bc`) and
//!   returns keys in byte order;
//! - [`ObjectStore::get_range`] clamps to the object: a range past the end, or an empty range,
//!   reads as empty bytes (`Some`), a missing object as `None`.
//! - No read is unbounded, whatever the store sends (a hostile bucket, a broken proxy, a file
//!   replaced under the directory store):
//!   - [`ObjectStore::get`] takes the most bytes the caller accepts (`max_len`: the size a
//!     listing or an index promises, or the format's maximum for that kind of object). An object
//!     known to be longer before its bytes arrive (its file size, its `Content-Length`) fails with
//!     [`StoreError::TooLarge`] without reading any of it; a body that keeps coming past the bound
//!     (no `Content-Length`, a file growing under the reader) is read only until it passes the
//!     bound (the directory store reads `max_len + 1` bytes, the S3 store at most one network
//!     read more than `max_len`, keeping none of it past `max_len`), then fails the same way.
//!     `TooLarge` is never retried: the same object stays too large.
//!   - [`ObjectStore::get_range`] never keeps more than the range's length. A server that sends
//!     more than asked (a longer `206`) is read only to the range's length; one that ignores
//!     `Range` and answers `200` with the whole object is read to `range.end`, where reading
//!     stops (the bytes before `range.start` are skipped, not kept). Tolerating that `200` keeps
//!     minimal S3 servers and proxies that strip `Range` working, at the cost of transferring
//!     the bytes before the range; memory stays at the range's length.
//!   - A body shorter than its own `Content-Length` (a connection cut mid-body) is a transient
//!     failure: the S3 store retries it like a reset, and reports
//!     [`StoreError::Unavailable`] after its last attempt. A body that stops arriving for longer
//!     than [`S3Config::read_idle_timeout`] ends the same way; one that trickles on is ended by
//!     [`S3Config::request_timeout`].
//!
//!   `tests/store_contract.rs` checks this on every store; `tests/bounded_reads.rs` checks that
//!   memory stays flat against 512 MiB and endless objects.
//!
//! Stores are opened from URLs (`file://`, `s3://`, `mem://`) with [`open_store`] or
//! [`StoreConfig::parse`].

mod directory;
mod key;
mod s3;
mod url;

pub use directory::DirectoryStore;
pub use key::{MAX_KEY_LEN, validate_key};
pub use s3::{S3Config, S3Store};
pub use url::{MAX_URL_LEN, StoreConfig, open_store, parse_s3_url};

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written (milliseconds since the Unix epoch), if the store says.
    pub modified_ms: Option<u64>,
}

/// What went wrong talking to a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time; trying later may work.
    #[error("store unreachable: {0}")]
    Unavailable(String),
    /// The store refused the credentials or the request's signature.
    #[error("store denied access: {0}")]
    AccessDenied(String),
    /// The store is throttling or failing internally (HTTP 429/5xx) after all retries.
    #[error("store busy or failing: {0}")]
    Busy(String),
    /// A local I/O error (directory store).
    #[error("store I/O error: {0}")]
    Io(String),
    /// The server's TLS certificate was refused (issued by an authority the platform does not
    /// trust, for another host name, expired, ...). Retrying cannot help: the endpoint, the
    /// device's trust store or the server's certificate must change.
    #[error("store's TLS certificate refused: {0}")]
    UntrustedServer(String),
    /// The object is larger than the reader allows (by its Content-Length, its file size or the
    /// bytes that kept arriving): a hostile or broken store. Reading stopped at the bound.
    #[error("object {key} is larger than the {limit} bytes allowed")]
    TooLarge {
        /// The object's key.
        key: String,
        /// The most the reader accepted.
        limit: u64,
    },
    /// Anything else the store answered that this client cannot act on.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Busy(_))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The operations chatvault needs from a bucket.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes an object (whole, atomically: readers see the old state or the new, never a part).
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()>;
    /// Writes an object only if nothing exists under `key`, atomically: `Ok(false)` (nothing
    /// written) when something does. A store that cannot refuse atomically writes anyway and
    /// returns `Ok(true)` (Garage ignores `If-None-Match`): callers use the answer as an extra
    /// guard against two writers sharing a name, never as a lock.
    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> StoreResult<bool> {
        self.put(key, body).await.map(|()| true)
    }
    /// Reads a whole object of at most `max_len` bytes; `None` if it does not exist. A longer
    /// object fails with [`StoreError::TooLarge`], having kept at most `max_len` bytes of it
    /// (and read none when its size is known first).
    async fn get(&self, key: &str, max_len: u64) -> StoreResult<Option<Vec<u8>>>;
    /// Reads `range` of an object (clamped to its end); `None` if it does not exist. Never keeps
    /// more than the range's length, whatever the store sends (see the module documentation).
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Option<Vec<u8>>>;
    /// Lists every object whose key starts with `prefix`, in key order, following all pages.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// How many requests this store has sent since it was created (clones that share a
    /// connection pool share the count): for the S3 store every HTTP request handed to the
    /// network, retries, every page of a listing and every part of a multipart upload included;
    /// for stores without a network (directory, memory), one per operation that passed key
    /// validation. A caller measures an operation by the difference before and after it.
    fn requests_sent(&self) -> u64;
}

/// An in-memory store (tests and examples).
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Body and time of writing, per key.
    objects: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    /// Operations served (see [`ObjectStore::requests_sent`]).
    operations: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    #[allow(clippy::type_complexity)]
    fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, BTreeMap<String, (Vec<u8>, u64)>>> {
        // Every operation takes the lock exactly once, after validating its key.
        self.operations.fetch_add(1, Ordering::Relaxed);
        self.objects
            .lock()
            .map_err(|_| StoreError::Other("memory store poisoned".into()))
    }
}

#[async_trait::async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        validate_key(key)?;
        self.lock()?
            .insert(key.to_owned(), (body, crate::sync::clock::now_ms()));
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> StoreResult<bool> {
        validate_key(key)?;
        let mut objects = self.lock()?;
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_owned(), (body, crate::sync::clock::now_ms()));
        Ok(true)
    }

    async fn get(&self, key: &str, max_len: u64) -> StoreResult<Option<Vec<u8>>> {
        validate_key(key)?;
        match self.lock()?.get(key) {
            Some((body, _)) if body.len() as u64 > max_len => Err(StoreError::TooLarge {
                key: key.to_owned(),
                limit: max_len,
            }),
            found => Ok(found.map(|(body, _)| body.clone())),
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.lock()?.get(key).map(|(body, _)| {
            let end = usize::try_from(range.end).map_or(body.len(), |end| end.min(body.len()));
            let start = usize::try_from(range.start).map_or(end, |start| start.min(end));
            body[start..end].to_vec()
        }))
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        Ok(self
            .lock()?
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (body, written_ms))| ObjectInfo {
                key: key.clone(),
                size: body.len() as u64,
                modified_ms: Some(*written_ms),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        validate_key(key)?;
        self.lock()?.remove(key);
        Ok(())
    }

    fn requests_sent(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }
}
