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

/// Protobuf encoding of the model straight from its fields, without building the `proto` structs
/// first (which clones every string): `record` encodes every operation once on its hot path.
/// The bytes are exactly prost's for the `to_proto` of the same value (proto3: scalar and
/// string fields are left out when empty or zero, `optional` and oneof fields are written when
/// set, fields in tag order); `tests::direct_encoding_is_prosts` checks it on arbitrary values.
mod encoding {
    use prost::encoding::{encode_varint, encoded_len_varint};

    use super::{Attachment, Change, Chat, Message, Operation, Stamp};

    const VARINT: u8 = 0;
    const LEN: u8 = 2;

    /// Bytes of a length-delimited field holding `len` bytes (tags here are all below 16).
    #[inline]
    fn delimited_len(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }

    /// A proto3 string or bytes field: absent when empty.
    #[inline]
    fn bytes_len(value: &[u8]) -> usize {
        if value.is_empty() {
            0
        } else {
            delimited_len(value.len())
        }
    }

    /// A proto3 integer field: absent when zero.
    #[inline]
    fn uint_len(value: u64) -> usize {
        if value == 0 {
            0
        } else {
            1 + encoded_len_varint(value)
        }
    }

    #[inline]
    fn put_delimited(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
        out.push((tag << 3) | LEN);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    #[inline]
    fn put_bytes(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
        if !value.is_empty() {
            put_delimited(out, tag, value);
        }
    }

    #[inline]
    fn put_uint(out: &mut Vec<u8>, tag: u8, value: u64) {
        if value != 0 {
            out.push((tag << 3) | VARINT);
            encode_varint(value, out);
        }
    }

    #[inline]
    fn put_header(out: &mut Vec<u8>, tag: u8, len: usize) {
        out.push((tag << 3) | LEN);
        encode_varint(len as u64, out);
    }

    fn stamp_len(stamp: &Stamp) -> usize {
        uint_len(stamp.wall_ms) + uint_len(u64::from(stamp.counter)) + bytes_len(&stamp.device.0)
    }

    fn put_stamp(out: &mut Vec<u8>, stamp: &Stamp) {
        put_uint(out, 1, stamp.wall_ms);
        put_uint(out, 2, u64::from(stamp.counter));
        put_bytes(out, 3, &stamp.device.0);
    }

    fn chat_len(chat: &Chat) -> usize {
        bytes_len(chat.chat_id.as_bytes())
            + bytes_len(chat.title.as_bytes())
            + chat
                .members
                .iter()
                .map(|m| delimited_len(m.len()))
                .sum::<usize>()
            + bytes_len(&chat.payload)
    }

    fn put_chat(out: &mut Vec<u8>, chat: &Chat) {
        put_bytes(out, 1, chat.chat_id.as_bytes());
        put_bytes(out, 2, chat.title.as_bytes());
        for member in &chat.members {
            put_delimited(out, 3, member.as_bytes());
        }
        put_bytes(out, 4, &chat.payload);
    }

    fn attachment_len(attachment: &Attachment) -> usize {
        bytes_len(&attachment.content_id.0)
            + uint_len(attachment.size)
            + uint_len(u64::from(attachment.chunk_size))
            + bytes_len(attachment.name.as_bytes())
            + bytes_len(attachment.mime.as_bytes())
            + uint_len(u64::from(attachment.key_epoch))
    }

    fn put_attachment(out: &mut Vec<u8>, attachment: &Attachment) {
        put_bytes(out, 1, &attachment.content_id.0);
        put_uint(out, 2, attachment.size);
        put_uint(out, 3, u64::from(attachment.chunk_size));
        put_bytes(out, 4, attachment.name.as_bytes());
        put_bytes(out, 5, attachment.mime.as_bytes());
        put_uint(out, 6, u64::from(attachment.key_epoch));
    }

    pub(super) fn message_len(message: &Message) -> usize {
        bytes_len(message.chat_id.as_bytes())
            + bytes_len(message.message_id.as_bytes())
            + bytes_len(message.sender.as_bytes())
            // int64 is encoded as its two's complement u64.
            + uint_len(message.sent_at_ms as u64)
            + bytes_len(message.text.as_bytes())
            + message.reply_to.as_ref().map_or(0, |r| delimited_len(r.len()))
            + message
                .attachments
                .iter()
                .map(|a| delimited_len(attachment_len(a)))
                .sum::<usize>()
            + bytes_len(message.kind.as_bytes())
            + bytes_len(&message.payload)
    }

    fn put_message(out: &mut Vec<u8>, message: &Message) {
        put_bytes(out, 1, message.chat_id.as_bytes());
        put_bytes(out, 2, message.message_id.as_bytes());
        put_bytes(out, 3, message.sender.as_bytes());
        put_uint(out, 4, message.sent_at_ms as u64);
        put_bytes(out, 5, message.text.as_bytes());
        if let Some(reply_to) = &message.reply_to {
            put_delimited(out, 6, reply_to.as_bytes());
        }
        for attachment in &message.attachments {
            put_header(out, 7, attachment_len(attachment));
            put_attachment(out, attachment);
        }
        put_bytes(out, 8, message.kind.as_bytes());
        put_bytes(out, 9, &message.payload);
    }

    /// The body's tag and length inside `Operation` (the oneof is always written).
    fn body_len(change: &Change) -> (u8, usize) {
        match change {
            Change::UpsertChat(chat) => (2, chat_len(chat)),
            Change::UpsertMessage(message) => (3, message_len(message)),
            Change::DeleteMessage {
                chat_id,
                message_id,
            } => (
                4,
                bytes_len(chat_id.as_bytes()) + bytes_len(message_id.as_bytes()),
            ),
            Change::DeleteChat { chat_id } => (5, chat_id.len()),
        }
    }

    pub(super) fn operation_len(operation: &Operation) -> usize {
        delimited_len(stamp_len(&operation.stamp)) + delimited_len(body_len(&operation.change).1)
    }

    pub(super) fn put_operation(out: &mut Vec<u8>, operation: &Operation) {
        put_header(out, 1, stamp_len(&operation.stamp));
        put_stamp(out, &operation.stamp);
        let (tag, len) = body_len(&operation.change);
        put_header(out, tag, len);
        match &operation.change {
            Change::UpsertChat(chat) => put_chat(out, chat),
            Change::UpsertMessage(message) => put_message(out, message),
            Change::DeleteMessage {
                chat_id,
                message_id,
            } => {
                put_bytes(out, 1, chat_id.as_bytes());
                put_bytes(out, 2, message_id.as_bytes());
            }
            Change::DeleteChat { chat_id } => out.extend_from_slice(chat_id.as_bytes()),
        }
    }
}

impl Message {
    /// Length of the message's protobuf encoding (what `to_proto().encoded_len()` gives, without
    /// the clones).
    pub(crate) fn encoded_len(&self) -> usize {
        encoding::message_len(self)
    }
}

impl Operation {
    /// Length of the operation's protobuf encoding.
    pub(crate) fn encoded_len(&self) -> usize {
        encoding::operation_len(self)
    }

    /// Appends the operation's protobuf encoding to `out`: the bytes of
    /// `to_proto().encode_raw(out)`, without building the `proto` structs.
    pub(crate) fn encode_raw(&self, out: &mut Vec<u8>) {
        encoding::put_operation(out, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::ContentId;
    use crate::sync::DeviceId;
    use proptest::prelude::*;
    use prost::Message as _;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-zé🙂 ]{1,40}", "x{120,300}"]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 1..200)
        ]
    }

    fn attachment() -> impl Strategy<Value = Attachment> {
        (
            any::<[u8; 32]>(),
            prop_oneof![Just(0u64), any::<u64>()],
            prop_oneof![Just(0u32), any::<u32>()],
            text(),
            text(),
            prop_oneof![Just(0u8), any::<u8>()],
        )
            .prop_map(|(id, size, chunk_size, name, mime, key_epoch)| Attachment {
                content_id: ContentId(id),
                size,
                chunk_size,
                name,
                mime,
                key_epoch,
            })
    }

    fn change() -> impl Strategy<Value = Change> {
        let message = (
            (
                text(),
                text(),
                text(),
                prop_oneof![Just(0i64), any::<i64>()],
            ),
            (
                text(),
                proptest::option::of(text()),
                proptest::collection::vec(attachment(), 0..3),
                text(),
                bytes(),
            ),
        )
            .prop_map(
                |(
                    (chat_id, message_id, sender, sent_at_ms),
                    (text, reply_to, attachments, kind, payload),
                )| {
                    Change::UpsertMessage(Message {
                        chat_id,
                        message_id,
                        sender,
                        sent_at_ms,
                        text,
                        reply_to,
                        attachments,
                        kind,
                        payload,
                    })
                },
            );
        let chat = (
            text(),
            text(),
            proptest::collection::vec(text(), 0..4),
            bytes(),
        )
            .prop_map(|(chat_id, title, members, payload)| {
                Change::UpsertChat(Chat {
                    chat_id,
                    title,
                    members,
                    payload,
                })
            });
        prop_oneof![
            message,
            chat,
            (text(), text()).prop_map(|(chat_id, message_id)| Change::DeleteMessage {
                chat_id,
                message_id
            }),
            text().prop_map(|chat_id| Change::DeleteChat { chat_id }),
        ]
    }

    proptest! {
        /// The direct encoder writes exactly what prost writes for `to_proto()`, so segments,
        /// outbox rows and cache blobs are unchanged byte for byte.
        #[test]
        fn direct_encoding_is_prosts(
            change in change(),
            wall_ms in prop_oneof![Just(0u64), any::<u64>()],
            counter in prop_oneof![Just(0u32), any::<u32>()],
            device in any::<[u8; 16]>(),
        ) {
            let operation = Operation {
                stamp: Stamp { wall_ms, counter, device: DeviceId(device) },
                change,
            };
            let expected = operation.to_proto().encode_to_vec();
            let mut direct = Vec::new();
            operation.encode_raw(&mut direct);
            prop_assert_eq!(&direct, &expected);
            prop_assert_eq!(operation.encoded_len(), expected.len());
            if let Change::UpsertMessage(message) = &operation.change {
                prop_assert_eq!(message.encoded_len(), message.to_proto().encoded_len());
            }
        }
    }
}
