//! The next-checkpoint writer against hand-made bases and operations.

use super::*;
use crate::keys::ChatKey;
use crate::keys::RecoveryKey;
use crate::sync::checkpoint::{PackedChat, open_block, open_checkpoint_index};
use crate::sync::{Change, Message, Stamp, StateStore};

/// A checkpoint of one chat with 3,000 messages recorded newest first, opened again.
fn long_chat_checkpoint() -> (VaultKeys, ChatKeys, CheckpointIndex, Vec<Vec<u8>>) {
    let keys = VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]));
    let mut chat_keys = ChatKeys::new();
    chat_keys
        .insert([1; 16], "c", ChatKey::from_bytes([2; 32]), 0)
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
            tag: 1,
            covered: &[],
            chat_keys: &chat_keys,
            deleted_chats: &[],
            created_at_ms: 0,
            signer: None,
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

/// A bucket of packs, and the chain of checkpoints written into it one round at a time.
struct Chain {
    keys: VaultKeys,
    chat_keys: ChatKeys,
    packs: BTreeMap<String, Vec<u8>>,
    index: Option<CheckpointIndex>,
    seq: u64,
}

impl Chain {
    fn new() -> Self {
        let mut chat_keys = ChatKeys::new();
        for (n, chat) in ["a", "b", "c"].iter().enumerate() {
            chat_keys
                .insert(
                    [n as u8 + 1; 16],
                    chat,
                    ChatKey::from_bytes([n as u8 + 9; 32]),
                    0,
                )
                .unwrap();
        }
        Chain {
            keys: VaultKeys::derive(&RecoveryKey::from_bytes([7; 32])),
            chat_keys,
            packs: BTreeMap::new(),
            index: None,
            seq: 0,
        }
    }

    fn block(&self, index: &CheckpointIndex, block: usize) -> Vec<u8> {
        let entry = &index.chats[block];
        let pack = &self.packs[&index.packs[entry.pack].0];
        pack[entry.offset as usize..(entry.offset + entry.length) as usize].to_vec()
    }

    fn open(&self, index: &CheckpointIndex, block: usize) -> Vec<Operation> {
        open_block(
            &self.keys,
            &self.chat_keys,
            index,
            block,
            &self.block(index, block),
        )
        .unwrap()
    }

    /// Writes the next checkpoint with `operations` and returns what it did.
    fn round(&mut self, operations: &[Operation], small_pack: u64) -> (u64, u64, u64, usize) {
        let base = self.index.take();
        let listing = Listing::default();
        let mut next = NextCheckpoint::new(base.as_ref(), &listing).with_sizes(200, small_pack);
        for operation in operations {
            next.add(operation.clone());
        }
        let reads = next.blocks_to_read();
        if let Some(base) = &base {
            for block in &reads {
                next.add_read(*block, self.open(base, *block));
            }
            for block in next.blocks_to_copy() {
                next.add_copy(block, self.block(base, block));
            }
        }
        self.seq += 1;
        let sealed = next
            .seal(
                &self.keys,
                &CheckpointInput {
                    device: DeviceId([3; 16]),
                    seq: self.seq,
                    tag: 0x7a,
                    covered: &[],
                    chat_keys: &self.chat_keys,
                    deleted_chats: &[],
                    created_at_ms: 0,
                    signer: None,
                },
            )
            .unwrap();
        let index = open_checkpoint_index(&self.keys, &sealed.index_name, &sealed.index).unwrap();
        self.packs.extend(sealed.packs);
        self.index = Some(index);
        (
            sealed.blocks_kept,
            sealed.blocks_copied,
            sealed.blocks_written,
            reads.len(),
        )
    }

    /// The state a reader of the newest checkpoint gets, and every operation it stores.
    fn read_back(&self) -> (MemoryState, Vec<Operation>) {
        let index = self.index.as_ref().unwrap();
        let mut state = MemoryState::new();
        let mut stored = Vec::new();
        for (chat, stamp) in &index.deleted_chats {
            let tombstone = delete_chat(chat, *stamp);
            apply(&mut state, &tombstone).unwrap();
        }
        for block in 0..index.chats.len() {
            for operation in self.open(index, block) {
                apply(&mut state, &operation).unwrap();
                stored.push(operation);
            }
        }
        (state, stored)
    }
}

fn operation(seed: (u8, u8, u8, u8, u16, u16), counter: u32) -> Operation {
    let (chat, what, message, at, wall, length) = seed;
    let chat_id = ["a", "b", "c"][chat as usize % 3].to_owned();
    let message_id = format!("m{}", message % 12);
    let change = match what % 10 {
        0 => Change::DeleteMessage {
            chat_id,
            message_id,
        },
        1 if wall % 7 == 0 => Change::DeleteChat { chat_id },
        2 => Change::UpsertChat(crate::sync::Chat {
            chat_id,
            title: format!("t{wall}"),
            ..crate::sync::Chat::default()
        }),
        _ => Change::UpsertMessage(Message {
            chat_id,
            message_id,
            // Few distinct times: edits move messages, and many share a millisecond.
            sent_at_ms: i64::from(at % 6),
            text: "x".repeat(length as usize % 90),
            ..Message::default()
        }),
    };
    Operation {
        stamp: Stamp {
            wall_ms: u64::from(wall % 500),
            counter,
            device: DeviceId([1; 16]),
        },
        change,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// However operations are cut into rounds, a chain of checkpoints each built from the
    /// one before holds exactly the merged state; no stored operation is one the merge has
    /// superseded by a deletion (deleted content leaves the newest checkpoint); and each
    /// chat's ranged blocks follow history order without overlapping.
    #[test]
    fn a_chain_of_checkpoints_holds_the_merge_of_everything(
        seeds in proptest::collection::vec(proptest::prelude::any::<(u8, u8, u8, u8, u16, u16)>(), 1..120),
        cuts in proptest::collection::vec(0usize..120, 0..6),
        small_pack in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::strategy::Just(1u64 << 20)],
    ) {
        let operations: Vec<Operation> = seeds
            .into_iter()
            .enumerate()
            .map(|(i, seed)| operation(seed, i as u32))
            .collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % operations.len()).collect();
        cuts.push(0);
        cuts.push(operations.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut chain = Chain::new();
        for round in cuts.windows(2) {
            chain.round(&operations[round[0]..round[1]], small_pack);
        }
        let mut expected = MemoryState::new();
        for operation in &operations {
            apply(&mut expected, operation).unwrap();
        }
        let (state, stored) = chain.read_back();
        proptest::prop_assert_eq!(state.messages(), expected.messages());
        proptest::prop_assert_eq!(state.chats(), expected.chats());
        // Nothing a deletion removed is still stored: no operation older than its message's
        // winning tombstone, or at or before its chat's deletion.
        let tombstones: BTreeMap<(String, String), Stamp> = expected
            .clone()
            .winners()
            .into_values()
            .flatten()
            .filter_map(|op| match op.change {
                Change::DeleteMessage { chat_id, message_id } => Some(((chat_id, message_id), op.stamp)),
                _ => None,
            })
            .collect();
        for op in &stored {
            let chat_deleted = expected.chat(op.change.chat_id()).unwrap().and_then(|c| c.deleted);
            proptest::prop_assert!(chat_deleted.is_none_or(|d| op.stamp > d), "{op:?} outlived its chat");
            if let Some(message_id) = op.change.message_id() {
                let key = (op.change.chat_id().to_owned(), message_id.to_owned());
                proptest::prop_assert!(
                    tombstones.get(&key).is_none_or(|t| *t <= op.stamp),
                    "{op:?} outlived a deletion"
                );
            }
        }
        let index = chain.index.as_ref().unwrap();
        for chat in ["a", "b", "c"] {
            let ranges: Vec<_> = index.chats.iter().filter(|e| e.chat_id == chat).filter_map(|e| e.range.clone()).collect();
            for pair in ranges.windows(2) {
                proptest::prop_assert!(pair[0].1 < pair[1].0, "{ranges:?}");
            }
        }
    }
}

/// New messages at the end of a few chats rewrite those chats' newest blocks and nothing
/// else: every other block stays where it lies, unread.
#[test]
fn new_messages_rewrite_only_the_newest_block_of_their_chats() {
    let mut chain = Chain::new();
    let message = |chat: &str, i: u32| Operation {
        stamp: Stamp {
            wall_ms: u64::from(i),
            counter: 0,
            device: DeviceId([1; 16]),
        },
        change: Change::UpsertMessage(Message {
            chat_id: chat.into(),
            message_id: format!("m{i:05}"),
            sent_at_ms: i64::from(i),
            text: "words ".repeat(10),
            ..Message::default()
        }),
    };
    let history: Vec<Operation> = (0..600)
        .flat_map(|i| ["a", "b", "c"].map(|chat| message(chat, i)))
        .collect();
    let (_, _, first_written, _) = chain.round(&history, 0);
    assert!(first_written > 100, "{first_written} blocks");
    let news: Vec<Operation> = (600..603).map(|i| message("b", i)).collect();
    let (kept, copied, written, read) = chain.round(&news, 0);
    assert_eq!(read, 1, "only chat b's newest block is read");
    assert!(written <= 2, "{written} blocks written");
    assert_eq!(copied, 0);
    assert_eq!(kept, first_written - 1);
    // An edit of an old message rewrites the one block that holds it.
    let mut edit = message("a", 7);
    edit.stamp.wall_ms = 10_000;
    let (kept, _, written, read) = chain.round(&[edit], 0);
    assert_eq!((read, written), (1, 1));
    assert!(kept > 100);
    let (state, _) = chain.read_back();
    assert_eq!(state.messages().len(), 1803);
}

/// Block lengths are bounded only by their pack's recorded size: in a base nobody checked
/// against a listing, two blocks of 2^63 bytes in a pack of u64::MAX overflowed the live
/// byte count.
#[test]
fn live_bytes_of_a_pack_saturate() {
    let block = |block_id| PackedChat {
        chat_id: "c".into(),
        key_id: [1; 16],
        pack: 0,
        offset: 0,
        length: 1 << 63,
        range: None,
        block_id,
        hash: None,
    };
    let device = DeviceId([3; 16]);
    let base = CheckpointIndex {
        name: checkpoint_name(device, 1, 1),
        device,
        seq: 1,
        covered: Vec::new(),
        grants: Vec::new(),
        packs: vec![(format!("{}0000", pack_prefix(device, 1, 1)), u64::MAX)],
        chats: vec![block([1; 16]), block([2; 16])],
        deleted_chats: Vec::new(),
        deletions: BTreeMap::new(),
        created_at_ms: 1,
        signature: None,
    };
    let listing = Listing::default();
    let next = NextCheckpoint::new(Some(&base), &listing);
    assert!(next.blocks_to_copy().is_empty());
    assert!(next.blocks_to_read().is_empty());
}
