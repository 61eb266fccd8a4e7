//! Checks `tests/vectors/*.json` through the public API only, as a binding or an independent
//! implementation would. (The files themselves are generated and pinned by `src/vectors.rs`.)

use chatvault::keyring::Keyring;
use chatvault::keys::{
    DERIVATION_LABELS, HKDF_SALT, PassphraseEnvelope, RECOVERY_LABELS, RECOVERY_SALT, RecoveryKey,
    VaultKeys,
};
use chatvault::{Error, RecoveryKeyError};
use serde_json::Value;

mod common;
use common::cached;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(value: &Value) -> Vec<u8> {
    hex::decode(value.as_str().unwrap()).unwrap()
}

fn key_of(value: &Value) -> RecoveryKey {
    RecoveryKey::from_bytes(bytes(value).try_into().unwrap())
}

/// A new device on `store` (its state in a fresh temporary directory) after its first sync.
async fn synced_new_device(
    store: std::sync::Arc<dyn chatvault::store::ObjectStore>,
    key: &RecoveryKey,
) -> (tempfile::TempDir, chatvault::vault::Vault) {
    let dir = tempfile::tempdir().unwrap();
    let info = chatvault::vault::DeviceInfo {
        name: "new".into(),
        platform: "test".into(),
    };
    let fresh = cached(
        chatvault::vault::Vault::open(store, dir.path(), info, key)
            .await
            .unwrap(),
    );
    fresh.sync(None, None).await.unwrap();
    (dir, fresh)
}

#[test]
fn recovery_key_texts() {
    let v = load("recovery_key.json");
    for case in v["valid"].as_array().unwrap() {
        let key = key_of(&case["bytes"]);
        assert_eq!(key.to_text().as_str(), case["text"].as_str().unwrap());
        assert_eq!(
            RecoveryKey::parse(case["text"].as_str().unwrap()).unwrap(),
            key
        );
    }
    assert!(!v["lenient"].as_array().unwrap().is_empty());
    for case in v["lenient"].as_array().unwrap() {
        let parsed = RecoveryKey::parse(case["text"].as_str().unwrap()).unwrap();
        assert_eq!(parsed, key_of(&case["bytes"]));
    }
    let invalid = v["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 8);
    for case in invalid {
        let text = case["text"].as_str().unwrap();
        let reason = match RecoveryKey::parse(text) {
            Err(Error::RecoveryKeyMistyped(e)) => match e {
                RecoveryKeyError::WrongLength { .. } => "wrong_length",
                RecoveryKeyError::InvalidCharacter { .. } => "invalid_character",
                RecoveryKeyError::ChecksumMismatch => "checksum_mismatch",
                RecoveryKeyError::UnsupportedVersion(_) => "unsupported_version",
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("{text:?} gave {other:?}"),
        };
        assert_eq!(reason, case["reason"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn hkdf_vectors_cover_every_label_and_match_the_key_tree() {
    let v = load("hkdf.json");
    let list = v.as_array().unwrap();
    let labels = DERIVATION_LABELS
        .iter()
        .map(|label| (HKDF_SALT, label))
        .chain(RECOVERY_LABELS.iter().map(|label| (RECOVERY_SALT, label)));
    for (salt, (label, length)) in labels {
        let hits: Vec<&Value> = list
            .iter()
            .filter(|c| bytes(&c["info"]) == label.as_bytes())
            .collect();
        assert!(!hits.is_empty(), "no vector for {label}");
        for case in hits {
            assert_eq!(case["length"].as_u64().unwrap() as usize, *length);
            assert_eq!(bytes(&case["salt"]), salt);
        }
    }
    // The vault id is public, so it can be checked against the vectors through the API.
    for case in list {
        if bytes(&case["info"]) == b"chatvault/v1/vault-id" {
            let keys = VaultKeys::derive(&key_of(&case["ikm"]));
            assert_eq!(keys.vault_id().as_bytes().to_vec(), bytes(&case["okm"]));
        }
    }
}

#[test]
fn sealed_objects_open_through_the_public_api() {
    let v = load("sealed_objects.json");
    let mut keyring = None;
    let mut opened = 0;
    for case in v.as_array().unwrap() {
        let recovery_key = RecoveryKey::parse(case["recovery_key_text"].as_str().unwrap()).unwrap();
        assert_eq!(recovery_key, key_of(&case["recovery_key"]));
        let keys = VaultKeys::derive(&recovery_key);
        assert_eq!(keys.vault_id().to_hex(), case["vault_id"].as_str().unwrap());
        let object = bytes(&case["object"]);
        let plaintext = bytes(&case["plaintext"]);
        match case["kind"].as_u64().unwrap() {
            1 => {
                let ring = Keyring::open(&keys, case["name"].as_str().unwrap(), &object).unwrap();
                let ids: Vec<&str> = case["chat_keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["chat_id"].as_str().unwrap())
                    .collect();
                assert_eq!(ring.chat_ids().collect::<Vec<_>>(), ids);
                keyring = Some(ring);
            }
            2 => {
                let ring = keyring.as_ref().expect("keyring vector comes first");
                let body = ring
                    .open_chat_data(
                        &keys,
                        case["chat_id"].as_str().unwrap(),
                        case["name"].as_str().unwrap(),
                        &object,
                    )
                    .unwrap();
                assert_eq!(&body[..], &plaintext[..]);
                // The same bytes under another name do not open.
                assert!(
                    ring.open_chat_data(
                        &keys,
                        case["chat_id"].as_str().unwrap(),
                        "elsewhere",
                        &object
                    )
                    .is_err()
                );
            }
            3 => {
                let key = PassphraseEnvelope::open(
                    &object,
                    keys.vault_id(),
                    case["passphrase"].as_str().unwrap(),
                )
                .unwrap();
                assert_eq!(key.to_bytes().to_vec(), plaintext);
                assert!(matches!(
                    PassphraseEnvelope::open(&object, keys.vault_id(), "not the passphrase"),
                    Err(Error::WrongPassphrase)
                ));
            }
            other => panic!("unknown kind {other}"),
        }
        opened += 1;
    }
    assert_eq!(opened, 5);
}

/// The attachment vectors' chunk objects, laid out in a directory store as a bucket would hold
/// them, download through a vault opened with the vector's recovery key; a chunk moved to
/// another index fails.
#[tokio::test]
async fn attachment_chunks_download_through_the_public_api() {
    use chatvault::attachment::{Attachment, ContentId};
    use chatvault::store::{DirectoryStore, ObjectStore};
    use chatvault::vault::{CancelToken, DeviceInfo, Vault};

    let v = load("attachments.json");
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let prefix = v["prefix"].as_str().unwrap();
    let info = DeviceInfo {
        name: "vectors".into(),
        platform: "test".into(),
    };
    let vault = cached(
        Vault::open(
            store.clone(),
            &dir.path().join("state"),
            info,
            &key_of(&v["recovery_key"]),
        )
        .await
        .unwrap(),
    );
    assert_eq!(vault.vault_id(), v["vault_id"].as_str().unwrap());
    for case in v["cases"].as_array().unwrap() {
        for chunk in case["chunks"].as_array().unwrap() {
            let name = format!("{prefix}{}", chunk["name"].as_str().unwrap());
            store.put(&name, bytes(&chunk["object"])).await.unwrap();
        }
        let size = case["size"].as_u64().unwrap();
        let seed = case["seed"].as_u64().unwrap() as u8;
        let content: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        let attachment = Attachment {
            content_id: ContentId::from_hex(case["content_id"].as_str().unwrap()).unwrap(),
            size,
            chunk_size: case["chunk_size"].as_u64().unwrap() as u32,
            name: case["name"].as_str().unwrap().into(),
            mime: case["mime"].as_str().unwrap().into(),
            key_epoch: 0,
        };
        let out = dir.path().join(case["name"].as_str().unwrap());
        vault
            .download_attachment(&attachment, &out, None, &CancelToken::new())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), content);
    }
    // The two-chunk case with its chunks exchanged: the short last chunk no longer has the length
    // its position needs (rejected before decryption), the first fails authentication.
    let case = &v["cases"][2];
    let chunks = case["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 2);
    for (at, from) in [(0, 1), (1, 0)] {
        let name = format!("{prefix}{}", chunks[at]["name"].as_str().unwrap());
        store
            .put(&name, bytes(&chunks[from]["object"]))
            .await
            .unwrap();
    }
    let attachment = Attachment {
        content_id: ContentId::from_hex(case["content_id"].as_str().unwrap()).unwrap(),
        size: case["size"].as_u64().unwrap(),
        chunk_size: case["chunk_size"].as_u64().unwrap() as u32,
        name: String::new(),
        mime: String::new(),
        key_epoch: 0,
    };
    let error = vault
        .download_attachment(
            &attachment,
            &dir.path().join("swapped"),
            None,
            &CancelToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Decode {
                problem: chatvault::DecodeProblem::Truncated { .. }
                    | chatvault::DecodeProblem::AuthenticationFailed,
                ..
            }
        ),
        "{error:?}"
    );
}

/// The segment vector opens with the public reader: its name, hash, chain and claims are the
/// ones the vector lists, and it is refused under its successor's name.
#[test]
fn the_segment_vector_opens_through_the_public_api() {
    use chatvault::sync::segment::open_segment;
    let v = load("sync_objects.json");
    let keys =
        VaultKeys::derive(&RecoveryKey::parse(v["recovery_key_text"].as_str().unwrap()).unwrap());
    let segment = &v["segment"];
    let fields = &segment["fields"];
    let name = segment["name"].as_str().unwrap();
    let object = bytes(&segment["object"]);
    let opened = open_segment(&keys, name, &object).unwrap();
    // Signed by its writer, and by nobody else.
    let signer: [u8; 32] = bytes(&segment["signer_verifying_key"]).try_into().unwrap();
    assert!(opened.signed_by(keys.vault_id(), &signer));
    let mut other = signer;
    other[0] ^= 1;
    assert!(!opened.signed_by(keys.vault_id(), &other));
    assert_eq!(opened.head.device.0.to_vec(), bytes(&fields["device_id"]));
    assert_eq!(opened.head.seq, fields["seq"].as_u64().unwrap());
    assert_eq!(opened.head.hash.to_vec(), bytes(&segment["hash"]));
    assert_eq!(
        opened.prev_hash.unwrap().to_vec(),
        bytes(&fields["prev_hash"])
    );
    let seen: Vec<(Vec<u8>, u64, Vec<u8>)> = opened
        .seen
        .iter()
        .map(|h| (h.device.0.to_vec(), h.seq, h.hash.to_vec()))
        .collect();
    let listed: Vec<(Vec<u8>, u64, Vec<u8>)> = fields["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                bytes(&h["device_id"]),
                h["seq"].as_u64().unwrap(),
                bytes(&h["hash"]),
            )
        })
        .collect();
    assert_eq!(seen, listed);
    let grants: Vec<(Vec<u8>, &str)> = opened
        .grants
        .iter()
        .map(|grant| (grant.key_id.to_vec(), grant.chat_id.as_str()))
        .collect();
    let granted: Vec<(Vec<u8>, &str)> = fields["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (bytes(&g["key_id"]), g["chat_id"].as_str().unwrap()))
        .collect();
    assert_eq!(grants, granted);
    let block_keys: Vec<Vec<u8>> = opened.blocks.iter().map(|(id, _)| id.to_vec()).collect();
    let listed_keys: Vec<Vec<u8>> = segment["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| bytes(&b["key_id"]))
        .collect();
    assert_eq!(block_keys, listed_keys);
    assert_eq!(opened.device_name, fields["device_name"].as_str().unwrap());
    assert_eq!(opened.platform, fields["platform"].as_str().unwrap());
    let successor = name.replace("0000000000000002", "0000000000000003");
    assert!(open_segment(&keys, &successor, &object).is_err());
}

/// The checkpoint vector, laid out in a bucket as a writer leaves it after garbage collection
/// (the index and its pack, no segments), restores a new device: the family chat with the
/// messages the vector's blocks hold.
#[tokio::test]
async fn the_checkpoint_vector_restores_a_new_device() {
    use chatvault::store::{MemoryStore, ObjectStore};
    use std::sync::Arc;
    let v = load("sync_objects.json");
    let key = RecoveryKey::parse(v["recovery_key_text"].as_str().unwrap()).unwrap();
    let vault_id = v["vault_id"].as_str().unwrap();
    let checkpoint = &v["checkpoint"];
    let store = Arc::new(MemoryStore::new());
    store
        .put(
            &format!("{vault_id}/{}", checkpoint["name"].as_str().unwrap()),
            bytes(&checkpoint["object"]),
        )
        .await
        .unwrap();
    for pack in checkpoint["packs"].as_array().unwrap() {
        store
            .put(
                &format!("{vault_id}/{}", pack["name"].as_str().unwrap()),
                bytes(&pack["object"]),
            )
            .await
            .unwrap();
    }
    let (_dir, fresh) = synced_new_device(store.clone(), &key).await;
    let chats = fresh.chats().unwrap();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].chat.title, "Family 👪");
    let restored: Vec<(String, String, Option<String>)> = fresh
        .messages(None)
        .unwrap()
        .into_iter()
        .map(|m| (m.message_id, m.text, m.reply_to))
        .collect();
    let mut expected = Vec::new();
    for block in checkpoint["blocks"].as_array().unwrap() {
        for operation in block["operations"].as_array().unwrap() {
            if let Some(m) = operation.get("upsert_message") {
                expected.push((
                    m["message_id"].as_str().unwrap().to_owned(),
                    m["text"].as_str().unwrap().to_owned(),
                    m.get("reply_to").map(|r| r.as_str().unwrap().to_owned()),
                ));
            }
        }
    }
    assert_eq!(expected.len(), 2);
    assert_eq!(restored, expected);
    assert_eq!(fresh.verify().await.unwrap().checkpoints, 1);
}

/// The forked-tree vector: a new device applies both branches from the segments alone, and
/// again from the checkpoint covering both tips once the segments are gone; `verify` passes
/// on both.
#[tokio::test]
async fn the_forked_tree_vector_restores_both_branches() {
    use chatvault::store::{MemoryStore, ObjectStore};
    use std::sync::Arc;
    let v = load("sync_objects.json");
    let key = RecoveryKey::parse(v["recovery_key_text"].as_str().unwrap()).unwrap();
    let vault_id = v["vault_id"].as_str().unwrap();
    let fork = &v["fork"];
    let segments = fork["segments"].as_array().unwrap();
    let checkpoint = &fork["checkpoint"];
    let expected: Vec<String> = segments
        .iter()
        .map(|s| s["fields"]["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(expected.len(), 4);
    let two = segments.iter().filter(|s| s["fields"]["seq"] == 2).count();
    assert_eq!(two, 2, "two segments 2 of one device");
    assert_eq!(checkpoint["covered"].as_array().unwrap().len(), 3);
    for with_segments in [true, false] {
        let store = Arc::new(MemoryStore::new());
        let mut objects = vec![(checkpoint["name"].clone(), checkpoint["object"].clone())];
        for pack in checkpoint["packs"].as_array().unwrap() {
            objects.push((pack["name"].clone(), pack["object"].clone()));
        }
        if with_segments {
            objects.extend(
                segments
                    .iter()
                    .map(|s| (s["name"].clone(), s["object"].clone())),
            );
        }
        for (name, object) in objects {
            let name = format!("{vault_id}/{}", name.as_str().unwrap());
            store.put(&name, bytes(&object)).await.unwrap();
        }
        let (_dir, fresh) = synced_new_device(store.clone(), &key).await;
        let mut restored: Vec<String> = fresh
            .messages(None)
            .unwrap()
            .into_iter()
            .map(|m| m.message_id)
            .filter(|id| id.starts_with("fork-"))
            .collect();
        restored.sort();
        assert_eq!(restored, expected, "with segments: {with_segments}");
        let report = fresh.verify().await.unwrap();
        assert_eq!(report.segments, if with_segments { 4 } else { 0 });
    }
}

/// A segment written in key epoch 1: it opens with a key set holding epoch 1 (and not with epoch
/// 0's tree alone), its chat key is granted as one of epoch 1, and its message's attachment names
/// epoch 1.
#[test]
fn the_epoch_segment_vector_opens_in_its_epoch() {
    use chatvault::keys::{HeldEpochs, RecoveryKey, VaultKeys};
    use chatvault::sync::segment::open_segment;

    let v = load("devices.json");
    let s = &v["epoch_segment"];
    let rk: [u8; 32] = bytes(&v["epoch"]["recovery_key"]).try_into().unwrap();
    let zero = VaultKeys::derive(&RecoveryKey::from_bytes(rk));
    let name = s["name"].as_str().unwrap();
    let object = bytes(&s["object"]);
    assert!(open_segment(&zero, name, &object).is_err());
    let secret: [u8; 32] = bytes(&s["epoch_secret"]).try_into().unwrap();
    let held = HeldEpochs::new(
        *zero.vault_id(),
        1,
        chatvault::keys::EpochSecret::from_bytes(secret),
    );
    let opened = open_segment(&held, name, &object).unwrap();
    assert_eq!(opened.grants.len(), 1);
    assert_eq!(opened.grants[0].epoch, 1);
    assert_eq!(opened.grants[0].key_id.to_vec(), bytes(&s["key_id"]));
}

#[test]
fn the_device_and_link_vectors_open_through_the_public_api() {
    use chatvault::devices::{DeviceSecrets, open_box};
    use chatvault::format::ObjectKind;
    use chatvault::link::LinkOffer;

    let v = load("devices.json");
    let d = &v["device"];
    let raw: [u8; 64] = bytes(&d["secret_bytes"]).try_into().unwrap();
    let device = DeviceSecrets::from_bytes(&raw);
    let public = device.public();
    assert_eq!(public.agreement.to_vec(), bytes(&d["agreement_public"]));
    assert_eq!(public.verifying.to_vec(), bytes(&d["verifying_public"]));
    let signature: [u8; 64] = bytes(&d["signature"]).try_into().unwrap();
    assert_eq!(device.sign(&bytes(&d["message"])), signature);
    public
        .verify(ObjectKind::Segment, &bytes(&d["message"]), &signature)
        .unwrap();

    let b = &v["key_box"];
    let opened = open_box(
        &device,
        ObjectKind::KeyBox,
        &bytes(&b["context"]),
        &bytes(&b["box"]),
    )
    .unwrap();
    assert_eq!(opened.to_vec(), bytes(&b["plaintext"]));

    // The roster: the recovery key added the device above, which added a second one.
    use chatvault::sync::roster::{SignedEntry, fold};
    let r = &v["roster"];
    let vault = chatvault::keys::VaultId::from_bytes(bytes(&r["vault_id"]).try_into().unwrap());
    let recovery_key = RecoveryKey::from_bytes(bytes(&r["recovery_key"]).try_into().unwrap());
    let recovery = chatvault::devices::RecoverySigner::derive(&recovery_key).verifying_key();
    assert_eq!(recovery.to_vec(), bytes(&r["recovery_verifying_key"]));
    let entries: Vec<SignedEntry> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            SignedEntry::decode(bytes(&e["id"]).try_into().unwrap(), &bytes(&e["body"])).unwrap()
        })
        .collect();
    let roster = fold(&vault, recovery, entries).unwrap();
    assert!(roster.refused.is_empty());
    assert_eq!(roster.devices.len(), 2);
    assert!(
        roster
            .devices
            .values()
            .any(|d| d.keys == public && d.name == "Anna's phone")
    );

    let k = &v["link"];
    let offer = LinkOffer::parse(k["offer_text"].as_str().unwrap()).unwrap();
    assert_eq!(offer.to_bytes().unwrap(), bytes(&k["offer_bytes"]));
    assert_eq!(offer.offerer_key.to_vec(), bytes(&k["offerer_key"]));
    assert_eq!(offer.link_id.to_vec(), bytes(&k["link_id"]));
    assert_eq!(offer.expires_at_ms, k["expires_at_ms"].as_u64().unwrap());
    assert_eq!(offer.vault_id.to_hex(), k["vault_id"].as_str().unwrap());
    assert_eq!(offer.app_data, bytes(&k["app_data"]));
}
