//! Sealing: how a plaintext body becomes an object the bucket may hold, and back.
//!
//! ```text
//! object = header (8) || nonce (24) || XChaCha20-Poly1305(key, nonce, aad, frame) (frame + 16-byte tag)
//! frame  = compression (1) || plain_len (u32 BE) || stored_len (u32 BE) || stored || zero padding
//! aad    = header (8) || vault id (16) || name_len (u32 BE) || name (UTF-8)
//! ```
//!
//! - **Compression first** (zstd level 3, kept only when it saves bytes): encrypted data does not
//!   compress. zstd rather than lz4: chat text shrinks markedly more under zstd, and bytes cost a
//!   phone user data, battery and storage fees, while decompressing a few MiB is cheap on any phone
//!   CPU; zstd is a small C library that cross-builds with the iOS and Android toolchains.
//! - **Padding** brings the whole object to the Padmé length of its unpadded size
//!   ([`padded_len`]), so sizes leak at most O(log log n) bits. The overhead is at most 5/43 of
//!   the unpadded size (11.63%, reached at 129 bytes), at most 1/16 (6.25%) from 256 bytes and at
//!   most 1/32 (3.125%) from 64 KiB.
//! - **Associated data** binds the header (format version, suite, kind), the vault id and the
//!   object's name. An object moved to another name, replayed into another vault, or presented as
//!   another kind fails authentication.
//! - **Random 192-bit nonces**: no counter state to keep across devices; collisions are negligible.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{DecodeProblem, Error, Result};
use crate::format::{CipherSuite, HEADER_LEN, Header, MAX_OBJECT_LEN, ObjectKind};
use crate::keys::{Key32, VaultId};

/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Length of the frame header inside the ciphertext (compression, plain_len, stored_len).
pub const FRAME_HEADER_LEN: usize = 9;
/// Smallest possible sealed object: header, nonce, tag and an empty frame.
pub const MIN_SEALED_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN + FRAME_HEADER_LEN;
/// The largest plaintext body one object can hold (56 MiB), so that the sealed and padded object
/// stays within [`MAX_OBJECT_LEN`].
pub const MAX_PLAINTEXT_LEN: usize = 56 * 1024 * 1024;
/// The longest object name bound into the associated data.
pub const MAX_NAME_LEN: usize = 1024;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 3;

/// Where an object lives: bound into its associated data.
#[derive(Debug, Clone, Copy)]
pub struct ObjectContext<'a> {
    /// The vault the object belongs to.
    pub vault_id: &'a VaultId,
    /// The object's kind.
    pub kind: ObjectKind,
    /// The object's name (or position) in the vault.
    pub name: &'a str,
}

/// How a body is stored inside the frame. `Auto` compresses when that saves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Auto,
    Never,
}

/// The Padmé padded length of an object of `len` bytes (Nikitin et al., "Reducing Metadata Leakage
/// from Encrypted Files and Communication with PURBs", 2019): the low `⌊log2 E⌋ + 1` bits of the
/// `E + 1`-bit length are zeroed upward, with `E = ⌊log2 len⌋`.
pub fn padded_len(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let exponent = 63 - u64::from(len.leading_zeros()); // ⌊log2 len⌋
    let exponent_bits = 64 - u64::from(exponent.leading_zeros()); // ⌊log2 E⌋ + 1
    let low_bits = exponent - exponent_bits;
    let mask = (1u64 << low_bits) - 1;
    (len + mask) & !mask
}

fn associated_data(context: &ObjectContext<'_>, header: &[u8; HEADER_LEN]) -> Result<Vec<u8>> {
    if context.name.len() > MAX_NAME_LEN {
        return Err(Error::invalid_input(format!(
            "object name of {} bytes exceeds {MAX_NAME_LEN}",
            context.name.len()
        )));
    }
    let mut aad = Vec::with_capacity(HEADER_LEN + 16 + 4 + context.name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context.vault_id.as_bytes());
    aad.extend_from_slice(&(context.name.len() as u32).to_be_bytes());
    aad.extend_from_slice(context.name.as_bytes());
    Ok(aad)
}

thread_local! {
    /// zstd contexts this thread reuses: creating one per object (allocating and building its
    /// tables) cost more than compressing a small object, and the content cache seals many small
    /// ones. The output does not depend on the context's history.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd at [`ZSTD_LEVEL`] with this thread's context (`None` if zstd fails).
fn compress(plaintext: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        slot.as_mut()?.compress(plaintext).ok()
    })
}

/// Decompresses at most `capacity` bytes with this thread's context (`None` if it fails).
fn decompress(stored: &[u8], capacity: usize) -> Option<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        slot.as_mut()?.decompress(stored, capacity).ok()
    })
}

/// A fresh random nonce, for the sealers that take their nonces from a source (so that the
/// test-vector generator can give fixed ones).
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    crate::random::array::<NONCE_LEN>()
}

/// Seals `plaintext` with a fresh random nonce.
pub(crate) fn seal(key: &Key32, context: &ObjectContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
    let nonce = crate::random::array::<NONCE_LEN>()?;
    seal_with_nonce(key, context, plaintext, &nonce, Compression::Auto)
}

/// Seals `plaintext` with a fresh random nonce and without compression (small local blobs sealed
/// on the hot path of `record`, where zstd would cost more than the bytes it saves).
pub(crate) fn seal_uncompressed(
    key: &Key32,
    context: &ObjectContext<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let nonce = crate::random::array::<NONCE_LEN>()?;
    seal_with_nonce(key, context, plaintext, &nonce, Compression::Never)
}

/// Seals, with a fresh random nonce and without compression, the plaintext `write` appends to
/// the buffer it is handed (about `len_hint` bytes): the object [`seal_uncompressed`] makes of
/// those bytes, built in one buffer and encrypted in place, so the plaintext is never copied
/// (and no plaintext copy is left to zeroize: the buffer holds ciphertext when this returns).
pub(crate) fn seal_uncompressed_with(
    key: &Key32,
    context: &ObjectContext<'_>,
    len_hint: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>> {
    let nonce = crate::random::array::<NONCE_LEN>()?;
    seal_in_place(key, context, &nonce, len_hint, write)
}

fn seal_in_place(
    key: &Key32,
    context: &ObjectContext<'_>,
    nonce: &[u8; NONCE_LEN],
    len_hint: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>> {
    use chacha20poly1305::AeadInOut;
    use zeroize::Zeroize;

    let header = Header::new(context.kind).to_bytes();
    let aad = associated_data(context, &header)?;
    let capacity = padded_len((MIN_SEALED_LEN + len_hint.min(MAX_PLAINTEXT_LEN)) as u64) as usize;
    let mut object = Vec::with_capacity(capacity);
    object.extend_from_slice(&header);
    object.extend_from_slice(nonce);
    let frame_start = object.len();
    object.push(COMPRESSION_NONE);
    object.extend_from_slice(&[0; 8]);
    write(&mut object);
    let plain_len = object.len() - frame_start - FRAME_HEADER_LEN;
    if plain_len > MAX_PLAINTEXT_LEN {
        object.zeroize();
        return Err(Error::invalid_input(format!(
            "plaintext of {plain_len} bytes exceeds the {MAX_PLAINTEXT_LEN}-byte object limit"
        )));
    }
    let lengths = (plain_len as u32).to_be_bytes();
    object[frame_start + 1..frame_start + 5].copy_from_slice(&lengths);
    object[frame_start + 5..frame_start + 9].copy_from_slice(&lengths);
    let total = padded_len((MIN_SEALED_LEN + plain_len) as u64) as usize;
    object.resize(total - TAG_LEN, 0);
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let tag = match cipher.encrypt_inout_detached(
        &XNonce::from(*nonce),
        &aad,
        (&mut object[frame_start..]).into(),
    ) {
        Ok(tag) => tag,
        Err(_) => {
            object.zeroize();
            return Err(Error::invalid_input("AEAD refused the input length"));
        }
    };
    object.extend_from_slice(&tag);
    debug_assert_eq!(object.len(), total);
    Ok(object)
}

/// Seals `plaintext` with a fresh random nonce as an object of key epoch `epoch` (a version-2
/// header for epochs 1-255; docs/DEVICES.md), under that epoch's `key`.
pub(crate) fn seal_in_epoch(
    key: &Key32,
    context: &ObjectContext<'_>,
    epoch: u8,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let nonce = crate::random::array::<NONCE_LEN>()?;
    seal_with_nonce_in_epoch(key, context, epoch, plaintext, &nonce, Compression::Auto)
}

/// Seals with a given nonce. Only [`seal`] and the test-vector generator call this: a nonce must
/// never be reused under one key.
pub(crate) fn seal_with_nonce(
    key: &Key32,
    context: &ObjectContext<'_>,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    compression: Compression,
) -> Result<Vec<u8>> {
    seal_with_nonce_in_epoch(key, context, 0, plaintext, nonce, compression)
}

/// [`seal_with_nonce`] in key epoch `epoch`.
pub(crate) fn seal_with_nonce_in_epoch(
    key: &Key32,
    context: &ObjectContext<'_>,
    epoch: u8,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    compression: Compression,
) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(Error::invalid_input(format!(
            "plaintext of {} bytes exceeds the {MAX_PLAINTEXT_LEN}-byte object limit",
            plaintext.len()
        )));
    }
    // A name too long is refused before any compression work.
    associated_data(context, &Header::new(context.kind).to_bytes())?;

    let compressed = match compression {
        Compression::Auto => compress(plaintext)
            .filter(|c| c.len() < plaintext.len())
            .map(Zeroizing::new),
        Compression::Never => None,
    };
    let (method, stored): (u8, &[u8]) = match &compressed {
        Some(c) => (COMPRESSION_ZSTD, c),
        None => (COMPRESSION_NONE, plaintext),
    };

    let unpadded = MIN_SEALED_LEN + stored.len();
    let total = padded_len(unpadded as u64) as usize;
    let frame_len = total - HEADER_LEN - NONCE_LEN - TAG_LEN;
    let mut frame = Zeroizing::new(Vec::with_capacity(frame_len));
    frame.push(method);
    frame.extend_from_slice(&(plaintext.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(stored.len() as u32).to_be_bytes());
    frame.extend_from_slice(stored);
    frame.resize(frame_len, 0);
    let object = encrypt_frame_in_epoch(key, context, epoch, &frame, nonce)?;
    debug_assert_eq!(object.len(), total);
    Ok(object)
}

/// Encrypts a built frame into an object (header, nonce, ciphertext and tag). The fuzz targets
/// (cargo feature `fuzzing`) call it with frames of their own making.
#[cfg(feature = "fuzzing")]
pub(crate) fn encrypt_frame(
    key: &Key32,
    context: &ObjectContext<'_>,
    frame: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    encrypt_frame_in_epoch(key, context, 0, frame, nonce)
}

fn encrypt_frame_in_epoch(
    key: &Key32,
    context: &ObjectContext<'_>,
    epoch: u8,
    frame: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    let header = Header::in_epoch(context.kind, epoch).to_bytes();
    let aad = associated_data(context, &header)?;
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: frame,
                aad: &aad,
            },
        )
        .map_err(|_| Error::invalid_input("AEAD refused the input length"))?;
    let mut object = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ciphertext.len());
    object.extend_from_slice(&header);
    object.extend_from_slice(nonce);
    object.extend_from_slice(&ciphertext);
    Ok(object)
}

/// Opens an object sealed by [`seal`]: checks the header, size limits, authenticity, framing and
/// padding, and returns the plaintext body.
pub(crate) fn open(
    key: &Key32,
    context: &ObjectContext<'_>,
    object: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let header = Header::parse(object, context.kind)?;
    open_with_header(key, context, header, object)
}

/// The key epoch an object of kind `kind` is sealed in (0 for a version-1 object), read from its
/// header, so that the reader can pick that epoch's key.
pub(crate) fn epoch_of(object: &[u8], kind: ObjectKind) -> Result<u8> {
    Ok(Header::parse_any_epoch(object, kind)?.epoch)
}

/// Opens an object that must be sealed in key epoch `epoch` under that epoch's `key`: one of
/// another epoch is `KeyEpoch` (the reader picked the wrong key, or holds none of that epoch).
pub(crate) fn open_in_epoch(
    key: &Key32,
    context: &ObjectContext<'_>,
    epoch: u8,
    object: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let header = Header::parse_any_epoch(object, context.kind)?;
    if header.epoch != epoch {
        return Err(Error::decode(
            context.kind,
            DecodeProblem::KeyEpoch {
                expected: epoch,
                found: header.epoch,
            },
        ));
    }
    open_with_header(key, context, header, object)
}

fn open_with_header(
    key: &Key32,
    context: &ObjectContext<'_>,
    header: Header,
    object: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let kind = context.kind;
    let fail = |problem| Error::decode(kind, problem);
    if header.suite != CipherSuite::XChaCha20Poly1305 {
        return Err(fail(DecodeProblem::UnsupportedSuite(header.suite.id())));
    }
    if object.len() < MIN_SEALED_LEN {
        return Err(fail(DecodeProblem::Truncated {
            needed: MIN_SEALED_LEN,
            got: object.len(),
        }));
    }
    let aad = associated_data(context, &header.to_bytes())?;
    let (nonce, ciphertext) = object[HEADER_LEN..].split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| {
        fail(DecodeProblem::Truncated {
            needed: MIN_SEALED_LEN,
            got: object.len(),
        })
    })?;

    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let frame = Zeroizing::new(
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| fail(DecodeProblem::AuthenticationFailed))?,
    );

    // Authentic from here on: what follows can only fail for a buggy or hostile key holder.
    let malformed = |why: &str| fail(DecodeProblem::Malformed(why.to_owned()));
    let method = frame[0];
    let plain_len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let stored_len = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) as usize;
    let stored = frame
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN.saturating_add(stored_len))
        .ok_or_else(|| malformed("stored length exceeds the frame"))?;
    if plain_len > MAX_PLAINTEXT_LEN {
        return Err(fail(DecodeProblem::TooLarge {
            len: plain_len as u64,
            max: MAX_PLAINTEXT_LEN as u64,
        }));
    }
    if frame[FRAME_HEADER_LEN + stored_len..]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(malformed("non-zero padding"));
    }
    if object.len() as u64 != padded_len((MIN_SEALED_LEN + stored_len) as u64) {
        return Err(malformed(
            "object size is not the padded size of its content",
        ));
    }
    match method {
        COMPRESSION_NONE if plain_len == stored_len => Ok(Zeroizing::new(stored.to_vec())),
        COMPRESSION_NONE => Err(malformed("uncompressed body with a different plain length")),
        COMPRESSION_ZSTD => {
            let body = decompress(stored, plain_len)
                .ok_or_else(|| malformed("zstd body does not decompress"))?;
            if body.len() != plain_len {
                return Err(malformed("decompressed length differs from the frame"));
            }
            Ok(Zeroizing::new(body))
        }
        _ => Err(malformed("unknown compression method")),
    }
}

// Compile-time check that the largest plaintext still fits the object limit after padding.
const _: () = assert!(MIN_SEALED_LEN + MAX_PLAINTEXT_LEN + MAX_PLAINTEXT_LEN / 8 <= MAX_OBJECT_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealing in place gives the very bytes the copying sealer gives (same nonce).
    #[test]
    fn sealing_in_place_is_the_uncompressed_seal() {
        let vault_id = crate::keys::VaultId::from_bytes([7; 16]);
        let context = ObjectContext {
            vault_id: &vault_id,
            kind: ObjectKind::KeySet,
            name: "local/outbox",
        };
        for len in [0usize, 1, 100, 129, 4096, 70_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let nonce = [9; NONCE_LEN];
            let copied =
                seal_with_nonce(&key(3), &context, &plaintext, &nonce, Compression::Never).unwrap();
            let in_place = seal_in_place(&key(3), &context, &nonce, len / 2, |out| {
                out.extend_from_slice(&plaintext)
            })
            .unwrap();
            assert_eq!(in_place, copied, "{len} bytes");
            assert_eq!(
                &open(&key(3), &context, &in_place).unwrap()[..],
                &plaintext[..]
            );
        }
    }

    fn key(byte: u8) -> Key32 {
        Key32::new([byte; 32])
    }

    fn problem_of(result: Result<Zeroizing<Vec<u8>>>) -> DecodeProblem {
        match result {
            Err(Error::Decode { problem, .. }) => problem,
            Err(other) => panic!("expected a decode error, got {other:?}"),
            Ok(_) => panic!("expected a decode error, got Ok"),
        }
    }

    const VAULT: VaultId = VaultId::from_bytes([7; 16]);

    fn ctx(name: &str) -> ObjectContext<'_> {
        ObjectContext {
            vault_id: &VAULT,
            kind: ObjectKind::ChatData,
            name,
        }
    }

    #[test]
    fn padme_overhead_bounds_hold_and_padding_is_monotone() {
        // The bounds stated in the module docs and docs/FORMAT.md.
        let within_bounds = |len: u64, padded: u64| {
            let extra = padded - len;
            extra * 43 <= len * 5
                && (len < 256 || extra * 16 <= len)
                && (len < 65_536 || extra * 32 <= len)
        };
        let mut previous = 0;
        for len in 1..=(1u64 << 20) {
            let padded = padded_len(len);
            assert!(padded >= len);
            assert!(within_bounds(len, padded), "len {len} padded {padded}");
            assert!(padded >= previous);
            previous = padded;
        }
        // The worst case is reached: 129 bytes pad to 144 (15/129 = 11.63%).
        assert_eq!(padded_len(129), 144);
        let mut len = 1u64 << 20;
        while len < (1u64 << 40) {
            for probe in [len - 1, len, len + 1, len + len / 3] {
                assert!(within_bounds(probe, padded_len(probe)), "len {probe}");
            }
            len = len * 3 / 2;
        }
        // Distinct padded sizes are few: 2^(⌊log2 E⌋+1) per power of two, plus its upper end.
        let distinct: std::collections::BTreeSet<u64> =
            ((1u64 << 16)..(1u64 << 17)).map(padded_len).collect();
        assert_eq!(distinct.len(), 33);
    }

    #[test]
    fn sealed_sizes_follow_padme_and_round_trip() {
        for len in [0usize, 1, 15, 16, 100, 1000, 4096, 100_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
            for compression in [Compression::Auto, Compression::Never] {
                let object =
                    seal_with_nonce(&key(1), &ctx("n"), &plaintext, &[3; 24], compression).unwrap();
                assert_eq!(object.len() as u64, padded_len(object.len() as u64));
                assert_eq!(
                    &open(&key(1), &ctx("n"), &object).unwrap()[..],
                    &plaintext[..]
                );
            }
        }
    }

    #[test]
    fn compressible_text_is_compressed() {
        let text = "the same chat line again and again\n".repeat(500);
        let object = seal(&key(1), &ctx("n"), text.as_bytes()).unwrap();
        assert!(
            object.len() < text.len() / 5,
            "{} vs {}",
            object.len(),
            text.len()
        );
    }

    #[test]
    fn wrong_key_name_vault_or_kind_fails_authentication() {
        let object = seal(&key(1), &ctx("a"), b"secret").unwrap();
        assert_eq!(
            problem_of(open(&key(2), &ctx("a"), &object)),
            DecodeProblem::AuthenticationFailed
        );
        assert_eq!(
            problem_of(open(&key(1), &ctx("b"), &object)),
            DecodeProblem::AuthenticationFailed
        );
        let other_vault = VaultId::from_bytes([8; 16]);
        let moved = ObjectContext {
            vault_id: &other_vault,
            ..ctx("a")
        };
        assert_eq!(
            problem_of(open(&key(1), &moved, &object)),
            DecodeProblem::AuthenticationFailed
        );
        // Rewriting the kind byte in the header is caught too: the header is in the AAD.
        let mut relabelled = object.clone();
        relabelled[6] = ObjectKind::Keyring.id();
        let as_keyring = ObjectContext {
            kind: ObjectKind::Keyring,
            ..ctx("a")
        };
        assert_eq!(
            problem_of(open(&key(1), &as_keyring, &relabelled)),
            DecodeProblem::AuthenticationFailed
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_rejected() {
        let object = seal(&key(1), &ctx("a"), b"a short message").unwrap();
        for i in 0..object.len() {
            for bit in 0..8 {
                let mut tampered = object.clone();
                tampered[i] ^= 1 << bit;
                assert!(
                    open(&key(1), &ctx("a"), &tampered).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        for len in 0..object.len() {
            assert!(
                open(&key(1), &ctx("a"), &object[..len]).is_err(),
                "length {len}"
            );
        }
        let mut extended = object.clone();
        extended.push(0);
        assert!(open(&key(1), &ctx("a"), &extended).is_err());
    }

    #[test]
    fn oversized_input_is_refused_both_ways() {
        let huge = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&key(1), &ctx("a"), &huge),
            Err(Error::InvalidInput(_))
        ));
        let huge_object = vec![0u8; MAX_OBJECT_LEN + 1];
        assert!(matches!(
            problem_of(open(&key(1), &ctx("a"), &huge_object)),
            DecodeProblem::TooLarge { .. }
        ));
        let long_name = "n".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            seal(&key(1), &ctx(&long_name), b"x"),
            Err(Error::InvalidInput(_))
        ));
    }

    /// Objects that authenticate but break the framing rules (only a key holder can make them)
    /// are rejected as malformed, not trusted.
    #[test]
    fn authentic_but_malformed_frames_are_rejected() {
        let k = key(1);
        let seal_frame = |frame: &[u8]| {
            let header = Header::new(ObjectKind::ChatData).to_bytes();
            let aad = associated_data(&ctx("a"), &header).unwrap();
            let cipher = XChaCha20Poly1305::new(k.bytes().into());
            let ct = cipher
                .encrypt(
                    &XNonce::from([0; 24]),
                    Payload {
                        msg: frame,
                        aad: &aad,
                    },
                )
                .unwrap();
            [&header[..], &[0; 24], &ct].concat()
        };
        // Sizes chosen so the object length is a Padmé length (small lengths are their own).
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![9, 0, 0, 0, 1, 0, 0, 0, 1, b'x'], "unknown compression"),
            (
                vec![0, 0, 0, 0, 2, 0, 0, 0, 1, b'x'],
                "plain length mismatch",
            ),
            (
                vec![0, 0, 0, 0, 1, 0, 0, 0, 9, b'x'],
                "stored length beyond frame",
            ),
            (vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "non-zero padding"),
            (vec![1, 0, 0, 0, 5, 0, 0, 0, 1, b'x'], "bad zstd"),
            (vec![0, 0xff, 0, 0, 0, 0, 0, 0, 0], "plain length too large"),
        ];
        for (frame, why) in cases {
            let object = seal_frame(&frame);
            let problem = problem_of(open(&k, &ctx("a"), &object));
            assert!(
                matches!(
                    problem,
                    DecodeProblem::Malformed(_) | DecodeProblem::TooLarge { .. }
                ),
                "{why}: {problem:?}"
            );
        }
    }

    #[test]
    fn an_object_of_a_key_epoch_opens_only_as_that_epoch() {
        let key = Key32::new([7; 32]);
        let vault = VaultId::from_bytes([1; 16]);
        let context = ObjectContext {
            vault_id: &vault,
            kind: ObjectKind::Segment,
            name: "segments/x",
        };
        let object = seal_in_epoch(&key, &context, 3, b"body of epoch 3").unwrap();
        assert_eq!(&object[4..8], &[2, 1, 4, 3]);
        assert_eq!(epoch_of(&object, ObjectKind::Segment).unwrap(), 3);
        assert_eq!(
            &open_in_epoch(&key, &context, 3, &object).unwrap()[..],
            b"body of epoch 3"
        );
        let problem = |result: Result<Zeroizing<Vec<u8>>>| match result {
            Err(Error::Decode { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            problem(open_in_epoch(&key, &context, 2, &object)),
            DecodeProblem::KeyEpoch {
                expected: 2,
                found: 3
            }
        );
        // A reader without epochs: "update the app".
        assert_eq!(
            problem(open(&key, &context, &object)),
            DecodeProblem::UnsupportedVersion(2)
        );
        // The epoch byte is authenticated: moved to another epoch, the object does not open.
        let mut moved = object.clone();
        moved[7] = 4;
        assert_eq!(
            problem(open_in_epoch(&key, &context, 4, &moved)),
            DecodeProblem::AuthenticationFailed
        );
        // Epoch 0 through the epoch-aware path is the version-1 object.
        let zero = seal(&key, &context, b"old").unwrap();
        assert_eq!(
            &open_in_epoch(&key, &context, 0, &zero).unwrap()[..],
            b"old"
        );
    }
}
