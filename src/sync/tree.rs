//! Each device's segments form a tree that the listing alone describes: every segment's name
//! says which segment it follows (its parent's tag). Normally the tree is one chain; a copied
//! state directory makes a fork, two segments with the same sequence number and parent.
//!
//! A set of heads (the tips a device applied, or those a checkpoint covers) stands for those
//! segments and every ancestor: the [`walk`] finds them by following parent tags through the
//! listing. A parent the listing no longer shows (collected after a checkpoint covered it)
//! stops the walk; the highest such sequence number per device is the *floor*: garbage
//! collection deletes what a checkpoint covers in ascending order, so what it covered of that
//! device at or below the floor is gone, and a segment whose parent is there and unlisted
//! follows a collected segment.
//!
//! The highest, not the lowest: a checkpoint covering a fork's two tips at seqs 5 and 3 has
//! all of 1-5 collected, and the lowest missing sequence number (3) would refuse a segment a
//! stale copy of a state directory writes later after the collected segment 4 (a VM snapshot
//! restored months later), stopping every device's sync for good. The cost: a bucket that
//! deletes an uncovered segment at or below the floor whose child is listed is not caught by
//! that child (its parent hash cannot be compared with anything either way).

use std::collections::{BTreeMap, BTreeSet};

use super::clock::DeviceId;
use super::listing::Listing;
use super::segment::{Head, SegmentId};

/// What a walk from some heads through the listing reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// The heads and every ancestor their names lead to, listed or not.
    pub reached: BTreeSet<SegmentId>,
    /// Per device, the highest sequence number of a reached segment the listing does not show.
    pub floor: BTreeMap<DeviceId, u64>,
}

impl Walk {
    /// Whether `id` is at or below its device's floor: collected, or older than what was.
    pub fn below_floor(&self, id: SegmentId) -> bool {
        self.floor
            .get(&id.device)
            .is_some_and(|floor| id.seq <= *floor)
    }

    /// Whether the walk reached `id`.
    pub fn reached(&self, id: SegmentId) -> bool {
        self.reached.contains(&id)
    }
}

/// Walks from `heads` to every ancestor the listing names (see the module documentation).
pub fn walk<'a>(listing: &Listing, heads: impl IntoIterator<Item = &'a Head>) -> Walk {
    let mut walk = Walk::default();
    let mut stack: Vec<SegmentId> = heads.into_iter().map(Head::id).collect();
    while let Some(id) = stack.pop() {
        if !walk.reached.insert(id) {
            continue;
        }
        match listing.segment(id) {
            Some(listed) => {
                if id.seq > 1 {
                    stack.push(SegmentId {
                        device: id.device,
                        seq: id.seq - 1,
                        tag: listed.parent,
                    });
                }
            }
            None => {
                let floor = walk.floor.entry(id.device).or_insert(id.seq);
                *floor = (*floor).max(id.seq);
            }
        }
    }
    walk
}

/// The tips a device holds after adopting a checkpoint: the checkpoint's covered tips and the
/// device's own `applied` ones, less every one that is an ancestor of another (through the
/// listing) and every applied one the listing no longer shows at or below its device's floor
/// in `covered` (collected: the checkpoint covers what it led to).
pub fn tips(
    listing: &Listing,
    applied: &[Head],
    covered_tips: &[Head],
    covered: &Walk,
) -> Vec<Head> {
    let mut heads: Vec<Head> = covered_tips.to_vec();
    for head in applied {
        let collected = listing.segment(head.id()).is_none() && covered.below_floor(head.id());
        if !collected && !heads.iter().any(|h| h.id() == head.id()) {
            heads.push(*head);
        }
    }
    let mut ancestors = BTreeSet::new();
    for head in &heads {
        let from_here = walk(listing, [head]);
        ancestors.extend(from_here.reached.into_iter().filter(|id| *id != head.id()));
    }
    heads.retain(|head| !ancestors.contains(&head.id()));
    heads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::segment::segment_name;

    const A: DeviceId = DeviceId([0xa; 16]);

    fn head(seq: u64, tag: u64) -> Head {
        Head {
            device: A,
            seq,
            tag,
            hash: [seq as u8; 32],
        }
    }

    /// A chain 1-2-3 (tags 1, 2, 3) with a fork 2' (tag 20) -> 3' (tag 30), segments `gone`
    /// not listed.
    fn forked(gone: &[(u64, u64)]) -> Listing {
        let all = [(1, 1, 0), (2, 2, 1), (3, 3, 2), (2, 20, 1), (3, 30, 20)];
        let names: Vec<String> = all
            .iter()
            .filter(|(seq, tag, _)| !gone.contains(&(*seq, *tag)))
            .map(|(seq, tag, parent)| segment_name(A, *seq, *tag, *parent))
            .collect();
        Listing::classify(names.iter().map(|n| (n.as_str(), 1)))
    }

    #[test]
    fn a_walk_reaches_every_ancestor_and_stops_at_collected_ones() {
        let listing = forked(&[]);
        let both = walk(&listing, &[head(3, 3), head(3, 30)]);
        assert_eq!(both.reached.len(), 5);
        assert!(both.floor.is_empty());
        let one = walk(&listing, &[head(3, 30)]);
        assert!(one.reached(head(1, 1).id()) && !one.reached(head(2, 2).id()));
        // Seq 1 and the fork's 2' collected: the walk stops there, the floor is the highest.
        let collected = forked(&[(1, 1), (2, 20)]);
        let partial = walk(&collected, &[head(3, 3), head(3, 30)]);
        assert_eq!(partial.floor, BTreeMap::from([(A, 2)]));
        assert!(partial.reached(head(2, 20).id()) && partial.reached(head(1, 1).id()));
        assert!(partial.below_floor(head(2, 2).id()) && !partial.below_floor(head(3, 3).id()));
    }

    #[test]
    fn tips_drop_ancestors_and_collected_applied_ones_but_keep_every_branch() {
        let listing = forked(&[]);
        let none = Walk::default();
        assert_eq!(
            tips(&listing, &[head(2, 2)], &[head(3, 3), head(3, 30)], &none),
            [head(3, 3), head(3, 30)]
        );
        assert_eq!(
            tips(&listing, &[head(2, 20)], &[head(3, 3)], &none),
            [head(3, 3), head(2, 20)]
        );
        // Everything up to the tips collected: an applied head below the floor goes, both
        // covered branch tips stay though neither walk can link them any more.
        let collected = forked(&[(1, 1), (2, 2), (2, 20), (3, 3), (3, 30)]);
        let covered = walk(&collected, &[head(3, 3), head(3, 30)]);
        assert_eq!(
            tips(
                &collected,
                &[head(2, 2)],
                &[head(3, 3), head(3, 30)],
                &covered
            ),
            [head(3, 3), head(3, 30)]
        );
    }
}
