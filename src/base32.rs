//! RFC 4648 base32 (upper case, no padding), the form of a link offer's QR text.
//!
//! Hand-written rather than the `data-encoding` crate: that crate's table-driven generic
//! encodings added 43 KB to the stripped mobile library (measured 2026-12-03), for two loops.

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `bytes` in upper-case base32 without padding.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Upper-case base32 without padding back to bytes: `None` for any other character, a length
/// no encoding has (1, 3 or 6 characters past a multiple of 8), or non-zero trailing bits, so
/// that every byte string has exactly one text.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    if matches!(text.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    (buffer == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_test_vectors_round_trip() {
        // RFC 4648 section 10, without the padding.
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn every_length_round_trips_and_other_texts_are_refused() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..40 {
            assert_eq!(decode(&encode(&bytes[..len])).unwrap(), &bytes[..len]);
        }
        for bad in ["M", "MZX", "MZXW6Y", "my", "MZ=", "MZ1", "MZ", "MZXR"] {
            // "MZ" and "MZXR" carry non-zero trailing bits ("MY" and "MZXQ" are the encodings).
            assert!(decode(bad).is_none(), "{bad}");
        }
    }
}
