//! Reading response bodies within a bound, chunk by chunk as they arrive, so that what a server
//! sends (a huge object, a body that never ends, an error page of any size) never decides how much
//! memory the store takes. The bound is checked against `Content-Length` before any body byte is
//! read, and again against the bytes that actually arrive; reading stops at the bound and the
//! rest of the body is dropped unread (the connection is then closed, not reused).

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;

use super::super::StoreError;
use super::replies::{Failure, classify};

/// Most bytes of an error document kept. S3's are under 1 KiB; only `<Code>` and `<Message>` are
/// read from them, so a longer one is cut here rather than refused.
pub(super) const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Most bytes of a successful reply that is not an object's content (a ListObjectsV2 page, the
/// answer to an upload). A page of 1,000 keys of 1,024 bytes each, XML-escaped, stays well below
/// this; a longer reply fails with [`StoreError::TooLarge`].
pub(super) const MAX_REPLY_BODY: u64 = 16 * 1024 * 1024;

/// The most memory reserved up front from a `Content-Length` (the rest grows as bytes arrive, so
/// a server announcing a large body and sending nothing costs nothing).
const MAX_RESERVED: u64 = 1024 * 1024;

/// What the caller wants of a reply's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wanted {
    /// A reply that is not an object's content: at most [`MAX_REPLY_BODY`] bytes.
    Reply,
    /// A whole object of at most `max` bytes.
    Object {
        /// The most bytes accepted.
        max: u64,
    },
    /// Bytes `start..start + len` of an object (a ranged GET).
    Range {
        /// Where the range starts in the object.
        start: u64,
        /// Its length.
        len: u64,
    },
}

/// How one body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// All of it, which must be at most `max` bytes: more fails with `TooLarge`.
    Whole { max: u64 },
    /// Bytes `skip..skip + len` of it: reading stops there and the rest is never read. Not an
    /// error when the body is longer (a server sending more than a range asked for, an error
    /// page longer than we care to read).
    Window { skip: u64, len: u64 },
}

/// How to read the body of a reply with `status` to a request that wanted `wanted`.
fn keep(wanted: Wanted, status: StatusCode) -> Keep {
    if !status.is_success() {
        return Keep::Window {
            skip: 0,
            len: MAX_ERROR_BODY,
        };
    }
    match wanted {
        Wanted::Reply => Keep::Whole {
            max: MAX_REPLY_BODY,
        },
        Wanted::Object { max } => Keep::Whole { max },
        // A server that ignores `Range` sends the whole object from its first byte: skip to the
        // range, keep its length, and stop (at most `start + len` bytes cross the network).
        Wanted::Range { start, len } if status == StatusCode::OK => {
            Keep::Window { skip: start, len }
        }
        Wanted::Range { len, .. } => Keep::Window { skip: 0, len },
    }
}

/// Reads the body of `response` as `wanted` asks (see [`Keep`]), giving up with a transient
/// `Unavailable` when no byte arrives for `idle`. `what` names the object in errors.
///
/// - A body announced (`Content-Length`) or found longer than a whole-body bound: `TooLarge`,
///   fatal (the same object stays too large).
/// - A body that ends before its `Content-Length` (a connection cut mid-body): transient.
pub(super) async fn read(
    mut response: reqwest::Response,
    wanted: Wanted,
    what: &str,
    idle: Duration,
) -> Result<Bytes, Failure> {
    let keep = keep(wanted, response.status());
    let declared = response.content_length();
    let (skip, len, whole) = match keep {
        Keep::Whole { max } => (0, max, true),
        Keep::Window { skip, len } => (skip, len, false),
    };
    let too_large = || {
        Failure::Fatal(StoreError::TooLarge {
            key: what.to_owned(),
            limit: len,
        })
    };
    if whole && declared.is_some_and(|declared| declared > len) {
        return Err(too_large());
    }
    let end = skip.saturating_add(len);
    let reserve = declared
        .unwrap_or(0)
        .saturating_sub(skip)
        .min(len)
        .min(MAX_RESERVED);
    let mut body = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    // Body bytes that have arrived, kept or not.
    let mut received = 0u64;
    while whole || received < end {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => {
                return Err(Failure::Transient(StoreError::Unavailable(format!(
                    "{what}: no byte of the body arrived for {} s",
                    idle.as_secs_f64()
                ))));
            }
            Ok(Err(error)) => return Err(classify(error)),
            Ok(Ok(None)) => {
                if let Some(declared) = declared.filter(|&declared| received < declared) {
                    return Err(Failure::Transient(StoreError::Unavailable(format!(
                        "{what}: the body ended after {received} of its {declared} bytes"
                    ))));
                }
                break;
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        let chunk_start = received;
        received = received.saturating_add(chunk.len() as u64);
        if whole && received > len {
            return Err(too_large());
        }
        // The part of this chunk inside `skip..end`.
        let in_chunk = |offset: u64| {
            usize::try_from(offset.saturating_sub(chunk_start))
                .unwrap_or(usize::MAX)
                .min(chunk.len())
        };
        let (from, to) = (in_chunk(skip), in_chunk(end));
        if from < to {
            body.extend_from_slice(&chunk[from..to]);
        }
    }
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_kept_whole_only_when_the_caller_asked_for_a_whole_body() {
        let object = Wanted::Object { max: 10 };
        let range = Wanted::Range { start: 5, len: 3 };
        assert_eq!(keep(object, StatusCode::OK), Keep::Whole { max: 10 });
        assert_eq!(
            keep(Wanted::Reply, StatusCode::OK),
            Keep::Whole {
                max: MAX_REPLY_BODY
            }
        );
        assert_eq!(
            keep(range, StatusCode::PARTIAL_CONTENT),
            Keep::Window { skip: 0, len: 3 }
        );
        // Range ignored: the whole object comes, from its first byte.
        assert_eq!(
            keep(range, StatusCode::OK),
            Keep::Window { skip: 5, len: 3 }
        );
        // Error pages are cut, never refused: their code and message are what matter.
        for status in [StatusCode::NOT_FOUND, StatusCode::SERVICE_UNAVAILABLE] {
            for wanted in [object, range, Wanted::Reply] {
                assert_eq!(
                    keep(wanted, status),
                    Keep::Window {
                        skip: 0,
                        len: MAX_ERROR_BODY
                    }
                );
            }
        }
    }
}
