//! The engine against scripted bucket answers, one test per attack class: a small synchronous
//! driver does what the vault's drivers do (list, learn checkpoints, start, plan, accept, check
//! claims, open), reading from an in-memory map the test tampers with.

use std::collections::BTreeMap;

use super::*;
use crate::error::DecodeProblem;
use crate::keys::{ChatKey, RecoveryKey};
use crate::sync::batch::EncodedBatch;
use crate::sync::checkpoint::open_block;
use crate::sync::next_checkpoint::{ChatContent, CheckpointInput, seal_checkpoint};
use crate::sync::segment::{NewSegment, open_blocks, seal_segment, segment_name};
use crate::sync::{Change, Message, Operation, Stamp};

const A: DeviceId = DeviceId([0xa; 16]);
const B: DeviceId = DeviceId([0xb; 16]);
const KEY_ID: [u8; 16] = [1; 16];

fn keys() -> VaultKeys {
    VaultKeys::derive(&RecoveryKey::from_bytes([5; 32]))
}

fn chat_keys() -> ChatKeys {
    let mut chat_keys = ChatKeys::new();
    chat_keys
        .insert(KEY_ID, "c", ChatKey::from_bytes([6; 32]))
        .unwrap();
    chat_keys
}

fn operation(device: DeviceId, seq: u64) -> Operation {
    Operation {
        stamp: Stamp {
            wall_ms: 1000 + seq,
            counter: 0,
            device,
        },
        change: Change::UpsertMessage(Message {
            chat_id: "c".into(),
            message_id: format!("{}-{seq}", device.to_hex()),
            text: "hi".into(),
            ..Message::default()
        }),
    }
}

/// The bucket: objects by name inside the vault prefix.
#[derive(Clone, Default)]
struct Bucket {
    objects: BTreeMap<String, Vec<u8>>,
    heads: BTreeMap<DeviceId, Head>,
}

impl Bucket {
    /// Seals the next segment of `device` (it saw `seen`) with one message.
    fn write(&mut self, keys: &VaultKeys, device: DeviceId, seen: &[Head]) -> Head {
        let previous = self.heads.get(&device).copied();
        let seq = previous.map_or(1, |h| h.seq + 1);
        let (name, bytes, hash) = seal_segment(
            keys,
            &chat_keys(),
            &NewSegment {
                device,
                seq,
                prev_hash: previous.map(|h| h.hash),
                seen,
                grants: &[KEY_ID],
                operations: &EncodedBatch::from_operations(&[operation(device, seq)]),
                device_name: "d",
                platform: "test",
            },
        )
        .unwrap();
        self.objects.insert(name, bytes);
        let head = Head { device, seq, hash };
        self.heads.insert(device, head);
        head
    }

    /// Writes a checkpoint covering every current head, with every message so far.
    fn checkpoint(&mut self, keys: &VaultKeys, seq: u64) {
        let covered: Vec<Head> = self.heads.values().copied().collect();
        let operations: Vec<Operation> = covered
            .iter()
            .flat_map(|head| (1..=head.seq).map(|seq| operation(head.device, seq)))
            .collect();
        let sealed = seal_checkpoint(
            keys,
            &CheckpointInput {
                device: A,
                seq,
                covered: &covered,
                chat_keys: &chat_keys(),
                deleted_chats: &[],
                created_at_ms: 1,
            },
            [Ok(ChatContent {
                chat_id: "c".into(),
                operations,
            })],
        )
        .unwrap();
        for (name, bytes) in sealed.packs {
            self.objects.insert(name, bytes);
        }
        self.objects.insert(sealed.index_name, sealed.index);
    }

    /// Deletes the segments every listed checkpoint covers (garbage collection).
    fn collect(&mut self, through: &BTreeMap<DeviceId, u64>) {
        self.objects.retain(|name, _| {
            crate::sync::segment::parse_segment_name(name)
                .is_none_or(|(device, seq)| through.get(&device).is_none_or(|c| seq > *c))
        });
    }

    fn listing(&self) -> Listing {
        Listing::classify(
            self.objects
                .iter()
                .map(|(name, bytes)| (name.as_str(), bytes.len() as u64)),
        )
    }

    /// A GET: the bytes the store answers (which a test may have tampered with).
    fn get(&self, get: &Get) -> Result<Vec<u8>> {
        let bytes = self.objects.get(&get.name).ok_or_else(|| get.missing())?;
        get.check_len(bytes)?;
        Ok(bytes.clone())
    }
}

/// A device's view: heads applied and hashes of the segments it applied.
#[derive(Clone, Default)]
struct Device {
    applied: BTreeMap<DeviceId, Head>,
    hashes: BTreeMap<(DeviceId, u64), SegmentHash>,
    messages: usize,
}

fn start(bucket: &Bucket, device: &Device) -> Result<(Engine, BTreeMap<String, CheckpointIndex>)> {
    let keys = keys();
    let mut engine = Engine::new(
        bucket.listing(),
        device.applied.clone(),
        BTreeMap::new(),
        ChatKeys::new(),
    );
    let mut indexes = BTreeMap::new();
    for get in engine.indexes_to_read()? {
        let bytes = bucket.get(&get)?;
        indexes.insert(get.name.clone(), engine.index_arrived(&keys, &get, &bytes)?);
    }
    Ok((engine, indexes))
}

/// Opens every block of `index` from its packs.
fn read_packs(
    bucket: &Bucket,
    engine: &Engine,
    index: &CheckpointIndex,
    gets: &[Get],
) -> Result<usize> {
    let mut operations = 0;
    for (number, get) in gets.iter().enumerate() {
        let pack = bucket.get(get)?;
        for (block, entry) in index.chats.iter().enumerate() {
            if entry.pack == number {
                let bytes = &pack[entry.offset as usize..(entry.offset + entry.length) as usize];
                operations += open_block(&keys(), engine.chat_keys(), index, block, bytes)?.len();
            }
        }
    }
    Ok(operations)
}

/// A pull, as `Vault::pull` drives the engine; on success the device has applied everything.
fn pull(bucket: &Bucket, device: &mut Device) -> Result<()> {
    let keys = keys();
    let (mut engine, mut indexes) = start(bucket, device)?;
    engine.check_rollback()?;
    let hashes = device.hashes.clone();
    let known = |d: DeviceId, s: u64| hashes.get(&(d, s)).copied();
    let newest = engine.newest().map(|(name, _)| name.to_owned());
    if engine.restore_is_cheaper(u64::MAX)
        && let Some(index) = newest.and_then(|name| indexes.remove(&name))
    {
        let gets = engine.adopt(&index, known)?;
        device.messages += read_packs(bucket, &engine, &index, &gets)?;
        for head in &index.covered {
            device.applied.insert(head.device, *head);
        }
    } else {
        engine.note_base();
    }
    let mut arrived = Vec::new();
    for get in engine.plan()? {
        let segment = get.open_segment(&keys, &bucket.get(&get)?)?;
        engine.accept(&segment)?;
        arrived.push(segment);
    }
    for segment in &arrived {
        engine.check_claims(segment, known)?;
        device.messages += open_blocks(&keys, engine.chat_keys(), segment)?.len();
        device.applied.insert(segment.head.device, segment.head);
        device
            .hashes
            .insert((segment.head.device, segment.head.seq), segment.head.hash);
    }
    Ok(())
}

/// `verify`, as `Vault::verify` drives the engine.
fn verify(bucket: &Bucket, device: &Device) -> Result<()> {
    let keys = keys();
    let (mut engine, mut indexes) = start(bucket, device)?;
    engine.check_rollback()?;
    engine.start_from_scratch();
    let known = |d: DeviceId, s: u64| device.hashes.get(&(d, s)).copied();
    if let Some(index) = engine
        .newest()
        .map(|(name, _)| name.to_owned())
        .and_then(|name| indexes.remove(&name))
    {
        let gets = engine.adopt(&index, known)?;
        read_packs(bucket, &engine, &index, &gets)?;
    }
    let mut previous: Option<OpenedSegment> = None;
    for get in engine.covered_segments()? {
        let segment = get.open_segment(&keys, &bucket.get(&get)?)?;
        engine.accept_covered(previous.as_ref(), &segment)?;
        previous = Some(segment);
    }
    let mut arrived = Vec::new();
    for get in engine.plan()? {
        let segment = get.open_segment(&keys, &bucket.get(&get)?)?;
        engine.accept(&segment)?;
        arrived.push(segment);
    }
    engine.check_applied()?;
    for segment in &arrived {
        engine.check_claims(segment, known)?;
        open_blocks(&keys, engine.chat_keys(), segment)?;
    }
    Ok(())
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

/// What the honest vault's checkpoint covers.
fn covered() -> BTreeMap<DeviceId, u64> {
    BTreeMap::from([(A, 2), (B, 1)])
}

fn name(device: DeviceId, seq: u64) -> String {
    segment_name(device, seq)
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
    bucket.collect(&covered());
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

#[test]
fn flipped_bits_fail_authentication_in_every_kind() {
    let (bucket, device) = honest();
    for victim in bucket.objects.keys() {
        let mut tampered = bucket.clone();
        let bytes = tampered.objects.get_mut(victim).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        assert!(
            authentication_failed(verify(&tampered, &device)),
            "verify missed a flipped bit in {victim}"
        );
        // A fresh device needs the checkpoint once what it covers is collected.
        tampered.collect(&covered());
        if tampered.objects.contains_key(victim) {
            assert!(
                authentication_failed(pull(&tampered, &mut Device::default())),
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
            .chain(engine.plan().unwrap())
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
        tampered.collect(&covered());
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
    deleted.objects.remove(&name(A, 3));
    assert!(matches!(
        integrity(pull(&deleted, &mut Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
    assert!(matches!(
        integrity(verify(&deleted, &Device::default())),
        IntegrityProblem::MissingSegment { seq: 3, .. }
    ));
    // An old segment replayed as the next one: the name is bound into its authentication.
    let mut replayed = bucket.clone();
    let old = replayed.objects[&name(A, 1)].clone();
    replayed.objects.insert(name(A, 5), old);
    assert!(authentication_failed(pull(&replayed, &mut device.clone())));
    assert!(authentication_failed(verify(&replayed, &device)));
    // Two segments swapped.
    let mut swapped = bucket.clone();
    let (three, four) = (
        swapped.objects[&name(A, 3)].clone(),
        swapped.objects[&name(A, 4)].clone(),
    );
    swapped.objects.insert(name(A, 3), four);
    swapped.objects.insert(name(A, 4), three);
    assert!(authentication_failed(pull(
        &swapped,
        &mut Device::default()
    )));
    // B's segment 1 served as A's: another device's name.
    let mut spliced = bucket.clone();
    let other = spliced.objects[&name(B, 2)].clone();
    spliced.objects.insert(name(A, 5), other);
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
    spliced
        .objects
        .insert(name(A, 5), other.objects[&name(A, 5)].clone());
    assert!(authentication_failed(pull(&spliced, &mut device.clone())));
    other.checkpoint(&other_keys, 1);
    let mut foreign_index = bucket.clone();
    for (name, bytes) in other.objects {
        if !name.starts_with("segments/") {
            foreign_index
                .objects
                .insert(name.replace("0000000000000001", "0000000000000002"), bytes);
        }
    }
    assert!(pull(&foreign_index, &mut Device::default()).is_err());
}

#[test]
fn rollbacks_and_withheld_segments_are_refused() {
    let (bucket, device) = honest();
    // The newest segment of A withheld from a device that applied it: a rollback.
    let mut rolled_back = bucket.clone();
    rolled_back.objects.remove(&name(A, 4));
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
    withheld.objects.remove(&name(A, 3));
    withheld.objects.remove(&name(A, 4));
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
    forged.objects.remove(&name(A, 4));
    forged.heads.insert(A, device.applied[&A]);
    let mut original_three = forged.heads[&A];
    original_three.seq = 3;
    original_three.hash = device.hashes[&(A, 3)];
    forged.heads.insert(A, original_three);
    forged.write(
        &keys,
        A,
        &[Head {
            device: B,
            seq: 9,
            hash: [0; 32],
        }],
    );
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
    let mut forged = Bucket::default();
    forged.write(&keys, A, &[]);
    forged.write(&keys, A, &[]);
    forged.write(&keys, A, &[]);
    forged.write(&keys, A, &[]);
    forged.write(&keys, B, &[]);
    forged.write(&keys, B, &[]);
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
        .get_mut(&4)
        .unwrap()
        .size = 1 << 40;
    let engine = Engine::new(
        listing.clone(),
        BTreeMap::new(),
        BTreeMap::new(),
        ChatKeys::new(),
    );
    assert!(matches!(
        engine.plan(),
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
    let (engine, _) = start(&bucket, &device).unwrap();
    assert_eq!(engine.unknown().len(), 5);
}

#[test]
fn a_tampered_covered_segment_fails_verify_but_no_pull_needs_it() {
    let (bucket, device) = honest();
    let mut tampered = bucket.clone();
    let bytes = tampered.objects.get_mut(&name(A, 1)).unwrap();
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
            hash: [1; 32],
        }],
    );
    other.write(&keys, A, &[]);
    replaced
        .objects
        .insert(name(A, 2), other.objects[&name(A, 2)].clone());
    assert!(matches!(
        integrity(verify(&replaced, &device)),
        IntegrityProblem::ChainBroken { seq: 2, .. }
    ));
}

/// A key holder's checkpoint may cover sequence numbers up to u64::MAX (found by the `engine`
/// fuzz target): choosing the newest checkpoint summed them in u64 and planning after the
/// coverage added one, both overflowing (a panic in debug builds, a wrong plan in release).
#[test]
fn coverage_at_the_end_of_u64_neither_overflows_nor_plans_past_it() {
    let at_max = |device| Head {
        device,
        seq: u64::MAX,
        hash: [3; 32],
    };
    let index = crate::sync::checkpoint::checkpoint_name(A, 1);
    let smaller = crate::sync::checkpoint::checkpoint_name(A, 2);
    let last = name(A, u64::MAX);
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
    let mut engine = Engine::new(
        listing,
        BTreeMap::from([(A, at_max(A))]),
        known,
        ChatKeys::new(),
    );
    assert_eq!(engine.newest().map(|(name, _)| name), Some(index.as_str()));
    engine.note_base();
    assert_eq!(engine.plan().unwrap(), []);
    // verify's covered segments, handed out of order: the one at u64::MAX has no successor.
    let opened = |seq: u64, prev_hash| OpenedSegment {
        name: name(A, seq),
        head: Head {
            device: A,
            seq,
            hash: [4; 32],
        },
        prev_hash,
        seen: Vec::new(),
        grants: Vec::new(),
        blocks: Vec::new(),
        device_name: String::new(),
        platform: String::new(),
    };
    engine
        .accept_covered(Some(&opened(u64::MAX, Some([0; 32]))), &opened(1, None))
        .unwrap();
}
