//! Checkpoints around a revocation or a rotation: a revoked device's checkpoint indexes count
//! nowhere, an unsigned one stops counting once a device is revoked or an epoch after 0 starts,
//! a block overwritten in a pack is refused, and the device that revokes or rotates writes a
//! checkpoint of its own first, so that nothing the change sets aside is lost.

use std::sync::Arc;

use super::*;
use crate::keys::KeyEpochs;
use crate::store::ObjectStore;
use crate::sync::checkpoint::{CHECKPOINTS_PREFIX, parse_checkpoint_name};
use crate::sync::next_checkpoint::{ChatContent, CheckpointInput, seal_checkpoint};
use crate::sync::segment::Head;
use crate::sync::{Operation, Stamp};
use crate::vault::test_devices::{
    device, ids, link, message, phone_with_a_message, put_forged_segment,
};

/// The checkpoint indexes in the bucket, by writer.
async fn indexes(store: &Arc<dyn ObjectStore>, vault: &Vault) -> Vec<(DeviceId, String)> {
    let prefix = vault.prefix();
    let mut out = Vec::new();
    for info in store
        .list(&format!("{prefix}{CHECKPOINTS_PREFIX}"))
        .await
        .unwrap()
    {
        let name = info.key[prefix.len()..].to_owned();
        let (writer, _, _) = parse_checkpoint_name(&name).unwrap();
        out.push((writer, name));
    }
    out
}

/// Seals a checkpoint index under `writer`'s name with the keys `holder` holds (the epochs it
/// holds and its chat keys), holding the messages `ids` stamped by `writer` and covering every
/// tip `holder` applied; with `ahead`, one more tip far ahead, so that every reader that let it
/// count would start from it (the newest checkpoint is the one covering the most). Signed with
/// `holder`'s device key when `signed`. Puts its packs and itself in the bucket; returns the
/// index's name.
async fn forge_checkpoint(
    store: &Arc<dyn ObjectStore>,
    holder: &Vault,
    writer: DeviceId,
    signed: bool,
    ahead: bool,
    ids: &[&str],
) -> String {
    let mut covered: Vec<Head> = lock(&holder.local).unwrap().heads().unwrap();
    if ahead {
        covered.push(Head {
            device: writer,
            seq: 1 << 40,
            tag: 0xf0f0,
            hash: [7; 32],
        });
    }
    let secrets = crate::vault::identity::copy(&lock(&holder.device_secrets).unwrap());
    let sealed = seal_checkpoint(
        &*holder.epochs().unwrap(),
        &CheckpointInput {
            device: writer,
            seq: 1 << 20,
            tag: 0xbad + u64::from(signed),
            covered: &covered,
            chat_keys: &lock(&holder.chat_keys).unwrap(),
            deleted_chats: &[],
            created_at_ms: holder.now_ms(),
            signer: signed.then_some(&secrets),
        },
        [Ok(ChatContent {
            chat_id: "c".into(),
            operations: ids
                .iter()
                .zip(0..)
                .map(|(id, counter)| Operation {
                    stamp: Stamp {
                        wall_ms: holder.now_ms() + 60_000,
                        counter,
                        device: writer,
                    },
                    change: message(id),
                })
                .collect(),
        })],
    )
    .unwrap();
    for (name, bytes) in sealed
        .packs
        .into_iter()
        .chain([(sealed.index_name.clone(), sealed.index)])
    {
        store
            .put(&format!("{}{name}", holder.prefix()), bytes)
            .await
            .unwrap();
    }
    sealed.index_name
}

#[tokio::test]
async fn checkpoints_a_revoked_device_writes_count_nowhere_and_nothing_is_lost() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    let phone_id = phone.device_id();
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    for id in ["laptop-1", "laptop-2"] {
        laptop.record(vec![message(id)]).unwrap();
        laptop.sync(None, None).await.unwrap();
    }
    // The newest checkpoint is the laptop's, and garbage collection takes the segments it
    // covers: from now on that index is the only place their messages are.
    laptop.checkpoint().await.unwrap();
    phone.sync(None, None).await.unwrap();
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    assert_eq!(
        indexes(&store, &phone)
            .await
            .iter()
            .map(|(w, _)| *w)
            .collect::<Vec<_>>(),
        [laptop_id]
    );

    phone.revoke(laptop_id).await.unwrap();
    // The phone wrote its own checkpoint before the revoke, covering what the laptop's covered.
    let written: Vec<DeviceId> = indexes(&store, &phone)
        .await
        .iter()
        .map(|(w, _)| *w)
        .collect();
    assert!(written.contains(&phone_id), "{written:?}");

    // The revoked laptop, with the epoch-0 keys it holds, writes a checkpoint under its own id
    // (signed with its own key), an unsigned one under the phone's id, and one under the
    // phone's id signed with its own key (a signature that does not verify: set aside too, not
    // an error that would stop every device).
    let forged = [
        forge_checkpoint(&store, &laptop, laptop_id, true, true, &["forged"]).await,
        forge_checkpoint(&store, &laptop, phone_id, false, true, &["forged"]).await,
        forge_checkpoint(&store, &laptop, phone_id, true, true, &["forged"]).await,
    ];
    phone.record(vec![message("after")]).unwrap();
    phone.sync(None, None).await.unwrap();
    // The revoked laptop's index and everything but the phone's own is collected no more: the
    // one that counts is the phone's.
    phone.collect_garbage(0).await.unwrap();

    let expected = ["after", "before", "laptop-1", "laptop-2"];
    assert_eq!(ids(&phone), expected);
    // A new device with the recovery key starts from the phone's checkpoint, never from a
    // forged one, and restores everything.
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), expected);
    // Verify lists the forged indexes among the objects that do not belong.
    let report = fresh.verify().await.unwrap();
    for name in &forged {
        assert!(
            report.unknown.contains(name),
            "{name} not in {:?}",
            report.unknown
        );
    }
}

#[tokio::test]
async fn an_unsigned_checkpoint_counts_only_while_the_vault_is_in_epoch_zero() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    let phone_id = phone.device_id();
    // An index as chatvault wrote them before indexes were signed, holding a message the
    // segments no longer hold (as after a collection), and garbage collection by it.
    let unsigned = forge_checkpoint(
        &store,
        &phone,
        phone_id,
        false,
        false,
        &["before", "legacy"],
    )
    .await;
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    let tablet = device(&store, dir.path(), "tablet", &key).await;
    tablet.sync(None, None).await.unwrap();
    // In epoch 0 it counts: the tablet restored from it.
    assert_eq!(ids(&tablet), ["before", "legacy"]);
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;

    // From the revoke entry on, unsigned indexes no longer count: the phone writes a signed
    // one first, from the unsigned one it counted until then.
    phone.revoke(laptop.device_id()).await.unwrap();
    let after: Vec<String> = indexes(&store, &phone)
        .await
        .into_iter()
        .map(|(_, name)| name)
        .filter(|name| *name != unsigned)
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), ["before", "legacy"]);
    let report = fresh.verify().await.unwrap();
    assert_eq!(report.unknown, [unsigned]);
}

/// `haystack` with every `from` replaced by `to` (of the same length).
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = haystack.to_vec();
    let mut at = 0;
    while let Some(found) = out[at..].windows(from.len()).position(|w| w == from) {
        out[at + found..at + found + from.len()].copy_from_slice(to);
        at += found + from.len();
    }
    out
}

#[tokio::test]
async fn a_block_the_revoked_device_overwrites_in_a_pack_is_refused_not_restored() {
    use crate::format::ObjectKind;
    use crate::sealing::{self, Compression, ObjectContext};
    use crate::sync::checkpoint::{block_name, open_checkpoint_index};

    let (dir, store, key, phone) = phone_with_a_message().await;
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    laptop.record(vec![message("laptop-1")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    laptop.checkpoint().await.unwrap();
    phone.sync(None, None).await.unwrap();
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    phone.revoke(laptop.device_id()).await.unwrap();
    phone.collect_garbage(0).await.unwrap();

    // The laptop, with the bucket and the keys it holds, opens the index that counts now (the
    // phone's, written before the revocation, so in an epoch it holds), finds the block holding
    // its message, and overwrites it in its pack with one it seals itself under the same chat
    // key and block name, the same length, naming another message.
    let (_, name) = indexes(&store, &phone)
        .await
        .into_iter()
        .find(|(writer, _)| *writer == phone.device_id())
        .unwrap();
    let object = store
        .get(&format!("{}{name}", phone.prefix()), u64::MAX)
        .await
        .unwrap()
        .unwrap();
    let index = open_checkpoint_index(&*laptop.epochs().unwrap(), &name, &object).unwrap();
    let chat_keys = lock(&laptop.chat_keys).unwrap().clone();
    let mut overwritten = false;
    for block in &index.chats {
        let (pack_name, _) = &index.packs[block.pack];
        let pack_key = format!("{}{pack_name}", phone.prefix());
        let mut pack = store.get(&pack_key, u64::MAX).await.unwrap().unwrap();
        let span = block.offset as usize..(block.offset + block.length) as usize;
        let (_, chat_key) = chat_keys.key(&block.key_id).unwrap();
        let block_name = block_name(&block.block_id);
        let context = ObjectContext {
            vault_id: laptop.keys.vault_id(),
            kind: ObjectKind::ChatData,
            name: &block_name,
        };
        let body = sealing::open(&chat_key.0, &context, &pack[span.clone()]).unwrap();
        let forged = replace_all(&body, b"laptop-1", b"forged-1");
        if forged == *body {
            continue;
        }
        let resealed = [Compression::Auto, Compression::Never]
            .into_iter()
            .map(|compression| {
                sealing::seal_with_nonce(&chat_key.0, &context, &forged, &[9; 24], compression)
                    .unwrap()
            })
            .find(|sealed| sealed.len() == span.len())
            .expect("a forged block of the same length");
        pack[span].copy_from_slice(&resealed);
        store.put(&pack_key, pack).await.unwrap();
        overwritten = true;
    }
    assert!(overwritten);

    // A new device refuses the block with a typed error instead of restoring the forgery; the
    // phone, which holds the messages, syncs on and verify names the replaced block.
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    let restored = fresh.sync(None, None).await;
    assert!(
        matches!(
            restored,
            Err(Error::Integrity(crate::IntegrityProblem::Replaced { .. }))
        ),
        "{restored:?}"
    );
    assert!(!ids(&fresh).contains(&"forged-1".to_owned()));
    phone.sync(None, None).await.unwrap();
    assert_eq!(ids(&phone), ["before", "laptop-1"]);
    assert!(matches!(
        phone.verify().await,
        Err(Error::Integrity(crate::IntegrityProblem::Replaced { .. }))
    ));
}

#[tokio::test]
async fn garbage_collection_during_an_interrupted_revocation_keeps_the_vouching_checkpoint() {
    use crate::sync::roster::{RosterChange, RosterEntry};
    let (dir, store, key, phone) = phone_with_a_message().await;
    let phone_id = phone.device_id();
    // The vault's only index is unsigned (as written before indexes were signed) and holds a
    // message its collected segments no longer do.
    let unsigned = forge_checkpoint(
        &store,
        &phone,
        phone_id,
        false,
        false,
        &["before", "legacy"],
    )
    .await;
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    let tablet = device(&store, dir.path(), "tablet", &key).await;
    tablet.sync(None, None).await.unwrap();
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    phone.sync(None, None).await.unwrap();

    // The revocation runs as far as its checkpoint; another device collects garbage (the two
    // indexes cover the same, and the unsigned one wins the tie by name, its seq being 2^20:
    // the phone's, written after it, stays); then the revoke entry, and another collection.
    {
        let _guard = phone.sync_lock.lock().await;
        phone
            .vouch_for_newest_checkpoint(Some(laptop_id))
            .await
            .unwrap();
    }
    assert_eq!(indexes(&store, &phone).await.len(), 2);
    tablet.sync(None, None).await.unwrap();
    tablet.collect_garbage(0).await.unwrap();
    assert_eq!(indexes(&store, &phone).await.len(), 2);
    {
        let _guard = phone.sync_lock.lock().await;
        let roster = phone
            .refresh_roster(&mut SyncReport::default())
            .await
            .unwrap();
        let entry = RosterEntry {
            signer: phone.roster_signer(&roster).unwrap(),
            parents: roster.tips.clone(),
            made_at_ms: phone.now_ms(),
            epoch: roster.epoch,
            change: RosterChange::Revoke {
                device: laptop_id,
                accepted_tips: Vec::new(),
            },
        };
        phone.write_entry(entry, None).await.unwrap();
    }
    // From the revoke entry on, before the epoch starts, the unsigned index counts no more.
    tablet.sync(None, None).await.unwrap();
    tablet.collect_garbage(0).await.unwrap();
    let left: Vec<String> = indexes(&store, &phone)
        .await
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert!(left.contains(&unsigned) && left.len() == 2, "{left:?}");

    // Run again, the revocation finishes; a new device restores everything.
    phone.revoke(laptop_id).await.unwrap();
    assert_eq!(phone.epochs().unwrap().newest().0, 1);
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), ["before", "legacy"]);
}

#[tokio::test]
async fn the_revoker_vouches_for_segments_not_for_what_the_revoked_device_put_in_its_index() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    phone.checkpoint().await.unwrap();
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    laptop.record(vec![message("laptop-1")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    // Before it is revoked, the laptop writes a signed index covering every segment, whose
    // packs hold a message no segment holds: the newest index, which a device that has applied
    // every segment never reads.
    let planted = forge_checkpoint(
        &store,
        &laptop,
        laptop_id,
        true,
        false,
        &["before", "laptop-1", "planted"],
    )
    .await;
    phone.revoke(laptop_id).await.unwrap();
    assert!(!ids(&phone).contains(&"planted".to_owned()));
    // The phone's new index was built from its own and the segments after it, which are all
    // still in the bucket: once they are collected, a new device restores every message from
    // it, and not the planted one.
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), ["before", "laptop-1"]);
    assert!(fresh.verify().await.unwrap().unknown.contains(&planted));
    // The planted index stays (evidence); its packs, which no index that counts references,
    // went with the collection.
    let (writer, seq, tag) = parse_checkpoint_name(&planted).unwrap();
    let planted_packs = format!(
        "{}{}",
        phone.prefix(),
        crate::sync::checkpoint::pack_prefix(writer, seq, tag)
    );
    assert!(store.list(&planted_packs).await.unwrap().is_empty());
    assert!(
        store
            .get(&format!("{}{planted}", phone.prefix()), u64::MAX)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_rotation_that_starts_epoch_one_first_signs_an_unsigned_newest_checkpoint() {
    let (dir, store, _key, phone) = phone_with_a_message().await;
    let phone_id = phone.device_id();
    let unsigned = forge_checkpoint(
        &store,
        &phone,
        phone_id,
        false,
        false,
        &["before", "legacy"],
    )
    .await;
    assert!(phone.collect_garbage(0).await.unwrap() > 0);

    let new_key = phone.rotate_recovery_key().await.unwrap();
    let written: Vec<String> = indexes(&store, &phone)
        .await
        .into_iter()
        .map(|(_, name)| name)
        .filter(|name| *name != unsigned)
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let fresh = device(&store, dir.path(), "fresh", &new_key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), ["before", "legacy"]);
}

#[tokio::test]
async fn a_revocation_goes_on_when_the_revoked_device_deleted_a_pack_of_its_checkpoint() {
    let (dir, store, _key, phone) = phone_with_a_message().await;
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    laptop.record(vec![message("laptop-1")]).unwrap();
    laptop.sync(None, None).await.unwrap();
    laptop.checkpoint().await.unwrap();
    phone.sync(None, None).await.unwrap();
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    // The laptop, stolen, deletes the packs of its checkpoint, the vault's newest.
    let prefix = phone.prefix();
    for info in store.list(&format!("{prefix}packs/")).await.unwrap() {
        store.delete(&info.key).await.unwrap();
    }
    // Its content is lost to new devices either way; the revocation is not.
    phone.revoke(laptop_id).await.unwrap();
    let listed = phone.devices().unwrap();
    assert!(
        listed
            .iter()
            .any(|d| d.id == laptop_id && d.revoked_at_ms.is_some())
    );
    assert_eq!(phone.epochs().unwrap().newest().0, 1);
    assert_eq!(ids(&phone), ["before", "laptop-1"]);
}

#[tokio::test]
async fn segments_of_an_unlisted_device_that_a_device_applied_stay_readable_after_a_revocation() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    // A device of before device keys, which never added itself to the roster, writes an
    // unsigned segment (taken while the roster trusts such writers), which the phone applies.
    let old_device = DeviceId([0x42; 16]);
    let operations = [Operation {
        stamp: Stamp {
            wall_ms: phone.now_ms(),
            counter: 0,
            device: old_device,
        },
        change: message("from-an-old-device"),
    }];
    put_forged_segment(&store, &phone, old_device, 1, 7, None, &operations, false).await;
    phone.sync(None, None).await.unwrap();
    assert_eq!(ids(&phone), ["before", "from-an-old-device"]);
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;

    // After the revocation, devices that never applied it refuse it; the phone, which did,
    // still reads it again (verify, checkpoints), and a new device restores it from the
    // checkpoint written before the revoke entry.
    phone.revoke(laptop.device_id()).await.unwrap();
    phone.verify().await.unwrap();
    phone.checkpoint().await.unwrap();
    phone.collect_garbage(0).await.unwrap();
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), ["before", "from-an-old-device"]);
}

#[tokio::test]
async fn a_revoked_devices_new_first_segment_is_refused_after_its_pinned_tips_were_collected() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    let (laptop, _) = link(&store, &phone, &dir.path().join("laptop")).await;
    let laptop_id = laptop.device_id();
    for id in ["laptop-1", "laptop-2"] {
        laptop.record(vec![message(id)]).unwrap();
        laptop.sync(None, None).await.unwrap();
    }
    phone.sync(None, None).await.unwrap();
    phone.revoke(laptop_id).await.unwrap();
    // A checkpoint covers the laptop's segments and garbage collection takes them: its pinned
    // tips are no longer listed.
    phone.checkpoint().await.unwrap();
    assert!(phone.collect_garbage(0).await.unwrap() > 0);
    let laptop_segments = format!("{}segments/{}/", phone.prefix(), laptop_id.to_hex());
    assert!(store.list(&laptop_segments).await.unwrap().is_empty());

    // The laptop writes a new first segment (seq 1 needs no parent), signed with its key.
    let (name, _) =
        put_forged_segment(&store, &laptop, laptop_id, 1, 0x1ee7, None, &[], true).await;
    let fresh = device(&store, dir.path(), "fresh", &key).await;
    fresh.sync(None, None).await.unwrap();
    assert_eq!(ids(&fresh), ["before", "laptop-1", "laptop-2"]);
    assert!(fresh.verify().await.unwrap().unknown.contains(&name));
    phone.sync(None, None).await.unwrap();
    assert!(phone.verify().await.unwrap().unknown.contains(&name));
}

#[tokio::test]
async fn an_index_overwritten_under_a_known_name_is_refused_not_taken() {
    let (dir, store, key, phone) = phone_with_a_message().await;
    phone.checkpoint().await.unwrap();
    let tablet = device(&store, dir.path(), "tablet", &key).await;
    tablet.sync(None, None).await.unwrap();
    // A holder of epoch 0's keys seals another index, unsigned (which counts while the vault
    // trusts writers of before device keys), under the name of the phone's signed one, which
    // the tablet has judged and noted.
    let (_, name) = indexes(&store, &phone).await.remove(0);
    let (writer, seq, tag) = parse_checkpoint_name(&name).unwrap();
    let sealed = seal_checkpoint(
        &*phone.epochs().unwrap(),
        &CheckpointInput {
            device: writer,
            seq,
            tag,
            covered: &lock(&phone.local).unwrap().heads().unwrap(),
            chat_keys: &lock(&phone.chat_keys).unwrap(),
            deleted_chats: &[],
            created_at_ms: 1,
            signer: None,
        },
        [Ok(ChatContent {
            chat_id: "c".into(),
            operations: Vec::new(),
        })],
    )
    .unwrap();
    assert_eq!(sealed.index_name, name);
    for (object, bytes) in sealed
        .packs
        .into_iter()
        .chain([(name.clone(), sealed.index)])
    {
        store
            .put(&format!("{}{object}", phone.prefix()), bytes)
            .await
            .unwrap();
    }
    // Reading it again for a checkpoint, garbage collection or verify, the tablet refuses it.
    tablet.record(vec![message("tablet")]).unwrap();
    let replaced = |result: Result<()>| {
        matches!(
            result,
            Err(Error::Integrity(crate::IntegrityProblem::Replaced { name: ref n })) if *n == name
        )
    };
    assert!(replaced(tablet.checkpoint().await.map(|_| ())));
    assert!(replaced(tablet.verify().await.map(|_| ())));
    assert!(replaced(tablet.collect_garbage(0).await.map(|_| ())));
}
