//! The local state's schema and its migrations.
//!
//! The schema version lives in SQLite's `user_version`. Version 0 is what chatvault wrote before
//! versions existed (and what a new, empty file reads as); each migration moves one version up
//! inside one transaction, so a crash mid-way leaves the previous version intact. A file of a
//! version newer than this library knows is refused rather than misread.
//!
//! Hand-written rather than with rusqlite_migration: migration 2 converts rows in Rust (old
//! outbox entries into encoded batches), the vacuum mode can only change outside a transaction,
//! and the whole mechanism is the dozen lines below, with no second crate pinned to rusqlite's
//! version.

use prost::Message as _;
use rusqlite::{Connection, Transaction};

use crate::error::Result;
use crate::format::proto;
use crate::sync::Operation;
use crate::sync::batch::EncodedBatch;

use super::{corrupt, db_error};

/// The schema version this library writes.
pub const CURRENT_VERSION: u32 = 2;

/// Operations per outbox row when migration 2 converts the old one-row-per-operation outbox.
const MIGRATED_BATCH: usize = 1000;

/// The first versioned layout: what chatvault wrote before versions existed.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, operation BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending_segment (
    seq INTEGER PRIMARY KEY, name TEXT NOT NULL, object BLOB NOT NULL, hash BLOB NOT NULL,
    last_outbox_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ungranted_keys (key_id BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS heads (device BLOB PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segment_hashes (
    device BLOB NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS devices (device BLOB PRIMARY KEY, name TEXT NOT NULL, platform TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chats (
    chat_id TEXT PRIMARY KEY, meta_stamp BLOB, chat BLOB, deleted_stamp BLOB);
CREATE TABLE IF NOT EXISTS messages (
    chat_id TEXT NOT NULL, message_id TEXT NOT NULL, stamp BLOB NOT NULL, message BLOB,
    sent_at_ms INTEGER NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (chat_id, message_id));
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, covered BLOB NOT NULL, created_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (chat_id, sent_at_ms, message_id);
";

/// Version 1 -> 2: the outbox holds one row per recorded batch, each operation encoded once
/// (see [`EncodedBatch`]), instead of one row per operation.
fn to_v2(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "CREATE TABLE outbox_batches (
             id INTEGER PRIMARY KEY AUTOINCREMENT, operations INTEGER NOT NULL, body BLOB NOT NULL);",
    )
    .map_err(db_error)?;
    let mut rows = Vec::new();
    {
        let mut statement = tx
            .prepare("SELECT operation FROM outbox ORDER BY id")
            .map_err(db_error)?;
        let mut query = statement.query([]).map_err(db_error)?;
        let mut batch = Vec::with_capacity(MIGRATED_BATCH);
        while let Some(row) = query.next().map_err(db_error)? {
            let bytes: Vec<u8> = row.get(0).map_err(db_error)?;
            let decoded = proto::Operation::decode(&bytes[..]).map_err(|_| corrupt("outbox"))?;
            batch.push(Operation::from_proto(decoded).map_err(|_| corrupt("outbox"))?);
            if batch.len() == MIGRATED_BATCH {
                rows.push(EncodedBatch::from_operations(&batch));
                batch.clear();
            }
        }
        if !batch.is_empty() {
            rows.push(EncodedBatch::from_operations(&batch));
        }
    }
    for batch in &rows {
        super::insert_outbox_row(tx, batch)?;
    }
    tx.execute_batch("DROP TABLE outbox;").map_err(db_error)
}

/// Brings the database at `connection` to [`CURRENT_VERSION`].
pub(super) fn migrate(connection: &mut Connection) -> Result<()> {
    let version: u32 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db_error)?;
    if version > CURRENT_VERSION {
        return Err(crate::Error::LocalState(format!(
            "this state directory was written by a newer chatvault (schema version {version}, \
             this one knows up to {CURRENT_VERSION}); update the app"
        )));
    }
    if version == 0 {
        // Free pages go back to the file system as they appear (see `LocalState::compact`).
        // Takes effect at once on a new file; an existing one is rebuilt once, below.
        connection
            .execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(db_error)?;
    }
    for next in version + 1..=CURRENT_VERSION {
        let tx = connection.transaction().map_err(db_error)?;
        match next {
            1 => tx.execute_batch(SCHEMA_V1).map_err(db_error)?,
            2 => to_v2(&tx)?,
            _ => unreachable_version(next)?,
        }
        tx.pragma_update(None, "user_version", next)
            .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
    }
    let auto_vacuum: u32 = connection
        .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
        .map_err(db_error)?;
    if auto_vacuum != 2 {
        // A file written before auto_vacuum was set: one rebuild (VACUUM cannot run inside a
        // transaction; it is atomic by itself).
        connection
            .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .map_err(db_error)?;
    }
    Ok(())
}

fn unreachable_version(version: u32) -> Result<()> {
    Err(crate::Error::LocalState(format!(
        "no migration to schema version {version}"
    )))
}
