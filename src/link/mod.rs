//! Linking a new device by QR over the bucket: the offer a QR code carries and the encrypted
//! channel the two devices talk through (docs/DEVICES.md, "Linking"). The protocol that runs
//! over it (link objects in the bucket, roster entry, epoch key) builds on these.

mod channel;
mod offer;

pub use channel::{CHECK_CODE_DIGITS, Channel, Ephemeral};
pub use offer::{LINK_PREFIX, LinkOffer, MAX_APP_DATA};
