//! Deciding, without I/O, what a pull must fetch and whether what the bucket shows is consistent
//! with what this device already knows.

use std::collections::BTreeMap;

use crate::error::{Error, IntegrityProblem, Result};

use super::clock::DeviceId;
use super::segment::{Head, OpenedSegment, SegmentHash, parse_segment_name};

/// A segment to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Its device.
    pub device: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// Its name inside the vault prefix.
    pub name: String,
}

/// Plans a pull from the segment names listed in the bucket (relative to the vault prefix), the
/// newest segment applied per device, and the segments covered by the newest checkpoint (`base`:
/// those may have been garbage-collected).
///
/// Fails if a device's segments from `min(applied, base) + 1` to its newest are not all present
/// (one was deleted or withheld), or if the bucket shows fewer segments of a device than were
/// already applied (a rollback). Returns the segments not yet applied, per device in order.
pub fn plan_pull(
    listed: &[String],
    applied: &BTreeMap<DeviceId, Head>,
    base: &BTreeMap<DeviceId, u64>,
) -> Result<Vec<Fetch>> {
    let mut by_device: BTreeMap<DeviceId, Vec<(u64, &str)>> = BTreeMap::new();
    for name in listed {
        let (device, seq) = parse_segment_name(name)
            .ok_or_else(|| Error::Integrity(IntegrityProblem::Misplaced { name: name.clone() }))?;
        by_device.entry(device).or_default().push((seq, name));
    }
    for (device, head) in applied {
        let found = by_device
            .get(device)
            .and_then(|segments| segments.iter().map(|(seq, _)| *seq).max())
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
    let mut fetches = Vec::new();
    for (device, mut segments) in by_device {
        segments.sort_unstable();
        let done = applied.get(&device).map_or(0, |head| head.seq);
        let lower = done.min(base.get(&device).copied().unwrap_or(0)) + 1;
        let required = segments.iter().skip_while(|(seq, _)| *seq < lower);
        for (expected, (seq, _)) in (lower..).zip(required) {
            if *seq != expected {
                return Err(Error::Integrity(IntegrityProblem::MissingSegment {
                    device: device.to_hex(),
                    seq: expected,
                }));
            }
        }
        fetches.extend(
            segments
                .into_iter()
                .filter(|(seq, _)| *seq > done)
                .map(|(seq, name)| Fetch {
                    device,
                    seq,
                    name: name.to_owned(),
                }),
        );
    }
    Ok(fetches)
}

/// Checks that `segment` directly follows `previous` (the device's last applied segment, or
/// `None` if none was applied) in the device's hash chain.
pub fn check_chain(previous: Option<&Head>, segment: &OpenedSegment) -> Result<()> {
    let follows = match previous {
        None => segment.head.seq == 1 && segment.prev_hash.is_none(),
        Some(head) => {
            head.device == segment.head.device
                && segment.head.seq == head.seq + 1
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

    const A: DeviceId = DeviceId([0xa; 16]);
    const B: DeviceId = DeviceId([0xb; 16]);

    fn names(list: &[(DeviceId, u64)]) -> Vec<String> {
        list.iter().map(|(d, s)| segment_name(*d, *s)).collect()
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
        let got: Vec<(DeviceId, u64)> = plan.iter().map(|f| (f.device, f.seq)).collect();
        assert_eq!(got, [(A, 3), (B, 1)]);
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
        assert!(matches!(
            plan_pull(
                &["segments/junk".to_owned()],
                &BTreeMap::new(),
                &BTreeMap::new()
            ),
            Err(Error::Integrity(IntegrityProblem::Misplaced { .. }))
        ));
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
        assert_eq!(plan.iter().map(|f| f.seq).collect::<Vec<_>>(), [4, 5]);
        // A device ahead of the checkpoint still needs everything after its head.
        let ahead = BTreeMap::from([(A, head(A, 4))]);
        assert_eq!(plan_pull(&listed, &ahead, &base).unwrap().len(), 1);
        // Everything collected and nothing new: not a rollback.
        assert!(plan_pull(&[], &after_checkpoint, &base).unwrap().is_empty());
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
}
