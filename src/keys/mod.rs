//! Keys: the recovery key a person holds, the tree of keys derived from it, per-chat keys, and the
//! optional passphrase wrapping of the recovery key.
//!
//! Every key kind is its own type, zeroized on drop and redacted in `Debug`. Raw key bytes leave
//! this module only where a test vector or the FFI needs them ([`RecoveryKey::to_bytes`]).

mod chat;
mod epochs;
mod passphrase;
mod recovery;
mod secret;
mod tree;

pub use chat::ChatKey;
pub use epochs::{HeldEpochs, KeyEpochs};
pub use passphrase::{Argon2Params, PassphraseEnvelope, PassphrasePolicy};
pub use recovery::{RECOVERY_KEY_TEXT_CHARS, RecoveryKey};
pub use tree::{
    AttachmentKey, DERIVATION_LABELS, DeviceLinkKey, EpochSecret, HKDF_SALT, KeyringKey, LogKey,
    NamingKey, RECOVERY_LABELS, RECOVERY_SALT, VaultId, VaultKeys,
};
pub(crate) use tree::{recovery_agreement_seed, recovery_signing_seed};

#[cfg(test)]
pub(crate) use recovery::text_with_version as recovery_text_with_version_for_vectors;
pub(crate) use secret::Key32;
#[cfg(test)]
pub(crate) use tree::hkdf_sha256_for_vectors;
