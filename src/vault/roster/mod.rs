//! This device's view of the roster (docs/DEVICES.md): entries fetched from the bucket once and
//! kept, the fold every device computes the same way, and the entry that adds this device.
//!
//! A device opened with the recovery key adds itself, signed by the recovery signing key, at its
//! first sync: devices of vaults written before the roster existed, new devices, and copies of a
//! state directory that forked off as devices of their own. Nothing refuses a segment for its
//! writer's place in the roster yet (signed segments come later, docs/DEVICES.md).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{DecodeProblem, Error, Result};
use crate::format::ObjectKind;
use crate::keys::{KeyEpochs, VaultKeys};
use crate::sealing::{self, ObjectContext};
use crate::sync::DeviceId;
use crate::sync::listing::Listing;
use crate::sync::plan::Get;
use crate::sync::roster::{
    self, EntryId, MAX_ROSTER_ENTRIES, MAX_ROSTER_OBJECT, Roster, RosterChange, RosterEntry,
    SignedEntry, Signer, roster_name,
};

use super::{SyncReport, Vault, lock};

/// The local-state meta key of the roster's root: the recovery signing public key of the vault's
/// first recovery key, which every entry's authority goes back to.
pub(super) const META_ROSTER_ROOT: &str = "roster_root";

/// A device of the vault, as the roster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultDevice {
    /// Its id.
    pub id: DeviceId,
    /// Its name, as it gave it ("Anna's iPhone").
    pub name: String,
    /// Its platform, as it gave it ("ios", "android", "linux").
    pub platform: String,
    /// Who added it: the recovery key (a device opened with it) or another device (a link).
    pub added_by: Signer,
    /// When, by the adder's clock (milliseconds since the Unix epoch; shown to people, trusted
    /// for nothing).
    pub added_at_ms: u64,
    /// When it was revoked, by the revoker's clock; `None` while it is active.
    pub revoked_at_ms: Option<u64>,
    /// Whether it is the device this vault is open on.
    pub is_this_device: bool,
}

fn context<'a>(keys: &'a VaultKeys, name: &'a str) -> ObjectContext<'a> {
    ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::Roster,
        name,
    }
}

fn too_many_entries() -> Error {
    Error::decode(
        ObjectKind::Roster,
        DecodeProblem::Malformed("more roster entries than a vault can have".into()),
    )
}

/// Opens the roster object of entry `id`: authenticated under the log key of the epoch its header
/// names, its body the signed entry of that id, the entry written in that same epoch.
pub(super) fn open_entry(
    keys: &impl KeyEpochs,
    id: &EntryId,
    object: &[u8],
) -> Result<SignedEntry> {
    let name = roster_name(id);
    let epoch = sealing::epoch_of(object, ObjectKind::Roster)?;
    let body = keys.open_with(ObjectKind::Roster, epoch, |tree| {
        sealing::open_in_epoch(&tree.log().0, &context(tree, &name), epoch, object)
    })?;
    let signed = SignedEntry::decode(*id, &body)?;
    if signed.entry().epoch != epoch {
        return Err(Error::decode(
            ObjectKind::Roster,
            DecodeProblem::Malformed("entry of another epoch than its object".into()),
        ));
    }
    Ok(signed)
}

/// Seals `signed` in the epoch it names, with the tree this device holds for it (the confirmed
/// one first).
pub(super) fn seal_entry(keys: &impl KeyEpochs, signed: &SignedEntry) -> Result<Vec<u8>> {
    let name = roster_name(&signed.id());
    let epoch = signed.entry().epoch;
    let started = match &signed.entry().change {
        // The start of an epoch goes under the secret of the object it names (a start tried
        // before, interrupted, may have left another secret of that epoch held).
        RosterChange::StartEpoch { object_hash, .. } => keys.tree_of_object(epoch, object_hash),
        _ => None,
    };
    let tree = if let Some(tree) = started {
        tree
    } else if keys.newest().0 == epoch {
        keys.newest().1
    } else {
        *keys.trees(epoch).first().ok_or_else(|| {
            Error::invalid_input("an entry of an epoch this device holds no key of")
        })?
    };
    sealing::seal_in_epoch(
        &tree.log().0,
        &context(tree, &name),
        epoch,
        &signed.to_body(),
    )
}

/// Whether `error` says the object is of an epoch this device holds no key of.
fn of_an_epoch_not_held(error: &Error) -> bool {
    matches!(
        error,
        Error::Decode {
            problem: DecodeProblem::KeyEpoch { .. },
            ..
        }
    )
}

impl Vault {
    /// The roster from the entries this device keeps, folded.
    pub(super) fn fold_kept_roster(&self) -> Result<Roster> {
        let objects = lock(&self.local)?.roster_objects()?;
        let epochs = self.epochs()?;
        let entries = objects
            .iter()
            .map(|(id, object)| open_entry(&*epochs, id, object))
            .collect::<Result<Vec<_>>>()?;
        roster::fold(self.keys.vault_id(), self.roster_root, entries)
    }

    /// Fetches the roster entries `listing` shows that this device does not keep yet, keeps
    /// them, folds the roster, and (with `add_self`) adds this device to it when it is missing
    /// and someone here may sign its entry (`entry_adding_this_device`). A roster object that
    /// does not authenticate stops the sync with the typed error, as a segment would; one that
    /// authenticates but does not count (a forged signature, a missing parent) is left out by
    /// the fold.
    pub(super) async fn sync_roster(
        &self,
        listing: &Listing,
        add_self: bool,
        report: &mut SyncReport,
    ) -> Result<Arc<Roster>> {
        let kept: BTreeSet<EntryId> = lock(&self.local)?.roster_ids()?;
        let new: Vec<_> = listing
            .roster
            .iter()
            .filter(|(id, _)| !kept.contains(*id))
            .collect();
        if kept.len() + new.len() > MAX_ROSTER_ENTRIES {
            return Err(too_many_entries());
        }
        let mut nothing_new = true;
        let epochs = self.epochs()?;
        for (id, listed) in new {
            let get = Get::listed(listed, MAX_ROSTER_OBJECT, None)?;
            let object = self.read_exact(&get, report).await?;
            match open_entry(&*epochs, id, &object) {
                Ok(_) => {}
                // An entry of an epoch this device holds no key of (it was revoked before that
                // epoch started): not for it; fetched again next time, never kept.
                Err(error) if of_an_epoch_not_held(&error) => continue,
                Err(error) => return Err(error),
            }
            lock(&self.local)?.keep_roster_object(id, &object)?;
            nothing_new = false;
        }
        // Nothing new since the last fold (the usual sync): the fold stands.
        let cached = lock(&self.roster)?.clone();
        let mut roster = match cached {
            Some(roster) if nothing_new => roster,
            _ => Arc::new(self.fold_kept_roster()?),
        };
        // Before this device adds itself: its entry goes in the epoch the roster is in, whose
        // secret it may only now see confirmed.
        self.confirm_epochs(&roster)?;
        if add_self {
            if let Some(listed) = roster.devices.get(&self.device_id())
                && listed.keys != self.device_keys()?
            {
                // The roster lists this id with other keys: a copy of this state directory made
                // before device keys existed, which drew keys of its own, added it first (or
                // the recovery key's holder did). This device continues under an id of its own.
                let pending = lock(&self.local)?.pending_segment()?;
                self.fork_off(pending)?;
            }
            if let Some(entry) = self.entry_adding_this_device(&roster)? {
                let object = seal_entry(&*self.epochs()?, &entry)?;
                let size = object.len() as u64;
                // The name is the entry's hash: if it is taken, it holds this very entry (an
                // earlier attempt whose answer was lost), whatever nonce sealed it.
                if self
                    .put_once(&roster_name(&entry.id()), object.clone())
                    .await?
                {
                    report.objects_up += 1;
                    report.bytes_up += size;
                }
                lock(&self.local)?.keep_roster_object(&entry.id(), &object)?;
                roster = Arc::new(self.fold_kept_roster()?);
            }
        }
        self.confirm_epochs(&roster)?;
        *lock(&self.roster)? = Some(roster.clone());
        Ok(roster)
    }

    /// The entry that adds this device to `roster`, signed by whoever may: the recovery key when
    /// the vault is open with it; otherwise the device this state directory was copied from
    /// (when it forked off, it kept that device's keys), if the roster counts that device;
    /// `None` when it is in the roster already or nobody here may add it.
    fn entry_adding_this_device(&self, roster: &Roster) -> Result<Option<SignedEntry>> {
        let device = self.device_id();
        // An entry of the epoch in force, which a device opened with the recovery key holds
        // (the recovery box) once it has synced the epoch objects.
        if roster.devices.contains_key(&device) || !self.epochs()?.has_confirmed(roster.epoch) {
            return Ok(None);
        }
        let keys = self.device_keys()?;
        let (first_signed_seq, unsigned_tips) = {
            let mut local = lock(&self.local)?;
            let first = super::identity::first_signed_seq(&mut local, device)?;
            (first, super::identity::unsigned_tips(&local)?)
        };
        let entry = |signer| RosterEntry {
            signer,
            parents: roster.tips.clone(),
            made_at_ms: self.now_ms(),
            epoch: roster.epoch,
            change: RosterChange::Add {
                device,
                keys,
                name: self.info.name.clone(),
                platform: self.info.platform.clone(),
                first_signed_seq,
                unsigned_tips: unsigned_tips.clone(),
            },
        };
        let vault = self.keys.vault_id();
        if let Some(signer) = &self.recovery_signer {
            return Ok(Some(SignedEntry::sign(
                vault,
                entry(Signer::Recovery),
                |m| signer.sign(m),
            )));
        }
        let copied = super::identity::copied(&*lock(&self.local)?, &self.keys)?;
        Ok(copied.and_then(|(copied_id, copied_secrets)| {
            let counted = roster
                .devices
                .get(&copied_id)
                .is_some_and(|d| d.revoked.is_none() && d.keys == copied_secrets.public());
            counted.then(|| {
                SignedEntry::sign(vault, entry(Signer::Device(copied_id)), |m| {
                    copied_secrets.sign(m)
                })
            })
        }))
    }

    /// Fetches and authenticates every roster entry `listing` shows and folds them with the
    /// entries this device keeps (keeping nothing new): how many were listed, and how many of
    /// all the fold left out.
    pub(super) async fn verify_roster(&self, listing: &Listing) -> Result<(u64, u64)> {
        let mut scratch = SyncReport::default();
        if listing.roster.len() > MAX_ROSTER_ENTRIES {
            return Err(too_many_entries());
        }
        let mut entries = Vec::new();
        let epochs = self.epochs()?;
        let mut not_held = 0;
        for (id, listed) in &listing.roster {
            let get = Get::listed(listed, MAX_ROSTER_OBJECT, None)?;
            let object = self.read_exact(&get, &mut scratch).await?;
            match open_entry(&*epochs, id, &object) {
                Ok(entry) => entries.push(entry),
                // Authenticated by nobody here: counted as left out.
                Err(error) if of_an_epoch_not_held(&error) => not_held += 1,
                Err(error) => return Err(error),
            }
        }
        let listed = entries.len() as u64 + not_held;
        for (id, object) in lock(&self.local)?.roster_objects()? {
            if !listing.roster.contains_key(&id) {
                entries.push(open_entry(&*epochs, &id, &object)?);
            }
        }
        let roster = roster::fold(self.keys.vault_id(), self.roster_root, entries)?;
        let refused = roster.refused.len() as u64 + not_held;
        // Segments are checked against every entry listed (in memory only: verify keeps nothing).
        *lock(&self.roster)? = Some(Arc::new(roster));
        Ok((listed, refused))
    }

    /// Before a sync pushes anything: the key epochs and the roster as the bucket has them now,
    /// and this device in the roster. Otherwise a device that has not synced since a revocation
    /// would seal its changes under the keys of the epoch the revoked device holds, and a device
    /// that is not in the roster yet (its first sync, a copy that forked off) would write
    /// segments that every device refuses once a device was revoked. One more LIST, only when
    /// there is something to push.
    pub(super) async fn before_writing(&self, report: &mut SyncReport) -> Result<()> {
        let nothing_to_push = {
            let local = lock(&self.local)?;
            local.outbox_len()? == 0 && local.pending_segment()?.is_none()
        };
        if nothing_to_push {
            return Ok(());
        }
        let roster = self.refresh_roster(report).await?;
        if roster
            .devices
            .get(&self.device_id())
            .is_some_and(|device| device.revoked.is_some())
        {
            return Err(Error::DeviceRevoked);
        }
        Ok(())
    }

    /// The roster as the last sync (or verify) folded it, or as the kept entries fold.
    pub(super) fn current_roster(&self) -> Result<Arc<Roster>> {
        if let Some(roster) = lock(&self.roster)?.clone() {
            return Ok(roster);
        }
        let roster = Arc::new(self.fold_kept_roster()?);
        *lock(&self.roster)? = Some(roster.clone());
        Ok(roster)
    }

    /// The devices of the vault as the roster lists them, revoked ones included, as of the last
    /// sync (a device appears in it from its first sync on). Devices of a vault written before
    /// the roster existed appear once they sync with this version.
    pub fn devices(&self) -> Result<Vec<VaultDevice>> {
        let roster = self.current_roster()?;
        let this = self.device_id();
        Ok(roster
            .devices
            .iter()
            .map(|(id, device)| VaultDevice {
                id: *id,
                name: device.name.clone(),
                platform: device.platform.clone(),
                added_by: device.added_by,
                added_at_ms: device.added_at_ms,
                revoked_at_ms: device.revoked.as_ref().map(|revocation| revocation.at_ms),
                is_this_device: *id == this,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
