//! Multi-device sync through a shared store: convergence, restore on a fresh device, tampering,
//! and crash safety. Runs against the in-memory store here; `store_contract.rs` covers the real
//! backends.

use std::sync::{Arc, Mutex};

use chatvault::history::HistoryCursor;
use chatvault::keys::RecoveryKey;
use chatvault::store::{MemoryStore, ObjectStore};
use chatvault::sync::{Change, Chat, Message, Operation};
use chatvault::vault::{ChangeListener, DeviceInfo, Vault};
use chatvault::{Error, IntegrityProblem};

mod common;
use common::cached;

/// The most a test reads of one object: the format's limit.
const MAX_OBJECT_LEN: u64 = chatvault::format::MAX_OBJECT_LEN as u64;

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
        attachments: Vec::new(),
        // The app's own fields travel unchanged (here: the text's bytes backwards).
        kind: "text".into(),
        payload: text.bytes().rev().collect(),
    })
}

async fn device(
    store: Arc<dyn ObjectStore>,
    key: &RecoveryKey,
    dir: &tempfile::TempDir,
    name: &str,
) -> Vault {
    cached(
        Vault::open(store, &dir.path().join(name), info(name), key)
            .await
            .unwrap(),
    )
}

/// The texts of a chat's messages on `vault`.
fn texts(vault: &Vault, chat: &str) -> Vec<String> {
    vault
        .messages(Some(chat))
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
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
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn three_devices_converge_on_garage() {
    if let Some(config) = common::s3_server("GARAGE") {
        converge(Arc::new(chatvault::store::S3Store::new(config).unwrap())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
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
                payload: vec![round as u8, d as u8, 0, 255],
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

#[tokio::test]
async fn an_interrupted_push_resumes_after_restart_without_duplicates() {
    let flaky = Arc::new(common::Hooked::default());
    *flaky.fail_puts.lock().unwrap() = true;
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
    assert_eq!(
        report.objects_up, 2,
        "the staged segment, then the new one (the roster entry that adds the device went up \
         before the first push)"
    );
    let b = device(store.clone(), &key, &dir, "b").await;
    b.sync(None, None).await.unwrap();
    assert_eq!(b.messages(None).unwrap().len(), 2);
    b.verify().await.unwrap();
}

/// The dangerous interruption: the segment is in the bucket, but the writer dies before it
/// records that. Another device may already have applied it. After the restart the writer must
/// upload the very same bytes again (not a new sealing of the same operations, which would give
/// one sequence number two different objects and break the hash chain of whoever saw the
/// first), and every other device applies each operation once.
#[tokio::test]
async fn a_segment_that_landed_before_a_crash_is_reuploaded_byte_for_byte() {
    let store = Arc::new(common::Hooked::default());
    *store.lose_segment_reply.lock().unwrap() = true;
    let shared: Arc<dyn ObjectStore> = store.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = device(shared.clone(), &key, &dir, "b").await;
    let delivered = Recorder(Mutex::new(vec![]), false);
    {
        let a = device(shared.clone(), &key, &dir, "a").await;
        a.record(vec![message("c", "1", "x", 1)]).unwrap();
        let error = a.sync(None, None).await.unwrap_err();
        assert!(
            matches!(error, Error::Store(ref e) if e.is_retryable()),
            "{error}"
        );
    } // the app is killed before it learns the upload landed
    let segment_puts = || -> Vec<(String, Vec<u8>)> {
        store
            .puts
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.contains("/segments/"))
            .cloned()
            .collect()
    };
    let first = segment_puts();
    assert_eq!(first.len(), 1, "one segment PUT, which landed");
    // Another device applies the landed segment before the writer comes back.
    b.sync(None, Some(&delivered)).await.unwrap();
    assert_eq!(*delivered.0.lock().unwrap(), ["1"]);

    let a = device(shared.clone(), &key, &dir, "a").await;
    a.record(vec![message("c", "2", "y", 2)]).unwrap();
    let report = a.sync(None, None).await.unwrap();
    assert_eq!(
        report.objects_up, 2,
        "the pending segment again, then the new one (the roster entry that adds the device went \
         up before the first push)"
    );

    let puts = segment_puts();
    assert_eq!(puts.len(), 3);
    let (name, bytes) = &first[0];
    assert_eq!(
        &puts[1].0, name,
        "the pending segment goes first, under its name"
    );
    assert!(
        puts[1].1 == *bytes,
        "sequence number {name} received two different objects"
    );
    assert_ne!(&puts[2].0, name);
    assert!(
        store
            .inner
            .get(name, MAX_OBJECT_LEN)
            .await
            .unwrap()
            .unwrap()
            == *bytes
    );

    b.sync(None, Some(&delivered)).await.unwrap();
    assert_eq!(*delivered.0.lock().unwrap(), ["1", "2"], "each change once");
    assert_eq!(b.messages(None).unwrap().len(), 2);
    b.verify().await.unwrap();
    let fresh = device(shared, &key, &dir, "fresh").await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&fresh), snapshot(&b));
}

/// A pack shorter than the size its index records (the store cut it): a device restoring from
/// the checkpoint and `verify` both refuse it before reading it, naming the pack and both sizes.
#[tokio::test]
async fn a_pack_cut_short_is_refused_by_the_size_its_index_records() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ObjectStore> = memory.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    a.record(vec![message("c", "1", "x", 1), message("c", "2", "y", 2)])
        .unwrap();
    a.sync(None, None).await.unwrap();
    a.checkpoint().await.unwrap();
    // Without the segments the checkpoint covers, a new device must read the pack.
    a.collect_garbage(0).await.unwrap();
    let packs: Vec<String> = memory
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.contains("/packs/"))
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let full_name = &packs[0];
    let (vault_prefix, pack_name) = full_name.split_once('/').unwrap();
    assert_eq!(vault_prefix, a.vault_id());
    let pack = memory
        .get(full_name, MAX_OBJECT_LEN)
        .await
        .unwrap()
        .unwrap();
    // Shorter than any sealed block (57 bytes at least), so the first block's range ends past it.
    memory.put(full_name, pack[..8].to_vec()).await.unwrap();

    let whole = pack.len() as u64;
    let is_this_pack = |error: &Error| {
        matches!(error, Error::Integrity(IntegrityProblem::WrongSize { name, expected, found: 8 })
            if name == pack_name && *expected == whole)
    };
    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    let restore = fresh.sync(None, None).await.unwrap_err();
    assert!(is_this_pack(&restore), "{restore:?}");
    assert!(fresh.messages(None).unwrap().is_empty());
    let verify = a.verify().await.unwrap_err();
    assert!(is_this_pack(&verify), "{verify:?}");

    // The whole pack back: both succeed, so the cut was what they refused.
    memory.put(full_name, pack).await.unwrap();
    fresh.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&fresh), snapshot(&a));
    a.verify().await.unwrap();
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
    // Its three segments, in order (the roster entry that adds the device is left out).
    let names = memory
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .filter(|name| name.contains("/segments/"))
        .collect();
    (memory, key, dir, names)
}

/// Syncs and verifies a fresh device against a tampered bucket: both fail alike, and nothing
/// past the first `intact` segments of the writer (authenticated and chained before the
/// tampered one) was applied.
async fn fresh_sync_error(memory: Arc<MemoryStore>, key: &RecoveryKey, intact: usize) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = memory;
    let fresh = cached(
        Vault::open(store, dir.path(), info("fresh"), key)
            .await
            .unwrap(),
    );
    let verify = fresh.verify().await.unwrap_err();
    let sync = fresh.sync(None, None).await.unwrap_err();
    assert_eq!(verify.to_string(), sync.to_string());
    // Segments are applied as they arrive: those before the failing one were authenticated
    // and chained, and may be applied; nothing from the failing one on is.
    let all = ["0", "1", "2"];
    let applied: Vec<String> = fresh
        .messages(None)
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert!(
        applied.len() <= intact && applied == all[..applied.len()],
        "applied past the tampered segment: {applied:?}"
    );
    sync
}

#[tokio::test]
async fn tampering_is_detected_by_sync_and_verify() {
    // A flipped byte.
    let (memory, key, _dir, names) = two_segment_vault().await;
    let mut bytes = memory
        .get(&names[1], MAX_OBJECT_LEN)
        .await
        .unwrap()
        .unwrap();
    bytes[60] ^= 1;
    memory.put(&names[1], bytes).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key, 1).await,
        Error::Decode { .. }
    ));

    // A deleted segment.
    let (memory, key, _dir, names) = two_segment_vault().await;
    memory.delete(&names[1]).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key, 0).await,
        Error::Integrity(IntegrityProblem::MissingSegment { seq: 2, .. })
    ));

    // An old segment replayed under the next name, and two swapped segments.
    let (memory, key, _dir, names) = two_segment_vault().await;
    let first = memory
        .get(&names[0], MAX_OBJECT_LEN)
        .await
        .unwrap()
        .unwrap();
    memory.put(&names[2], first).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key, 2).await,
        Error::Decode { .. }
    ));
    let (memory, key, _dir, names) = two_segment_vault().await;
    let (x, y) = (
        memory
            .get(&names[0], MAX_OBJECT_LEN)
            .await
            .unwrap()
            .unwrap(),
        memory
            .get(&names[1], MAX_OBJECT_LEN)
            .await
            .unwrap()
            .unwrap(),
    );
    memory.put(&names[0], y).await.unwrap();
    memory.put(&names[1], x).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key, 0).await,
        Error::Decode { .. }
    ));

    // An object copied in from another vault's prefix.
    let (memory, key, _dir, names) = two_segment_vault().await;
    let (other, _other_key, _other_dir, other_names) = two_segment_vault().await;
    let foreign = other
        .get(&other_names[0], MAX_OBJECT_LEN)
        .await
        .unwrap()
        .unwrap();
    let vault_prefix = names[0].split('/').next().unwrap();
    let foreign_name = format!(
        "{vault_prefix}/{}",
        other_names[0].split_once('/').unwrap().1
    );
    memory.put(&foreign_name, foreign).await.unwrap();
    assert!(matches!(
        fresh_sync_error(memory, &key, 3).await,
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
    a.record(
        (0..10)
            .map(|i| message("c", &i.to_string(), "x", i))
            .collect(),
    )
    .unwrap();
    let pushed = Progress(Mutex::new(vec![]));
    a.sync(Some(&pushed), None).await.unwrap();
    assert!(
        pushed
            .0
            .lock()
            .unwrap()
            .contains(&(SyncPhase::Push, 10, 10))
    );
    let pulled = Progress(Mutex::new(vec![]));
    b.sync(Some(&pulled), None).await.unwrap();
    assert_eq!(
        pulled.0.lock().unwrap().last(),
        Some(&(SyncPhase::Pull, 1, 1))
    );
}

/// Counts GETs (whole and ranged) of pack objects.
fn chat_messages(chat: &str, from: i64, to: i64) -> Vec<Change> {
    (from..to)
        .map(|i| message(chat, &format!("{chat}-{i}"), "text", i))
        .collect()
}

#[tokio::test]
async fn checkpoints_restore_new_devices_and_garbage_collection_keeps_everyone_consistent() {
    let counting = Arc::new(common::Hooked::default());
    let store: Arc<dyn ObjectStore> = counting.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let offline = device(store.clone(), &key, &dir, "offline").await;
    for round in 0..4 {
        a.record(chat_messages("family", round * 10, round * 10 + 10))
            .unwrap();
        a.record(chat_messages("work", round * 10, round * 10 + 10))
            .unwrap();
        a.sync(None, None).await.unwrap();
        if round == 0 {
            offline.record(chat_messages("offline-chat", 0, 5)).unwrap();
            offline.sync(None, None).await.unwrap();
        }
    }
    let report = a.checkpoint().await.unwrap();
    assert!(report.objects >= 2, "{report:?}");
    a.record(chat_messages("family", 100, 105)).unwrap();
    a.sync(None, None).await.unwrap();

    // A new device reads the checkpoint (index and packs) and only the newer segment.
    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    let restore = fresh.sync(None, None).await.unwrap();
    // The checkpoint, the newer segment, and the roster entries of `a` and `offline`.
    assert_eq!(restore.objects_down, report.objects + 1 + 2, "{restore:?}");
    assert_eq!(snapshot(&fresh), snapshot(&a));
    assert_eq!(fresh.verify().await.unwrap().checkpoints, 1);

    // Collect: the covered segments go; everyone still converges, including a device that was
    // offline while its segments were collected.
    // A second checkpoint supersedes the first; a pack of a checkpoint another device is still
    // writing (no index yet) must survive collection.
    a.checkpoint().await.unwrap();
    let vault_prefix = store.list("").await.unwrap()[0]
        .key
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let in_progress = format!(
        "{vault_prefix}/packs/{}/0000000000000001/0000",
        "ab".repeat(16)
    );
    store.put(&in_progress, vec![0; 64]).await.unwrap();
    let before = store.list("").await.unwrap().len();
    let deleted = a.collect_garbage(0).await.unwrap();
    assert!(
        store
            .get(&in_progress, MAX_OBJECT_LEN)
            .await
            .unwrap()
            .is_some()
    );
    let checkpoints_left = store
        .list(&format!("{vault_prefix}/checkpoints/"))
        .await
        .unwrap();
    assert_eq!(checkpoints_left.len(), 1);
    let packs_left = store.list(&format!("{vault_prefix}/packs/")).await.unwrap();
    let newest_packs = checkpoints_left[0].key.replace("/checkpoints/", "/packs/");
    assert!(
        packs_left
            .iter()
            .all(|p| p.key.starts_with(&newest_packs) || p.key == in_progress)
    );
    assert!(deleted >= 5, "{deleted}");
    assert_eq!(
        store.list("").await.unwrap().len(),
        before - deleted as usize
    );
    offline.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&offline), snapshot(&a));
    let late = device(store.clone(), &key, &dir, "late").await;
    late.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&late), snapshot(&a));
    late.verify().await.unwrap();
    a.verify().await.unwrap();
    // New writes after collection keep flowing.
    offline.record(chat_messages("offline-chat", 5, 8)).unwrap();
    offline.sync(None, None).await.unwrap();
    a.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&offline), snapshot(&a));

    // One chat straight from the bucket: ranged GETs into the packs, never a whole pack.
    *counting.pack_gets.lock().unwrap() = 0;
    let one = late.fetch_chat("work").await.unwrap();
    assert_eq!(one, a.messages(Some("work")).unwrap());
    assert!(*counting.pack_range_gets.lock().unwrap() >= 1);
    assert_eq!(*counting.pack_gets.lock().unwrap(), 0);

    // Paging older history, locally and from the bucket, and "since a time".
    let before = HistoryCursor {
        sent_at_ms: 35,
        message_id: "family-35".into(),
    };
    let local_page = a.history_page("family", Some(&before), 4).unwrap();
    let ids: Vec<&str> = local_page
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(ids, ["family-31", "family-32", "family-33", "family-34"]);
    assert_eq!(local_page.next.as_ref().unwrap().message_id, "family-31");
    assert_eq!(
        late.fetch_history("family", Some(&before), 4)
            .await
            .unwrap(),
        local_page
    );
    assert_eq!(a.messages_since(Some("family"), 100).unwrap().len(), 5);
}

#[tokio::test]
async fn a_deleted_chat_is_shredded_once_its_segments_are_collected() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ObjectStore> = memory.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    a.record(chat_messages("secret", 0, 3)).unwrap();
    a.record(chat_messages("keep", 0, 3)).unwrap();
    a.sync(None, None).await.unwrap();
    a.record(vec![Change::DeleteChat {
        chat_id: "secret".into(),
    }])
    .unwrap();
    a.sync(None, None).await.unwrap();

    assert!(granted_chats(&memory, &key).await.contains("secret"));
    a.checkpoint().await.unwrap();
    a.collect_garbage(0).await.unwrap();
    let remaining = granted_chats(&memory, &key).await;
    assert!(!remaining.contains("secret"), "{remaining:?}");
    assert!(remaining.contains("keep"));
    // A fresh device sees the chat deleted, and older operations cannot resurrect it.
    let fresh = device(store, &key, &dir, "fresh").await;
    fresh.sync(None, None).await.unwrap();
    assert!(fresh.messages(Some("secret")).unwrap().is_empty());
    assert_eq!(fresh.messages(Some("keep")).unwrap().len(), 3);
}

/// Names of the chats whose keys some object in the bucket grants (segments and checkpoint
/// indexes).
async fn granted_chats(
    memory: &MemoryStore,
    key: &RecoveryKey,
) -> std::collections::BTreeSet<String> {
    use chatvault::keys::VaultKeys;
    use chatvault::sync::checkpoint::open_checkpoint_index;
    use chatvault::sync::segment::open_segment;
    let keys = VaultKeys::derive(key);
    let mut chats = std::collections::BTreeSet::new();
    for object in memory.list("").await.unwrap() {
        let name = object.key.split_once('/').unwrap().1.to_owned();
        let bytes = memory
            .get(&object.key, MAX_OBJECT_LEN)
            .await
            .unwrap()
            .unwrap();
        if name.starts_with("segments/") {
            for grant in open_segment(&keys, &name, &bytes).unwrap().grants {
                chats.insert(grant.chat_id);
            }
        } else if name.starts_with("checkpoints/") {
            for grant in open_checkpoint_index(&keys, &name, &bytes).unwrap().grants {
                chats.insert(grant.chat_id);
            }
        }
    }
    chats
}

/// A deleted chat's keys stay in checkpoints while a device that wrote before the delete has not
/// written since seeing it (it could still write to the chat with the key it holds), and leave
/// with the first checkpoint after it has.
#[tokio::test]
async fn a_deleted_chats_keys_stay_until_every_writing_device_has_seen_the_delete() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ObjectStore> = memory.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    a.record(chat_messages("secret", 0, 3)).unwrap();
    a.sync(None, None).await.unwrap();
    b.sync(None, None).await.unwrap();
    b.record(chat_messages("keep", 0, 3)).unwrap();
    b.sync(None, None).await.unwrap();
    a.sync(None, None).await.unwrap();
    a.record(vec![Change::DeleteChat {
        chat_id: "secret".into(),
    }])
    .unwrap();
    a.sync(None, None).await.unwrap();
    a.checkpoint().await.unwrap();
    a.collect_garbage(0).await.unwrap();
    assert!(
        granted_chats(&memory, &key).await.contains("secret"),
        "b has not seen the delete"
    );
    // b pulls the delete; its next segment says so.
    b.sync(None, None).await.unwrap();
    b.record(chat_messages("keep", 3, 4)).unwrap();
    b.sync(None, None).await.unwrap();
    a.sync(None, None).await.unwrap();
    a.checkpoint().await.unwrap();
    a.collect_garbage(0).await.unwrap();
    let remaining = granted_chats(&memory, &key).await;
    assert!(!remaining.contains("secret"), "{remaining:?}");
    assert!(remaining.contains("keep"));
    let fresh = device(store, &key, &dir, "fresh").await;
    fresh.sync(None, None).await.unwrap();
    assert!(fresh.messages(Some("secret")).unwrap().is_empty());
    assert_eq!(fresh.messages(Some("keep")).unwrap().len(), 4);
}

#[tokio::test]
async fn syncs_write_a_checkpoint_once_segments_pile_up() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ObjectStore> = memory.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let checkpoints = || async {
        memory
            .list("")
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.key.contains("/checkpoints/"))
            .count()
    };
    // A vault without a checkpoint gets its first after 256 segments.
    for i in 0..255 {
        a.record(chat_messages("c", i, i + 1)).unwrap();
        a.sync(None, None).await.unwrap();
    }
    assert_eq!(checkpoints().await, 0);
    a.record(chat_messages("c", 255, 256)).unwrap();
    a.sync(None, None).await.unwrap();
    assert_eq!(checkpoints().await, 1);
    let fresh = device(store, &key, &dir, "fresh").await;
    let report = fresh.sync(None, None).await.unwrap();
    assert!(report.objects_down <= 3, "{report:?}");
    assert_eq!(fresh.messages(None).unwrap().len(), 256);
}

/// Cancels the sync from the progress callback once the first pulled segment is applied.
struct CancelAfterFirst(chatvault::vault::CancelToken);

impl chatvault::vault::SyncProgress for CancelAfterFirst {
    fn on_progress(&self, phase: chatvault::vault::SyncPhase, done: u64, _total: u64) {
        if phase == chatvault::vault::SyncPhase::Pull && done == 1 {
            self.0.cancel();
        }
    }
}

#[tokio::test]
async fn a_cancelled_sync_stops_at_a_segment_boundary_and_resumes() {
    use chatvault::vault::CancelToken;
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    for i in 0..3 {
        a.record(chat_messages("c", i * 10, i * 10 + 10)).unwrap();
        a.sync(None, None).await.unwrap();
    }
    let b = device(store.clone(), &key, &dir, "b").await;
    let cancelled = CancelToken::new();
    cancelled.cancel();
    b.record(chat_messages("mine", 0, 1)).unwrap();
    assert!(matches!(
        b.sync_cancellable(None, None, &cancelled).await,
        Err(Error::Cancelled)
    ));
    assert_eq!(b.pending_operations().unwrap(), 1, "nothing was pushed");

    let token = CancelToken::new();
    let progress = CancelAfterFirst(token.clone());
    assert!(matches!(
        b.sync_cancellable(Some(&progress), None, &token).await,
        Err(Error::Cancelled)
    ));
    assert_eq!(
        b.messages(Some("c")).unwrap().len(),
        10,
        "exactly the first segment applied"
    );
    b.sync(None, None).await.unwrap();
    assert_eq!(b.messages(Some("c")).unwrap().len(), 30);
    a.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&a), snapshot(&b));
}

#[tokio::test]
async fn keys_learned_before_a_failed_pull_survive_a_later_record_and_a_restart() {
    let (memory, key, _dir, names) = two_segment_vault().await;
    // The second segment is damaged: a new device applies the first (learning the chat's key
    // from its grant) and stops with an error.
    let original = memory
        .get(&names[1], MAX_OBJECT_LEN)
        .await
        .unwrap()
        .unwrap();
    let mut damaged = original.clone();
    damaged[60] ^= 1;
    memory.put(&names[1], damaged).await.unwrap();
    let store: Arc<dyn ObjectStore> = memory.clone();
    let dir = tempfile::tempdir().unwrap();
    let b = device(store.clone(), &key, &dir, "b").await;
    assert!(matches!(
        b.sync(None, None).await,
        Err(Error::Decode { .. })
    ));
    assert_eq!(b.messages(Some("c")).unwrap().len(), 1);
    // It records into that chat (re-sealing its key set), and restarts once the bucket heals:
    // the key the first segment granted must still open the segments written with it.
    b.record(vec![message("c", "from-b", "y", 9)]).unwrap();
    drop(b);
    memory.put(&names[1], original).await.unwrap();
    let b = device(store, &key, &dir, "b").await;
    b.sync(None, None).await.unwrap();
    assert_eq!(b.messages(Some("c")).unwrap().len(), 4);
}

/// A chat deleted, then written to again after a checkpoint by a device that had seen the
/// delete: the writer grants the key again (a checkpoint leaves it out once every device has
/// seen the delete), so a new device starting from that checkpoint opens the new messages (it
/// failed with `UnknownKey`, found by the fault run).
#[tokio::test]
async fn a_chat_written_to_after_its_deletion_restores_on_a_new_device() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    a.record(vec![message("x", "1", "before", 1)]).unwrap();
    a.sync(None, None).await.unwrap();
    b.sync(None, None).await.unwrap();
    b.record(vec![Change::DeleteChat {
        chat_id: "x".into(),
    }])
    .unwrap();
    b.sync(None, None).await.unwrap();
    a.sync(None, None).await.unwrap();
    a.checkpoint().await.unwrap();
    a.record(vec![message("x", "2", "after", 2)]).unwrap();
    a.sync(None, None).await.unwrap();
    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(texts(&fresh, "x"), ["after"]);
    fresh.verify().await.unwrap();
}

/// The same, by a writer that never saw the deletion: its segment was sealed (and staged, its
/// PUT failed) before the chat was deleted, so it grants nothing, and it lands after a checkpoint
/// that holds the chat's tombstone. A new device starting from that checkpoint must still open
/// it: checkpoints keep the keys of deleted chats (it failed with `UnknownKey`). The writer's
/// clock is an hour ahead, so its message is newer than the deletion and revives the chat.
#[tokio::test]
async fn a_chat_written_to_by_a_device_unaware_of_its_deletion_restores_on_a_new_device() {
    let flaky = Arc::new(common::Hooked::default());
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    let c = device(store.clone(), &key, &dir, "c").await;
    a.record(vec![message("x", "1", "before", 1)]).unwrap();
    a.sync(None, None).await.unwrap();
    b.sync(None, None).await.unwrap();
    c.sync(None, None).await.unwrap();
    c.set_clock_offset_ms(3_600_000);
    c.record(vec![message("x", "2", "late", 2)]).unwrap();
    *flaky.fail_puts.lock().unwrap() = true;
    c.sync(None, None).await.unwrap_err();
    *flaky.fail_puts.lock().unwrap() = false;
    b.record(vec![Change::DeleteChat {
        chat_id: "x".into(),
    }])
    .unwrap();
    b.sync(None, None).await.unwrap();
    a.sync(None, None).await.unwrap();
    a.checkpoint().await.unwrap();
    c.sync(None, None).await.unwrap();
    let fresh = device(store.clone(), &key, &dir, "fresh").await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(texts(&fresh, "x"), ["late"]);
    fresh.verify().await.unwrap();
    a.sync(None, None).await.unwrap();
    assert_eq!(snapshot(&a), snapshot(&fresh));
}

/// Garbage collection on a device that is behind a checkpoint (the segments it has not applied
/// are covered, some collected) is not an integrity problem: it collects the log and leaves
/// attachment content alone (it used to fail with `MissingSegment` after deleting).
#[tokio::test]
async fn garbage_collection_on_a_device_behind_a_checkpoint_succeeds() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = device(store.clone(), &key, &dir, "a").await;
    let b = device(store.clone(), &key, &dir, "b").await;
    a.record(vec![message("x", "1", "one", 1)]).unwrap();
    a.sync(None, None).await.unwrap();
    a.checkpoint().await.unwrap();
    a.record(vec![message("x", "2", "two", 2)]).unwrap();
    a.sync(None, None).await.unwrap();
    assert!(b.collect_garbage(0).await.unwrap() > 0);
    b.collect_garbage(0).await.unwrap();
    b.sync(None, None).await.unwrap();
    assert_eq!(b.messages(Some("x")).unwrap().len(), 2);
}
