//! Revoking a device (docs/DEVICES.md, "Revocation and rotation"): a roster `revoke` entry that
//! pins the tips of the device's segments this device has applied, then a new key epoch boxed to
//! every remaining device and to the recovery key, never to the revoked one, started by a
//! `start_epoch` entry naming the epoch object's hash. From then on every device seals what it
//! writes in the new epoch, refuses the revoked device's segments past the pinned tips, and the
//! revoked device's own sync stops with [`Error::DeviceRevoked`].

use std::sync::Arc;

use crate::devices::{
    EpochObject, MAX_EPOCH_OBJECT, NewEpoch, RecoverySigner, epoch_object_hash, seal_epoch,
};
use crate::error::{Error, Result};
use crate::keys::EpochSecret;
use crate::sync::DeviceId;
use crate::sync::names::random_tag;
use crate::sync::plan::Get;
use crate::sync::roster::{Roster, RosterChange, RosterEntry, SignedEntry, Signer, roster_name};

use super::roster::seal_entry;
use super::{SyncReport, Vault, lock};

/// The name of epoch `epoch`'s object with tag `tag` (FORMAT.md section 13).
fn epoch_object_name(epoch: u8, tag: u64) -> String {
    format!("epochs/{:016x}-{tag:016x}", u64::from(epoch))
}

impl Vault {
    /// Revokes `device`: it is cut off from everything written from now on (it holds no key of
    /// the epoch this starts), and every device refuses the segments it writes after the ones
    /// this device has applied. Syncs first, so that what the device wrote before is applied
    /// and stays accepted.
    ///
    /// Allowed to an active device of the vault and to a vault open with the recovery key.
    /// Running it again for a device already revoked finishes an interrupted revocation (starts
    /// the epoch if it was not started) and is otherwise a no-op.
    ///
    /// Errors: [`Error::InvalidInput`] for this device itself or a device the roster does not
    /// list; [`Error::Link`] with [`LinkProblem::NotAllowed`](crate::LinkProblem::NotAllowed)
    /// when this device may not revoke (or stopped being an active device while this ran, so
    /// that its revoke entry does not count); [`Error::DeviceRevoked`] when this device was
    /// revoked.
    pub async fn revoke(&self, device: DeviceId) -> Result<()> {
        if device == self.device_id() {
            return Err(Error::invalid_input(
                "a device cannot revoke itself: revoke it from another device or with the recovery key",
            ));
        }
        self.sync(None, None).await?;
        let _guard = self.sync_lock.lock().await;
        let mut report = SyncReport::default();
        let roster = self.refresh_roster(&mut report).await?;
        let Some(record) = roster.devices.get(&device) else {
            return Err(Error::invalid_input(format!(
                "device {} is not in the vault's roster",
                device.to_hex()
            )));
        };
        // Checked before anything is written; taken again after the checkpoint below, which
        // may fork this state directory off under a new id and keys.
        self.roster_signer(&roster)?;
        let roster = match &record.revoked {
            Some(_) => roster,
            None => {
                // Its checkpoint indexes stop counting with the revoke: if the newest is one,
                // this device writes its own first. If objects that checkpoint needs are missing
                // or damaged in the bucket (a pack the device deleted or overwrote, say), what
                // they held is lost either way: the revocation goes on, rather than let the
                // device it cuts off prevent it.
                self.vouch_unless_the_bucket_is_damaged(Some(device))
                    .await?;
                let roster = self.current_roster()?;
                let signer = self.roster_signer(&roster)?;
                let accepted_tips = lock(&self.local)?
                    .heads()?
                    .into_iter()
                    .filter(|head| head.device == device)
                    .collect();
                let entry = RosterEntry {
                    signer,
                    parents: roster.tips.clone(),
                    made_at_ms: self.now_ms(),
                    epoch: roster.epoch,
                    change: RosterChange::Revoke {
                        device,
                        accepted_tips,
                    },
                };
                let roster = self.write_entry(entry, None).await?;
                if roster.is_active(device) {
                    // The entry does not count: its signer is no longer an active device (it
                    // was revoked meanwhile, or this state directory forked off). Say so rather
                    // than report a revocation that did not happen.
                    return Err(Error::Link(crate::LinkProblem::NotAllowed));
                }
                roster
            }
        };
        let signer = self.roster_signer(&roster)?;
        // A start that lost a race to another device's start is retried once the winner counts
        // (if the winner did not see the revoke, it boxed the revoked device too).
        let mut roster = roster;
        for _ in 0..3 {
            if !self.epoch_still_boxes_a_revoked_device(&roster).await? {
                return Ok(());
            }
            // Boxed to the recovery key in force: the one a rotation named, or the first one.
            let recovery = roster
                .recovery_agreement
                .unwrap_or(self.recovery_agreement_key);
            roster = self.start_epoch(&roster, signer, &recovery, None).await?;
        }
        Err(Error::Integrity(crate::IntegrityProblem::RosterContested))
    }

    /// Who signs this device's roster entries: the recovery key when the vault is open with it,
    /// otherwise this device if the roster counts it.
    fn roster_signer(&self, roster: &Roster) -> Result<Signer> {
        if self.recovery_signer.is_some() {
            return Ok(Signer::Recovery);
        }
        if roster.is_active(self.device_id()) {
            Ok(Signer::Device(self.device_id()))
        } else {
            Err(Error::Link(crate::LinkProblem::NotAllowed))
        }
    }

    /// Signs `entry` as its signer (the recovery key: `recovery`, or the one this vault is open
    /// with), uploads it, keeps it, and folds the roster again.
    pub(super) async fn write_entry(
        &self,
        entry: RosterEntry,
        recovery: Option<&RecoverySigner>,
    ) -> Result<Arc<Roster>> {
        let vault = self.keys.vault_id();
        let signed = match (&entry.signer, recovery.or(self.recovery_signer.as_ref())) {
            (Signer::Recovery, Some(signer)) => {
                SignedEntry::sign(vault, entry, |message| signer.sign(message))
            }
            (Signer::Device(_), _) => {
                let secrets = lock(&self.device_secrets)?;
                SignedEntry::sign(vault, entry, |message| secrets.sign(message))
            }
            (Signer::Recovery, None) => {
                return Err(Error::Link(crate::LinkProblem::NotAllowed));
            }
        };
        let sealed = seal_entry(&*self.epochs()?, &signed)?;
        self.put_once(&roster_name(&signed.id()), sealed.clone())
            .await?;
        lock(&self.local)?.keep_roster_object(&signed.id(), &sealed)?;
        let roster = Arc::new(self.fold_kept_roster()?);
        self.confirm_epochs(&roster)?;
        *lock(&self.roster)? = Some(roster.clone());
        Ok(roster)
    }

    /// Whether a device the roster revokes may still hold the key of the epoch in force: epoch 0
    /// (every device of the vault held it) or an epoch whose object boxes it.
    pub(super) async fn epoch_still_boxes_a_revoked_device(&self, roster: &Roster) -> Result<bool> {
        let revoked: Vec<DeviceId> = roster
            .devices
            .iter()
            .filter(|(_, record)| record.revoked.is_some())
            .map(|(id, _)| *id)
            .collect();
        if revoked.is_empty() {
            return Ok(false);
        }
        if roster.epoch == 0 {
            return Ok(true);
        }
        let Some(hash) = roster.epochs.get(&roster.epoch) else {
            return Ok(true);
        };
        let boxed = match self.epoch_object(roster.epoch, hash).await? {
            Some(object) => object.devices(),
            // Not in the bucket (withheld): start one to be sure.
            None => return Ok(true),
        };
        Ok(revoked.iter().any(|id| boxed.contains(&id.0)))
    }

    /// The object of epoch `epoch` whose hash is `hash`, decoded, if listed.
    pub(super) async fn epoch_object(
        &self,
        epoch: u8,
        hash: &[u8; 32],
    ) -> Result<Option<EpochObject>> {
        let listed = self.list_vault().await?;
        let listing = crate::sync::listing::Listing::classify(
            listed.iter().map(|info| (info.key.as_str(), info.size)),
        );
        let mut report = SyncReport::default();
        for (name, listed) in &listing.epochs {
            if crate::devices::epoch_in_name(name) != Some(u64::from(epoch)) {
                continue;
            }
            let get = Get::listed(listed, MAX_EPOCH_OBJECT as u64, None)?;
            let bytes = self.read_exact(&get, &mut report).await?;
            if epoch_object_hash(&bytes) == *hash {
                return EpochObject::decode(name, &bytes).map(Some);
            }
        }
        Ok(None)
    }

    /// Starts epoch `roster.epoch + 1`, boxed to every active device and to the recovery key
    /// whose X25519 public key is `recovery_agreement`; a start signed by the recovery key is
    /// signed by `recovery` (or the one this vault is open with).
    pub(super) async fn start_epoch(
        &self,
        roster: &Roster,
        signer: Signer,
        recovery_agreement: &[u8; 32],
        recovery: Option<&RecoverySigner>,
    ) -> Result<Arc<Roster>> {
        let epochs = self.epochs()?;
        let current = roster.epoch;
        let next = current
            .checked_add(1)
            .ok_or_else(|| Error::invalid_input("this vault has used all 255 key epochs"))?;
        let previous = epochs.confirmed_secret(current).ok_or_else(|| {
            Error::LocalState(format!("this device does not hold epoch {current}'s key"))
        })?;
        let secret = EpochSecret::generate()?;
        let devices: Vec<([u8; 16], [u8; 32])> = roster
            .devices
            .iter()
            .filter(|(_, record)| record.revoked.is_none())
            .map(|(id, record)| (id.0, record.keys.agreement))
            .collect();
        let name = epoch_object_name(next, random_tag()?);
        let object = seal_epoch(&NewEpoch {
            name: &name,
            epoch: next,
            secret: &secret,
            previous,
            devices: &devices,
            recovery: recovery_agreement,
        })?;
        let hash = epoch_object_hash(&object);
        // The secret is kept (unconfirmed) before anything names it, so that an interrupted
        // start leaves nothing this device cannot open.
        self.hold_epoch(next, hash, secret)?;
        self.put_once(&name, object).await?;
        let entry = RosterEntry {
            signer,
            parents: roster.tips.clone(),
            made_at_ms: self.now_ms(),
            epoch: next,
            change: RosterChange::StartEpoch {
                epoch: next,
                object_hash: hash,
            },
        };
        self.write_entry(entry, recovery).await
    }
}

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod tests;
