//! The greatest stamp the local state holds: what this device's next stamp must exceed.
//!
//! Every operation the local state takes in, applied (from a segment or from a checkpoint) or
//! recorded here, raises it in the same transaction. `Vault::record` has its clock observe it
//! before stamping, so a local event orders after everything already applied whatever path
//! applied it (a restore from a checkpoint applies operations without showing their stamps to
//! the clock) and whether or not the clock itself was persisted in step. Without that, a new
//! local edit could be stamped below a version the index already holds and silently lose to
//! it, since `record` writes its entries without reading first.

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::error::Result;
use crate::sync::{Operation, Stamp};

use super::versions::{DeviceNumbers, ENTRY_LEN, decode_entry, for_each_journal_chat};
use super::{corrupt, db_error};

/// The meta key it is kept under (28 sortable stamp bytes).
const META_GREATEST_STAMP: &str = "greatest_stamp";

/// Reads the persisted value.
pub(super) fn load(connection: &Connection) -> Result<Option<Stamp>> {
    connection
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [META_GREATEST_STAMP],
            |row| row.get::<_, Vec<u8>>(0),
        )
        .optional()
        .map_err(db_error)?
        .map(|bytes| Stamp::from_sortable_bytes(&bytes).ok_or_else(|| corrupt("greatest stamp")))
        .transpose()
}

/// The new greatest stamp if `operations` hold one above `current`; `None` when nothing rises.
pub(super) fn raised(current: Option<Stamp>, operations: &[Operation]) -> Option<Stamp> {
    let top = operations.iter().map(|operation| operation.stamp).max()?;
    current.is_none_or(|current| top > current).then_some(top)
}

/// Persists `raised` (from [`raised`]) inside the transaction that applies its operations.
pub(super) fn store(tx: &Transaction<'_>, raised: Option<Stamp>) -> Result<()> {
    match raised {
        Some(stamp) => super::set_meta(tx, META_GREATEST_STAMP, &stamp.to_sortable_bytes()),
        None => Ok(()),
    }
}

/// Schema version 4: computes the value for a state directory written before it was kept, from
/// every stamp the file holds (version runs, the version journal, chat metadata and deletions).
/// One pass over the version index (32 bytes per message), once.
pub(super) fn migrate(tx: &Transaction<'_>) -> Result<()> {
    let devices = DeviceNumbers::load(tx)?;
    let mut greatest: Option<Stamp> = None;
    let mut take = |stamp: Stamp| {
        if greatest.is_none_or(|g| stamp > g) {
            greatest = Some(stamp);
        }
    };
    let mut take_entries = |entries: &[u8]| -> Result<()> {
        for entry in entries.chunks(ENTRY_LEN) {
            take(decode_entry(entry, &devices)?.1.stamp);
        }
        Ok(())
    };
    {
        let mut statement = tx
            .prepare("SELECT body FROM version_runs")
            .map_err(db_error)?;
        let mut rows = statement.query([]).map_err(db_error)?;
        while let Some(row) = rows.next().map_err(db_error)? {
            let body = row
                .get_ref(0)
                .map_err(db_error)?
                .as_blob()
                .map_err(|_| corrupt("version run"))?;
            take_entries(body)?;
        }
    }
    for_each_journal_chat(tx, |_, entries| take_entries(entries))?;
    let mut statement = tx
        .prepare("SELECT meta_stamp, deleted_stamp FROM chats")
        .map_err(db_error)?;
    let mut rows = statement.query([]).map_err(db_error)?;
    while let Some(row) = rows.next().map_err(db_error)? {
        for column in [0, 1] {
            if let Some(bytes) = row.get::<_, Option<Vec<u8>>>(column).map_err(db_error)? {
                take(Stamp::from_sortable_bytes(&bytes).ok_or_else(|| corrupt("chat stamp"))?);
            }
        }
    }
    drop(rows);
    drop(statement);
    store(tx, greatest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{RecoveryKey, VaultKeys};
    use crate::local::LocalState;
    use crate::sync::batch::EncodedBatch;
    use crate::sync::{Change, DeviceId, Message};

    fn keys() -> VaultKeys {
        VaultKeys::derive(&RecoveryKey::from_bytes([9; 32]))
    }

    fn upsert(wall_ms: u64, device: u8, id: &str) -> Operation {
        Operation {
            stamp: Stamp {
                wall_ms,
                counter: 0,
                device: DeviceId([device; 16]),
            },
            change: Change::UpsertMessage(Message {
                chat_id: "c".into(),
                message_id: id.into(),
                text: id.into(),
                ..Message::default()
            }),
        }
    }

    #[test]
    fn every_applied_or_recorded_stamp_raises_it_durably_and_a_migration_recomputes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut local = LocalState::open(&path, &keys()).unwrap();
        assert_eq!(local.greatest_stamp(), None);
        // Applied out of order, and a later batch of older stamps does not lower it.
        local
            .apply(&[upsert(50, 2, "a"), upsert(900, 2, "b")], |_| Ok(()))
            .unwrap();
        local.apply(&[upsert(10, 3, "c")], |_| Ok(())).unwrap();
        assert_eq!(local.greatest_stamp(), Some(upsert(900, 2, "b").stamp));
        // A chat deletion (the way a checkpoint's tombstones are applied) counts too.
        let deletion = Operation {
            stamp: Stamp {
                wall_ms: 5_000,
                counter: 1,
                device: DeviceId([4; 16]),
            },
            change: Change::DeleteChat {
                chat_id: "c".into(),
            },
        };
        local
            .apply(std::slice::from_ref(&deletion), |_| Ok(()))
            .unwrap();
        assert_eq!(local.greatest_stamp(), Some(deletion.stamp));
        let own = [upsert(6_000, 1, "d")];
        local
            .record(&own, &[EncodedBatch::from_operations(&own)], |_| Ok(()))
            .unwrap();
        assert_eq!(local.greatest_stamp(), Some(own[0].stamp));
        // A failed transaction raises nothing.
        let failed = local.apply(&[upsert(9_000, 2, "e")], |_| -> crate::Result<()> {
            Err(crate::Error::LocalState("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(local.greatest_stamp(), Some(own[0].stamp));
        drop(local);
        let local = LocalState::open(&path, &keys()).unwrap();
        assert_eq!(local.greatest_stamp(), Some(own[0].stamp));

        // A file from before it was kept (schema 3) gets it from the stamps it holds: the
        // version index (run or journal) and the chats' deletions.
        local
            .connection
            .execute_batch(
                "DELETE FROM meta WHERE key = 'greatest_stamp'; PRAGMA user_version = 3;",
            )
            .unwrap();
        drop(local);
        let local = LocalState::open(&path, &keys()).unwrap();
        assert_eq!(local.greatest_stamp(), Some(own[0].stamp));
        local
            .connection
            .execute_batch(
                "DELETE FROM meta WHERE key = 'greatest_stamp'; PRAGMA user_version = 3;
                 DELETE FROM version_runs; DELETE FROM version_journal;",
            )
            .unwrap();
        drop(local);
        let local = LocalState::open(&path, &keys()).unwrap();
        assert_eq!(local.greatest_stamp(), Some(deletion.stamp));
    }
}
