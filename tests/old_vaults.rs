//! A vault written before device keys, the roster and signed segments (by the chatvault CLI at
//! 059fc65; `tests/fixtures/vault-059fc65/README.md` says how): it needs no migration. A new
//! device restores it and adds itself to the roster; an old device's state directory opens, draws
//! its keys, adds itself at its next sync and signs from its next segment on, while its old
//! unsigned segments stay accepted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::roster::Signer;
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};
use common::{cached, copy_dir};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault-059fc65")
}

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

fn texts(vault: &Vault) -> Vec<String> {
    let mut texts: Vec<String> = vault
        .messages(None)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    texts.sort();
    texts
}

#[tokio::test]
async fn a_vault_from_before_device_keys_opens_without_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture().join("bucket"), &dir.path().join("bucket"));
    copy_dir(&fixture().join("phone-state"), &dir.path().join("phone"));
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let text = std::fs::read_to_string(fixture().join("key.txt")).unwrap();
    let key = RecoveryKey::parse(&text).unwrap();
    let expected = [
        "After the checkpoint",
        "Dinner at 7?",
        "Written on the tablet",
        "Yes",
    ];

    // A new device: everything, from the old checkpoint and the segments after it.
    let laptop = cached(
        Vault::open(
            store.clone(),
            &dir.path().join("laptop"),
            info("laptop"),
            &key,
        )
        .await
        .unwrap(),
    );
    laptop.sync(None, None).await.unwrap();
    assert_eq!(texts(&laptop), expected);
    let devices = laptop.devices().unwrap();
    assert_eq!(devices.len(), 1, "only the laptop has synced since");
    assert!(devices[0].is_this_device);
    let report = laptop.verify().await.unwrap();
    assert_eq!((report.roster_entries, report.roster_refused), (1, 0));
    assert!(report.unknown.is_empty(), "{:?}", report.unknown);

    // The old phone's state directory: it opens, adds itself, and signs what it writes next.
    let phone = Vault::open(
        store.clone(),
        &dir.path().join("phone"),
        info("phone"),
        &key,
    )
    .await
    .unwrap();
    phone.sync(None, None).await.unwrap();
    phone
        .record(vec![Change::UpsertMessage(Message {
            chat_id: "family".into(),
            message_id: "f5".into(),
            sender: "anna".into(),
            sent_at_ms: 1_700_000_004_000,
            text: "Signed now".into(),
            reply_to: None,
            attachments: Vec::new(),
            kind: "text".into(),
            payload: Vec::new(),
        })])
        .unwrap();
    phone.sync(None, None).await.unwrap();
    laptop.sync(None, None).await.unwrap();
    assert!(texts(&laptop).contains(&"Signed now".to_owned()));
    let devices = laptop.devices().unwrap();
    assert_eq!(devices.len(), 2);
    let old_phone = devices.iter().find(|d| d.id == phone.device_id()).unwrap();
    assert_eq!(old_phone.added_by, Signer::Recovery);
    // A fresh device checks the phone's new segment against its signature and accepts the old
    // unsigned ones below it.
    let fresh = cached(
        Vault::open(store, &dir.path().join("fresh"), info("fresh"), &key)
            .await
            .unwrap(),
    );
    fresh.sync(None, None).await.unwrap();
    assert_eq!(texts(&fresh).len(), expected.len() + 1);
    fresh.verify().await.unwrap();
}

/// After a revocation, a holder of epoch 0's keys cannot add unsigned segments under an old
/// device's id as a new branch of what it wrote before it had keys: its roster entry names the
/// tips of those segments, and every reader takes unsigned ones only at or below them.
#[tokio::test]
async fn after_a_revocation_unsigned_segments_of_an_old_device_are_taken_only_below_its_tips() {
    use chatvault::keys::VaultKeys;
    use chatvault::sync::batch::EncodedBatch;
    use chatvault::sync::segment::{ChatKeys, NewSegment, seal_segment};

    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture().join("bucket"), &dir.path().join("bucket"));
    copy_dir(&fixture().join("phone-state"), &dir.path().join("phone"));
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key =
        RecoveryKey::parse(&std::fs::read_to_string(fixture().join("key.txt")).unwrap()).unwrap();
    // The old phone adds itself, naming the tip of its unsigned segments (seq 2).
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
    phone.sync(None, None).await.unwrap();
    // A laptop, linked, then revoked.
    let (laptop, _, _) = common::link(&store, &phone, &dir.path().join("laptop"), "laptop").await;
    laptop.sync(None, None).await.unwrap();
    phone.revoke(laptop.device_id()).await.unwrap();

    // With epoch 0's keys (the laptop held them), unsigned segments under the phone's id, as it
    // wrote before it had keys: a new branch (seq 2 after its seq 1), and, once garbage
    // collection took the phone's old segments (its tips no longer listed), a seq 1 (which
    // needs no parent) and another seq 2 after it.
    let prefix = format!("{}/", phone.vault_id());
    let phone_dir = format!("{prefix}segments/{}/", phone.device_id().to_hex());
    let first = store
        .list(&phone_dir)
        .await
        .unwrap()
        .into_iter()
        .find(|info| info.key.contains("/0000000000000001-"))
        .unwrap();
    let first_tag =
        u64::from_str_radix(&first.key[phone_dir.len() + 17..phone_dir.len() + 33], 16).unwrap();
    let hash_of = |bytes: &[u8]| -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).into()
    };
    let first_hash = hash_of(&store.get(&first.key, u64::MAX).await.unwrap().unwrap());
    let forge = |seq: u64, tag: u64, previous: Option<(u64, [u8; 32])>| {
        seal_segment(
            &VaultKeys::derive(&key),
            &ChatKeys::new(),
            &NewSegment {
                device: phone.device_id(),
                seq,
                tag,
                previous,
                seen: &[],
                grants: &[],
                operations: &EncodedBatch::from_operations(&[]),
                device_name: "phone",
                platform: "test",
                signer: None,
            },
        )
        .unwrap()
    };
    let mut forged = Vec::new();
    let (name, object, _) = forge(2, 0xf00d, Some((first_tag, first_hash)));
    store.put(&format!("{prefix}{name}"), object).await.unwrap();
    forged.push(name);
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    assert!(store.get(&first.key, u64::MAX).await.unwrap().is_none());
    let (name, object, seq_one_hash) = forge(1, 0xbeef, None);
    store.put(&format!("{prefix}{name}"), object).await.unwrap();
    forged.push(name);
    let (name, object, _) = forge(2, 0xcafe, Some((0xbeef, seq_one_hash)));
    store.put(&format!("{prefix}{name}"), object).await.unwrap();
    forged.push(name);

    // A new device restores everything the phone wrote, unsigned and signed, and refuses the
    // new branch (verify names it); the tablet, which never added itself, was covered by the
    // phone's checkpoint before the revocation.
    let fresh = cached(
        Vault::open(
            store.clone(),
            &dir.path().join("fresh"),
            info("fresh"),
            &key,
        )
        .await
        .unwrap(),
    );
    fresh.sync(None, None).await.unwrap();
    assert_eq!(
        texts(&fresh),
        [
            "After the checkpoint",
            "Dinner at 7?",
            "Written on the tablet",
            "Yes"
        ]
    );
    let report = fresh.verify().await.unwrap();
    for name in &forged {
        assert!(
            report.unknown.contains(name),
            "{name} not in {:?}",
            report.unknown
        );
    }
    // The phone, which wrote none of them, goes on as itself.
    let before = phone.device_id();
    phone.sync(None, None).await.unwrap();
    assert_eq!(phone.device_id(), before);
}
