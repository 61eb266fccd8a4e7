//! The device roster: which devices belong to the vault, who added and revoked them, and which
//! key signs for the recovery key (docs/DEVICES.md, "Roster").
//!
//! The roster is a DAG of signed entries, one object each, named by the hash of the entry. Every
//! reader folds the same entries to the same roster ([`fold`]), so the bucket cannot show two
//! devices two rosters without withholding entries (which stops at most what they add). Which
//! entries count:
//!
//! 1. the signature verifies under the key of its signer *in the entry's causal past* (the
//!    recovery signing key in force there, or a device added and not revoked there), and the
//!    entry is sealed in the epoch in force there (or starts the next one);
//! 2. an entry of a device that a counted revoke revokes counts only if that revoke has it in its
//!    causal past (what the revoker had seen); revokes themselves are exempt, and so is a start
//!    that had seen the revoker itself revoked (a device cannot be revoked by one it had revoked
//!    first). Without starts, two devices that revoke each other before either saw the other's
//!    revoke are both revoked;
//! 3. one start per epoch number: a start that saw every counted revoke and rotation wins over
//!    one that did not, then the lower id;
//! 4. **epoch fence**: once a start of epoch n+1 counts, an entry of an older epoch counts only
//!    if that start has it in its causal past, revokes and rotations excepted (a start cannot
//!    undo them) unless their signer was retired where the start stands (a device revoked there,
//!    a recovery key a rotation there replaced). A revoked device holds no key of the epoch its
//!    revocation starts, so nothing it writes afterwards counts, whatever parents it claims; of
//!    two devices that revoke each other at once, the one whose start stands stays;
//! 5. a device is added once: of two adds of one device id, the one with the lower entry id
//!    counts. A device (not the recovery key) may add only a device whose keys certify its id
//!    ([`self_certified_id`](crate::devices::self_certified_id)) and which signs every segment,
//!    so two adds of one id by devices carry the same keys.
//!
//! Rules 2 to 4 can drop an entry that another entry's validity rested on, so the fold repeats
//! until the counted set no longer changes (a handful of rounds for honest rosters); a roster
//! that does not settle in [`MAX_ROUNDS`] is refused as contested.

mod entry;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use entry::malformed;
pub use entry::{
    EntryId, MAX_DEVICE_NAME_LEN, MAX_PLATFORM_LEN, MAX_ROSTER_ENTRIES, MAX_ROSTER_OBJECT,
    MAX_UNSIGNED_TIPS, RosterChange, RosterEntry, SignedEntry, Signer, parse_roster_name,
    roster_name,
};

use super::clock::DeviceId;
use super::listing::Listing;
use super::segment::{Head, SegmentId};
use super::signature::{BodySignature, CHECKPOINT_LABEL};
use crate::devices::DevicePublicKeys;
use crate::error::{Error, IntegrityProblem, Result};
use crate::keys::VaultId;

/// Fold rounds before a roster is refused as contested.
pub const MAX_ROUNDS: usize = 16;

/// A device as the roster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterDevice {
    /// Its public keys.
    pub keys: DevicePublicKeys,
    /// Its name.
    pub name: String,
    /// Its platform.
    pub platform: String,
    /// The first of its sequence numbers whose segments it signs (0 or 1: all of them).
    pub first_signed_seq: u64,
    /// The tips of its unsigned segments when it first signed (empty: none, or not recorded).
    pub unsigned_tips: Vec<Head>,
    /// Who added it.
    pub added_by: Signer,
    /// When (the adder's clock).
    pub added_at_ms: u64,
    /// Its revocation, if it was revoked.
    pub revoked: Option<Revocation>,
}

/// A revocation as the roster records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Who revoked the device.
    pub by: Signer,
    /// When (the revoker's clock).
    pub at_ms: u64,
    /// Its segments at or below these stay accepted.
    pub accepted_tips: Vec<Head>,
}

impl Revocation {
    /// Whether a segment of the revoked device stays accepted: at or below a tip the revocation
    /// pinned, by sequence number (`check_segment`'s second line; the listing filter,
    /// `refuse_segments`, follows the parent tags).
    pub fn accepts(&self, seq: u64, tag: u64) -> bool {
        at_or_below_by_seq(seq, tag, &self.accepted_tips)
    }
}

/// Whether segment (`seq`, `tag`) is one of `tips` or below one by sequence number.
fn at_or_below_by_seq(seq: u64, tag: u64, tips: &[Head]) -> bool {
    tips.iter()
        .any(|tip| seq < tip.seq || (seq == tip.seq && tag == tip.tag))
}

/// Whether `head` sits where one of `tips` does with other content (another hash).
fn replaces_a_tip(head: &Head, tips: &[Head]) -> bool {
    tips.iter()
        .any(|tip| tip.seq == head.seq && tip.tag == head.tag && tip.hash != head.hash)
}

/// Whether the roster takes segment `seq` (tag `tag`) of `device` at all: a device it revokes
/// only at or below the tips its revocation pinned, and, once the roster no longer trusts
/// writers of before device keys ([`Roster::trusts_unlisted_writers`]), only devices it lists (a
/// device revoked while it held epoch 0's keys could otherwise go on writing under a new id;
/// every device of a vault with epochs adds itself before it writes).
pub fn takes_segment(roster: &Roster, device: DeviceId, seq: u64, tag: u64) -> bool {
    match roster.devices.get(&device) {
        Some(record) => record
            .revoked
            .as_ref()
            .is_none_or(|revocation| revocation.accepts(seq, tag)),
        None => roster.trusts_unlisted_writers(),
    }
}

/// The listed segments of one device's tree at or below `tips`: each tip and, down the parent
/// tags of the names, every listed ancestor, as (seq, tag).
fn at_or_below(
    segments: &BTreeMap<(u64, u64), super::listing::ListedSegment>,
    tips: impl IntoIterator<Item = (u64, u64)>,
) -> BTreeSet<(u64, u64)> {
    let mut reached = BTreeSet::new();
    for (mut seq, mut tag) in tips {
        while let Some(segment) = segments.get(&(seq, tag)) {
            if !reached.insert((seq, tag)) || seq <= 1 {
                break;
            }
            (seq, tag) = (seq - 1, segment.parent);
        }
    }
    reached
}

/// Takes out of `listing` the segments the roster refuses. Nobody fetches them; they are listed
/// as `unknown` (reported by `verify`, skipped by every device, never deleted: they are
/// evidence). Of a revoked device it keeps only what its pinned tips reach down the parent tags
/// (a device's tree may fork, so a new branch below a pinned tip is refused too, and so is
/// anything below a pinned tip garbage collection took), and once
/// the roster no longer trusts writers of before device keys ([`Roster::trusts_unlisted_writers`])
/// nothing of a device the roster does not list, and of a listed device that wrote unsigned
/// segments before it had keys, only those its roster entry's unsigned tips reach (and every
/// segment from its first signed one on, whose signature is checked when fetched). Segments at or
/// below `applied` (what this device applied before it learned of a revocation) stay, so that
/// its own history does not look rolled back. Returns how many were taken out.
pub fn refuse_segments(roster: &Roster, listing: &mut Listing, applied: &[Head]) -> usize {
    let mut refused = Vec::new();
    let mut refused_late = Vec::new();
    for (device, segments) in &mut listing.segments {
        // The tips whose segments (and their ancestors) are taken, and the sequence number from
        // which on everything is (signed segments, checked when fetched); `None`: all taken.
        let (pinned, signed_from): (Vec<(u64, u64)>, Option<u64>) = match roster.devices.get(device)
        {
            Some(RosterDevice {
                revoked: Some(revocation),
                ..
            }) => (tips_of(&revocation.accepted_tips), None),
            Some(record)
                if !roster.trusts_unlisted_writers()
                    && record.first_signed_seq > 1
                    && !record.unsigned_tips.is_empty() =>
            {
                (
                    tips_of(&record.unsigned_tips),
                    Some(record.first_signed_seq),
                )
            }
            Some(_) => continue,
            None if roster.trusts_unlisted_writers() => continue,
            None => (Vec::new(), None),
        };
        // A revoked device's segment past its pinned tips by sequence number: one written late,
        // which a device may have applied before it learned of the revocation (and named as
        // seen). Only such a refusal meets another device's claim; any other (a pinned tip gone,
        // an unlisted writer) still fails it as missing.
        let late = |seq: u64, tag: u64| match roster.devices.get(device) {
            Some(RosterDevice {
                revoked: Some(revocation),
                ..
            }) => !revocation.accepts(seq, tag),
            _ => false,
        };
        let applied_here = applied
            .iter()
            .filter(|h| h.device == *device)
            .map(|h| (h.seq, h.tag));
        // A pinned tip garbage collection took leaves nothing of its chain below it: collection
        // deletes in ascending sequence numbers, so a listed segment below it is of another
        // branch (which its own tip reaches) or was written since. Nothing goes by sequence
        // number alone: a segment at seq 1 needs no parent.
        let reached = at_or_below(segments, pinned.iter().copied().chain(applied_here));
        segments.retain(|(seq, tag), segment| {
            let accepted =
                reached.contains(&(*seq, *tag)) || signed_from.is_some_and(|from| *seq >= from);
            if !accepted {
                refused.push(segment.listed.name.clone());
                if late(*seq, *tag) {
                    refused_late.push(SegmentId {
                        device: *device,
                        seq: *seq,
                        tag: *tag,
                    });
                }
            }
            accepted
        });
    }
    listing.segments.retain(|_, segments| !segments.is_empty());
    let count = refused.len();
    listing.unknown.extend(refused);
    listing.late_segments.extend(refused_late);
    count
}

fn tips_of(heads: &[Head]) -> Vec<(u64, u64)> {
    heads.iter().map(|head| (head.seq, head.tag)).collect()
}

/// Why an entry does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A parent is not in the bucket (withheld, or not uploaded yet).
    MissingParent,
    /// The signature does not verify under the signer's key in the entry's causal past, or the
    /// signer had no key there (unknown, or revoked).
    NotAuthorized,
    /// Sealed in another epoch than the one in force in its causal past.
    WrongEpoch,
    /// Of an epoch a counted start of a later epoch did not see.
    Fenced,
    /// By a revoked device, not seen by the revoke.
    AfterRevocation,
    /// Adds a device an entry with a lower id added, or revokes a device not added.
    Conflicting,
}

/// The folded roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// Every device ever added, revoked ones included.
    pub devices: BTreeMap<DeviceId, RosterDevice>,
    /// The recovery signing key in force.
    pub recovery_key: [u8; 32],
    /// The X25519 public key of the recovery key in force, when a rotation named it (`None`:
    /// the first recovery key's, which every device knows from its own open or its welcome).
    pub recovery_agreement: Option<[u8; 32]>,
    /// The newest epoch started.
    pub epoch: u8,
    /// Each started epoch's number and the SHA-256 of its epoch object, as its counted start
    /// names it: the only object a device takes that epoch's secret from to write in it.
    pub epochs: BTreeMap<u8, [u8; 32]>,
    /// Counted entries no counted entry names as a parent (a new entry's parents).
    pub tips: Vec<EntryId>,
    /// Entries that do not count, and why.
    pub refused: BTreeMap<EntryId, Refusal>,
}

impl Roster {
    /// Whether `device` is in the roster and not revoked.
    pub fn is_active(&self, device: DeviceId) -> bool {
        self.devices
            .get(&device)
            .is_some_and(|record| record.revoked.is_none())
    }

    /// Whether what devices wrote before they had keys still counts: segments and checkpoint
    /// indexes of devices the roster does not list, and unsigned indexes. Only while the vault
    /// is in epoch 0, no device was revoked and the recovery key was never replaced: from a
    /// revoke or rotation entry on (even one whose epoch start is not written yet), a revoked
    /// device or the old key's holder, both holding epoch 0's keys, could otherwise write them.
    pub fn trusts_unlisted_writers(&self) -> bool {
        self.epoch == 0
            && self.recovery_agreement.is_none()
            && self.devices.values().all(|record| record.revoked.is_none())
    }

    /// This roster as it will stand once a revoke or rotation entry is added, as far as what it
    /// takes is concerned: no longer trusting writers of before device keys.
    pub fn after_a_revoke_or_rotation(&self) -> Roster {
        let mut after = self.clone();
        after.epoch = after.epoch.max(1);
        after
    }
}

/// The state a set of counted entries gives, applied in topological order.
#[derive(Clone)]
struct State {
    devices: BTreeMap<DeviceId, RosterDevice>,
    recovery_key: [u8; 32],
    recovery_agreement: Option<[u8; 32]>,
    epoch: u8,
    epochs: BTreeMap<u8, [u8; 32]>,
}

impl State {
    fn new(root: [u8; 32]) -> Self {
        State {
            devices: BTreeMap::new(),
            recovery_key: root,
            recovery_agreement: None,
            epoch: 0,
            epochs: BTreeMap::new(),
        }
    }

    fn key_of(&self, signer: Signer) -> Option<[u8; 32]> {
        match signer {
            Signer::Recovery => Some(self.recovery_key),
            Signer::Device(device) => self
                .devices
                .get(&device)
                .filter(|record| record.revoked.is_none())
                .map(|record| record.keys.verifying),
        }
    }

    fn apply(&mut self, entry: &RosterEntry) {
        match &entry.change {
            RosterChange::Add {
                device,
                keys,
                name,
                platform,
                first_signed_seq,
                unsigned_tips,
            } => {
                self.devices.entry(*device).or_insert(RosterDevice {
                    keys: *keys,
                    name: name.clone(),
                    platform: platform.clone(),
                    first_signed_seq: *first_signed_seq,
                    unsigned_tips: unsigned_tips.clone(),
                    added_by: entry.signer,
                    added_at_ms: entry.made_at_ms,
                    revoked: None,
                });
            }
            RosterChange::Revoke {
                device,
                accepted_tips,
            } => {
                if let Some(record) = self.devices.get_mut(device)
                    && record.revoked.is_none()
                {
                    record.revoked = Some(Revocation {
                        by: entry.signer,
                        at_ms: entry.made_at_ms,
                        accepted_tips: accepted_tips.clone(),
                    });
                }
            }
            RosterChange::RotateRecovery { next, agreement } => {
                self.recovery_key = *next;
                self.recovery_agreement = Some(*agreement);
            }
            RosterChange::StartEpoch { epoch, object_hash } => {
                self.epoch = self.epoch.max(*epoch);
                self.epochs.insert(*epoch, *object_hash);
            }
        }
    }
}

/// Checks a segment against the roster: from its device's first signed sequence number on, a
/// segment of a device the roster lists must carry that device's valid signature (a signature
/// below it must verify too). A segment the roster does not take ([`takes_segment`]: a revoked
/// device's past its pinned tips, or, once the roster no longer trusts writers of before device
/// keys, an unlisted device's), or an unsigned one of a listed device outside the unsigned tips
/// its entry names, is `RevokedWriter`. This is the second line, by sequence number; the
/// listing filter ([`refuse_segments`]) follows the parent tags first.
pub fn check_segment(
    roster: &Roster,
    vault: &VaultId,
    segment: &crate::sync::segment::OpenedSegment,
) -> Result<()> {
    let head = &segment.head;
    let refused = || {
        Err(Error::Integrity(IntegrityProblem::RevokedWriter {
            device: head.device.to_hex(),
            seq: head.seq,
        }))
    };
    let record = roster.devices.get(&head.device);
    // A pinned tip must be the very segment the revoker had applied.
    let replaced_pin = record
        .and_then(|record| record.revoked.as_ref())
        .is_some_and(|revocation| replaces_a_tip(head, &revocation.accepted_tips));
    if replaced_pin || !takes_segment(roster, head.device, head.seq, head.tag) {
        return refused();
    }
    let Some(device) = record else {
        return Ok(());
    };
    if segment.signature.is_none() && head.seq < device.first_signed_seq.max(1) {
        // An unsigned one of before the device had keys: once the roster stops trusting such
        // writers, only at or below the tips its entry names (and the very segments there).
        let taken = roster.trusts_unlisted_writers()
            || device.unsigned_tips.is_empty()
            || !replaces_a_tip(head, &device.unsigned_tips)
                && at_or_below_by_seq(head.seq, head.tag, &device.unsigned_tips);
        return if taken { Ok(()) } else { refused() };
    }
    if segment.signed_by(vault, &device.keys.verifying) {
        Ok(())
    } else {
        Err(Error::Decode {
            kind: crate::format::ObjectKind::Segment,
            problem: crate::error::DecodeProblem::BadSignature,
        })
    }
}

/// Whether the roster takes checkpoint indexes of `device` at all, by the name alone: none of a
/// revoked device (whatever it wrote before: the revoker wrote a checkpoint of its own first,
/// `Vault::revoke`) and, unless the roster still trusts writers of before device keys
/// ([`Roster::trusts_unlisted_writers`]), none of a device it does not list.
pub fn takes_checkpoints_of(roster: &Roster, device: DeviceId) -> bool {
    match roster.devices.get(&device) {
        Some(record) => record.revoked.is_none(),
        None => roster.trusts_unlisted_writers(),
    }
}

/// Whether the checkpoint index `name` of `device`, carrying `signature`, counts: a restore
/// may start from it and garbage collection may go by it. Yes when the roster takes its
/// writer's indexes and it is signed by that device's key, or, while the roster still trusts
/// writers of before device keys, when it is unsigned or signed by a device the roster does
/// not list yet. An index whose signature does not verify does not count either: it is set
/// aside like any other (listed among the objects that do not belong), not an error that
/// would stop every device's sync and garbage collection at once.
pub fn checkpoint_counts(
    roster: &Roster,
    vault: &VaultId,
    name: &str,
    device: DeviceId,
    signature: Option<&BodySignature>,
) -> bool {
    if !takes_checkpoints_of(roster, device) {
        return false;
    }
    match (signature, roster.devices.get(&device)) {
        (Some(signature), Some(record)) => {
            signature.verifies(CHECKPOINT_LABEL, vault, name, &record.keys.verifying)
        }
        _ => roster.trusts_unlisted_writers(),
    }
}

/// Takes out of `listing` the checkpoint indexes of writers the roster does not take
/// ([`takes_checkpoints_of`]); they are listed among the objects that do not belong. Returns
/// how many.
pub fn refuse_checkpoints(roster: &Roster, listing: &mut Listing) -> usize {
    let refused: Vec<String> = listing
        .checkpoints
        .keys()
        .filter(|name| {
            super::checkpoint::parse_checkpoint_name(name)
                .is_some_and(|(device, _, _)| !takes_checkpoints_of(roster, device))
        })
        .cloned()
        .collect();
    for name in &refused {
        listing.refuse_checkpoint(name);
    }
    refused.len()
}

/// Folds the roster of `vault` from every entry the bucket holds, starting from the recovery
/// signing key `root` (the one the first recovery key derives). See the module documentation.
pub fn fold(vault: &VaultId, root: [u8; 32], entries: Vec<SignedEntry>) -> Result<Roster> {
    if entries.len() > MAX_ROSTER_ENTRIES {
        return Err(malformed("more roster entries than a vault can have"));
    }
    let mut refused = BTreeMap::new();
    // One entry per id; of two copies with other signatures (a bucket holds one object per
    // name, so only a caller could pass both), the smaller signature, whatever the order.
    let mut by_id: BTreeMap<EntryId, SignedEntry> = BTreeMap::new();
    for entry in entries {
        match by_id.get(&entry.id) {
            Some(kept) if kept.signature <= entry.signature => {}
            _ => {
                by_id.insert(entry.id, entry);
            }
        }
    }
    // Entries whose parents are missing (transitively) do not count.
    loop {
        let missing: Vec<EntryId> = by_id
            .values()
            .filter(|e| e.entry.parents.iter().any(|p| !by_id.contains_key(p)))
            .map(|e| e.id)
            .collect();
        if missing.is_empty() {
            break;
        }
        for id in missing {
            by_id.remove(&id);
            refused.insert(id, Refusal::MissingParent);
        }
    }
    // Topological order (parents first; ids are hashes of content naming the parents, so there
    // is no cycle), and each entry's causal past.
    let order = topological(&by_id);
    let mut past: BTreeMap<EntryId, BTreeSet<EntryId>> = BTreeMap::new();
    for id in &order {
        let mut ancestors = BTreeSet::new();
        for parent in &by_id[id].entry.parents {
            ancestors.insert(*parent);
            ancestors.extend(past[parent].iter().copied());
        }
        past.insert(*id, ancestors);
    }

    let mut counted: BTreeSet<EntryId> = by_id.keys().copied().collect();
    // Signature checks, by entry and key: every round asks again.
    let mut verified: BTreeMap<(EntryId, [u8; 32]), bool> = BTreeMap::new();
    for _ in 0..MAX_ROUNDS {
        let mut why: BTreeMap<EntryId, Refusal> = BTreeMap::new();
        // The key each entry's signer had in its causal past (for the fence below).
        let mut signing_key: BTreeMap<EntryId, [u8; 32]> = BTreeMap::new();
        // Rule 1 (and 4), each entry against the state its counted causal past gives.
        for id in &order {
            let signed = &by_id[id];
            let mut state = State::new(root);
            for earlier in order
                .iter()
                .filter(|e| past[id].contains(*e) && counted.contains(*e))
            {
                state.apply(&by_id[earlier].entry);
            }
            let entry = &signed.entry;
            if let Some(key) = state.key_of(entry.signer) {
                signing_key.insert(*id, key);
            }
            let authorized = state.key_of(entry.signer).is_some_and(|key| {
                *verified
                    .entry((*id, key))
                    .or_insert_with(|| signed.verifies(vault, &key))
            }) && (entry.signer == Signer::Recovery
                || device_may_sign(&entry.change));
            let epoch_ok = match entry.change {
                RosterChange::StartEpoch { epoch, .. } => {
                    entry.epoch == epoch && Some(epoch) == state.epoch.checked_add(1)
                }
                _ => entry.epoch == state.epoch,
            };
            let conflicting = match &entry.change {
                RosterChange::Add { device, .. } => state.devices.contains_key(device),
                RosterChange::Revoke { device, .. } => !state.devices.contains_key(device),
                _ => false,
            };
            if !authorized {
                why.insert(*id, Refusal::NotAuthorized);
            } else if !epoch_ok {
                why.insert(*id, Refusal::WrongEpoch);
            } else if conflicting {
                why.insert(*id, Refusal::Conflicting);
            }
        }
        // Rule 4: of concurrent adds of one device, the lowest id counts (ids are in order).
        let mut added = BTreeSet::new();
        let candidates: Vec<EntryId> = by_id
            .keys()
            .filter(|id| !why.contains_key(*id))
            .copied()
            .collect();
        for id in candidates {
            if let RosterChange::Add { device, .. } = by_id[&id].entry.change
                && !added.insert(device)
            {
                why.insert(id, Refusal::Conflicting);
            }
        }
        let locally: BTreeSet<EntryId> = order
            .iter()
            .filter(|id| !why.contains_key(*id))
            .copied()
            .collect();
        // Rule 3 first (its inputs, the revokes, are exempt from the other rules but rule 1): what
        // a revoked device wrote that its revoke did not see, revokes exempt; and a start that had
        // seen the revoker itself revoked is exempt from that revoke (a device cannot be revoked
        // by one it had revoked first: otherwise a revoked device's backdated revoke would void
        // the very start that fences it off). Only starts: any other entry stays refused.
        let revoked_in_past = |id: &EntryId, device: DeviceId| {
            // Revokes that counted in the previous round: a revoke fenced off there (a revoked
            // device's backdated one) exempts nothing.
            past[id].iter().any(|earlier| {
                counted.contains(earlier)
                    && matches!(by_id[earlier].entry.change, RosterChange::Revoke { device: d, .. } if d == device)
            })
        };
        for revoke in &locally {
            if let RosterChange::Revoke { device, .. } = by_id[revoke].entry.change {
                let revoker = by_id[revoke].entry.signer;
                for id in &locally {
                    let entry = &by_id[id].entry;
                    let saw_revoker_revoked = match revoker {
                        Signer::Device(revoker) => {
                            matches!(entry.change, RosterChange::StartEpoch { .. })
                                && revoked_in_past(id, revoker)
                        }
                        Signer::Recovery => false,
                    };
                    if entry.signer == Signer::Device(device)
                        && !matches!(entry.change, RosterChange::Revoke { .. })
                        && !past[revoke].contains(id)
                        && !saw_revoker_revoked
                    {
                        why.entry(*id).or_insert(Refusal::AfterRevocation);
                    }
                }
            }
        }
        // Rule 2: one start per epoch number. Prefer a start that saw every counted revoke and
        // rotation (a start racing one of them cannot undo it), then the lowest id.
        let standing: Vec<EntryId> = locally
            .iter()
            .filter(|id| !why.contains_key(*id))
            .copied()
            .collect();
        let decisive: Vec<EntryId> = standing
            .iter()
            .filter(|id| {
                matches!(
                    by_id[*id].entry.change,
                    RosterChange::Revoke { .. } | RosterChange::RotateRecovery { .. }
                )
            })
            .copied()
            .collect();
        let mut starts: BTreeMap<u8, EntryId> = BTreeMap::new();
        for id in &standing {
            if let RosterChange::StartEpoch { epoch, .. } = by_id[id].entry.change {
                let informed = |start: &EntryId| {
                    decisive
                        .iter()
                        .all(|d| past[start].contains(d) || by_id[d].entry.epoch > epoch)
                };
                match starts.get(&epoch) {
                    Some(current) if informed(current) >= informed(id) => {}
                    _ => {
                        starts.insert(epoch, *id);
                    }
                }
            }
        }
        for id in &standing {
            if let RosterChange::StartEpoch { epoch, .. } = by_id[id].entry.change
                && starts.get(&epoch) != Some(id)
            {
                why.entry(*id).or_insert(Refusal::Conflicting);
            }
        }
        // The epoch fence, from the starts that stand: an entry of an older epoch the start did
        // not see does not count. Revokes and rotations are exempt (a start cannot undo them),
        // unless their signer was already retired where the start stands: revoked there, or a
        // recovery key a rotation there replaced. Otherwise a revoked device could revoke the
        // others, and a replaced key rotate, at any later time with entries naming parents from
        // before their own retirement. (Two devices that revoke each other at once: the start
        // that stands saw one of the revokes, and the other revoke's signer is retired there.)
        for start in starts.values() {
            let RosterChange::StartEpoch { epoch, .. } = by_id[start].entry.change else {
                continue;
            };
            let mut seen = State::new(root);
            for earlier in order
                .iter()
                .filter(|e| past[start].contains(*e) && counted.contains(*e))
            {
                seen.apply(&by_id[earlier].entry);
            }
            for id in &standing {
                let entry = &by_id[id].entry;
                if entry.epoch >= epoch || past[start].contains(id) {
                    continue;
                }
                let exempt = matches!(
                    entry.change,
                    RosterChange::Revoke { .. } | RosterChange::RotateRecovery { .. }
                );
                let retired = match entry.signer {
                    Signer::Device(_) => seen.key_of(entry.signer).is_none(),
                    Signer::Recovery => signing_key.get(id) != Some(&seen.recovery_key),
                };
                if !exempt || retired {
                    why.entry(*id).or_insert(Refusal::Fenced);
                }
            }
        }
        let next: BTreeSet<EntryId> = order
            .iter()
            .filter(|id| !why.contains_key(*id))
            .copied()
            .collect();
        if next == counted {
            let mut state = State::new(root);
            for id in order.iter().filter(|id| counted.contains(*id)) {
                state.apply(&by_id[id].entry);
            }
            let parents: BTreeSet<EntryId> = counted
                .iter()
                .flat_map(|id| by_id[id].entry.parents.iter().copied())
                .collect();
            refused.extend(why);
            return Ok(Roster {
                devices: state.devices,
                recovery_key: state.recovery_key,
                recovery_agreement: state.recovery_agreement,
                epoch: state.epoch,
                epochs: state.epochs,
                tips: counted
                    .iter()
                    .filter(|id| !parents.contains(*id))
                    .copied()
                    .collect(),
                refused,
            });
        }
        counted = next;
    }
    Err(Error::Integrity(IntegrityProblem::RosterContested))
}

/// Whether a device (not the recovery key) may make `change`: not a rotation, and an add only of
/// a device whose keys certify its id and which signs all its segments. Otherwise a device could
/// add its own keys under the id of a device added after it (a lower entry id wins rule 5) or of
/// an old device not in the roster yet, and sign as that device.
fn device_may_sign(change: &RosterChange) -> bool {
    match change {
        RosterChange::RotateRecovery { .. } => false,
        RosterChange::Add {
            device,
            keys,
            first_signed_seq,
            unsigned_tips,
            ..
        } => {
            *device == DeviceId::of_keys(keys) && *first_signed_seq <= 1 && unsigned_tips.is_empty()
        }
        _ => true,
    }
}

/// Entry ids, parents before children, ties by id.
fn topological(by_id: &BTreeMap<EntryId, SignedEntry>) -> Vec<EntryId> {
    let mut depth: BTreeMap<EntryId, usize> = BTreeMap::new();
    fn depth_of(
        id: EntryId,
        by_id: &BTreeMap<EntryId, SignedEntry>,
        depth: &mut BTreeMap<EntryId, usize>,
    ) -> usize {
        // Iterative, so a long chain cannot overflow the stack.
        let mut stack = vec![id];
        while let Some(&top) = stack.last() {
            if depth.contains_key(&top) {
                stack.pop();
                continue;
            }
            let parents = &by_id[&top].entry.parents;
            let pending: Vec<EntryId> = parents
                .iter()
                .filter(|p| !depth.contains_key(*p))
                .copied()
                .collect();
            if pending.is_empty() {
                let d = parents.iter().map(|p| depth[p] + 1).max().unwrap_or(0);
                depth.insert(top, d);
                stack.pop();
            } else {
                stack.extend(pending);
            }
        }
        depth[&id]
    }
    let mut order: Vec<(usize, EntryId)> = by_id
        .keys()
        .map(|id| (depth_of(*id, by_id, &mut depth), *id))
        .collect();
    order.sort();
    order.into_iter().map(|(_, id)| id).collect()
}
