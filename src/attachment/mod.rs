//! Attachments: files (photos, voice notes, videos) stored beside the chat history, encrypted in
//! chunks, deduplicated inside the vault, uploaded and downloaded resumably.
//!
//! A message carries [`Attachment`] references; the reference (content id, exact size, file
//! name, MIME type) travels inside the message, so the bucket sees only padded, chunked
//! ciphertext under a keyed name. The content lives in chunk objects
//! `<vault id>-attachments/<content id hex>/<chunk index as 8 hex digits>`, one sealed STREAM
//! chunk each ([`stream`]). The attachments sit beside the vault's prefix (`<vault id>/`), not in
//! it, so a sync's LIST of the vault never pages through thousands of chunk names.
//!
//! **Chunk objects rather than S3 multipart uploads.** Each chunk is a whole object, so:
//! resuming needs no upload id kept across app restarts (one LIST shows which chunks exist);
//! every store, including the directory store and S3 servers with partial multipart support,
//! works the same; a download can fetch, check and write one chunk at a time with plain GETs; an
//! interrupted upload leaves only whole chunks, which garbage collection finds by listing (no
//! hidden multipart parts billed until an abort). The cost is one request per chunk (4 MiB by
//! default): about 250 PUTs per GiB, a fraction of a cent at S3 prices.

pub mod stream;
pub mod transfer;

use crate::error::{Error, Result};
use crate::format::proto;

pub use stream::ContentHasher;
pub use transfer::{TransferListener, TransferReport, download, upload};

/// Appended to the vault id to name the prefix that holds the vault's attachment chunks.
pub const ATTACHMENTS_SUFFIX: &str = "-attachments/";
/// The chunk size new attachments use (4 MiB): big enough that per-request costs stay small,
/// small enough that an interrupted transfer repeats little and a phone holds little in memory.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// The smallest chunk size a reference may name (64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// The largest chunk size a reference may name (8 MiB): chunk objects then stay below the S3
/// store's multipart threshold (16 MiB), so an interrupted chunk upload never leaves an
/// incomplete multipart upload behind, only whole chunks that garbage collection can see.
pub const MAX_CHUNK_SIZE: u32 = 8 * 1024 * 1024;
/// The largest attachment (1 TiB).
pub const MAX_ATTACHMENT_SIZE: u64 = 1 << 40;
/// Most chunks one attachment may have (2^20): bounds the per-chunk state an upload keeps (16
/// bytes each) whatever the chunk size.
pub const MAX_CHUNKS: u64 = 1 << 20;
/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 256;
/// Longest file name or MIME type accepted, in UTF-8 bytes.
pub const MAX_ATTACHMENT_LABEL_LEN: usize = 1024;

/// The keyed hash that names an attachment's content (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// 64 lower-case hex characters: the content's folder name in the bucket.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<ContentId> {
        crate::hex::decode(text).map(ContentId)
    }
}

impl core::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ContentId({})", self.to_hex())
    }
}

/// A reference to an attachment's content, as a message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The keyed hash of the content (and chunk size): names the chunks and derives their key.
    pub content_id: ContentId,
    /// The file's exact size in bytes.
    pub size: u64,
    /// The chunk size its stream was cut into.
    pub chunk_size: u32,
    /// The file's name as the sender saw it (not a path).
    pub name: String,
    /// Its MIME type, e.g. `image/jpeg` (may be empty).
    pub mime: String,
    /// The key epoch whose attachment key made the content id and derives the chunks' key (0 in
    /// vaults that never revoked a device): content attached after a revocation is under keys
    /// the revoked device cannot derive.
    pub key_epoch: u8,
}

impl Attachment {
    /// The bucket prefix of this content's chunks (relative to the attachments prefix).
    pub fn chunk_prefix(&self) -> String {
        format!("{}/", self.content_id.to_hex())
    }

    /// The name of chunk `index` (relative to the attachments prefix).
    pub fn chunk_name(&self, index: u64) -> String {
        format!("{}{index:08x}", self.chunk_prefix())
    }

    /// How many chunks its stream has.
    pub fn chunk_count(&self) -> u64 {
        stream::chunk_count(self.size, self.chunk_size)
    }

    /// Bytes its chunks take in the bucket (padding and per-chunk overhead included).
    pub fn stored_len(&self) -> u64 {
        stream::stored_len(self.size, self.chunk_size)
    }

    /// Checks the limits (a reference comes from another device: never trust it blindly).
    pub fn validate(&self) -> Result<()> {
        check_chunk_size(self.chunk_size)?;
        if self.size > MAX_ATTACHMENT_SIZE {
            return Err(Error::invalid_input(format!(
                "attachment of {} bytes exceeds {MAX_ATTACHMENT_SIZE}",
                self.size
            )));
        }
        if self.chunk_count() > MAX_CHUNKS {
            return Err(Error::invalid_input(format!(
                "an attachment of {} bytes in {}-byte chunks needs more than {MAX_CHUNKS} chunks; \
                 use a larger chunk size",
                self.size, self.chunk_size
            )));
        }
        for (what, value) in [("name", &self.name), ("mime", &self.mime)] {
            if value.len() > MAX_ATTACHMENT_LABEL_LEN {
                return Err(Error::invalid_input(format!(
                    "attachment {what} of {} bytes exceeds {MAX_ATTACHMENT_LABEL_LEN}",
                    value.len()
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn to_proto(&self) -> proto::AttachmentRef {
        proto::AttachmentRef {
            content_id: self.content_id.0.to_vec(),
            size: self.size,
            chunk_size: self.chunk_size,
            name: self.name.clone(),
            mime: self.mime.clone(),
            key_epoch: u32::from(self.key_epoch),
        }
    }

    pub(crate) fn from_proto(reference: proto::AttachmentRef) -> std::result::Result<Self, String> {
        let content_id = ContentId(
            reference
                .content_id
                .as_slice()
                .try_into()
                .map_err(|_| "attachment content id is not 32 bytes")?,
        );
        let attachment = Attachment {
            content_id,
            size: reference.size,
            chunk_size: reference.chunk_size,
            name: reference.name,
            mime: reference.mime,
            key_epoch: u8::try_from(reference.key_epoch)
                .map_err(|_| "attachment key epoch past 255")?,
        };
        attachment.validate().map_err(|e| e.to_string())?;
        Ok(attachment)
    }
}

/// Checks that `chunk_size` is a power of two from [`MIN_CHUNK_SIZE`] to [`MAX_CHUNK_SIZE`].
pub fn check_chunk_size(chunk_size: u32) -> Result<()> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) && chunk_size.is_power_of_two() {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "attachment chunk size {chunk_size} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
        )))
    }
}

/// The content id and index of a chunk object's name (`<hex>/<index>`, relative to the
/// attachments prefix), if it is one. Only the lower-case form writers produce parses: a
/// look-alike (upper-case hex, `+0000001`) is no chunk, so it can neither pass for a chunk an
/// upload then skips nor be collected as one.
pub fn parse_chunk_name(name: &str) -> Option<(ContentId, u64)> {
    let (id, index) = name.split_once('/')?;
    let lower_hex = |text: &str| {
        text.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if index.len() != 8 || !lower_hex(index) || !lower_hex(id) {
        return None;
    }
    Some((
        ContentId::from_hex(id)?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attachment {
        Attachment {
            content_id: ContentId([0xab; 32]),
            size: 5,
            chunk_size: DEFAULT_CHUNK_SIZE,
            name: "a.jpg".into(),
            mime: "image/jpeg".into(),
            key_epoch: 0,
        }
    }

    #[test]
    fn names_round_trip() {
        let attachment = sample();
        let name = attachment.chunk_name(10);
        assert_eq!(name, format!("{}/0000000a", "ab".repeat(32)));
        assert_eq!(parse_chunk_name(&name), Some((attachment.content_id, 10)));
        assert_eq!(parse_chunk_name("zz/00000000"), None);
        assert_eq!(
            parse_chunk_name(&format!("{}/0000000", "ab".repeat(32))),
            None
        );
        assert_eq!(parse_chunk_name("segments/x/00000000"), None);
        // Look-alikes of chunk 10 (found by the `names` fuzz target): the index with a sign or
        // upper-case digits, the content id in upper case.
        for look_alike in [
            format!("{}/+000000a", "ab".repeat(32)),
            format!("{}/0000000A", "ab".repeat(32)),
            format!("{}/0000000a", "AB".repeat(32)),
        ] {
            assert_eq!(parse_chunk_name(&look_alike), None, "{look_alike}");
        }
        assert_eq!(ContentId::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn references_are_checked() {
        let good = sample();
        assert_eq!(Attachment::from_proto(good.to_proto()), Ok(good.clone()));
        let mut short_id = good.to_proto();
        short_id.content_id.pop();
        assert!(Attachment::from_proto(short_id).is_err());
        for chunk_size in [
            0,
            1000,
            MIN_CHUNK_SIZE / 2,
            MAX_CHUNK_SIZE * 2,
            MIN_CHUNK_SIZE + 1,
        ] {
            let mut bad = good.clone();
            bad.chunk_size = chunk_size;
            assert!(bad.validate().is_err(), "{chunk_size}");
        }
        let mut huge = good.clone();
        huge.size = MAX_ATTACHMENT_SIZE + 1;
        assert!(huge.validate().is_err());
        let mut many_chunks = good.clone();
        many_chunks.chunk_size = MIN_CHUNK_SIZE;
        many_chunks.size = u64::from(MIN_CHUNK_SIZE) * MAX_CHUNKS;
        assert!(many_chunks.validate().is_ok());
        many_chunks.size += 1 << 20;
        assert!(many_chunks.validate().is_err());
        let mut long_name = good;
        long_name.name = "x".repeat(MAX_ATTACHMENT_LABEL_LEN + 1);
        assert!(long_name.validate().is_err());
    }
}
