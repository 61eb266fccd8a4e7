//! Rotating the recovery key on a directory store: the new key restores everything and reopens
//! the devices' state directories; the old key opens nothing written afterwards; linked devices
//! keep syncing.

use std::sync::Arc;

use super::*;
use crate::keys::KeyEpochs;
use crate::store::DirectoryStore;
use crate::vault::test_devices::{device, ids, link, message, phone_with_a_message};

#[tokio::test]
async fn the_new_key_restores_everything_and_the_old_one_opens_nothing_new() {
    let (dir, store, old_key, phone) = phone_with_a_message().await;
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    laptop.sync(None, None).await.unwrap();
    let tablet = device(&store, dir.path(), "tablet", &old_key).await;
    tablet.sync(None, None).await.unwrap();

    let new_key = phone.rotate_recovery_key().await.unwrap();
    assert_ne!(new_key.to_bytes(), old_key.to_bytes());
    // Devices open with the old key stop, with the error that says what to do.
    for vault in [&phone, &tablet] {
        assert!(matches!(
            vault.sync(None, None).await,
            Err(Error::RecoveryKeyReplaced)
        ));
    }
    // The linked laptop moves to the new epoch and keeps writing.
    laptop.record(vec![message("laptop-after")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    assert_eq!(laptop.epochs().unwrap().newest().0, 1);
    // The laptop, which never held a recovery key, revokes the tablet: the epoch it starts is
    // boxed to the new recovery key (the rotation named it), not to the old one.
    laptop.revoke(tablet.device_id()).await.unwrap();
    laptop.record(vec![message("laptop-after-revoke")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    assert_eq!(laptop.epochs().unwrap().newest().0, 2);

    // The phone's state directory opens with the new key and goes on.
    drop(phone);
    let phone = device(&store, dir.path(), "phone", &new_key).await;
    phone.sync(None, None).await.unwrap();
    phone.record(vec![message("phone-after")]).unwrap();
    phone.sync(None, None).await.unwrap();
    phone.checkpoint().await.unwrap();
    let everything = [
        "before",
        "laptop-after",
        "laptop-after-revoke",
        "phone-after",
    ];
    assert_eq!(ids(&phone), everything);

    // A new device with the new key restores everything, history included.
    let fresh = device(&store, dir.path(), "fresh", &new_key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), everything);
    fresh.verify().await.unwrap();

    // A new device with the old key holds no key of the new epoch: it opens nothing written
    // since the rotation, and its sync says why.
    let stale = device(&store, dir.path(), "stale", &old_key).await;
    assert!(matches!(
        stale.sync(None, None).await,
        Err(Error::RecoveryKeyReplaced)
    ));
    let held = stale.epochs().unwrap();
    assert!(held.trees(1).is_empty() && held.trees(2).is_empty());
    let prefix = stale.prefix();
    let mut refused = 0;
    for object in store.list(&format!("{prefix}segments/")).await.unwrap() {
        let bytes = store.get(&object.key, u64::MAX).await.unwrap().unwrap();
        let name = &object.key[prefix.len()..];
        if sealing::epoch_of(&bytes, ObjectKind::Segment).unwrap() >= 1 {
            assert!(crate::sync::segment::open_segment(&*held, name, &bytes).is_err());
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused}");

    // A second rotation, from the reopened phone: the newest key reaches back through both.
    let newest_key = phone.rotate_recovery_key().await.unwrap();
    assert!(matches!(
        device(&store, dir.path(), "fresh2", &new_key)
            .await
            .sync(None, None)
            .await,
        Err(Error::RecoveryKeyReplaced)
    ));
    let again = device(&store, dir.path(), "fresh3", &newest_key).await;
    again.sync(None, None).await.unwrap();
    assert_eq!(ids(&again), everything);
    assert_eq!(again.epochs().unwrap().newest().0, 3);
}

#[tokio::test]
async fn only_a_vault_open_with_the_recovery_key_rotates_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let phone = device(&store, dir.path(), "phone", &key).await;
    phone.sync(None, None).await.unwrap();
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    assert!(matches!(
        laptop.rotate_recovery_key().await,
        Err(Error::Link(crate::LinkProblem::NotAllowed))
    ));
}
