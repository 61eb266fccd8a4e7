//! Which devices may still write to a deleted chat without knowing it was deleted.
//!
//! A checkpoint keeps a deleted chat's tombstone forever, and its keys only while some device
//! it covers may still write to the chat unaware of the deletion: such a device's segment,
//! sealed before the deletion reached it, uses the chat's key without granting it again, and a
//! device starting from the checkpoint must be able to open it. Once every covered device has
//! written a segment after seeing the delete (its `seen` heads reach the deleting segment), the
//! keys leave the checkpoint, and with the segments that granted them collected, the bucket
//! (SYNC.md, "Shredding").
//!
//! "Reach" means descent in the deleting device's segment tree, not a higher sequence number:
//! after a copied state directory forked the deleter's id, a head on the other branch at a
//! higher seq has not seen the delete. The walk through the listing ([`walk`]) decides while the
//! deleting segment is listed. Once it is collected, a walk from a seen head stops at the first
//! collected segment; at or above the delete's seq that segment lies on the one line the base
//! checkpoint covers, so it descends from the delete, unless the base covers two tips of the
//! deleter (a collected fork): then only a listed path counts, and the keys may stay longer.

use std::collections::{BTreeMap, BTreeSet};

use super::checkpoint::{CheckpointIndex, Deletion};
use super::clock::{DeviceId, Stamp};
use super::listing::Listing;
use super::segment::{Head, SegmentId};
use super::tree::walk;

/// What one round of segments says about deletions, on top of the base checkpoint's.
#[derive(Debug, Default)]
pub struct DeletionWitnesses {
    /// The base checkpoint's deletions, by chat.
    base: BTreeMap<String, (Stamp, Deletion)>,
    /// Devices the base covers.
    base_covered: BTreeSet<DeviceId>,
    /// Devices the base covers more than one tip of (a fork, possibly collected).
    base_forked: BTreeSet<DeviceId>,
    /// The base's covered tip of each device it covers one tip of.
    base_tips: BTreeMap<DeviceId, SegmentId>,
    /// Deletes in this round's segments: chat -> (stamp, segment).
    deletes: BTreeMap<String, (Stamp, SegmentId)>,
    /// Per device, the heads of other devices its segments in this round claim to have seen.
    seen: BTreeMap<DeviceId, BTreeMap<SegmentId, Head>>,
}

impl DeletionWitnesses {
    /// Starts from the base checkpoint (`None` for the first checkpoint).
    pub fn new(base: Option<&CheckpointIndex>) -> Self {
        let Some(base) = base else {
            return Self::default();
        };
        let stamps: BTreeMap<&str, Stamp> = base
            .deleted_chats
            .iter()
            .map(|(chat, stamp)| (chat.as_str(), *stamp))
            .collect();
        DeletionWitnesses {
            base: base
                .deletions
                .iter()
                .filter_map(|(chat, deletion)| {
                    let stamp = stamps.get(chat.as_str())?;
                    Some((chat.clone(), (*stamp, deletion.clone())))
                })
                .collect(),
            base_covered: base.covered.iter().map(|head| head.device).collect(),
            base_forked: base
                .covered
                .iter()
                .enumerate()
                .filter(|(i, head)| base.covered[..*i].iter().any(|h| h.device == head.device))
                .map(|(_, head)| head.device)
                .collect(),
            base_tips: base
                .covered
                .iter()
                .map(|head| (head.device, head.id()))
                .collect(),
            ..Self::default()
        }
    }

    /// Notes a segment of this round: what its writer had seen, and the chats it deletes (with
    /// each delete's stamp).
    pub fn note_segment<'c>(
        &mut self,
        head: &Head,
        seen: &[Head],
        deletes: impl IntoIterator<Item = (&'c str, Stamp)>,
    ) {
        let claims = self.seen.entry(head.device).or_default();
        claims.extend(
            seen.iter()
                .filter(|other| other.device != head.device)
                .map(|other| (other.id(), *other)),
        );
        for (chat, stamp) in deletes {
            let place = head.id();
            match self.deletes.get_mut(chat) {
                Some(newest) if newest.0 >= stamp => {}
                Some(newest) => *newest = (stamp, place),
                None => {
                    self.deletes.insert(chat.to_owned(), (stamp, place));
                }
            }
        }
    }

    /// The deletion record of every deleted chat whose newest delete (`newest`, the stamp the
    /// checkpoint keeps) this round or the base knows the place of, given the devices the new
    /// checkpoint covers and the listing the round's segments came from.
    pub fn finish(
        &self,
        covered: &[Head],
        newest: &BTreeMap<String, Stamp>,
        listing: &Listing,
    ) -> BTreeMap<String, Deletion> {
        let mut out = BTreeMap::new();
        for (chat, stamp) in newest {
            let deletion =
                if let Some((_, place)) = self.deletes.get(chat).filter(|(s, _)| s == stamp) {
                    // A delete of this round: every covered device but its writer may be unaware.
                    let unaware = covered.iter().map(|head| head.device).collect();
                    self.acknowledged(*place, unaware, listing)
                } else if let Some((_, base)) = self.base.get(chat).filter(|(s, _)| s == stamp) {
                    // Still unaware: those the base named, and devices it did not cover yet (one may
                    // have restored before the delete and written nothing since).
                    let newcomers = covered
                        .iter()
                        .map(|head| head.device)
                        .filter(|device| !self.base_covered.contains(device));
                    let unaware = base.unaware.iter().copied().chain(newcomers).collect();
                    self.acknowledged(base.deleted_in, unaware, listing)
                } else {
                    continue;
                };
            out.insert(chat.clone(), deletion);
        }
        out
    }

    /// `unaware` without the delete's writer and the devices whose segments in this round claim
    /// to have seen the deleting segment or one that descends from it.
    fn acknowledged(
        &self,
        place: SegmentId,
        unaware: BTreeSet<DeviceId>,
        listing: &Listing,
    ) -> Deletion {
        let unaware = unaware
            .into_iter()
            .filter(|device| *device != place.device)
            .filter(|device| !self.has_seen(*device, place, listing))
            .collect();
        Deletion {
            deleted_in: place,
            unaware,
        }
    }

    /// Whether a head `device` claims to have seen reaches `place` (see the module
    /// documentation).
    fn has_seen(&self, device: DeviceId, place: SegmentId, listing: &Listing) -> bool {
        let Some(claims) = self.seen.get(&device) else {
            return false;
        };
        let place_collected = listing.segment(place).is_none();
        claims
            .values()
            .filter(|head| head.device == place.device && head.seq >= place.seq)
            .any(|head| {
                if head.id() == place {
                    return true;
                }
                let from_here = walk(listing, [head]);
                if from_here.reached(place) {
                    return true;
                }
                if !place_collected || self.base_forked.contains(&place.device) {
                    return false;
                }
                // The first collected segment the walk met, at or above the delete, must lie on
                // the base's one covered line: below its tip, or the tip itself (tag and all). A
                // claim of a segment that never existed (or that the bucket hides) is not one.
                let collected = from_here
                    .reached
                    .iter()
                    .filter(|id| id.device == place.device && listing.segment(**id).is_none())
                    .max_by_key(|id| id.seq);
                match (collected, self.base_tips.get(&place.device)) {
                    (Some(met), Some(tip)) => {
                        met.seq >= place.seq && (met.seq < tip.seq || met == tip)
                    }
                    _ => false,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::segment::segment_name;

    fn device(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    /// Segment `seq` of device `n` with tag `tag` (on a chain, tag = seq).
    fn tagged(n: u8, seq: u64, tag: u64) -> Head {
        Head {
            device: device(n),
            seq,
            tag,
            hash: [n; 32],
        }
    }

    fn head(n: u8, seq: u64) -> Head {
        tagged(n, seq, seq)
    }

    fn stamp(wall_ms: u64, n: u8) -> Stamp {
        Stamp {
            wall_ms,
            counter: 0,
            device: device(n),
        }
    }

    /// A listing of segments `(device, seq, tag, parent tag)`.
    fn listing(segments: &[(u8, u64, u64, u64)]) -> Listing {
        let names: Vec<String> = segments
            .iter()
            .map(|(n, seq, tag, parent)| segment_name(device(*n), *seq, *tag, *parent))
            .collect();
        Listing::classify(names.iter().map(|name| (name.as_str(), 100)))
    }

    /// Device `n`'s chain from `from` to `to` (tag = seq).
    fn chain(n: u8, from: u64, to: u64) -> Vec<(u8, u64, u64, u64)> {
        (from..=to).map(|seq| (n, seq, seq, seq - 1)).collect()
    }

    #[test]
    fn a_delete_leaves_every_other_covered_device_unaware_until_it_claims_the_segment() {
        let listed = listing(&[chain(1, 1, 4), chain(2, 1, 7), chain(3, 1, 2)].concat());
        let mut round = DeletionWitnesses::new(None);
        round.note_segment(&head(1, 4), &[], [("x", stamp(10, 1))]);
        // Device 2 saw device 1 only up to seq 3: not the delete.
        round.note_segment(&head(2, 7), &[head(1, 3)], []);
        // Device 3 saw the delete.
        round.note_segment(&head(3, 2), &[head(1, 4)], []);
        let covered = [head(1, 4), head(2, 7), head(3, 2)];
        let newest = BTreeMap::from([("x".to_owned(), stamp(10, 1))]);
        let deletions = round.finish(&covered, &newest, &listed);
        assert_eq!(
            deletions["x"],
            Deletion {
                deleted_in: head(1, 4).id(),
                unaware: BTreeSet::from([device(2)]),
            }
        );
    }

    #[test]
    fn the_newest_delete_of_a_chat_decides() {
        let listed = listing(&[chain(1, 1, 1), chain(2, 1, 1)].concat());
        let mut round = DeletionWitnesses::new(None);
        round.note_segment(&head(1, 1), &[], [("x", stamp(10, 1))]);
        round.note_segment(&head(2, 1), &[head(1, 1)], [("x", stamp(20, 2))]);
        let covered = [head(1, 1), head(2, 1)];
        let newest = BTreeMap::from([("x".to_owned(), stamp(20, 2))]);
        let deletions = round.finish(&covered, &newest, &listed);
        assert_eq!(deletions["x"].deleted_in, head(2, 1).id());
        // Device 1 has not seen device 2's segment.
        assert_eq!(deletions["x"].unaware, BTreeSet::from([device(1)]));
        // A tombstone whose stamp no segment of the round holds has no known place.
        let other = BTreeMap::from([("x".to_owned(), stamp(30, 3))]);
        assert!(round.finish(&covered, &other, &listed).is_empty());
    }

    /// Device 1 wrote 1-3, then the delete at 4; a copy of its state directory wrote 4' and 5'
    /// (tags 40, 50) after 3. Device 2 saw 5', device 3 saw 5 (which follows the delete).
    #[test]
    fn a_head_on_the_other_branch_of_a_fork_has_not_seen_the_delete() {
        let mut segments = chain(1, 1, 5);
        segments.extend([(1, 4, 40, 3), (1, 5, 50, 40)]);
        segments.extend(chain(2, 1, 1));
        segments.extend(chain(3, 1, 1));
        let listed = listing(&segments);
        let mut round = DeletionWitnesses::new(None);
        round.note_segment(&head(1, 4), &[], [("x", stamp(10, 1))]);
        round.note_segment(&head(2, 1), &[tagged(1, 5, 50)], []);
        round.note_segment(&head(3, 1), &[head(1, 5)], []);
        let covered = [head(1, 5), tagged(1, 5, 50), head(2, 1), head(3, 1)];
        let newest = BTreeMap::from([("x".to_owned(), stamp(10, 1))]);
        let deletions = round.finish(&covered, &newest, &listed);
        assert_eq!(deletions["x"].unaware, BTreeSet::from([device(2)]));
    }

    /// The delete (device 1, seq 2) is in the base checkpoint and collected with 1-3; device 2,
    /// unaware then, now claims a head above the collected part.
    fn after_collection(base_tips: &[Head], listed: &Listing, claimed: Head) -> BTreeSet<DeviceId> {
        let base = CheckpointIndex {
            name: String::new(),
            device: device(9),
            seq: 1,
            grants: Vec::new(),
            packs: Vec::new(),
            chats: Vec::new(),
            created_at_ms: 0,
            signature: None,
            covered: base_tips.iter().copied().chain([head(2, 1)]).collect(),
            deleted_chats: vec![("x".to_owned(), stamp(10, 1))],
            deletions: BTreeMap::from([(
                "x".to_owned(),
                Deletion {
                    deleted_in: head(1, 2).id(),
                    unaware: BTreeSet::from([device(2)]),
                },
            )]),
        };
        let mut round = DeletionWitnesses::new(Some(&base));
        round.note_segment(&head(2, 2), &[claimed], []);
        let covered = [claimed, head(2, 2)];
        let newest = BTreeMap::from([("x".to_owned(), stamp(10, 1))]);
        round.finish(&covered, &newest, listed)["x"].unaware.clone()
    }

    #[test]
    fn a_head_above_a_collected_delete_on_the_one_covered_line_has_seen_it() {
        // 1-3 collected; 4 and 5 listed.
        let listed = listing(&[chain(1, 4, 5), chain(2, 2, 2)].concat());
        assert!(after_collection(&[head(1, 3)], &listed, head(1, 5)).is_empty());
        // A copy that forked below the delete (4', 5' after 1) has not.
        let mut forked = chain(1, 4, 5);
        forked.extend([(1, 2, 20, 1), (1, 3, 30, 20), (2, 2, 2, 1)]);
        let listed = listing(&forked);
        assert_eq!(
            after_collection(&[head(1, 3)], &listed, tagged(1, 3, 30)),
            BTreeSet::from([device(2)])
        );
    }

    #[test]
    fn a_collected_fork_leaves_a_device_unaware_unless_a_listed_path_reaches_the_delete() {
        // The base covered two tips of device 1 (3 and 3', tag 30), all collected.
        let listed = listing(&[chain(1, 4, 5), chain(2, 2, 2)].concat());
        let tips = [head(1, 3), tagged(1, 3, 30)];
        assert_eq!(
            after_collection(&tips, &listed, head(1, 5)),
            BTreeSet::from([device(2)])
        );
        // The deleting segment itself, claimed, still counts.
        assert!(after_collection(&tips, &listed, head(1, 2)).is_empty());
    }

    #[test]
    fn a_claimed_head_the_base_never_covered_does_not_count_once_the_delete_is_collected() {
        // 1-3 collected (the base covered tip 3); device 2 claims seq 4 with a tag the listing
        // does not show (a segment that never existed, or one the bucket hides).
        let listed = listing(&chain(2, 2, 2));
        assert_eq!(
            after_collection(&[head(1, 3)], &listed, tagged(1, 4, 99)),
            BTreeSet::from([device(2)])
        );
        // The base's tip itself, unlisted, counts; another tag at its seq does not.
        assert!(after_collection(&[head(1, 3)], &listed, head(1, 3)).is_empty());
        assert_eq!(
            after_collection(&[head(1, 3)], &listed, tagged(1, 3, 33)),
            BTreeSet::from([device(2)])
        );
    }
}
