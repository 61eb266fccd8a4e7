//! A device's signature inside a sealed body: segments and checkpoint indexes (FORMAT.md 9.2
//! and 9.5) both end with field 9, a 64-byte Ed25519 signature over their own encoding.
//!
//! ```text
//! body      = E || 0x4a 0x40 || signature (64)       E: the message without field 9
//! signature = Ed25519 (device key) over label || vault id (16) || u16 BE name length || name
//!             || SHA-256(E)
//! ```
//!
//! The digest is taken over the bytes as they were sent, not a re-encoding, so readers that do
//! not know a later field still check the signature.

use sha2::{Digest, Sha256};

use crate::devices::{DeviceSecrets, SIGNATURE_LEN, verify_ed25519};
use crate::keys::VaultId;

/// What a segment's signature is over.
pub(crate) const SEGMENT_LABEL: &[u8] = b"chatvault/v2/segment";
/// What a checkpoint index's signature is over.
pub(crate) const CHECKPOINT_LABEL: &[u8] = b"chatvault/v2/checkpoint";

/// The protobuf key of field 9 (length-delimited) and the length (64) that end a signed body.
const SIGNATURE_SUFFIX: [u8; 2] = [0x4a, 0x40];

/// A signature as a reader found it: the signature and the SHA-256 of the bytes it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySignature {
    /// The 64 signature bytes.
    pub signature: [u8; SIGNATURE_LEN],
    /// SHA-256 of the body without its signature field.
    pub digest: [u8; 32],
}

impl BodySignature {
    /// Its 96 bytes as a device keeps them: the signature, then the digest.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN + 32] {
        let mut bytes = [0u8; SIGNATURE_LEN + 32];
        bytes[..SIGNATURE_LEN].copy_from_slice(&self.signature);
        bytes[SIGNATURE_LEN..].copy_from_slice(&self.digest);
        bytes
    }

    /// The signature [`to_bytes`](Self::to_bytes) wrote; `None` for bytes of another length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (signature, digest) = bytes.split_at_checked(SIGNATURE_LEN)?;
        Some(BodySignature {
            signature: signature.try_into().ok()?,
            digest: digest.try_into().ok()?,
        })
    }

    /// Whether it verifies under `verifying_key` as `label`'s signature of the object `name` of
    /// `vault` (strict Ed25519: a key that is not a canonical point of prime order never does).
    pub fn verifies(
        &self,
        label: &[u8],
        vault: &VaultId,
        name: &str,
        verifying_key: &[u8; 32],
    ) -> bool {
        verify_ed25519(
            verifying_key,
            &signing_message(label, vault, name, &self.digest),
            &self.signature,
        )
    }
}

fn signing_message(label: &[u8], vault: &VaultId, name: &str, digest: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(label.len() + 16 + 2 + name.len() + 32);
    message.extend_from_slice(label);
    message.extend_from_slice(vault.as_bytes());
    // Names are at most `sealing::MAX_NAME_LEN` (1,024) bytes.
    message.extend_from_slice(&(name.len() as u16).to_be_bytes());
    message.extend_from_slice(name.as_bytes());
    message.extend_from_slice(digest);
    message
}

/// Signs `body` (an encoding without field 9) and appends the signature as field 9.
pub(crate) fn append_signature(
    body: &mut Vec<u8>,
    signer: &DeviceSecrets,
    label: &[u8],
    vault: &VaultId,
    name: &str,
) {
    let digest: [u8; 32] = Sha256::digest(&*body).into();
    let signature = signer.sign(&signing_message(label, vault, name, &digest));
    body.extend_from_slice(&SIGNATURE_SUFFIX);
    body.extend_from_slice(&signature);
}

/// The signature a decoded body carries (`field`: its decoded field 9), checked to be the
/// body's last bytes; `None` when it carries none. `Err` names what is wrong.
pub(crate) fn split_signature(
    body: &[u8],
    field: &[u8],
) -> Result<Option<BodySignature>, &'static str> {
    match field.len() {
        0 => Ok(None),
        SIGNATURE_LEN => {
            // Writers append the signature last; what it covers is everything before it.
            let covered_len = body.len().saturating_sub(2 + SIGNATURE_LEN);
            let (covered, suffix) = body.split_at(covered_len);
            if suffix.get(..2) != Some(&SIGNATURE_SUFFIX[..]) || suffix[2..] != *field {
                return Err("signature not at the end");
            }
            let mut signature = [0u8; SIGNATURE_LEN];
            signature.copy_from_slice(field);
            Ok(Some(BodySignature {
                signature,
                digest: Sha256::digest(covered).into(),
            }))
        }
        _ => Err("signature length"),
    }
}
