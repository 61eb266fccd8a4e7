//! What small, frequent syncs cost: a phone that syncs as messages arrive uploads in proportion
//! to what it carries, checkpoints included, never its whole history every few dozen syncs.

use std::sync::Arc;

use chatvault::keys::RecoveryKey;
use chatvault::store::{MemoryStore, ObjectStore};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;
use common::cached;

const CHATS: u64 = 200;

/// A message of 5-24 words from a vocabulary of about 2,000, so text compresses like real
/// chat text (about 2:1), not like repeated words.
fn message(index: u64) -> Change {
    let mut seed = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut word = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = seed % 2048;
        let syllables = [
            "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "ya", "zo",
        ];
        format!(
            "{}{}{}",
            syllables[(n % 12) as usize],
            syllables[(n / 12 % 12) as usize],
            if n > 144 {
                syllables[(n / 144 % 12) as usize]
            } else {
                ""
            }
        )
    };
    let words = 5 + index % 20;
    Change::UpsertMessage(Message {
        chat_id: format!("chat-{:03}", index % CHATS),
        message_id: format!("m{index:08}"),
        sender: format!("user{}", index % 7),
        sent_at_ms: 1_600_000_000_000 + index as i64 * 1000,
        text: (0..words).map(|_| word()).collect::<Vec<_>>().join(" "),
        ..Message::default()
    })
}

/// `syncs` syncs of 10 new messages spread over the chats; returns the bytes they uploaded and
/// how many of them also wrote a checkpoint (more than the one segment).
async fn small_syncs(vault: &Vault, next: &mut u64, syncs: usize) -> (u64, usize) {
    let (mut uploaded, mut checkpoints) = (0, 0);
    for _ in 0..syncs {
        vault
            .record((*next..*next + 10).map(message).collect())
            .unwrap();
        *next += 10;
        let report = vault.sync(None, None).await.unwrap();
        uploaded += report.bytes_up;
        checkpoints += usize::from(report.objects_up > 1);
    }
    (uploaded, checkpoints)
}

#[tokio::test]
async fn small_syncs_upload_their_segments_and_checkpoints_only_in_proportion() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = DeviceInfo {
        name: "phone".into(),
        platform: "test".into(),
    };
    let phone = cached(Vault::open(store, dir.path(), info, &key).await.unwrap());
    let mut next = 0;
    for _ in 0..40 {
        phone
            .record((next..next + 1000).map(message).collect())
            .unwrap();
        next += 1000;
    }
    let first_backup = phone.sync(None, None).await.unwrap().bytes_up;
    assert!(first_backup > 2_000_000, "{first_backup}");

    // Without a checkpoint yet: 200 small syncs upload their segments and nothing else (the
    // first checkpoint waits for 256 segments).
    let (_, checkpoints) = small_syncs(&phone, &mut next, 200).await;
    assert_eq!(checkpoints, 0);

    // With a checkpoint of the whole vault: the next one waits until the new segments hold a
    // quarter of its bytes (and number at least 64), not for 64 syncs however small.
    let checkpoint = phone.checkpoint().await.unwrap().bytes;
    assert!(checkpoint > first_backup / 2, "{checkpoint}");
    let (segments, checkpoints) = small_syncs(&phone, &mut next, 200).await;
    assert_eq!(checkpoints, 0);
    assert!(segments * 4 < checkpoint, "{segments} of {checkpoint}");
    let mut since = segments;
    loop {
        let (uploaded, wrote) = small_syncs(&phone, &mut next, 1).await;
        if wrote == 1 {
            // The sync that wrote it found a quarter of the checkpoint in new segments (its own
            // segment, a few KiB, included).
            assert!((since + 8192) * 4 >= checkpoint, "{since} of {checkpoint}");
            assert!(uploaded > checkpoint, "{uploaded}");
            break;
        }
        since += uploaded;
        assert!(
            since * 4 < checkpoint + 64 * 4096,
            "no checkpoint after {since} bytes"
        );
    }
    assert_eq!(
        phone.messages(None).unwrap().len() as u64,
        next,
        "every message is still there"
    );
}

#[tokio::test]
async fn what_a_checkpoint_replaced_goes_without_anyone_calling_gc() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ObjectStore> = memory.clone();
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = |name: &str| DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    };
    let phone = cached(
        Vault::open(store.clone(), &dir.path().join("p"), info("p"), &key)
            .await
            .unwrap(),
    );
    for i in 0..3 {
        phone.record(vec![message(i)]).unwrap();
        phone.sync(None, None).await.unwrap();
    }
    phone.checkpoint().await.unwrap();
    let segments = || async {
        memory
            .list("")
            .await
            .unwrap()
            .iter()
            .filter(|o| o.key.contains("/segments/"))
            .count()
    };
    // By default the checkpoint must be a week old first: nothing goes yet.
    assert_eq!(phone.sync(None, None).await.unwrap().objects_deleted, 0);
    assert_eq!(segments().await, 3);
    // With no grace period, the next sync deletes the three covered segments by itself.
    phone.set_auto_gc_grace_ms(Some(0));
    let report = phone.sync(None, None).await.unwrap();
    assert_eq!(report.objects_deleted, 3);
    assert_eq!(segments().await, 0);
    assert_eq!(phone.sync(None, None).await.unwrap().objects_deleted, 0);
    // A new device restores everything from the checkpoint.
    let fresh = cached(
        Vault::open(store, &dir.path().join("f"), info("f"), &key)
            .await
            .unwrap(),
    );
    fresh.sync(None, None).await.unwrap();
    assert_eq!(fresh.messages(None).unwrap(), phone.messages(None).unwrap());
    assert_eq!(fresh.messages(None).unwrap().len(), 3);
}
