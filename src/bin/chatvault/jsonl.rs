//! The JSON Lines exchange format of the CLI: one chat, message or delete per line.

use std::io::{BufRead, Write};

use chatvault::attachment::{Attachment, ContentId};
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
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "base64_bytes")]
        payload: Vec<u8>,
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
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<AttachmentLine>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        kind: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "base64_bytes")]
        payload: Vec<u8>,
    },
    /// Deletes one message.
    DeleteMessage { chat_id: String, message_id: String },
    /// Deletes a whole chat.
    DeleteChat { chat_id: String },
}

/// App payloads as standard base64 (with padding) in JSON strings.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("payload is not standard base64: {e}")))
    }
}

/// An attachment of a message line. On import, `path` names a file to upload (relative to the
/// JSON Lines file); without `path`, `content_id`, `size` and `chunk_size` reference content
/// already in the vault (with `key_epoch`, 0 when absent). Restore writes the reference, and `path`
/// when it downloaded the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    /// The key epoch the content is under; written only when not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_epoch: u8,
}

fn is_zero(value: &u8) -> bool {
    *value == 0
}

impl AttachmentLine {
    /// The line of a stored attachment, with the path it was downloaded to, if any.
    pub fn from_attachment(attachment: &Attachment, path: Option<String>) -> Self {
        AttachmentLine {
            path,
            name: attachment.name.clone(),
            mime: attachment.mime.clone(),
            content_id: Some(attachment.content_id.to_hex()),
            size: Some(attachment.size),
            chunk_size: Some(attachment.chunk_size),
            key_epoch: attachment.key_epoch,
        }
    }

    /// The reference this line spells out, when it has no file to upload.
    pub fn as_reference(&self) -> Result<Attachment, String> {
        match (&self.content_id, self.size, self.chunk_size) {
            (Some(id), Some(size), Some(chunk_size)) => Ok(Attachment {
                content_id: ContentId::from_hex(id)
                    .ok_or("attachment content_id must be 64 hex characters")?,
                size,
                chunk_size,
                name: self.name.clone(),
                mime: self.mime.clone(),
                key_epoch: self.key_epoch,
            }),
            _ => Err("an attachment needs a path, or content_id, size and chunk_size".into()),
        }
    }
}

impl Line {
    /// The attachments this line asks for.
    pub fn attachments(&self) -> &[AttachmentLine] {
        match self {
            Line::Message { attachments, .. } => attachments,
            _ => &[],
        }
    }

    /// The change this line records, with `attachments` resolved to references (in the order
    /// of [`attachments`](Self::attachments)).
    pub fn into_change(self, resolved: Vec<Attachment>) -> Change {
        match self {
            Line::Chat {
                chat_id,
                title,
                members,
                payload,
            } => Change::UpsertChat(Chat {
                chat_id,
                title,
                members,
                payload,
            }),
            Line::Message {
                chat_id,
                message_id,
                sender,
                sent_at_ms,
                text,
                reply_to,
                attachments: _,
                kind,
                payload,
            } => Change::UpsertMessage(Message {
                chat_id,
                message_id,
                sender,
                sent_at_ms,
                text,
                reply_to,
                attachments: resolved,
                kind,
                payload,
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

/// Parses each line in turn (streaming: one line in memory at a time), yielding it with its
/// number; blank lines are skipped. A line that is not JSON of a known shape, or whose attachment
/// reference is incomplete, yields an error naming it. Field limits are checked by
/// [`check_line`].
pub fn parse_lines(input: impl BufRead) -> impl Iterator<Item = Result<(usize, Line), String>> {
    input
        .lines()
        .enumerate()
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(index, line)| {
            let number = index + 1;
            let line = line.map_err(|e| format!("line {number}: {e}"))?;
            let parsed: Line =
                serde_json::from_str(&line).map_err(|e| format!("line {number}: {e}"))?;
            for attachment in parsed.attachments() {
                if attachment.path.is_none() {
                    attachment
                        .as_reference()
                        .map_err(|e| format!("line {number}: {e}"))?;
                }
            }
            Ok((number, parsed))
        })
}

/// Checks every field's limits of a parsed line (attachment files are checked when they are
/// uploaded), consuming it: the first pass of an import needs nothing of the line afterwards.
pub fn check_line(number: usize, line: Line) -> Result<(), String> {
    line.into_change(Vec::new())
        .validate()
        .map_err(|e| format!("line {number}: {e}"))
}

/// Writes chats and messages as lines, as they come.
pub struct LineWriter<W: Write> {
    out: W,
}

impl<W: Write> LineWriter<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        LineWriter { out }
    }

    fn line(&mut self, line: &Line) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, line).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }

    /// A chat's line.
    pub fn chat(&mut self, chat: &Chat) -> std::io::Result<()> {
        self.line(&Line::Chat {
            chat_id: chat.chat_id.clone(),
            title: chat.title.clone(),
            members: chat.members.clone(),
            payload: chat.payload.clone(),
        })
    }

    /// A message's line; `path_of` gives the path (relative to the output file) an attachment
    /// was downloaded to, if it was.
    pub fn message(
        &mut self,
        message: Message,
        path_of: impl Fn(&Attachment) -> Option<String>,
    ) -> std::io::Result<()> {
        let attachments = message
            .attachments
            .iter()
            .map(|a| AttachmentLine::from_attachment(a, path_of(a)))
            .collect();
        self.line(&Line::Message {
            chat_id: message.chat_id,
            message_id: message.message_id,
            sender: message.sender,
            sent_at_ms: message.sent_at_ms,
            text: message.text,
            reply_to: message.reply_to,
            attachments,
            kind: message.kind,
            payload: message.payload,
        })
    }

    /// Flushes what was written.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
