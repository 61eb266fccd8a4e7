//! Which devices may still write to a deleted chat without knowing it was deleted.
//!
//! A checkpoint keeps a deleted chat's tombstone forever, and its keys only while some device
//! it covers may still write to the chat unaware of the deletion: such a device's segment,
//! sealed before the deletion reached it, uses the chat's key without granting it again, and a
//! device starting from the checkpoint must be able to open it. Once every covered device has
//! written a segment after seeing the delete (its `seen` heads reach the deleting segment), the
//! keys leave the checkpoint, and with the segments that granted them collected, the bucket
//! (SYNC.md, "Shredding").

use std::collections::{BTreeMap, BTreeSet};

use super::checkpoint::{CheckpointIndex, Deletion};
use super::clock::{DeviceId, Stamp};
use super::segment::Head;

/// What one round of segments says about deletions, on top of the base checkpoint's.
#[derive(Debug, Default)]
pub struct DeletionWitnesses {
    /// The base checkpoint's deletions, by chat.
    base: BTreeMap<String, (Stamp, Deletion)>,
    /// Devices the base covers.
    base_covered: BTreeSet<DeviceId>,
    /// Deletes in this round's segments: chat -> (stamp, segment).
    deletes: BTreeMap<String, (Stamp, (DeviceId, u64))>,
    /// Per device, the newest seq of each other device that its segments in this round claim
    /// to have seen.
    seen: BTreeMap<DeviceId, BTreeMap<DeviceId, u64>>,
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
        for other in seen {
            let newest = claims.entry(other.device).or_insert(other.seq);
            *newest = (*newest).max(other.seq);
        }
        for (chat, stamp) in deletes {
            let place = (head.device, head.seq);
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
    /// checkpoint covers.
    pub fn finish(
        &self,
        covered: &[Head],
        newest: &BTreeMap<String, Stamp>,
    ) -> BTreeMap<String, Deletion> {
        let mut out = BTreeMap::new();
        for (chat, stamp) in newest {
            let deletion =
                if let Some((_, place)) = self.deletes.get(chat).filter(|(s, _)| s == stamp) {
                    // A delete of this round: every covered device but its writer may be unaware.
                    let unaware = covered.iter().map(|head| head.device).collect();
                    self.acknowledged(*place, unaware)
                } else if let Some((_, base)) = self.base.get(chat).filter(|(s, _)| s == stamp) {
                    // Still unaware: those the base named, and devices it did not cover yet (one may
                    // have restored before the delete and written nothing since).
                    let newcomers = covered
                        .iter()
                        .map(|head| head.device)
                        .filter(|device| !self.base_covered.contains(device));
                    let unaware = base.unaware.iter().copied().chain(newcomers).collect();
                    self.acknowledged(base.deleted_in, unaware)
                } else {
                    continue;
                };
            out.insert(chat.clone(), deletion);
        }
        out
    }

    /// `unaware` without the delete's writer and the devices whose segments in this round claim
    /// to have seen the deleting segment. By sequence number only: when the deleting device's id
    /// forked (a copied state directory), a seen head on the other branch at a higher seq counts
    /// too, and the keys may leave a checkpoint early (an open gap: it needs the tag in the place
    /// and the tree to tell a descendant).
    fn acknowledged(&self, place: (DeviceId, u64), unaware: BTreeSet<DeviceId>) -> Deletion {
        let (deleter, seq) = place;
        let unaware = unaware
            .into_iter()
            .filter(|device| *device != deleter)
            .filter(|device| {
                self.seen
                    .get(device)
                    .and_then(|claims| claims.get(&deleter))
                    .is_none_or(|seen| *seen < seq)
            })
            .collect();
        Deletion {
            deleted_in: place,
            unaware,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    fn head(n: u8, seq: u64) -> Head {
        Head {
            device: device(n),
            seq,
            tag: seq,
            hash: [n; 32],
        }
    }

    fn stamp(wall_ms: u64, n: u8) -> Stamp {
        Stamp {
            wall_ms,
            counter: 0,
            device: device(n),
        }
    }

    #[test]
    fn a_delete_leaves_every_other_covered_device_unaware_until_it_claims_the_segment() {
        let mut round = DeletionWitnesses::new(None);
        round.note_segment(&head(1, 4), &[], [("x", stamp(10, 1))]);
        // Device 2 saw device 1 only up to seq 3: not the delete.
        round.note_segment(&head(2, 7), &[head(1, 3)], []);
        // Device 3 saw the delete.
        round.note_segment(&head(3, 2), &[head(1, 4)], []);
        let covered = [head(1, 4), head(2, 7), head(3, 2)];
        let newest = BTreeMap::from([("x".to_owned(), stamp(10, 1))]);
        let deletions = round.finish(&covered, &newest);
        assert_eq!(
            deletions["x"],
            Deletion {
                deleted_in: (device(1), 4),
                unaware: BTreeSet::from([device(2)]),
            }
        );
    }

    #[test]
    fn the_newest_delete_of_a_chat_decides() {
        let mut round = DeletionWitnesses::new(None);
        round.note_segment(&head(1, 1), &[], [("x", stamp(10, 1))]);
        round.note_segment(&head(2, 1), &[head(1, 1)], [("x", stamp(20, 2))]);
        let covered = [head(1, 1), head(2, 1)];
        let newest = BTreeMap::from([("x".to_owned(), stamp(20, 2))]);
        let deletions = round.finish(&covered, &newest);
        assert_eq!(deletions["x"].deleted_in, (device(2), 1));
        // Device 1 has not seen device 2's segment.
        assert_eq!(deletions["x"].unaware, BTreeSet::from([device(1)]));
        // A tombstone whose stamp no segment of the round holds has no known place.
        let other = BTreeMap::from([("x".to_owned(), stamp(30, 3))]);
        assert!(round.finish(&covered, &other).is_empty());
    }
}
