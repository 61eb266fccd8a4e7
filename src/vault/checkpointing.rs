//! Writing checkpoints from the bucket: the newest checkpoint plus the segments after it, so a
//! device needs no local copy of the vault's content to write one (see `sync::next_checkpoint`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::sync::listing::Listing;
use crate::sync::next_checkpoint::{CheckpointInput, NextCheckpoint};
use crate::sync::plan::{Get, Known, check_link, plan_segments};
use crate::sync::segment::{SegmentHash, SegmentId, random_tag};
use crate::sync::tree::walk;

use super::*;

/// Operations (by approximate size in memory) one checkpoint takes in: more uncovered segments
/// than this are covered by successive checkpoints in one call, so memory stays bounded
/// whatever the vault's size.
const ROUND_BYTES: u64 = 32 * 1024 * 1024;

/// One round's outcome.
struct Round {
    report: CheckpointReport,
    /// The index written, the base of the next round.
    index: Option<CheckpointIndex>,
    /// Whether uncovered segments remain.
    more: bool,
    /// Whether a name was taken by another copy of this state directory: nothing was written
    /// under this device's id, which has changed; the round must be sealed again.
    forked: bool,
}

impl Vault {
    /// Writes a checkpoint of everything in the bucket (after pushing what this device
    /// recorded), so new devices and single-chat restores read a few packs instead of every
    /// segment. It does not pull (pulled changes go to the app's listener, which only `sync`
    /// has): the checkpoint is built from the bucket. Returns its figures.
    pub async fn checkpoint(&self) -> Result<CheckpointReport> {
        let _guard = self.sync_lock.lock().await;
        let mut sync = SyncReport::default();
        let never = CancelToken::new();
        self.push(None, &mut sync, &never).await?;
        self.write_checkpoint().await
    }

    /// Writes checkpoints until every listed segment is covered: each from the one before (the
    /// newest in the bucket, first) and at most [`ROUND_BYTES`] of the segments after it. The
    /// caller holds the sync lock. The report sums every round and names the last index.
    pub(super) async fn write_checkpoint(&self) -> Result<CheckpointReport> {
        self.write_checkpoint_rounds(None).await
    }

    /// [`write_checkpoint`](Self::write_checkpoint), or, with `vouching`, the checkpoint
    /// [`vouch_for_newest_checkpoint`](Self::vouch_for_newest_checkpoint) writes (when one is
    /// needed: then at least one, even when no segment is left to cover).
    pub(super) async fn write_checkpoint_rounds(
        &self,
        vouching: Option<super::vouching::Vouching>,
    ) -> Result<CheckpointReport> {
        let mut scratch = SyncReport::default();
        let mut pass = self.start_pass(&mut scratch).await?;
        // This device in the roster first: its index counts only if the roster lists it.
        self.sync_roster(pass.engine.listing(), true, &mut scratch)
            .await?;
        let leaving = match &vouching {
            Some(vouching) => match self.leaving_indexes(&pass, vouching)? {
                Some(leaving) => Some(leaving),
                None => return Ok(CheckpointReport::default()),
            },
            None => None,
        };
        let mut base = self.newest_index(&mut pass, &mut scratch).await?;
        if let Some(leaving) = &leaving
            && let Some(replaced) = base.take()
        {
            base = self
                .vouching_base(&mut pass, leaving, replaced, &mut scratch)
                .await?;
        }
        if let Some(index) = &base {
            // The base's covered heads and packs are checked as a pull checks them.
            let local = lock(&self.local)?;
            pass.engine.adopt(index, |id| local.segment_hash(id))?;
        }
        let always = leaving.is_some();
        let listing = pass.engine.listing();
        let mut total = CheckpointReport::default();
        let mut forks = 0;
        loop {
            // `always` holds until one index is written: a round that forked writes nothing.
            let round = self
                .checkpoint_round(listing, base.as_ref(), always && total.name.is_empty())
                .await?;
            if round.forked {
                // This state directory was a copy of another device's: it continues under a
                // new id, and the same round is sealed again under names of that id.
                forks += 1;
                if forks > 1 {
                    return Err(Error::invalid_input(
                        "checkpoint names taken twice: another writer shares this device's names",
                    ));
                }
                // Its index counts only once the roster lists the new id.
                self.sync_roster(listing, true, &mut scratch).await?;
                continue;
            }
            total.objects += round.report.objects;
            total.bytes += round.report.bytes;
            if !round.report.name.is_empty() {
                total.name = round.report.name;
            }
            if !round.more {
                return Ok(total);
            }
            base = round.index;
        }
    }

    /// One checkpoint: `base` plus the next segments after it, up to [`ROUND_BYTES`].
    async fn checkpoint_round(
        &self,
        listing: &Listing,
        base: Option<&CheckpointIndex>,
        always: bool,
    ) -> Result<Round> {
        let mut chat_keys = lock(&self.chat_keys)?.clone();
        // The tips the new checkpoint covers: the base's, each replaced by the segments taken
        // after it (a fork's branches each keep a tip).
        let mut covered: Vec<Head> = Vec::new();
        if let Some(index) = base {
            for grant in &index.grants {
                chat_keys.learn(grant)?;
            }
            covered = index.covered.clone();
        }
        let mut hashes: BTreeMap<SegmentId, SegmentHash> =
            covered.iter().map(|h| (h.id(), h.hash)).collect();
        let base_walk = walk(listing, &covered);
        let fetches = plan_segments(
            listing,
            &Known {
                have: &base_walk.reached,
                covered: &base_walk,
                applied: &|_| Ok(false),
            },
        )?;
        let mut next = NextCheckpoint::new(base, listing);
        let mut taken = 0u64;
        let mut fetched = 0usize;
        // A device whose segment uses a chat key no segment taken so far grants (another
        // device's later segment does) is covered only up to the segment before; a later
        // checkpoint, built on this one, takes the rest.
        let mut held_back = std::collections::BTreeSet::new();
        for fetch in &fetches {
            if taken >= ROUND_BYTES {
                break;
            }
            let device = segment_device(fetch);
            if held_back.contains(&device) {
                continue;
            }
            let (segment, _) = self.fetch_segment(fetch).await?;
            let parent = fetch.segment.and_then(|name| name.parent_id());
            check_link(&segment, parent.and_then(|p| hashes.get(&p).copied()))?;
            for grant in &segment.grants {
                chat_keys.learn(grant)?;
            }
            let operations = match open_blocks(&self.keys, &chat_keys, &segment) {
                Err(Error::Integrity(crate::IntegrityProblem::UnknownKey { .. })) => {
                    held_back.insert(device);
                    continue;
                }
                other => other?,
            };
            taken += operations.iter().map(approximate_size).sum::<u64>();
            next.add_segment(&segment.head, &segment.seen, operations);
            covered.retain(|head| Some(head.id()) != parent);
            covered.push(segment.head);
            hashes.insert(segment.head.id(), segment.head.hash);
            fetched += 1;
        }
        if fetched == 0 && !(always && base.is_some()) {
            return Ok(Round {
                report: CheckpointReport::default(),
                index: None,
                more: false,
                forked: false,
            });
        }
        if let Some(index) = base {
            let reads = next.blocks_to_read();
            for (block, bytes) in self.fetch_blocks(index, &reads).await? {
                let operations = open_block(&self.keys, &chat_keys, index, block, &bytes)?;
                next.add_read(block, operations);
            }
            let copies = next.blocks_to_copy();
            for (block, bytes) in self.fetch_blocks(index, &copies).await? {
                next.add_copy(block, bytes);
            }
        }
        // The sequence number is taken before anything is written, so that an attempt cut short
        // (packs written, no index) never shares names with the next: a name already taken can
        // then only be another copy of this state directory's.
        // Its random tag is drawn and kept with it, so copies of this state directory that
        // reserve the same number still write under different names.
        let (seq, tag) = {
            let local = lock(&self.local)?;
            let seq = local
                .meta(META_CHECKPOINT_SEQ)?
                .and_then(|b| b.get(..8)?.try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0)
                + 1;
            let tag = random_tag()?;
            let mut reserved = seq.to_be_bytes().to_vec();
            reserved.extend_from_slice(&tag.to_be_bytes());
            local.set_meta(META_CHECKPOINT_SEQ, &reserved)?;
            (seq, tag)
        };
        let epochs = self.epochs()?;
        let (device, signer) = self.device_and_signer()?;
        let sealed = next.seal(
            &*epochs,
            &CheckpointInput {
                device,
                seq,
                tag,
                covered: &covered,
                chat_keys: &chat_keys,
                deleted_chats: &[],
                created_at_ms: self.now_ms(),
                signer: Some(&signer),
            },
        )?;
        let index = open_checkpoint_index(&*epochs, &sealed.index_name, &sealed.index)?;
        // Keys drawn for chats without one of this epoch: kept before the index that grants
        // them is uploaded, so a retry writes with the same ones.
        self.keep_chat_keys(&sealed.minted)?;
        let mut report = CheckpointReport {
            name: sealed.index_name.clone(),
            objects: 1 + sealed.packs.len() as u64,
            bytes: 0,
        };
        // Packs first, the index last: an index is never listed before its packs exist.
        let objects = sealed
            .packs
            .into_iter()
            .chain([(sealed.index_name, sealed.index)]);
        for (name, bytes) in objects {
            report.bytes += bytes.len() as u64;
            if !self.put_once(&name, bytes).await? {
                self.fork_off(None)?;
                return Ok(Round {
                    report: CheckpointReport::default(),
                    index: None,
                    more: true,
                    forked: true,
                });
            }
        }
        lock(&self.local)?.transaction(|tx| {
            let known = local::KnownCheckpoint {
                covered,
                created_at_ms: index.created_at_ms,
                signature: index.signature,
            };
            local::note_checkpoint(tx, &report.name, &known)
        })?;
        Ok(Round {
            report,
            index: Some(index),
            more: fetched + skipped(&fetches, &held_back) < fetches.len(),
            forked: false,
        })
    }

    /// The bytes of `blocks` of `index`: one ranged GET per pack, spanning the blocks it holds.
    async fn fetch_blocks(
        &self,
        index: &CheckpointIndex,
        blocks: &[usize],
    ) -> Result<Vec<(usize, Vec<u8>)>> {
        let mut by_pack: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for block in blocks {
            let entry = index.chats.get(*block).ok_or_else(|| {
                Error::invalid_input(format!("no block {block} in the checkpoint"))
            })?;
            by_pack.entry(entry.pack).or_default().push(*block);
        }
        let mut fetched = Vec::with_capacity(blocks.len());
        for (pack, blocks) in by_pack {
            let (pack_name, _) = &index.packs[pack];
            let start = blocks
                .iter()
                .map(|b| index.chats[*b].offset)
                .min()
                .unwrap_or(0);
            let end = blocks
                .iter()
                .map(|b| index.chats[*b].offset + index.chats[*b].length)
                .max()
                .unwrap_or(0);
            let misplaced = || {
                Error::Integrity(crate::IntegrityProblem::Misplaced {
                    name: pack_name.clone(),
                })
            };
            let span = self
                .store
                .get_range(&format!("{}{pack_name}", self.prefix()), start..end)
                .await?
                .ok_or_else(|| {
                    Error::Integrity(crate::IntegrityProblem::MissingObject {
                        name: pack_name.clone(),
                    })
                })?;
            for block in blocks {
                let entry = &index.chats[block];
                let from = (entry.offset - start) as usize;
                let bytes = span
                    .get(from..from + entry.length as usize)
                    .ok_or_else(misplaced)?;
                fetched.push((block, bytes.to_vec()));
            }
        }
        Ok(fetched)
    }
}

/// How many of `fetches` belong to devices held back this round.
fn skipped(fetches: &[Get], held_back: &std::collections::BTreeSet<DeviceId>) -> usize {
    fetches
        .iter()
        .filter(|f| held_back.contains(&segment_device(f)))
        .count()
}

/// The device of a planned segment GET.
fn segment_device(get: &Get) -> DeviceId {
    get.segment.map_or(DeviceId([0; 16]), |name| name.device)
}

/// About how many bytes an operation takes in memory.
fn approximate_size(operation: &Operation) -> u64 {
    let content = match &operation.change {
        Change::UpsertChat(chat) => {
            chat.title.len()
                + chat.payload.len()
                + chat.members.iter().map(String::len).sum::<usize>()
        }
        Change::UpsertMessage(message) => {
            message.text.len()
                + message.payload.len()
                + message.kind.len()
                + message.sender.len()
                + message.message_id.len()
                + message.attachments.len() * 256
        }
        Change::DeleteMessage { message_id, .. } => message_id.len(),
        Change::DeleteChat { .. } => 0,
    };
    (content + operation.change.chat_id().len() + 160) as u64
}
