//! The one sync engine that pull, `verify` and single-chat reads drive: given a listing, what
//! this device applied and the checkpoint coverage it learned, it says which objects to GET (with
//! the exact size each must have) and checks everything that arrives before anything is applied.
//!
//! It does no I/O. A driver (the vault) asks it for [`Get`]s, fetches them with reads bounded by
//! their promised size, and hands the bytes back, in the order the engine gave:
//!
//! 1. [`Engine::indexes_to_read`]: checkpoint indexes whose coverage is not known yet; each goes
//!    back through [`Engine::index_arrived`].
//! 2. [`Engine::newest`]: the checkpoint to start from, if any; [`Engine::restore_is_cheaper`]
//!    says whether a pull should. [`Engine::adopt`] checks its index against what this device
//!    knows and the listing (covered heads, pack sizes, block ranges) and returns the pack GETs.
//! 3. [`Engine::plan`]: the segments to fetch after the start, with gaps and rollbacks refused.
//! 4. [`Engine::accept`] per arrived segment, in plan order: hash chain, then
//!    [`Engine::check_claims`] against every device's heads.
//!
//! `verify` also fetches what a pull may skip: [`Engine::covered_segments`] (segments the
//! checkpoint covers that are still listed), checked by [`Engine::accept_covered`].

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, IntegrityProblem, Result};
use crate::keys::VaultKeys;

use super::checkpoint::{CheckpointIndex, open_checkpoint_index};
use super::clock::DeviceId;
use super::listing::Listing;
use super::plan::{
    Get, MAX_CHECKPOINT_OBJECT, MAX_SEGMENT_OBJECT, check_chain, check_rollback, check_seen,
    plan_segments,
};
use super::segment::{ChatKeys, Head, OpenedSegment, SegmentHash};

/// What a device learned about one checkpoint: the segments it covers and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// One head per device.
    pub covered: Vec<Head>,
    /// Its writer's clock at creation.
    pub created_at_ms: u64,
}

/// One pass over the bucket (see the module documentation).
#[derive(Debug)]
pub struct Engine {
    listing: Listing,
    /// Newest segment applied per device, as this device's local state says.
    applied: BTreeMap<DeviceId, Head>,
    /// Coverage of listed checkpoints.
    coverage: BTreeMap<String, Coverage>,
    /// Known coverage of checkpoints no longer listed.
    forgotten: Vec<String>,
    /// The newest segment checked per device: where each chain continues.
    chains: BTreeMap<DeviceId, Head>,
    /// Hashes of segments this pass has seen (fetched, or covered by the adopted checkpoint).
    hashes: BTreeMap<(DeviceId, u64), SegmentHash>,
    /// Segments covered by the adopted checkpoint, per device.
    base: BTreeMap<DeviceId, u64>,
    /// Chat keys known so far.
    chat_keys: ChatKeys,
}

impl Engine {
    /// Starts a pass from a listing, the heads this device applied, the coverage it knows of
    /// checkpoints (by name; those no longer listed are reported by [`forgotten`](Self::forgotten))
    /// and the chat keys it holds.
    pub fn new(
        listing: Listing,
        applied: BTreeMap<DeviceId, Head>,
        mut known: BTreeMap<String, Coverage>,
        chat_keys: ChatKeys,
    ) -> Engine {
        let forgotten = known
            .keys()
            .filter(|name| !listing.checkpoints.contains_key(*name))
            .cloned()
            .collect();
        known.retain(|name, _| listing.checkpoints.contains_key(name));
        Engine {
            chains: applied.clone(),
            listing,
            applied,
            coverage: known,
            forgotten,
            hashes: BTreeMap::new(),
            base: BTreeMap::new(),
            chat_keys,
        }
    }

    /// The listing this pass works from.
    pub fn listing(&self) -> &Listing {
        &self.listing
    }

    /// Names under the vault prefix that are no vault object.
    pub fn unknown(&self) -> &[String] {
        &self.listing.unknown
    }

    /// Checkpoints whose coverage was known but that are no longer listed.
    pub fn forgotten(&self) -> &[String] {
        &self.forgotten
    }

    /// Listed checkpoint indexes whose coverage is not known yet: GET them and hand each to
    /// [`index_arrived`](Self::index_arrived).
    pub fn indexes_to_read(&self) -> Result<Vec<Get>> {
        self.listing
            .checkpoints
            .values()
            .filter(|listed| !self.coverage.contains_key(&listed.name))
            .map(|listed| Get::listed(listed, MAX_CHECKPOINT_OBJECT, None))
            .collect()
    }

    /// Every listed checkpoint index (`verify` authenticates them all).
    pub fn all_indexes(&self) -> Result<Vec<Get>> {
        self.listing
            .checkpoints
            .values()
            .map(|listed| Get::listed(listed, MAX_CHECKPOINT_OBJECT, None))
            .collect()
    }

    /// Opens an arrived checkpoint index and learns its coverage.
    pub fn index_arrived(
        &mut self,
        keys: &VaultKeys,
        get: &Get,
        bytes: &[u8],
    ) -> Result<CheckpointIndex> {
        get.check_len(bytes)?;
        let index = open_checkpoint_index(keys, &get.name, bytes)?;
        self.coverage.insert(
            get.name.clone(),
            Coverage {
                covered: index.covered.clone(),
                created_at_ms: index.created_at_ms,
            },
        );
        Ok(index)
    }

    /// The newest listed checkpoint whose coverage is known: the one covering the most segments
    /// (ties broken by name, so every device picks the same).
    pub fn newest(&self) -> Option<(&str, &Coverage)> {
        self.coverage
            .iter()
            .max_by_key(|(name, coverage)| {
                // In u128: a key holder's index may cover sequence numbers near u64::MAX, whose
                // sum would overflow u64 (and panic in debug builds).
                let segments: u128 = coverage.covered.iter().map(|h| u128::from(h.seq)).sum();
                (segments, *name)
            })
            .map(|(name, coverage)| (name.as_str(), coverage))
    }

    /// Segments the newest checkpoint covers, per device.
    pub fn newest_base(&self) -> BTreeMap<DeviceId, u64> {
        self.newest().map_or_else(BTreeMap::new, |(_, coverage)| {
            coverage.covered.iter().map(|h| (h.device, h.seq)).collect()
        })
    }

    /// For a pull: whether to start from the newest checkpoint rather than this device's heads.
    /// Yes when a segment this device still needs was collected, or when the checkpoint's bytes
    /// (`checkpoint_bytes`) are fewer than those of the segments it replaces (a new device).
    pub fn restore_is_cheaper(&self, checkpoint_bytes: u64) -> bool {
        let Some((_, coverage)) = self.newest() else {
            return false;
        };
        let mut replaced = 0u64;
        for head in &coverage.covered {
            let done = self.applied.get(&head.device).map_or(0, |h| h.seq);
            for seq in done.saturating_add(1)..=head.seq {
                match self.listing.segment(head.device, seq) {
                    Some(listed) => replaced = replaced.saturating_add(listed.size),
                    None => return true,
                }
            }
        }
        replaced > checkpoint_bytes
    }

    /// Starts from the newest checkpoint's `index`: checks that its covered heads agree with
    /// every segment hash this device knows (`known_hash`), that every pack it names is listed
    /// with the size it records and holds its blocks, and learns its chat keys. Chains continue
    /// from its covered heads. Returns the pack GETs, in index order.
    pub fn adopt(
        &mut self,
        index: &CheckpointIndex,
        known_hash: impl Fn(DeviceId, u64) -> Option<SegmentHash>,
    ) -> Result<Vec<Get>> {
        for head in &index.covered {
            if known_hash(head.device, head.seq).is_some_and(|hash| hash != head.hash) {
                return Err(chain_broken(head.device, head.seq));
            }
        }
        let packs = self.pack_gets(index)?;
        for (key_id, chat_id, key) in &index.grants {
            self.chat_keys.insert(*key_id, chat_id, key.clone())?;
        }
        for head in &index.covered {
            self.hashes.insert((head.device, head.seq), head.hash);
            self.base.insert(head.device, head.seq);
            if self
                .chains
                .get(&head.device)
                .is_none_or(|h| h.seq < head.seq)
            {
                self.chains.insert(head.device, *head);
            }
        }
        Ok(packs)
    }

    /// Learns the newest checkpoint's coverage without reading its packs: for a pull that
    /// applies only segments after this device's heads (segments the checkpoint covers may be
    /// collected, so the plan must not require them).
    pub fn note_base(&mut self) {
        self.base = self.newest_base();
        if let Some((_, coverage)) = self.newest() {
            for head in coverage.covered.clone() {
                self.hashes.insert((head.device, head.seq), head.hash);
            }
        }
    }

    /// The GETs of an index's packs, each checked against the listing: listed, with the size
    /// the index records, every block inside it.
    pub fn pack_gets(&self, index: &CheckpointIndex) -> Result<Vec<Get>> {
        let mut gets = Vec::with_capacity(index.packs.len());
        for (number, (name, size)) in index.packs.iter().enumerate() {
            let listed = self.listing.packs.get(name).ok_or_else(|| {
                Error::Integrity(IntegrityProblem::MissingObject { name: name.clone() })
            })?;
            if listed.size != *size {
                return Err(Error::Integrity(IntegrityProblem::WrongSize {
                    name: name.clone(),
                    expected: *size,
                    found: listed.size,
                }));
            }
            let outside = index.chats.iter().any(|block| {
                block.pack == number
                    && block
                        .offset
                        .checked_add(block.length)
                        .is_none_or(|end| end > *size)
            });
            if outside {
                return Err(Error::Integrity(IntegrityProblem::Misplaced {
                    name: name.clone(),
                }));
            }
            gets.push(Get::listed(listed, MAX_CHECKPOINT_OBJECT, None)?);
        }
        Ok(gets)
    }

    /// Refuses a listing that shows fewer segments of a device than this device applied (a
    /// rollback), counting those the newest checkpoint covers as present.
    pub fn check_rollback(&self) -> Result<()> {
        check_rollback(&self.listing, &self.applied, &self.newest_base())
    }

    /// Forgets this device's heads as where chains start: `verify` and single-chat reads check
    /// every chain from the adopted checkpoint (or from each device's first segment), not from
    /// what this device applied. The applied heads still guard against rollbacks.
    pub fn start_from_scratch(&mut self) {
        self.chains.clear();
    }

    /// The segments to fetch after where each chain stands, per device in order. Every segment
    /// from the lower of a device's chain head and the adopted checkpoint's coverage up to the
    /// newest listed must be present (a gap is a deletion or a withheld segment), and no device
    /// may show fewer segments than were applied (a rollback).
    pub fn plan(&self) -> Result<Vec<Get>> {
        self.check_rollback()?;
        plan_segments(&self.listing, &self.chains, &self.base)
    }

    /// The newest sequence number each device is known to have: listed, covered by the
    /// adopted checkpoint, or applied here.
    fn available(&self) -> BTreeMap<DeviceId, u64> {
        let mut available = self.listing.newest_segments();
        let known = self
            .base
            .iter()
            .map(|(d, s)| (*d, *s))
            .chain(self.chains.values().map(|h| (h.device, h.seq)));
        for (device, seq) in known {
            let entry = available.entry(device).or_insert(0);
            *entry = (*entry).max(seq);
        }
        available
    }

    /// Accepts an arrived segment (in plan order): it must continue its device's chain; its
    /// grants join the known chat keys. Returns whether a grant was new.
    pub fn accept(&mut self, segment: &OpenedSegment) -> Result<bool> {
        let device = segment.head.device;
        check_chain(self.chains.get(&device), segment)?;
        self.chains.insert(device, segment.head);
        self.hashes
            .insert((device, segment.head.seq), segment.head.hash);
        let mut learned = false;
        for (key_id, chat_id, key) in &segment.grants {
            learned |= self.chat_keys.insert(*key_id, chat_id, key.clone())?;
        }
        Ok(learned)
    }

    /// Checks an accepted segment's claims about other devices: every head it says it saw must
    /// exist, with the hash this pass (or, through `known_hash`, this device) knows for it.
    pub fn check_claims(
        &self,
        segment: &OpenedSegment,
        known_hash: impl Fn(DeviceId, u64) -> Option<SegmentHash>,
    ) -> Result<()> {
        check_seen(segment, &self.available(), |device, seq| {
            self.hashes
                .get(&(device, seq))
                .copied()
                .or_else(|| known_hash(device, seq))
        })
    }

    /// Checks that the heads this device applied are the segments this pass saw: a device whose
    /// applied head the bucket now shows with another hash was forked or replaced. Heads below
    /// the adopted checkpoint's coverage cannot be compared (those segments may be collected).
    pub fn check_applied(&self) -> Result<()> {
        for (device, head) in &self.applied {
            let below = self.base.get(device).is_some_and(|b| head.seq < *b);
            if below {
                continue;
            }
            if self.hashes.get(&(*device, head.seq)) != Some(&head.hash) {
                return Err(chain_broken(*device, head.seq));
            }
        }
        Ok(())
    }

    /// Whether this device has applied every segment the listing shows and everything the
    /// newest checkpoint covers (no error for a device that is behind: it just is not).
    pub fn applied_everything(&self) -> bool {
        let newest = self.listing.newest_segments();
        let base = self.newest_base();
        newest
            .iter()
            .chain(base.iter())
            .all(|(device, seq)| self.applied.get(device).is_some_and(|h| h.seq >= *seq))
    }

    /// Listed segments the adopted checkpoint covers (a pull skips them; `verify` does not).
    pub fn covered_segments(&self) -> Result<Vec<Get>> {
        let mut gets = Vec::new();
        for (device, seq, listed) in self.listing.all_segments() {
            if self
                .base
                .get(&device)
                .is_some_and(|covered| seq <= *covered)
            {
                gets.push(Get::listed(
                    listed,
                    MAX_SEGMENT_OBJECT,
                    Some((device, seq)),
                )?);
            }
        }
        Ok(gets)
    }

    /// Checks a covered segment (in the order [`covered_segments`](Self::covered_segments)
    /// gave): it authenticated under its name; where its predecessor is listed too, it follows
    /// it in the chain; the one at the covered head has the hash the checkpoint records.
    pub fn accept_covered(
        &mut self,
        previous: Option<&OpenedSegment>,
        segment: &OpenedSegment,
    ) -> Result<()> {
        let head = segment.head;
        let follows_listed = previous
            .filter(|p| p.head.device == head.device && p.head.seq.checked_add(1) == Some(head.seq))
            .map(|p| p.head);
        if head.seq == 1 || follows_listed.is_some() {
            check_chain(follows_listed.as_ref(), segment)?;
        }
        if let Some(recorded) = self.hashes.get(&(head.device, head.seq))
            && *recorded != head.hash
        {
            return Err(chain_broken(head.device, head.seq));
        }
        self.hashes.insert((head.device, head.seq), head.hash);
        Ok(())
    }

    /// The chat keys known so far.
    pub fn chat_keys(&self) -> &ChatKeys {
        &self.chat_keys
    }

    /// Devices seen: with a chain, or listed.
    pub fn devices(&self) -> BTreeSet<DeviceId> {
        self.chains
            .keys()
            .chain(self.listing.segments.keys())
            .copied()
            .collect()
    }
}

fn chain_broken(device: DeviceId, seq: u64) -> Error {
    Error::Integrity(IntegrityProblem::ChainBroken {
        device: device.to_hex(),
        seq,
    })
}

#[cfg(test)]
mod tests;
