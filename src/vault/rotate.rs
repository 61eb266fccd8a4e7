//! Rotating the recovery key (docs/DEVICES.md, "Revocation and rotation"): a new random recovery
//! key, a roster `rotate_recovery` entry signed by the old one naming the new one's signing key,
//! a new key epoch boxed to every active device and to the new key only, and a redirect object
//! under the new key's own vault id that names the vault (whose id the first recovery key
//! derived and never changes).
//!
//! The new key restores everything: it opens the new epoch's recovery box, and every epoch
//! chains to the one before, down to epoch 0. The old key opens nothing written afterwards: it
//! holds no box of the new epoch, and a vault open with it stops syncing with
//! [`Error::RecoveryKeyReplaced`]. A device's local state stays sealed under epoch 0's tree,
//! which the new key reaches through the chain, so a state directory opened with the old key
//! opens with the new one.

use crate::devices::{DeviceSecrets, EpochObject, MAX_EPOCH_OBJECT, RecoverySigner};
use crate::error::{Error, IntegrityProblem, Result};
use crate::format::ObjectKind;
use crate::keys::{EpochSecret, RecoveryKey, VaultId, VaultKeys};
use crate::sealing::{self, ObjectContext};
use crate::store::ObjectStore;
use crate::sync::roster::{RosterChange, RosterEntry, Signer};

use super::{SyncReport, Vault, lock};

/// The redirect's name under the new key's vault prefix.
const REDIRECT_NAME: &str = "redirect";
/// The largest redirect object read.
const MAX_REDIRECT_OBJECT: u64 = 1024;
/// The local-state meta key of a rotation's new recovery key, kept (sealed) from the moment it
/// is drawn until the rotation is complete, so that an interrupted rotation resumes with the
/// same key instead of leaving the vault with a key nobody ever saw.
const META_PENDING_RECOVERY_KEY: &str = "pending_recovery_key";
const PENDING_NAME: &str = "local/pending-recovery-key";

fn redirect_context(new: &VaultKeys) -> ObjectContext<'_> {
    ObjectContext {
        vault_id: new.vault_id(),
        kind: ObjectKind::Redirect,
        name: REDIRECT_NAME,
    }
}

fn redirect_key(new: &VaultKeys) -> String {
    format!("{}/{REDIRECT_NAME}", new.vault_id().to_hex())
}

/// The redirect of the vault `vault` (roster root `root`) for the new recovery key's tree `new`:
/// the vault id and the root, sealed under the new tree's keyring key.
fn seal_redirect(new: &VaultKeys, vault: &VaultId, root: &[u8; 32]) -> Result<Vec<u8>> {
    sealing::seal(
        &new.keyring().0,
        &redirect_context(new),
        &[vault.as_bytes().as_slice(), root].concat(),
    )
}

/// The vault a rotated recovery key belongs to, and that vault's roster root, from the redirect
/// under the key's own vault id; `None` for a key that was never a rotation's new key.
pub(super) async fn find_redirect(
    store: &dyn ObjectStore,
    recovery_key: &RecoveryKey,
) -> Result<Option<(VaultId, [u8; 32])>> {
    let new = VaultKeys::derive(recovery_key);
    let Some(object) = store.get(&redirect_key(&new), MAX_REDIRECT_OBJECT).await? else {
        return Ok(None);
    };
    let body = sealing::open(&new.keyring().0, &redirect_context(&new), &object)?;
    let malformed = || {
        Error::decode(
            ObjectKind::Redirect,
            crate::DecodeProblem::Malformed("not a vault id and a roster root".into()),
        )
    };
    let vault: [u8; 16] = body
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)?;
    let root: [u8; 32] = body
        .get(16..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)?;
    Ok(Some((VaultId::from_bytes(vault), root)))
}

/// Epoch 0's secret (the first recovery key's PRK, which the local state is sealed with), reached
/// with a rotated recovery key: its box in the newest epochs, then the chain down.
pub(super) async fn epoch_zero_with_recovery(
    store: &dyn ObjectStore,
    vault: &VaultId,
    recovery: &DeviceSecrets,
) -> Result<EpochSecret> {
    let prefix = format!("{}/", vault.to_hex());
    let mut objects = Vec::new();
    for info in store.list(&format!("{prefix}epochs/")).await? {
        let Some(name) = info.key.strip_prefix(&prefix) else {
            continue;
        };
        if crate::devices::epoch_in_name(name).is_none() || info.size > MAX_EPOCH_OBJECT as u64 {
            continue;
        }
        let Some(bytes) = store.get(&info.key, MAX_EPOCH_OBJECT as u64).await? else {
            continue;
        };
        objects.push(EpochObject::decode(name, &bytes)?);
    }
    let mut held: std::collections::BTreeMap<u8, EpochSecret> = std::collections::BTreeMap::new();
    for object in &objects {
        // Boxes to other recovery keys (earlier epochs) do not open: skipped.
        if let Ok(secret) = object.open_with_recovery(recovery) {
            held.insert(object.epoch, secret);
        }
    }
    loop {
        let mut more = false;
        for object in &objects {
            let epoch = object.epoch;
            if held.contains_key(&(epoch - 1)) {
                continue;
            }
            let Some(secret) = held.get(&epoch) else {
                continue;
            };
            if let Ok(previous) = object.previous(secret) {
                held.insert(epoch - 1, previous);
                more = true;
            }
        }
        if !more {
            break;
        }
    }
    let epoch_zero = held
        .remove(&0)
        .ok_or(Error::Integrity(IntegrityProblem::MissingObject {
            name: format!(
                "{prefix}epochs/ (an epoch chain from this recovery key down to epoch 0)"
            ),
        }))?;
    // Epoch 0's secret is the first recovery key's PRK, which derives the vault id: a chain that
    // ends anywhere else is not this vault's.
    if epoch_zero.epoch_zero_vault_id() != *vault {
        return Err(Error::decode(
            ObjectKind::Epoch,
            crate::DecodeProblem::Malformed("a chain to another vault's epoch 0".into()),
        ));
    }
    Ok(epoch_zero)
}

impl Vault {
    /// Replaces the recovery key: returns the new one (show its text once; keep it like the old
    /// one). From then on the old key opens nothing written afterwards and a vault open with it
    /// stops syncing with [`Error::RecoveryKeyReplaced`]; the new key restores everything,
    /// history included. Passphrase envelopes of the old key no longer help: seal the new key in
    /// a new envelope. Devices linked by QR code keep working; devices open with the old key
    /// (this one included) must be opened again with the new key, on the same state directory.
    ///
    /// Needs the vault open with the recovery key ([`Error::Link`] with `NotAllowed`
    /// otherwise). Syncs first. Interrupted, it resumes with the same new key when run again.
    pub async fn rotate_recovery_key(&self) -> Result<RecoveryKey> {
        let Some(old_signer) = &self.recovery_signer else {
            return Err(Error::Link(crate::LinkProblem::NotAllowed));
        };
        let resuming = lock(&self.local)?
            .meta(META_PENDING_RECOVERY_KEY)?
            .is_some();
        match self.sync(None, None).await {
            // An interrupted rotation whose entry counts already: this vault's key is replaced,
            // by the key this rotation is about to hand out.
            Err(Error::RecoveryKeyReplaced) if resuming => {}
            other => {
                other?;
            }
        }
        let _guard = self.sync_lock.lock().await;
        let roster = self.refresh_roster(&mut SyncReport::default()).await?;
        let new_key = self.pending_recovery_key()?;
        let new_signer = RecoverySigner::derive(&new_key);
        let roster = if roster.recovery_key == old_signer.verifying_key() {
            // Unsigned checkpoint indexes and unlisted writers stop counting with this entry:
            // if the newest index is one, or an unlisted device's segments lie outside it, this
            // device writes a signed index first (before the entry, after which a vault open
            // with the old key no longer syncs).
            self.vouch_unless_the_bucket_is_damaged(None).await?;
            let entry = RosterEntry {
                signer: Signer::Recovery,
                parents: roster.tips.clone(),
                made_at_ms: self.now_ms(),
                epoch: roster.epoch,
                change: RosterChange::RotateRecovery {
                    next: new_signer.verifying_key(),
                    agreement: crate::devices::recovery_agreement_key(&new_key),
                },
            };
            self.write_entry(entry, Some(old_signer)).await?
        } else if roster.recovery_key == new_signer.verifying_key() {
            // An interrupted rotation: the entry is in.
            roster
        } else {
            return Err(Error::RecoveryKeyReplaced);
        };
        let new_secrets = RecoverySigner::recovery_secrets(&new_key);
        let boxed_to_new_key = match roster.epochs.get(&roster.epoch) {
            Some(hash) => self
                .epoch_object(roster.epoch, hash)
                .await?
                .is_some_and(|object| object.open_with_recovery(&new_secrets).is_ok()),
            None => false,
        };
        if !boxed_to_new_key {
            let agreement = crate::devices::recovery_agreement_key(&new_key);
            self.start_epoch(&roster, Signer::Recovery, &agreement, Some(&new_signer))
                .await?;
        }
        let new_tree = VaultKeys::derive(&new_key);
        self.store
            .put(
                &redirect_key(&new_tree),
                seal_redirect(&new_tree, self.keys.vault_id(), &self.roster_root)?,
            )
            .await?;
        lock(&self.local)?.delete_meta(META_PENDING_RECOVERY_KEY)?;
        Ok(new_key)
    }

    /// The new key of an interrupted rotation, or a new one (kept until the rotation completes).
    fn pending_recovery_key(&self) -> Result<RecoveryKey> {
        let context = ObjectContext {
            vault_id: self.keys.vault_id(),
            kind: ObjectKind::KeySet,
            name: PENDING_NAME,
        };
        let local = lock(&self.local)?;
        if let Some(sealed) = local.meta(META_PENDING_RECOVERY_KEY)? {
            let body = sealing::open(&self.keys.keyring().0, &context, &sealed)?;
            let bytes: [u8; 32] = body
                .as_slice()
                .try_into()
                .map_err(|_| Error::LocalState("damaged pending recovery key".into()))?;
            return Ok(RecoveryKey::from_bytes(bytes));
        }
        let key = RecoveryKey::generate()?;
        local.set_meta(
            META_PENDING_RECOVERY_KEY,
            &sealing::seal(&self.keys.keyring().0, &context, &*key.to_bytes())?,
        )?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests;
