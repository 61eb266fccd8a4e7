//! What the S3 store makes of answers and failures: whole replies, S3 error documents, the
//! retry decision, the mapping to [`StoreError`], and the redaction that keeps presigned URLs'
//! signatures and credentials out of every error the store returns.

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::super::{StoreError, StoreResult};

/// A whole response: status, headers and body.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Reply {
    pub(super) fn text(&self) -> &str {
        core::str::from_utf8(&self.body).unwrap_or("")
    }

    /// The `<Code>` of an S3 error document.
    pub(super) fn code(&self) -> Option<&str> {
        xml_field(self.text(), "Code")
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The text of the first `<tag>...</tag>` in `xml` (enough for S3's flat error documents).
pub(super) fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// Why one attempt did not produce a reply.
pub(super) enum Failure {
    /// Worth another attempt (connection refused or reset, timeout).
    Transient(StoreError),
    /// Retrying cannot help.
    Fatal(StoreError),
}

/// `error`'s message and those of its causes, without the request's URL (a presigned URL
/// carries the access key id and a signature valid for minutes: apps log error messages).
pub(super) fn describe(error: reqwest::Error) -> String {
    use std::error::Error as _;
    let error = error.without_url();
    let mut text = if error.is_timeout() {
        format!("timed out: {error}")
    } else {
        error.to_string()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The rustls error behind a failed request, if TLS failed. (reqwest wraps it in nested
/// `io::Error`s, and `io::Error::source` skips the error it wraps: unwrap them by hand.)
fn tls_failure(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let mut wrapped = cause;
        loop {
            if let Some(tls) = wrapped.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            match wrapped
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => wrapped = inner,
                None => break,
            }
        }
        source = cause.source();
    }
    None
}

/// Whether the attempt that failed with `error` is worth repeating. A refused certificate never
/// is: it fails at once with [`StoreError::UntrustedServer`].
pub(super) fn classify(error: reqwest::Error) -> Failure {
    let origin = error
        .url()
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_default();
    if let Some(
        tls @ (rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType),
    ) = tls_failure(&error)
    {
        return Failure::Fatal(StoreError::UntrustedServer(format!("{origin}: {tls}")));
    }
    if error.is_builder() {
        Failure::Fatal(StoreError::Other(format!(
            "bad request: {}",
            describe(error)
        )))
    } else {
        Failure::Transient(StoreError::Unavailable(format!(
            "{origin}: {}",
            describe(error)
        )))
    }
}

/// Whether a reply is a transient failure, in which case the request is retried.
pub(super) fn is_transient(reply: &Reply) -> bool {
    let status = reply.status;
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        // S3 closes idle uploads with 400 RequestTimeout and asks for a retry.
        || (status == StatusCode::BAD_REQUEST && reply.code() == Some("RequestTimeout"))
}

/// Whether a ListObjectsV2 page is whole: it ends with the document's closing tag (namespace
/// prefix allowed). The XML parser
/// accepts a document cut after any complete element (measured through a proxy cutting pages at
/// random points: 110 of 200 cut pages parsed, with keys missing), so a cut page is caught here.
pub(super) fn listing_is_whole(reply: &Reply) -> bool {
    let text = reply.text().trim_end();
    text.rfind("</").is_some_and(|at| {
        text[at + 2..]
            .strip_suffix('>')
            .is_some_and(|name| name == "ListBucketResult" || name.ends_with(":ListBucketResult"))
    })
}

/// Whether a 206 answer's body is shorter than the range its `Content-Range: bytes S-E/T` header
/// announces: cut on the way, with a content-length matching the cut (HTTP cannot tell).
pub(super) fn partial_body_is_short(reply: &Reply) -> bool {
    let announced = reply.header("content-range").and_then(|value| {
        let (start, end) = value
            .strip_prefix("bytes ")?
            .split('/')
            .next()?
            .split_once('-')?;
        let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
        end.checked_sub(start)?.checked_add(1)
    });
    announced.is_some_and(|len| (reply.body.len() as u64) < len)
}

/// The error for a reply that is not what the operation wanted.
pub(super) fn error_for(reply: &Reply, what: &str) -> StoreError {
    let status = reply.status;
    let code = reply.code().unwrap_or("");
    let message = xml_field(reply.text(), "Message").unwrap_or("");
    let mut detail = format!("{what}: HTTP {status}");
    for part in [code, message] {
        if !part.is_empty() {
            detail.push(' ');
            detail.extend(part.chars().take(300));
        }
    }
    let hint = match (status.as_u16(), code) {
        (_, "RequestTimeTooSkewed") => " (check the device clock)",
        (_, "AuthorizationHeaderMalformed") => " (wrong region? Garage wants its s3_region)",
        (301 | 307 | 308, _) => " (the bucket lives at another endpoint or region)",
        (404, "NoSuchBucket") => " (the bucket does not exist)",
        _ => "",
    };
    detail.push_str(hint);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => StoreError::AccessDenied(detail),
        _ if is_transient(reply) => StoreError::Busy(detail),
        _ => StoreError::Other(detail),
    }
}

/// What a 404 means: `None` for a missing key, an error for a missing bucket.
pub(super) fn missing(reply: &Reply, what: &str) -> StoreResult<Option<Vec<u8>>> {
    match reply.code() {
        Some("NoSuchBucket") => Err(error_for(reply, what)),
        _ => Ok(None),
    }
}

/// The start of a `Content-Range: bytes START-END/TOTAL` header.
pub(super) fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}
/// Removes from every error the S3 store returns what must never reach a log: the credentials
/// (access key id, secret, session token) wherever they appear, and the query of any URL that
/// carries SigV4 parameters (signature, credential, security token). Errors are built without
/// them in the first place; this is the last guard, for text a server or a library echoes.
pub(super) struct Redactor {
    /// The words to hide, longest first (a token may contain the key id).
    words: Vec<zeroize::Zeroizing<String>>,
}

impl Redactor {
    pub(super) fn new(words: &[&str]) -> Self {
        let mut words: Vec<zeroize::Zeroizing<String>> = words
            .iter()
            .filter(|word| !word.is_empty())
            .map(|word| zeroize::Zeroizing::new((*word).to_owned()))
            .collect();
        words.sort_by_key(|word| std::cmp::Reverse(word.len()));
        Redactor { words }
    }

    /// `error` with its text redacted.
    pub(super) fn error(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::Unavailable(text) => StoreError::Unavailable(self.text(&text)),
            StoreError::AccessDenied(text) => StoreError::AccessDenied(self.text(&text)),
            StoreError::Busy(text) => StoreError::Busy(self.text(&text)),
            StoreError::Io(text) => StoreError::Io(self.text(&text)),
            StoreError::UntrustedServer(text) => StoreError::UntrustedServer(self.text(&text)),
            StoreError::Other(text) => StoreError::Other(self.text(&text)),
            StoreError::TooLarge { key, limit } => StoreError::TooLarge {
                key: self.text(&key),
                limit,
            },
        }
    }

    /// `text` without the credentials and without signed URL queries.
    pub(super) fn text(&self, text: &str) -> String {
        let mut text = strip_signed_queries(text);
        for word in &self.words {
            if text.contains(word.as_str()) {
                text = text.replace(word.as_str(), "<redacted>");
            }
        }
        text
    }
}

/// `text` with the query of every URL-like token that holds SigV4 parameters (`X-Amz-...`)
/// replaced by `?<redacted>`. A token ends at whitespace, a quote or a bracket.
fn strip_signed_queries(text: &str) -> String {
    let ends_token = |c: char| c.is_whitespace() || "\"'<>()[]{}`".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(mark) = rest.find('?') {
        let (before, after) = rest.split_at(mark);
        out.push_str(before);
        let query_len = after.find(ends_token).unwrap_or(after.len());
        let query = &after[..query_len];
        if query.to_ascii_lowercase().contains("x-amz-") {
            out.push_str("?<redacted>");
        } else {
            out.push_str(query);
        }
        rest = &after[query_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn replies_map_to_the_right_errors() {
        let denied = reply(
            403,
            "<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>",
        );
        assert!(matches!(
            error_for(&denied, "k"),
            StoreError::AccessDenied(_)
        ));
        assert!(matches!(
            error_for(&reply(503, ""), "k"),
            StoreError::Busy(_)
        ));
        assert!(matches!(
            error_for(&reply(429, ""), "k"),
            StoreError::Busy(_)
        ));
        let timeout = reply(400, "<Error><Code>RequestTimeout</Code></Error>");
        assert!(is_transient(&timeout));
        let region = reply(
            400,
            "<Error><Code>AuthorizationHeaderMalformed</Code></Error>",
        );
        let StoreError::Other(detail) = error_for(&region, "k") else {
            panic!("400 is Other");
        };
        assert!(detail.contains("region"), "{detail}");
        let no_bucket = reply(404, "<Error><Code>NoSuchBucket</Code></Error>");
        assert!(missing(&no_bucket, "k").is_err());
        assert_eq!(
            missing(&reply(404, "<Error><Code>NoSuchKey</Code></Error>"), "k"),
            Ok(None)
        );
        assert_eq!(missing(&reply(404, ""), "k"), Ok(None));
    }

    #[test]
    fn a_cut_listing_is_not_whole() {
        let page = "<?xml version=\"1.0\"?><ListBucketResult><Contents><Key>a</Key></Contents>\
                    <Contents><Key>b</Key></Contents></ListBucketResult>\n";
        assert!(listing_is_whole(&reply(200, page)));
        for cut in 1..page.trim_end().len() {
            assert!(!listing_is_whole(&reply(200, &page[..cut])), "cut at {cut}");
        }
    }

    #[test]
    fn a_cut_partial_body_is_short() {
        let mut cut = reply(206, "abc");
        cut.headers
            .insert("content-range", "bytes 10-13/100".parse().unwrap());
        assert!(partial_body_is_short(&cut));
        cut.body = Bytes::from_static(b"abcd");
        assert!(!partial_body_is_short(&cut));
        assert!(
            !partial_body_is_short(&reply(206, "abc")),
            "no header: nothing to compare"
        );
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(content_range_start("bytes 10-19/100"), Some(10));
        assert_eq!(content_range_start("bytes */100"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn redaction_removes_credentials_and_signed_queries() {
        let redactor = Redactor::new(&["GKAKID1234", "s3cr3t-value", ""]);
        let leaky = "error sending request for url (https://h:1/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&\
                     X-Amz-Credential=GKAKID1234%2F20261202&X-Amz-Signature=abc): refused; key \
                     GKAKID1234, secret s3cr3t-value, \"http://h/k?x-amz-security-token=t\" and \
                     a plain question? kept";
        let clean = redactor.text(leaky);
        for secret in ["GKAKID1234", "s3cr3t-value", "X-Amz-", "x-amz-", "abc"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(
            clean.contains("https://h:1/b/k?<redacted>): refused"),
            "{clean}"
        );
        assert!(clean.contains("a plain question? kept"), "{clean}");
        let error = redactor.error(StoreError::Unavailable(leaky.into()));
        assert!(!format!("{error:?}").contains("GKAKID1234"));
    }
}
