//! The roster as devices keep it: entries fetched once and kept, forged ones left out, tampered
//! and oversized objects refused with typed errors, on a directory store.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::devices::DeviceSecrets;
use crate::keys::RecoveryKey;
use crate::store::{DirectoryStore, ObjectStore, StoreError};
use crate::vault::DeviceInfo;

struct Bucket {
    _dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    key: RecoveryKey,
}

impl Bucket {
    fn new() -> Bucket {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
        Bucket {
            _dir: dir,
            store,
            key: RecoveryKey::generate().unwrap(),
        }
    }

    async fn device(&self, state: &Path, name: &str) -> Vault {
        let info = DeviceInfo {
            name: name.into(),
            platform: "test".into(),
        };
        Vault::open(self.store.clone(), state, info, &self.key)
            .await
            .unwrap()
    }

    fn prefix(&self) -> String {
        format!("{}/", VaultKeys::derive(&self.key).vault_id().to_hex())
    }

    async fn roster_names(&self) -> Vec<String> {
        self.names_under("roster/").await
    }

    /// The names under `folder` of the vault prefix (relative to the prefix), sorted.
    async fn names_under(&self, folder: &str) -> Vec<String> {
        let prefix = self.prefix();
        let mut names: Vec<String> = self
            .store
            .list(&format!("{prefix}{folder}"))
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.key[prefix.len()..].to_owned())
            .collect();
        names.sort();
        names
    }
}

fn names(vault: &Vault) -> Vec<(String, bool)> {
    vault
        .devices()
        .unwrap()
        .into_iter()
        .map(|device| (device.name, device.is_this_device))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn each_device_adds_itself_once_and_sees_the_others() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    assert!(phone.devices().unwrap().is_empty(), "nobody before a sync");
    phone.sync(None, None).await.unwrap();
    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    laptop.sync(None, None).await.unwrap();
    phone.sync(None, None).await.unwrap();
    // Syncing again adds nothing: each device is in the roster once.
    laptop.sync(None, None).await.unwrap();
    assert_eq!(bucket.roster_names().await.len(), 2);

    assert_eq!(
        names(&phone),
        [("laptop".to_owned(), false), ("phone".to_owned(), true)]
    );
    assert_eq!(
        names(&laptop),
        [("laptop".to_owned(), true), ("phone".to_owned(), false)]
    );
    let listed = laptop.devices().unwrap();
    let this = listed.iter().find(|d| d.is_this_device).unwrap();
    assert_eq!(this.id, laptop.device_id());
    assert_eq!(this.platform, "test");
    assert_eq!(this.added_by, Signer::Recovery);
    assert_eq!(this.revoked_at_ms, None);

    let report = phone.verify().await.unwrap();
    assert_eq!((report.roster_entries, report.roster_refused), (2, 0));
    assert!(report.unknown.is_empty(), "{:?}", report.unknown);
}

/// Seals an add of a made-up device, signed by a key that is not the recovery signing key but
/// claims to be: what a holder of the log key (a revoked device, later) could write.
fn forged_add(keys: &VaultKeys, parents: Vec<EntryId>) -> (String, Vec<u8>) {
    let forger = DeviceSecrets::generate().unwrap();
    let entry = RosterEntry {
        signer: Signer::Recovery,
        parents,
        made_at_ms: 1,
        epoch: 0,
        change: RosterChange::Add {
            device: DeviceId([0xf0; 16]),
            keys: forger.public(),
            name: "intruder".into(),
            platform: "test".into(),
            first_signed_seq: 1,
            unsigned_tips: Vec::new(),
        },
    };
    let signed = SignedEntry::sign(keys.vault_id(), entry, |m| forger.sign(m));
    (
        roster_name(&signed.id()),
        seal_entry(keys, &signed).unwrap(),
    )
}

#[tokio::test]
async fn an_entry_with_a_forged_signature_is_kept_out_of_the_roster() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    phone.sync(None, None).await.unwrap();
    let keys = VaultKeys::derive(&bucket.key);
    let (name, object) = forged_add(&keys, Vec::new());
    bucket
        .store
        .put(&format!("{}{name}", bucket.prefix()), object)
        .await
        .unwrap();

    phone.sync(None, None).await.unwrap();
    assert_eq!(names(&phone), [("phone".to_owned(), true)]);
    let report = phone.verify().await.unwrap();
    assert_eq!((report.roster_entries, report.roster_refused), (2, 1));
}

#[tokio::test]
async fn a_tampered_roster_object_stops_the_sync_and_keeps_nothing() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    phone.sync(None, None).await.unwrap();
    let [name] = bucket.roster_names().await.try_into().unwrap();
    let key = format!("{}{name}", bucket.prefix());
    let mut object = bucket.store.get(&key, u64::MAX).await.unwrap().unwrap();
    let last = object.len() - 1;
    object[last] ^= 1;
    bucket.store.put(&key, object).await.unwrap();

    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    let error = laptop.sync(None, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Decode {
                kind: ObjectKind::Roster,
                problem: DecodeProblem::AuthenticationFailed
            }
        ),
        "{error:?}"
    );
    assert!(laptop.devices().unwrap().is_empty());
    assert!(matches!(
        phone.verify().await.unwrap_err(),
        Error::Decode {
            problem: DecodeProblem::AuthenticationFailed,
            ..
        }
    ));
    // The phone kept its entry before the flip and fetches no entry twice: its sync goes on
    // (verify above is what refetches everything), its roster unchanged.
    phone.sync(None, None).await.unwrap();
    assert_eq!(names(&phone), [("phone".to_owned(), true)]);
}

#[tokio::test]
async fn an_entry_moved_to_another_name_does_not_open() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    phone.sync(None, None).await.unwrap();
    let [name] = bucket.roster_names().await.try_into().unwrap();
    let from = format!("{}{name}", bucket.prefix());
    let object = bucket.store.get(&from, u64::MAX).await.unwrap().unwrap();
    bucket.store.delete(&from).await.unwrap();
    let to = format!("{}{}", bucket.prefix(), roster_name(&[7; 16]));
    bucket.store.put(&to, object).await.unwrap();

    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    assert!(matches!(
        laptop.sync(None, None).await.unwrap_err(),
        Error::Decode {
            kind: ObjectKind::Roster,
            problem: DecodeProblem::AuthenticationFailed
        }
    ));
}

#[tokio::test]
async fn an_oversized_roster_object_is_refused_before_it_is_read() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let name = roster_name(&[9; 16]);
    let big = vec![0u8; MAX_ROSTER_OBJECT as usize + 1];
    bucket
        .store
        .put(&format!("{}{name}", bucket.prefix()), big)
        .await
        .unwrap();
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    let error = phone.sync(None, None).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Store(StoreError::TooLarge { limit, .. }) if *limit == MAX_ROSTER_OBJECT
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_withheld_entry_stays_in_the_roster_of_a_device_that_saw_it() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    phone.sync(None, None).await.unwrap();
    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    laptop.sync(None, None).await.unwrap();
    phone.sync(None, None).await.unwrap();
    for name in bucket.roster_names().await {
        bucket
            .store
            .delete(&format!("{}{name}", bucket.prefix()))
            .await
            .unwrap();
    }
    phone.sync(None, None).await.unwrap();
    assert_eq!(
        names(&phone),
        [("laptop".to_owned(), false), ("phone".to_owned(), true)]
    );
    // Reopened from its state directory, the phone still has both.
    drop(phone);
    let phone = bucket.device(&states.path().join("phone"), "phone").await;
    assert_eq!(phone.devices().unwrap().len(), 2);
}

#[tokio::test]
async fn a_device_name_longer_than_the_roster_carries_is_refused_at_open() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let info = DeviceInfo {
        name: "n".repeat(crate::sync::roster::MAX_DEVICE_NAME_LEN + 1),
        platform: "test".into(),
    };
    let error = Vault::open(bucket.store.clone(), states.path(), info, &bucket.key)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
}

#[test]
fn roster_objects_are_sealed_in_their_entrys_epoch() {
    let keys = VaultKeys::derive(&RecoveryKey::generate().unwrap());
    let (name, object) = forged_add(&keys, Vec::new());
    let id = crate::sync::roster::parse_roster_name(&name).unwrap();
    assert!(open_entry(&keys, &id, &object).is_ok());
    assert_eq!(sealing::epoch_of(&object, ObjectKind::Roster).unwrap(), 0);
    let other = VaultKeys::derive(&RecoveryKey::generate().unwrap());
    assert!(open_entry(&other, &id, &object).is_err());
}

/// Opens the newest segment of the bucket's one writing device, lets `edit` change its body and
/// seals it again under its name: what a holder of the log key (a device, later a revoked one)
/// could write.
async fn reseal_newest_segment(bucket: &Bucket, edit: impl FnOnce(&mut Vec<u8>)) {
    let keys = VaultKeys::derive(&bucket.key);
    let prefix = bucket.prefix();
    let name = bucket.names_under("segments/").await.pop().unwrap();
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::Segment,
        name: &name,
    };
    let key = format!("{prefix}{name}");
    let object = bucket.store.get(&key, u64::MAX).await.unwrap().unwrap();
    let mut body = sealing::open(&keys.log().0, &context, &object)
        .unwrap()
        .to_vec();
    edit(&mut body);
    let resealed = sealing::seal(&keys.log().0, &context, &body).unwrap();
    bucket.store.put(&key, resealed).await.unwrap();
}

/// A phone whose roster entry says it signs from `first_signed_seq` on, after two synced
/// segments.
async fn phone_with_two_segments(bucket: &Bucket, states: &Path, first_signed_seq: u64) -> Vault {
    let phone = bucket.device(&states.join("phone"), "phone").await;
    lock(&phone.local)
        .unwrap()
        .set_meta(
            super::super::identity::META_FIRST_SIGNED_SEQ,
            &first_signed_seq.to_be_bytes(),
        )
        .unwrap();
    for id in ["1", "2"] {
        phone
            .record(vec![crate::sync::Change::UpsertChat(crate::sync::Chat {
                chat_id: id.into(),
                title: id.into(),
                members: Vec::new(),
                payload: Vec::new(),
            })])
            .unwrap();
        phone.sync(None, None).await.unwrap();
    }
    phone
}

fn bad_signature(error: &Error) -> bool {
    matches!(
        error,
        Error::Decode {
            kind: ObjectKind::Segment,
            problem: DecodeProblem::BadSignature
        }
    )
}

#[tokio::test]
async fn a_segment_whose_signature_does_not_verify_is_refused_by_sync_and_verify() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = phone_with_two_segments(&bucket, states.path(), 1).await;
    reseal_newest_segment(&bucket, |body| {
        let last = body.len() - 1;
        body[last] ^= 1;
    })
    .await;
    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    let error = laptop.sync(None, None).await.unwrap_err();
    assert!(bad_signature(&error), "{error:?}");
    assert!(bad_signature(&phone.verify().await.unwrap_err()));
}

#[tokio::test]
async fn an_unsigned_segment_of_a_device_that_signs_is_refused() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    phone_with_two_segments(&bucket, states.path(), 2).await;
    // Segment 2, stripped of its signature: the roster says the phone signs from 2 on.
    reseal_newest_segment(&bucket, |body| body.truncate(body.len() - 66)).await;
    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    let error = laptop.sync(None, None).await.unwrap_err();
    assert!(bad_signature(&error), "{error:?}");
}

#[tokio::test]
async fn unsigned_segments_before_a_devices_first_signed_one_stay_accepted() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    let phone = phone_with_two_segments(&bucket, states.path(), 3).await;
    // As if sealed before the phone had device keys.
    reseal_newest_segment(&bucket, |body| body.truncate(body.len() - 66)).await;
    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    laptop.sync(None, None).await.unwrap();
    assert_eq!(laptop.chats().unwrap().len(), 2);
    let phone_entry = laptop
        .devices()
        .unwrap()
        .into_iter()
        .find(|device| device.id == phone.device_id())
        .unwrap();
    assert_eq!(phone_entry.name, "phone");
    assert_eq!(
        laptop.current_roster().unwrap().devices[&phone.device_id()].first_signed_seq,
        3
    );
}

#[tokio::test]
async fn a_signature_that_is_not_the_bodys_last_field_is_malformed() {
    let bucket = Bucket::new();
    let states = tempfile::tempdir().unwrap();
    phone_with_two_segments(&bucket, states.path(), 1).await;
    // A byte of padding after the signature field (field 7 again, an empty string).
    reseal_newest_segment(&bucket, |body| body.extend_from_slice(&[0x3a, 0x00])).await;
    let laptop = bucket.device(&states.path().join("laptop"), "laptop").await;
    let error = laptop.sync(None, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Decode {
                kind: ObjectKind::Segment,
                problem: DecodeProblem::Malformed(_)
            }
        ),
        "{error:?}"
    );
}
