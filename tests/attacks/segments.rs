//! Attacks on segments: what a hostile provider does to them, and what each device must answer.
//! Each function names one attack; `tests/attacks.rs` runs each on a directory store and the
//! ones that need no file system on Garage.

use crate::harness::*;
use crate::template::template;

// Segments after the newest checkpoint.

pub fn flipped_bit_in_a_new_segment() -> Attack {
    attack(
        "flipped bit in a new segment",
        |b| Box::pin(async move { b.flip_middle(&b.t.a_uncovered[0]).await }),
        Expect::readers_of_the_new(auth_failed()),
    )
}

pub fn new_segment_cut_short() -> Attack {
    attack(
        "new segment cut short",
        |b| {
            Box::pin(async move {
                let len = b.get(&b.t.a_uncovered[0]).await.len();
                b.truncate(&b.t.a_uncovered[0], len / 2).await
            })
        },
        Expect::readers_of_the_new(cut_short()),
    )
}

pub fn new_segment_emptied() -> Attack {
    attack(
        "new segment emptied",
        |b| Box::pin(async move { b.put(&b.t.a_uncovered[0], Vec::new()).await }),
        Expect::readers_of_the_new(empty_object()),
    )
}

pub fn new_segment_deleted_before_the_newest() -> Attack {
    let t = template();
    let first = t.seq_of(&t.a_uncovered[0]);
    attack(
        "a device's new segment deleted, a later one kept",
        |b| Box::pin(async move { b.delete(&b.t.a_uncovered[0]).await }),
        Expect::everyone(missing_segment(&t.a, first)),
    )
}

/// `a`'s newest segment goes; `b`'s newest names it as seen.
pub fn newest_segment_deleted_after_another_device_saw_it() -> Attack {
    let t = template();
    let newest = t.seq_of(&t.a_uncovered[1]);
    Attack {
        expect: Expect {
            old_sync: rolled_back(&t.a, newest, newest - 1),
            old_verify: rolled_back(&t.a, newest, newest - 1),
            ..Expect::everyone(missing_segment(&t.a, newest))
        },
        ..attack(
            "newest segment deleted after another device saw it",
            |b| Box::pin(async move { b.delete(&b.t.a_uncovered[1]).await }),
            Expect::nothing(),
        )
    }
}

/// `a` rolled back to before the last round: both its new segments go.
pub fn device_rolled_back() -> Attack {
    let t = template();
    let newest = t.seq_of(&t.a_uncovered[1]);
    let kept = t.seq_of(&t.a_uncovered[0]) - 1;
    Attack {
        expect: Expect {
            old_sync: rolled_back(&t.a, newest, kept),
            old_verify: rolled_back(&t.a, newest, kept),
            ..Expect::everyone(missing_segment(&t.a, newest))
        },
        ..attack(
            "a device rolled back",
            |b| {
                Box::pin(async move {
                    b.delete(&b.t.a_uncovered[0]).await;
                    b.delete(&b.t.a_uncovered[1]).await
                })
            },
            Expect::nothing(),
        )
    }
}

/// `b`'s newest segment, which no other device's segment names, withheld: only `b` can tell.
/// Not detectable by design for the others (SYNC.md, "Not detected").
pub fn unseen_newest_segment_withheld() -> Attack {
    let t = template();
    let newest = t.seq_of(&t.b_uncovered[0]);
    Attack {
        expect: Expect {
            old_sync: rolled_back(&t.b, newest, newest - 1),
            old_verify: rolled_back(&t.b, newest, newest - 1),
            ..Expect::nothing()
        },
        ..attack(
            "a newest segment nobody else saw withheld",
            |b| Box::pin(async move { b.delete(&b.t.b_uncovered[0]).await }),
            Expect::nothing(),
        )
    }
}

/// The whole bucket served as it was before the last round: only devices that saw that round
/// can tell. A new device and one that was offline get a consistent older vault (by design).
pub fn whole_bucket_rolled_back() -> Attack {
    let t = template();
    let a_newest = t.seq_of(&t.a_uncovered[1]);
    let b_newest = t.seq_of(&t.b_uncovered[0]);
    // Both `a` and `b` lost their last round; which is named first depends on their ids.
    let rollback = either(
        rolled_back(&t.a, a_newest, a_newest - 2),
        rolled_back(&t.b, b_newest, b_newest - 1),
    );
    Attack {
        expect: Expect {
            old_sync: rollback.clone(),
            old_verify: rollback,
            ..Expect::nothing()
        },
        ..attack(
            "the whole bucket rolled back",
            |b| {
                Box::pin(async move {
                    for object in b.store.list("").await.unwrap() {
                        b.store.delete(&object.key).await.unwrap();
                    }
                    let old = chatvault::store::DirectoryStore::new(b.t.before_last_round.clone());
                    use chatvault::store::ObjectStore;
                    for object in old.list("").await.unwrap() {
                        let bytes = old.get(&object.key, u64::MAX).await.unwrap().unwrap();
                        b.put(&object.key, bytes).await;
                    }
                })
            },
            Expect::nothing(),
        )
    }
}

/// Everything deleted: devices that saw the vault notice; a new device sees an empty vault,
/// which it cannot tell from a new one (by design).
pub fn everything_deleted() -> Attack {
    // Devices are checked in id order; which device is named first depends on the ids.
    let any_rollback = Outcome::err("RolledBack { .. }", |e| {
        matches!(
            e,
            chatvault::Error::Integrity(chatvault::IntegrityProblem::RolledBack { found: 0, .. })
        )
    });
    Attack {
        expect: Expect {
            fresh_sync: Outcome::Ok,
            fresh_verify: Outcome::Ok,
            unsynced_verify: Outcome::Ok,
            ..Expect::everyone(any_rollback)
        },
        ..attack(
            "everything deleted",
            |b| {
                Box::pin(async move {
                    for object in b.store.list("").await.unwrap() {
                        b.store.delete(&object.key).await.unwrap();
                    }
                })
            },
            Expect::nothing(),
        )
    }
}

pub fn segment_replayed_under_the_next_name() -> Attack {
    attack(
        "an old segment replayed under the next name",
        |b| {
            Box::pin(async move {
                let next = b.t.next_segment(&b.t.a_uncovered[1]);
                b.copy(&b.t.a_uncovered[0], &next).await
            })
        },
        Expect::everyone(auth_failed()),
    )
}

pub fn two_new_segments_swapped() -> Attack {
    attack(
        "two new segments swapped",
        |b| Box::pin(async move { b.swap(&b.t.a_uncovered[0], &b.t.a_uncovered[1]).await }),
        Expect::readers_of_the_new(auth_failed()),
    )
}

/// `a`'s segment stored as `b`'s next one.
pub fn segment_spliced_into_another_device() -> Attack {
    attack(
        "a segment spliced into another device's chain",
        |b| {
            Box::pin(async move {
                let next = b.t.next_segment(&b.t.b_uncovered[0]);
                b.copy(&b.t.a_uncovered[1], &next).await
            })
        },
        Expect::everyone(auth_failed()),
    )
}

/// A segment of another vault (another key) under its own device's name in this vault.
pub fn segment_from_another_vault() -> Attack {
    attack(
        "a segment from another vault",
        |b| {
            Box::pin(async move {
                let (key, bytes) = b.t.other("/segments/");
                let name = key.split_once('/').unwrap().1;
                b.put(&b.t.key_of(name), bytes).await
            })
        },
        Expect::everyone(auth_failed()),
    )
}

/// A real segment under the name of a device nobody has seen.
pub fn segment_of_an_invented_device() -> Attack {
    attack(
        "a segment of an invented device",
        |b| {
            Box::pin(async move {
                let invented = "5a".repeat(16);
                b.copy(&b.t.a_uncovered[0], &b.t.segment(&invented, 1, 1, 0))
                    .await
            })
        },
        Expect::everyone(auth_failed()),
    )
}

/// The newest checkpoint index stored as `a`'s next segment.
pub fn object_of_another_kind_under_a_segment_name() -> Attack {
    attack(
        "an object of another kind under a segment name",
        |b| {
            Box::pin(async move {
                let next = b.t.next_segment(&b.t.a_uncovered[1]);
                b.copy(&b.t.newest_checkpoint, &next).await
            })
        },
        Expect::everyone(wrong_kind(SEGMENT, CHECKPOINT_INDEX)),
    )
}

/// A sparse 512 MiB file as `a`'s next segment: refused without reading it whole.
pub fn oversized_segment() -> Attack {
    let t = template();
    let next = t.next_segment(&t.a_uncovered[1]);
    Attack {
        directory_only: true,
        ..attack(
            "a 512 MiB object under a segment name",
            |b| {
                Box::pin(async move {
                    let key = b.t.next_segment(&b.t.a_uncovered[1]);
                    sparse(&b, &key, HUGE)
                })
            },
            Expect::everyone(oversized(&next)),
        )
    }
}

// Segments the newest checkpoint covers (still listed: not yet collected).

pub fn flipped_bit_in_a_covered_segment() -> Attack {
    attack(
        "flipped bit in a covered segment",
        |b| Box::pin(async move { b.flip_middle(&b.t.covered[0]).await }),
        Expect::verifiers(auth_failed()),
    )
}

pub fn covered_segment_cut_short() -> Attack {
    attack(
        "covered segment cut short",
        |b| {
            Box::pin(async move {
                let len = b.get(&b.t.covered[0]).await.len();
                b.truncate(&b.t.covered[0], len / 2).await
            })
        },
        Expect::verifiers(cut_short()),
    )
}

/// What garbage collection does anyway: nothing is lost.
pub fn covered_segment_deleted() -> Attack {
    attack(
        "covered segment deleted (control)",
        |b| Box::pin(async move { b.delete(&b.t.covered[0]).await }),
        Expect::nothing(),
    )
}
