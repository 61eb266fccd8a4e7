//! Operations encoded once, grouped by chat, ready to become segment blocks.
//!
//! `record` encodes each operation exactly once, into the outbox. A protobuf message's repeated
//! field may be written in any number of pieces, so the encoded `operations` entries (field 2 of
//! `ChatOperations`) of several recordings concatenate into one chat block's body: pushing a
//! segment copies bytes and never decodes or re-encodes an operation.
//!
//! Outbox row layout (local only, never in the bucket), repeated once per chat:
//! `varint len(chat_id) || chat_id || varint operation count || varint len(ops) || ops`,
//! where `ops` is the chat's operations, each as protobuf field 2 (tag, length, `Operation`).

use std::collections::BTreeMap;

use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

use super::model::Operation;

/// Operations field of `ChatOperations`: field 2, length-delimited.
const OPERATIONS_TAG: u8 = (2 << 3) | 2;
/// Chat id field of `ChatOperations`: field 1, length-delimited.
const CHAT_ID_TAG: u8 = (1 << 3) | 2;

/// One chat's encoded operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatFragment {
    /// Number of operations.
    pub count: u64,
    /// Each operation as field 2 of `ChatOperations`, in recording order.
    pub bytes: Vec<u8>,
}

/// Encoded operations by chat (chats in byte order of their ids; each chat in recording order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    chats: BTreeMap<String, ChatFragment>,
    /// Sum of the fragments' byte lengths (kept, not recomputed: `record` asks after each
    /// operation).
    len: usize,
}

impl EncodedBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `operations` (each exactly once).
    pub fn from_operations(operations: &[Operation]) -> Self {
        let mut batch = Self::new();
        for operation in operations {
            batch.push(operation);
        }
        batch
    }

    /// Encodes one operation onto its chat's fragment (straight from the model: no `proto`
    /// copy of its strings is built).
    pub fn push(&mut self, operation: &Operation) {
        let chat_id = operation.change.chat_id();
        let fragment = match self.chats.get_mut(chat_id) {
            Some(fragment) => fragment,
            None => self.chats.entry(chat_id.to_owned()).or_default(),
        };
        let before = fragment.bytes.len();
        let len = operation.encoded_len();
        fragment
            .bytes
            .reserve(1 + encoded_len_varint(len as u64) + len);
        fragment.bytes.push(OPERATIONS_TAG);
        encode_varint(len as u64, &mut fragment.bytes);
        operation.encode_raw(&mut fragment.bytes);
        fragment.count += 1;
        self.len += fragment.bytes.len() - before;
    }

    /// Appends another batch (recorded after this one).
    pub fn append(&mut self, other: EncodedBatch) {
        self.len += other.len;
        for (chat_id, fragment) in other.chats {
            let mine = self.chats.entry(chat_id).or_default();
            mine.count += fragment.count;
            mine.bytes.extend_from_slice(&fragment.bytes);
        }
    }

    /// Operations held.
    pub fn operation_count(&self) -> u64 {
        self.chats.values().map(|f| f.count).sum()
    }

    /// Bytes of encoded operations held.
    pub fn encoded_len(&self) -> usize {
        self.len
    }

    /// True when no operation is held.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
    }

    /// Chats and their fragments, in byte order of the chat ids.
    pub fn chats(&self) -> impl Iterator<Item = (&str, &ChatFragment)> {
        self.chats.iter().map(|(id, f)| (id.as_str(), f))
    }

    /// Decodes every operation again, chat by chat (each chat's in recording order). Only for
    /// the rare case where recorded operations must change (a device that turns out to be a
    /// copy of another re-stamps what it has not pushed yet).
    pub fn decode_operations(&self) -> crate::Result<Vec<Operation>> {
        use crate::format::{ObjectKind, decode_body, proto};
        let mut operations = Vec::new();
        for (chat_id, fragment) in self.chats() {
            let body = Self::chat_body(chat_id, fragment);
            let decoded: proto::ChatOperations = decode_body(ObjectKind::ChatData, &body)?;
            for operation in decoded.operations {
                operations.push(
                    Operation::from_proto(operation).map_err(|why| {
                        crate::Error::LocalState(format!("outbox operation: {why}"))
                    })?,
                );
            }
        }
        Ok(operations)
    }

    /// The protobuf `ChatOperations` body of one chat's fragment.
    pub fn chat_body(chat_id: &str, fragment: &ChatFragment) -> Vec<u8> {
        let mut body = Vec::with_capacity(
            1 + encoded_len_varint(chat_id.len() as u64) + chat_id.len() + fragment.bytes.len(),
        );
        body.push(CHAT_ID_TAG);
        encode_varint(chat_id.len() as u64, &mut body);
        body.extend_from_slice(chat_id.as_bytes());
        body.extend_from_slice(&fragment.bytes);
        body
    }

    /// Bytes of this batch's outbox row.
    pub fn row_len(&self) -> usize {
        self.chats
            .iter()
            .map(|(chat_id, fragment)| {
                encoded_len_varint(chat_id.len() as u64)
                    + chat_id.len()
                    + encoded_len_varint(fragment.count)
                    + encoded_len_varint(fragment.bytes.len() as u64)
                    + fragment.bytes.len()
            })
            .sum()
    }

    /// The outbox row of this batch.
    pub fn to_row(&self) -> Vec<u8> {
        let mut row = Vec::with_capacity(self.row_len());
        self.write_row(&mut row);
        row
    }

    /// Appends the outbox row of this batch to `row`.
    pub fn write_row(&self, row: &mut Vec<u8>) {
        for (chat_id, fragment) in &self.chats {
            encode_varint(chat_id.len() as u64, row);
            row.extend_from_slice(chat_id.as_bytes());
            encode_varint(fragment.count, row);
            encode_varint(fragment.bytes.len() as u64, row);
            row.extend_from_slice(&fragment.bytes);
        }
    }

    /// Parses an outbox row; `None` if it is damaged.
    pub fn from_row(mut row: &[u8]) -> Option<Self> {
        let mut batch = Self::new();
        while !row.is_empty() {
            let chat_id = take(&mut row)?;
            let count = decode_varint(&mut row).ok()?;
            let bytes = take(&mut row)?;
            let chat_id = std::str::from_utf8(chat_id).ok()?.to_owned();
            batch.append(EncodedBatch {
                len: bytes.len(),
                chats: BTreeMap::from([(
                    chat_id,
                    ChatFragment {
                        count,
                        bytes: bytes.to_vec(),
                    },
                )]),
            });
        }
        Some(batch)
    }
}

/// Takes a varint length and that many bytes.
fn take<'a>(row: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(row).ok()?).ok()?;
    if len > row.len() {
        return None;
    }
    let (taken, rest) = row.split_at(len);
    *row = rest;
    Some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::proto;
    use crate::sync::{Change, DeviceId, Message, Stamp};
    use prost::Message as _;

    fn op(wall_ms: u64, chat: &str, id: &str) -> Operation {
        Operation {
            stamp: Stamp {
                wall_ms,
                counter: 0,
                device: DeviceId([1; 16]),
            },
            change: Change::UpsertMessage(Message {
                chat_id: chat.into(),
                message_id: id.into(),
                text: "é".repeat(wall_ms as usize),
                payload: vec![0, 255],
                ..Message::default()
            }),
        }
    }

    /// Fragments of several recordings concatenate into exactly what encoding all the
    /// operations at once gives.
    #[test]
    fn appended_fragments_are_the_encoding_of_all_operations() {
        let first = [op(1, "b", "x"), op(2, "a", "y"), op(3, "b", "z")];
        let second = [op(200, "b", "w"), op(5, "c", "v")];
        let mut batch = EncodedBatch::from_operations(&first);
        batch.append(EncodedBatch::from_rows_roundtrip(&second));
        assert_eq!(batch.operation_count(), 5);
        let all: Vec<&Operation> = first.iter().chain(&second).collect();
        for (chat_id, fragment) in batch.chats() {
            let expected = proto::ChatOperations {
                chat_id: chat_id.to_owned(),
                operations: all
                    .iter()
                    .filter(|o| o.change.chat_id() == chat_id)
                    .map(|o| o.to_proto())
                    .collect(),
            };
            assert_eq!(
                EncodedBatch::chat_body(chat_id, fragment),
                expected.encode_to_vec()
            );
        }
        assert_eq!(
            batch.chats().map(|(c, _)| c).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn damaged_rows_are_refused() {
        let row = EncodedBatch::from_operations(&[op(3, "c", "m")]).to_row();
        for cut in 1..row.len() {
            assert_eq!(EncodedBatch::from_row(&row[..cut]), None, "cut at {cut}");
        }
        let mut bad_utf8 = row.clone();
        bad_utf8[1] = 0xff;
        assert_eq!(EncodedBatch::from_row(&bad_utf8), None);
        assert_eq!(EncodedBatch::from_row(&[]), Some(EncodedBatch::new()));
    }

    impl EncodedBatch {
        fn from_rows_roundtrip(operations: &[Operation]) -> Self {
            EncodedBatch::from_row(&EncodedBatch::from_operations(operations).to_row()).unwrap()
        }
    }
}
