//! Attachments through the public API: byte-identical round trips at and around chunk
//! boundaries, deduplication across chats, every kind of chunk tampering as a typed error,
//! cancellation and resumption, garbage collection of unreferenced content, on a directory store
//! and on the real S3 servers (Garage, moto) when the test command has started them.

mod common;
use common::cached;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chatvault::attachment::{Attachment, TransferListener, stream};
use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore, S3Store};
use chatvault::sync::{Change, Message};
use chatvault::vault::{CancelToken, DeviceInfo, Vault};
use chatvault::{DecodeProblem, Error, IntegrityProblem};

const CHUNK: u32 = 64 * 1024;
/// The most a test reads of one object: the format's limit.
const MAX_OBJECT_LEN: u64 = chatvault::format::MAX_OBJECT_LEN as u64;

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn vault(store: Arc<dyn ObjectStore>, dir: &Path, name: &str, key: &RecoveryKey) -> Vault {
    let vault = cached(
        Vault::open(store, &dir.join(name), info(name), key)
            .await
            .unwrap(),
    );
    vault.set_attachment_chunk_size(CHUNK).unwrap();
    vault
}

fn message(chat: &str, id: &str, attachments: Vec<Attachment>) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        sender: "anna".into(),
        sent_at_ms: 1,
        text: format!("message {id}"),
        reply_to: None,
        attachments,
        kind: "file".into(),
        ..Message::default()
    })
}

/// The vault's attachment chunk objects (keys relative to the store).
async fn chunk_objects(store: &dyn ObjectStore, vault: &Vault) -> Vec<(String, u64)> {
    store
        .list(&format!("{}-attachments/", vault.vault_id()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect()
}

async fn round_trips(store: Arc<dyn ObjectStore>, sizes: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let key = RecoveryKey::generate().unwrap();
    let phone = vault(store.clone(), dir.path(), "phone", &key).await;
    let never = CancelToken::new();
    let c = CHUNK as usize;
    let mut expected_objects = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let bytes = content(size, i as u64 + 1);
        let path = dir.path().join(format!("file-{size}.bin"));
        std::fs::write(&path, &bytes).unwrap();
        let (attachment, report) = phone
            .attach_file(&path, "secret-name.jpg", "image/jpeg", None, &never)
            .await
            .unwrap();
        assert_eq!(attachment.size, size as u64);
        assert_eq!(
            attachment.chunk_count(),
            stream::chunk_count(size as u64, CHUNK)
        );
        assert_eq!(report.chunks_transferred, attachment.chunk_count());
        assert_eq!(report.bytes_transferred, attachment.stored_len());
        expected_objects += attachment.chunk_count() as usize;

        let out = dir.path().join(format!("out-{size}.bin"));
        let down = phone
            .download_attachment(&attachment, &out, None, &never)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "size {size}");
        // Only chunks holding content are fetched; padding-only chunks never are.
        assert_eq!(down.chunks_transferred, (size as u64).div_ceil(c as u64));
    }
    let objects = chunk_objects(store.as_ref(), &phone).await;
    assert_eq!(objects.len(), expected_objects);
    for (name, _) in &objects {
        assert!(
            !name.contains("secret-name") && !name.contains("jpeg"),
            "{name}"
        );
    }
}

fn sizes_around_chunk_boundaries() -> Vec<usize> {
    let c = CHUNK as usize;
    vec![
        0,
        1,
        1023,
        1024,
        1025,
        c - 1,
        c,
        c + 1,
        2 * c,
        3 * c + 17,
        10 * c + 5,
    ]
}

#[tokio::test]
async fn files_round_trip_byte_identical_at_and_around_chunk_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().to_path_buf()));
    round_trips(store, &sizes_around_chunk_boundaries()).await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn garage_round_trips_and_detects_tampering() {
    if let Some(config) = common::s3_server("GARAGE") {
        let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(config).unwrap());
        round_trips(store.clone(), &sizes_around_chunk_boundaries()).await;
        tampering_is_detected(store.clone()).await;
        deduplicates_across_chats_and_devices(store.clone()).await;
        garbage_collection_follows_references(store).await;
    }
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn moto_round_trips_and_detects_tampering() {
    if let Some(config) = common::s3_server("MOTO") {
        let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(config).unwrap());
        round_trips(store.clone(), &sizes_around_chunk_boundaries()).await;
        tampering_is_detected(store.clone()).await;
        deduplicates_across_chats_and_devices(store.clone()).await;
        garbage_collection_follows_references(store).await;
    }
}

async fn deduplicates_across_chats_and_devices(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let key = RecoveryKey::generate().unwrap();
    let phone = vault(store.clone(), dir.path(), "phone", &key).await;
    let tablet = vault(store.clone(), dir.path(), "tablet", &key).await;
    let never = CancelToken::new();
    let bytes = content(5 * CHUNK as usize + 100, 42);
    let path = dir.path().join("video.mp4");
    std::fs::write(&path, &bytes).unwrap();

    let (first, report) = phone
        .attach_file(&path, "video.mp4", "video/mp4", None, &never)
        .await
        .unwrap();
    assert!(report.chunks_transferred > 0);
    // The same file forwarded to other chats, under another name, and from another device.
    let (second, again) = phone
        .attach_file(&path, "forwarded.mp4", "video/mp4", None, &never)
        .await
        .unwrap();
    let copy = dir.path().join("copy.mp4");
    std::fs::copy(&path, &copy).unwrap();
    let (third, from_tablet) = tablet
        .attach_file(&copy, "video.mp4", "video/mp4", None, &never)
        .await
        .unwrap();
    for report in [&again, &from_tablet] {
        assert_eq!(report.chunks_transferred, 0);
        assert_eq!(report.bytes_transferred, 0);
        assert_eq!(report.chunks_skipped, first.chunk_count());
    }
    assert_eq!(first.content_id, second.content_id);
    assert_eq!(first.content_id, third.content_id);
    assert_eq!(
        chunk_objects(store.as_ref(), &phone).await.len() as u64,
        first.chunk_count()
    );

    let mut changes = Vec::new();
    for (i, (chat, attachment)) in [("family", first), ("friends", second), ("work", third)]
        .into_iter()
        .enumerate()
    {
        changes.push(message(chat, &format!("m{i}"), vec![attachment]));
    }
    phone.record(changes).unwrap();
    phone.sync(None, None).await.unwrap();

    // A new device sees every reference with its own name, and one content to download.
    let laptop = vault(store.clone(), dir.path(), "laptop", &key).await;
    laptop.sync(None, None).await.unwrap();
    let names: Vec<_> = laptop
        .messages(None)
        .unwrap()
        .into_iter()
        .flat_map(|m| m.attachments)
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["video.mp4", "forwarded.mp4", "video.mp4"]);
    let all = laptop.attachments().unwrap();
    assert_eq!(all.len(), 1);
    let out = dir.path().join("restored.mp4");
    laptop
        .download_attachment(&all[0], &out, None, &never)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(laptop.verify().await.unwrap().attachments, 1);

    // verify notices a chunk gone or cut short (without downloading the content).
    let root = format!("{}-attachments/", laptop.vault_id());
    let chunk = format!("{root}{}", all[0].chunk_name(2));
    let original = store.get(&chunk, MAX_OBJECT_LEN).await.unwrap().unwrap();
    store.delete(&chunk).await.unwrap();
    assert!(matches!(
        laptop.verify().await.unwrap_err(),
        Error::Integrity(IntegrityProblem::MissingObject { .. })
    ));
    store
        .put(&chunk, original[..original.len() - 1].to_vec())
        .await
        .unwrap();
    // A chunk of another size than its reference fixes.
    let cut_short = laptop.verify().await.unwrap_err();
    assert!(
        matches!(&cut_short, Error::Integrity(IntegrityProblem::WrongSize { name, .. })
            if *name == all[0].chunk_name(2)),
        "{cut_short:?}"
    );
    store.put(&chunk, original).await.unwrap();
    assert_eq!(laptop.verify().await.unwrap().attachments, 1);
}

#[tokio::test]
async fn one_file_in_several_chats_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().to_path_buf()));
    deduplicates_across_chats_and_devices(store).await;
}

fn is_auth_failure(error: &Error) -> bool {
    matches!(
        error,
        Error::Decode {
            problem: DecodeProblem::AuthenticationFailed,
            ..
        }
    )
}

async fn tampering_is_detected(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let key = RecoveryKey::generate().unwrap();
    let phone = vault(store.clone(), dir.path(), "phone", &key).await;
    let never = CancelToken::new();
    let bytes = content(3 * CHUNK as usize + 10, 7);
    let path = dir.path().join("photo.jpg");
    std::fs::write(&path, &bytes).unwrap();
    let (attachment, _) = phone
        .attach_file(&path, "photo.jpg", "image/jpeg", None, &never)
        .await
        .unwrap();
    let other_path = dir.path().join("other.jpg");
    std::fs::write(&other_path, content(3 * CHUNK as usize + 10, 8)).unwrap();
    let (other, _) = phone
        .attach_file(&other_path, "other.jpg", "image/jpeg", None, &never)
        .await
        .unwrap();
    let root = format!("{}-attachments/", phone.vault_id());
    let name = |a: &Attachment, i: u64| format!("{root}{}", a.chunk_name(i));
    let original: Vec<Vec<u8>> = {
        let mut chunks = Vec::new();
        for i in 0..attachment.chunk_count() {
            chunks.push(
                store
                    .get(&name(&attachment, i), MAX_OBJECT_LEN)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        chunks
    };
    let restore = || async {
        for (i, chunk) in original.iter().enumerate() {
            store
                .put(&name(&attachment, i as u64), chunk.clone())
                .await
                .unwrap();
        }
    };
    let out = dir.path().join("out.jpg");
    let download = || phone.download_attachment(&attachment, &out, None, &never);

    // A flipped bit in chunk 1.
    let mut flipped = original[1].clone();
    flipped[40] ^= 1;
    store.put(&name(&attachment, 1), flipped).await.unwrap();
    let error = download().await.unwrap_err();
    assert!(is_auth_failure(&error), "{error:?}");
    assert!(!out.exists(), "nothing is written under the final name");
    restore().await;

    // Chunks 0 and 1 swapped (reordered).
    store
        .put(&name(&attachment, 0), original[1].clone())
        .await
        .unwrap();
    store
        .put(&name(&attachment, 1), original[0].clone())
        .await
        .unwrap();
    std::fs::remove_file(chatvault::attachment::transfer::partial_path(
        &out,
        &attachment.content_id,
    ))
    .ok();
    assert!(is_auth_failure(&download().await.unwrap_err()));
    restore().await;

    // Chunk 0 duplicated over chunk 1.
    store
        .put(&name(&attachment, 1), original[0].clone())
        .await
        .unwrap();
    assert!(is_auth_failure(&download().await.unwrap_err()));
    restore().await;

    // Chunk 2 swapped with chunk 2 of another file.
    let foreign = store
        .get(&name(&other, 2), MAX_OBJECT_LEN)
        .await
        .unwrap()
        .unwrap();
    store.put(&name(&attachment, 2), foreign).await.unwrap();
    assert!(is_auth_failure(&download().await.unwrap_err()));
    restore().await;

    // Chunk 3 (the last with content) truncated, then removed.
    let last = original[3].clone();
    store
        .put(&name(&attachment, 3), last[..last.len() - 5].to_vec())
        .await
        .unwrap();
    assert!(matches!(
        download().await.unwrap_err(),
        Error::Decode {
            problem: DecodeProblem::Truncated { .. },
            ..
        }
    ));
    store.delete(&name(&attachment, 3)).await.unwrap();
    assert!(matches!(
        download().await.unwrap_err(),
        Error::Integrity(IntegrityProblem::MissingObject { .. })
    ));
    assert!(!out.exists());
    restore().await;

    // A reference lying about the size (one byte shorter) fails the content check.
    let mut lying = attachment.clone();
    lying.size -= 1;
    let lie_out = dir.path().join("lie.jpg");
    assert!(matches!(
        phone
            .download_attachment(&lying, &lie_out, None, &never)
            .await
            .unwrap_err(),
        Error::Decode { .. }
    ));
    assert!(!lie_out.exists());

    // Intact again: the download succeeds and is byte-identical.
    download().await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[tokio::test]
async fn tampered_truncated_reordered_and_swapped_chunks_fail_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().to_path_buf()));
    tampering_is_detected(store).await;
}

/// Cancels its operation once `after` bytes are done; counts calls.
struct CancelAfter {
    after: u64,
    token: CancelToken,
    calls: AtomicU64,
}

impl TransferListener for CancelAfter {
    fn on_progress(&self, done: u64, _total: u64) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if done >= self.after {
            self.token.cancel();
        }
    }
}

#[tokio::test]
async fn cancelled_transfers_resume_without_repeating_finished_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let phone = vault(store.clone(), dir.path(), "phone", &key).await;
    let c = u64::from(CHUNK);
    let bytes = content(20 * CHUNK as usize + 3, 9);
    let path = dir.path().join("voice.ogg");
    std::fs::write(&path, &bytes).unwrap();

    let stop = CancelAfter {
        after: 7 * c,
        token: CancelToken::new(),
        calls: AtomicU64::new(0),
    };
    let error = phone
        .attach_file(&path, "voice.ogg", "audio/ogg", Some(&stop), &stop.token)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Cancelled));
    let (attachment, report) = phone
        .attach_file(&path, "voice.ogg", "audio/ogg", None, &CancelToken::new())
        .await
        .unwrap();
    assert_eq!(report.chunks_skipped, 7);
    assert_eq!(report.chunks_transferred, attachment.chunk_count() - 7);

    let out = dir.path().join("voice-restored.ogg");
    let stop = CancelAfter {
        after: 12 * c,
        token: CancelToken::new(),
        calls: AtomicU64::new(0),
    };
    let error = phone
        .download_attachment(&attachment, &out, Some(&stop), &stop.token)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Cancelled));
    assert!(!out.exists());
    let report = phone
        .download_attachment(&attachment, &out, None, &CancelToken::new())
        .await
        .unwrap();
    assert_eq!(report.chunks_skipped, 12);
    assert_eq!(report.chunks_transferred, 21 - 12);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // A partial file damaged on disk between two runs is caught, dropped, and the next run
    // starts over.
    let again = dir.path().join("voice-again.ogg");
    let stop = CancelAfter {
        after: 5 * c,
        token: CancelToken::new(),
        calls: AtomicU64::new(0),
    };
    phone
        .download_attachment(&attachment, &again, Some(&stop), &stop.token)
        .await
        .unwrap_err();
    let part = chatvault::attachment::transfer::partial_path(&again, &attachment.content_id);
    let mut damaged = std::fs::read(&part).unwrap();
    damaged[1000] ^= 1;
    std::fs::write(&part, damaged).unwrap();
    let error = phone
        .download_attachment(&attachment, &again, None, &CancelToken::new())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    assert!(!part.exists() && !again.exists());
    let report = phone
        .download_attachment(&attachment, &again, None, &CancelToken::new())
        .await
        .unwrap();
    assert_eq!(report.chunks_skipped, 0);
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}

/// Rewrites a later part of the file when the first chunk is done.
struct ChangeFileDuringUpload {
    path: std::path::PathBuf,
}

impl TransferListener for ChangeFileDuringUpload {
    fn on_progress(&self, done: u64, _total: u64) {
        if done == u64::from(CHUNK) {
            let mut bytes = std::fs::read(&self.path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&self.path, bytes).unwrap();
        }
    }
}

#[tokio::test]
async fn a_file_changed_during_upload_is_refused_not_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let phone = vault(store, dir.path(), "phone", &key).await;
    let path = dir.path().join("doc.pdf");
    std::fs::write(&path, content(3 * CHUNK as usize, 3)).unwrap();
    let listener = ChangeFileDuringUpload { path: path.clone() };
    let error = phone
        .attach_file(&path, "doc.pdf", "", Some(&listener), &CancelToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidInput(text) if text.contains("changed")),
        "{error:?}"
    );
}

async fn garbage_collection_follows_references(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let key = RecoveryKey::generate().unwrap();
    let phone = vault(store.clone(), dir.path(), "phone", &key).await;
    let never = CancelToken::new();
    let attach = |seed: u64| {
        let path = dir.path().join(format!("f{seed}"));
        std::fs::write(&path, content(2 * CHUNK as usize + 1, seed)).unwrap();
        let phone = &phone;
        let never = &never;
        async move {
            phone
                .attach_file(&path, "f", "", None, never)
                .await
                .unwrap()
                .0
        }
    };
    let shared = attach(1).await; // in two chats
    let single = attach(2).await; // in one chat
    attach(3).await; // uploaded, never referenced (an abandoned upload)
    let per = shared.chunk_count();
    phone
        .record(vec![
            message("a", "1", vec![shared.clone()]),
            message("b", "2", vec![shared.clone()]),
            message("c", "3", vec![single.clone()]),
        ])
        .unwrap();
    phone.sync(None, None).await.unwrap();
    let count = || async { chunk_objects(store.as_ref(), &phone).await.len() as u64 };
    assert_eq!(count().await, 3 * per);

    // Within the grace period nothing goes, not even the orphan.
    phone.collect_garbage(3_600_000).await.unwrap();
    assert_eq!(count().await, 3 * per);
    phone.collect_garbage(0).await.unwrap();
    assert_eq!(count().await, 2 * per, "the orphan is collected");

    // Still referenced from chat b: kept.
    phone
        .record(vec![Change::DeleteMessage {
            chat_id: "a".into(),
            message_id: "1".into(),
        }])
        .unwrap();
    phone.collect_garbage(0).await.unwrap();
    assert_eq!(count().await, 2 * per);

    // Chat b deleted by another device: gone once that device's change is synced.
    let tablet = vault(store.clone(), dir.path(), "tablet", &key).await;
    tablet.sync(None, None).await.unwrap();
    tablet
        .record(vec![Change::DeleteChat {
            chat_id: "b".into(),
        }])
        .unwrap();
    tablet.sync(None, None).await.unwrap();
    // The phone has not applied that deletion: it deletes no attachment content yet (it does
    // not pull: pulled changes belong to the app's listener, which only sync has).
    phone.collect_garbage(0).await.unwrap();
    assert_eq!(count().await, 2 * per);
    phone.sync(None, None).await.unwrap();
    phone.collect_garbage(0).await.unwrap();
    assert_eq!(count().await, per);
    let out = dir.path().join("single");
    phone
        .download_attachment(&single, &out, None, &never)
        .await
        .unwrap();
    let error = phone
        .download_attachment(&shared, &dir.path().join("shared"), None, &never)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        Error::Integrity(IntegrityProblem::MissingObject { .. })
    ));

    // Attaching the file again (as SYNC.md advises after that error) re-uploads what is gone.
    let again = attach(1).await;
    assert_eq!(again, shared);
    assert_eq!(count().await, 2 * per);
    phone
        .download_attachment(&shared, &dir.path().join("shared"), None, &never)
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_collection_removes_only_unreferenced_content() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().to_path_buf()));
    garbage_collection_follows_references(store).await;
}
