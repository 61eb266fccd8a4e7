//! What the app records: chats, messages, edits and deletes, as operations with stamps.

use crate::attachment::{Attachment, MAX_ATTACHMENTS_PER_MESSAGE};
use crate::error::{Error, Result};
use crate::format::proto;

use super::clock::Stamp;

/// Longest identifier (chat, message, sender, member) accepted, in UTF-8 bytes.
pub const MAX_ID_LEN: usize = 1024;
/// Longest message text or chat title accepted, in UTF-8 bytes (1 MiB).
pub const MAX_TEXT_LEN: usize = 1024 * 1024;
/// Most members one chat may list.
pub const MAX_MEMBERS: usize = 10_000;
/// Longest app-defined message kind accepted, in UTF-8 bytes.
pub const MAX_KIND_LEN: usize = 64;
/// Largest app-defined payload of a message or chat (64 KiB). Anything larger belongs in an
/// attachment, which is chunked, deduplicated and downloaded on demand.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;

/// A chat's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chat {
    /// The app's identifier of the chat.
    pub chat_id: String,
    /// Display title.
    pub title: String,
    /// Member identifiers.
    pub members: Vec<String>,
    /// Bytes the app defines (its own encoding of whatever else it keeps about the chat), at
    /// most [`MAX_PAYLOAD_LEN`]. chatvault stores and returns them unchanged.
    pub payload: Vec<u8>,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The chat it belongs to.
    pub chat_id: String,
    /// The app's identifier of the message, unique within the chat.
    pub message_id: String,
    /// Who sent it.
    pub sender: String,
    /// When it was sent, milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
    /// Its text.
    pub text: String,
    /// The message it replies to, if any.
    pub reply_to: Option<String>,
    /// Files attached to it (references; the content is downloaded on demand).
    pub attachments: Vec<Attachment>,
    /// What sort of message this is, in the app's own terms ("text", "image", "sticker",
    /// "reaction", "system", ...): at most [`MAX_KIND_LEN`] bytes; empty if the app does not say.
    pub kind: String,
    /// Bytes the app defines (e.g. its own protobuf of fields chatvault has no name for), at most
    /// [`MAX_PAYLOAD_LEN`]. chatvault stores and returns them unchanged.
    pub payload: Vec<u8>,
}

/// One change to the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a chat's metadata.
    UpsertChat(Chat),
    /// Create or edit a message.
    UpsertMessage(Message),
    /// Delete one message.
    DeleteMessage {
        /// The chat.
        chat_id: String,
        /// The message.
        message_id: String,
    },
    /// Delete a chat and everything recorded in it before.
    DeleteChat {
        /// The chat.
        chat_id: String,
    },
}

impl Change {
    /// The chat this change belongs to.
    pub fn chat_id(&self) -> &str {
        match self {
            Change::UpsertChat(chat) => &chat.chat_id,
            Change::UpsertMessage(message) => &message.chat_id,
            Change::DeleteMessage { chat_id, .. } | Change::DeleteChat { chat_id } => chat_id,
        }
    }

    /// The message this change belongs to (`None` for chat-level changes).
    pub fn message_id(&self) -> Option<&str> {
        match self {
            Change::UpsertMessage(message) => Some(&message.message_id),
            Change::DeleteMessage { message_id, .. } => Some(message_id),
            Change::UpsertChat(_) | Change::DeleteChat { .. } => None,
        }
    }

    /// Checks sizes and required fields.
    pub fn validate(&self) -> Result<()> {
        let id = |what: &str, value: &str| {
            if value.is_empty() || value.len() > MAX_ID_LEN {
                Err(Error::invalid_input(format!(
                    "{what} must be 1..={MAX_ID_LEN} bytes, got {}",
                    value.len()
                )))
            } else {
                Ok(())
            }
        };
        let bounded = |field: &'static str, len: usize, limit: usize| {
            if len > limit {
                Err(Error::TooLarge {
                    field,
                    size: len as u64,
                    limit: limit as u64,
                })
            } else {
                Ok(())
            }
        };
        let text = |field: &'static str, value: &str| bounded(field, value.len(), MAX_TEXT_LEN);
        match self {
            Change::UpsertChat(chat) => {
                id("chat_id", &chat.chat_id)?;
                text("title", &chat.title)?;
                bounded("payload", chat.payload.len(), MAX_PAYLOAD_LEN)?;
                if chat.members.len() > MAX_MEMBERS {
                    return Err(Error::invalid_input(format!(
                        "{} members exceed {MAX_MEMBERS}",
                        chat.members.len()
                    )));
                }
                chat.members.iter().try_for_each(|m| id("member", m))
            }
            Change::UpsertMessage(message) => {
                id("chat_id", &message.chat_id)?;
                id("message_id", &message.message_id)?;
                if !message.sender.is_empty() {
                    id("sender", &message.sender)?;
                }
                text("text", &message.text)?;
                bounded("kind", message.kind.len(), MAX_KIND_LEN)?;
                bounded("payload", message.payload.len(), MAX_PAYLOAD_LEN)?;
                if message.attachments.len() > MAX_ATTACHMENTS_PER_MESSAGE {
                    return Err(Error::invalid_input(format!(
                        "{} attachments exceed {MAX_ATTACHMENTS_PER_MESSAGE}",
                        message.attachments.len()
                    )));
                }
                message
                    .attachments
                    .iter()
                    .try_for_each(Attachment::validate)?;
                message
                    .reply_to
                    .as_deref()
                    .map_or(Ok(()), |r| id("reply_to", r))
            }
            Change::DeleteMessage {
                chat_id,
                message_id,
            } => {
                id("chat_id", chat_id)?;
                id("message_id", message_id)
            }
            Change::DeleteChat { chat_id } => id("chat_id", chat_id),
        }
    }
}

/// A change with the stamp that orders it among all devices' changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// When and by whom.
    pub stamp: Stamp,
    /// What.
    pub change: Change,
}

impl Chat {
    pub(crate) fn to_proto(&self) -> proto::Chat {
        proto::Chat {
            chat_id: self.chat_id.clone(),
            title: self.title.clone(),
            members: self.members.clone(),
            payload: self.payload.clone(),
        }
    }

    pub(crate) fn from_proto(chat: proto::Chat) -> Chat {
        Chat {
            chat_id: chat.chat_id,
            title: chat.title,
            members: chat.members,
            payload: chat.payload,
        }
    }
}

impl Message {
    pub(crate) fn to_proto(&self) -> proto::Message {
        proto::Message {
            chat_id: self.chat_id.clone(),
            message_id: self.message_id.clone(),
            sender: self.sender.clone(),
            sent_at_ms: self.sent_at_ms,
            text: self.text.clone(),
            reply_to: self.reply_to.clone(),
            attachments: self.attachments.iter().map(Attachment::to_proto).collect(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
        }
    }

    /// Converts a decoded message; fails on an attachment reference that breaks the limits.
    pub(crate) fn from_proto(message: proto::Message) -> std::result::Result<Message, String> {
        Ok(Message {
            chat_id: message.chat_id,
            message_id: message.message_id,
            sender: message.sender,
            sent_at_ms: message.sent_at_ms,
            text: message.text,
            reply_to: message.reply_to,
            attachments: message
                .attachments
                .into_iter()
                .map(Attachment::from_proto)
                .collect::<std::result::Result<_, _>>()?,
            kind: message.kind,
            payload: message.payload,
        })
    }
}

impl Operation {
    pub(crate) fn to_proto(&self) -> proto::Operation {
        use proto::operation::Body;
        let body = match &self.change {
            Change::UpsertChat(chat) => Body::UpsertChat(chat.to_proto()),
            Change::UpsertMessage(message) => Body::UpsertMessage(message.to_proto()),
            Change::DeleteMessage {
                chat_id,
                message_id,
            } => Body::DeleteMessage(proto::MessageRef {
                chat_id: chat_id.clone(),
                message_id: message_id.clone(),
            }),
            Change::DeleteChat { chat_id } => Body::DeleteChat(chat_id.clone()),
        };
        proto::Operation {
            stamp: Some(self.stamp.to_proto()),
            body: Some(body),
        }
    }

    /// Converts a decoded operation, checking it is complete and within limits.
    pub(crate) fn from_proto(
        operation: proto::Operation,
    ) -> std::result::Result<Operation, String> {
        use proto::operation::Body;
        let stamp = operation
            .stamp
            .as_ref()
            .and_then(Stamp::from_proto)
            .ok_or("operation without a valid stamp")?;
        let change = match operation.body.ok_or("operation without a body")? {
            Body::UpsertChat(chat) => Change::UpsertChat(Chat::from_proto(chat)),
            Body::UpsertMessage(message) => Change::UpsertMessage(Message::from_proto(message)?),
            Body::DeleteMessage(reference) => Change::DeleteMessage {
                chat_id: reference.chat_id,
                message_id: reference.message_id,
            },
            Body::DeleteChat(chat_id) => Change::DeleteChat { chat_id },
        };
        change.validate().map_err(|e| e.to_string())?;
        Ok(Operation { stamp, change })
    }
}
