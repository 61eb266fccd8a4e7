//! A synchronous driver of the engine over an in-memory bucket, for the engine's tests and its
//! fuzz target (compiled only for tests and with the `fuzzing` feature): it does what the
//! vault's async drivers do (list, learn checkpoints, start, plan, accept, check claims, open),
//! reading from a map of objects a test or the fuzzer tampers with. Every segment holds one
//! message, so a pull can count what it got.

// A harness, not library code: an honest write that does not seal is a bug to report loudly.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use super::Engine;
use crate::error::Result;
use crate::keys::{ChatKey, VaultKeys};
use crate::sync::batch::EncodedBatch;
use crate::sync::checkpoint::{CheckpointIndex, open_block};
use crate::sync::listing::Listing;
use crate::sync::next_checkpoint::{ChatContent, CheckpointInput, seal_checkpoint};
use crate::sync::plan::Get;
use crate::sync::segment::{
    ChatKeys, Head, NewSegment, SegmentHash, SegmentId, open_blocks, parse_segment_name,
    seal_segment, segment_name,
};
use crate::sync::tree::walk;
use crate::sync::{Change, DeviceId, Message, Operation, Stamp};

/// The device that writes the checkpoints.
pub const CHECKPOINT_WRITER: DeviceId = DeviceId([0xa; 16]);
/// The id of the one chat key every segment grants.
pub const KEY_ID: [u8; 16] = [1; 16];

/// The keys of the one chat, `c`, every message is in.
pub fn chat_keys() -> ChatKeys {
    let mut chat_keys = ChatKeys::new();
    // A fresh key ring has no key under KEY_ID, so the insert cannot clash.
    let _ = chat_keys.insert(KEY_ID, "c", ChatKey::from_bytes([6; 32]), 0);
    chat_keys
}

/// The one message the segment `id` holds.
pub fn operation(id: SegmentId) -> Operation {
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

/// The bucket: objects by name inside the vault prefix, and what its honest writers did.
#[derive(Clone, Default)]
pub struct Bucket {
    /// Every object, by name.
    pub objects: BTreeMap<String, Vec<u8>>,
    /// Sizes the listing shows instead of the true ones.
    pub lies: BTreeMap<String, u64>,
    /// The segment each device wrote last: where its next one follows.
    pub heads: BTreeMap<DeviceId, Head>,
    /// Every segment written honestly, by device: where a copy of a state directory may fork.
    pub history: BTreeMap<DeviceId, Vec<Head>>,
    /// Every segment name ever written (garbage collection does not forget them here).
    pub written: Vec<String>,
    /// The tips the last honest checkpoint covers.
    pub covered: Vec<Head>,
    /// The last tag handed out: tags are unique in a bucket.
    pub last_tag: u64,
    /// Messages written honestly.
    pub messages: usize,
}

impl Bucket {
    /// Seals a segment with any place, chain and claims (a key holder may forge one) holding
    /// one message, and puts it. `None` if sealing refused it.
    pub fn put_segment(
        &mut self,
        keys: &VaultKeys,
        id: SegmentId,
        previous: Option<(u64, SegmentHash)>,
        seen: &[Head],
    ) -> Option<Head> {
        let (name, bytes, hash) = seal_segment(
            keys,
            &chat_keys(),
            &NewSegment {
                device: id.device,
                seq: id.seq,
                tag: id.tag,
                previous,
                seen,
                grants: &[KEY_ID],
                operations: &EncodedBatch::from_operations(&[operation(id)]),
                device_name: "d",
                platform: "test",
                signer: None,
            },
        )
        .ok()?;
        self.objects.insert(name.clone(), bytes);
        self.written.push(name);
        Some(Head {
            device: id.device,
            seq: id.seq,
            tag: id.tag,
            hash,
        })
    }

    /// Seals the next segment of `device` (it saw `seen`) with one message.
    pub fn write(&mut self, keys: &VaultKeys, device: DeviceId, seen: &[Head]) -> Head {
        let previous = self.heads.get(&device).copied();
        self.write_after(keys, device, previous, seen)
    }

    /// Seals a segment of `device` following `previous` (`None`: its first), as a copy of a
    /// state directory whose tip that is would: a second child of one parent is a fork.
    pub fn write_after(
        &mut self,
        keys: &VaultKeys,
        device: DeviceId,
        previous: Option<Head>,
        seen: &[Head],
    ) -> Head {
        self.last_tag += 1;
        let id = SegmentId {
            device,
            seq: previous.map_or(1, |h| h.seq + 1),
            tag: self.last_tag,
        };
        let head = self
            .put_segment(keys, id, previous.map(|h| (h.tag, h.hash)), seen)
            .expect("an honest segment seals");
        self.heads.insert(device, head);
        self.history.entry(device).or_default().push(head);
        self.messages += 1;
        head
    }

    /// Every honest segment no segment written follows.
    pub fn tips(&self) -> Vec<Head> {
        let parents: BTreeSet<SegmentId> = self
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

    /// Writes checkpoint `seq` covering `covered`, holding the messages of the first `cap`
    /// segments they and their ancestors hold (all of them for an honest one). `false` if
    /// sealing refused it (a forged coverage may).
    pub fn put_checkpoint(
        &mut self,
        keys: &VaultKeys,
        seq: u64,
        covered: &[Head],
        cap: usize,
    ) -> bool {
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
                device: CHECKPOINT_WRITER,
                seq,
                tag: 0xc0u64.wrapping_add(seq),
                covered,
                chat_keys: &chat_keys(),
                deleted_chats: &[],
                created_at_ms: 1,
                signer: None,
            },
            [Ok(ChatContent {
                chat_id: "c".into(),
                operations,
            })],
        ) else {
            return false;
        };
        for (name, bytes) in sealed.packs {
            self.objects.insert(name, bytes);
        }
        self.objects.insert(sealed.index_name, sealed.index);
        true
    }

    /// Writes an honest checkpoint `seq` covering `covered` and every message there.
    pub fn checkpoint_of(&mut self, keys: &VaultKeys, seq: u64, covered: &[Head]) {
        assert!(self.put_checkpoint(keys, seq, covered, usize::MAX));
        self.covered = covered.to_vec();
    }

    /// Writes an honest checkpoint `seq` covering every tip.
    pub fn checkpoint(&mut self, keys: &VaultKeys, seq: u64) {
        let covered = self.tips();
        self.checkpoint_of(keys, seq, &covered);
    }

    /// Deletes what the last honest checkpoint covers, as garbage collection does: the walk
    /// from its covered tips, in ascending sequence numbers.
    pub fn collect(&mut self) {
        self.collect_keeping(0);
    }

    /// [`Bucket::collect`] cut short: the last `keep` segments it would delete stay.
    pub fn collect_keeping(&mut self, keep: usize) {
        let reached = walk(&self.listing(), &self.covered).reached;
        let mut doomed: Vec<(u64, String)> = self
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
        for (_, name) in doomed.iter().take(doomed.len().saturating_sub(keep)) {
            self.objects.remove(name);
        }
    }

    /// What a LIST answers (with the sizes it lies about).
    pub fn listing(&self) -> Listing {
        Listing::classify(self.objects.iter().map(|(name, bytes)| {
            let size = self.lies.get(name).copied().unwrap_or(bytes.len() as u64);
            (name.as_str(), size)
        }))
    }

    /// The name of the one segment of `device` at `seq` ever written (for scripts without a
    /// fork; `None` if there is none).
    pub fn name(&self, device: DeviceId, seq: u64) -> Option<String> {
        self.written
            .iter()
            .find(|n| parse_segment_name(n).is_some_and(|s| s.device == device && s.seq == seq))
            .cloned()
    }

    /// The name the next segment of `device` would have (it wrote one already).
    pub fn next_name(&self, device: DeviceId) -> Option<String> {
        let head = self.heads.get(&device)?;
        Some(segment_name(
            device,
            head.seq + 1,
            self.last_tag + 1,
            head.tag,
        ))
    }

    /// A GET: the bytes the store answers, checked against the size the plan expects.
    pub fn get(&self, get: &Get) -> Result<Vec<u8>> {
        let bytes = self.objects.get(&get.name).ok_or_else(|| get.missing())?;
        get.check_len(bytes)?;
        Ok(bytes.clone())
    }
}

/// A device's view: the tips it applied, the hashes of the segments it applied, and how many
/// messages it got.
#[derive(Clone, Default)]
pub struct Device {
    /// Its tips.
    pub applied: Vec<Head>,
    /// The hash of every segment it applied (or that a checkpoint it adopted covers).
    pub hashes: BTreeMap<SegmentId, SegmentHash>,
    /// Messages applied.
    pub messages: usize,
}

impl Device {
    /// Whether it applied the segment `id`.
    pub fn has(&self, id: SegmentId) -> bool {
        self.hashes.contains_key(&id)
    }
}

/// Lists and learns every checkpoint index, as a pass starts.
pub fn start(
    keys: &VaultKeys,
    bucket: &Bucket,
    device: &Device,
) -> Result<(Engine, BTreeMap<String, CheckpointIndex>)> {
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

/// Opens every block of `index` from its packs; returns how many operations they hold.
fn read_packs(
    keys: &VaultKeys,
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
                // `adopt` checked that every block lies inside its pack.
                let end = entry.offset.saturating_add(entry.length);
                let bytes = pack
                    .get(entry.offset as usize..end as usize)
                    .unwrap_or_default();
                operations += open_block(keys, engine.chat_keys(), index, block, bytes)?.len();
            }
        }
    }
    Ok(operations)
}

/// A pull, as `Vault::pull` drives the engine; on success the device has applied everything.
pub fn pull(keys: &VaultKeys, bucket: &Bucket, device: &mut Device) -> Result<()> {
    let (mut engine, mut indexes) = start(keys, bucket, device)?;
    engine.check_rollback()?;
    let hashes = device.hashes.clone();
    let known = |id: SegmentId| Ok(hashes.get(&id).copied());
    let newest = engine.newest().map(|(name, _)| name.to_owned());
    if engine.restore_is_cheaper(u64::MAX)
        && let Some(index) = newest.and_then(|name| indexes.remove(&name))
    {
        let gets = engine.adopt(&index, known)?;
        device.messages += read_packs(keys, bucket, &engine, &index, &gets)?;
        device.applied = engine.tips_after_adopting(&index);
        for head in &index.covered {
            device.hashes.insert(head.id(), head.hash);
        }
    } else {
        engine.note_base();
    }
    let mut arrived = Vec::new();
    for get in engine.plan(|id| Ok(hashes.contains_key(&id)))? {
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

/// `verify`, as `Vault::verify` drives the engine: everything listed, covered segments
/// included, is fetched and authenticated.
pub fn verify(keys: &VaultKeys, bucket: &Bucket, device: &Device) -> Result<()> {
    let (mut engine, mut indexes) = start(keys, bucket, device)?;
    engine.check_rollback()?;
    engine.start_from_scratch();
    let known = |id: SegmentId| Ok(device.hashes.get(&id).copied());
    if let Some(index) = engine
        .newest()
        .map(|(name, _)| name.to_owned())
        .and_then(|name| indexes.remove(&name))
    {
        let gets = engine.adopt(&index, known)?;
        read_packs(keys, bucket, &engine, &index, &gets)?;
    }
    for get in engine.covered_segments()? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept_covered(&segment)?;
    }
    let mut arrived = Vec::new();
    for get in engine.plan(|_| Ok(false))? {
        let segment = get.open_segment(keys, &bucket.get(&get)?)?;
        engine.accept(&segment, known)?;
        arrived.push(segment);
    }
    engine.check_applied()?;
    for segment in &arrived {
        engine.check_claims(segment, known)?;
        open_blocks(keys, engine.chat_keys(), segment)?;
    }
    Ok(())
}
