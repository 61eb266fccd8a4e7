//! Deciding, without I/O, what a pull must fetch and whether what the bucket shows is consistent
//! with what this device already knows.

use std::collections::BTreeSet;

use crate::error::{Error, IntegrityProblem, Result};
use crate::keys::KeyEpochs;
use crate::store::StoreError;

use super::listing::{Listed, Listing};
use super::segment::{Head, OpenedSegment, SegmentHash, SegmentId, SegmentName, open_segment};
use super::tree::Walk;

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
    /// For a segment: where it stands in its device's tree.
    pub segment: Option<SegmentName>,
}

impl Get {
    /// A whole-object GET of a listed object, refused before any byte is read when the listing
    /// already promises more than an object of its kind may hold (`max`).
    pub fn listed(listed: &Listed, max: u64, segment: Option<SegmentName>) -> Result<Get> {
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
            Some(segment) => IntegrityProblem::MissingSegment {
                device: segment.device.to_hex(),
                seq: segment.seq,
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
    pub fn open_segment(&self, keys: &impl KeyEpochs, bytes: &[u8]) -> Result<OpenedSegment> {
        self.check_len(bytes)?;
        open_segment(keys, &self.name, bytes)
    }
}

/// What a plan may take as already there: segments this device applied (`have`, with
/// `applied` for those applied here that no walk reaches), and what the newest checkpoint
/// covers (`covered`: reached segments may be collected; its floor says what already was).
pub struct Known<'a> {
    /// Applied here (the walk from this device's tips), plus, after a restore, what the
    /// adopted checkpoint covers.
    pub have: &'a BTreeSet<SegmentId>,
    /// The walk from the newest checkpoint's covered tips.
    pub covered: &'a Walk,
    /// Whether this device applied a segment (its local record), asked only for listed
    /// segments no walk reached.
    pub applied: &'a dyn Fn(SegmentId) -> Result<bool>,
}

impl Known<'_> {
    /// Whether the segment counts as there for a child that follows it.
    fn holds(&self, id: SegmentId) -> Result<bool> {
        Ok(self.have.contains(&id)
            || self.covered.reached(id)
            || self.covered.below_floor(id)
            || (self.applied)(id)?)
    }
}

/// Plans the segment GETs: every listed segment that is neither applied nor (after a restore)
/// covered, per device in (seq, tag) order, so a parent is always fetched before its children.
/// Each one's parent must be there: applied, planned before it, covered, or at or below the
/// floor (collected); seq 1 has none. Otherwise it was deleted or withheld: `MissingSegment`.
pub fn plan_segments(listing: &Listing, known: &Known<'_>) -> Result<Vec<Get>> {
    let mut gets = Vec::new();
    let mut planned = BTreeSet::new();
    for (segment, listed) in listing.all_segments() {
        let id = segment.id();
        if known.have.contains(&id) || (known.applied)(id)? {
            continue;
        }
        if let Some(parent) = segment.parent_id()
            && !planned.contains(&parent)
            && !known.holds(parent)?
        {
            return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                device: parent.device.to_hex(),
                seq: parent.seq,
            }));
        }
        gets.push(Get::listed(listed, MAX_SEGMENT_OBJECT, Some(segment))?);
        planned.insert(id);
    }
    Ok(gets)
}

/// Refuses a listing that no longer shows a tip this device applied (`applied`), unless the
/// newest checkpoint covers it (`covered`) or it is at or below its device's floor: a rollback,
/// or, when a listed segment still follows it, a deleted segment (`MissingSegment`).
pub fn check_rollback(listing: &Listing, applied: &[Head], covered: &Walk) -> Result<()> {
    for head in applied {
        let id = head.id();
        if listing.segment(id).is_some() || covered.reached(id) || covered.below_floor(id) {
            continue;
        }
        let followed = listing
            .all_segments()
            .any(|(segment, _)| segment.parent_id() == Some(id));
        if followed {
            return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                device: head.device.to_hex(),
                seq: head.seq,
            }));
        }
        let newest = listing.newest_segments();
        let found = covered
            .reached
            .iter()
            .filter(|c| c.device == head.device)
            .map(|c| c.seq)
            .chain(newest.get(&head.device).copied())
            .max()
            .unwrap_or(0);
        return Err(Error::Integrity(IntegrityProblem::RolledBack {
            device: head.device.to_hex(),
            seen: head.seq,
            found,
        }));
    }
    Ok(())
}

/// Refuses a listing that no longer shows a segment this device applied below one of its tips
/// (`applied`: the walk from them), unless the newest checkpoint covers it or it is at or below
/// the floor (collected): a deleted segment, even one nobody needs to fetch again.
pub fn check_applied_present(listing: &Listing, applied: &Walk, covered: &Walk) -> Result<()> {
    for id in &applied.reached {
        if listing.segment(*id).is_none() && !covered.reached(*id) && !covered.below_floor(*id) {
            return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                device: id.device.to_hex(),
                seq: id.seq,
            }));
        }
    }
    Ok(())
}

/// Checks that `segment` continues the segment it follows: seq 1 follows nothing; after it,
/// its `prev_hash` must be its parent's hash where that is known (`parent_hash`; `None` for a
/// parent collected before this device saw it, or one only a checkpoint covered).
pub fn check_link(segment: &OpenedSegment, parent_hash: Option<SegmentHash>) -> Result<()> {
    let follows = match (segment.head.seq, segment.prev_hash, parent_hash) {
        (1, None, _) => true,
        (1, Some(_), _) | (_, None, _) => false,
        (_, Some(prev), Some(parent)) => prev == parent,
        (_, Some(_), None) => true,
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
/// there (`present`: applied, listed, covered or collected) and, where this device knows the
/// hash of that segment (`known_hash`), must match it.
pub fn check_seen(
    segment: &OpenedSegment,
    present: impl Fn(&Head) -> Result<bool>,
    known_hash: impl Fn(SegmentId) -> Result<Option<SegmentHash>>,
) -> Result<()> {
    for claim in &segment.seen {
        if !present(claim)? {
            return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                device: claim.device.to_hex(),
                seq: claim.seq,
            }));
        }
        if known_hash(claim.id())?.is_some_and(|hash| hash != claim.hash) {
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
    use crate::sync::clock::DeviceId;
    use crate::sync::segment::segment_name;
    use crate::sync::tree::walk;

    const A: DeviceId = DeviceId([0xa; 16]);
    const B: DeviceId = DeviceId([0xb; 16]);

    /// A chain's segment: tag `seq`, parent `seq - 1`.
    fn chain(device: DeviceId, seq: u64) -> String {
        segment_name(device, seq, seq, seq - 1)
    }

    fn names(list: &[(DeviceId, u64)]) -> Listing {
        let names: Vec<String> = list.iter().map(|(d, s)| chain(*d, *s)).collect();
        Listing::classify(names.iter().map(|n| (n.as_str(), 100)))
    }

    fn head(device: DeviceId, seq: u64) -> Head {
        Head {
            device,
            seq,
            tag: seq,
            hash: [seq as u8; 32],
        }
    }

    /// Plans and checks rollbacks, as a pull from the tips `applied` does with the newest
    /// checkpoint covering `covered` (not adopted).
    fn plan_pull(listing: &Listing, applied: &[Head], covered: &[Head]) -> Result<Vec<Get>> {
        let covered = walk(listing, covered);
        check_rollback(listing, applied, &covered)?;
        let have = walk(listing, applied).reached;
        plan_segments(
            listing,
            &Known {
                have: &have,
                covered: &covered,
                applied: &|_| Ok(false),
            },
        )
    }

    fn seqs(plan: &[Get]) -> Vec<(DeviceId, u64)> {
        plan.iter()
            .filter_map(|get| get.segment.map(|s| (s.device, s.seq)))
            .collect()
    }

    #[test]
    fn objects_larger_than_their_kind_are_refused_before_any_read() {
        let name = chain(A, 1);
        let listing = Listing::classify([(name.as_str(), MAX_SEGMENT_OBJECT + 1)]);
        assert!(matches!(
            plan_pull(&listing, &[], &[]),
            Err(Error::Store(StoreError::TooLarge { .. }))
        ));
        let listed = &listing.segments[&A][&(1, 1)].listed;
        let get = Get::listed(listed, u64::MAX, None).unwrap();
        assert!(matches!(
            get.check_len(&[0; 3]),
            Err(Error::Integrity(IntegrityProblem::WrongSize {
                expected,
                found: 3,
                ..
            })) if expected == MAX_SEGMENT_OBJECT + 1
        ));
    }

    #[test]
    fn fetches_only_what_is_new() {
        let listed = names(&[(A, 1), (A, 2), (A, 3), (B, 1)]);
        let plan = plan_pull(&listed, &[head(A, 2)], &[]).unwrap();
        assert_eq!(seqs(&plan), [(A, 3), (B, 1)]);
        assert!(
            plan_pull(&listed, &[head(A, 3), head(B, 1)], &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn gaps_and_rollbacks_are_reported() {
        let gap = names(&[(A, 1), (A, 3)]);
        assert!(matches!(
            plan_pull(&gap, &[], &[]),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 2,
                ..
            }))
        ));
        let old_deleted = names(&[(A, 2), (A, 3)]);
        assert!(matches!(
            plan_pull(&old_deleted, &[], &[]),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 1,
                ..
            }))
        ));
        assert!(matches!(
            plan_pull(&names(&[(A, 1)]), &[head(A, 2)], &[]),
            Err(Error::Integrity(IntegrityProblem::RolledBack {
                seen: 2,
                found: 1,
                ..
            }))
        ));
        assert!(matches!(
            plan_pull(&names(&[(A, 1)]), &[head(B, 1)], &[]),
            Err(Error::Integrity(IntegrityProblem::RolledBack {
                found: 0,
                ..
            }))
        ));
        // A name that is no segment is set aside by the listing, never planned.
        let junk = Listing::classify([("segments/junk", 1)]);
        assert!(plan_pull(&junk, &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn segments_covered_by_a_checkpoint_may_be_collected() {
        // Segments 1-3 of A were collected after a checkpoint covering them.
        let listed = names(&[(A, 4), (A, 5)]);
        let covered = [head(A, 3)];
        let plan = plan_pull(&listed, &[head(A, 3)], &covered).unwrap();
        assert_eq!(seqs(&plan), [(A, 4), (A, 5)]);
        // A device ahead of the checkpoint still needs everything after its tip.
        assert_eq!(
            plan_pull(&listed, &[head(A, 4)], &covered).unwrap().len(),
            1
        );
        // Everything collected and nothing new: not a rollback.
        assert!(
            plan_pull(&names(&[]), &[head(A, 3)], &covered)
                .unwrap()
                .is_empty()
        );
        // A gap above the checkpoint is still a gap.
        assert!(plan_pull(&names(&[(A, 5)]), &[head(A, 3)], &covered).is_err());
    }

    fn opened(
        device: DeviceId,
        seq: u64,
        prev: Option<SegmentHash>,
        seen: Vec<Head>,
    ) -> OpenedSegment {
        OpenedSegment {
            name: chain(device, seq),
            head: head(device, seq),
            parent_tag: seq - 1,
            prev_hash: prev,
            seen,
            grants: vec![],
            blocks: vec![],
            device_name: String::new(),
            platform: String::new(),
            signature: None,
        }
    }

    #[test]
    fn chains_must_link() {
        assert!(check_link(&opened(A, 1, None, vec![]), None).is_ok());
        assert!(check_link(&opened(A, 2, None, vec![]), None).is_err());
        let h1 = head(A, 1);
        assert!(check_link(&opened(A, 2, Some(h1.hash), vec![]), Some(h1.hash)).is_ok());
        assert!(check_link(&opened(A, 2, Some([9; 32]), vec![]), Some(h1.hash)).is_err());
        // A parent collected before this device saw it: nothing to compare with.
        assert!(check_link(&opened(A, 2, Some([9; 32]), vec![]), None).is_ok());
    }

    #[test]
    fn seen_heads_expose_withheld_and_forked_segments() {
        let claim = head(B, 4);
        let segment = opened(A, 1, None, vec![claim]);
        assert!(matches!(
            check_seen(&segment, |_| Ok(false), |_| Ok(None)),
            Err(Error::Integrity(IntegrityProblem::MissingSegment {
                seq: 4,
                ..
            }))
        ));
        assert!(check_seen(&segment, |_| Ok(true), |_| Ok(Some(claim.hash))).is_ok());
        assert!(matches!(
            check_seen(&segment, |_| Ok(true), |_| Ok(Some([0xee; 32]))),
            Err(Error::Integrity(IntegrityProblem::ChainBroken { .. }))
        ));
    }

    /// The last sequence number plans like any other (the `+ 1`s of the chain model overflowed
    /// there; a tree walks down, never up).
    #[test]
    fn a_plan_may_reach_the_last_sequence_number() {
        let last = segment_name(A, u64::MAX, 7, 6);
        let listing = Listing::classify([(last.as_str(), 1)]);
        let before = Head {
            device: A,
            seq: u64::MAX - 1,
            tag: 6,
            hash: [0; 32],
        };
        let plan = plan_pull(&listing, &[before], &[before]).unwrap();
        assert_eq!(seqs(&plan), [(A, u64::MAX)]);
        assert!(matches!(
            plan_pull(&listing, &[], &[]),
            Err(Error::Integrity(IntegrityProblem::MissingSegment { .. }))
        ));
    }
}
