//! The clock rule (docs/SYNC.md, "Clocks") with real skew: three devices on a directory store,
//! one with a clock a year ahead and one a year behind, plus a fourth restored from a
//! checkpoint. Nobody's later edits are lost to a stamp from the future, the only edits that
//! lose are those a device stamped before it ever synced (last writer wins by stamp), and all
//! converge.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Chat, Message, Operation};
use chatvault::vault::{ChangeListener, DeviceInfo, Vault};

mod common;
use common::cached;

const YEAR_MS: i64 = 365 * 24 * 60 * 60 * 1000;

async fn device(store: &Arc<dyn ObjectStore>, dir: &Path, name: &str, skew_ms: i64) -> Vault {
    let vault = cached(
        Vault::open(
            store.clone(),
            &dir.join(name),
            DeviceInfo {
                name: name.into(),
                platform: "test".into(),
            },
            &key(),
        )
        .await
        .unwrap(),
    );
    vault.set_clock_offset_ms(skew_ms);
    vault
}

fn key() -> RecoveryKey {
    RecoveryKey::from_bytes([42; 32])
}

fn message(chat: &str, id: &str, text: &str) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        sent_at_ms: 1_700_000_000_000,
        text: text.into(),
        ..Message::default()
    })
}

/// (message id, text) of a chat's live messages.
fn texts(vault: &Vault, chat: &str) -> Vec<(String, String)> {
    vault
        .messages(Some(chat))
        .unwrap()
        .into_iter()
        .map(|m| (m.message_id, m.text))
        .collect()
}

fn text_of(vault: &Vault, chat: &str, id: &str) -> Option<String> {
    texts(vault, chat)
        .into_iter()
        .find(|(message_id, _)| message_id == id)
        .map(|(_, text)| text)
}

async fn sync_all(devices: &[&Vault]) {
    // Twice round: everyone sees everything everyone else pushed.
    for _ in 0..2 {
        for device in devices {
            device.sync(None, None).await.unwrap();
        }
    }
}

fn assert_converged(devices: &[&Vault]) {
    let state = |v: &Vault| {
        let chats: Vec<_> = v
            .chats()
            .unwrap()
            .into_iter()
            .map(|c| (c.chat.chat_id, c.chat.title, c.message_count))
            .collect();
        (chats, v.messages(None).unwrap())
    };
    let first = state(devices[0]);
    for device in &devices[1..] {
        assert_eq!(state(device), first);
    }
}

/// Remembers the stamp of every message operation it is handed.
#[derive(Default)]
struct Stamps(Mutex<Vec<(String, u64)>>);

impl ChangeListener for Stamps {
    fn on_changes(&self, _device: &str, operations: &[Operation]) -> Result<(), String> {
        let mut seen = self.0.lock().unwrap();
        for operation in operations {
            if let Some(id) = operation.change.message_id() {
                seen.push((id.to_owned(), operation.stamp.wall_ms));
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn clocks_a_year_ahead_and_a_year_behind_lose_no_later_edit_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let ahead = device(&store, dir.path(), "ahead", YEAR_MS).await;
    let present = device(&store, dir.path(), "present", 0).await;
    let behind = device(&store, dir.path(), "behind", -YEAR_MS).await;
    let all = [&ahead, &present, &behind];

    // Before anyone syncs: the present device writes two chats; then the device a year behind,
    // which has never synced, edits one of those messages (later in real time, but stamped a
    // year earlier).
    present
        .record(vec![
            Change::UpsertChat(Chat {
                chat_id: "trip".into(),
                title: "Trip".into(),
                ..Chat::default()
            }),
            message("trip", "m1", "before the deletion"),
            message("notes", "x", "the present device's"),
        ])
        .unwrap();
    behind
        .record(vec![message("notes", "x", "edited before ever syncing")])
        .unwrap();
    sync_all(&all).await;
    // Last writer wins by stamp: an edit stamped a year back loses. Documented, not a loss
    // the rule can prevent without trusting some device's clock.
    for device in all {
        assert_eq!(
            text_of(device, "notes", "x").as_deref(),
            Some("the present device's")
        );
    }

    // The device a year ahead deletes the chat: its stamp is a year in the future.
    ahead
        .record(vec![Change::DeleteChat {
            chat_id: "trip".into(),
        }])
        .unwrap();
    ahead.sync(None, None).await.unwrap();
    present.sync(None, None).await.unwrap();
    behind.sync(None, None).await.unwrap();
    // Having applied it, the others write to the chat again: before the rule, their new
    // messages were stamped before the deletion and vanished until the year was out.
    present
        .record(vec![message("trip", "m2", "after the deletion")])
        .unwrap();
    behind
        .record(vec![
            message("trip", "m3", "also after the deletion"),
            message(
                "notes",
                "x",
                "edited by the device a year behind, after syncing",
            ),
        ])
        .unwrap();
    let listener = Stamps::default();
    for _ in 0..2 {
        ahead.sync(None, Some(&listener)).await.unwrap();
        present.sync(None, None).await.unwrap();
        behind.sync(None, None).await.unwrap();
    }
    for device in all {
        assert_eq!(
            texts(device, "trip"),
            vec![
                ("m2".to_owned(), "after the deletion".to_owned()),
                ("m3".to_owned(), "also after the deletion".to_owned()),
            ],
            "{device:?}"
        );
        assert_eq!(
            text_of(device, "notes", "x").as_deref(),
            Some("edited by the device a year behind, after syncing")
        );
    }
    assert_converged(&all);
    // The stated cost: one fast clock drags everyone's stamps (an order, never a displayed
    // time) a year ahead.
    let seen = listener.0.lock().unwrap().clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for id in ["m2", "m3"] {
        let (_, wall_ms) = seen.iter().find(|(m, _)| m == id).unwrap();
        assert!(
            *wall_ms > now + (YEAR_MS as u64) * 9 / 10,
            "{id}: {wall_ms}"
        );
    }

    // A fourth device, with a correct clock, restores from a checkpoint (the segments it
    // covers are collected, so there is no other way). A restore applies the checkpoint's
    // operations without showing them to the clock, yet an edit made right after it wins.
    present.checkpoint().await.unwrap();
    assert!(present.collect_garbage(0).await.unwrap() > 0);
    let fresh = device(&store, dir.path(), "fresh", 0).await;
    let restored = fresh.sync(None, None).await.unwrap();
    assert_eq!(restored.segments_applied, 0, "restored from the checkpoint");
    assert_converged(&[&present, &fresh]);
    fresh
        .record(vec![message("trip", "m2", "edited right after a restore")])
        .unwrap();
    sync_all(&[&fresh, &ahead, &present, &behind]).await;
    for device in [&fresh, &ahead, &present, &behind] {
        assert_eq!(
            text_of(device, "trip", "m2").as_deref(),
            Some("edited right after a restore")
        );
    }
    assert_converged(&[&fresh, &ahead, &present, &behind]);
    present.verify().await.unwrap();
}

/// Garbage collection ages objects by the store's clock: a device a year fast neither collects
/// what a fresh checkpoint replaced nor the chunks of an upload whose message another device
/// has not synced yet (with the local clock alone, it deleted both at once).
#[tokio::test]
async fn a_fast_clock_does_not_collect_what_others_still_need() {
    let bucket = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(bucket.path().to_path_buf()));
    let dir = tempfile::tempdir().unwrap();
    let honest = device(&store, dir.path(), "honest", 0).await;
    let fast = device(&store, dir.path(), "fast", YEAR_MS).await;
    honest.record(vec![message("c", "1", "one")]).unwrap();
    honest.sync(None, None).await.unwrap();
    honest.checkpoint().await.unwrap();
    // An upload in progress on the honest device: chunks in the bucket, message not recorded.
    let file = dir.path().join("photo.bin");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let (attachment, _) = honest
        .attach_file(&file, "photo.bin", "image/jpeg", None, &Default::default())
        .await
        .unwrap();
    fast.sync(None, None).await.unwrap();
    let week_ms = 7 * 24 * 3_600_000;
    assert_eq!(fast.collect_garbage(week_ms).await.unwrap(), 0);
    // The message arrives later and its attachment is whole.
    let mut with_photo = match message("c", "2", "look") {
        Change::UpsertMessage(message) => message,
        _ => unreachable!(),
    };
    with_photo.attachments = vec![attachment];
    honest
        .record(vec![Change::UpsertMessage(with_photo)])
        .unwrap();
    honest.sync(None, None).await.unwrap();
    fast.sync(None, None).await.unwrap();
    let report = fast.verify().await.unwrap();
    assert_eq!(report.attachments, 1);
    assert_eq!(texts(&fast, "c").len(), 2);
}
