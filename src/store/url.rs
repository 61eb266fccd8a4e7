//! Store URLs: how an app or the CLI names a store in one string.
//!
//! | URL | store |
//! | --- | --- |
//! | `file:///absolute/path` | [`DirectoryStore`](super::DirectoryStore) rooted at the path |
//! | `mem://` | a fresh, empty [`MemoryStore`](super::MemoryStore) (tests) |
//!
//! Credentials never go in URLs (they end up in logs and shell history).

use std::path::PathBuf;
use std::sync::Arc;

use super::{DirectoryStore, MemoryStore, ObjectStore, StoreError};

/// Opens the store a URL names.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StoreError::Other(format!(
                "file URLs need an absolute path (file:///...): {url}"
            )));
        }
        return Ok(Arc::new(DirectoryStore::new(PathBuf::from(path))));
    }
    if url == "mem://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    Err(StoreError::Other(format!(
        "unsupported store URL {url:?}: expected file:///path or mem://"
    )))
}
