//! The key tree: every vault key is derived from the recovery key by HKDF-SHA256.
//!
//! ```text
//! PRK        = HKDF-Extract(salt = "chatvault/v1", IKM = recovery key (32 bytes))
//! vault id   = HKDF-Expand(PRK, "chatvault/v1/vault-id",    16)   public: names the vault prefix
//! keyring    = HKDF-Expand(PRK, "chatvault/v1/keyring",     32)   seals the keyring of chat keys
//! log        = HKDF-Expand(PRK, "chatvault/v1/log",         32)   seals operation logs and indexes
//! naming     = HKDF-Expand(PRK, "chatvault/v1/naming",      32)   keys the hashes that name objects
//! attachment = HKDF-Expand(PRK, "chatvault/v1/attachment",  32)   seals attachment content
//! device-link= HKDF-Expand(PRK, "chatvault/v1/device-link", 32)   seals device records
//!
//! RPRK             = HKDF-Extract(salt = "chatvault/v2/recovery", IKM = recovery key)
//! recovery-agreement = HKDF-Expand(RPRK, "chatvault/v2/recovery-agreement", 32)   X25519
//! recovery-signing = HKDF-Expand(RPRK, "chatvault/v2/recovery-signing", 32)
//! ```
//!
//! The recovery key's own keys come from a second extract, not from `PRK`: `PRK` is epoch 0's
//! secret, which every device of the vault holds (linked ones through the epoch chain), while only
//! the holder of the recovery key may sign as it or open what is wrapped for it.
//!
//! Labels carry the format version, so a future version derives unrelated keys. The labels are
//! listed in [`DERIVATION_LABELS`] and [`RECOVERY_LABELS`] and pinned by
//! `tests/vectors/hkdf.json`.

use hkdf::Hkdf;
use hmac::Mac;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::secret::key_type;
use super::{Key32, RecoveryKey};

/// The HKDF-Extract salt of format version 1.
pub const HKDF_SALT: &[u8] = b"chatvault/v1";

/// The HKDF-Extract salt of the recovery key's own keys ([`RECOVERY_LABELS`]).
pub const RECOVERY_SALT: &[u8] = b"chatvault/v2/recovery";

const LABEL_VAULT_ID: &str = "chatvault/v1/vault-id";
const LABEL_KEYRING: &str = "chatvault/v1/keyring";
const LABEL_LOG: &str = "chatvault/v1/log";
const LABEL_NAMING: &str = "chatvault/v1/naming";
const LABEL_ATTACHMENT: &str = "chatvault/v1/attachment";
const LABEL_DEVICE_LINK: &str = "chatvault/v1/device-link";
const LABEL_RECOVERY_AGREEMENT: &str = "chatvault/v2/recovery-agreement";
const LABEL_RECOVERY_SIGNING: &str = "chatvault/v2/recovery-signing";

/// Every HKDF-Expand info label of the key tree (expanded from `PRK`, salt [`HKDF_SALT`]), with
/// its output length in bytes.
pub const DERIVATION_LABELS: &[(&str, usize)] = &[
    (LABEL_VAULT_ID, 16),
    (LABEL_KEYRING, 32),
    (LABEL_LOG, 32),
    (LABEL_NAMING, 32),
    (LABEL_ATTACHMENT, 32),
    (LABEL_DEVICE_LINK, 32),
];

/// The labels of the recovery key's own keys (expanded from `RPRK`, salt [`RECOVERY_SALT`]).
pub const RECOVERY_LABELS: &[(&str, usize)] =
    &[(LABEL_RECOVERY_AGREEMENT, 32), (LABEL_RECOVERY_SIGNING, 32)];

/// The public identifier of a vault, derived one-way from the recovery key.
///
/// It names the vault's prefix in the bucket (as 32 lower-case hex characters), so a new phone
/// needs only the recovery key and the bucket to find the vault. It reveals nothing about the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultId([u8; 16]);

impl VaultId {
    /// The 16 bytes, as bound into every sealed object's associated data.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds a vault id from 16 bytes (for decoding; new vault ids come from [`VaultKeys`]).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        VaultId(bytes)
    }

    /// The bucket prefix form: 32 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

impl core::fmt::Display for VaultId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl core::fmt::Debug for VaultId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "VaultId({})", self.to_hex())
    }
}

key_type!(
    /// Seals the [`Keyring`](crate::keyring::Keyring) of per-chat keys.
    KeyringKey
);
key_type!(
    /// Seals device operation logs and checkpoint indexes.
    LogKey
);
key_type!(
    /// Keys the HMAC that turns plaintext identifiers into object names, so the bucket never sees
    /// a chat id or message id.
    NamingKey
);
key_type!(
    /// Seals attachment content.
    AttachmentKey
);
key_type!(
    /// Seals device records (which devices belong to the vault).
    DeviceLinkKey
);

impl NamingKey {
    /// The object name for `id` in namespace `namespace`: the first 16 bytes of
    /// HMAC-SHA256(naming key, namespace || 0x00 || id), as 32 lower-case hex characters.
    pub fn object_name(&self, namespace: &str, id: &[u8]) -> String {
        let mut mac = self.0.hmac();
        mac.update(namespace.as_bytes());
        mac.update(&[0]);
        mac.update(id);
        crate::hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// All keys of one vault, derived from its recovery key.
#[derive(Clone)]
pub struct VaultKeys {
    vault_id: VaultId,
    keyring: KeyringKey,
    log: LogKey,
    naming: NamingKey,
    attachment: AttachmentKey,
    device_link: DeviceLinkKey,
}

key_type!(
    /// The secret of one key epoch (docs/DEVICES.md): the key tree of the epoch is expanded from
    /// it as from the recovery key's PRK. Epoch 0's secret *is* that PRK, so a vault written before
    /// epochs is a vault in epoch 0.
    EpochSecret
);

impl EpochSecret {
    /// A fresh random epoch secret.
    pub fn generate() -> crate::error::Result<Self> {
        Ok(EpochSecret(Key32::new(crate::random::array()?)))
    }

    /// Epoch 0's secret: the recovery key's PRK (`HKDF-Extract("chatvault/v1", recovery key)`).
    pub fn epoch_zero(recovery_key: &RecoveryKey) -> Self {
        use zeroize::Zeroize;
        let (mut prk, _) = Hkdf::<Sha256>::extract(Some(HKDF_SALT), recovery_key.secret().bytes());
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&prk);
        prk.as_mut_slice().zeroize();
        EpochSecret(Key32::new(*bytes))
    }

    /// The vault id this secret derives when it is epoch 0's (the recovery key's PRK): a device
    /// that receives epoch 0's secret checks it against the vault it joins.
    pub(crate) fn epoch_zero_vault_id(&self) -> VaultId {
        VaultId(*expand::<16>(&self.hkdf(), LABEL_VAULT_ID))
    }

    /// The secret from its 32 bytes (as an epoch box holds them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EpochSecret(Key32::new(bytes))
    }

    /// The 32 bytes, for sealing into a box.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.0.bytes()
    }

    /// A key of this epoch's own, beside its key tree (e.g. the chain to the previous epoch).
    pub(crate) fn expand(&self, label: &str) -> Key32 {
        Key32::new(*expand::<32>(&self.hkdf(), label))
    }

    fn hkdf(&self) -> Hkdf<Sha256> {
        // A 32-byte PRK is the size HKDF-SHA256 requires: `from_prk` cannot fail; an all-zero
        // PRK (never drawn) would only be reached if it did.
        Hkdf::<Sha256>::from_prk(self.0.bytes())
            .unwrap_or_else(|_| Hkdf::<Sha256>::new(None, self.0.bytes()))
    }
}

/// The Ed25519 seed of the recovery signing key (`chatvault/v2/recovery-signing`): the roster's
/// root of trust, which signs what the recovery key decides (adding the first device, revoking,
/// rotating). Its public key is what linked devices receive instead of the recovery key.
pub(crate) fn recovery_signing_seed(recovery_key: &RecoveryKey) -> Zeroizing<[u8; 32]> {
    expand::<32>(&recovery_hkdf(recovery_key), LABEL_RECOVERY_SIGNING)
}

/// The X25519 secret of the recovery key (`chatvault/v2/recovery-agreement`): every epoch's
/// secret is boxed to its public key, so the recovery key alone opens every epoch, and a device
/// that holds only the public key (a linked one) can still box a new epoch to it.
pub(crate) fn recovery_agreement_seed(recovery_key: &RecoveryKey) -> Zeroizing<[u8; 32]> {
    expand::<32>(&recovery_hkdf(recovery_key), LABEL_RECOVERY_AGREEMENT)
}

/// `RPRK`: the recovery key's own branch, apart from `PRK` (epoch 0's secret, which devices hold).
fn recovery_hkdf(recovery_key: &RecoveryKey) -> Hkdf<Sha256> {
    Hkdf::<Sha256>::new(Some(RECOVERY_SALT), recovery_key.secret().bytes())
}

impl VaultKeys {
    /// Derives the whole key tree from a recovery key (cheap: a few HMACs).
    pub fn derive(recovery_key: &RecoveryKey) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), recovery_key.secret().bytes());
        let vault_id = VaultId(*expand::<16>(&hkdf, LABEL_VAULT_ID));
        Self::from_hkdf(vault_id, &hkdf)
    }

    /// The key tree of an epoch of the vault `vault_id` (its id never changes: the first
    /// recovery key's). For epoch 0's secret this is [`VaultKeys::derive`] of the recovery key.
    pub fn for_epoch(vault_id: VaultId, secret: &EpochSecret) -> Self {
        Self::from_hkdf(vault_id, &secret.hkdf())
    }

    fn from_hkdf(vault_id: VaultId, hkdf: &Hkdf<Sha256>) -> Self {
        let key = |label: &str| Key32::new(*expand::<32>(hkdf, label));
        VaultKeys {
            vault_id,
            keyring: KeyringKey(key(LABEL_KEYRING)),
            log: LogKey(key(LABEL_LOG)),
            naming: NamingKey(key(LABEL_NAMING)),
            attachment: AttachmentKey(key(LABEL_ATTACHMENT)),
            device_link: DeviceLinkKey(key(LABEL_DEVICE_LINK)),
        }
    }

    /// The vault's public identifier.
    pub fn vault_id(&self) -> &VaultId {
        &self.vault_id
    }

    /// The keyring key.
    pub fn keyring(&self) -> &KeyringKey {
        &self.keyring
    }

    /// The log and index key.
    pub fn log(&self) -> &LogKey {
        &self.log
    }

    /// The object-naming key.
    pub fn naming(&self) -> &NamingKey {
        &self.naming
    }

    /// The attachment key.
    pub fn attachment(&self) -> &AttachmentKey {
        &self.attachment
    }

    /// The device-linking key.
    pub fn device_link(&self) -> &DeviceLinkKey {
        &self.device_link
    }
}

impl core::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VaultKeys")
            .field("vault_id", &self.vault_id)
            .finish_non_exhaustive()
    }
}

/// HKDF-Expand of `N` bytes. `N` is at most 32 here, far below HKDF-SHA256's 8160-byte limit, so
/// the expansion cannot fail; a zero output would be returned if it ever did.
fn expand<const N: usize>(hkdf: &Hkdf<Sha256>, label: &str) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    let _ = hkdf.expand(label.as_bytes(), &mut out[..]);
    out
}

/// HKDF-SHA256 in one call, for the test-vector generator.
#[cfg(test)]
pub(crate) fn hkdf_sha256_for_vectors(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    length: usize,
) -> Vec<u8> {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = vec![0u8; length];
    hkdf.expand(info, &mut out).unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_deterministic() {
        let rk = RecoveryKey::from_bytes([1u8; 32]);
        let a = VaultKeys::derive(&rk);
        let b = VaultKeys::derive(&rk);
        assert_eq!(a.vault_id(), b.vault_id());
        let all = [
            a.keyring().0.bytes(),
            a.log().0.bytes(),
            a.naming().0.bytes(),
            a.attachment().0.bytes(),
            a.device_link().0.bytes(),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
        let other = VaultKeys::derive(&RecoveryKey::from_bytes([2u8; 32]));
        assert_ne!(other.vault_id(), a.vault_id());
        assert_ne!(other.keyring().0.bytes(), a.keyring().0.bytes());
    }

    #[test]
    fn derivation_matches_the_documented_hkdf() {
        let rk = RecoveryKey::from_bytes([9u8; 32]);
        let keys = VaultKeys::derive(&rk);
        assert_eq!(
            &keys.vault_id().as_bytes()[..],
            &hkdf_sha256_for_vectors(&[9u8; 32], HKDF_SALT, LABEL_VAULT_ID.as_bytes(), 16)[..]
        );
        assert_eq!(
            &keys.naming().0.bytes()[..],
            &hkdf_sha256_for_vectors(&[9u8; 32], HKDF_SALT, LABEL_NAMING.as_bytes(), 32)[..]
        );
    }

    #[test]
    fn the_recovery_keys_own_keys_do_not_come_from_epoch_zeros_secret() {
        // Every device holds epoch 0's secret (PRK); what only the recovery key may do must not
        // be derivable from it.
        let rk = RecoveryKey::from_bytes([9u8; 32]);
        let epoch_zero = EpochSecret::epoch_zero(&rk);
        let seed = recovery_signing_seed(&rk);
        assert_ne!(epoch_zero.expand(LABEL_RECOVERY_SIGNING).bytes(), &*seed);
        assert_eq!(
            &*seed,
            &hkdf_sha256_for_vectors(
                &[9u8; 32],
                RECOVERY_SALT,
                LABEL_RECOVERY_SIGNING.as_bytes(),
                32
            )[..]
        );
        let agreement = recovery_agreement_seed(&rk);
        assert_ne!(
            epoch_zero.expand(LABEL_RECOVERY_AGREEMENT).bytes(),
            &*agreement
        );
        assert_eq!(
            &*agreement,
            &hkdf_sha256_for_vectors(
                &[9u8; 32],
                RECOVERY_SALT,
                LABEL_RECOVERY_AGREEMENT.as_bytes(),
                32
            )[..]
        );
    }

    #[test]
    fn object_names_are_keyed_and_namespaced() {
        let keys = VaultKeys::derive(&RecoveryKey::from_bytes([3u8; 32]));
        let other = VaultKeys::derive(&RecoveryKey::from_bytes([4u8; 32]));
        let name = keys.naming().object_name("chat", b"family");
        assert_eq!(name.len(), 32);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(name, keys.naming().object_name("pack", b"family"));
        assert_ne!(name, keys.naming().object_name("chat", b"family2"));
        assert_ne!(name, other.naming().object_name("chat", b"family"));
        // Namespace and id are separated: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(
            keys.naming().object_name("ab", b"c"),
            keys.naming().object_name("a", b"bc")
        );
    }

    #[test]
    fn debug_is_redacted() {
        let keys = VaultKeys::derive(&RecoveryKey::from_bytes([5u8; 32]));
        let text = format!("{keys:?} {:?} {:?}", keys.keyring(), keys.naming());
        assert!(text.contains("<redacted>") || text.contains(".."));
        assert!(!text.contains("Key32(["));
        assert_eq!(format!("{:?}", keys.log()), "LogKey(<redacted>)");
    }
}
