//! Devices linked by QR code over the bucket (docs/DEVICES.md): a phone opened with the recovery
//! key offers a link, a laptop answers it, the person types the laptop's check code on the
//! phone, and the laptop joins the vault without ever holding the recovery key; on a directory
//! store and on Garage.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::roster::Signer;
use chatvault::sync::{Change, Message};
use chatvault::vault::{CancelToken, DeviceInfo, DeviceKey, LinkJoining, Vault};
use chatvault::{Error, LinkProblem};
use common::{cached, link};

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

fn message(id: &str) -> Change {
    Change::UpsertMessage(Message {
        chat_id: "c".into(),
        message_id: id.into(),
        sender: "me".into(),
        sent_at_ms: 1,
        text: id.into(),
        reply_to: None,
        attachments: Vec::new(),
        kind: "text".into(),
        payload: Vec::new(),
    })
}

fn ids(vault: &Vault) -> Vec<String> {
    let mut ids: Vec<String> = vault
        .messages(None)
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    ids.sort();
    ids
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files(&entry.path()));
        } else {
            out.push(std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

/// Answers `offer` as a new device `name` with its state in `dir` and a fresh device key.
async fn answer(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    name: &str,
    offer: &str,
) -> chatvault::Result<LinkJoining> {
    let device_key = DeviceKey::generate().unwrap();
    Vault::join_link(store.clone(), dir, info(name), offer, device_key).await
}

async fn a_linked_device_syncs_both_ways_without_the_recovery_key(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let key = RecoveryKey::generate().unwrap();
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
    phone.record(vec![message("from-phone")]).unwrap();
    phone.sync(None, None).await.unwrap();

    let laptop_dir = dir.path().join("laptop");
    let (laptop, added, device_key) = link(&store, &phone, &laptop_dir, "laptop").await;
    let laptop = cached(laptop);
    assert_eq!(added.added_by, Signer::Device(phone.device_id()));
    assert_eq!(added.name, "laptop");

    // Both ways.
    laptop.sync(None, None).await.unwrap();
    assert_eq!(ids(&laptop), ["from-phone"]);
    laptop.record(vec![message("from-laptop")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    phone.sync(None, None).await.unwrap();
    assert_eq!(ids(&phone), ["from-laptop", "from-phone"]);

    // Both see both, each added by whom it was.
    for vault in [&phone, &laptop] {
        let devices = vault.devices().unwrap();
        assert_eq!(devices.len(), 2);
        for device in devices {
            let expected = if device.id == phone.device_id() {
                Signer::Recovery
            } else {
                Signer::Device(phone.device_id())
            };
            assert_eq!(device.added_by, expected);
            assert_eq!(device.is_this_device, device.id == vault.device_id());
        }
    }
    let report = laptop.verify().await.unwrap();
    assert_eq!((report.roster_entries, report.roster_refused), (2, 0));
    assert!(report.unknown.is_empty(), "{:?}", report.unknown);
    // The link's objects are gone once the laptop read its welcome.
    let links = store
        .list(&format!("{}/links/", phone.vault_id()))
        .await
        .unwrap();
    assert!(links.is_empty(), "{links:?}");

    // The laptop never held the recovery key: neither its bytes nor its text are in its state.
    drop(laptop);
    let text = key.to_text();
    for file in files(&laptop_dir) {
        for secret in [&key.to_bytes()[..], text.as_bytes()] {
            assert!(!file.windows(secret.len()).any(|w| w == secret));
        }
    }
    // It opens again with its device key, and only with it.
    let wrong = Vault::open_device(
        store.clone(),
        &laptop_dir,
        info("laptop"),
        &DeviceKey::generate().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(wrong, Error::WrongDeviceKey), "{wrong:?}");
    let laptop = cached(
        Vault::open_device(store.clone(), &laptop_dir, info("laptop"), &device_key)
            .await
            .unwrap(),
    );
    assert_eq!(laptop.device_id(), added.id);
    laptop.sync(None, None).await.unwrap();
    assert_eq!(ids(&laptop), ["from-laptop", "from-phone"]);
    laptop.verify().await.unwrap();
}

#[tokio::test]
async fn a_linked_device_syncs_both_ways_on_a_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    a_linked_device_syncs_both_ways_without_the_recovery_key(Arc::new(DirectoryStore::new(
        dir.path().to_path_buf(),
    )))
    .await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn a_linked_device_syncs_both_ways_on_garage() {
    if let Some(config) = common::s3_server("GARAGE") {
        a_linked_device_syncs_both_ways_without_the_recovery_key(Arc::new(
            chatvault::store::S3Store::new(config).unwrap(),
        ))
        .await;
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    store: Arc<dyn ObjectStore>,
    phone: Vault,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(root.join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let phone = Vault::open(store.clone(), &root.join("phone"), info("phone"), &key)
        .await
        .unwrap();
    phone.sync(None, None).await.unwrap();
    Setup {
        _dir: dir,
        root,
        store,
        phone,
    }
}

#[tokio::test]
async fn one_wrong_code_burns_the_link_on_both_sides() {
    let s = setup().await;
    let offering = s
        .phone
        .offer_link(Duration::from_secs(120), Vec::new())
        .unwrap();
    let laptop_dir = s.root.join("laptop");
    let joining = answer(&s.store, &laptop_dir, "laptop", offering.text())
        .await
        .unwrap();
    let wrong = if joining.check_code() == "000000" {
        "000001"
    } else {
        "000000"
    };
    let cancel = CancelToken::new();
    let (completed, finished) = tokio::join!(
        s.phone.complete_link(&offering, wrong, &cancel),
        joining.finish(&cancel)
    );
    assert!(matches!(
        completed.unwrap_err(),
        Error::Link(LinkProblem::CheckCodeWrong)
    ));
    assert!(matches!(
        finished.unwrap_err(),
        Error::Link(LinkProblem::Burned)
    ));
    // The offering is spent, the roster unchanged, the laptop holds no device.
    assert!(matches!(
        s.phone
            .complete_link(&offering, joining.check_code(), &cancel)
            .await
            .unwrap_err(),
        Error::Link(LinkProblem::Burned)
    ));
    s.phone.sync(None, None).await.unwrap();
    assert_eq!(s.phone.devices().unwrap().len(), 1);
    assert!(matches!(
        Vault::open_device(
            s.store.clone(),
            &laptop_dir,
            info("laptop"),
            &DeviceKey::generate().unwrap()
        )
        .await
        .unwrap_err(),
        Error::InvalidInput(_)
    ));
}

#[tokio::test]
async fn an_offer_nobody_answers_expires() {
    let s = setup().await;
    let offering = s
        .phone
        .offer_link(Duration::from_secs(1), Vec::new())
        .unwrap();
    let error = s
        .phone
        .complete_link(&offering, "123456", &CancelToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Link(LinkProblem::Expired)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_offer_past_its_expiry_is_refused_by_the_joiner() {
    let s = setup().await;
    // The phone's clock an hour behind: its offer expired long ago by the laptop's.
    s.phone.set_clock_offset_ms(-3_600_000);
    let offering = s
        .phone
        .offer_link(Duration::from_secs(60), Vec::new())
        .unwrap();
    let error = answer(&s.store, &s.root.join("laptop"), "laptop", offering.text())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Link(LinkProblem::Expired)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_second_device_answering_the_same_offer_is_refused() {
    let s = setup().await;
    let offering = s
        .phone
        .offer_link(Duration::from_secs(60), Vec::new())
        .unwrap();
    answer(&s.store, &s.root.join("laptop"), "laptop", offering.text())
        .await
        .unwrap();
    let error = answer(
        &s.store,
        &s.root.join("intruder"),
        "intruder",
        offering.text(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, Error::Link(LinkProblem::AlreadyUsed)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_cancelled_wait_stops_with_cancelled() {
    let s = setup().await;
    let offering = s
        .phone
        .offer_link(Duration::from_secs(60), Vec::new())
        .unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(
        s.phone
            .complete_link(&offering, "123456", &cancel)
            .await
            .unwrap_err(),
        Error::Cancelled
    ));
}

#[tokio::test]
async fn a_state_directory_with_a_device_cannot_join() {
    let s = setup().await;
    let offering = s
        .phone
        .offer_link(Duration::from_secs(60), Vec::new())
        .unwrap();
    let error = answer(&s.store, &s.root.join("phone"), "again", offering.text())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    let garbage = answer(
        &s.store,
        &s.root.join("laptop"),
        "laptop",
        "CHATVAULT-LINK:AAAA",
    )
    .await
    .unwrap_err();
    assert!(matches!(garbage, Error::InvalidInput(_)), "{garbage:?}");
}

#[tokio::test]
async fn garbage_collection_deletes_links_abandoned_for_a_day_and_keeps_fresh_ones() {
    let s = setup().await;
    let links_dir = s.root.join("bucket").join(s.phone.vault_id()).join("links");
    // Two joiners that never hear back: one a day and a half ago, one now.
    let mut links = Vec::new();
    for name in ["old", "fresh"] {
        let offering = s
            .phone
            .offer_link(Duration::from_secs(600), Vec::new())
            .unwrap();
        answer(&s.store, &s.root.join(name), name, offering.text())
            .await
            .unwrap();
        let dirs: Vec<_> = std::fs::read_dir(&links_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| !links.contains(path))
            .collect();
        links.extend(dirs);
    }
    let old_join = links[0].join("join");
    std::fs::File::options()
        .write(true)
        .open(&old_join)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(36 * 3600))
        .unwrap();
    let deleted = s.phone.collect_garbage(0).await.unwrap();
    assert_eq!(deleted, 1);
    assert!(!old_join.exists());
    assert!(links[1].join("join").exists());
}

/// A provider (no keys) lists a made-up segment name under a linked device's id: the device
/// takes it for a copy of itself and forks off. It must still open with its device key, and it
/// adds its new id to the roster, signed with the keys of the id it had.
#[tokio::test]
async fn a_linked_device_that_forks_off_reopens_and_rejoins_the_roster() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let phone = Vault::open(
        store.clone(),
        &dir.path().join("phone"),
        info("phone"),
        &key,
    )
    .await
    .unwrap();
    phone.sync(None, None).await.unwrap();
    let laptop_dir = dir.path().join("laptop");
    let (laptop, _, device_key) = link(&store, &phone, &laptop_dir, "laptop").await;
    laptop.record(vec![message("a")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    let old_id = laptop.device_id();
    let bogus = format!(
        "{}/segments/{}/{:016x}-{:016x}-{:016x}",
        laptop.vault_id(),
        old_id.to_hex(),
        7,
        0xaa,
        0xbb
    );
    store.put(&bogus, b"garbage".to_vec()).await.unwrap();
    // The made-up segment does not authenticate, but the fork happened first.
    let _ = laptop.sync(None, None).await;
    let new_id = laptop.device_id();
    assert_ne!(new_id, old_id);
    drop(laptop);
    store.delete(&bogus).await.unwrap();
    let laptop = Vault::open_device(store.clone(), &laptop_dir, info("laptop"), &device_key)
        .await
        .unwrap();
    assert_eq!(laptop.device_id(), new_id);
    laptop.sync(None, None).await.unwrap();
    let devices = laptop.devices().unwrap();
    let this = devices.iter().find(|d| d.is_this_device).unwrap();
    assert_eq!(this.id, new_id);
    assert_eq!(this.added_by, Signer::Device(old_id));
    phone.sync(None, None).await.unwrap();
    assert_eq!(phone.devices().unwrap().len(), 3);
    phone.verify().await.unwrap();
}
