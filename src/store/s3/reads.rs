//! GETs of objects and of ranges of objects, each bounded before its bytes arrive (see the
//! contract in `store/mod.rs` and the body reader in `body.rs`).

use std::ops::Range;
use std::sync::Arc;

use reqwest::StatusCode;
use rusty_s3::S3Action;

use super::body::Wanted;
use super::replies::{content_range_start, error_for, missing, partial_body_is_short};
use super::{Inner, SIGNATURE_LIFETIME};
use crate::store::{StoreError, StoreResult};

impl Inner {
    /// A GET of the object at the full key `key`, signed anew (each attempt of a retry).
    fn signed_get(&self, key: &str) -> reqwest::RequestBuilder {
        let url = self
            .bucket
            .get_object(self.creds(), key)
            .sign(SIGNATURE_LIFETIME);
        self.client.get(url)
    }

    /// A whole object of at most `max_len` bytes.
    pub(super) async fn get_object(
        self: &Arc<Self>,
        key: &str,
        max_len: u64,
    ) -> StoreResult<Option<Vec<u8>>> {
        let inner = self;
        let key = inner.full_key(key)?;
        let reply = inner
            .execute_reading(
                &key,
                || inner.signed_get(&key),
                |_| false,
                Wanted::Object { max: max_len },
            )
            .await?;
        match reply.status {
            StatusCode::OK => Ok(Some(Vec::from(reply.body))),
            StatusCode::NOT_FOUND => missing(&reply, &key),
            _ => Err(error_for(&reply, &key)),
        }
    }

    /// `range` of an object, clamped to its end; never more than the range's length is kept.
    pub(super) async fn get_object_range(
        self: &Arc<Self>,
        key: &str,
        range: Range<u64>,
    ) -> StoreResult<Option<Vec<u8>>> {
        let inner = self;
        let key = inner.full_key(key)?;
        // An empty range has no HTTP form: ask for one byte, to learn whether the object exists.
        let empty = range.end <= range.start;
        let header = if empty {
            "bytes=0-0".to_owned()
        } else {
            format!("bytes={}-{}", range.start, range.end - 1)
        };
        let wanted = range.end.saturating_sub(range.start);
        let reply = inner
            .execute_reading(
                &key,
                || inner.signed_get(&key).header("range", header.as_str()),
                // A body cut short of its Content-Range with a matching content-length (HTTP
                // cannot tell): ask again. More than asked was already cut to the range.
                |reply| {
                    reply.status == StatusCode::PARTIAL_CONTENT
                        && partial_body_is_short(reply)
                        && (reply.body.len() as u64) < wanted
                },
                Wanted::Range {
                    start: if empty { 0 } else { range.start },
                    len: wanted,
                },
            )
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => missing(&reply, &key),
            // The range starts at or after the end of the object (or the object is empty).
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Some(Vec::new())),
            _ if empty && reply.status.is_success() => Ok(Some(Vec::new())),
            StatusCode::PARTIAL_CONTENT => {
                let start = reply.header("content-range").and_then(content_range_start);
                if start.is_some_and(|start| start != range.start) {
                    return Err(StoreError::Other(format!(
                        "{key}: asked for {header}, got {:?}",
                        reply.header("content-range")
                    )));
                }
                Ok(Some(Vec::from(reply.body)))
            }
            // A server that ignores Range sends the whole object: the body reader kept only the
            // range (and read no further than its end).
            StatusCode::OK => Ok(Some(Vec::from(reply.body))),
            _ => Err(error_for(&reply, &key)),
        }
    }
}
