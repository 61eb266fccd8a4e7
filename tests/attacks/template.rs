//! The honest vault every attack starts from, built once per test process on a directory store:
//! three devices, several chats, an attachment, two checkpoints (the first garbage-collected,
//! the second not), and segments after the newest checkpoint. Every attack copies it, so each
//! one meets the same bucket and the same device states.

// Shared by `tests/attacks.rs` and `tests/attacks_unknown.rs`, each using a part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chatvault::attachment::Attachment;
use chatvault::keys::{RecoveryKey, VaultKeys};
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::checkpoint::{CheckpointIndex, open_checkpoint_index};
use chatvault::sync::segment::{SegmentName, parse_segment_name, segment_name};
use chatvault::sync::{Change, DeviceId, Message};
use chatvault::vault::{CancelToken, DeviceInfo, Vault};

use crate::common::cached;

/// Chunk size of the template's attachment: the smallest allowed, so a small file has several
/// chunks (a swap needs two full ones).
const CHUNK_SIZE: u32 = 65_536;
/// The attachment's size: three full chunks and part of a fourth.
const FILE_SIZE: usize = 3 * CHUNK_SIZE as usize + 5_000;

/// The honest vault and where each kind of object lies in it. Object names are full store keys
/// (`<vault id>/segments/...`, `<vault id>-attachments/...`).
pub struct Template {
    _dir: tempfile::TempDir,
    /// The bucket (a directory store root).
    pub bucket: PathBuf,
    /// The bucket as it was before the last round of writes (for a whole-bucket rollback).
    pub before_last_round: PathBuf,
    /// The state directories of devices `a`, `b` (fully synced) and `c` (synced before the
    /// last round: it has not seen the newest segments).
    pub states: PathBuf,
    /// The vault's recovery key.
    pub key: RecoveryKey,
    /// The vault id (the bucket prefix of its objects).
    pub vault: String,
    /// Device ids (hex) of `a`, `b` and `c`.
    pub a: String,
    pub b: String,
    pub c: String,
    /// `a`'s segments after the newest checkpoint, oldest first (two of them; `b`'s newest
    /// segment names the newer as seen).
    pub a_uncovered: Vec<String>,
    /// `b`'s segments after the newest checkpoint (one, seen by nobody else).
    pub b_uncovered: Vec<String>,
    /// Listed segments the newest checkpoint covers (not yet collected), `a`'s first.
    pub covered: Vec<String>,
    /// The newest checkpoint's index and the older (superseded, not yet collected) one's.
    pub newest_checkpoint: String,
    pub older_checkpoint: String,
    /// The newest index, opened (its packs with their sizes, its blocks).
    pub newest_index: CheckpointIndex,
    /// Packs only the older index lists (garbage a collection would remove).
    pub older_only_packs: Vec<String>,
    /// The attachment a message of chat `family` references, and its chunk objects in order.
    pub attachment: Attachment,
    pub chunks: Vec<String>,
    /// Objects of a second vault (another recovery key): (full key, bytes). It has a segment, a
    /// checkpoint index and a pack.
    pub other_vault: Vec<(String, Vec<u8>)>,
    pub other_vault_id: String,
}

impl Template {
    /// The full store key of a name relative to the vault prefix.
    pub fn key_of(&self, relative: &str) -> String {
        format!("{}/{relative}", self.vault)
    }

    /// The full store key of the segment of `device` (hex) at `seq` with `tag`, following
    /// the segment tagged `parent`.
    pub fn segment(&self, device: &str, seq: u64, tag: u64, parent: u64) -> String {
        let device = DeviceId::from_hex(device).unwrap();
        self.key_of(&segment_name(device, seq, tag, parent))
    }

    /// The full store key the segment after `key` (a full segment key) would have, with a tag
    /// no honest writer drew.
    pub fn next_segment(&self, key: &str) -> String {
        let previous = self.parsed(key);
        self.segment(
            &previous.device.to_hex(),
            previous.seq + 1,
            0x0e0e_0e0e_0e0e_0e0e,
            previous.tag,
        )
    }

    /// A segment's name parts, given by its full key.
    pub fn parsed(&self, key: &str) -> SegmentName {
        let relative = key.strip_prefix(&format!("{}/", self.vault)).unwrap();
        parse_segment_name(relative).unwrap()
    }

    /// The sequence number of a segment given by its full key.
    pub fn seq_of(&self, key: &str) -> u64 {
        self.parsed(key).seq
    }

    /// The full key of pack `n` of the newest index, and its size.
    pub fn newest_pack(&self, n: usize) -> (String, u64) {
        let (name, size) = &self.newest_index.packs[n];
        (self.key_of(name), *size)
    }

    /// The object of the second vault whose key contains `part` (`/segments/`, `/checkpoints/`,
    /// `/packs/`).
    pub fn other(&self, part: &str) -> (String, Vec<u8>) {
        self.other_vault
            .iter()
            .find(|(key, _)| key.contains(part))
            .cloned()
            .unwrap_or_else(|| panic!("the second vault has no {part} object"))
    }
}

/// The template, built on first use.
pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        runtime().block_on(async {
            // Block sizes follow the content; a filler message of another length each attempt
            // moves the pack's end until it falls short of its padded size.
            for filler in 0..16 {
                if let Some(template) = build(filler).await {
                    return template;
                }
            }
            panic!("no attempt gave the newest pack padding after its blocks");
        })
    })
}

/// A runtime for one test (the tests are plain `#[test]`s so that the template can be built
/// once, outside any runtime).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

/// Opens a device with the content cache on (so its messages can be compared and `verify`
/// knows which attachments are referenced).
pub async fn open_device(
    store: Arc<dyn ObjectStore>,
    state: &Path,
    name: &str,
    key: &RecoveryKey,
) -> Vault {
    cached(Vault::open(store, state, info(name), key).await.unwrap())
}

pub fn message(chat: &str, id: &str, text: &str, at: i64) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        sender: "me".into(),
        sent_at_ms: at,
        text: text.into(),
        reply_to: None,
        attachments: Vec::new(),
        kind: "text".into(),
        payload: Vec::new(),
    })
}

fn messages(chat: &str, from: i64, to: i64) -> Vec<Change> {
    (from..to)
        .map(|i| {
            message(
                chat,
                &format!("{chat}-{i}"),
                &format!("message {i} of {chat}"),
                i,
            )
        })
        .collect()
}

async fn sync_all(devices: &[&Vault]) {
    for device in devices {
        device.sync(None, None).await.unwrap();
    }
}

pub use crate::common::copy_dir;

/// Builds the template; `None` when the newest checkpoint's first pack ends exactly with its
/// last block (no padding to attack).
async fn build(filler: usize) -> Option<Template> {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let states = dir.path().join("states");
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(bucket.clone()));
    let key = RecoveryKey::generate().unwrap();
    let a = open_device(store.clone(), &states.join("a"), "a", &key).await;
    let b = open_device(store.clone(), &states.join("b"), "b", &key).await;
    let c = open_device(store.clone(), &states.join("c"), "c", &key).await;

    // Round 1: every device writes; one message carries an attachment.
    a.set_attachment_chunk_size(CHUNK_SIZE).unwrap();
    let file = dir.path().join("photo.jpg");
    let content: Vec<u8> = (0..FILE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, content).unwrap();
    let (attachment, _) = a
        .attach_file(&file, "photo.jpg", "image/jpeg", None, &CancelToken::new())
        .await
        .unwrap();
    let mut with_file = message("family", "family-photo", "look", 1_000);
    if let Change::UpsertMessage(m) = &mut with_file {
        m.attachments.push(attachment.clone());
    }
    let mut round1 = messages("family", 0, 10);
    round1.extend(messages("work", 0, 10));
    round1.push(with_file);
    a.record(round1).unwrap();
    // Two chats whose checkpoint blocks have the same length, for the block swap.
    b.record(messages("b-chat", 0, 5)).unwrap();
    b.record(vec![
        message("twin-1", "t", "same length", 1),
        message("twin-2", "t", "same length", 1),
    ])
    .unwrap();
    c.record(messages("c-chat", 0, 3)).unwrap();
    sync_all(&[&a, &b, &c, &a, &b, &c]).await;
    // The first checkpoint, and its covered segments collected.
    a.checkpoint().await.unwrap();
    a.collect_garbage(0).await.unwrap();

    // Round 2, then the second checkpoint, which everyone learns of; nothing collected.
    a.record(messages("family", 10, 15)).unwrap();
    b.record(messages("b-chat", 5, 8)).unwrap();
    c.record(messages("c-chat", 3, 6)).unwrap();
    c.record(vec![message("filler", "f", &"f".repeat(filler * 37), 1)])
        .unwrap();
    sync_all(&[&a, &b, &c, &a, &b, &c]).await;
    a.checkpoint().await.unwrap();
    sync_all(&[&b, &c]).await;
    let before_last_round = dir.path().join("before-last-round");
    copy_dir(&bucket, &before_last_round);

    // Round 3, which `c` does not see: two segments of `a`, then one of `b` that names `a`'s
    // newest as seen.
    a.record(messages("family", 15, 18)).unwrap();
    a.sync(None, None).await.unwrap();
    a.record(messages("work", 10, 12)).unwrap();
    sync_all(&[&a, &b]).await;
    b.record(messages("b-chat", 8, 10)).unwrap();
    sync_all(&[&b, &a]).await;

    let vault = a.vault_id();
    let (a_id, b_id, c_id) = (
        a.device_id().to_hex(),
        b.device_id().to_hex(),
        c.device_id().to_hex(),
    );
    drop((a, b, c));

    let keys = VaultKeys::derive(&key);
    let prefix = format!("{vault}/");
    let listed = store.list(&prefix).await.unwrap();
    let mut indexes = Vec::new();
    for object in listed.iter().filter(|o| o.key.contains("/checkpoints/")) {
        let relative = object.key.strip_prefix(&prefix).unwrap();
        let bytes = store.get(&object.key, u64::MAX).await.unwrap().unwrap();
        indexes.push(open_checkpoint_index(&keys, relative, &bytes).unwrap());
    }
    assert_eq!(indexes.len(), 2, "two checkpoints listed");
    indexes.sort_by_key(|i| i.covered.iter().map(|h| h.seq).sum::<u64>());
    let newest_index = indexes.pop().unwrap();
    let older_index = indexes.pop().unwrap();
    let covered_seq: BTreeMap<String, u64> = newest_index
        .covered
        .iter()
        .map(|h| (h.device.to_hex(), h.seq))
        .collect();
    let (mut a_uncovered, mut b_uncovered, mut covered) = (Vec::new(), Vec::new(), Vec::new());
    for object in listed.iter().filter(|o| o.key.contains("/segments/")) {
        let relative = object.key.strip_prefix(&prefix).unwrap();
        let parsed = parse_segment_name(relative).unwrap();
        let (device, seq) = (parsed.device.to_hex(), parsed.seq);
        if seq <= covered_seq.get(&device).copied().unwrap_or(0) {
            covered.push(object.key.clone());
        } else if device == a_id {
            a_uncovered.push(object.key.clone());
        } else if device == b_id {
            b_uncovered.push(object.key.clone());
        } else {
            panic!(
                "device c wrote nothing after the newest checkpoint: {}",
                object.key
            );
        }
    }
    covered.sort_by_key(|k| !k.contains(&a_id));
    assert_eq!(a_uncovered.len(), 2, "{a_uncovered:?}");
    assert_eq!(b_uncovered.len(), 1, "{b_uncovered:?}");
    assert!(
        covered.iter().any(|k| k.contains(&a_id)),
        "the newest checkpoint covers a listed segment of a: {covered:?}"
    );
    let first_pack_end = newest_index
        .chats
        .iter()
        .filter(|c| c.pack == 0)
        .map(|c| c.offset + c.length)
        .max()?;
    if first_pack_end == newest_index.packs[0].1 {
        return None;
    }
    let older_only_packs = older_index
        .packs
        .iter()
        .filter(|(name, _)| !newest_index.packs.iter().any(|(n, _)| n == name))
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect();
    let chunks_prefix = format!("{vault}-attachments/");
    let chunks: Vec<String> = (0..attachment.chunk_count())
        .map(|i| format!("{chunks_prefix}{}", attachment.chunk_name(i)))
        .collect();
    assert_eq!(chunks.len(), 4, "three full chunks and a last one");

    let (other_vault_id, other_vault) = build_other_vault(&dir.path().join("other")).await;
    Some(Template {
        bucket,
        before_last_round,
        states,
        key,
        vault,
        a: a_id,
        b: b_id,
        c: c_id,
        a_uncovered,
        b_uncovered,
        covered,
        newest_checkpoint: format!("{prefix}{}", newest_index.name),
        older_checkpoint: format!("{prefix}{}", older_index.name),
        newest_index,
        older_only_packs,
        attachment,
        chunks,
        other_vault,
        other_vault_id,
        _dir: dir,
    })
}

/// A second vault under another recovery key, with a segment, a checkpoint and a pack whose
/// objects an attacker can splice into the first.
async fn build_other_vault(root: &Path) -> (String, Vec<(String, Vec<u8>)>) {
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(root.join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let x = open_device(store.clone(), &root.join("x"), "x", &key).await;
    x.record(messages("family", 0, 10)).unwrap();
    x.sync(None, None).await.unwrap();
    x.checkpoint().await.unwrap();
    let vault = x.vault_id();
    let mut objects = Vec::new();
    for object in store.list("").await.unwrap() {
        let bytes = store.get(&object.key, u64::MAX).await.unwrap().unwrap();
        objects.push((object.key, bytes));
    }
    (vault, objects)
}
