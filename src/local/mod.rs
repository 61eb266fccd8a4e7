//! Local state: one SQLite database per device and vault, crash-safe by transactions.
//!
//! It holds the outbox of recorded operations not yet uploaded, the sealed segment being uploaded
//! (so a crash between sealing and upload re-sends the same bytes, never a second segment with the
//! same sequence number), the newest applied segment per device, the merged chats and messages,
//! the clock, and the chat keys sealed under the keyring key. No key is stored in plaintext: the
//! app passes the recovery key each time it opens the vault.
//!
//! SQLite rather than redb: both platforms' apps already ship and trust SQLite, its
//! write-ahead log with `synchronous=FULL` makes every committed transaction durable, and one
//! transaction covers "apply these operations and advance this cursor", which is what makes a
//! crash at any instant lose nothing acknowledged and apply nothing twice.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::{Error, Result};
use crate::format::proto;
use crate::history::{HistoryCursor, HistoryPage};
use crate::sync::batch::EncodedBatch;
use crate::sync::segment::{Head, KeyId, SegmentHash};
use crate::sync::{
    Applied, Chat, ChatRecord, DeviceId, Message, MessageRecord, Operation, Stamp, StateStore,
    apply,
};

mod schema;

pub use schema::CURRENT_VERSION as SCHEMA_VERSION;

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
}

impl core::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LocalState")
    }
}

impl LocalState {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<LocalState> {
        let mut connection = Connection::open(path).map_err(db_error)?;
        // The WAL file is cut back to 64 MiB whenever a checkpoint empties it, so one large
        // transaction does not leave a large file behind.
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
                 PRAGMA journal_size_limit=67108864;",
            )
            .map_err(db_error)?;
        schema::migrate(&mut connection)?;
        Ok(LocalState { connection })
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

    /// Sets a value in the meta table.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        set_meta(&self.connection, key, value)
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
            let batch = EncodedBatch::from_row(&body).ok_or_else(|| corrupt("outbox"))?;
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

    /// Newest applied segment per device.
    pub fn heads(&self) -> Result<BTreeMap<DeviceId, Head>> {
        let mut statement = self
            .connection
            .prepare("SELECT device, seq, hash FROM heads")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(db_error)?;
        let mut heads = BTreeMap::new();
        for row in rows {
            let (device, seq, hash) = row.map_err(db_error)?;
            let device = DeviceId(device.try_into().map_err(|_| corrupt("head device"))?);
            let hash: SegmentHash = hash.try_into().map_err(|_| corrupt("head hash"))?;
            heads.insert(
                device,
                Head {
                    device,
                    seq: seq as u64,
                    hash,
                },
            );
        }
        Ok(heads)
    }

    /// The hash of a segment this device applied or wrote.
    pub fn segment_hash(&self, device: DeviceId, seq: u64) -> Result<Option<SegmentHash>> {
        self.connection
            .query_row(
                "SELECT hash FROM segment_hashes WHERE device = ?1 AND seq = ?2",
                params![&device.0[..], seq as i64],
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

    /// Visible chats with counts, by chat id.
    pub fn chat_summaries(&self) -> Result<Vec<ChatSummary>> {
        let mut statement = self
            .connection
            .prepare(
                "WITH ids AS (SELECT chat_id FROM chats WHERE chat IS NOT NULL
                              UNION SELECT chat_id FROM messages WHERE message IS NOT NULL)
                 SELECT ids.chat_id, c.chat,
                        (SELECT COUNT(*) FROM messages m WHERE m.chat_id = ids.chat_id AND m.message IS NOT NULL),
                        (SELECT COALESCE(SUM(size), 0) FROM messages m WHERE m.chat_id = ids.chat_id AND m.message IS NOT NULL)
                 FROM ids LEFT JOIN chats c ON c.chat_id = ids.chat_id ORDER BY ids.chat_id",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<Vec<u8>>>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .map_err(db_error)?;
        rows.map(|row| {
            let (chat_id, chat, count, bytes) = row.map_err(db_error)?;
            let chat = match chat {
                Some(bytes) => {
                    Chat::from_proto(proto::Chat::decode(&bytes[..]).map_err(|_| corrupt("chat"))?)
                }
                None => Chat {
                    chat_id,
                    ..Chat::default()
                },
            };
            Ok(ChatSummary {
                chat,
                message_count: count as u64,
                message_bytes: bytes as u64,
            })
        })
        .collect()
    }

    /// Every attachment a live message references, by content id (one reference per content).
    pub fn referenced_attachments(
        &self,
    ) -> Result<BTreeMap<crate::attachment::ContentId, crate::attachment::Attachment>> {
        let mut statement = self
            .connection
            .prepare("SELECT message FROM messages WHERE message IS NOT NULL")
            .map_err(db_error)?;
        let rows = statement.query_map([], first_blob).map_err(db_error)?;
        let mut out = BTreeMap::new();
        for row in rows {
            for attachment in decode_message(&row.map_err(db_error)?)?.attachments {
                out.entry(attachment.content_id).or_insert(attachment);
            }
        }
        Ok(out)
    }

    /// Live messages of one chat (or of all chats), ordered by chat, send time, message id.
    pub fn messages(&self, chat_id: Option<&str>) -> Result<Vec<Message>> {
        self.messages_sent_since(chat_id, i64::MIN)
    }

    /// Live messages sent at or after `since_ms`, of one chat or of all, in the same order.
    pub fn messages_sent_since(
        &self,
        chat_id: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        self.for_each_message(chat_id, since_ms, &mut |m| {
            messages.push(m);
            Ok(())
        })?;
        Ok(messages)
    }

    /// Hands each live message sent at or after `since_ms` (of one chat or of all), by chat,
    /// send time and id, to `each`, one at a time: memory stays flat however long the history.
    /// Returns how many it handed over.
    pub fn for_each_message(
        &self,
        chat_id: Option<&str>,
        since_ms: i64,
        each: &mut dyn FnMut(Message) -> Result<()>,
    ) -> Result<u64> {
        // Two statements rather than "?1 IS NULL OR chat_id = ?1", which would stop SQLite from
        // using the (chat_id, sent_at_ms, message_id) index for one chat.
        let mut statement = match chat_id {
            Some(_) => self.connection.prepare(
                "SELECT message FROM messages
                 WHERE chat_id = ?1 AND message IS NOT NULL AND sent_at_ms >= ?2
                 ORDER BY chat_id, sent_at_ms, message_id",
            ),
            None => self.connection.prepare(
                "SELECT message FROM messages WHERE message IS NOT NULL AND sent_at_ms >= ?1
                 ORDER BY chat_id, sent_at_ms, message_id",
            ),
        }
        .map_err(db_error)?;
        let mut rows = match chat_id {
            Some(chat_id) => statement.query(params![chat_id, since_ms]),
            None => statement.query(params![since_ms]),
        }
        .map_err(db_error)?;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(db_error)? {
            let bytes = row
                .get_ref(0)
                .map_err(db_error)?
                .as_blob()
                .map_err(|_| corrupt("message"))?;
            each(decode_message(bytes)?)?;
            count += 1;
        }
        Ok(count)
    }

    /// One page of a chat's history: up to `limit` live messages before `before` (from the
    /// newest when `None`), oldest first. One indexed range scan of `limit + 1` rows.
    pub fn history_page(
        &self,
        chat_id: &str,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<HistoryPage> {
        // Row values compare (sent_at_ms, message_id) as a pair, using the
        // (chat_id, sent_at_ms, message_id) index; TEXT compares by UTF-8 bytes (BINARY).
        let mut statement = self
            .connection
            .prepare_cached(match before {
                Some(_) => {
                    "SELECT message FROM messages
                     WHERE chat_id = ?1 AND message IS NOT NULL
                       AND (sent_at_ms, message_id) < (?3, ?4)
                     ORDER BY sent_at_ms DESC, message_id DESC LIMIT ?2"
                }
                None => {
                    "SELECT message FROM messages WHERE chat_id = ?1 AND message IS NOT NULL
                     ORDER BY sent_at_ms DESC, message_id DESC LIMIT ?2"
                }
            })
            .map_err(db_error)?;
        let fetch = i64::from(limit) + 1;
        let rows = match before {
            Some(cursor) => statement.query_map(
                params![chat_id, fetch, cursor.sent_at_ms, cursor.message_id],
                first_blob,
            ),
            None => statement.query_map(params![chat_id, fetch], first_blob),
        }
        .map_err(db_error)?;
        let mut page = rows
            .map(|row| decode_message(&row.map_err(db_error)?))
            .collect::<Result<Vec<_>>>()?;
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        page.reverse();
        Ok(HistoryPage::new(page, more))
    }

    /// Every chat id with any record (live, deleted or only tombstones), in byte order.
    pub fn all_chat_ids(&self) -> Result<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT chat_id FROM chats UNION SELECT chat_id FROM messages ORDER BY 1")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(db_error)?;
        rows.map(|r| r.map_err(db_error)).collect()
    }

    /// A chat's merge state as operations (the winning operation for its metadata and for each
    /// message, tombstones included), and the stamp of its newest deletion.
    pub fn chat_operations(&self, chat_id: &str) -> Result<(Vec<Operation>, Option<Stamp>)> {
        let tx = self.connection.unchecked_transaction().map_err(db_error)?;
        let state = SqlState { tx: &tx };
        let record = state.chat(chat_id)?.unwrap_or_default();
        let mut operations = Vec::new();
        if let Some((stamp, chat)) = record.meta {
            operations.push(Operation {
                stamp,
                change: crate::sync::Change::UpsertChat(chat),
            });
        }
        let mut statement = tx
            .prepare(
                "SELECT message_id, stamp, message FROM messages WHERE chat_id = ?1 ORDER BY stamp",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map([chat_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .map_err(db_error)?;
        for row in rows {
            let (message_id, stamp, message) = row.map_err(db_error)?;
            let stamp = Stamp::from_sortable_bytes(&stamp).ok_or_else(|| corrupt("stamp"))?;
            let change = match message {
                Some(bytes) => crate::sync::Change::UpsertMessage(decode_message(&bytes)?),
                None => crate::sync::Change::DeleteMessage {
                    chat_id: chat_id.to_owned(),
                    message_id,
                },
            };
            operations.push(Operation { stamp, change });
        }
        Ok((operations, record.deleted))
    }

    /// Deleted chats with the stamp of their newest deletion, by chat id.
    pub fn deleted_chats(&self) -> Result<Vec<(String, Stamp)>> {
        let mut statement = self
            .connection
            .prepare("SELECT chat_id, deleted_stamp FROM chats WHERE deleted_stamp IS NOT NULL ORDER BY chat_id")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db_error)?;
        rows.map(|row| {
            let (chat_id, stamp) = row.map_err(db_error)?;
            Ok((
                chat_id,
                Stamp::from_sortable_bytes(&stamp).ok_or_else(|| corrupt("stamp"))?,
            ))
        })
        .collect()
    }

    /// Checkpoints this device has opened: name -> (covered heads, creation time).
    pub fn known_checkpoints(&self) -> Result<BTreeMap<String, (Vec<Head>, u64)>> {
        let mut statement = self
            .connection
            .prepare("SELECT name, covered, created_at_ms FROM checkpoints")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(db_error)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (name, covered, created) = row.map_err(db_error)?;
            let decoded =
                proto::Segment::decode(&covered[..]).map_err(|_| corrupt("checkpoint"))?;
            let heads = decoded
                .seen
                .iter()
                .map(|h| {
                    Ok(Head {
                        device: DeviceId(
                            h.device_id
                                .as_slice()
                                .try_into()
                                .map_err(|_| corrupt("checkpoint"))?,
                        ),
                        seq: h.seq,
                        hash: h
                            .hash
                            .as_slice()
                            .try_into()
                            .map_err(|_| corrupt("checkpoint"))?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.insert(name, (heads, created as u64));
        }
        Ok(out)
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

fn first_blob(row: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<u8>> {
    row.get(0)
}

fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::from_proto(proto::Message::decode(bytes).map_err(|_| corrupt("message"))?)
        .map_err(|_| corrupt("message"))
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
    connection
        .execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map(|_| ())
        .map_err(db_error)
}

/// Appends a recorded batch to the outbox.
pub(crate) fn insert_outbox_row(tx: &Transaction<'_>, batch: &EncodedBatch) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    tx.prepare_cached("INSERT INTO outbox_batches (operations, body) VALUES (?1, ?2)")
        .map_err(db_error)?
        .execute(params![batch.operation_count() as i64, batch.to_row()])
        .map(|_| ())
        .map_err(db_error)
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

/// Records that a segment is in the bucket and applied: advances the device's head.
pub(crate) fn commit_head(tx: &Transaction<'_>, head: &Head, size: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO heads (device, seq, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (device) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![&head.device.0[..], head.seq as i64, &head.hash[..]],
    )
    .map_err(db_error)?;
    tx.execute(
        "INSERT OR REPLACE INTO segment_hashes (device, seq, hash, size) VALUES (?1, ?2, ?3, ?4)",
        params![
            &head.device.0[..],
            head.seq as i64,
            &head.hash[..],
            size as i64
        ],
    )
    .map_err(db_error)?;
    tx.execute(
        "DELETE FROM pending_segment WHERE seq = ?1 AND name = ?2",
        params![
            head.seq as i64,
            crate::sync::segment::segment_name(head.device, head.seq)
        ],
    )
    .map_err(db_error)?;
    Ok(())
}

/// Remembers a checkpoint's coverage (stored as the `seen` list of an otherwise empty Segment
/// message, to reuse its encoding).
pub(crate) fn note_checkpoint(
    tx: &Transaction<'_>,
    name: &str,
    covered: &[Head],
    created_at_ms: u64,
) -> Result<()> {
    let encoded = proto::Segment {
        seen: covered
            .iter()
            .map(|h| proto::DeviceHead {
                device_id: h.device.0.to_vec(),
                seq: h.seq,
                hash: h.hash.to_vec(),
            })
            .collect(),
        ..proto::Segment::default()
    }
    .encode_to_vec();
    tx.execute(
        "INSERT OR REPLACE INTO checkpoints (name, covered, created_at_ms) VALUES (?1, ?2, ?3)",
        params![name, encoded, created_at_ms as i64],
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

/// Sets a device's head only if it moves it forward.
pub(crate) fn advance_head(tx: &Transaction<'_>, head: &Head) -> Result<()> {
    tx.execute(
        "INSERT INTO heads (device, seq, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (device) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
         WHERE excluded.seq > heads.seq",
        params![&head.device.0[..], head.seq as i64, &head.hash[..]],
    )
    .map_err(db_error)?;
    tx.execute(
        "INSERT OR IGNORE INTO segment_hashes (device, seq, hash, size) VALUES (?1, ?2, ?3, 0)",
        params![&head.device.0[..], head.seq as i64, &head.hash[..]],
    )
    .map(|_| ())
    .map_err(db_error)
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

/// Applies operations to the merged state inside `tx`; returns how many changed it.
pub(crate) fn apply_operations(tx: &Transaction<'_>, operations: &[Operation]) -> Result<u64> {
    let mut state = SqlState { tx };
    let mut changed = 0;
    for operation in operations {
        if apply(&mut state, operation)? == Applied::Changed {
            changed += 1;
        }
    }
    Ok(changed)
}

/// The merge rules' view of the SQLite tables.
struct SqlState<'a> {
    tx: &'a Transaction<'a>,
}

fn stamp_from(bytes: Option<Vec<u8>>) -> Result<Option<Stamp>> {
    bytes
        .map(|b| Stamp::from_sortable_bytes(&b).ok_or_else(|| corrupt("stamp")))
        .transpose()
}

impl StateStore for SqlState<'_> {
    fn chat(&self, chat_id: &str) -> Result<Option<ChatRecord>> {
        let row = self
            .tx
            .prepare_cached("SELECT meta_stamp, chat, deleted_stamp FROM chats WHERE chat_id = ?1")
            .map_err(db_error)?
            .query_row([chat_id], |row| {
                Ok((
                    row.get::<_, Option<Vec<u8>>>(0)?,
                    row.get::<_, Option<Vec<u8>>>(1)?,
                    row.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .optional()
            .map_err(db_error)?;
        let Some((meta_stamp, chat, deleted)) = row else {
            return Ok(None);
        };
        let meta = match (stamp_from(meta_stamp)?, chat) {
            (Some(stamp), Some(bytes)) => Some((
                stamp,
                Chat::from_proto(proto::Chat::decode(&bytes[..]).map_err(|_| corrupt("chat"))?),
            )),
            _ => None,
        };
        Ok(Some(ChatRecord {
            meta,
            deleted: stamp_from(deleted)?,
        }))
    }

    fn put_chat(&mut self, chat_id: &str, record: ChatRecord) -> Result<()> {
        let (meta_stamp, chat) = match &record.meta {
            Some((stamp, chat)) => (
                Some(stamp.to_sortable_bytes().to_vec()),
                Some(chat.to_proto().encode_to_vec()),
            ),
            None => (None, None),
        };
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO chats (chat_id, meta_stamp, chat, deleted_stamp) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db_error)?
            .execute(params![
                chat_id,
                meta_stamp,
                chat,
                record.deleted.map(|s| s.to_sortable_bytes().to_vec())
            ])
            .map(|_| ())
            .map_err(db_error)
    }

    fn message(&self, chat_id: &str, message_id: &str) -> Result<Option<MessageRecord>> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT stamp, message FROM messages WHERE chat_id = ?1 AND message_id = ?2",
            )
            .map_err(db_error)?
            .query_row([chat_id, message_id], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Option<Vec<u8>>>(1)?))
            })
            .optional()
            .map_err(db_error)?;
        let Some((stamp, message)) = row else {
            return Ok(None);
        };
        Ok(Some(MessageRecord {
            stamp: Stamp::from_sortable_bytes(&stamp).ok_or_else(|| corrupt("stamp"))?,
            message: message.map(|bytes| decode_message(&bytes)).transpose()?,
        }))
    }

    fn put_message(
        &mut self,
        chat_id: &str,
        message_id: &str,
        record: MessageRecord,
    ) -> Result<()> {
        let body = record
            .message
            .as_ref()
            .map(|m| m.to_proto().encode_to_vec());
        let sent_at = record.message.as_ref().map_or(0, |m| m.sent_at_ms);
        let size = body.as_ref().map_or(0, Vec::len) as i64;
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO messages (chat_id, message_id, stamp, message, sent_at_ms, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_error)?
            .execute(params![
                chat_id,
                message_id,
                record.stamp.to_sortable_bytes().to_vec(),
                body,
                sent_at,
                size
            ])
            .map(|_| ())
            .map_err(db_error)
    }

    fn remove_messages_up_to(&mut self, chat_id: &str, stamp: Stamp) -> Result<()> {
        self.tx
            .execute(
                "DELETE FROM messages WHERE chat_id = ?1 AND stamp <= ?2",
                params![chat_id, stamp.to_sortable_bytes().to_vec()],
            )
            .map(|_| ())
            .map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{Change, MemoryState};

    #[test]
    fn sqlite_merge_matches_the_in_memory_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = LocalState::open(&dir.path().join("state.db")).unwrap();
        let device = DeviceId([3; 16]);
        let stamp = |wall_ms| Stamp {
            wall_ms,
            counter: 0,
            device,
        };
        let msg = |id: &str, text: &str| {
            Change::UpsertMessage(Message {
                chat_id: "c".into(),
                message_id: id.into(),
                text: text.into(),
                sent_at_ms: 5,
                ..Message::default()
            })
        };
        let ops: Vec<Operation> = vec![
            (1, msg("a", "one")),
            (
                2,
                Change::UpsertChat(Chat {
                    chat_id: "c".into(),
                    title: "T".into(),
                    members: vec!["x".into()],
                    payload: vec![0, 1, 255],
                }),
            ),
            (3, msg("b", "two")),
            (
                4,
                Change::DeleteMessage {
                    chat_id: "c".into(),
                    message_id: "a".into(),
                },
            ),
            (5, msg("b", "two edited")),
            (
                6,
                Change::DeleteChat {
                    chat_id: "gone".into(),
                },
            ),
            (7, msg("c", "three")),
        ]
        .into_iter()
        .map(|(wall, change)| Operation {
            stamp: stamp(wall),
            change,
        })
        .collect();
        local.transaction(|tx| apply_operations(tx, &ops)).unwrap();
        let mut memory = MemoryState::new();
        for op in &ops {
            apply(&mut memory, op).unwrap();
        }
        assert_eq!(local.messages(None).unwrap(), memory.messages());
        let summaries = local.chat_summaries().unwrap();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].chat.title, "T");
        assert_eq!(summaries[0].message_count, 2);
        // Re-applying changes nothing.
        assert_eq!(
            local.transaction(|tx| apply_operations(tx, &ops)).unwrap(),
            0
        );
    }
}
