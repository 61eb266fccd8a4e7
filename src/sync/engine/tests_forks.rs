//! Forked segment trees: a copied state directory made two writers seal the same sequence
//! numbers of one device. Names differ (each seal draws its own tag), so both branches stay in
//! the bucket, and every reader must apply, cover, collect and check both.

use super::*;

/// Before the copy: A wrote 1 and 2, B wrote 1, and a follower applied all three. Then one copy
/// of A's state wrote 3 and 4 after 2, the other 3' after 2; B wrote 2 having seen both tips.
/// Returns the bucket, the follower (before it pulled the fork) and the three A tips/branch
/// heads: (a3, a4, a3').
struct Forked {
    bucket: Bucket,
    follower: Device,
    a3: Head,
    a4: Head,
    a3x: Head,
    b2: Head,
}

fn forked() -> Forked {
    let keys = keys();
    let mut bucket = Bucket::default();
    bucket.write(&keys, A, &[]);
    let a2 = bucket.write(&keys, A, &[]);
    bucket.write(&keys, B, &[]);
    let mut follower = Device::default();
    pull(&bucket, &mut follower).unwrap();
    let a3 = bucket.write_after(&keys, A, Some(a2), &[]);
    let a4 = bucket.write_after(&keys, A, Some(a3), &[]);
    let a3x = bucket.write_after(&keys, A, Some(a2), &[]);
    let b2 = bucket.write(&keys, B, &[a4, a3x]);
    Forked {
        bucket,
        follower,
        a3,
        a4,
        a3x,
        b2,
    }
}

/// The name of the segment `head` stands for.
fn name_of(bucket: &Bucket, head: Head) -> String {
    bucket
        .written
        .iter()
        .find(|n| crate::sync::segment::parse_segment_name(n).is_some_and(|s| s.id() == head.id()))
        .cloned()
        .unwrap()
}

fn tip_ids(device: &Device) -> BTreeSet<SegmentId> {
    device.applied.iter().map(Head::id).collect()
}

#[test]
fn both_branches_of_different_lengths_are_applied_by_a_follower_and_a_fresh_device() {
    let Forked {
        bucket,
        mut follower,
        a4,
        a3x,
        b2,
        ..
    } = forked();
    assert_eq!(bucket.listing().segments[&A].len(), 5);
    pull(&bucket, &mut follower).unwrap();
    // 3 before the fork, 3 on the branches, B's second.
    assert_eq!(follower.messages, 7);
    assert_eq!(
        tip_ids(&follower),
        BTreeSet::from([a4.id(), a3x.id(), b2.id()])
    );
    let mut fresh = Device::default();
    pull(&bucket, &mut fresh).unwrap();
    assert_eq!(fresh.messages, 7);
    assert_eq!(tip_ids(&fresh), tip_ids(&follower));
    // Nothing more to apply: a second pull fetches nothing.
    let before = follower.messages;
    pull(&bucket, &mut follower).unwrap();
    assert_eq!(follower.messages, before);
    verify(&bucket, &follower).unwrap();
    verify(&bucket, &Device::default()).unwrap();
}

#[test]
fn a_checkpoint_covering_both_tips_lets_gc_collect_both_branches() {
    let Forked {
        mut bucket,
        mut follower,
        a4,
        a3x,
        b2,
        ..
    } = forked();
    pull(&bucket, &mut follower).unwrap();
    let keys = keys();
    bucket.checkpoint_of(&keys, 1, &[a4, a3x, b2]);
    bucket.collect();
    assert!(bucket.listing().segments.is_empty());
    let mut fresh = Device::default();
    pull(&bucket, &mut fresh).unwrap();
    assert_eq!(fresh.messages, 7);
    assert_eq!(
        tip_ids(&fresh),
        BTreeSet::from([a4.id(), a3x.id(), b2.id()])
    );
    verify(&bucket, &fresh).unwrap();
    verify(&bucket, &follower).unwrap();
    pull(&bucket, &mut follower).unwrap();
    // Writing goes on after the collected fork: the next A segment follows one branch.
    let a5 = bucket.write_after(&keys, A, Some(a4), &[]);
    pull(&bucket, &mut fresh).unwrap();
    assert_eq!(fresh.messages, 8);
    assert!(tip_ids(&fresh).contains(&a5.id()) && tip_ids(&fresh).contains(&a3x.id()));
}

#[test]
fn a_checkpoint_covering_one_branch_leaves_the_other_to_everyone() {
    let Forked {
        mut bucket,
        mut follower,
        a3,
        a4,
        a3x,
        b2,
    } = forked();
    let keys = keys();
    // The writer of this checkpoint knew only the longer branch.
    bucket.checkpoint_of(&keys, 1, &[a4, b2]);
    bucket.collect();
    let listing = bucket.listing();
    // gc took the covered branch and what it stands on, not the other branch.
    assert_eq!(
        listing.segments[&A].keys().collect::<Vec<_>>(),
        [&(3, a3x.tag)]
    );
    assert!(listing.segment(a3.id()).is_none());
    let mut fresh = Device::default();
    pull(&bucket, &mut fresh).unwrap();
    // The checkpoint's 6 messages (b2's among them), then a3' on top of a collected parent.
    assert_eq!(fresh.messages, 7);
    assert!(fresh.has(a3x.id()));
    pull(&bucket, &mut follower).unwrap();
    assert!(follower.has(a3x.id()) && follower.has(a4.id()));
    verify(&bucket, &fresh).unwrap();
    verify(&bucket, &Device::default()).unwrap();
}

#[test]
fn a_withheld_branch_segment_whose_child_is_listed_is_missing() {
    let Forked { mut bucket, a3, .. } = forked();
    bucket.objects.remove(&name_of(&bucket, a3));
    assert!(matches!(
        integrity(pull(&bucket, &mut Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
    assert!(matches!(
        integrity(verify(&bucket, &Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
}

#[test]
fn a_deleted_tip_another_segment_claims_is_refused() {
    let Forked {
        mut bucket, a3x, ..
    } = forked();
    assert!(bucket.objects.remove(&name_of(&bucket, a3x)).is_some());
    // Nothing names it as a parent; B's second segment claims it: withheld.
    assert!(matches!(
        integrity(pull(&bucket, &mut Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
}

#[test]
fn a_rolled_back_tip_is_refused_by_the_device_that_applied_it() {
    let Forked {
        mut bucket,
        mut follower,
        a3x,
        ..
    } = forked();
    pull(&bucket, &mut follower).unwrap();
    bucket.objects.remove(&name_of(&bucket, a3x));
    assert!(matches!(
        integrity(pull(&bucket, &mut follower)),
        IntegrityProblem::RolledBack { seen: 3, .. }
    ));
    assert!(matches!(
        integrity(verify(&bucket, &follower)),
        IntegrityProblem::RolledBack { seen: 3, .. }
    ));
}

/// Random honest histories with forks: devices write after their last segment, copies write
/// after any earlier one (one garbage collection may already have taken), checkpoints cover
/// every tip, collections (some cut short) take what the newest covers, a follower pulls now and
/// then. Every pull and verify succeeds, and a fresh device ends with every message exactly once.
#[test]
fn random_honest_histories_with_forks_restore_everything() {
    let keys = keys();
    // A small deterministic generator (xorshift), so a failure names its seed.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for script in 0..100 {
        let mut bucket = Bucket::default();
        let mut follower = Device::default();
        let mut checkpoints = 0;
        for _ in 0..24 {
            let device = [A, B][next(2) as usize];
            match next(10) {
                0..=4 => {
                    let seen: Vec<Head> = bucket
                        .heads
                        .values()
                        .filter(|h| h.device != device)
                        .copied()
                        .collect();
                    bucket.write(&keys, device, &seen);
                }
                5 => {
                    // A copy of the device's state directory from any earlier point.
                    let earlier = bucket.history.get(&device).cloned().unwrap_or_default();
                    let at = next(earlier.len() as u64 + 1) as usize;
                    bucket.write_after(&keys, device, earlier.get(at).copied(), &[]);
                }
                6 => {
                    if !bucket.tips().is_empty() {
                        checkpoints += 1;
                        bucket.checkpoint(&keys, checkpoints);
                    }
                }
                7 => {
                    if next(3) == 0 {
                        // Interrupted: only the lower part goes (ascending).
                        bucket.collect_keeping(next(3) as usize + 1);
                    } else {
                        bucket.collect();
                    }
                }
                _ => {
                    pull(&bucket, &mut follower)
                        .unwrap_or_else(|e| panic!("script {script}: follower pull: {e:?}"));
                    verify(&bucket, &follower)
                        .unwrap_or_else(|e| panic!("script {script}: follower verify: {e:?}"));
                }
            }
        }
        let mut fresh = Device::default();
        pull(&bucket, &mut fresh).unwrap_or_else(|e| panic!("script {script}: fresh pull: {e:?}"));
        assert_eq!(
            fresh.messages, bucket.messages,
            "script {script}: a fresh device's messages"
        );
        verify(&bucket, &fresh).unwrap_or_else(|e| panic!("script {script}: fresh verify: {e:?}"));
        verify(&bucket, &Device::default())
            .unwrap_or_else(|e| panic!("script {script}: verify from scratch: {e:?}"));
        pull(&bucket, &mut follower)
            .unwrap_or_else(|e| panic!("script {script}: follower's last pull: {e:?}"));
        verify(&bucket, &follower)
            .unwrap_or_else(|e| panic!("script {script}: follower's last verify: {e:?}"));
    }
}
