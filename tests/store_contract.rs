//! One contract, every store: the in-memory store, the directory store and, when the servers are
//! running (see `scripts/s3-servers.sh`; the README's test command starts them), Garage and moto.
//!
//! The S3 tests are `#[ignore]`d (a plain `cargo test` lists and counts them as ignored); run them
//! with the servers' environment and `cargo test -- --include-ignored`, as the test command does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use chatvault::keys::RecoveryKey;
use chatvault::store::{
    DirectoryStore, MemoryStore, ObjectStore, S3Config, S3Store, StoreConfig, StoreError,
};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;
use common::cached;

use common::run_id;

/// The contract every backend meets. Keys are under a fresh prefix so reruns never collide.
/// `put_if_absent` writes where nothing is; where the store `honours` it, a second write under
/// the name is refused and the first body stays; where not, it writes as `put` does.
async fn write_once(store: &dyn ObjectStore, honours: bool) {
    let key = format!("write-once-{}/object", run_id());
    assert!(store.put_if_absent(&key, b"first".to_vec()).await.unwrap());
    let second = store.put_if_absent(&key, b"second".to_vec()).await.unwrap();
    assert_eq!(second, !honours);
    let kept: &[u8] = if honours { b"first" } else { b"second" };
    assert_eq!(store.get(&key, 100).await.unwrap().as_deref(), Some(kept));
    store.delete(&key).await.unwrap();
}

async fn contract(store: &dyn ObjectStore) {
    let p = format!("contract-{}/", run_id());
    let key = |k: &str| format!("{p}{k}");

    // Missing objects.
    assert_eq!(store.get(&key("missing"), 0).await.unwrap(), None);
    assert_eq!(store.get_range(&key("missing"), 0..10).await.unwrap(), None);
    store.delete(&key("missing")).await.unwrap();

    // Round trips: empty, small, and 6 MiB (multipart on S3 in these tests).
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (name, body) in [
        ("empty", Vec::new()),
        ("small", b"hello, bucket".to_vec()),
        ("big", big.clone()),
    ] {
        store.put(&key(name), body.clone()).await.unwrap();
        assert_eq!(
            store
                .get(&key(name), body.len() as u64)
                .await
                .unwrap()
                .as_deref(),
            Some(&body[..]),
            "{name}"
        );
    }

    // Overwrite.
    store
        .put(&key("small"), b"replaced".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get(&key("small"), 8).await.unwrap().unwrap(),
        b"replaced"
    );

    // Ranges: start, middle, clamped end, past the end, empty.
    let big_key = key("big");
    let range = |r: std::ops::Range<u64>| store.get_range(&big_key, r);
    assert_eq!(range(0..4).await.unwrap().unwrap(), &big[..4]);
    assert_eq!(
        range(1_000_000..1_000_100).await.unwrap().unwrap(),
        &big[1_000_000..1_000_100]
    );
    let len = big.len() as u64;
    assert_eq!(
        range(len - 3..len + 100).await.unwrap().unwrap(),
        &big[big.len() - 3..]
    );
    assert_eq!(range(len + 10..len + 20).await.unwrap().unwrap(), b"");
    assert_eq!(range(5..5).await.unwrap().unwrap(), b"");
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 9..3;
    assert_eq!(range(backwards).await.unwrap().unwrap(), b"");
    let empty_key = key("empty");
    for r in [0..10, 0..0, 3..7] {
        assert_eq!(
            store
                .get_range(&empty_key, r.clone())
                .await
                .unwrap()
                .unwrap(),
            b"",
            "{r:?} of an empty object"
        );
    }
    let small_key = key("small");
    assert_eq!(
        store.get_range(&small_key, 2..5).await.unwrap().unwrap(),
        b"pla"
    );

    // Bounded reads: the bound is the most a read accepts. An object one byte longer is refused
    // with `TooLarge` (never retried: it stays too large), known here from the listing's size,
    // the file's size or Content-Length before any of it is read; a missing object is `None`
    // whatever the bound.
    let bounded = key("bounded");
    store.put(&bounded, vec![7; 1000]).await.unwrap();
    assert_eq!(
        store.get(&bounded, 1000).await.unwrap().unwrap().len(),
        1000
    );
    for (name, limit) in [("bounded", 999), ("bounded", 0), ("big", 1024 * 1024)] {
        match store.get(&key(name), limit).await {
            Err(error @ StoreError::TooLarge { .. }) => {
                assert!(!error.is_retryable());
                let StoreError::TooLarge {
                    key: what,
                    limit: said,
                } = error
                else {
                    unreachable!()
                };
                assert!(what.ends_with(&key(name)), "{what}");
                assert_eq!(said, limit);
            }
            other => panic!("{name} read with a bound of {limit}: {other:?}"),
        }
    }
    assert_eq!(store.get(&empty_key, 0).await.unwrap().unwrap(), b"");
    assert_eq!(store.get(&key("missing"), 0).await.unwrap(), None);
    // A range never brings more than its length, whatever the object's size.
    assert_eq!(range(0..1).await.unwrap().unwrap(), &big[..1]);
    store.delete(&bounded).await.unwrap();

    // Unicode and every S3 "safe" punctuation character (plus a few that trip up signers).
    for (i, name) in [
        "unicode/ünïcødé-日本語-✉️",
        "safe/a-b_c.d~e!f*g'(h)",
        "tricky/plus+equals=at@comma,semi;colon:",
    ]
    .into_iter()
    .enumerate()
    {
        let body = format!("body {i} of {name}").into_bytes();
        store.put(&key(name), body.clone()).await.unwrap();
        assert_eq!(
            store.get(&key(name), body.len() as u64).await.unwrap(),
            Some(body),
            "{name}"
        );
        let listed = store.list(&key(name)).await.unwrap();
        assert_eq!(
            listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            [key(name).as_str()],
            "{name}"
        );
        store.delete(&key(name)).await.unwrap();
        assert_eq!(store.get(&key(name), 0).await.unwrap(), None, "{name}");
    }

    // Invalid keys are refused the same way everywhere, before any I/O.
    for bad in [
        "",
        "../x",
        &key("a//b"),
        &key("a/../../b"),
        &key("trailing/"),
    ] {
        assert!(
            matches!(store.put(bad, vec![1]).await, Err(StoreError::Other(_))),
            "put {bad:?}"
        );
        assert!(
            matches!(store.get(bad, 1).await, Err(StoreError::Other(_))),
            "get {bad:?}"
        );
    }

    // Listing: prefix filter, key order, more than one page where the store pages.
    for i in [3, 0, 4, 1, 2, 5] {
        store
            .put(&key(&format!("list/item-{i}")), vec![i as u8; i])
            .await
            .unwrap();
    }
    store.put(&key("listless"), vec![1]).await.unwrap();
    let listed = store.list(&key("list/")).await.unwrap();
    let names: Vec<String> = listed.iter().map(|o| o.key.clone()).collect();
    let expected: Vec<String> = (0..6).map(|i| key(&format!("list/item-{i}"))).collect();
    assert_eq!(names, expected);
    assert_eq!(
        listed.iter().map(|o| o.size).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(store.list(&key("nothing-here/")).await.unwrap(), vec![]);
    // A prefix is a plain string prefix, not a directory.
    let both: Vec<String> = store
        .list(&key("list"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(both.len(), 7);
    assert_eq!(both.last(), Some(&key("listless")));
    assert_eq!(store.list(&key("list/item-4")).await.unwrap().len(), 1);
    // Everything under the run's prefix, in byte order, across several pages on S3.
    let all: Vec<String> = store
        .list(&p)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), 10, "{all:?}");

    // Delete.
    store.delete(&key("list/item-3")).await.unwrap();
    assert_eq!(store.get(&key("list/item-3"), 3).await.unwrap(), None);
    assert_eq!(store.list(&key("list/")).await.unwrap().len(), 5);
    for object in store.list(&p).await.unwrap() {
        store.delete(&object.key).await.unwrap();
    }
    assert!(store.list(&p).await.unwrap().is_empty());
}

/// Two devices sync a vault through the store, and a third restores it and verifies everything.
async fn vault_round_trip(store: Arc<dyn ObjectStore>) {
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = |n: &str| DeviceInfo {
        name: n.into(),
        platform: "test".into(),
    };
    let a = cached(
        Vault::open(store.clone(), &dir.path().join("a"), info("a"), &key)
            .await
            .unwrap(),
    );
    let b = cached(
        Vault::open(store.clone(), &dir.path().join("b"), info("b"), &key)
            .await
            .unwrap(),
    );
    for (vault, who) in [(&a, "a"), (&b, "b")] {
        vault
            .record(
                (0..50)
                    .map(|i| {
                        Change::UpsertMessage(Message {
                            chat_id: format!("chat-{}", i % 3),
                            message_id: format!("{who}-{i}"),
                            sender: who.into(),
                            sent_at_ms: i,
                            text: format!("message {i} from {who} ✉️"),
                            reply_to: None,
                            ..Message::default()
                        })
                    })
                    .collect(),
            )
            .unwrap();
    }
    let (x, y) = tokio::join!(a.sync(None, None), b.sync(None, None));
    x.unwrap();
    y.unwrap();
    a.sync(None, None).await.unwrap();
    b.sync(None, None).await.unwrap();
    assert_eq!(a.messages(None).unwrap(), b.messages(None).unwrap());
    let c = cached(
        Vault::open(store, &dir.path().join("c"), info("c"), &key)
            .await
            .unwrap(),
    );
    c.sync(None, None).await.unwrap();
    assert_eq!(c.messages(None).unwrap().len(), 100);
    assert_eq!(c.messages(None).unwrap(), a.messages(None).unwrap());
    let report = c.verify().await.unwrap();
    assert!(report.segments >= 2);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(&MemoryStore::new()).await;
    write_once(&MemoryStore::new(), true).await;
    vault_round_trip(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn directory_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().to_path_buf());
    contract(&store).await;
    write_once(&store, true).await;
    vault_round_trip(Arc::new(store)).await;
}

#[tokio::test]
async fn directory_store_refuses_keys_that_escape_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().join("root"));
    for bad in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "",
        "a\\b",
        "./x",
    ] {
        assert!(
            matches!(store.put(bad, vec![1]).await, Err(StoreError::Other(_))),
            "{bad:?}"
        );
    }
    assert!(!dir.path().join("x").exists());
}

/// A test server's configuration with small pages and parts, so that pagination and multipart
/// are exercised (moto refuses parts under 5 MiB but the last).
fn server(name: &str) -> Option<S3Config> {
    let mut config = common::s3_server(name)?;
    config.list_page_size = Some(2);
    config.multipart_threshold = 5 * 1024 * 1024 + 1;
    config.part_size = 5 * 1024 * 1024;
    Some(config)
}

async fn s3_suite(name: &str) {
    let Some(config) = server(name) else { return };
    let store = S3Store::new(config.clone()).unwrap();
    contract(&store).await;
    // moto honours `If-None-Match: *`; Garage 2.5 ignores it and writes (as its probe says).
    write_once(&store, name == "MOTO").await;
    vault_round_trip(Arc::new(S3Store::new(config).unwrap())).await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn garage_meets_the_contract() {
    s3_suite("GARAGE").await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn moto_meets_the_contract() {
    s3_suite("MOTO").await;
}

/// The URL form the servers' environment gives opens a working store (with the credentials
/// passed explicitly, as an app does).
async fn url_opens(name: &str) {
    if common::s3_server(name).is_none() {
        return;
    }
    let url = std::env::var(format!("CHATVAULT_TEST_{name}_URL")).unwrap();
    let access = std::env::var(format!("CHATVAULT_TEST_{name}_ACCESS_KEY")).unwrap();
    let secret = std::env::var(format!("CHATVAULT_TEST_{name}_SECRET_KEY")).unwrap();
    let config = StoreConfig::parse(&url)
        .unwrap()
        .with_credentials(&access, &secret, None);
    // (moto's test credentials use the same word for key and secret.)
    if secret != access {
        assert!(!config.to_string().contains(&secret));
        assert!(!format!("{config:?}").contains(&secret));
    }
    let store = config.open().unwrap();
    let key = format!("url-{}/object", common::run_id());
    store.put(&key, b"via a URL".to_vec()).await.unwrap();
    assert_eq!(store.get(&key, 9).await.unwrap().unwrap(), b"via a URL");
    store.delete(&key).await.unwrap();
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn garage_opens_from_its_url() {
    url_opens("GARAGE").await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn moto_opens_from_its_url() {
    url_opens("MOTO").await;
}

/// A missing bucket is an error, never an empty store.
async fn missing_bucket(name: &str) {
    let Some(mut config) = server(name) else {
        return;
    };
    config.bucket = format!("no-such-bucket-{}", common::run_id());
    let store = S3Store::new(config).unwrap();
    let get = store.get("x", 1024).await;
    assert!(matches!(get, Err(StoreError::Other(_))), "{get:?}");
    let range = store.get_range("x", 0..1).await;
    assert!(matches!(range, Err(StoreError::Other(_))), "{range:?}");
    assert!(matches!(store.list("").await, Err(StoreError::Other(_))));
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn garage_reports_a_missing_bucket() {
    missing_bucket("GARAGE").await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn moto_reports_a_missing_bucket() {
    missing_bucket("MOTO").await;
}

#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn garage_refuses_a_wrong_secret() {
    let Some(mut config) = server("GARAGE") else {
        return;
    };
    config.secret_access_key = "0".repeat(64);
    config.max_attempts = 1;
    let store = S3Store::new(config.clone()).unwrap();
    for result in [
        store.get("anything", 1024).await.map(|_| ()),
        store.get_range("anything", 0..4).await.map(|_| ()),
        store.put("anything", vec![1]).await,
        store.list("").await.map(|_| ()),
        store.delete("anything").await,
    ] {
        assert!(
            matches!(result, Err(StoreError::AccessDenied(_))),
            "{result:?}"
        );
    }
    // An unknown access key too.
    config.access_key_id = "GK000000000000000000000000".into();
    let store = S3Store::new(config).unwrap();
    let result = store.get("anything", 1024).await;
    assert!(
        matches!(result, Err(StoreError::AccessDenied(_))),
        "{result:?}"
    );
}

/// The startup probe tells the two worlds apart: Garage ignores `If-None-Match: *`, moto
/// honours it.
#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn conditional_write_probe_tells_garage_from_moto() {
    for (name, expected) in [("GARAGE", false), ("MOTO", true)] {
        let Some(config) = server(name) else {
            continue;
        };
        let store = S3Store::new(config).unwrap();
        assert_eq!(
            store.probe_conditional_writes().await.unwrap(),
            expected,
            "{name}"
        );
        assert!(
            store.list("").await.unwrap().is_empty(),
            "{name}: probe left behind"
        );
    }
}

/// moto enforces S3's 5 MiB minimum part size: a multipart upload with 1 MiB parts fails at
/// completion, and the store must abort it so that no parts stay behind.
#[tokio::test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn moto_failed_multipart_uploads_are_aborted() {
    let Some(mut config) = server("MOTO") else {
        return;
    };
    config.multipart_threshold = 1024 * 1024;
    config.part_size = 1024 * 1024;
    let store = S3Store::new(config.clone()).unwrap();
    let result = store.put("too-small-parts", vec![7; 3 * 1024 * 1024]).await;
    let Err(StoreError::Other(detail)) = result else {
        panic!("moto accepted 1 MiB parts: {result:?}");
    };
    assert!(detail.contains("EntityTooSmall"), "{detail}");
    assert_eq!(store.get("too-small-parts", 1024).await.unwrap(), None);
    // moto does not check signatures: list the bucket's pending uploads with a plain request.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listing = reqwest::get(format!(
        "{}/{}?uploads&prefix={}",
        config.endpoint,
        config.bucket,
        config.prefix.trim_start_matches('/')
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(listing.contains("ListMultipartUploadsResult"), "{listing}");
    assert!(
        !listing.contains("<UploadId>"),
        "upload left behind: {listing}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_after_retries() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = fake_config(port);
    config.max_attempts = 3;
    config.connect_timeout = Duration::from_millis(500);
    let store = S3Store::new(config.clone()).unwrap();
    let error = store.get("x", 1024).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("after 3 attempts"), "{error}");
    assert_eq!(store.requests_sent(), 3);
    common::assert_no_secrets(&error, &config);
    let error = store.put("x", vec![1]).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    assert_eq!(store.requests_sent(), 6);
}

// --- A scripted HTTP server for fault injection ---------------------------------------------

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
}

type Handler = Arc<dyn Fn(usize, &Seen) -> (u16, String) + Send + Sync>;

/// A loopback HTTP/1.1 server answering each request with `handler(n, request)` (n counts from
/// 0; status 0 closes the connection without an answer), one request per connection. With a
/// `gate`, each request is held until the gate opens (`true`); a gate that never opens makes a
/// server that never answers. Returns its port, what it saw, and the most requests it ever had
/// in flight.
async fn fake_server(
    gate: Option<watch::Receiver<bool>>,
    handler: Handler,
) -> (u16, Arc<Mutex<Vec<Seen>>>, Arc<AtomicUsize>) {
    let (port, seen, peak, _) = fake_server_counting(gate, handler).await;
    (port, seen, peak)
}

/// [`fake_server`], also returning the number of requests it holds right now.
async fn fake_server_counting(
    gate: Option<watch::Receiver<bool>>,
    handler: Handler,
) -> (
    u16,
    Arc<Mutex<Vec<Seen>>>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let peak = Arc::new(AtomicUsize::new(0));
    let (seen2, peak2) = (seen.clone(), peak.clone());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let in_flight_shown = in_flight.clone();
    let counter = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (seen, peak, in_flight, counter, handler, mut gate) = (
                seen2.clone(),
                peak2.clone(),
                in_flight.clone(),
                counter.clone(),
                handler.clone(),
                gate.clone(),
            );
            tokio::spawn(async move {
                // Read the head, then as much body as it announces.
                let mut data = Vec::new();
                let mut buffer = [0u8; 16 * 1024];
                let head_end = loop {
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buffer[..n]);
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&data[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while data.len() < head_end + length {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buffer[..n]),
                    }
                }
                let mut words = head.split_whitespace();
                let request = Seen {
                    method: words.next().unwrap_or("").to_owned(),
                    target: words.next().unwrap_or("").to_owned(),
                };
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                if let Some(gate) = gate.as_mut() {
                    // A closed channel (the test ended) also releases.
                    let _ = gate.wait_for(|open| *open).await;
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, body) = handler(n, &request);
                seen.lock().unwrap().push(request);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if status == 0 {
                    return;
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\netag: \"e{n}\"\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, seen, peak, in_flight_shown)
}

fn fake_config(port: u16) -> S3Config {
    let mut config = S3Config::new(&format!("http://127.0.0.1:{port}"), "us-east-1", "b")
        .with_credentials("AKIDEXAMPLE", "secret", None);
    config.path_style = true;
    config.base_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(50);
    config
}

/// 503 and 429 twice, then 200: retries hide them; with fewer attempts the caller sees a
/// retryable `Busy`.
#[tokio::test]
async fn server_errors_and_throttling_are_retried_with_backoff() {
    for failing in [503u16, 429, 500] {
        let (port, seen, _) = fake_server(
            None,
            Arc::new(move |n, _| {
                if n % 3 < 2 {
                    (failing, String::new())
                } else {
                    (200, "hello".into())
                }
            }),
        )
        .await;
        let mut config = fake_config(port);
        let store = S3Store::new(config.clone()).unwrap();
        assert_eq!(store.get("x", 1024).await.unwrap().unwrap(), b"hello");
        assert_eq!(seen.lock().unwrap().len(), 3);
        // Retries are requests too.
        assert_eq!(store.requests_sent(), 3);
        config.max_attempts = 2;
        let store = S3Store::new(config).unwrap();
        let error = store.get("x", 1024).await.unwrap_err();
        assert!(matches!(error, StoreError::Busy(_)), "{failing}: {error}");
        assert!(error.is_retryable());
    }
}

#[tokio::test]
async fn forbidden_is_access_denied_without_retries() {
    let (port, seen, _) = fake_server(
        None,
        Arc::new(|_, _| {
            (
                403,
                "<Error><Code>SignatureDoesNotMatch</Code><Message>nope</Message></Error>".into(),
            )
        }),
    )
    .await;
    let store = S3Store::new(fake_config(port)).unwrap();
    let error = store.get("x", 1024).await.unwrap_err();
    assert!(matches!(error, StoreError::AccessDenied(_)), "{error}");
    assert!(error.to_string().contains("SignatureDoesNotMatch"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Listing follows continuation tokens (sent back exactly, URL-encoded) and decodes keys.
#[tokio::test]
async fn listing_follows_continuation_tokens() {
    let page = |keys: &[&str], next: Option<&str>| {
        let mut xml = String::from(
            r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><EncodingType>url</EncodingType>"#,
        );
        for key in keys {
            xml.push_str(&format!(
                "<Contents><Key>{key}</Key><Size>3</Size></Contents>"
            ));
        }
        match next {
            Some(token) => xml.push_str(&format!(
                "<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
            )),
            None => xml.push_str("<IsTruncated>false</IsTruncated>"),
        }
        xml + "</ListBucketResult>"
    };
    let pages = [
        page(&["pre/a", "pre/caf%C3%A9"], Some("tok/1+=")),
        page(&["pre/d"], Some("tok2")),
        page(&["pre/e"], None),
    ];
    let (port, seen, _) =
        fake_server(None, Arc::new(move |n, _| (200, pages[n.min(2)].clone()))).await;
    let mut config = fake_config(port);
    config.prefix = "pre".into();
    config.list_page_size = Some(2);
    let store = S3Store::new(config).unwrap();
    let keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["a", "café", "d", "e"]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    // One listing, three pages: three requests.
    assert_eq!(store.requests_sent(), 3);
    assert!(seen[0].target.contains("max-keys=2"), "{:?}", seen[0]);
    assert!(seen[0].target.contains("prefix=pre%2F"), "{:?}", seen[0]);
    assert!(!seen[0].target.contains("continuation-token"));
    assert!(
        seen[1].target.contains("continuation-token=tok%2F1%2B%3D"),
        "{:?}",
        seen[1]
    );
    assert!(seen[2].target.contains("continuation-token=tok2"));
}

/// A part that keeps failing aborts the whole upload.
#[tokio::test]
async fn failed_multipart_uploads_are_aborted() {
    let (port, seen, _) = fake_server(
        None,
        Arc::new(|_, request| match request.method.as_str() {
            "POST" => (
                200,
                r#"<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key><UploadId>UP-1</UploadId></InitiateMultipartUploadResult>"#.into(),
            ),
            "PUT" => (500, String::new()),
            _ => (204, String::new()),
        }),
    )
    .await;
    let mut config = fake_config(port);
    config.multipart_threshold = 10;
    config.part_size = 4;
    config.max_attempts = 2;
    let store = S3Store::new(config).unwrap();
    let error = store.put("k", b"0123456789ab".to_vec()).await.unwrap_err();
    assert!(matches!(error, StoreError::Busy(_)), "{error}");
    let seen = seen.lock().unwrap();
    // Create, every attempt of every part, and the abort. Parts go up concurrently: a part
    // request cancelled mid-send when the upload gives up is counted by the store but may never
    // reach the server's log (this failed under load), so the log holds at most the count.
    assert!(
        seen.len() as u64 <= store.requests_sent(),
        "{} seen, {} sent",
        seen.len(),
        store.requests_sent()
    );
    let aborts: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "DELETE" && s.target.contains("uploadId=UP-1"))
        .collect();
    assert_eq!(aborts.len(), 1, "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "POST" && s.target.contains("uploadId"))
    );
}

/// No more requests in flight than the configured bound. The server holds every request until
/// the test opens its gate, so no answer can release a permit while the store's requests are
/// counted: exactly two of eight GETs may have been sent, whatever the machine's load.
#[tokio::test]
async fn requests_in_flight_are_bounded() {
    use futures_util::StreamExt;
    let (open, gate) = watch::channel(false);
    let (port, seen, peak, in_flight) =
        fake_server_counting(Some(gate), Arc::new(|_, _| (200, "x".into()))).await;
    let mut config = fake_config(port);
    config.max_concurrency = 2;
    let store = S3Store::new(config).unwrap();
    let mut gets: futures_util::stream::FuturesUnordered<_> = (0..8)
        .map(|i| {
            let store = &store;
            async move { store.get(&format!("k{i}"), 1024).await }
        })
        .collect();
    // Every GET is polled at once (a FuturesUnordered polls what it holds); wait, while driving
    // them, until the server holds two requests.
    let two_held = async {
        while in_flight.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        answered = gets.next() => panic!("answered with the gate closed: {answered:?}"),
        () = two_held => {}
    }
    // Nothing was answered, so nothing released a permit: the other six are still waiting.
    assert_eq!(store.requests_sent(), 2);
    assert_eq!(in_flight.load(Ordering::SeqCst), 2);
    open.send(true).unwrap();
    let mut answered = 0;
    while let Some(result) = gets.next().await {
        assert_eq!(result.unwrap().unwrap(), b"x");
        answered += 1;
    }
    assert_eq!(answered, 8);
    assert_eq!(seen.lock().unwrap().len(), 8);
    assert_eq!(store.requests_sent(), 8);
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

/// Stores without a network count one request per operation that passed key validation.
#[tokio::test]
async fn stores_without_a_network_count_one_request_per_operation() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Box<dyn ObjectStore>; 2] = [
        Box::new(MemoryStore::new()),
        Box::new(DirectoryStore::new(dir.path().to_path_buf())),
    ];
    for store in stores {
        assert_eq!(store.requests_sent(), 0);
        store.put("a/b", vec![1, 2, 3]).await.unwrap();
        store.get("a/b", 1024).await.unwrap();
        store.get_range("a/b", 0..2).await.unwrap();
        assert_eq!(store.list("a/").await.unwrap().len(), 1);
        store.delete("a/b").await.unwrap();
        assert_eq!(store.requests_sent(), 5);
        assert!(store.put("../escape", vec![1]).await.is_err());
        assert_eq!(store.requests_sent(), 5, "a refused key costs no request");
    }
}

/// Credentials that must never appear in an error (see `common::assert_no_secrets`).
fn leak_check_config(port: u16) -> S3Config {
    let mut config = fake_config(port).with_credentials(
        "AKIDLEAKCHECK0001",
        "wJalrXUtnFEMI-leak-check-secret",
        Some("FwoGZXIvYXdzELeakCheckToken"),
    );
    config.max_attempts = 2;
    config.request_timeout = Duration::from_millis(300);
    config.multipart_threshold = 8;
    config.part_size = 4;
    config
}

/// Every operation of the store against `config`, each expected to fail.
async fn every_operation_fails(config: &S3Config) -> Vec<(String, StoreError)> {
    let store = S3Store::new(config.clone()).unwrap();
    let mut errors = Vec::new();
    let mut record = |what: &str, result: Result<(), StoreError>| match result {
        Err(error) => errors.push((what.to_owned(), error)),
        Ok(()) => panic!("{what} succeeded"),
    };
    record("get", store.get("k", 1024).await.map(|_| ()));
    record("get_range", store.get_range("k", 1..5).await.map(|_| ()));
    record("put", store.put("k", vec![1, 2]).await);
    record("multipart put", store.put("k", vec![7; 12]).await);
    record("list", store.list("").await.map(|_| ()));
    record("delete", store.delete("k").await);
    record(
        "conditional write probe",
        store.probe_conditional_writes().await.map(|_| ()),
    );
    errors
}

/// No error of the S3 store carries a credential or a presigned URL's signing parameters, on any
/// path: connection refused, a server that never answers (timeout), a connection closed without
/// an answer, every kind of HTTP error status, and answers that are not what S3 sends, here all
/// echoing the presigned request they got (as some servers and proxies do).
#[tokio::test]
async fn no_error_of_the_s3_store_carries_credentials_or_signatures() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = leak_check_config(port);
    for (what, error) in every_operation_fails(&refused).await {
        assert!(
            matches!(error, StoreError::Unavailable(_)),
            "{what}: {error}"
        );
        common::assert_no_secrets(&error, &refused);
    }

    let (_never_open, gate) = watch::channel(false);
    let (port, _, _) = fake_server(Some(gate), Arc::new(|_, _| (200, String::new()))).await;
    let silent = leak_check_config(port);
    for (what, error) in every_operation_fails(&silent).await {
        assert!(error.to_string().contains("timed out"), "{what}: {error}");
        common::assert_no_secrets(&error, &silent);
    }

    let (port, _, _) = fake_server(None, Arc::new(|_, _| (0, String::new()))).await;
    let hangs_up = leak_check_config(port);
    for (what, error) in every_operation_fails(&hangs_up).await {
        assert!(
            matches!(error, StoreError::Unavailable(_)),
            "{what}: {error}"
        );
        common::assert_no_secrets(&error, &hangs_up);
    }

    // Error statuses whose S3 error document quotes the request, query and all.
    for (status, code) in [
        (400, "InvalidArgument"),
        (400, "AuthorizationHeaderMalformed"),
        (403, "SignatureDoesNotMatch"),
        (404, "NoSuchBucket"),
        (301, "PermanentRedirect"),
        (409, "Conflict"),
        (500, "InternalError"),
        (503, "SlowDown"),
    ] {
        let (port, _, _) = fake_server(
            None,
            Arc::new(move |_, request| {
                (
                    status,
                    format!(
                        "<Error><Code>{code}</Code><Message>{} {} was refused</Message></Error>",
                        request.method, request.target
                    ),
                )
            }),
        )
        .await;
        let config = leak_check_config(port);
        for (what, error) in every_operation_fails(&config).await {
            assert!(error.to_string().contains(code), "{status} {what}: {error}");
            common::assert_no_secrets(&error, &config);
        }
    }

    // 200 answers that are not S3's: malformed listings and multipart documents, and an error
    // document in a 200 answer to CompleteMultipartUpload, each quoting the request.
    let (port, _, _) = fake_server(
        None,
        Arc::new(|_, request| {
            let target = &request.target;
            let body = match request.method.as_str() {
                "GET" if target.contains("list-type=2") => {
                    // Whole (it ends with its closing tag; a cut page is asked again) but malformed.
                    format!(
                        "<ListBucketResult><Contents><Key>{target}</Contents></ListBucketResult>"
                    )
                }
                "POST" if target.contains("uploadId") => {
                    format!("<Error><Code>AccessDenied</Code><Message>{target}</Message></Error>")
                }
                "POST" => format!("<InitiateMultipartUploadResult>{target}"),
                _ => {
                    return (
                        400,
                        format!("<Error><Code>Bad</Code><Message>{target}</Message></Error>"),
                    );
                }
            };
            (200, body)
        }),
    )
    .await;
    let config = leak_check_config(port);
    let store = S3Store::new(config.clone()).unwrap();
    let list = store.list("").await.unwrap_err();
    assert!(list.to_string().contains("ListObjectsV2 answer"), "{list}");
    common::assert_no_secrets(&list, &config);
    let create = store.put("k", vec![7; 12]).await.unwrap_err();
    assert!(
        create.to_string().contains("CreateMultipartUpload"),
        "{create}"
    );
    common::assert_no_secrets(&create, &config);

    let (port, _, _) = fake_server(
        None,
        Arc::new(|_, request| match request.method.as_str() {
            "POST" if !request.target.contains("uploadId") => (
                200,
                r#"<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key><UploadId>U</UploadId></InitiateMultipartUploadResult>"#.into(),
            ),
            "POST" => (
                200,
                format!(
                    "<Error><Code>AccessDenied</Code><Message>{}</Message></Error>",
                    request.target
                ),
            ),
            _ => (200, String::new()),
        }),
    )
    .await;
    let config = leak_check_config(port);
    let store = S3Store::new(config.clone()).unwrap();
    let complete = store.put("k", vec![7; 12]).await.unwrap_err();
    assert!(
        complete
            .to_string()
            .contains("CompleteMultipartUpload failed"),
        "{complete}"
    );
    common::assert_no_secrets(&complete, &config);
}
