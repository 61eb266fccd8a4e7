//! The device key of a device that joined by a link, and what it seals in the state directory.
//!
//! A linked device holds no recovery key, so nothing derives the keys its state needs. It keeps
//! them in one file of its state directory, `device-keys.sealed`, sealed under a 32-byte device
//! key the app keeps in the Keychain (`kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`) or the
//! Android Keystore, never in an OS backup: a backup restored onto another phone must not carry a
//! working identity.
//!
//! ```text
//! file      = version (1) = 1 || nonce (24) || XChaCha20-Poly1305(device key, nonce,
//!                                                aad = "chatvault/v2/device-state", plaintext)
//! plaintext = vault id (16) || roster root (32) || epoch (1) || epoch secret (32)
//!             || device id (16) || device secrets (64) || recovery X25519 public key (32)
//! ```

use std::io::Write as _;
use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::devices::DeviceSecrets;
use crate::error::{Error, Result};
use crate::keys::{EpochSecret, Key32, VaultId};
use crate::sync::DeviceId;

const FILE: &str = "device-keys.sealed";
const LABEL: &[u8] = b"chatvault/v2/device-state";
const VERSION: u8 = 1;
const PLAINTEXT_LEN: usize = 16 + 32 + 1 + 32 + 16 + 64 + 32;

/// The key that opens a linked device's state. Wiped on drop; `Debug` shows nothing of it.
pub struct DeviceKey(Key32);

impl DeviceKey {
    /// A new random device key (draw one per device, when it joins).
    pub fn generate() -> Result<Self> {
        Ok(DeviceKey(Key32::new(crate::random::array()?)))
    }

    /// A device key from its 32 bytes, as the app stored them.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DeviceKey(Key32::new(bytes))
    }

    /// Its 32 bytes, for the Keychain / Keystore.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.0.bytes())
    }

    /// As 64 lower-case hex digits (for a key file).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(crate::hex::encode(self.0.bytes()))
    }

    /// From exactly 64 hex digits (white space around them ignored); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::decode::<32>(text.trim()).map(|bytes| DeviceKey(Key32::new(bytes)))
    }
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// What a linked device keeps under its device key.
pub(super) struct Held {
    pub(super) vault_id: VaultId,
    pub(super) roster_root: [u8; 32],
    pub(super) epoch: u8,
    pub(super) epoch_secret: EpochSecret,
    pub(super) device: DeviceId,
    pub(super) secrets: DeviceSecrets,
    pub(super) recovery_agreement_key: [u8; 32],
}

/// Whether `state_dir` holds a linked device's keys.
pub(super) fn exists(state_dir: &Path) -> bool {
    state_dir.join(FILE).exists()
}

/// Whether `state_dir` holds a device that joined by a link (and opens with
/// [`Vault::open_device`](super::Vault::open_device)).
pub fn holds_linked_device(state_dir: &Path) -> bool {
    exists(state_dir)
}

/// Seals `held` under `key` into `state_dir`, atomically (a crash leaves the old file or the new
/// one, never half of one).
pub(super) fn write(state_dir: &Path, key: &DeviceKey, held: &Held) -> Result<()> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(PLAINTEXT_LEN));
    plaintext.extend_from_slice(held.vault_id.as_bytes());
    plaintext.extend_from_slice(&held.roster_root);
    plaintext.push(held.epoch);
    plaintext.extend_from_slice(held.epoch_secret.bytes());
    plaintext.extend_from_slice(&held.device.0);
    plaintext.extend_from_slice(&held.secrets.to_bytes()[..]);
    plaintext.extend_from_slice(&held.recovery_agreement_key);
    let nonce = crate::random::array::<24>()?;
    let sealed = XChaCha20Poly1305::new(key.0.bytes().into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &plaintext,
                aad: LABEL,
            },
        )
        .map_err(|_| Error::LocalState("cannot seal the device keys".into()))?;
    let mut file = vec![VERSION];
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&sealed);

    let io = |e: std::io::Error| Error::LocalState(format!("cannot write the device keys: {e}"));
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let temporary = state_dir.join(format!("{FILE}.tmp"));
    let mut out = std::fs::File::create(&temporary).map_err(io)?;
    out.write_all(&file).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&temporary, state_dir.join(FILE)).map_err(io)?;
    if let Ok(dir) = std::fs::File::open(state_dir) {
        // Makes the rename durable where the platform allows syncing a directory.
        dir.sync_all().ok();
    }
    Ok(())
}

/// Opens what `key` sealed into `state_dir`.
pub(super) fn read(state_dir: &Path, key: &DeviceKey) -> Result<Held> {
    let path = state_dir.join(FILE);
    let file = match std::fs::read(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::invalid_input(format!(
                "{} holds no linked device (open it with the recovery key, or join by a link)",
                state_dir.display()
            )));
        }
        Err(e) => {
            return Err(Error::LocalState(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    if file.first() != Some(&VERSION) || file.len() < 1 + 24 {
        return Err(Error::LocalState(format!(
            "{} is damaged or of a newer chatvault",
            path.display()
        )));
    }
    let mut nonce = XNonce::default();
    nonce.copy_from_slice(&file[1..25]);
    let plaintext = Zeroizing::new(
        XChaCha20Poly1305::new(key.0.bytes().into())
            .decrypt(
                &nonce,
                Payload {
                    msg: &file[25..],
                    aad: LABEL,
                },
            )
            .map_err(|_| Error::WrongDeviceKey)?,
    );
    if plaintext.len() != PLAINTEXT_LEN {
        return Err(Error::LocalState(format!("{} is damaged", path.display())));
    }
    let take = |at: usize, len: usize| &plaintext[at..at + len];
    let array16 = |at| -> [u8; 16] { take(at, 16).try_into().unwrap_or([0; 16]) };
    let array32 = |at| -> [u8; 32] { take(at, 32).try_into().unwrap_or([0; 32]) };
    let secrets: Zeroizing<[u8; 64]> = Zeroizing::new(take(97, 64).try_into().unwrap_or([0; 64]));
    Ok(Held {
        vault_id: VaultId::from_bytes(array16(0)),
        roster_root: array32(16),
        epoch: plaintext[48],
        epoch_secret: EpochSecret::from_bytes(array32(49)),
        device: DeviceId(array16(81)),
        secrets: DeviceSecrets::from_bytes(&secrets),
        recovery_agreement_key: array32(161),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Held {
        Held {
            vault_id: VaultId::from_bytes([1; 16]),
            roster_root: [2; 32],
            epoch: 3,
            epoch_secret: EpochSecret::from_bytes([4; 32]),
            device: DeviceId([5; 16]),
            secrets: DeviceSecrets::from_bytes(&[6; 64]),
            recovery_agreement_key: [7; 32],
        }
    }

    #[test]
    fn the_device_key_opens_what_it_sealed_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::generate().unwrap();
        assert!(!exists(dir.path()));
        write(dir.path(), &key, &held()).unwrap();
        assert!(exists(dir.path()));
        let read_back = read(dir.path(), &key).unwrap();
        assert_eq!(read_back.vault_id, VaultId::from_bytes([1; 16]));
        assert_eq!(read_back.roster_root, [2; 32]);
        assert_eq!(read_back.epoch, 3);
        assert_eq!(read_back.epoch_secret.bytes(), &[4; 32]);
        assert_eq!(read_back.device, DeviceId([5; 16]));
        assert_eq!(read_back.secrets.to_bytes()[..], [6; 64]);
        assert_eq!(read_back.recovery_agreement_key, [7; 32]);

        let other = DeviceKey::generate().unwrap();
        assert!(matches!(
            read(dir.path(), &other),
            Err(Error::WrongDeviceKey)
        ));
        let path = dir.path().join(FILE);
        let mut file = std::fs::read(&path).unwrap();
        let last = file.len() - 1;
        file[last] ^= 1;
        std::fs::write(&path, &file).unwrap();
        assert!(matches!(read(dir.path(), &key), Err(Error::WrongDeviceKey)));
        std::fs::write(&path, &file[..10]).unwrap();
        assert!(matches!(read(dir.path(), &key), Err(Error::LocalState(_))));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(empty.path(), &key),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(format!("{key:?}"), "DeviceKey(..)");
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        let again = DeviceKey::from_hex(&format!(" {}\n", hex.as_str())).unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());
        assert!(DeviceKey::from_hex(&hex[1..]).is_none());
    }
}
