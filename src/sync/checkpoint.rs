//! Checkpoints: the merged state written as per-chat blocks in a few pack objects plus a sealed
//! index, so a new device reads few objects and one chat can be restored with one ranged GET.
//!
//! ```text
//! index = checkpoints/<device hex>/<seq 016x>-<tag 016x>     sealed (kind 6, log key) CheckpointIndex
//! pack  = packs/<device hex>/<seq 016x>-<tag 016x>/<n 4 digits>  sealed chat blocks, zero-padded
//! block = sealed (kind 2, a key of the chat, AAD name = "blocks/<block id hex>") ChatCheckpoint
//! ```
//!
//! The tag is random per checkpoint, so copies of one state directory that reserve the same
//! sequence number still write under different names.
//!
//! The index lists the segments it covers (every tip of every device's segment tree), every key of every live chat,
//! the packs its blocks lie in (its own, and earlier checkpoints' whose blocks it kept), where each
//! chat block lies, and the deleted chats' tombstones. Keys of a deleted chat stay only while a
//! covered device may still write to it unaware of the delete ([`deletions`](super::deletions));
//! once they are out and the segments and older checkpoints that held them are collected, the
//! chat is shredded.
//! Writing one is [`next_checkpoint`](super::next_checkpoint)'s job.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::error::{DecodeProblem, Error, IntegrityProblem, Result};
use crate::format::{ObjectKind, decode_body, proto};
use crate::keys::{KeyEpochs, VaultKeys};
use crate::sealing::{self, ObjectContext};

use super::clock::{DeviceId, Stamp};
use super::history::{HistoryCursor, position_of};
use super::model::Operation;
use super::segment::{
    ChatKeys, Head, KeyGrant, KeyId, SegmentId, grant_epoch_cap, grant_from_proto,
    heads_from_proto, parse_device_seq_tag,
};
use super::signature::{BodySignature, split_signature};

/// Where checkpoint indexes live inside the vault prefix.
pub const CHECKPOINTS_PREFIX: &str = "checkpoints/";
/// Where packs live inside the vault prefix.
pub const PACKS_PREFIX: &str = "packs/";
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

/// The name of a checkpoint index: `checkpoints/<device>/<seq 016x>-<tag 016x>`.
pub fn checkpoint_name(device: DeviceId, seq: u64, tag: u64) -> String {
    format!(
        "{CHECKPOINTS_PREFIX}{}/{seq:016x}-{tag:016x}",
        device.to_hex()
    )
}

/// Parses a checkpoint index name into (device, seq, tag); the tag is never zero.
pub fn parse_checkpoint_name(name: &str) -> Option<(DeviceId, u64, u64)> {
    parse_device_seq_tag(name.strip_prefix(CHECKPOINTS_PREFIX)?)
}

/// The prefix of a checkpoint's packs: `packs/<device>/<seq 016x>-<tag 016x>/`.
pub fn pack_prefix(device: DeviceId, seq: u64, tag: u64) -> String {
    format!("{PACKS_PREFIX}{}/{seq:016x}-{tag:016x}/", device.to_hex())
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
    /// The id its writer chose; the block is sealed under the name `blocks/<id hex>`, so it
    /// can stay where it lies, or move, from one checkpoint to the next.
    pub block_id: [u8; 16],
    /// SHA-256 of its bytes; `None` in indexes written before blocks were hashed.
    pub hash: Option<[u8; 32]>,
}

impl PackedChat {
    /// Checks that `bytes`, cut from the pack `pack`, are the block's, when its index records
    /// their hash: `Integrity(Replaced)` otherwise.
    pub fn check_bytes(&self, pack: &str, bytes: &[u8]) -> Result<()> {
        match self.hash {
            Some(hash) if <[u8; 32]>::from(Sha256::digest(bytes)) != hash => {
                Err(Error::Integrity(IntegrityProblem::Replaced {
                    name: format!("{pack} ({})", block_name(&self.block_id)),
                }))
            }
            _ => Ok(()),
        }
    }
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
    /// Segments covered: every tip of every device's segment tree (the walk through the
    /// listing from these covers their ancestors).
    pub covered: Vec<Head>,
    /// Keys of live chats.
    pub grants: Vec<KeyGrant>,
    /// (name, size) of each pack.
    pub packs: Vec<(String, u64)>,
    /// Chat blocks.
    pub chats: Vec<PackedChat>,
    /// Deleted chats.
    pub deleted_chats: Vec<(String, Stamp)>,
    /// Where each deleted chat's newest delete was written and which covered devices may not
    /// have seen it (only for deletes whose place the writer knew).
    pub deletions: BTreeMap<String, Deletion>,
    /// Writer's clock at creation.
    pub created_at_ms: u64,
    /// The writer's signature, if it signed (every index written since checkpoints are signed).
    pub signature: Option<BodySignature>,
}

/// Where a chat's newest delete was written and who may not have seen it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The segment that held the delete.
    pub deleted_in: SegmentId,
    /// Covered devices that have not acknowledged the delete.
    pub unaware: BTreeSet<DeviceId>,
}

/// The AAD name of the chat block with id `block_id` (FORMAT.md section 9.5).
pub(crate) fn block_name(block_id: &[u8; 16]) -> String {
    format!("blocks/{}", crate::hex::encode(block_id))
}

/// Parses a pack name into its checkpoint's (device, seq, tag) and its number.
pub fn parse_pack_name(name: &str) -> Option<(DeviceId, u64, u64, u32)> {
    let (checkpoint, number) = name.strip_prefix(PACKS_PREFIX)?.rsplit_once('/')?;
    let (device, seq, tag) = parse_device_seq_tag(checkpoint)?;
    if number.len() != 4 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((device, seq, tag, number.parse().ok()?))
}

/// Opens and checks a checkpoint index stored under `name`.
pub fn open_checkpoint_index(
    keys: &impl KeyEpochs,
    name: &str,
    object: &[u8],
) -> Result<CheckpointIndex> {
    let misplaced = || {
        Error::Integrity(IntegrityProblem::Misplaced {
            name: name.to_owned(),
        })
    };
    let (device, seq, _) = parse_checkpoint_name(name).ok_or_else(misplaced)?;
    // Opened with the key tree of the epoch its header names.
    let epoch = sealing::epoch_of(object, ObjectKind::CheckpointIndex)?;
    let body = keys.open_with(ObjectKind::CheckpointIndex, epoch, |tree| {
        let context = ObjectContext {
            vault_id: tree.vault_id(),
            kind: ObjectKind::CheckpointIndex,
            name,
        };
        sealing::open_in_epoch(&tree.log().0, &context, epoch, object)
    })?;
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
    let signature = split_signature(&body, &index.signature).map_err(malformed)?;
    let covered = heads_from_proto(&index.covered, malformed)?;
    let grants = index
        .keys
        .iter()
        .map(|g| grant_from_proto(g, grant_epoch_cap(keys, epoch), malformed))
        .collect::<Result<Vec<_>>>()?;
    let packs: Vec<(String, u64)> = index
        .packs
        .iter()
        .map(|p| (p.name.clone(), p.size))
        .collect();
    if packs.iter().any(|(n, _)| parse_pack_name(n).is_none()) {
        return Err(malformed("not a pack name"));
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
                block_id: id16(&c.block_id, "block id")?,
                hash: match c.hash.len() {
                    0 => None,
                    _ => Some(c.hash[..].try_into().map_err(|_| malformed("block hash"))?),
                },
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
    let mut deletions = BTreeMap::new();
    for tombstone in &index.deleted_chats {
        if tombstone.deleted_by.is_empty() {
            if !tombstone.unaware.is_empty()
                || tombstone.deleted_in != 0
                || tombstone.deleted_in_tag != 0
            {
                return Err(malformed("tombstone without its place"));
            }
            continue;
        }
        let unaware = tombstone
            .unaware
            .iter()
            .map(|device| Ok(DeviceId(id16(device, "unaware device")?)))
            .collect::<Result<BTreeSet<_>>>()?;
        if tombstone.deleted_in == 0 || tombstone.deleted_in_tag == 0 {
            return Err(malformed("tombstone place without its seq or tag"));
        }
        let deletion = Deletion {
            deleted_in: SegmentId {
                device: DeviceId(id16(&tombstone.deleted_by, "deleting device")?),
                seq: tombstone.deleted_in,
                tag: tombstone.deleted_in_tag,
            },
            unaware,
        };
        if deletions
            .insert(tombstone.chat_id.clone(), deletion)
            .is_some()
        {
            return Err(malformed("two tombstones of one chat"));
        }
    }
    Ok(CheckpointIndex {
        name: name.to_owned(),
        device,
        seq,
        covered,
        grants,
        packs,
        chats,
        deleted_chats,
        deletions,
        created_at_ms: index.created_at_ms,
        signature,
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
    let pack = index
        .packs
        .get(entry.pack)
        .map_or("", |(name, _)| name.as_str());
    entry.check_bytes(pack, bytes)?;
    let name = block_name(&entry.block_id);
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
    use crate::sealing::Compression;
    use prost::Message as _;

    /// Seals an index of one deleted chat per tombstone (`fill` sets each one's place) and opens
    /// it as a reader would.
    fn open_with_tombstones(
        fills: &[&dyn Fn(&mut proto::ChatTombstone)],
    ) -> Result<CheckpointIndex> {
        let keys = VaultKeys::derive(&RecoveryKey::from_bytes([5; 32]));
        let device = DeviceId([1; 16]);
        let name = checkpoint_name(device, 1, 1);
        let deleted_chats = fills
            .iter()
            .map(|fill| {
                let mut tombstone = proto::ChatTombstone {
                    chat_id: "c".into(),
                    stamp: Some(
                        Stamp {
                            wall_ms: 5,
                            counter: 0,
                            device,
                        }
                        .to_proto(),
                    ),
                    ..Default::default()
                };
                fill(&mut tombstone);
                tombstone
            })
            .collect();
        let body = proto::CheckpointIndex {
            device_id: device.0.to_vec(),
            seq: 1,
            deleted_chats,
            ..Default::default()
        }
        .encode_to_vec();
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::CheckpointIndex,
            name: &name,
        };
        let sealed =
            sealing::seal_with_nonce(&keys.log().0, &context, &body, &[9; 24], Compression::Auto)
                .unwrap();
        open_checkpoint_index(&keys, &name, &sealed)
    }

    #[test]
    fn a_tombstone_keeps_its_place_and_who_may_not_have_seen_it() {
        let index = open_with_tombstones(&[&|t| {
            t.deleted_by = vec![2; 16];
            t.deleted_in = 4;
            t.deleted_in_tag = 9;
            t.unaware = vec![vec![3; 16]];
        }])
        .unwrap();
        assert_eq!(
            index.deletions["c"],
            Deletion {
                deleted_in: SegmentId {
                    device: DeviceId([2; 16]),
                    seq: 4,
                    tag: 9,
                },
                unaware: BTreeSet::from([DeviceId([3; 16])]),
            }
        );
        let unplaced = open_with_tombstones(&[&|_| {}]).unwrap();
        assert_eq!(unplaced.deleted_chats.len(), 1);
        assert!(unplaced.deletions.is_empty());
    }

    #[test]
    fn a_tombstone_with_a_broken_place_is_malformed() {
        let cases: [&dyn Fn(&mut proto::ChatTombstone); 7] = [
            &|t| t.unaware = vec![vec![3; 16]],
            &|t| t.deleted_in = 3,
            &|t| t.deleted_in_tag = 3,
            &|t| {
                t.deleted_by = vec![2; 15];
                t.deleted_in = 1;
                t.deleted_in_tag = 1;
            },
            &|t| {
                t.deleted_by = vec![2; 16];
                t.deleted_in = 1;
                t.deleted_in_tag = 1;
                t.unaware = vec![vec![3; 17]];
            },
            &|t| {
                t.deleted_by = vec![2; 16];
                t.deleted_in_tag = 1;
            },
            &|t| {
                t.deleted_by = vec![2; 16];
                t.deleted_in = 1;
            },
        ];
        for fill in cases {
            let error = open_with_tombstones(&[fill]).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Decode {
                        problem: DecodeProblem::Malformed(_),
                        ..
                    }
                ),
                "{error:?}"
            );
        }
        let placed = |t: &mut proto::ChatTombstone| {
            t.deleted_by = vec![2; 16];
            t.deleted_in = 1;
            t.deleted_in_tag = 1;
        };
        let twice = open_with_tombstones(&[&placed, &placed]).unwrap_err();
        assert!(twice.to_string().contains("two tombstones"), "{twice}");
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
