//! The content cache: the operations behind what the version index says, kept so that chatvault
//! can answer queries (messages, history pages, exports, checkpoints) without the bucket.
//!
//! Optional and bounded. Content is kept per chat as sealed blobs of encoded operations, one
//! per chat per transaction that changed it (a blob is a `ChatOperations` body, the same bytes a
//! segment block holds), sealed with XChaCha20-Poly1305 under the keyring key (derived from the
//! recovery key) and bound to the chat: a copied state directory reveals no message without the
//! recovery key. A blob may hold operations that later lost (an edit, a deletion): readers keep
//! only the operations the version index names as winners, so the cache can never contradict
//! the merge. Blobs are repacked by levels (16 of one level at a chat's end become one of the
//! next), so each operation is rewritten O(log n) times; from level 2 on a repack keeps only
//! winning operations. Blobs are compressed (zstd) except level-0 blobs under 4 KiB, which wait
//! for their repack uncompressed (zstd's fixed cost per call was most of what the cache added to
//! a record spread over many chats). `LocalState` remembers the levels of each chat's blobs, so a
//! chat short of a repack costs `record` one insert and no query.
//!
//! Eviction drops whole chats, least recently written first and never a pinned one, and marks
//! them evicted: a query on an evicted chat fails with [`Error::NotCached`] instead of answering
//! with part of its history. Nothing evicted leaves the vault.

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{ObjectKind, proto};
use crate::keys::Key32;
use crate::sealing::{self, ObjectContext};
use crate::sync::Operation;
use crate::sync::batch::EncodedBatch;

use super::versions::{KeyMap, Version, message_key};
use super::{corrupt, db_error};

/// Blobs of one level a chat may have in a row before they are repacked into one blob of the
/// next level: a recording is a level-0 blob, and each operation is rewritten once per level
/// (O(log n) times), never once per later recording. (3 in unit tests, so that short histories
/// are repacked again and again.)
const REPACK_FAN_IN: usize = if cfg!(test) { 3 } else { 16 };
/// From this level on a repack keeps only winning operations (edits and deletions leave
/// superseded content behind); below it, blobs are concatenated without a lookup.
const FILTER_LEVEL: i64 = 2;

/// Where the cache seals with: the keyring key and the vault id.
#[derive(Clone)]
pub(crate) struct CacheKey {
    pub(crate) key: Key32,
    pub(crate) vault_id: crate::keys::VaultId,
}

impl core::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

impl CacheKey {
    /// The sealing context of a local object (the content cache's blobs, the outbox's rows):
    /// kind 5 (as the keyring's objects), this vault, and the object's local name.
    pub(crate) fn context<'a>(&'a self, name: &'a str) -> ObjectContext<'a> {
        ObjectContext {
            vault_id: &self.vault_id,
            kind: ObjectKind::KeySet,
            name,
        }
    }
}

/// The local name a chat's blobs are sealed under: `local/cache/` and the first 16 bytes of
/// SHA-256(chat id) in lower-case hex (written directly: formatting each byte cost more than
/// the hash, once per chat per record).
fn blob_name(chat_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(chat_id.as_bytes());
    let mut name = String::with_capacity(12 + 32);
    name.push_str("local/cache/");
    for byte in &digest[..16] {
        name.push(char::from(HEX[usize::from(byte >> 4)]));
        name.push(char::from(HEX[usize::from(byte & 15)]));
    }
    name
}

/// Level-0 blobs smaller than this (4 KiB) are sealed without zstd.
const SMALL_BLOB: usize = 4096;

/// Seals a blob, compressed (the cache's bound counts stored bytes) unless it is a small
/// level-0 blob: a record spread over many chats appends a few hundred bytes to each, where
/// zstd's fixed cost per call was most of the cache's cost of `record`, and such blobs are
/// repacked (and compressed) 16 at a time anyway.
fn seal(key: &CacheKey, name: &str, level: i64, body: &[u8]) -> Result<Vec<u8>> {
    if level == 0 && body.len() < SMALL_BLOB {
        sealing::seal_uncompressed(&key.key, &key.context(name), body)
    } else {
        sealing::seal(&key.key, &key.context(name), body)
    }
}

/// Opens a blob of `chat_id` (whose [`blob_name`] is `name`) into its operations.
fn open(key: &CacheKey, chat_id: &str, name: &str, sealed: &[u8]) -> Result<Vec<Operation>> {
    // A blob that does not open is damage to a cache, which is rebuilt, never trusted.
    let body = open_body(key, name, sealed)?;
    let decoded = proto::ChatOperations::decode(&body[..]).map_err(|_| corrupt("content cache"))?;
    if decoded.chat_id != chat_id {
        return Err(corrupt("content cache"));
    }
    decoded
        .operations
        .into_iter()
        .map(|op| Operation::from_proto(op).map_err(|_| corrupt("content cache")))
        .collect()
}

/// Appends one blob per chat of `batch` (operations that changed the state).
pub(crate) fn append(connection: &Connection, key: &CacheKey, batch: &EncodedBatch) -> Result<()> {
    for (chat_id, fragment) in batch.chats() {
        let body = EncodedBatch::chat_body(chat_id, fragment);
        insert_blob(
            connection,
            key,
            chat_id,
            &blob_name(chat_id),
            0,
            fragment.count,
            &body,
        )?;
    }
    Ok(())
}

fn insert_blob(
    connection: &Connection,
    key: &CacheKey,
    chat_id: &str,
    name: &str,
    level: i64,
    operations: u64,
    body: &[u8],
) -> Result<()> {
    let sealed = seal(key, name, level, body)?;
    connection
        .prepare_cached(
            "INSERT INTO cache_blobs (chat_id, level, operations, body) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db_error)?
        .execute(params![chat_id, level, operations as i64, sealed])
        .map(|_| ())
        .map_err(db_error)
}

/// The operations of a `ChatOperations` body of `chat_id`: the bytes after its chat id field
/// (each operation is field 2, so such tails concatenate into a valid body).
fn operations_of<'b>(body: &'b [u8], chat_id: &str) -> Result<&'b [u8]> {
    let mut rest = body
        .strip_prefix(&[(1 << 3) | 2])
        .ok_or_else(|| corrupt("content cache"))?;
    let len = prost::encoding::decode_varint(&mut rest).map_err(|_| corrupt("content cache"))?;
    rest.strip_prefix(chat_id.as_bytes())
        .filter(|_| len == chat_id.len() as u64)
        .ok_or_else(|| corrupt("content cache"))
}

fn open_body(key: &CacheKey, name: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    sealing::open(&key.key, &key.context(name), sealed).map_err(|_| corrupt("content cache"))
}

/// Whether the cache holds all of this chat's content.
pub(crate) fn is_evicted(connection: &Connection, chat_id: &str) -> Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM cache_evicted WHERE chat_id = ?1")
        .map_err(db_error)?
        .query_row([chat_id], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
        .map_err(db_error)
}

/// Whether any chat was evicted.
pub(crate) fn any_evicted(connection: &Connection) -> Result<bool> {
    connection
        .query_row("SELECT EXISTS (SELECT 1 FROM cache_evicted)", [], |row| {
            row.get::<_, bool>(0)
        })
        .map_err(db_error)
}

/// A chat's winning operations (message upserts and tombstones, not its metadata), given the
/// chat's versions; fails with [`Error::NotCached`] if the chat was evicted. `None` when the
/// cache cannot answer for the chat: a blob does not open (damage), or a winner the version
/// index names is missing (a stale cache, such as a state directory restored from an older
/// copy). The caller drops such a chat's content; it is never trusted.
pub(crate) fn chat_operations(
    connection: &Connection,
    key: &CacheKey,
    chat_id: &str,
    versions: &KeyMap<Version>,
) -> Result<Option<Vec<Operation>>> {
    if is_evicted(connection, chat_id)? {
        return Err(Error::NotCached {
            chat_id: chat_id.to_owned(),
        });
    }
    let mut statement = connection
        .prepare_cached("SELECT body FROM cache_blobs WHERE chat_id = ?1 ORDER BY id")
        .map_err(db_error)?;
    let rows = statement
        .query_map([chat_id], |row| row.get::<_, Vec<u8>>(0))
        .map_err(db_error)?;
    let mut winners: KeyMap<Operation> = KeyMap::default();
    let name = blob_name(chat_id);
    for row in rows {
        let Ok(operations) = open(key, chat_id, &name, &row.map_err(db_error)?) else {
            return Ok(None);
        };
        for operation in operations {
            let Some(message_id) = operation.change.message_id() else {
                continue;
            };
            let key = message_key(message_id);
            if versions
                .get(&key)
                .is_some_and(|v| v.stamp == operation.stamp)
            {
                winners.insert(key, operation);
            }
        }
    }
    if winners.len() < versions.len() {
        return Ok(None);
    }
    Ok(Some(winners.into_values().collect()))
}

/// Drops a chat's content and marks it not cached, in one transaction.
pub(crate) fn discard_chat(connection: &Connection, chat_id: &str) -> Result<()> {
    let tx = connection.unchecked_transaction().map_err(db_error)?;
    remove_chat(&tx, chat_id)?;
    mark_evicted(&tx, chat_id)?;
    tx.commit().map_err(db_error)
}

/// The levels of a chat's blobs, oldest first, as runs of one level: (level, how many).
pub(crate) type Levels = Vec<(i64, usize)>;

/// Reads the levels of a chat's blobs (once per chat and session: `LocalState` keeps them).
pub(crate) fn load_levels(connection: &Connection, chat_id: &str) -> Result<Levels> {
    let mut statement = connection
        .prepare_cached("SELECT level FROM cache_blobs WHERE chat_id = ?1 ORDER BY id")
        .map_err(db_error)?;
    let rows = statement
        .query_map([chat_id], |row| row.get::<_, i64>(0))
        .map_err(db_error)?;
    let mut levels = Levels::new();
    for row in rows {
        push_level(&mut levels, row.map_err(db_error)?, 1);
    }
    Ok(levels)
}

/// Notes `count` blobs of `level` appended at a chat's end.
pub(crate) fn push_level(levels: &mut Levels, level: i64, count: usize) {
    if count == 0 {
        return;
    }
    match levels.last_mut() {
        Some((last, blobs)) if *last == level => *blobs += count,
        _ => levels.push((level, count)),
    }
}

/// Repacks a chat's newest blobs while [`REPACK_FAN_IN`] of one level follow each other at its
/// end: they become one blob of the next level. From [`FILTER_LEVEL`] on, only operations that
/// `versions` names as winners are kept. `levels` are the chat's blob levels (kept up to date
/// here): a chat short of a repack costs no query, and a repack reads and deletes exactly its
/// blobs.
pub(crate) fn repack_if_due(
    connection: &Connection,
    key: &CacheKey,
    chat_id: &str,
    levels: &mut Levels,
    versions: impl Fn() -> Result<KeyMap<Version>>,
) -> Result<()> {
    let mut name: Option<String> = None;
    loop {
        let Some(&(level, blobs)) = levels.last() else {
            return Ok(());
        };
        if blobs < REPACK_FAN_IN {
            return Ok(());
        }
        let name = name.get_or_insert_with(|| blob_name(chat_id)).as_str();
        // The oldest of the chat's newest `blobs` blobs (the index on (chat_id, id) answers it).
        let first_id: i64 = connection
            .prepare_cached(
                "SELECT id FROM cache_blobs WHERE chat_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
            )
            .map_err(db_error)?
            .query_row(params![chat_id, (blobs - 1) as i64], |row| row.get(0))
            .map_err(db_error)?;
        let winners = if level + 1 >= FILTER_LEVEL {
            Some(versions()?)
        } else {
            None
        };
        let mut body = EncodedBatch::chat_body(chat_id, &Default::default());
        let mut count = 0u64;
        // Those blobs are every blob of the chat from the oldest of them on: one read and one
        // delete of that range.
        let mut read = 0usize;
        {
            let mut select = connection
                .prepare_cached(
                    "SELECT level, operations, body FROM cache_blobs WHERE chat_id = ?1 AND id >= ?2
                     ORDER BY id",
                )
                .map_err(db_error)?;
            let mut rows = select.query(params![chat_id, first_id]).map_err(db_error)?;
            while let Some(row) = rows.next().map_err(db_error)? {
                read += 1;
                if row.get::<_, i64>(0).map_err(db_error)? != level {
                    // The levels known in memory disagree with the file: the transaction fails
                    // (and the levels are read again next time).
                    return Err(corrupt("content cache levels"));
                }
                let operations: i64 = row.get(1).map_err(db_error)?;
                let sealed = row
                    .get_ref(2)
                    .map_err(db_error)?
                    .as_blob()
                    .map_err(|_| corrupt("content cache"))?;
                match &winners {
                    None => {
                        let opened = open_body(key, name, sealed)?;
                        body.extend_from_slice(operations_of(&opened, chat_id)?);
                        count += operations as u64;
                    }
                    Some(versions) => {
                        let mut kept = EncodedBatch::new();
                        for operation in open(key, chat_id, name, sealed)? {
                            let winning = operation.change.message_id().is_some_and(|m| {
                                versions
                                    .get(&message_key(m))
                                    .is_some_and(|v| v.stamp == operation.stamp)
                            });
                            if winning {
                                kept.push(&operation);
                            }
                        }
                        for (_, fragment) in kept.chats() {
                            body.extend_from_slice(&fragment.bytes);
                            count += fragment.count;
                        }
                    }
                }
            }
        }
        if read != blobs {
            return Err(corrupt("content cache levels"));
        }
        connection
            .prepare_cached("DELETE FROM cache_blobs WHERE chat_id = ?1 AND id >= ?2")
            .map_err(db_error)?
            .execute(params![chat_id, first_id])
            .map_err(db_error)?;
        insert_blob(connection, key, chat_id, name, level + 1, count, &body)?;
        levels.pop();
        push_level(levels, level + 1, 1);
    }
}

/// Drops a chat's content (a chat deletion made all of it lose, or eviction).
pub(crate) fn remove_chat(connection: &Connection, chat_id: &str) -> Result<()> {
    connection
        .prepare_cached("DELETE FROM cache_blobs WHERE chat_id = ?1")
        .map_err(db_error)?
        .execute([chat_id])
        .map(|_| ())
        .map_err(db_error)
}

/// Evicts whole chats, least recently written first and never a pinned one, until the cache
/// holds at most `limit` bytes. Returns the chats evicted.
pub(crate) fn evict_to(connection: &Connection, limit: u64) -> Result<Vec<String>> {
    let total: i64 = connection
        .query_row(
            "SELECT COALESCE(SUM(length(body)), 0) FROM cache_blobs",
            [],
            |row| row.get(0),
        )
        .map_err(db_error)?;
    let mut excess = (total as u64).saturating_sub(limit);
    if excess == 0 {
        return Ok(Vec::new());
    }
    let candidates: Vec<(String, i64)> = {
        let mut statement = connection
            .prepare(
                "SELECT chat_id, SUM(length(body)) FROM cache_blobs
                 WHERE chat_id NOT IN (SELECT chat_id FROM cache_pinned)
                 GROUP BY chat_id ORDER BY MAX(id)",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(db_error)?;
        rows.map(|r| r.map_err(db_error)).collect::<Result<_>>()?
    };
    let mut evicted = Vec::new();
    for (chat_id, bytes) in candidates {
        if excess == 0 {
            break;
        }
        remove_chat(connection, &chat_id)?;
        mark_evicted(connection, &chat_id)?;
        excess = excess.saturating_sub(bytes as u64);
        evicted.push(chat_id);
    }
    Ok(evicted)
}

/// Marks a chat as not (fully) in the cache.
pub(crate) fn mark_evicted(connection: &Connection, chat_id: &str) -> Result<()> {
    connection
        .prepare_cached("INSERT OR IGNORE INTO cache_evicted (chat_id) VALUES (?1)")
        .map_err(db_error)?
        .execute([chat_id])
        .map(|_| ())
        .map_err(db_error)
}

/// Pins or unpins a chat (a pinned chat is never evicted).
pub(crate) fn set_pinned(connection: &Connection, chat_id: &str, pinned: bool) -> Result<()> {
    let sql = if pinned {
        "INSERT OR IGNORE INTO cache_pinned (chat_id) VALUES (?1)"
    } else {
        "DELETE FROM cache_pinned WHERE chat_id = ?1"
    };
    connection
        .execute(sql, [chat_id])
        .map(|_| ())
        .map_err(db_error)
}

/// Bytes the cache holds.
pub(crate) fn size(connection: &Connection) -> Result<u64> {
    connection
        .query_row(
            "SELECT COALESCE(SUM(length(body)), 0) FROM cache_blobs",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name blobs are sealed under is what earlier versions used (a blob sealed then
    /// still opens).
    #[test]
    fn blob_names_are_unchanged() {
        for chat_id in ["", "chat-0001", "é🙂", &"x".repeat(300)] {
            let digest = Sha256::digest(chat_id.as_bytes());
            assert_eq!(
                blob_name(chat_id),
                format!("local/cache/{}", crate::hex::encode(&digest[..16]))
            );
        }
    }
}
