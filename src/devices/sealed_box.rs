//! A secret sealed to one device's X25519 public key, readable only with its secret key.
//!
//! ```text
//! box    = E (32) || XChaCha20-Poly1305(key, nonce = 0^24, aad = context, plaintext)
//! shared = X25519(e, R)                        refused if all zero (R of small order)
//! key    = HKDF-SHA256(salt = "chatvault/v2/box", ikm = shared, info = E || R || context)
//! ```
//!
//! `e` is a fresh ephemeral secret per box, so every box has its own key and the fixed nonce is
//! used once. Binding both public keys into the key (as RFC 9180's `kem_context` does) keeps a box
//! from opening as if sealed to another recipient; `context` binds where the box belongs (the
//! object's name and the recipient's device id), so a box moved elsewhere does not open.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::DeviceSecrets;
use crate::error::{DecodeProblem, Error, Result};
use crate::format::ObjectKind;

/// What a box adds to its plaintext: the ephemeral public key and the tag.
pub const BOX_OVERHEAD: usize = 32 + 16;

const BOX_SALT: &[u8] = b"chatvault/v2/box";

/// Seals `plaintext` to the device whose X25519 public key is `recipient`, bound to `context`.
/// Refuses a recipient key of small order (the shared secret would be known to anyone).
pub fn seal_to(recipient: &[u8; 32], context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let ephemeral = Zeroizing::new(crate::random::array::<32>()?);
    seal_to_with_ephemeral(&ephemeral, recipient, context, plaintext)
}

/// [`seal_to`] with a given ephemeral secret: for the test vectors only (an ephemeral secret
/// must never be reused).
pub(crate) fn seal_to_with_ephemeral(
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let secret = StaticSecret::from(*ephemeral);
    let ephemeral_public = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(Error::InvalidInput(
            "the recipient's X25519 key is of small order".into(),
        ));
    }
    let key = box_key(shared.as_bytes(), &ephemeral_public, recipient, context);
    let sealed = XChaCha20Poly1305::new((&*key).into())
        .encrypt(
            &XNonce::default(),
            Payload {
                msg: plaintext,
                aad: context,
            },
        )
        .map_err(|_| Error::InvalidInput("box plaintext too long".into()))?;
    let mut out = Vec::with_capacity(32 + sealed.len());
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a box sealed to `secrets`' X25519 key with `context`. Every failure (a box cut short,
/// a small-order ephemeral key, another recipient or context, a flipped bit) is
/// `Decode { kind, AuthenticationFailed }` (or `Truncated`), `kind` naming the object it was in.
pub fn open_box(
    secrets: &DeviceSecrets,
    kind: ObjectKind,
    context: &[u8],
    boxed: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let fail = |problem| Error::Decode { kind, problem };
    if boxed.len() < BOX_OVERHEAD {
        return Err(fail(DecodeProblem::Truncated {
            needed: BOX_OVERHEAD,
            got: boxed.len(),
        }));
    }
    let (ephemeral_public, sealed) = boxed.split_at(32);
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(ephemeral_public);
    let shared = secrets
        .agreement()
        .diffie_hellman(&PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(fail(DecodeProblem::AuthenticationFailed));
    }
    let recipient = secrets.public().agreement;
    let key = box_key(shared.as_bytes(), &ephemeral, &recipient, context);
    let opened = XChaCha20Poly1305::new((&*key).into())
        .decrypt(
            &XNonce::default(),
            Payload {
                msg: sealed,
                aad: context,
            },
        )
        .map_err(|_| fail(DecodeProblem::AuthenticationFailed))?;
    Ok(Zeroizing::new(opened))
}

fn box_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8,160-byte limit: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(BOX_SALT), shared)
        .expand_multi_info(&[ephemeral, recipient, context], &mut key[..]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authentication_failed(result: Result<Zeroizing<Vec<u8>>>) -> bool {
        matches!(
            result,
            Err(Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            })
        )
    }

    #[test]
    fn a_box_opens_only_for_its_recipient_and_context() {
        let alice = DeviceSecrets::generate().unwrap();
        let bob = DeviceSecrets::generate().unwrap();
        let kind = ObjectKind::KeyBox;
        let boxed = seal_to(&alice.public().agreement, b"epochs/1", b"epoch secret").unwrap();
        assert_eq!(boxed.len(), b"epoch secret".len() + BOX_OVERHEAD);
        assert_eq!(
            &open_box(&alice, kind, b"epochs/1", &boxed).unwrap()[..],
            b"epoch secret"
        );
        assert!(authentication_failed(open_box(
            &bob,
            kind,
            b"epochs/1",
            &boxed
        )));
        assert!(authentication_failed(open_box(
            &alice,
            kind,
            b"epochs/2",
            &boxed
        )));
        for at in [0, 31, 32, boxed.len() - 1] {
            let mut flipped = boxed.clone();
            flipped[at] ^= 1;
            assert!(authentication_failed(open_box(
                &alice,
                kind,
                b"epochs/1",
                &flipped
            )));
        }
        assert!(matches!(
            open_box(&alice, kind, b"epochs/1", &boxed[..BOX_OVERHEAD - 1]),
            Err(Error::Decode {
                problem: DecodeProblem::Truncated { .. },
                ..
            })
        ));
    }

    #[test]
    fn small_order_keys_are_refused_on_both_sides() {
        let alice = DeviceSecrets::generate().unwrap();
        // The all-zero point and the point of order 8 with u = 1 give an all-zero shared secret.
        let mut one = [0u8; 32];
        one[0] = 1;
        for weak in [[0u8; 32], one] {
            assert!(matches!(
                seal_to(&weak, b"c", b"x"),
                Err(Error::InvalidInput(_))
            ));
            let mut boxed = weak.to_vec();
            boxed.extend_from_slice(&[0; 17]);
            assert!(authentication_failed(open_box(
                &alice,
                ObjectKind::KeyBox,
                b"c",
                &boxed
            )));
        }
    }
}
