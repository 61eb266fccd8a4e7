//! The forked-tree vector: one device's segment 1, two segments 2 after it under other tags (two
//! copies of its state directory), a second device's segment that saw both tips, and a
//! checkpoint covering all three tips (FORMAT.md 9.1, 9.2, 9.5).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{FixedNonces, head_json, hex, pattern};
use crate::keys::VaultKeys;
use crate::sync::batch::EncodedBatch;
use crate::sync::next_checkpoint::{ChatContent, CheckpointInput, seal_checkpoint_with};
use crate::sync::segment::{ChatKeys, Head, NewSegment, seal_segment_with};
use crate::sync::{Change, DeviceId, Message, Operation, Stamp};

/// Tags of the forked device's segments (random in real objects; fixed here).
const ROOT_TAG: u64 = 0x0a0a_0000_0000_0001;
const LEFT_TAG: u64 = 0x0a0a_0000_0000_0002;
const RIGHT_TAG: u64 = 0x0a0a_0000_0000_0003;
const OTHER_TAG: u64 = 0x0b0b_0000_0000_0001;
const CHECKPOINT_TAG: u64 = 0x0c0c_0000_0000_0001;

fn operation(device: DeviceId, n: u32) -> Operation {
    Operation {
        stamp: Stamp {
            wall_ms: 1_700_000_200_000 + u64::from(n),
            counter: 0,
            device,
        },
        change: Change::UpsertMessage(Message {
            chat_id: "family".into(),
            message_id: format!("fork-{n}"),
            sender: "alice".into(),
            sent_at_ms: 1_700_000_200_000 + i64::from(n),
            text: format!("message {n}"),
            kind: "text".into(),
            ..Message::default()
        }),
    }
}

/// The vector: `segments` in writing order (each with its name, tag, parent tag, nonces,
/// object and hash, and its decoded fields), and `checkpoint` (name, nonces, object, covered
/// heads, packs).
pub(super) fn fork_vectors(keys: &VaultKeys, chat_keys: &ChatKeys) -> Value {
    let forked = DeviceId(pattern(100));
    let other = DeviceId(pattern(101));
    let family = chat_keys
        .writing_key("family", 0)
        .map(|(key_id, _)| key_id)
        .unwrap();
    let mut seed = 110u8;
    let mut segments = Vec::new();
    let mut operations = Vec::new();
    let mut seal =
        |device: DeviceId, seq: u64, tag: u64, previous: Option<&Head>, seen: &[Head], n: u32| {
            let operation = operation(device, n);
            let mut nonces = FixedNonces::new(seed);
            let grants = if seq == 1 && device == forked {
                vec![family]
            } else {
                vec![]
            };
            let (name, object, hash) = seal_segment_with(
                keys,
                chat_keys,
                &NewSegment {
                    device,
                    seq,
                    tag,
                    previous: previous.map(|h| (h.tag, h.hash)),
                    seen,
                    grants: &grants,
                    operations: &EncodedBatch::from_operations(std::slice::from_ref(&operation)),
                    device_name: "copy",
                    platform: "test",
                    signer: None,
                },
                &mut || nonces.next(),
            )
            .unwrap();
            seed += 4;
            assert_eq!(<[u8; 32]>::from(Sha256::digest(&object)), hash);
            segments.push(json!({
                "name": name,
                "tag": format!("{tag:016x}"),
                "parent_tag": format!("{:016x}", previous.map_or(0, |h| h.tag)),
                "nonces": nonces.used.iter().map(|n| hex(n)).collect::<Vec<_>>(),
                "object": hex(&object),
                "hash": hex(&hash),
                "fields": {
                    "device_id": hex(&device.0),
                    "seq": seq,
                    "prev_hash": previous.map_or_else(String::new, |h| hex(&h.hash)),
                    "seen": seen.iter().map(head_json).collect::<Vec<_>>(),
                    "message_id": format!("fork-{n}"),
                },
            }));
            operations.push(operation);
            Head {
                device,
                seq,
                tag,
                hash,
            }
        };
    let root = seal(forked, 1, ROOT_TAG, None, &[], 1);
    let left = seal(forked, 2, LEFT_TAG, Some(&root), &[], 2);
    let right = seal(forked, 2, RIGHT_TAG, Some(&root), &[], 3);
    let saw_both = seal(other, 1, OTHER_TAG, None, &[left, right], 4);
    let covered = [left, right, saw_both];
    let mut nonces = FixedNonces::new(seed);
    let sealed = seal_checkpoint_with(
        keys,
        &CheckpointInput {
            device: other,
            seq: 1,
            tag: CHECKPOINT_TAG,
            covered: &covered,
            chat_keys,
            deleted_chats: &[],
            created_at_ms: 1_700_000_300_000,
            signer: None,
        },
        [Ok(ChatContent {
            chat_id: "family".into(),
            operations,
        })],
        &mut || nonces.next(),
    )
    .unwrap();
    json!({
        "description": "a forked tree: segment 1 of one device, two segments 2 after it under other tags (two copies of its state directory), segment 1 of another device that saw both tips, and a checkpoint of that device covering the three tips; every segment holds one message of the family chat, under the family key segment 1 grants; segment i (from 0) takes its nonces from pattern(110 + 4i) on, the checkpoint from pattern(126) on, in the order each writer seals (chat blocks, then the outer object)",
        "segments": segments,
        "checkpoint": {
            "name": sealed.index_name,
            "tag": format!("{CHECKPOINT_TAG:016x}"),
            "nonces": nonces.used.iter().map(|n| hex(n)).collect::<Vec<_>>(),
            "object": hex(&sealed.index),
            "covered": covered.iter().map(head_json).collect::<Vec<_>>(),
            "packs": sealed.packs.iter().map(|(name, bytes)| json!({"name": name, "object": hex(bytes)})).collect::<Vec<_>>(),
        },
    })
}
