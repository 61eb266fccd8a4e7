//! Store URLs: how an app or the CLI names a store in one string. The syntax is documented on
//! [`StoreConfig::parse`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::{DirectoryStore, MemoryStore, ObjectStore, S3Config, S3Store, StoreError};

/// Parameters whose values could be secrets: refused, and never echoed in errors.
const SECRET_PARAMETERS: [&str; 6] = [
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// What a store URL names. `Display` prints the URL back, without credentials (there are none in
/// URLs); `Debug` redacts secrets.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreConfig {
    /// `mem://`: a fresh, empty [`MemoryStore`] (tests and examples).
    Memory,
    /// `file:///absolute/path`: a [`DirectoryStore`] rooted at the path.
    Directory(PathBuf),
    /// `s3://bucket/prefix?...`: an [`S3Store`].
    S3(Box<S3Config>),
}

/// The longest store URL accepted, and the longest run of characters between separators in it
/// (a DNS name is at most 253 characters). The URL parser's IDNA step costs the square of a
/// label's length, and nothing else bounds a configuration string an app passes through (a
/// fuzzed 1,788-character `xn--` host took 151 ms in the instrumented fuzz build).
pub const MAX_URL_LEN: usize = 1024;
const MAX_URL_RUN: usize = 253;

/// Why `url` is refused before any parsing: too long, a control character, or an overlong run.
pub(crate) fn unparseable(url: &str) -> Option<&'static str> {
    if url.len() > MAX_URL_LEN {
        return Some("more than 1,024 bytes");
    }
    if url.chars().any(char::is_control) {
        return Some("a control character");
    }
    let separators = ['.', '/', ':', '?', '&', '=', '#', '@', '\\', '%'];
    if url
        .split(&separators[..])
        .any(|run| run.len() > MAX_URL_RUN)
    {
        return Some("a name part longer than 253 characters");
    }
    None
}

/// `url` without user information or secret-looking parameter values, for messages.
fn shown(url: &str) -> String {
    if unparseable(url).is_some() {
        return url.chars().filter(|c| !c.is_control()).take(200).collect();
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.chars().take(200).collect();
    };
    let _ = parsed.set_password(None);
    let _ = parsed.set_username("");
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                    "<redacted>".to_owned()
                } else if name == "endpoint" {
                    match url::Url::parse(&value) {
                        Ok(mut endpoint) => {
                            let _ = endpoint.set_password(None);
                            let _ = endpoint.set_username("");
                            endpoint.to_string()
                        }
                        Err(_) => "<malformed>".to_owned(),
                    }
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

fn bad(url: &str, why: impl core::fmt::Display) -> StoreError {
    StoreError::Other(format!("store URL {:?}: {why}", shown(url)))
}

const NO_CREDENTIALS: &str = "credentials do not belong in URLs: use AWS_ACCESS_KEY_ID / \
                              AWS_SECRET_ACCESS_KEY or pass them to the store explicitly";

/// Whether `name` can be a bucket name (loosely: S3's rules plus the legacy upper case and
/// underscores some compatible stores still allow).
fn valid_bucket(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl StoreConfig {
    /// Parses a store URL.
    ///
    /// # Syntax
    ///
    /// | URL | store |
    /// | --- | --- |
    /// | `mem://` | a fresh, empty [`MemoryStore`] (each [`open`](Self::open) makes a new one) |
    /// | `file:///absolute/path` | a [`DirectoryStore`] rooted at the path (percent-decoded; `file://localhost/...` also works; no query) |
    /// | `s3://BUCKET[/PREFIX][?PARAM=VALUE&...]` | an [`S3Store`] on `BUCKET`, keys under `PREFIX/` |
    ///
    /// `PREFIX` is percent-decoded, and leading and trailing `/` are dropped; it must follow the
    /// same rules as object keys ([`validate_key`](super::validate_key)).
    ///
    /// S3 parameters, all optional, each at most once:
    ///
    /// | parameter | meaning | default |
    /// | --- | --- | --- |
    /// | `endpoint` | `http://` or `https://` endpoint URL, e.g. `http://127.0.0.1:3900` (percent-encode it if it has a query) | `https://s3.<region>.amazonaws.com` |
    /// | `region` | signing region (Garage: its `s3_region`, usually `garage`) | `us-east-1` |
    /// | `path_style` | `true`/`1`: `endpoint/bucket/key`; `false`/`0`: `bucket.endpoint/key` (virtual-hosted) | `true` if the endpoint's host is an IP address or `localhost`, else `false` |
    /// | `page_size` | keys per ListObjectsV2 page (1 to 1000) | the server's (1000 on S3) |
    /// | `max_attempts` | attempts per request, the first included | `5` |
    /// | `concurrency` | requests in flight at once | `8` |
    /// | `multipart_threshold` | bytes from which uploads use multipart | `16777216` (16 MiB) |
    /// | `part_size` | multipart part size in bytes (S3 wants at least 5 MiB) | `8388608` (8 MiB) |
    /// | `connect_timeout` | seconds to establish a connection | `10` |
    /// | `request_timeout` | seconds for one attempt of one request, body included | `120` |
    /// | `read_idle_timeout` | seconds a response body may stall before the attempt fails | `30` |
    ///
    /// Unknown parameters are errors, so a typo never silently falls back to a default.
    ///
    /// # Credentials
    ///
    /// Credentials never go in URLs, which end up in logs, crash reports and shell history: a URL
    /// with a user name, a password or a credential parameter (`access_key_id`,
    /// `secret_access_key`, `session_token`) is refused. The S3 store takes them from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` when these are set;
    /// an app passes them explicitly with [`StoreConfig::with_credentials`] or
    /// [`S3Config::with_credentials`].
    ///
    /// # Example
    ///
    /// ```
    /// use chatvault::store::StoreConfig;
    ///
    /// let config = StoreConfig::parse(
    ///     "s3://chats/anna?endpoint=http://127.0.0.1:3900&region=garage&path_style=true",
    /// )?;
    /// let StoreConfig::S3(s3) = &config else { unreachable!() };
    /// assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("chats", "anna"));
    /// assert!(StoreConfig::parse("s3://chats?colour=blue").is_err());
    /// # Ok::<(), chatvault::store::StoreError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] explaining what is wrong; the message never repeats a credential.
    /// A URL longer than [`MAX_URL_LEN`] bytes, with a control character, or with a part between
    /// separators longer than 253 characters is refused before it is parsed.
    ///
    /// What parses prints back ([`Display`](core::fmt::Display)) as a URL that parses to the
    /// same configuration, within the same bounds: a URL whose full form (percent-encoded, with
    /// the defaults written out) is over them is refused too.
    pub fn parse(url: &str) -> Result<StoreConfig, StoreError> {
        let config = Self::parse_within_bounds(url)?;
        if let Some(why) = unparseable(&config.to_string()) {
            return Err(bad(url, format!("written out in full, it has {why}")));
        }
        Ok(config)
    }

    fn parse_within_bounds(url: &str) -> Result<StoreConfig, StoreError> {
        if let Some(why) = unparseable(url) {
            return Err(bad(url, why));
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(url, e))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(url, NO_CREDENTIALS));
        }
        if parsed.fragment().is_some() {
            return Err(bad(url, "unexpected #fragment"));
        }
        match parsed.scheme() {
            "mem" => {
                if parsed.host_str().is_some_and(|h| !h.is_empty())
                    || !matches!(parsed.path(), "" | "/")
                    || parsed.query().is_some()
                {
                    return Err(bad(url, "mem:// takes no host, path or parameters"));
                }
                Ok(StoreConfig::Memory)
            }
            "file" => {
                if parsed.query().is_some() {
                    return Err(bad(url, "file URLs take no parameters"));
                }
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(bad(url, "file URLs need an absolute path (file:///...)"));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| bad(url, "not a local absolute path"))?;
                if !path.is_absolute() || path.parent().is_none() {
                    return Err(bad(
                        url,
                        "file URLs need an absolute path below / (file:///...)",
                    ));
                }
                Ok(StoreConfig::Directory(path))
            }
            "s3" => parse_s3(url, &parsed).map(|config| StoreConfig::S3(Box::new(config))),
            other => Err(bad(
                url,
                format!("unknown scheme {other:?}: expected s3://, file:/// or mem://"),
            )),
        }
    }

    /// The same configuration with explicit S3 credentials (no effect on other stores).
    pub fn with_credentials(
        self,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> StoreConfig {
        match self {
            StoreConfig::S3(config) => StoreConfig::S3(Box::new(config.with_credentials(
                access_key_id,
                secret_access_key,
                session_token,
            ))),
            other => other,
        }
    }

    /// Opens the store. Touches neither the network nor the disk.
    ///
    /// # Errors
    ///
    /// For S3: [`StoreError::AccessDenied`] without credentials, [`StoreError::Other`] on an
    /// unusable endpoint.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(match self {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            StoreConfig::Directory(path) => Arc::new(DirectoryStore::new(path.clone())),
            StoreConfig::S3(config) => Arc::new(S3Store::new(S3Config::clone(config))?),
        })
    }
}

fn parse_s3(url: &str, parsed: &url::Url) -> Result<S3Config, StoreError> {
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| bad(url, "missing bucket name (s3://BUCKET/...)"))?;
    if !valid_bucket(bucket) {
        return Err(bad(url, format!("{bucket:?} is not a valid bucket name")));
    }
    if parsed.port().is_some() {
        return Err(bad(
            url,
            "a port belongs in the endpoint parameter, not after the bucket",
        ));
    }
    let prefix = percent_decode_str(parsed.path())
        .decode_utf8()
        .map_err(|_| bad(url, "the prefix is not UTF-8"))?;
    let prefix = prefix.trim_matches('/').to_owned();
    if !prefix.is_empty() {
        super::validate_key(&prefix).map_err(|e| bad(url, format!("prefix: {e}")))?;
    }

    let mut seen: Vec<String> = Vec::new();
    let mut region = "us-east-1".to_owned();
    let mut endpoint: Option<String> = None;
    let mut path_style: Option<bool> = None;
    let mut numbers: Vec<(String, u64)> = Vec::new();
    for (name, value) in parsed.query_pairs() {
        let name = name.into_owned();
        if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad(url, NO_CREDENTIALS));
        }
        if seen.contains(&name) {
            return Err(bad(url, format!("parameter {name:?} given twice")));
        }
        seen.push(name.clone());
        if value.is_empty() {
            return Err(bad(url, format!("parameter {name:?} has no value")));
        }
        match name.as_str() {
            "endpoint" => endpoint = Some(value.into_owned()),
            "region" => region = value.into_owned(),
            "path_style" => {
                path_style = Some(match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(bad(url, format!("path_style={other}: use true or false")));
                    }
                });
            }
            "page_size"
            | "max_attempts"
            | "concurrency"
            | "multipart_threshold"
            | "part_size"
            | "connect_timeout"
            | "request_timeout"
            | "read_idle_timeout" => {
                let number: u64 = value
                    .parse()
                    .map_err(|_| bad(url, format!("{name}={value} is not a whole number")))?;
                if number == 0 {
                    return Err(bad(url, format!("{name} must be positive")));
                }
                if name == "page_size" && number > 1000 {
                    return Err(bad(url, "page_size is at most 1000"));
                }
                numbers.push((name, number));
            }
            other => return Err(bad(url, format!("unknown parameter {other:?}"))),
        }
    }

    let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint_url =
        url::Url::parse(&endpoint).map_err(|e| bad(url, format!("endpoint: {e}")))?;
    if !matches!(endpoint_url.scheme(), "http" | "https") {
        return Err(bad(url, "the endpoint must be an http:// or https:// URL"));
    }
    if !endpoint_url.username().is_empty() || endpoint_url.password().is_some() {
        return Err(bad(url, NO_CREDENTIALS));
    }
    let host = endpoint_url
        .host_str()
        .ok_or_else(|| bad(url, "the endpoint has no host"))?;
    let literal_host = host.trim_start_matches('[').trim_end_matches(']');
    let by_address = host == "localhost" || literal_host.parse::<IpAddr>().is_ok();

    let mut config = S3Config::new(&endpoint, &region, bucket);
    config.path_style = path_style.unwrap_or(by_address);
    config.prefix = prefix;
    for (name, number) in numbers {
        let size = usize::try_from(number).unwrap_or(usize::MAX);
        match name.as_str() {
            "page_size" => config.list_page_size = Some(size),
            "max_attempts" => config.max_attempts = u32::try_from(number).unwrap_or(u32::MAX),
            "concurrency" => config.max_concurrency = size,
            "multipart_threshold" => config.multipart_threshold = size,
            "part_size" => config.part_size = size,
            "connect_timeout" => config.connect_timeout = Duration::from_secs(number),
            "read_idle_timeout" => config.read_idle_timeout = Duration::from_secs(number),
            _ => config.request_timeout = Duration::from_secs(number),
        }
    }
    Ok(config)
}

/// Characters escaped in a printed prefix (path segments stay separated by `/`).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

impl core::fmt::Display for S3Config {
    /// The `s3://` URL of this configuration: bucket, prefix, endpoint, region, path style and
    /// any tuning that differs from the defaults. Never any credential.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let defaults = S3Config::new(&self.endpoint, &self.region, &self.bucket);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("endpoint", &self.endpoint);
        query.append_pair("region", &self.region);
        query.append_pair("path_style", if self.path_style { "true" } else { "false" });
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let numbers = [
            (
                "page_size",
                self.list_page_size.map(as_u64),
                defaults.list_page_size.map(as_u64),
            ),
            (
                "max_attempts",
                Some(u64::from(self.max_attempts)),
                Some(u64::from(defaults.max_attempts)),
            ),
            (
                "concurrency",
                Some(as_u64(self.max_concurrency)),
                Some(as_u64(defaults.max_concurrency)),
            ),
            (
                "multipart_threshold",
                Some(as_u64(self.multipart_threshold)),
                Some(as_u64(defaults.multipart_threshold)),
            ),
            (
                "part_size",
                Some(as_u64(self.part_size)),
                Some(as_u64(defaults.part_size)),
            ),
            (
                "connect_timeout",
                Some(self.connect_timeout.as_secs()),
                Some(defaults.connect_timeout.as_secs()),
            ),
            (
                "request_timeout",
                Some(self.request_timeout.as_secs()),
                Some(defaults.request_timeout.as_secs()),
            ),
            (
                "read_idle_timeout",
                Some(self.read_idle_timeout.as_secs()),
                Some(defaults.read_idle_timeout.as_secs()),
            ),
        ];
        for (name, value, default) in numbers {
            if let Some(value) = value
                && Some(value) != default
            {
                query.append_pair(name, &value.to_string());
            }
        }
        let prefix = self.prefix.trim_matches('/');
        write!(f, "s3://{}", self.bucket)?;
        if !prefix.is_empty() {
            write!(f, "/{}", utf8_percent_encode(prefix, PATH))?;
        }
        write!(f, "?{}", query.finish())
    }
}

impl core::fmt::Display for StoreConfig {
    /// The URL of this configuration (never any credential).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("mem://"),
            StoreConfig::Directory(path) => match url::Url::from_file_path(path) {
                Ok(url) => write!(f, "{url}"),
                Err(()) => write!(f, "file://{}", path.display()),
            },
            StoreConfig::S3(config) => write!(f, "{config}"),
        }
    }
}

/// Parses an `s3://` URL into a configuration (credentials from the environment, if set).
/// The syntax is documented on [`StoreConfig::parse`].
///
/// # Errors
///
/// [`StoreError::Other`] for a malformed URL or one that is not `s3://`.
pub fn parse_s3_url(url: &str) -> Result<S3Config, StoreError> {
    match StoreConfig::parse(url)? {
        StoreConfig::S3(config) => Ok(*config),
        _ => Err(bad(url, "not an s3:// URL")),
    }
}

/// Opens the store a URL names (see [`StoreConfig::parse`] for the syntax). Returns an `Arc`
/// because a vault and its background tasks share one store.
///
/// # Errors
///
/// As [`StoreConfig::parse`] and [`StoreConfig::open`].
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    StoreConfig::parse(url)?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse_with_defaults_and_parameters() {
        let config = parse_s3_url(
            "s3://chats/anna/phone?endpoint=http://127.0.0.1:3900&region=garage&path_style=true&page_size=2&part_size=5242880&connect_timeout=3&read_idle_timeout=7",
        )
        .unwrap();
        assert_eq!(config.bucket, "chats");
        assert_eq!(config.prefix, "anna/phone");
        assert_eq!(config.endpoint, "http://127.0.0.1:3900");
        assert_eq!(config.region, "garage");
        assert!(config.path_style);
        assert_eq!(config.list_page_size, Some(2));
        assert_eq!(config.part_size, 5 * 1024 * 1024);
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.read_idle_timeout, Duration::from_secs(7));
        let plain = parse_s3_url("s3://b").unwrap();
        assert_eq!(plain.endpoint, "https://s3.us-east-1.amazonaws.com");
        assert_eq!(plain.prefix, "");
        assert!(!plain.path_style);
        // By address: path style unless told otherwise.
        assert!(
            parse_s3_url("s3://b?endpoint=http://localhost:9000")
                .unwrap()
                .path_style
        );
        assert!(
            !parse_s3_url("s3://b?endpoint=http://[::1]:9000&path_style=false")
                .unwrap()
                .path_style
        );
        let decoded = parse_s3_url("s3://b/caf%C3%A9/x%20y/").unwrap();
        assert_eq!(decoded.prefix, "café/x y");
    }

    #[test]
    fn a_url_whose_full_form_is_over_the_bounds_is_refused() {
        // Found by the names fuzzer: a URL of replacement characters within the bounds parsed,
        // but printed as over 1,024 bytes (each one percent-encoded as 9), which did not parse.
        let mut url = String::from("s3://bucket/");
        url.push_str(&"\u{fffd}\u{fffd}/".repeat(60));
        assert!(url.len() < MAX_URL_LEN);
        let error = StoreConfig::parse(&url).unwrap_err().to_string();
        assert!(error.contains("written out in full"), "{error}");
        // Short enough in full: it parses and prints back as itself.
        let mut short = String::from("s3://bucket/");
        short.push_str(&"\u{fffd}\u{fffd}/".repeat(10));
        let printed = StoreConfig::parse(&short).unwrap().to_string();
        assert_eq!(StoreConfig::parse(&printed).unwrap().to_string(), printed);
    }

    #[test]
    fn urls_print_back_without_credentials() {
        for url in [
            "s3://chats/anna/caf%C3%A9?endpoint=http%3A%2F%2F127.0.0.1%3A3900&region=garage&path_style=true&page_size=2&max_attempts=3",
            "s3://b?endpoint=https%3A%2F%2Fs3.us-east-1.amazonaws.com&region=us-east-1&path_style=false",
            "mem://",
            "file:///var/lib/chat%20vault",
        ] {
            let config = StoreConfig::parse(url).unwrap().with_credentials(
                "AKID",
                "very-secret",
                Some("tok-secret"),
            );
            let printed = config.to_string();
            assert_eq!(printed, url);
            assert!(!format!("{config:?}").contains("very-secret"));
            assert!(!format!("{config:?}").contains("tok-secret"));
            assert_eq!(StoreConfig::parse(&printed).unwrap().to_string(), printed);
        }
    }

    #[test]
    fn bad_urls_are_explained() {
        for url in [
            "s3://",
            "s3://b?path_style=maybe",
            "s3://b?page_size=0",
            "s3://b?page_size=5000",
            "s3://b?colour=blue",
            "s3://b?region=a&region=b",
            "s3://b?region=",
            "s3://b:9000/x",
            "s3://b/a%2F..%2Fx",
            "s3://b/a//x",
            "s3://bad%20bucket",
            "s3://b?endpoint=ftp://x",
            "s3://b?endpoint=not a url",
            "http://b",
        ] {
            assert!(parse_s3_url(url).is_err(), "{url}");
        }
        for url in [
            "file://relative",
            "file:///",
            "file:///x?y=1",
            "mem://x",
            "ftp://x",
            "",
        ] {
            assert!(open_store(url).is_err(), "{url}");
        }
    }

    #[test]
    fn credentials_in_urls_are_refused_and_never_echoed() {
        for url in [
            "s3://b?secret_access_key=hunter2",
            "s3://b?AWS_SECRET_ACCESS_KEY=hunter2",
            "s3://AKID:hunter2@b/x",
            "s3://b?endpoint=http://AKID:hunter2@127.0.0.1:1",
        ] {
            let error = StoreConfig::parse(url).unwrap_err().to_string();
            assert!(error.contains("credentials"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn file_and_memory_urls_open() {
        assert!(matches!(
            StoreConfig::parse("mem://").unwrap(),
            StoreConfig::Memory
        ));
        let StoreConfig::Directory(path) = StoreConfig::parse("file:///tmp/a%20b").unwrap() else {
            panic!("directory");
        };
        assert_eq!(path, PathBuf::from("/tmp/a b"));
        assert!(open_store("file://localhost/tmp/x").is_ok());
    }

    #[test]
    fn overlong_and_control_character_urls_are_refused_before_parsing() {
        // A fuzzed input: a file URL whose host is one 1,700-character punycode label,
        // broken up by carriage returns (which the URL standard strips).
        let label = format!("XN--{}", "n".repeat(1_700));
        for url in [
            format!("file:/\r/{label}"),
            format!("s3://bucket/prefix?endpoint=https://{label}"),
            format!("s3://bucket/{}", "p/".repeat(600)),
            "s3://bucket/prefix\r".to_owned(),
            "mem://\u{0}".to_owned(),
        ] {
            let error = StoreConfig::parse(&url).unwrap_err();
            assert!(matches!(error, StoreError::Other(_)), "{error:?}");
            assert!(error.to_string().len() < 400, "{error}");
        }
        // What real configurations look like still parses.
        let long_prefix = format!("s3://bucket/{}?region=eu-1", "folder/".repeat(100));
        assert!(StoreConfig::parse(&long_prefix).is_ok());
        assert!(StoreConfig::parse("s3://bucket/prefix?endpoint=http://127.0.0.1:3900").is_ok());
    }
}
