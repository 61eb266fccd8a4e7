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
//!    causal past (what the revoker had seen); revokes themselves are exempt, so two devices
//!    that revoke each other before either saw the other's revoke are both revoked (and the
//!    person re-links with the recovery key) instead of the fold depending on the order it
//!    looked at them;
//! 3. one start per epoch number: a start that saw every counted revoke and rotation wins over
//!    one that did not, then the lower id;
//! 4. **epoch fence**: once a start of epoch n+1 counts, an entry of an older epoch counts only
//!    if that start has it in its causal past, revokes and rotations excepted (a start cannot
//!    undo them). A revoked device holds no key of the epoch its revocation starts, so nothing it
//!    writes afterwards counts, whatever parents it claims;
//! 5. a device is added once: of two adds of one device id, the one with the lower entry id
//!    counts.
//!
//! Rules 2 to 4 can drop an entry that another entry's validity rested on, so the fold repeats
//! until the counted set no longer changes (a handful of rounds for honest rosters); a roster
//! that does not settle in [`MAX_ROUNDS`] is refused as contested.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use sha2::{Digest, Sha256};

use super::clock::DeviceId;
use super::names::{head_to_proto, heads_from_proto};
use super::segment::Head;
use crate::devices::{DevicePublicKeys, SIGNATURE_LEN};
use crate::error::{DecodeProblem, Error, IntegrityProblem, Result};
use crate::format::{ObjectKind, proto};
use crate::keys::VaultId;

/// An entry's id: the first 16 bytes of SHA-256 of its encoded `RosterEntry`.
pub type EntryId = [u8; 16];

/// The most entries a roster may hold: the fold keeps each entry's causal past, so memory grows
/// with the square of this (512 entries: a few MB). Devices are added and revoked a few times in
/// a vault's life.
pub const MAX_ROSTER_ENTRIES: usize = 512;
/// Fold rounds before a roster is refused as contested.
pub const MAX_ROUNDS: usize = 16;

const SIGNING_LABEL: &[u8] = b"chatvault/v2/roster";

/// Who signed an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signer {
    /// The recovery signing key in force.
    Recovery,
    /// A device of the roster.
    Device(DeviceId),
}

/// What an entry changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterChange {
    /// A device joins.
    Add {
        /// Its id.
        device: DeviceId,
        /// Its public keys.
        keys: DevicePublicKeys,
        /// Its name, as the person sees it.
        name: String,
        /// Its platform ("ios", "android", ...).
        platform: String,
    },
    /// A device is cut off; the tips of its segment tree that stay accepted.
    Revoke {
        /// The revoked device.
        device: DeviceId,
        /// Its segments at or below these stay accepted; nothing after them is.
        accepted_tips: Vec<Head>,
    },
    /// The recovery key was rotated: the next recovery signing key (signed by the current one).
    RotateRecovery {
        /// The next recovery signing public key.
        next: [u8; 32],
    },
    /// A new key epoch starts (after a revocation or a rotation).
    StartEpoch {
        /// Its number.
        epoch: u8,
        /// SHA-256 of its epoch object: the only object readers take as this epoch's.
        object_hash: [u8; 32],
    },
}

/// One roster entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// Who signs it.
    pub signer: Signer,
    /// The roster tips its writer had read.
    pub parents: Vec<EntryId>,
    /// Writer's clock (shown to people; no rule depends on it).
    pub made_at_ms: u64,
    /// The epoch whose log key seals it.
    pub epoch: u8,
    /// The change.
    pub change: RosterChange,
}

/// An entry with its encoding and signature, as stored. Its fields are read-only: the id is the
/// hash of the bytes the signature covers, and the entry is what those bytes decode to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    id: EntryId,
    entry: RosterEntry,
    bytes: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

fn malformed(why: &str) -> Error {
    Error::Decode {
        kind: ObjectKind::Roster,
        problem: DecodeProblem::Malformed(why.to_owned()),
    }
}

fn entry_id(bytes: &[u8]) -> EntryId {
    let digest = Sha256::digest(bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

fn signing_message(vault: &VaultId, bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_LABEL.len() + 16 + bytes.len());
    message.extend_from_slice(SIGNING_LABEL);
    message.extend_from_slice(vault.as_bytes());
    message.extend_from_slice(bytes);
    message
}

impl RosterEntry {
    fn to_proto(&self) -> proto::RosterEntry {
        use proto::roster_entry::Change;
        let mut parents = self.parents.clone();
        parents.sort();
        parents.dedup();
        proto::RosterEntry {
            signer: match self.signer {
                Signer::Recovery => Vec::new(),
                Signer::Device(device) => device.0.to_vec(),
            },
            parents: parents.iter().map(|p| p.to_vec()).collect(),
            made_at_ms: self.made_at_ms,
            epoch: u32::from(self.epoch),
            change: Some(match &self.change {
                RosterChange::Add {
                    device,
                    keys,
                    name,
                    platform,
                } => Change::Add(proto::RosterAdd {
                    device_id: device.0.to_vec(),
                    agreement_key: keys.agreement.to_vec(),
                    verifying_key: keys.verifying.to_vec(),
                    name: name.clone(),
                    platform: platform.clone(),
                }),
                RosterChange::Revoke {
                    device,
                    accepted_tips,
                } => Change::Revoke(proto::RosterRevoke {
                    device_id: device.0.to_vec(),
                    accepted_tips: accepted_tips.iter().map(head_to_proto).collect(),
                }),
                RosterChange::RotateRecovery { next } => {
                    Change::RotateRecovery(proto::RosterRotateRecovery {
                        verifying_key: next.to_vec(),
                    })
                }
                RosterChange::StartEpoch { epoch, object_hash } => {
                    Change::StartEpoch(proto::RosterStartEpoch {
                        epoch: u32::from(*epoch),
                        object_hash: object_hash.to_vec(),
                    })
                }
            }),
        }
    }

    fn from_proto(entry: &proto::RosterEntry) -> Result<Self> {
        use proto::roster_entry::Change;
        let id16 = |bytes: &[u8], what: &str| -> Result<[u8; 16]> {
            bytes.try_into().map_err(|_| malformed(what))
        };
        let key32 = |bytes: &[u8], what: &str| -> Result<[u8; 32]> {
            bytes.try_into().map_err(|_| malformed(what))
        };
        let signer = if entry.signer.is_empty() {
            Signer::Recovery
        } else {
            Signer::Device(DeviceId(id16(&entry.signer, "signer")?))
        };
        let parents = entry
            .parents
            .iter()
            .map(|p| id16(p, "parent id"))
            .collect::<Result<Vec<_>>>()?;
        // Parents sorted and distinct: one encoding per entry.
        if parents.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(malformed("parents not sorted and distinct"));
        }
        let epoch = u8::try_from(entry.epoch).map_err(|_| malformed("epoch past 255"))?;
        let change = match entry
            .change
            .as_ref()
            .ok_or_else(|| malformed("no change"))?
        {
            Change::Add(add) => RosterChange::Add {
                device: DeviceId(id16(&add.device_id, "added device id")?),
                keys: DevicePublicKeys {
                    agreement: key32(&add.agreement_key, "agreement key")?,
                    verifying: key32(&add.verifying_key, "verifying key")?,
                },
                name: add.name.clone(),
                platform: add.platform.clone(),
            },
            Change::Revoke(revoke) => RosterChange::Revoke {
                device: DeviceId(id16(&revoke.device_id, "revoked device id")?),
                accepted_tips: heads_from_proto(&revoke.accepted_tips, malformed)?,
            },
            Change::RotateRecovery(rotate) => RosterChange::RotateRecovery {
                next: key32(&rotate.verifying_key, "next recovery key")?,
            },
            Change::StartEpoch(start) => RosterChange::StartEpoch {
                epoch: u8::try_from(start.epoch).map_err(|_| malformed("epoch past 255"))?,
                object_hash: key32(&start.object_hash, "epoch object hash")?,
            },
        };
        Ok(RosterEntry {
            signer,
            parents,
            made_at_ms: entry.made_at_ms,
            epoch,
            change,
        })
    }
}

impl SignedEntry {
    /// Its id (the name of its object).
    pub fn id(&self) -> EntryId {
        self.id
    }

    /// The entry.
    pub fn entry(&self) -> &RosterEntry {
        &self.entry
    }

    /// Encodes and signs `entry` for `vault` with `sign` (the signer's Ed25519 key).
    pub fn sign(
        vault: &VaultId,
        entry: RosterEntry,
        sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Self {
        let bytes = entry.to_proto().encode_to_vec();
        let signature = sign(&signing_message(vault, &bytes));
        let entry = RosterEntry {
            parents: {
                let mut parents = entry.parents.clone();
                parents.sort();
                parents.dedup();
                parents
            },
            ..entry
        };
        SignedEntry {
            id: entry_id(&bytes),
            entry,
            bytes,
            signature,
        }
    }

    /// The body its object seals.
    pub fn to_body(&self) -> Vec<u8> {
        proto::SignedRosterEntry {
            entry: self.bytes.clone(),
            signature: self.signature.to_vec(),
        }
        .encode_to_vec()
    }

    /// Decodes the body of the object named by `id`: the id must be the entry's hash (an entry
    /// moved to another name is refused).
    pub fn decode(id: EntryId, body: &[u8]) -> Result<Self> {
        let signed =
            crate::format::decode_body::<proto::SignedRosterEntry>(ObjectKind::Roster, body)?;
        if entry_id(&signed.entry) != id {
            return Err(Error::Integrity(IntegrityProblem::Misplaced {
                name: format!("roster/{}", crate::hex::encode(&id)),
            }));
        }
        let signature: [u8; SIGNATURE_LEN] = signed
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| malformed("signature length"))?;
        let decoded =
            crate::format::decode_body::<proto::RosterEntry>(ObjectKind::Roster, &signed.entry)?;
        Ok(SignedEntry {
            id,
            entry: RosterEntry::from_proto(&decoded)?,
            bytes: signed.entry,
            signature,
        })
    }

    fn verifies(&self, vault: &VaultId, key: &[u8; 32]) -> bool {
        DevicePublicKeys {
            agreement: [0; 32],
            verifying: *key,
        }
        .verify(
            ObjectKind::Roster,
            &signing_message(vault, &self.bytes),
            &self.signature,
        )
        .is_ok()
    }
}

/// A device as the roster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterDevice {
    /// Its public keys.
    pub keys: DevicePublicKeys,
    /// Its name.
    pub name: String,
    /// Its platform.
    pub platform: String,
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
    /// The newest epoch started.
    pub epoch: u8,
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
}

/// The state a set of counted entries gives, applied in topological order.
#[derive(Clone)]
struct State {
    devices: BTreeMap<DeviceId, RosterDevice>,
    recovery_key: [u8; 32],
    epoch: u8,
}

impl State {
    fn new(root: [u8; 32]) -> Self {
        State {
            devices: BTreeMap::new(),
            recovery_key: root,
            epoch: 0,
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
            } => {
                self.devices.entry(*device).or_insert(RosterDevice {
                    keys: *keys,
                    name: name.clone(),
                    platform: platform.clone(),
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
            RosterChange::RotateRecovery { next } => self.recovery_key = *next,
            RosterChange::StartEpoch { epoch, .. } => self.epoch = self.epoch.max(*epoch),
        }
    }
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
            let authorized = state.key_of(entry.signer).is_some_and(|key| {
                *verified
                    .entry((*id, key))
                    .or_insert_with(|| signed.verifies(vault, &key))
            }) && (entry.signer == Signer::Recovery
                || !matches!(entry.change, RosterChange::RotateRecovery { .. }));
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
        // a revoked device wrote that its revoke did not see, revokes exempt.
        for revoke in &locally {
            if let RosterChange::Revoke { device, .. } = by_id[revoke].entry.change {
                for id in &locally {
                    let entry = &by_id[id].entry;
                    if entry.signer == Signer::Device(device)
                        && !matches!(entry.change, RosterChange::Revoke { .. })
                        && !past[revoke].contains(id)
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
        // not see does not count; revokes and rotations are exempt (a start cannot undo them).
        for start in starts.values() {
            let RosterChange::StartEpoch { epoch, .. } = by_id[start].entry.change else {
                continue;
            };
            for id in &standing {
                let entry = &by_id[id].entry;
                if entry.epoch < epoch
                    && !past[start].contains(id)
                    && !matches!(
                        entry.change,
                        RosterChange::Revoke { .. } | RosterChange::RotateRecovery { .. }
                    )
                {
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
                epoch: state.epoch,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceSecrets;

    const VAULT: VaultId = VaultId::from_bytes([1; 16]);

    fn recovery() -> DeviceSecrets {
        DeviceSecrets::from_bytes(&[0x99; 64])
    }

    fn secrets(n: u8) -> DeviceSecrets {
        DeviceSecrets::from_bytes(&[n; 64])
    }

    fn id(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    fn add(n: u8) -> RosterChange {
        RosterChange::Add {
            device: id(n),
            keys: secrets(n).public(),
            name: format!("phone {n}"),
            platform: "test".into(),
        }
    }

    fn revoke(n: u8) -> RosterChange {
        RosterChange::Revoke {
            device: id(n),
            accepted_tips: Vec::new(),
        }
    }

    /// An entry signed by `by` (`None`: the recovery key `key`), as signer `signer`.
    fn signed_as(
        key: &DeviceSecrets,
        signer: Signer,
        parents: &[&SignedEntry],
        epoch: u8,
        change: RosterChange,
    ) -> SignedEntry {
        SignedEntry::sign(
            &VAULT,
            RosterEntry {
                signer,
                parents: parents.iter().map(|p| p.id).collect(),
                made_at_ms: 1,
                epoch,
                change,
            },
            |message| key.sign(message),
        )
    }

    fn by_recovery(parents: &[&SignedEntry], change: RosterChange) -> SignedEntry {
        signed_as(&recovery(), Signer::Recovery, parents, 0, change)
    }

    fn by(n: u8, parents: &[&SignedEntry], change: RosterChange) -> SignedEntry {
        signed_as(&secrets(n), Signer::Device(id(n)), parents, 0, change)
    }

    fn fold_all(entries: &[&SignedEntry]) -> Roster {
        fold(
            &VAULT,
            recovery().public().verifying,
            entries.iter().map(|e| (*e).clone()).collect(),
        )
        .unwrap()
    }

    fn active(roster: &Roster) -> Vec<u8> {
        roster
            .devices
            .keys()
            .filter(|d| roster.is_active(**d))
            .map(|d| d.0[0])
            .collect()
    }

    #[test]
    fn the_recovery_key_adds_a_device_that_adds_another() {
        let a = by_recovery(&[], add(0xa));
        let b = by(0xa, &[&a], add(0xb));
        let roster = fold_all(&[&b, &a]);
        assert_eq!(active(&roster), [0xa, 0xb]);
        assert_eq!(roster.devices[&id(0xb)].added_by, Signer::Device(id(0xa)));
        assert_eq!(roster.devices[&id(0xb)].keys, secrets(0xb).public());
        assert_eq!(roster.tips, [b.id]);
        assert!(roster.refused.is_empty());
    }

    #[test]
    fn forged_unknown_and_orphaned_entries_do_not_count() {
        let a = by_recovery(&[], add(0xa));
        // Claims the recovery key, signed by device a.
        let forged = signed_as(&secrets(0xa), Signer::Recovery, &[&a], 0, add(0xc));
        // Signed by a device nobody added.
        let unknown = by(0xd, &[&a], add(0xe));
        // A device may not rotate the recovery key.
        let rotation = by(0xa, &[&a], RosterChange::RotateRecovery { next: [5; 32] });
        // Its parent is not in the bucket.
        let withheld = by(0xa, &[&a], add(0xf));
        let orphan = by(0xa, &[&withheld], add(0x10));
        let roster = fold_all(&[&a, &forged, &unknown, &rotation, &orphan]);
        assert_eq!(active(&roster), [0xa]);
        assert_eq!(roster.refused[&forged.id], Refusal::NotAuthorized);
        assert_eq!(roster.refused[&unknown.id], Refusal::NotAuthorized);
        assert_eq!(roster.refused[&rotation.id], Refusal::NotAuthorized);
        assert_eq!(roster.refused[&orphan.id], Refusal::MissingParent);
        assert_eq!(roster.recovery_key, recovery().public().verifying);
    }

    #[test]
    fn a_revoked_device_writes_nothing_that_counts_after_its_revoke() {
        let a = by_recovery(&[], add(0xa));
        let b = by(0xa, &[&a], add(0xb));
        let c = by(0xb, &[&b], add(0xc));
        let revoked = by(0xa, &[&c], revoke(0xb));
        // b, not having seen its revoke (or pretending not to), adds a device of its own.
        let late = by(0xb, &[&c], add(0xd));
        // ... and after it (the revoke in its causal past), another.
        let later = by(0xb, &[&revoked], add(0xe));
        let roster = fold_all(&[&a, &b, &c, &revoked, &late, &later]);
        assert_eq!(active(&roster), [0xa, 0xc], "c was added before the revoke");
        assert!(roster.devices[&id(0xb)].revoked.is_some());
        assert_eq!(roster.refused[&late.id], Refusal::AfterRevocation);
        assert_eq!(roster.refused[&later.id], Refusal::NotAuthorized);
        assert!(!roster.devices.contains_key(&id(0xd)));
    }

    #[test]
    fn an_epoch_start_fences_off_what_its_epoch_did_not_see() {
        let a = by_recovery(&[], add(0xa));
        let b = by(0xa, &[&a], add(0xb));
        let revoked = by(0xa, &[&b], revoke(0xb));
        let start = signed_as(
            &secrets(0xa),
            Signer::Device(id(0xa)),
            &[&revoked],
            1,
            RosterChange::StartEpoch {
                epoch: 1,
                object_hash: [1; 32],
            },
        );
        // Device a's own entry of epoch 0 that the start did not see: fenced too.
        let stale = by(0xa, &[&b], add(0xc));
        // In epoch 1 after the start: counts.
        let fresh = signed_as(
            &secrets(0xa),
            Signer::Device(id(0xa)),
            &[&start],
            1,
            add(0xd),
        );
        // Still sealed in epoch 0 after the start: wrong epoch.
        let old_key = by(0xa, &[&start], add(0xe));
        let roster = fold_all(&[&a, &b, &revoked, &start, &stale, &fresh, &old_key]);
        assert_eq!(roster.epoch, 1);
        assert_eq!(active(&roster), [0xa, 0xd]);
        assert_eq!(roster.refused[&stale.id], Refusal::Fenced);
        assert_eq!(roster.refused[&old_key.id], Refusal::WrongEpoch);
        // A start that skips an epoch does not count.
        let skip = signed_as(
            &secrets(0xa),
            Signer::Device(id(0xa)),
            &[&a],
            2,
            RosterChange::StartEpoch {
                epoch: 2,
                object_hash: [2; 32],
            },
        );
        assert_eq!(
            fold_all(&[&a, &skip]).refused[&skip.id],
            Refusal::WrongEpoch
        );
    }

    #[test]
    fn devices_that_revoke_each_other_are_both_revoked() {
        let a = by_recovery(&[], add(0xa));
        let b = by_recovery(&[&a], add(0xb));
        let a_revokes_b = by(0xa, &[&b], revoke(0xb));
        let b_revokes_a = by(0xb, &[&b], revoke(0xa));
        let roster = fold_all(&[&a, &b, &a_revokes_b, &b_revokes_a]);
        assert!(active(&roster).is_empty());
        assert!(roster.refused.is_empty());
        // The recovery key adds devices again (under new ids).
        let c = by_recovery(&[&a_revokes_b, &b_revokes_a], add(0xc));
        let roster = fold_all(&[&a, &b, &a_revokes_b, &b_revokes_a, &c]);
        assert_eq!(active(&roster), [0xc]);
    }

    #[test]
    fn a_rotated_recovery_key_signs_from_then_on() {
        let next = secrets(0x77);
        let a = by_recovery(&[], add(0xa));
        let rotation = by_recovery(
            &[&a],
            RosterChange::RotateRecovery {
                next: next.public().verifying,
            },
        );
        let by_next = signed_as(&next, Signer::Recovery, &[&rotation], 0, add(0xb));
        let by_old_after = by_recovery(&[&rotation], add(0xc));
        let roster = fold_all(&[&a, &rotation, &by_next, &by_old_after]);
        assert_eq!(roster.recovery_key, next.public().verifying);
        assert_eq!(active(&roster), [0xa, 0xb]);
        assert_eq!(roster.refused[&by_old_after.id], Refusal::NotAuthorized);
    }

    #[test]
    fn a_device_is_added_once() {
        let a = by_recovery(&[], add(0xa));
        let first = by_recovery(&[&a], add(0xb));
        let mut other_keys = add(0xb);
        if let RosterChange::Add { keys, .. } = &mut other_keys {
            *keys = secrets(0xc).public();
        }
        let second = by(0xa, &[&a], other_keys);
        let again = by(0xa, &[&first], add(0xb));
        let roster = fold_all(&[&a, &first, &second, &again]);
        let (winner, loser) = if first.id < second.id {
            (&first, &second)
        } else {
            (&second, &first)
        };
        assert_eq!(roster.refused[&loser.id], Refusal::Conflicting);
        assert!(!roster.refused.contains_key(&winner.id));
        if winner.id == first.id {
            assert_eq!(roster.refused[&again.id], Refusal::Conflicting);
        }
        assert_eq!(active(&roster), [0xa, 0xb]);
    }

    #[test]
    fn an_entry_decodes_only_under_its_own_name() {
        let a = by_recovery(&[], add(0xa));
        let body = a.to_body();
        assert_eq!(SignedEntry::decode(a.id, &body).unwrap(), a);
        assert!(matches!(
            SignedEntry::decode([0; 16], &body),
            Err(Error::Integrity(IntegrityProblem::Misplaced { .. }))
        ));
        // Parents out of order: one entry, one encoding.
        let b = by(0xa, &[&a], add(0xb));
        let c = by(0xa, &[&a], add(0xc));
        let mut entry = b.entry.to_proto();
        entry.parents = vec![c.id.to_vec(), b.id.to_vec()];
        entry.parents.sort();
        entry.parents.reverse();
        let bytes = entry.encode_to_vec();
        let body = proto::SignedRosterEntry {
            entry: bytes.clone(),
            signature: vec![0; 64],
        }
        .encode_to_vec();
        assert!(matches!(
            SignedEntry::decode(entry_id(&bytes), &body),
            Err(Error::Decode {
                problem: DecodeProblem::Malformed(_),
                ..
            })
        ));
    }

    /// Random rosters of honest and dishonest entries (any signer, any parents among earlier
    /// entries, any epoch, forged signatures): the fold never fails but as contested, and gives
    /// the same roster whatever order the listing hands the entries in.
    #[test]
    fn random_rosters_fold_the_same_in_any_order() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for script in 0..100 {
            let mut entries: Vec<SignedEntry> = Vec::new();
            let mut known: Vec<u8> = Vec::new();
            let mut epoch = 0u8;
            let mut recovery_now = recovery();
            for _ in 0..(3 + next(12)) {
                // Mostly the tips (an honest writer), sometimes any earlier entries.
                let tips: Vec<&SignedEntry> = entries
                    .iter()
                    .filter(|e| !entries.iter().any(|c| c.entry.parents.contains(&e.id)))
                    .collect();
                let parents: Vec<&SignedEntry> = if next(3) > 0 {
                    tips
                } else {
                    entries.iter().filter(|_| next(3) == 0).take(3).collect()
                };
                let mut rotated = None;
                let change = match next(10) {
                    0..=4 => {
                        let n = 0xa + next(6) as u8;
                        known.push(n);
                        add(n)
                    }
                    5 => revoke(0xa + next(6) as u8),
                    6 => {
                        epoch = epoch.saturating_add(1);
                        RosterChange::StartEpoch {
                            epoch,
                            object_hash: [epoch; 32],
                        }
                    }
                    7 => {
                        let next_key = secrets(0x70 + next(8) as u8);
                        let change = RosterChange::RotateRecovery {
                            next: next_key.public().verifying,
                        };
                        rotated = Some(next_key);
                        change
                    }
                    _ => add(0xa + next(6) as u8),
                };
                let sealed_in = if next(6) == 0 { next(3) as u8 } else { epoch };
                // The recovery key starts epochs and rotates itself; devices do the rest.
                let by_recovery = rotated.is_some()
                    || matches!(change, RosterChange::StartEpoch { .. })
                    || next(3) == 0;
                let signer = match known.get(next(known.len() as u64 + 1) as usize) {
                    Some(n) if !by_recovery => *n,
                    _ => 0,
                };
                let entry = match (signer, next(6)) {
                    (0, _) => {
                        signed_as(&recovery_now, Signer::Recovery, &parents, sealed_in, change)
                    }
                    // Signed by another key than the signer's.
                    (n, 0) => signed_as(
                        &secrets(n + 1),
                        Signer::Device(id(n)),
                        &parents,
                        sealed_in,
                        change,
                    ),
                    (n, _) => signed_as(
                        &secrets(n),
                        Signer::Device(id(n)),
                        &parents,
                        sealed_in,
                        change,
                    ),
                };
                if let Some(key) = rotated {
                    recovery_now = key;
                }
                entries.push(entry);
            }
            let root = recovery().public().verifying;
            let first = fold(&VAULT, root, entries.clone());
            for _ in 0..3 {
                let mut shuffled = entries.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, next(i as u64 + 1) as usize);
                }
                let again = fold(&VAULT, root, shuffled);
                match (&first, &again) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "script {script}"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    _ => panic!("script {script}: {first:?} then {again:?}"),
                }
            }
            if let Err(error) = first {
                assert!(
                    matches!(error, Error::Integrity(IntegrityProblem::RosterContested)),
                    "script {script}: {error:?}"
                );
            }
        }
    }

    fn start(
        signer: &DeviceSecrets,
        as_: Signer,
        parents: &[&SignedEntry],
        epoch: u8,
    ) -> SignedEntry {
        signed_as(
            signer,
            as_,
            parents,
            epoch,
            RosterChange::StartEpoch {
                epoch,
                object_hash: [epoch; 32],
            },
        )
    }

    #[test]
    fn a_start_a_revoked_device_backdates_does_not_undo_its_revoke() {
        let a = by_recovery(&[], add(0xa));
        let d = by_recovery(&[&a], add(0xd));
        let revoked = by(0xa, &[&d], revoke(0xd));
        let honest_start = start(&secrets(0xa), Signer::Device(id(0xa)), &[&revoked], 1);
        // d starts epoch 1 itself, claiming not to have seen its revoke, then adds a device.
        let backdated = start(&secrets(0xd), Signer::Device(id(0xd)), &[&d], 1);
        let evil = signed_as(
            &secrets(0xd),
            Signer::Device(id(0xd)),
            &[&backdated],
            1,
            add(0xe),
        );
        let roster = fold_all(&[&a, &d, &revoked, &honest_start, &backdated, &evil]);
        assert_eq!(active(&roster), [0xa]);
        assert!(roster.devices[&id(0xd)].revoked.is_some());
        assert_eq!(roster.refused[&backdated.id], Refusal::AfterRevocation);
        assert!(roster.refused.contains_key(&evil.id));
        assert!(!roster.refused.contains_key(&honest_start.id));
    }

    #[test]
    fn two_revocations_that_race_both_stand_and_one_start_counts() {
        let a = by_recovery(&[], add(0xa));
        let b = by_recovery(&[&a], add(0xb));
        let c = by_recovery(&[&b], add(0xc));
        let d = by_recovery(&[&c], add(0xd));
        let a_revokes_c = by(0xa, &[&d], revoke(0xc));
        let a_starts = start(&secrets(0xa), Signer::Device(id(0xa)), &[&a_revokes_c], 1);
        let b_revokes_d = by(0xb, &[&d], revoke(0xd));
        let b_starts = start(&secrets(0xb), Signer::Device(id(0xb)), &[&b_revokes_d], 1);
        let roster = fold_all(&[
            &a,
            &b,
            &c,
            &d,
            &a_revokes_c,
            &a_starts,
            &b_revokes_d,
            &b_starts,
        ]);
        assert_eq!(active(&roster), [0xa, 0xb], "both revokes stand");
        let (winner, loser) = if a_starts.id < b_starts.id {
            (&a_starts, &b_starts)
        } else {
            (&b_starts, &a_starts)
        };
        assert!(!roster.refused.contains_key(&winner.id));
        assert_eq!(roster.refused[&loser.id], Refusal::Conflicting);
        assert_eq!(roster.epoch, 1);
    }

    #[test]
    fn a_start_racing_a_rotation_cannot_keep_the_old_recovery_key() {
        let next = secrets(0x77);
        let a = by_recovery(&[], add(0xa));
        let rotation = by_recovery(
            &[&a],
            RosterChange::RotateRecovery {
                next: next.public().verifying,
            },
        );
        let after = start(&next, Signer::Recovery, &[&rotation], 1);
        let by_new_key = signed_as(&next, Signer::Recovery, &[&after], 1, add(0xb));
        // The old key's holder (a thief) starts epoch 1 without the rotation, and adds a device.
        let stale = start(&recovery(), Signer::Recovery, &[&a], 1);
        let thiefs = signed_as(&recovery(), Signer::Recovery, &[&stale], 1, add(0xc));
        let roster = fold_all(&[&a, &rotation, &after, &by_new_key, &stale, &thiefs]);
        assert_eq!(roster.recovery_key, next.public().verifying);
        assert_eq!(active(&roster), [0xa, 0xb]);
        assert_eq!(roster.refused[&stale.id], Refusal::Conflicting);
        assert!(roster.refused.contains_key(&thiefs.id));
    }

    #[test]
    fn a_revoked_device_cannot_make_the_roster_contested() {
        let a = by_recovery(&[], add(0xa));
        let c = by_recovery(&[&a], add(0xc));
        let revoked = by(0xa, &[&c], revoke(0xc));
        let honest = start(&secrets(0xa), Signer::Device(id(0xa)), &[&revoked], 1);
        let c_secrets = secrets(0xc);
        let as_c = Signer::Device(id(0xc));
        let backdated = start(&c_secrets, as_c, &[&c], 1);
        let second = start(&c_secrets, as_c, &[&revoked, &backdated], 2);
        let third = start(&c_secrets, as_c, &[&a, &honest], 2);
        let roster = fold(
            &VAULT,
            recovery().public().verifying,
            [&a, &c, &revoked, &honest, &backdated, &second, &third]
                .into_iter()
                .cloned()
                .collect(),
        )
        .expect("settles");
        assert_eq!(active(&roster), [0xa]);
        assert_eq!(roster.epoch, 1);
        for entry in [&backdated, &second, &third] {
            assert!(roster.refused.contains_key(&entry.id), "{entry:?}");
        }
    }
}
