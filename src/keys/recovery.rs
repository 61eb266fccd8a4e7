//! The recovery key: 256 random bits that restore a whole vault, and the text form a person writes
//! on paper or keeps in a password manager.
//!
//! # Text form (version 1)
//! 54 characters from Crockford's base32 alphabet `0123456789ABCDEFGHJKMNPQRSTVWXYZ` (no `I`, `L`,
//! `O` or `U`), printed in nine groups of six joined by `-`:
//!
//! - characters 1..=52 carry 260 bits, most significant first: the 256 key bits, then a 4-bit
//!   version (1);
//! - characters 53 and 54 are check characters chosen so that, reading each character as an element
//!   `s_i` of GF(32) (polynomial `x^5 + x^2 + 1`, `α = x`), both `Σ s_i` and `Σ α^i·s_i` over all 54
//!   positions are zero.
//!
//! The first sum changes under any single substituted character; the second changes under any swap
//! of two different adjacent characters (it changes by `α^i·(1+α)·(a+b) ≠ 0`). So every single typo
//! and every adjacent transposition is caught at parse time, anywhere in the text, check characters
//! included; `tests` check both claims exhaustively on a sample of keys.
//!
//! Parsing ignores case, spaces and dashes, and reads the look-alikes `O` as `0` and `I`/`L` as `1`
//! (as Crockford's base32 does).

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::Key32;
use crate::error::{Error, RecoveryKeyError, Result};

/// The recovery-key alphabet (Crockford base32).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Data characters: 256 key bits and a 4-bit version make 260 bits, 52 characters of 5 bits.
const DATA_CHARS: usize = 52;
/// Characters in the text form, not counting separators.
pub const RECOVERY_KEY_TEXT_CHARS: usize = DATA_CHARS + 2;
/// Characters per printed group.
const GROUP: usize = 6;
/// The text-form version this library writes and reads.
const TEXT_VERSION: u8 = 1;

/// The secret a person holds. Everything in the vault derives from it.
///
/// Zeroized on drop; `Debug` does not print it. Compare two keys with `==` (constant time).
#[derive(Clone)]
pub struct RecoveryKey(Key32);

impl RecoveryKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut bytes = crate::random::array::<32>()?;
        let key = RecoveryKey(Key32::new(bytes));
        bytes.zeroize();
        Ok(key)
    }

    /// A key from its 32 raw bytes (as stored by an app in the Keychain or Keystore).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RecoveryKey(Key32::new(bytes))
    }

    /// The 32 raw bytes, for the app to keep in the platform's secure storage.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.0.bytes())
    }

    pub(crate) fn secret(&self) -> &Key32 {
        &self.0
    }

    /// The text form: nine dash-separated groups of six characters, upper case.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut symbols = Zeroizing::new([0u8; RECOVERY_KEY_TEXT_CHARS]);
        encode_data_symbols(self.0.bytes(), &mut symbols[..DATA_CHARS]);
        let (c1, c2) = check_symbols(&symbols[..DATA_CHARS]);
        symbols[DATA_CHARS] = c1;
        symbols[DATA_CHARS + 1] = c2;

        let mut text = Zeroizing::new(String::with_capacity(RECOVERY_KEY_TEXT_CHARS + 8));
        for (i, &symbol) in symbols.iter().enumerate() {
            if i > 0 && i % GROUP == 0 {
                text.push('-');
            }
            text.push(char::from(ALPHABET[usize::from(symbol)]));
        }
        text
    }

    /// Parses the text form, tolerating case, spaces, dashes and the look-alikes `O`, `I`, `L`.
    ///
    /// A typo is reported here, as [`Error::RecoveryKeyMistyped`], never later as a decryption
    /// failure.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_text(text).map_err(Error::RecoveryKeyMistyped)
    }

    fn parse_text(text: &str) -> Result<Self, RecoveryKeyError> {
        let mut symbols = Zeroizing::new([0u8; RECOVERY_KEY_TEXT_CHARS]);
        let mut count = 0usize;
        for character in text.chars() {
            if character.is_whitespace() || character == '-' {
                continue;
            }
            count += 1;
            let symbol = symbol_of(character).ok_or(RecoveryKeyError::InvalidCharacter {
                character,
                position: count,
            })?;
            if let Some(slot) = symbols.get_mut(count - 1) {
                *slot = symbol;
            }
        }
        if count != RECOVERY_KEY_TEXT_CHARS {
            return Err(RecoveryKeyError::WrongLength {
                found: count,
                expected: RECOVERY_KEY_TEXT_CHARS,
            });
        }
        if !syndromes_are_zero(&symbols[..]) {
            return Err(RecoveryKeyError::ChecksumMismatch);
        }
        let (bytes, version) = decode_data_symbols(&symbols[..DATA_CHARS]);
        if version != TEXT_VERSION {
            return Err(RecoveryKeyError::UnsupportedVersion(version));
        }
        Ok(RecoveryKey(Key32::new(*bytes)))
    }
}

impl PartialEq for RecoveryKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes().ct_eq(other.0.bytes()).into()
    }
}

impl Eq for RecoveryKey {}

impl core::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

/// The 5-bit value of a typed character, or `None` if it is not part of the alphabet.
fn symbol_of(character: char) -> Option<u8> {
    let upper = match character.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    let byte = u8::try_from(upper).ok()?;
    ALPHABET
        .iter()
        .position(|&a| a == byte)
        .and_then(|p| u8::try_from(p).ok())
}

/// Writes 256 key bits followed by the 4-bit version as 52 five-bit symbols, most significant first.
fn encode_data_symbols(key: &[u8; 32], out: &mut [u8]) {
    let mut accumulator: u16 = 0;
    let mut bits = 0u32;
    let mut next = 0usize;
    let trailer = [TEXT_VERSION << 4];
    for &byte in key.iter().chain(trailer.iter()) {
        accumulator = (accumulator << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 && next < out.len() {
            bits -= 5;
            out[next] = ((accumulator >> bits) & 0x1f) as u8;
            next += 1;
        }
    }
    accumulator.zeroize();
}

/// Inverse of [`encode_data_symbols`]: the key bytes and the version.
fn decode_data_symbols(symbols: &[u8]) -> (Zeroizing<[u8; 32]>, u8) {
    let mut out = Zeroizing::new([0u8; 33]);
    let mut accumulator: u16 = 0;
    let mut bits = 0u32;
    let mut next = 0usize;
    for &symbol in symbols {
        accumulator = (accumulator << 5) | u16::from(symbol & 0x1f);
        bits += 5;
        if bits >= 8 && next < out.len() {
            bits -= 8;
            out[next] = (accumulator >> bits) as u8;
            next += 1;
        }
    }
    // 52 symbols = 260 bits = 32 bytes + 4 bits; the last 4 bits are left in the accumulator.
    let version = (accumulator & 0x0f) as u8;
    accumulator.zeroize();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out[..32]);
    (key, version)
}

/// Multiplication in GF(32) with the reduction polynomial x^5 + x^2 + 1.
fn gf32_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0x20 != 0 {
            a ^= 0x25;
        }
    }
    product
}

fn gf32_pow(base: u8, exponent: usize) -> u8 {
    (0..exponent % 31).fold(1u8, |acc, _| gf32_mul(acc, base))
}

/// Multiplicative inverse (a^30, since the multiplicative group has order 31); `a` must be non-zero.
fn gf32_inv(a: u8) -> u8 {
    gf32_pow(a, 30)
}

const ALPHA: u8 = 2;

/// The two syndromes `Σ s_i` and `Σ α^i s_i` of a symbol sequence.
fn syndromes(symbols: &[u8]) -> (u8, u8) {
    let mut plain = 0u8;
    let mut weighted = 0u8;
    let mut power = 1u8;
    for &symbol in symbols {
        plain ^= symbol;
        weighted ^= gf32_mul(power, symbol);
        power = gf32_mul(power, ALPHA);
    }
    (plain, weighted)
}

fn syndromes_are_zero(symbols: &[u8]) -> bool {
    syndromes(symbols) == (0, 0)
}

/// The check symbols at positions n and n+1 that make both syndromes of the whole text zero.
fn check_symbols(data: &[u8]) -> (u8, u8) {
    let n = data.len();
    let (s1, s2) = syndromes(data);
    let alpha_n = gf32_pow(ALPHA, n);
    let alpha_n1 = gf32_pow(ALPHA, n + 1);
    // c1·α^n·(1+α) = S2 + α^(n+1)·S1 and c2 = S1 + c1.
    let numerator = s2 ^ gf32_mul(alpha_n1, s1);
    let denominator = gf32_mul(alpha_n, 1 ^ ALPHA);
    let c1 = gf32_mul(numerator, gf32_inv(denominator));
    (c1, s1 ^ c1)
}

/// A text form with an arbitrary version nibble, for tests and test vectors of version handling.
#[cfg(test)]
pub(crate) fn text_with_version(key: &[u8; 32], version: u8) -> String {
    let mut symbols = [0u8; RECOVERY_KEY_TEXT_CHARS];
    encode_data_symbols(key, &mut symbols[..DATA_CHARS]);
    symbols[DATA_CHARS - 1] = (symbols[DATA_CHARS - 1] & 0x10) | (version & 0x0f);
    let (c1, c2) = check_symbols(&symbols[..DATA_CHARS]);
    symbols[DATA_CHARS] = c1;
    symbols[DATA_CHARS + 1] = c2;
    symbols
        .iter()
        .map(|&s| char::from(ALPHABET[usize::from(s)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_keys() -> Vec<RecoveryKey> {
        let mut keys = vec![
            RecoveryKey::from_bytes([0u8; 32]),
            RecoveryKey::from_bytes([0xff; 32]),
        ];
        for seed in 0u8..62 {
            let mut bytes = [0u8; 32];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = seed
                    .wrapping_mul(151)
                    .wrapping_add((i as u8).wrapping_mul(97))
                    ^ (i as u8);
            }
            keys.push(RecoveryKey::from_bytes(bytes));
        }
        keys
    }

    fn compact(text: &str) -> Vec<char> {
        text.chars().filter(|c| *c != '-').collect()
    }

    #[test]
    fn gf32_field_axioms_hold() {
        for a in 1u8..32 {
            assert_eq!(gf32_mul(a, gf32_inv(a)), 1, "inverse of {a}");
        }
        // α generates the whole multiplicative group: order exactly 31.
        let mut seen = std::collections::HashSet::new();
        for i in 0..31 {
            assert!(seen.insert(gf32_pow(ALPHA, i)));
        }
        assert_eq!(gf32_pow(ALPHA, 31), 1);
    }

    #[test]
    fn text_round_trips_and_has_the_documented_shape() {
        for key in sample_keys() {
            let text = key.to_text();
            assert_eq!(text.len(), 54 + 8);
            assert_eq!(text.split('-').count(), 9);
            assert!(text.split('-').all(|g| g.len() == 6));
            assert_eq!(RecoveryKey::parse(&text).unwrap(), key);
        }
    }

    #[test]
    fn parsing_tolerates_case_spaces_dashes_and_look_alikes() {
        let key = RecoveryKey::from_bytes([0u8; 32]);
        let text = key.to_text();
        // The all-zero key is almost all '0': type it with O and o, in lower case, with spaces.
        let sloppy: String = compact(&text)
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("  ")
            .replacen('0', "O", 3)
            .replacen('0', "o", 3)
            .to_lowercase();
        assert_eq!(RecoveryKey::parse(&sloppy).unwrap(), key);
        assert_eq!(symbol_of('l'), Some(1));
        assert_eq!(symbol_of('I'), Some(1));
        assert_eq!(symbol_of('U'), None);
    }

    /// Every single-character substitution, in every position, on every sample key, is rejected.
    #[test]
    fn every_single_substitution_is_caught() {
        let mut checked = 0u32;
        for key in sample_keys() {
            let chars = compact(&key.to_text());
            for position in 0..chars.len() {
                for &replacement in ALPHABET.iter() {
                    let replacement = char::from(replacement);
                    if replacement == chars[position] {
                        continue;
                    }
                    let mut typo = chars.clone();
                    typo[position] = replacement;
                    let typo: String = typo.into_iter().collect();
                    assert!(
                        RecoveryKey::parse(&typo).is_err(),
                        "substitution at {position} accepted"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 64 * 54 * 31);
    }

    /// Every swap of two different adjacent characters is rejected.
    #[test]
    fn every_adjacent_transposition_is_caught() {
        let mut checked = 0u32;
        for key in sample_keys() {
            let chars = compact(&key.to_text());
            for position in 0..chars.len() - 1 {
                if chars[position] == chars[position + 1] {
                    continue;
                }
                let mut swapped = chars.clone();
                swapped.swap(position, position + 1);
                let swapped: String = swapped.into_iter().collect();
                assert_eq!(
                    RecoveryKey::parse(&swapped).unwrap_err().to_string(),
                    "recovery key mistyped: checksum mismatch: a character is mistyped"
                );
                checked += 1;
            }
        }
        assert!(
            checked > 64 * 40,
            "too few distinct adjacent pairs: {checked}"
        );
    }

    #[test]
    fn mistakes_are_reported_precisely() {
        let text = RecoveryKey::from_bytes([7u8; 32]).to_text();
        let chars = compact(&text);
        let short: String = chars[..53].iter().collect();
        assert!(matches!(
            RecoveryKey::parse(&short),
            Err(Error::RecoveryKeyMistyped(RecoveryKeyError::WrongLength {
                found: 53,
                expected: 54
            }))
        ));
        let mut bad = chars.clone();
        bad[10] = 'U';
        let bad: String = bad.into_iter().collect();
        assert!(matches!(
            RecoveryKey::parse(&bad),
            Err(Error::RecoveryKeyMistyped(
                RecoveryKeyError::InvalidCharacter {
                    character: 'U',
                    position: 11
                }
            ))
        ));
        assert!(RecoveryKey::parse("").is_err());
        assert!(RecoveryKey::parse(&"é".repeat(54)).is_err());
        assert!(RecoveryKey::parse(&"0".repeat(10_000)).is_err());
    }

    #[test]
    fn unknown_versions_are_rejected() {
        let text = text_with_version(&[0x5a; 32], 2);
        assert!(matches!(
            RecoveryKey::parse(&text),
            Err(Error::RecoveryKeyMistyped(
                RecoveryKeyError::UnsupportedVersion(2)
            ))
        ));
    }

    #[test]
    fn debug_does_not_leak() {
        let key = RecoveryKey::from_bytes([0xab; 32]);
        let debug = format!("{key:?}");
        assert_eq!(debug, "RecoveryKey(<redacted>)");
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            RecoveryKey::generate().unwrap(),
            RecoveryKey::generate().unwrap()
        );
    }
}
