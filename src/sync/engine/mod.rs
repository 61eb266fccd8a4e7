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
//! 3. [`Engine::plan`]: every listed segment neither applied nor covered, each device's tree in
//!    sequence order (`super::tree`), with missing parents, deletions and rollbacks refused.
//! 4. [`Engine::accept`] per arrived segment, in plan order: its parent's hash, then
//!    [`Engine::check_claims`] against every device's tips.
//!
//! `verify` also fetches what a pull may skip: [`Engine::covered_segments`] (segments the
//! checkpoint covers that are still listed), checked by [`Engine::accept_covered`].

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, IntegrityProblem, Result};
use crate::keys::KeyEpochs;

use super::checkpoint::{CheckpointIndex, open_checkpoint_index};
use super::clock::DeviceId;
use super::listing::Listing;
use super::plan::{
    Get, Known, MAX_CHECKPOINT_OBJECT, MAX_SEGMENT_OBJECT, check_applied_present, check_link,
    check_rollback, check_seen, plan_segments,
};
use super::segment::{ChatKeys, Head, OpenedSegment, SegmentHash, SegmentId};
use super::tree::{Walk, tips, walk};

/// What a device learned about one checkpoint: the segments it covers and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Every tip of every device's segment tree it covers.
    pub covered: Vec<Head>,
    /// Its writer's clock at creation.
    pub created_at_ms: u64,
}

/// One pass over the bucket (see the module documentation).
#[derive(Debug)]
pub struct Engine {
    listing: Listing,
    /// The tips this device applied, as its local state says.
    applied: Vec<Head>,
    /// The walk from `applied` through the listing.
    applied_walk: Walk,
    /// What plans take as there: the walk from `applied` (until `start_from_scratch`), and
    /// what an adopted checkpoint covers.
    have: BTreeSet<SegmentId>,
    /// Coverage of listed checkpoints.
    coverage: BTreeMap<String, Coverage>,
    /// Known coverage of checkpoints no longer listed.
    forgotten: Vec<String>,
    /// Hashes of segments this pass has checked (fetched, or covered by the adopted
    /// checkpoint).
    hashes: BTreeMap<SegmentId, SegmentHash>,
    /// The walk from the adopted (or noted) checkpoint's covered tips.
    base: Walk,
    /// Chat keys known so far.
    chat_keys: ChatKeys,
}

impl Engine {
    /// Starts a pass from a listing, the tips this device applied, the coverage it knows of
    /// checkpoints (by name; those no longer listed are reported by [`forgotten`](Self::forgotten))
    /// and the chat keys it holds.
    pub fn new(
        listing: Listing,
        applied: Vec<Head>,
        mut known: BTreeMap<String, Coverage>,
        chat_keys: ChatKeys,
    ) -> Engine {
        let forgotten = known
            .keys()
            .filter(|name| !listing.checkpoints.contains_key(*name))
            .cloned()
            .collect();
        known.retain(|name, _| listing.checkpoints.contains_key(name));
        let applied_walk = walk(&listing, &applied);
        Engine {
            have: applied_walk.reached.clone(),
            applied_walk,
            listing,
            applied,
            coverage: known,
            forgotten,
            hashes: BTreeMap::new(),
            base: Walk::default(),
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
        keys: &impl KeyEpochs,
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

    /// Forgets an arrived index that does not count (see `sync::roster::checkpoint_counts`):
    /// no start from it; it is listed among the objects that do not belong.
    pub fn refuse_index(&mut self, name: &str) {
        self.coverage.remove(name);
        self.listing.refuse_checkpoint(name);
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

    /// What this device learned of the listed checkpoint `name`, if it opened it.
    pub fn coverage(&self, name: &str) -> Option<&Coverage> {
        self.coverage.get(name)
    }

    /// What the newest checkpoint covers: the walk from its covered tips through the listing.
    pub fn newest_covered(&self) -> Walk {
        self.newest().map_or_else(Walk::default, |(_, coverage)| {
            walk(&self.listing, &coverage.covered)
        })
    }

    /// For a pull: whether to start from the newest checkpoint rather than this device's tips.
    /// Yes when a segment it covers and this device has not applied was collected, or when the
    /// checkpoint's bytes (`checkpoint_bytes`) are fewer than those of the segments it replaces
    /// (a new device).
    pub fn restore_is_cheaper(&self, checkpoint_bytes: u64) -> bool {
        if self.newest().is_none() {
            return false;
        }
        let mut replaced = 0u64;
        for id in &self.newest_covered().reached {
            if self.have.contains(id) {
                continue;
            }
            match self.listing.segment(*id) {
                Some(listed) => replaced = replaced.saturating_add(listed.listed.size),
                None => return true,
            }
        }
        replaced > checkpoint_bytes
    }

    /// Starts from the newest checkpoint's `index`: checks that its covered tips agree with
    /// every segment hash this device knows (`known_hash`), that every pack it names is listed
    /// with the size it records and holds its blocks, and learns its chat keys. What it covers
    /// counts as there from now on. Returns the pack GETs, in index order.
    pub fn adopt(
        &mut self,
        index: &CheckpointIndex,
        known_hash: impl Fn(SegmentId) -> Result<Option<SegmentHash>>,
    ) -> Result<Vec<Get>> {
        for head in &index.covered {
            if known_hash(head.id())?.is_some_and(|hash| hash != head.hash) {
                return Err(chain_broken(head.device, head.seq));
            }
        }
        let packs = self.pack_gets(index)?;
        for grant in &index.grants {
            self.chat_keys.learn(grant)?;
        }
        for head in &index.covered {
            self.hashes.insert(head.id(), head.hash);
        }
        self.base = walk(&self.listing, &index.covered);
        self.have.extend(self.base.reached.iter().copied());
        Ok(packs)
    }

    /// The tips this device holds after adopting `index`: its own and the covered ones, less
    /// those that are ancestors of others.
    pub fn tips_after_adopting(&self, index: &CheckpointIndex) -> Vec<Head> {
        tips(&self.listing, &self.applied, &index.covered, &self.base)
    }

    /// Learns the newest checkpoint's coverage without reading its packs: for a pull that
    /// applies only segments this device lacks (segments the checkpoint covers may be collected,
    /// so the plan must not require them).
    pub fn note_base(&mut self) {
        self.base = self.newest_covered();
        if let Some((_, coverage)) = self.newest() {
            for head in coverage.covered.clone() {
                self.hashes.insert(head.id(), head.hash);
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

    /// Refuses a listing that no longer shows a tip this device applied (a rollback), unless
    /// the newest checkpoint covers it or it is at or below the floor (collected).
    pub fn check_rollback(&self) -> Result<()> {
        check_rollback(&self.listing, &self.applied, &self.newest_covered())
    }

    /// Forgets this device's tips as where plans start: `verify` and single-chat reads check
    /// every segment from the adopted checkpoint (or from each device's first segment), not from
    /// what this device applied. The applied tips still guard against rollbacks.
    pub fn start_from_scratch(&mut self) {
        self.have.clear();
    }

    /// The segments to fetch: every listed segment not applied here (`applied` answers for
    /// those no walk from this device's tips reaches) nor covered by an adopted checkpoint, per
    /// device in (seq, tag) order, each one's parent there or planned before it (a missing one
    /// was deleted or withheld); and no tip this device applied may be gone (a rollback), nor
    /// anything below one that no checkpoint covers (a deletion).
    pub fn plan(&self, applied: impl Fn(SegmentId) -> Result<bool>) -> Result<Vec<Get>> {
        self.check_rollback()?;
        check_applied_present(&self.listing, &self.applied_walk, &self.newest_covered())?;
        plan_segments(
            &self.listing,
            &Known {
                have: &self.have,
                covered: &self.base,
                applied: &applied,
            },
        )
    }

    /// Accepts an arrived segment (in plan order): its `prev_hash` must be its parent's hash
    /// wherever that is known (checked this pass, or, through `known_hash`, applied here); its
    /// grants join the known chat keys. Returns whether a grant was new.
    pub fn accept(
        &mut self,
        segment: &OpenedSegment,
        known_hash: impl Fn(SegmentId) -> Result<Option<SegmentHash>>,
    ) -> Result<bool> {
        let parent_hash = match self.parent_of(segment) {
            Some(parent) => match self.hashes.get(&parent) {
                Some(hash) => Some(*hash),
                None => known_hash(parent)?,
            },
            None => None,
        };
        check_link(segment, parent_hash)?;
        self.hashes.insert(segment.head.id(), segment.head.hash);
        let mut learned = false;
        for grant in &segment.grants {
            learned |= self.chat_keys.learn(grant)?;
        }
        Ok(learned)
    }

    fn parent_of(&self, segment: &OpenedSegment) -> Option<SegmentId> {
        (segment.head.seq > 1).then(|| SegmentId {
            device: segment.head.device,
            seq: segment.head.seq - 1,
            tag: segment.parent_tag,
        })
    }

    /// Checks an accepted segment's claims about other devices: every head it says it saw must
    /// be there (checked this pass, applied here, listed, covered or collected), with the hash
    /// this pass (or, through `known_hash`, this device) knows for it.
    pub fn check_claims(
        &self,
        segment: &OpenedSegment,
        known_hash: impl Fn(SegmentId) -> Result<Option<SegmentHash>>,
    ) -> Result<()> {
        let known = |id: SegmentId| match self.hashes.get(&id) {
            Some(hash) => Ok(Some(*hash)),
            None => known_hash(id),
        };
        check_seen(
            segment,
            |claim| {
                let id = claim.id();
                Ok(self.hashes.contains_key(&id)
                    || self.have.contains(&id)
                    || self.applied.iter().any(|h| h.id() == id)
                    || self.listing.segment(id).is_some()
                    // In the bucket, refused as a revoked device's late segment (which another
                    // device applied before it learned of the revocation): not withheld.
                    || self.listing.late_segments.contains(&id)
                    || self.base.reached(id)
                    || self.base.below_floor(id)
                    || known_hash(id)?.is_some())
            },
            known,
        )
    }

    /// Checks that the tips this device applied are the segments this pass saw: a tip the
    /// bucket now shows with another hash was replaced. Tips at or below the adopted
    /// checkpoint's floor cannot be compared (those segments are collected).
    pub fn check_applied(&self) -> Result<()> {
        for head in &self.applied {
            if self.base.below_floor(head.id()) {
                continue;
            }
            if self.hashes.get(&head.id()) != Some(&head.hash) {
                return Err(chain_broken(head.device, head.seq));
            }
        }
        Ok(())
    }

    /// Whether this device has applied every segment the listing shows and everything the
    /// newest checkpoint covers (no error for a device that is behind: it just is not).
    pub fn applied_everything(&self) -> bool {
        let applied = &self.applied_walk;
        let newest = self.newest().map_or(&[][..], |(_, c)| c.covered.as_slice());
        self.listing
            .all_segments()
            .all(|(segment, _)| applied.reached(segment.id()))
            && newest.iter().all(|head| applied.reached(head.id()))
    }

    /// Listed segments the adopted checkpoint covers, every branch, in (seq, tag) order per
    /// device (a pull skips them; `verify` does not).
    pub fn covered_segments(&self) -> Result<Vec<Get>> {
        let mut gets = Vec::new();
        for (segment, listed) in self.listing.all_segments() {
            if self.base.reached(segment.id()) {
                gets.push(Get::listed(listed, MAX_SEGMENT_OBJECT, Some(segment))?);
            }
        }
        Ok(gets)
    }

    /// Checks a covered segment (in the order [`covered_segments`](Self::covered_segments)
    /// gave): it authenticated under its name; it follows its parent where that was checked
    /// before it; a covered tip has the hash the checkpoint records.
    pub fn accept_covered(&mut self, segment: &OpenedSegment) -> Result<()> {
        let head = segment.head;
        let parent_hash = self
            .parent_of(segment)
            .and_then(|parent| self.hashes.get(&parent).copied());
        check_link(segment, parent_hash)?;
        if let Some(recorded) = self.hashes.get(&head.id())
            && *recorded != head.hash
        {
            return Err(chain_broken(head.device, head.seq));
        }
        self.hashes.insert(head.id(), head.hash);
        Ok(())
    }

    /// The chat keys known so far.
    pub fn chat_keys(&self) -> &ChatKeys {
        &self.chat_keys
    }

    /// Listed segments of `device` that no walk from this device's tips reaches: for its own
    /// id, segments another copy of its state directory wrote (or its own, applied but cut off
    /// from its tips by a collected or deleted segment: the caller asks its local record).
    pub fn unapplied_of(&self, device: DeviceId) -> Vec<super::segment::SegmentName> {
        self.listing
            .all_segments()
            .filter(|(segment, _)| segment.device == device && !self.have.contains(&segment.id()))
            .map(|(segment, _)| segment)
            .collect()
    }

    /// Devices seen: applied here, checked this pass, or listed.
    pub fn devices(&self) -> BTreeSet<DeviceId> {
        self.applied
            .iter()
            .map(|h| h.device)
            .chain(self.hashes.keys().map(|id| id.device))
            .chain(self.listing.segments.keys().copied())
            .collect()
    }
}

fn chain_broken(device: DeviceId, seq: u64) -> Error {
    Error::Integrity(IntegrityProblem::ChainBroken {
        device: device.to_hex(),
        seq,
    })
}

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod driver;
#[cfg(test)]
mod tests;
