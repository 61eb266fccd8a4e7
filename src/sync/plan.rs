//! Deciding, without I/O, what a pull must fetch and whether what the bucket shows is consistent
//! with what this device already knows.

use std::collections::BTreeMap;

use crate::error::{Error, IntegrityProblem, Result};
use crate::keys::VaultKeys;
use crate::store::StoreError;

use super::clock::DeviceId;
use super::listing::{Listed, Listing};
use super::segment::{Head, OpenedSegment, SegmentHash, open_segment};

/// The largest segment object: the format's object limit. `MAX_SEGMENT_BODY` is where the outbox
/// splits operations, not a cap: one valid operation (a chat of 10,000 members of 1 KiB ids) is
/// larger, and a writer seals it whole (test
/// `tests/bounded_reads.rs::a_valid_segment_can_outgrow_max_segment_body`: a 10 MiB segment).
pub const MAX_SEGMENT_OBJECT: u64 = crate::format::MAX_OBJECT_LEN as u64;
/// The largest checkpoint index or pack object.
pub const MAX_CHECKPOINT_OBJECT: u64 = crate::format::MAX_OBJECT_LEN as u64;

/// An object to GET whole; it must have exactly `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    /// Name inside the vault prefix.
    pub name: String,
    /// The size the listing (or an index) promises.
    pub size: u64,
    /// For a segment: its device and sequence number.
    pub segment: Option<(DeviceId, u64)>,
}

impl Get {
    /// A whole-object GET of a listed object, refused before any byte is read when the listing
    /// already promises more than an object of its kind may hold (`max`).
    pub fn listed(listed: &Listed, max: u64, segment: Option<(DeviceId, u64)>) -> Result<Get> {
        if listed.size > max {
            return Err(Error::Store(StoreError::TooLarge {
                key: listed.name.clone(),
                limit: max,
            }));
        }
        Ok(Get {
            name: listed.name.clone(),
            size: listed.size,
            segment,
        })
    }

    /// The error for an object that is not there although the listing or an index says so.
    pub fn missing(&self) -> Error {
        Error::Integrity(match self.segment {
            Some((device, seq)) => IntegrityProblem::MissingSegment {
                device: device.to_hex(),
                seq,
            },
            None => IntegrityProblem::MissingObject {
                name: self.name.clone(),
            },
        })
    }

    /// Refuses bytes whose length is not the promised size: the store appended or cut bytes
    /// after the listing, or the listing lied.
    pub fn check_len(&self, bytes: &[u8]) -> Result<()> {
        let found = bytes.len() as u64;
        if found == self.size {
            Ok(())
        } else {
            Err(Error::Integrity(IntegrityProblem::WrongSize {
                name: self.name.clone(),
                expected: self.size,
                found,
            }))
        }
    }

    /// Checks the length, then opens the segment's outer layer.
    pub fn open_segment(&self, keys: &VaultKeys, bytes: &[u8]) -> Result<OpenedSegment> {
        self.check_len(bytes)?;
        open_segment(keys, &self.name, bytes)
    }
}

/// Plans the segment GETs after where each device's chain stands (`chains`), given the segments
/// the starting checkpoint covers (`base`: those may have been garbage-collected).
///
/// Every segment of a device from `min(chain, base) + 1` to its newest listed must be present
/// (one missing was deleted or withheld). Returns the segments past each chain, per device in
/// order.
pub fn plan_segments(
    listing: &Listing,
    chains: &BTreeMap<DeviceId, Head>,
    base: &BTreeMap<DeviceId, u64>,
) -> Result<Vec<Get>> {
    let mut gets = Vec::new();
    for (device, segments) in &listing.segments {
        let done = chains.get(device).map_or(0, |head| head.seq);
        // Nothing follows u64::MAX (a key holder's checkpoint may cover that far).
        let Some(lower) = done
            .min(base.get(device).copied().unwrap_or(0))
            .checked_add(1)
        else {
            continue;
        };
        // Counted by hand: `(lower..)` computes its next value before handing one out, so it
        // overflows (a panic in debug builds) as soon as it hands out u64::MAX.
        let mut expected = Some(lower);
        for (seq, listed) in segments.range(lower..) {
            if Some(*seq) != expected {
                let expected = expected.unwrap_or(u64::MAX);
                return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                    device: device.to_hex(),
                    seq: expected,
                }));
            }
            expected = seq.checked_add(1);
            if *seq > done {
                gets.push(Get::listed(
                    listed,
                    MAX_SEGMENT_OBJECT,
                    Some((*device, *seq)),
                )?);
            }
        }
    }
    Ok(gets)
}

/// Refuses a listing that shows fewer segments of a device than were applied (`applied`), the
/// segments `base` covers counting as present (a rollback).
pub fn check_rollback(
    listing: &Listing,
    applied: &BTreeMap<DeviceId, Head>,
    base: &BTreeMap<DeviceId, u64>,
) -> Result<()> {
    let newest = listing.newest_segments();
    for (device, head) in applied {
        let found = newest
            .get(device)
            .copied()
            .unwrap_or(0)
            .max(base.get(device).copied().unwrap_or(0));
        if found < head.seq {
            return Err(Error::Integrity(IntegrityProblem::RolledBack {
                device: device.to_hex(),
                seen: head.seq,
                found,
            }));
        }
    }
    Ok(())
}

/// Checks that `segment` directly follows `previous` (the device's last applied segment, or
/// `None` if none was applied) in the device's hash chain.
pub fn check_chain(previous: Option<&Head>, segment: &OpenedSegment) -> Result<()> {
    let follows = match previous {
        None => segment.head.seq == 1 && segment.prev_hash.is_none(),
        Some(head) => {
            head.device == segment.head.device
                && head.seq.checked_add(1) == Some(segment.head.seq)
                && segment.prev_hash == Some(head.hash)
        }
    };
    if follows {
        Ok(())
    } else {
        Err(Error::Integrity(IntegrityProblem::ChainBroken {
            device: segment.head.device.to_hex(),
            seq: segment.head.seq,
        }))
    }
}

/// Checks a segment's claims about other devices against the bucket: every claimed head must be
/// present (`available` is the newest listed sequence number per device) and, where this device
/// knows the hash of that segment (`known_hash`), must match it.
pub fn check_seen(
    segment: &OpenedSegment,
    available: &BTreeMap<DeviceId, u64>,
    known_hash: impl Fn(DeviceId, u64) -> Option<SegmentHash>,
) -> Result<()> {
    for claim in &segment.seen {
        let present = available.get(&claim.device).copied().unwrap_or(0);
        if present < claim.seq {
            return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                device: claim.device.to_hex(),
                seq: claim.seq,
            }));
        }
        if known_hash(claim.device, claim.seq).is_some_and(|hash| hash != claim.hash) {
            return Err(Error::Integrity(IntegrityProblem::ChainBroken {
                device: claim.device.to_hex(),
                seq: claim.seq,
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::segment::segment_name;

    #[test]
    fn objects_larger_than_their_kind_are_refused_before_any_read() {
        let name = segment_name(A, 1);
        let listing = Listing::classify([(name.as_str(), MAX_SEGMENT_OBJECT + 1)]);
        assert!(matches!(
            plan_segments(&listing, &BTreeMap::new(), &BTreeMap::new()),
            Err(Error::Store(StoreError::TooLarge { .. }))
        ));
        let get = Get::listed(&listing.segments[&A][&1], u64::MAX, Some((A, 1))).unwrap();
        assert!(matches!(
            get.check_len(&[0; 3]),
            Err(Error::Integrity(IntegrityProblem::WrongSize {
                expected,
                found: 3,
                ..
            })) if expected == MAX_SEGMENT_OBJECT + 1
        ));
    }

    const A: DeviceId = DeviceId([0xa; 16]);
    const B: DeviceId = DeviceId([0xb; 16]);

    fn names(list: &[(DeviceId, u64)]) -> Listing {
        let names: Vec<String> = list.iter().map(|(d, s)| segment_name(*d, *s)).collect();
        Listing::classify(names.iter().map(|n| (n.as_str(), 100)))
    }

    /// Plans and checks rollbacks, as a pull from `applied` does.
    fn plan_pull(
        listing: &Listing,
        applied: &BTreeMap<DeviceId, Head>,
        base: &BTreeMap<DeviceId, u64>,
    ) -> Result<Vec<Get>> {
        check_rollback(listing, applied, base)?;
        plan_segments(listing, applied, base)
    }

    fn seqs(plan: &[Get]) -> Vec<(DeviceId, u64)> {
        plan.iter().filter_map(|get| get.segment).collect()
    }

    fn head(device: DeviceId, seq: u64) -> Head {
        Head {
            device,
            seq,
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn fetches_only_what_is_new() {
        let listed = names(&[(A, 1), (A, 2), (A, 3), (B, 1)]);
        let applied = BTreeMap::from([(A, head(A, 2))]);
        let plan = plan_pull(&listed, &applied, &BTreeMap::new()).unwrap();
        assert_eq!(seqs(&plan), [(A, 3), (B, 1)]);
        let nothing = BTreeMap::from([(A, head(A, 3)), (B, head(B, 1))]);
        assert!(
            plan_pull(&listed, &nothing, &BTreeMap::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn gaps_and_rollbacks_are_reported() {
        let gap = names(&[(A, 1), (A, 3)]);
        assert!(matches!(
            plan_pull(&gap, &BTreeMap::new(), &BTreeMap::new()),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 2,
                ..
            }))
        ));
        let old_deleted = names(&[(A, 2), (A, 3)]);
        assert!(matches!(
            plan_pull(&old_deleted, &BTreeMap::new(), &BTreeMap::new()),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 1,
                ..
            }))
        ));
        let rolled_back = names(&[(A, 1)]);
        let applied = BTreeMap::from([(A, head(A, 2))]);
        assert!(matches!(
            plan_pull(&rolled_back, &applied, &BTreeMap::new()),
            Err(Error::Integrity(IntegrityProblem::RolledBack {
                seen: 2,
                found: 1,
                ..
            }))
        ));
        let vanished = BTreeMap::from([(B, head(B, 1))]);
        assert!(matches!(
            plan_pull(&names(&[(A, 1)]), &vanished, &BTreeMap::new()),
            Err(Error::Integrity(IntegrityProblem::RolledBack {
                found: 0,
                ..
            }))
        ));
        // A name that is no segment is set aside by the listing, never planned.
        let junk = Listing::classify([("segments/junk", 1)]);
        assert!(
            plan_pull(&junk, &BTreeMap::new(), &BTreeMap::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn segments_covered_by_a_checkpoint_may_be_collected() {
        // Segments 1-3 of A were collected after a checkpoint covering them.
        let listed = names(&[(A, 4), (A, 5)]);
        let base = BTreeMap::from([(A, 3)]);
        // A device that applied nothing must apply the checkpoint first: 1-3 are gone.
        assert!(matches!(
            plan_pull(&listed, &BTreeMap::new(), &base),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 1,
                ..
            }))
        ));
        let after_checkpoint = BTreeMap::from([(A, head(A, 3))]);
        let plan = plan_pull(&listed, &after_checkpoint, &base).unwrap();
        assert_eq!(seqs(&plan), [(A, 4), (A, 5)]);
        // A device ahead of the checkpoint still needs everything after its head.
        let ahead = BTreeMap::from([(A, head(A, 4))]);
        assert_eq!(plan_pull(&listed, &ahead, &base).unwrap().len(), 1);
        // Everything collected and nothing new: not a rollback.
        assert!(
            plan_pull(&names(&[]), &after_checkpoint, &base)
                .unwrap()
                .is_empty()
        );
        // A gap above the checkpoint is still a gap.
        assert!(plan_pull(&names(&[(A, 5)]), &after_checkpoint, &base).is_err());
    }

    fn opened(
        device: DeviceId,
        seq: u64,
        prev: Option<SegmentHash>,
        seen: Vec<Head>,
    ) -> OpenedSegment {
        OpenedSegment {
            name: segment_name(device, seq),
            head: head(device, seq),
            prev_hash: prev,
            seen,
            grants: vec![],
            blocks: vec![],
            device_name: String::new(),
            platform: String::new(),
        }
    }

    #[test]
    fn chains_must_link() {
        assert!(check_chain(None, &opened(A, 1, None, vec![])).is_ok());
        assert!(check_chain(None, &opened(A, 2, Some([1; 32]), vec![])).is_err());
        let h1 = head(A, 1);
        assert!(check_chain(Some(&h1), &opened(A, 2, Some(h1.hash), vec![])).is_ok());
        assert!(check_chain(Some(&h1), &opened(A, 2, Some([9; 32]), vec![])).is_err());
        assert!(check_chain(Some(&h1), &opened(A, 3, Some(h1.hash), vec![])).is_err());
        assert!(check_chain(Some(&h1), &opened(B, 2, Some(h1.hash), vec![])).is_err());
    }

    #[test]
    fn seen_heads_expose_withheld_and_forked_segments() {
        let claim = head(B, 4);
        let segment = opened(A, 1, None, vec![claim]);
        let available = BTreeMap::from([(B, 3)]);
        assert!(matches!(
            check_seen(&segment, &available, |_, _| None),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 4,
                ..
            }))
        ));
        let available = BTreeMap::from([(B, 4)]);
        assert!(check_seen(&segment, &available, |_, _| Some(claim.hash)).is_ok());
        assert!(matches!(
            check_seen(&segment, &available, |_, _| Some([0xee; 32])),
            Err(Error::Integrity(IntegrityProblem::ChainBroken { .. }))
        ));
    }

    /// Nothing follows u64::MAX: a chain head or checkpoint coverage there plans nothing and
    /// no segment continues it (the `+ 1`s overflowed).
    #[test]
    fn nothing_follows_the_last_sequence_number() {
        let last = head(A, u64::MAX);
        let chains = BTreeMap::from([(A, last)]);
        let base = BTreeMap::from([(A, u64::MAX)]);
        assert!(
            plan_segments(&names(&[(A, u64::MAX)]), &chains, &base)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            check_chain(Some(&last), &opened(A, 1, Some(last.hash), vec![])),
            Err(Error::Integrity(IntegrityProblem::ChainBroken { .. }))
        ));
    }

    /// A plan that starts at u64::MAX (found by the `engine` fuzz target: a key holder's
    /// checkpoint covering u64::MAX - 1) fetches the last segment without counting past it.
    #[test]
    fn a_plan_may_start_at_the_last_sequence_number() {
        let chains = BTreeMap::from([(A, head(A, u64::MAX - 1))]);
        let base = BTreeMap::from([(A, u64::MAX - 1)]);
        let plan = plan_segments(&names(&[(A, u64::MAX)]), &chains, &base).unwrap();
        assert_eq!(seqs(&plan), [(A, u64::MAX)]);
        assert!(
            plan_segments(&names(&[]), &chains, &base)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            plan_segments(&names(&[(B, 1), (A, u64::MAX)]), &chains, &BTreeMap::new()),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 1,
                ..
            }))
        ));
    }
}
