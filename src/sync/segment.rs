//! Segments: sealed batches of one device's operations, hash-chained per device.
//!
//! ```text
//! name    = "segments/" || device id hex (32) || "/" || seq 016x || "-" || tag 016x || "-" || parent tag 016x
//! object  = sealed (kind 4, log key, AAD name = name) E || 0x4a 0x40 || signature (64)
//! E       = protobuf Segment { device_id, seq, prev_hash, seen heads, chat key grants, sealed
//!           chat blocks, ... } without its signature field
//! signature = Ed25519 (device's key) over "chatvault/v2/segment" || vault id || u16 BE name
//!             length || name || SHA-256(E)     (absent in segments sealed before device keys)
//! block i = sealed (kind 2, chat key, AAD name = name || "#" || i) protobuf ChatOperations
//! hash    = SHA-256 of the whole segment object
//! ```
//!
//! The name carries the device and sequence number, and the AAD binds the name, so a segment
//! replayed under another name, swapped with another or copied from another vault fails to open.
//! Each segment names the hash of its device's previous segment, so a replaced or reordered
//! segment breaks the chain; each names the newest segments it had seen from other devices, so a
//! bucket that withholds or rolls back a device's newest segments is caught by the others.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::error::{DecodeProblem, Error, IntegrityProblem, Result};
use crate::format::{ObjectKind, decode_body, proto};
use crate::keys::{ChatKey, KeyEpochs, VaultKeys};
use crate::sealing::{self, Compression, ObjectContext};

use super::batch::EncodedBatch;
use super::clock::DeviceId;
use super::model::Operation;
pub use super::names::{
    SegmentId, SegmentName, parse_device_and_rest, parse_device_seq_tag, parse_hex16,
    parse_segment_name, random_tag, segment_name,
};
pub(crate) use super::names::{head_to_proto, heads_from_proto};
use super::signature::{BodySignature, SEGMENT_LABEL, append_signature, split_signature};

/// Where segments live inside the vault prefix.
pub const SEGMENTS_PREFIX: &str = "segments/";
/// Operations per segment are split so that a segment body stays below this size (8 MiB).
pub const MAX_SEGMENT_BODY: usize = 8 * 1024 * 1024;

/// Identifies a chat key: 16 random bytes.
pub type KeyId = [u8; 16];
/// SHA-256 of a segment object.
pub type SegmentHash = [u8; 32];

/// An applied segment: a tip of its device's tree (no applied child), or one a checkpoint
/// covers or a segment claims to have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The device.
    pub device: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// Its tag (the second number of its name).
    pub tag: u64,
    /// The segment object's SHA-256.
    pub hash: SegmentHash,
}

impl Head {
    /// The segment it names.
    pub fn id(&self) -> SegmentId {
        SegmentId {
            device: self.device,
            seq: self.seq,
            tag: self.tag,
        }
    }
}

/// A chat key as a segment or checkpoint index grants it.
#[derive(Clone)]
pub struct KeyGrant {
    /// Its id.
    pub key_id: KeyId,
    /// The chat it seals.
    pub chat_id: String,
    /// The key.
    pub key: ChatKey,
    /// Its key epoch: the smaller of what the grant says and the epoch of the object granting
    /// it (an object of epoch 0 cannot make a key of a later epoch).
    pub epoch: u8,
}

impl core::fmt::Debug for KeyGrant {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyGrant")
            .field("chat_id", &self.chat_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The highest key epoch a grant in an object of epoch `object_epoch` may give its key, for a
/// reader holding `keys`: the object's epoch, but never past the newest epoch the reader has
/// confirmed. An object that opened under a secret not confirmed yet (an epoch object anyone
/// could have planted) must not make a key look like one of a later epoch, which the reader
/// would then write with.
pub(crate) fn grant_epoch_cap(keys: &impl KeyEpochs, object_epoch: u8) -> u8 {
    object_epoch.min(keys.newest().0)
}

/// Decodes a granted key (from a segment or a checkpoint index sealed in `object_epoch`).
pub(crate) fn grant_from_proto(
    grant: &proto::ChatKeyGrant,
    object_epoch: u8,
    malformed: impl Fn(&str) -> Error,
) -> Result<KeyGrant> {
    let key: [u8; 32] = grant
        .key
        .as_slice()
        .try_into()
        .map_err(|_| malformed("chat key length"))?;
    let key_id: KeyId = grant
        .key_id
        .as_slice()
        .try_into()
        .map_err(|_| malformed("key id length"))?;
    if grant.chat_id.is_empty() || grant.chat_id.len() > super::model::MAX_ID_LEN {
        return Err(malformed("granted chat id"));
    }
    let claimed = u8::try_from(grant.epoch).unwrap_or(u8::MAX);
    Ok(KeyGrant {
        key_id,
        chat_id: grant.chat_id.clone(),
        key: ChatKey::from_bytes(key),
        epoch: claimed.min(object_epoch),
    })
}

/// Every chat key known to a device, by key id, with the chat each belongs to and its key
/// epoch.
#[derive(Clone, Default)]
pub struct ChatKeys {
    by_id: BTreeMap<KeyId, (String, ChatKey, u8)>,
    by_chat: BTreeMap<String, BTreeSet<KeyId>>,
}

impl core::fmt::Debug for ChatKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ChatKeys({} keys)", self.by_id.len())
    }
}

impl ChatKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True if no key is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a key of key epoch `epoch`. A known key id with a different key or chat is an error
    /// (a hostile writer); a known key seen in an earlier epoch takes that epoch (someone held it
    /// then). Returns whether anything was learned.
    pub(crate) fn insert(
        &mut self,
        key_id: KeyId,
        chat_id: &str,
        key: ChatKey,
        epoch: u8,
    ) -> Result<bool> {
        if let Some((known_chat, known_key, known_epoch)) = self.by_id.get_mut(&key_id) {
            if known_chat != chat_id || known_key.0.bytes() != key.0.bytes() {
                return Err(Error::decode(
                    ObjectKind::Segment,
                    DecodeProblem::Malformed("conflicting grants for one key id".into()),
                ));
            }
            if epoch < *known_epoch {
                *known_epoch = epoch;
                return Ok(true);
            }
            return Ok(false);
        }
        self.by_id.insert(key_id, (chat_id.to_owned(), key, epoch));
        self.by_chat
            .entry(chat_id.to_owned())
            .or_default()
            .insert(key_id);
        Ok(true)
    }

    /// Learns a granted key.
    pub(crate) fn learn(&mut self, grant: &KeyGrant) -> Result<bool> {
        self.insert(grant.key_id, &grant.chat_id, grant.key.clone(), grant.epoch)
    }

    /// The key this device writes a chat's operations with in key epoch `epoch`: the smallest
    /// known key id of the chat among its keys of that epoch, so devices converge on one key
    /// once they have seen each other's grants. A key of an earlier epoch is never written with:
    /// a device revoked since may know it.
    pub(crate) fn writing_key(&self, chat_id: &str, epoch: u8) -> Option<(KeyId, &ChatKey)> {
        self.by_chat.get(chat_id)?.iter().find_map(|key_id| {
            let (_, key, key_epoch) = self.by_id.get(key_id)?;
            (*key_epoch == epoch).then_some((*key_id, key))
        })
    }

    /// Draws a new key for `chat_id` in key epoch `epoch`: its id.
    pub(crate) fn mint(&mut self, chat_id: &str, epoch: u8) -> Result<KeyId> {
        let key_id = crate::random::array::<16>()?;
        self.insert(key_id, chat_id, ChatKey::generate()?, epoch)?;
        Ok(key_id)
    }

    /// The chat and key of a key id.
    pub(crate) fn key(&self, key_id: &KeyId) -> Option<(&str, &ChatKey)> {
        self.by_id
            .get(key_id)
            .map(|(chat, key, _)| (chat.as_str(), key))
    }

    /// The grant of a key id, as a segment or checkpoint index writes it.
    pub(crate) fn grant(&self, key_id: &KeyId) -> Option<proto::ChatKeyGrant> {
        self.by_id
            .get(key_id)
            .map(|(chat, key, epoch)| proto::ChatKeyGrant {
                chat_id: chat.clone(),
                key_id: key_id.to_vec(),
                key: key.0.bytes().to_vec(),
                epoch: u32::from(*epoch),
            })
    }

    /// All keys as (key id, chat id, key, key epoch), for sealed local persistence.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&KeyId, &str, &ChatKey, u8)> {
        self.by_id
            .iter()
            .map(|(id, (chat, key, epoch))| (id, chat.as_str(), key, *epoch))
    }
}

/// What a new segment holds.
#[derive(Debug)]
pub struct NewSegment<'a> {
    /// The writing device.
    pub device: DeviceId,
    /// Its sequence number (previous + 1).
    pub seq: u64,
    /// Its random tag ([`random_tag`]), drawn once and kept with the staged segment.
    pub tag: u64,
    /// The previous segment's tag and hash (`None` for seq 1).
    pub previous: Option<(u64, SegmentHash)>,
    /// Newest applied segments of other devices.
    pub seen: &'a [Head],
    /// Key ids of chat keys this segment introduces.
    pub grants: &'a [KeyId],
    /// The operations, all stamped by `device`, encoded once when they were recorded.
    pub operations: &'a EncodedBatch,
    /// Device description.
    pub device_name: &'a str,
    /// Platform ("ios", "android", ...).
    pub platform: &'a str,
    /// The writing device's keys: it signs the segment (`None`: unsigned, as segments were
    /// before device keys; test vectors only).
    pub signer: Option<&'a crate::devices::DeviceSecrets>,
}

/// The AAD name of chat block `index` of a segment (FORMAT.md section 9.2).
pub(crate) fn block_name(segment: &str, index: usize) -> String {
    format!("{segment}#{index}")
}

/// Seals a segment. Every operation's chat must have a writing key in `chat_keys`.
pub fn seal_segment(
    keys: &impl KeyEpochs,
    chat_keys: &ChatKeys,
    segment: &NewSegment<'_>,
) -> Result<(String, Vec<u8>, SegmentHash)> {
    seal_segment_with(keys, chat_keys, segment, &mut sealing::random_nonce)
}

/// [`seal_segment`] with nonces from `nonce` (one per chat block in order, then the outer
/// object): only `seal_segment` and the test-vector generator call it, and a nonce must never
/// be reused under one key.
pub(crate) fn seal_segment_with(
    keys: &impl KeyEpochs,
    chat_keys: &ChatKeys,
    segment: &NewSegment<'_>,
    nonce: &mut dyn FnMut() -> Result<[u8; sealing::NONCE_LEN]>,
) -> Result<(String, Vec<u8>, SegmentHash)> {
    // Sealed in the newest epoch this device holds (docs/DEVICES.md), each chat's block with a
    // key of that epoch.
    let (epoch, keys) = keys.newest();
    let name = segment_name(
        segment.device,
        segment.seq,
        segment.tag,
        segment.previous.map_or(0, |(tag, _)| tag),
    );
    let mut blocks = Vec::new();
    for (index, (chat_id, fragment)) in segment.operations.chats().enumerate() {
        let (key_id, key) = chat_keys.writing_key(chat_id, epoch).ok_or_else(|| {
            Error::invalid_input(format!("no key of epoch {epoch} for chat {chat_id:?}"))
        })?;
        let body = EncodedBatch::chat_body(chat_id, fragment);
        let block = block_name(&name, index);
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::ChatData,
            name: &block,
        };
        blocks.push(proto::SealedChatBlock {
            key_id: key_id.to_vec(),
            sealed: sealing::seal_with_nonce(
                &key.0,
                &context,
                &body,
                &nonce()?,
                Compression::Auto,
            )?,
        });
    }
    let grants = segment
        .grants
        .iter()
        .map(|key_id| {
            chat_keys
                .grant(key_id)
                .ok_or_else(|| Error::invalid_input("grant of an unknown key"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut body = zeroize::Zeroizing::new(
        proto::Segment {
            device_id: segment.device.0.to_vec(),
            seq: segment.seq,
            prev_hash: segment
                .previous
                .map(|(_, h)| h.to_vec())
                .unwrap_or_default(),
            seen: segment.seen.iter().map(head_to_proto).collect(),
            keys: grants,
            chats: blocks,
            device_name: segment.device_name.to_owned(),
            platform: segment.platform.to_owned(),
            signature: Vec::new(),
        }
        .encode_to_vec(),
    );
    if let Some(signer) = segment.signer {
        append_signature(&mut body, signer, SEGMENT_LABEL, keys.vault_id(), &name);
    }
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::Segment,
        name: &name,
    };
    let object = sealing::seal_with_nonce_in_epoch(
        &keys.log().0,
        &context,
        epoch,
        &body,
        &nonce()?,
        Compression::Auto,
    )?;
    let hash = Sha256::digest(&object).into();
    Ok((name, object, hash))
}

/// A segment whose outer layer is open; its chat blocks still need the keys.
#[derive(Debug)]
pub struct OpenedSegment {
    /// The object name.
    pub name: String,
    /// This segment's head (device, seq, tag, hash).
    pub head: Head,
    /// The tag of the segment it follows (zero at seq 1), from its authenticated name.
    pub parent_tag: u64,
    /// The previous segment's hash, `None` for seq 1.
    pub prev_hash: Option<SegmentHash>,
    /// Newest segments of other devices the writer had seen.
    pub seen: Vec<Head>,
    /// Chat keys granted.
    pub grants: Vec<KeyGrant>,
    /// Sealed chat blocks: (key id, sealed bytes).
    pub blocks: Vec<(KeyId, Vec<u8>)>,
    /// Device description.
    pub device_name: String,
    /// Platform.
    pub platform: String,
    /// The writer's signature, if it signed.
    pub signature: Option<BodySignature>,
}

impl OpenedSegment {
    /// Whether the segment carries a signature that verifies under `verifying_key` for `vault`
    /// (strict Ed25519: a device key that is not a canonical point of prime order never
    /// verifies).
    pub fn signed_by(&self, vault: &crate::keys::VaultId, verifying_key: &[u8; 32]) -> bool {
        self.signature
            .is_some_and(|s| s.verifies(SEGMENT_LABEL, vault, &self.name, verifying_key))
    }
}

/// Opens a segment's outer layer and checks that its content belongs at `name`.
pub fn open_segment(keys: &impl KeyEpochs, name: &str, object: &[u8]) -> Result<OpenedSegment> {
    let misplaced = || {
        Error::Integrity(IntegrityProblem::Misplaced {
            name: name.to_owned(),
        })
    };
    let parsed = parse_segment_name(name).ok_or_else(misplaced)?;
    let (device, seq) = (parsed.device, parsed.seq);
    // Opened with the key tree of the epoch its header names.
    let epoch = sealing::epoch_of(object, ObjectKind::Segment)?;
    let body = keys.open_with(ObjectKind::Segment, epoch, |tree| {
        let context = ObjectContext {
            vault_id: tree.vault_id(),
            kind: ObjectKind::Segment,
            name,
        };
        sealing::open_in_epoch(&tree.log().0, &context, epoch, object)
    })?;
    let segment: proto::Segment = decode_body(ObjectKind::Segment, &body)?;
    let malformed = |why: &str| {
        Error::decode(
            ObjectKind::Segment,
            DecodeProblem::Malformed(why.to_owned()),
        )
    };
    let signature = split_signature(&body, &segment.signature).map_err(malformed)?;
    if segment.device_id != device.0 || segment.seq != seq || seq == 0 {
        return Err(misplaced());
    }
    let prev_hash = match (seq, segment.prev_hash.len()) {
        (1, 0) => None,
        (s, 32) if s > 1 => Some(
            segment
                .prev_hash
                .as_slice()
                .try_into()
                .map_err(|_| malformed("previous hash"))?,
        ),
        _ => return Err(malformed("previous hash does not fit the sequence number")),
    };
    let seen = heads_from_proto(&segment.seen, malformed)?;
    let grants = segment
        .keys
        .iter()
        .map(|grant| grant_from_proto(grant, grant_epoch_cap(keys, epoch), malformed))
        .collect::<Result<Vec<_>>>()?;
    let blocks = segment
        .chats
        .into_iter()
        .map(|block| {
            let key_id: KeyId = block
                .key_id
                .as_slice()
                .try_into()
                .map_err(|_| malformed("block key id length"))?;
            Ok((key_id, block.sealed))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(OpenedSegment {
        name: name.to_owned(),
        head: Head {
            device,
            seq,
            tag: parsed.tag,
            hash: Sha256::digest(object).into(),
        },
        parent_tag: parsed.parent,
        prev_hash,
        seen,
        grants,
        blocks,
        device_name: segment.device_name,
        platform: segment.platform,
        signature,
    })
}

/// Opens a segment's chat blocks with the known keys and returns its operations in order.
///
/// Every operation must be stamped by the segment's device and belong to the block's chat, and
/// the block's key must be a key of that chat.
pub fn open_blocks(
    keys: &VaultKeys,
    chat_keys: &ChatKeys,
    segment: &OpenedSegment,
) -> Result<Vec<Operation>> {
    let device = segment.head.device;
    let malformed = |why: &str| {
        Error::decode(
            ObjectKind::ChatData,
            DecodeProblem::Malformed(why.to_owned()),
        )
    };
    let mut operations = Vec::new();
    for (index, (key_id, sealed)) in segment.blocks.iter().enumerate() {
        let (chat_id, key) = chat_keys.key(key_id).ok_or_else(|| {
            Error::Integrity(IntegrityProblem::UnknownKey {
                device: device.to_hex(),
                seq: segment.head.seq,
            })
        })?;
        let block = block_name(&segment.name, index);
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::ChatData,
            name: &block,
        };
        let body = sealing::open(&key.0, &context, sealed)?;
        let chat_operations: proto::ChatOperations = decode_body(ObjectKind::ChatData, &body)?;
        if chat_operations.chat_id != chat_id {
            return Err(malformed("block sealed under another chat's key"));
        }
        for operation in chat_operations.operations {
            let operation = Operation::from_proto(operation).map_err(|e| malformed(&e))?;
            if operation.change.chat_id() != chat_id {
                return Err(malformed("operation of another chat"));
            }
            if operation.stamp.device != device {
                return Err(malformed("operation stamped by another device"));
            }
            operations.push(operation);
        }
    }
    Ok(operations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RecoveryKey;
    use crate::sync::clock::{MAX_WALL_MS, Stamp};
    use crate::sync::model::{Change, Message};

    const DEV: DeviceId = DeviceId([0xd1; 16]);

    fn keys() -> VaultKeys {
        VaultKeys::derive(&RecoveryKey::from_bytes([1; 32]))
    }

    fn message(chat: &str, id: &str, counter: u32) -> Operation {
        Operation {
            stamp: Stamp {
                wall_ms: 1000,
                counter,
                device: DEV,
            },
            change: Change::UpsertMessage(Message {
                chat_id: chat.into(),
                message_id: id.into(),
                text: "hello".into(),
                ..Message::default()
            }),
        }
    }

    fn chat_keys() -> ChatKeys {
        let mut ck = ChatKeys::new();
        ck.insert([1; 16], "a", ChatKey::from_bytes([0xa; 32]), 0)
            .unwrap();
        ck.insert([2; 16], "b", ChatKey::from_bytes([0xb; 32]), 0)
            .unwrap();
        ck
    }

    /// The tag the tests give segment `seq` of a chain.
    fn tag(seq: u64) -> u64 {
        0x100 + seq
    }

    fn sealed(seq: u64, prev: Option<SegmentHash>) -> (String, Vec<u8>, SegmentHash) {
        let ops = [
            message("a", "1", 0),
            message("b", "2", 1),
            message("a", "3", 2),
        ];
        seal_segment(
            &keys(),
            &chat_keys(),
            &NewSegment {
                device: DEV,
                seq,
                tag: tag(seq),
                previous: prev.map(|hash| (tag(seq - 1), hash)),
                seen: &[],
                grants: &[[1; 16], [2; 16]],
                operations: &EncodedBatch::from_operations(&ops),
                device_name: "test",
                platform: "linux",
                signer: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn an_operation_stamped_past_the_bound_makes_its_segment_malformed() {
        // Written by a device that ignored the bound: every reader rejects the segment alike,
        // whatever its own clock says (docs/SYNC.md, "Clocks").
        let seal_at = |wall_ms| {
            let mut op = message("a", "1", 0);
            op.stamp.wall_ms = wall_ms;
            let (name, object, _) = seal_segment(
                &keys(),
                &chat_keys(),
                &NewSegment {
                    device: DEV,
                    seq: 1,
                    tag: 1,
                    previous: None,
                    seen: &[],
                    grants: &[[1; 16]],
                    operations: &EncodedBatch::from_operations(&[op]),
                    device_name: "test",
                    platform: "linux",
                    signer: None,
                },
            )
            .unwrap();
            let opened = open_segment(&keys(), &name, &object).unwrap();
            open_blocks(&keys(), &chat_keys(), &opened)
        };
        assert_eq!(seal_at(MAX_WALL_MS).unwrap()[0].stamp.wall_ms, MAX_WALL_MS);
        for wall_ms in [MAX_WALL_MS + 1, u64::MAX] {
            assert!(matches!(
                seal_at(wall_ms),
                Err(crate::Error::Decode {
                    problem: crate::DecodeProblem::Malformed(_),
                    ..
                })
            ));
        }
    }

    #[test]
    fn segments_round_trip_with_grants() {
        let (name, object, hash) = sealed(1, None);
        assert_eq!(
            parse_segment_name(&name),
            Some(SegmentName {
                device: DEV,
                seq: 1,
                tag: tag(1),
                parent: 0
            })
        );
        let opened = open_segment(&keys(), &name, &object).unwrap();
        assert_eq!(opened.head.hash, hash);
        let mut learned = ChatKeys::new();
        for grant in &opened.grants {
            learned.learn(grant).unwrap();
        }
        let ops = open_blocks(&keys(), &learned, &opened).unwrap();
        let ids: Vec<&str> = ops
            .iter()
            .map(|o| match &o.change {
                Change::UpsertMessage(m) => m.message_id.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(ids, ["1", "3", "2"]); // grouped by chat, in order within a chat
    }

    #[test]
    fn a_segment_under_another_name_is_rejected() {
        let (_, object, _) = sealed(2, Some([0; 32]));
        // Replayed as seq 3 of the same device, as another device's segment, under another tag
        // or after another parent: the AAD binds the whole name.
        for name in [
            segment_name(DEV, 3, tag(3), tag(2)),
            segment_name(DeviceId([0xd2; 16]), 2, tag(2), tag(1)),
            segment_name(DEV, 2, 0x999, tag(1)),
            segment_name(DEV, 2, tag(2), 0x998),
        ] {
            assert!(open_segment(&keys(), &name, &object).is_err());
        }
        assert!(matches!(
            open_segment(&keys(), "segments/garbage", &object),
            Err(Error::Integrity(IntegrityProblem::Misplaced { .. }))
        ));
    }

    /// The AAD binds the name the writer sealed under; the body's own device and seq must name
    /// the same place. A holder of the log key who seals segment 2's body under the name of
    /// segment 3, or under another device's name, gets past the tag but not past this check.
    #[test]
    fn a_segment_whose_body_names_another_place_is_misplaced() {
        let (name, object, _) = sealed(2, Some([0; 32]));
        let keys = keys();
        let opened = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::Segment,
            name: &name,
        };
        let body = sealing::open(&keys.log().0, &opened, &object).unwrap();
        for elsewhere in [
            segment_name(DEV, 3, tag(3), tag(2)),
            segment_name(DeviceId([0xd2; 16]), 2, tag(2), tag(1)),
        ] {
            let there = ObjectContext {
                vault_id: keys.vault_id(),
                kind: ObjectKind::Segment,
                name: &elsewhere,
            };
            let resealed = sealing::seal(&keys.log().0, &there, &body).unwrap();
            let error = open_segment(&keys, &elsewhere, &resealed).unwrap_err();
            assert!(
                matches!(&error, Error::Integrity(IntegrityProblem::Misplaced { name })
                    if *name == elsewhere),
                "{error:?}"
            );
        }
    }

    #[test]
    fn blocks_need_their_keys() {
        let (name, object, _) = sealed(1, None);
        let opened = open_segment(&keys(), &name, &object).unwrap();
        assert!(matches!(
            open_blocks(&keys(), &ChatKeys::new(), &opened),
            Err(Error::Integrity(IntegrityProblem::UnknownKey { .. }))
        ));
    }

    #[test]
    fn a_chat_is_written_only_with_a_key_of_the_writing_epoch() {
        let mut ck = chat_keys();
        assert_eq!(ck.writing_key("a", 0).unwrap().0, [1; 16]);
        // After a revocation (epoch 1) no epoch-0 key is written with: a new one is drawn.
        assert!(ck.writing_key("a", 1).is_none());
        let minted = ck.mint("a", 1).unwrap();
        assert_eq!(ck.writing_key("a", 1).unwrap().0, minted);
        // Epoch 0's writer still finds its own (the smallest id of that epoch).
        assert_eq!(ck.writing_key("a", 0).unwrap().0, [1; 16]);
        // The same key seen again in an earlier epoch takes that epoch: someone held it then.
        let (_, key) = ck
            .key(&minted)
            .map(|(c, k)| (c.to_owned(), k.clone()))
            .unwrap();
        assert!(ck.insert(minted, "a", key, 0).unwrap());
        assert!(ck.writing_key("a", 1).is_none());
        // A grant cannot claim a later epoch than the object that carries it.
        let grant = proto::ChatKeyGrant {
            chat_id: "b".into(),
            key_id: vec![7; 16],
            key: vec![8; 32],
            epoch: 5,
        };
        let malformed =
            |why: &str| Error::decode(ObjectKind::Segment, DecodeProblem::Malformed(why.into()));
        assert_eq!(grant_from_proto(&grant, 2, malformed).unwrap().epoch, 2);
        assert_eq!(grant_from_proto(&grant, 9, malformed).unwrap().epoch, 5);
        let huge = proto::ChatKeyGrant {
            epoch: 1 << 20,
            ..grant
        };
        assert_eq!(grant_from_proto(&huge, 3, malformed).unwrap().epoch, 3);
    }

    #[test]
    fn conflicting_grants_are_rejected() {
        let mut ck = chat_keys();
        assert!(
            !ck.insert([1; 16], "a", ChatKey::from_bytes([0xa; 32]), 0)
                .unwrap()
        );
        assert!(
            ck.insert([1; 16], "a", ChatKey::from_bytes([0xf; 32]), 0)
                .is_err()
        );
        assert!(
            ck.insert([1; 16], "b", ChatKey::from_bytes([0xa; 32]), 0)
                .is_err()
        );
    }

    #[test]
    fn names_parse_strictly() {
        let last = SegmentName {
            device: DEV,
            seq: u64::MAX,
            tag: u64::MAX,
            parent: 1,
        };
        assert_eq!(parse_segment_name(&last.to_name()), Some(last));
        let dev = DEV.to_hex();
        let one = "0000000000000001";
        for bad in [
            "segments/".to_owned(),
            format!("segments/xyz/{one}-{one}-0000000000000000"),
            format!("segments/{dev}/{one}"),
            format!("segments/{dev}/1-1-0"),
            format!("segments/{dev}/000000000000000A-{one}-{one}"),
            format!("segments/{dev}/0000000000000002-{one}-{one}-{one}"),
            format!("segments/{dev}/0000000000000002-{one}-000000000000000a "),
            format!("segments/{dev}/0000000000000002_{one}_{one}"),
            format!("other/{dev}/0000000000000002-{one}-{one}"),
            // A zero tag; no parent after seq 1; a parent at seq 1; seq 0.
            format!("segments/{dev}/0000000000000002-0000000000000000-{one}"),
            format!("segments/{dev}/0000000000000002-{one}-0000000000000000"),
            format!("segments/{dev}/{one}-{one}-{one}"),
            format!("segments/{dev}/0000000000000000-{one}-0000000000000000"),
        ] {
            assert_eq!(parse_segment_name(&bad), None, "{bad}");
        }
    }
}
