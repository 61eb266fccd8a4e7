//! Linking a new device by QR over the bucket: the offer a QR code carries and the encrypted
//! channel the two devices talk through, and the messages of the protocol that runs over it
//! (docs/DEVICES.md, "Linking"). The vault drives it (`src/vault/link.rs`).

mod channel;
mod exchange;
mod offer;

pub use channel::{CHECK_CODE_DIGITS, Channel, Ephemeral};
pub use exchange::{
    JoinRecord, LinkPart, MAX_LINK_OBJECT, Welcome, joiner_key, link_object_name, open_join,
    open_welcome, parse_link_name, seal_join, seal_welcome,
};
pub use offer::{LINK_PREFIX, LinkOffer, MAX_APP_DATA};
