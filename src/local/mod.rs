//! Local state: one SQLite database per device and vault, crash-safe by transactions.
//!
//! It holds the outbox of recorded operations not yet uploaded, the sealed segment being uploaded
//! (so a crash between sealing and upload re-sends the same bytes, never a second segment with the
//! same sequence number), the newest applied segment per device, the chats' metadata, the
//! version index of every message (32 bytes each, no content: see [`versions`]), the optional
//! content cache (sealed: see [`cache`]), the clock, and the chat keys sealed under the keyring
//! key. No key is stored in plaintext: the app passes the recovery key each time it opens the
//! vault.
//!
//! SQLite rather than redb: both platforms' apps already ship and trust SQLite, its
//! write-ahead log with `synchronous=FULL` makes every committed transaction durable, and one
//! transaction covers "apply these operations and advance this cursor", which is what makes a
//! crash at any instant lose nothing acknowledged and apply nothing twice.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::{Error, Result};
use crate::keys::VaultKeys;
use crate::sync::batch::EncodedBatch;
use crate::sync::segment::{Head, KeyId, SegmentHash, SegmentId, SegmentName};
use crate::sync::{Chat, DeviceId};

pub mod cache;
mod checkpoints;
mod content;
mod greatest;
pub mod lock;
mod roster;
mod schema;
pub mod versions;

use cache::CacheKey;
pub use checkpoints::KnownCheckpoint;
pub(crate) use checkpoints::{forget_checkpoint, note_checkpoint};
pub use content::CacheSetting;
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
use versions::{DeviceNumbers, Journal, RunCache};

/// Outbox rows are closed at about this much encoded operations (1 MiB), so a segment (up to
/// 4 MiB of operations per push step) is made of whole rows.
pub const OUTBOX_ROW_TARGET: usize = 1024 * 1024;

/// Free pages (of 4 KiB) above which a sync compacts the state file: 1 MiB.
pub const COMPACT_FREE_PAGES: i64 = 256;

fn db_error(error: rusqlite::Error) -> Error {
    Error::LocalState(error.to_string())
}

fn corrupt(what: &str) -> Error {
    Error::LocalState(format!("damaged local state: {what}"))
}

/// A chat as listed: metadata, live message count and plaintext bytes of its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSummary {
    /// The chat's metadata (empty title and members if only messages were recorded).
    pub chat: Chat,
    /// Live messages.
    pub message_count: u64,
    /// Sum of the encoded sizes of its live messages.
    pub message_bytes: u64,
}

/// The device's local state database.
pub struct LocalState {
    connection: Connection,
    cache_key: CacheKey,
    devices: DeviceNumbers,
    runs: RunCache,
    journal: Journal,
    /// The content cache's setting (read once at open: `record` and `apply` need it in every
    /// transaction).
    cache_setting: CacheSetting,
    /// Chats' content-cache blob levels as committed, where known (see
    /// [`cache::repack_if_due`]); forgotten when a transaction fails.
    cache_levels: std::cell::RefCell<std::collections::HashMap<String, cache::Levels>>,
    /// The greatest stamp of any operation applied or recorded (see [`greatest`]), as committed.
    greatest: Option<crate::sync::Stamp>,
    /// Held while this value lives: one writer per state directory (see [`lock`]). Dropped
    /// after the connection (fields drop in order), so no other process opens the database
    /// while this one still has it open.
    _lock: lock::StateLock,
}

impl core::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LocalState")
    }
}

impl LocalState {
    /// The vault id a state database at `path` belongs to, read as [`open`](Self::open) reads it
    /// before taking the lock (no write, no migration); `None` when there is no database or it
    /// names no vault yet.
    pub fn stored_vault_id(path: &Path) -> Result<Option<Vec<u8>>> {
        if !path.exists() {
            return Ok(None);
        }
        let connection = Connection::open(path).map_err(db_error)?;
        let has_meta: bool = connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
                [],
                |row| row.get(0),
            )
            .map_err(db_error)?;
        if !has_meta {
            return Ok(None);
        }
        connection
            .query_row("SELECT value FROM meta WHERE key = 'vault_id'", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(db_error)
    }

    /// Opens (creating if needed) the database at `path`, for the vault of `keys`. A database
    /// of another vault is refused before anything in it changes.
    ///
    /// Fails at once with [`Error::Busy`] while another `LocalState` (in this process or
    /// another) has the same database open: it holds an exclusive lock on `<path>.lock` for as
    /// long as it lives. A database of another vault is refused as such even then.
    pub fn open(path: &Path, keys: &VaultKeys) -> Result<LocalState> {
        let mut connection = Connection::open(path).map_err(db_error)?;
        // The WAL file is cut back to 64 MiB whenever a checkpoint empties it, so one large
        // transaction does not leave a large file behind.
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
                 PRAGMA journal_size_limit=67108864;",
            )
            .map_err(db_error)?;
        let has_meta: bool = connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
                [],
                |row| row.get(0),
            )
            .map_err(db_error)?;
        if has_meta {
            let vault_id: Option<Vec<u8>> = connection
                .query_row("SELECT value FROM meta WHERE key = 'vault_id'", [], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(db_error)?;
            if vault_id.is_some_and(|id| id.as_slice() != keys.vault_id().as_bytes()) {
                return Err(Error::invalid_input(
                    "this state directory belongs to another vault (a different recovery key)",
                ));
            }
        }
        // Taken after the read-only vault check above (a wrong recovery key says so even while
        // another process works on the directory) and before anything is written: a second
        // writer must not even run the migrations.
        let state_lock = lock::StateLock::acquire(path)?;
        let cache_key = CacheKey {
            key: keys.keyring().0.clone(),
            vault_id: *keys.vault_id(),
        };
        schema::migrate(&mut connection, &cache_key)?;
        let devices = DeviceNumbers::load(&connection)?;
        let journal = Journal::load(&connection, &devices)?;
        let cache_setting = LocalState::cache_setting_in(&connection)?;
        let greatest = greatest::load(&connection)?;
        Ok(LocalState {
            connection,
            cache_key,
            devices,
            runs: RunCache::default(),
            journal,
            cache_setting,
            cache_levels: Default::default(),
            greatest,
            _lock: state_lock,
        })
    }

    /// The greatest stamp of any operation this state holds (applied from segments or from a
    /// checkpoint, or recorded here): a new local event must be stamped above it, which
    /// `Vault::record` ensures by having its clock observe it first.
    pub fn greatest_stamp(&self) -> Option<crate::sync::Stamp> {
        self.greatest
    }

    /// Returns free pages to the file system and empties the write-ahead log once at least
    /// [`COMPACT_FREE_PAGES`] pages are free (after a sync drained a large outbox, say), so the
    /// state file keeps only live data. Below that it does nothing: a phone syncing every few
    /// messages does not pay a vacuum and a log truncation (with their fsyncs) each time; those
    /// few pages are reused by the next writes anyway. Returns whether it compacted.
    pub fn compact(&self) -> Result<bool> {
        let free: i64 = self
            .connection
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .map_err(db_error)?;
        if free < COMPACT_FREE_PAGES {
            return Ok(false);
        }
        // incremental_vacuum frees one page per step: step it to the end.
        let mut vacuum = self
            .connection
            .prepare("PRAGMA incremental_vacuum")
            .map_err(db_error)?;
        let mut steps = vacuum.query([]).map_err(db_error)?;
        while steps.next().map_err(db_error)?.is_some() {}
        drop(steps);
        drop(vacuum);
        self.connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(db_error)?;
        Ok(true)
    }

    /// A value from the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(db_error)
    }

    /// Refuses to sync a state that synced with a vault of untagged segment names (migration 5
    /// marked it): no reader accepts that vault any more.
    pub fn refuse_untagged_vault(&self) -> Result<()> {
        match self.meta(schema::META_UNTAGGED_VAULT)? {
            Some(_) => Err(schema::untagged_vault_error()),
            None => Ok(()),
        }
    }

    /// Sets a value in the meta table.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        set_meta(&self.connection, key, value)
    }

    /// Removes a value from the meta table (nothing if it is not there).
    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.connection
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map(|_| ())
            .map_err(db_error)
    }

    /// Runs `work` in one transaction: all of it is durable, or none.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = self.connection.transaction().map_err(db_error)?;
        let value = work(&tx)?;
        tx.commit().map_err(db_error)?;
        Ok(value)
    }

    /// Recorded batches waiting in the outbox, oldest first, merged, up to about `max_bytes` of
    /// encoded operations (always at least one row if any is waiting); with the id of the last
    /// row taken.
    pub fn outbox(&self, max_bytes: usize) -> Result<Option<(i64, EncodedBatch)>> {
        let mut statement = self
            .connection
            .prepare("SELECT id, body FROM outbox_batches ORDER BY id")
            .map_err(db_error)?;
        let mut rows = statement.query([]).map_err(db_error)?;
        let mut merged: Option<(i64, EncodedBatch)> = None;
        while let Some(row) = rows.next().map_err(db_error)? {
            let id: i64 = row.get(0).map_err(db_error)?;
            let body: Vec<u8> = row.get(1).map_err(db_error)?;
            let batch = open_outbox_row(&self.cache_key, &body)?;
            match &mut merged {
                Some((_, taken)) if taken.encoded_len() + batch.encoded_len() > max_bytes => break,
                Some((last, taken)) => {
                    *last = id;
                    taken.append(batch);
                }
                None => merged = Some((id, batch)),
            }
        }
        Ok(merged)
    }

    /// Replaces this device's identity in one transaction, for a state directory that turned
    /// out to be a copy of another device's: `restamped` (the staged segment's and the outbox's
    /// operations, stamped again by the new device) are applied, the outbox up to
    /// `last_outbox_id` is replaced by `outbox` (the outbox's share of them), and `also` runs
    /// (the caller swaps the staged segment and the device id there).
    pub fn replace_identity(
        &mut self,
        restamped: &[crate::sync::Operation],
        outbox: Option<(i64, &EncodedBatch)>,
        also: impl FnOnce(&Transaction<'_>) -> Result<()>,
    ) -> Result<()> {
        let key = self.cache_key.clone();
        self.apply(restamped, |tx| {
            if let Some((last_outbox_id, batch)) = outbox {
                tx.execute(
                    "DELETE FROM outbox_batches WHERE id <= ?1",
                    [last_outbox_id],
                )
                .map_err(db_error)?;
                insert_outbox_row(tx, &key, batch)?;
            }
            also(tx)
        })
        .map(|_| ())
    }

    /// Number of operations waiting in the outbox.
    pub fn outbox_len(&self) -> Result<u64> {
        self.connection
            .query_row(
                "SELECT COALESCE(SUM(operations), 0) FROM outbox_batches",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_error)
    }

    /// The sealed segment waiting for upload, if a previous sync stopped before finishing it.
    pub fn pending_segment(&self) -> Result<Option<PendingSegment>> {
        self.connection
            .query_row(
                "SELECT seq, name, object, hash FROM pending_segment ORDER BY seq LIMIT 1",
                [],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, Vec<u8>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(db_error)?
            .map(|(seq, name, object, hash)| {
                Ok(PendingSegment {
                    seq: seq as u64,
                    name,
                    object,
                    hash: hash.try_into().map_err(|_| corrupt("pending hash"))?,
                })
            })
            .transpose()
    }

    /// The tips this device applied: per device, every applied segment with no applied child
    /// (one, unless the device's tree forked).
    pub fn heads(&self) -> Result<Vec<Head>> {
        let mut statement = self
            .connection
            .prepare("SELECT device, seq, tag, hash FROM heads ORDER BY device, seq, tag")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(db_error)?;
        let mut heads = Vec::new();
        for row in rows {
            let (device, seq, tag, hash) = row.map_err(db_error)?;
            heads.push(Head {
                device: DeviceId(device.try_into().map_err(|_| corrupt("head device"))?),
                seq: seq as u64,
                tag: tag as u64,
                hash: hash.try_into().map_err(|_| corrupt("head hash"))?,
            });
        }
        Ok(heads)
    }

    /// The hash of a segment this device applied or wrote.
    pub fn segment_hash(&self, id: SegmentId) -> Result<Option<SegmentHash>> {
        self.connection
            .prepare_cached(
                "SELECT hash FROM segment_hashes WHERE device = ?1 AND seq = ?2 AND tag = ?3",
            )
            .map_err(db_error)?
            .query_row(
                params![&id.device.0[..], id.seq as i64, id.tag as i64],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map_err(db_error)?
            .map(|h| h.try_into().map_err(|_| corrupt("segment hash")))
            .transpose()
    }

    /// Key ids created here and not yet granted in an uploaded segment.
    pub fn ungranted_keys(&self) -> Result<Vec<KeyId>> {
        let mut statement = self
            .connection
            .prepare("SELECT key_id FROM ungranted_keys ORDER BY key_id")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .map_err(db_error)?;
        rows.map(|r| {
            r.map_err(db_error)?
                .try_into()
                .map_err(|_| corrupt("key id"))
        })
        .collect()
    }

    /// Devices seen in the vault: (device, name, platform).
    pub fn devices(&self) -> Result<Vec<(DeviceId, String, String)>> {
        let mut statement = self
            .connection
            .prepare("SELECT device, name, platform FROM devices ORDER BY device")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(db_error)?;
        rows.map(|row| {
            let (device, name, platform) = row.map_err(db_error)?;
            Ok((
                DeviceId(device.try_into().map_err(|_| corrupt("device"))?),
                name,
                platform,
            ))
        })
        .collect()
    }
}

/// A sealed segment waiting to be uploaded.
#[derive(Debug, Clone)]
pub struct PendingSegment {
    /// Its sequence number.
    pub seq: u64,
    /// Its object name.
    pub name: String,
    /// Its bytes.
    pub object: Vec<u8>,
    /// Their SHA-256.
    pub hash: SegmentHash,
}

pub(crate) fn set_meta(connection: &Connection, key: &str, value: &[u8]) -> Result<()> {
    // Cached: every record sets the clock.
    connection
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .map_err(db_error)?
        .execute(params![key, value])
        .map(|_| ())
        .map_err(db_error)
}

/// The name outbox rows are sealed under (local only).
const OUTBOX_NAME: &str = "local/outbox";

/// Appends a recorded batch to the outbox, sealed under the keyring key (uncompressed: the push
/// compresses segments), so operations waiting for a sync are not in the file in plaintext.
pub(crate) fn insert_outbox_row(
    tx: &Transaction<'_>,
    key: &CacheKey,
    batch: &EncodedBatch,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // The row is written straight into the object's buffer and encrypted there.
    let sealed = crate::sealing::seal_uncompressed_with(
        &key.key,
        &key.context(OUTBOX_NAME),
        batch.row_len(),
        |out| batch.write_row(out),
    )?;
    tx.prepare_cached("INSERT INTO outbox_batches (operations, body) VALUES (?1, ?2)")
        .map_err(db_error)?
        .execute(params![batch.operation_count() as i64, sealed])
        .map(|_| ())
        .map_err(db_error)
}

fn open_outbox_row(key: &CacheKey, sealed: &[u8]) -> Result<EncodedBatch> {
    let row = crate::sealing::open(&key.key, &key.context(OUTBOX_NAME), sealed)
        .map_err(|_| corrupt("outbox"))?;
    EncodedBatch::from_row(&row).ok_or_else(|| corrupt("outbox"))
}

/// Moves outbox rows up to `last_outbox_id` into a pending segment.
pub(crate) fn stage_segment(
    tx: &Transaction<'_>,
    segment: &PendingSegment,
    last_outbox_id: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO pending_segment (seq, name, object, hash, last_outbox_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![segment.seq as i64, segment.name, segment.object, &segment.hash[..], last_outbox_id],
    )
    .map_err(db_error)?;
    tx.execute(
        "DELETE FROM outbox_batches WHERE id <= ?1",
        [last_outbox_id],
    )
    .map_err(db_error)?;
    tx.execute("DELETE FROM ungranted_keys", [])
        .map_err(db_error)?;
    Ok(())
}

/// Replaces the staged segment `old` with `new` (the same operations sealed again under another
/// device id), keeping the outbox position it stands for.
pub(crate) fn replace_pending(
    tx: &Transaction<'_>,
    old: &PendingSegment,
    new: &PendingSegment,
) -> Result<()> {
    let changed = tx
        .execute(
            "UPDATE pending_segment SET seq = ?1, name = ?2, object = ?3, hash = ?4
             WHERE seq = ?5 AND name = ?6",
            params![
                new.seq as i64,
                new.name,
                new.object,
                &new.hash[..],
                old.seq as i64,
                old.name
            ],
        )
        .map_err(db_error)?;
    if changed == 1 {
        Ok(())
    } else {
        Err(corrupt("the staged segment to replace"))
    }
}

/// Records that a segment (`name`, with `hash` and `size`) is in the bucket and applied: it
/// becomes a tip of its device in place of the segment it follows, and a staged segment of
/// that name is done.
pub(crate) fn commit_head(
    tx: &Transaction<'_>,
    name: &SegmentName,
    hash: &SegmentHash,
    size: u64,
) -> Result<()> {
    let device = &name.device.0[..];
    if let Some(parent) = name.parent_id() {
        tx.execute(
            "DELETE FROM heads WHERE device = ?1 AND seq = ?2 AND tag = ?3",
            params![device, parent.seq as i64, parent.tag as i64],
        )
        .map_err(db_error)?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO heads (device, seq, tag, hash) VALUES (?1, ?2, ?3, ?4)",
        params![device, name.seq as i64, name.tag as i64, &hash[..]],
    )
    .map_err(db_error)?;
    tx.execute(
        "INSERT OR REPLACE INTO segment_hashes (device, seq, tag, hash, size)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            device,
            name.seq as i64,
            name.tag as i64,
            &hash[..],
            size as i64
        ],
    )
    .map_err(db_error)?;
    tx.execute(
        "DELETE FROM pending_segment WHERE seq = ?1 AND name = ?2",
        params![name.seq as i64, name.to_name()],
    )
    .map_err(db_error)?;
    Ok(())
}

/// Replaces every tip with `tips` (after a restore from a checkpoint: the engine computed
/// them from this device's tips and the checkpoint's), remembering their hashes.
pub(crate) fn set_tips(tx: &Transaction<'_>, tips: &[Head]) -> Result<()> {
    tx.execute("DELETE FROM heads", []).map_err(db_error)?;
    for head in tips {
        let row = params![
            &head.device.0[..],
            head.seq as i64,
            head.tag as i64,
            &head.hash[..]
        ];
        tx.execute(
            "INSERT OR REPLACE INTO heads (device, seq, tag, hash) VALUES (?1, ?2, ?3, ?4)",
            row,
        )
        .map_err(db_error)?;
        tx.execute(
            "INSERT OR IGNORE INTO segment_hashes (device, seq, tag, hash, size)
             VALUES (?1, ?2, ?3, ?4, 0)",
            row,
        )
        .map_err(db_error)?;
    }
    Ok(())
}

pub(crate) fn note_device(
    tx: &Transaction<'_>,
    device: DeviceId,
    name: &str,
    platform: &str,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO devices (device, name, platform) VALUES (?1, ?2, ?3)",
        params![&device.0[..], name, platform],
    )
    .map(|_| ())
    .map_err(db_error)
}

pub(crate) fn add_ungranted_key(tx: &Transaction<'_>, key_id: &KeyId) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO ungranted_keys (key_id) VALUES (?1)",
        [&key_id[..]],
    )
    .map(|_| ())
    .map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RecoveryKey;
    use crate::sync::{Change, MemoryState, Message, Operation, Stamp, apply};
    use proptest::prelude::*;

    fn keys() -> VaultKeys {
        VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]))
    }

    fn arbitrary_op() -> impl Strategy<Value = Operation> {
        let chat = prop::sample::select(vec!["a", "b"]);
        let message = prop::sample::select(vec!["m1", "m2", "m3", "m4"]);
        (0u64..20, 0u32..3, 1u8..4, chat, message, 0u8..12).prop_map(
            |(wall, counter, device, chat, message, kind)| {
                let change = match kind {
                    0 => Change::DeleteChat {
                        chat_id: chat.into(),
                    },
                    1 | 2 => Change::DeleteMessage {
                        chat_id: chat.into(),
                        message_id: message.into(),
                    },
                    3 => Change::UpsertChat(Chat {
                        chat_id: chat.into(),
                        title: format!("t{wall}"),
                        members: vec![],
                        payload: vec![wall as u8],
                    }),
                    _ => Change::UpsertMessage(Message {
                        chat_id: chat.into(),
                        message_id: message.into(),
                        text: format!("{wall}/{counter}/{device}"),
                        sent_at_ms: i64::from(counter) * 7 - (wall as i64),
                        payload: wall.to_be_bytes().to_vec(),
                        ..Message::default()
                    }),
                };
                Operation {
                    stamp: Stamp {
                        wall_ms: wall,
                        counter,
                        device: DeviceId([device; 16]),
                    },
                    change,
                }
            },
        )
    }

    /// What a state answers, for comparison with the in-memory merge.
    fn observed(local: &LocalState) -> (Vec<Message>, Vec<(String, u64, u64)>) {
        let summaries = local
            .chat_summaries()
            .unwrap()
            .into_iter()
            .map(|s| (s.chat.title, s.message_count, s.message_bytes))
            .collect();
        (local.messages(None).unwrap(), summaries)
    }

    fn expected(memory: &MemoryState) -> (Vec<Message>, Vec<(String, u64, u64)>) {
        let messages = memory.messages();
        let summaries = memory
            .chats()
            .into_iter()
            .map(|chat| {
                let mine: Vec<&Message> = messages
                    .iter()
                    .filter(|m| m.chat_id == chat.chat_id)
                    .collect();
                let bytes = mine
                    .iter()
                    .map(|m| prost::Message::encoded_len(&m.to_proto()) as u64)
                    .sum();
                (chat.title, mine.len() as u64, bytes)
            })
            .collect();
        let mut ordered = messages;
        ordered.sort_by(|a, b| {
            (&a.chat_id, a.sent_at_ms, &a.message_id).cmp(&(
                &b.chat_id,
                b.sent_at_ms,
                &b.message_id,
            ))
        });
        (ordered, summaries)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever mix of recording (no lookups), applying (merge rules) and reopening, the
        /// version index and the content cache answer exactly what the in-memory merge does,
        /// and the state survives a reopen.
        #[test]
        fn sqlite_state_matches_the_in_memory_merge(
            ops in prop::collection::vec(arbitrary_op(), 0..60),
            cuts in prop::collection::vec((1usize..8, any::<bool>(), any::<bool>()), 1..12),
        ) {
            let mut seen = std::collections::HashSet::new();
            let ops: Vec<Operation> = ops.into_iter().filter(|o| seen.insert(o.stamp)).collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let mut local = LocalState::open(&path, &keys()).unwrap();
            let mut memory = MemoryState::new();
            let mut rest = &ops[..];
            for (len, by_record, reopen) in cuts.iter().cycle().take(ops.len() + 1) {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*len).min(rest.len()));
                rest = tail;
                for op in chunk {
                    apply(&mut memory, op).unwrap();
                }
                if *by_record {
                    let rows = [EncodedBatch::from_operations(chunk)];
                    local.record(chunk, &rows, |_| Ok(())).unwrap();
                } else {
                    local.apply(chunk, |_| Ok(())).unwrap();
                }
                if *reopen {
                    drop(local);
                    local = LocalState::open(&path, &keys()).unwrap();
                }
                prop_assert_eq!(observed(&local), expected(&memory));
            }
            // Re-applying everything changes nothing.
            prop_assert_eq!(local.apply(&ops, |_| Ok(())).unwrap().0, 0);
            prop_assert_eq!(observed(&local), expected(&memory));
        }
    }

    #[test]
    fn a_deleted_chat_with_messages_keeps_only_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = LocalState::open(&dir.path().join("state.db"), &keys()).unwrap();
        let device = DeviceId([3; 16]);
        let op = |wall_ms, change| Operation {
            stamp: Stamp {
                wall_ms,
                counter: 0,
                device,
            },
            change,
        };
        let message = |id: &str| {
            Change::UpsertMessage(Message {
                chat_id: "c".into(),
                message_id: id.into(),
                text: id.into(),
                ..Message::default()
            })
        };
        let ops = [
            op(1, message("old")),
            op(2, message("older-edited")),
            op(
                5,
                Change::DeleteChat {
                    chat_id: "c".into(),
                },
            ),
            op(9, message("new")),
        ];
        local.apply(&ops, |_| Ok(())).unwrap();
        // An old operation arriving after the deletion stays deleted.
        assert_eq!(
            local
                .apply(&[op(3, message("late"))], |_| Ok(()))
                .unwrap()
                .0,
            0
        );
        let ids: Vec<String> = local
            .messages(Some("c"))
            .unwrap()
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        assert_eq!(ids, ["new"]);
        assert_eq!(local.chat_summaries().unwrap()[0].message_count, 1);
    }

    #[test]
    fn without_the_cache_counts_still_work_and_content_questions_say_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = LocalState::open(&dir.path().join("state.db"), &keys()).unwrap();
        local.set_cache_setting(CacheSetting::Off).unwrap();
        let ops: Vec<Operation> = (0..100u64)
            .map(|i| Operation {
                stamp: Stamp {
                    wall_ms: i + 1,
                    counter: 0,
                    device: DeviceId([1; 16]),
                },
                change: Change::UpsertMessage(Message {
                    chat_id: "c".into(),
                    message_id: format!("m{i}"),
                    text: "hello".into(),
                    ..Message::default()
                }),
            })
            .collect();
        local
            .record(&ops, &[EncodedBatch::from_operations(&ops)], |_| Ok(()))
            .unwrap();
        assert_eq!(local.cache_bytes().unwrap(), 0);
        assert_eq!(local.chat_summaries().unwrap()[0].message_count, 100);
        assert!(matches!(
            local.messages(Some("c")),
            Err(Error::NotCached { chat_id }) if chat_id == "c"
        ));
        assert!(!local.cache_is_complete().unwrap());
        // Turned on again, what was recorded meanwhile is known not to be there.
        local
            .set_cache_setting(CacheSetting::On { max_bytes: None })
            .unwrap();
        assert!(matches!(
            local.messages(Some("c")),
            Err(Error::NotCached { .. })
        ));
    }
}
