//! A plain-HTTP/1.1 proxy in front of an S3 server (Garage) that injects faults at a seeded random
//! rate and counts every fault it injects, by kind and by the endpoint (device) it hit.
//!
//! It parses just enough HTTP: a request's line, headers and body (`content-length` or chunked,
//! forwarded byte for byte: SigV4 signs the `host` header, which goes through unchanged, so
//! signatures stay valid), and a response's status, headers and body (`content-length`, chunked
//! or up to the end of the connection), which it reads whole from the server and sends on with a
//! `content-length` of its own, faulted or not. Reading the whole answer first costs memory but
//! lets a fault cut it anywhere: the objects of a chat vault in a test are small.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The faults the proxy injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 500 or 503 answered without forwarding the request.
    ServerError,
    /// The request reaches the server (a write lands), its answer is replaced by a 500.
    AnswerLost,
    /// 429 with `Retry-After: 1`, without forwarding.
    Throttled,
    /// The connection is reset (RST) part way through the response body.
    ResetMidBody,
    /// The body stops short of the `content-length` the server announced; the connection closes.
    ShortBody,
    /// The body is cut and `content-length` rewritten to match: framing cannot tell.
    TruncatedMatchingLength,
    /// The body trickles out in small pieces with pauses.
    SlowBody,
    /// A ListObjectsV2 page leaves out the most recently written key (eventual consistency).
    StaleListing,
}

impl Fault {
    /// Every kind, in a fixed order (the seeded choice indexes into it).
    pub const ALL: [Fault; 8] = [
        Fault::ServerError,
        Fault::AnswerLost,
        Fault::Throttled,
        Fault::ResetMidBody,
        Fault::ShortBody,
        Fault::TruncatedMatchingLength,
        Fault::SlowBody,
        Fault::StaleListing,
    ];

    /// Faults that need a response body to act on.
    fn needs_body(self) -> bool {
        matches!(
            self,
            Fault::ResetMidBody
                | Fault::ShortBody
                | Fault::TruncatedMatchingLength
                | Fault::SlowBody
        )
    }
}

/// Fault counts by kind.
pub type Counts = BTreeMap<Fault, u64>;

/// A small seeded generator (SplitMix64): the same seed injects the same faults in the same
/// order of requests, without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `per_million / 1_000_000`.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// What all endpoints of one proxy share.
struct Shared {
    upstream: SocketAddr,
    /// Faults per million requests (0: none).
    rate_per_million: AtomicU64,
    /// Which kinds may be injected.
    kinds: Mutex<Vec<Fault>>,
    rng: Mutex<Rng>,
    /// Injected faults by endpoint and kind.
    counts: Mutex<BTreeMap<(usize, Fault), u64>>,
    /// The bucket key (no leading `/`, bucket name included) of the latest PUT the server
    /// accepted, for [`Fault::StaleListing`].
    last_written: Mutex<Option<String>>,
    /// HTTP requests received.
    requests: AtomicU64,
    /// Set once the test is done: endpoints stop accepting.
    closed: AtomicBool,
}

/// The proxy: one listening port per endpoint (a device each), faults drawn from one seeded
/// generator.
pub struct FaultProxy {
    shared: Arc<Shared>,
    ports: Vec<u16>,
}

impl FaultProxy {
    /// Starts `endpoints` listeners forwarding to `upstream`, injecting a fault into a request
    /// with probability `rate` (0..=1), its kind drawn from every [`Fault`].
    pub async fn start(upstream: SocketAddr, seed: u64, rate: f64, endpoints: usize) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream,
            rate_per_million: AtomicU64::new(per_million(rate)),
            kinds: Mutex::new(Fault::ALL.to_vec()),
            rng: Mutex::new(Rng::new(seed)),
            counts: Mutex::new(BTreeMap::new()),
            last_written: Mutex::new(None),
            requests: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let mut ports = Vec::new();
        for endpoint in 0..endpoints {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if shared.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        serve(client, endpoint, &shared).await;
                    });
                }
            });
        }
        FaultProxy { shared, ports }
    }

    /// The `http://` endpoint of listener `index`.
    pub fn endpoint(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[index])
    }

    /// Changes the fault rate (0 turns faults off).
    pub fn set_rate(&self, rate: f64) {
        self.shared
            .rate_per_million
            .store(per_million(rate), Ordering::SeqCst);
    }

    /// Restricts the kinds injected.
    pub fn set_kinds(&self, kinds: &[Fault]) {
        *self.shared.kinds.lock().unwrap() = kinds.to_vec();
    }

    /// Faults injected so far, by kind, over every endpoint.
    pub fn counts(&self) -> Counts {
        let mut total = Counts::new();
        for ((_, kind), n) in self.shared.counts.lock().unwrap().iter() {
            *total.entry(*kind).or_default() += n;
        }
        total
    }

    /// Faults injected so far through endpoint `index`, by kind.
    pub fn counts_of(&self, index: usize) -> Counts {
        self.shared
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((endpoint, _), _)| *endpoint == index)
            .map(|((_, kind), n)| (*kind, *n))
            .collect()
    }

    /// HTTP requests received from clients.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

fn per_million(rate: f64) -> u64 {
    (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64
}

/// One request as the client sent it.
struct Request {
    /// The head, byte for byte (request line and headers, final blank line included).
    head: Vec<u8>,
    /// The body, byte for byte as framed (chunked bodies keep their chunk framing).
    body: Vec<u8>,
    method: String,
    /// Request target without the query, percent-decoded.
    path: String,
    query: String,
}

/// One response as the server sent it, body de-framed.
struct Response {
    status: u16,
    reason: String,
    /// Headers other than the framing ones (`content-length`, `transfer-encoding`).
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server will close the connection after this response.
    closes: bool,
    /// A HEAD answer, 1xx, 204 or 304: no body, whatever the headers say.
    bodiless: bool,
    /// The `content-length` a HEAD answer announced.
    announced: Option<String>,
    /// The answer to a HEAD request.
    head_request: bool,
}

/// Serves one client connection: requests one at a time (HTTP/1.1 clients here do not pipeline).
async fn serve(client: TcpStream, endpoint: usize, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let mut client = BufReader::new(client);
    let mut server: Option<BufReader<TcpStream>> = None;
    loop {
        let Some(request) = read_request(&mut client).await else {
            return;
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let fault = choose(shared, &request);
        if let Some(kind @ (Fault::ServerError | Fault::Throttled)) = fault {
            // Answered here; the server never sees the request.
            let (status, reason, extra) = match kind {
                Fault::Throttled => (429, "Too Many Requests", "Retry-After: 1\r\n"),
                _ if shared.rng.lock().unwrap().below(2) == 0 => (500, "Internal Server Error", ""),
                _ => (503, "Service Unavailable", ""),
            };
            let code = if status == 429 {
                "SlowDown"
            } else {
                "InternalError"
            };
            // A HEAD answer has no body (its length header describes the object).
            let body = if request.method == "HEAD" {
                String::new()
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                     <Message>injected by the fault proxy</Message></Error>"
                )
            };
            count(shared, endpoint, kind);
            let answer = format!(
                "HTTP/1.1 {status} {reason}\r\n{extra}content-type: application/xml\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            if client.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if server.is_none() {
            match TcpStream::connect(shared.upstream).await {
                Ok(stream) => server = Some(BufReader::new(stream)),
                Err(_) => return,
            }
        }
        let Some(upstream) = server.as_mut() else {
            return;
        };
        let sent = async {
            upstream.get_mut().write_all(&request.head).await?;
            upstream.get_mut().write_all(&request.body).await
        };
        if sent.await.is_err() {
            return;
        }
        let Some(mut response) = read_response(upstream, &request.method).await else {
            return;
        };
        if request.method == "PUT" && (200..300).contains(&response.status) {
            *shared.last_written.lock().unwrap() =
                Some(request.path.trim_start_matches('/').into());
        }
        // A server that closes after its answer closes the client's connection too.
        let reusable = answer(client.get_mut(), shared, endpoint, fault, &mut response).await;
        if !reusable || response.closes {
            return;
        }
    }
}

/// Whether to fault `request`, and how: drawn before forwarding, so the draws follow the order
/// of requests. A fault that cannot apply to the answer (a body fault on an empty body, a stale
/// listing without the key) is dropped later and not counted.
fn choose(shared: &Shared, request: &Request) -> Option<Fault> {
    let rate = shared.rate_per_million.load(Ordering::SeqCst);
    if rate == 0 {
        return None;
    }
    let kinds = shared.kinds.lock().unwrap().clone();
    let listing = is_listing(request);
    let applicable: Vec<Fault> = kinds
        .into_iter()
        .filter(|kind| match kind {
            Fault::StaleListing => listing,
            kind if kind.needs_body() => request.method == "GET",
            _ => true,
        })
        .collect();
    let mut rng = shared.rng.lock().unwrap();
    if applicable.is_empty() || !rng.chance(rate) {
        return None;
    }
    Some(applicable[rng.below(applicable.len() as u64) as usize])
}

fn is_listing(request: &Request) -> bool {
    request.method == "GET" && request.query.split('&').any(|p| p == "list-type=2")
}

fn count(shared: &Shared, endpoint: usize, kind: Fault) {
    *shared
        .counts
        .lock()
        .unwrap()
        .entry((endpoint, kind))
        .or_default() += 1;
}

/// Sends `response` to the client, faulted as `fault` says. Returns whether the connection can
/// carry another request.
async fn answer(
    client: &mut TcpStream,
    shared: &Shared,
    endpoint: usize,
    fault: Option<Fault>,
    response: &mut Response,
) -> bool {
    let body_len = response.body.len();
    // A point strictly inside the body (at least one byte kept, at least one cut).
    let cut = || {
        let mut rng = shared.rng.lock().unwrap();
        1 + rng.below((body_len as u64).saturating_sub(1).max(1)) as usize
    };
    match fault {
        Some(Fault::AnswerLost) => {
            count(shared, endpoint, Fault::AnswerLost);
            response.status = 500;
            response.reason = "Internal Server Error".into();
            response.headers.retain(|(name, _)| name == "date");
            response.announced = None;
            if response.head_request {
                response.announced = Some("0".into());
            } else {
                response.bodiless = false;
                response.body =
                    b"<Error><Code>InternalError</Code><Message>answer lost</Message></Error>"
                        .to_vec();
            }
            write_all(client, &head(response, response.body.len()), &response.body).await
        }
        Some(Fault::StaleListing) => {
            let last = shared.last_written.lock().unwrap().clone();
            if last.is_some_and(|path| omit_key(&mut response.body, &path)) {
                count(shared, endpoint, Fault::StaleListing);
            }
            write_all(client, &head(response, response.body.len()), &response.body).await
        }
        Some(kind) if kind.needs_body() && body_len >= 2 => {
            count(shared, endpoint, kind);
            match kind {
                Fault::ResetMidBody | Fault::ShortBody => {
                    let keep = cut();
                    let _ = client
                        .write_all(
                            &[head(response, body_len), response.body[..keep].to_vec()].concat(),
                        )
                        .await;
                    let _ = client.flush().await;
                    if kind == Fault::ResetMidBody {
                        // SO_LINGER 0: closing sends RST instead of FIN.
                        let _ = client.set_zero_linger();
                    } else {
                        let _ = client.shutdown().await;
                    }
                    false
                }
                Fault::TruncatedMatchingLength => {
                    let keep = cut();
                    response.body.truncate(keep);
                    write_all(client, &head(response, keep), &response.body).await
                }
                _ => {
                    // SlowBody: eight pieces, 40 ms apart (about a third of a second in all).
                    if client.write_all(&head(response, body_len)).await.is_err() {
                        return false;
                    }
                    let piece = body_len.div_ceil(8).max(1);
                    for chunk in response.body.chunks(piece) {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        if client.write_all(chunk).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            }
        }
        _ => write_all(client, &head(response, body_len), &response.body).await,
    }
}

async fn write_all(client: &mut TcpStream, head: &[u8], body: &[u8]) -> bool {
    client.write_all(&[head, body].concat()).await.is_ok()
}

/// The response head with `content-length: length`.
fn head(response: &Response, length: usize) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {} {}\r\n", response.status, response.reason);
    for (name, value) in &response.headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    match (&response.announced, response.bodiless) {
        (Some(announced), _) => text.push_str(&format!("content-length: {announced}\r\n")),
        (None, true) => {}
        (None, false) => text.push_str(&format!("content-length: {length}\r\n")),
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// Removes from a ListObjectsV2 page the `<Contents>` entry of `path` (`bucket/key`), fixing
/// `<KeyCount>`. Returns whether the key was there.
fn omit_key(body: &mut Vec<u8>, path: &str) -> bool {
    match without_key(body, path) {
        Some(edited) => {
            *body = edited;
            true
        }
        None => false,
    }
}

fn without_key(body: &[u8], path: &str) -> Option<Vec<u8>> {
    let text = core::str::from_utf8(body).ok()?;
    let (_, key) = path.split_once('/')?;
    // rusty-s3 asks for `encoding-type=url`: listed keys are percent-encoded.
    let mut from = 0;
    let (start, end) = loop {
        let start = from + text[from..].find("<Contents>")?;
        let end = start + text[start..].find("</Contents>")? + "</Contents>".len();
        let entry = &text[start..end];
        let listed = entry
            .split_once("<Key>")
            .and_then(|(_, rest)| rest.split_once("</Key>"))
            .map(|(listed, _)| percent_decode(listed));
        if listed.as_deref() == Some(key) {
            break (start, end);
        }
        from = end;
    };
    let mut edited = format!("{}{}", &text[..start], &text[end..]);
    if let Some(open) = edited.find("<KeyCount>") {
        let from = open + "<KeyCount>".len();
        if let Some(len) = edited[from..].find("</KeyCount>")
            && let Ok(n) = edited[from..from + len].parse::<u64>()
        {
            edited.replace_range(from..from + len, &n.saturating_sub(1).to_string());
        }
    }
    Some(edited.into_bytes())
}

/// Reads a head (up to and including the blank line); `None` at end of stream.
async fn read_head(from: &mut (impl AsyncBufReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        match from.read_until(b'\n', &mut head).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if &head[before..] == b"\r\n" && before > 0 {
            return Some(head);
        }
    }
}

/// Header (lowercased name, value) pairs of a head, after its first line.
fn headers(head: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(head)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

async fn read_request(client: &mut BufReader<TcpStream>) -> Option<Request> {
    let head = read_head(client).await?;
    let first = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let mut parts = first.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (percent_decode(path), query.to_owned());
    let fields = headers(&head);
    let mut body = Vec::new();
    if is_chunked(&fields) {
        read_chunked(client, &mut body, true).await?;
    } else if let Some(length) = header(&fields, "content-length") {
        let length: u64 = length.parse().ok()?;
        client.take(length).read_to_end(&mut body).await.ok()?;
        if body.len() as u64 != length {
            return None;
        }
    }
    Some(Request {
        head,
        body,
        method,
        path,
        query,
    })
}

async fn read_response(server: &mut BufReader<TcpStream>, method: &str) -> Option<Response> {
    let head = read_head(server).await?;
    let first = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let mut parts = first.splitn(3, ' ');
    let _version = parts.next()?;
    let status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").to_owned();
    let fields = headers(&head);
    let closes = header(&fields, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    let bodiless = method == "HEAD" || status == 204 || status == 304 || status < 200;
    let mut closes = closes;
    if bodiless {
        // Nothing follows the head.
    } else if is_chunked(&fields) {
        read_chunked(server, &mut body, false).await?;
    } else if let Some(length) = header(&fields, "content-length") {
        let length: u64 = length.parse().ok()?;
        (&mut *server)
            .take(length)
            .read_to_end(&mut body)
            .await
            .ok()?;
        if body.len() as u64 != length {
            return None;
        }
    } else {
        server.read_to_end(&mut body).await.ok()?;
        closes = true;
    }
    // The framing headers are rewritten on the way out, except the length a HEAD answer
    // announces (the object's, though no body follows).
    let announced = if method == "HEAD" {
        header(&fields, "content-length").map(str::to_owned)
    } else {
        None
    };
    let kept: Vec<(String, String)> = fields
        .into_iter()
        .filter(|(name, _)| name != "transfer-encoding" && name != "content-length")
        .collect();
    Some(Response {
        status,
        reason,
        headers: kept,
        body,
        closes,
        bodiless,
        announced,
        head_request: method == "HEAD",
    })
}

/// Reads a chunked body: raw framing into `out` when `raw`, else the de-chunked bytes.
async fn read_chunked(
    from: &mut (impl AsyncBufReadExt + AsyncRead + Unpin),
    out: &mut Vec<u8>,
    raw: bool,
) -> Option<()> {
    loop {
        let mut size_line = Vec::new();
        from.read_until(b'\n', &mut size_line).await.ok()?;
        if raw {
            out.extend_from_slice(&size_line);
        }
        let text = String::from_utf8_lossy(&size_line);
        let size = u64::from_str_radix(text.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut line = Vec::new();
                from.read_until(b'\n', &mut line).await.ok()?;
                if raw {
                    out.extend_from_slice(&line);
                }
                if line == b"\r\n" || line.is_empty() {
                    return Some(());
                }
            }
        }
        let mut chunk = Vec::new();
        (&mut *from)
            .take(size + 2)
            .read_to_end(&mut chunk)
            .await
            .ok()?;
        if chunk.len() as u64 != size + 2 {
            return None;
        }
        if raw {
            out.extend_from_slice(&chunk);
        } else {
            out.extend_from_slice(&chunk[..size as usize]);
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
