//! The test-vector generator: writes `tests/vectors/*.json`, the byte-level contract that every
//! language binding and any independent implementation must meet.
//!
//! Everything is deterministic (fixed keys, nonces and salts), so regenerating reproduces the files
//! byte for byte; `vectors_are_current` fails if they drift from the code.
//!
//! Regenerate: `CHATVAULT_UPDATE_VECTORS=1 cargo test --lib vectors`.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::format::{ObjectKind, proto};
use crate::keyring::Keyring;
use crate::keys::{
    Argon2Params, ChatKey, DERIVATION_LABELS, HKDF_SALT, Key32, PassphraseEnvelope, RecoveryKey,
    VaultKeys,
};
use crate::sealing::{self, Compression, ObjectContext};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic "random" bytes for vectors: byte i = (seed * 31 + i * 17) mod 256.
fn pattern<const N: usize>(seed: u8) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = seed
            .wrapping_mul(31)
            .wrapping_add((i as u8).wrapping_mul(17));
    }
    out
}

fn recovery_keys() -> Vec<RecoveryKey> {
    vec![
        RecoveryKey::from_bytes([0u8; 32]),
        RecoveryKey::from_bytes([0xff; 32]),
        RecoveryKey::from_bytes(pattern(1)),
        RecoveryKey::from_bytes(pattern(2)),
        RecoveryKey::from_bytes(pattern(3)),
    ]
}

fn hkdf_vectors() -> Value {
    let mut list = Vec::new();
    let labels = DERIVATION_LABELS
        .iter()
        .map(|(label, length)| (HKDF_SALT, label, length))
        .chain(
            crate::keys::RECOVERY_LABELS
                .iter()
                .map(|(label, length)| (crate::keys::RECOVERY_SALT, label, length)),
        );
    let labels: Vec<_> = labels.collect();
    for key in recovery_keys().iter().skip(2).take(2) {
        for (salt, label, length) in &labels {
            let ikm = key.to_bytes();
            let okm =
                crate::keys::hkdf_sha256_for_vectors(&ikm[..], salt, label.as_bytes(), **length);
            list.push(json!({
                "ikm": hex(&ikm[..]),
                "salt": hex(salt),
                "info": hex(label.as_bytes()),
                "length": length,
                "okm": hex(&okm),
            }));
        }
    }
    Value::Array(list)
}

fn aead_vectors() -> Value {
    use chacha20poly1305::aead::{Aead, Payload};
    use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
    let cases: [(u8, &[u8], &[u8]); 4] = [
        (1, b"", b""),
        (2, b"", b"chatvault"),
        (3, b"CVLT\x01\x01\x02\x00associated data", b"hello, world"),
        (4, &[0xaa; 40], &[0x55; 100]),
    ];
    let list = cases
        .iter()
        .map(|(seed, aad, plaintext)| {
            let key: [u8; 32] = pattern(*seed);
            let nonce: [u8; 24] = pattern(seed.wrapping_add(100));
            let ciphertext = XChaCha20Poly1305::new((&key).into())
                .encrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: plaintext,
                        aad,
                    },
                )
                .unwrap();
            json!({
                "key": hex(&key),
                "nonce": hex(&nonce),
                "aad": hex(aad),
                "plaintext": hex(plaintext),
                "ciphertext": hex(&ciphertext),
            })
        })
        .collect();
    Value::Array(list)
}

fn recovery_key_vectors() -> Value {
    let valid: Vec<Value> = recovery_keys()
        .iter()
        .map(|k| json!({ "bytes": hex(&k.to_bytes()[..]), "text": k.to_text().as_str() }))
        .collect();

    let sample = recovery_keys()[2].clone();
    let text = sample.to_text().to_string();
    let compact: Vec<char> = text.chars().filter(|c| *c != '-').collect();
    let lenient = vec![
        json!({ "bytes": hex(&sample.to_bytes()[..]), "text": text.to_lowercase() }),
        json!({ "bytes": hex(&sample.to_bytes()[..]), "text": compact.iter().collect::<String>() }),
        json!({
            "bytes": hex(&sample.to_bytes()[..]),
            "text": format!("  {}  ", text.replace('-', " ")),
        }),
    ];

    let mut substituted = compact.clone();
    substituted[20] = if substituted[20] == 'A' { 'B' } else { 'A' };
    let mut swapped = compact.clone();
    let position = (0..compact.len() - 1)
        .find(|&i| compact[i] != compact[i + 1])
        .unwrap();
    swapped.swap(position, position + 1);
    let mut bad_char = compact.clone();
    bad_char[5] = 'U';
    let zero_text = recovery_keys()[0].to_text().to_string();
    let string = |chars: &[char]| chars.iter().collect::<String>();
    let invalid = vec![
        json!({ "text": "", "reason": "wrong_length" }),
        json!({ "text": string(&compact[..53]), "reason": "wrong_length" }),
        json!({ "text": format!("{text}0"), "reason": "wrong_length" }),
        json!({ "text": string(&bad_char), "reason": "invalid_character" }),
        json!({ "text": text.replacen(|c: char| c.is_ascii_alphanumeric(), "*", 1), "reason": "invalid_character" }),
        json!({ "text": string(&substituted), "reason": "checksum_mismatch" }),
        json!({ "text": string(&swapped), "reason": "checksum_mismatch" }),
        json!({ "text": zero_text.replacen('0', "1", 1), "reason": "checksum_mismatch" }),
        json!({ "text": crate::keys::recovery_text_with_version_for_vectors(&[0x5a; 32], 2), "reason": "unsupported_version" }),
    ];
    json!({ "valid": valid, "lenient": lenient, "invalid": invalid })
}

fn sealed_object_vectors() -> Value {
    let recovery_key = recovery_keys()[2].clone();
    let keys = VaultKeys::derive(&recovery_key);
    let vault = keys.vault_id();
    let common = |v: &mut serde_json::Map<String, Value>| {
        v.insert(
            "recovery_key".into(),
            json!(hex(&recovery_key.to_bytes()[..])),
        );
        v.insert(
            "recovery_key_text".into(),
            json!(recovery_key.to_text().as_str()),
        );
        v.insert("vault_id".into(), json!(vault.to_hex()));
    };
    let mut list = Vec::new();

    // A keyring holding two chat keys.
    let chat_keys: [(&str, [u8; 32]); 2] = [("family", pattern(10)), ("work 🚀", pattern(11))];
    let mut keyring = Keyring::new();
    for (chat_id, key) in &chat_keys {
        keyring.insert_key(chat_id, ChatKey::from_bytes(*key));
    }
    let keyring_nonce: [u8; 24] = pattern(20);
    let keyring_object = keyring
        .seal_with_nonce(&keys, "keyring/1", &keyring_nonce)
        .unwrap();
    let mut v = serde_json::Map::new();
    common(&mut v);
    v.insert(
        "description".into(),
        json!("keyring (generation 1) with two chat keys"),
    );
    v.insert("kind".into(), json!(ObjectKind::Keyring.id()));
    v.insert("name".into(), json!("keyring/1"));
    v.insert("key".into(), json!(hex(keys.keyring().0.bytes())));
    v.insert(
        "key_source".into(),
        json!("keyring key derived from the recovery key"),
    );
    v.insert("nonce".into(), json!(hex(&keyring_nonce)));
    v.insert("plaintext".into(), json!(hex(&keyring.body())));
    v.insert(
        "chat_keys".into(),
        json!(
            chat_keys
                .iter()
                .map(|(id, k)| json!({"chat_id": id, "key": hex(k)}))
                .collect::<Vec<_>>()
        ),
    );
    v.insert("object".into(), json!(hex(&keyring_object)));
    list.push(Value::Object(v));

    // Chat data under each chat key: a protobuf ChatBatch, once compressible, once not, once empty.
    let batch = proto::ChatBatch {
        chat: Some(proto::Chat {
            chat_id: "family".into(),
            title: "Family 👪".into(),
            members: vec!["alice".into(), "bob".into()],
            // The app's own bytes: every byte value once.
            payload: (0..=255u8).collect(),
        }),
        messages: (0..20)
            .map(|i| proto::Message {
                attachments: Vec::new(),
                // Open message model: an app kind on every message but the first, and app
                // payloads of every byte value (message 3) and a short one (message 5).
                kind: match i {
                    0 => String::new(),
                    3 => "image".into(),
                    5 => "reaction".into(),
                    _ => "text".into(),
                },
                payload: match i {
                    3 => (0..=255u8).rev().collect(),
                    5 => vec![0x08, 0x01, 0x12, 0x04, 0xf0, 0x9f, 0x91, 0x8d],
                    _ => Vec::new(),
                },
                chat_id: "family".into(),
                message_id: format!("m{i}"),
                sender: if i % 2 == 0 { "alice" } else { "bob" }.into(),
                sent_at_ms: 1_700_000_000_000 + i * 1000,
                text: format!("message number {i}: \"quotes\", tabs\t, newlines\n and emoji 🎉"),
                reply_to: (i > 0).then(|| format!("m{}", i - 1)),
            })
            .collect(),
    };
    let chat_cases: Vec<(&str, &str, Vec<u8>, Compression, &str)> = vec![
        (
            "family",
            "pack/family/0",
            prost::Message::encode_to_vec(&batch),
            Compression::Auto,
            "ChatBatch of 20 messages, zstd-compressed",
        ),
        (
            "work 🚀",
            "pack/work/0",
            b"raw bytes that do not compress".to_vec(),
            Compression::Never,
            "short opaque body, stored uncompressed",
        ),
        (
            "work 🚀",
            "pack/work/1",
            Vec::new(),
            Compression::Auto,
            "empty body",
        ),
    ];
    for (i, (chat_id, name, plaintext, compression, description)) in
        chat_cases.into_iter().enumerate()
    {
        let key = chat_keys.iter().find(|(id, _)| *id == chat_id).unwrap().1;
        let nonce: [u8; 24] = pattern(30 + i as u8);
        let context = ObjectContext {
            vault_id: vault,
            kind: ObjectKind::ChatData,
            name,
        };
        let object =
            sealing::seal_with_nonce(&Key32::new(key), &context, &plaintext, &nonce, compression)
                .unwrap();
        let mut v = serde_json::Map::new();
        common(&mut v);
        v.insert("description".into(), json!(description));
        v.insert("kind".into(), json!(ObjectKind::ChatData.id()));
        v.insert("name".into(), json!(name));
        v.insert("chat_id".into(), json!(chat_id));
        v.insert("key".into(), json!(hex(&key)));
        v.insert(
            "key_source".into(),
            json!("chat key from the keyring vector"),
        );
        v.insert("nonce".into(), json!(hex(&nonce)));
        v.insert("plaintext".into(), json!(hex(&plaintext)));
        v.insert("object".into(), json!(hex(&object)));
        list.push(Value::Object(v));
    }

    // A passphrase envelope with the cheapest allowed Argon2id parameters (so bindings test fast).
    let passphrase = "correct horse battery staple ✓";
    let salt: [u8; 16] = pattern(40);
    let nonce: [u8; 24] = pattern(41);
    let params = Argon2Params::MIN;
    let envelope =
        PassphraseEnvelope::seal_with(&recovery_key, passphrase, params, &salt, &nonce).unwrap();
    let mut v = serde_json::Map::new();
    common(&mut v);
    v.insert(
        "description".into(),
        json!("passphrase envelope wrapping the recovery key"),
    );
    v.insert("kind".into(), json!(ObjectKind::PassphraseEnvelope.id()));
    v.insert("passphrase".into(), json!(passphrase));
    v.insert(
        "argon2id".into(),
        json!({"memory_kib": params.memory_kib, "iterations": params.iterations, "parallelism": params.parallelism, "salt": hex(&salt)}),
    );
    v.insert("nonce".into(), json!(hex(&nonce)));
    v.insert("plaintext".into(), json!(hex(&recovery_key.to_bytes()[..])));
    v.insert("object".into(), json!(hex(&envelope)));
    list.push(Value::Object(v));

    Value::Array(list)
}

fn vector_files() -> Vec<(&'static str, Value)> {
    vec![
        ("hkdf.json", hkdf_vectors()),
        ("aead.json", aead_vectors()),
        ("recovery_key.json", recovery_key_vectors()),
        ("sealed_objects.json", sealed_object_vectors()),
        ("attachments.json", attachment_vectors()),
        ("sync_objects.json", sync_object_vectors()),
        ("devices.json", devices::device_vectors()),
    ]
}

/// JSON of one operation as its protobuf fields (bytes in hex), for checkers that decode the
/// bodies themselves.
fn operation_json(operation: &crate::sync::Operation) -> Value {
    use crate::sync::Change;
    let stamp = &operation.stamp;
    let mut v = serde_json::Map::new();
    v.insert(
        "stamp".into(),
        json!({"wall_ms": stamp.wall_ms, "counter": stamp.counter, "device_id": hex(&stamp.device.0)}),
    );
    let (field, body) = match &operation.change {
        Change::UpsertChat(chat) => (
            "upsert_chat",
            json!({"chat_id": chat.chat_id, "title": chat.title, "members": chat.members, "payload": hex(&chat.payload)}),
        ),
        Change::UpsertMessage(m) => {
            let mut message = json!({"chat_id": m.chat_id, "message_id": m.message_id, "sender": m.sender, "sent_at_ms": m.sent_at_ms, "text": m.text, "kind": m.kind, "payload": hex(&m.payload)});
            if let Some(reply_to) = &m.reply_to {
                message["reply_to"] = json!(reply_to);
            }
            ("upsert_message", message)
        }
        Change::DeleteMessage {
            chat_id,
            message_id,
        } => (
            "delete_message",
            json!({"chat_id": chat_id, "message_id": message_id}),
        ),
        Change::DeleteChat { chat_id } => ("delete_chat", json!(chat_id)),
    };
    v.insert(field.into(), body);
    Value::Object(v)
}

/// The segment vector's tag, its parent's, the seen segment's and the checkpoint's (random in
/// real objects; fixed here).
const SEGMENT_TAG: u64 = 0x1f2e_3d4c_5b6a_7988;
const PARENT_TAG: u64 = 0x0102_0304_0506_0708;
const SEEN_TAG: u64 = 0x7777_0000_7777_0001;
const CHECKPOINT_TAG: u64 = 0xc0ff_ee00_0000_0001;

fn head_json(head: &crate::sync::segment::Head) -> Value {
    json!({"device_id": hex(&head.device.0), "seq": head.seq, "hash": hex(&head.hash), "tag": head.tag})
}

#[path = "vectors_fork.rs"]
mod fork;

#[path = "vectors_devices.rs"]
mod devices;

/// Fixed nonces for the sync objects: pattern(seed), pattern(seed + 1), ... in the order the
/// sealer asks for them; `used` records them.
struct FixedNonces {
    next_seed: u8,
    used: Vec<[u8; 24]>,
}

impl FixedNonces {
    fn new(first_seed: u8) -> Self {
        Self {
            next_seed: first_seed,
            used: Vec::new(),
        }
    }

    fn next(&mut self) -> crate::Result<[u8; 24]> {
        let nonce = pattern(self.next_seed);
        self.next_seed += 1;
        self.used.push(nonce);
        Ok(nonce)
    }
}

/// A segment (kind 4) with two chat blocks, and a checkpoint (kind 6) with one pack of two
/// blocks (one unranged: metadata and a deletion; one ranged: messages), both sealed with the
/// writers' own code (`seal_segment_with`, `seal_checkpoint_with`) and fixed nonces, so the
/// vectors follow any change to how these objects are built once regenerated.
fn sync_object_vectors() -> Value {
    use crate::sync::next_checkpoint::{ChatContent, CheckpointInput, seal_checkpoint_with};
    use crate::sync::segment::{ChatKeys, Head, NewSegment, seal_segment_with};
    use crate::sync::{Change, Chat, DeviceId, Message, Operation, Stamp};
    use prost::Message as _;
    use sha2::{Digest, Sha256};

    let recovery_key = recovery_keys()[3].clone();
    let keys = VaultKeys::derive(&recovery_key);
    let vault = keys.vault_id();
    let writer = DeviceId(pattern(50));
    let other = DeviceId(pattern(51));
    let chat_key_list: [(&str, [u8; 16], [u8; 32]); 2] = [
        ("family", pattern(60), pattern(61)),
        ("work 🚀", pattern(62), pattern(63)),
    ];
    let mut chat_keys = ChatKeys::new();
    for (chat_id, key_id, key) in &chat_key_list {
        chat_keys
            .insert(*key_id, chat_id, ChatKey::from_bytes(*key), 0)
            .unwrap();
    }
    let chat_keys_json: Vec<Value> = chat_key_list
        .iter()
        .map(|(chat_id, key_id, key)| json!({"chat_id": chat_id, "key_id": hex(key_id), "key": hex(key)}))
        .collect();
    let stamp = |device: DeviceId, i: u32| Stamp {
        wall_ms: 1_700_000_000_000 + u64::from(i) * 1000,
        counter: i,
        device,
    };
    let message = |chat: &str, id: &str, at: i64, reply_to: Option<&str>, kind: &str| {
        Change::UpsertMessage(Message {
            chat_id: chat.into(),
            message_id: id.into(),
            sender: "alice".into(),
            sent_at_ms: at,
            text: format!("{id} says \"hi\" 🎉"),
            reply_to: reply_to.map(str::to_owned),
            attachments: Vec::new(),
            kind: kind.into(),
            payload: if kind == "reaction" {
                vec![0x08, 0x01]
            } else {
                Vec::new()
            },
        })
    };
    let family_chat = Change::UpsertChat(Chat {
        chat_id: "family".into(),
        title: "Family 👪".into(),
        members: vec!["alice".into(), "bob".into()],
        payload: vec![0, 1, 2, 255],
    });
    let changes = vec![
        family_chat.clone(),
        message("family", "m1", 1_700_000_001_000, None, "text"),
        message("work 🚀", "w1", 1_700_000_002_000, None, ""),
        message("family", "m2", 1_700_000_003_000, Some("m1"), "reaction"),
        Change::DeleteMessage {
            chat_id: "family".into(),
            message_id: "m0".into(),
        },
    ];
    let operations: Vec<Operation> = changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| Operation {
            stamp: stamp(writer, i as u32 + 1),
            change,
        })
        .collect();

    // The segment: seq 2 of `writer`, having seen segment 7 of `other`, granting the family key.
    let batch = crate::sync::batch::EncodedBatch::from_operations(&operations);
    let seen = [Head {
        device: other,
        seq: 7,
        tag: SEEN_TAG,
        hash: pattern(53),
    }];
    let prev_hash: [u8; 32] = pattern(52);
    // The writer's device keys (FORMAT.md section 13): it signs the segment.
    let writer_secrets = crate::devices::DeviceSecrets::from_bytes(&{
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&pattern::<32>(54));
        bytes[32..].copy_from_slice(&pattern::<32>(55));
        bytes
    });
    let mut nonces = FixedNonces::new(70);
    let (segment_name, segment_object, segment_hash) = seal_segment_with(
        &keys,
        &chat_keys,
        &NewSegment {
            device: writer,
            seq: 2,
            tag: SEGMENT_TAG,
            previous: Some((PARENT_TAG, prev_hash)),
            seen: &seen,
            grants: &[chat_key_list[0].1],
            operations: &batch,
            device_name: "Alice's phone",
            platform: "ios",
            signer: Some(&writer_secrets),
        },
        &mut || nonces.next(),
    )
    .unwrap();
    assert_eq!(
        <[u8; 32]>::from(Sha256::digest(&segment_object)),
        segment_hash
    );
    let open_under = |key: &Key32, kind: ObjectKind, name: &str, object: &[u8]| {
        let context = ObjectContext {
            vault_id: vault,
            kind,
            name,
        };
        sealing::open(key, &context, object).unwrap().to_vec()
    };
    let segment_body = open_under(
        &keys.log().0,
        ObjectKind::Segment,
        &segment_name,
        &segment_object,
    );
    let key_of = |chat: &str| {
        let (_, key_id, key) = chat_key_list.iter().find(|(c, _, _)| *c == chat).unwrap();
        (*key_id, *key)
    };
    let grant_json = |chat: &str| {
        let (key_id, key) = key_of(chat);
        json!({"chat_id": chat, "key_id": hex(&key_id), "key": hex(&key)})
    };
    let segment_blocks: Vec<Value> = batch
        .chats()
        .enumerate()
        .map(|(i, (chat_id, fragment))| {
            let ops: Vec<Value> = operations
                .iter()
                .filter(|op| op.change.chat_id() == chat_id)
                .map(operation_json)
                .collect();
            json!({
                "name": crate::sync::segment::block_name(&segment_name, i),
                "chat_id": chat_id,
                "key_id": hex(&key_of(chat_id).0),
                "nonce": hex(&nonces.used[i]),
                "body": hex(&crate::sync::batch::EncodedBatch::chat_body(chat_id, fragment)),
                "operations": ops,
            })
        })
        .collect();
    assert_eq!(nonces.used.len(), segment_blocks.len() + 1);
    let segment = json!({
        "description": "segment 2 of a device that saw segment 7 of another, granting one chat key, with blocks for two chats (the second chat's key granted earlier), signed by its writer",
        "signer_verifying_key": hex(&writer_secrets.public().verifying),
        "name": segment_name,
        "tag": format!("{SEGMENT_TAG:016x}"),
        "parent_tag": format!("{PARENT_TAG:016x}"),
        "nonce": hex(nonces.used.last().unwrap()),
        "body": hex(&segment_body),
        "object": hex(&segment_object),
        "hash": hex(&segment_hash),
        "fields": {
            "device_id": hex(&writer.0),
            "seq": 2,
            "prev_hash": hex(&prev_hash),
            "seen": seen.iter().map(head_json).collect::<Vec<_>>(),
            "keys": [grant_json("family")],
            "device_name": "Alice's phone",
            "platform": "ios",
        },
        "blocks": segment_blocks,
    });

    // The checkpoint: seq 1 of `other`, covering both devices, holding the family chat (its
    // winning operations from the segment) and one deleted chat.
    let covered = [
        Head {
            device: writer,
            seq: 2,
            tag: SEGMENT_TAG,
            hash: segment_hash,
        },
        seen[0],
    ];
    let deleted_chats = [("old chat".to_owned(), stamp(other, 9))];
    let family: Vec<Operation> = operations
        .iter()
        .filter(|op| op.change.chat_id() == "family")
        .cloned()
        .collect();
    // The checkpoint's writer signs its index (section 9.5) with its own device key.
    let other_secrets = crate::devices::DeviceSecrets::from_bytes(&{
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&pattern::<32>(56));
        bytes[32..].copy_from_slice(&pattern::<32>(57));
        bytes
    });
    let mut nonces = FixedNonces::new(90);
    let sealed = seal_checkpoint_with(
        &keys,
        &CheckpointInput {
            device: other,
            seq: 1,
            tag: CHECKPOINT_TAG,
            covered: &covered,
            chat_keys: &chat_keys,
            deleted_chats: &deleted_chats,
            created_at_ms: 1_700_000_100_000,
            signer: Some(&other_secrets),
        },
        [Ok(ChatContent {
            chat_id: "family".into(),
            operations: family.clone(),
        })],
        &mut || nonces.next(),
    )
    .unwrap();
    let index_body = open_under(
        &keys.log().0,
        ObjectKind::CheckpointIndex,
        &sealed.index_name,
        &sealed.index,
    );
    let index = proto::CheckpointIndex::decode(&index_body[..]).unwrap();
    // Blocks in the writer's order: metadata and deletions unranged, then messages by position.
    let (mut ranged, unranged): (Vec<&Operation>, Vec<&Operation>) = family
        .iter()
        .partition(|op| matches!(op.change, Change::UpsertMessage(_)));
    ranged.sort_by_key(|op| match &op.change {
        Change::UpsertMessage(m) => (m.sent_at_ms, m.message_id.clone()),
        _ => (0, String::new()),
    });
    let expected_blocks = [unranged, ranged];
    assert_eq!(index.chats.len(), expected_blocks.len());
    assert_eq!(sealed.packs.len(), 1);
    let position = |p: &Option<proto::HistoryPosition>| {
        p.as_ref()
            .map(|p| json!({"sent_at_ms": p.sent_at_ms, "message_id": p.message_id}))
    };
    let checkpoint_blocks: Vec<Value> = index
        .chats
        .iter()
        .zip(&expected_blocks)
        .enumerate()
        .map(|(i, (entry, ops))| {
            let pack = &sealed.packs[entry.pack as usize].1;
            let bytes = &pack[entry.offset as usize..(entry.offset + entry.length) as usize];
            let block_id: [u8; 16] = entry.block_id.as_slice().try_into().unwrap();
            let name = crate::sync::checkpoint::block_name(&block_id);
            let (_, key) = key_of(&entry.chat_id);
            json!({
                "name": name,
                "chat_id": entry.chat_id,
                "key_id": hex(&entry.key_id),
                "nonce": hex(&nonces.used[i]),
                "body": hex(&open_under(&Key32::new(key), ObjectKind::ChatData, &name, bytes)),
                "operations": ops.iter().map(|op| operation_json(op)).collect::<Vec<_>>(),
            })
        })
        .collect();
    assert_eq!(nonces.used.len(), checkpoint_blocks.len() + 1);
    let checkpoint = json!({
        "description": "checkpoint 1 of the other device, signed with its device key: one pack with two blocks of the family chat (metadata and a deletion without a range, then two messages with their range) and one deleted chat",
        "name": sealed.index_name,
        "tag": format!("{CHECKPOINT_TAG:016x}"),
        "nonce": hex(nonces.used.last().unwrap()),
        "body": hex(&index_body),
        "object": hex(&sealed.index),
        "signer_verifying_key": hex(&other_secrets.public().verifying),
        "fields": {
            "device_id": hex(&other.0),
            "seq": 1,
            "covered": covered.iter().map(head_json).collect::<Vec<_>>(),
            "keys": [grant_json("family")],
            "packs": index.packs.iter().map(|p| json!({"name": p.name, "size": p.size})).collect::<Vec<_>>(),
            "chats": index.chats.iter().map(|c| {
                let mut v = json!({"chat_id": c.chat_id, "key_id": hex(&c.key_id), "pack": c.pack, "offset": c.offset, "length": c.length, "block_id": hex(&c.block_id), "hash": hex(&c.hash)});
                if let Some(first) = position(&c.first) { v["first"] = first; }
                if let Some(last) = position(&c.last) { v["last"] = last; }
                v
            }).collect::<Vec<_>>(),
            "deleted_chats": deleted_chats.iter().map(|(chat_id, s)| json!({"chat_id": chat_id, "stamp": {"wall_ms": s.wall_ms, "counter": s.counter, "device_id": hex(&s.device.0)}})).collect::<Vec<_>>(),
            "created_at_ms": 1_700_000_100_000u64,
        },
        "packs": sealed.packs.iter().map(|(name, bytes)| json!({"name": name, "object": hex(bytes)})).collect::<Vec<_>>(),
        "blocks": checkpoint_blocks,
    });
    json!({
        "description": "sync objects (section 9): a segment (kind 4) and a checkpoint index (kind 6) with its pack, sealed with fixed nonces pattern(70), pattern(71), ... and pattern(90), ... in the order the writer seals (chat blocks, then the outer object); segment chat blocks are kind 2 under their chat key, named <segment name>#<block>; checkpoint chat blocks are kind 2 under their chat key, named blocks/<block id hex>, the block id being the first 16 bytes of the block's nonce; `fields` and `operations` give the decoded protobuf fields (bytes in hex; an absent field reads as its protobuf default)",
        "recovery_key": hex(&recovery_key.to_bytes()[..]),
        "recovery_key_text": recovery_key.to_text().as_str(),
        "vault_id": vault.to_hex(),
        "log_key": hex(keys.log().0.bytes()),
        "chat_keys": chat_keys_json,
        "segment": segment,
        "fork": fork::fork_vectors(&keys, &chat_keys),
        "checkpoint": checkpoint,
    })
}

/// Attachment content as STREAM chunk objects: content ids, file keys, every chunk object, and
/// the reference a message carries. Content byte i = (i * 7 + seed) mod 256.
fn attachment_vectors() -> Value {
    use crate::attachment::{Attachment, ContentHasher, stream};
    use prost::Message as _;
    let recovery_key = RecoveryKey::from_bytes(pattern(5));
    let keys = VaultKeys::derive(&recovery_key);
    let chunk_size = crate::attachment::MIN_CHUNK_SIZE;
    let cases: [(u8, usize, &str, &str); 3] = [
        (0, 0, "empty.txt", "text/plain"),
        (1, 5, "hello.txt", "text/plain"),
        (2, chunk_size as usize + 100, "photo.jpg", "image/jpeg"),
    ];
    let list = cases
        .iter()
        .map(|&(seed, len, name, mime)| {
            let content: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
                .collect();
            let mut hasher = ContentHasher::new(keys.attachment(), chunk_size);
            hasher.update(&content);
            let attachment = Attachment {
                content_id: hasher.finish(),
                size: len as u64,
                chunk_size,
                name: name.into(),
                mime: mime.into(),
                key_epoch: 0,
            };
            let file_key = stream::file_key(keys.attachment(), &attachment.content_id);
            let mut padded = content.clone();
            padded.resize(stream::stream_len(len as u64) as usize, 0);
            let count = attachment.chunk_count();
            let chunks: Vec<Value> = padded
                .chunks(chunk_size as usize)
                .enumerate()
                .map(|(i, plain)| {
                    let index = i as u64;
                    let last = index + 1 == count;
                    let object =
                        stream::seal_chunk(&file_key, keys.vault_id(), index, last, plain).unwrap();
                    json!({
                        "name": attachment.chunk_name(index),
                        "index": index,
                        "last": last,
                        "object": hex(&object),
                    })
                })
                .collect();
            json!({
                "description": format!("{len}-byte content in {count} chunk(s)"),
                "seed": seed,
                "size": len,
                "chunk_size": chunk_size,
                "name": name,
                "mime": mime,
                "content_id": attachment.content_id.to_hex(),
                "file_key": hex(file_key.bytes()),
                "stream_len": stream::stream_len(len as u64),
                "chunks": chunks,
                "reference_proto": hex(&attachment.to_proto().encode_to_vec()),
            })
        })
        .collect::<Vec<_>>();
    json!({
        "description": "attachment content: content id = HMAC-SHA256(attachment key, label || 0 || chunk_size u32 BE || content); chunks sealed with XChaCha20-Poly1305 under the file key, nonce = 15 zero bytes || index u64 BE || last flag, aad = header (suite 2, kind 7) || vault id; content byte i = (i * 7 + seed) mod 256",
        "recovery_key": hex(&recovery_key.to_bytes()[..]),
        "recovery_key_text": recovery_key.to_text().as_str(),
        "vault_id": keys.vault_id().to_hex(),
        "attachment_key": hex(keys.attachment().0.bytes()),
        "prefix": format!("{}{}", keys.vault_id().to_hex(), crate::attachment::ATTACHMENTS_SUFFIX),
        "cases": list,
    })
}

#[test]
fn vectors_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let update = std::env::var_os("CHATVAULT_UPDATE_VECTORS").is_some();
    for (file, value) in vector_files() {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "tests/vectors/{file} differs from the generator: run CHATVAULT_UPDATE_VECTORS=1 cargo test --lib vectors"
        );
    }
}
