//! Devices for the vault's own tests (revocation, rotation): opened on a store with the content
//! cache on, so a test can ask what each holds, and linked by code the way an app links them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::RecoveryKey;
use crate::store::ObjectStore;
use crate::sync::{Change, Message};
use crate::vault::{CancelToken, DeviceInfo, DeviceKey, Vault};

pub(super) fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

/// A text message `id` (its text too) in chat "c".
pub(super) fn message(id: &str) -> Change {
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

fn cached(vault: Vault) -> Vault {
    vault
        .set_content_cache(crate::local::CacheSetting::On { max_bytes: None })
        .unwrap();
    vault
}

/// Device `name`, its state in `dir/name`, opened with `key`.
pub(super) async fn device(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    name: &str,
    key: &RecoveryKey,
) -> Vault {
    cached(
        Vault::open(store.clone(), &dir.join(name), info(name), key)
            .await
            .unwrap(),
    )
}

/// The message ids `vault` holds, sorted.
pub(super) fn ids(vault: &Vault) -> Vec<String> {
    let mut ids: Vec<String> = vault
        .messages(None)
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    ids.sort();
    ids
}

/// A new device "laptop", its state in `dir`, linked through `phone` with the right code: the
/// device and its device key.
pub(super) async fn link(
    store: &Arc<dyn ObjectStore>,
    phone: &Vault,
    dir: &Path,
) -> (Vault, DeviceKey) {
    let offering = phone
        .offer_link(Duration::from_secs(120), Vec::new())
        .unwrap();
    let device_key = DeviceKey::generate().unwrap();
    let kept = DeviceKey::from_bytes(*device_key.to_bytes());
    let joining = Vault::join_link(
        store.clone(),
        dir,
        info("laptop"),
        offering.text(),
        device_key,
    )
    .await
    .unwrap();
    let code = joining.check_code().to_owned();
    let cancel = CancelToken::new();
    let (added, joined) = tokio::join!(
        phone.complete_link(&offering, &code, &cancel),
        joining.finish(&cancel)
    );
    added.unwrap();
    (cached(joined.unwrap()), kept)
}

/// A segment a test forges with the keys `holder` holds (its epochs and chat keys; its device key
/// when `signed`): `device`'s segment `seq` with tag `tag` after `previous` (the parent's tag and
/// hash), holding `operations` (each chat with a key `holder` writes with). Put in the bucket
/// under `holder`'s vault; returns its name and hash.
#[allow(clippy::too_many_arguments)]
pub(super) async fn put_forged_segment(
    store: &Arc<dyn ObjectStore>,
    holder: &Vault,
    device: crate::sync::DeviceId,
    seq: u64,
    tag: u64,
    previous: Option<(u64, [u8; 32])>,
    operations: &[crate::sync::Operation],
    signed: bool,
) -> (String, [u8; 32]) {
    use crate::sync::batch::EncodedBatch;
    use crate::sync::segment::{NewSegment, seal_segment};
    let secrets =
        crate::vault::identity::copy(&crate::vault::lock(&holder.device_secrets).unwrap());
    let (name, object, hash) = seal_segment(
        &*holder.epochs().unwrap(),
        &crate::vault::lock(&holder.chat_keys).unwrap(),
        &NewSegment {
            device,
            seq,
            tag,
            previous,
            seen: &[],
            grants: &[],
            operations: &EncodedBatch::from_operations(operations),
            device_name: "forged",
            platform: "test",
            signer: signed.then_some(&secrets),
        },
    )
    .unwrap();
    store
        .put(&format!("{}{name}", holder.prefix()), object)
        .await
        .unwrap();
    (name, hash)
}

/// A vault on a directory store in a temporary directory, and its first device "phone" (opened
/// with the recovery key), which has recorded and synced message "before": what most device
/// tests start from. Keep the directory alive for the test.
pub(super) async fn phone_with_a_message()
-> (tempfile::TempDir, Arc<dyn ObjectStore>, RecoveryKey, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(crate::store::DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let phone = device(&store, dir.path(), "phone", &key).await;
    phone.record(vec![message("before")]).unwrap();
    phone.sync(None, None).await.unwrap();
    (dir, store, key, phone)
}
