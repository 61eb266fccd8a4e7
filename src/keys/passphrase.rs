//! The optional passphrase envelope: the recovery key sealed under a key stretched from a
//! passphrase with Argon2id, stored in the bucket so a person can restore with a passphrase alone.
//!
//! Anyone who can read the bucket can run an offline guessing attack on the envelope, limited only
//! by Argon2id's cost: `docs/SECURITY.md` spells out the risk. Apps should enforce a strong
//! passphrase with [`PassphrasePolicy`].
//!
//! ```text
//! envelope = header (8, kind 3) || protobuf PassphraseEnvelope { kdf, nonce, ciphertext }
//! kek      = Argon2id v0x13 (passphrase NFC-normalised as UTF-8, salt, m, t, p, 32 bytes)
//! aad      = header (8) || vault id (16) || m (u32 BE) || t (u32 BE) || p (u32 BE) || salt_len (u8) || salt
//! ciphertext = XChaCha20-Poly1305(kek, nonce, aad, recovery key bytes (32))
//! ```

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use prost::Message as _;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use super::{RecoveryKey, VaultKeys};
use crate::error::{DecodeProblem, Error, Result};
use crate::format::{HEADER_LEN, Header, ObjectKind, decode_body, proto};
use crate::keys::VaultId;

/// Salt length written by this library.
const SALT_LEN: usize = 16;
const MIN_SALT_LEN: usize = 16;
const MAX_SALT_LEN: usize = 64;
/// Envelopes are tiny; anything larger is rejected before decoding.
const MAX_ENVELOPE_LEN: usize = 4096;
/// Longest passphrase accepted, in characters (bounds hashing work and memory).
const MAX_PASSPHRASE_CHARS: usize = 1024;

/// Argon2id cost parameters, stored in each envelope so they can be raised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Params {
    /// The default: 32 MiB, 8 passes, 1 lane. 32 MiB leaves headroom under the ~48 MiB an iOS app
    /// extension may use. Eight passes took 166 ms on the 2-core x86-64 CI machine (`cargo run
    /// --release --example argon2_cost` prints the figure for the machine it runs on); phone cores
    /// are slower at memory-hard work, which puts an unlock near the 0.5-1 s target. Raise
    /// `iterations`, not memory, for more cost.
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 32 * 1024,
        iterations: 8,
        parallelism: 1,
    };
    /// Lower bounds accepted when writing or reading an envelope.
    pub const MIN: Argon2Params = Argon2Params {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    /// Upper bounds accepted when reading an envelope, so a hostile bucket cannot make a phone
    /// allocate gigabytes or spin for minutes.
    pub const MAX: Argon2Params = Argon2Params {
        memory_kib: 256 * 1024,
        iterations: 16,
        parallelism: 8,
    };

    fn within_bounds(&self) -> bool {
        let (lo, hi) = (Self::MIN, Self::MAX);
        (lo.memory_kib..=hi.memory_kib).contains(&self.memory_kib)
            && (lo.iterations..=hi.iterations).contains(&self.iterations)
            && (lo.parallelism..=hi.parallelism).contains(&self.parallelism)
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The app's rule for acceptable passphrases, checked before anything is sealed.
///
/// Length is counted in Unicode scalar values after NFC normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassphrasePolicy {
    /// Minimum length in characters.
    pub min_chars: usize,
    /// Minimum number of different characters (rejects "aaaaaaaaaaaa").
    pub min_distinct_chars: usize,
}

impl Default for PassphrasePolicy {
    /// 12 characters, 6 of them different.
    fn default() -> Self {
        PassphrasePolicy {
            min_chars: 12,
            min_distinct_chars: 6,
        }
    }
}

impl PassphrasePolicy {
    /// Checks a passphrase against the policy.
    pub fn check(&self, passphrase: &str) -> Result<()> {
        let normalized = normalize(passphrase)?;
        let chars: Vec<char> = normalized.chars().collect();
        if chars.len() < self.min_chars {
            return Err(Error::WeakPassphrase(format!(
                "{} characters, at least {} needed",
                chars.len(),
                self.min_chars
            )));
        }
        let distinct: std::collections::BTreeSet<char> = chars.iter().copied().collect();
        if distinct.len() < self.min_distinct_chars {
            return Err(Error::WeakPassphrase(format!(
                "{} different characters, at least {} needed",
                distinct.len(),
                self.min_distinct_chars
            )));
        }
        Ok(())
    }
}

/// NFC normalisation, so that "é" typed on iOS (often precomposed) and on Android (sometimes
/// decomposed) stretch to the same key.
fn normalize(passphrase: &str) -> Result<Zeroizing<String>> {
    if passphrase.chars().count() > MAX_PASSPHRASE_CHARS {
        return Err(Error::invalid_input(format!(
            "passphrase longer than {MAX_PASSPHRASE_CHARS} characters"
        )));
    }
    Ok(Zeroizing::new(passphrase.nfc().collect()))
}

fn stretch(passphrase: &str, salt: &[u8], params: Argon2Params) -> Result<Zeroizing<[u8; 32]>> {
    let normalized = normalize(passphrase)?;
    let argon_params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| Error::invalid_input(format!("Argon2 parameters: {e}")))?;
    let mut kek = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into(normalized.as_bytes(), salt, &mut kek[..])
        .map_err(|e| Error::invalid_input(format!("Argon2: {e}")))?;
    Ok(kek)
}

fn associated_data(vault_id: &VaultId, params: Argon2Params, salt: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + 16 + 13 + salt.len());
    aad.extend_from_slice(&Header::new(ObjectKind::PassphraseEnvelope).to_bytes());
    aad.extend_from_slice(vault_id.as_bytes());
    aad.extend_from_slice(&params.memory_kib.to_be_bytes());
    aad.extend_from_slice(&params.iterations.to_be_bytes());
    aad.extend_from_slice(&params.parallelism.to_be_bytes());
    aad.push(salt.len() as u8);
    aad.extend_from_slice(salt);
    aad
}

/// The recovery key wrapped under a passphrase.
pub struct PassphraseEnvelope;

/// The checked fields of an envelope, before any Argon2 work.
struct DecodedEnvelope {
    params: Argon2Params,
    salt: Vec<u8>,
    nonce: [u8; 24],
    ciphertext: Vec<u8>,
}

impl PassphraseEnvelope {
    /// Wraps `recovery_key` under `passphrase`, after checking it against `policy`.
    /// Returns the envelope's bytes, to be stored in the vault's prefix.
    pub fn seal(
        recovery_key: &RecoveryKey,
        passphrase: &str,
        params: Argon2Params,
        policy: &PassphrasePolicy,
    ) -> Result<Vec<u8>> {
        policy.check(passphrase)?;
        let salt = crate::random::array::<SALT_LEN>()?;
        let nonce = crate::random::array::<24>()?;
        Self::seal_with(recovery_key, passphrase, params, &salt, &nonce)
    }

    /// Seals with a given salt and nonce (the generator of test vectors uses this).
    pub(crate) fn seal_with(
        recovery_key: &RecoveryKey,
        passphrase: &str,
        params: Argon2Params,
        salt: &[u8],
        nonce: &[u8; 24],
    ) -> Result<Vec<u8>> {
        if !params.within_bounds() {
            return Err(Error::invalid_input(format!(
                "Argon2 parameters {params:?} outside {:?}..={:?}",
                Argon2Params::MIN,
                Argon2Params::MAX
            )));
        }
        let vault_id = *VaultKeys::derive(recovery_key).vault_id();
        let kek = stretch(passphrase, salt, params)?;
        let aad = associated_data(&vault_id, params, salt);
        let ciphertext = XChaCha20Poly1305::new((&*kek).into())
            .encrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: &recovery_key.to_bytes()[..],
                    aad: &aad,
                },
            )
            .map_err(|_| Error::invalid_input("AEAD refused the input length"))?;
        let body = proto::PassphraseEnvelope {
            kdf: Some(proto::Argon2idParams {
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                parallelism: params.parallelism,
                salt: salt.to_vec(),
            }),
            nonce: nonce.to_vec(),
            ciphertext,
        };
        let mut out = Header::new(ObjectKind::PassphraseEnvelope)
            .to_bytes()
            .to_vec();
        body.encode(&mut out)
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        Ok(out)
    }

    /// The Argon2id parameters an envelope asks for, without doing the work (an app can show a
    /// wait indicator, or refuse parameters too costly for an app extension).
    pub fn params(envelope: &[u8]) -> Result<Argon2Params> {
        Ok(Self::decode(envelope)?.params)
    }

    fn decode(envelope: &[u8]) -> Result<DecodedEnvelope> {
        let kind = ObjectKind::PassphraseEnvelope;
        let fail = |problem| Error::decode(kind, problem);
        let malformed = |why: &str| fail(DecodeProblem::Malformed(why.to_owned()));
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(fail(DecodeProblem::TooLarge {
                len: envelope.len() as u64,
                max: MAX_ENVELOPE_LEN as u64,
            }));
        }
        Header::parse(envelope, kind)?;
        let body: proto::PassphraseEnvelope = decode_body(kind, &envelope[HEADER_LEN..])?;
        let kdf = body
            .kdf
            .ok_or_else(|| malformed("missing KDF parameters"))?;
        let params = Argon2Params {
            memory_kib: kdf.memory_kib,
            iterations: kdf.iterations,
            parallelism: kdf.parallelism,
        };
        if !params.within_bounds() {
            return Err(malformed("Argon2 parameters out of bounds"));
        }
        if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&kdf.salt.len()) {
            return Err(malformed("salt length out of bounds"));
        }
        let nonce: [u8; 24] = body
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| malformed("nonce is not 24 bytes"))?;
        if body.ciphertext.len() != 32 + 16 {
            return Err(malformed("ciphertext is not 48 bytes"));
        }
        Ok(DecodedEnvelope {
            params,
            salt: kdf.salt,
            nonce,
            ciphertext: body.ciphertext,
        })
    }

    /// Unwraps the recovery key of vault `vault_id` from its envelope.
    ///
    /// Fails with [`Error::WrongPassphrase`] when the passphrase (or the envelope) is wrong, and
    /// with [`Error::Decode`] when the envelope is not a well-formed envelope at all.
    pub fn open(envelope: &[u8], vault_id: &VaultId, passphrase: &str) -> Result<RecoveryKey> {
        let decoded = Self::decode(envelope)?;
        let kek = stretch(passphrase, &decoded.salt, decoded.params)?;
        Self::unwrap_with(&decoded, &kek, vault_id)
    }

    /// The second half of [`open`](Self::open), apart so that a test can unwrap with a key
    /// stretched from other parameters than the envelope declares.
    fn unwrap_with(
        decoded: &DecodedEnvelope,
        kek: &[u8; 32],
        vault_id: &VaultId,
    ) -> Result<RecoveryKey> {
        let DecodedEnvelope {
            params,
            salt,
            nonce,
            ciphertext,
        } = decoded;
        let aad = associated_data(vault_id, *params, salt);
        let plaintext = Zeroizing::new(
            XChaCha20Poly1305::new(kek.into())
                .decrypt(
                    &XNonce::from(*nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| Error::WrongPassphrase)?,
        );
        let bytes: [u8; 32] = plaintext.as_slice().try_into().map_err(|_| {
            Error::decode(
                ObjectKind::PassphraseEnvelope,
                DecodeProblem::Malformed("wrapped key is not 32 bytes".to_owned()),
            )
        })?;
        let key = RecoveryKey::from_bytes(bytes);
        if VaultKeys::derive(&key).vault_id() != vault_id {
            return Err(Error::decode(
                ObjectKind::PassphraseEnvelope,
                DecodeProblem::Malformed("wrapped key belongs to another vault".to_owned()),
            ));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheapest parameters allowed: the tests exercise the format, not the cost.
    const FAST: Argon2Params = Argon2Params::MIN;

    fn envelope(passphrase: &str) -> (RecoveryKey, VaultId, Vec<u8>) {
        let key = RecoveryKey::from_bytes([4u8; 32]);
        let vault_id = *VaultKeys::derive(&key).vault_id();
        let env =
            PassphraseEnvelope::seal(&key, passphrase, FAST, &PassphrasePolicy::default()).unwrap();
        (key, vault_id, env)
    }

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let (key, vault_id, env) = envelope("correct horse battery staple");
        assert_eq!(
            PassphraseEnvelope::open(&env, &vault_id, "correct horse battery staple").unwrap(),
            key
        );
        assert!(matches!(
            PassphraseEnvelope::open(&env, &vault_id, "correct horse battery stapler"),
            Err(Error::WrongPassphrase)
        ));
        assert_eq!(PassphraseEnvelope::params(&env).unwrap(), FAST);
    }

    #[test]
    fn unicode_forms_of_one_passphrase_open_the_same_envelope() {
        // "é" precomposed (U+00E9) and decomposed (e + U+0301).
        let (key, vault_id, env) = envelope("caf\u{e9} au lait, s'il vous pla\u{ee}t");
        assert_eq!(
            PassphraseEnvelope::open(
                &env,
                &vault_id,
                "cafe\u{301} au lait, s'il vous plai\u{302}t"
            )
            .unwrap(),
            key
        );
    }

    #[test]
    fn envelope_is_bound_to_its_vault() {
        let (_, _, env) = envelope("correct horse battery staple");
        let other = VaultId::from_bytes([0; 16]);
        assert!(matches!(
            PassphraseEnvelope::open(&env, &other, "correct horse battery staple"),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn weak_passphrases_are_refused() {
        let key = RecoveryKey::from_bytes([4u8; 32]);
        let policy = PassphrasePolicy::default();
        for weak in ["short", "aaaaaaaaaaaaaaaa", "abababababababab"] {
            assert!(matches!(
                PassphraseEnvelope::seal(&key, weak, FAST, &policy),
                Err(Error::WeakPassphrase(_))
            ));
        }
        let lenient = PassphrasePolicy {
            min_chars: 4,
            min_distinct_chars: 1,
        };
        assert!(PassphraseEnvelope::seal(&key, "short", FAST, &lenient).is_ok());
    }

    #[test]
    fn out_of_bounds_parameters_are_refused_when_writing() {
        let key = RecoveryKey::from_bytes([4u8; 32]);
        let huge = Argon2Params {
            memory_kib: Argon2Params::MAX.memory_kib + 1,
            ..FAST
        };
        assert!(matches!(
            PassphraseEnvelope::seal(
                &key,
                "correct horse battery staple",
                huge,
                &Default::default()
            ),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn damaged_envelopes_are_rejected_without_panicking() {
        let (_, vault_id, env) = envelope("correct horse battery staple");
        let pass = "correct horse battery staple";
        // Every truncation.
        for len in 0..env.len() {
            assert!(PassphraseEnvelope::open(&env[..len], &vault_id, pass).is_err());
        }
        // Oversized input.
        let mut big = env.clone();
        big.resize(MAX_ENVELOPE_LEN + 1, 0);
        assert!(matches!(
            PassphraseEnvelope::open(&big, &vault_id, pass),
            Err(Error::Decode {
                problem: DecodeProblem::TooLarge { .. },
                ..
            })
        ));
        // Garbage after a valid header.
        let mut garbage = env[..HEADER_LEN].to_vec();
        garbage.extend_from_slice(&[0xff; 60]);
        assert!(matches!(
            PassphraseEnvelope::open(&garbage, &vault_id, pass),
            Err(Error::Decode { .. })
        ));
        // Wrong version.
        let mut v2 = env.clone();
        v2[4] = 2;
        assert!(matches!(
            PassphraseEnvelope::open(&v2, &vault_id, pass),
            Err(Error::Decode {
                problem: DecodeProblem::UnsupportedVersion(2),
                ..
            })
        ));
    }

    fn reencode(env: &[u8], edit: impl FnOnce(&mut proto::PassphraseEnvelope)) -> Vec<u8> {
        let mut body = proto::PassphraseEnvelope::decode(&env[HEADER_LEN..]).unwrap();
        edit(&mut body);
        [&env[..HEADER_LEN], &body.encode_to_vec()[..]].concat()
    }

    #[test]
    fn hostile_parameters_are_rejected_before_any_work() {
        let (_, vault_id, env) = envelope("correct horse battery staple");
        let pass = "correct horse battery staple";
        type Edit = Box<dyn FnOnce(&mut proto::PassphraseEnvelope)>;
        let edits: Vec<Edit> = vec![
            Box::new(|b| b.kdf.as_mut().unwrap().memory_kib = u32::MAX),
            Box::new(|b| b.kdf.as_mut().unwrap().iterations = 1_000_000),
            Box::new(|b| b.kdf.as_mut().unwrap().parallelism = 0),
            Box::new(|b| b.kdf.as_mut().unwrap().salt = vec![1; 4]),
            Box::new(|b| b.kdf = None),
            Box::new(|b| b.nonce.truncate(12)),
            Box::new(|b| b.ciphertext.push(0)),
        ];
        for edit in edits {
            let hostile = reencode(&env, edit);
            assert!(matches!(
                PassphraseEnvelope::open(&hostile, &vault_id, pass),
                Err(Error::Decode {
                    problem: DecodeProblem::Malformed(_),
                    ..
                })
            ));
        }
        // Changing the cost within bounds fails to open (here Argon2 alone would already
        // yield another key; the test below isolates the AAD).
        let cheaper = reencode(&env, |b| b.kdf.as_mut().unwrap().iterations = 2);
        assert!(matches!(
            PassphraseEnvelope::open(&cheaper, &vault_id, pass),
            Err(Error::WrongPassphrase)
        ));
    }

    /// Every parameter is an Argon2 input, so a tampered envelope opened normally fails
    /// whether or not the parameters are authenticated: the key comes out different. To see
    /// the AAD at work, each tampered envelope is unwrapped with the key stretched from the
    /// genuine parameters, as if the KDF ignored the tampered field (or an attacker had found
    /// a way to make it). Only the parameters bound into the AAD can then refuse it.
    #[test]
    fn every_parameter_is_authenticated_apart_from_the_key_it_stretches() {
        let (key, vault_id, env) = envelope("correct horse battery staple");
        let genuine = PassphraseEnvelope::decode(&env).unwrap();
        let kek = stretch(
            "correct horse battery staple",
            &genuine.salt,
            genuine.params,
        )
        .unwrap();
        // The control: this key opens the genuine envelope.
        assert_eq!(
            PassphraseEnvelope::unwrap_with(&genuine, &kek, &vault_id).unwrap(),
            key
        );
        type Edit = Box<dyn FnOnce(&mut proto::Argon2idParams)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("memory", Box::new(|k| k.memory_kib += 1024)),
            ("iterations", Box::new(|k| k.iterations += 1)),
            ("parallelism", Box::new(|k| k.parallelism += 1)),
            ("salt", Box::new(|k| k.salt[0] ^= 1)),
            ("salt length", Box::new(|k| k.salt.push(0))),
        ];
        for (field, edit) in edits {
            let tampered = reencode(&env, |b| edit(b.kdf.as_mut().unwrap()));
            let decoded = PassphraseEnvelope::decode(&tampered).unwrap();
            assert!(
                matches!(
                    PassphraseEnvelope::unwrap_with(&decoded, &kek, &vault_id),
                    Err(Error::WrongPassphrase)
                ),
                "a tampered {field} was accepted"
            );
        }
    }
}
