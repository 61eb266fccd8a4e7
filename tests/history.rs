//! Paging a chat's history by `(sent_at_ms, message_id)` cursors, locally and from the bucket:
//! every message exactly once, even when many share the millisecond at a page boundary.

use std::sync::Arc;

use chatvault::history::{HistoryCursor, HistoryPage};
use chatvault::keys::RecoveryKey;
use chatvault::store::{MemoryStore, ObjectStore};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;
use common::cached;

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

/// Pages through a chat with `page` (a local or bucket read), newest first; returns the
/// messages in send order.
async fn page_through<F, Fut>(limit: u32, page: F) -> Vec<Message>
where
    F: Fn(Option<HistoryCursor>) -> Fut,
    Fut: std::future::Future<Output = HistoryPage>,
{
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let got = page(cursor.clone()).await;
        assert!(got.messages.len() <= limit as usize);
        let mut older = got.messages;
        older.extend(all);
        all = older;
        match got.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

#[tokio::test]
async fn pages_hold_every_message_once_across_a_shared_millisecond() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let phone = cached(
        Vault::open(store.clone(), &dir.path().join("phone"), info("p"), &key)
            .await
            .unwrap(),
    );
    // Seven messages per millisecond, ids whose byte order differs from their insertion order.
    let ids = ["b", "a", "é", "Z", "🎉", "aa", "0"];
    let mut changes = Vec::new();
    for ms in 0..6 {
        for id in ids {
            changes.push(Change::UpsertMessage(Message {
                chat_id: "c".into(),
                message_id: format!("{id}-{}", 5 - ms),
                sent_at_ms: 1000 + ms,
                ..Message::default()
            }));
        }
    }
    changes.push(Change::DeleteMessage {
        chat_id: "c".into(),
        message_id: "aa-3".into(),
    });
    phone.record(changes).unwrap();
    phone.sync(None, None).await.unwrap();
    let expected = phone.messages(Some("c")).unwrap();
    assert_eq!(expected.len(), 41);

    let fresh = cached(
        Vault::open(store, &dir.path().join("fresh"), info("f"), &key)
            .await
            .unwrap(),
    );
    for limit in [1, 3, 7, 8, 40, 41, 1000] {
        let local = page_through(limit, |cursor| {
            let page = phone.history_page("c", cursor.as_ref(), limit).unwrap();
            async move { page }
        })
        .await;
        assert_eq!(local, expected, "local pages of {limit}");
        let remote = page_through(limit, |cursor| {
            let fresh = &fresh;
            async move {
                fresh
                    .fetch_history("c", cursor.as_ref(), limit)
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(remote, expected, "bucket pages of {limit}");
    }
    // A page ends where the next begins: the boundary's millisecond is split, not skipped.
    let first = phone.history_page("c", None, 3).unwrap();
    let next = first.next.clone().unwrap();
    assert_eq!(next, HistoryCursor::of(&first.messages[0]));
    let second = phone.history_page("c", Some(&next), 3).unwrap();
    assert_eq!(second.messages[2].sent_at_ms, first.messages[0].sent_at_ms);
    assert!(
        phone
            .history_page("nope", None, 3)
            .unwrap()
            .messages
            .is_empty()
    );
    // A limit of 0 would return an empty page that reads as "the beginning": refused.
    assert!(matches!(
        phone.history_page("c", None, 0),
        Err(chatvault::Error::InvalidInput(_))
    ));
    assert!(matches!(
        fresh.fetch_history("c", None, 0).await,
        Err(chatvault::Error::InvalidInput(_))
    ));
}

#[tokio::test]
async fn a_page_from_the_bucket_reads_only_the_blocks_it_needs() {
    let counting = Arc::new(common::Hooked::default());
    let store: Arc<dyn ObjectStore> = counting.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let phone = cached(
        Vault::open(store.clone(), &dir.path().join("phone"), info("p"), &key)
            .await
            .unwrap(),
    );
    // About 600 KB of one chat: several 64 KiB checkpoint blocks; three per millisecond.
    let changes: Vec<Change> = (0..3000)
        .map(|i| {
            Change::UpsertMessage(Message {
                chat_id: "long".into(),
                message_id: format!("m{:05}", (i * 7919) % 3000),
                sent_at_ms: i / 3,
                text: format!("{i} {}", "lorem ipsum dolor sit amet ".repeat(7)),
                ..Message::default()
            })
        })
        .collect();
    phone.record(changes).unwrap();
    phone.sync(None, None).await.unwrap();
    phone.checkpoint().await.unwrap();
    // Deletions and an edit after the checkpoint, which pages must honour.
    phone
        .record(vec![
            Change::DeleteMessage {
                chat_id: "long".into(),
                message_id: phone.messages(Some("long")).unwrap()[2990]
                    .message_id
                    .clone(),
            },
            Change::UpsertMessage(Message {
                chat_id: "long".into(),
                message_id: phone.messages(Some("long")).unwrap()[5].message_id.clone(),
                sent_at_ms: 999,
                text: "moved to the newest millisecond".into(),
                ..Message::default()
            }),
        ])
        .unwrap();
    phone.sync(None, None).await.unwrap();
    let expected = phone.messages(Some("long")).unwrap();

    let fresh = cached(
        Vault::open(store, &dir.path().join("fresh"), info("f"), &key)
            .await
            .unwrap(),
    );
    *counting.pack_range_gets.lock().unwrap() = 0;
    fresh.fetch_chat("long").await.unwrap();
    let blocks = *counting.pack_range_gets.lock().unwrap();
    assert!(blocks >= 6, "{blocks} blocks");

    // The newest page, and one from the middle: one or two blocks each, not the chat.
    *counting.pack_range_gets.lock().unwrap() = 0;
    let newest = fresh.fetch_history("long", None, 20).await.unwrap();
    assert_eq!(newest.messages, expected[expected.len() - 20..]);
    assert!(*counting.pack_range_gets.lock().unwrap() <= 2);
    let middle = HistoryCursor::of(&expected[1500]);
    *counting.pack_range_gets.lock().unwrap() = 0;
    let page = fresh
        .fetch_history("long", Some(&middle), 20)
        .await
        .unwrap();
    assert_eq!(page.messages, expected[1480..1500]);
    assert_eq!(page.next, Some(HistoryCursor::of(&expected[1480])));
    assert!(*counting.pack_range_gets.lock().unwrap() <= 2);
    // And every page size still yields the whole chat exactly once.
    for limit in [97, 1000] {
        let all = page_through(limit, |cursor| {
            let fresh = &fresh;
            async move {
                fresh
                    .fetch_history("long", cursor.as_ref(), limit)
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(all, expected, "pages of {limit}");
    }
}
