//! One device's long-term keys: X25519 for receiving sealed keys, Ed25519 for signing.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{DecodeProblem, Error, Result};
use crate::format::ObjectKind;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A device's secret keys. Wiped on drop; `Debug` prints only the public keys.
pub struct DeviceSecrets {
    agreement: StaticSecret,
    signing: SigningKey,
}

/// A device's public keys, as the roster lists them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevicePublicKeys {
    /// X25519: epoch keys are sealed to it.
    pub agreement: [u8; 32],
    /// Ed25519: verifies what the device signs.
    pub verifying: [u8; 32],
}

impl DeviceSecrets {
    /// Fresh keys from the OS CSPRNG.
    pub fn generate() -> Result<Self> {
        let bytes = Zeroizing::new(crate::random::array::<64>()?);
        Ok(Self::from_bytes(&bytes))
    }

    /// The keys from their 64-byte form: the X25519 secret, then the Ed25519 seed. Any 64 bytes
    /// are valid keys (X25519 clamps its scalar; an Ed25519 seed is any 32 bytes).
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut agreement = Zeroizing::new([0u8; 32]);
        let mut seed = Zeroizing::new([0u8; 32]);
        agreement.copy_from_slice(&bytes[..32]);
        seed.copy_from_slice(&bytes[32..]);
        DeviceSecrets {
            agreement: StaticSecret::from(*agreement),
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 64-byte form ([`DeviceSecrets::from_bytes`]), for the device's sealed local state or
    /// the platform's key store.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.agreement.as_bytes());
        out[32..].copy_from_slice(self.signing.as_bytes());
        out
    }

    /// The public keys.
    pub fn public(&self) -> DevicePublicKeys {
        DevicePublicKeys {
            agreement: PublicKey::from(&self.agreement).to_bytes(),
            verifying: self.signing.verifying_key().to_bytes(),
        }
    }

    /// Signs `message` (Ed25519, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    pub(crate) fn agreement(&self) -> &StaticSecret {
        &self.agreement
    }
}

/// The id a device's Ed25519 key certifies: the first 16 bytes of
/// SHA-256("chatvault/v2/device-id" || verifying key). Devices made since device keys exist take
/// it as their id, so that only the recovery key can add a device under an id its keys do not
/// certify (FORMAT.md section 13, `RosterAdd`).
pub fn self_certified_id(verifying_key: &[u8; 32]) -> [u8; 16] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"chatvault/v2/device-id")
        .chain_update(verifying_key)
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// The recovery key's X25519 public key: every epoch's secret is boxed to it (FORMAT.md section
/// 13), by any device that holds it, with or without the recovery key.
pub fn recovery_agreement_key(recovery_key: &crate::keys::RecoveryKey) -> [u8; 32] {
    RecoverySigner::recovery_secrets(recovery_key)
        .public()
        .agreement
}

/// The recovery key's signer, the roster's root of trust: an Ed25519 key derived from the
/// recovery key (FORMAT.md section 3, `chatvault/v2/recovery-signing`). Wiped on drop.
pub struct RecoverySigner(SigningKey);

impl RecoverySigner {
    /// The signer of `recovery_key`.
    pub fn derive(recovery_key: &crate::keys::RecoveryKey) -> Self {
        RecoverySigner(SigningKey::from_bytes(&crate::keys::recovery_signing_seed(
            recovery_key,
        )))
    }

    /// Its public key (what a linked device receives instead of the recovery key).
    pub fn verifying_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The recovery key's own keys, as a device's: its X25519 key (every epoch's secret is boxed
    /// to it: [`recovery_agreement_key`]) and this signer's Ed25519 key.
    pub fn recovery_secrets(recovery_key: &crate::keys::RecoveryKey) -> DeviceSecrets {
        let mut bytes = Zeroizing::new([0u8; 64]);
        bytes[..32].copy_from_slice(&*crate::keys::recovery_agreement_seed(recovery_key));
        bytes[32..].copy_from_slice(&*crate::keys::recovery_signing_seed(recovery_key));
        DeviceSecrets::from_bytes(&bytes)
    }

    /// Signs `message` (Ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }
}

impl core::fmt::Debug for RecoverySigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "RecoverySigner(public {})",
            crate::hex::encode(&self.verifying_key())
        )
    }
}

impl core::fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceSecrets")
            .field("public", &self.public())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl DevicePublicKeys {
    /// Checks `signature` over `message` with the verifying key. Strict verification: a
    /// non-canonical signature, a small-order key or a key that does not decode is refused, so a
    /// signature has exactly one valid encoding. `kind` names what was signed in the error.
    pub fn verify(
        &self,
        kind: ObjectKind,
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<()> {
        if verify_ed25519(&self.verifying, message, signature) {
            Ok(())
        } else {
            Err(Error::Decode {
                kind,
                problem: DecodeProblem::BadSignature,
            })
        }
    }
}

/// Strict Ed25519 verification of `signature` over `message` under the public key `verifying`
/// (a device's, or the recovery signing key's): see [`DevicePublicKeys::verify`].
pub fn verify_ed25519(
    verifying: &[u8; 32],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    VerifyingKey::from_bytes(verifying).is_ok_and(|key| {
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}

impl core::fmt::Debug for DevicePublicKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "DevicePublicKeys {{ agreement: {}, verifying: {} }}",
            crate::hex::encode(&self.agreement),
            crate::hex::encode(&self.verifying)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_bytes_and_debug_shows_no_secret() {
        let secrets = DeviceSecrets::generate().unwrap();
        let again = DeviceSecrets::from_bytes(&secrets.to_bytes());
        assert_eq!(secrets.public(), again.public());
        let printed = format!("{secrets:?}");
        let secret_hex = crate::hex::encode(&secrets.to_bytes()[..]);
        assert!(!printed.contains(&secret_hex[..16]), "{printed}");
        assert!(!printed.contains(&secret_hex[64..80]), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let secrets = DeviceSecrets::from_bytes(&[7; 64]);
        let other = DeviceSecrets::from_bytes(&[8; 64]);
        let signature = secrets.sign(b"segment");
        let kind = ObjectKind::Segment;
        secrets
            .public()
            .verify(kind, b"segment", &signature)
            .unwrap();
        let refused = |result: Result<()>| {
            matches!(
                result,
                Err(Error::Decode {
                    problem: DecodeProblem::BadSignature,
                    ..
                })
            )
        };
        assert!(refused(
            secrets.public().verify(kind, b"segmenT", &signature)
        ));
        assert!(refused(other.public().verify(kind, b"segment", &signature)));
        let mut flipped = signature;
        flipped[63] ^= 0x10;
        assert!(refused(secrets.public().verify(kind, b"segment", &flipped)));
        // A verifying key that is no curve point, and the identity (small order), are refused.
        let mut broken = secrets.public();
        broken.verifying = [0xff; 32];
        assert!(refused(broken.verify(kind, b"segment", &signature)));
        broken.verifying = [0; 32];
        broken.verifying[0] = 1;
        assert!(refused(broken.verify(kind, b"segment", &signature)));
    }

    #[test]
    fn the_ed25519_half_matches_rfc_8032_test_1() {
        // RFC 8032, section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] =
            crate::hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap();
        let mut bytes = [0u8; 64];
        bytes[32..].copy_from_slice(&seed);
        let secrets = DeviceSecrets::from_bytes(&bytes);
        assert_eq!(
            crate::hex::encode(&secrets.public().verifying),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            crate::hex::encode(&secrets.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }
}
