//! The `https://` path phones use: the S3 store through a TLS-terminating proxy in front of Garage,
//! with certificates from a test CA made here, trusted through the platform verifier the way Linux
//! allows (`SSL_CERT_FILE`, read by rustls-native-certs when a store is created).
//!
//! A test process cannot set `SSL_CERT_FILE` for itself without unsafe code, so this binary has no
//! libtest harness: run plainly, it makes the certificates, then runs itself again with
//! `SSL_CERT_FILE` naming the test CA, and that child runs the checks. The proxy counts the TCP
//! connections and the HTTP requests it forwards, so request counts and "no retry" are measured
//! where the requests arrive.
//!
//! Like the other S3 tests it needs the servers of `scripts/s3-servers.sh` and runs when asked for
//! with `--include-ignored` (or `--ignored`); otherwise it says it was skipped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chatvault::keys::RecoveryKey;
use chatvault::store::{ObjectStore, S3Config, S3Store, StoreError};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

/// Set in the child: the directory holding the certificates the parent made.
const MATERIAL_DIR: &str = "CHATVAULT_HTTPS_TEST_MATERIAL";
const NAME: &str = "https_through_a_tls_proxy_with_a_test_ca";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return;
    }
    // A name filter that does not match this test (as libtest would apply it).
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    if let Ok(dir) = std::env::var(MATERIAL_DIR) {
        child(Path::new(&dir));
        println!("test {NAME} ... ok (in a child process trusting the test CA)");
        return;
    }
    let asked = args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    if !asked {
        println!(
            "test {NAME} ... ignored, S3: needs scripts/s3-servers.sh, run with --include-ignored"
        );
        assert!(
            std::env::var("CHATVAULT_REQUIRE_S3").as_deref() != Ok("1"),
            "CHATVAULT_REQUIRE_S3=1 but the S3 tests are ignored: run cargo test -- --include-ignored"
        );
        return;
    }
    // Fails here, before anything else, without the servers.
    common::s3_server("GARAGE");
    let material = tempfile::tempdir().unwrap();
    make_certificates(material.path());
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SSL_CERT_FILE", material.path().join("ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .env(MATERIAL_DIR, material.path())
        .status()
        .unwrap();
    assert!(status.success(), "the child process failed: {status}");
}

// --- Certificates (parent) -------------------------------------------------------------------

/// A trusted CA (`ca.pem`, the only certificate in `SSL_CERT_FILE`) and three server
/// certificates, as DER: `good` (trusted CA, for localhost), `rogue` (another CA, for
/// localhost) and `wrong-name` (trusted CA, for another host).
fn make_certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let authority = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let trusted = authority("chatvault test CA");
    let rogue = authority("some other CA");
    std::fs::write(dir.join("ca.pem"), trusted.pem()).unwrap();
    let issue = |file: &str, host: &str, issuer: &CertifiedIssuer<'_, KeyPair>| {
        let mut params = CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.der")), cert.der()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_der()).unwrap();
    };
    issue("good", "localhost", &trusted);
    issue("rogue", "localhost", &rogue);
    issue("wrong-name", "elsewhere.example", &trusted);
}

// --- The proxy (child) -----------------------------------------------------------------------

/// A TLS-terminating proxy to Garage that counts what it sees.
struct Proxy {
    port: u16,
    /// TCP connections accepted (a TLS handshake is tried on each).
    connections: Arc<AtomicU64>,
    /// HTTP requests forwarded to Garage.
    requests: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(material: &Path, certificate: &str, upstream: SocketAddr) -> Proxy {
        let cert = CertificateDer::from(
            std::fs::read(material.join(format!("{certificate}.der"))).unwrap(),
        );
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            std::fs::read(material.join(format!("{certificate}.key"))).unwrap(),
        ));
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (connections2, requests2) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                connections2.fetch_add(1, Ordering::SeqCst);
                let (acceptor, requests) = (acceptor.clone(), requests2.clone());
                tokio::spawn(async move {
                    let Ok(client) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let server = TcpStream::connect(upstream).await.unwrap();
                    let (client_read, mut client_write) = tokio::io::split(client);
                    let (mut server_read, server_write) = server.into_split();
                    let answers = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    });
                    forward_requests(client_read, server_write, &requests).await;
                    let _ = answers.await;
                });
            }
        });
        Proxy {
            port,
            connections,
            requests,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Copies HTTP/1.1 requests from the client to Garage one by one (head, then the body its
/// `content-length` announces), counting each.
async fn forward_requests(
    from: impl AsyncRead + Unpin,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    requests: &AtomicU64,
) {
    let mut from = tokio::io::BufReader::new(from);
    loop {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            match from.read_until(b'\n', &mut head).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if &head[before..] == b"\r\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(
            !text.contains("transfer-encoding"),
            "the proxy forwards only requests with a content-length: {text}"
        );
        let length: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().unwrap());
        requests.fetch_add(1, Ordering::SeqCst);
        if to.write_all(&head).await.is_err() {
            return;
        }
        let mut body = (&mut from).take(length);
        if tokio::io::copy(&mut body, &mut to).await.is_err() {
            return;
        }
    }
}

// --- The checks (child) ----------------------------------------------------------------------

fn child(material: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let garage = common::s3_server("GARAGE").expect("the parent checked the servers");
        let upstream: SocketAddr = garage
            .endpoint
            .strip_prefix("http://")
            .expect("Garage is plain HTTP on loopback")
            .parse()
            .unwrap();
        store_and_vault_work_over_https(material, &garage, upstream).await;
        for (certificate, why) in [
            ("rogue", "a certificate from another CA"),
            ("wrong-name", "a certificate for another host name"),
        ] {
            refused_certificates_fail_at_once(material, &garage, upstream, certificate, why).await;
        }
    });
}

fn through(proxy: &Proxy, garage: &S3Config) -> S3Config {
    let mut config = garage.clone();
    config.endpoint = format!("https://localhost:{}", proxy.port);
    config
}

/// Put, get, ranges, a paged list, multipart and delete through the store, then two devices
/// syncing a vault, all over `https://`; the store's request count equals the proxy's.
async fn store_and_vault_work_over_https(material: &Path, garage: &S3Config, upstream: SocketAddr) {
    let proxy = Proxy::start(material, "good", upstream).await;
    let mut config = through(&proxy, garage);
    config.list_page_size = Some(2);
    config.multipart_threshold = 1024 * 1024;
    config.part_size = 512 * 1024;
    let store = S3Store::new(config).unwrap();
    for i in 0..5u8 {
        store
            .put(&format!("o/{i}"), vec![i; 100 + usize::from(i)])
            .await
            .unwrap();
    }
    let big: Vec<u8> = (0..1_300_000u32).map(|i| (i % 251) as u8).collect();
    store.put("big", big.clone()).await.unwrap(); // 3 parts: 5 requests
    assert_eq!(
        store.get("big", big.len() as u64).await.unwrap().unwrap(),
        big
    );
    assert_eq!(
        store.get_range("o/3", 1..4).await.unwrap().unwrap(),
        [3, 3, 3]
    );
    assert_eq!(store.get("o/missing", 1024).await.unwrap(), None);

    let (proxy_before, store_before) = (proxy.requests(), store.requests_sent());
    let listed = store.list("o/").await.unwrap();
    assert_eq!(listed.len(), 5);
    // Five keys at two per page: three ListObjectsV2 requests, counted by both sides.
    assert_eq!(proxy.requests() - proxy_before, 3);
    assert_eq!(store.requests_sent() - store_before, 3);

    for object in store.list("").await.unwrap() {
        store.delete(&object.key).await.unwrap();
    }
    assert!(store.list("").await.unwrap().is_empty());
    assert_eq!(store.requests_sent(), proxy.requests());

    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = |name: &str| DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    };
    let phone = Vault::open(
        store.clone(),
        &dir.path().join("phone"),
        info("phone"),
        &key,
    )
    .await
    .unwrap();
    // Both devices answer content questions below (a new device keeps none by default).
    let cache = chatvault::local::CacheSetting::On { max_bytes: None };
    phone.set_content_cache(cache).unwrap();
    let changes = (0..20)
        .map(|i| {
            Change::UpsertMessage(Message {
                chat_id: "family".into(),
                message_id: format!("m{i}"),
                sender: "mum".into(),
                sent_at_ms: i,
                text: format!("message {i} over TLS"),
                ..Message::default()
            })
        })
        .collect();
    phone.record(changes).unwrap();
    phone.sync(None, None).await.unwrap();
    let tablet = Vault::open(
        store.clone(),
        &dir.path().join("tablet"),
        info("tablet"),
        &key,
    )
    .await
    .unwrap();
    tablet.set_content_cache(cache).unwrap();
    tablet.sync(None, None).await.unwrap();
    assert_eq!(tablet.messages(None).unwrap().len(), 20);
    assert_eq!(
        tablet.messages(None).unwrap(),
        phone.messages(None).unwrap()
    );
    tablet.verify().await.unwrap();
    assert_eq!(store.requests_sent(), proxy.requests());
    println!(
        "https: {} requests over {} TLS connections, counted alike by the store and the proxy",
        proxy.requests(),
        proxy.connections()
    );
}

/// A refused certificate fails the first attempt with a typed, non-retryable error: one TCP
/// connection, no HTTP request, though five attempts are allowed.
async fn refused_certificates_fail_at_once(
    material: &Path,
    garage: &S3Config,
    upstream: SocketAddr,
    certificate: &str,
    why: &str,
) {
    let proxy = Proxy::start(material, certificate, upstream).await;
    let mut config = through(&proxy, garage);
    config.max_attempts = 5;
    let store = S3Store::new(config.clone()).unwrap();
    let error = store.get("anything", 1024).await.unwrap_err();
    assert!(
        matches!(error, StoreError::UntrustedServer(_)),
        "{why}: {error:?}"
    );
    assert!(!error.is_retryable(), "{why}");
    assert_eq!(proxy.connections(), 1, "{why}: retried");
    assert_eq!(store.requests_sent(), 1, "{why}");
    assert_eq!(proxy.requests(), 0, "{why}");
    common::assert_no_secrets(&error, &config);
    let error = store.put("anything", vec![1]).await.unwrap_err();
    assert!(
        matches!(error, StoreError::UntrustedServer(_)),
        "{why}: {error:?}"
    );
    assert_eq!(proxy.connections(), 2, "{why}: retried");
    common::assert_no_secrets(&error, &config);
    println!("https: {why} is refused at once: {error}");
}
