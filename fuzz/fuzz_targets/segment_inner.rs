//! Segments whose bytes authenticate: the target holds the vault keys and seals the fuzzer's
//! bytes before opening them, so they reach what random bytes never do.
//!
//! The first byte picks what the rest is:
//! - 0: a segment body (protobuf `Segment`), sealed under the name its device id and seq claim,
//!   then opened, accepted by the engine (chain, grants, claims) and its chat blocks opened with
//!   the keys its grants give;
//! - 1: a chat block body (protobuf `ChatOperations`), sealed under a chat key that an honest
//!   segment grants; the operations it yields go through the batch encoder and the merge;
//! - 2: a raw frame (compression method, lengths, stored bytes, padding), encrypted as it is, so
//!   the opener's framing and decompression checks see hostile frames.
#![no_main]

mod common;

use std::collections::BTreeMap;

use chatvault::Error;
use chatvault::format::{HEADER_LEN, ObjectKind, proto};
use chatvault::fuzzing::{self, SealingKey};
use chatvault::sealing::{MIN_SEALED_LEN, NONCE_LEN, TAG_LEN, padded_len};
use chatvault::sync::batch::EncodedBatch;
use chatvault::sync::engine::Engine;
use chatvault::sync::listing::Listing;
use chatvault::sync::segment::{ChatKeys, Head, open_blocks, open_segment, segment_name};
use chatvault::sync::{DeviceId, MemoryState, Operation, apply};
use common::{DEFAULT_DEVICE, Reader, keys};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const KEY_ID: [u8; 16] = [0xcc; 16];
const CHAT_KEY: [u8; 32] = [6; 32];
/// The tag of every segment this target seals; its parent's is [`parent_tag`].
const TAG: u64 = 0x7a67;

/// The parent tag a segment at `seq` names: none at seq 1 (seq 0 gets a name no reader
/// accepts, which must be refused as misplaced).
fn parent_tag(seq: u64) -> u64 {
    if seq <= 1 { 0 } else { 0x9a4e }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => segment_body(rest),
        1 => block_body(rest),
        _ => frame(rest),
    }
});

fn segment_body(body: &[u8]) {
    let (device, seq) = match proto::Segment::decode(body) {
        Ok(segment) => (
            segment
                .device_id
                .as_slice()
                .try_into()
                .map_or(DEFAULT_DEVICE, DeviceId),
            segment.seq,
        ),
        Err(_) => (DEFAULT_DEVICE, 1),
    };
    let name = segment_name(device, seq, TAG, parent_tag(seq));
    let object = fuzzing::seal(keys(), SealingKey::Log, ObjectKind::Segment, &name, body)
        .expect("any body up to the limit seals");
    if let Some(operations) = drive(&name, &object) {
        check_operations(&operations);
    }
}

fn block_body(body: &[u8]) {
    let decoded = proto::ChatOperations::decode(body).ok();
    let chat = decoded
        .as_ref()
        .map(|c| c.chat_id.clone())
        .filter(|c| !c.is_empty() && c.len() <= 1024)
        .unwrap_or_else(|| "c".to_owned());
    // The segment's device is the one its first operation claims, so stamps can match it.
    let device = decoded
        .as_ref()
        .and_then(|c| {
            let id = &c.operations.first()?.stamp.as_ref()?.device_id;
            id.as_slice().try_into().ok().map(DeviceId)
        })
        .unwrap_or(DEFAULT_DEVICE);
    let name = segment_name(device, 1, TAG, 0);
    let key = fuzzing::chat_key(CHAT_KEY);
    let block = fuzzing::seal(
        keys(),
        SealingKey::Chat(&key),
        ObjectKind::ChatData,
        &fuzzing::segment_block_name(&name, 0),
        body,
    )
    .expect("any body up to the limit seals");
    let segment = proto::Segment {
        device_id: device.0.to_vec(),
        seq: 1,
        prev_hash: Vec::new(),
        seen: Vec::new(),
        keys: vec![proto::ChatKeyGrant {
            chat_id: chat,
            key_id: KEY_ID.to_vec(),
            key: CHAT_KEY.to_vec(),
            epoch: 0,
        }],
        chats: vec![proto::SealedChatBlock {
            key_id: KEY_ID.to_vec(),
            sealed: block,
        }],
        device_name: "fuzz".to_owned(),
        platform: "fuzz".to_owned(),
        signature: Vec::new(),
    }
    .encode_to_vec();
    let object = fuzzing::seal(
        keys(),
        SealingKey::Log,
        ObjectKind::Segment,
        &name,
        &segment,
    )
    .expect("an honest segment seals");
    let opened = drive(&name, &object).map(|operations| {
        check_operations(&operations);
        operations
    });
    // What the honest outer layer wraps always opens; only the block may be refused.
    if opened.is_none() {
        open_segment(keys(), &name, &object).expect("the honest outer layer opens");
    }
}

/// Opens a segment as a pull does: alone, then through the engine (plan, accept, claims), then
/// its chat blocks with the keys the engine learned. Returns the operations, if all of it holds.
fn drive(name: &str, object: &[u8]) -> Option<Vec<Operation>> {
    let keys = keys();
    let opened = match open_segment(keys, name, object) {
        Ok(opened) => opened,
        Err(error) => {
            assert!(
                matches!(error, Error::Decode { .. } | Error::Integrity(_)),
                "{error:?}"
            );
            return None;
        }
    };
    // This device applied the segment before it (the one the body names), if any.
    let previous = opened.prev_hash.map(|hash| Head {
        device: opened.head.device,
        seq: opened.head.seq - 1,
        tag: opened.parent_tag,
        hash,
    });
    let applied: Vec<Head> = previous.iter().copied().collect();
    let listing = Listing::classify([(name, object.len() as u64)]);
    let mut engine = Engine::new(listing, applied, BTreeMap::new(), ChatKeys::new());
    if previous.is_none() {
        let plan = engine
            .plan(|_| Ok(false))
            .expect("a lone first segment is a valid plan");
        assert_eq!(plan.len(), 1);
        let again = plan[0]
            .open_segment(keys, object)
            .expect("it opened before");
        assert_eq!(again.head, opened.head);
    }
    let parent_hash = previous.map(|h| h.hash);
    if let Err(error) = engine.accept(&opened, |_| Ok(parent_hash)) {
        // The chain holds by construction: only conflicting grants may be refused.
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        return None;
    }
    let _ = engine.check_claims(&opened, |_| Ok(None));
    let _ = engine.check_applied();
    open_blocks(keys, engine.chat_keys(), &opened).ok()
}

/// Operations that came out of an authentic block: they survive the batch encoder unchanged and
/// apply to a state without error, once or twice.
fn check_operations(operations: &[Operation]) {
    let chats: std::collections::BTreeSet<&str> =
        operations.iter().map(|o| o.change.chat_id()).collect();
    let batch = EncodedBatch::from_operations(operations);
    let decoded = batch
        .decode_operations()
        .expect("encoded operations decode");
    assert_eq!(decoded.len(), operations.len());
    if chats.len() <= 1 {
        assert_eq!(decoded, operations);
    }
    let mut state = MemoryState::new();
    for operation in operations.iter().chain(operations) {
        apply(&mut state, operation).expect("the memory state never fails");
    }
    let _ = state.winners();
}

fn frame(rest: &[u8]) {
    let mut reader = Reader::new(rest);
    let fit = reader.bool();
    let mut frame = reader.rest().to_vec();
    if fit && frame.len() < 9 {
        frame.resize(9, 0);
    }
    // Padded to the size the frame's own stored length calls for, so the size check passes and
    // the lengths, padding and decompression checks are reached.
    if fit {
        let stored_len = u64::from(u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]));
        let total = padded_len(MIN_SEALED_LEN as u64 + stored_len);
        let frame_len = total - (HEADER_LEN + NONCE_LEN + TAG_LEN) as u64;
        if frame_len >= frame.len() as u64 && frame_len <= frame.len() as u64 + (1 << 20) {
            frame.resize(frame_len as usize, 0);
        }
    }
    let keys = keys();
    let name = segment_name(DEFAULT_DEVICE, 1, TAG, 0);
    let object = fuzzing::seal_frame(keys, SealingKey::Log, ObjectKind::Segment, &name, &frame)
        .expect("any frame encrypts");
    match fuzzing::open(keys, SealingKey::Log, ObjectKind::Segment, &name, &object) {
        Ok(body) => {
            let again = fuzzing::seal(keys, SealingKey::Log, ObjectKind::Segment, &name, &body)
                .expect("an opened body seals again");
            let reopened = fuzzing::open(keys, SealingKey::Log, ObjectKind::Segment, &name, &again)
                .expect("a sealed body opens");
            assert_eq!(reopened, body);
            let _ = open_segment(keys, &name, &object);
        }
        Err(error) => assert!(matches!(error, Error::Decode { .. }), "{error:?}"),
    }
}
