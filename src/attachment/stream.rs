//! The attachment STREAM: a file's bytes, padded, cut into fixed-size chunks, each sealed on its
//! own so a download can check and write one chunk at a time.
//!
//! ```text
//! content id = HMAC-SHA256(attachment key, "chatvault/v1/attachment-id" || 0x00 || chunk_size (u32 BE) || content)
//! file key   = HMAC-SHA256(attachment key, "chatvault/v1/attachment-file-key" || 0x00 || content id)
//! stream     = content || zero bytes, to stream_len(size) = padded_len(max(size, 1024))
//! chunk i    = header (8, suite 2, kind 7) || XChaCha20-Poly1305(file key, nonce_i, aad, stream[i*C .. (i+1)*C])
//! nonce_i    = 15 zero bytes || i (u64 BE) || last (0x01 for the final chunk, else 0x00)
//! aad        = header (8) || vault id (16)
//! ```
//!
//! This is the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár ("Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015), as age uses it: the
//! chunk counter and the last-chunk flag in the nonce make a reordered, duplicated, dropped or
//! truncated chunk fail authentication, and the per-file key makes a chunk moved from another
//! file fail too.
//!
//! **Why counter nonces are safe here.** The file key is derived from the content id, so one key
//! only ever encrypts one content; encrypting that content again (another device, a resumed
//! upload) repeats the same plaintext under the same nonce and produces the same bytes, which
//! reveals nothing new. That determinism is what makes deduplication and resumption work without
//! any shared state. The content id is keyed by the vault's attachment key, so the provider cannot
//! test whether a vault holds a file it knows (the confirmation attack on plain convergent
//! encryption).

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{DecodeProblem, Error, Result};
use crate::format::{CipherSuite, HEADER_LEN, Header, ObjectKind};
use crate::keys::{AttachmentKey, Key32, VaultId};
use crate::sealing::{TAG_LEN, padded_len};

use super::ContentId;

const LABEL_CONTENT_ID: &[u8] = b"chatvault/v1/attachment-id";
const LABEL_FILE_KEY: &[u8] = b"chatvault/v1/attachment-file-key";

/// The shortest stream: smaller files are padded to this many bytes, so a tiny file's exact size
/// does not show.
pub const MIN_STREAM_LEN: u64 = 1024;

/// The stream length of content of `size` bytes: its Padmé length, at least [`MIN_STREAM_LEN`].
pub fn stream_len(size: u64) -> u64 {
    padded_len(size.max(MIN_STREAM_LEN))
}

/// Number of chunks of a stream for content of `size` bytes in chunks of `chunk_size`.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    stream_len(size).div_ceil(u64::from(chunk_size.max(1)))
}

/// Plaintext length of chunk `index` (the last one may be short).
pub fn chunk_plain_len(size: u64, chunk_size: u32, index: u64) -> u64 {
    let chunk = u64::from(chunk_size);
    stream_len(size)
        .saturating_sub(index.saturating_mul(chunk))
        .min(chunk)
}

/// How many bytes of content (not padding) chunk `index` holds.
pub fn chunk_content_len(size: u64, chunk_size: u32, index: u64) -> u64 {
    let chunk = u64::from(chunk_size);
    size.saturating_sub(index.saturating_mul(chunk)).min(chunk)
}

/// Length of chunk `index` as stored in the bucket.
pub fn chunk_object_len(size: u64, chunk_size: u32, index: u64) -> u64 {
    chunk_plain_len(size, chunk_size, index) + (HEADER_LEN + TAG_LEN) as u64
}

/// Bytes all chunk objects of an attachment take in the bucket.
pub fn stored_len(size: u64, chunk_size: u32) -> u64 {
    stream_len(size) + chunk_count(size, chunk_size) * (HEADER_LEN + TAG_LEN) as u64
}

/// Computes a content id incrementally: feed the content in order, then [`finish`](Self::finish).
#[derive(Clone)]
pub struct ContentHasher(Hmac<Sha256>);

impl ContentHasher {
    /// A hasher for content stored in chunks of `chunk_size` bytes (the chunk size is part of the
    /// id, so the same file stored with two chunk sizes never shares objects).
    pub fn new(key: &AttachmentKey, chunk_size: u32) -> Self {
        let mut mac = key.0.hmac();
        mac.update(LABEL_CONTENT_ID);
        mac.update(&[0]);
        mac.update(&chunk_size.to_be_bytes());
        ContentHasher(mac)
    }

    /// Adds the next bytes of content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The content id.
    pub fn finish(self) -> ContentId {
        ContentId(self.0.finalize().into_bytes().into())
    }
}

/// The key that seals one content's chunks.
pub(crate) fn file_key(key: &AttachmentKey, id: &ContentId) -> Key32 {
    let mut mac = key.0.hmac();
    mac.update(LABEL_FILE_KEY);
    mac.update(&[0]);
    mac.update(&id.0);
    Key32::new(mac.finalize().into_bytes().into())
}

fn header() -> [u8; HEADER_LEN] {
    Header {
        suite: CipherSuite::XChaCha20Poly1305Stream,
        kind: ObjectKind::AttachmentChunk,
        epoch: 0,
    }
    .to_bytes()
}

fn nonce(index: u64, last: bool) -> XNonce {
    let mut nonce = [0u8; 24];
    nonce[15..23].copy_from_slice(&index.to_be_bytes());
    nonce[23] = u8::from(last);
    XNonce::from(nonce)
}

fn aad(vault_id: &VaultId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + 16);
    aad.extend_from_slice(&header());
    aad.extend_from_slice(vault_id.as_bytes());
    aad
}

/// Seals chunk `index` of a stream (`last` for its final chunk).
pub(crate) fn seal_chunk(
    file_key: &Key32,
    vault_id: &VaultId,
    index: u64,
    last: bool,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(file_key.bytes().into());
    let ciphertext = cipher
        .encrypt(
            &nonce(index, last),
            Payload {
                msg: plaintext,
                aad: &aad(vault_id),
            },
        )
        .map_err(|_| Error::invalid_input("AEAD refused the chunk length"))?;
    let mut object = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    object.extend_from_slice(&header());
    object.extend_from_slice(&ciphertext);
    Ok(object)
}

/// Opens chunk `index` (`last` for the final chunk), which must hold `expected_plain_len` bytes.
///
/// The plaintext is not zeroized on drop, unlike chat content: it is on its way into a file on
/// the device, and wiping every byte of every chunk costs measurable download speed.
pub(crate) fn open_chunk(
    file_key: &Key32,
    vault_id: &VaultId,
    index: u64,
    last: bool,
    expected_plain_len: usize,
    object: &[u8],
) -> Result<Vec<u8>> {
    let kind = ObjectKind::AttachmentChunk;
    let fail = |problem| Error::decode(kind, problem);
    let parsed = Header::parse(object, kind)?;
    if parsed.suite != CipherSuite::XChaCha20Poly1305Stream {
        return Err(fail(DecodeProblem::UnsupportedSuite(parsed.suite.id())));
    }
    let expected_len = HEADER_LEN + expected_plain_len + TAG_LEN;
    if object.len() < expected_len {
        return Err(fail(DecodeProblem::Truncated {
            needed: expected_len,
            got: object.len(),
        }));
    }
    if object.len() > expected_len {
        return Err(fail(DecodeProblem::TooLarge {
            len: object.len() as u64,
            max: expected_len as u64,
        }));
    }
    let cipher = XChaCha20Poly1305::new(file_key.bytes().into());
    cipher
        .decrypt(
            &nonce(index, last),
            Payload {
                msg: &object[HEADER_LEN..],
                aad: &aad(vault_id),
            },
        )
        .map_err(|_| fail(DecodeProblem::AuthenticationFailed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{RecoveryKey, VaultKeys};

    fn keys() -> VaultKeys {
        VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]))
    }

    fn auth_failed(result: Result<Vec<u8>>) -> bool {
        matches!(
            result,
            Err(Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            })
        )
    }

    #[test]
    fn sizes_are_padded_and_chunked() {
        assert_eq!(stream_len(0), 1024);
        assert_eq!(stream_len(1024), 1024);
        assert_eq!(stream_len(1025), padded_len(1025));
        let c = 64 * 1024;
        assert_eq!(chunk_count(0, c), 1);
        assert_eq!(chunk_count(u64::from(c), c), 1);
        assert_eq!(chunk_count(u64::from(c) + 1, c), 2);
        let size = 10 * u64::from(c) + 5;
        let total: u64 = (0..chunk_count(size, c))
            .map(|i| chunk_plain_len(size, c, i))
            .sum();
        assert_eq!(total, stream_len(size));
        assert_eq!(
            stored_len(size, c),
            (0..chunk_count(size, c))
                .map(|i| chunk_object_len(size, c, i))
                .sum::<u64>()
        );
    }

    #[test]
    fn content_ids_are_keyed_and_bind_the_chunk_size() {
        let keys = keys();
        let id = |key: &AttachmentKey, chunk: u32, content: &[u8]| {
            let mut hasher = ContentHasher::new(key, chunk);
            hasher.update(content);
            hasher.finish()
        };
        let other = VaultKeys::derive(&RecoveryKey::from_bytes([8; 32]));
        let base = id(keys.attachment(), 65536, b"photo");
        assert_eq!(base, id(keys.attachment(), 65536, b"photo"));
        assert_ne!(base, id(other.attachment(), 65536, b"photo"));
        assert_ne!(base, id(keys.attachment(), 131072, b"photo"));
        assert_ne!(base, id(keys.attachment(), 65536, b"photo!"));
        // Feeding in pieces gives the same id as feeding at once.
        let mut pieces = ContentHasher::new(keys.attachment(), 65536);
        pieces.update(b"pho");
        pieces.update(b"to");
        assert_eq!(pieces.finish(), base);
    }

    #[test]
    fn chunks_round_trip_and_reject_every_rearrangement() {
        let keys = keys();
        let vault = keys.vault_id();
        let id = ContentId([1; 32]);
        let key = file_key(keys.attachment(), &id);
        let first = seal_chunk(&key, vault, 0, false, b"first").unwrap();
        let last = seal_chunk(&key, vault, 1, true, b"last!").unwrap();
        assert_eq!(
            &*open_chunk(&key, vault, 0, false, 5, &first).unwrap(),
            b"first"
        );
        assert_eq!(
            &*open_chunk(&key, vault, 1, true, 5, &last).unwrap(),
            b"last!"
        );
        // Swapped positions, a dropped final chunk (chunk 0 presented as last), a duplicate.
        assert!(auth_failed(open_chunk(&key, vault, 0, false, 5, &last)));
        assert!(auth_failed(open_chunk(&key, vault, 1, true, 5, &first)));
        assert!(auth_failed(open_chunk(&key, vault, 0, true, 5, &first)));
        // Another file's key, another vault.
        let other = file_key(keys.attachment(), &ContentId([2; 32]));
        assert!(auth_failed(open_chunk(&other, vault, 0, false, 5, &first)));
        let other_vault = VaultId::from_bytes([9; 16]);
        assert!(auth_failed(open_chunk(
            &key,
            &other_vault,
            0,
            false,
            5,
            &first
        )));
        // A flipped bit anywhere after the header.
        for position in HEADER_LEN..first.len() {
            let mut bad = first.clone();
            bad[position] ^= 0x40;
            assert!(auth_failed(open_chunk(&key, vault, 0, false, 5, &bad)));
        }
        // Wrong lengths are typed before decryption.
        assert!(matches!(
            open_chunk(&key, vault, 0, false, 5, &first[..first.len() - 1]),
            Err(Error::Decode {
                problem: DecodeProblem::Truncated { .. },
                ..
            })
        ));
        let mut long = first.clone();
        long.push(0);
        assert!(matches!(
            open_chunk(&key, vault, 0, false, 5, &long),
            Err(Error::Decode {
                problem: DecodeProblem::TooLarge { .. },
                ..
            })
        ));
        // A regular sealed object is not a chunk.
        let mut wrong_suite = first.clone();
        wrong_suite[5] = CipherSuite::XChaCha20Poly1305.id();
        assert!(matches!(
            open_chunk(&key, vault, 0, false, 5, &wrong_suite),
            Err(Error::Decode {
                problem: DecodeProblem::UnsupportedSuite(1),
                ..
            })
        ));
    }
}
