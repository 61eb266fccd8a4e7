//! Checkpoints built from the previous checkpoint plus the segments after it, on a real store:
//! their cost follows what is new (not the vault), a device without the content cache writes
//! them, new devices restore from them, and garbage collection keeps every pack the newest
//! index references.

use std::collections::BTreeSet;
use std::sync::Arc;

use chatvault::keys::{RecoveryKey, VaultKeys};
use chatvault::local::CacheSetting;
use chatvault::store::{DirectoryStore, ObjectStore, S3Store};
use chatvault::sync::checkpoint::open_checkpoint_index;
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;
use common::cached;

async fn device(
    store: Arc<dyn ObjectStore>,
    key: &RecoveryKey,
    dir: &tempfile::TempDir,
    name: &str,
) -> Vault {
    let info = DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    };
    cached(
        Vault::open(store, &dir.path().join(name), info, key)
            .await
            .unwrap(),
    )
}

/// `count` messages of `chat` from position `from`, each with 200 bytes of text.
fn messages(chat: &str, from: u32, count: u32) -> Vec<Change> {
    (from..from + count)
        .map(|i| {
            // xorshift letters: about as compressible as real text in a language zstd
            // has not seen (a fifth smaller), unlike repeated words.
            let mut state = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let words: String = (0..200)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"abcdefghijklmnopqrstuvwxyz      ,.ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                        [(state % 60) as usize] as char
                })
                .collect();
            Change::UpsertMessage(Message {
                chat_id: chat.into(),
                message_id: format!("{chat}-{i:06}"),
                sender: "me".into(),
                sent_at_ms: i64::from(i) * 1000,
                text: words,
                ..Message::default()
            })
        })
        .collect()
}

/// The packs the newest checkpoint's index references, and every pack present.
async fn packs(store: &dyn ObjectStore, key: &RecoveryKey) -> (BTreeSet<String>, BTreeSet<String>) {
    let listed = store.list("").await.unwrap();
    let relative = |key: &str| key.split_once('/').map(|(_, rest)| rest.to_owned());
    let present: BTreeSet<String> = listed
        .iter()
        .filter_map(|o| relative(&o.key))
        .filter(|k| k.starts_with("packs/"))
        .collect();
    let newest = listed
        .iter()
        .filter(|o| o.key.contains("/checkpoints/"))
        .max_by_key(|o| o.key.clone())
        .unwrap();
    let bytes = store.get(&newest.key, newest.size).await.unwrap().unwrap();
    let index = open_checkpoint_index(
        &VaultKeys::derive(key),
        &relative(&newest.key).unwrap(),
        &bytes,
    )
    .unwrap();
    let referenced = index.packs.into_iter().map(|(name, _)| name).collect();
    (referenced, present)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_cost_what_is_new_on_a_directory_store() {
    let bucket = tempfile::tempdir().unwrap();
    incremental_checkpoints(Arc::new(DirectoryStore::new(bucket.path().to_path_buf()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn checkpoints_cost_what_is_new_on_garage() {
    if let Some(config) = common::s3_server("GARAGE") {
        incremental_checkpoints(Arc::new(S3Store::new(config).unwrap())).await;
    }
}

async fn incremental_checkpoints(store: Arc<dyn ObjectStore>) {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The writer keeps no content: checkpoints come from the bucket.
    let writer = device(store.clone(), &key, &dir, "writer").await;
    writer.set_content_cache(CacheSetting::Off).unwrap();
    let reader = device(store.clone(), &key, &dir, "reader").await;
    let chats: Vec<String> = (0..20).map(|c| format!("chat-{c:02}")).collect();
    for chat in &chats {
        writer.record(messages(chat, 0, 1500)).unwrap();
    }
    writer.sync(None, None).await.unwrap();
    let first = writer.checkpoint().await.unwrap();
    assert!(first.bytes > 2_000_000, "{first:?}");

    // 100 new messages in 5 chats: the checkpoint rewrites those chats' newest blocks and
    // references every other block where it lies.
    for chat in &chats[..5] {
        writer.record(messages(chat, 1500, 20)).unwrap();
    }
    writer.sync(None, None).await.unwrap();
    let (first_packs, _) = packs(store.as_ref(), &key).await;
    let second = writer.checkpoint().await.unwrap();
    assert!(
        second.bytes * 8 < first.bytes,
        "second {second:?} vs first {first:?}"
    );
    let (referenced, _) = packs(store.as_ref(), &key).await;
    assert!(
        first_packs.iter().all(|p| referenced.contains(p)),
        "{first_packs:?} kept in {referenced:?}"
    );
    // An edit deep in one chat's history and a deletion in another.
    writer
        .record(vec![
            messages(&chats[7], 10, 1).remove(0),
            Change::DeleteMessage {
                chat_id: chats[9].clone(),
                message_id: format!("{}-000003", chats[9]),
            },
        ])
        .unwrap();
    writer.sync(None, None).await.unwrap();
    let third = writer.checkpoint().await.unwrap();
    assert!(
        third.bytes * 4 < first.bytes,
        "third {third:?} vs first {first:?}"
    );

    eprintln!(
        "checkpoint bytes: first {} second {} third {}",
        first.bytes, second.bytes, third.bytes
    );
    // A device that followed along and a new one restoring from the newest checkpoint agree.
    reader.sync(None, None).await.unwrap();
    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    fresh.sync(None, None).await.unwrap();
    let everything = reader.messages(None).unwrap();
    assert_eq!(everything.len(), 20 * 1500 + 5 * 20 - 1);
    assert_eq!(fresh.messages(None).unwrap(), everything);
    fresh.verify().await.unwrap();

    // Collection deletes superseded indexes and unreferenced packs, and keeps every pack the
    // newest index references, whichever checkpoint wrote it.
    let (_, before) = packs(store.as_ref(), &key).await;
    writer.collect_garbage(0).await.unwrap();
    let (referenced, after) = packs(store.as_ref(), &key).await;
    assert_eq!(after, referenced);
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(first_packs.iter().any(|p| after.contains(p)));
    // The covered segments are gone: a new device reads the newest index and its packs.
    let late = device(store.clone(), &key, &dir, "late").await;
    let restore = late.sync(None, None).await.unwrap();
    assert_eq!(restore.segments_applied, 0, "{restore:?}");
    // The index, its packs, and the roster entries of the three devices that synced before
    // (writer, reader, fresh); the new device's own entry is uploaded, not fetched.
    assert_eq!(
        restore.objects_down,
        1 + after.len() as u64 + 3,
        "{restore:?}"
    );
    assert_eq!(late.devices().unwrap().len(), 4);
    assert_eq!(late.messages(None).unwrap(), everything);
    late.verify().await.unwrap();
    for chat in [&chats[0], &chats[9]] {
        let page = late.fetch_history(chat, None, 10).await.unwrap();
        let local = reader.history_page(chat, None, 10).unwrap();
        assert_eq!(page, local);
    }
}

/// A segment whose chat key only a later segment in the checkpoint writer's order grants (here:
/// B writes in a chat A created, and B's segments come first) is held back, not an error: the
/// checkpoint covers up to it, and the next one, built on it, takes the rest.
#[tokio::test]
async fn a_segment_needing_a_later_grant_is_left_for_the_next_checkpoint() {
    let store: Arc<dyn ObjectStore> = Arc::new(chatvault::store::MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    a.record(messages("shared", 0, 3)).unwrap();
    a.sync(None, None).await.unwrap();
    // Devices are taken in id order: find a B that sorts before A.
    let mut attempt = 0;
    let b = loop {
        let b = device(store.clone(), &key, &dir, &format!("b{attempt}")).await;
        if b.device_id() < a.device_id() {
            break b;
        }
        attempt += 1;
    };
    b.sync(None, None).await.unwrap();
    b.record(messages("shared", 3, 2)).unwrap();
    b.sync(None, None).await.unwrap();

    // The writer is a new device that knows no chat key yet (checkpoints come from the bucket).
    let writer = device(store.clone(), &key, &dir, "writer").await;
    let first = writer.checkpoint().await.unwrap();
    assert!(!first.name.is_empty(), "{first:?}");
    let second = writer.checkpoint().await.unwrap();
    assert!(
        !second.name.is_empty() && second.name != first.name,
        "{second:?}"
    );
    // Nothing is left uncovered: a third call has nothing to do.
    assert!(writer.checkpoint().await.unwrap().name.is_empty());

    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    fresh
        .set_content_cache(CacheSetting::On { max_bytes: None })
        .unwrap();
    fresh.sync(None, None).await.unwrap();
    assert_eq!(fresh.messages(Some("shared")).unwrap().len(), 5);
    fresh.verify().await.unwrap();
}
