//! Devices at the FFI: the roster's device list, linking a new device by a code, and opening a
//! linked device with its device key (docs/DEVICES.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CancelHandle, ChatVaultError, FfiResult, S3Credentials, Vault, settle};
use crate::LinkProblem;
use crate::vault;

/// A device of the vault, as the roster lists it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct VaultDevice {
    /// Its id (32 hex digits).
    pub device_id: String,
    /// Its name, as it gave it.
    pub name: String,
    /// Its platform, as it gave it.
    pub platform: String,
    /// The id of the device that added it (a link); `None` when the recovery key did.
    pub added_by: Option<String>,
    /// When it was added, by the adder's clock (milliseconds since the Unix epoch).
    pub added_at_ms: u64,
    /// When it was revoked, by the revoker's clock; `None` while it is active.
    pub revoked_at_ms: Option<u64>,
    /// Whether it is the device this vault is open on.
    pub is_this_device: bool,
}

fn device_to(device: vault::VaultDevice) -> VaultDevice {
    VaultDevice {
        device_id: device.id.to_hex(),
        name: device.name,
        platform: device.platform,
        added_by: match device.added_by {
            crate::sync::roster::Signer::Recovery => None,
            crate::sync::roster::Signer::Device(id) => Some(id.to_hex()),
        },
        added_at_ms: device.added_at_ms,
        revoked_at_ms: device.revoked_at_ms,
        is_this_device: device.is_this_device,
    }
}

pub(super) fn link_error(problem: LinkProblem, detail: String) -> ChatVaultError {
    match problem {
        LinkProblem::Expired => ChatVaultError::LinkExpired { detail },
        LinkProblem::CheckCodeWrong => ChatVaultError::CheckCodeWrong { detail },
        LinkProblem::NotAllowed => ChatVaultError::NotAllowed { detail },
        LinkProblem::Burned | LinkProblem::AlreadyUsed => ChatVaultError::LinkBurned { detail },
    }
}

fn device_key(bytes: &[u8]) -> FfiResult<vault::DeviceKey> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| ChatVaultError::InvalidInput {
        detail: "a device key is 32 bytes".into(),
    })?;
    Ok(vault::DeviceKey::from_bytes(bytes))
}

fn store_of(
    store_url: &str,
    credentials: Option<S3Credentials>,
) -> FfiResult<Arc<dyn crate::store::ObjectStore>> {
    let config = crate::store::StoreConfig::parse(store_url)?;
    let config = match credentials {
        Some(credentials) => config.with_credentials(
            &credentials.access_key_id,
            &credentials.secret_access_key,
            credentials.session_token.as_deref(),
        ),
        None => config,
    };
    Ok(config.open()?)
}

fn info(device_name: String, platform: String) -> vault::DeviceInfo {
    vault::DeviceInfo {
        name: device_name,
        platform,
    }
}

/// A new random device key (32 bytes) for a device that joins by a link. Keep it in the
/// Keychain (`kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`) or wrapped by the Android
/// Keystore, never in a backup: `Vault.openDevice` needs it to open the vault later.
#[uniffi::export]
pub fn generate_device_key() -> FfiResult<Vec<u8>> {
    Ok(vault::DeviceKey::generate()?.to_bytes().to_vec())
}

/// An offer to link a new device, shown as a QR code. Single use.
#[derive(Debug, uniffi::Object)]
pub struct LinkOffering(vault::LinkOffering);

#[uniffi::export]
impl LinkOffering {
    /// The text to show as a QR code (no secret in it).
    pub fn text(&self) -> String {
        self.0.text().to_owned()
    }

    /// When the offer expires (Unix ms, this device's clock).
    pub fn expires_at_ms(&self) -> u64 {
        self.0.expires_at_ms()
    }
}

/// A new device that answered an offer: show `checkCode()`, then `finish()`.
#[derive(Debug, uniffi::Object)]
pub struct LinkJoining(vault::LinkJoining);

#[uniffi::export(async_runtime = "tokio")]
impl LinkJoining {
    /// Answers the offer `offer_text` (scanned from the QR code) as a new device of its vault in
    /// the store `store_url`, with its state in `state_dir` (empty) and `device_key`
    /// (`generateDeviceKey()`; keep it). `credentials`: S3 credentials, or `None` to take them
    /// from the environment (or for other stores).
    #[uniffi::constructor]
    pub async fn join(
        store_url: String,
        credentials: Option<S3Credentials>,
        state_dir: String,
        device_name: String,
        platform: String,
        offer_text: String,
        device_key: Vec<u8>,
    ) -> FfiResult<Arc<Self>> {
        settle::settled(async {
            let store = store_of(&store_url, credentials)?;
            let joining = vault::Vault::join_link(
                store,
                &PathBuf::from(state_dir),
                info(device_name, platform),
                &offer_text,
                self::device_key(&device_key)?,
            )
            .await?;
            Ok(Arc::new(LinkJoining(joining)))
        })
        .await
    }

    /// The six-digit code to show; the person types it on the offering device.
    pub fn check_code(&self) -> String {
        self.0.check_code().to_owned()
    }

    /// This device's id, as the roster will list it.
    pub fn device_id(&self) -> String {
        self.0.device_id().to_hex()
    }

    /// Waits for the offering device and opens the vault as this new device. `LinkBurned` when
    /// a wrong code was typed there, `LinkExpired` when nothing came in time.
    pub async fn finish(&self, cancel: Option<Arc<CancelHandle>>) -> FfiResult<Arc<Vault>> {
        settle::settled(async {
            let cancel = cancel.map(|c| c.0.clone()).unwrap_or_default();
            let vault = self.0.finish(&cancel).await?;
            Ok(Arc::new(Vault(vault)))
        })
        .await
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Vault {
    /// Opens the vault of a device that joined by a link, with the device key it joined with
    /// (`WrongKey` for another key). No recovery key needed.
    #[uniffi::constructor]
    pub async fn open_device(
        store_url: String,
        credentials: Option<S3Credentials>,
        state_dir: String,
        device_name: String,
        platform: String,
        device_key: Vec<u8>,
    ) -> FfiResult<Arc<Self>> {
        settle::settled(async {
            let store = store_of(&store_url, credentials)?;
            let vault = vault::Vault::open_device(
                store,
                &PathBuf::from(state_dir),
                info(device_name, platform),
                &self::device_key(&device_key)?,
            )
            .await?;
            Ok(Arc::new(Vault(vault)))
        })
        .await
    }

    /// This device's id (32 hex digits), as `devices()` lists it.
    pub fn device_id(&self) -> String {
        self.0.device_id().to_hex()
    }

    /// The devices of the vault as of the last sync, revoked ones included (a device appears
    /// from its first sync on).
    pub fn devices(&self) -> FfiResult<Vec<VaultDevice>> {
        Ok(self.0.devices()?.into_iter().map(device_to).collect())
    }

    /// Makes an offer to link a new device, valid for `timeout_s` seconds (at most 3600).
    /// `app_data` (at most 1,024 bytes, no secret: it is shown as a QR code) rides along for the
    /// app, e.g. where the bucket is.
    pub fn offer_link(&self, timeout_s: u32, app_data: Vec<u8>) -> FfiResult<Arc<LinkOffering>> {
        let offering = self
            .0
            .offer_link(Duration::from_secs(u64::from(timeout_s)), app_data)?;
        Ok(Arc::new(LinkOffering(offering)))
    }

    /// Completes `offering` with the code the new device shows, as the person typed it: waits
    /// for the new device (until the expiry), checks the code, and adds it. One wrong code burns
    /// the link (`CheckCodeWrong`); `LinkExpired`; `NotAllowed` when this device is not an
    /// active device of the vault.
    pub async fn complete_link(
        &self,
        offering: Arc<LinkOffering>,
        check_code: String,
        cancel: Option<Arc<CancelHandle>>,
    ) -> FfiResult<VaultDevice> {
        settle::settled(async {
            let cancel = cancel.map(|c| c.0.clone()).unwrap_or_default();
            let added = self
                .0
                .complete_link(&offering.0, &check_code, &cancel)
                .await?;
            Ok(device_to(added))
        })
        .await
    }

    /// Removes a lost or stolen device (`device_id`, 32 hex digits, from `devices()`): it opens
    /// nothing written from now on and every device refuses what it writes afterwards. Syncs
    /// first, and writes a checkpoint first when the vault's newest one would stop counting (so
    /// it may take as long as `checkpoint()`). Running it again finishes an interrupted
    /// revocation. `NotAllowed` when this device is not an active device of the vault (or
    /// stopped being one while this ran); `InvalidInput` for this device itself or an id the
    /// roster does not list; `DeviceRevoked` when this device was revoked itself.
    pub async fn revoke(&self, device_id: String) -> FfiResult<()> {
        let device = crate::sync::DeviceId::from_hex(&device_id).ok_or_else(|| {
            ChatVaultError::InvalidInput {
                detail: "a device id is 32 lower-case hex digits".into(),
            }
        })?;
        settle::settled(async { Ok(self.0.revoke(device).await?) }).await
    }

    /// Replaces the recovery key and returns the new one: show its text once, and seal it in a
    /// new passphrase envelope if you keep one (the old envelope opens only the old key). The old
    /// key opens nothing written from now on; the new one restores everything. Devices open with
    /// the old key, this one included, throw `RecoveryKeyReplaced` until opened again with the
    /// new key (same state directory); linked devices go on. Like `revoke`, it may first write
    /// a checkpoint. `NotAllowed` unless this vault is open with the recovery key. Interrupted,
    /// it resumes with the same new key.
    pub async fn rotate_recovery_key(&self) -> FfiResult<Arc<super::RecoveryKey>> {
        settle::settled(async {
            let key = self.0.rotate_recovery_key().await?;
            Ok(Arc::new(super::RecoveryKey(key)))
        })
        .await
    }
}
