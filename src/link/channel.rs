//! The encrypted channel between the offering and the joining device.
//!
//! ```text
//! shared = X25519(own ephemeral secret, other's ephemeral public)   refused if all zero
//! okm    = HKDF-SHA256(salt = link id, ikm = shared,
//!                      info = "chatvault/v2/link" || offer bytes || joiner key)     96 bytes
//! to offerer key = okm[0..32], to joiner key = okm[32..64], check key = okm[64..96]
//! check code     = u64 BE (HMAC-SHA256(check key, "chatvault/v2/check-code")[0..8]) mod 10^6,
//!                  six decimal digits
//! message        = XChaCha20-Poly1305(direction's key, nonce = 0^16 || counter (u64 BE),
//!                                     aad = link id, plaintext)
//! ```
//!
//! The offerer's key reaches the joiner through the QR code, a channel the bucket cannot touch; the
//! joiner's key reaches the offerer through the bucket, which could swap it for its own. The check
//! code catches that: it depends on both keys, the joiner shows it, and the person types it on the
//! offerer, which burns the link on one wrong code (a swapped key survives with probability
//! 10^-6). Counters start at 0 in each direction; a message replayed, dropped or reordered fails to
//! open.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::Mac;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::LinkOffer;
use crate::error::{DecodeProblem, Error, LinkProblem, Result};
use crate::format::ObjectKind;
use crate::keys::Key32;

/// Digits in a check code.
pub const CHECK_CODE_DIGITS: usize = 6;

const LINK_LABEL: &[u8] = b"chatvault/v2/link";
const CHECK_CODE_LABEL: &[u8] = b"chatvault/v2/check-code";

/// One side's ephemeral X25519 key for one link. Wiped on drop.
pub struct Ephemeral(StaticSecret);

impl Ephemeral {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<Self> {
        let bytes = Zeroizing::new(crate::random::array::<32>()?);
        Ok(Ephemeral(StaticSecret::from(*bytes)))
    }

    /// A key from given bytes: for the test vectors only (an ephemeral key is never reused).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Ephemeral(StaticSecret::from(bytes))
    }

    /// The public key (the offerer's goes into the offer; the joiner's into its first message).
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl core::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Ephemeral(public {})",
            crate::hex::encode(&self.public())
        )
    }
}

/// One side of an established channel. It consumes its ephemeral key, so no two channels (and
/// no two counters starting at 0) exist under one key. The offerer's side refuses to seal until
/// the person typed the right check code ([`Channel::confirm_check_code`]), and is burned for good
/// by one wrong code.
pub struct Channel {
    send: Key32,
    receive: Key32,
    check: Key32,
    link_id: [u8; 16],
    sent: u64,
    received: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The joiner: it sends its record before the code is typed on the other device.
    Joiner,
    /// The offerer before the code was typed.
    Unconfirmed,
    /// The offerer after the right code.
    Confirmed,
    /// The offerer after a wrong code.
    Burned,
}

impl core::fmt::Debug for Channel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("link_id", &crate::hex::encode(&self.link_id))
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// The joining device's side, after scanning `offer` with its ephemeral key `own`.
    pub fn joiner(own: Ephemeral, offer: &LinkOffer) -> Result<Self> {
        let keys = schedule(&own, &offer.offerer_key, offer, &own.public())?;
        Ok(Channel::new(keys, offer, Direction::ToOfferer))
    }

    /// The offering device's side (its ephemeral key `own` is the offer's), once the joiner's
    /// public key arrived.
    pub fn offerer(own: Ephemeral, offer: &LinkOffer, joiner_key: &[u8; 32]) -> Result<Self> {
        if own.public() != offer.offerer_key {
            return Err(Error::InvalidInput(
                "this ephemeral key did not make the offer".into(),
            ));
        }
        let keys = schedule(&own, joiner_key, offer, joiner_key)?;
        Ok(Channel::new(keys, offer, Direction::ToJoiner))
    }

    fn new(keys: Zeroizing<[u8; 96]>, offer: &LinkOffer, sending: Direction) -> Self {
        let key = |at: usize| {
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(&keys[at..at + 32]);
            Key32::new(bytes)
        };
        let (to_offerer, to_joiner) = (key(0), key(32));
        let (send, receive) = match sending {
            Direction::ToOfferer => (to_offerer, to_joiner),
            Direction::ToJoiner => (to_joiner, to_offerer),
        };
        Channel {
            send,
            receive,
            check: key(64),
            link_id: offer.link_id,
            sent: 0,
            received: 0,
            state: match sending {
                Direction::ToOfferer => State::Joiner,
                Direction::ToJoiner => State::Unconfirmed,
            },
        }
    }

    /// The six-digit check code: the joiner shows it, the person types it on the offerer.
    pub fn check_code(&self) -> String {
        let mut mac = self.check.hmac();
        mac.update(CHECK_CODE_LABEL);
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        format!("{:06}", u64::from_be_bytes(first) % 1_000_000)
    }

    /// On the offering device: checks the code the person typed (white space and dashes ignored,
    /// compared in constant time). The right code lets this side seal; a wrong one burns the
    /// link for good (`Link(CheckCodeWrong)`, then `Link(Burned)`). The joiner's side has nothing
    /// to confirm (`Link(Burned)`).
    pub fn confirm_check_code(&mut self, typed: &str) -> Result<()> {
        if self.state != State::Unconfirmed {
            return Err(Error::Link(LinkProblem::Burned));
        }
        let typed: String = typed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        let expected = self.check_code();
        if typed.len() == expected.len() && bool::from(typed.as_bytes().ct_eq(expected.as_bytes()))
        {
            self.state = State::Confirmed;
            Ok(())
        } else {
            self.state = State::Burned;
            Err(Error::Link(LinkProblem::CheckCodeWrong))
        }
    }

    /// Seals the next message to the other side (the offerer only once its code is confirmed).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if !matches!(self.state, State::Joiner | State::Confirmed) {
            return Err(Error::Link(LinkProblem::Burned));
        }
        let nonce = nonce(self.sent);
        let sealed = XChaCha20Poly1305::new(self.send.bytes().into())
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &self.link_id,
                },
            )
            .map_err(|_| Error::InvalidInput("link message too long".into()))?;
        self.sent += 1;
        Ok(sealed)
    }

    /// Opens the next message from the other side (refused once burned).
    pub fn open(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if self.state == State::Burned {
            return Err(Error::Link(LinkProblem::Burned));
        }
        let nonce = nonce(self.received);
        let opened = XChaCha20Poly1305::new(self.receive.bytes().into())
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &self.link_id,
                },
            )
            .map_err(|_| Error::Decode {
                kind: ObjectKind::LinkMessage,
                problem: DecodeProblem::AuthenticationFailed,
            })?;
        self.received += 1;
        Ok(Zeroizing::new(opened))
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToOfferer,
    ToJoiner,
}

fn nonce(counter: u64) -> XNonce {
    let mut nonce = XNonce::default();
    nonce[16..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

/// The channel's 96 bytes of keys, from `own` secret and the `other` public key.
fn schedule(
    own: &Ephemeral,
    other: &[u8; 32],
    offer: &LinkOffer,
    joiner_key: &[u8; 32],
) -> Result<Zeroizing<[u8; 96]>> {
    let shared = own.0.diffie_hellman(&PublicKey::from(*other));
    if !shared.was_contributory() {
        return Err(Error::Decode {
            kind: ObjectKind::LinkMessage,
            problem: DecodeProblem::Malformed("an ephemeral key of small order".into()),
        });
    }
    let offer_bytes = offer.to_bytes()?;
    let mut keys = Zeroizing::new([0u8; 96]);
    // 96 bytes is far below HKDF-SHA256's 8,160-byte limit: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(&offer.link_id), shared.as_bytes())
        .expand_multi_info(&[LINK_LABEL, &offer_bytes, joiner_key], &mut keys[..]);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::VaultId;

    fn offer(offerer: &Ephemeral) -> LinkOffer {
        LinkOffer {
            offerer_key: offerer.public(),
            link_id: [2; 16],
            expires_at_ms: 1_800_000_000_000,
            vault_id: VaultId::from_bytes([3; 16]),
            app_data: Vec::new(),
        }
    }

    fn pair() -> (Channel, Channel) {
        let (a, b) = (
            Ephemeral::generate().unwrap(),
            Ephemeral::generate().unwrap(),
        );
        let offer = offer(&a);
        let joiner_key = b.public();
        let joiner = Channel::joiner(b, &offer).unwrap();
        let offerer = Channel::offerer(a, &offer, &joiner_key).unwrap();
        (joiner, offerer)
    }

    #[test]
    fn both_sides_agree_on_the_code_and_talk_in_order() {
        let (mut joiner, mut offerer) = pair();
        let code = joiner.check_code();
        assert_eq!(code.len(), CHECK_CODE_DIGITS);
        assert!(code.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(offerer.check_code(), code);
        let first = joiner.seal(b"hello").unwrap();
        let second = joiner.seal(b"again").unwrap();
        assert_eq!(&offerer.open(&first).unwrap()[..], b"hello");
        // A replay of the first message fails: the counter moved on.
        assert!(offerer.open(&first).is_err());
        assert_eq!(&offerer.open(&second).unwrap()[..], b"again");
        // The offerer seals only after the right code.
        assert!(matches!(
            offerer.seal(b"too early"),
            Err(Error::Link(LinkProblem::Burned))
        ));
        offerer
            .confirm_check_code(&format!("{}-{}", &code[..3], &code[3..]))
            .unwrap();
        let welcome = offerer.seal(b"welcome").unwrap();
        assert_eq!(&joiner.open(&welcome).unwrap()[..], b"welcome");
        // A message does not open in the direction it was sent.
        assert!(offerer.open(&welcome).is_err());
    }

    #[test]
    fn one_wrong_code_burns_the_link() {
        let (joiner, mut offerer) = pair();
        let code = joiner.check_code();
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(matches!(
            offerer.confirm_check_code(&wrong),
            Err(Error::Link(LinkProblem::CheckCodeWrong))
        ));
        // The right code afterwards does not revive it, nor does anything else.
        assert!(matches!(
            offerer.confirm_check_code(&code),
            Err(Error::Link(LinkProblem::Burned))
        ));
        assert!(offerer.seal(b"welcome").is_err());
        assert!(offerer.open(b"anything").is_err());
    }

    #[test]
    fn a_swapped_joiner_key_changes_the_code() {
        let (a, b, m) = (
            Ephemeral::generate().unwrap(),
            Ephemeral::generate().unwrap(),
            Ephemeral::generate().unwrap(),
        );
        let offer = offer(&a);
        let b_public = b.public();
        let joiner = Channel::joiner(b, &offer).unwrap();
        // The bucket replaced the joiner's key with its own, m.
        let mut fooled = Channel::offerer(a, &offer, &m.public()).unwrap();
        assert_ne!(fooled.check_code(), joiner.check_code());
        assert!(fooled.confirm_check_code(&joiner.check_code()).is_err());
        // Another offer (other expiry) gives other keys.
        let mut later = offer.clone();
        later.expires_at_ms += 1;
        let again = Ephemeral::generate().unwrap();
        let other = Channel::joiner(again, &later).unwrap();
        assert_ne!(other.check_code(), joiner.check_code());
        assert_ne!(b_public, m.public());
    }

    #[test]
    fn small_order_keys_are_refused() {
        let a = Ephemeral::generate().unwrap();
        let mut weak_offer = offer(&a);
        weak_offer.offerer_key = [0; 32];
        assert!(Channel::joiner(Ephemeral::generate().unwrap(), &weak_offer).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        let good_offer = offer(&a);
        assert!(Channel::offerer(a, &good_offer, &one).is_err());
        let b = Ephemeral::generate().unwrap();
        let b_public = b.public();
        assert!(Channel::offerer(b, &good_offer, &b_public).is_err());
    }
}
