//! The version index: for every message this device has seen, the stamp of the operation that
//! wins it, whether that operation deleted it, and the size of its content. 32 bytes per
//! message and no content: this is what the merge needs to stay correct (last writer wins,
//! tombstones), whether or not the content cache keeps the message itself.
//!
//! Log-structured. A transaction that records or applies operations appends one journal row
//! holding its entries for every chat it touched (one blob insert, not one row per message: a
//! row per message cost 6-90 us in SQLite's B-trees, and a row per chat still cost ~40 us per
//! chat when a batch spreads over hundreds of chats). The journal is also kept in memory. Once
//! it holds [`JOURNAL_MAX_ENTRIES`] entries (or a chat is deleted) it is compacted into sorted
//! runs per chat: when a chat's newest run holds at least half as many entries as the one
//! before it, the two are merged (size-tiered), so a chat keeps O(log n) runs and each entry is
//! rewritten O(log n) times.
//!
//! A lookup takes the greatest stamp any run holds for the message. The answer does not depend
//! on the order the runs were written, which is what lets `record` append without reading
//! first: a freshly stamped local change either wins, or loses to a newer stamp and the lookup
//! says so.
//!
//! Entry layout (big-endian), 32 bytes:
//! `message key (12) | wall_ms (8) | counter (4) | device number (2) | flags (1) | 0 (1) | size (4)`
//! where the message key is the first 12 bytes of SHA-256(message id) (a collision among a
//! billion messages has odds below 1e-11), the device number indexes `device_numbers`, and flag
//! bit 0 marks a live message (clear: a tombstone).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::sync::{DeviceId, Stamp};

use super::{corrupt, db_error};

/// Bytes of one entry.
pub const ENTRY_LEN: usize = 32;

/// Decoded runs kept in memory across transactions, at most this many bytes (64 MiB): a pull
/// applying a long history to one chat block by block looks up against memory, not the disk.
const RUN_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Journal entries (in all chats) above which a transaction compacts the journal into runs:
/// 65,536 entries, 2 MiB on disk, a few MiB in memory. (8 in unit tests, so that their short
/// histories go through compaction and merges again and again.)
pub const JOURNAL_MAX_ENTRIES: usize = if cfg!(test) { 8 } else { 65_536 };

/// A message's key in the index.
pub type MessageKey = [u8; 12];

/// Hashes a [`MessageKey`] by its first eight bytes: they are already uniformly random (a
/// SHA-256 prefix), so SipHash's work buys nothing here.
#[derive(Default, Clone, Copy)]
pub(crate) struct MessageKeyHasher(u64);

impl std::hash::Hasher for MessageKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A message key arrives as its 12 bytes (after a length prefix, which changes nothing
        // here): its first eight decide.
        let mut word = [0u8; 8];
        let take = bytes.len().min(8);
        word[..take].copy_from_slice(&bytes[..take]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _length_prefix: usize) {}
}

/// A map keyed by message key.
pub(crate) type KeyMap<V> = HashMap<MessageKey, V, std::hash::BuildHasherDefault<MessageKeyHasher>>;

/// Keeps `version` for `key` in `map` unless the map already holds an equal or greater stamp
/// for it (the index's one rule: the greatest stamp wins). Returns whether the key was new.
fn keep_greatest(map: &mut KeyMap<Version>, key: MessageKey, version: Version) -> bool {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut held) => {
            if held.get().stamp < version.stamp {
                held.insert(version);
            }
            false
        }
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(version);
            true
        }
    }
}

/// The key of a message id.
pub fn message_key(message_id: &str) -> MessageKey {
    let digest = Sha256::digest(message_id.as_bytes());
    let mut key = [0; 12];
    key.copy_from_slice(&digest[..12]);
    key
}

/// What the index knows about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The winning operation's stamp.
    pub stamp: Stamp,
    /// False for a tombstone.
    pub live: bool,
    /// Encoded size of the live message (0 for a tombstone).
    pub size: u32,
}

/// Device ids by number, as entries store them (two bytes instead of sixteen).
#[derive(Debug, Default, Clone)]
pub(crate) struct DeviceNumbers {
    devices: Vec<DeviceId>,
    numbers: HashMap<DeviceId, u16>,
    /// The last device looked up: a run of entries (one record) usually shares one device.
    last: Option<(DeviceId, u16)>,
}

impl DeviceNumbers {
    pub(crate) fn load(connection: &Connection) -> Result<Self> {
        let mut statement = connection
            .prepare("SELECT number, device FROM device_numbers ORDER BY number")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db_error)?;
        let mut numbers = DeviceNumbers::default();
        for row in rows {
            let (number, device) = row.map_err(db_error)?;
            if number != numbers.devices.len() as i64 {
                return Err(corrupt("device numbers"));
            }
            let device = DeviceId(device.try_into().map_err(|_| corrupt("device number"))?);
            numbers.numbers.insert(device, number as u16);
            numbers.devices.push(device);
        }
        Ok(numbers)
    }

    /// The number of `device`, assigning (and persisting, inside `tx`) the next one if new.
    fn number(&mut self, connection: &Connection, device: DeviceId) -> Result<u16> {
        if let Some((last, number)) = self.last
            && last == device
        {
            return Ok(number);
        }
        if let Some(number) = self.numbers.get(&device).copied() {
            self.last = Some((device, number));
            return Ok(number);
        }
        let number = u16::try_from(self.devices.len()).map_err(|_| {
            crate::Error::LocalState("more than 65,536 devices wrote to this vault".into())
        })?;
        connection
            .execute(
                "INSERT INTO device_numbers (number, device) VALUES (?1, ?2)",
                params![i64::from(number), &device.0[..]],
            )
            .map_err(db_error)?;
        self.numbers.insert(device, number);
        self.devices.push(device);
        Ok(number)
    }

    fn device(&self, number: u16) -> Result<DeviceId> {
        self.devices
            .get(usize::from(number))
            .copied()
            .ok_or_else(|| corrupt("version entry device"))
    }
}

/// One chat's run: entries sorted by message key, each key once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    id: i64,
    /// Shared: a transaction's working list of runs clones the list, never the entries.
    body: Arc<[u8]>,
}

impl Run {
    fn len(&self) -> usize {
        self.body.len() / ENTRY_LEN
    }

    fn entry(&self, index: usize) -> &[u8] {
        &self.body[index * ENTRY_LEN..(index + 1) * ENTRY_LEN]
    }

    fn find(&self, key: &MessageKey) -> Option<&[u8]> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            let entry = self.entry(middle);
            match entry[..12].cmp(&key[..]) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(entry),
            }
        }
        None
    }
}

fn encode_entry(out: &mut Vec<u8>, key: &MessageKey, version: &Version, device: u16) {
    out.extend_from_slice(key);
    out.extend_from_slice(&version.stamp.wall_ms.to_be_bytes());
    out.extend_from_slice(&version.stamp.counter.to_be_bytes());
    out.extend_from_slice(&device.to_be_bytes());
    out.push(u8::from(version.live));
    out.push(0);
    out.extend_from_slice(&version.size.to_be_bytes());
}

pub(super) fn decode_entry(entry: &[u8], devices: &DeviceNumbers) -> Result<(MessageKey, Version)> {
    let bytes = |range: std::ops::Range<usize>| entry.get(range).ok_or_else(|| corrupt("entry"));
    let key: MessageKey = bytes(0..12)?.try_into().map_err(|_| corrupt("entry"))?;
    let wall_ms = u64::from_be_bytes(bytes(12..20)?.try_into().map_err(|_| corrupt("entry"))?);
    let counter = u32::from_be_bytes(bytes(20..24)?.try_into().map_err(|_| corrupt("entry"))?);
    let device = u16::from_be_bytes(bytes(24..26)?.try_into().map_err(|_| corrupt("entry"))?);
    let flags = bytes(26..27)?[0];
    let size = u32::from_be_bytes(bytes(28..32)?.try_into().map_err(|_| corrupt("entry"))?);
    Ok((
        key,
        Version {
            stamp: Stamp {
                wall_ms,
                counter,
                device: devices.device(device)?,
            },
            live: flags & 1 == 1,
            size,
        },
    ))
}

/// Decoded runs of recently used chats, consistent with what is committed (a transaction's
/// changes reach it only once the transaction commits).
#[derive(Debug, Default)]
pub(crate) struct RunCache {
    chats: HashMap<String, Arc<Vec<Run>>>,
    bytes: usize,
}

impl RunCache {
    fn get(&self, chat_id: &str) -> Option<Arc<Vec<Run>>> {
        self.chats.get(chat_id).cloned()
    }

    fn put(&mut self, chat_id: &str, runs: Arc<Vec<Run>>) {
        let size: usize = runs.iter().map(|r| r.body.len()).sum();
        if let Some(old) = self.chats.remove(chat_id) {
            self.bytes -= old.iter().map(|r| r.body.len()).sum::<usize>();
        }
        if size > RUN_CACHE_BYTES {
            return;
        }
        while self.bytes + size > RUN_CACHE_BYTES {
            // Any chat will do: the cache only saves reads.
            let Some(victim) = self.chats.keys().next().cloned() else {
                break;
            };
            if let Some(old) = self.chats.remove(&victim) {
                self.bytes -= old.iter().map(|r| r.body.len()).sum::<usize>();
            }
        }
        self.bytes += size;
        self.chats.insert(chat_id.to_owned(), runs);
    }

    /// Forgets everything (after a transaction failed half way).
    pub(crate) fn clear(&mut self) {
        self.chats.clear();
        self.bytes = 0;
    }
}

fn load_runs(connection: &Connection, chat_id: &str) -> Result<Vec<Run>> {
    let mut statement = connection
        .prepare_cached("SELECT id, body FROM version_runs WHERE chat_id = ?1 ORDER BY id")
        .map_err(db_error)?;
    let rows = statement
        .query_map([chat_id], |row| {
            Ok(Run {
                id: row.get(0)?,
                body: row.get::<_, Vec<u8>>(1)?.into(),
            })
        })
        .map_err(db_error)?;
    let runs = rows
        .map(|r| r.map_err(db_error))
        .collect::<Result<Vec<Run>>>()?;
    if runs.iter().any(|r| r.body.len() % ENTRY_LEN != 0) {
        return Err(corrupt("version run"));
    }
    Ok(runs)
}

/// A transaction's view of the index: committed runs plus the entries it added.
pub(crate) struct VersionWriter<'a> {
    devices: &'a mut DeviceNumbers,
    cache: &'a RunCache,
    journal: &'a Journal,
    /// Runs of chats looked up in this transaction, not in `cache`.
    loaded: HashMap<String, Arc<Vec<Run>>>,
    /// New entries by chat: the greatest stamp per message.
    pending: HashMap<String, KeyMap<Version>>,
    /// Chats deleted in this transaction: (chat, stamp) to drop entries at or before.
    dropped: HashMap<String, Stamp>,
}

/// Entries written since the last compaction, by chat (the greatest stamp per message): the
/// journal rows' content, kept in memory so lookups and counts need no read.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    chats: HashMap<String, KeyMap<Version>>,
    entries: usize,
}

impl Journal {
    /// Reads every journal row.
    pub(crate) fn load(connection: &Connection, devices: &DeviceNumbers) -> Result<Journal> {
        let mut journal = Journal::default();
        for_each_journal_chat(connection, |chat_id, entries| {
            for index in 0..entries.len() / ENTRY_LEN {
                let (key, version) = decode_entry(
                    &entries[index * ENTRY_LEN..(index + 1) * ENTRY_LEN],
                    devices,
                )?;
                journal.add(chat_id, key, version);
            }
            Ok(())
        })?;
        Ok(journal)
    }

    fn add(&mut self, chat_id: &str, key: MessageKey, version: Version) {
        let chat = match self.chats.get_mut(chat_id) {
            Some(chat) => chat,
            None => self.chats.entry(chat_id.to_owned()).or_default(),
        };
        if keep_greatest(chat, key, version) {
            self.entries += 1;
        }
    }

    /// Adds a chat's entries (one lookup of the chat, not one per entry; a chat new to the
    /// journal takes the map as it is).
    fn add_chat(&mut self, chat_id: String, entries: KeyMap<Version>) {
        match self.chats.get_mut(&chat_id) {
            None => {
                self.entries += entries.len();
                self.chats.insert(chat_id, entries);
            }
            Some(chat) => {
                chat.reserve(entries.len());
                for (key, version) in entries {
                    if keep_greatest(chat, key, version) {
                        self.entries += 1;
                    }
                }
            }
        }
    }

    fn get(&self, chat_id: &str, key: &MessageKey) -> Option<Version> {
        self.chats.get(chat_id)?.get(key).copied()
    }
}

/// Hands each chat section of every journal row to `each` (chat id, concatenated entries).
pub(super) fn for_each_journal_chat(
    connection: &Connection,
    mut each: impl FnMut(&str, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut statement = connection
        .prepare_cached("SELECT body FROM version_journal ORDER BY id")
        .map_err(db_error)?;
    let mut rows = statement.query([]).map_err(db_error)?;
    while let Some(row) = rows.next().map_err(db_error)? {
        let mut body = row
            .get_ref(0)
            .map_err(db_error)?
            .as_blob()
            .map_err(|_| corrupt("version journal"))?;
        while !body.is_empty() {
            let chat_len = prost::encoding::decode_varint(&mut body)
                .map_err(|_| corrupt("version journal"))? as usize;
            let chat_id = body
                .get(..chat_len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| corrupt("version journal"))?;
            body = &body[chat_len..];
            let count = prost::encoding::decode_varint(&mut body)
                .map_err(|_| corrupt("version journal"))? as usize;
            let len = count
                .checked_mul(ENTRY_LEN)
                .filter(|len| *len <= body.len())
                .ok_or_else(|| corrupt("version journal"))?;
            each(chat_id, &body[..len])?;
            body = &body[len..];
        }
    }
    Ok(())
}

/// What a committed transaction changes in the in-memory copies (run cache and journal).
#[derive(Debug, Default)]
pub(crate) struct CacheUpdate {
    runs: Vec<(String, Arc<Vec<Run>>)>,
    /// Entries added to the journal; `None` when it was compacted (and is now empty).
    journal: Option<Vec<(String, KeyMap<Version>)>>,
}

impl CacheUpdate {
    pub(crate) fn apply(self, cache: &mut RunCache, journal: &mut Journal) {
        for (chat_id, runs) in self.runs {
            cache.put(&chat_id, runs);
        }
        match self.journal {
            Some(added) => {
                for (chat_id, entries) in added {
                    journal.add_chat(chat_id, entries);
                }
            }
            None => *journal = Journal::default(),
        }
    }
}

impl<'a> VersionWriter<'a> {
    pub(crate) fn new(
        devices: &'a mut DeviceNumbers,
        cache: &'a RunCache,
        journal: &'a Journal,
    ) -> Self {
        VersionWriter {
            devices,
            cache,
            journal,
            loaded: HashMap::new(),
            pending: HashMap::new(),
            dropped: HashMap::new(),
        }
    }

    fn runs(&mut self, connection: &Connection, chat_id: &str) -> Result<Arc<Vec<Run>>> {
        if let Some(runs) = self.loaded.get(chat_id) {
            return Ok(runs.clone());
        }
        let runs = match self.cache.get(chat_id) {
            Some(runs) => runs,
            None => Arc::new(load_runs(connection, chat_id)?),
        };
        self.loaded.insert(chat_id.to_owned(), runs.clone());
        Ok(runs)
    }

    /// The winning version of a message, if any (entries a chat deletion removed excluded:
    /// the caller checks the chat's deletion stamp).
    pub(crate) fn get(
        &mut self,
        connection: &Connection,
        chat_id: &str,
        key: &MessageKey,
    ) -> Result<Option<Version>> {
        let mut best = self.pending.get(chat_id).and_then(|p| p.get(key)).copied();
        if let Some(version) = self.journal.get(chat_id, key)
            && best.is_none_or(|b| version.stamp > b.stamp)
        {
            best = Some(version);
        }
        let runs = self.runs(connection, chat_id)?;
        for run in runs.iter() {
            if let Some(entry) = run.find(key) {
                let (_, version) = decode_entry(entry, self.devices)?;
                if best.is_none_or(|b| version.stamp > b.stamp) {
                    best = Some(version);
                }
            }
        }
        let dropped = self.dropped.get(chat_id);
        Ok(best.filter(|v| dropped.is_none_or(|d| v.stamp > *d)))
    }

    /// Adds a version (it wins only if its stamp is the greatest for that message).
    pub(crate) fn put(&mut self, chat_id: &str, key: MessageKey, version: Version) {
        let pending = match self.pending.get_mut(chat_id) {
            Some(pending) => pending,
            None => self.pending.entry(chat_id.to_owned()).or_default(),
        };
        keep_greatest(pending, key, version);
    }

    /// Drops every version of the chat stamped at or before `stamp` (a chat deletion).
    pub(crate) fn drop_up_to(&mut self, chat_id: &str, stamp: Stamp) {
        if let Some(pending) = self.pending.get_mut(chat_id) {
            pending.retain(|_, v| v.stamp > stamp);
        }
        let entry = self.dropped.entry(chat_id.to_owned()).or_insert(stamp);
        *entry = (*entry).max(stamp);
    }

    /// Writes this transaction's entries inside `connection`'s open transaction: one journal
    /// row, or, once the journal is full or a chat was deleted, the whole journal compacted
    /// into runs. Returns what the in-memory copies must learn once it commits.
    pub(crate) fn flush(mut self, connection: &Connection) -> Result<CacheUpdate> {
        let pending_entries: usize = self.pending.values().map(KeyMap::len).sum();
        if self.dropped.is_empty() && self.journal.entries + pending_entries < JOURNAL_MAX_ENTRIES {
            let mut row = Vec::with_capacity(pending_entries * ENTRY_LEN + 64);
            let mut chats: Vec<(String, KeyMap<Version>)> =
                std::mem::take(&mut self.pending).into_iter().collect();
            chats.sort_by(|a, b| a.0.cmp(&b.0));
            for (chat_id, entries) in &chats {
                if entries.is_empty() {
                    continue;
                }
                prost::encoding::encode_varint(chat_id.len() as u64, &mut row);
                row.extend_from_slice(chat_id.as_bytes());
                prost::encoding::encode_varint(entries.len() as u64, &mut row);
                for (key, version) in entries {
                    let device = self.devices.number(connection, version.stamp.device)?;
                    encode_entry(&mut row, key, version, device);
                }
            }
            if !row.is_empty() {
                connection
                    .prepare_cached("INSERT INTO version_journal (body) VALUES (?1)")
                    .map_err(db_error)?
                    .execute([&row])
                    .map_err(db_error)?;
            }
            return Ok(CacheUpdate {
                runs: Vec::new(),
                journal: Some(chats),
            });
        }
        self.compact(connection)
    }

    /// Moves the journal and this transaction's entries into per-chat runs.
    pub(crate) fn compact(mut self, connection: &Connection) -> Result<CacheUpdate> {
        let mut by_chat: HashMap<String, KeyMap<Version>> = HashMap::new();
        for (chat_id, entries) in &self.journal.chats {
            let dropped = self.dropped.get(chat_id).copied();
            let chat = by_chat.entry(chat_id.clone()).or_insert_with(|| {
                KeyMap::with_capacity_and_hasher(entries.len(), Default::default())
            });
            for (key, version) in entries {
                if dropped.is_none_or(|d| version.stamp > d) {
                    chat.insert(*key, *version);
                }
            }
        }
        for (chat_id, entries) in std::mem::take(&mut self.pending) {
            let chat = by_chat.entry(chat_id).or_default();
            for (key, version) in entries {
                keep_greatest(chat, key, version);
            }
        }
        for chat_id in self.dropped.keys() {
            by_chat.entry(chat_id.clone()).or_default();
        }
        let mut chats: Vec<(String, KeyMap<Version>)> = by_chat.into_iter().collect();
        chats.sort_by(|a, b| a.0.cmp(&b.0));
        let mut update = CacheUpdate {
            runs: Vec::new(),
            journal: None,
        };
        for (chat_id, entries) in chats {
            let mut runs: Vec<Run> = self.runs(connection, &chat_id)?.as_ref().clone();
            if let Some(stamp) = self.dropped.get(&chat_id).copied() {
                // A chat deletion rewrites the chat's index once, without what it removed.
                let merged = merge_runs(&runs, None, Some(stamp), self.devices)?;
                delete_runs(connection, &runs)?;
                runs.clear();
                if !merged.is_empty() {
                    runs.push(insert_run(connection, &chat_id, merged)?);
                }
            }
            if !entries.is_empty() {
                let mut entries: Vec<(MessageKey, Version)> = entries.into_iter().collect();
                entries.sort_unstable_by_key(|entry| entry.0);
                let mut body = Vec::with_capacity(entries.len() * ENTRY_LEN);
                for (key, version) in &entries {
                    let device = self.devices.number(connection, version.stamp.device)?;
                    encode_entry(&mut body, key, version, device);
                }
                runs.push(insert_run(connection, &chat_id, body)?);
            }
            // Size-tiered: merge while the newest run is at least half the one before it.
            while runs.len() >= 2 && runs[runs.len() - 1].len() * 2 >= runs[runs.len() - 2].len() {
                let newer = runs.pop().ok_or_else(|| corrupt("runs"))?;
                let older = runs.pop().ok_or_else(|| corrupt("runs"))?;
                let merged = merge_runs(
                    std::slice::from_ref(&older),
                    Some(&newer),
                    None,
                    self.devices,
                )?;
                delete_runs(connection, &[older, newer])?;
                runs.push(insert_run(connection, &chat_id, merged)?);
            }
            update.runs.push((chat_id, Arc::new(runs)));
        }
        connection
            .execute("DELETE FROM version_journal", [])
            .map_err(db_error)?;
        Ok(update)
    }
}

fn insert_run(connection: &Connection, chat_id: &str, body: Vec<u8>) -> Result<Run> {
    connection
        .prepare_cached("INSERT INTO version_runs (chat_id, entries, body) VALUES (?1, ?2, ?3)")
        .map_err(db_error)?
        .execute(params![chat_id, (body.len() / ENTRY_LEN) as i64, &body])
        .map_err(db_error)?;
    Ok(Run {
        id: connection.last_insert_rowid(),
        body: body.into(),
    })
}

fn delete_runs(connection: &Connection, runs: &[Run]) -> Result<()> {
    let mut statement = connection
        .prepare_cached("DELETE FROM version_runs WHERE id = ?1")
        .map_err(db_error)?;
    for run in runs {
        statement.execute([run.id]).map_err(db_error)?;
    }
    Ok(())
}

/// Merges runs (and one more), keeping the greatest stamp per key and dropping entries at or
/// before `drop_up_to`. Entries are compared by their full stamps (device numbers map to ids).
fn merge_runs(
    runs: &[Run],
    extra: Option<&Run>,
    drop_up_to: Option<Stamp>,
    devices: &DeviceNumbers,
) -> Result<Vec<u8>> {
    let all: Vec<&Run> = runs.iter().chain(extra).collect();
    let mut positions = vec![0usize; all.len()];
    let total: usize = all.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(total * ENTRY_LEN);
    loop {
        // The smallest key among the runs' heads (few runs: a linear scan is fine), copied (12
        // bytes, no allocation).
        let mut smallest: Option<MessageKey> = None;
        for (run, &position) in all.iter().zip(&positions) {
            if position < run.len()
                && let Ok(key) = MessageKey::try_from(&run.entry(position)[..12])
                && smallest.is_none_or(|s| key < s)
            {
                smallest = Some(key);
            }
        }
        let Some(smallest) = smallest else {
            break;
        };
        // The entry with the greatest stamp among the runs holding that key. Entries are
        // decoded only to compare stamps (a key in two runs) or to drop by stamp.
        let mut best: Option<(&[u8], Option<Stamp>)> = None;
        for (run, position) in all.iter().zip(positions.iter_mut()) {
            if *position < run.len() && run.entry(*position)[..12] == smallest[..] {
                let entry = run.entry(*position);
                *position += 1;
                best = match best {
                    None => Some((entry, None)),
                    Some((held, held_stamp)) => {
                        let held_stamp = match held_stamp {
                            Some(stamp) => stamp,
                            None => decode_entry(held, devices)?.1.stamp,
                        };
                        let stamp = decode_entry(entry, devices)?.1.stamp;
                        if stamp > held_stamp {
                            Some((entry, Some(stamp)))
                        } else {
                            Some((held, Some(held_stamp)))
                        }
                    }
                };
            }
        }
        if let Some((entry, stamp)) = best {
            let keep = match drop_up_to {
                None => true,
                Some(d) => {
                    let stamp = match stamp {
                        Some(stamp) => stamp,
                        None => decode_entry(entry, devices)?.1.stamp,
                    };
                    stamp > d
                }
            };
            if keep {
                out.extend_from_slice(entry);
            }
        }
    }
    Ok(out)
}

/// The journal as a transaction sees it before its update reaches memory: the committed
/// journal plus what the transaction added, or nothing when it compacted the journal (then the
/// runs in the database hold everything).
#[derive(Clone, Copy)]
pub(crate) struct JournalView<'a> {
    committed: Option<&'a Journal>,
    added: &'a [(String, KeyMap<Version>)],
}

impl<'a> JournalView<'a> {
    /// The committed journal alone (outside a transaction).
    pub(crate) fn committed(journal: &'a Journal) -> Self {
        JournalView {
            committed: Some(journal),
            added: &[],
        }
    }

    fn chat(&self, chat_id: &str) -> impl Iterator<Item = (&'a MessageKey, &'a Version)> {
        let committed = self.committed.and_then(|j| j.chats.get(chat_id));
        let added = self
            .added
            .iter()
            .filter(move |(chat, _)| chat == chat_id)
            .flat_map(|(_, entries)| entries.iter());
        committed.into_iter().flatten().chain(added)
    }
}

impl CacheUpdate {
    /// The journal as the transaction that produced this update sees it.
    pub(crate) fn journal_view<'a>(&'a self, committed: &'a Journal) -> JournalView<'a> {
        match &self.journal {
            Some(added) => JournalView {
                committed: Some(committed),
                added,
            },
            None => JournalView {
                committed: None,
                added: &[],
            },
        }
    }
}

/// Every winning version of one chat (after `deleted`, the chat's deletion stamp), by key: its
/// runs in the database and its entries in `journal`.
pub(crate) fn chat_versions(
    connection: &Connection,
    devices: &DeviceNumbers,
    chat_id: &str,
    deleted: Option<Stamp>,
    journal: JournalView<'_>,
) -> Result<KeyMap<Version>> {
    let mut out: KeyMap<Version> = KeyMap::default();
    let mut add = |key: MessageKey, version: Version| {
        if deleted.is_none_or(|d| version.stamp > d) {
            keep_greatest(&mut out, key, version);
        }
    };
    for run in load_runs(connection, chat_id)? {
        for index in 0..run.len() {
            let (key, version) = decode_entry(run.entry(index), devices)?;
            add(key, version);
        }
    }
    for (key, version) in journal.chat(chat_id) {
        add(*key, *version);
    }
    Ok(out)
}

/// Chats with journal entries (committed), for listing chats.
pub(crate) fn journal_chats(journal: &Journal) -> impl Iterator<Item = &str> {
    journal.chats.keys().map(String::as_str)
}

/// Bytes and entries the index holds (for size reports and tests).
pub(crate) fn index_size(connection: &Connection) -> Result<(u64, u64)> {
    connection
        .query_row(
            "SELECT COALESCE(SUM(entries), 0), COUNT(*) FROM version_runs",
            [],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )
        .optional()
        .map_err(db_error)
        .map(|r| r.unwrap_or((0, 0)))
}
