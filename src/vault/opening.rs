//! Opening a vault on a device: with the recovery key (the first device, a restore, the CLI) or
//! with a device key (a device linked by QR code, which never holds the recovery key).

use crate::devices::{DeviceSecrets, RecoverySigner};
use crate::keys::EpochSecret;

use super::*;

/// What a device opens its vault with, however it got it.
pub(super) struct Access {
    /// The key tree of the epoch in force.
    pub(super) keys: VaultKeys,
    /// That epoch's number and secret.
    pub(super) epoch: u8,
    pub(super) epoch_secret: EpochSecret,
    /// The recovery key's own keys (its X25519 key opens every epoch's recovery box), when the
    /// recovery key is at hand.
    pub(super) recovery_secrets: Option<DeviceSecrets>,
    /// The recovery key's signer, when the recovery key is at hand.
    pub(super) recovery_signer: Option<RecoverySigner>,
    /// The recovery key's X25519 public key (new epochs are boxed to it).
    pub(super) recovery_agreement_key: [u8; 32],
    /// The roster's root of trust, when known from outside the state directory (derived from the
    /// recovery key, or received in a link's welcome); otherwise the one the state keeps.
    pub(super) roster_root: Option<[u8; 32]>,
    /// A device identity drawn before the state directory existed (a joining device's, which its
    /// roster entry already names), taken only when the state holds no device yet.
    pub(super) identity: Option<(DeviceId, DeviceSecrets)>,
}

impl Vault {
    /// Opens the vault of `recovery_key` in `store`, with this device's state in `state_dir`
    /// (created if missing). A new state directory makes a new device that joins the vault and
    /// adds itself to its roster at its first sync.
    ///
    /// A key that replaced another ([`Vault::rotate_recovery_key`]) opens the vault the redirect
    /// under its own vault id names: opening a new state directory, or one of another vault id
    /// than the key's own, reads the bucket (a redirect, then the epoch objects), so it fails
    /// with a retryable [`Error::Store`] while the bucket cannot be reached. A state directory of
    /// the key's own vault opens without the bucket.
    ///
    /// Fails with [`Error::InvalidInput`] if `state_dir` belongs to another vault.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        state_dir: &Path,
        info: DeviceInfo,
        recovery_key: &RecoveryKey,
    ) -> Result<Vault> {
        let signer = RecoverySigner::derive(recovery_key);
        let own = VaultKeys::derive(recovery_key);
        let stored = LocalState::stored_vault_id(&state_dir.join(STATE_FILE))?;
        let redirect = match stored {
            Some(id) if id.as_slice() == own.vault_id().as_bytes() => None,
            _ => super::rotate::find_redirect(store.as_ref(), recovery_key).await?,
        };
        if let Some((vault_id, root)) = redirect {
            // A rotated key: the vault is the redirect's, its local state sealed under epoch 0's
            // tree, which this key reaches through the epochs' chain.
            let secrets = RecoverySigner::recovery_secrets(recovery_key);
            let epoch_zero =
                super::rotate::epoch_zero_with_recovery(store.as_ref(), &vault_id, &secrets)
                    .await?;
            let access = Access {
                keys: VaultKeys::for_epoch(vault_id, &epoch_zero),
                epoch: 0,
                epoch_secret: epoch_zero,
                recovery_secrets: Some(secrets),
                recovery_agreement_key: crate::devices::recovery_agreement_key(recovery_key),
                roster_root: Some(root),
                recovery_signer: Some(signer),
                identity: None,
            };
            return Vault::open_with(store, state_dir, info, access);
        }
        let access = Access {
            keys: VaultKeys::derive(recovery_key),
            epoch: 0,
            epoch_secret: EpochSecret::epoch_zero(recovery_key),
            recovery_secrets: Some(RecoverySigner::recovery_secrets(recovery_key)),
            recovery_agreement_key: crate::devices::recovery_agreement_key(recovery_key),
            roster_root: Some(signer.verifying_key()),
            recovery_signer: Some(signer),
            identity: None,
        };
        Vault::open_with(store, state_dir, info, access)
    }

    /// Opens the vault of a device that joined it by a link ([`Vault::join_link`]), with the
    /// device key the app keeps for it (Keychain / Keystore). The recovery key is not needed and
    /// this device never held it.
    ///
    /// Fails with [`Error::WrongDeviceKey`] if `device_key` is not the one the device joined
    /// with, and with [`Error::InvalidInput`] if `state_dir` holds no linked device.
    pub async fn open_device(
        store: Arc<dyn ObjectStore>,
        state_dir: &Path,
        info: DeviceInfo,
        device_key: &DeviceKey,
    ) -> Result<Vault> {
        let held = device_key::read(state_dir, device_key)?;
        let access = Access {
            keys: VaultKeys::for_epoch(held.vault_id, &held.epoch_secret),
            epoch: held.epoch,
            epoch_secret: held.epoch_secret,
            recovery_secrets: None,
            recovery_agreement_key: held.recovery_agreement_key,
            recovery_signer: None,
            roster_root: Some(held.roster_root),
            // Also when the state directory is new: the roster names this id.
            identity: Some((held.device, held.secrets)),
        };
        Vault::open_with(store, state_dir, info, access)
    }

    pub(super) fn open_with(
        store: Arc<dyn ObjectStore>,
        state_dir: &Path,
        info: DeviceInfo,
        access: Access,
    ) -> Result<Vault> {
        info.check()?;
        let Access {
            keys,
            epoch,
            epoch_secret,
            recovery_secrets,
            recovery_agreement_key,
            recovery_signer,
            roster_root,
            identity,
        } = access;
        std::fs::create_dir_all(state_dir).map_err(|e| {
            Error::LocalState(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        let mut local = LocalState::open(&state_dir.join(STATE_FILE), &keys)?;
        match local.meta(META_VAULT_ID)? {
            Some(id) if id.as_slice() != keys.vault_id().as_bytes() => {
                return Err(Error::invalid_input(
                    "this state directory belongs to another vault (a different recovery key)",
                ));
            }
            Some(_) => {}
            None => {
                // A new device keeps no message content: the app's database is the source of
                // truth (`set_content_cache` turns the cache on). State directories created
                // before this default keep the cache they had.
                local.set_cache_setting(CacheSetting::Off)?;
                local.set_meta(META_VAULT_ID, keys.vault_id().as_bytes())?;
            }
        }
        // A state that holds a device keeps it: the device keys file keeps the id the device
        // joined with, and the device may have forked off since under an id of its own.
        if let Some((device, secrets)) = &identity
            && local.meta(META_DEVICE_ID)?.is_none()
        {
            local.set_meta(
                identity::META_DEVICE_SECRETS,
                &identity::seal(&keys, secrets)?,
            )?;
            local.set_meta(META_DEVICE_ID, &device.0)?;
        }
        let device = match local.meta(META_DEVICE_ID)? {
            Some(bytes) => DeviceId(
                bytes
                    .try_into()
                    .map_err(|_| Error::LocalState("damaged device id".into()))?,
            ),
            None => {
                // A new device: its id is the one its keys certify.
                let secrets = DeviceSecrets::generate()?;
                local.set_meta(
                    identity::META_DEVICE_SECRETS,
                    &identity::seal(&keys, &secrets)?,
                )?;
                let device = DeviceId::of_keys(&secrets.public());
                local.set_meta(META_DEVICE_ID, &device.0)?;
                device
            }
        };
        let device_secrets = identity::load_or_create(&mut local, &keys)?;
        identity::first_signed_seq(&mut local, device)?;
        let roster_root = match (local.meta(roster::META_ROSTER_ROOT)?, roster_root) {
            (Some(root), given) => {
                let root: [u8; 32] = root
                    .try_into()
                    .map_err(|_| Error::LocalState("damaged roster root".into()))?;
                // With the recovery key at hand the root is known for sure: a state that kept
                // another one (from a welcome) does not belong to this vault's recovery key.
                if recovery_signer.is_some() && given.is_some_and(|given| given != root) {
                    return Err(Error::invalid_input(
                        "this state directory trusts another roster root than this recovery key's",
                    ));
                }
                root
            }
            (None, Some(root)) => {
                local.set_meta(roster::META_ROSTER_ROOT, &root)?;
                root
            }
            (None, None) => return Err(Error::LocalState("no roster root".into())),
        };
        let last = match local.meta(META_CLOCK)? {
            Some(bytes) => Some(
                Stamp::from_sortable_bytes(&bytes)
                    .ok_or_else(|| Error::LocalState("damaged clock".into()))?,
            ),
            None => None,
        };
        let chat_keys = match local.meta(META_CHAT_KEYS)? {
            Some(sealed) => open_chat_keys(&keys, &sealed)?,
            None => ChatKeys::new(),
        };
        let mut held = crate::keys::HeldEpochs::new(*keys.vault_id(), epoch, epoch_secret);
        epochs::load(&local, &keys, &mut held)?;
        Ok(Vault {
            keys,
            epochs: Mutex::new(Arc::new(held)),
            recovery_secrets,
            store,
            device: Mutex::new(device),
            device_secrets: Mutex::new(device_secrets),
            recovery_signer,
            recovery_agreement_key,
            roster_root,
            roster: Mutex::new(None),
            info,
            local: Mutex::new(local),
            chat_keys: Mutex::new(chat_keys),
            clock: Mutex::new(Clock::new(device, last)),
            sync_lock: tokio::sync::Mutex::new(()),
            attachment_chunk_size: std::sync::atomic::AtomicU32::new(
                crate::attachment::DEFAULT_CHUNK_SIZE,
            ),
            auto_gc_grace_ms: std::sync::atomic::AtomicU64::new(AUTO_GC_GRACE_MS),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }
}
