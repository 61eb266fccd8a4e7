//! What a LIST of the vault prefix shows, sorted by kind: segments per device, checkpoint
//! indexes, packs, and names that belong to no kind.
//!
//! A name that parses as no vault object (a `README` dropped under `segments/`, an upper-case
//! hex digit, a stray file at the root) is not an error: it is kept aside as unknown, reported by
//! `verify` and skipped by everyone, so one junk object cannot stop any device's sync.

use std::collections::BTreeMap;

use super::checkpoint::{parse_checkpoint_name, parse_pack_name};
use super::clock::DeviceId;
use super::segment::parse_segment_name;

/// One listed object: its name inside the vault prefix and the size the listing promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Name relative to the vault prefix.
    pub name: String,
    /// Size in bytes, as listed: a GET must return exactly this many.
    pub size: u64,
}

/// The vault's objects as one listing shows them.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Segments per device, by sequence number.
    pub segments: BTreeMap<DeviceId, BTreeMap<u64, Listed>>,
    /// Checkpoint indexes, by name.
    pub checkpoints: BTreeMap<String, Listed>,
    /// Packs, by name.
    pub packs: BTreeMap<String, Listed>,
    /// Names that are no vault object, in listing order.
    pub unknown: Vec<String>,
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
            if let Some((device, seq)) = parse_segment_name(name).filter(|(_, seq)| *seq > 0) {
                listing
                    .segments
                    .entry(device)
                    .or_default()
                    .insert(seq, listed);
            } else if parse_checkpoint_name(name).is_some() {
                listing.checkpoints.insert(listed.name.clone(), listed);
            } else if parse_pack_name(name).is_some() {
                listing.packs.insert(listed.name.clone(), listed);
            } else {
                listing.unknown.push(listed.name);
            }
        }
        listing
    }

    /// The newest listed sequence number of each device.
    pub fn newest_segments(&self) -> BTreeMap<DeviceId, u64> {
        self.segments
            .iter()
            .filter_map(|(device, segments)| Some((*device, *segments.keys().next_back()?)))
            .collect()
    }

    /// A listed segment.
    pub fn segment(&self, device: DeviceId, seq: u64) -> Option<&Listed> {
        self.segments.get(&device)?.get(&seq)
    }

    /// Every listed segment, per device in order.
    pub fn all_segments(&self) -> impl Iterator<Item = (DeviceId, u64, &Listed)> {
        self.segments.iter().flat_map(|(device, segments)| {
            segments
                .iter()
                .map(move |(seq, listed)| (*device, *seq, listed))
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
        let segment = segment_name(A, 1);
        let index = checkpoint_name(A, 1);
        let pack = format!("{}0000", pack_prefix(A, 1));
        let upper = segment.to_uppercase();
        let zero = segment_name(A, 0);
        let names = [
            segment.as_str(),
            index.as_str(),
            pack.as_str(),
            "segments/README",
            upper.as_str(),
            zero.as_str(),
            "stray",
        ];
        let listing = Listing::classify(names.iter().map(|n| (*n, 7)));
        assert_eq!(listing.segment(A, 1).map(|l| l.size), Some(7));
        assert_eq!(listing.checkpoints.len(), 1);
        assert_eq!(listing.packs.len(), 1);
        assert_eq!(
            listing.unknown,
            ["segments/README", upper.as_str(), zero.as_str(), "stray"]
        );
        assert_eq!(listing.newest_segments(), BTreeMap::from([(A, 1)]));
    }
}
