//! The app's database as the source of truth: a device without the content cache still merges
//! correctly and counts right, content questions say `NotCached` (the bucket answers them), and
//! a bounded cache evicts whole chats, never a pinned one, without losing anything.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chatvault::Error;
use chatvault::history::HistoryCursor;
use chatvault::keys::RecoveryKey;
use chatvault::local::CacheSetting;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Message, Operation};
use chatvault::vault::{ChangeListener, DeviceInfo, Vault};

mod common;
use common::cached;

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

fn message(chat: &str, id: &str, text: &str, sent_at_ms: i64) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        text: text.into(),
        sent_at_ms,
        kind: "text".into(),
        payload: vec![0, 1, 255],
        ..Message::default()
    })
}

/// What an app's database would hold: changes applied in order, by (chat, message).
#[derive(Default)]
struct AppDatabase(Mutex<std::collections::BTreeMap<(String, String), Message>>);

impl ChangeListener for AppDatabase {
    fn on_changes(&self, _device: &str, operations: &[Operation]) -> Result<(), String> {
        let mut rows = self.0.lock().map_err(|e| e.to_string())?;
        for operation in operations {
            match &operation.change {
                Change::UpsertMessage(m) => {
                    rows.insert((m.chat_id.clone(), m.message_id.clone()), m.clone());
                }
                Change::DeleteMessage {
                    chat_id,
                    message_id,
                } => {
                    rows.remove(&(chat_id.clone(), message_id.clone()));
                }
                Change::DeleteChat { chat_id } => rows.retain(|(c, _), _| c != chat_id),
                Change::UpsertChat(_) => {}
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_device_without_the_cache_merges_counts_and_defers_content_to_the_bucket() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
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
    let tablet = cached(
        Vault::open(store, &dir.path().join("tablet"), info("tablet"), &key)
            .await
            .unwrap(),
    );
    tablet.set_content_cache(CacheSetting::Off).unwrap();
    assert_eq!(tablet.content_cache().unwrap(), CacheSetting::Off);

    phone
        .record(
            (0..300)
                .map(|i| message(&format!("c{}", i % 3), &format!("m{i}"), "hello", i))
                .collect(),
        )
        .unwrap();
    phone.sync(None, None).await.unwrap();
    let app = AppDatabase::default();
    tablet.sync(None, Some(&app)).await.unwrap();
    assert_eq!(app.0.lock().unwrap().len(), 300);

    // The tablet edits one message and deletes another; its version index makes its own
    // changes win over the phone's older ones, without any content kept.
    tablet
        .record(vec![
            message("c0", "m0", "edited on the tablet", 0),
            Change::DeleteMessage {
                chat_id: "c1".into(),
                message_id: "m1".into(),
            },
        ])
        .unwrap();
    assert_eq!(tablet.content_cache_bytes().unwrap(), 0);
    let counts: Vec<(String, u64)> = tablet
        .chats()
        .unwrap()
        .into_iter()
        .map(|s| (s.chat.chat_id, s.message_count))
        .collect();
    assert_eq!(
        counts,
        [("c0".into(), 100), ("c1".into(), 99), ("c2".into(), 100)]
    );
    match tablet.messages(Some("c0")) {
        Err(Error::NotCached { chat_id }) => assert_eq!(chat_id, "c0"),
        other => panic!("expected NotCached, got {other:?}"),
    }
    assert!(matches!(
        tablet.history_page("c0", None, 10),
        Err(Error::NotCached { .. })
    ));
    assert!(matches!(tablet.attachments(), Err(Error::NotCached { .. })));
    tablet.sync(None, None).await.unwrap();

    // The bucket answers what the cache does not hold, and agrees with the phone.
    phone.sync(None, None).await.unwrap();
    let page = tablet.fetch_history("c0", None, 1000).await.unwrap();
    assert_eq!(page.messages.len(), 100);
    assert_eq!(page.messages[0].text, "edited on the tablet");
    assert_eq!(page.messages, phone.messages(Some("c0")).unwrap());
    assert_eq!(
        phone.chats().unwrap(),
        tablet.chats().unwrap(),
        "counts from the version index match counts from content"
    );

    // A sync with nothing new applies nothing and leaves the counts as they were.
    let before = tablet.chats().unwrap();
    let report = tablet.sync(None, None).await.unwrap();
    assert_eq!(report.operations_applied, 0);
    assert_eq!(tablet.chats().unwrap(), before);
}

#[tokio::test]
async fn a_bounded_cache_evicts_whole_chats_keeps_pinned_ones_and_loses_nothing() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let phone = cached(
        Vault::open(store, &dir.path().join("phone"), info("phone"), &key)
            .await
            .unwrap(),
    );
    phone.pin_chat("pinned", true).unwrap();
    // Distinct texts, so the sealed (compressed) content cannot shrink to nothing.
    let text = |chat: &str, i: usize| format!("{chat} message {i} {}", "x".repeat(i % 97));
    for chat in ["pinned", "old", "recent"] {
        phone
            .record(
                (0..200)
                    .map(|i| message(chat, &format!("m{i}"), &text(chat, i), i as i64))
                    .collect(),
            )
            .unwrap();
    }
    let full = phone.content_cache_bytes().unwrap();
    assert!(full > 0);
    // Room for about two of the three chats: the least recently written unpinned one goes.
    let limit = full * 2 / 3 + 1;
    phone
        .set_content_cache(CacheSetting::On {
            max_bytes: Some(limit),
        })
        .unwrap();
    assert!(phone.content_cache_bytes().unwrap() <= limit);
    assert_eq!(phone.messages(Some("pinned")).unwrap().len(), 200);
    assert_eq!(phone.messages(Some("recent")).unwrap().len(), 200);
    match phone.messages(Some("old")) {
        Err(Error::NotCached { chat_id }) => assert_eq!(chat_id, "old"),
        other => panic!("expected NotCached for the evicted chat, got {other:?}"),
    }
    assert!(matches!(phone.messages(None), Err(Error::NotCached { .. })));
    // Counts stay exact, and the evicted chat is whole in the bucket.
    let counts: BTreeSet<(String, u64)> = phone
        .chats()
        .unwrap()
        .into_iter()
        .map(|s| (s.chat.chat_id, s.message_count))
        .collect();
    assert!(counts.contains(&("old".into(), 200)));
    phone.sync(None, None).await.unwrap();
    let mut cursor: Option<HistoryCursor> = None;
    let mut fetched = 0;
    loop {
        let page = phone
            .fetch_history("old", cursor.as_ref(), 64)
            .await
            .unwrap();
        fetched += page.messages.len();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(fetched, 200);
}

#[tokio::test]
async fn a_copied_state_directory_reveals_no_message_text() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let state = dir.path().join("phone");
    let phone = cached(
        Vault::open(store, &state, info("phone"), &key)
            .await
            .unwrap(),
    );
    let secret = "the launch code is 0000-swordfish";
    phone.record(vec![message("c", "m", secret, 1)]).unwrap();
    assert_eq!(phone.messages(Some("c")).unwrap()[0].text, secret);
    drop(phone);
    for entry in std::fs::read_dir(&state).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "plaintext in the state directory"
        );
    }
}

/// A new device keeps no content unless the app asks; a state directory created before that
/// default (the first layout's fixture, which never stored a setting) keeps its cache.
#[tokio::test]
async fn a_new_device_starts_without_the_cache_and_an_old_state_keeps_its_own() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let phone = Vault::open(store, &dir.path().join("phone"), info("phone"), &key)
        .await
        .unwrap();
    assert_eq!(phone.content_cache().unwrap(), CacheSetting::Off);
    phone
        .record(vec![message("c", "m1", "not kept here", 1)])
        .unwrap();
    assert_eq!(phone.chats().unwrap()[0].message_count, 1);
    assert!(matches!(
        phone.messages(Some("c")),
        Err(Error::NotCached { .. })
    ));
    drop(phone);

    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0");
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture.join("state")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), old.path().join(entry.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(fixture.join("key.txt")).unwrap();
    let old_key = RecoveryKey::parse(text.trim()).unwrap();
    let bucket: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(fixture.join("bucket")));
    let vault = Vault::open(bucket, old.path(), info("old"), &old_key)
        .await
        .unwrap();
    assert_eq!(
        vault.content_cache().unwrap(),
        CacheSetting::On { max_bytes: None }
    );
    assert!(!vault.messages(None).unwrap().is_empty());
}

/// A damaged cache blob, a stale cache (a winner missing, as in a state directory restored from
/// an older copy) and an evicted chat are never answered from: questions say NotCached, and
/// `refill_cache` rebuilds the chat from the bucket.
#[tokio::test]
async fn a_damaged_stale_or_evicted_cache_is_rebuilt_from_the_bucket() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let tablet = cached(
        Vault::open(
            store.clone(),
            &dir.path().join("tablet"),
            info("tablet"),
            &key,
        )
        .await
        .unwrap(),
    );
    for chat in ["damaged", "stale", "evicted"] {
        let changes = (0..30)
            .map(|i| message(chat, &format!("m{i}"), &format!("{chat} text {i}"), i))
            .collect();
        tablet.record(changes).unwrap();
    }
    tablet.sync(None, None).await.unwrap();
    let expected = |chat: &str| tablet.messages(Some(chat)).unwrap();
    let want: Vec<Vec<Message>> = ["damaged", "stale", "evicted"].map(expected).to_vec();

    let state = dir.path().join("phone");
    let phone = cached(
        Vault::open(store.clone(), &state, info("phone"), &key)
            .await
            .unwrap(),
    );
    phone.sync(None, None).await.unwrap();
    assert_eq!(phone.messages(Some("damaged")).unwrap(), want[0]);
    // Behind the library's back: flip a byte of one blob, delete another chat's blobs.
    let file = rusqlite::Connection::open(state.join("chatvault.sqlite")).unwrap();
    let (id, mut body): (i64, Vec<u8>) = file
        .query_row(
            "SELECT id, body FROM cache_blobs WHERE chat_id = 'damaged' LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let last = body.len() - 1;
    body[last] ^= 1;
    file.execute(
        "UPDATE cache_blobs SET body = ?1 WHERE id = ?2",
        rusqlite::params![body, id],
    )
    .unwrap();
    file.execute("DELETE FROM cache_blobs WHERE chat_id = 'stale'", [])
        .unwrap();
    drop(file);
    phone.pin_chat("damaged", true).unwrap();
    phone.pin_chat("stale", true).unwrap();
    phone
        .set_content_cache(CacheSetting::On { max_bytes: Some(1) })
        .unwrap();
    phone
        .set_content_cache(CacheSetting::On { max_bytes: None })
        .unwrap();

    for (chat, expected) in ["damaged", "stale", "evicted"].iter().zip(&want) {
        assert!(
            matches!(phone.messages(Some(chat)), Err(Error::NotCached { .. })),
            "{chat}"
        );
        // Asked again: still not answered from what was found wanting.
        assert!(matches!(
            phone.messages(Some(chat)),
            Err(Error::NotCached { .. })
        ));
        phone.refill_cache(chat).await.unwrap();
        assert_eq!(&phone.messages(Some(chat)).unwrap(), expected, "{chat}");
    }
    // Counts never depended on the cache.
    let counts: Vec<u64> = phone
        .chats()
        .unwrap()
        .iter()
        .map(|c| c.message_count)
        .collect();
    assert_eq!(counts, [30, 30, 30]);
}
