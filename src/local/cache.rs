//! The content cache: the operations behind what the version index says, kept so that chatvault
//! can answer queries (messages, history pages, exports, checkpoints) without the bucket.
//!
//! Optional and bounded. Content is kept per chat as sealed blobs of encoded operations, one
//! per chat per transaction that changed it (a blob is a `ChatOperations` body, the same bytes a
//! segment block holds), sealed with XChaCha20-Poly1305 under the keyring key (derived from the
//! recovery key) and bound to the chat: a copied state directory reveals no message without the
//! recovery key. A blob may hold operations that later lost (an edit, a deletion): readers keep
//! only the operations the version index names as winners, so the cache can never contradict
//! the merge, and small blobs are repacked into larger ones with only those operations.
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

/// Blobs below this size (64 KiB) are small: once a chat has [`REPACK_SMALL_BLOBS`] of them in
/// a row, they are repacked into one.
const SMALL_BLOB: usize = 64 * 1024;
/// See [`SMALL_BLOB`]. (3 in unit tests, so that short histories are repacked again and again.)
const REPACK_SMALL_BLOBS: usize = if cfg!(test) { 3 } else { 16 };

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

fn blob_name(chat_id: &str) -> String {
    let digest = Sha256::digest(chat_id.as_bytes());
    format!("local/cache/{}", crate::hex::encode(&digest[..16]))
}

fn seal(key: &CacheKey, chat_id: &str, body: &[u8]) -> Result<Vec<u8>> {
    let name = blob_name(chat_id);
    let context = ObjectContext {
        vault_id: &key.vault_id,
        kind: ObjectKind::KeySet,
        name: &name,
    };
    sealing::seal(&key.key, &context, body)
}

fn open(key: &CacheKey, chat_id: &str, sealed: &[u8]) -> Result<Vec<Operation>> {
    let name = blob_name(chat_id);
    let context = ObjectContext {
        vault_id: &key.vault_id,
        kind: ObjectKind::KeySet,
        name: &name,
    };
    // A blob that does not open is damage to a cache, which is rebuilt, never trusted.
    let body = sealing::open(&key.key, &context, sealed).map_err(|_| corrupt("content cache"))?;
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
        let sealed = seal(key, chat_id, &EncodedBatch::chat_body(chat_id, fragment))?;
        connection
            .prepare_cached(
                "INSERT INTO cache_blobs (chat_id, operations, body) VALUES (?1, ?2, ?3)",
            )
            .map_err(db_error)?
            .execute(params![chat_id, fragment.count as i64, sealed])
            .map_err(db_error)?;
    }
    Ok(())
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
/// chat's versions; fails with [`Error::NotCached`] if the chat was evicted.
pub(crate) fn chat_operations(
    connection: &Connection,
    key: &CacheKey,
    chat_id: &str,
    versions: &KeyMap<Version>,
) -> Result<Vec<Operation>> {
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
    for row in rows {
        for operation in open(key, chat_id, &row.map_err(db_error)?)? {
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
    Ok(winners.into_values().collect())
}

/// Repacks a chat's trailing small blobs into one holding only winning operations, once there
/// are [`REPACK_SMALL_BLOBS`] of them.
pub(crate) fn repack_if_due(
    connection: &Connection,
    key: &CacheKey,
    chat_id: &str,
    versions: impl FnOnce() -> Result<KeyMap<Version>>,
) -> Result<()> {
    let small: Vec<i64> = {
        let mut statement = connection
            .prepare_cached(
                "SELECT id, length(body) FROM cache_blobs WHERE chat_id = ?1 ORDER BY id DESC",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map([chat_id], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(db_error)?;
        let mut small = Vec::new();
        for row in rows {
            let (id, length) = row.map_err(db_error)?;
            if length as usize >= SMALL_BLOB {
                break;
            }
            small.push(id);
        }
        small
    };
    if small.len() < REPACK_SMALL_BLOBS {
        return Ok(());
    }
    let versions = versions()?;
    let mut batch = EncodedBatch::new();
    let mut select = connection
        .prepare_cached("SELECT body FROM cache_blobs WHERE id = ?1")
        .map_err(db_error)?;
    let mut delete = connection
        .prepare_cached("DELETE FROM cache_blobs WHERE id = ?1")
        .map_err(db_error)?;
    for id in small.iter().rev() {
        let body: Vec<u8> = select.query_row([id], |row| row.get(0)).map_err(db_error)?;
        for operation in open(key, chat_id, &body)? {
            let winning = operation.change.message_id().is_some_and(|m| {
                versions
                    .get(&message_key(m))
                    .is_some_and(|v| v.stamp == operation.stamp)
            });
            if winning {
                batch.push(&operation);
            }
        }
        delete.execute([id]).map_err(db_error)?;
    }
    append(connection, key, &batch)
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
