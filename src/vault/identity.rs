//! This device's own keys (docs/DEVICES.md): drawn on first open, kept in the local state sealed
//! under the keyring key (kind 5, local only, like the chat key set), and drawn again when a
//! copied state directory forks off as a device of its own, so two devices never share keys.

use crate::devices::{DevicePublicKeys, DeviceSecrets};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::keys::VaultKeys;
use crate::local::LocalState;
use crate::sealing::{self, ObjectContext};
use crate::sync::segment::Head;

use super::{Vault, lock};

/// The local-state meta key of the sealed device secrets.
pub(super) const META_DEVICE_SECRETS: &str = "device_secrets";
/// The local-state meta key of the keys a copied state directory held before it forked off.
pub(super) const META_COPIED_DEVICE_SECRETS: &str = "copied_device_secrets";
/// The local-state meta key of the id it held then.
pub(super) const META_COPIED_DEVICE_ID: &str = "copied_device_id";
/// The local-state meta key of the first sequence number whose segments this device signs
/// (u64 BE): 1 for a device that had device keys from its start, the next one to seal for a state
/// directory that had segments before.
pub(super) const META_FIRST_SIGNED_SEQ: &str = "first_signed_seq";
/// The tips of this device's unsigned segments when it first signed (a `Segment`'s `seen`).
pub(super) const META_UNSIGNED_TIPS: &str = "unsigned_tips";
/// The AAD name they are sealed under.
const DEVICE_SECRETS_NAME: &str = "local/device-secrets";

fn context(keys: &VaultKeys) -> ObjectContext<'_> {
    ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::KeySet,
        name: DEVICE_SECRETS_NAME,
    }
}

/// Seals `secrets` for the local state.
pub(super) fn seal(keys: &VaultKeys, secrets: &DeviceSecrets) -> Result<Vec<u8>> {
    sealing::seal(&keys.keyring().0, &context(keys), &secrets.to_bytes()[..])
}

fn open(keys: &VaultKeys, sealed: &[u8]) -> Result<DeviceSecrets> {
    let body = sealing::open(&keys.keyring().0, &context(keys), sealed)?;
    let bytes: &[u8; 64] = body
        .as_slice()
        .try_into()
        .map_err(|_| Error::LocalState("damaged device keys".into()))?;
    Ok(DeviceSecrets::from_bytes(bytes))
}

/// This device's secrets from the local state, drawn and stored on first open (and by state
/// directories made before device keys existed).
pub(super) fn load_or_create(local: &mut LocalState, keys: &VaultKeys) -> Result<DeviceSecrets> {
    if let Some(sealed) = local.meta(META_DEVICE_SECRETS)? {
        return open(keys, &sealed);
    }
    let secrets = DeviceSecrets::generate()?;
    local.set_meta(META_DEVICE_SECRETS, &seal(keys, &secrets)?)?;
    Ok(secrets)
}

/// A copy of `secrets` (wiped on drop like the original).
pub(super) fn copy(secrets: &DeviceSecrets) -> DeviceSecrets {
    DeviceSecrets::from_bytes(&secrets.to_bytes())
}

/// The first sequence number whose segments `device` signs: kept in the local state, set the first
/// time a state directory is opened with device keys to the next sequence number it will seal
/// (after its newest own head and any staged segment, both sealed unsigned). That first time it
/// also records the tips of those unsigned segments ([`unsigned_tips`]), which its roster entry
/// names.
pub(super) fn first_signed_seq(
    local: &mut LocalState,
    device: crate::sync::DeviceId,
) -> Result<u64> {
    if let Some(bytes) = local.meta(META_FIRST_SIGNED_SEQ)? {
        let bytes: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::LocalState("damaged first signed sequence number".into()))?;
        return Ok(u64::from_be_bytes(bytes));
    }
    let newest_head = local
        .heads()?
        .into_iter()
        .filter(|head| head.device == device)
        .map(|head| head.seq)
        .max()
        .unwrap_or(0);
    let pending = local.pending_segment()?;
    let staged = pending.as_ref().map_or(0, |pending| pending.seq);
    let first = newest_head.max(staged) + 1;
    // The tips of what it wrote unsigned: its own heads and the staged segment, which goes up
    // unsigned as it was sealed. Its roster entry names them, so that once the roster stops
    // trusting writers of before device keys, nobody can add unsigned segments under its id.
    let mut unsigned: Vec<Head> = local
        .heads()?
        .into_iter()
        .filter(|head| head.device == device)
        .collect();
    // The staged segment's parent stays a tip too: if the staged one never goes up under this
    // id (a copy that forks off reseals it), the parent still reaches what went up before it.
    if let Some(pending) = &pending
        && let Some(name) = crate::sync::segment::parse_segment_name(&pending.name)
    {
        unsigned.push(Head {
            device,
            seq: pending.seq,
            tag: name.tag,
            hash: pending.hash,
        });
    }
    // More tips than an add may name (a tree forked that often is no device's): none named,
    // and its unsigned segments are taken as before tips existed.
    if unsigned.len() > crate::sync::roster::MAX_UNSIGNED_TIPS {
        unsigned.clear();
    }
    local.set_meta(
        META_UNSIGNED_TIPS,
        &crate::sync::names::encode_heads(&unsigned),
    )?;
    local.set_meta(META_FIRST_SIGNED_SEQ, &first.to_be_bytes())?;
    Ok(first)
}

/// The tips of the segments this device wrote before it signed (see [`first_signed_seq`]);
/// empty when it signs from its first segment or its state did not record them.
pub(super) fn unsigned_tips(local: &LocalState) -> Result<Vec<Head>> {
    let Some(bytes) = local.meta(META_UNSIGNED_TIPS)? else {
        return Ok(Vec::new());
    };
    crate::sync::names::decode_heads(&bytes, |_| {
        Error::LocalState("damaged unsigned tips".into())
    })
}

/// The id and keys this state directory held before it forked off, if it did.
pub(super) fn copied(
    local: &LocalState,
    keys: &VaultKeys,
) -> Result<Option<(crate::sync::DeviceId, DeviceSecrets)>> {
    let (Some(id), Some(sealed)) = (
        local.meta(META_COPIED_DEVICE_ID)?,
        local.meta(META_COPIED_DEVICE_SECRETS)?,
    ) else {
        return Ok(None);
    };
    let id: [u8; 16] = id
        .try_into()
        .map_err(|_| Error::LocalState("damaged copied device id".into()))?;
    Ok(Some((crate::sync::DeviceId(id), open(keys, &sealed)?)))
}

impl Vault {
    /// This device's public keys: X25519 (keys are sealed to it) and Ed25519 (it signs what it
    /// writes). They change only when a copied state directory forks off as a new device.
    pub fn device_keys(&self) -> Result<DevicePublicKeys> {
        // The id's lock first, as `fork_off` takes them, so id and keys are read as one.
        let _device = lock(&self.device)?;
        Ok(lock(&self.device_secrets)?.public())
    }

    /// This device's id and a copy of its keys, read as one (the id's lock first, as
    /// `fork_off` takes them): what it signs is signed with the key of the id it writes under.
    pub(super) fn device_and_signer(&self) -> Result<(crate::sync::DeviceId, DeviceSecrets)> {
        let device = lock(&self.device)?;
        let signer = copy(&*lock(&self.device_secrets)?);
        Ok((*device, signer))
    }
}
