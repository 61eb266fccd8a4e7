//! The key epochs this device holds (docs/DEVICES.md, "Keys"): epoch 0 from the recovery key or
//! a link's welcome, later epochs from the epoch objects in the bucket (this device's own box,
//! the recovery key's box, or the chain from a later epoch it holds). Their secrets are kept in
//! the local state, sealed under the keyring key of the tree the state is sealed with.
//!
//! An epoch object anyone with the devices' public keys could make, so a secret opened from one
//! is only *held* (it opens objects that authenticate under it) until the roster's counted start
//! of that epoch names the object's hash: only then is it *confirmed*, and only a confirmed epoch
//! is written in. A secret chained from a confirmed one is confirmed too (only a holder of that
//! epoch could have sealed the chain).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::devices::{EpochObject, MAX_EPOCH_OBJECT, epoch_object_hash};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::keys::{EpochSecret, HeldEpochs, VaultKeys};
use crate::local::LocalState;
use crate::sealing::{self, ObjectContext};
use crate::sync::listing::Listing;
use crate::sync::plan::Get;
use crate::sync::roster::Roster;

use super::{SyncReport, Vault, lock};

/// The local-state meta key of the sealed epoch secrets.
const META_EPOCH_SECRETS: &str = "epoch_secrets";
/// The AAD name they are sealed under.
const EPOCH_SECRETS_NAME: &str = "local/epoch-secrets";
/// One kept secret: epoch, confirmed, object hash, secret.
const RECORD_LEN: usize = 1 + 1 + 32 + 32;

fn context(keys: &VaultKeys) -> ObjectContext<'_> {
    ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::KeySet,
        name: EPOCH_SECRETS_NAME,
    }
}

fn damaged() -> Error {
    Error::LocalState("damaged epoch secrets".into())
}

/// Adds the secrets `local` keeps to `held`.
pub(super) fn load(local: &LocalState, keys: &VaultKeys, held: &mut HeldEpochs) -> Result<()> {
    let Some(sealed) = local.meta(META_EPOCH_SECRETS)? else {
        return Ok(());
    };
    let body = zeroize::Zeroizing::new(sealing::open(&keys.keyring().0, &context(keys), &sealed)?);
    if body.len() % RECORD_LEN != 0 {
        return Err(damaged());
    }
    for record in body.chunks_exact(RECORD_LEN) {
        let hash: [u8; 32] = record[2..34].try_into().map_err(|_| damaged())?;
        let secret: [u8; 32] = record[34..].try_into().map_err(|_| damaged())?;
        held.insert(
            record[0],
            hash,
            record[1] == 1,
            EpochSecret::from_bytes(secret),
        );
    }
    Ok(())
}

fn save(local: &LocalState, keys: &VaultKeys, held: &HeldEpochs) -> Result<()> {
    let mut body = zeroize::Zeroizing::new(Vec::new());
    for epoch in held.held() {
        body.push(epoch.epoch);
        body.push(u8::from(epoch.confirmed));
        body.extend_from_slice(&epoch.object_hash);
        body.extend_from_slice(epoch.secret.bytes());
    }
    local.set_meta(
        META_EPOCH_SECRETS,
        &sealing::seal(&keys.keyring().0, &context(keys), &body)?,
    )
}

fn copy(secret: &EpochSecret) -> EpochSecret {
    EpochSecret::from_bytes(*secret.bytes())
}

impl Vault {
    /// The epochs this device holds.
    pub(super) fn epochs(&self) -> Result<Arc<HeldEpochs>> {
        Ok(lock(&self.epochs)?.clone())
    }

    /// Changes the held epochs and keeps them. The epochs' lock is never held while the local
    /// state's is taken (`record` and `push` read the epochs while they hold the local state):
    /// two updates at once can lose one, which the next sync fetches again.
    fn update_epochs(&self, change: impl FnOnce(&mut HeldEpochs) -> Result<bool>) -> Result<()> {
        let mut next = (*self.epochs()?).clone();
        if change(&mut next)? {
            save(&*lock(&self.local)?, &self.keys, &next)?;
            *lock(&self.epochs)? = Arc::new(next);
        }
        Ok(())
    }

    /// Fetches the epoch objects `listing` shows that could give this device a secret it does
    /// not hold, and opens what it can: its own box, the recovery key's box (when open with the
    /// recovery key), and the chain of an epoch it holds to the one before. An epoch object that
    /// does not decode, or whose box for this device does not open, stops the sync with the typed
    /// error, as any tampered object does.
    pub(super) async fn sync_epochs(
        &self,
        listing: &Listing,
        report: &mut SyncReport,
    ) -> Result<()> {
        let held = self.epochs()?;
        // Only a confirmed secret settles an epoch: an object planted before the real one (boxed
        // to this device by anyone who knows its public key) must not keep the real one unread.
        let has = |epoch: u8| held.has_confirmed(epoch);
        let known_hashes: BTreeSet<[u8; 32]> = held.held().iter().map(|h| h.object_hash).collect();
        let mut objects = Vec::new();
        for (name, listed) in &listing.epochs {
            let Some(epoch) =
                crate::devices::epoch_in_name(name).and_then(|n| u8::try_from(n).ok())
            else {
                continue;
            };
            // Worth a GET: an epoch not held, or one whose chain gives an earlier epoch not held.
            if has(epoch) && (epoch == 0 || has(epoch - 1)) {
                continue;
            }
            let get = Get::listed(listed, MAX_EPOCH_OBJECT as u64, None)?;
            let bytes = self.read_exact(&get, report).await?;
            let hash = epoch_object_hash(&bytes);
            if known_hashes.contains(&hash) && has(epoch - 1) {
                continue;
            }
            objects.push((hash, EpochObject::decode(name, &bytes)?));
        }
        if objects.is_empty() {
            return Ok(());
        }
        let device = self.device_id();
        let secrets = super::identity::copy(&*lock(&self.device_secrets)?);
        self.update_epochs(|held| {
            let mut changed = false;
            // Boxes first, then chains down as far as they go (each round may open one more).
            for (hash, object) in &objects {
                let opened = match &self.recovery_secrets {
                    // A box to another recovery key (one that replaced this one, whose sync then
                    // stops with RecoveryKeyReplaced once the roster says so) is no box for it.
                    Some(recovery) => Ok(object.open_with_recovery(recovery).ok()),
                    None => object.open_as_device(&device.0, &secrets),
                };
                match opened {
                    Ok(Some(secret)) => changed |= held.insert(object.epoch, *hash, false, secret),
                    Ok(None) => {}
                    Err(error) => return Err(error),
                }
            }
            // Each secret held of an epoch against each object of that epoch: only the object
            // sealed with that secret opens its chain (the AEAD decides), whatever object the
            // secret itself came from.
            loop {
                let mut more = false;
                for (_, object) in &objects {
                    let epoch = object.epoch;
                    if held.has_confirmed(epoch - 1) {
                        continue;
                    }
                    let secrets: Vec<(bool, EpochSecret)> = held
                        .held()
                        .iter()
                        .filter(|h| h.epoch == epoch)
                        .map(|h| (h.confirmed, copy(&h.secret)))
                        .collect();
                    for (confirmed, secret) in secrets {
                        if let Ok(previous) = object.previous(&secret) {
                            more |= held.insert(epoch - 1, [0; 32], confirmed, previous);
                        }
                    }
                }
                changed |= more;
                if !more {
                    break;
                }
            }
            Ok(changed)
        })
    }

    /// Holds (unconfirmed) the secret of an epoch this device is starting.
    pub(super) fn hold_epoch(
        &self,
        epoch: u8,
        object_hash: [u8; 32],
        secret: EpochSecret,
    ) -> Result<()> {
        self.update_epochs(|held| Ok(held.insert(epoch, object_hash, false, secret)))
    }

    /// Confirms the secrets of the epochs `roster`'s counted starts name.
    pub(super) fn confirm_epochs(&self, roster: &Roster) -> Result<()> {
        self.update_epochs(|held| {
            let mut changed = false;
            for (epoch, hash) in &roster.epochs {
                changed |= held.confirm(*epoch, hash);
            }
            Ok(changed)
        })
    }
}
