//! The merge: how every device's operations combine into one state, whatever order they arrive in.
//!
//! Rules (each is order-independent and idempotent, so the merge converges):
//! - a chat's metadata is the `UpsertChat` with the greatest stamp;
//! - a message is the `UpsertMessage` or `DeleteMessage` with the greatest stamp; a delete leaves a
//!   tombstone so an older upsert arriving later cannot resurrect it;
//! - `DeleteChat` at stamp `d` removes the chat's metadata and every message operation stamped at
//!   or before `d`, and makes later-arriving ones stamped at or before `d` no-ops; operations
//!   stamped after `d` bring the chat back;
//! - applying an operation twice changes nothing the second time.
//!
//! The rules are written once, against the [`StateStore`] trait, and used both by the in-memory
//! [`MemoryState`] (tests, property tests) and by the SQLite local state.

use std::collections::BTreeMap;

use crate::error::Result;

use super::clock::Stamp;
use super::model::{Change, Chat, Message, Operation};

/// What is known about one chat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatRecord {
    /// The winning metadata and its stamp.
    pub meta: Option<(Stamp, Chat)>,
    /// The greatest `DeleteChat` stamp seen.
    pub deleted: Option<Stamp>,
}

/// What is known about one message: the winning operation's stamp, and the message unless that
/// operation was a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Stamp of the winning operation.
    pub stamp: Stamp,
    /// `None` for a tombstone.
    pub message: Option<Message>,
}

/// Storage the merge rules read and write.
pub trait StateStore {
    /// The chat's record, if any operation touched it.
    fn chat(&self, chat_id: &str) -> Result<Option<ChatRecord>>;
    /// Replaces the chat's record.
    fn put_chat(&mut self, chat_id: &str, record: ChatRecord) -> Result<()>;
    /// The stamp of the message's winning operation, if any.
    fn message_stamp(&mut self, chat_id: &str, message_id: &str) -> Result<Option<Stamp>>;
    /// Replaces the message's record.
    fn put_message(&mut self, chat_id: &str, message_id: &str, record: MessageRecord)
    -> Result<()>;
    /// Removes every message record of the chat stamped at or before `stamp`.
    fn remove_messages_up_to(&mut self, chat_id: &str, stamp: Stamp) -> Result<()>;
}

/// Whether applying an operation changed the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The operation won and the state changed.
    Changed,
    /// The operation lost to a newer one (or was already applied).
    Unchanged,
}

/// Applies one operation under the merge rules.
pub fn apply(state: &mut impl StateStore, operation: &Operation) -> Result<Applied> {
    let stamp = operation.stamp;
    let chat_id = operation.change.chat_id();
    let mut chat = state.chat(chat_id)?.unwrap_or_default();
    let deleted_after = chat.deleted.is_some_and(|d| stamp <= d);
    match &operation.change {
        Change::UpsertChat(meta) => {
            if deleted_after || chat.meta.as_ref().is_some_and(|(s, _)| *s >= stamp) {
                return Ok(Applied::Unchanged);
            }
            chat.meta = Some((stamp, meta.clone()));
            state.put_chat(chat_id, chat)?;
        }
        Change::DeleteChat { .. } => {
            if deleted_after {
                return Ok(Applied::Unchanged);
            }
            chat.deleted = Some(stamp);
            if chat.meta.as_ref().is_some_and(|(s, _)| *s <= stamp) {
                chat.meta = None;
            }
            state.put_chat(chat_id, chat)?;
            state.remove_messages_up_to(chat_id, stamp)?;
        }
        Change::UpsertMessage(_) | Change::DeleteMessage { .. } => {
            let (message_id, message) = match &operation.change {
                Change::UpsertMessage(m) => (m.message_id.as_str(), Some(m.clone())),
                Change::DeleteMessage { message_id, .. } => (message_id.as_str(), None),
                _ => return Ok(Applied::Unchanged),
            };
            if deleted_after {
                return Ok(Applied::Unchanged);
            }
            if state
                .message_stamp(chat_id, message_id)?
                .is_some_and(|existing| existing >= stamp)
            {
                return Ok(Applied::Unchanged);
            }
            state.put_message(chat_id, message_id, MessageRecord { stamp, message })?;
        }
    }
    Ok(Applied::Changed)
}

/// The merged state held in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryState {
    chats: BTreeMap<String, ChatRecord>,
    messages: BTreeMap<(String, String), MessageRecord>,
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Visible chats (with metadata or at least one live message), by chat id.
    pub fn chats(&self) -> Vec<Chat> {
        let mut ids: std::collections::BTreeSet<&str> = self
            .chats
            .iter()
            .filter(|(_, r)| r.meta.is_some())
            .map(|(id, _)| id.as_str())
            .collect();
        ids.extend(
            self.messages
                .iter()
                .filter(|(_, r)| r.message.is_some())
                .map(|((chat, _), _)| chat.as_str()),
        );
        ids.into_iter()
            .map(|id| {
                self.chats
                    .get(id)
                    .and_then(|r| r.meta.as_ref())
                    .map(|(_, chat)| chat.clone())
                    .unwrap_or_else(|| Chat {
                        chat_id: id.to_owned(),
                        ..Chat::default()
                    })
            })
            .collect()
    }

    /// The winning operations of every chat, by chat id: its metadata and, per message, the
    /// upsert or the delete (tombstone) that won. Applying them to an empty state, with each
    /// chat's `DeleteChat` stamp, gives this state back: they are what a checkpoint stores.
    pub fn winners(self) -> BTreeMap<String, Vec<Operation>> {
        let mut winners: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
        for (chat_id, record) in self.chats {
            if let Some((stamp, chat)) = record.meta {
                winners.entry(chat_id).or_default().push(Operation {
                    stamp,
                    change: Change::UpsertChat(chat),
                });
            }
        }
        for ((chat_id, message_id), record) in self.messages {
            let change = match record.message {
                Some(message) => Change::UpsertMessage(message),
                None => Change::DeleteMessage {
                    chat_id: chat_id.clone(),
                    message_id,
                },
            };
            winners.entry(chat_id).or_default().push(Operation {
                stamp: record.stamp,
                change,
            });
        }
        winners
    }

    /// Live messages, by (chat id, message id).
    pub fn messages(&self) -> Vec<Message> {
        self.messages
            .values()
            .filter_map(|r| r.message.clone())
            .collect()
    }
}

impl StateStore for MemoryState {
    fn chat(&self, chat_id: &str) -> Result<Option<ChatRecord>> {
        Ok(self.chats.get(chat_id).cloned())
    }

    fn put_chat(&mut self, chat_id: &str, record: ChatRecord) -> Result<()> {
        self.chats.insert(chat_id.to_owned(), record);
        Ok(())
    }

    fn message_stamp(&mut self, chat_id: &str, message_id: &str) -> Result<Option<Stamp>> {
        Ok(self
            .messages
            .get(&(chat_id.to_owned(), message_id.to_owned()))
            .map(|record| record.stamp))
    }

    fn put_message(
        &mut self,
        chat_id: &str,
        message_id: &str,
        record: MessageRecord,
    ) -> Result<()> {
        self.messages
            .insert((chat_id.to_owned(), message_id.to_owned()), record);
        Ok(())
    }

    fn remove_messages_up_to(&mut self, chat_id: &str, stamp: Stamp) -> Result<()> {
        self.messages
            .retain(|(chat, _), record| chat != chat_id || record.stamp > stamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::clock::DeviceId;
    use proptest::prelude::*;

    fn stamp(wall_ms: u64, device: u8) -> Stamp {
        Stamp {
            wall_ms,
            counter: 0,
            device: DeviceId([device; 16]),
        }
    }

    fn upsert(wall: u64, device: u8, chat: &str, id: &str, text: &str) -> Operation {
        Operation {
            stamp: stamp(wall, device),
            change: Change::UpsertMessage(Message {
                chat_id: chat.into(),
                message_id: id.into(),
                text: text.into(),
                ..Message::default()
            }),
        }
    }

    fn apply_all(ops: &[Operation]) -> MemoryState {
        let mut state = MemoryState::new();
        for op in ops {
            apply(&mut state, op).unwrap();
        }
        state
    }

    #[test]
    fn later_edit_wins_and_tombstone_beats_older_upsert() {
        let ops = [
            upsert(1, 1, "c", "m", "first"),
            upsert(3, 2, "c", "m", "edited"),
            upsert(2, 1, "c", "m", "stale"),
        ];
        assert_eq!(apply_all(&ops).messages()[0].text, "edited");
        let delete = Operation {
            stamp: stamp(4, 1),
            change: Change::DeleteMessage {
                chat_id: "c".into(),
                message_id: "m".into(),
            },
        };
        let state = apply_all(&[delete.clone(), ops[0].clone(), ops[1].clone()]);
        assert!(state.messages().is_empty());
    }

    #[test]
    fn delete_chat_removes_older_and_keeps_newer() {
        let delete_chat = Operation {
            stamp: stamp(5, 2),
            change: Change::DeleteChat {
                chat_id: "c".into(),
            },
        };
        let ops = [
            upsert(1, 1, "c", "old", "x"),
            upsert(9, 1, "c", "new", "y"),
            upsert(2, 1, "other", "m", "z"),
            delete_chat,
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let shuffled: Vec<Operation> = order.iter().map(|&i| ops[i].clone()).collect();
            let state = apply_all(&shuffled);
            let ids: Vec<String> = state.messages().into_iter().map(|m| m.message_id).collect();
            assert_eq!(ids, ["new", "m"]);
        }
    }

    #[test]
    fn reapplying_is_harmless() {
        let op = upsert(1, 1, "c", "m", "x");
        let mut state = MemoryState::new();
        assert_eq!(apply(&mut state, &op).unwrap(), Applied::Changed);
        assert_eq!(apply(&mut state, &op).unwrap(), Applied::Unchanged);
    }

    fn arbitrary_op() -> impl Strategy<Value = Operation> {
        let chat = prop::sample::select(vec!["a", "b"]);
        let message = prop::sample::select(vec!["m1", "m2", "m3"]);
        (0u64..20, 0u32..3, 1u8..4, chat, message, 0u8..10).prop_map(
            |(wall, counter, device, chat, message, kind)| {
                let stamp = Stamp {
                    wall_ms: wall,
                    counter,
                    device: DeviceId([device; 16]),
                };
                let change = match kind {
                    0 => Change::DeleteChat {
                        chat_id: chat.into(),
                    },
                    1 => Change::DeleteMessage {
                        chat_id: chat.into(),
                        message_id: message.into(),
                    },
                    2 => Change::UpsertChat(Chat {
                        chat_id: chat.into(),
                        title: format!("t{wall}"),
                        members: vec![],
                        payload: vec![wall as u8],
                    }),
                    _ => Change::UpsertMessage(Message {
                        chat_id: chat.into(),
                        message_id: message.into(),
                        text: format!("{wall}/{counter}/{device}"),
                        kind: format!("k{counter}"),
                        payload: wall.to_be_bytes().to_vec(),
                        ..Message::default()
                    }),
                };
                Operation { stamp, change }
            },
        )
    }

    proptest! {
        /// Any order of any multiset of operations (with duplicates) gives one state.
        #[test]
        fn merge_converges_in_any_order(
            ops in prop::collection::vec(arbitrary_op(), 0..40),
            seed in any::<u64>(),
        ) {
            // Distinct operations must have distinct stamps (a device never reuses one).
            let mut seen = std::collections::HashSet::new();
            let ops: Vec<Operation> = ops.into_iter().filter(|o| seen.insert(o.stamp)).collect();
            let reference = apply_all(&ops);
            let mut shuffled = ops.clone();
            shuffled.extend(ops.iter().take(5).cloned()); // duplicates
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let other = apply_all(&shuffled);
            prop_assert_eq!(reference.chats(), other.chats());
            prop_assert_eq!(reference.messages(), other.messages());
        }
    }
}
