//! A 256-bit secret that zeroizes itself and never prints.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes. Wiped on drop; `Debug` prints no byte of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Key32([u8; 32]);

impl Key32 {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        Key32(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// An HMAC-SHA256 keyed with these bytes.
    pub(crate) fn hmac(&self) -> hmac::Hmac<sha2::Sha256> {
        use hmac::KeyInit;
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty-key HMAC
        // rather than panic if that ever changed.
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .unwrap_or_else(|_| hmac::Hmac::<sha2::Sha256>::new(&Default::default()))
    }
}

impl core::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Declares a named 256-bit key type wrapping [`Key32`]: its own type, so one kind of key cannot be
/// passed where another is expected.
macro_rules! key_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone)]
        // Some key kinds only seal object kinds of later format features; all are derived now so
        // their labels are fixed by the test vectors.
        #[allow(dead_code)]
        pub struct $name(pub(crate) $crate::keys::Key32);

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}
pub(crate) use key_type;
