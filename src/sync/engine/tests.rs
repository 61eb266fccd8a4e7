//! The engine against scripted bucket answers, one test per attack class, through the
//! synchronous driver in `driver.rs` (what the vault's drivers do, over an in-memory map the
//! test tampers with).

use std::collections::BTreeMap;

use super::driver::{self, Bucket, Device};
use super::*;
use crate::error::DecodeProblem;
use crate::keys::{RecoveryKey, VaultKeys};
use crate::sync::segment::{SegmentId, segment_name};

const A: DeviceId = driver::CHECKPOINT_WRITER;
const B: DeviceId = DeviceId([0xb; 16]);

fn keys() -> VaultKeys {
    VaultKeys::derive(&RecoveryKey::from_bytes([5; 32]))
}

/// A pull by `device` with this module's keys.
fn pull(bucket: &Bucket, device: &mut Device) -> Result<()> {
    driver::pull(&keys(), bucket, device)
}

/// A verify by `device` with this module's keys.
fn verify(bucket: &Bucket, device: &Device) -> Result<()> {
    driver::verify(&keys(), bucket, device)
}

/// The name of the one segment of `device` at `seq`.
fn name(bucket: &Bucket, device: DeviceId, seq: u64) -> String {
    bucket.name(device, seq).unwrap()
}

/// The name the next segment of `device` would have.
fn next_name(bucket: &Bucket, device: DeviceId) -> String {
    bucket.next_name(device).unwrap()
}

/// An honest vault: A wrote 3 segments and B 2 (B's second saw A's third); a checkpoint covers
/// A 1-2 and B 1; then A wrote a fourth. Returns it and a device that pulled everything.
fn honest() -> (Bucket, Device) {
    let keys = keys();
    let mut bucket = Bucket::default();
    bucket.write(&keys, A, &[]);
    bucket.write(&keys, A, &[]);
    bucket.write(&keys, B, &[]);
    bucket.checkpoint(&keys, 1);
    let a3 = bucket.write(&keys, A, &[]);
    bucket.write(&keys, B, &[a3]);
    bucket.write(&keys, A, &[]);
    let mut device = Device::default();
    pull(&bucket, &mut device).unwrap();
    (bucket, device)
}

fn integrity(result: Result<()>) -> IntegrityProblem {
    match result {
        Err(Error::Integrity(problem)) => problem,
        other => panic!("expected an integrity problem, got {other:?}"),
    }
}

fn authentication_failed(result: Result<()>) -> bool {
    matches!(
        result,
        Err(Error::Decode {
            problem: DecodeProblem::AuthenticationFailed,
            ..
        })
    )
}

#[test]
fn an_honest_vault_pulls_and_verifies_before_and_after_gc() {
    let (mut bucket, device) = honest();
    assert_eq!(device.messages, 6);
    verify(&bucket, &device).unwrap();
    verify(&bucket, &Device::default()).unwrap();
    bucket.collect();
    verify(&bucket, &device).unwrap();
    // A fresh device after gc: the checkpoint, then what follows it; no false MissingSegment.
    verify(&bucket, &Device::default()).unwrap();
    let mut fresh = Device::default();
    pull(&bucket, &mut fresh).unwrap();
    assert_eq!(fresh.messages, 6);
    let mut again = device.clone();
    pull(&bucket, &mut again).unwrap();
    assert_eq!(again.messages, device.messages);
}

/// A flipped bit is caught: by authentication, or, in a checkpoint block, by the hash its
/// signed index records for it (checked before the block is opened).
fn tampering_caught(result: Result<()>, victim: &str) -> bool {
    match result {
        Err(Error::Integrity(IntegrityProblem::Replaced { .. })) => victim.starts_with("packs/"),
        other => authentication_failed(other),
    }
}

#[test]
fn flipped_bits_fail_authentication_in_every_kind() {
    let (bucket, device) = honest();
    for victim in bucket.objects.keys() {
        let mut tampered = bucket.clone();
        let bytes = tampered.objects.get_mut(victim).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        assert!(
            tampering_caught(verify(&tampered, &device), victim),
            "verify missed a flipped bit in {victim}"
        );
        // A fresh device needs the checkpoint once what it covers is collected.
        tampered.collect();
        if tampered.objects.contains_key(victim) {
            assert!(
                tampering_caught(pull(&tampered, &mut Device::default()), victim),
                "a fresh pull missed a flipped bit in {victim}"
            );
        }
    }
}

#[test]
fn answers_of_another_size_than_listed_are_refused() {
    let (bucket, device) = honest();
    for victim in bucket.objects.keys() {
        // The listing promises the original size, the store answers fewer bytes.
        let mut tampered = bucket.clone();
        let listing = tampered.listing();
        tampered.objects.get_mut(victim).unwrap().pop();
        let mut engine = Engine::new(
            listing,
            device.applied.clone(),
            BTreeMap::new(),
            ChatKeys::new(),
        );
        engine.start_from_scratch();
        let get = engine
            .all_indexes()
            .unwrap()
            .into_iter()
            .chain(engine.plan(|_| Ok(false)).unwrap())
            .chain(
                engine
                    .listing()
                    .packs
                    .values()
                    .map(|l| Get::listed(l, u64::MAX, None).unwrap()),
            )
            .find(|get| get.name == *victim)
            .unwrap();
        assert!(matches!(
            tampered.get(&get),
            Err(Error::Integrity(IntegrityProblem::WrongSize { .. }))
        ));
    }
}

#[test]
fn a_pack_whose_size_is_not_the_recorded_one_is_refused() {
    let (bucket, device) = honest();
    let pack = bucket.listing().packs.keys().next().unwrap().clone();
    for change in [1usize, 0] {
        let mut tampered = bucket.clone();
        let bytes = tampered.objects.get_mut(&pack).unwrap();
        if change == 1 {
            bytes.extend_from_slice(&[0; 7]);
        } else {
            bytes.truncate(10);
        }
        let problem = integrity(verify(&tampered, &device));
        assert!(matches!(problem, IntegrityProblem::WrongSize { ref name, .. } if *name == pack));
        tampered.collect();
        let problem = integrity(pull(&tampered, &mut Device::default()));
        assert!(matches!(problem, IntegrityProblem::WrongSize { .. }));
    }
    let mut gone = bucket.clone();
    gone.objects.remove(&pack);
    assert!(matches!(
        integrity(verify(&gone, &device)),
        IntegrityProblem::MissingObject { .. }
    ));
}

#[test]
fn deleted_replayed_and_swapped_segments_are_refused() {
    let (bucket, device) = honest();
    // A deleted middle segment above the checkpoint.
    let mut deleted = bucket.clone();
    deleted.objects.remove(&name(&bucket, A, 3));
    assert!(matches!(
        integrity(pull(&deleted, &mut Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
    assert!(matches!(
        integrity(verify(&deleted, &Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
    // Also for a device that applied it: it needs nothing more, but the bucket lost it.
    assert!(matches!(
        integrity(pull(&deleted, &mut device.clone())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
    // An old segment replayed as the next one: the name is bound into its authentication.
    let mut replayed = bucket.clone();
    let old = replayed.objects[&name(&bucket, A, 1)].clone();
    replayed.objects.insert(next_name(&bucket, A), old);
    assert!(authentication_failed(pull(&replayed, &mut device.clone())));
    assert!(authentication_failed(verify(&replayed, &device)));
    // Two segments swapped.
    let mut swapped = bucket.clone();
    let (three, four) = (
        swapped.objects[&name(&bucket, A, 3)].clone(),
        swapped.objects[&name(&bucket, A, 4)].clone(),
    );
    swapped.objects.insert(name(&bucket, A, 3), four);
    swapped.objects.insert(name(&bucket, A, 4), three);
    assert!(authentication_failed(pull(
        &swapped,
        &mut Device::default()
    )));
    // B's segment 1 served as A's: another device's name.
    let mut spliced = bucket.clone();
    let other = spliced.objects[&name(&bucket, B, 2)].clone();
    spliced.objects.insert(next_name(&bucket, A), other);
    assert!(authentication_failed(verify(&spliced, &device)));
}

#[test]
fn objects_of_another_vault_are_refused() {
    let (bucket, device) = honest();
    let other_keys = VaultKeys::derive(&RecoveryKey::from_bytes([9; 32]));
    let mut other = Bucket::default();
    other.write(&other_keys, A, &[]);
    other.write(&other_keys, A, &[]);
    other.write(&other_keys, A, &[]);
    other.write(&other_keys, A, &[]);
    other.write(&other_keys, A, &[]);
    let mut spliced = bucket.clone();
    spliced.objects.insert(
        next_name(&bucket, A),
        other.objects[&name(&other, A, 5)].clone(),
    );
    assert!(authentication_failed(pull(&spliced, &mut device.clone())));
    other.checkpoint(&other_keys, 1);
    let mut foreign_index = bucket.clone();
    for (name, bytes) in other.objects {
        if !name.starts_with("segments/") {
            foreign_index.objects.insert(
                name.replace("/0000000000000001-", "/0000000000000002-"),
                bytes,
            );
        }
    }
    assert!(pull(&foreign_index, &mut Device::default()).is_err());
}

#[test]
fn rollbacks_and_withheld_segments_are_refused() {
    let (bucket, device) = honest();
    // The newest segment of A withheld from a device that applied it: a rollback.
    let mut rolled_back = bucket.clone();
    rolled_back.objects.remove(&name(&bucket, A, 4));
    assert!(matches!(
        integrity(pull(&rolled_back, &mut device.clone())),
        IntegrityProblem::RolledBack {
            seen: 4,
            found: 3,
            ..
        }
    ));
    assert!(matches!(
        integrity(verify(&rolled_back, &device)),
        IntegrityProblem::RolledBack { .. }
    ));
    // A fresh device cannot tell A 4 is gone, but B's segment 2 claims A 3: withholding A 3
    // and everything after it from a fresh device is caught by that claim.
    let mut withheld = bucket.clone();
    withheld.objects.remove(&name(&bucket, A, 3));
    withheld.objects.remove(&name(&bucket, A, 4));
    assert!(matches!(
        integrity(pull(&withheld, &mut Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
}

#[test]
fn a_replaced_segment_breaks_the_chain() {
    let (bucket, device) = honest();
    // A key holder reseals A 4 with other content: valid alone, but B never saw it and the
    // device that applied the original knows its hash.
    let keys = keys();
    let mut forged = bucket.clone();
    let four = forged.heads[&A];
    forged.objects.remove(&name(&bucket, A, 4));
    let three = crate::sync::segment::parse_segment_name(&name(&bucket, A, 3)).unwrap();
    let original_three = Head {
        device: A,
        seq: 3,
        tag: three.tag,
        hash: device.hashes[&three.id()],
    };
    // Under A 4's own name (same tag), with other content.
    forged.last_tag = four.tag - 1;
    forged.write_after(
        &keys,
        A,
        Some(original_three),
        &[Head {
            device: B,
            seq: 9,
            tag: 9,
            hash: [0; 32],
        }],
    );
    assert!(forged.objects.contains_key(&name(&bucket, A, 4)));
    assert!(matches!(
        integrity(verify(&forged, &device)),
        IntegrityProblem::ChainBroken { seq: 4, .. }
    ));
    // Its claim of a B segment that does not exist is refused by a fresh device too.
    assert!(matches!(
        integrity(pull(&forged, &mut Device::default())),
        IntegrityProblem::MissingSegment { seq: 9, .. }
    ));
}

#[test]
fn a_stale_checkpoint_that_disagrees_with_applied_hashes_is_refused() {
    let (bucket, device) = honest();
    // A second checkpoint written by a key holder over a forged history of A.
    let keys = keys();
    // The same names as the honest history (the same writes in the same order draw the same
    // tags), other bytes.
    let mut forged = Bucket::default();
    forged.write(&keys, A, &[]);
    forged.write(&keys, A, &[]);
    forged.write(&keys, B, &[]);
    forged.write(&keys, A, &[]);
    forged.write(&keys, B, &[]);
    forged.write(&keys, A, &[]);
    forged.checkpoint(&keys, 7);
    let mut tampered = bucket.clone();
    for (name, bytes) in forged.objects {
        if !name.starts_with("segments/") {
            tampered.objects.insert(name, bytes);
        }
    }
    assert!(matches!(
        integrity(verify(&tampered, &device)),
        IntegrityProblem::ChainBroken { .. }
    ));
}

#[test]
fn oversized_listings_are_refused_before_any_read() {
    let (bucket, device) = honest();
    let mut listing = bucket.listing();
    listing
        .segments
        .get_mut(&A)
        .unwrap()
        .values_mut()
        .last()
        .unwrap()
        .listed
        .size = 1 << 40;
    let engine = Engine::new(
        listing.clone(),
        Vec::new(),
        BTreeMap::new(),
        ChatKeys::new(),
    );
    assert!(matches!(
        engine.plan(|_| Ok(false)),
        Err(Error::Store(crate::store::StoreError::TooLarge { .. }))
    ));
    let index = listing.checkpoints.values_mut().next().unwrap();
    index.size = 1 << 40;
    let engine = Engine::new(listing, device.applied, BTreeMap::new(), ChatKeys::new());
    assert!(matches!(
        engine.indexes_to_read(),
        Err(Error::Store(crate::store::StoreError::TooLarge { .. }))
    ));
}

#[test]
fn unknown_names_are_set_aside_and_stop_nobody() {
    let (mut bucket, device) = honest();
    for junk in [
        "segments/README",
        "stray",
        "checkpoints/x",
        "packs/y",
        "segments/AA/1",
    ] {
        bucket.objects.insert(junk.into(), b"junk".to_vec());
    }
    verify(&bucket, &device).unwrap();
    let mut fresh = Device::default();
    pull(&bucket, &mut fresh).unwrap();
    assert_eq!(fresh.messages, 6);
    let (engine, _) = driver::start(&keys(), &bucket, &device).unwrap();
    assert_eq!(engine.unknown().len(), 5);
}

#[test]
fn a_tampered_covered_segment_fails_verify_but_no_pull_needs_it() {
    let (bucket, device) = honest();
    let mut tampered = bucket.clone();
    let bytes = tampered.objects.get_mut(&name(&bucket, A, 1)).unwrap();
    bytes[40] ^= 1;
    assert!(authentication_failed(verify(&tampered, &device)));
    let mut again = device.clone();
    pull(&tampered, &mut again).unwrap();
    // A covered segment whose content is valid but is not the one the checkpoint covers.
    let mut replaced = bucket.clone();
    let keys = keys();
    let mut other = Bucket::default();
    other.write(
        &keys,
        A,
        &[Head {
            device: B,
            seq: 1,
            tag: 1,
            hash: [1; 32],
        }],
    );
    other.write(&keys, A, &[]);
    // The same names (tags 1 and 2), other content.
    replaced.objects.insert(
        name(&bucket, A, 2),
        other.objects[&name(&other, A, 2)].clone(),
    );
    assert!(matches!(
        integrity(verify(&replaced, &device)),
        IntegrityProblem::ChainBroken { seq: 2, .. }
    ));
}

/// A key holder's checkpoint may cover sequence numbers up to u64::MAX (found by the `engine`
/// fuzz target): choosing the newest checkpoint summed them in u64 (a panic in debug builds).
#[test]
fn coverage_at_the_end_of_u64_does_not_overflow() {
    let at_max = |device| Head {
        device,
        seq: u64::MAX,
        tag: 1,
        hash: [3; 32],
    };
    let index = crate::sync::checkpoint::checkpoint_name(A, 1, 1);
    let smaller = crate::sync::checkpoint::checkpoint_name(A, 2, 1);
    let last = segment_name(A, u64::MAX, 1, 5);
    let listing = Listing::classify([
        (index.as_str(), 100),
        (smaller.as_str(), 100),
        (last.as_str(), 100),
    ]);
    let coverage = |covered| Coverage {
        covered,
        created_at_ms: 1,
    };
    let known = BTreeMap::from([
        (index.clone(), coverage(vec![at_max(A), at_max(B)])),
        (smaller, coverage(vec![at_max(A)])),
    ]);
    let mut engine = Engine::new(listing, vec![at_max(A)], known, ChatKeys::new());
    assert_eq!(engine.newest().map(|(name, _)| name), Some(index.as_str()));
    engine.note_base();
    assert_eq!(engine.plan(|_| Ok(false)).unwrap(), []);
}

#[path = "tests_forks.rs"]
mod forks;
