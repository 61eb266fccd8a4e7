//! The link offer: what the offering device shows as a QR code.
//!
//! ```text
//! text  = "CHATVAULT-LINK:" || BASE32(bytes)     RFC 4648 alphabet, no padding, upper case
//! bytes = version (1) = 1 || offerer key (32) || link id (16) || expires at, ms (u64 BE)
//!         || vault id (16) || app data length (u16 BE) || app data (at most 1,024 bytes)
//! ```
//!
//! Upper-case base32 and the prefix fit a QR code's alphanumeric mode (5.5 bits per character).
//! The offer holds no secret: the offerer's key is an ephemeral public key, and the app data is
//! the app's own (for example where to find the bucket; never a credential of ours).

use crate::error::{Error, Result};
use crate::keys::VaultId;

/// The text an offer starts with.
pub const LINK_PREFIX: &str = "CHATVAULT-LINK:";
/// The most app data an offer carries.
pub const MAX_APP_DATA: usize = 1024;

const VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 32 + 16 + 8 + 16 + 2;

/// A link offer (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOffer {
    /// The offering device's ephemeral X25519 public key.
    pub offerer_key: [u8; 32],
    /// A random id naming the link's objects in the bucket.
    pub link_id: [u8; 16],
    /// When the offer expires (Unix ms, the offerer's clock).
    pub expires_at_ms: u64,
    /// The vault to join.
    pub vault_id: VaultId,
    /// Opaque bytes of the app's own.
    pub app_data: Vec<u8>,
}

impl LinkOffer {
    /// The offer's bytes (see the module documentation): also what the channel's keys bind.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.app_data.len() > MAX_APP_DATA {
            return Err(Error::InvalidInput(format!(
                "link app data of {} bytes (at most {MAX_APP_DATA})",
                self.app_data.len()
            )));
        }
        let mut out = Vec::with_capacity(FIXED_LEN + self.app_data.len());
        out.push(VERSION);
        out.extend_from_slice(&self.offerer_key);
        out.extend_from_slice(&self.link_id);
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.extend_from_slice(self.vault_id.as_bytes());
        out.extend_from_slice(&(self.app_data.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.app_data);
        Ok(out)
    }

    /// The text a QR code carries.
    pub fn to_text(&self) -> Result<String> {
        Ok(format!(
            "{LINK_PREFIX}{}",
            crate::base32::encode(&self.to_bytes()?)
        ))
    }

    /// Parses an offer's text, as scanned (case and surrounding white space do not matter).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidInput(format!("not a chatvault link: {why}"));
        let text = text.trim().to_ascii_uppercase();
        let body = text
            .strip_prefix(LINK_PREFIX)
            .ok_or_else(|| bad("no CHATVAULT-LINK: prefix"))?;
        if body.len() > (FIXED_LEN + MAX_APP_DATA) * 8 / 5 + 1 {
            return Err(bad("too long"));
        }
        let bytes = crate::base32::decode(body).ok_or_else(|| bad("not base32"))?;
        let (fixed, app_data) = bytes
            .split_at_checked(FIXED_LEN)
            .ok_or_else(|| bad("too short"))?;
        if fixed[0] != VERSION {
            return Err(bad(&format!(
                "version {} (this library reads version {VERSION}: update the app)",
                fixed[0]
            )));
        }
        let array = |range: std::ops::Range<usize>| fixed[range].to_vec();
        let mut offer = LinkOffer {
            offerer_key: [0; 32],
            link_id: [0; 16],
            expires_at_ms: 0,
            vault_id: VaultId::from_bytes([0; 16]),
            app_data: app_data.to_vec(),
        };
        offer.offerer_key.copy_from_slice(&array(1..33));
        offer.link_id.copy_from_slice(&array(33..49));
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&array(49..57));
        offer.expires_at_ms = u64::from_be_bytes(expiry);
        let mut vault = [0u8; 16];
        vault.copy_from_slice(&array(57..73));
        offer.vault_id = VaultId::from_bytes(vault);
        let declared = usize::from(u16::from_be_bytes([fixed[73], fixed[74]]));
        if declared != app_data.len() || declared > MAX_APP_DATA {
            return Err(bad("app data length does not match"));
        }
        Ok(offer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> LinkOffer {
        LinkOffer {
            offerer_key: [1; 32],
            link_id: [2; 16],
            expires_at_ms: 1_800_000_000_000,
            vault_id: VaultId::from_bytes([3; 16]),
            app_data: b"s3://bucket/prefix".to_vec(),
        }
    }

    #[test]
    fn an_offer_round_trips_through_its_text_in_qr_alphanumeric_characters() {
        let text = offer().to_text().unwrap();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "-:".contains(c)),
            "{text}"
        );
        assert_eq!(LinkOffer::parse(&text).unwrap(), offer());
        assert_eq!(
            LinkOffer::parse(&format!(" {} \n", text.to_lowercase())).unwrap(),
            offer()
        );
    }

    #[test]
    fn broken_offers_are_refused_with_a_clear_error() {
        let good = offer().to_bytes().unwrap();
        let text = |bytes: &[u8]| format!("{LINK_PREFIX}{}", crate::base32::encode(bytes));
        let mut version = good.clone();
        version[0] = 2;
        let mut length = good.clone();
        length[74] ^= 1;
        let cases = [
            "https://example.com".to_owned(),
            format!("{LINK_PREFIX}!!!"),
            text(&good[..40]),
            text(&version),
            text(&length),
            text(&good[..good.len() - 1]),
        ];
        for case in cases {
            let error = LinkOffer::parse(&case).unwrap_err();
            assert!(
                matches!(error, Error::InvalidInput(ref why) if why.starts_with("not a chatvault link")),
                "{case}: {error:?}"
            );
        }
        let mut big = offer();
        big.app_data = vec![0; MAX_APP_DATA + 1];
        assert!(big.to_text().is_err());
    }
}
