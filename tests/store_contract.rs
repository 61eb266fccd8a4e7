//! One contract, every store: the in-memory store, the directory store and, when the servers are
//! running (see `scripts/s3-servers.sh`; the README's test command starts them), Garage and moto.
//!
//! Without the servers' environment variables the S3 tests fail if `CHATVAULT_REQUIRE_S3=1`
//! (as in CI) and otherwise say they were skipped.

use std::sync::Arc;

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, MemoryStore, ObjectStore, S3Config, S3Store, StoreError};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

mod common;

use common::run_id;

/// The contract every backend meets. Keys are under a fresh prefix so reruns never collide.
async fn contract(store: &dyn ObjectStore) {
    let p = format!("contract-{}/", run_id());
    let key = |k: &str| format!("{p}{k}");

    // Missing objects.
    assert_eq!(store.get(&key("missing")).await.unwrap(), None);
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
            store.get(&key(name)).await.unwrap().as_deref(),
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
        store.get(&key("small")).await.unwrap().unwrap(),
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

    // Delete.
    store.delete(&key("list/item-3")).await.unwrap();
    assert_eq!(store.get(&key("list/item-3")).await.unwrap(), None);
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
    let a = Vault::open(store.clone(), &dir.path().join("a"), info("a"), &key)
        .await
        .unwrap();
    let b = Vault::open(store.clone(), &dir.path().join("b"), info("b"), &key)
        .await
        .unwrap();
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
    let c = Vault::open(store, &dir.path().join("c"), info("c"), &key)
        .await
        .unwrap();
    c.sync(None, None).await.unwrap();
    assert_eq!(c.messages(None).unwrap().len(), 100);
    assert_eq!(c.messages(None).unwrap(), a.messages(None).unwrap());
    let report = c.verify().await.unwrap();
    assert!(report.segments >= 2);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(&MemoryStore::new()).await;
    vault_round_trip(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn directory_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().to_path_buf());
    contract(&store).await;
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
/// are exercised.
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
    vault_round_trip(Arc::new(S3Store::new(config).unwrap())).await;
}

#[tokio::test]
async fn garage_meets_the_contract() {
    s3_suite("GARAGE").await;
}

#[tokio::test]
async fn moto_meets_the_contract() {
    s3_suite("MOTO").await;
}

#[tokio::test]
async fn garage_refuses_a_wrong_secret() {
    let Some(mut config) = server("GARAGE") else {
        return;
    };
    config.secret_access_key = "0".repeat(64);
    config.max_attempts = 1;
    let store = S3Store::new(config).unwrap();
    assert!(matches!(
        store.get("anything").await,
        Err(StoreError::AccessDenied(_))
    ));
    assert!(matches!(
        store.put("anything", vec![1]).await,
        Err(StoreError::AccessDenied(_))
    ));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_after_retries() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = S3Config::new(&format!("http://127.0.0.1:{port}"), "us-east-1", "b");
    config.path_style = true;
    config.access_key_id = "k".into();
    config.secret_access_key = "s".into();
    config.max_attempts = 3;
    config.base_backoff = std::time::Duration::from_millis(5);
    let store = S3Store::new(config).unwrap();
    let error = store.get("x").await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    assert!(error.is_retryable());
}

/// A tiny HTTP server that answers 503 twice, then 200 with a body: retries must hide the 503s.
#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let reply: &[u8] = if n < 2 {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
            };
            let _ = socket.write_all(reply).await;
        }
    });
    let mut config = S3Config::new(&format!("http://127.0.0.1:{port}"), "us-east-1", "b");
    config.path_style = true;
    config.access_key_id = "k".into();
    config.secret_access_key = "s".into();
    config.base_backoff = std::time::Duration::from_millis(5);
    let store = S3Store::new(config.clone()).unwrap();
    assert_eq!(store.get("x").await.unwrap().unwrap(), b"hello");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    // With fewer attempts than failures the caller sees a retryable Busy error.
    served.store(0, std::sync::atomic::Ordering::SeqCst);
    config.max_attempts = 2;
    let store = S3Store::new(config).unwrap();
    assert!(matches!(store.get("x").await, Err(StoreError::Busy(_))));
}
