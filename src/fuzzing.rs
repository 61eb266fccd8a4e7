//! Entry points for the keyed fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default;
//! not a public API).
//!
//! Random bytes never authenticate, so a fuzzer that hands them to an opener stops at the AEAD
//! tag. These let a target that holds the keys seal its bytes first, so they reach what lies
//! behind the tag: the frame parser, the protobuf decoders, the segment and checkpoint checks.

use crate::error::Result;
use crate::format::ObjectKind;
use crate::keys::{ChatKey, Key32, VaultKeys};
use crate::sealing::{self, Compression, ObjectContext};
use crate::sync::segment::{ChatKeys, KeyId};

/// The key an object is sealed under.
#[derive(Debug, Clone, Copy)]
pub enum SealingKey<'a> {
    /// The vault's log key (segments and checkpoint indexes).
    Log,
    /// A chat key (chat blocks of segments and checkpoints).
    Chat(&'a ChatKey),
}

fn key<'a>(keys: &'a VaultKeys, key: SealingKey<'a>) -> &'a Key32 {
    match key {
        SealingKey::Log => &keys.log().0,
        SealingKey::Chat(chat) => &chat.0,
    }
}

/// Seals `plaintext` as an object of `kind` named `name`, as the library's writers do.
pub fn seal(
    keys: &VaultKeys,
    with: SealingKey<'_>,
    kind: ObjectKind,
    name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind,
        name,
    };
    sealing::seal_with_nonce(
        key(keys, with),
        &context,
        plaintext,
        &[0; sealing::NONCE_LEN],
        Compression::Auto,
    )
}

/// Encrypts `frame` as it is, without building it: the frame (compression method, lengths,
/// stored bytes, padding) is the fuzzer's, so the framing checks of the opener see hostile frames
/// that authenticate. `frame` must be at least [`sealing::FRAME_HEADER_LEN`] bytes.
pub fn seal_frame(
    keys: &VaultKeys,
    with: SealingKey<'_>,
    kind: ObjectKind,
    name: &str,
    frame: &[u8],
) -> Result<Vec<u8>> {
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind,
        name,
    };
    sealing::encrypt_frame(key(keys, with), &context, frame, &[0; sealing::NONCE_LEN])
}

/// Opens an object sealed under `with` (the opener every reader uses).
pub fn open(
    keys: &VaultKeys,
    with: SealingKey<'_>,
    kind: ObjectKind,
    name: &str,
    object: &[u8],
) -> Result<Vec<u8>> {
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind,
        name,
    };
    sealing::open(key(keys, with), &context, object).map(|body| body.to_vec())
}

/// A chat key with the given bytes.
pub fn chat_key(bytes: [u8; 32]) -> ChatKey {
    ChatKey::from_bytes(bytes)
}

/// Adds a key to a set of chat keys, as a grant does.
pub fn insert_chat_key(
    chat_keys: &mut ChatKeys,
    key_id: KeyId,
    chat_id: &str,
    key: ChatKey,
) -> Result<bool> {
    chat_keys.insert(key_id, chat_id, key, 0)
}

/// The sealing name of chat block `index` of the segment named `segment`.
pub fn segment_block_name(segment: &str, index: usize) -> String {
    crate::sync::segment::block_name(segment, index)
}

/// The sealing name of the checkpoint chat block with id `block_id`.
pub fn checkpoint_block_name(block_id: &[u8; 16]) -> String {
    crate::sync::checkpoint::block_name(block_id)
}
