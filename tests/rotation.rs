//! Recovery-key rotation interrupted at each of its writes (the roster entry, the new epoch's
//! object, the redirect): run again, it finishes with the same new key, which then restores the
//! vault, and the old key is retired.

mod common;

use std::sync::Arc;

use chatvault::Error;
use chatvault::keys::RecoveryKey;
use chatvault::store::ObjectStore;
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_and_hands_out_one_new_key() {
    for failing in ["/roster/", "/epochs/", "/redirect"] {
        let hooked = Arc::new(common::Hooked::default());
        let store: Arc<dyn ObjectStore> = hooked.clone();
        let dir = tempfile::tempdir().unwrap();
        let old = RecoveryKey::generate().unwrap();
        let phone = common::cached(
            Vault::open(
                store.clone(),
                &dir.path().join("phone"),
                info("phone"),
                &old,
            )
            .await
            .unwrap(),
        );
        phone
            .record(vec![Change::UpsertMessage(Message {
                chat_id: "c".into(),
                message_id: "m1".into(),
                sender: "me".into(),
                sent_at_ms: 1,
                text: "before the rotation".into(),
                reply_to: None,
                attachments: Vec::new(),
                kind: "text".into(),
                payload: Vec::new(),
            })])
            .unwrap();
        phone.sync(None, None).await.unwrap();

        *hooked.fail_puts_containing.lock().unwrap() = Some(failing.into());
        let interrupted = phone.rotate_recovery_key().await;
        assert!(
            matches!(interrupted, Err(Error::Store(ref e)) if e.is_retryable()),
            "{failing}: {interrupted:?}"
        );
        *hooked.fail_puts_containing.lock().unwrap() = None;
        let new = phone.rotate_recovery_key().await.unwrap();

        // The new key restores the vault in a new state directory.
        let fresh = common::cached(
            Vault::open(
                store.clone(),
                &dir.path().join("fresh"),
                info("fresh"),
                &new,
            )
            .await
            .unwrap(),
        );
        fresh.sync(None, None).await.unwrap();
        let texts: Vec<String> = fresh
            .messages(None)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["before the rotation"], "{failing}");
        // One rotation happened, to that key: the old one is retired, and a third call (nothing
        // pending any more, the vault open with the retired key) says so.
        let stale = Vault::open(
            store.clone(),
            &dir.path().join("stale"),
            info("stale"),
            &old,
        )
        .await
        .unwrap();
        assert!(
            matches!(
                stale.sync(None, None).await,
                Err(Error::RecoveryKeyReplaced)
            ),
            "{failing}"
        );
        assert!(
            matches!(
                phone.rotate_recovery_key().await,
                Err(Error::RecoveryKeyReplaced)
            ),
            "{failing}"
        );
    }
}

/// The same for a revocation interrupted at its writes: run again, it finishes, and every
/// device reads what it wrote (the start entry goes under the secret of the object it names,
/// not one an interrupted attempt left behind).
#[tokio::test]
async fn an_interrupted_revocation_resumes() {
    for failing in ["/roster/", "/epochs/"] {
        let hooked = Arc::new(common::Hooked::default());
        let store: Arc<dyn ObjectStore> = hooked.clone();
        let dir = tempfile::tempdir().unwrap();
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
        let tablet = Vault::open(
            store.clone(),
            &dir.path().join("tablet"),
            info("tablet"),
            &key,
        )
        .await
        .unwrap();
        tablet.sync(None, None).await.unwrap();
        phone.sync(None, None).await.unwrap();

        *hooked.fail_puts_containing.lock().unwrap() = Some(failing.into());
        assert!(phone.revoke(tablet.device_id()).await.is_err(), "{failing}");
        *hooked.fail_puts_containing.lock().unwrap() = None;
        phone.revoke(tablet.device_id()).await.unwrap();

        assert!(
            matches!(tablet.sync(None, None).await, Err(Error::DeviceRevoked)),
            "{failing}"
        );
        let fresh = Vault::open(
            store.clone(),
            &dir.path().join("fresh"),
            info("fresh"),
            &key,
        )
        .await
        .unwrap();
        fresh.sync(None, None).await.unwrap();
        let revoked = fresh
            .devices()
            .unwrap()
            .into_iter()
            .find(|d| d.id == tablet.device_id())
            .unwrap();
        assert!(revoked.revoked_at_ms.is_some(), "{failing}");
        fresh.verify().await.unwrap();
    }
}
