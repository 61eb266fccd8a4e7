//! The sync engine driven over a scripted bucket, as `src/sync/engine/tests.rs` drives it: the
//! input is a script of honest writes (segments of three devices with the heads they saw,
//! checkpoints, garbage collection, pulls), junk names, and dishonest acts (deleted, flipped,
//! cut, swapped objects; listing sizes that lie; segments and checkpoints a key holder forged
//! with arbitrary sequence numbers, chains and claims). Then pulls and verifies by a device that
//! followed along and by a fresh one.
//!
//! Nothing may panic; on an honest script (junk names included) every pull and verify must
//! succeed, and a fresh device must end up with every message written.
#![no_main]

mod common;

use std::collections::BTreeMap;

use chatvault::fuzzing;
use chatvault::keys::VaultKeys;
use chatvault::sync::batch::EncodedBatch;
use chatvault::sync::checkpoint::{CheckpointIndex, open_block};
use chatvault::sync::engine::Engine;
use chatvault::sync::listing::Listing;
use chatvault::sync::next_checkpoint::{ChatContent, CheckpointInput, seal_checkpoint};
use chatvault::sync::plan::Get;
use chatvault::sync::segment::{
    ChatKeys, Head, NewSegment, OpenedSegment, SegmentHash, open_blocks, parse_segment_name,
    seal_segment,
};
use chatvault::sync::{Change, DeviceId, Message, Operation, Stamp};
use chatvault::{Error, Result};
use common::{Reader, keys};
use libfuzzer_sys::fuzz_target;

const DEVICES: [DeviceId; 3] = [
    DeviceId([0xa; 16]),
    DeviceId([0xb; 16]),
    DeviceId([0xc; 16]),
];
const KEY_ID: [u8; 16] = [1; 16];

fn chat_keys() -> ChatKeys {
    let mut chat_keys = ChatKeys::new();
    fuzzing::insert_chat_key(&mut chat_keys, KEY_ID, "c", fuzzing::chat_key([6; 32]))
        .expect("a first key");
    chat_keys
}

fn operation(device: DeviceId, seq: u64) -> Operation {
    Operation {
        stamp: Stamp {
            wall_ms: 1000u64.wrapping_add(seq),
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

#[derive(Clone, Default)]
struct Bucket {
    objects: BTreeMap<String, Vec<u8>>,
    /// Sizes the listing shows instead of the true ones.
    lies: BTreeMap<String, u64>,
    heads: BTreeMap<DeviceId, Head>,
    checkpoints: u64,
    /// Coverage of the newest honest checkpoint.
    newest: BTreeMap<DeviceId, u64>,
    honest: bool,
    /// Messages written honestly.
    messages: usize,
}

impl Bucket {
    fn segment(
        &mut self,
        keys: &VaultKeys,
        device: DeviceId,
        seq: u64,
        prev: Option<SegmentHash>,
        seen: &[Head],
    ) -> Option<Head> {
        let (name, bytes, hash) = seal_segment(
            keys,
            &chat_keys(),
            &NewSegment {
                device,
                seq,
                prev_hash: prev,
                seen,
                grants: &[KEY_ID],
                operations: &EncodedBatch::from_operations(&[operation(device, seq)]),
                device_name: "d",
                platform: "fuzz",
            },
        )
        .ok()?;
        self.objects.insert(name, bytes);
        Some(Head { device, seq, hash })
    }

    fn write(&mut self, keys: &VaultKeys, device: DeviceId, seen: &[Head]) {
        let previous = self.heads.get(&device).copied();
        let seq = previous.map_or(1, |h| h.seq + 1);
        if let Some(head) = self.segment(keys, device, seq, previous.map(|h| h.hash), seen) {
            self.heads.insert(device, head);
            self.messages += 1;
        }
    }

    /// A checkpoint of `covered` holding the messages of each device's first `cap` segments
    /// (all of them for an honest one).
    fn checkpoint(&mut self, keys: &VaultKeys, covered: &[Head], cap: u64) {
        self.checkpoints += 1;
        let operations: Vec<Operation> = covered
            .iter()
            .flat_map(|head| (1..=head.seq.min(cap)).map(|seq| operation(head.device, seq)))
            .collect();
        let Ok(sealed) = seal_checkpoint(
            keys,
            &CheckpointInput {
                device: DEVICES[0],
                seq: self.checkpoints,
                covered,
                chat_keys: &chat_keys(),
                deleted_chats: &[],
                created_at_ms: 1,
            },
            [Ok(ChatContent {
                chat_id: "c".into(),
                operations,
            })],
        ) else {
            return;
        };
        for (name, bytes) in sealed.packs {
            self.objects.insert(name, bytes);
        }
        self.objects.insert(sealed.index_name, sealed.index);
    }

    fn listing(&self) -> Listing {
        Listing::classify(self.objects.iter().map(|(name, bytes)| {
            let size = self.lies.get(name).copied().unwrap_or(bytes.len() as u64);
            (name.as_str(), size)
        }))
    }

    fn get(&self, get: &Get) -> Result<Vec<u8>> {
        let bytes = self.objects.get(&get.name).ok_or_else(|| get.missing())?;
        get.check_len(bytes)?;
        Ok(bytes.clone())
    }

    fn pick(&self, reader: &mut Reader<'_>) -> Option<String> {
        if self.objects.is_empty() {
            return None;
        }
        let index = reader.below(256) % self.objects.len();
        self.objects.keys().nth(index).cloned()
    }
}

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
        indexes.insert(get.name.clone(), engine.index_arrived(keys, &get, &bytes)?);
    }
    Ok((engine, indexes))
}

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
                let end = entry
                    .offset
                    .checked_add(entry.length)
                    .expect("adopt checked the end");
                let bytes = pack
                    .get(entry.offset as usize..end as usize)
                    .expect("adopt checked that every block lies inside its pack");
                operations += open_block(keys(), engine.chat_keys(), index, block, bytes)?.len();
            }
        }
    }
    Ok(operations)
}

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
            device.hashes.insert((head.device, head.seq), head.hash);
        }
    } else {
        engine.note_base();
    }
    let mut arrived = Vec::new();
    for get in engine.plan()? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept(&segment)?;
        arrived.push(segment);
    }
    for segment in &arrived {
        engine.check_claims(segment, known)?;
        device.messages += open_blocks(keys, engine.chat_keys(), segment)?.len();
        device.applied.insert(segment.head.device, segment.head);
        device
            .hashes
            .insert((segment.head.device, segment.head.seq), segment.head.hash);
    }
    Ok(())
}

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
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept_covered(previous.as_ref(), &segment)?;
        previous = Some(segment);
    }
    let mut arrived = Vec::new();
    for get in engine.plan()? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept(&segment)?;
        arrived.push(segment);
    }
    engine.check_applied()?;
    for segment in &arrived {
        engine.check_claims(segment, known)?;
        open_blocks(keys, engine.chat_keys(), segment)?;
    }
    let _ = engine.unknown();
    let _ = engine.devices();
    Ok(())
}

/// Names that are no vault object: set aside, never an error.
fn junk(bucket: &Bucket, reader: &mut Reader<'_>) -> String {
    let device = DEVICES[reader.below(3)].to_hex();
    match reader.below(7) {
        0 => "segments/README".to_owned(),
        1 => format!("segments/{device}/0000000000000000"),
        2 => format!("segments/{}/0000000000000001", device.to_uppercase()),
        3 => format!("packs/{device}/0000000000000001/x"),
        4 => format!("checkpoints/{device}/1"),
        5 => bucket
            .pick(reader)
            .map_or_else(|| "stray".to_owned(), |n| n.to_uppercase()),
        _ => "stray".to_owned(),
    }
}

fn honest_failure(what: &str, result: Result<()>, script: &[u8]) {
    if let Err(error) = result {
        panic!("{what} failed on an honest script {script:?}: {error:?}");
    }
}

fn checked(result: Result<()>) {
    // Every refusal is a typed error of the kinds a hostile bucket causes.
    if let Err(error) = result {
        assert!(
            matches!(
                error,
                Error::Integrity(_) | Error::Decode { .. } | Error::Store(_)
            ),
            "{error:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let mut reader = Reader::new(data);
    let mut bucket = Bucket {
        honest: true,
        ..Bucket::default()
    };
    let mut follower = Device::default();
    for _ in 0..32 {
        if reader.is_empty() {
            break;
        }
        match reader.u8() % 16 {
            0..=4 => {
                let device = DEVICES[reader.below(3)];
                let mask = reader.u8();
                let seen: Vec<Head> = bucket
                    .heads
                    .values()
                    .enumerate()
                    .filter(|(i, h)| h.device != device && mask & (1 << i) != 0)
                    .map(|(_, h)| *h)
                    .collect();
                bucket.write(keys, device, &seen);
            }
            5 => {
                let covered: Vec<Head> = bucket.heads.values().copied().collect();
                if !covered.is_empty() {
                    bucket.checkpoint(keys, &covered, u64::MAX);
                    bucket.newest = covered.iter().map(|h| (h.device, h.seq)).collect();
                }
            }
            6 => {
                // Garbage collection of what the newest honest checkpoint covers.
                let through = bucket.newest.clone();
                bucket.objects.retain(|name, _| {
                    parse_segment_name(name)
                        .is_none_or(|(device, seq)| through.get(&device).is_none_or(|c| seq > *c))
                });
            }
            7 => {
                let result = pull(&bucket, &mut follower);
                if bucket.honest {
                    honest_failure("a pull", result, data);
                }
            }
            8 => {
                let name = junk(&bucket, &mut reader);
                if !bucket.objects.contains_key(&name) {
                    bucket.objects.insert(name, b"junk".to_vec());
                }
            }
            9 => {
                if let Some(name) = bucket.pick(&mut reader) {
                    bucket.objects.remove(&name);
                    bucket.honest = false;
                }
            }
            10 => {
                if let Some(name) = bucket.pick(&mut reader) {
                    let bytes = bucket.objects.get_mut(&name).expect("picked");
                    match reader.below(3) {
                        0 if !bytes.is_empty() => {
                            let at = reader.below(256) * bytes.len() / 256;
                            bytes[at] ^= 1 << reader.below(8);
                        }
                        1 => bytes.truncate(reader.below(256) * bytes.len() / 256),
                        _ => bytes.extend_from_slice(&[0; 7]),
                    }
                    bucket.honest = false;
                }
            }
            11 => {
                if let (Some(from), Some(to)) = (bucket.pick(&mut reader), bucket.pick(&mut reader))
                {
                    let bytes = bucket.objects[&from].clone();
                    bucket.objects.insert(to, bytes);
                    bucket.honest = false;
                }
            }
            12 => {
                if let Some(name) = bucket.pick(&mut reader) {
                    let size = match reader.below(3) {
                        0 => reader.seq(),
                        1 => bucket.objects[&name].len() as u64 + 1,
                        _ => u64::MAX,
                    };
                    bucket.lies.insert(name, size);
                    bucket.honest = false;
                }
            }
            13 => {
                // A key holder's segment: any place, chain and claims.
                let device = DEVICES[reader.below(3)];
                let seq = reader.seq();
                let prev = match reader.below(3) {
                    0 => None,
                    1 => bucket.heads.get(&device).map(|h| h.hash),
                    _ => Some(reader.array()),
                };
                let claims: Vec<Head> = (0..reader.below(3))
                    .map(|_| Head {
                        device: DEVICES[reader.below(3)],
                        seq: reader.seq(),
                        hash: reader.array(),
                    })
                    .collect();
                bucket.segment(keys, device, seq, prev, &claims);
                bucket.honest = false;
            }
            14 => {
                // A key holder's checkpoint: any coverage.
                let covered: Vec<Head> = (0..1 + reader.below(3))
                    .map(|_| {
                        let device = DEVICES[reader.below(3)];
                        let real = bucket.heads.get(&device).copied();
                        match (reader.below(2), real) {
                            (0, Some(head)) => head,
                            _ => Head {
                                device,
                                seq: reader.seq(),
                                hash: reader.array(),
                            },
                        }
                    })
                    .collect();
                bucket.checkpoint(keys, &covered, 8);
                bucket.honest = false;
            }
            _ => {
                if bucket.honest {
                    honest_failure("a verify", verify(&bucket, &follower), data);
                } else {
                    checked(verify(&bucket, &follower));
                }
            }
        }
    }
    let mut fresh = Device::default();
    let fresh_pull = pull(&bucket, &mut fresh);
    let followed = pull(&bucket, &mut follower);
    if bucket.honest {
        honest_failure("a fresh pull", fresh_pull, data);
        assert_eq!(
            fresh.messages, bucket.messages,
            "a fresh pull lost messages: {data:?}"
        );
        honest_failure("the follower's pull", followed, data);
        honest_failure("a fresh verify", verify(&bucket, &Device::default()), data);
        honest_failure("the follower's verify", verify(&bucket, &follower), data);
    } else {
        checked(fresh_pull);
        checked(followed);
        checked(verify(&bucket, &Device::default()));
        checked(verify(&bucket, &follower));
    }
});
