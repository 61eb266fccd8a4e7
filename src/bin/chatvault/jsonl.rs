//! The JSON Lines exchange format of the CLI: one chat, message or delete per line.

use std::io::{BufRead, Write};

use chatvault::sync::{Change, Chat, Message};
use serde::{Deserialize, Serialize};

/// One line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// A chat's metadata.
    Chat {
        chat_id: String,
        #[serde(default)]
        title: String,
        #[serde(default)]
        members: Vec<String>,
    },
    /// A message; a later line with the same ids is an edit.
    Message {
        chat_id: String,
        message_id: String,
        #[serde(default)]
        sender: String,
        sent_at_ms: i64,
        #[serde(default)]
        text: String,
        #[serde(default)]
        reply_to: Option<String>,
    },
    /// Deletes one message.
    DeleteMessage { chat_id: String, message_id: String },
    /// Deletes a whole chat.
    DeleteChat { chat_id: String },
}

impl Line {
    pub fn into_change(self) -> Change {
        match self {
            Line::Chat {
                chat_id,
                title,
                members,
            } => Change::UpsertChat(Chat {
                chat_id,
                title,
                members,
            }),
            Line::Message {
                chat_id,
                message_id,
                sender,
                sent_at_ms,
                text,
                reply_to,
            } => Change::UpsertMessage(Message {
                chat_id,
                message_id,
                sender,
                sent_at_ms,
                text,
                reply_to,
            }),
            Line::DeleteMessage {
                chat_id,
                message_id,
            } => Change::DeleteMessage {
                chat_id,
                message_id,
            },
            Line::DeleteChat { chat_id } => Change::DeleteChat { chat_id },
        }
    }
}

/// Reads every line; the first malformed or invalid line fails the whole file, with its number.
pub fn read_changes(input: impl BufRead) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| format!("line {number}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| format!("line {number}: {e}"))?;
        let change = parsed.into_change();
        change
            .validate()
            .map_err(|e| format!("line {number}: {e}"))?;
        changes.push(change);
    }
    Ok(changes)
}

/// Writes chats, then messages, as lines.
pub fn write_state(
    mut out: impl Write,
    chats: &[Chat],
    messages: &[Message],
) -> std::io::Result<()> {
    let json = |line: &Line| serde_json::to_string(line).map_err(std::io::Error::other);
    for chat in chats {
        writeln!(
            out,
            "{}",
            json(&Line::Chat {
                chat_id: chat.chat_id.clone(),
                title: chat.title.clone(),
                members: chat.members.clone(),
            })?
        )?;
    }
    for message in messages {
        writeln!(
            out,
            "{}",
            json(&Line::Message {
                chat_id: message.chat_id.clone(),
                message_id: message.message_id.clone(),
                sender: message.sender.clone(),
                sent_at_ms: message.sent_at_ms,
                text: message.text.clone(),
                reply_to: message.reply_to.clone(),
            })?
        )?;
    }
    out.flush()
}
