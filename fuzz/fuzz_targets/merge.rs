//! The merge (`sync::apply`) as a property: operations with distinct stamps, applied in two
//! different orders (the second with repeats) to two `MemoryState`s, give the same state; and the
//! state's winners plus each chat's newest `DeleteChat`, applied to an empty state, give it back
//! (what a checkpoint stores is enough to restore it).
#![no_main]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chatvault::sync::{Change, Chat, DeviceId, MemoryState, Message, Operation, Stamp, apply};
use common::Reader;
use libfuzzer_sys::fuzz_target;

const CHATS: [&str; 2] = ["a", "b"];
const MESSAGES: [&str; 3] = ["1", "2", "3"];

fn operation(reader: &mut Reader<'_>) -> Operation {
    let stamp = Stamp {
        wall_ms: reader.below(4) as u64,
        counter: reader.below(3) as u32,
        device: DeviceId([reader.below(3) as u8; 16]),
    };
    let chat_id = CHATS[reader.below(CHATS.len())].to_owned();
    let message_id = MESSAGES[reader.below(MESSAGES.len())].to_owned();
    let text = format!("{}", reader.u8());
    let change = match reader.below(4) {
        0 => Change::UpsertChat(Chat {
            chat_id,
            title: text,
            ..Chat::default()
        }),
        1 => Change::UpsertMessage(Message {
            chat_id,
            message_id,
            text,
            sent_at_ms: i64::from(reader.u8()),
            ..Message::default()
        }),
        2 => Change::DeleteMessage {
            chat_id,
            message_id,
        },
        _ => Change::DeleteChat { chat_id },
    };
    Operation { stamp, change }
}

fn state_of<'a>(operations: impl IntoIterator<Item = &'a Operation>) -> MemoryState {
    let mut state = MemoryState::new();
    for operation in operations {
        apply(&mut state, operation).expect("the memory state never fails");
    }
    state
}

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data);
    let count = reader.below(40);
    // Stamps are unique across devices (a device never reuses one): keep the first of each.
    let mut stamps = BTreeSet::new();
    let operations: Vec<Operation> = (0..count)
        .map(|_| operation(&mut reader))
        .filter(|o| stamps.insert(o.stamp))
        .collect();
    // The second order: a permutation the input chooses, with some operations repeated.
    let mut order: Vec<usize> = (0..operations.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, reader.below(i + 1));
    }
    let mut second: Vec<&Operation> = Vec::new();
    for index in order {
        second.push(&operations[index]);
        if reader.below(4) == 0 {
            second.push(&operations[index]);
        }
    }
    let first = state_of(&operations);
    let other = state_of(second);
    assert_eq!(first, other, "two orders diverged: {operations:#?}");
    assert_eq!(first.messages(), other.messages());
    assert_eq!(first.chats(), other.chats());

    let mut deleted: BTreeMap<&str, Stamp> = BTreeMap::new();
    for operation in &operations {
        if let Change::DeleteChat { chat_id } = &operation.change {
            let newest = deleted.entry(chat_id).or_insert(operation.stamp);
            *newest = (*newest).max(operation.stamp);
        }
    }
    let mut stored: Vec<Operation> = deleted
        .iter()
        .map(|(chat_id, stamp)| Operation {
            stamp: *stamp,
            change: Change::DeleteChat {
                chat_id: (*chat_id).to_owned(),
            },
        })
        .collect();
    stored.extend(first.clone().winners().into_values().flatten());
    assert_eq!(
        state_of(&stored),
        first,
        "winners lost state: {operations:#?}"
    );
    stored.reverse();
    assert_eq!(
        state_of(&stored),
        first,
        "winners lost state: {operations:#?}"
    );
});
