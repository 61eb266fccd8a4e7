//! Per-chat keys: random, independent of the recovery key, kept only inside the sealed keyring.

use super::Key32;
use super::secret::key_type;
use crate::error::Result;

key_type!(
    /// The random 256-bit key of one chat. Everything of that chat is sealed under it, so deleting
    /// it from the keyring (and the old keyring objects) makes the chat unreadable for good.
    ChatKey
);

impl ChatKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        Ok(ChatKey(Key32::new(crate::random::array::<32>()?)))
    }

    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        ChatKey(Key32::new(bytes))
    }
}
