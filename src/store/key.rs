//! The one definition of a valid object key, shared by every store so that a key accepted by
//! one backend is accepted by all.

use super::{StoreError, StoreResult};

/// The longest key, in bytes (S3's limit is 1024 bytes including the store's prefix; this leaves
/// room for a prefix).
pub const MAX_KEY_LEN: usize = 900;

/// Checks that `key` is a valid object key, the same way for every store.
///
/// A valid key:
/// - is 1 to [`MAX_KEY_LEN`] bytes of UTF-8 (any Unicode is fine; keys are compared as bytes,
///   never normalised);
/// - is a `/`-separated path of non-empty segments (no leading, trailing or doubled `/`);
/// - has no `.` or `..` segment;
/// - contains no backslash and no control character (including NUL).
///
/// Invalid keys are refused with [`StoreError::Other`] before any I/O, so a key can never name
/// anything outside its store.
pub fn validate_key(key: &str) -> StoreResult<()> {
    let problem = if key.is_empty() {
        Some("is empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("is too long")
    } else if key.contains('\\') {
        Some("contains a backslash")
    } else if key.chars().any(char::is_control) {
        Some("contains a control character")
    } else if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        Some("has an empty, `.` or `..` segment")
    } else {
        None
    };
    match problem {
        Some(why) => Err(StoreError::Other(format!(
            "invalid object key {key:?}: {why}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["a", "a/b", "vault/ünï-✉️/x.y", "a-b_c.d~e!f*g'(h)+=@,;:"] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "../x", "a/../b", "a/./b", "a\\b", "a\0b", "a\nb",
            &long,
        ] {
            assert!(
                matches!(validate_key(bad), Err(StoreError::Other(_))),
                "{bad:?}"
            );
        }
    }
}
