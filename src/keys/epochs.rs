//! The key trees of the key epochs a device holds (docs/DEVICES.md, "Keys"): every object that is
//! sealed per epoch (segments, checkpoint indexes, roster entries) names its epoch in its header,
//! and the reader opens it with that epoch's tree; a writer seals in the newest epoch it holds.
//!
//! A bare [`VaultKeys`] is epoch 0's tree alone (a vault that never revoked a device, and every
//! test and vector written before epochs), so the openers take any [`KeyEpochs`].

use super::{EpochSecret, VaultId, VaultKeys};
use crate::error::{DecodeProblem, Error, Result};
use crate::format::ObjectKind;

/// Key trees by epoch number.
pub trait KeyEpochs {
    /// The vault's id (the same in every epoch).
    fn vault_id(&self) -> &VaultId;
    /// The key trees held for `epoch`: usually one; more when two epoch objects of that number
    /// opened for this device (two starts raced, or a forged object) and the roster has not
    /// settled which one counts.
    fn trees(&self, epoch: u8) -> Vec<&VaultKeys>;
    /// The epoch new objects are sealed in, and its tree.
    fn newest(&self) -> (u8, &VaultKeys);

    /// The tree of `epoch` whose secret came from the epoch object of hash `object_hash`, if
    /// held: what the entry starting that epoch is sealed with.
    fn tree_of_object(&self, _epoch: u8, _object_hash: &[u8; 32]) -> Option<&VaultKeys> {
        None
    }

    /// Runs `open` with each tree of `epoch` until one authenticates: its result, the first
    /// error other than a failed authentication, or `KeyEpoch` when this device holds no key of
    /// that epoch (one started after it was revoked, or not fetched yet).
    fn open_with<T>(
        &self,
        kind: ObjectKind,
        epoch: u8,
        mut open: impl FnMut(&VaultKeys) -> Result<T>,
    ) -> Result<T> {
        let mut last = Error::Decode {
            kind,
            problem: DecodeProblem::KeyEpoch {
                expected: self.newest().0,
                found: epoch,
            },
        };
        for tree in self.trees(epoch) {
            match open(tree) {
                Err(
                    error @ Error::Decode {
                        problem: DecodeProblem::AuthenticationFailed,
                        ..
                    },
                ) => last = error,
                other => return other,
            }
        }
        Err(last)
    }
}

impl KeyEpochs for VaultKeys {
    fn vault_id(&self) -> &VaultId {
        VaultKeys::vault_id(self)
    }

    fn trees(&self, epoch: u8) -> Vec<&VaultKeys> {
        if epoch == 0 { vec![self] } else { Vec::new() }
    }

    fn newest(&self) -> (u8, &VaultKeys) {
        (0, self)
    }
}

/// The hash that stands for "no epoch object": epoch 0 (the recovery key's own tree) and a
/// secret received in a link's welcome.
pub const NO_EPOCH_OBJECT: [u8; 32] = [0; 32];

/// One epoch secret a device holds.
#[derive(Clone)]
pub struct HeldEpoch {
    /// The epoch number.
    pub epoch: u8,
    /// SHA-256 of the epoch object it came from ([`NO_EPOCH_OBJECT`] for epoch 0 and a welcome).
    pub object_hash: [u8; 32],
    /// Whether the roster's counted start names that object, or it came from a source this
    /// device trusts (the recovery key, a welcome, the chain of a confirmed epoch): only
    /// confirmed epochs are written in.
    pub confirmed: bool,
    /// The secret.
    pub secret: EpochSecret,
    tree: VaultKeys,
}

/// The epochs a device holds: their secrets (kept sealed in its local state) and trees.
#[derive(Clone)]
pub struct HeldEpochs {
    vault_id: VaultId,
    held: Vec<HeldEpoch>,
}

impl core::fmt::Debug for HeldEpochs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeldEpochs")
            .field(
                "epochs",
                &self
                    .held
                    .iter()
                    .map(|h| (h.epoch, h.confirmed))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl HeldEpochs {
    /// Only epoch `epoch`, confirmed, with its secret.
    pub fn new(vault_id: VaultId, epoch: u8, secret: EpochSecret) -> Self {
        let mut held = HeldEpochs {
            vault_id,
            held: Vec::new(),
        };
        held.insert(epoch, NO_EPOCH_OBJECT, true, secret);
        held
    }

    /// Adds the secret of `epoch` from the object of hash `object_hash` (or confirms it, if held
    /// unconfirmed). Returns whether anything changed.
    pub fn insert(
        &mut self,
        epoch: u8,
        object_hash: [u8; 32],
        confirmed: bool,
        secret: EpochSecret,
    ) -> bool {
        if let Some(held) = self
            .held
            .iter_mut()
            .find(|h| h.epoch == epoch && h.secret.bytes() == secret.bytes())
        {
            let changed = confirmed && !held.confirmed;
            held.confirmed |= confirmed;
            if held.object_hash == NO_EPOCH_OBJECT && object_hash != NO_EPOCH_OBJECT {
                held.object_hash = object_hash;
                return true;
            }
            return changed;
        }
        let tree = VaultKeys::for_epoch(self.vault_id, &secret);
        self.held.push(HeldEpoch {
            epoch,
            object_hash,
            confirmed,
            secret,
            tree,
        });
        self.held.sort_by_key(|h| (h.epoch, !h.confirmed));
        true
    }

    /// Confirms the secret of `epoch` that came from the object of hash `object_hash` (the one
    /// the roster's counted start names). Returns whether anything changed.
    pub fn confirm(&mut self, epoch: u8, object_hash: &[u8; 32]) -> bool {
        let mut changed = false;
        for held in &mut self.held {
            if held.epoch == epoch && held.object_hash == *object_hash && !held.confirmed {
                held.confirmed = true;
                changed = true;
            }
        }
        self.held.sort_by_key(|h| (h.epoch, !h.confirmed));
        changed
    }

    /// Whether a confirmed secret of `epoch` is held.
    pub fn has_confirmed(&self, epoch: u8) -> bool {
        self.held.iter().any(|h| h.epoch == epoch && h.confirmed)
    }

    /// The confirmed secret of `epoch`, if held.
    pub fn confirmed_secret(&self, epoch: u8) -> Option<&EpochSecret> {
        self.held
            .iter()
            .find(|h| h.epoch == epoch && h.confirmed)
            .map(|h| &h.secret)
    }

    /// Every secret held, oldest epoch first (confirmed ones first within an epoch).
    pub fn held(&self) -> &[HeldEpoch] {
        &self.held
    }
}

impl KeyEpochs for HeldEpochs {
    fn vault_id(&self) -> &VaultId {
        &self.vault_id
    }

    fn trees(&self, epoch: u8) -> Vec<&VaultKeys> {
        self.held
            .iter()
            .filter(|h| h.epoch == epoch)
            .map(|h| &h.tree)
            .collect()
    }

    fn tree_of_object(&self, epoch: u8, object_hash: &[u8; 32]) -> Option<&VaultKeys> {
        self.held
            .iter()
            .find(|h| h.epoch == epoch && h.object_hash == *object_hash)
            .map(|h| &h.tree)
    }

    fn newest(&self) -> (u8, &VaultKeys) {
        // `new` inserts a confirmed epoch and nothing removes or unconfirms one.
        let newest = self
            .held
            .iter()
            .rev()
            .find(|h| h.confirmed)
            .unwrap_or(&self.held[0]);
        (newest.epoch, &newest.tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RecoveryKey;

    #[test]
    fn the_newest_epoch_seals_and_each_opens_its_own() {
        let rk = RecoveryKey::from_bytes([7; 32]);
        let zero = VaultKeys::derive(&rk);
        let mut held = HeldEpochs::new(*zero.vault_id(), 0, EpochSecret::epoch_zero(&rk));
        assert_eq!(held.newest().0, 0);
        assert_eq!(
            held.trees(0)[0].log().0.bytes(),
            zero.log().0.bytes(),
            "epoch 0's tree is the recovery key's"
        );
        // An unconfirmed epoch opens objects but is not written in.
        assert!(held.insert(2, [9; 32], false, EpochSecret::from_bytes([2; 32])));
        assert!(!held.insert(2, [9; 32], false, EpochSecret::from_bytes([2; 32])));
        assert_eq!(held.newest().0, 0);
        assert!(held.insert(2, [8; 32], false, EpochSecret::from_bytes([3; 32])));
        assert_eq!(held.trees(2).len(), 2);
        assert!(held.confirm(2, &[8; 32]));
        assert_eq!(held.newest().0, 2);
        assert_eq!(
            held.newest().1.log().0.bytes(),
            VaultKeys::for_epoch(*zero.vault_id(), &EpochSecret::from_bytes([3; 32]))
                .log()
                .0
                .bytes()
        );
        assert_ne!(held.newest().1.log().0.bytes(), zero.log().0.bytes());
        assert_eq!(held.newest().1.vault_id(), zero.vault_id());
        // Each tree is tried until one authenticates; none held is KeyEpoch.
        let opened = held.open_with(ObjectKind::Segment, 2, |tree| {
            if tree.log().0.bytes() == held.newest().1.log().0.bytes() {
                Ok("opened")
            } else {
                Err(Error::Decode {
                    kind: ObjectKind::Segment,
                    problem: DecodeProblem::AuthenticationFailed,
                })
            }
        });
        assert_eq!(opened.unwrap(), "opened");
        assert!(matches!(
            held.open_with(ObjectKind::Segment, 1, |_| Ok(())),
            Err(Error::Decode {
                problem: DecodeProblem::KeyEpoch {
                    expected: 2,
                    found: 1
                },
                ..
            })
        ));
        assert!(KeyEpochs::trees(&zero, 1).is_empty());
    }
}
