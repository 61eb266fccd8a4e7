//! Checkpoints: the merged state written as per-chat blocks in a few pack objects plus a sealed
//! index, so a new device reads few objects and one chat can be restored with one ranged GET.
//!
//! ```text
//! index = checkpoints/<device hex>/<seq 016x>      sealed (kind 6, log key) CheckpointIndex
//! pack  = packs/<device hex>/<seq 016x>/<n 4 digits>  sealed chat blocks back to back, zero-padded
//! block i = sealed (kind 2, a key of the chat, AAD name = "<index name>#<i>") ChatCheckpoint
//! ```
//!
//! The index lists the segments it covers (one head per device), every key of every live chat,
//! the packs, where each chat block lies, and the deleted chats' tombstones. Keys of deleted chats
//! are left out: once the segments and older checkpoints that held them are collected, those
//! chats are shredded.

use prost::Message as _;

use crate::error::{DecodeProblem, Error, IntegrityProblem, Result};
use crate::format::{ObjectKind, decode_body, proto};
use crate::keys::{ChatKey, VaultKeys};
use crate::sealing::{self, Compression, ObjectContext, padded_len};

use super::clock::{DeviceId, Stamp};
use super::history::{HistoryCursor, position_of};
use super::model::Operation;
use super::segment::{ChatKeys, Head, KeyId, parse_device_and_seq};

/// Where checkpoint indexes live inside the vault prefix.
pub const CHECKPOINTS_PREFIX: &str = "checkpoints/";
/// Where packs live inside the vault prefix.
pub const PACKS_PREFIX: &str = "packs/";
/// Chat blocks are filled up to about this much encoded plaintext (64 KiB): a page of history
/// reads one or two blocks, and a chat spans as many as it needs.
const BLOCK_TARGET: usize = 64 * 1024;
/// Packs are closed once they hold this many bytes (8 MiB).
const PACK_TARGET: usize = 8 * 1024 * 1024;

/// Fewest segments outside the newest checkpoint before a sync writes a new checkpoint.
pub const AUTO_CHECKPOINT_SEGMENTS: u64 = 64;
/// Segments a vault without any checkpoint collects before a sync writes its first one.
pub const FIRST_CHECKPOINT_SEGMENTS: u64 = 256;
/// Most segments outside the newest checkpoint before a sync writes one however small they are,
/// so a new device fetches a bounded number of objects after the checkpoint.
pub const MAX_UNCOVERED_SEGMENTS: u64 = 1024;

/// Whether a sync should write a checkpoint, given the segments the newest checkpoint does not
/// cover (count and bytes) and the newest checkpoint's bytes (index and packs; `None` when the
/// vault has none).
///
/// A checkpoint rewrites the whole vault, so one is due when the uncovered segments are at
/// least [`AUTO_CHECKPOINT_SEGMENTS`] and hold at least a quarter of the last checkpoint's
/// bytes: over time checkpoints upload at most about four times the bytes of the segments they
/// replace, instead of the whole vault every 64 syncs however little each carried. A vault
/// without a checkpoint (its first backup is in segments of up to 4 MiB, as good to restore
/// from as a checkpoint) gets its first after [`FIRST_CHECKPOINT_SEGMENTS`]; past
/// [`MAX_UNCOVERED_SEGMENTS`] one is written however small the segments are.
pub fn checkpoint_due(
    uncovered_segments: u64,
    uncovered_bytes: u64,
    checkpoint_bytes: Option<u64>,
) -> bool {
    uncovered_segments >= MAX_UNCOVERED_SEGMENTS
        || match checkpoint_bytes {
            None => uncovered_segments >= FIRST_CHECKPOINT_SEGMENTS,
            Some(bytes) => {
                uncovered_segments >= AUTO_CHECKPOINT_SEGMENTS
                    && uncovered_bytes.saturating_mul(4) >= bytes
            }
        }
}

/// The name of a checkpoint index.
pub fn checkpoint_name(device: DeviceId, seq: u64) -> String {
    format!("{CHECKPOINTS_PREFIX}{}/{seq:016x}", device.to_hex())
}

/// Parses a checkpoint index name.
pub fn parse_checkpoint_name(name: &str) -> Option<(DeviceId, u64)> {
    parse_device_and_seq(name.strip_prefix(CHECKPOINTS_PREFIX)?)
}

/// The prefix of a checkpoint's packs.
pub fn pack_prefix(device: DeviceId, seq: u64) -> String {
    format!("{PACKS_PREFIX}{}/{seq:016x}/", device.to_hex())
}

/// One live chat's content: the winning operation for its metadata and for each message.
#[derive(Debug, Clone)]
pub struct ChatContent {
    /// The chat.
    pub chat_id: String,
    /// Its operations.
    pub operations: Vec<Operation>,
}

/// What goes into a checkpoint.
#[derive(Debug)]
pub struct CheckpointInput<'a> {
    /// The writing device and its checkpoint sequence number.
    pub device: DeviceId,
    /// 1, 2, ... per device.
    pub seq: u64,
    /// The newest applied segment of every device: the state below covers exactly these.
    pub covered: &'a [Head],
    /// Every known chat key (keys of chats not in `chats` are left out).
    pub chat_keys: &'a ChatKeys,
    /// Deleted chats: (chat id, stamp of the newest delete).
    pub deleted_chats: &'a [(String, Stamp)],
    /// Writer's clock, for garbage collection grace periods.
    pub created_at_ms: u64,
}

/// A sealed checkpoint, ready to upload (packs first, index last).
#[derive(Debug)]
pub struct SealedCheckpoint {
    /// The index's name.
    pub index_name: String,
    /// The index's bytes.
    pub index: Vec<u8>,
    /// (name, bytes) of each pack.
    pub packs: Vec<(String, Vec<u8>)>,
}

/// Where one chat block lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedChat {
    /// The chat.
    pub chat_id: String,
    /// The key its block is sealed under.
    pub key_id: KeyId,
    /// Index into the checkpoint's packs.
    pub pack: usize,
    /// Byte offset in the pack.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
    /// For a block of messages: the history positions of its first and last message. `None`
    /// for a block a reader of the chat always needs (metadata, deletions, or an older writer).
    pub range: Option<(HistoryCursor, HistoryCursor)>,
}

/// An opened checkpoint index.
#[derive(Debug)]
pub struct CheckpointIndex {
    /// Its name.
    pub name: String,
    /// Writer and sequence number.
    pub device: DeviceId,
    /// Checkpoint sequence number.
    pub seq: u64,
    /// Segments covered, one head per device.
    pub covered: Vec<Head>,
    /// Keys of live chats.
    pub grants: Vec<(KeyId, String, ChatKey)>,
    /// (name, size) of each pack.
    pub packs: Vec<(String, u64)>,
    /// Chat blocks.
    pub chats: Vec<PackedChat>,
    /// Deleted chats.
    pub deleted_chats: Vec<(String, Stamp)>,
    /// Writer's clock at creation.
    pub created_at_ms: u64,
}

/// The AAD name of chat block `block` of a checkpoint (FORMAT.md section 9.5).
pub(crate) fn block_name(index_name: &str, block: usize) -> String {
    format!("{index_name}#{block}")
}

fn head_to_proto(head: &Head) -> proto::DeviceHead {
    proto::DeviceHead {
        device_id: head.device.0.to_vec(),
        seq: head.seq,
        hash: head.hash.to_vec(),
    }
}

/// Seals a checkpoint: chat blocks into packs, then the index. `chats` yields each chat's content
/// in turn (so only one chat's operations are in memory at a time); chats without operations
/// are skipped.
pub fn seal_checkpoint(
    keys: &VaultKeys,
    input: &CheckpointInput<'_>,
    chats: impl IntoIterator<Item = Result<ChatContent>>,
) -> Result<SealedCheckpoint> {
    seal_checkpoint_with(keys, input, chats, &mut sealing::random_nonce)
}

/// [`seal_checkpoint`] with nonces from `nonce` (one per chat block in order, then the index):
/// only `seal_checkpoint` and the test-vector generator call it, and a nonce must never be
/// reused under one key.
pub(crate) fn seal_checkpoint_with(
    keys: &VaultKeys,
    input: &CheckpointInput<'_>,
    chats: impl IntoIterator<Item = Result<ChatContent>>,
    nonce: &mut dyn FnMut() -> Result<[u8; sealing::NONCE_LEN]>,
) -> Result<SealedCheckpoint> {
    let index_name = checkpoint_name(input.device, input.seq);
    let pack_base = pack_prefix(input.device, input.seq);
    let mut packs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut entries = Vec::new();
    let mut grants = Vec::new();
    let close = |packs: &mut Vec<(String, Vec<u8>)>, current: &mut Vec<u8>| {
        let mut pack = std::mem::take(current);
        pack.resize(padded_len(pack.len() as u64) as usize, 0);
        packs.push((format!("{pack_base}{:04}", packs.len()), pack));
    };
    for chat in chats {
        let chat = chat?;
        if chat.operations.is_empty() {
            continue;
        }
        let (key_id, key) = input
            .chat_keys
            .writing_key(&chat.chat_id)
            .ok_or_else(|| Error::invalid_input(format!("no key for chat {:?}", chat.chat_id)))?;
        for (id, chat_id, _) in input.chat_keys.entries() {
            if chat_id == chat.chat_id {
                grants.push(*id);
            }
        }
        // The chat's metadata and deletions first (every read of the chat needs them), then its
        // messages in history order, in blocks of about BLOCK_TARGET encoded bytes, each with the
        // positions of its first and last message so a page of history reads only its blocks.
        let (mut messages, head): (Vec<&Operation>, Vec<&Operation>) = chat
            .operations
            .iter()
            .partition(|op| position_of(op).is_some());
        messages.sort_by(|a, b| position_of(a).cmp(&position_of(b)));
        for (group, ranged) in [(head, false), (messages, true)] {
            for block_ops in split_blocks(&group) {
                let body = proto::ChatCheckpoint {
                    chat_id: chat.chat_id.clone(),
                    operations: block_ops.iter().map(|op| op.to_proto()).collect(),
                }
                .encode_to_vec();
                let name = block_name(&index_name, entries.len());
                let context = ObjectContext {
                    vault_id: keys.vault_id(),
                    kind: ObjectKind::ChatData,
                    name: &name,
                };
                let block = sealing::seal_with_nonce(
                    &key.0,
                    &context,
                    &body,
                    &nonce()?,
                    Compression::Auto,
                )?;
                if !current.is_empty() && current.len() + block.len() > PACK_TARGET {
                    close(&mut packs, &mut current);
                }
                let place = |op: Option<&&Operation>| {
                    op.and_then(|op| position_of(op)).filter(|_| ranged).map(
                        |(sent_at_ms, message_id)| proto::HistoryPosition {
                            sent_at_ms,
                            message_id: message_id.to_owned(),
                        },
                    )
                };
                entries.push(proto::PackedChat {
                    chat_id: chat.chat_id.clone(),
                    key_id: key_id.to_vec(),
                    pack: packs.len() as u32,
                    offset: current.len() as u64,
                    length: block.len() as u64,
                    first: place(block_ops.first()),
                    last: place(block_ops.last()),
                });
                current.extend_from_slice(&block);
            }
        }
    }
    if !current.is_empty() {
        close(&mut packs, &mut current);
    }
    grants.sort_unstable();
    grants.dedup();
    let body =
        zeroize::Zeroizing::new(
            proto::CheckpointIndex {
                device_id: input.device.0.to_vec(),
                seq: input.seq,
                covered: input.covered.iter().map(head_to_proto).collect(),
                keys: grants
                    .iter()
                    .filter_map(|id| {
                        input.chat_keys.entries().find(|(k, _, _)| *k == id).map(
                            |(k, chat, key)| proto::ChatKeyGrant {
                                chat_id: chat.to_owned(),
                                key_id: k.to_vec(),
                                key: key.0.bytes().to_vec(),
                            },
                        )
                    })
                    .collect(),
                packs: packs
                    .iter()
                    .map(|(name, bytes)| proto::PackRef {
                        name: name.clone(),
                        size: bytes.len() as u64,
                    })
                    .collect(),
                chats: entries,
                deleted_chats: input
                    .deleted_chats
                    .iter()
                    .map(|(chat_id, stamp)| proto::ChatTombstone {
                        chat_id: chat_id.clone(),
                        stamp: Some(stamp.to_proto()),
                    })
                    .collect(),
                created_at_ms: input.created_at_ms,
            }
            .encode_to_vec(),
        );
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::CheckpointIndex,
        name: &index_name,
    };
    let index =
        sealing::seal_with_nonce(&keys.log().0, &context, &body, &nonce()?, Compression::Auto)?;
    Ok(SealedCheckpoint {
        index_name,
        index,
        packs,
    })
}

/// Cuts operations into runs of about [`BLOCK_TARGET`] encoded bytes (at least one each).
fn split_blocks<'a>(operations: &'a [&'a Operation]) -> Vec<&'a [&'a Operation]> {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (index, operation) in operations.iter().enumerate() {
        if index > start && size >= BLOCK_TARGET {
            blocks.push(&operations[start..index]);
            start = index;
            size = 0;
        }
        size += operation.to_proto().encoded_len();
    }
    if start < operations.len() {
        blocks.push(&operations[start..]);
    }
    blocks
}

/// Opens and checks a checkpoint index stored under `name`.
pub fn open_checkpoint_index(
    keys: &VaultKeys,
    name: &str,
    object: &[u8],
) -> Result<CheckpointIndex> {
    let misplaced = || {
        Error::Integrity(IntegrityProblem::Misplaced {
            name: name.to_owned(),
        })
    };
    let (device, seq) = parse_checkpoint_name(name).ok_or_else(misplaced)?;
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::CheckpointIndex,
        name,
    };
    let body = sealing::open(&keys.log().0, &context, object)?;
    let index: proto::CheckpointIndex = decode_body(ObjectKind::CheckpointIndex, &body)?;
    if index.device_id != device.0 || index.seq != seq {
        return Err(misplaced());
    }
    let malformed = |why: &str| {
        Error::decode(
            ObjectKind::CheckpointIndex,
            DecodeProblem::Malformed(why.to_owned()),
        )
    };
    let id16 = |bytes: &[u8], what: &str| -> Result<[u8; 16]> {
        bytes.try_into().map_err(|_| malformed(what))
    };
    let covered = index
        .covered
        .iter()
        .map(|h| {
            Ok(Head {
                device: DeviceId(id16(&h.device_id, "covered device")?),
                seq: h.seq,
                hash: h
                    .hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed("covered hash"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let grants = index
        .keys
        .iter()
        .map(|g| {
            let key: [u8; 32] = g.key.as_slice().try_into().map_err(|_| malformed("key"))?;
            Ok((
                id16(&g.key_id, "key id")?,
                g.chat_id.clone(),
                ChatKey::from_bytes(key),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let packs: Vec<(String, u64)> = index
        .packs
        .iter()
        .map(|p| (p.name.clone(), p.size))
        .collect();
    let prefix = pack_prefix(device, seq);
    if packs.iter().any(|(n, _)| !n.starts_with(&prefix)) {
        return Err(malformed("pack outside the checkpoint"));
    }
    let chats = index
        .chats
        .iter()
        .map(|c| {
            let pack = c.pack as usize;
            let size = packs.get(pack).ok_or_else(|| malformed("pack index"))?.1;
            if c.offset.checked_add(c.length).is_none_or(|end| end > size) {
                return Err(malformed("block outside its pack"));
            }
            let cursor = |p: &proto::HistoryPosition| HistoryCursor {
                sent_at_ms: p.sent_at_ms,
                message_id: p.message_id.clone(),
            };
            let range = match (&c.first, &c.last) {
                (None, None) => None,
                (Some(first), Some(last)) if cursor(first) <= cursor(last) => {
                    Some((cursor(first), cursor(last)))
                }
                _ => return Err(malformed("block range")),
            };
            Ok(PackedChat {
                chat_id: c.chat_id.clone(),
                key_id: id16(&c.key_id, "block key id")?,
                pack,
                offset: c.offset,
                length: c.length,
                range,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let deleted_chats = index
        .deleted_chats
        .iter()
        .map(|t| {
            let stamp = t
                .stamp
                .as_ref()
                .and_then(Stamp::from_proto)
                .ok_or_else(|| malformed("tombstone stamp"))?;
            Ok((t.chat_id.clone(), stamp))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CheckpointIndex {
        name: name.to_owned(),
        device,
        seq,
        covered,
        grants,
        packs,
        chats,
        deleted_chats,
        created_at_ms: index.created_at_ms,
    })
}

/// Opens block `block` of `index` (its bytes cut from the pack) with the known chat keys.
pub fn open_block(
    keys: &VaultKeys,
    chat_keys: &ChatKeys,
    index: &CheckpointIndex,
    block: usize,
    bytes: &[u8],
) -> Result<Vec<Operation>> {
    let malformed = |why: &str| {
        Error::decode(
            ObjectKind::ChatData,
            DecodeProblem::Malformed(why.to_owned()),
        )
    };
    let entry = index
        .chats
        .get(block)
        .ok_or_else(|| malformed("no such block"))?;
    let key = chat_keys
        .key(&entry.key_id)
        .filter(|(chat, _)| *chat == entry.chat_id)
        .map(|(_, key)| key)
        .ok_or_else(|| {
            Error::Integrity(IntegrityProblem::UnknownKey {
                device: index.device.to_hex(),
                seq: index.seq,
            })
        })?;
    let name = block_name(&index.name, block);
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::ChatData,
        name: &name,
    };
    let body = sealing::open(&key.0, &context, bytes)?;
    let content: proto::ChatCheckpoint = decode_body(ObjectKind::ChatData, &body)?;
    if content.chat_id != entry.chat_id {
        return Err(malformed("block of another chat"));
    }
    content
        .operations
        .into_iter()
        .map(|op| {
            let op = Operation::from_proto(op).map_err(|e| malformed(&e))?;
            if op.change.chat_id() != entry.chat_id {
                return Err(malformed("operation of another chat"));
            }
            // A block that claims a range holds only messages inside it: a reader that skips
            // blocks by their ranges must not miss anything.
            if let Some((first, last)) = &entry.range {
                let inside = position_of(&op).is_some_and(|(at, id)| {
                    let place = (at, id.as_bytes());
                    (first.sent_at_ms, first.message_id.as_bytes()) <= place
                        && place <= (last.sent_at_ms, last.message_id.as_bytes())
                });
                if !inside {
                    return Err(malformed("operation outside its block's range"));
                }
            }
            Ok(op)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RecoveryKey;
    use crate::sync::{Change, Message, Stamp};

    /// A checkpoint of one chat with 3,000 messages recorded newest first, opened again.
    fn long_chat_checkpoint() -> (VaultKeys, ChatKeys, CheckpointIndex, Vec<Vec<u8>>) {
        let keys = VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]));
        let mut chat_keys = ChatKeys::new();
        chat_keys
            .insert([1; 16], "c", ChatKey::from_bytes([2; 32]))
            .unwrap();
        let device = DeviceId([3; 16]);
        let operations = (0..3000u64)
            .rev()
            .map(|i| Operation {
                stamp: Stamp {
                    wall_ms: 10_000 - i,
                    counter: 0,
                    device,
                },
                change: Change::UpsertMessage(Message {
                    chat_id: "c".into(),
                    message_id: format!("m{i:04}"),
                    sent_at_ms: (i / 2) as i64,
                    text: "some words that fill the blocks ".repeat(2),
                    ..Message::default()
                }),
            })
            .collect();
        let sealed = seal_checkpoint(
            &keys,
            &CheckpointInput {
                device,
                seq: 1,
                covered: &[],
                chat_keys: &chat_keys,
                deleted_chats: &[],
                created_at_ms: 0,
            },
            [Ok(ChatContent {
                chat_id: "c".into(),
                operations,
            })],
        )
        .unwrap();
        let index = open_checkpoint_index(&keys, &sealed.index_name, &sealed.index).unwrap();
        let packs = sealed.packs.into_iter().map(|(_, bytes)| bytes).collect();
        (keys, chat_keys, index, packs)
    }

    fn block_bytes<'a>(index: &CheckpointIndex, packs: &'a [Vec<u8>], block: usize) -> &'a [u8] {
        let entry = &index.chats[block];
        &packs[entry.pack][entry.offset as usize..(entry.offset + entry.length) as usize]
    }

    #[test]
    fn message_blocks_follow_history_order_and_hold_only_their_range() {
        let (keys, chat_keys, index, packs) = long_chat_checkpoint();
        assert!(index.chats.len() >= 3, "{} blocks", index.chats.len());
        let mut previous_last: Option<HistoryCursor> = None;
        for block in 0..index.chats.len() {
            let (first, last) = index.chats[block].range.clone().unwrap();
            assert!(previous_last.as_ref().is_none_or(|p| *p < first));
            let operations = open_block(
                &keys,
                &chat_keys,
                &index,
                block,
                block_bytes(&index, &packs, block),
            )
            .unwrap();
            let positions: Vec<_> = operations.iter().filter_map(position_of).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]));
            previous_last = Some(last);
        }
        // An index whose range leaves out some of its block's messages is refused.
        let mut lying = index;
        let (first, last) = lying.chats[1].range.clone().unwrap();
        lying.chats[1].range = Some((
            HistoryCursor {
                sent_at_ms: first.sent_at_ms + 1,
                ..first
            },
            last,
        ));
        assert!(matches!(
            open_block(&keys, &chat_keys, &lying, 1, block_bytes(&lying, &packs, 1)),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn checkpoints_wait_for_a_quarter_of_the_last_one_in_new_segments() {
        // No checkpoint yet: the first comes after 256 segments.
        assert!(!checkpoint_due(255, u64::MAX, None));
        assert!(checkpoint_due(256, 1, None));
        // A 10 MB checkpoint: 64 small segments are not enough, 2.5 MB of them are.
        assert!(!checkpoint_due(64, 64 * 2_000, Some(10_000_000)));
        assert!(!checkpoint_due(1000, 2_499_999, Some(10_000_000)));
        assert!(checkpoint_due(100, 2_500_000, Some(10_000_000)));
        assert!(!checkpoint_due(63, 9_000_000, Some(10_000_000)));
        // Many tiny segments: one anyway, to bound what a new device fetches.
        assert!(checkpoint_due(MAX_UNCOVERED_SEGMENTS, 1, Some(u64::MAX)));
        assert!(checkpoint_due(MAX_UNCOVERED_SEGMENTS, 1, None));
    }
}
