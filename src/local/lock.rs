//! One writer per state directory.
//!
//! Two writers on one state directory (an app and its share extension, two CLI processes) would
//! issue identical stamps and seal the same sequence number; the second upload replaces the
//! first segment and every other device then reports a broken chain. So a [`LocalState`] holds
//! an exclusive lock on `<database>.lock` (`chatvault.sqlite.lock` in a vault's state
//! directory) for as long as it lives, and a second open fails at once with [`Error::Busy`]
//! rather than wait: an app decides itself whether to retry, and a share extension must not
//! hang.
//!
//! `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Linux, Android, macOS and iOS and
//! `LockFileEx` on Windows. Both belong to the open file, not to the process, so a second open
//! in the same process is refused like one in another process, and the operating system
//! releases the lock when the process dies, however it dies: no stale lock file to clean up.
//! The file itself stays (empty); its presence means nothing.
//!
//! [`LocalState`]: super::LocalState

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An exclusive lock on a state database, released when dropped (or when the process ends).
#[derive(Debug)]
pub(super) struct StateLock {
    /// Holding the open file is what holds the lock.
    _file: File,
}

/// The lock file of the database at `database`: the same path with `.lock` appended.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl StateLock {
    /// Takes the lock of the database at `database`, or fails at once with [`Error::Busy`] if
    /// another open holds it.
    pub(super) fn acquire(database: &Path) -> Result<StateLock> {
        let path = lock_path(database);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::LocalState(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Busy),
            Err(TryLockError::Error(e)) => Err(Error::LocalState(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("chatvault.sqlite");
        let first = StateLock::acquire(&database).unwrap();
        assert!(matches!(StateLock::acquire(&database), Err(Error::Busy)));
        assert!(lock_path(&database).ends_with("chatvault.sqlite.lock"));
        drop(first);
        let again = StateLock::acquire(&database).unwrap();
        // Another database in the same directory has its own lock.
        StateLock::acquire(&dir.path().join("other.sqlite")).unwrap();
        drop(again);
    }
}
