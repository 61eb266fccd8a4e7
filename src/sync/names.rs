//! Object names that carry a random tag, so two writers of one device (copies of one state
//! directory) never share one: segments `segments/<device>/<seq>-<tag>-<parent tag>`,
//! checkpoints `checkpoints/<device>/<seq>-<tag>` (FORMAT.md 9.1), and the heads that name a
//! segment by (device, seq, tag).

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::format::proto;

use super::clock::DeviceId;
use super::segment::{Head, SEGMENTS_PREFIX};

/// Where a segment stands in its device's tree: its sequence number, its own random tag and
/// the tag of the segment `seq - 1` it follows (zero at seq 1). The name spells all three, so two
/// writers sealing the same sequence number of one device (copies of one state directory) never
/// share a name, and a listing alone says how a device's segments hang together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The writing device.
    pub device: DeviceId,
    /// Its sequence number (1 for a device's first segment).
    pub seq: u64,
    /// Its random tag, never zero.
    pub tag: u64,
    /// The tag of the segment it follows; zero exactly when `seq` is 1.
    pub parent: u64,
}

impl SegmentName {
    /// The object name, all lower-case:
    /// `segments/<device 32 hex>/<seq 016x>-<tag 016x>-<parent tag 016x>`.
    pub fn to_name(&self) -> String {
        format!(
            "{SEGMENTS_PREFIX}{}/{:016x}-{:016x}-{:016x}",
            self.device.to_hex(),
            self.seq,
            self.tag,
            self.parent
        )
    }

    /// The segment this one follows, `None` at seq 1.
    pub fn parent_id(&self) -> Option<SegmentId> {
        (self.seq > 1).then(|| SegmentId {
            device: self.device,
            seq: self.seq - 1,
            tag: self.parent,
        })
    }

    /// This segment's identity.
    pub fn id(&self) -> SegmentId {
        SegmentId {
            device: self.device,
            seq: self.seq,
            tag: self.tag,
        }
    }
}

/// One segment's identity: (device, sequence number, tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    /// The device.
    pub device: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// Its tag.
    pub tag: u64,
}

/// The object name of a device's segment (see [`SegmentName::to_name`]).
pub fn segment_name(device: DeviceId, seq: u64, tag: u64, parent: u64) -> String {
    SegmentName {
        device,
        seq,
        tag,
        parent,
    }
    .to_name()
}

/// A fresh segment or checkpoint tag: 8 random bytes, never zero (zero marks "no parent").
pub fn random_tag() -> Result<u64> {
    loop {
        let tag = u64::from_be_bytes(crate::random::array()?);
        if tag != 0 {
            return Ok(tag);
        }
    }
}

/// Parses a segment name; `None` for anything else: another spelling, a zero tag, a parent tag
/// at seq 1 or none after it, seq 0.
pub fn parse_segment_name(name: &str) -> Option<SegmentName> {
    let (device, rest) = parse_device_and_rest(name.strip_prefix(SEGMENTS_PREFIX)?)?;
    let mut parts = rest.split('-');
    let seq = parse_hex16(parts.next()?)?;
    let tag = parse_hex16(parts.next()?)?;
    let parent = parse_hex16(parts.next()?)?;
    if parts.next().is_some() || seq == 0 || tag == 0 || (seq == 1) != (parent == 0) {
        return None;
    }
    Some(SegmentName {
        device,
        seq,
        tag,
        parent,
    })
}

/// Parses exactly 16 lower-case hex digits: the form writers produce, so no look-alike name
/// (upper-case hex, another width) can stand for the same object as a real one.
pub fn parse_hex16(text: &str) -> Option<u64> {
    if text.len() != 16 || !is_lower_hex(text) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Splits `<device id hex>/<rest>`, the tail of segment and checkpoint names, with the device
/// id in lower-case hex.
pub fn parse_device_and_rest(rest: &str) -> Option<(DeviceId, &str)> {
    let (device, rest) = rest.split_once('/')?;
    if !is_lower_hex(device) {
        return None;
    }
    Some((DeviceId::from_hex(device)?, rest))
}

/// Parses `<device id hex>/<seq 016x>-<tag 016x>`, the tail of checkpoint names and the
/// checkpoint part of pack names, with a non-zero tag.
pub fn parse_device_seq_tag(rest: &str) -> Option<(DeviceId, u64, u64)> {
    let (device, rest) = parse_device_and_rest(rest)?;
    let (seq, tag) = rest.split_once('-')?;
    let (seq, tag) = (parse_hex16(seq)?, parse_hex16(tag)?);
    (tag != 0).then_some((device, seq, tag))
}

/// A head as the protobuf `DeviceHead` carries it.
pub(crate) fn head_to_proto(head: &Head) -> proto::DeviceHead {
    proto::DeviceHead {
        device_id: head.device.0.to_vec(),
        seq: head.seq,
        hash: head.hash.to_vec(),
        tag: head.tag,
    }
}

/// Reads heads (a segment's `seen`, a checkpoint's `covered`): a malformed device id or hash,
/// seq 0, a zero tag or the same (device, seq, tag) twice is refused with `malformed`.
/// `heads` as bytes a device keeps for itself (the `seen` list of an otherwise empty `Segment`,
/// to reuse its encoding).
pub(crate) fn encode_heads(heads: &[Head]) -> Vec<u8> {
    use prost::Message as _;
    proto::Segment {
        seen: heads.iter().map(head_to_proto).collect(),
        ..proto::Segment::default()
    }
    .encode_to_vec()
}

/// The heads [`encode_heads`] wrote; `damaged` names what is wrong otherwise.
pub(crate) fn decode_heads(bytes: &[u8], damaged: impl Fn(&str) -> Error) -> Result<Vec<Head>> {
    use prost::Message as _;
    let decoded = proto::Segment::decode(bytes).map_err(|_| damaged("not a list of heads"))?;
    heads_from_proto(&decoded.seen, damaged)
}

pub(crate) fn heads_from_proto(
    heads: &[proto::DeviceHead],
    malformed: impl Fn(&str) -> Error,
) -> Result<Vec<Head>> {
    let mut seen = BTreeSet::new();
    heads
        .iter()
        .map(|head| {
            let head = Head {
                device: DeviceId(
                    head.device_id
                        .as_slice()
                        .try_into()
                        .map_err(|_| malformed("head device id"))?,
                ),
                seq: head.seq,
                tag: head.tag,
                hash: head
                    .hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed("head hash"))?,
            };
            if head.seq == 0 || head.tag == 0 {
                return Err(malformed("head of no segment"));
            }
            if !seen.insert(head.id()) {
                return Err(malformed("the same head twice"));
            }
            Ok(head)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed(why: &str) -> Error {
        Error::LocalState(why.to_owned())
    }

    #[test]
    fn heads_name_a_segment_once_with_a_tag() {
        let head = Head {
            device: DeviceId([1; 16]),
            seq: 2,
            tag: 9,
            hash: [3; 32],
        };
        let twin = Head { tag: 10, ..head };
        let encoded: Vec<proto::DeviceHead> = [head, twin].iter().map(head_to_proto).collect();
        assert_eq!(heads_from_proto(&encoded, malformed).unwrap(), [head, twin]);
        // The same (device, seq, tag) twice, a zero tag, seq 0: refused.
        let twice = [
            head_to_proto(&head),
            head_to_proto(&Head {
                hash: [4; 32],
                ..head
            }),
        ];
        let zero_tag = [head_to_proto(&Head { tag: 0, ..head })];
        let zero_seq = [head_to_proto(&Head { seq: 0, ..head })];
        for bad in [&twice[..], &zero_tag, &zero_seq] {
            assert!(heads_from_proto(bad, malformed).is_err());
        }
    }

    #[test]
    fn random_tags_are_never_zero_and_differ() {
        let tags: BTreeSet<u64> = (0..64).map(|_| random_tag().unwrap()).collect();
        assert_eq!(tags.len(), 64);
        assert!(!tags.contains(&0));
    }
}
