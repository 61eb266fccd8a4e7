//! `verify` means it, on a real directory store: no false alarm on an honest vault after
//! garbage collection, segments a checkpoint covers are still authenticated, packs must have the
//! size their index records, and objects that are no vault object are named, never fatal.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};
use chatvault::{DecodeProblem, Error, IntegrityProblem};
use common::cached;

struct Bucket {
    dir: tempfile::TempDir,
    key: RecoveryKey,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            dir: tempfile::tempdir().unwrap(),
            key: RecoveryKey::generate().unwrap(),
        }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(DirectoryStore::new(self.dir.path().join("bucket")))
    }

    async fn device(&self, name: &str) -> Vault {
        let info = DeviceInfo {
            name: name.into(),
            platform: "test".into(),
        };
        cached(
            Vault::open(self.store(), &self.dir.path().join(name), info, &self.key)
                .await
                .unwrap(),
        )
    }

    /// The vault prefix's directory.
    fn vault_dir(&self, vault: &Vault) -> PathBuf {
        self.dir.path().join("bucket").join(vault.vault_id())
    }
}

fn message(chat: &str, id: &str, text: &str) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        sender: "me".into(),
        sent_at_ms: 1,
        text: text.into(),
        reply_to: None,
        attachments: Vec::new(),
        kind: "text".into(),
        payload: Vec::new(),
    })
}

/// Files under `dir/sub`, sorted.
fn files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.join(sub)];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// A vault with a checkpoint, garbage collected, then more segments after the checkpoint.
async fn collected_vault(bucket: &Bucket) -> Vault {
    let a = bucket.device("a").await;
    for round in 0..3 {
        a.record(vec![message("c", &format!("{round}"), "before")])
            .unwrap();
        a.sync(None, None).await.unwrap();
    }
    a.checkpoint().await.unwrap();
    a.collect_garbage(0).await.unwrap();
    for round in 0..2 {
        a.record(vec![message("d", &format!("{round}"), "after")])
            .unwrap();
        a.sync(None, None).await.unwrap();
    }
    a
}

#[tokio::test]
async fn an_honest_vault_verifies_after_gc_on_old_and_fresh_devices() {
    let bucket = Bucket::new();
    let a = collected_vault(&bucket).await;
    // Segments 1-3 are gone, 4-5 follow the checkpoint: a fresh device used to report
    // "segment 1 is missing" here.
    assert_eq!(files(&bucket.vault_dir(&a), "segments").len(), 2);
    let fresh = bucket.device("fresh").await;
    let report = fresh.verify().await.unwrap();
    assert_eq!((report.checkpoints, report.segments), (1, 2));
    assert_eq!(report.operations, 5);
    assert!(report.unknown.is_empty());
    a.verify().await.unwrap();
    fresh.sync(None, None).await.unwrap();
    fresh.verify().await.unwrap();
    assert_eq!(fresh.messages(None).unwrap().len(), 5);
}

#[tokio::test]
async fn segments_a_checkpoint_covers_are_authenticated_by_verify() {
    let bucket = Bucket::new();
    let a = bucket.device("a").await;
    for round in 0..3 {
        a.record(vec![message("c", &format!("{round}"), "x")])
            .unwrap();
        a.sync(None, None).await.unwrap();
    }
    a.checkpoint().await.unwrap();
    let segments = files(&bucket.vault_dir(&a), "segments");
    assert_eq!(segments.len(), 3);
    let report = a.verify().await.unwrap();
    assert_eq!(report.segments, 3, "covered segments are fetched too");
    // A flipped bit in segment 2, which the checkpoint covers and nobody needs to pull.
    let mut bytes = std::fs::read(&segments[1]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&segments[1], &bytes).unwrap();
    let error = a.verify().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            }
        ),
        "{error:?}"
    );
    // A device that is up to date does not need it, and a new one starts from the checkpoint.
    a.sync(None, None).await.unwrap();
    let fresh = bucket.device("fresh").await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(fresh.messages(None).unwrap().len(), 3);
    // Once collected, nothing is left to doubt.
    a.collect_garbage(0).await.unwrap();
    a.verify().await.unwrap();
}

#[tokio::test]
async fn bytes_appended_to_a_pack_are_refused_by_sync_and_verify() {
    let bucket = Bucket::new();
    let a = collected_vault(&bucket).await;
    let packs = files(&bucket.vault_dir(&a), "packs");
    assert_eq!(packs.len(), 1);
    let original = std::fs::read(&packs[0]).unwrap();
    let mut longer = original.clone();
    longer.extend_from_slice(&[0; 100]);
    std::fs::write(&packs[0], &longer).unwrap();
    let wrong_size = |error: &Error| {
        matches!(error, Error::Integrity(IntegrityProblem::WrongSize { expected, found, .. })
            if *expected == original.len() as u64 && *found == original.len() as u64 + 100)
    };
    let error = a.verify().await.unwrap_err();
    assert!(wrong_size(&error), "{error:?}");
    let fresh = bucket.device("fresh").await;
    let error = fresh.sync(None, None).await.unwrap_err();
    assert!(wrong_size(&error), "{error:?}");
    assert!(fresh.messages(None).unwrap().is_empty());
    let error = fresh.fetch_chat("c").await.unwrap_err();
    assert!(wrong_size(&error), "{error:?}");
    std::fs::write(&packs[0], &original).unwrap();
    fresh.sync(None, None).await.unwrap();
    assert_eq!(fresh.messages(None).unwrap().len(), 5);
}

#[tokio::test]
async fn unknown_objects_are_reported_by_name_and_stop_nobody() {
    let bucket = Bucket::new();
    let a = collected_vault(&bucket).await;
    let root = bucket.vault_dir(&a);
    let junk = [
        "segments/README",
        "stray",
        "checkpoints/notes.txt",
        "packs/x",
    ];
    for name in junk {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"not ours").unwrap();
    }
    let fresh = bucket.device("fresh").await;
    let report = fresh.sync(None, None).await.unwrap();
    assert_eq!(report.unknown_objects, 4);
    assert_eq!(fresh.messages(None).unwrap().len(), 5);
    a.record(vec![message("c", "new", "still syncing")])
        .unwrap();
    a.sync(None, None).await.unwrap();
    fresh.sync(None, None).await.unwrap();
    assert_eq!(fresh.messages(None).unwrap().len(), 6);
    let mut unknown = fresh.verify().await.unwrap().unknown;
    unknown.sort();
    let mut expected: Vec<String> = junk.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(unknown, expected);
    a.checkpoint().await.unwrap();
    a.collect_garbage(0).await.unwrap();
    for name in junk {
        assert!(root.join(name).exists(), "gc deleted {name}, not ours");
    }
}
