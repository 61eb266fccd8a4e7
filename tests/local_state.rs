//! The local state file: versioned, refused when newer than this library, and compact after a
//! sync (no free pages, no write-ahead log left behind).

use std::path::Path;
use std::sync::Arc;

use chatvault::Error;
use chatvault::keys::RecoveryKey;
use chatvault::local::SCHEMA_VERSION;
use chatvault::store::{MemoryStore, ObjectStore};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;
use common::cached;

const STATE_FILE: &str = "chatvault.sqlite";

fn info() -> DeviceInfo {
    DeviceInfo {
        name: "phone".into(),
        platform: "test".into(),
    }
}

fn pragma(path: &Path, name: &str) -> i64 {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_new_state_is_at_the_current_version_and_a_newer_one_is_refused() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    drop(cached(
        Vault::open(store.clone(), dir.path(), info(), &key)
            .await
            .unwrap(),
    ));
    let file = dir.path().join(STATE_FILE);
    assert_eq!(pragma(&file, "user_version"), i64::from(SCHEMA_VERSION));
    assert_eq!(pragma(&file, "auto_vacuum"), 2, "incremental");

    rusqlite::Connection::open(&file)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    match Vault::open(store, dir.path(), info(), &key).await {
        Err(Error::LocalState(why)) => assert!(why.contains("newer chatvault"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_sync_leaves_no_free_pages_and_no_write_ahead_log() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let vault = cached(Vault::open(store, dir.path(), info(), &key).await.unwrap());
    for batch in 0..20 {
        vault
            .record(
                (0..1000)
                    .map(|i| {
                        Change::UpsertMessage(Message {
                            chat_id: format!("chat-{}", i % 20),
                            message_id: format!("m{batch}-{i}"),
                            sent_at_ms: batch * 1000 + i,
                            text: "a message of a few words, repeated ".repeat(3),
                            ..Message::default()
                        })
                    })
                    .collect(),
            )
            .unwrap();
    }
    let file = dir.path().join(STATE_FILE);
    let wal = dir.path().join(format!("{STATE_FILE}-wal"));
    let before = std::fs::metadata(&file).unwrap().len() + std::fs::metadata(&wal).unwrap().len();
    let report = vault.sync(None, None).await.unwrap();
    assert_eq!(report.operations_sent, 20_000);
    drop(vault);
    // The outbox's pages went back to the file system and the log is empty.
    assert_eq!(pragma(&file, "freelist_count"), 0);
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0);
    let after = std::fs::metadata(&file).unwrap().len();
    assert!(after < before, "{after} >= {before}");
}

#[tokio::test]
async fn a_small_sync_does_not_pay_for_a_compaction() {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let vault = cached(Vault::open(store, dir.path(), info(), &key).await.unwrap());
    vault
        .record(vec![Change::UpsertMessage(Message {
            chat_id: "c".into(),
            message_id: "m".into(),
            text: "one message".into(),
            ..Message::default()
        })])
        .unwrap();
    vault.sync(None, None).await.unwrap();
    // A few freed pages are left for the next writes, and the log is not truncated.
    let wal = dir.path().join(format!("{STATE_FILE}-wal"));
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
}
