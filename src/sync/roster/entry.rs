//! Roster entries: what one says, how it is encoded and signed, and how a body read from the
//! bucket decodes (FORMAT.md section 13).

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::devices::{DevicePublicKeys, SIGNATURE_LEN};
use crate::error::{DecodeProblem, Error, IntegrityProblem, Result};
use crate::format::{ObjectKind, proto};
use crate::keys::VaultId;
use crate::sync::clock::DeviceId;
use crate::sync::names::{head_to_proto, heads_from_proto};
use crate::sync::segment::Head;

/// An entry's id: the first 16 bytes of SHA-256 of its encoded `RosterEntry`.
pub type EntryId = [u8; 16];

/// The most entries a roster may hold: the fold keeps each entry's causal past, so memory grows
/// with the square of this (512 entries: a few MB). Devices are added and revoked a few times in
/// a vault's life.
pub const MAX_ROSTER_ENTRIES: usize = 512;

const SIGNING_LABEL: &[u8] = b"chatvault/v2/roster";

/// The largest roster object a reader fetches: an entry is a few hundred bytes (an add with a
/// name of at most [`MAX_DEVICE_NAME_LEN`] bytes, a revoke with a few tips, a handful of parents).
pub const MAX_ROSTER_OBJECT: u64 = 64 * 1024;

/// The longest device name a roster entry may carry, in UTF-8 bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 256;

/// The longest platform name a roster entry may carry, in UTF-8 bytes.
pub const MAX_PLATFORM_LEN: usize = 64;
/// Most unsigned tips an added device names (one per branch of its tree of unsigned segments).
pub const MAX_UNSIGNED_TIPS: usize = 64;

const ROSTER_PREFIX: &str = "roster/";

/// The object name of the entry `id`: `roster/<id as 32 lower-case hex digits>`.
pub fn roster_name(id: &EntryId) -> String {
    format!("{ROSTER_PREFIX}{}", crate::hex::encode(id))
}

/// The entry id a roster object's name carries, if the name is exactly what [`roster_name`]
/// writes.
pub fn parse_roster_name(name: &str) -> Option<EntryId> {
    let id = crate::hex::decode(name.strip_prefix(ROSTER_PREFIX)?)?;
    // One spelling per entry: upper-case hex is not a roster name.
    (roster_name(&id) == name).then_some(id)
}

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
        /// The first of its sequence numbers whose segments it signs (0 or 1: all of them).
        first_signed_seq: u64,
        /// The tips of its unsigned segments' tree when it first signed (each below
        /// `first_signed_seq`); empty for a device that signs from its first segment, or one
        /// added by a version that did not record them.
        unsigned_tips: Vec<Head>,
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
        /// The next recovery key's X25519 public key, to which later epochs are boxed.
        agreement: [u8; 32],
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
    pub(super) id: EntryId,
    pub(super) entry: RosterEntry,
    bytes: Vec<u8>,
    pub(super) signature: [u8; SIGNATURE_LEN],
}

pub(super) fn malformed(why: &str) -> Error {
    Error::Decode {
        kind: ObjectKind::Roster,
        problem: DecodeProblem::Malformed(why.to_owned()),
    }
}

pub(super) fn entry_id(bytes: &[u8]) -> EntryId {
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
    pub(super) fn to_proto(&self) -> proto::RosterEntry {
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
                    first_signed_seq,
                    unsigned_tips,
                } => Change::Add(proto::RosterAdd {
                    device_id: device.0.to_vec(),
                    agreement_key: keys.agreement.to_vec(),
                    verifying_key: keys.verifying.to_vec(),
                    name: name.clone(),
                    platform: platform.clone(),
                    first_signed_seq: *first_signed_seq,
                    unsigned_tips: unsigned_tips.iter().map(head_to_proto).collect(),
                }),
                RosterChange::Revoke {
                    device,
                    accepted_tips,
                } => Change::Revoke(proto::RosterRevoke {
                    device_id: device.0.to_vec(),
                    accepted_tips: accepted_tips.iter().map(head_to_proto).collect(),
                }),
                RosterChange::RotateRecovery { next, agreement } => {
                    Change::RotateRecovery(proto::RosterRotateRecovery {
                        verifying_key: next.to_vec(),
                        agreement_key: agreement.to_vec(),
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
            Change::Add(add) if add.name.len() > MAX_DEVICE_NAME_LEN => {
                return Err(malformed("device name too long"));
            }
            Change::Add(add) if add.platform.len() > MAX_PLATFORM_LEN => {
                return Err(malformed("platform name too long"));
            }
            Change::Add(add) if add.unsigned_tips.len() > MAX_UNSIGNED_TIPS => {
                return Err(malformed("too many unsigned tips"));
            }
            Change::Add(add) => {
                let device = DeviceId(id16(&add.device_id, "added device id")?);
                let unsigned_tips = heads_from_proto(&add.unsigned_tips, malformed)?;
                if unsigned_tips
                    .iter()
                    .any(|tip| tip.device != device || tip.seq >= add.first_signed_seq)
                {
                    return Err(malformed(
                        "an unsigned tip of another device or not below its first signed segment",
                    ));
                }
                RosterChange::Add {
                    device,
                    keys: DevicePublicKeys {
                        agreement: key32(&add.agreement_key, "agreement key")?,
                        verifying: key32(&add.verifying_key, "verifying key")?,
                    },
                    name: add.name.clone(),
                    platform: add.platform.clone(),
                    first_signed_seq: add.first_signed_seq,
                    unsigned_tips,
                }
            }
            Change::Revoke(revoke) => RosterChange::Revoke {
                device: DeviceId(id16(&revoke.device_id, "revoked device id")?),
                accepted_tips: heads_from_proto(&revoke.accepted_tips, malformed)?,
            },
            Change::RotateRecovery(rotate) => RosterChange::RotateRecovery {
                next: key32(&rotate.verifying_key, "next recovery key")?,
                agreement: key32(&rotate.agreement_key, "next recovery agreement key")?,
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
                name: roster_name(&id),
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

    pub(super) fn verifies(&self, vault: &VaultId, key: &[u8; 32]) -> bool {
        crate::devices::verify_ed25519(key, &signing_message(vault, &self.bytes), &self.signature)
    }
}
