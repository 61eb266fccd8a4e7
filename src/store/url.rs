//! Store URLs: how an app or the CLI names a store in one string.
//!
//! | URL | store |
//! | --- | --- |
//! | `file:///absolute/path` | [`DirectoryStore`](super::DirectoryStore) rooted at the path |
//! | `s3://BUCKET[/PREFIX][?PARAMS]` | [`S3Store`](super::S3Store) |
//! | `mem://` | a fresh, empty [`MemoryStore`](super::MemoryStore) (tests) |
//!
//! S3 parameters (all optional):
//!
//! | parameter | meaning | default |
//! | --- | --- | --- |
//! | `endpoint` | endpoint URL, e.g. `http://127.0.0.1:3900` | `https://s3.<region>.amazonaws.com` |
//! | `region` | signing region (Garage: its `s3_region`) | `us-east-1` |
//! | `path_style` | `true`: `endpoint/bucket/key`; `false`: `bucket.endpoint/key` | `false` |
//! | `page_size` | keys per ListObjectsV2 page | server default (1000) |
//! | `max_attempts` | attempts per request, first included | 5 |
//! | `concurrency` | requests in flight | 8 |
//! | `multipart_threshold` | bytes from which uploads use multipart | 16 MiB |
//! | `part_size` | multipart part size in bytes | 8 MiB |
//!
//! Credentials never go in URLs (they end up in logs and shell history): the S3 store reads
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, or an app passes an
//! [`S3Config`](super::S3Config) directly.
//!
//! Example: `s3://chats/anna?endpoint=http://127.0.0.1:3900&region=garage&path_style=true`.

use std::path::PathBuf;
use std::sync::Arc;

use super::{DirectoryStore, MemoryStore, ObjectStore, S3Config, S3Store, StoreError};

fn bad(url: &str, why: impl core::fmt::Display) -> StoreError {
    StoreError::Other(format!("store URL {url:?}: {why}"))
}

/// Parses an `s3://` URL into a configuration (credentials from the environment).
pub fn parse_s3_url(url: &str) -> Result<S3Config, StoreError> {
    let parsed = url::Url::parse(url).map_err(|e| bad(url, e))?;
    if parsed.scheme() != "s3" {
        return Err(bad(url, "not an s3:// URL"));
    }
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| bad(url, "missing bucket name"))?;
    let mut region = "us-east-1".to_owned();
    let mut endpoint = None;
    let mut path_style = false;
    let mut tuning: Vec<(String, String)> = Vec::new();
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "endpoint" => endpoint = Some(value.into_owned()),
            "region" => region = value.into_owned(),
            "path_style" => {
                path_style = match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(bad(url, format!("path_style={other}: use true or false")));
                    }
                }
            }
            "page_size" | "max_attempts" | "concurrency" | "multipart_threshold" | "part_size" => {
                tuning.push((name.into_owned(), value.into_owned()))
            }
            "access_key_id" | "secret_access_key" | "session_token" => {
                return Err(bad(
                    url,
                    "credentials do not belong in URLs: use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
                ));
            }
            other => return Err(bad(url, format!("unknown parameter {other:?}"))),
        }
    }
    let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let mut config = S3Config::new(&endpoint, &region, bucket);
    config.path_style = path_style;
    config.prefix = parsed.path().trim_start_matches('/').to_owned();
    for (name, value) in tuning {
        let number: usize = value
            .parse()
            .map_err(|_| bad(url, format!("{name}={value} is not a number")))?;
        if number == 0 {
            return Err(bad(url, format!("{name} must be positive")));
        }
        match name.as_str() {
            "page_size" => config.list_page_size = Some(number),
            "max_attempts" => config.max_attempts = u32::try_from(number).unwrap_or(u32::MAX),
            "concurrency" => config.max_concurrency = number,
            "multipart_threshold" => config.multipart_threshold = number,
            _ => config.part_size = number,
        }
    }
    Ok(config)
}

/// Opens the store a URL names.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad(url, "file URLs need an absolute path (file:///...)"));
        }
        return Ok(Arc::new(DirectoryStore::new(PathBuf::from(path))));
    }
    if url == "mem://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(S3Store::new(parse_s3_url(url)?)?));
    }
    Err(bad(
        url,
        "expected file:///path, s3://bucket/prefix?... or mem://",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse_with_defaults_and_parameters() {
        let config = parse_s3_url(
            "s3://chats/anna/phone?endpoint=http://127.0.0.1:3900&region=garage&path_style=true&page_size=2&part_size=5242880",
        )
        .unwrap();
        assert_eq!(config.bucket, "chats");
        assert_eq!(config.prefix, "anna/phone");
        assert_eq!(config.endpoint, "http://127.0.0.1:3900");
        assert_eq!(config.region, "garage");
        assert!(config.path_style);
        assert_eq!(config.list_page_size, Some(2));
        assert_eq!(config.part_size, 5 * 1024 * 1024);
        let plain = parse_s3_url("s3://b").unwrap();
        assert_eq!(plain.endpoint, "https://s3.us-east-1.amazonaws.com");
        assert_eq!(plain.prefix, "");
        assert!(!plain.path_style);
    }

    #[test]
    fn bad_urls_are_explained() {
        for url in [
            "s3://",
            "s3://b?path_style=maybe",
            "s3://b?page_size=0",
            "s3://b?colour=blue",
            "s3://b?secret_access_key=x",
            "http://b",
        ] {
            assert!(parse_s3_url(url).is_err(), "{url}");
        }
        for url in ["file://relative", "ftp://x", ""] {
            assert!(open_store(url).is_err(), "{url}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut config = parse_s3_url("s3://b").unwrap();
        config.secret_access_key = "very-secret".into();
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
