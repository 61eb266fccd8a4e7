//! The merged state in the local database: chats (metadata and deletion stamps), the version
//! index of every message, and the optional content cache; the merge rules applied to them; and
//! the questions the vault answers from them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::{Error, Result};
use crate::format::proto;
use crate::history::{HistoryCursor, HistoryPage};
use crate::sync::batch::EncodedBatch;
use crate::sync::{
    Applied, Change, Chat, ChatRecord, Message, MessageRecord, Operation, Stamp, StateStore, apply,
};

use super::cache::{self, CacheKey};
use super::greatest;
use super::versions::{self, DeviceNumbers, KeyMap, Version, VersionWriter, message_key};
use super::{ChatSummary, LocalState, corrupt, db_error};

/// Meta key holding "off" while the content cache is disabled.
const META_CACHE: &str = "content_cache";
/// Meta key holding the cache's byte bound (absent: unbounded).
const META_CACHE_LIMIT: &str = "content_cache_limit";

/// How the content cache is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSetting {
    /// No message content is kept; queries about messages fail with [`Error::NotCached`].
    Off,
    /// Content is kept up to `max_bytes` (sealed, compressed), evicting whole chats (least
    /// recently written first, never a pinned one); `None`: no bound.
    On {
        /// The bound in bytes.
        max_bytes: Option<u64>,
    },
}

fn stamp_from(bytes: Option<Vec<u8>>) -> Result<Option<Stamp>> {
    bytes
        .map(|b| Stamp::from_sortable_bytes(&b).ok_or_else(|| corrupt("stamp")))
        .transpose()
}

/// The merge rules' view of the local database during one transaction.
struct Merge<'t, 'c> {
    tx: &'t Transaction<'c>,
    versions: VersionWriter<'t>,
    /// Operations that changed the state, for the content cache (`None`: cache off).
    cached: Option<EncodedBatch>,
    /// Chats a deletion touched: their cache is dropped if nothing of them is left.
    deleted_chats: BTreeSet<String>,
    /// Chat records read or written in this transaction.
    chats: std::cell::RefCell<std::collections::HashMap<String, Option<ChatRecord>>>,
}

impl StateStore for Merge<'_, '_> {
    fn chat(&self, chat_id: &str) -> Result<Option<ChatRecord>> {
        // Every operation asks for its chat: answer repeated questions from memory.
        if let Some(record) = self.chats.borrow().get(chat_id) {
            return Ok(record.clone());
        }
        let record = read_chat(self.tx, chat_id)?;
        self.chats
            .borrow_mut()
            .insert(chat_id.to_owned(), record.clone());
        Ok(record)
    }

    fn put_chat(&mut self, chat_id: &str, record: ChatRecord) -> Result<()> {
        self.chats
            .borrow_mut()
            .insert(chat_id.to_owned(), Some(record.clone()));
        let (meta_stamp, chat) = match &record.meta {
            Some((stamp, chat)) => (
                Some(stamp.to_sortable_bytes().to_vec()),
                Some(chat.to_proto().encode_to_vec()),
            ),
            None => (None, None),
        };
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO chats (chat_id, meta_stamp, chat, deleted_stamp)
                 VALUES (?1, ?2, ?3, ?4)",
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

    fn message_stamp(&mut self, chat_id: &str, message_id: &str) -> Result<Option<Stamp>> {
        Ok(self
            .versions
            .get(self.tx, chat_id, &message_key(message_id))?
            .map(|v| v.stamp))
    }

    fn put_message(
        &mut self,
        chat_id: &str,
        message_id: &str,
        record: MessageRecord,
    ) -> Result<()> {
        let operation = Operation {
            stamp: record.stamp,
            change: match record.message {
                Some(message) => Change::UpsertMessage(message),
                None => Change::DeleteMessage {
                    chat_id: chat_id.to_owned(),
                    message_id: message_id.to_owned(),
                },
            },
        };
        self.versions
            .put(chat_id, message_key(message_id), version_of(&operation));
        if let Some(cached) = &mut self.cached {
            cached.push(&operation);
        }
        Ok(())
    }

    fn remove_messages_up_to(&mut self, chat_id: &str, stamp: Stamp) -> Result<()> {
        self.versions.drop_up_to(chat_id, stamp);
        self.deleted_chats.insert(chat_id.to_owned());
        Ok(())
    }
}

/// The version an operation on a message sets.
fn version_of(operation: &Operation) -> Version {
    match &operation.change {
        Change::UpsertMessage(message) => Version {
            stamp: operation.stamp,
            live: true,
            size: message.encoded_len() as u32,
        },
        _ => Version {
            stamp: operation.stamp,
            live: false,
            size: 0,
        },
    }
}

fn read_chat(connection: &Connection, chat_id: &str) -> Result<Option<ChatRecord>> {
    let row = connection
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

impl LocalState {
    /// Reads the content cache's setting from the meta table (when the state is opened; after
    /// that it is kept in memory, next to the journal, and changed only by
    /// [`set_cache_setting`](Self::set_cache_setting)).
    pub(super) fn cache_setting_in(connection: &Connection) -> Result<CacheSetting> {
        let get = |key: &str| {
            connection
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get::<_, Vec<u8>>(0)
                })
                .optional()
                .map_err(db_error)
        };
        if get(META_CACHE)?.is_some_and(|v| v == b"off") {
            return Ok(CacheSetting::Off);
        }
        let max_bytes = get(META_CACHE_LIMIT)?
            .map(|v| {
                v.try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("cache limit"))
            })
            .transpose()?;
        Ok(CacheSetting::On { max_bytes })
    }

    /// How the content cache is set.
    pub fn cache_setting(&self) -> Result<CacheSetting> {
        Ok(self.cache_setting)
    }

    /// Changes the content cache's setting. Turning it off drops all content; turning it on
    /// again keeps chats it did not hold marked as not cached; lowering the bound evicts at once.
    pub fn set_cache_setting(&mut self, setting: CacheSetting) -> Result<()> {
        // Blobs are dropped or evicted here: what is known of their ends is asked again.
        self.cache_levels.get_mut().clear();
        let before = self.cache_setting()?;
        let known_chats = self.all_chat_ids()?;
        self.transaction(|tx| {
            match setting {
                CacheSetting::Off => {
                    tx.execute("DELETE FROM cache_blobs", [])
                        .map_err(db_error)?;
                    super::set_meta(tx, META_CACHE, b"off")?;
                }
                CacheSetting::On { max_bytes } => {
                    if before == CacheSetting::Off {
                        // What was recorded while the cache was off is not in it.
                        for chat_id in &known_chats {
                            cache::mark_evicted(tx, chat_id)?;
                        }
                        tx.execute(
                            "INSERT OR IGNORE INTO cache_evicted (chat_id)
                             SELECT chat_id FROM chats UNION SELECT chat_id FROM version_runs",
                            [],
                        )
                        .map_err(db_error)?;
                    }
                    tx.execute("DELETE FROM meta WHERE key = ?1", [META_CACHE])
                        .map_err(db_error)?;
                    match max_bytes {
                        Some(limit) => {
                            super::set_meta(tx, META_CACHE_LIMIT, &limit.to_be_bytes())?;
                            cache::evict_to(tx, limit)?;
                        }
                        None => {
                            tx.execute("DELETE FROM meta WHERE key = ?1", [META_CACHE_LIMIT])
                                .map_err(db_error)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        self.cache_setting = setting;
        Ok(())
    }

    /// Pins a chat in the content cache (never evicted) or unpins it.
    pub fn pin_chat(&mut self, chat_id: &str, pinned: bool) -> Result<()> {
        self.transaction(|tx| cache::set_pinned(tx, chat_id, pinned))
    }

    /// Bytes of sealed content the cache holds.
    pub fn cache_bytes(&self) -> Result<u64> {
        cache::size(&self.connection)
    }

    /// (entries, runs) of the version index.
    pub fn version_index_size(&self) -> Result<(u64, u64)> {
        versions::index_size(&self.connection)
    }

    /// Applies other devices' operations under the merge rules and runs `also` in the same
    /// transaction. Returns how many operations changed the state, and what `also` returned.
    pub fn apply<T>(
        &mut self,
        operations: &[Operation],
        also: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<(u64, T)> {
        let cache_on = self.cache_setting != CacheSetting::Off;
        let raised = greatest::raised(self.greatest, operations);
        let applied = self.content_transaction(
            |merge| {
                if cache_on {
                    merge.cached = Some(EncodedBatch::new());
                }
                let mut changed = 0;
                for operation in operations {
                    if apply(merge, operation)? == Applied::Changed {
                        changed += 1;
                    }
                }
                Ok(changed)
            },
            &[],
            |tx| {
                greatest::store(tx, raised)?;
                also(tx)
            },
        )?;
        self.greatest = raised.or(self.greatest);
        Ok(applied)
    }

    /// Records this device's own operations (freshly stamped, so no lookup is needed: the index
    /// keeps the greatest stamp whatever the order) with their encoded rows, which go to the
    /// outbox (sealed) and, cache on, to the content cache; and runs `also` in the same
    /// transaction. Chat-level changes go through the merge rules.
    pub fn record<T>(
        &mut self,
        operations: &[Operation],
        encoded: &[EncodedBatch],
        also: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let raised = greatest::raised(self.greatest, operations);
        let ((), value) = self.content_transaction(
            |merge| {
                for operation in operations {
                    match &operation.change {
                        Change::UpsertMessage(_) | Change::DeleteMessage { .. } => {
                            let chat_id = operation.change.chat_id();
                            let message_id = operation.change.message_id().unwrap_or_default();
                            merge.versions.put(
                                chat_id,
                                message_key(message_id),
                                version_of(operation),
                            );
                        }
                        Change::UpsertChat(_) | Change::DeleteChat { .. } => {
                            apply(merge, operation)?;
                        }
                    }
                }
                Ok(())
            },
            encoded,
            |tx| {
                greatest::store(tx, raised)?;
                also(tx)
            },
        )?;
        self.greatest = raised.or(self.greatest);
        Ok(value)
    }

    /// One transaction of [`apply`](Self::apply) or [`record`](Self::record): `step` runs the
    /// operations through a [`Merge`] (and may give it a batch to collect, for the cache), the
    /// version entries are flushed, the `recorded` rows go to the outbox, what changed goes to
    /// the content cache (the collected batch and the recorded rows), `also` runs, and all of it
    /// commits at once. The in-memory copies (run cache, journal) learn the result only once it
    /// committed.
    fn content_transaction<C, T>(
        &mut self,
        step: impl FnOnce(&mut Merge<'_, '_>) -> Result<C>,
        recorded: &[EncodedBatch],
        also: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<(C, T)> {
        let setting = self.cache_setting;
        let LocalState {
            connection,
            cache_key: key,
            devices,
            runs,
            journal,
            cache_levels,
            ..
        } = self;
        let result = (|| {
            let tx = connection.transaction().map_err(db_error)?;
            let (stepped, update, also_result) = {
                let mut merge = Merge {
                    tx: &tx,
                    versions: VersionWriter::new(devices, runs, journal),
                    cached: None,
                    deleted_chats: BTreeSet::new(),
                    chats: Default::default(),
                };
                let stepped = step(&mut merge)?;
                let Merge {
                    versions: writer,
                    cached,
                    deleted_chats,
                    ..
                } = merge;
                let update = writer.flush(&tx)?;
                for row in recorded {
                    super::insert_outbox_row(&tx, key, row)?;
                }
                let view = update.journal_view(journal);
                let appended = cached.iter().chain(recorded);
                let level_updates = finish_cache(
                    &tx,
                    key,
                    setting,
                    appended,
                    &deleted_chats,
                    devices,
                    view,
                    cache_levels.get_mut(),
                )?;
                ((stepped, level_updates), update, also(&tx)?)
            };
            tx.commit().map_err(db_error)?;
            Ok((stepped, update, also_result))
        })();
        let ((stepped, level_updates), value) = self.finish(result)?;
        for (chat_id, known) in level_updates {
            match known {
                Some(known) => self.cache_levels.get_mut().insert(chat_id, known),
                None => self.cache_levels.get_mut().remove(&chat_id),
            };
        }
        Ok((stepped, value))
    }

    /// After a content transaction: on success the run cache learns the committed runs; on
    /// failure it and the device numbers are reloaded, since they may hold rolled-back state.
    fn finish<C, T>(&mut self, result: Result<(C, versions::CacheUpdate, T)>) -> Result<(C, T)> {
        match result {
            Ok((changed, update, value)) => {
                update.apply(&mut self.runs, &mut self.journal);
                Ok((changed, value))
            }
            Err(error) => {
                self.runs.clear();
                self.cache_levels.get_mut().clear();
                self.devices = DeviceNumbers::load(&self.connection)?;
                self.journal = versions::Journal::load(&self.connection, &self.devices)?;
                Err(error)
            }
        }
    }

    fn chat_versions(&self, chat_id: &str) -> Result<KeyMap<Version>> {
        let deleted = read_chat(&self.connection, chat_id)?.and_then(|c| c.deleted);
        versions::chat_versions(
            &self.connection,
            &self.devices,
            chat_id,
            deleted,
            versions::JournalView::committed(&self.journal),
        )
    }

    /// Fails with [`Error::NotCached`] unless the cache holds all of `chat_id` ("" = every chat).
    fn require_cached(&self, chat_id: &str) -> Result<()> {
        let not_cached = || {
            Err(Error::NotCached {
                chat_id: chat_id.to_owned(),
            })
        };
        if self.cache_setting()? == CacheSetting::Off {
            return not_cached();
        }
        let evicted = if chat_id.is_empty() {
            cache::any_evicted(&self.connection)?
        } else {
            cache::is_evicted(&self.connection, chat_id)?
        };
        if evicted { not_cached() } else { Ok(()) }
    }

    /// Whether the cache holds every chat's content (so a checkpoint can be written from it).
    pub fn cache_is_complete(&self) -> Result<bool> {
        match self.require_cached("") {
            Ok(()) => Ok(true),
            Err(Error::NotCached { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// A chat's winning message operations (upserts and tombstones) from the cache. A chat whose
    /// cached content is damaged or stale loses it here and is reported as not cached
    /// ([`refill_chat_cache`](Self::refill_chat_cache) rebuilds it from the bucket).
    fn cached_operations(&self, chat_id: &str) -> Result<Vec<Operation>> {
        self.require_cached(chat_id)?;
        let versions = self.chat_versions(chat_id)?;
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        match cache::chat_operations(&self.connection, &self.cache_key, chat_id, &versions)? {
            Some(operations) => Ok(operations),
            None => {
                cache::discard_chat(&self.connection, chat_id)?;
                self.cache_levels.borrow_mut().remove(chat_id);
                Err(Error::NotCached {
                    chat_id: chat_id.to_owned(),
                })
            }
        }
    }

    /// Replaces a chat's cached content with `operations` (its winning operations, read from
    /// the bucket) and counts it as cached again. Does nothing with the cache off. Operations the
    /// version index does not name as winners are kept but never answered with; if a winner is
    /// missing (this device knows newer changes than the bucket showed), the next question
    /// about the chat finds it stale and reports it not cached again.
    pub fn refill_chat_cache(&mut self, chat_id: &str, operations: &[Operation]) -> Result<()> {
        let CacheSetting::On { max_bytes } = self.cache_setting else {
            return Ok(());
        };
        let key = &self.cache_key;
        let messages: Vec<Operation> = operations
            .iter()
            .filter(|op| op.change.chat_id() == chat_id && op.change.message_id().is_some())
            .cloned()
            .collect();
        let tx = self.connection.unchecked_transaction().map_err(db_error)?;
        cache::remove_chat(&tx, chat_id)?;
        tx.execute("DELETE FROM cache_evicted WHERE chat_id = ?1", [chat_id])
            .map_err(db_error)?;
        if !messages.is_empty() {
            cache::append(&tx, key, &EncodedBatch::from_operations(&messages))?;
        }
        if let Some(limit) = max_bytes {
            cache::evict_to(&tx, limit)?;
        }
        tx.commit().map_err(db_error)?;
        self.cache_levels.get_mut().clear();
        Ok(())
    }

    /// A chat's live messages in history order (send time, then message id).
    fn chat_messages(&self, chat_id: &str) -> Result<Vec<Message>> {
        let mut messages: Vec<Message> = self
            .cached_operations(chat_id)?
            .into_iter()
            .filter_map(|op| match op.change {
                Change::UpsertMessage(message) => Some(message),
                _ => None,
            })
            .collect();
        messages.sort_by(|a, b| {
            (a.sent_at_ms, a.message_id.as_bytes()).cmp(&(b.sent_at_ms, b.message_id.as_bytes()))
        });
        Ok(messages)
    }

    /// Every chat id with any record (live, deleted or only tombstones), in byte order.
    pub fn all_chat_ids(&self) -> Result<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT chat_id FROM chats UNION SELECT chat_id FROM version_runs")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(db_error)?;
        let mut ids = rows
            .map(|r| r.map_err(db_error))
            .collect::<Result<BTreeSet<String>>>()?;
        ids.extend(versions::journal_chats(&self.journal).map(str::to_owned));
        Ok(ids.into_iter().collect())
    }

    /// Visible chats (with metadata or at least one live message) with counts, by chat id.
    /// Counts come from the version index: they do not need the content cache.
    pub fn chat_summaries(&self) -> Result<Vec<ChatSummary>> {
        let mut out = Vec::new();
        for chat_id in self.all_chat_ids()? {
            let record = read_chat(&self.connection, &chat_id)?.unwrap_or_default();
            let versions = versions::chat_versions(
                &self.connection,
                &self.devices,
                &chat_id,
                record.deleted,
                versions::JournalView::committed(&self.journal),
            )?;
            let live = versions.values().filter(|v| v.live);
            let (count, bytes) = live.fold((0u64, 0u64), |(count, bytes), v| {
                (count + 1, bytes + u64::from(v.size))
            });
            if record.meta.is_none() && count == 0 {
                continue;
            }
            out.push(ChatSummary {
                chat: record.meta.map(|(_, chat)| chat).unwrap_or_else(|| Chat {
                    chat_id: chat_id.clone(),
                    ..Chat::default()
                }),
                message_count: count,
                message_bytes: bytes,
            });
        }
        Ok(out)
    }

    /// Every attachment a live message references, by content id (needs the whole cache).
    pub fn referenced_attachments(
        &self,
    ) -> Result<BTreeMap<crate::attachment::ContentId, crate::attachment::Attachment>> {
        self.require_cached("")?;
        let mut out = BTreeMap::new();
        for chat_id in self.all_chat_ids()? {
            for message in self.chat_messages(&chat_id)? {
                for attachment in message.attachments {
                    out.entry(attachment.content_id).or_insert(attachment);
                }
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
    /// send time and id, to `each`; one chat's messages are in memory at a time. Returns how
    /// many it handed over.
    pub fn for_each_message(
        &self,
        chat_id: Option<&str>,
        since_ms: i64,
        each: &mut dyn FnMut(Message) -> Result<()>,
    ) -> Result<u64> {
        let chats = match chat_id {
            Some(chat_id) => vec![chat_id.to_owned()],
            None => {
                self.require_cached("")?;
                self.all_chat_ids()?
            }
        };
        let mut count = 0;
        for chat_id in chats {
            for message in self.chat_messages(&chat_id)? {
                if message.sent_at_ms >= since_ms {
                    each(message)?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// One page of a chat's history from the cache: up to `limit` live messages before `before`
    /// (from the newest when `None`), oldest first.
    pub fn history_page(
        &self,
        chat_id: &str,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<HistoryPage> {
        let messages = self.chat_messages(chat_id)?;
        let end = match before {
            Some(cursor) => messages.partition_point(|m| {
                (m.sent_at_ms, m.message_id.as_bytes())
                    < (cursor.sent_at_ms, cursor.message_id.as_bytes())
            }),
            None => messages.len(),
        };
        let start = end.saturating_sub(limit as usize);
        Ok(HistoryPage::new(messages[start..end].to_vec(), start > 0))
    }

    /// A chat's merge state as operations (the winning operation for its metadata and for each
    /// message, tombstones included), and the stamp of its newest deletion. Needs the chat in
    /// the content cache.
    pub fn chat_operations(&self, chat_id: &str) -> Result<(Vec<Operation>, Option<Stamp>)> {
        let record = read_chat(&self.connection, chat_id)?.unwrap_or_default();
        let mut operations = Vec::new();
        if let Some((stamp, chat)) = record.meta {
            operations.push(Operation {
                stamp,
                change: Change::UpsertChat(chat),
            });
        }
        let mut messages = self.cached_operations(chat_id)?;
        messages.sort_by_key(|op| op.stamp);
        operations.extend(messages);
        Ok((operations, record.deleted))
    }

    /// Deleted chats with the stamp of their newest deletion, by chat id.
    pub fn deleted_chats(&self) -> Result<Vec<(String, Stamp)>> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT chat_id, deleted_stamp FROM chats WHERE deleted_stamp IS NOT NULL
                 ORDER BY chat_id",
            )
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
}

/// What a content transaction learned about chats' cache blob levels: known again (`Some`), or
/// to be read from the database next time (`None`).
type LevelUpdates = Vec<(String, Option<cache::Levels>)>;

/// Appends what changed to the cache, drops the content of chats a deletion emptied, repacks
/// small blobs and keeps the cache within its bound. `cache_levels` is what is known of the chats'
/// blob levels as committed: a chat whose newest blobs are short of a repack then costs no
/// query. Returns what the transaction changed of it.
#[allow(clippy::too_many_arguments)]
fn finish_cache<'a>(
    tx: &Transaction<'_>,
    key: &CacheKey,
    setting: CacheSetting,
    appended: impl IntoIterator<Item = &'a EncodedBatch>,
    deleted_chats: &BTreeSet<String>,
    devices: &DeviceNumbers,
    journal: versions::JournalView<'_>,
    cache_levels: &HashMap<String, cache::Levels>,
) -> Result<LevelUpdates> {
    let CacheSetting::On { max_bytes } = setting else {
        return Ok(Vec::new());
    };
    // Chats touched, with the number of level-0 blobs this transaction appended to each.
    let mut touched: BTreeMap<String, usize> =
        deleted_chats.iter().map(|c| (c.clone(), 0)).collect();
    for batch in appended {
        for (chat_id, _) in batch.chats() {
            *touched.entry(chat_id.to_owned()).or_default() += 1;
        }
        cache::append(tx, key, batch)?;
    }
    let mut updates = Vec::with_capacity(touched.len());
    for (chat_id, added) in touched {
        // Read only when a deletion check or a repack needs them (rare), not per chat per record.
        let versions = || {
            let deleted = read_chat(tx, &chat_id)?.and_then(|c| c.deleted);
            versions::chat_versions(tx, devices, &chat_id, deleted, journal)
        };
        if deleted_chats.contains(&chat_id) && versions()?.is_empty() {
            cache::remove_chat(tx, &chat_id)?;
            updates.push((chat_id, Some(Vec::new())));
            continue;
        }
        let mut levels = match cache_levels.get(&chat_id) {
            Some(known) => {
                let mut levels = known.clone();
                cache::push_level(&mut levels, 0, added);
                levels
            }
            // Read after this transaction's appends: they are in it.
            None => cache::load_levels(tx, &chat_id)?,
        };
        cache::repack_if_due(tx, key, &chat_id, &mut levels, versions)?;
        updates.push((chat_id, Some(levels)));
    }
    if let Some(limit) = max_bytes {
        for chat_id in cache::evict_to(tx, limit)? {
            updates.push((chat_id, None));
        }
    }
    Ok(updates)
}
