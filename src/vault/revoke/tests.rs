//! Revocation on a directory store: a phone revokes a linked laptop; the laptop, with its whole
//! state directory and device key, opens nothing written afterwards, and what it writes
//! afterwards is refused by every device.

use std::sync::Arc;

use super::*;
use crate::devices::EpochObject;
use crate::format::ObjectKind;
use crate::keys::KeyEpochs;
use crate::sealing;
use crate::store::ObjectStore;
use crate::sync::segment::Head;
use crate::sync::{Change, Message};
use crate::vault::CancelToken;
use crate::vault::test_devices::{
    device, ids, info, link, message, phone_with_a_message, put_forged_segment,
};

/// Every object under the vault's prefix: (name relative to the prefix, bytes).
async fn objects(store: &Arc<dyn ObjectStore>, vault: &Vault) -> Vec<(String, Vec<u8>)> {
    let prefix = vault.prefix();
    let mut out = Vec::new();
    for info in store.list(&prefix).await.unwrap() {
        let bytes = store.get(&info.key, u64::MAX).await.unwrap().unwrap();
        out.push((info.key[prefix.len()..].to_owned(), bytes));
    }
    out
}

/// Seals a segment of `device` holding message `id` with the keys `laptop` holds (epoch 0's, its
/// chat keys, its signing key when it writes as itself) and puts it in the bucket: what a modified
/// app on a revoked device could do. Returns its name.
async fn forge(
    store: &Arc<dyn ObjectStore>,
    laptop: &Vault,
    device: DeviceId,
    id: &str,
    below: Option<Head>,
) -> String {
    use crate::sync::{Operation, Stamp};
    // After `below` (a new branch there), or after the device's own tip.
    let own = below.or_else(|| {
        lock(&laptop.local)
            .unwrap()
            .heads()
            .unwrap()
            .into_iter()
            .find(|head| head.device == device)
    });
    let operations = [Operation {
        stamp: Stamp {
            wall_ms: laptop.now_ms(),
            counter: 0,
            device,
        },
        change: message(id),
    }];
    let (name, _) = put_forged_segment(
        store,
        laptop,
        device,
        own.map_or(1, |head| head.seq + 1),
        0x5eed,
        own.map(|head| (head.tag, head.hash)),
        &operations,
        own.is_some(),
    )
    .await;
    name
}

#[tokio::test]
async fn a_revoked_device_opens_nothing_written_after_and_its_writes_are_refused() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    let (laptop, laptop_key) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    laptop.record(vec![message("from-laptop")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    let laptop_first = lock(&laptop.local)
        .unwrap()
        .heads()
        .unwrap()
        .into_iter()
        .find(|head| head.device == laptop_id)
        .unwrap();
    for id in ["laptop-2", "laptop-3"] {
        laptop.record(vec![message(id)]).unwrap();
        laptop.sync(None, None).await.unwrap();
    }
    let tablet = device(&store, dir.path(), "tablet", &key).await;
    tablet.sync(None, None).await.unwrap();
    let before_revocation: Vec<String> = objects(&store, &phone)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();

    phone.revoke(laptop_id).await.unwrap();
    let listed = phone.devices().unwrap();
    let revoked = listed.iter().find(|d| d.id == laptop_id).unwrap();
    assert!(revoked.revoked_at_ms.is_some());
    assert_eq!(phone.epochs().unwrap().newest().0, 1);
    // Again: nothing left to do.
    phone.revoke(laptop_id).await.unwrap();
    assert_eq!(phone.epochs().unwrap().newest().0, 1);

    // The laptop writes on; its sync learns it was revoked before it pushes anything.
    laptop.record(vec![message("late-laptop")]).unwrap();
    assert!(matches!(
        laptop.sync(None, None).await,
        Err(Error::DeviceRevoked)
    ));
    // A modified app on the laptop writes anyway, with the keys it holds: its next segment,
    // signed, and an unsigned one under a new device id the roster does not list.
    // And a new branch below its pinned tip (seq 3): a seq 2 after its seq 1, which a rule by
    // sequence number alone would take.
    let forged = [
        forge(&store, &laptop, laptop_id, "forged-own", None).await,
        forge(&store, &laptop, DeviceId([0x77; 16]), "forged-new-id", None).await,
        forge(
            &store,
            &laptop,
            laptop_id,
            "forged-branch",
            Some(laptop_first),
        )
        .await,
    ];
    phone.record(vec![message("after")]).unwrap();
    phone.sync(None, None).await.unwrap();
    phone.checkpoint().await.unwrap();
    phone.record(vec![message("after-checkpoint")]).unwrap();
    phone.sync(None, None).await.unwrap();

    // The other devices move to epoch 1, read what the phone wrote, refuse the laptop's late
    // segment (and verify names it), and a new device with the recovery key restores it all.
    tablet.sync(None, None).await.unwrap();
    assert_eq!(tablet.epochs().unwrap().newest().0, 1);
    let expected = [
        "after",
        "after-checkpoint",
        "before",
        "from-laptop",
        "laptop-2",
        "laptop-3",
    ];
    assert_eq!(ids(&tablet), expected);
    let report = tablet.verify().await.unwrap();
    let mut unknown = report.unknown.clone();
    unknown.sort();
    let mut expected_unknown = forged.to_vec();
    expected_unknown.sort();
    assert_eq!(unknown, expected_unknown);
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), expected);

    // The laptop's whole state directory and device key open nothing written after.
    drop(laptop);
    let laptop = Vault::open_device(
        store.clone(),
        &dir.path().join("laptop"),
        info("laptop"),
        &laptop_key,
    )
    .await
    .unwrap();
    let held = laptop.epochs().unwrap();
    assert!(held.trees(1).is_empty());
    let secrets = crate::vault::identity::copy(&lock(&laptop.device_secrets).unwrap());
    let mut refused = 0;
    for (name, bytes) in objects(&store, &phone).await {
        if before_revocation.contains(&name) {
            continue;
        }
        let result = if name.starts_with("segments/") {
            if forged.contains(&name) {
                // Its own forgeries, sealed in epoch 0.
                continue;
            }
            crate::sync::segment::open_segment(&*held, &name, &bytes).map(|_| ())
        } else if name.starts_with("checkpoints/") && !name.contains("/p") {
            crate::sync::checkpoint::open_checkpoint_index(&*held, &name, &bytes).map(|_| ())
        } else if let Some(id) = crate::sync::roster::parse_roster_name(&name) {
            if sealing::epoch_of(&bytes, ObjectKind::Roster).unwrap() == 0 {
                // The revoke itself is sealed in epoch 0: the laptop may read that it was
                // revoked.
                continue;
            }
            crate::vault::roster::open_entry(&*held, &id, &bytes).map(|_| ())
        } else if name.starts_with("epochs/") {
            let object = EpochObject::decode(&name, &bytes).unwrap();
            assert!(
                object
                    .open_as_device(&laptop_id.0, &secrets)
                    .unwrap()
                    .is_none()
            );
            refused += 1;
            continue;
        } else {
            continue;
        };
        assert!(
            matches!(
                result,
                Err(Error::Decode {
                    problem: crate::DecodeProblem::KeyEpoch { found: 1, .. },
                    ..
                })
            ),
            "{name}: {result:?}"
        );
        refused += 1;
    }
    // Two segments, a checkpoint index, the start entry and the epoch object at least.
    assert!(refused >= 5, "{refused}");

    // Nor the chat blocks in them: a checkpoint's packs lie in the bucket beside its index, so
    // their blocks must not be under a chat key the laptop holds. The phone writes chat "c"
    // after the revocation with a key of epoch 1, drawn afresh.
    let laptop_keys = lock(&laptop.chat_keys).unwrap().clone();
    let phone_epochs = phone.epochs().unwrap();
    let mut blocks = 0;
    for (name, bytes) in objects(&store, &phone).await {
        if before_revocation.contains(&name) {
            continue;
        }
        let key_ids: Vec<crate::sync::segment::KeyId> =
            if name.starts_with("checkpoints/") && !name.contains("/p") {
                crate::sync::checkpoint::open_checkpoint_index(&*phone_epochs, &name, &bytes)
                    .unwrap()
                    .chats
                    .iter()
                    .map(|chat| chat.key_id)
                    .collect()
            } else if name.starts_with("segments/") && !forged.contains(&name) {
                crate::sync::segment::open_segment(&*phone_epochs, &name, &bytes)
                    .unwrap()
                    .blocks
                    .iter()
                    .map(|(key_id, _)| *key_id)
                    .collect()
            } else {
                continue;
            };
        for key_id in key_ids {
            assert!(laptop_keys.key(&key_id).is_none(), "{name}");
            blocks += 1;
        }
    }
    assert!(blocks >= 3, "{blocks}");

    // Nor an attachment added after: its content id and file key come from epoch 1's attachment
    // key. The tablet downloads it; the laptop holds no key of that epoch, and epoch 0's
    // attachment key (which it holds) does not open its chunks.
    let photo = dir.path().join("photo.jpg");
    std::fs::write(&photo, vec![7u8; 100_000]).unwrap();
    let cancel = CancelToken::new();
    let (attachment, _) = phone
        .attach_file(&photo, "photo.jpg", "image/jpeg", None, &cancel)
        .await
        .unwrap();
    assert_eq!(attachment.key_epoch, 1);
    // The reference travels in a message, through the bucket, to the tablet.
    phone
        .record(vec![Change::UpsertMessage(Message {
            attachments: vec![attachment.clone()],
            ..match message("with-photo") {
                Change::UpsertMessage(message) => message,
                _ => unreachable!(),
            }
        })])
        .unwrap();
    phone.sync(None, None).await.unwrap();
    tablet.sync(None, None).await.unwrap();
    let received = tablet
        .messages(Some("c"))
        .unwrap()
        .into_iter()
        .find(|m| m.message_id == "with-photo")
        .unwrap()
        .attachments;
    assert_eq!(received, vec![attachment.clone()]);
    let fetched = dir.path().join("fetched.jpg");
    tablet
        .download_attachment(&received[0], &fetched, None, &cancel)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), vec![7u8; 100_000]);
    let stolen = dir.path().join("stolen.jpg");
    let denied = crate::attachment::download(
        store.as_ref(),
        &laptop.attachments_prefix(),
        &*held,
        &attachment,
        &stolen,
        None,
        &cancel,
    )
    .await;
    assert!(
        matches!(
            denied,
            Err(Error::Decode {
                problem: crate::DecodeProblem::KeyEpoch { found: 1, .. },
                ..
            })
        ),
        "{denied:?}"
    );
    let as_epoch_zero = crate::attachment::Attachment {
        key_epoch: 0,
        ..attachment.clone()
    };
    let denied = crate::attachment::download(
        store.as_ref(),
        &laptop.attachments_prefix(),
        &*held,
        &as_epoch_zero,
        &stolen,
        None,
        &cancel,
    )
    .await;
    assert!(
        denied.is_err(),
        "epoch 0's attachment key opened a chunk of epoch 1"
    );
    assert!(matches!(
        laptop.sync(None, None).await,
        Err(Error::DeviceRevoked)
    ));
}

#[tokio::test]
async fn a_segment_that_names_a_refused_late_segment_as_seen_does_not_stop_the_others() {
    use crate::sync::roster::{RosterChange, RosterEntry};
    let (dir, store, key, phone) = phone_with_a_message().await;
    let tablet = device(&store, dir.path(), "tablet", &key).await;
    tablet.sync(None, None).await.unwrap();
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    laptop.record(vec![message("laptop-1")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    phone.sync(None, None).await.unwrap();
    // The race: the laptop's next segment lands after the phone synced for its revocation and
    // before the revoke entry; the tablet applies it in between. The revoke pins what the
    // phone had applied, so that segment is past the pinned tips.
    laptop.record(vec![message("laptop-late")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    tablet.sync(None, None).await.unwrap();
    assert!(ids(&tablet).contains(&"laptop-late".to_owned()));
    {
        let _guard = phone.sync_lock.lock().await;
        let roster = phone
            .refresh_roster(&mut SyncReport::default())
            .await
            .unwrap();
        let accepted_tips = lock(&phone.local)
            .unwrap()
            .heads()
            .unwrap()
            .into_iter()
            .filter(|head| head.device == laptop_id)
            .collect();
        let entry = RosterEntry {
            signer: phone.roster_signer(&roster).unwrap(),
            parents: roster.tips.clone(),
            made_at_ms: phone.now_ms(),
            epoch: roster.epoch,
            change: RosterChange::Revoke {
                device: laptop_id,
                accepted_tips,
            },
        };
        phone.write_entry(entry, None).await.unwrap();
    }
    phone.revoke(laptop_id).await.unwrap();

    // The tablet writes on, naming the late segment as seen; the phone refuses the late segment
    // but takes the tablet's, and so does a new device.
    tablet.record(vec![message("tablet-after")]).unwrap();
    tablet.sync(None, None).await.unwrap();
    phone.sync(None, None).await.unwrap();
    assert!(ids(&phone).contains(&"tablet-after".to_owned()));
    assert!(!ids(&phone).contains(&"laptop-late".to_owned()));
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert!(ids(&fresh).contains(&"tablet-after".to_owned()));
}
