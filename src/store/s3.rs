//! A store on any S3-compatible bucket: reqwest over rustls (ring provider, the platform's
//! certificate verifier), requests signed with SigV4 by rusty-s3 (presigned URLs), ListObjectsV2
//! pagination, multipart upload for large objects, retries with exponential backoff and full
//! jitter, and a bound on concurrent requests.
//!
//! Nothing here relies on conditional writes: chatvault writes every name once.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::sync::Semaphore;

use super::{ObjectInfo, ObjectStore, StoreError, StoreResult};

/// How presigned URLs stay valid (long enough for a slow part upload).
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Settings of an S3 store.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Region (Garage: the configured `s3_region`, often `garage`).
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading `/`; a trailing `/` is added if missing).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Attempts per request, first included.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt up to `max_backoff` (full jitter).
    pub base_backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: usize,
    /// Size of each part but the last (S3 requires at least 5 MiB).
    pub part_size: usize,
    /// Keys per ListObjectsV2 page (`None`: the server's default, 1000 on S3).
    pub list_page_size: Option<usize>,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl core::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// A configuration with default tuning; credentials from the standard AWS environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) when set.
    pub fn new(endpoint: &str, region: &str, bucket: &str) -> Self {
        let credentials = Credentials::from_env();
        S3Config {
            endpoint: endpoint.to_owned(),
            region: region.to_owned(),
            bucket: bucket.to_owned(),
            prefix: String::new(),
            path_style: false,
            access_key_id: credentials
                .as_ref()
                .map(|c| c.key().to_owned())
                .unwrap_or_default(),
            secret_access_key: credentials
                .as_ref()
                .map(|c| c.secret().to_owned())
                .unwrap_or_default(),
            session_token: credentials.and_then(|c| c.token().map(str::to_owned)),
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_concurrency: 8,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            list_page_size: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// An S3-compatible object store.
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    config: S3Config,
}

impl core::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.config)
            .finish()
    }
}

/// What one HTTP attempt produced.
enum Attempt {
    Done(reqwest::Response),
    Retry(StoreError),
}

/// TLS for `https` endpoints: rustls with the ring provider and the platform's verifier (the OS
/// trust store, as the app's other connections use). For plain `http` endpoints (a local test
/// server, a NAS on the LAN) no certificate is ever checked, so the platform's trust store is not
/// loaded: a device or container without one can still reach them. reqwest needs a configuration
/// either way (without one it would pick a default provider we do not compile in).
fn tls_config(https: bool) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Other(format!("TLS setup: {e}")))?;
    if !https {
        return Ok(builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth());
    }
    builder
        .with_platform_verifier()
        .map(|builder| builder.with_no_client_auth())
        .map_err(|e| StoreError::Other(format!("TLS setup: {e}")))
}

impl S3Store {
    /// A store for `config`. Fails on a malformed endpoint or missing credentials.
    pub fn new(config: S3Config) -> Result<S3Store, StoreError> {
        let endpoint: url::Url = config
            .endpoint
            .parse()
            .map_err(|e| StoreError::Other(format!("endpoint {:?}: {e}", config.endpoint)))?;
        let https = endpoint.scheme() == "https";
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| StoreError::Other(format!("bucket: {e}")))?;
        if config.access_key_id.is_empty() || config.secret_access_key.is_empty() {
            return Err(StoreError::AccessDenied(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        }
        let credentials = match &config.session_token {
            Some(token) => Credentials::new_with_token(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
                token.clone(),
            ),
            None => Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
            ),
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(https)?)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| StoreError::Other(format!("HTTP client: {e}")))?;
        let mut prefix = config.prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Store {
            bucket,
            credentials,
            prefix,
            client,
            permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            config,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Sends one request (built fresh for each attempt by `build`) with retries on 5xx, 429,
    /// timeouts and connection errors. Returns the final response, whatever its status.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> StoreResult<reqwest::Response> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Other("store closed".into()))?;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        Attempt::Retry(StoreError::Busy(format!("HTTP {status}")))
                    } else {
                        Attempt::Done(response)
                    }
                }
                Err(error) => Attempt::Retry(StoreError::Unavailable(describe(&error))),
            };
            match outcome {
                Attempt::Done(response) => return Ok(response),
                Attempt::Retry(error) if attempt >= self.config.max_attempts => return Err(error),
                Attempt::Retry(_) => tokio::time::sleep(self.backoff(attempt)).await,
            }
        }
    }

    /// Full jitter: a uniform delay in [0, min(max, base * 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        let mut random = [0u8; 4];
        if getrandom::fill(&mut random).is_err() {
            return ceiling;
        }
        let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
        ceiling.mul_f64(fraction)
    }

    async fn put_single(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        let body = bytes::Bytes::from(body);
        let response = self
            .send(|| {
                let url = self
                    .bucket
                    .put_object(Some(&self.credentials), key)
                    .sign(SIGNATURE_LIFETIME);
                self.client.put(url).body(body.clone())
            })
            .await?;
        expect_success(response, key).await.map(|_| ())
    }

    async fn put_multipart(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        let response = self
            .send(|| {
                let url = self
                    .bucket
                    .create_multipart_upload(Some(&self.credentials), key)
                    .sign(SIGNATURE_LIFETIME);
                self.client.post(url)
            })
            .await?;
        let text = expect_success(response, key).await?;
        let created = CreateMultipartUpload::parse_response(&text)
            .map_err(|e| StoreError::Other(format!("CreateMultipartUpload answer: {e}")))?;
        let upload_id = created.upload_id().to_owned();
        let result = self
            .upload_parts(key, &upload_id, bytes::Bytes::from(body))
            .await;
        if result.is_err() {
            // Leave no half upload behind (best effort; lifecycle rules catch the rest).
            let _ = self
                .send(|| {
                    let url = self
                        .bucket
                        .abort_multipart_upload(Some(&self.credentials), key, &upload_id)
                        .sign(SIGNATURE_LIFETIME);
                    self.client.delete(url)
                })
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: bytes::Bytes,
    ) -> StoreResult<()> {
        let part_size = self.config.part_size.max(1);
        let mut etags = Vec::new();
        for (index, start) in (0..body.len()).step_by(part_size).enumerate() {
            let part_number = u16::try_from(index + 1)
                .map_err(|_| StoreError::Other("object needs more than 65535 parts".into()))?;
            let part = body.slice(start..(start + part_size).min(body.len()));
            let response = self
                .send(|| {
                    let url = self
                        .bucket
                        .upload_part(Some(&self.credentials), key, part_number, upload_id)
                        .sign(SIGNATURE_LIFETIME);
                    self.client.put(url).body(part.clone())
                })
                .await?;
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            expect_success(response, key).await?;
            etags
                .push(etag.ok_or_else(|| StoreError::Other("part upload without an ETag".into()))?);
        }
        let response = self
            .send(|| {
                let action = self.bucket.complete_multipart_upload(
                    Some(&self.credentials),
                    key,
                    upload_id,
                    etags.iter().map(String::as_str),
                );
                let url = action.sign(SIGNATURE_LIFETIME);
                self.client.post(url).body(action.body())
            })
            .await?;
        let text = expect_success(response, key).await?;
        // S3 may answer 200 with an error document when completion fails late.
        if text.contains("<Error>") {
            return Err(StoreError::Other(format!(
                "CompleteMultipartUpload failed: {text}"
            )));
        }
        Ok(())
    }
}

fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps a final non-success status to an error; returns the body text on success.
async fn expect_success(response: reqwest::Response, key: &str) -> StoreResult<String> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| StoreError::Unavailable(describe(&e)))?;
    if status.is_success() {
        return Ok(text);
    }
    let detail = format!(
        "HTTP {status} for {key}: {}",
        text.chars().take(300).collect::<String>()
    );
    Err(match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => StoreError::AccessDenied(detail),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => StoreError::Busy(detail),
        _ => StoreError::Other(detail),
    })
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        let key = self.full_key(key);
        if body.len() >= self.config.multipart_threshold {
            self.put_multipart(&key, body).await
        } else {
            self.put_single(&key, body).await
        }
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let key = self.full_key(key);
        let response = self
            .send(|| {
                let url = self
                    .bucket
                    .get_object(Some(&self.credentials), &key)
                    .sign(SIGNATURE_LIFETIME);
                self.client.get(url)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(expect_success(response, &key)
                .await
                .err()
                .unwrap_or_else(|| StoreError::Other("unexpected status".into())));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        Ok(Some(body.to_vec()))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Option<Vec<u8>>> {
        if range.end <= range.start {
            // An empty range cannot be expressed as an HTTP Range; answer from existence alone.
            return Ok(self.get(key).await?.map(|_| Vec::new()));
        }
        let key = self.full_key(key);
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let response = self
            .send(|| {
                let url = self
                    .bucket
                    .get_object(Some(&self.credentials), &key)
                    .sign(SIGNATURE_LIFETIME);
                self.client.get(url).header("range", header.as_str())
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            // The range starts at or after the end of the object.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Some(Vec::new())),
            StatusCode::OK => {
                // A server that ignores Range sends the whole object: cut it here.
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| StoreError::Unavailable(describe(&e)))?;
                let end = (range.end as usize).min(body.len());
                let start = (range.start as usize).min(end);
                Ok(Some(body[start..end].to_vec()))
            }
            StatusCode::PARTIAL_CONTENT => Ok(Some(
                response
                    .bytes()
                    .await
                    .map_err(|e| StoreError::Unavailable(describe(&e)))?
                    .to_vec(),
            )),
            _ => Err(expect_success(response, &key)
                .await
                .err()
                .unwrap_or_else(|| StoreError::Other("unexpected status".into()))),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let response = self
                .send(|| {
                    let mut action: ListObjectsV2<'_> =
                        self.bucket.list_objects_v2(Some(&self.credentials));
                    action.with_prefix(full_prefix.as_str());
                    if let Some(size) = self.config.list_page_size {
                        action.with_max_keys(size);
                    }
                    if let Some(token) = &token {
                        action.with_continuation_token(token.as_str());
                    }
                    self.client
                        .request(Method::GET, action.sign(SIGNATURE_LIFETIME))
                })
                .await?;
            let text = expect_success(response, &full_prefix).await?;
            let page = ListObjectsV2::parse_response(&text)
                .map_err(|e| StoreError::Other(format!("ListObjectsV2 answer: {e}")))?;
            for object in page.contents {
                if let Some(key) = object.key.strip_prefix(&self.prefix) {
                    out.push(ObjectInfo {
                        key: key.to_owned(),
                        size: object.size.unwrap_or(0),
                    });
                }
            }
            match page.next_continuation_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let key = self.full_key(key);
        let response = self
            .send(|| {
                let url = self
                    .bucket
                    .delete_object(Some(&self.credentials), &key)
                    .sign(SIGNATURE_LIFETIME);
                self.client.delete(url)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        expect_success(response, &key).await.map(|_| ())
    }
}
