//! Multi-device sync through a shared store: convergence, restore on a fresh device, tampering,
//! and crash safety. Runs against the in-memory store here; `store_contract.rs` covers the real
//! backends.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chatvault::keys::RecoveryKey;
use chatvault::store::{MemoryStore, ObjectInfo, ObjectStore, StoreError, StoreResult};
use chatvault::sync::{Change, Chat, Message, Operation};
use chatvault::vault::{ChangeListener, DeviceInfo, Vault};
use chatvault::{Error, IntegrityProblem};

mod common;

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

fn message(chat: &str, id: &str, text: &str, at: i64) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        sender: "me".into(),
        sent_at_ms: at,
        text: text.into(),
        reply_to: None,
    })
}

async fn device(
    store: Arc<dyn ObjectStore>,
    key: &RecoveryKey,
    dir: &tempfile::TempDir,
    name: &str,
) -> Vault {
    Vault::open(store, &dir.path().join(name), info(name), key)
        .await
        .unwrap()
}

fn snapshot(vault: &Vault) -> (Vec<(String, String, u64)>, Vec<Message>) {
    (
        vault
            .chats()
            .unwrap()
            .into_iter()
            .map(|c| (c.chat.chat_id, c.chat.title, c.message_count))
            .collect(),
        vault.messages(None).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_devices_converge_and_a_fourth_restores_the_same_state() {
    converge(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_devices_converge_through_a_directory_store() {
    let bucket = tempfile::tempdir().unwrap();
    converge(Arc::new(chatvault::store::DirectoryStore::new(
        bucket.path().to_path_buf(),
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_devices_converge_on_garage() {
    if let Some(config) = common::s3_server("GARAGE") {
        converge(Arc::new(chatvault::store::S3Store::new(config).unwrap())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_devices_converge_on_moto() {
    if let Some(config) = common::s3_server("MOTO") {
        converge(Arc::new(chatvault::store::S3Store::new(config).unwrap())).await;
    }
}

/// Three devices record and sync concurrently for several rounds; all converge with no lost and
/// no duplicated message, and a fresh fourth device restores the same state.
pub async fn converge(store: Arc<dyn ObjectStore>) {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let devices = [
        device(store.clone(), &key, &dir, "a").await,
        device(store.clone(), &key, &dir, "b").await,
        device(store.clone(), &key, &dir, "c").await,
    ];
    let mut expected_ids = std::collections::BTreeSet::new();
    for round in 0..6 {
        for (d, vault) in devices.iter().enumerate() {
            let chat = format!("chat{}", (round + d) % 4);
            let mut changes = vec![Change::UpsertChat(Chat {
                chat_id: chat.clone(),
                title: format!("title {round}/{d}"),
                members: vec!["x".into()],
            })];
            for m in 0..5 {
                let id = format!("{round}-{d}-{m}");
                expected_ids.insert((chat.clone(), id.clone()));
                changes.push(message(
                    &chat,
                    &id,
                    "hi 👋\n\"quoted\"",
                    (round * 100 + m) as i64,
                ));
            }
            vault.record(changes).unwrap();
        }
        // All three sync at the same time.
        let (x, y, z) = tokio::join!(
            devices[0].sync(None, None),
            devices[1].sync(None, None),
            devices[2].sync(None, None)
        );
        x.unwrap();
        y.unwrap();
        z.unwrap();
    }
    // Two more rounds of syncs without new data bring everyone up to date.
    for _ in 0..2 {
        for vault in &devices {
            vault.sync(None, None).await.unwrap();
        }
    }
    let reference = snapshot(&devices[0]);
    let ids: std::collections::BTreeSet<(String, String)> = reference
        .1
        .iter()
        .map(|m| (m.chat_id.clone(), m.message_id.clone()))
        .collect();
    assert_eq!(ids, expected_ids, "no lost and no duplicated message");
    for vault in &devices[1..] {
        assert_eq!(snapshot(vault), reference);
    }
    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    let report = fresh.sync(None, None).await.unwrap();
    assert!(report.segments_applied >= 18);
    assert_eq!(snapshot(&fresh), reference);
    fresh.verify().await.unwrap();
}

#[tokio::test]
async fn edits_deletes_and_chat_deletion_propagate() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    a.record(vec![
        message("c1", "m1", "original", 1),
        message("c1", "m2", "to delete", 2),
        message("c2", "x", "whole chat goes", 3),
    ])
    .unwrap();
    a.sync(None, None).await.unwrap();
    b.sync(None, None).await.unwrap();
    b.record(vec![
        message("c1", "m1", "edited", 1),
        Change::DeleteMessage {
            chat_id: "c1".into(),
            message_id: "m2".into(),
        },
        Change::DeleteChat {
            chat_id: "c2".into(),
        },
    ])
    .unwrap();
    b.sync(None, None).await.unwrap();
    a.sync(None, None).await.unwrap();
    let messages = a.messages(None).unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text, "edited");
    assert_eq!(snapshot(&a), snapshot(&b));
}

#[tokio::test]
async fn an_idle_sync_costs_one_list() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    a.record(vec![message("c", "1", "x", 1)]).unwrap();
    a.sync(None, None).await.unwrap();
    let idle = a.sync(None, None).await.unwrap();
    assert_eq!(idle.requests, 1);
    assert_eq!(idle.objects_up + idle.objects_down, 0);
}

struct Recorder(Mutex<Vec<String>>, bool);

impl ChangeListener for Recorder {
    fn on_changes(&self, _device: &str, operations: &[Operation]) -> Result<(), String> {
        if self.1 {
            return Err("app is busy".into());
        }
        let mut seen = self.0.lock().unwrap();
        for op in operations {
            if let Change::UpsertMessage(m) = &op.change {
                seen.push(m.message_id.clone());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_listener_gets_changes_at_least_once_and_a_failure_keeps_the_cursor() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    a.record(vec![message("c", "1", "x", 1), message("c", "2", "y", 2)])
        .unwrap();
    a.sync(None, None).await.unwrap();
    let failing = Recorder(Mutex::new(vec![]), true);
    assert!(b.sync(None, Some(&failing)).await.is_err());
    assert!(
        b.messages(None).unwrap().is_empty(),
        "nothing applied past a failed listener"
    );
    let ok = Recorder(Mutex::new(vec![]), false);
    b.sync(None, Some(&ok)).await.unwrap();
    assert_eq!(*ok.0.lock().unwrap(), ["1", "2"]);
    assert_eq!(b.messages(None).unwrap().len(), 2);
}

/// A store that fails every PUT while `fail_puts` is set, like a network that drops mid-sync.
struct Flaky {
    inner: MemoryStore,
    fail_puts: Mutex<bool>,
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        if *self.fail_puts.lock().unwrap() {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Option<Vec<u8>>> {
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
}

#[tokio::test]
async fn an_interrupted_push_resumes_after_restart_without_duplicates() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        fail_puts: Mutex::new(true),
    });
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let a = device(store.clone(), &key, &dir, "a").await;
        a.record(vec![message("c", "1", "x", 1)]).unwrap();
        let error = a.sync(None, None).await.unwrap_err();
        assert!(
            matches!(error, Error::Store(ref e) if e.is_retryable()),
            "{error}"
        );
    } // the app is killed: the vault is dropped
    *flaky.fail_puts.lock().unwrap() = false;
    let a = device(store.clone(), &key, &dir, "a").await;
    a.record(vec![message("c", "2", "y", 2)]).unwrap();
    let report = a.sync(None, None).await.unwrap();
    assert_eq!(report.objects_up, 2, "the staged segment, then the new one");
    let b = device(store.clone(), &key, &dir, "b").await;
    b.sync(None, None).await.unwrap();
    assert_eq!(b.messages(None).unwrap().len(), 2);
    b.verify().await.unwrap();
}

async fn two_segment_vault() -> (
    Arc<MemoryStore>,
    RecoveryKey,
    tempfile::TempDir,
    Vec<String>,
) {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ObjectStore> = memory.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    for i in 0..3 {
        a.record(vec![message("c", &i.to_string(), "x", i)])
            .unwrap();
        a.sync(None, None).await.unwrap();
    }
    let names = memory
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    (memory, key, dir, names)
}

async fn fresh_sync_error(memory: Arc<MemoryStore>, key: &RecoveryKey) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = memory;
    let fresh = Vault::open(store, dir.path(), info("fresh"), key)
        .await
        .unwrap();
    let verify = fresh.verify().await.unwrap_err();
    let sync = fresh.sync(None, None).await.unwrap_err();
    assert_eq!(verify.to_string(), sync.to_string());
    assert!(
        fresh.messages(None).unwrap().is_empty(),
        "nothing applied from a tampered bucket"
    );
    sync
}

#[tokio::test]
async fn tampering_is_detected_by_sync_and_verify() {
    // A flipped byte.
    let (memory, key, _dir, names) = two_segment_vault().await;
    let mut bytes = memory.get(&names[1]).await.unwrap().unwrap();
    bytes[60] ^= 1;
    memory.put(&names[1], bytes).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key).await,
        Error::Decode { .. }
    ));

    // A deleted segment.
    let (memory, key, _dir, names) = two_segment_vault().await;
    memory.delete(&names[1]).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key).await,
        Error::Integrity(IntegrityProblem::MissingSegment { seq: 2, .. })
    ));

    // An old segment replayed under the next name, and two swapped segments.
    let (memory, key, _dir, names) = two_segment_vault().await;
    let first = memory.get(&names[0]).await.unwrap().unwrap();
    memory.put(&names[2], first).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key).await,
        Error::Decode { .. }
    ));
    let (memory, key, _dir, names) = two_segment_vault().await;
    let (x, y) = (
        memory.get(&names[0]).await.unwrap().unwrap(),
        memory.get(&names[1]).await.unwrap().unwrap(),
    );
    memory.put(&names[0], y).await.unwrap();
    memory.put(&names[1], x).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key).await,
        Error::Decode { .. }
    ));

    // An object copied in from another vault's prefix.
    let (memory, key, _dir, names) = two_segment_vault().await;
    let (other, _other_key, _other_dir, other_names) = two_segment_vault().await;
    let foreign = other.get(&other_names[0]).await.unwrap().unwrap();
    let vault_prefix = names[0].split('/').next().unwrap();
    let foreign_name = format!(
        "{vault_prefix}/{}",
        other_names[0].split_once('/').unwrap().1
    );
    memory.put(&foreign_name, foreign).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key).await,
        Error::Decode {
            problem: chatvault::DecodeProblem::AuthenticationFailed,
            ..
        }
    ));
}

#[tokio::test]
async fn a_rollback_is_detected_by_a_device_that_saw_more() {
    let (memory, key, dir, names) = two_segment_vault().await;
    let store: Arc<dyn ObjectStore> = memory.clone();
    let b = device(store.clone(), &key, &dir, "b").await;
    b.sync(None, None).await.unwrap();
    memory.delete(&names[2]).await.unwrap(); // the newest segment vanishes
    assert!(matches!(
        b.sync(None, None).await.unwrap_err(),
        Error::Integrity(IntegrityProblem::RolledBack {
            seen: 3,
            found: 2,
            ..
        })
    ));
    assert!(matches!(b.verify().await.unwrap_err(), Error::Integrity(_)));
    // The writer itself notices too.
    let a = device(store, &key, &dir, "a").await;
    assert!(matches!(
        a.sync(None, None).await.unwrap_err(),
        Error::Integrity(_)
    ));
}

#[tokio::test]
async fn a_state_directory_refuses_another_vault() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    device(store.clone(), &RecoveryKey::generate().unwrap(), &dir, "a").await;
    let other = RecoveryKey::generate().unwrap();
    assert!(matches!(
        Vault::open(store, &dir.path().join("a"), info("a"), &other).await,
        Err(Error::InvalidInput(_))
    ));
}

struct Progress(Mutex<Vec<(chatvault::vault::SyncPhase, u64, u64)>>);

impl chatvault::vault::SyncProgress for Progress {
    fn on_progress(&self, phase: chatvault::vault::SyncPhase, done: u64, total: u64) {
        self.0.lock().unwrap().push((phase, done, total));
    }
}

#[tokio::test]
async fn progress_is_reported_for_push_and_pull() {
    use chatvault::vault::SyncPhase;
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    a.record((0..10).map(|i| message("c", &i.to_string(), "x", i)).collect()).unwrap();
    let pushed = Progress(Mutex::new(vec![]));
    a.sync(Some(&pushed), None).await.unwrap();
    assert!(pushed.0.lock().unwrap().contains(&(SyncPhase::Push, 10, 10)));
    let pulled = Progress(Mutex::new(vec![]));
    b.sync(Some(&pulled), None).await.unwrap();
    assert_eq!(pulled.0.lock().unwrap().last(), Some(&(SyncPhase::Pull, 1, 1)));
}
