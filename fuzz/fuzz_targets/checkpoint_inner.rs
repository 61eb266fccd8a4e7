//! Checkpoints whose bytes authenticate: the target holds the vault keys and seals the fuzzer's
//! bytes, so they reach the index decoder, the engine's checks of an index against a listing
//! (`adopt`, pack GETs, covered segments, the plan after it), block bodies, and the next
//! checkpoint built on a hostile base.
//!
//! The first byte picks what the rest is and how the listing looks:
//! - bit 0 clear: a checkpoint index body (protobuf `CheckpointIndex`), sealed under the name
//!   its device id and seq claim; its packs are listed with the sizes it records (bit 1: one
//!   byte more) and hold zeros;
//! - bit 0 set: a chat block body (protobuf `ChatCheckpoint`), sealed under a chat key the
//!   index grants, in a pack at an offset the input chooses, with a range (bits 2-3: none, the
//!   one its messages span, or one the input chooses).
//!
//! Bit 4: this device applied a head the index covers, with another hash.
#![no_main]

mod common;

use std::collections::BTreeMap;

use chatvault::Error;
use chatvault::format::{ObjectKind, proto};
use chatvault::fuzzing::{self, SealingKey};
use chatvault::sync::checkpoint::{
    CheckpointIndex, checkpoint_name, open_block, open_checkpoint_index, pack_prefix,
};
use chatvault::sync::engine::Engine;
use chatvault::sync::listing::Listing;
use chatvault::sync::next_checkpoint::{CheckpointInput, NextCheckpoint};
use chatvault::sync::segment::{ChatKeys, Head, SegmentId, segment_name};
use chatvault::sync::{Change, DeviceId, MemoryState, Message, Operation, Stamp, apply};
use common::{DEFAULT_DEVICE, Reader, keys};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const KEY_ID: [u8; 16] = [0xcc; 16];
const CHAT_KEY: [u8; 32] = [6; 32];
const BLOCK_ID: [u8; 16] = [0xbb; 16];
/// Packs larger than this are not materialised (the engine refuses those over the object limit).
const MAX_PACK: u64 = 1 << 20;
/// The tag of every checkpoint this target seals.
const TAG: u64 = 0x7a67;

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data);
    let mode = reader.u8();
    if mode & 1 == 0 {
        index_body(mode, reader.rest());
    } else {
        block_body(mode, &mut reader);
    }
});

fn index_body(mode: u8, body: &[u8]) {
    let decoded = proto::CheckpointIndex::decode(body).ok();
    let device = decoded
        .as_ref()
        .and_then(|i| i.device_id.as_slice().try_into().ok())
        .map_or(DEFAULT_DEVICE, DeviceId);
    let seq = decoded.as_ref().map_or(1, |i| i.seq);
    let name = checkpoint_name(device, seq, TAG);
    let object = fuzzing::seal(
        keys(),
        SealingKey::Log,
        ObjectKind::CheckpointIndex,
        &name,
        body,
    )
    .expect("any body up to the limit seals");
    let mut packs = BTreeMap::new();
    for pack in decoded.iter().flat_map(|i| &i.packs) {
        let size = if mode & 2 == 0 {
            pack.size
        } else {
            pack.size.wrapping_add(1)
        };
        packs.insert(pack.name.clone(), Pack { size, bytes: None });
    }
    drive(mode, &name, &object, &packs);
}

fn block_body(mode: u8, reader: &mut Reader<'_>) {
    let offset = reader.below(16);
    let chosen_range = (
        i64::from(reader.u8()) - 128,
        i64::from(reader.u8()) - 128,
        ["", "1", "2", "m"][reader.below(4)].to_owned(),
    );
    let body = reader.rest();
    let decoded = proto::ChatCheckpoint::decode(body).ok();
    let chat = decoded
        .as_ref()
        .map(|c| c.chat_id.clone())
        .filter(|c| !c.is_empty() && c.len() <= 1024)
        .unwrap_or_else(|| "c".to_owned());
    let key = fuzzing::chat_key(CHAT_KEY);
    let sealed = fuzzing::seal(
        keys(),
        SealingKey::Chat(&key),
        ObjectKind::ChatData,
        &fuzzing::checkpoint_block_name(&BLOCK_ID),
        body,
    )
    .expect("any body up to the limit seals");
    let mut pack = vec![0; offset];
    pack.extend_from_slice(&sealed);
    pack.resize(pack.len() + reader.below(4), 0);
    // The range the block's messages span, when they parse.
    let spanned = decoded.as_ref().and_then(|c| {
        let positions: Vec<(i64, String)> = c
            .operations
            .iter()
            .filter_map(|op| match &op.body {
                Some(proto::operation::Body::UpsertMessage(m)) => {
                    Some((m.sent_at_ms, m.message_id.clone()))
                }
                Some(proto::operation::Body::DeleteMessage(_)) | None => None,
                Some(_) => None,
            })
            .collect();
        Some((
            positions.iter().min()?.clone(),
            positions.iter().max()?.clone(),
        ))
    });
    let position = |(at, id): (i64, String)| proto::HistoryPosition {
        sent_at_ms: at,
        message_id: id,
    };
    let (first, last) = match (mode >> 2) & 3 {
        0 => (None, None),
        1 => match spanned {
            Some((first, last)) => (Some(position(first)), Some(position(last))),
            None => (None, None),
        },
        _ => (
            Some(position((chosen_range.0, chosen_range.2.clone()))),
            Some(position((chosen_range.1, chosen_range.2))),
        ),
    };
    let pack_name = format!("{}0000", pack_prefix(DEFAULT_DEVICE, 1, TAG));
    let index = proto::CheckpointIndex {
        device_id: DEFAULT_DEVICE.0.to_vec(),
        seq: 1,
        covered: vec![proto::DeviceHead {
            device_id: DEFAULT_DEVICE.0.to_vec(),
            seq: 1,
            hash: vec![0; 32],
            tag: 1,
        }],
        keys: vec![proto::ChatKeyGrant {
            chat_id: chat.clone(),
            key_id: KEY_ID.to_vec(),
            key: CHAT_KEY.to_vec(),
            epoch: 0,
        }],
        packs: vec![proto::PackRef {
            name: pack_name.clone(),
            size: pack.len() as u64,
        }],
        chats: vec![proto::PackedChat {
            chat_id: chat,
            key_id: KEY_ID.to_vec(),
            pack: 0,
            offset: offset as u64,
            length: sealed.len() as u64,
            first,
            last,
            block_id: BLOCK_ID.to_vec(),
            hash: Vec::new(),
        }],
        deleted_chats: Vec::new(),
        created_at_ms: 1,
        signature: Vec::new(),
    }
    .encode_to_vec();
    let name = checkpoint_name(DEFAULT_DEVICE, 1, TAG);
    let object = fuzzing::seal(
        keys(),
        SealingKey::Log,
        ObjectKind::CheckpointIndex,
        &name,
        &index,
    )
    .expect("an honest index seals");
    let packs = BTreeMap::from([(
        pack_name,
        Pack {
            size: pack.len() as u64,
            bytes: Some(pack),
        },
    )]);
    drive(mode, &name, &object, &packs);
}

struct Pack {
    /// The size the listing shows.
    size: u64,
    /// Its bytes (zeros of its size when `None`).
    bytes: Option<Vec<u8>>,
}

impl Pack {
    fn bytes(&self) -> Option<Vec<u8>> {
        match &self.bytes {
            Some(bytes) => Some(bytes.clone()),
            None if self.size <= MAX_PACK => Some(vec![0; self.size as usize]),
            None => None,
        }
    }
}

/// A pull and a checkpoint writer starting from this index, as the vault drives them.
fn drive(mode: u8, name: &str, object: &[u8], packs: &BTreeMap<String, Pack>) {
    let keys = keys();
    let opened = open_checkpoint_index(keys, name, object);
    let covered: Vec<Head> = opened
        .as_ref()
        .map(|i| i.covered.clone())
        .unwrap_or_default();
    if let Err(error) = &opened {
        assert!(
            matches!(error, Error::Decode { .. } | Error::Integrity(_)),
            "{error:?}"
        );
    }
    // The listing: the index, its packs, and the first few segments of every covered device
    // (a chain of tags 1, 2, ... whose segment at a covered seq has the covered tag).
    let mut listed: Vec<(String, u64)> = vec![(name.to_owned(), object.len() as u64)];
    listed.extend(packs.iter().map(|(n, p)| (n.clone(), p.size)));
    for head in &covered {
        let tag = |seq: u64| if seq == head.seq { head.tag } else { seq };
        for seq in 1..=head.seq.min(3).saturating_add(1) {
            let parent = if seq == 1 { 0 } else { tag(seq - 1) };
            listed.push((segment_name(head.device, seq, tag(seq), parent), 100));
        }
    }
    let listing = Listing::classify(listed.iter().map(|(n, s)| (n.as_str(), *s)));
    let applied: Vec<Head> = covered
        .first()
        .filter(|_| mode & 16 != 0)
        .map(|h| {
            let mut other = *h;
            other.hash[0] ^= 1;
            other
        })
        .into_iter()
        .collect();
    let known = |id: SegmentId| Ok(applied.iter().find(|h| h.id() == id).map(|h| h.hash));
    let mut engine = Engine::new(listing, applied.clone(), BTreeMap::new(), ChatKeys::new());
    let Ok(gets) = engine.indexes_to_read() else {
        return;
    };
    let mut index = None;
    for get in gets {
        if let Ok(arrived) = engine.index_arrived(keys, &get, object) {
            index = Some(arrived);
        }
    }
    let Some(index) = index else {
        return;
    };
    let _ = engine.newest_covered();
    let _ = engine.restore_is_cheaper(object.len() as u64);
    let _ = engine.check_rollback();
    match engine.adopt(&index, known) {
        Ok(pack_gets) => {
            assert_eq!(pack_gets.len(), index.packs.len());
            let operations = read_blocks(&engine, &index, packs);
            let _ = engine.covered_segments();
            let _ = engine.plan(|_| Ok(false));
            let _ = engine.tips_after_adopting(&index);
            let _ = engine.check_applied();
            next_checkpoint(&engine, &index, packs, operations);
        }
        Err(error) => assert!(
            matches!(
                error,
                Error::Integrity(_) | Error::Decode { .. } | Error::Store(_)
            ),
            "{error:?}"
        ),
    }
}

/// Opens every block from its pack bytes, as a restore does; returns what opened, by block.
fn read_blocks(
    engine: &Engine,
    index: &CheckpointIndex,
    packs: &BTreeMap<String, Pack>,
) -> BTreeMap<usize, Vec<Operation>> {
    let mut opened = BTreeMap::new();
    for (block, entry) in index.chats.iter().enumerate() {
        let Some(bytes) = packs.get(&index.packs[entry.pack].0).and_then(Pack::bytes) else {
            continue;
        };
        // `adopt` checked that the block lies inside its pack's listed size.
        let Some(slice) = usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(entry.length).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
        else {
            continue;
        };
        if let Ok(operations) = open_block(keys(), engine.chat_keys(), index, block, slice) {
            let mut state = MemoryState::new();
            for operation in &operations {
                apply(&mut state, operation).expect("the memory state never fails");
            }
            opened.insert(block, operations);
        }
    }
    opened
}

/// Builds the next checkpoint on `index` with one new message in the first block's chat, and
/// checks that what it seals opens.
fn next_checkpoint(
    engine: &Engine,
    index: &CheckpointIndex,
    packs: &BTreeMap<String, Pack>,
    mut opened: BTreeMap<usize, Vec<Operation>>,
) {
    let Some(chat_id) = index.chats.first().map(|c| c.chat_id.clone()) else {
        return;
    };
    let mut next = NextCheckpoint::new(Some(index), engine.listing());
    next.add(Operation {
        stamp: Stamp {
            wall_ms: 5,
            counter: 0,
            device: DEFAULT_DEVICE,
        },
        change: Change::UpsertMessage(Message {
            chat_id,
            message_id: "new".to_owned(),
            sent_at_ms: 1,
            text: "hi".to_owned(),
            ..Message::default()
        }),
    });
    for block in next.blocks_to_read() {
        let Some(operations) = opened.remove(&block) else {
            return; // the writer would stop at this block's error
        };
        next.add_read(block, operations);
    }
    for block in next.blocks_to_copy() {
        let entry = &index.chats[block];
        let Some(bytes) = packs.get(&index.packs[entry.pack].0).and_then(Pack::bytes) else {
            return;
        };
        let end = entry
            .offset
            .checked_add(entry.length)
            .expect("adopt checked the block");
        let Some(slice) = bytes.get(entry.offset as usize..end as usize) else {
            return;
        };
        next.add_copy(block, slice.to_vec());
    }
    let sealed = match next.seal(
        keys(),
        &CheckpointInput {
            device: DEFAULT_DEVICE,
            seq: 2,
            tag: TAG,
            covered: &index.covered,
            chat_keys: engine.chat_keys(),
            deleted_chats: &[],
            created_at_ms: 2,
            signer: None,
        },
    ) {
        Ok(sealed) => sealed,
        Err(_) => return, // refused, as a writer would be: no panic is what counts here
    };
    // What a writer seals, a reader opens.
    open_checkpoint_index(keys(), &sealed.index_name, &sealed.index)
        .unwrap_or_else(|e| panic!("the next checkpoint does not open: {e:?}"));
}
