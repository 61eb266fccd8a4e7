//! # chatvault
//!
//! End-to-end encrypted, zero-knowledge backup and sync of a messaging app's chat history to any
//! S3-compatible bucket.
//!
//! The storage provider sees only opaque, padded, sealed objects under names that are keyed hashes.
//! One [`RecoveryKey`](keys::RecoveryKey) (256 bits, printable on paper) restores everything, on any
//! platform: it derives the [`VaultId`](keys::VaultId) that locates the vault in the bucket and the
//! whole [key tree](keys::VaultKeys). Each chat has its own random [`ChatKey`](keys::ChatKey) kept in
//! an encrypted [`Keyring`](keyring::Keyring), so one chat can be restored, handed over or destroyed
//! (crypto-shredded) alone.
//!
//! Modules, one concept each:
//! - [`keys`]: recovery key and its text form, the HKDF key tree, per-chat keys, passphrase wrapping.
//! - [`sealing`]: authenticated encryption of whole objects (compress, pad, seal, and the reverse).
//! - [`format`](mod@format): the on-bucket byte format: header, object kinds, protobuf messages.
//! - [`keyring`]: the encrypted set of per-chat keys.
//! - [`store`]: object stores (memory, directory, S3).
//! - [`sync`]: clock, operations, the merge, segments, checkpoints, pull planning (no I/O).
//! - [`local`]: the device's crash-safe local state (SQLite).
//! - [`history`]: paging a chat's history by `(sent_at_ms, message_id)` cursors.
//! - [`vault`]: what an app opens: record, sync, restore, verify, checkpoint, collect garbage.
//! - `ffi` (cargo feature `ffi`): the uniffi facade the Swift, Kotlin and Python bindings use.
//! - [`error`]: the one error type every fallible call returns.
//!
//! The byte format is specified in `docs/FORMAT.md` and pinned by the test vectors in
//! `tests/vectors/`; the threat model is in `docs/SECURITY.md`.
//!
//! ```
//! use chatvault::keys::{RecoveryKey, VaultKeys};
//! use chatvault::keyring::Keyring;
//!
//! # fn main() -> Result<(), chatvault::Error> {
//! // First device: create a recovery key (show its text to the user once) and a keyring.
//! let recovery_key = RecoveryKey::generate()?;
//! let text = recovery_key.to_text();
//! let keys = VaultKeys::derive(&recovery_key);
//! let mut keyring = Keyring::new();
//! keyring.add_chat("family")?;
//! let sealed_keyring = keyring.seal(&keys, "keyring-0")?;
//! let chat_object = keyring.seal_chat_data(&keys, "family", "pack-0", b"hello")?;
//!
//! // New phone: only the recovery key text and the bucket.
//! let restored = VaultKeys::derive(&RecoveryKey::parse(&text)?);
//! assert_eq!(restored.vault_id(), keys.vault_id());
//! let keyring = Keyring::open(&restored, "keyring-0", &sealed_keyring)?;
//! let plaintext = keyring.open_chat_data(&restored, "family", "pack-0", &chat_object)?;
//! assert_eq!(&plaintext[..], b"hello");
//! # Ok(())
//! # }
//! ```
// `deny`, not `forbid`: only src/ffi/ (uniffi's generated extern "C" glue) may allow it.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod attachment;
mod base32;
pub mod devices;
pub mod error;
#[cfg(feature = "ffi")]
pub mod ffi;
// uniffi's derives look for the scaffolding's tag type at the crate root.
#[cfg(feature = "ffi")]
#[doc(hidden)]
pub use ffi::UniFfiTag;
pub mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hex;
pub use sync::history;
pub mod keyring;
pub mod keys;
pub mod link;
pub mod local;
mod random;
pub mod sealing;
pub mod store;
pub mod sync;
pub mod vault;

#[cfg(test)]
mod vectors;

pub use error::{DecodeProblem, Error, IntegrityProblem, LinkProblem, RecoveryKeyError, Result};

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
