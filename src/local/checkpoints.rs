//! The checkpoint indexes a device has opened: their coverage, creation time and signature,
//! kept so that each is fetched once, and judged again against the roster on every pass.

use std::collections::BTreeMap;

use rusqlite::{Transaction, params};

use super::{LocalState, corrupt, db_error};
use crate::error::Result;
use crate::sync::names::{decode_heads, encode_heads};
use crate::sync::segment::Head;
use crate::sync::signature::BodySignature;

/// What a device learned from a checkpoint index it opened, kept so it is fetched once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCheckpoint {
    /// The tips it covers.
    pub covered: Vec<Head>,
    /// Its writer's clock when written.
    pub created_at_ms: u64,
    /// Its signature, checked against the roster on every pass (who may write checkpoints
    /// changes with it).
    pub signature: Option<BodySignature>,
}

/// A stored row: (name, covered heads, created at, signature).
type Row = (String, Vec<u8>, i64, Option<Vec<u8>>);

const SELECT: &str = "SELECT name, covered, created_at_ms, signature FROM checkpoints";

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn decode_row((name, covered, created, signature): Row) -> Result<(String, KnownCheckpoint)> {
    let covered = decode_heads(&covered, |_| corrupt("checkpoint"))?;
    let signature = signature
        .map(|bytes| {
            BodySignature::from_bytes(&bytes).ok_or_else(|| corrupt("checkpoint signature"))
        })
        .transpose()?;
    Ok((
        name,
        KnownCheckpoint {
            covered,
            created_at_ms: created as u64,
            signature,
        },
    ))
}

impl LocalState {
    /// Checkpoints this device has opened: name -> what it learned of each.
    pub fn known_checkpoints(&self) -> Result<BTreeMap<String, KnownCheckpoint>> {
        let mut statement = self.connection.prepare(SELECT).map_err(db_error)?;
        let rows = statement.query_map([], read_row).map_err(db_error)?;
        rows.map(|row| decode_row(row.map_err(db_error)?)).collect()
    }

    /// What this device learned of the checkpoint `name`, if it opened it.
    pub fn known_checkpoint(&self, name: &str) -> Result<Option<KnownCheckpoint>> {
        use rusqlite::OptionalExtension as _;
        let row = self
            .connection
            .query_row(&format!("{SELECT} WHERE name = ?1"), [name], read_row)
            .optional()
            .map_err(db_error)?;
        row.map(|row| decode_row(row).map(|(_, known)| known))
            .transpose()
    }
}

/// Remembers what a checkpoint index said (its coverage is stored as the `seen` list of an
/// otherwise empty Segment message, to reuse its encoding), so it is fetched once.
pub(crate) fn note_checkpoint(
    tx: &Transaction<'_>,
    name: &str,
    known: &KnownCheckpoint,
) -> Result<()> {
    let encoded = encode_heads(&known.covered);
    let signature = known.signature.map(|s| s.to_bytes().to_vec());
    tx.execute(
        "INSERT OR REPLACE INTO checkpoints (name, covered, created_at_ms, signature)
         VALUES (?1, ?2, ?3, ?4)",
        params![name, encoded, known.created_at_ms as i64, signature],
    )
    .map(|_| ())
    .map_err(db_error)
}

/// Forgets a checkpoint that is no longer in the bucket.
pub(crate) fn forget_checkpoint(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute("DELETE FROM checkpoints WHERE name = ?1", [name])
        .map(|_| ())
        .map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{RecoveryKey, VaultKeys};
    use crate::sync::DeviceId;

    fn keys() -> VaultKeys {
        VaultKeys::derive(&RecoveryKey::from_bytes([8; 32]))
    }

    #[test]
    fn a_known_checkpoint_keeps_its_signature_and_schema_7_forgets_what_6_knew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut local = LocalState::open(&path, &keys()).unwrap();
        let head = Head {
            device: DeviceId([1; 16]),
            seq: 3,
            tag: 4,
            hash: [5; 32],
        };
        let signed = KnownCheckpoint {
            covered: vec![head],
            created_at_ms: 9,
            signature: Some(BodySignature {
                signature: [6; 64],
                digest: [7; 32],
            }),
        };
        let unsigned = KnownCheckpoint {
            signature: None,
            ..signed.clone()
        };
        local
            .transaction(|tx| {
                note_checkpoint(tx, "checkpoints/a", &signed)?;
                note_checkpoint(tx, "checkpoints/b", &unsigned)
            })
            .unwrap();
        let known = local.known_checkpoints().unwrap();
        assert_eq!(known["checkpoints/a"], signed);
        assert_eq!(known["checkpoints/b"], unsigned);
        assert_eq!(
            local.known_checkpoint("checkpoints/a").unwrap(),
            Some(signed)
        );
        assert_eq!(local.known_checkpoint("checkpoints/c").unwrap(), None);

        // A file of version 6 (whose build noted indexes without their signatures): the step to
        // 7 forgets them, so each is fetched, with its signature, once more.
        local
            .connection
            .execute_batch("PRAGMA user_version = 6;")
            .unwrap();
        drop(local);
        let local = LocalState::open(&path, &keys()).unwrap();
        assert!(local.known_checkpoints().unwrap().is_empty());
    }
}
