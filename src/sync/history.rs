//! Paging through a chat's history, newest first, without losing or repeating a message.
//!
//! Messages are ordered by `(sent_at_ms, message_id)` (ids compared as UTF-8 bytes), a total
//! order even when many messages share one millisecond. A page is asked for "before" a
//! [`HistoryCursor`], the position of the oldest message the app already shows; the next page
//! starts exactly there, so a message sharing the boundary's millisecond is neither dropped nor
//! delivered twice.

use super::model::{Change, Message, Operation};

/// A position in a chat's history: the `(sent_at_ms, message_id)` of a message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryCursor {
    /// The message's send time.
    pub sent_at_ms: i64,
    /// The message's id (ties within one millisecond are broken by its UTF-8 bytes).
    pub message_id: String,
}

impl HistoryCursor {
    /// The position of `message`.
    pub fn of(message: &Message) -> Self {
        HistoryCursor {
            sent_at_ms: message.sent_at_ms,
            message_id: message.message_id.clone(),
        }
    }

    /// Whether `message` lies strictly before this position.
    pub fn is_after(&self, message: &Message) -> bool {
        (message.sent_at_ms, message.message_id.as_bytes())
            < (self.sent_at_ms, self.message_id.as_bytes())
    }
}

/// One page of history, in send order (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// The messages of the page, oldest first.
    pub messages: Vec<Message>,
    /// Where the next (older) page starts: `None` when this page reached the chat's beginning.
    pub next: Option<HistoryCursor>,
}

impl HistoryPage {
    /// The page of `limit` messages before `before` (from the newest when `None`) out of a chat's
    /// messages sorted by position.
    pub fn from_sorted(sorted: Vec<Message>, before: Option<&HistoryCursor>, limit: u32) -> Self {
        let end = match before {
            Some(cursor) => sorted.partition_point(|m| cursor.is_after(m)),
            None => sorted.len(),
        };
        let start = end.saturating_sub(limit as usize);
        let mut sorted = sorted;
        sorted.truncate(end);
        let messages = sorted.split_off(start);
        Self::new(messages, start > 0)
    }

    /// A page of `messages` (oldest first); `more` says whether older messages exist.
    pub(crate) fn new(messages: Vec<Message>, more: bool) -> Self {
        let next = if more {
            messages.first().map(HistoryCursor::of)
        } else {
            None
        };
        HistoryPage { messages, next }
    }
}

/// Where an operation sits in its chat's history: `Some` for a message upsert only (deletions
/// and chat metadata have no place in the timeline).
pub fn position_of(operation: &Operation) -> Option<(i64, &str)> {
    match &operation.change {
        Change::UpsertMessage(m) => Some((m.sent_at_ms, m.message_id.as_str())),
        _ => None,
    }
}

/// Sorts messages by history position.
pub(crate) fn sort_by_position(messages: &mut [Message]) {
    messages.sort_by(|a, b| {
        (a.sent_at_ms, a.message_id.as_bytes()).cmp(&(b.sent_at_ms, b.message_id.as_bytes()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(at: i64, id: &str) -> Message {
        Message {
            chat_id: "c".into(),
            message_id: id.into(),
            sent_at_ms: at,
            ..Message::default()
        }
    }

    /// Paging through any history, with any page size, yields every message exactly once.
    #[test]
    fn pages_cover_every_message_once_even_within_one_millisecond() {
        let mut all: Vec<Message> = (0..57)
            .map(|i| message(i / 10, &format!("m{:02}", (i * 37) % 57)))
            .collect();
        sort_by_position(&mut all);
        for limit in [1, 2, 3, 7, 10, 56, 57, 100] {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = HistoryPage::from_sorted(all.clone(), cursor.as_ref(), limit);
                assert!(page.messages.len() <= limit as usize);
                let mut batch = page.messages.clone();
                batch.extend(seen);
                seen = batch;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, all, "page size {limit}");
        }
        assert_eq!(
            HistoryPage::from_sorted(Vec::new(), None, 5),
            HistoryPage::default()
        );
    }
}
