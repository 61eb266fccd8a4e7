//! What a LIST of the vault prefix shows, sorted by kind: segments per device, checkpoint
//! indexes, packs, roster entries, and names that belong to no kind.
//!
//! A name that parses as no vault object (a `README` dropped under `segments/`, an upper-case
//! hex digit, a stray file at the root) is not an error: it is kept aside as unknown, reported by
//! `verify` and skipped by everyone, so one junk object cannot stop any device's sync.

use std::collections::BTreeMap;

use super::checkpoint::{parse_checkpoint_name, parse_pack_name};
use super::clock::DeviceId;
use super::roster::{EntryId, parse_roster_name};
use super::segment::{SegmentId, SegmentName, parse_segment_name};

/// One listed object: its name inside the vault prefix and the size the listing promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Name relative to the vault prefix.
    pub name: String,
    /// Size in bytes, as listed: a GET must return exactly this many.
    pub size: u64,
}

/// A listed segment: the object and the tag of the segment it follows, from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSegment {
    /// The tag of the segment `seq - 1` it follows (zero at seq 1).
    pub parent: u64,
    /// The object.
    pub listed: Listed,
}

/// The vault's objects as one listing shows them.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Segments per device, by (sequence number, tag): each device's tree, normally one chain.
    pub segments: BTreeMap<DeviceId, BTreeMap<(u64, u64), ListedSegment>>,
    /// Checkpoint indexes, by name.
    pub checkpoints: BTreeMap<String, Listed>,
    /// Packs, by name.
    pub packs: BTreeMap<String, Listed>,
    /// Roster entries, by id.
    pub roster: BTreeMap<EntryId, Listed>,
    /// Objects of links between devices (`links/<id>/<part>`), by name.
    pub links: BTreeMap<String, Listed>,
    /// Epoch objects (`epochs/<n>-<tag>`, epochs 1 to 255), by name.
    pub epochs: BTreeMap<String, Listed>,
    /// Names that are no vault object, in listing order.
    pub unknown: Vec<String>,
    /// Segments the roster refuses as a revoked device's past its pinned tips
    /// (`sync::roster::refuse_segments`; their names are among `unknown`): in the bucket, so
    /// another device's segment that names one as seen (having applied it before it learned of
    /// the revocation) is not a sign of withholding.
    pub late_segments: std::collections::BTreeSet<SegmentId>,
}

impl Listing {
    /// Sorts `(name, size)` pairs (names relative to the vault prefix) by kind.
    pub fn classify<'a>(objects: impl IntoIterator<Item = (&'a str, u64)>) -> Listing {
        let mut listing = Listing::default();
        for (name, size) in objects {
            let listed = Listed {
                name: name.to_owned(),
                size,
            };
            if let Some(segment) = parse_segment_name(name) {
                listing.segments.entry(segment.device).or_default().insert(
                    (segment.seq, segment.tag),
                    ListedSegment {
                        parent: segment.parent,
                        listed,
                    },
                );
            } else if parse_checkpoint_name(name).is_some() {
                listing.checkpoints.insert(listed.name.clone(), listed);
            } else if parse_pack_name(name).is_some() {
                listing.packs.insert(listed.name.clone(), listed);
            } else if let Some(id) = parse_roster_name(name) {
                listing.roster.insert(id, listed);
            } else if crate::link::parse_link_name(name).is_some() {
                listing.links.insert(listed.name.clone(), listed);
            } else if crate::devices::epoch_in_name(name).is_some_and(|n| (1..=255).contains(&n)) {
                listing.epochs.insert(listed.name.clone(), listed);
            } else {
                listing.unknown.push(listed.name);
            }
        }
        listing
    }

    /// Takes a checkpoint index out of the checkpoints (one that does not count, see
    /// `sync::roster::checkpoint_counts`): it is listed among the objects that do not belong.
    pub fn refuse_checkpoint(&mut self, name: &str) {
        if let Some(listed) = self.checkpoints.remove(name) {
            self.unknown.push(listed.name);
        }
    }

    /// The newest listed sequence number of each device.
    pub fn newest_segments(&self) -> BTreeMap<DeviceId, u64> {
        self.segments
            .iter()
            .filter_map(|(device, segments)| Some((*device, segments.keys().next_back()?.0)))
            .collect()
    }

    /// A listed segment.
    pub fn segment(&self, id: SegmentId) -> Option<&ListedSegment> {
        self.segments.get(&id.device)?.get(&(id.seq, id.tag))
    }

    /// Every listed segment, per device in (seq, tag) order.
    pub fn all_segments(&self) -> impl Iterator<Item = (SegmentName, &Listed)> {
        self.segments.iter().flat_map(|(device, segments)| {
            segments.iter().map(move |((seq, tag), segment)| {
                (
                    SegmentName {
                        device: *device,
                        seq: *seq,
                        tag: *tag,
                        parent: segment.parent,
                    },
                    &segment.listed,
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::checkpoint::{checkpoint_name, pack_prefix};
    use crate::sync::segment::segment_name;

    const A: DeviceId = DeviceId([0xa; 16]);

    #[test]
    fn names_are_sorted_by_kind_and_junk_is_set_aside() {
        let segment = segment_name(A, 1, 0xab, 0);
        let child = segment_name(A, 2, 0xcd, 0xab);
        let index = checkpoint_name(A, 1, 5);
        let pack = format!("{}0000", pack_prefix(A, 1, 5));
        let roster = crate::sync::roster::roster_name(&[0x5a; 16]);
        let link = crate::link::link_object_name(&[0x6b; 16], crate::link::LinkPart::Join);
        let upper = segment_name(A, 2, 0xcd, 0xab).to_uppercase();
        // Spellings writers never produce: seq 0, a zero tag, a parent at seq 1, none after it,
        // a checkpoint with a zero tag or without one, a short tag.
        let bad = [
            segment_name(A, 0, 1, 0),
            segment_name(A, 1, 0, 0),
            segment_name(A, 1, 1, 1),
            segment_name(A, 2, 1, 0),
            checkpoint_name(A, 1, 0),
            format!("checkpoints/{}/{:016x}", A.to_hex(), 1),
            format!("segments/{}/{:016x}-{:015x}-{:016x}", A.to_hex(), 2, 1, 1),
            format!("{roster}0"),
            roster[..roster.len() - 1].to_owned(),
            roster.to_uppercase(),
        ];
        let mut names = vec![
            segment.as_str(),
            child.as_str(),
            index.as_str(),
            pack.as_str(),
            roster.as_str(),
            link.as_str(),
            "segments/README",
            upper.as_str(),
            "stray",
        ];
        names.extend(bad.iter().map(String::as_str));
        let listing = Listing::classify(names.iter().map(|n| (*n, 7)));
        let id = |seq, tag| SegmentId {
            device: A,
            seq,
            tag,
        };
        assert_eq!(listing.segment(id(1, 0xab)).map(|l| l.listed.size), Some(7));
        assert_eq!(listing.segment(id(2, 0xcd)).map(|l| l.parent), Some(0xab));
        assert_eq!(listing.checkpoints.len(), 1);
        assert_eq!(listing.packs.len(), 1);
        assert_eq!(listing.roster.keys().collect::<Vec<_>>(), [&[0x5a; 16]]);
        assert_eq!(listing.links.keys().collect::<Vec<_>>(), [&link]);
        let mut unknown = vec!["segments/README", upper.as_str(), "stray"];
        unknown.extend(bad.iter().map(String::as_str));
        assert_eq!(listing.unknown, unknown);
        assert_eq!(listing.newest_segments(), BTreeMap::from([(A, 2)]));
    }
}
