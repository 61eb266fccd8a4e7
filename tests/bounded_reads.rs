//! Memory stays flat whatever a store sends (issue 11): a 512 MiB object, a body that never ends,
//! a range the server ignores, a body cut short or stalled. Each read has a bound of a few MiB
//! and must end with a typed error (or exactly the bytes asked for) while the process's peak
//! resident memory (`VmHWM` in `/proc/self/status`) stays within [`FLAT`] of where it started.
//!
//! libtest runs tests as threads of one process, where any other test could raise the peak, so
//! this binary has no harness: run plainly, it runs itself again once per scenario (named in
//! [`SCENARIO`]), and each child resets its peak (`/proc/self/clear_refs`) once its fixtures
//! are ready, measures one scenario and prints its figures. Linux only (it reads `/proc`).
//!
//! The S3 scenarios talk to a small HTTP server in the child (fault injection: it answers every
//! GET with the misbehaviour under test, writing from one 64 KiB buffer so that it holds no
//! memory itself); the directory scenarios use sparse files, which take no disk space.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore, S3Config, S3Store, StoreError};
use chatvault::sync::segment::MAX_SEGMENT_BODY;
use chatvault::sync::{Change, Chat, Message};
use chatvault::vault::{DeviceInfo, Vault};

/// Set in a child: the scenario it runs.
const SCENARIO: &str = "CHATVAULT_BOUNDED_READS_SCENARIO";
/// The hostile object's size.
const HUGE: u64 = 512 * 1024 * 1024;
/// The bound reads are given.
const BOUND: u64 = 4 * 1024 * 1024;
/// How far the peak may rise above the resident memory before the scenario.
const FLAT: u64 = 64 * 1024 * 1024;
/// Bytes the fake server writes per `write` call.
const WRITE_CHUNK: usize = 64 * 1024;

type Scenario = fn(&tokio::runtime::Runtime);

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "the_peak_measure_sees_what_a_read_keeps",
        the_peak_measure_sees_what_a_read_keeps,
    ),
    (
        "a_512_mib_file_is_refused_by_its_size_before_reading",
        a_512_mib_file_is_refused_by_its_size_before_reading,
    ),
    (
        "a_file_without_end_is_read_only_to_its_bound",
        a_file_without_end_is_read_only_to_its_bound,
    ),
    (
        "a_512_mib_body_is_refused_by_its_content_length",
        a_512_mib_body_is_refused_by_its_content_length,
    ),
    (
        "a_512_mib_body_without_length_is_read_only_to_its_bound",
        a_512_mib_body_without_length_is_read_only_to_its_bound,
    ),
    (
        "an_endless_chunked_body_is_read_only_to_its_bound",
        an_endless_chunked_body_is_read_only_to_its_bound,
    ),
    (
        "a_range_the_server_ignores_is_cut_from_the_whole_body",
        a_range_the_server_ignores_is_cut_from_the_whole_body,
    ),
    (
        "a_partial_answer_longer_than_the_range_is_read_only_to_its_length",
        a_partial_answer_longer_than_the_range_is_read_only_to_its_length,
    ),
    (
        "endless_listings_and_error_pages_are_cut",
        endless_listings_and_error_pages_are_cut,
    ),
    (
        "a_body_cut_short_is_retried_and_then_unavailable",
        a_body_cut_short_is_retried_and_then_unavailable,
    ),
    (
        "a_stalled_body_ends_after_the_idle_timeout",
        a_stalled_body_ends_after_the_idle_timeout,
    ),
    (
        "a_512_mib_segment_fails_sync_and_verify_with_flat_memory",
        a_512_mib_segment_fails_sync_and_verify_with_flat_memory,
    ),
    (
        "a_valid_segment_can_outgrow_max_segment_body",
        a_valid_segment_can_outgrow_max_segment_body,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in SCENARIOS {
            println!("{name}: test");
        }
        return;
    }
    if let Ok(name) = std::env::var(SCENARIO) {
        let (_, scenario) = SCENARIOS
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a known scenario");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        scenario(&runtime);
        return;
    }
    if !cfg!(target_os = "linux") {
        println!("bounded_reads: ignored (peak memory is read from Linux's /proc)");
        return;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen = SCENARIOS.iter().filter(|(name, _)| {
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    *name == f.as_str()
                } else {
                    name.contains(f.as_str())
                }
            })
    });
    let mut failed = Vec::new();
    for (name, _) in chosen {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .env(SCENARIO, name)
            .output()
            .unwrap();
        let figures = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            println!(
                "test {name} ... ok ({})",
                figures.trim().replace('\n', "; ")
            );
        } else {
            println!("test {name} ... FAILED");
            print!("{figures}{}", String::from_utf8_lossy(&output.stderr));
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

// --- Measuring ---------------------------------------------------------------------------------

/// A field of `/proc/self/status` in bytes (the file gives kB).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `work`, returning what it returned and how far the peak resident memory rose above the
/// resident memory before it (the peak is reset first, so fixtures made before do not count).
fn peak_rise<T>(work: impl FnOnce() -> T) -> (T, u64, Duration) {
    // "5" resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    let start = Instant::now();
    let value = work();
    let elapsed = start.elapsed();
    let peak = status_bytes("VmHWM:");
    (value, peak.saturating_sub(before), elapsed)
}

/// Runs `work` and checks that memory stayed flat; prints the figures for the parent.
fn flat<T>(work: impl FnOnce() -> T) -> T {
    let (value, rise, elapsed) = peak_rise(work);
    println!(
        "peak RSS +{:.1} MiB, {:.2} s",
        rise as f64 / MIB,
        elapsed.as_secs_f64()
    );
    assert!(
        rise <= FLAT,
        "peak RSS rose by {:.1} MiB (allowed {:.0})",
        rise as f64 / MIB,
        FLAT as f64 / MIB
    );
    value
}

fn assert_too_large<T: std::fmt::Debug>(result: Result<T, StoreError>, limit: u64) {
    match result {
        Err(StoreError::TooLarge { limit: said, .. }) => assert_eq!(said, limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// A sparse file of `len` bytes (zeros, no disk space).
fn sparse(path: &Path, len: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

// --- Directory store ---------------------------------------------------------------------------

/// The control: a read the bound allows (96 MiB of a sparse file) does raise the peak by what it
/// keeps, so a flat peak elsewhere means the bytes were not read, not that the measure is blind.
fn the_peak_measure_sees_what_a_read_keeps(runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().to_path_buf());
    let len = 96 * 1024 * 1024;
    sparse(&dir.path().join("o/big"), len);
    let (body, rise, _) = peak_rise(|| runtime.block_on(store.get("o/big", 2 * len)).unwrap());
    assert_eq!(body.map(|b| b.len() as u64), Some(len));
    println!("peak RSS +{:.1} MiB for 96 MiB kept", rise as f64 / MIB);
    assert!(rise >= 90 * 1024 * 1024, "rise {rise}");
}

fn a_512_mib_file_is_refused_by_its_size_before_reading(runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().to_path_buf());
    sparse(&dir.path().join("segments/x/1"), HUGE);
    let result = flat(|| runtime.block_on(store.get("segments/x/1", BOUND)));
    assert_too_large(result, BOUND);
}

/// A file whose size says nothing (here a link to `/dev/zero`, size 0 and endless; likewise a
/// file growing under the reader) is read only to the bound and one byte more.
fn a_file_without_end_is_read_only_to_its_bound(runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().to_path_buf());
    std::fs::create_dir_all(dir.path().join("o")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("o/endless")).unwrap();
    let result = flat(|| runtime.block_on(store.get("o/endless", BOUND)));
    assert_too_large(result, BOUND);
}

// --- S3 store against a misbehaving server -----------------------------------------------------

/// What the fake server saw and sent.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    body_bytes_sent: AtomicU64,
}

/// Answers each request (its index and head) by writing to the connection.
type Behaviour = dyn Fn(u64, &str, &mut TcpStream, &Counters) + Send + Sync;

/// A loopback HTTP server, one thread per connection, answering with `behaviour`.
fn serve(behaviour: Arc<Behaviour>) -> (u16, Arc<Counters>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counters = Arc::new(Counters::default());
    let shared = counters.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (behaviour, counters) = (behaviour.clone(), shared.clone());
            std::thread::spawn(move || {
                // Keep-alive: answer requests on this connection until it closes.
                while let Some(head) = read_head(&mut stream) {
                    let n = counters.requests.fetch_add(1, Ordering::SeqCst);
                    behaviour(n, &head, &mut stream, &counters);
                }
            });
        }
    });
    (port, counters)
}

/// The next request head on `stream` (GETs have no body), `None` once it closes.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The body's byte at `offset`: a pattern, so a cut-out range can be checked.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Writes body bytes `from..to` (`to` = `None`: forever), until done or the client goes away.
/// `chunked`: in HTTP chunked framing (without the final empty chunk).
fn send_body(
    stream: &mut TcpStream,
    counters: &Counters,
    from: u64,
    to: Option<u64>,
    chunked: bool,
) {
    let mut offset = from;
    let mut buffer = vec![0u8; WRITE_CHUNK];
    while to.is_none_or(|to| offset < to) {
        let len = to.map_or(WRITE_CHUNK as u64, |to| {
            (to - offset).min(WRITE_CHUNK as u64)
        });
        for (i, byte) in buffer[..len as usize].iter_mut().enumerate() {
            *byte = pattern(offset + i as u64);
        }
        let sent = if chunked {
            write!(stream, "{len:x}\r\n")
                .and_then(|()| stream.write_all(&buffer[..len as usize]))
                .and_then(|()| stream.write_all(b"\r\n"))
        } else {
            stream.write_all(&buffer[..len as usize])
        };
        if sent.is_err() {
            return;
        }
        counters.body_bytes_sent.fetch_add(len, Ordering::SeqCst);
        offset += len;
    }
}

fn config(port: u16) -> S3Config {
    let mut config = S3Config::new(&format!("http://127.0.0.1:{port}"), "us-east-1", "b")
        .with_credentials("AKIDEXAMPLE", "secret", None);
    config.path_style = true;
    config.max_attempts = 3;
    config.base_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(20);
    config
}

/// A GET of a whole object from a server answering with `behaviour`: refused with `TooLarge`,
/// in one request (never retried), with flat memory. Returns the body bytes the server got out.
fn refused_whole(runtime: &tokio::runtime::Runtime, behaviour: Arc<Behaviour>) -> u64 {
    let (port, counters) = serve(behaviour);
    let store = S3Store::new(config(port)).unwrap();
    let result = flat(|| runtime.block_on(store.get("segments/x/1", BOUND)));
    assert_too_large(result, BOUND);
    assert_eq!(counters.requests.load(Ordering::SeqCst), 1, "not retried");
    counters.body_bytes_sent.load(Ordering::SeqCst)
}

fn a_512_mib_body_is_refused_by_its_content_length(runtime: &tokio::runtime::Runtime) {
    let sent = refused_whole(
        runtime,
        Arc::new(|_, _, stream, counters| {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
            send_body(stream, counters, 0, Some(HUGE), false);
        }),
    );
    // Refused on the headers: what the server got out is what the sockets' buffers took.
    assert!(sent < HUGE / 8, "{sent} bytes sent");
}

fn a_512_mib_body_without_length_is_read_only_to_its_bound(runtime: &tokio::runtime::Runtime) {
    let sent = refused_whole(
        runtime,
        Arc::new(|_, _, stream, counters| {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
            send_body(stream, counters, 0, Some(HUGE), false);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }),
    );
    assert!(sent < HUGE / 8, "{sent} bytes sent");
}

fn an_endless_chunked_body_is_read_only_to_its_bound(runtime: &tokio::runtime::Runtime) {
    refused_whole(
        runtime,
        Arc::new(|_, _, stream, counters| {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            send_body(stream, counters, 0, None, true);
        }),
    );
}

/// A server that ignores `Range` sends the whole 512 MiB object with 200: the store skips to the
/// range, keeps exactly it, and stops reading at its end.
fn a_range_the_server_ignores_is_cut_from_the_whole_body(runtime: &tokio::runtime::Runtime) {
    let (port, counters) = serve(Arc::new(|_, _, stream, counters| {
        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
        send_body(stream, counters, 0, Some(HUGE), false);
    }));
    let store = S3Store::new(config(port)).unwrap();
    let range = 40 * 1024 * 1024..40 * 1024 * 1024 + BOUND;
    let body = flat(|| runtime.block_on(store.get_range("packs/p", range.clone())))
        .unwrap()
        .unwrap();
    assert_eq!(body.len() as u64, BOUND);
    assert!(
        body.iter()
            .zip(range.clone())
            .all(|(&b, at)| b == pattern(at))
    );
    let sent = counters.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent < range.end + 16 * 1024 * 1024, "{sent} bytes sent");
}

/// A 206 whose body goes on past the range (here forever): the range's bytes, nothing more.
fn a_partial_answer_longer_than_the_range_is_read_only_to_its_length(
    runtime: &tokio::runtime::Runtime,
) {
    let start = 1000;
    let (port, _) = serve(Arc::new(move |_, _, stream, counters| {
        let _ = write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{HUGE}\r\n\
             transfer-encoding: chunked\r\n\r\n",
            HUGE - 1
        );
        send_body(stream, counters, start, None, true);
    }));
    let store = S3Store::new(config(port)).unwrap();
    let range = start..start + BOUND;
    let body = flat(|| runtime.block_on(store.get_range("packs/p", range.clone())))
        .unwrap()
        .unwrap();
    assert_eq!(body.len() as u64, BOUND);
    assert!(body.iter().zip(range).all(|(&b, at)| b == pattern(at)));
}

/// A listing page that never ends fails with `TooLarge` (16 MiB at most); an endless 503 page is
/// cut at its first 64 KiB, retried as any 503, and reported `Busy`.
fn endless_listings_and_error_pages_are_cut(runtime: &tokio::runtime::Runtime) {
    let (port, listing) = serve(Arc::new(|_, _, stream, counters| {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        send_body(stream, counters, 0, None, true);
    }));
    let store = S3Store::new(config(port)).unwrap();
    let result = flat(|| runtime.block_on(store.list("segments/")));
    assert!(
        matches!(result, Err(StoreError::TooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(listing.requests.load(Ordering::SeqCst), 1);

    let (port, failing) = serve(Arc::new(|_, _, stream, counters| {
        let _ = write!(
            stream,
            "HTTP/1.1 503 Slow Down\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        send_body(stream, counters, 0, None, true);
    }));
    let store = S3Store::new(config(port)).unwrap();
    let result = flat(|| runtime.block_on(store.get("segments/x/1", BOUND)));
    assert!(matches!(result, Err(StoreError::Busy(_))), "{result:?}");
    assert_eq!(failing.requests.load(Ordering::SeqCst), 3, "retried");
}

/// A body shorter than its Content-Length (the connection cut mid-body) is a transient failure:
/// retried, and `Unavailable` (retryable) once the attempts are spent; a later whole answer wins.
fn a_body_cut_short_is_retried_and_then_unavailable(runtime: &tokio::runtime::Runtime) {
    let len = 1024 * 1024;
    // Cuts the first `cuts` answers at half their length.
    let cutting = |cuts: u64| -> Arc<Behaviour> {
        Arc::new(move |n, _, stream, counters| {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            if n < cuts {
                send_body(stream, counters, 0, Some(len / 2), false);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            } else {
                send_body(stream, counters, 0, Some(len), false);
            }
        })
    };
    let (port, always) = serve(cutting(u64::MAX));
    let store = S3Store::new(config(port)).unwrap();
    let error = flat(|| runtime.block_on(store.get("segments/x/1", BOUND))).unwrap_err();
    assert!(
        matches!(error, StoreError::Unavailable(_)) && error.is_retryable(),
        "{error:?}"
    );
    assert_eq!(always.requests.load(Ordering::SeqCst), 3);

    let (port, once) = serve(cutting(1));
    let store = S3Store::new(config(port)).unwrap();
    let body = runtime
        .block_on(store.get("segments/x/1", BOUND))
        .unwrap()
        .unwrap();
    assert_eq!(body.len() as u64, len);
    assert_eq!(once.requests.load(Ordering::SeqCst), 2);
}

/// A body that stops arriving ends each attempt after `read_idle_timeout`, not after the
/// request timeout: retried, then `Unavailable`.
fn a_stalled_body_ends_after_the_idle_timeout(runtime: &tokio::runtime::Runtime) {
    let (port, counters) = serve(Arc::new(|_, _, stream, counters| {
        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n");
        send_body(stream, counters, 0, Some(1024), false);
        std::thread::sleep(Duration::from_secs(60));
    }));
    let mut config = config(port);
    config.read_idle_timeout = Duration::from_millis(300);
    let store = S3Store::new(config).unwrap();
    let start = Instant::now();
    let error = flat(|| runtime.block_on(store.get("segments/x/1", BOUND))).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(&error, StoreError::Unavailable(text) if text.contains("no byte")),
        "{error:?}"
    );
    assert_eq!(counters.requests.load(Ordering::SeqCst), 3);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

// --- A vault -----------------------------------------------------------------------------------

/// A directory vault whose newest segment is replaced by a 512 MiB (sparse) file: a new device's
/// sync and the writer's verify fail with `TooLarge`, and memory stays flat.
fn a_512_mib_segment_fails_sync_and_verify_with_flat_memory(runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(root.clone()));
    let key = RecoveryKey::generate().unwrap();
    let info = |name: &str| DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    };
    let (writer, reader) = runtime.block_on(async {
        let writer = Vault::open(store.clone(), &dir.path().join("a"), info("a"), &key)
            .await
            .unwrap();
        for round in 0..2 {
            writer
                .record(vec![Change::UpsertMessage(Message {
                    chat_id: "chat".into(),
                    message_id: format!("m{round}"),
                    sender: "a".into(),
                    sent_at_ms: round,
                    text: format!("message {round}"),
                    ..Message::default()
                })])
                .unwrap();
            writer.sync(None, None).await.unwrap();
        }
        let reader = Vault::open(store.clone(), &dir.path().join("b"), info("b"), &key)
            .await
            .unwrap();
        (writer, reader)
    });
    let segments: Vec<String> = runtime
        .block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.contains("segments/"))
        .collect();
    assert!(segments.len() >= 2, "{segments:?}");
    let newest = segments.last().unwrap();
    sparse(&root.join(newest), HUGE);

    let (synced, verified) =
        flat(|| runtime.block_on(async { (reader.sync(None, None).await, writer.verify().await) }));
    for (what, error) in [
        ("sync", synced.map(|_| ()).unwrap_err()),
        ("verify", verified.map(|_| ()).unwrap_err()),
    ] {
        assert!(
            matches!(
                &error,
                chatvault::Error::Store(StoreError::TooLarge { key, .. }) if newest.ends_with(key.as_str())
            ),
            "{what}: {error:?}"
        );
    }
}

/// Why a segment's bound is the format's [`MAX_OBJECT_LEN`](chatvault::format::MAX_OBJECT_LEN)
/// and not [`MAX_SEGMENT_BODY`] plus some overhead: that constant is where the outbox splits
/// operations, not a cap. One valid chat upsert (10,000 members of 1,000 bytes) recorded after a
/// message of almost 1 MiB lands in one segment of more than 8 MiB, which another device must be
/// able to read.
fn a_valid_segment_can_outgrow_max_segment_body(runtime: &tokio::runtime::Runtime) {
    // Printable ASCII from a xorshift generator: barely compressible, and valid identifiers.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut text = |len: usize| -> String {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b' ' + (state % 95) as u8)
            })
            .collect()
    };
    let message = Change::UpsertMessage(Message {
        chat_id: "big".into(),
        message_id: "m".into(),
        sender: "a".into(),
        text: text(1_000_000),
        ..Message::default()
    });
    let chat = Change::UpsertChat(Chat {
        chat_id: "big".into(),
        title: text(1_000_000),
        members: (0..10_000).map(|_| text(1_000)).collect(),
        payload: Vec::new(),
    });
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let info = |name: &str| DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    };
    let largest = runtime.block_on(async {
        let writer = Vault::open(store.clone(), &dir.path().join("a"), info("a"), &key)
            .await
            .unwrap();
        writer.record(vec![message, chat]).unwrap();
        writer.sync(None, None).await.unwrap();
        let reader = Vault::open(store.clone(), &dir.path().join("b"), info("b"), &key)
            .await
            .unwrap();
        let report = reader.sync(None, None).await.unwrap();
        let largest = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.key.contains("segments/"))
            .map(|o| o.size)
            .max()
            .unwrap();
        // The other device read it whole.
        assert!(report.bytes_down >= largest, "{report:?}");
        largest
    });
    println!("largest segment {:.2} MiB", largest as f64 / MIB);
    assert!(largest > MAX_SEGMENT_BODY as u64 + 1024 * 1024, "{largest}");
}
