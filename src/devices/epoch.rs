//! Epoch objects: one epoch's secret, boxed for every active device and for the recovery key,
//! with the previous epoch's secret chained under it (docs/DEVICES.md; FORMAT.md section 13).
//!
//! ```text
//! object = "CVLT" || 0x02 (version) || 0x00 (no suite: the body holds only boxes)
//!          || 0x0a (kind) || epoch (1) || body
//! body   = protobuf EpochKeys { epoch, boxes: [{device_id, box}], recovery_box, previous }
//! box             = key box (section 13) of the secret to the device's X25519 key,
//!                   context = "chatvault/v2/epoch-box" || name || device id
//! recovery_box    = key box (section 13) of the secret to the recovery key's X25519 key,
//!                   context = "chatvault/v2/epoch-recovery-box" || name
//! previous        = nonce (24) || XChaCha20-Poly1305(HKDF-Expand(secret, "chatvault/v2/epoch-chain"),
//!                                                    nonce, aad = name, previous secret)
//! ```
//!
//! The object is not sealed as a whole: nothing in it is readable without a key that opens one of
//! its boxes, and each box names the object and its recipient, so a box moved to another epoch
//! object or another device's slot does not open. A bucket can drop a box (that device then
//! cannot read the epoch and says so), not swap one.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use prost::Message as _;
use zeroize::Zeroizing;

use super::DeviceSecrets;
use super::sealed_box::{open_box, seal_to_with_ephemeral};
use crate::error::{DecodeProblem, Error, Result};
use crate::format::{ObjectKind, proto};
use crate::keys::{EpochSecret, Key32};

/// The largest epoch object a reader accepts (a box per device: room for thousands).
pub const MAX_EPOCH_OBJECT: usize = 256 * 1024;

const MAGIC: &[u8; 4] = b"CVLT";
const VERSION: u8 = 2;
const HEADER_LEN: usize = 8;
const BOX_LABEL: &[u8] = b"chatvault/v2/epoch-box";
const RECOVERY_BOX_LABEL: &[u8] = b"chatvault/v2/epoch-recovery-box";
const CHAIN_LABEL: &str = "chatvault/v2/epoch-chain";
const NONCE_LEN: usize = 24;

/// What a new epoch object holds.
pub struct NewEpoch<'a> {
    /// Its name in the vault (`epochs/...`): bound into every box.
    pub name: &'a str,
    /// Its number (1-255; 0 is the recovery key's own).
    pub epoch: u8,
    /// Its secret.
    pub secret: &'a EpochSecret,
    /// The previous epoch's secret (chained under this one).
    pub previous: &'a EpochSecret,
    /// Every active device: id and X25519 public key.
    pub devices: &'a [([u8; 16], [u8; 32])],
    /// The recovery key's X25519 public key
    /// ([`recovery_agreement_key`](super::recovery_agreement_key)).
    pub recovery: &'a [u8; 32],
}

fn malformed(why: &str) -> Error {
    Error::Decode {
        kind: ObjectKind::Epoch,
        problem: DecodeProblem::Malformed(why.to_owned()),
    }
}

fn box_context(name: &str, device: &[u8; 16]) -> Vec<u8> {
    [BOX_LABEL, name.as_bytes(), device].concat()
}

fn recovery_context(name: &str) -> Vec<u8> {
    [RECOVERY_BOX_LABEL, name.as_bytes()].concat()
}

fn aead(key: &Key32, nonce: &[u8; NONCE_LEN], name: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
    let sealed = XChaCha20Poly1305::new(key.bytes().into())
        .encrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| Error::InvalidInput("epoch secret too long".into()))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn open_aead(key: &Key32, name: &str, sealed: &[u8]) -> Result<EpochSecret> {
    let failed = || Error::Decode {
        kind: ObjectKind::Epoch,
        problem: DecodeProblem::AuthenticationFailed,
    };
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or_else(failed)?;
    let nonce = XNonce::try_from(nonce).map_err(|_| failed())?;
    let opened = Zeroizing::new(
        XChaCha20Poly1305::new(key.bytes().into())
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| failed())?,
    );
    secret_of(&opened)
}

fn secret_of(bytes: &[u8]) -> Result<EpochSecret> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| malformed("an epoch secret of another length"))?;
    Ok(EpochSecret::from_bytes(array))
}

/// The epoch number in an epoch object's name, `epochs/<n 016x>-<tag 016x>` (lower-case hex, a
/// non-zero tag).
pub fn epoch_in_name(name: &str) -> Option<u64> {
    let (number, tag) = name.strip_prefix("epochs/")?.split_once('-')?;
    let parse = |text: &str| -> Option<u64> {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(u64::from_be_bytes(crate::hex::decode::<8>(text)?))
    };
    let (number, tag) = (parse(number)?, parse(tag)?);
    (tag != 0).then_some(number)
}

/// SHA-256 of an epoch object: what the roster entry that starts the epoch names, so that a
/// reader takes no other object as the epoch's (an unsigned object anyone with the devices'
/// public keys could make).
pub fn epoch_object_hash(object: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(object).into()
}

/// Seals a new epoch object.
pub fn seal_epoch(new: &NewEpoch<'_>) -> Result<Vec<u8>> {
    seal_epoch_with(new, &mut || crate::random::array::<32>())
}

/// [`seal_epoch`] drawing ephemeral keys and nonces (the first 24 bytes) from `random`: the
/// test vectors pass fixed ones.
pub(crate) fn seal_epoch_with(
    new: &NewEpoch<'_>,
    random: &mut dyn FnMut() -> Result<[u8; 32]>,
) -> Result<Vec<u8>> {
    if new.epoch == 0 {
        return Err(Error::InvalidInput(
            "epoch 0 is the recovery key's own and has no object".into(),
        ));
    }
    let mut boxes = Vec::with_capacity(new.devices.len());
    for (device, agreement) in new.devices {
        let ephemeral = Zeroizing::new(random()?);
        boxes.push(proto::EpochBox {
            device_id: device.to_vec(),
            r#box: seal_to_with_ephemeral(
                &ephemeral,
                agreement,
                &box_context(new.name, device),
                new.secret.bytes(),
            )?,
        });
    }
    let nonce = |random: &mut dyn FnMut() -> Result<[u8; 32]>| -> Result<[u8; NONCE_LEN]> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&random()?[..NONCE_LEN]);
        Ok(nonce)
    };
    let recovery_box = seal_to_with_ephemeral(
        &Zeroizing::new(random()?),
        new.recovery,
        &recovery_context(new.name),
        new.secret.bytes(),
    )?;
    let previous = aead(
        &new.secret.expand(CHAIN_LABEL),
        &nonce(random)?,
        new.name,
        new.previous.bytes(),
    )?;
    let body = proto::EpochKeys {
        epoch: u32::from(new.epoch),
        boxes,
        recovery_box,
        previous,
    }
    .encode_to_vec();
    let mut object = Vec::with_capacity(HEADER_LEN + body.len());
    object.extend_from_slice(MAGIC);
    object.extend_from_slice(&[VERSION, 0, ObjectKind::Epoch.id(), new.epoch]);
    object.extend_from_slice(&body);
    Ok(object)
}

/// An epoch object, decoded (nothing opened yet).
#[derive(Debug, Clone)]
pub struct EpochObject {
    name: String,
    /// Its epoch number.
    pub epoch: u8,
    body: proto::EpochKeys,
}

impl EpochObject {
    /// Decodes the object stored under `name`: header, size and fields.
    pub fn decode(name: &str, object: &[u8]) -> Result<Self> {
        let fail = |problem| Error::Decode {
            kind: ObjectKind::Epoch,
            problem,
        };
        if object.len() > MAX_EPOCH_OBJECT {
            return Err(fail(DecodeProblem::TooLarge {
                len: object.len() as u64,
                max: MAX_EPOCH_OBJECT as u64,
            }));
        }
        let (header, body) =
            object
                .split_at_checked(HEADER_LEN)
                .ok_or(fail(DecodeProblem::Truncated {
                    needed: HEADER_LEN,
                    got: object.len(),
                }))?;
        if &header[..4] != MAGIC {
            return Err(fail(DecodeProblem::BadMagic));
        }
        if header[4] != VERSION {
            return Err(fail(DecodeProblem::UnsupportedVersion(header[4])));
        }
        if header[5] != 0 {
            return Err(fail(DecodeProblem::UnsupportedSuite(header[5])));
        }
        if header[6] != ObjectKind::Epoch.id() {
            return Err(fail(DecodeProblem::WrongKind {
                expected: ObjectKind::Epoch.id(),
                found: header[6],
            }));
        }
        let body = crate::format::decode_body::<proto::EpochKeys>(ObjectKind::Epoch, body)?;
        // The number in the name, the header and the body agree (the boxes bind the name).
        let named = epoch_in_name(name).ok_or_else(|| malformed("not an epoch object's name"))?;
        if body.epoch != u32::from(header[7]) || header[7] == 0 || u64::from(header[7]) != named {
            return Err(malformed("epoch number"));
        }
        let mut ids: Vec<&[u8]> = body.boxes.iter().map(|b| b.device_id.as_slice()).collect();
        if ids.iter().any(|id| id.len() != 16) {
            return Err(malformed("device id"));
        }
        ids.sort();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(malformed("two boxes for one device"));
        }
        Ok(EpochObject {
            name: name.to_owned(),
            epoch: header[7],
            body,
        })
    }

    /// The devices it has a box for.
    pub fn devices(&self) -> Vec<[u8; 16]> {
        self.body
            .boxes
            .iter()
            .filter_map(|b| b.device_id.as_slice().try_into().ok())
            .collect()
    }

    /// Opens the secret with this device's keys. `Ok(None)` if the object has no box for it (it
    /// was not active when the epoch started: revoked, or linked later and given its box
    /// elsewhere).
    pub fn open_as_device(
        &self,
        device: &[u8; 16],
        secrets: &DeviceSecrets,
    ) -> Result<Option<EpochSecret>> {
        let Some(found) = self.body.boxes.iter().find(|b| b.device_id == device) else {
            return Ok(None);
        };
        let opened = open_box(
            secrets,
            ObjectKind::Epoch,
            &box_context(&self.name, device),
            &found.r#box,
        )?;
        secret_of(&opened).map(Some)
    }

    /// Opens the secret with the recovery key's own keys
    /// ([`RecoverySigner::recovery_secrets`](super::RecoverySigner::recovery_secrets)).
    pub fn open_with_recovery(&self, recovery: &DeviceSecrets) -> Result<EpochSecret> {
        let opened = open_box(
            recovery,
            ObjectKind::Epoch,
            &recovery_context(&self.name),
            &self.body.recovery_box,
        )?;
        secret_of(&opened)
    }

    /// The previous epoch's secret, with this epoch's.
    pub fn previous(&self, secret: &EpochSecret) -> Result<EpochSecret> {
        open_aead(&secret.expand(CHAIN_LABEL), &self.name, &self.body.previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RecoveryKey;

    const NAME: &str = "epochs/0000000000000001-00000000000000aa";

    fn authentication_failed<T: core::fmt::Debug>(result: Result<T>) -> bool {
        matches!(
            result,
            Err(Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            })
        )
    }

    #[test]
    fn each_device_the_recovery_key_and_the_chain_open_an_epoch() {
        let recovery = RecoveryKey::from_bytes([3; 32]);
        let wrap = super::super::RecoverySigner::recovery_secrets(&recovery);
        let zero = EpochSecret::epoch_zero(&recovery);
        let one = EpochSecret::generate().unwrap();
        let (a, b, revoked) = (
            DeviceSecrets::from_bytes(&[1; 64]),
            DeviceSecrets::from_bytes(&[2; 64]),
            DeviceSecrets::from_bytes(&[4; 64]),
        );
        let object = seal_epoch(&NewEpoch {
            name: NAME,
            epoch: 1,
            secret: &one,
            previous: &zero,
            devices: &[
                ([1; 16], a.public().agreement),
                ([2; 16], b.public().agreement),
            ],
            recovery: &wrap.public().agreement,
        })
        .unwrap();
        let decoded = EpochObject::decode(NAME, &object).unwrap();
        assert_eq!(decoded.epoch, 1);
        assert_eq!(decoded.devices(), [[1; 16], [2; 16]]);
        for (id, secrets) in [([1; 16], &a), ([2; 16], &b)] {
            let opened = decoded.open_as_device(&id, secrets).unwrap().unwrap();
            assert_eq!(opened.bytes(), one.bytes());
        }
        assert_eq!(
            decoded.open_with_recovery(&wrap).unwrap().bytes(),
            one.bytes()
        );
        assert_eq!(decoded.previous(&one).unwrap().bytes(), zero.bytes());
        // A device without a box, a box opened under another device's slot, another recovery
        // key, the object under another name: nothing opens.
        assert!(
            decoded
                .open_as_device(&[4; 16], &revoked)
                .unwrap()
                .is_none()
        );
        assert!(authentication_failed(decoded.open_as_device(&[1; 16], &b)));
        let other =
            super::super::RecoverySigner::recovery_secrets(&RecoveryKey::from_bytes([5; 32]));
        assert!(authentication_failed(decoded.open_with_recovery(&other)));
        // Under the name of another epoch it does not decode; under another tag its boxes fail.
        assert!(EpochObject::decode("epochs/0000000000000002-00000000000000aa", &object).is_err());
        assert!(EpochObject::decode("epochs/elsewhere", &object).is_err());
        let renamed =
            EpochObject::decode("epochs/0000000000000001-00000000000000bb", &object).unwrap();
        assert!(authentication_failed(renamed.open_with_recovery(&wrap)));
        assert!(authentication_failed(renamed.open_as_device(&[1; 16], &a)));
        assert_ne!(epoch_object_hash(&object), [0; 32]);
    }

    #[test]
    fn epoch_zero_is_the_recovery_keys_own_key_tree() {
        let recovery = RecoveryKey::from_bytes([3; 32]);
        let derived = crate::keys::VaultKeys::derive(&recovery);
        let zero = crate::keys::VaultKeys::for_epoch(
            *derived.vault_id(),
            &EpochSecret::epoch_zero(&recovery),
        );
        assert_eq!(zero.log().0.bytes(), derived.log().0.bytes());
        assert_eq!(zero.naming().0.bytes(), derived.naming().0.bytes());
        assert_eq!(zero.keyring().0.bytes(), derived.keyring().0.bytes());
        assert_eq!(zero.attachment().0.bytes(), derived.attachment().0.bytes());
        let one = crate::keys::VaultKeys::for_epoch(
            *derived.vault_id(),
            &EpochSecret::generate().unwrap(),
        );
        assert_ne!(one.log().0.bytes(), derived.log().0.bytes());
        assert_eq!(one.vault_id(), derived.vault_id());
    }

    #[test]
    fn broken_epoch_objects_are_refused() {
        let recovery = RecoveryKey::from_bytes([3; 32]);
        let one = EpochSecret::generate().unwrap();
        let object = seal_epoch(&NewEpoch {
            name: NAME,
            epoch: 1,
            secret: &one,
            previous: &EpochSecret::epoch_zero(&recovery),
            devices: &[],
            recovery: &super::super::recovery_agreement_key(&recovery),
        })
        .unwrap();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for at in 0..8 {
            let mut bad = object.clone();
            bad[at] ^= 0x40;
            cases.push(bad);
        }
        cases.push(object[..5].to_vec());
        cases.push([object.as_slice(), &vec![0; MAX_EPOCH_OBJECT]].concat());
        for bad in cases {
            assert!(
                matches!(EpochObject::decode(NAME, &bad), Err(Error::Decode { .. })),
                "{:?}",
                &bad[..8.min(bad.len())]
            );
        }
        assert!(matches!(
            seal_epoch(&NewEpoch {
                name: NAME,
                epoch: 0,
                secret: &one,
                previous: &one,
                devices: &[],
                recovery: &super::super::recovery_agreement_key(&recovery),
            }),
            Err(Error::InvalidInput(_))
        ));
    }
}
