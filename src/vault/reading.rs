//! Reading one chat straight from the bucket, without touching local state: the whole chat, or
//! one page of its history that reads only the checkpoint blocks the page needs.

use crate::error::{Error, Result};
use crate::history::{HistoryCursor, HistoryPage, sort_by_position};
use crate::sync::checkpoint::{CheckpointIndex, open_block};
use crate::sync::segment::{ChatKeys, open_blocks};
use crate::sync::{Change, MemoryState, Message, Operation, apply};

use super::{SyncReport, Vault, check_page_limit, lock};

/// One chat as far as it was read: the newest checkpoint's index (if any), the keys to open its
/// blocks, and the merged state of everything read so far.
struct ChatReading {
    chat_id: String,
    index: Option<CheckpointIndex>,
    chat_keys: ChatKeys,
    state: MemoryState,
}

impl Vault {
    /// One chat's messages read from the bucket without touching local state: its blocks of
    /// the newest checkpoint (ranged GETs into the packs) merged with the segments written after
    /// it. For a new device that wants one chat now, or an app paging old history it dropped.
    pub async fn fetch_chat(&self, chat_id: &str) -> Result<Vec<Message>> {
        let mut reading = self.start_reading(chat_id).await?;
        let blocks = reading.blocks();
        for block in blocks {
            self.read_block(&mut reading, block).await?;
        }
        let mut messages = reading.state.messages();
        sort_by_position(&mut messages);
        Ok(messages)
    }

    /// Rebuilds this device's content cache of one chat from the bucket: after pushing what
    /// this device recorded, reads the chat as [`fetch_chat`](Self::fetch_chat) does and makes
    /// it the chat's cached content. For a chat the cache evicted, turned on late for, or found
    /// damaged or stale (questions about such a chat fail with [`Error::NotCached`]). Sync first:
    /// a chat with changes this device has not pulled yet stays not cached. Does nothing with
    /// the cache off.
    pub async fn refill_cache(&self, chat_id: &str) -> Result<()> {
        if lock(&self.local)?.cache_setting()? == crate::local::CacheSetting::Off {
            return Ok(());
        }
        {
            let _guard = self.sync_lock.lock().await;
            let mut report = SyncReport::default();
            self.push(None, &mut report, &super::CancelToken::new())
                .await?;
        }
        let mut reading = self.start_reading(chat_id).await?;
        for block in reading.blocks() {
            self.read_block(&mut reading, block).await?;
        }
        let operations = reading.state.winners().remove(chat_id).unwrap_or_default();
        lock(&self.local)?.refill_chat_cache(chat_id, &operations)
    }

    /// One page of a chat's history read from the bucket, with the same cursors as
    /// [`history_page`](Self::history_page): the chat's metadata and deletions, the segments
    /// written after the newest checkpoint, and only as many of the checkpoint's message blocks,
    /// newest first, as the page needs (one more at most, to know whether older messages exist).
    pub async fn fetch_history(
        &self,
        chat_id: &str,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<HistoryPage> {
        check_page_limit(limit)?;
        let mut reading = self.start_reading(chat_id).await?;
        let mut ranged = Vec::new();
        for block in reading.blocks() {
            match reading.range(block) {
                None => self.read_block(&mut reading, block).await?,
                // Blocks wholly at or after the cursor hold nothing for this page.
                Some((first, _)) if before.is_some_and(|b| first >= *b) => {}
                Some(_) => ranged.push(block),
            }
        }
        // Blocks of one chat follow history order; read from the newest down. A message below
        // the newest unread block's last position may have neighbours in that block, so only
        // messages above it count until it is read.
        loop {
            let floor = ranged.last().and_then(|b| reading.range(*b)).map(|r| r.1);
            let candidates: Vec<Message> = reading
                .state
                .messages()
                .into_iter()
                .filter(|m| before.is_none_or(|b| b.is_after(m)))
                .filter(|m| floor.as_ref().is_none_or(|f| HistoryCursor::of(m) > *f))
                .collect();
            let Some(block) = ranged.pop().filter(|_| candidates.len() <= limit as usize) else {
                let mut candidates = candidates;
                sort_by_position(&mut candidates);
                return Ok(HistoryPage::from_sorted(candidates, None, limit));
            };
            self.read_block(&mut reading, block).await?;
        }
    }

    /// Lists the vault, opens the newest checkpoint's index and applies the chat's deletion (if
    /// any) and every segment written after the checkpoint: everything but its blocks. The
    /// engine checks what a pull checks: no rollback of what this device applied, every chain
    /// from the checkpoint, pack sizes, and every segment's claims about the others.
    async fn start_reading(&self, chat_id: &str) -> Result<ChatReading> {
        let mut scratch = SyncReport::default();
        let mut pass = self.start_pass(&mut scratch).await?;
        // Segments are checked against the roster as the bucket holds it now (a new device may
        // read a chat before its first sync).
        self.sync_roster(pass.engine.listing(), false, &mut scratch)
            .await?;
        pass.engine.check_rollback()?;
        pass.engine.start_from_scratch();
        let mut reading = ChatReading {
            chat_id: chat_id.to_owned(),
            index: None,
            chat_keys: ChatKeys::new(),
            state: MemoryState::new(),
        };
        if let Some(index) = self.newest_index(&mut pass, &mut scratch).await? {
            {
                let local = lock(&self.local)?;
                pass.engine.adopt(&index, |id| local.segment_hash(id))?;
            }
            for (chat, stamp) in &index.deleted_chats {
                if chat == chat_id {
                    apply(
                        &mut reading.state,
                        &Operation {
                            stamp: *stamp,
                            change: Change::DeleteChat {
                                chat_id: chat.clone(),
                            },
                        },
                    )?;
                }
            }
            reading.index = Some(index);
        }
        let mut opened = Vec::new();
        for get in pass.engine.plan(|_| Ok(false))? {
            let (segment, _) = self.fetch_segment(&get).await?;
            let local = lock(&self.local)?;
            pass.engine.accept(&segment, |id| local.segment_hash(id))?;
            opened.push(segment);
        }
        {
            let local = lock(&self.local)?;
            for segment in &opened {
                pass.engine
                    .check_claims(segment, |id| local.segment_hash(id))?;
            }
        }
        reading.chat_keys = pass.engine.chat_keys().clone();
        for segment in &opened {
            for operation in open_blocks(&self.keys, &reading.chat_keys, segment)? {
                if operation.change.chat_id() == chat_id {
                    apply(&mut reading.state, &operation)?;
                }
            }
        }
        Ok(reading)
    }

    /// Fetches one block of the chat (a ranged GET into its pack) and merges it.
    async fn read_block(&self, reading: &mut ChatReading, block: usize) -> Result<()> {
        let Some(index) = &reading.index else {
            return Ok(());
        };
        let entry = &index.chats[block];
        let (pack_name, _) = &index.packs[entry.pack];
        let bytes = self
            .store
            .get_range(
                &format!("{}{pack_name}", self.prefix()),
                entry.offset..entry.offset + entry.length,
            )
            .await?
            .ok_or_else(|| {
                Error::Integrity(crate::IntegrityProblem::MissingObject {
                    name: pack_name.clone(),
                })
            })?;
        // The engine checked the pack's listed size holds the block: fewer bytes is a cut.
        if bytes.len() as u64 != entry.length {
            return Err(Error::Integrity(crate::IntegrityProblem::WrongSize {
                name: pack_name.clone(),
                expected: entry.length,
                found: bytes.len() as u64,
            }));
        }
        for operation in open_block(&self.keys, &reading.chat_keys, index, block, &bytes)? {
            apply(&mut reading.state, &operation)?;
        }
        Ok(())
    }
}

impl ChatReading {
    /// The chat's blocks in the checkpoint, in index order.
    fn blocks(&self) -> Vec<usize> {
        self.index.as_ref().map_or_else(Vec::new, |index| {
            (0..index.chats.len())
                .filter(|b| index.chats[*b].chat_id == self.chat_id)
                .collect()
        })
    }

    /// A block's history range, if it has one.
    fn range(&self, block: usize) -> Option<(HistoryCursor, HistoryCursor)> {
        self.index.as_ref()?.chats.get(block)?.range.clone()
    }
}
