//! The sync engine driven over a scripted bucket, as `src/sync/engine/tests.rs` drives it: the
//! input is a script of honest writes (segments of three devices with the heads they saw,
//! checkpoints, garbage collection, pulls), junk names, and dishonest acts (deleted, flipped,
//! cut, swapped objects; listing sizes that lie; segments and checkpoints a key holder forged
//! with arbitrary sequence numbers, chains and claims). Then pulls and verifies by a device that
//! followed along and by a fresh one.
//!
//! Honest writes include forks: a copy of a device's state directory writing after one of its
//! earlier segments (possibly one garbage collection already took), as a VM snapshot restored
//! later does.
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
    ChatKeys, Head, NewSegment, SegmentHash, SegmentId, open_blocks, parse_segment_name,
    seal_segment,
};
use chatvault::sync::tree::walk;
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

fn operation(id: SegmentId) -> Operation {
    Operation {
        stamp: Stamp {
            wall_ms: 1000u64.wrapping_add(id.seq),
            counter: 0,
            device: id.device,
        },
        change: Change::UpsertMessage(Message {
            chat_id: "c".into(),
            message_id: format!("{}-{}-{}", id.device.to_hex(), id.seq, id.tag),
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
    /// The segment each device wrote last: where its next one follows.
    heads: BTreeMap<DeviceId, Head>,
    /// Every segment written honestly, by device: where a copy may fork from.
    history: BTreeMap<DeviceId, Vec<Head>>,
    /// Every segment name written, honestly or not (collection does not forget them here).
    written: Vec<String>,
    /// The last tag handed out.
    last_tag: u64,
    checkpoints: u64,
    /// Coverage of the newest honest checkpoint.
    newest: Vec<Head>,
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
        tag: u64,
        previous: Option<(u64, SegmentHash)>,
        seen: &[Head],
    ) -> Option<Head> {
        let id = SegmentId { device, seq, tag };
        let (name, bytes, hash) = seal_segment(
            keys,
            &chat_keys(),
            &NewSegment {
                device,
                seq,
                tag,
                previous,
                seen,
                grants: &[KEY_ID],
                operations: &EncodedBatch::from_operations(&[operation(id)]),
                device_name: "d",
                platform: "fuzz",
            },
        )
        .ok()?;
        self.objects.insert(name.clone(), bytes);
        self.written.push(name);
        Some(Head {
            device,
            seq,
            tag,
            hash,
        })
    }

    /// An honest segment of `device` after `previous` (its last one, or, for a copy of its
    /// state directory, an earlier one).
    fn write_after(
        &mut self,
        keys: &VaultKeys,
        device: DeviceId,
        previous: Option<Head>,
        seen: &[Head],
    ) {
        let seq = previous.map_or(1, |h| h.seq + 1);
        self.last_tag += 1;
        let tag = self.last_tag;
        let previous = previous.map(|h| (h.tag, h.hash));
        if let Some(head) = self.segment(keys, device, seq, tag, previous, seen) {
            self.heads.insert(device, head);
            self.history.entry(device).or_default().push(head);
            self.messages += 1;
        }
    }

    fn write(&mut self, keys: &VaultKeys, device: DeviceId, seen: &[Head]) {
        let previous = self.heads.get(&device).copied();
        self.write_after(keys, device, previous, seen);
    }

    /// Every honest segment no other honest segment follows.
    fn tips(&self) -> Vec<Head> {
        let parents: std::collections::BTreeSet<SegmentId> = self
            .written
            .iter()
            .filter_map(|name| parse_segment_name(name)?.parent_id())
            .collect();
        self.history
            .values()
            .flatten()
            .filter(|head| !parents.contains(&head.id()))
            .copied()
            .collect()
    }

    /// A checkpoint of `covered` holding the messages of each device's first `cap` segments
    /// (all of them for an honest one).
    fn checkpoint(&mut self, keys: &VaultKeys, covered: &[Head], cap: usize) {
        self.checkpoints += 1;
        let everything = Listing::classify(self.written.iter().map(|n| (n.as_str(), 1)));
        let operations: Vec<Operation> = walk(&everything, covered)
            .reached
            .into_iter()
            .take(cap)
            .map(operation)
            .collect();
        let Ok(sealed) = seal_checkpoint(
            keys,
            &CheckpointInput {
                device: DEVICES[0],
                seq: self.checkpoints,
                tag: 0xc0,
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
    applied: Vec<Head>,
    hashes: BTreeMap<SegmentId, SegmentHash>,
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
    let known = |id: SegmentId| hashes.get(&id).copied();
    let newest = engine.newest().map(|(name, _)| name.to_owned());
    if engine.restore_is_cheaper(u64::MAX)
        && let Some(index) = newest.and_then(|name| indexes.remove(&name))
    {
        let gets = engine.adopt(&index, known)?;
        device.messages += read_packs(bucket, &engine, &index, &gets)?;
        device.applied = engine.tips_after_adopting(&index);
        for head in &index.covered {
            device.hashes.insert(head.id(), head.hash);
        }
    } else {
        engine.note_base();
    }
    let mut arrived = Vec::new();
    for get in engine.plan(|id| hashes.contains_key(&id))? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept(&segment, known)?;
        arrived.push(segment);
    }
    for segment in &arrived {
        engine.check_claims(segment, known)?;
        device.messages += open_blocks(keys, engine.chat_keys(), segment)?.len();
        let parent = (segment.head.seq > 1).then(|| SegmentId {
            device: segment.head.device,
            seq: segment.head.seq - 1,
            tag: segment.parent_tag,
        });
        device.applied.retain(|h| Some(h.id()) != parent);
        device.applied.push(segment.head);
        device.hashes.insert(segment.head.id(), segment.head.hash);
    }
    Ok(())
}

fn verify(bucket: &Bucket, device: &Device) -> Result<()> {
    let keys = keys();
    let (mut engine, mut indexes) = start(bucket, device)?;
    engine.check_rollback()?;
    engine.start_from_scratch();
    let known = |id: SegmentId| device.hashes.get(&id).copied();
    if let Some(index) = engine
        .newest()
        .map(|(name, _)| name.to_owned())
        .and_then(|name| indexes.remove(&name))
    {
        let gets = engine.adopt(&index, known)?;
        read_packs(bucket, &engine, &index, &gets)?;
    }
    for get in engine.covered_segments()? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept_covered(&segment)?;
    }
    let mut arrived = Vec::new();
    for get in engine.plan(|_| false)? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept(&segment, known)?;
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
    let one = "0000000000000001";
    let zero = "0000000000000000";
    match reader.below(10) {
        0 => "segments/README".to_owned(),
        1 => format!("segments/{device}/{zero}-{one}-{zero}"),
        2 => format!("segments/{}/{one}-{one}-{zero}", device.to_uppercase()),
        3 => format!("packs/{device}/{one}-{one}/x"),
        4 => format!("checkpoints/{device}/1"),
        6 => format!("segments/{device}/{one}-{zero}-{zero}"),
        7 => format!("segments/{device}/{one}-{one}-{one}"),
        8 => format!("checkpoints/{device}/{one}-{zero}"),
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
                let covered = bucket.tips();
                if !covered.is_empty() {
                    bucket.checkpoint(keys, &covered, usize::MAX);
                    bucket.newest = covered;
                }
            }
            6 => {
                // Garbage collection of what the newest honest checkpoint covers: the walk
                // from its tips, in ascending order (cut short: a collection interrupted).
                let reached = walk(&bucket.listing(), &bucket.newest).reached;
                let mut doomed: Vec<(u64, String)> = bucket
                    .objects
                    .keys()
                    .filter_map(|name| {
                        let segment = parse_segment_name(name)?;
                        reached
                            .contains(&segment.id())
                            .then(|| (segment.seq, name.clone()))
                    })
                    .collect();
                doomed.sort();
                let keep = if reader.bool() { 0 } else { reader.below(4) };
                for (_, name) in doomed.iter().take(doomed.len().saturating_sub(keep)) {
                    bucket.objects.remove(name);
                }
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
                // A key holder's segment: any place, tags, chain and claims.
                let device = DEVICES[reader.below(3)];
                let seq = reader.seq();
                let tag = u64::from(reader.u8());
                let previous = match reader.below(3) {
                    0 => None,
                    1 => bucket.heads.get(&device).map(|h| (h.tag, h.hash)),
                    _ => Some((u64::from(reader.u8()), reader.array())),
                };
                let claims: Vec<Head> = (0..reader.below(3))
                    .map(|_| Head {
                        device: DEVICES[reader.below(3)],
                        seq: reader.seq(),
                        tag: u64::from(reader.u8()),
                        hash: reader.array(),
                    })
                    .collect();
                bucket.segment(keys, device, seq, tag, previous, &claims);
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
                                tag: u64::from(reader.u8()),
                                hash: reader.array(),
                            },
                        }
                    })
                    .collect();
                bucket.checkpoint(keys, &covered, 8);
                bucket.honest = false;
            }
            15 if reader.bool() => {
                // A copy of a device's state directory writes after one of its earlier
                // segments (or as if it had written none).
                let device = DEVICES[reader.below(3)];
                let history = bucket.history.get(&device).cloned().unwrap_or_default();
                let at = reader.below(history.len() + 1);
                bucket.write_after(keys, device, history.get(at).copied(), &[]);
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
