//! Device and link vectors (docs/DEVICES.md; FORMAT.md section 13): device keys from their 64
//! bytes, an Ed25519 signature, a key box with a fixed ephemeral key, and a whole link exchange
//! with fixed ephemeral keys (offer bytes and text, check code, one message each way).

use serde_json::{Value, json};

use super::{hex, pattern};
use crate::devices::{DeviceSecrets, NewEpoch, seal_to_with_ephemeral};
use crate::keys::{EpochSecret, RecoveryKey, VaultId};
use crate::link::{Channel, Ephemeral, LinkOffer};
use crate::sync::DeviceId;
use crate::sync::roster::{RosterChange, RosterEntry, SignedEntry, Signer};

pub(super) fn device_vectors() -> Value {
    let device_bytes: [u8; 64] = pattern(90);
    let device = DeviceSecrets::from_bytes(&device_bytes);
    let public = device.public();
    let message = b"chatvault device signature vector";

    let ephemeral: [u8; 32] = pattern(91);
    let context = b"epochs/0000000000000001/box/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    let secret: [u8; 32] = pattern(92);
    let boxed = seal_to_with_ephemeral(&ephemeral, &public.agreement, context, &secret)
        .expect("a box to a valid key seals");

    let offerer_secret: [u8; 32] = pattern(93);
    let joiner_secret: [u8; 32] = pattern(94);
    let offerer = Ephemeral::from_bytes(offerer_secret);
    let joiner_key = Ephemeral::from_bytes(joiner_secret);
    let offer = LinkOffer {
        offerer_key: offerer.public(),
        link_id: pattern(95),
        expires_at_ms: 1_700_000_300_000,
        vault_id: VaultId::from_bytes(pattern(96)),
        app_data: b"app: bucket eu-1/photos".to_vec(),
    };
    let joiner_public = joiner_key.public();
    let mut joiner = Channel::joiner(joiner_key, &offer).expect("a valid offer");
    let mut offering =
        Channel::offerer(offerer, &offer, &joiner_public).expect("a valid joiner key");
    offering
        .confirm_check_code(&joiner.check_code())
        .expect("the joiner's code");
    let join_plaintext = b"joiner's device record".to_vec();
    let welcome_plaintext = b"welcome: roster head and epoch box".to_vec();
    let join = joiner.seal(&join_plaintext).expect("seals");
    let welcome = offering.seal(&welcome_plaintext).expect("seals");
    let second_join = joiner.seal(b"second").expect("seals");

    // A roster of two entries: the recovery signing key adds the device above, which adds a
    // second device.
    let vault = VaultId::from_bytes(pattern(97));
    let recovery_bytes: [u8; 32] = pattern(102);
    let recovery_key = RecoveryKey::from_bytes(recovery_bytes);
    let recovery = crate::devices::RecoverySigner::derive(&recovery_key);
    let first_device = DeviceId(pattern(99));
    let second = DeviceSecrets::from_bytes(&pattern(100));
    // A device may add only the id the added device's key certifies.
    let second_device = DeviceId::of_keys(&second.public());
    let add_first = SignedEntry::sign(
        &vault,
        RosterEntry {
            signer: Signer::Recovery,
            parents: Vec::new(),
            made_at_ms: 1_700_000_400_000,
            epoch: 0,
            change: RosterChange::Add {
                device: first_device,
                keys: public,
                name: "Anna's phone".into(),
                platform: "ios".into(),
                first_signed_seq: 4,
                // It wrote segments 1 to 3 before it had keys.
                unsigned_tips: vec![crate::sync::segment::Head {
                    device: first_device,
                    seq: 3,
                    tag: 0x3333,
                    hash: pattern(120),
                }],
            },
        },
        |message| recovery.sign(message),
    );
    let add_second = SignedEntry::sign(
        &vault,
        RosterEntry {
            signer: Signer::Device(first_device),
            parents: vec![add_first.id()],
            made_at_ms: 1_700_000_400_001,
            epoch: 0,
            change: RosterChange::Add {
                device: second_device,
                keys: second.public(),
                name: "Anna's tablet".into(),
                platform: "android".into(),
                first_signed_seq: 1,
                unsigned_tips: Vec::new(),
            },
        },
        |message| device.sign(message),
    );
    let roster: Vec<Value> = [&add_first, &add_second]
        .iter()
        .map(|entry| json!({ "id": hex(&entry.id()), "body": hex(&entry.to_body()) }))
        .collect();

    // Epoch 1 of a vault, boxed to the device above and to a second one, chained to epoch 0.
    let epoch_secret_bytes: [u8; 32] = pattern(103);
    let epoch_secret = EpochSecret::from_bytes(epoch_secret_bytes);
    let epoch_name = "epochs/0000000000000001-0d0d000000000001";
    let second_agreement = second.public().agreement;
    let mut randomness = (104u8..).map(pattern::<32>);
    let epoch_object = crate::devices::epoch_with_randomness(
        &NewEpoch {
            name: epoch_name,
            epoch: 1,
            secret: &epoch_secret,
            previous: &EpochSecret::epoch_zero(&recovery_key),
            devices: &[
                (pattern(99), public.agreement),
                (second_device.0, second_agreement),
            ],
            recovery: &crate::devices::recovery_agreement_key(&recovery_key),
        },
        &mut || Ok(randomness.next().unwrap_or_default()),
    )
    .expect("an epoch seals");
    // An object sealed in epoch 1 (version-2 header) under epoch 1's log key.
    let epoch_keys = crate::keys::VaultKeys::for_epoch(
        *crate::keys::VaultKeys::derive(&recovery_key).vault_id(),
        &epoch_secret,
    );
    let sealed_name = "segments/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a/0000000000000001-0000000000000001-0000000000000000";
    let sealed_plaintext = b"a body sealed in key epoch 1".to_vec();
    let sealed_nonce: [u8; 24] = pattern(108);
    let sealed_in_epoch = crate::sealing::seal_with_nonce_in_epoch(
        &epoch_keys.log().0,
        &crate::sealing::ObjectContext {
            vault_id: epoch_keys.vault_id(),
            kind: crate::format::ObjectKind::Segment,
            name: sealed_name,
        },
        1,
        &sealed_plaintext,
        &sealed_nonce,
        crate::sealing::Compression::Never,
    )
    .expect("seals");
    let epoch_segment = epoch_segment(&recovery_key, &epoch_object, &epoch_secret_bytes);

    json!({
        "epoch_segment": epoch_segment,
        "epoch": {
            "name": epoch_name,
            "recovery_key": hex(&recovery_bytes),
            "secret": hex(&epoch_secret_bytes),
            "devices": [
                {"device_id": hex(&pattern::<16>(99)), "agreement_public": hex(&public.agreement), "secret_bytes": hex(&device_bytes)},
                {"device_id": hex(&second_device.0), "agreement_public": hex(&second_agreement), "secret_bytes": hex(&pattern::<64>(100))},
            ],
            "randomness": (104u8..108).map(|seed| hex(&pattern::<32>(seed))).collect::<Vec<_>>(),
            "object": hex(&epoch_object),
            "sealed": {
                "vault_id": epoch_keys.vault_id().to_hex(),
                "kind": crate::format::ObjectKind::Segment.id(),
                "name": sealed_name,
                "nonce": hex(&sealed_nonce),
                "plaintext": hex(&sealed_plaintext),
                "object": hex(&sealed_in_epoch),
            },
        },
        "roster": {
            "vault_id": vault.to_hex(),
            "recovery_key": hex(&recovery_bytes),
            "recovery_verifying_key": hex(&recovery.verifying_key()),
            "entries": roster,
        },
        "device": {
            "secret_bytes": hex(&device_bytes),
            "agreement_public": hex(&public.agreement),
            "verifying_public": hex(&public.verifying),
            "message": hex(message),
            "signature": hex(&device.sign(message)),
        },
        "key_box": {
            "recipient_secret_bytes": hex(&device_bytes),
            "ephemeral_secret": hex(&ephemeral),
            "context": hex(context),
            "plaintext": hex(&secret),
            "box": hex(&boxed),
        },
        "link": {
            "offerer_ephemeral_secret": hex(&offerer_secret),
            "joiner_ephemeral_secret": hex(&joiner_secret),
            "offerer_key": hex(&offer.offerer_key),
            "joiner_key": hex(&joiner_public),
            "link_id": hex(&offer.link_id),
            "expires_at_ms": offer.expires_at_ms,
            "vault_id": offer.vault_id.to_hex(),
            "app_data": hex(&offer.app_data),
            "offer_bytes": hex(&offer.to_bytes().expect("small app data")),
            "offer_text": offer.to_text().expect("small app data"),
            "check_code": joiner.check_code(),
            "messages": [
                {"from": "joiner", "counter": 0, "plaintext": hex(&join_plaintext), "sealed": hex(&join)},
                {"from": "offerer", "counter": 0, "plaintext": hex(&welcome_plaintext), "sealed": hex(&welcome)},
                {"from": "joiner", "counter": 1, "plaintext": hex(b"second"), "sealed": hex(&second_join)},
            ],
        },
    })
}

/// A segment written in epoch 1 (after a revocation), sealed by the writer's own code: version-2
/// header under epoch 1's log key, its chat key granted as a key of epoch 1 (`ChatKeyGrant` field
/// 4), and a message whose attachment is under epoch 1's attachment key (`AttachmentRef` field 6).
fn epoch_segment(
    recovery_key: &crate::keys::RecoveryKey,
    epoch_object: &[u8],
    epoch_secret_bytes: &[u8; 32],
) -> Value {
    use crate::attachment::{Attachment, ContentHasher};
    use crate::keys::{ChatKey, HeldEpochs, VaultKeys};
    use crate::sync::segment::{ChatKeys, NewSegment, seal_segment_with};
    use crate::sync::{Change, Message, Operation, Stamp};

    let zero = VaultKeys::derive(recovery_key);
    let mut held = HeldEpochs::new(*zero.vault_id(), 0, EpochSecret::epoch_zero(recovery_key));
    held.insert(
        1,
        crate::devices::epoch_object_hash(epoch_object),
        true,
        EpochSecret::from_bytes(*epoch_secret_bytes),
    );
    let epoch_keys = VaultKeys::for_epoch(
        *zero.vault_id(),
        &EpochSecret::from_bytes(*epoch_secret_bytes),
    );
    let key_id: [u8; 16] = pattern(110);
    let chat_key: [u8; 32] = pattern(111);
    let mut chat_keys = ChatKeys::new();
    chat_keys
        .insert(key_id, "family", ChatKey::from_bytes(chat_key), 1)
        .expect("a fresh key set");
    let content = b"a photo attached after a revocation".to_vec();
    let chunk_size = crate::attachment::MIN_CHUNK_SIZE;
    let mut hasher = ContentHasher::new(epoch_keys.attachment(), chunk_size);
    hasher.update(&content);
    let attachment = Attachment {
        content_id: hasher.finish(),
        size: content.len() as u64,
        chunk_size,
        name: "photo.jpg".into(),
        mime: "image/jpeg".into(),
        key_epoch: 1,
    };
    let device = DeviceId(pattern(112));
    let operations = vec![Operation {
        stamp: Stamp {
            wall_ms: 1_700_000_100_000,
            counter: 1,
            device,
        },
        change: Change::UpsertMessage(Message {
            chat_id: "family".into(),
            message_id: "p1".into(),
            sender: "alice".into(),
            sent_at_ms: 1_700_000_100_000,
            text: "after the revocation".into(),
            reply_to: None,
            attachments: vec![attachment.clone()],
            kind: String::new(),
            payload: Vec::new(),
        }),
    }];
    let batch = crate::sync::batch::EncodedBatch::from_operations(&operations);
    let mut seed = 113u8;
    let mut nonces = Vec::new();
    let (name, object, _) = seal_segment_with(
        &held,
        &chat_keys,
        &NewSegment {
            device,
            seq: 1,
            tag: 1,
            previous: None,
            seen: &[],
            grants: &[key_id],
            operations: &batch,
            device_name: "Alice's new phone",
            platform: "android",
            signer: None,
        },
        &mut || {
            let nonce: [u8; 24] = pattern(seed);
            seed += 1;
            nonces.push(nonce);
            Ok(nonce)
        },
    )
    .expect("the segment seals");
    json!({
        "vault_id": zero.vault_id().to_hex(),
        "epoch_secret": hex(epoch_secret_bytes),
        "name": name,
        "object": hex(&object),
        "nonces": nonces.iter().map(|n| hex(n)).collect::<Vec<_>>(),
        "key_id": hex(&key_id),
        "chat_key": hex(&chat_key),
        "attachment": {
            "content": hex(&content),
            "chunk_size": chunk_size,
            "content_id": attachment.content_id.to_hex(),
            "key_epoch": 1,
        },
    })
}
