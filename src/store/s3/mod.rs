//! A store on any S3-compatible bucket.
//!
//! - HTTP: reqwest over rustls with the `ring` provider and the platform's certificate verifier
//!   (no aws-lc). Redirects are not followed: a presigned request cannot be replayed elsewhere,
//!   and a redirect from S3 means a wrong region or endpoint, which is reported as such.
//! - Signing: SigV4 presigned URLs from rusty-s3 (signed afresh for every attempt), with session
//!   tokens for temporary credentials.
//! - ListObjectsV2 follows every continuation token; page size is configurable.
//! - Objects of at least [`S3Config::multipart_threshold`] bytes are uploaded in parts, in
//!   parallel; a failed upload is aborted so no parts are left behind to be billed.
//! - Every request is retried on 5xx, 429, S3's `RequestTimeout`/`InternalError` answers,
//!   timeouts and connection errors, with exponential backoff and full jitter (and at least what
//!   a `Retry-After` header asks, within [`S3Config::max_backoff`]), at most
//!   [`S3Config::max_attempts`] times. Final failures map to [`StoreError`]: 401/403 →
//!   `AccessDenied`, 5xx/429 → `Busy`, connection problems, timeouts and bodies cut short →
//!   `Unavailable`. Never retried, because the same request would fail the same way: other 4xx
//!   answers, an object past its bound (`TooLarge`), and a refused TLS certificate (which fails
//!   at once with `UntrustedServer`).
//! - No error the store returns carries a presigned URL's query (signature, credential, session
//!   token) or a credential: URLs are left out of transport errors, and every error passes a
//!   redactor on its way out (`replies.rs`).
//! - Every body is read as it arrives, within a bound fixed before its first byte (`body.rs`):
//!   an object GET by the caller's `max_len`, refused by `Content-Length` before reading or as
//!   soon as the bytes received pass the bound (`TooLarge`); a ranged GET by the range's
//!   length; a listing page or upload answer by 16 MiB; an error document cut at 64 KiB. A body
//!   shorter than its `Content-Length`, or silent for [`S3Config::read_idle_timeout`], fails the
//!   attempt as `Unavailable` and is retried like a reset.
//! - Every HTTP request handed to the network is counted ([`ObjectStore::requests_sent`]).
//! - A semaphore bounds the requests in flight ([`S3Config::max_concurrency`]); a permit is held
//!   while a response body is read, and released while waiting to retry.
//!
//! Nothing here relies on conditional writes: chatvault writes every name once.
//!
//! On Android, `rustls-platform-verifier` must be initialised from the app (its
//! `android::init_*` functions, plus its AAR on the classpath) before the first HTTPS request.

mod body;
mod reads;
mod replies;
mod timestamp;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use rusty_s3::actions::{CompleteMultipartUploadResponse, CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::sync::Semaphore;

use super::{ObjectInfo, ObjectStore, StoreError, StoreResult, validate_key};
use body::Wanted;
use replies::{
    Failure, Redactor, Reply, classify, error_for, is_transient, listing_is_whole, missing,
};
use timestamp::parse_timestamp_ms;

/// How long presigned URLs stay valid (long enough for a slow part upload).
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// S3 accepts at most this many parts per multipart upload.
const MAX_PARTS: usize = 10_000;

/// Settings of an S3 store. `Debug` never shows the secret key or session token; `Display`
/// (in `url.rs`) prints the equivalent `s3://` URL, which holds no credentials.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Signing region (Garage: its configured `s3_region`, often `garage`).
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading `/`; a trailing `/` is added if missing).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`). Garage and most self-hosted stores need path style.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
    /// Session token for temporary credentials (never printed).
    pub session_token: Option<String>,
    /// Attempts per request, first included (default 5).
    pub max_attempts: u32,
    /// First retry delay ceiling; doubles each attempt up to `max_backoff` (full jitter: the
    /// actual delay is uniform between zero and the ceiling). Default 100 ms.
    pub base_backoff: Duration,
    /// Longest delay between attempts (default 5 s).
    pub max_backoff: Duration,
    /// Requests in flight at once (default 8).
    pub max_concurrency: usize,
    /// Objects at least this large are uploaded in parts (default 16 MiB).
    pub multipart_threshold: usize,
    /// Size of each part but the last (default 8 MiB; S3 requires at least 5 MiB, Garage does
    /// not). Grown automatically when an object would need more than 10,000 parts.
    pub part_size: usize,
    /// Keys per ListObjectsV2 page (`None`: the server's default, 1000 on S3).
    pub list_page_size: Option<usize>,
    /// Timeout to establish a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Timeout of one attempt of one request, body included (default 120 s).
    pub request_timeout: Duration,
    /// Longest wait for the next bytes of a response body once it has started (default 30 s):
    /// a body that stalls this long fails the attempt with a retryable `Unavailable`, long before
    /// `request_timeout`. It does not cover sending a request or waiting for the answer's
    /// headers (reqwest's own `read_timeout` would, and would cut slow uploads short).
    pub read_idle_timeout: Duration,
}

impl Drop for S3Config {
    /// Wipes this copy of the secret (the signing credentials hold their own copy for the
    /// store's lifetime).
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret_access_key.zeroize();
        if let Some(token) = self.session_token.as_mut() {
            token.zeroize();
        }
    }
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
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_attempts", &self.max_attempts)
            .field("max_concurrency", &self.max_concurrency)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("list_page_size", &self.list_page_size)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// A configuration with default tuning, and credentials from the standard AWS environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and `AWS_SESSION_TOKEN` for
    /// temporary credentials) when they are set; empty otherwise (see
    /// [`with_credentials`](Self::with_credentials)).
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
            read_idle_timeout: Duration::from_secs(30),
        }
    }

    /// The same configuration with explicit credentials (an app passes what it keeps in the
    /// Keychain / Keystore; `session_token` for temporary credentials).
    pub fn with_credentials(
        mut self,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> Self {
        self.access_key_id = access_key_id.to_owned();
        self.secret_access_key = secret_access_key.to_owned();
        self.session_token = session_token.map(str::to_owned);
        self
    }
}

/// An S3-compatible object store. Cloning is cheap and shares the connection pool and the
/// bound on requests in flight.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Bucket,
    credentials: Credentials,
    /// The configured prefix, with a trailing `/` unless empty.
    prefix: String,
    client: reqwest::Client,
    permits: Semaphore,
    /// HTTP requests handed to the network, retries included.
    requests_sent: AtomicU64,
    /// Keeps credentials and signed URL queries out of returned errors.
    redactor: Redactor,
    config: S3Config,
}

impl core::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// What a store built from `config` hides from its errors.
fn redactor_for(config: &S3Config) -> Redactor {
    Redactor::new(&[
        &config.access_key_id,
        &config.secret_access_key,
        config.session_token.as_deref().unwrap_or(""),
    ])
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
    /// A store for `config`. Fails with `Other` on a malformed endpoint or bucket name and with
    /// `AccessDenied` when no credentials are configured. Touches no network.
    pub fn new(config: S3Config) -> Result<S3Store, StoreError> {
        let redactor = redactor_for(&config);
        Self::open(config).map_err(|e| redactor.error(e))
    }

    fn open(config: S3Config) -> Result<S3Store, StoreError> {
        if let Some(why) = super::url::unparseable(&config.endpoint) {
            return Err(StoreError::Other(format!("endpoint: {why}")));
        }
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
        .map_err(|e| StoreError::Other(format!("bucket {:?}: {e}", config.bucket)))?;
        if config.access_key_id.is_empty() || config.secret_access_key.is_empty() {
            return Err(StoreError::AccessDenied(
                "no S3 credentials: pass them in the configuration or set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY"
                    .into(),
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
            // S3 closes idle connections after ~20 s; do not keep them longer.
            .pool_idle_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chatvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Other(format!("HTTP client: {}", replies::describe(e))))?;
        let mut prefix = config.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Store {
            inner: Arc::new(Inner {
                bucket,
                credentials,
                prefix,
                client,
                permits: Semaphore::new(config.max_concurrency.max(1)),
                requests_sent: AtomicU64::new(0),
                redactor: redactor_for(&config),
                config,
            }),
        })
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &S3Config {
        &self.inner.config
    }

    /// Whether the bucket honours conditional writes (`If-None-Match: *` on PUT): writes a
    /// fresh probe object twice under `probe-conditional-write/` and expects the second write to
    /// be refused with 412, then deletes it. Garage and some hosted stores ignore the header
    /// (`false`); AWS S3 and moto honour it (`true`). chatvault never depends on the answer;
    /// it only allows an extra guard where conditional writes work.
    ///
    /// # Errors
    ///
    /// As [`ObjectStore::put`] when the probe cannot be written at all.
    pub async fn probe_conditional_writes(&self) -> StoreResult<bool> {
        self.probe().await.map_err(|e| self.inner.redactor.error(e))
    }

    async fn probe(&self) -> StoreResult<bool> {
        let inner = &self.inner;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Other(format!("no randomness: {e}")))?;
        let name = crate::hex::encode(&nonce);
        let key = inner.full_key(&format!("probe-conditional-write/{name}"))?;
        let mut statuses = Vec::new();
        for body in [&b"first"[..], &b"second"[..]] {
            let body = Bytes::from_static(body);
            let reply = inner
                .execute(
                    &key,
                    || {
                        let url = inner
                            .bucket
                            .put_object(inner.creds(), &key)
                            .sign(SIGNATURE_LIFETIME);
                        inner
                            .client
                            .put(url)
                            .header("if-none-match", "*")
                            .body(body.clone())
                    },
                    |_| false,
                )
                .await?;
            statuses.push(reply.status);
            if !reply.status.is_success() && reply.status != StatusCode::PRECONDITION_FAILED {
                return Err(error_for(&reply, &key));
            }
        }
        let _ = inner
            .delete_object(key.strip_prefix(&inner.prefix).unwrap_or(&key))
            .await;
        Ok(statuses.first().is_some_and(StatusCode::is_success)
            && statuses.get(1) == Some(&StatusCode::PRECONDITION_FAILED))
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> StoreResult<String> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn creds(&self) -> Option<&Credentials> {
        Some(&self.credentials)
    }

    /// Sends one request (built and signed afresh for each attempt by `build`), reading its
    /// reply (a successful one within [`body::MAX_REPLY_BODY`]), with retries on transient
    /// failures and on replies `retry_also` accepts. Returns the final reply whatever its
    /// status, unless it is still transient after the last attempt.
    async fn execute(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        retry_also: impl Fn(&Reply) -> bool,
    ) -> StoreResult<Reply> {
        self.execute_reading(what, build, retry_also, Wanted::Reply)
            .await
    }

    /// [`execute`](Self::execute), reading the body of each reply as `wanted` says (see
    /// `body.rs`): a body past its bound fails at once with `TooLarge`, one cut short is retried.
    async fn execute_reading(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        retry_also: impl Fn(&Reply) -> bool,
        wanted: Wanted,
    ) -> StoreResult<Reply> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (error, asked_delay) = match self.attempt(what, &build, wanted).await {
                Ok(reply) if is_transient(&reply) || retry_also(&reply) => {
                    let asked = reply
                        .header("retry-after")
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let error = match error_for(&reply, what) {
                        // A success retried: its answer was cut short (a listing page).
                        StoreError::Other(detail)
                            if reply.status.is_success() && reply.code().is_none() =>
                        {
                            StoreError::Busy(format!("{detail}, answer cut short"))
                        }
                        StoreError::Other(detail) => StoreError::Busy(detail),
                        error => error,
                    };
                    (error, asked)
                }
                Ok(reply) => return Ok(reply),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Transient(error)) => (error, None),
            };
            if attempt >= self.config.max_attempts {
                return Err(match error {
                    StoreError::Unavailable(detail) => StoreError::Unavailable(format!(
                        "{what}: {detail} (after {attempt} attempts)"
                    )),
                    StoreError::Busy(detail) => {
                        StoreError::Busy(format!("{detail} (after {attempt} attempts)"))
                    }
                    error => error,
                });
            }
            let delay = self.backoff(attempt);
            let delay = match asked_delay {
                Some(asked) => delay.max(asked.min(self.config.max_backoff)),
                None => delay,
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt, holding a permit until the body is read (within its bound).
    async fn attempt(
        &self,
        what: &str,
        build: &impl Fn() -> reqwest::RequestBuilder,
        wanted: Wanted,
    ) -> Result<Reply, Failure> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Fatal(StoreError::Other("store closed".into())))?;
        // Counted before sending: an attempt that fails on the way still went to the network.
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        let response = build().send().await.map_err(classify)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = body::read(response, wanted, what, self.config.read_idle_timeout).await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Full jitter: a uniform delay in [0, min(max_backoff, base_backoff * 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.config.max_backoff);
        let mut random = [0u8; 4];
        if getrandom::fill(&mut random).is_err() {
            return ceiling / 2;
        }
        let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
        ceiling.mul_f64(fraction)
    }

    /// One PUT; with `if_absent`, sent with `If-None-Match: *`. Returns whether it wrote:
    /// `false` only when the service honours the header and refused with 412.
    async fn put_single(&self, key: &str, body: Bytes, if_absent: bool) -> StoreResult<bool> {
        let reply = self
            .execute(
                key,
                || {
                    let url = self
                        .bucket
                        .put_object(self.creds(), key)
                        .sign(SIGNATURE_LIFETIME);
                    let request = self.client.put(url).body(body.clone());
                    if if_absent {
                        request.header("if-none-match", "*")
                    } else {
                        request
                    }
                },
                |_| false,
            )
            .await?;
        if reply.status.is_success() {
            Ok(true)
        } else if if_absent && reply.status == StatusCode::PRECONDITION_FAILED {
            // Also what a retry of this very PUT gets when its first answer was lost: the
            // caller compares the object with its bytes.
            Ok(false)
        } else {
            Err(error_for(&reply, key))
        }
    }

    async fn put_multipart(self: &Arc<Self>, key: &str, body: Bytes) -> StoreResult<()> {
        let reply = self
            .execute(
                key,
                || {
                    let url = self
                        .bucket
                        .create_multipart_upload(self.creds(), key)
                        .sign(SIGNATURE_LIFETIME);
                    self.client.post(url)
                },
                |_| false,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(error_for(&reply, key));
        }
        let created = CreateMultipartUpload::parse_response(reply.text())
            .map_err(|e| StoreError::Other(format!("{key}: CreateMultipartUpload answer: {e}")))?;
        let upload_id = created.upload_id().to_owned();
        let result = self.upload_parts(key, &upload_id, body).await;
        if result.is_err() {
            // Leave no parts behind to be billed (best effort; lifecycle rules catch the rest).
            let _ = self
                .execute(
                    key,
                    || {
                        let url = self
                            .bucket
                            .abort_multipart_upload(self.creds(), key, &upload_id)
                            .sign(SIGNATURE_LIFETIME);
                        self.client.delete(url)
                    },
                    |_| false,
                )
                .await;
        }
        result
    }

    /// Uploads the parts in parallel (bounded by the store's semaphore), then completes.
    async fn upload_parts(
        self: &Arc<Self>,
        key: &str,
        upload_id: &str,
        body: Bytes,
    ) -> StoreResult<()> {
        let part_size = self
            .config
            .part_size
            .max(1)
            .max(body.len().div_ceil(MAX_PARTS));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, start) in (0..body.len()).step_by(part_size).enumerate() {
            let part = body.slice(start..(start + part_size).min(body.len()));
            let part_number = u16::try_from(index + 1)
                .map_err(|_| StoreError::Other(format!("{key}: too many parts")))?;
            let inner = Arc::clone(self);
            let (key, upload_id) = (key.to_owned(), upload_id.to_owned());
            tasks.spawn(async move {
                let what = format!("{key} part {part_number}");
                let reply = inner
                    .execute(
                        &what,
                        || {
                            let url = inner
                                .bucket
                                .upload_part(inner.creds(), &key, part_number, &upload_id)
                                .sign(SIGNATURE_LIFETIME);
                            inner.client.put(url).body(part.clone())
                        },
                        |_| false,
                    )
                    .await?;
                if !reply.status.is_success() {
                    return Err(error_for(&reply, &what));
                }
                let etag = reply
                    .header("etag")
                    .map(str::to_owned)
                    .ok_or_else(|| StoreError::Other(format!("{what}: no ETag in the answer")))?;
                Ok((part_number, etag))
            });
        }
        let mut etags = Vec::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            // An error returns at once; dropping `tasks` cancels the other parts.
            let (part_number, etag) = joined
                .map_err(|e| StoreError::Other(format!("{key}: part task failed: {e}")))??;
            etags.push((part_number, etag));
        }
        etags.sort_unstable_by_key(|(number, _)| *number);
        self.complete(key, upload_id, &etags, body.len()).await
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[(u16, String)],
        len: usize,
    ) -> StoreResult<()> {
        let reply = self
            .execute(
                key,
                || {
                    let action = self.bucket.complete_multipart_upload(
                        self.creds(),
                        key,
                        upload_id,
                        etags.iter().map(|(_, etag)| etag.as_str()),
                    );
                    let url = action.sign(SIGNATURE_LIFETIME);
                    self.client.post(url).body(action.body())
                },
                // S3 may answer 200 and fail late, with an error document worth retrying.
                |reply| {
                    reply.status.is_success()
                        && matches!(
                            reply.code(),
                            Some("InternalError" | "SlowDown" | "ServiceUnavailable")
                        )
                },
            )
            .await?;
        if reply.status.is_success() {
            return match CompleteMultipartUploadResponse::parse(reply.text()) {
                Ok(_) => Ok(()),
                Err(_) if reply.code().is_some() => Err(StoreError::Other(format!(
                    "{key}: CompleteMultipartUpload failed: {}",
                    reply.text().chars().take(300).collect::<String>()
                ))),
                Err(e) => Err(StoreError::Other(format!(
                    "{key}: CompleteMultipartUpload answer: {e}"
                ))),
            };
        }
        // An earlier attempt may have completed the upload and lost its answer: then the upload
        // is gone but the object is there, whole.
        if reply.status == StatusCode::NOT_FOUND
            && reply.code() == Some("NoSuchUpload")
            && self.object_len(key).await? == Some(len as u64)
        {
            return Ok(());
        }
        Err(error_for(&reply, key))
    }

    /// The size of an object (HEAD), `None` if missing.
    async fn object_len(&self, key: &str) -> StoreResult<Option<u64>> {
        let reply = self
            .execute(
                key,
                || {
                    let url = self
                        .bucket
                        .head_object(self.creds(), key)
                        .sign(SIGNATURE_LIFETIME);
                    self.client.head(url)
                },
                |_| false,
            )
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(reply.header("content-length").and_then(|v| v.parse().ok())),
            _ => Err(error_for(&reply, key)),
        }
    }
}

/// The store's operations, with every error redacted on its way out.
impl Inner {
    /// Writes an object, in parts from the multipart threshold on. With `if_absent`, a
    /// single PUT carries `If-None-Match: *` (multipart uploads go unconditioned: objects
    /// written once are segments and checkpoint objects, far below the threshold).
    async fn put_object(
        self: &Arc<Self>,
        key: &str,
        body: Vec<u8>,
        if_absent: bool,
    ) -> StoreResult<bool> {
        let inner = self;
        let key = inner.full_key(key)?;
        let body = Bytes::from(body);
        if body.len() >= inner.config.multipart_threshold.max(1) {
            inner.put_multipart(&key, body).await.map(|()| true)
        } else {
            inner.put_single(&key, body, if_absent).await
        }
    }

    async fn list_objects(self: &Arc<Self>, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let inner = self;
        let full_prefix = format!("{}{prefix}", inner.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let reply = inner
                .execute(
                    &full_prefix,
                    || {
                        let mut action: ListObjectsV2<'_> =
                            inner.bucket.list_objects_v2(inner.creds());
                        if !full_prefix.is_empty() {
                            action.with_prefix(full_prefix.as_str());
                        }
                        if let Some(size) = inner.config.list_page_size {
                            action.with_max_keys(size);
                        }
                        if let Some(token) = &token {
                            action.with_continuation_token(token.as_str());
                        }
                        inner
                            .client
                            .request(Method::GET, action.sign(SIGNATURE_LIFETIME))
                    },
                    // A page cut short (with a content-length that matches the cut, so HTTP
                    // cannot tell) may still parse, with keys and the continuation token
                    // missing: ask again rather than take a partial listing for the bucket.
                    |reply| reply.status.is_success() && !listing_is_whole(reply),
                )
                .await?;
            if !reply.status.is_success() {
                return Err(error_for(&reply, &format!("list {full_prefix:?}")));
            }
            let page = ListObjectsV2::parse_response(reply.text()).map_err(|e| {
                StoreError::Other(format!("list {full_prefix:?}: ListObjectsV2 answer: {e}"))
            })?;
            for object in page.contents {
                if let Some(key) = object.key.strip_prefix(&inner.prefix)
                    && key.starts_with(prefix)
                {
                    out.push(ObjectInfo {
                        key: key.to_owned(),
                        size: object.size.unwrap_or(0),
                        modified_ms: object.last_modified.as_deref().and_then(parse_timestamp_ms),
                    });
                }
            }
            match page.next_continuation_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                Some(_) => {
                    return Err(StoreError::Other(format!(
                        "list {full_prefix:?}: the server repeated its continuation token"
                    )));
                }
                None => break,
            }
        }
        // S3 lists in UTF-8 byte order already; some compatible stores do not.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn delete_object(self: &Arc<Self>, key: &str) -> StoreResult<()> {
        let inner = self;
        let key = inner.full_key(key)?;
        let reply = inner
            .execute(
                &key,
                || {
                    let url = inner
                        .bucket
                        .delete_object(inner.creds(), &key)
                        .sign(SIGNATURE_LIFETIME);
                    inner.client.delete(url)
                },
                |_| false,
            )
            .await?;
        match reply.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => missing(&reply, &key).map(|_| ()),
            _ => Err(error_for(&reply, &key)),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        let inner = &self.inner;
        inner
            .put_object(key, body, false)
            .await
            .map(|_| ())
            .map_err(|e| inner.redactor.error(e))
    }

    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> StoreResult<bool> {
        let inner = &self.inner;
        inner
            .put_object(key, body, true)
            .await
            .map_err(|e| inner.redactor.error(e))
    }

    async fn get(&self, key: &str, max_len: u64) -> StoreResult<Option<Vec<u8>>> {
        let inner = &self.inner;
        inner
            .get_object(key, max_len)
            .await
            .map_err(|e| inner.redactor.error(e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Option<Vec<u8>>> {
        let inner = &self.inner;
        inner
            .get_object_range(key, range)
            .await
            .map_err(|e| inner.redactor.error(e))
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let inner = &self.inner;
        inner
            .list_objects(prefix)
            .await
            .map_err(|e| inner.redactor.error(e))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let inner = &self.inner;
        inner
            .delete_object(key)
            .await
            .map_err(|e| inner.redactor.error(e))
    }

    fn requests_sent(&self) -> u64 {
        self.inner.requests_sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let config = S3Config::new("http://127.0.0.1:1", "r", "b").with_credentials(
            "AKID",
            "very-secret",
            Some("session-secret"),
        );
        let shown = format!("{config:?}");
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("very-secret") && !shown.contains("session-secret"));
    }
}
