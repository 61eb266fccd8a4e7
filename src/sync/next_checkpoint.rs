//! The next checkpoint, built from the previous one plus the operations of the segments written
//! after it, without any local copy of the vault's content.
//!
//! Chats without new operations keep their blocks where they are: the new index references them
//! in the packs of earlier checkpoints. A chat with new operations has rewritten only the blocks
//! those operations fall into (by history position: usually its newest block), merged with what
//! those blocks held; its metadata blocks when its metadata changed; and all its blocks when it
//! lost a message or was deleted (the deleted content must leave the bucket, and a deletion does
//! not say where the message lay). Live blocks of packs that are mostly superseded, or small, are
//! copied byte for byte into the new packs (a block's sealing name does not depend on where it
//! lies), so old packs can be collected and a vault does not end up in many small packs.
//!
//! Sans-IO: [`NextCheckpoint`] says which blocks of the previous checkpoint it needs
//! ([`blocks_to_read`](NextCheckpoint::blocks_to_read), [`blocks_to_copy`](NextCheckpoint::blocks_to_copy)),
//! is handed their contents, and seals the result. The caller fetches and uploads.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{ObjectKind, proto};
use crate::keys::{KeyEpochs, VaultKeys};
use crate::sealing::{self, Compression, ObjectContext, padded_len};

use super::checkpoint::{CheckpointIndex, block_name, checkpoint_name, pack_prefix};
use super::clock::{DeviceId, Stamp};
use super::deletions::DeletionWitnesses;
use super::history::{HistoryCursor, position_of};
use super::listing::Listing;
use super::model::{Change, Operation};
use super::segment::{ChatKeys, Head, KeyGrant, KeyId, head_to_proto};
use super::signature::{CHECKPOINT_LABEL, append_signature};
use super::state::{MemoryState, apply};

/// Chat blocks are filled up to about this much encoded plaintext (64 KiB): a page of history
/// reads one or two blocks, and a chat spans as many as it needs.
const BLOCK_TARGET: usize = 64 * 1024;
/// Packs are closed once they hold this many bytes (8 MiB).
const PACK_TARGET: usize = 8 * 1024 * 1024;
/// A pack smaller than this (1 MiB) has its live blocks copied into the next checkpoint's packs:
/// at most one such pack exists at a time, so a vault's packs stay few however many small
/// checkpoints were written, at a cost of at most this many bytes per checkpoint.
const SMALL_PACK: u64 = 1024 * 1024;

/// One live chat's content: the winning operation for its metadata and for each message.
#[derive(Debug, Clone)]
pub struct ChatContent {
    /// The chat.
    pub chat_id: String,
    /// Its operations.
    pub operations: Vec<Operation>,
}

/// What goes into a checkpoint besides its content.
#[derive(Debug)]
pub struct CheckpointInput<'a> {
    /// The writing device and its checkpoint sequence number.
    pub device: DeviceId,
    /// 1, 2, ... per device.
    pub seq: u64,
    /// A random tag ([`random_tag`](super::segment::random_tag)), drawn with the reserved
    /// sequence number: copies of one state directory never share a checkpoint's names.
    pub tag: u64,
    /// Every tip of every device's segment tree the checkpoint covers.
    pub covered: &'a [Head],
    /// Every known chat key, including the previous checkpoint's grants (keys of chats without
    /// blocks are left out, unless a deleted chat's covered device may still write to it).
    pub chat_keys: &'a ChatKeys,
    /// Deleted chats beyond those the previous checkpoint and the new operations name: (chat id,
    /// stamp of the newest delete).
    pub deleted_chats: &'a [(String, Stamp)],
    /// Writer's clock, for garbage collection grace periods.
    pub created_at_ms: u64,
    /// The writing device's keys: it signs the index (`None`: unsigned, as indexes were before
    /// checkpoints were signed; only tests and vectors of that format write one).
    pub signer: Option<&'a crate::devices::DeviceSecrets>,
}

/// A sealed checkpoint, ready to upload (packs first, index last).
#[derive(Debug)]
pub struct SealedCheckpoint {
    /// The index's name.
    pub index_name: String,
    /// The index's bytes.
    pub index: Vec<u8>,
    /// (name, bytes) of each new pack.
    pub packs: Vec<(String, Vec<u8>)>,
    /// Blocks referenced where they lie in earlier packs.
    pub blocks_kept: u64,
    /// Blocks copied unopened from earlier packs into the new ones.
    pub blocks_copied: u64,
    /// Blocks sealed anew.
    pub blocks_written: u64,
    /// Chat keys drawn for chats that had no key of the epoch the checkpoint is sealed in (the
    /// first checkpoint after a revocation): granted by the index; the writer keeps them.
    pub minted: Vec<KeyGrant>,
}

/// Seals a checkpoint of whole chats with no previous checkpoint: `chats` yields each chat's
/// operations; chats without operations are skipped.
pub fn seal_checkpoint(
    keys: &impl KeyEpochs,
    input: &CheckpointInput<'_>,
    chats: impl IntoIterator<Item = Result<ChatContent>>,
) -> Result<SealedCheckpoint> {
    seal_checkpoint_with(keys, input, chats, &mut sealing::random_nonce)
}

/// [`seal_checkpoint`] with nonces from `nonce` (one per chat block in order, then the index):
/// only `seal_checkpoint` and the test-vector generator call it, and a nonce must never be
/// reused under one key.
pub(crate) fn seal_checkpoint_with(
    keys: &impl KeyEpochs,
    input: &CheckpointInput<'_>,
    chats: impl IntoIterator<Item = Result<ChatContent>>,
    nonce: &mut dyn FnMut() -> Result<[u8; sealing::NONCE_LEN]>,
) -> Result<SealedCheckpoint> {
    let listing = Listing::default();
    let mut next = NextCheckpoint::new(None, &listing);
    for chat in chats {
        for operation in chat?.operations {
            next.add(operation);
        }
    }
    next.seal_with(keys, input, nonce)
}

/// What the next checkpoint does with one block of the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Referenced where it lies.
    Keep,
    /// Copied unopened into a new pack.
    Copy,
    /// Opened and merged with the chat's new operations, then rewritten.
    Read,
}

/// What the new operations do to one chat.
#[derive(Debug, Default)]
struct ChatChanges {
    operations: Vec<Operation>,
    /// Metadata changed: the chat's unranged blocks are rewritten.
    head: bool,
    /// A message or the chat was deleted: every block of the chat is rewritten.
    whole: bool,
}

/// The next checkpoint being built (see the module documentation).
#[derive(Debug)]
pub struct NextCheckpoint<'a> {
    base: Option<&'a CheckpointIndex>,
    /// The listing the round's segments came from: who has seen a delete is decided by descent
    /// in the deleter's segment tree.
    listing: &'a Listing,
    changes: BTreeMap<String, ChatChanges>,
    read: BTreeMap<usize, Vec<Operation>>,
    copied: BTreeMap<usize, Vec<u8>>,
    /// Where this round's deletes were written and who has seen them.
    deletions: DeletionWitnesses,
    /// [`BLOCK_TARGET`] and [`SMALL_PACK`], smaller in tests.
    block_target: usize,
    small_pack: u64,
}

impl<'a> NextCheckpoint<'a> {
    /// Starts from `base`, the newest checkpoint in `listing` (`None` for a vault without one).
    pub fn new(base: Option<&'a CheckpointIndex>, listing: &'a Listing) -> Self {
        NextCheckpoint {
            base,
            listing,
            changes: BTreeMap::new(),
            read: BTreeMap::new(),
            copied: BTreeMap::new(),
            deletions: DeletionWitnesses::new(base),
            block_target: BLOCK_TARGET,
            small_pack: SMALL_PACK,
        }
    }

    /// Tiny blocks and no small-pack copying, so tests exercise many blocks with few messages.
    #[cfg(test)]
    fn with_sizes(mut self, block_target: usize, small_pack: u64) -> Self {
        self.block_target = block_target;
        self.small_pack = small_pack;
        self
    }

    /// Adds the operations of a segment the base does not cover (segments in any order), with
    /// its head and the heads its writer had seen (they say who has seen which chat deletes).
    pub fn add_segment(&mut self, head: &Head, seen: &[Head], operations: Vec<Operation>) {
        let deletes = operations
            .iter()
            .filter_map(|operation| match &operation.change {
                Change::DeleteChat { chat_id } => Some((chat_id.as_str(), operation.stamp)),
                _ => None,
            });
        self.deletions.note_segment(head, seen, deletes);
        for operation in operations {
            self.add(operation);
        }
    }

    /// Adds an operation of a segment the base does not cover (segments in any order), without
    /// its segment: a delete among them keeps no place, so its chat's keys leave at once.
    pub fn add(&mut self, operation: Operation) {
        let chat = self
            .changes
            .entry(operation.change.chat_id().to_owned())
            .or_default();
        match &operation.change {
            Change::UpsertChat(_) => chat.head = true,
            Change::DeleteMessage { .. } | Change::DeleteChat { .. } => chat.whole = true,
            Change::UpsertMessage(_) => {}
        }
        chat.operations.push(operation);
    }

    /// Blocks of the base to fetch, open and hand to [`add_read`](Self::add_read): those to
    /// rewrite, and the unranged blocks of every chat with new messages (they hold its message
    /// tombstones, which a late-arriving older upsert must lose to).
    pub fn blocks_to_read(&self) -> Vec<usize> {
        let (fates, consulted) = self.fates();
        let mut blocks: BTreeSet<usize> = consulted;
        blocks.extend((0..fates.len()).filter(|b| fates[*b] == Fate::Read));
        blocks.into_iter().collect()
    }

    /// Blocks of the base to fetch and hand unopened to [`add_copy`](Self::add_copy).
    pub fn blocks_to_copy(&self) -> Vec<usize> {
        self.blocks_of_fate(Fate::Copy)
    }

    /// The operations of base block `block` (one of [`blocks_to_read`](Self::blocks_to_read)).
    pub fn add_read(&mut self, block: usize, operations: Vec<Operation>) {
        self.read.insert(block, operations);
    }

    /// The sealed bytes of base block `block` (one of [`blocks_to_copy`](Self::blocks_to_copy)).
    pub fn add_copy(&mut self, block: usize, bytes: Vec<u8>) {
        self.copied.insert(block, bytes);
    }

    fn blocks_of_fate(&self, fate: Fate) -> Vec<usize> {
        self.fates()
            .0
            .iter()
            .enumerate()
            .filter(|(_, f)| **f == fate)
            .map(|(block, _)| block)
            .collect()
    }

    /// The fate of every block of the base, in index order, and the blocks that are read
    /// without being rewritten.
    fn fates(&self) -> (Vec<Fate>, BTreeSet<usize>) {
        let mut consulted = BTreeSet::new();
        let Some(base) = self.base else {
            return (Vec::new(), consulted);
        };
        let mut fates = vec![Fate::Keep; base.chats.len()];
        for (chat_id, blocks) in blocks_by_chat(base) {
            let Some(changes) = self.changes.get(chat_id) else {
                continue;
            };
            let (head, ranged) = split_ranged(base, &blocks);
            if changes.whole {
                blocks.iter().for_each(|b| fates[*b] = Fate::Read);
                continue;
            }
            if changes.head {
                head.iter().for_each(|b| fates[*b] = Fate::Read);
            } else {
                consulted.extend(head.iter().copied());
            }
            for operation in &changes.operations {
                if let Some(block) = place(base, &ranged, operation) {
                    fates[block] = Fate::Read;
                }
            }
        }
        // Live bytes per pack: a pack mostly superseded, or small, has its live blocks copied.
        let mut live = vec![0u64; base.packs.len()];
        for (block, entry) in base.chats.iter().enumerate() {
            if fates[block] == Fate::Keep {
                // Saturating: lengths are only bounded by their pack's recorded size, and a base
                // not checked against a listing may record any.
                live[entry.pack] = live[entry.pack].saturating_add(entry.length);
            }
        }
        for (block, entry) in base.chats.iter().enumerate() {
            let size = base.packs[entry.pack].1;
            if fates[block] == Fate::Keep
                && (live[entry.pack].saturating_mul(2) < size || size < self.small_pack)
            {
                fates[block] = Fate::Copy;
            }
        }
        (fates, consulted)
    }

    /// Seals the checkpoint: new blocks into new packs, then the index.
    pub fn seal(
        self,
        keys: &impl KeyEpochs,
        input: &CheckpointInput<'_>,
    ) -> Result<SealedCheckpoint> {
        self.seal_with(keys, input, &mut sealing::random_nonce)
    }

    /// [`seal`](Self::seal) with nonces from `nonce` (see [`seal_checkpoint_with`]).
    pub(crate) fn seal_with(
        mut self,
        keys: &impl KeyEpochs,
        input: &CheckpointInput<'_>,
        nonce: &mut dyn FnMut() -> Result<[u8; sealing::NONCE_LEN]>,
    ) -> Result<SealedCheckpoint> {
        // The index is sealed in the newest epoch this device holds; new blocks under chat keys
        // of that epoch, drawn where a chat has none yet.
        let (epoch, keys) = keys.newest();
        let (fates, _) = self.fates();
        let index_name = checkpoint_name(input.device, input.seq, input.tag);
        let mut writer = PackWriter {
            keys,
            epoch,
            chat_keys: input.chat_keys.clone(),
            minted: Vec::new(),
            pack_base: pack_prefix(input.device, input.seq, input.tag),
            nonce,
            packs: Vec::new(),
            open: None,
            refs: Vec::new(),
            slots: BTreeMap::new(),
            entries: Vec::new(),
            block_target: self.block_target,
            kept: 0,
            copied: 0,
            written: 0,
        };
        let mut deleted: BTreeMap<String, Stamp> = BTreeMap::new();
        let mut note_deleted = |chat: &str, stamp: Stamp| {
            let newest = deleted.entry(chat.to_owned()).or_insert(stamp);
            *newest = (*newest).max(stamp);
        };
        for (chat, stamp) in input.deleted_chats {
            note_deleted(chat, *stamp);
        }
        let base_blocks: BTreeMap<&str, Vec<usize>> =
            self.base.map(blocks_by_chat).unwrap_or_default();
        if let Some(base) = self.base {
            for (chat, stamp) in &base.deleted_chats {
                note_deleted(chat, *stamp);
            }
        }
        for changes in self.changes.values() {
            for operation in &changes.operations {
                if let Change::DeleteChat { chat_id } = &operation.change {
                    note_deleted(chat_id, operation.stamp);
                }
            }
        }
        let chats: BTreeSet<String> = base_blocks
            .keys()
            .map(|chat| (*chat).to_owned())
            .chain(self.changes.keys().cloned())
            .collect();
        for chat_id in &chats {
            let chat_id = chat_id.as_str();
            let blocks = base_blocks.get(chat_id).cloned().unwrap_or_default();
            let Some(changes) = self.changes.remove(chat_id) else {
                for block in blocks {
                    writer.carry(self.base, &fates, &mut self.copied, block)?;
                }
                continue;
            };
            // The chat's new state where it changed: its newest deletion, the blocks read, and
            // the new operations, merged under the usual rules (in any order).
            let mut state = MemoryState::new();
            if let Some(stamp) = deleted.get(chat_id) {
                apply(&mut state, &delete_chat(chat_id, *stamp))?;
            }
            for block in &blocks {
                for operation in self.read.remove(block).unwrap_or_default() {
                    apply(&mut state, &operation)?;
                }
            }
            for operation in &changes.operations {
                apply(&mut state, operation)?;
            }
            let winners = state.winners().remove(chat_id).unwrap_or_default();
            let (messages, mut unranged): (Vec<Operation>, Vec<Operation>) = winners
                .into_iter()
                .partition(|op| position_of(op).is_some());
            let (head, ranged) = match self.base {
                Some(base) => split_ranged(base, &blocks),
                None => (Vec::new(), Vec::new()),
            };
            // Unranged blocks only consulted stay as they are, and hold every unranged winner
            // (new metadata or deletions would have had them rewritten).
            if head.iter().any(|b| fates[*b] != Fate::Read) {
                unranged.clear();
            }
            // Each message goes to the block its position falls into; a message of a block
            // kept as it is (only an older writer's unranged block can bring one) goes with the
            // chat's unranged operations, which every reader reads.
            let mut placed: BTreeMap<Option<usize>, Vec<Operation>> = BTreeMap::new();
            for operation in messages {
                let block = self.base.and_then(|base| place(base, &ranged, &operation));
                match block {
                    Some(b) if fates[b] != Fate::Read => unranged.push(operation),
                    _ => placed.entry(block).or_default().push(operation),
                }
            }
            for block in &head {
                if fates[*block] != Fate::Read {
                    writer.carry(self.base, &fates, &mut self.copied, *block)?;
                }
            }
            writer.write(chat_id, unranged, false)?;
            writer.write(chat_id, placed.remove(&None).unwrap_or_default(), true)?;
            for block in ranged {
                if fates[block] == Fate::Read {
                    let operations = placed.remove(&Some(block)).unwrap_or_default();
                    writer.write(chat_id, operations, true)?;
                } else {
                    writer.carry(self.base, &fates, &mut self.copied, block)?;
                }
            }
        }
        writer.close();
        let deletions = self.deletions.finish(input.covered, &deleted, self.listing);
        let still_written = deletions
            .iter()
            .filter(|(_, deletion)| !deletion.unaware.is_empty())
            .map(|(chat, _)| chat);
        let grants = grants_of(&writer.chat_keys, &writer.entries, still_written)?;
        let mut body = zeroize::Zeroizing::new(
            proto::CheckpointIndex {
                device_id: input.device.0.to_vec(),
                seq: input.seq,
                covered: input.covered.iter().map(head_to_proto).collect(),
                keys: grants,
                packs: writer
                    .refs
                    .iter()
                    .map(|(name, size)| proto::PackRef {
                        name: name.clone(),
                        size: *size,
                    })
                    .collect(),
                chats: std::mem::take(&mut writer.entries),
                deleted_chats: deleted
                    .into_iter()
                    .map(|(chat_id, stamp)| {
                        let place = deletions.get(&chat_id);
                        proto::ChatTombstone {
                            stamp: Some(stamp.to_proto()),
                            deleted_by: place
                                .map(|d| d.deleted_in.device.0.to_vec())
                                .unwrap_or_default(),
                            deleted_in: place.map_or(0, |d| d.deleted_in.seq),
                            deleted_in_tag: place.map_or(0, |d| d.deleted_in.tag),
                            unaware: place
                                .map(|d| d.unaware.iter().map(|device| device.0.to_vec()).collect())
                                .unwrap_or_default(),
                            chat_id,
                        }
                    })
                    .collect(),
                created_at_ms: input.created_at_ms,
                signature: Vec::new(),
            }
            .encode_to_vec(),
        );
        if let Some(signer) = input.signer {
            append_signature(
                &mut body,
                signer,
                CHECKPOINT_LABEL,
                keys.vault_id(),
                &index_name,
            );
        }
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::CheckpointIndex,
            name: &index_name,
        };
        let index = sealing::seal_with_nonce_in_epoch(
            &keys.log().0,
            &context,
            epoch,
            &body,
            &(writer.nonce)()?,
            Compression::Auto,
        )?;
        Ok(SealedCheckpoint {
            index_name,
            index,
            packs: writer.packs,
            blocks_kept: writer.kept,
            blocks_copied: writer.copied,
            blocks_written: writer.written,
            minted: writer
                .minted
                .iter()
                .filter_map(|key_id| {
                    let (chat_id, key) = writer.chat_keys.key(key_id)?;
                    Some(KeyGrant {
                        key_id: *key_id,
                        chat_id: chat_id.to_owned(),
                        key: key.clone(),
                        epoch,
                    })
                })
                .collect(),
        })
    }
}

/// Every block of the base by chat, in index order.
fn blocks_by_chat(base: &CheckpointIndex) -> BTreeMap<&str, Vec<usize>> {
    let mut by_chat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (block, entry) in base.chats.iter().enumerate() {
        by_chat
            .entry(entry.chat_id.as_str())
            .or_default()
            .push(block);
    }
    by_chat
}

/// A chat's blocks split into unranged ones and ranged ones (history order).
fn split_ranged(base: &CheckpointIndex, blocks: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (ranged, head): (Vec<usize>, Vec<usize>) =
        blocks.iter().partition(|b| base.chats[**b].range.is_some());
    (head, ranged)
}

/// The ranged block a message belongs in: the last whose first position is at or before it (the
/// first block for a message older than all), so ranges never overlap; `None` for an operation
/// without a position or a chat without ranged blocks.
fn place(base: &CheckpointIndex, ranged: &[usize], operation: &Operation) -> Option<usize> {
    let (sent_at_ms, message_id) = position_of(operation)?;
    let first_of = |b: &usize| base.chats[*b].range.as_ref().map(|(first, _)| first);
    let after = ranged.partition_point(|b| {
        first_of(b).is_some_and(|first| {
            (first.sent_at_ms, first.message_id.as_bytes()) <= (sent_at_ms, message_id.as_bytes())
        })
    });
    ranged.get(after.saturating_sub(1)).copied()
}

fn delete_chat(chat_id: &str, stamp: Stamp) -> Operation {
    Operation {
        stamp,
        change: Change::DeleteChat {
            chat_id: chat_id.to_owned(),
        },
    }
}

/// Every key of every chat with a block, and of every deleted chat some covered device may still
/// write to unaware of the delete (`still_written`, see [`deletions`](super::deletions)); each
/// block's key must be among them.
fn grants_of<'d>(
    chat_keys: &ChatKeys,
    entries: &'d [proto::PackedChat],
    still_written: impl Iterator<Item = &'d String>,
) -> Result<Vec<proto::ChatKeyGrant>> {
    let chats: BTreeSet<&str> = entries
        .iter()
        .map(|e| e.chat_id.as_str())
        .chain(still_written.map(String::as_str))
        .collect();
    for entry in entries {
        let known = <KeyId>::try_from(entry.key_id.as_slice())
            .ok()
            .and_then(|id| chat_keys.key(&id))
            .is_some_and(|(chat, _)| chat == entry.chat_id);
        if !known {
            return Err(Error::invalid_input(format!(
                "no key for a block of chat {:?}",
                entry.chat_id
            )));
        }
    }
    let mut grants: Vec<proto::ChatKeyGrant> = chat_keys
        .entries()
        .filter(|(_, chat, _, _)| chats.contains(chat))
        .filter_map(|(id, _, _, _)| chat_keys.grant(id))
        .collect();
    grants.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    Ok(grants)
}

/// Lays blocks out in packs and builds the index's pack and block lists.
struct PackWriter<'k, 'n> {
    keys: &'k VaultKeys,
    /// The epoch new blocks are written in.
    epoch: u8,
    /// The known chat keys, and those drawn while writing.
    chat_keys: ChatKeys,
    minted: Vec<KeyId>,
    pack_base: String,
    nonce: &'n mut dyn FnMut() -> Result<[u8; sealing::NONCE_LEN]>,
    /// New packs, closed.
    packs: Vec<(String, Vec<u8>)>,
    /// The new pack being filled: its slot in `refs` and its bytes.
    open: Option<(usize, Vec<u8>)>,
    /// The index's pack list: (name, size), earlier packs and new ones.
    refs: Vec<(String, u64)>,
    /// Slot in `refs` of each pack name.
    slots: BTreeMap<String, usize>,
    entries: Vec<proto::PackedChat>,
    block_target: usize,
    kept: u64,
    copied: u64,
    written: u64,
}

impl PackWriter<'_, '_> {
    /// Carries base block `block` over as its fate says: referenced where it lies, or copied.
    fn carry(
        &mut self,
        base: Option<&CheckpointIndex>,
        fates: &[Fate],
        copied: &mut BTreeMap<usize, Vec<u8>>,
        block: usize,
    ) -> Result<()> {
        let Some(base) = base else {
            return Ok(());
        };
        let entry = &base.chats[block];
        let mut packed = proto::PackedChat {
            chat_id: entry.chat_id.clone(),
            key_id: entry.key_id.to_vec(),
            pack: 0,
            offset: 0,
            length: entry.length,
            first: None,
            last: None,
            block_id: entry.block_id.to_vec(),
            hash: entry.hash.map(|h| h.to_vec()).unwrap_or_default(),
        };
        if let Some((first, last)) = &entry.range {
            packed.first = Some(position_to_proto(first));
            packed.last = Some(position_to_proto(last));
        }
        if fates[block] == Fate::Copy {
            let bytes = copied.remove(&block).ok_or_else(|| {
                Error::invalid_input(format!("block {block} to copy was not fetched"))
            })?;
            if bytes.len() as u64 != entry.length {
                return Err(Error::invalid_input(format!(
                    "block {block} to copy has {} bytes, not {}",
                    bytes.len(),
                    entry.length
                )));
            }
            // Copied unopened: the hash is what vouches for the bytes. A block of an index
            // written before blocks were hashed gets its hash here, from the bytes as they lie.
            let pack = base
                .packs
                .get(entry.pack)
                .map_or("", |(name, _)| name.as_str());
            entry.check_bytes(pack, &bytes)?;
            packed.hash = Sha256::digest(&bytes).to_vec();
            self.append(packed, &bytes);
            self.copied += 1;
        } else {
            let (name, size) = &base.packs[entry.pack];
            let slot = match self.slots.get(name) {
                Some(slot) => *slot,
                None => {
                    self.refs.push((name.clone(), *size));
                    self.slots.insert(name.clone(), self.refs.len() - 1);
                    self.refs.len() - 1
                }
            };
            packed.pack = slot as u32;
            packed.offset = entry.offset;
            self.entries.push(packed);
            self.kept += 1;
        }
        Ok(())
    }

    /// Seals `operations` (sorted into history order when `ranged`) as new blocks of the chat,
    /// cut at about `block_target` bytes; nothing for no operations.
    fn write(&mut self, chat_id: &str, mut operations: Vec<Operation>, ranged: bool) -> Result<()> {
        if operations.is_empty() {
            return Ok(());
        }
        if ranged {
            operations.sort_by(|a, b| {
                let place =
                    |op: &Operation| position_of(op).map(|(at, id)| (at, id.as_bytes().to_vec()));
                place(a).cmp(&place(b))
            });
        }
        if self.chat_keys.writing_key(chat_id, self.epoch).is_none() {
            let key_id = self.chat_keys.mint(chat_id, self.epoch)?;
            self.minted.push(key_id);
        }
        let (key_id, key) = self
            .chat_keys
            .writing_key(chat_id, self.epoch)
            .ok_or_else(|| Error::invalid_input(format!("no key for chat {chat_id:?}")))?;
        let key = key.clone();
        let encoded: Vec<proto::Operation> = operations.iter().map(Operation::to_proto).collect();
        for range in split_blocks(&encoded, self.block_target) {
            let block_ops = &operations[range.clone()];
            let body = proto::ChatCheckpoint {
                chat_id: chat_id.to_owned(),
                operations: encoded[range].to_vec(),
            }
            .encode_to_vec();
            let nonce = (self.nonce)()?;
            let block_id: [u8; 16] = nonce[..16]
                .try_into()
                .map_err(|_| Error::invalid_input("nonce shorter than a block id"))?;
            let name = block_name(&block_id);
            let context = ObjectContext {
                vault_id: self.keys.vault_id(),
                kind: ObjectKind::ChatData,
                name: &name,
            };
            let block =
                sealing::seal_with_nonce(&key.0, &context, &body, &nonce, Compression::Auto)?;
            let place = |op: Option<&Operation>| {
                op.and_then(position_of)
                    .filter(|_| ranged)
                    .map(|(sent_at_ms, message_id)| proto::HistoryPosition {
                        sent_at_ms,
                        message_id: message_id.to_owned(),
                    })
            };
            let packed = proto::PackedChat {
                chat_id: chat_id.to_owned(),
                key_id: key_id.to_vec(),
                pack: 0,
                offset: 0,
                length: block.len() as u64,
                first: place(block_ops.first()),
                last: place(block_ops.last()),
                block_id: block_id.to_vec(),
                hash: Sha256::digest(&block).to_vec(),
            };
            self.append(packed, &block);
            self.written += 1;
        }
        Ok(())
    }

    /// Appends a sealed block to the open new pack (opening or rolling over packs as needed).
    fn append(&mut self, mut packed: proto::PackedChat, block: &[u8]) {
        if self
            .open
            .as_ref()
            .is_some_and(|(_, bytes)| !bytes.is_empty() && bytes.len() + block.len() > PACK_TARGET)
        {
            self.close();
        }
        let (slot, bytes) = self.open.get_or_insert_with(|| {
            let name = format!("{}{:04}", self.pack_base, self.packs.len());
            self.refs.push((name, 0));
            (self.refs.len() - 1, Vec::new())
        });
        packed.pack = *slot as u32;
        packed.offset = bytes.len() as u64;
        bytes.extend_from_slice(block);
        self.entries.push(packed);
    }

    /// Pads and closes the open new pack, if any.
    fn close(&mut self) {
        if let Some((slot, mut bytes)) = self.open.take() {
            bytes.resize(padded_len(bytes.len() as u64) as usize, 0);
            self.refs[slot].1 = bytes.len() as u64;
            self.packs.push((self.refs[slot].0.clone(), bytes));
        }
    }
}

fn position_to_proto(cursor: &HistoryCursor) -> proto::HistoryPosition {
    proto::HistoryPosition {
        sent_at_ms: cursor.sent_at_ms,
        message_id: cursor.message_id.clone(),
    }
}

/// Cuts encoded operations into runs of about `target` bytes (at least one each).
fn split_blocks(operations: &[proto::Operation], target: usize) -> Vec<std::ops::Range<usize>> {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (index, operation) in operations.iter().enumerate() {
        if index > start && size >= target {
            blocks.push(start..index);
            start = index;
            size = 0;
        }
        size += operation.encoded_len();
    }
    if start < operations.len() {
        blocks.push(start..operations.len());
    }
    blocks
}

#[cfg(test)]
mod tests;
