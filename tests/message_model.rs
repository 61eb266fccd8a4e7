//! The open message model: the app's `kind` and `payload` travel through segments, checkpoints
//! and single-chat fetches unchanged, on every store; limits refuse the whole batch.

use std::sync::Arc;

use chatvault::Error;
use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, MemoryStore, ObjectStore, S3Store};
use chatvault::sync::model::{MAX_KIND_LEN, MAX_PAYLOAD_LEN};
use chatvault::sync::{Change, Chat, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;
use common::cached;

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

fn every_byte() -> Vec<u8> {
    (0..=255).collect()
}

fn app_history() -> Vec<Change> {
    vec![
        Change::UpsertChat(Chat {
            chat_id: "c".into(),
            title: "Chat".into(),
            members: vec!["a".into()],
            payload: every_byte(),
        }),
        Change::UpsertMessage(Message {
            chat_id: "c".into(),
            message_id: "plain".into(),
            sent_at_ms: 1,
            text: "no kind, no payload".into(),
            ..Message::default()
        }),
        Change::UpsertMessage(Message {
            chat_id: "c".into(),
            message_id: "sticker".into(),
            sent_at_ms: 2,
            kind: "sticker".into(),
            payload: every_byte().into_iter().rev().collect(),
            ..Message::default()
        }),
        Change::UpsertMessage(Message {
            chat_id: "c".into(),
            message_id: "largest".into(),
            sent_at_ms: 3,
            kind: "k".repeat(MAX_KIND_LEN),
            payload: (0..MAX_PAYLOAD_LEN).map(|i| (i * 7 % 251) as u8).collect(),
            ..Message::default()
        }),
    ]
}

async fn kinds_and_payloads_round_trip(store: Arc<dyn ObjectStore>) {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let phone = cached(
        Vault::open(
            store.clone(),
            &dir.path().join("phone"),
            info("phone"),
            &key,
        )
        .await
        .unwrap(),
    );
    phone.record(app_history()).unwrap();
    phone.sync(None, None).await.unwrap();
    let recorded = phone.messages(Some("c")).unwrap();
    assert_eq!(recorded.len(), 3);

    // Through a segment.
    let tablet = cached(
        Vault::open(store.clone(), &dir.path().join("tablet"), info("t"), &key)
            .await
            .unwrap(),
    );
    tablet.sync(None, None).await.unwrap();
    assert_eq!(tablet.messages(Some("c")).unwrap(), recorded);
    assert_eq!(tablet.chats().unwrap()[0].chat.payload, every_byte());

    // Through a checkpoint, and a single-chat fetch from the bucket.
    tablet.checkpoint().await.unwrap();
    tablet.collect_garbage(0).await.unwrap();
    let laptop = cached(
        Vault::open(store, &dir.path().join("laptop"), info("laptop"), &key)
            .await
            .unwrap(),
    );
    laptop.sync(None, None).await.unwrap();
    assert_eq!(laptop.messages(Some("c")).unwrap(), recorded);
    assert_eq!(laptop.chats().unwrap()[0].chat.payload, every_byte());
    assert_eq!(laptop.fetch_chat("c").await.unwrap(), recorded);
}

#[tokio::test]
async fn kinds_and_payloads_round_trip_in_memory() {
    kinds_and_payloads_round_trip(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn kinds_and_payloads_round_trip_through_a_directory() {
    let bucket = tempfile::tempdir().unwrap();
    kinds_and_payloads_round_trip(Arc::new(DirectoryStore::new(bucket.path().to_path_buf()))).await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn kinds_and_payloads_round_trip_on_garage() {
    if let Some(config) = common::s3_server("GARAGE") {
        kinds_and_payloads_round_trip(Arc::new(S3Store::new(config).unwrap())).await;
    }
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn kinds_and_payloads_round_trip_on_moto() {
    if let Some(config) = common::s3_server("MOTO") {
        kinds_and_payloads_round_trip(Arc::new(S3Store::new(config).unwrap())).await;
    }
}

#[tokio::test]
async fn a_field_over_its_limit_records_nothing_of_the_batch() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let vault = cached(
        Vault::open(store, dir.path(), info("phone"), &key)
            .await
            .unwrap(),
    );
    let fine = Change::UpsertMessage(Message {
        chat_id: "c".into(),
        message_id: "fine".into(),
        ..Message::default()
    });
    let too_big_message = Change::UpsertMessage(Message {
        chat_id: "c".into(),
        message_id: "big".into(),
        payload: vec![0; MAX_PAYLOAD_LEN + 1],
        ..Message::default()
    });
    let too_long_kind = Change::UpsertMessage(Message {
        chat_id: "c".into(),
        message_id: "kind".into(),
        kind: "x".repeat(MAX_KIND_LEN + 1),
        ..Message::default()
    });
    let too_big_chat = Change::UpsertChat(Chat {
        chat_id: "c".into(),
        payload: vec![0; MAX_PAYLOAD_LEN + 1],
        ..Chat::default()
    });
    for (bad, field, size, limit) in [
        (
            too_big_message,
            "payload",
            MAX_PAYLOAD_LEN + 1,
            MAX_PAYLOAD_LEN,
        ),
        (too_long_kind, "kind", MAX_KIND_LEN + 1, MAX_KIND_LEN),
        (
            too_big_chat,
            "payload",
            MAX_PAYLOAD_LEN + 1,
            MAX_PAYLOAD_LEN,
        ),
    ] {
        match vault.record(vec![fine.clone(), bad]) {
            Err(Error::TooLarge {
                field: f,
                size: s,
                limit: l,
            }) => assert_eq!((f, s, l), (field, size as u64, limit as u64)),
            other => panic!("expected TooLarge for {field}, got {other:?}"),
        }
        assert_eq!(vault.pending_operations().unwrap(), 0);
        assert!(vault.messages(None).unwrap().is_empty());
    }
    vault.record(vec![fine]).unwrap();
    assert_eq!(vault.pending_operations().unwrap(), 1);
}
