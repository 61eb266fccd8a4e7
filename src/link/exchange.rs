//! The link protocol's messages and where they live in the bucket (FORMAT.md section 13, "Link
//! protocol"). No I/O here: the vault's link driver (`src/vault/link.rs`) moves these bytes.
//!
//! ```text
//! links/<link id hex>/join    = joiner's ephemeral key (32) || channel message 0 (LinkJoin)
//! links/<link id hex>/welcome = channel message 0 from the offerer (LinkWelcome)
//! links/<link id hex>/burned  = empty: a wrong code or the expiry ended the link
//! ```

use prost::Message as _;
use zeroize::Zeroizing;

use super::Channel;
use crate::devices::DevicePublicKeys;
use crate::error::{DecodeProblem, Error, Result};
use crate::format::{ObjectKind, proto};
use crate::keys::{EpochSecret, VaultId};
use crate::sync::DeviceId;
use crate::sync::roster::{EntryId, MAX_DEVICE_NAME_LEN, MAX_PLATFORM_LEN};

/// The largest link object a device reads: a join or welcome is a few hundred bytes.
pub const MAX_LINK_OBJECT: u64 = 4096;

/// Which object of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkPart {
    /// The joiner's answer to the offer.
    Join,
    /// The offerer's answer, after the right check code.
    Welcome,
    /// The link ended without a welcome.
    Burned,
}

impl LinkPart {
    fn as_str(self) -> &'static str {
        match self {
            LinkPart::Join => "join",
            LinkPart::Welcome => "welcome",
            LinkPart::Burned => "burned",
        }
    }
}

const LINKS_PREFIX: &str = "links/";

/// The name of one object of link `link_id`, inside the vault prefix.
pub fn link_object_name(link_id: &[u8; 16], part: LinkPart) -> String {
    format!(
        "{LINKS_PREFIX}{}/{}",
        crate::hex::encode(link_id),
        part.as_str()
    )
}

/// The link and part a name inside the vault prefix holds, if it is exactly what
/// [`link_object_name`] writes.
pub fn parse_link_name(name: &str) -> Option<([u8; 16], LinkPart)> {
    let (id, part) = name.strip_prefix(LINKS_PREFIX)?.split_once('/')?;
    let link_id: [u8; 16] = crate::hex::decode(id)?;
    let part = [LinkPart::Join, LinkPart::Welcome, LinkPart::Burned]
        .into_iter()
        .find(|p| p.as_str() == part)?;
    (link_object_name(&link_id, part) == name).then_some((link_id, part))
}

/// The joining device, as it introduces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRecord {
    /// Its id.
    pub device: DeviceId,
    /// Its public keys.
    pub keys: DevicePublicKeys,
    /// Its name.
    pub name: String,
    /// Its platform.
    pub platform: String,
}

/// What the offerer gives the joiner: never the recovery key.
pub struct Welcome {
    /// The vault.
    pub vault_id: VaultId,
    /// The roster's root of trust (the first recovery key's signing public key).
    pub roster_root: [u8; 32],
    /// The recovery key's X25519 public key (new epochs are boxed to it).
    pub recovery_agreement_key: [u8; 32],
    /// The roster entry that adds the joiner.
    pub added_entry: EntryId,
    /// The key epoch in force.
    pub epoch: u8,
    /// Its secret.
    pub epoch_secret: EpochSecret,
}

impl core::fmt::Debug for Welcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Welcome")
            .field("vault_id", &self.vault_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn malformed(why: &str) -> Error {
    Error::decode(
        ObjectKind::LinkMessage,
        DecodeProblem::Malformed(why.to_owned()),
    )
}

/// The joiner's object: its ephemeral key, then its record sealed as the channel's first message.
pub fn seal_join(
    channel: &mut Channel,
    joiner_key: &[u8; 32],
    record: &JoinRecord,
) -> Result<Vec<u8>> {
    let body = proto::LinkJoin {
        device: Some(proto::RosterAdd {
            device_id: record.device.0.to_vec(),
            agreement_key: record.keys.agreement.to_vec(),
            verifying_key: record.keys.verifying.to_vec(),
            name: record.name.clone(),
            platform: record.platform.clone(),
            first_signed_seq: 1,
            unsigned_tips: Vec::new(),
        }),
    }
    .encode_to_vec();
    let mut object = joiner_key.to_vec();
    object.extend_from_slice(&channel.seal(&body)?);
    Ok(object)
}

/// The joiner's ephemeral key, read from its object before the offerer's channel exists.
pub fn joiner_key(object: &[u8]) -> Result<[u8; 32]> {
    object
        .get(..32)
        .and_then(|key| key.try_into().ok())
        .ok_or_else(|| truncated(object.len()))
}

fn truncated(got: usize) -> Error {
    Error::decode(
        ObjectKind::LinkMessage,
        DecodeProblem::Truncated { needed: 32, got },
    )
}

/// Opens the joiner's record from its object on the offerer's channel.
pub fn open_join(channel: &mut Channel, object: &[u8]) -> Result<JoinRecord> {
    let sealed = object.get(32..).ok_or_else(|| truncated(object.len()))?;
    let body = channel.open(sealed)?;
    let join = crate::format::decode_body::<proto::LinkJoin>(ObjectKind::LinkMessage, &body)?;
    let device = join.device.ok_or_else(|| malformed("no device"))?;
    let key32 = |bytes: &[u8], what: &str| -> Result<[u8; 32]> {
        bytes.try_into().map_err(|_| malformed(what))
    };
    if device.name.len() > MAX_DEVICE_NAME_LEN || device.platform.len() > MAX_PLATFORM_LEN {
        return Err(malformed("device name or platform too long"));
    }
    Ok(JoinRecord {
        device: DeviceId(
            device
                .device_id
                .as_slice()
                .try_into()
                .map_err(|_| malformed("device id"))?,
        ),
        keys: DevicePublicKeys {
            agreement: key32(&device.agreement_key, "agreement key")?,
            verifying: key32(&device.verifying_key, "verifying key")?,
        },
        name: device.name,
        platform: device.platform,
    })
}

/// The offerer's welcome, sealed on its (confirmed) channel.
pub fn seal_welcome(channel: &mut Channel, welcome: &Welcome) -> Result<Vec<u8>> {
    let body = Zeroizing::new(
        proto::LinkWelcome {
            vault_id: welcome.vault_id.as_bytes().to_vec(),
            roster_root: welcome.roster_root.to_vec(),
            added_entry: welcome.added_entry.to_vec(),
            epoch: u32::from(welcome.epoch),
            epoch_secret: welcome.epoch_secret.bytes().to_vec(),
            recovery_agreement_key: welcome.recovery_agreement_key.to_vec(),
        }
        .encode_to_vec(),
    );
    channel.seal(&body)
}

/// Opens the welcome on the joiner's channel.
pub fn open_welcome(channel: &mut Channel, object: &[u8]) -> Result<Welcome> {
    let body = channel.open(object)?;
    let welcome = crate::format::decode_body::<proto::LinkWelcome>(ObjectKind::LinkMessage, &body)?;
    let secret = Zeroizing::new(welcome.epoch_secret);
    let secret: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| malformed("epoch secret"))?;
    Ok(Welcome {
        vault_id: VaultId::from_bytes(
            welcome
                .vault_id
                .as_slice()
                .try_into()
                .map_err(|_| malformed("vault id"))?,
        ),
        roster_root: welcome
            .roster_root
            .as_slice()
            .try_into()
            .map_err(|_| malformed("roster root"))?,
        added_entry: welcome
            .added_entry
            .as_slice()
            .try_into()
            .map_err(|_| malformed("added entry"))?,
        recovery_agreement_key: welcome
            .recovery_agreement_key
            .as_slice()
            .try_into()
            .map_err(|_| malformed("recovery agreement key"))?,
        epoch: u8::try_from(welcome.epoch).map_err(|_| malformed("epoch past 255"))?,
        epoch_secret: EpochSecret::from_bytes(secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceSecrets;
    use crate::link::{Ephemeral, LinkOffer};

    fn pair() -> (Channel, Channel, [u8; 32]) {
        let offerer = Ephemeral::generate().unwrap();
        let offer = LinkOffer {
            offerer_key: offerer.public(),
            link_id: [4; 16],
            expires_at_ms: 1,
            vault_id: VaultId::from_bytes([5; 16]),
            app_data: Vec::new(),
        };
        let joiner = Ephemeral::generate().unwrap();
        let joiner_key = joiner.public();
        let joining = Channel::joiner(joiner, &offer).unwrap();
        let offering = Channel::offerer(offerer, &offer, &joiner_key).unwrap();
        (joining, offering, joiner_key)
    }

    #[test]
    fn a_join_and_a_welcome_cross_the_channel() {
        let (mut joining, mut offering, key) = pair();
        let record = JoinRecord {
            device: DeviceId([6; 16]),
            keys: DeviceSecrets::generate().unwrap().public(),
            name: "Anna's Pixel".into(),
            platform: "android".into(),
        };
        let object = seal_join(&mut joining, &key, &record).unwrap();
        assert_eq!(joiner_key(&object).unwrap(), key);
        assert_eq!(open_join(&mut offering, &object).unwrap(), record);
        // The offerer answers only once the person typed the joiner's code.
        let welcome = Welcome {
            vault_id: VaultId::from_bytes([5; 16]),
            roster_root: [7; 32],
            recovery_agreement_key: [10; 32],
            added_entry: [8; 16],
            epoch: 0,
            epoch_secret: EpochSecret::from_bytes([9; 32]),
        };
        assert!(seal_welcome(&mut offering, &welcome).is_err());
        offering.confirm_check_code(&joining.check_code()).unwrap();
        let sealed = seal_welcome(&mut offering, &welcome).unwrap();
        let opened = open_welcome(&mut joining, &sealed).unwrap();
        assert_eq!(opened.vault_id, welcome.vault_id);
        assert_eq!(opened.roster_root, [7; 32]);
        assert_eq!(opened.recovery_agreement_key, [10; 32]);
        assert_eq!(opened.added_entry, [8; 16]);
        assert_eq!(opened.epoch_secret.bytes(), &[9; 32]);
    }

    #[test]
    fn a_join_cut_short_or_flipped_is_refused() {
        let (mut joining, mut offering, key) = pair();
        let record = JoinRecord {
            device: DeviceId([6; 16]),
            keys: DeviceSecrets::generate().unwrap().public(),
            name: "x".into(),
            platform: "y".into(),
        };
        let mut object = seal_join(&mut joining, &key, &record).unwrap();
        assert!(joiner_key(&object[..31]).is_err());
        assert!(open_join(&mut offering, &object[..40]).is_err());
        let last = object.len() - 1;
        object[last] ^= 1;
        assert!(matches!(
            open_join(&mut offering, &object),
            Err(Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            })
        ));
    }

    #[test]
    fn link_names_parse_only_as_written() {
        let name = link_object_name(&[0xab; 16], LinkPart::Welcome);
        assert_eq!(name, format!("links/{}/welcome", "ab".repeat(16)));
        assert_eq!(
            parse_link_name(&name),
            Some(([0xab; 16], LinkPart::Welcome))
        );
        for bad in [
            name.to_uppercase(),
            format!("{name}/x"),
            format!("links/{}/other", "ab".repeat(16)),
            format!("links/{}/join", "ab".repeat(15)),
            "links/".to_owned(),
        ] {
            assert_eq!(parse_link_name(&bad), None, "{bad}");
        }
    }
}
