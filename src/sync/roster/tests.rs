//! The fold against hand-made rosters (one test per rule and per attack) and random ones.
use prost::Message as _;

use super::entry::entry_id;
use super::*;
use crate::devices::DeviceSecrets;
use crate::error::DecodeProblem;
use crate::format::proto;

const VAULT: VaultId = VaultId::from_bytes([1; 16]);

fn recovery() -> DeviceSecrets {
    DeviceSecrets::from_bytes(&[0x99; 64])
}

fn secrets(n: u8) -> DeviceSecrets {
    DeviceSecrets::from_bytes(&[n; 64])
}

/// Device `n`'s id: the one its keys certify (devices may add only such ids).
fn id(n: u8) -> DeviceId {
    DeviceId::of_keys(&secrets(n).public())
}

fn add(n: u8) -> RosterChange {
    RosterChange::Add {
        device: id(n),
        keys: secrets(n).public(),
        name: format!("phone {n}"),
        platform: "test".into(),
        first_signed_seq: 1,
        unsigned_tips: Vec::new(),
    }
}

fn revoke(n: u8) -> RosterChange {
    RosterChange::Revoke {
        device: id(n),
        accepted_tips: Vec::new(),
    }
}

/// An entry signed by `by` (`None`: the recovery key `key`), as signer `signer`.
fn signed_as(
    key: &DeviceSecrets,
    signer: Signer,
    parents: &[&SignedEntry],
    epoch: u8,
    change: RosterChange,
) -> SignedEntry {
    SignedEntry::sign(
        &VAULT,
        RosterEntry {
            signer,
            parents: parents.iter().map(|p| p.id).collect(),
            made_at_ms: 1,
            epoch,
            change,
        },
        |message| key.sign(message),
    )
}

fn by_recovery(parents: &[&SignedEntry], change: RosterChange) -> SignedEntry {
    signed_as(&recovery(), Signer::Recovery, parents, 0, change)
}

fn by(n: u8, parents: &[&SignedEntry], change: RosterChange) -> SignedEntry {
    signed_as(&secrets(n), Signer::Device(id(n)), parents, 0, change)
}

fn fold_all(entries: &[&SignedEntry]) -> Roster {
    fold(
        &VAULT,
        recovery().public().verifying,
        entries.iter().map(|e| (*e).clone()).collect(),
    )
    .unwrap()
}

/// The numbers of the active devices, in order.
fn active(roster: &Roster) -> Vec<u8> {
    let mut numbers: Vec<u8> = (0..=u8::MAX).filter(|n| roster.is_active(id(*n))).collect();
    numbers.sort();
    numbers
}

#[test]
fn the_recovery_key_adds_a_device_that_adds_another() {
    let a = by_recovery(&[], add(0xa));
    let b = by(0xa, &[&a], add(0xb));
    let roster = fold_all(&[&b, &a]);
    assert_eq!(active(&roster), [0xa, 0xb]);
    assert_eq!(roster.devices[&id(0xb)].added_by, Signer::Device(id(0xa)));
    assert_eq!(roster.devices[&id(0xb)].keys, secrets(0xb).public());
    assert_eq!(roster.tips, [b.id]);
    assert!(roster.refused.is_empty());
}

#[test]
fn forged_unknown_and_orphaned_entries_do_not_count() {
    let a = by_recovery(&[], add(0xa));
    // Claims the recovery key, signed by device a.
    let forged = signed_as(&secrets(0xa), Signer::Recovery, &[&a], 0, add(0xc));
    // Signed by a device nobody added.
    let unknown = by(0xd, &[&a], add(0xe));
    // A device may not rotate the recovery key.
    let rotation = by(
        0xa,
        &[&a],
        RosterChange::RotateRecovery {
            next: [5; 32],
            agreement: [6; 32],
        },
    );
    // Its parent is not in the bucket.
    let withheld = by(0xa, &[&a], add(0xf));
    let orphan = by(0xa, &[&withheld], add(0x10));
    let roster = fold_all(&[&a, &forged, &unknown, &rotation, &orphan]);
    assert_eq!(active(&roster), [0xa]);
    assert_eq!(roster.refused[&forged.id], Refusal::NotAuthorized);
    assert_eq!(roster.refused[&unknown.id], Refusal::NotAuthorized);
    assert_eq!(roster.refused[&rotation.id], Refusal::NotAuthorized);
    assert_eq!(roster.refused[&orphan.id], Refusal::MissingParent);
    assert_eq!(roster.recovery_key, recovery().public().verifying);
}

#[test]
fn a_revoked_device_writes_nothing_that_counts_after_its_revoke() {
    let a = by_recovery(&[], add(0xa));
    let b = by(0xa, &[&a], add(0xb));
    let c = by(0xb, &[&b], add(0xc));
    let revoked = by(0xa, &[&c], revoke(0xb));
    // b, not having seen its revoke (or pretending not to), adds a device of its own.
    let late = by(0xb, &[&c], add(0xd));
    // ... and after it (the revoke in its causal past), another.
    let later = by(0xb, &[&revoked], add(0xe));
    let roster = fold_all(&[&a, &b, &c, &revoked, &late, &later]);
    assert_eq!(active(&roster), [0xa, 0xc], "c was added before the revoke");
    assert!(roster.devices[&id(0xb)].revoked.is_some());
    assert_eq!(roster.refused[&late.id], Refusal::AfterRevocation);
    assert_eq!(roster.refused[&later.id], Refusal::NotAuthorized);
    assert!(!roster.devices.contains_key(&id(0xd)));
}

#[test]
fn a_revoked_device_cannot_revoke_others_with_a_backdated_entry() {
    let a = by_recovery(&[], add(0xa));
    let b = by(0xa, &[&a], add(0xb));
    let c = by(0xb, &[&b], add(0xc));
    let revoked = by(0xa, &[&c], revoke(0xb));
    let start = signed_as(
        &secrets(0xa),
        Signer::Device(id(0xa)),
        &[&revoked],
        1,
        RosterChange::StartEpoch {
            epoch: 1,
            object_hash: [1; 32],
        },
    );
    // Long after, b writes revokes of a and c naming parents from before its own revocation.
    let backdated_a = by(0xb, &[&c], revoke(0xa));
    let backdated_c = by(0xb, &[&c], revoke(0xc));
    let roster = fold_all(&[&a, &b, &c, &revoked, &start, &backdated_a, &backdated_c]);
    assert_eq!(
        active(&roster),
        [0xa, 0xc],
        "{:?} epoch {}",
        roster.refused,
        roster.epoch
    );
    assert_eq!(roster.refused[&backdated_a.id], Refusal::Fenced);
    assert_eq!(roster.refused[&backdated_c.id], Refusal::Fenced);
    // Without a start (a revocation interrupted before it), both revokes still count: the
    // fence needs the start that the revocation writes next. What b writes on top of its
    // backdated revoke still does not count.
    let sneaky = by(0xb, &[&backdated_a], add(0xd));
    let unstarted = fold_all(&[&a, &b, &c, &revoked, &backdated_a, &sneaky]);
    assert!(unstarted.devices[&id(0xa)].revoked.is_some());
    assert_eq!(unstarted.refused[&sneaky.id], Refusal::AfterRevocation);
    // With the start, b's backdated add is fenced like everything else of epoch 0 it did not see.
    let with_start = fold_all(&[&a, &b, &c, &revoked, &start, &backdated_a, &sneaky]);
    assert_eq!(active(&with_start), [0xa, 0xc]);
    assert!(!with_start.devices.contains_key(&id(0xd)));
}

#[test]
fn of_two_devices_revoking_each_other_the_start_that_stands_decides() {
    let a = by_recovery(&[], add(0xa));
    let b = by(0xa, &[&a], add(0xb));
    let a_revokes_b = by(0xa, &[&b], revoke(0xb));
    let b_revokes_a = by(0xb, &[&b], revoke(0xa));
    let start = |signer: u8, revoke: &SignedEntry| {
        signed_as(
            &secrets(signer),
            Signer::Device(id(signer)),
            &[revoke],
            1,
            RosterChange::StartEpoch {
                epoch: 1,
                object_hash: [signer; 32],
            },
        )
    };
    let (start_a, start_b) = (start(0xa, &a_revokes_b), start(0xb, &b_revokes_a));
    let roster = fold_all(&[&a, &b, &a_revokes_b, &b_revokes_a, &start_a, &start_b]);
    // One start stands (neither saw the other's revoke: the lower id); the other side's revoke,
    // by a device that start sees revoked, is fenced.
    let standing = [&start_a, &start_b]
        .into_iter()
        .find(|s| !roster.refused.contains_key(&s.id))
        .unwrap();
    let survivor = if standing.id == start_a.id { 0xa } else { 0xb };
    assert_eq!(active(&roster), [survivor]);
    // With no start at all, both are revoked, as before.
    let both = fold_all(&[&a, &b, &a_revokes_b, &b_revokes_a]);
    assert!(active(&both).is_empty());
}

#[test]
fn an_epoch_start_fences_off_what_its_epoch_did_not_see() {
    let a = by_recovery(&[], add(0xa));
    let b = by(0xa, &[&a], add(0xb));
    let revoked = by(0xa, &[&b], revoke(0xb));
    let start = signed_as(
        &secrets(0xa),
        Signer::Device(id(0xa)),
        &[&revoked],
        1,
        RosterChange::StartEpoch {
            epoch: 1,
            object_hash: [1; 32],
        },
    );
    // Device a's own entry of epoch 0 that the start did not see: fenced too.
    let stale = by(0xa, &[&b], add(0xc));
    // In epoch 1 after the start: counts.
    let fresh = signed_as(
        &secrets(0xa),
        Signer::Device(id(0xa)),
        &[&start],
        1,
        add(0xd),
    );
    // Still sealed in epoch 0 after the start: wrong epoch.
    let old_key = by(0xa, &[&start], add(0xe));
    let roster = fold_all(&[&a, &b, &revoked, &start, &stale, &fresh, &old_key]);
    assert_eq!(roster.epoch, 1);
    assert_eq!(active(&roster), [0xa, 0xd]);
    assert_eq!(roster.refused[&stale.id], Refusal::Fenced);
    assert_eq!(roster.refused[&old_key.id], Refusal::WrongEpoch);
    // A start that skips an epoch does not count.
    let skip = signed_as(
        &secrets(0xa),
        Signer::Device(id(0xa)),
        &[&a],
        2,
        RosterChange::StartEpoch {
            epoch: 2,
            object_hash: [2; 32],
        },
    );
    assert_eq!(
        fold_all(&[&a, &skip]).refused[&skip.id],
        Refusal::WrongEpoch
    );
}

#[test]
fn devices_that_revoke_each_other_are_both_revoked() {
    let a = by_recovery(&[], add(0xa));
    let b = by_recovery(&[&a], add(0xb));
    let a_revokes_b = by(0xa, &[&b], revoke(0xb));
    let b_revokes_a = by(0xb, &[&b], revoke(0xa));
    let roster = fold_all(&[&a, &b, &a_revokes_b, &b_revokes_a]);
    assert!(active(&roster).is_empty());
    assert!(roster.refused.is_empty());
    // The recovery key adds devices again (under new ids).
    let c = by_recovery(&[&a_revokes_b, &b_revokes_a], add(0xc));
    let roster = fold_all(&[&a, &b, &a_revokes_b, &b_revokes_a, &c]);
    assert_eq!(active(&roster), [0xc]);
}

#[test]
fn a_rotated_recovery_key_signs_from_then_on() {
    let next = secrets(0x77);
    let a = by_recovery(&[], add(0xa));
    let rotation = by_recovery(
        &[&a],
        RosterChange::RotateRecovery {
            next: next.public().verifying,
            agreement: next.public().agreement,
        },
    );
    let by_next = signed_as(&next, Signer::Recovery, &[&rotation], 0, add(0xb));
    let by_old_after = by_recovery(&[&rotation], add(0xc));
    let roster = fold_all(&[&a, &rotation, &by_next, &by_old_after]);
    assert_eq!(roster.recovery_key, next.public().verifying);
    assert_eq!(active(&roster), [0xa, 0xb]);
    assert_eq!(roster.refused[&by_old_after.id], Refusal::NotAuthorized);
}

#[test]
fn a_device_is_added_once() {
    // Two adds of one id with other keys, both by the recovery key (which may add any id):
    // the lower entry id counts, whatever the order, and a later re-add conflicts.
    let a = by_recovery(&[], add(0xa));
    let first = by_recovery(&[&a], add(0xb));
    let mut other_keys = add(0xb);
    if let RosterChange::Add { keys, .. } = &mut other_keys {
        *keys = secrets(0xc).public();
    }
    let second = by_recovery(&[&a], other_keys);
    let again = by(0xa, &[&first], add(0xb));
    let roster = fold_all(&[&a, &first, &second, &again]);
    let (winner, loser) = if first.id < second.id {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert_eq!(roster.refused[&loser.id], Refusal::Conflicting);
    assert!(!roster.refused.contains_key(&winner.id));
    if winner.id == first.id {
        assert_eq!(roster.refused[&again.id], Refusal::Conflicting);
    }
    assert_eq!(active(&roster), [0xa, 0xb]);
}

#[test]
fn a_device_adds_only_ids_the_added_keys_certify() {
    let a = by_recovery(&[], add(0xa));
    let b = by_recovery(&[&a], add(0xb));
    // Device a adds b's id with its own keys (to sign as b), with every lower entry id it can
    // grind: not authorized, so b keeps its keys whatever the ids.
    let mut takeover = add(0xb);
    if let RosterChange::Add { keys, .. } = &mut takeover {
        *keys = secrets(0xa).public();
    }
    let stolen = by(0xa, &[&a], takeover);
    // An id no key certifies (an old device's random id): only the recovery key adds it.
    let legacy = RosterChange::Add {
        device: DeviceId([7; 16]),
        keys: secrets(0xa).public(),
        name: "old phone".into(),
        platform: "test".into(),
        first_signed_seq: 1,
        unsigned_tips: Vec::new(),
    };
    let legacy_by_device = by(0xa, &[&a], legacy.clone());
    // A device that would not sign its first segments.
    let mut unsigned = add(0xc);
    if let RosterChange::Add {
        first_signed_seq, ..
    } = &mut unsigned
    {
        *first_signed_seq = 5;
    }
    let late_signer = by(0xa, &[&a], unsigned);
    let roster = fold_all(&[&a, &b, &stolen, &legacy_by_device, &late_signer]);
    for refused in [&stolen, &legacy_by_device, &late_signer] {
        assert_eq!(roster.refused[&refused.id], Refusal::NotAuthorized);
    }
    assert_eq!(roster.devices[&id(0xb)].keys, secrets(0xb).public());
    assert_eq!(active(&roster), [0xa, 0xb]);
    // The recovery key may add the old phone.
    let legacy_by_recovery = by_recovery(&[&a], legacy);
    let roster = fold_all(&[&a, &legacy_by_recovery]);
    assert!(roster.is_active(DeviceId([7; 16])));
}

#[test]
fn an_entry_decodes_only_under_its_own_name() {
    let a = by_recovery(&[], add(0xa));
    let body = a.to_body();
    assert_eq!(SignedEntry::decode(a.id, &body).unwrap(), a);
    assert!(matches!(
        SignedEntry::decode([0; 16], &body),
        Err(Error::Integrity(IntegrityProblem::Misplaced { .. }))
    ));
    // Parents out of order: one entry, one encoding.
    let b = by(0xa, &[&a], add(0xb));
    let c = by(0xa, &[&a], add(0xc));
    let mut entry = b.entry.to_proto();
    entry.parents = vec![c.id.to_vec(), b.id.to_vec()];
    entry.parents.sort();
    entry.parents.reverse();
    let bytes = entry.encode_to_vec();
    let body = proto::SignedRosterEntry {
        entry: bytes.clone(),
        signature: vec![0; 64],
    }
    .encode_to_vec();
    assert!(matches!(
        SignedEntry::decode(entry_id(&bytes), &body),
        Err(Error::Decode {
            problem: DecodeProblem::Malformed(_),
            ..
        })
    ));
}

/// Random rosters of honest and dishonest entries (any signer, any parents among earlier
/// entries, any epoch, forged signatures): the fold never fails but as contested, and gives
/// the same roster whatever order the listing hands the entries in.
#[test]
fn random_rosters_fold_the_same_in_any_order() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for script in 0..100 {
        let mut entries: Vec<SignedEntry> = Vec::new();
        let mut known: Vec<u8> = Vec::new();
        let mut epoch = 0u8;
        let mut recovery_now = recovery();
        for _ in 0..(3 + next(12)) {
            // Mostly the tips (an honest writer), sometimes any earlier entries.
            let tips: Vec<&SignedEntry> = entries
                .iter()
                .filter(|e| !entries.iter().any(|c| c.entry.parents.contains(&e.id)))
                .collect();
            let parents: Vec<&SignedEntry> = if next(3) > 0 {
                tips
            } else {
                entries.iter().filter(|_| next(3) == 0).take(3).collect()
            };
            let mut rotated = None;
            let change = match next(10) {
                0..=4 => {
                    let n = 0xa + next(6) as u8;
                    known.push(n);
                    add(n)
                }
                5 => revoke(0xa + next(6) as u8),
                6 => {
                    epoch = epoch.saturating_add(1);
                    RosterChange::StartEpoch {
                        epoch,
                        object_hash: [epoch; 32],
                    }
                }
                7 => {
                    let next_key = secrets(0x70 + next(8) as u8);
                    let change = RosterChange::RotateRecovery {
                        next: next_key.public().verifying,
                        agreement: next_key.public().agreement,
                    };
                    rotated = Some(next_key);
                    change
                }
                _ => add(0xa + next(6) as u8),
            };
            let sealed_in = if next(6) == 0 { next(3) as u8 } else { epoch };
            // The recovery key starts epochs and rotates itself; devices do the rest.
            let by_recovery = rotated.is_some()
                || matches!(change, RosterChange::StartEpoch { .. })
                || next(3) == 0;
            let signer = match known.get(next(known.len() as u64 + 1) as usize) {
                Some(n) if !by_recovery => *n,
                _ => 0,
            };
            let entry = match (signer, next(6)) {
                (0, _) => signed_as(&recovery_now, Signer::Recovery, &parents, sealed_in, change),
                // Signed by another key than the signer's.
                (n, 0) => signed_as(
                    &secrets(n + 1),
                    Signer::Device(id(n)),
                    &parents,
                    sealed_in,
                    change,
                ),
                (n, _) => signed_as(
                    &secrets(n),
                    Signer::Device(id(n)),
                    &parents,
                    sealed_in,
                    change,
                ),
            };
            if let Some(key) = rotated {
                recovery_now = key;
            }
            entries.push(entry);
        }
        let root = recovery().public().verifying;
        let first = fold(&VAULT, root, entries.clone());
        for _ in 0..3 {
            let mut shuffled = entries.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, next(i as u64 + 1) as usize);
            }
            let again = fold(&VAULT, root, shuffled);
            match (&first, &again) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "script {script}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("script {script}: {first:?} then {again:?}"),
            }
        }
        if let Err(error) = first {
            assert!(
                matches!(error, Error::Integrity(IntegrityProblem::RosterContested)),
                "script {script}: {error:?}"
            );
        }
    }
}

fn start(signer: &DeviceSecrets, as_: Signer, parents: &[&SignedEntry], epoch: u8) -> SignedEntry {
    signed_as(
        signer,
        as_,
        parents,
        epoch,
        RosterChange::StartEpoch {
            epoch,
            object_hash: [epoch; 32],
        },
    )
}

#[test]
fn a_start_a_revoked_device_backdates_does_not_undo_its_revoke() {
    let a = by_recovery(&[], add(0xa));
    let d = by_recovery(&[&a], add(0xd));
    let revoked = by(0xa, &[&d], revoke(0xd));
    let honest_start = start(&secrets(0xa), Signer::Device(id(0xa)), &[&revoked], 1);
    // d starts epoch 1 itself, claiming not to have seen its revoke, then adds a device.
    let backdated = start(&secrets(0xd), Signer::Device(id(0xd)), &[&d], 1);
    let evil = signed_as(
        &secrets(0xd),
        Signer::Device(id(0xd)),
        &[&backdated],
        1,
        add(0xe),
    );
    let roster = fold_all(&[&a, &d, &revoked, &honest_start, &backdated, &evil]);
    assert_eq!(active(&roster), [0xa]);
    assert!(roster.devices[&id(0xd)].revoked.is_some());
    assert_eq!(roster.refused[&backdated.id], Refusal::AfterRevocation);
    assert!(roster.refused.contains_key(&evil.id));
    assert!(!roster.refused.contains_key(&honest_start.id));
}

#[test]
fn two_revocations_that_race_both_stand_and_one_start_counts() {
    let a = by_recovery(&[], add(0xa));
    let b = by_recovery(&[&a], add(0xb));
    let c = by_recovery(&[&b], add(0xc));
    let d = by_recovery(&[&c], add(0xd));
    let a_revokes_c = by(0xa, &[&d], revoke(0xc));
    let a_starts = start(&secrets(0xa), Signer::Device(id(0xa)), &[&a_revokes_c], 1);
    let b_revokes_d = by(0xb, &[&d], revoke(0xd));
    let b_starts = start(&secrets(0xb), Signer::Device(id(0xb)), &[&b_revokes_d], 1);
    let roster = fold_all(&[
        &a,
        &b,
        &c,
        &d,
        &a_revokes_c,
        &a_starts,
        &b_revokes_d,
        &b_starts,
    ]);
    assert_eq!(active(&roster), [0xa, 0xb], "both revokes stand");
    let (winner, loser) = if a_starts.id < b_starts.id {
        (&a_starts, &b_starts)
    } else {
        (&b_starts, &a_starts)
    };
    assert!(!roster.refused.contains_key(&winner.id));
    assert_eq!(roster.refused[&loser.id], Refusal::Conflicting);
    assert_eq!(roster.epoch, 1);
}

#[test]
fn a_start_racing_a_rotation_cannot_keep_the_old_recovery_key() {
    let next = secrets(0x77);
    let a = by_recovery(&[], add(0xa));
    let rotation = by_recovery(
        &[&a],
        RosterChange::RotateRecovery {
            next: next.public().verifying,
            agreement: next.public().agreement,
        },
    );
    let after = start(&next, Signer::Recovery, &[&rotation], 1);
    let by_new_key = signed_as(&next, Signer::Recovery, &[&after], 1, add(0xb));
    // The old key's holder (a thief) starts epoch 1 without the rotation, and adds a device.
    let stale = start(&recovery(), Signer::Recovery, &[&a], 1);
    let thiefs = signed_as(&recovery(), Signer::Recovery, &[&stale], 1, add(0xc));
    let roster = fold_all(&[&a, &rotation, &after, &by_new_key, &stale, &thiefs]);
    assert_eq!(roster.recovery_key, next.public().verifying);
    assert_eq!(active(&roster), [0xa, 0xb]);
    assert_eq!(roster.refused[&stale.id], Refusal::Conflicting);
    assert!(roster.refused.contains_key(&thiefs.id));
}

#[test]
fn a_replaced_recovery_key_cannot_rotate_with_a_backdated_entry() {
    let next = secrets(0x77);
    let thiefs_next = secrets(0x78);
    let a = by_recovery(&[], add(0xa));
    let rotation = by_recovery(
        &[&a],
        RosterChange::RotateRecovery {
            next: next.public().verifying,
            agreement: next.public().agreement,
        },
    );
    let after = start(&next, Signer::Recovery, &[&rotation], 1);
    // Later, the old key's holder rotates to a key of its own, naming parents from before the
    // rotation that replaced its key.
    let backdated = by_recovery(
        &[&a],
        RosterChange::RotateRecovery {
            next: thiefs_next.public().verifying,
            agreement: thiefs_next.public().agreement,
        },
    );
    let roster = fold_all(&[&a, &rotation, &after, &backdated]);
    assert_eq!(roster.recovery_key, next.public().verifying);
    assert_eq!(roster.refused[&backdated.id], Refusal::Fenced);
}

#[test]
fn a_revoked_device_cannot_make_the_roster_contested() {
    let a = by_recovery(&[], add(0xa));
    let c = by_recovery(&[&a], add(0xc));
    let revoked = by(0xa, &[&c], revoke(0xc));
    let honest = start(&secrets(0xa), Signer::Device(id(0xa)), &[&revoked], 1);
    let c_secrets = secrets(0xc);
    let as_c = Signer::Device(id(0xc));
    let backdated = start(&c_secrets, as_c, &[&c], 1);
    let second = start(&c_secrets, as_c, &[&revoked, &backdated], 2);
    let third = start(&c_secrets, as_c, &[&a, &honest], 2);
    let roster = fold(
        &VAULT,
        recovery().public().verifying,
        [&a, &c, &revoked, &honest, &backdated, &second, &third]
            .into_iter()
            .cloned()
            .collect(),
    )
    .expect("settles");
    assert_eq!(active(&roster), [0xa]);
    assert_eq!(roster.epoch, 1);
    for entry in [&backdated, &second, &third] {
        assert!(roster.refused.contains_key(&entry.id), "{entry:?}");
    }
}

#[test]
fn a_checkpoint_counts_when_its_writer_may_write_and_signed_it_as_a_checkpoint() {
    use crate::sync::signature::{
        BodySignature, CHECKPOINT_LABEL, SEGMENT_LABEL, append_signature, split_signature,
    };
    let a = by_recovery(&[], add(1));
    let b = by_recovery(&[&a], add(2));
    let revoked = by(1, &[&b], revoke(2));
    let name = "checkpoints/index";
    let signed = |n: u8, label: &[u8], over: &str| {
        let mut body = b"an encoded index".to_vec();
        append_signature(&mut body, &secrets(n), label, &VAULT, over);
        let field = body[body.len() - 64..].to_vec();
        split_signature(&body, &field).unwrap().unwrap()
    };
    let counts = |roster: &Roster, device, signature: Option<BodySignature>| {
        checkpoint_counts(roster, &VAULT, name, device, signature.as_ref())
    };
    // Before any revocation, in epoch 0 and (set by hand: starts are tested above) epoch 1;
    // then with device 2 revoked, before its epoch starts.
    let before = fold_all(&[&a, &b]);
    let mut in_epoch_one = before.clone();
    in_epoch_one.epoch = 1;
    let after_revoke = fold_all(&[&a, &b, &revoked]);
    assert_eq!(after_revoke.epoch, 0);
    for (roster, legacy_counts) in [
        (&before, true),
        (&in_epoch_one, false),
        (&after_revoke, false),
    ] {
        assert_eq!(roster.trusts_unlisted_writers(), legacy_counts);
        assert!(counts(
            roster,
            id(1),
            Some(signed(1, CHECKPOINT_LABEL, name))
        ));
        // Unsigned ones, and those of a device the roster does not list, only while the roster
        // trusts writers of before device keys (epoch 0, nobody revoked).
        assert_eq!(counts(roster, id(1), None), legacy_counts);
        let unlisted = counts(roster, id(3), Some(signed(3, CHECKPOINT_LABEL, name)));
        assert_eq!(unlisted, legacy_counts);
        assert_eq!(takes_segment(roster, id(3), 1, 1), legacy_counts);
        // Another device's key, another name, a segment's signature: never.
        assert!(!counts(
            roster,
            id(1),
            Some(signed(3, CHECKPOINT_LABEL, name))
        ));
        assert!(!counts(
            roster,
            id(1),
            Some(signed(1, CHECKPOINT_LABEL, "checkpoints/other"))
        ));
        assert!(!counts(roster, id(1), Some(signed(1, SEGMENT_LABEL, name))));
    }
    // A revoked device's never count, signed or not.
    assert!(!counts(
        &after_revoke,
        id(2),
        Some(signed(2, CHECKPOINT_LABEL, name))
    ));
    assert!(!counts(&after_revoke, id(2), None));
    assert!(!takes_checkpoints_of(&after_revoke, id(2)));
    assert!(counts(
        &before,
        id(2),
        Some(signed(2, CHECKPOINT_LABEL, name))
    ));
}
