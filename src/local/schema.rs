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
use crate::sync::batch::EncodedBatch;
use crate::sync::{Change, Message, Operation, Stamp};

use super::cache::{self, CacheKey};
use super::versions::{DeviceNumbers, Journal, RunCache, Version, VersionWriter, message_key};
use super::{corrupt, db_error};

/// The schema version this library writes.
pub const CURRENT_VERSION: u32 = 7;

/// Messages per flush when migration 3 converts the messages table.
const MIGRATED_CHUNK: usize = 10_000;

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
    // Version 2 kept rows in plaintext; version 3 seals them.
    for batch in &rows {
        tx.execute(
            "INSERT INTO outbox_batches (operations, body) VALUES (?1, ?2)",
            rusqlite::params![batch.operation_count() as i64, batch.to_row()],
        )
        .map_err(db_error)?;
    }
    tx.execute_batch("DROP TABLE outbox;").map_err(db_error)
}

/// Version 2 -> 3: the messages table (content and two indexes, a row per message) becomes the
/// version index (32 bytes per message, in per-chat runs) and the sealed content cache.
fn to_v3(tx: &Transaction<'_>, key: &CacheKey) -> Result<()> {
    tx.execute_batch(
        "CREATE TABLE device_numbers (number INTEGER PRIMARY KEY, device BLOB NOT NULL UNIQUE);
         CREATE TABLE version_runs (
             id INTEGER PRIMARY KEY, chat_id TEXT NOT NULL, entries INTEGER NOT NULL,
             body BLOB NOT NULL);
         CREATE INDEX version_runs_by_chat ON version_runs (chat_id, id);
         CREATE TABLE version_journal (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
         CREATE TABLE cache_blobs (
             id INTEGER PRIMARY KEY, chat_id TEXT NOT NULL, level INTEGER NOT NULL,
             operations INTEGER NOT NULL, body BLOB NOT NULL);
         CREATE INDEX cache_blobs_by_chat ON cache_blobs (chat_id, id);
         CREATE TABLE cache_evicted (chat_id TEXT PRIMARY KEY);
         CREATE TABLE cache_pinned (chat_id TEXT PRIMARY KEY);",
    )
    .map_err(db_error)?;
    let mut devices = DeviceNumbers::load(tx)?;
    let runs = RunCache::default();
    // Each chunk compacts what it wrote (see below), so the journal stays empty.
    let journal = Journal::default();
    let mut statement = tx
        .prepare("SELECT chat_id, message_id, stamp, message FROM messages ORDER BY chat_id")
        .map_err(db_error)?;
    let mut rows = statement.query([]).map_err(db_error)?;
    let mut writer = VersionWriter::new(&mut devices, &runs, &journal);
    let mut batch = EncodedBatch::new();
    let mut pending = 0;
    while let Some(row) = rows.next().map_err(db_error)? {
        let chat_id: String = row.get(0).map_err(db_error)?;
        let message_id: String = row.get(1).map_err(db_error)?;
        let stamp: Vec<u8> = row.get(2).map_err(db_error)?;
        let body: Option<Vec<u8>> = row.get(3).map_err(db_error)?;
        let stamp = Stamp::from_sortable_bytes(&stamp).ok_or_else(|| corrupt("stamp"))?;
        let (change, version) = match body {
            Some(bytes) => {
                let message = Message::from_proto(
                    proto::Message::decode(&bytes[..]).map_err(|_| corrupt("message"))?,
                )
                .map_err(|_| corrupt("message"))?;
                let version = Version {
                    stamp,
                    live: true,
                    size: bytes.len() as u32,
                };
                (Change::UpsertMessage(message), version)
            }
            None => (
                Change::DeleteMessage {
                    chat_id: chat_id.clone(),
                    message_id: message_id.clone(),
                },
                Version {
                    stamp,
                    live: false,
                    size: 0,
                },
            ),
        };
        writer.put(&chat_id, message_key(&message_id), version);
        batch.push(&Operation { stamp, change });
        pending += 1;
        if pending == MIGRATED_CHUNK {
            writer.compact(tx)?;
            cache::append(tx, key, &std::mem::take(&mut batch))?;
            writer = VersionWriter::new(&mut devices, &runs, &journal);
            pending = 0;
        }
    }
    writer.compact(tx)?;
    cache::append(tx, key, &batch)?;
    drop(rows);
    drop(statement);
    tx.execute_batch("DROP TABLE messages;").map_err(db_error)?;
    // Outbox rows waiting for a sync are sealed from version 3 on.
    let plain: Vec<(i64, Vec<u8>)> = {
        let mut statement = tx
            .prepare("SELECT id, body FROM outbox_batches ORDER BY id")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(db_error)?;
        rows.map(|r| r.map_err(db_error)).collect::<Result<_>>()?
    };
    for (id, body) in plain {
        let batch = EncodedBatch::from_row(&body).ok_or_else(|| corrupt("outbox"))?;
        tx.execute("DELETE FROM outbox_batches WHERE id = ?1", [id])
            .map_err(db_error)?;
        super::insert_outbox_row(tx, key, &batch)?;
    }
    Ok(())
}

/// The meta key set by migration 5 on a state directory that had synced with a vault of
/// untagged segment names: its content stays, but it cannot sync (see [`to_v5`]).
pub(crate) const META_UNTAGGED_VAULT: &str = "untagged_vault";

/// Version 4 -> 5: segment names carry a random tag and their parent's (FORMAT.md 9.2), so
/// what a device applied is a set of tips per device and a hash per (device, seq, tag). The
/// vault such a state synced with was written under the untagged names, which no reader
/// accepts any more (a format change before the first release): there is nothing meaningful
/// to convert its sync position into. Its content and outbox stay (the app can still read and
/// export them); a state that had synced is marked, and every sync refuses it with
/// [`untagged_vault_error`].
fn to_v5(tx: &Transaction<'_>) -> Result<()> {
    let synced: i64 = tx
        .query_row(
            "SELECT (SELECT COUNT(*) FROM heads) + (SELECT COUNT(*) FROM pending_segment)
                  + (SELECT COUNT(*) FROM checkpoints)",
            [],
            |row| row.get(0),
        )
        .map_err(db_error)?;
    if synced > 0 {
        super::set_meta(tx, META_UNTAGGED_VAULT, &[1])?;
    }
    tx.execute_batch(
        "DROP TABLE heads;
         DROP TABLE segment_hashes;
         DELETE FROM checkpoints;
         DELETE FROM meta WHERE key = 'checkpoint_seq';
         CREATE TABLE heads (
             device BLOB NOT NULL, seq INTEGER NOT NULL, tag INTEGER NOT NULL, hash BLOB NOT NULL,
             PRIMARY KEY (device, seq, tag));
         CREATE TABLE segment_hashes (
             device BLOB NOT NULL, seq INTEGER NOT NULL, tag INTEGER NOT NULL,
             hash BLOB NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (device, seq, tag));",
    )
    .map_err(db_error)
}

/// The error every sync of a state marked by migration 5 returns.
pub(crate) fn untagged_vault_error() -> crate::Error {
    crate::Error::LocalState(
        "this state directory synced with a vault written before segment names carried tags \
         (a format change before the first release); no reader accepts that vault any more. \
         The local content is intact: export it and import it into a new vault"
            .into(),
    )
}

/// Version 6 -> 7: checkpoint indexes are signed (FORMAT.md 9.5); the known ones keep their
/// signature, which every pass checks against the roster. A version that did not know
/// signatures may have noted signed indexes (written by newer devices) without theirs, so what
/// it knew is forgotten: each listed index is fetched once more. Like the other steps, safe to
/// run on a file that has it already.
fn to_v7(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch("DELETE FROM checkpoints;")
        .map_err(db_error)?;
    let has_column: bool = tx
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('checkpoints') WHERE name = 'signature'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(db_error)?
        > 0;
    if !has_column {
        tx.execute_batch("ALTER TABLE checkpoints ADD COLUMN signature BLOB;")
            .map_err(db_error)?;
    }
    Ok(())
}

/// Brings the database at `connection` to [`CURRENT_VERSION`].
pub(super) fn migrate(connection: &mut Connection, key: &CacheKey) -> Result<()> {
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
            3 => to_v3(&tx, key)?,
            4 => super::greatest::migrate(&tx)?,
            5 => to_v5(&tx)?,
            // The roster entries this device has fetched (docs/DEVICES.md), as sealed objects
            // exactly as the bucket held them: a bucket that later withholds or drops an entry
            // cannot take it back from a device that saw it.
            6 => tx
                .execute_batch(
                    "CREATE TABLE IF NOT EXISTS roster_entries (
                         id BLOB PRIMARY KEY, object BLOB NOT NULL);",
                )
                .map_err(db_error)?,
            7 => to_v7(&tx)?,
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
