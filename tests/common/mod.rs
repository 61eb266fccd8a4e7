//! Helpers shared by the integration tests: the real S3 servers started by
//! `scripts/s3-servers.sh`.

#![allow(dead_code)]

use std::sync::Mutex;

use async_trait::async_trait;
use chatvault::store::{
    MemoryStore, ObjectInfo, ObjectStore, S3Config, StoreError, StoreResult, parse_s3_url,
};

/// A short random id, so runs against a long-lived server never collide.
pub fn run_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The configuration of test server `name` ("GARAGE" or "MOTO") under a fresh prefix, from the
/// variables `scripts/s3-servers.sh` writes.
///
/// The tests that call this are `#[ignore]`d with a reason naming the servers, so a plain
/// `cargo test` without them lists each as ignored and counts them in its summary, instead of
/// passing tests that checked nothing. Asked for (`-- --include-ignored` or `--ignored`), they
/// need the servers: their absence is a failure, never a silent pass.
pub fn s3_server(name: &str) -> Option<S3Config> {
    let Ok(url) = std::env::var(format!("CHATVAULT_TEST_{name}_URL")) else {
        panic!(
            "CHATVAULT_TEST_{name}_URL is not set: start the servers with scripts/s3-servers.sh \
             start DIR and source DIR/env (or leave out --include-ignored to skip the S3 tests)"
        );
    };
    let mut config = parse_s3_url(&url).expect("valid test server URL");
    config.prefix = format!("{}/{}", config.prefix, run_id());
    config.access_key_id =
        std::env::var(format!("CHATVAULT_TEST_{name}_ACCESS_KEY")).expect("access key");
    config.secret_access_key =
        std::env::var(format!("CHATVAULT_TEST_{name}_SECRET_KEY")).expect("secret key");
    Some(config)
}

/// A memory store a test injects faults into and watches: PUTs that fail before they land
/// (`fail_puts`, like a network that drops mid-sync), a segment PUT that lands and then reports
/// failure (`lose_segment_reply`, once: the reply was lost), every PUT recorded, and whole and
/// ranged GETs of pack objects counted; `fail_puts_containing` fails only PUTs whose key holds
/// that text.
#[derive(Default)]
pub struct Hooked {
    pub inner: MemoryStore,
    pub fail_puts: Mutex<bool>,
    pub fail_puts_containing: Mutex<Option<String>>,
    pub lose_segment_reply: Mutex<bool>,
    pub puts: Mutex<Vec<(String, Vec<u8>)>>,
    pub pack_gets: Mutex<u64>,
    pub pack_range_gets: Mutex<u64>,
}

#[async_trait]
impl ObjectStore for Hooked {
    async fn put(&self, key: &str, body: Vec<u8>) -> StoreResult<()> {
        let matching = self
            .fail_puts_containing
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|text| key.contains(text.as_str()));
        if *self.fail_puts.lock().unwrap() || matching {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.puts
            .lock()
            .unwrap()
            .push((key.to_owned(), body.clone()));
        self.inner.put(key, body).await?;
        if key.contains("/segments/")
            && std::mem::take(&mut *self.lose_segment_reply.lock().unwrap())
        {
            return Err(StoreError::Unavailable(
                "stored, then the reply was lost".into(),
            ));
        }
        Ok(())
    }
    async fn get(&self, key: &str, max_len: u64) -> StoreResult<Option<Vec<u8>>> {
        if key.contains("/packs/") {
            *self.pack_gets.lock().unwrap() += 1;
        }
        self.inner.get(key, max_len).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Option<Vec<u8>>> {
        if key.contains("/packs/") {
            *self.pack_range_gets.lock().unwrap() += 1;
        }
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    fn requests_sent(&self) -> u64 {
        self.inner.requests_sent()
    }
}

/// Fails unless neither the rendered message nor the Debug form of `error` carries a
/// credential of `config` or a presigned URL's signing parameters.
pub fn assert_no_secrets(error: &(impl std::fmt::Display + std::fmt::Debug), config: &S3Config) {
    for shown in [error.to_string(), format!("{error:?}")] {
        let lower = shown.to_ascii_lowercase();
        for parameter in [
            "x-amz-signature",
            "x-amz-credential",
            "x-amz-security-token",
        ] {
            assert!(!lower.contains(parameter), "{parameter} in {shown}");
        }
        let mut secrets = vec![
            config.access_key_id.as_str(),
            config.secret_access_key.as_str(),
        ];
        secrets.extend(config.session_token.as_deref());
        for secret in secrets {
            assert!(
                secret.is_empty() || !shown.contains(secret),
                "a credential in {shown}"
            );
        }
    }
}

/// `CHATVAULT_REQUIRE_S3=1` (CI) promises that the S3 tests ran: it fails a run that leaves them
/// out (they are `#[ignore]`d unless `--include-ignored` or `--ignored` is passed).
#[test]
fn required_s3_tests_are_not_left_out() {
    if std::env::var("CHATVAULT_REQUIRE_S3").as_deref() == Ok("1") {
        assert!(
            std::env::args().any(|a| a == "--include-ignored" || a == "--ignored"),
            "CHATVAULT_REQUIRE_S3=1 but the S3 tests are ignored: run cargo test -- --include-ignored"
        );
    }
}

/// A device that keeps the content cache (a new device starts without it), for tests that ask
/// it about content.
pub fn cached(vault: chatvault::vault::Vault) -> chatvault::vault::Vault {
    vault
        .set_content_cache(chatvault::local::CacheSetting::On { max_bytes: None })
        .unwrap();
    vault
}

/// Copies a directory tree (a bucket or a state directory).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A new device `name` (state in `dir`) linked by `phone` with the right code: the device, the
/// roster's entry for it as the phone returned it, and the device key it opens with.
pub async fn link(
    store: &std::sync::Arc<dyn ObjectStore>,
    phone: &chatvault::vault::Vault,
    dir: &std::path::Path,
    name: &str,
) -> (
    chatvault::vault::Vault,
    chatvault::vault::VaultDevice,
    chatvault::vault::DeviceKey,
) {
    let offering = phone
        .offer_link(
            std::time::Duration::from_secs(120),
            b"bucket: test".to_vec(),
        )
        .unwrap();
    assert!(offering.text().starts_with("CHATVAULT-LINK:"));
    let device_key = chatvault::vault::DeviceKey::generate().unwrap();
    let key_bytes = device_key.to_bytes();
    let joining = chatvault::vault::Vault::join_link(
        store.clone(),
        dir,
        chatvault::vault::DeviceInfo {
            name: name.into(),
            platform: "test".into(),
        },
        offering.text(),
        device_key,
    )
    .await
    .unwrap();
    let code = joining.check_code().to_owned();
    assert_eq!(code.len(), 6);
    let cancel = chatvault::vault::CancelToken::new();
    let (added, joined) = tokio::join!(
        phone.complete_link(&offering, &code, &cancel),
        joining.finish(&cancel)
    );
    let (added, joined) = (added.unwrap(), joined.unwrap());
    assert_eq!(added.id, joining.device_id());
    assert_eq!(added.id, joined.device_id());
    (
        joined,
        added,
        chatvault::vault::DeviceKey::from_bytes(*key_bytes),
    )
}
