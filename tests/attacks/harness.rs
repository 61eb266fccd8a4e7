//! Runs one attack: copies the honest template into a fresh bucket (a directory, or a fresh
//! prefix on an S3 server), lets the attack change the bucket's objects, then has a device that
//! had synced everything, a device that had not seen the last round, and a new device sync, and
//! the first and the new device verify. Each step's result is compared with what the attack
//! expects; every mismatch is collected, so one run reports every step that went wrong.

// Shared by `tests/attacks.rs` and `tests/attacks_unknown.rs`, each using a part.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::Message;
use chatvault::vault::{CancelToken, Vault, VerifyReport};
use chatvault::{DecodeProblem, Error, IntegrityProblem};

use crate::template::{Template, copy_dir, open_device, runtime, template};

/// What an attack does to the bucket.
pub type Apply = Box<dyn FnOnce(Bucket) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The bucket under attack, reached through a raw store handle (what a provider controls).
#[derive(Clone)]
pub struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    /// The directory behind the store, for attacks only a file system allows (sparse files).
    pub root: Option<PathBuf>,
    pub t: &'static Template,
}

impl Bucket {
    pub async fn get(&self, key: &str) -> Vec<u8> {
        self.store
            .get(key, u64::MAX)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} is not in the bucket"))
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.store.put(key, bytes).await.unwrap();
    }

    pub async fn delete(&self, key: &str) {
        assert!(
            self.store.get(key, u64::MAX).await.unwrap().is_some(),
            "{key} exists"
        );
        self.store.delete(key).await.unwrap();
    }

    /// Flips the lowest bit of the byte at `offset`.
    pub async fn flip(&self, key: &str, offset: usize) {
        let mut bytes = self.get(key).await;
        bytes[offset] ^= 1;
        self.put(key, bytes).await;
    }

    /// Flips a bit in the middle of the object (inside the sealed part of any sealed object).
    pub async fn flip_middle(&self, key: &str) {
        let len = self.get(key).await.len();
        self.flip(key, len / 2).await;
    }

    /// Keeps the first `len` bytes.
    pub async fn truncate(&self, key: &str, len: usize) {
        let mut bytes = self.get(key).await;
        assert!(len < bytes.len());
        bytes.truncate(len);
        self.put(key, bytes).await;
    }

    pub async fn copy(&self, from: &str, to: &str) {
        let bytes = self.get(from).await;
        self.put(to, bytes).await;
    }

    pub async fn swap(&self, x: &str, y: &str) {
        let (bx, by) = (self.get(x).await, self.get(y).await);
        assert!(bx != by, "{x} and {y} differ");
        self.put(x, by).await;
        self.put(y, bx).await;
    }

    /// The file behind `key` (directory store only).
    pub fn path(&self, key: &str) -> PathBuf {
        self.root
            .as_ref()
            .expect("a file-system attack runs on a directory store")
            .join(key)
    }
}

/// A predicate on an error, with a description for failure messages.
#[derive(Clone)]
pub struct Matcher(pub String, pub Arc<dyn Fn(&Error) -> bool + Send + Sync>);

/// What one step must end with.
#[derive(Clone)]
pub enum Outcome {
    Ok,
    Err(Matcher),
}

impl Outcome {
    pub fn err(
        what: impl Into<String>,
        f: impl Fn(&Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        Outcome::Err(Matcher(what.into(), Arc::new(f)))
    }

    /// Compares a result with this outcome; `Some(explanation)` on a mismatch.
    fn check<T: std::fmt::Debug>(&self, step: &str, result: &Result<T, Error>) -> Option<String> {
        match (self, result) {
            (Outcome::Ok, Ok(_)) => None,
            (Outcome::Err(Matcher(_, f)), Err(e)) if f(e) => None,
            (Outcome::Ok, Err(e)) => Some(format!("{step}: expected Ok, got Err({e:?})")),
            (Outcome::Err(Matcher(what, _)), got) => {
                Some(format!("{step}: expected {what}, got {got:?}"))
            }
        }
    }
}

/// An AEAD failure: tampered, moved, or sealed under another key.
pub fn auth_failed() -> Outcome {
    Outcome::err("Decode { AuthenticationFailed }", |e| {
        matches!(
            e,
            Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            }
        )
    })
}

/// A checkpoint block whose bytes are not the ones its signed index hashed (FORMAT.md 9.5),
/// caught before it is opened.
pub fn replaced_block() -> Outcome {
    Outcome::err("Integrity(Replaced)", |e| {
        matches!(e, Error::Integrity(IntegrityProblem::Replaced { .. }))
    })
}

/// A sealed object cut short: its tag no longer verifies, or its structure ends early.
pub fn cut_short() -> Outcome {
    Outcome::err("Decode { AuthenticationFailed | Truncated }", |e| {
        matches!(
            e,
            Error::Decode {
                problem: DecodeProblem::AuthenticationFailed | DecodeProblem::Truncated { .. },
                ..
            }
        )
    })
}

/// An empty object where a sealed one must be.
pub fn empty_object() -> Outcome {
    Outcome::err("Decode { Truncated }", |e| {
        matches!(
            e,
            Error::Decode {
                problem: DecodeProblem::Truncated { .. },
                ..
            }
        )
    })
}

/// An object of another kind under this name.
pub fn wrong_kind(expected: u8, found: u8) -> Outcome {
    Outcome::err(
        format!("Decode {{ WrongKind {expected} != {found} }}"),
        move |e| {
            matches!(
                e,
                Error::Decode { problem: DecodeProblem::WrongKind { expected: x, found: y }, .. }
                    if *x == expected && *y == found
            )
        },
    )
}

pub fn missing_segment(device: &str, seq: u64) -> Outcome {
    let device = device.to_owned();
    Outcome::err(format!("MissingSegment {{ {device}, {seq} }}"), move |e| {
        matches!(
            e,
            Error::Integrity(IntegrityProblem::MissingSegment { device: d, seq: s })
                if *d == device && *s == seq
        )
    })
}

/// Some segment is missing (which one depends on the order devices are checked in).
pub fn any_missing_segment() -> Outcome {
    Outcome::err("MissingSegment { .. }", |e| {
        matches!(e, Error::Integrity(IntegrityProblem::MissingSegment { .. }))
    })
}

pub fn rolled_back(device: &str, seen: u64, found: u64) -> Outcome {
    let device = device.to_owned();
    Outcome::err(
        format!("RolledBack {{ {device}, seen {seen}, found {found} }}"),
        move |e| {
            matches!(
                e,
                Error::Integrity(IntegrityProblem::RolledBack { device: d, seen: s, found: f })
                    if *d == device && *s == seen && *f == found
            )
        },
    )
}

/// `key` relative to the prefix integrity errors name objects by: the vault prefix, or the
/// attachments prefix.
pub fn relative(key: &str) -> String {
    let t = template();
    key.strip_prefix(&format!("{}/", t.vault))
        .or_else(|| key.strip_prefix(&format!("{}-attachments/", t.vault)))
        .unwrap_or(key)
        .to_owned()
}

pub fn missing_object(key: &str) -> Outcome {
    let name = relative(key);
    Outcome::err(
        format!("MissingObject {{ {name} }}"),
        move |e| matches!(e, Error::Integrity(IntegrityProblem::MissingObject { name: n }) if *n == name),
    )
}

pub fn wrong_size(key: &str, expected: u64, found: u64) -> Outcome {
    let name = relative(key);
    Outcome::err(
        format!("WrongSize {{ {name}, expected {expected}, found {found} }}"),
        move |e| {
            matches!(
                e,
                Error::Integrity(IntegrityProblem::WrongSize { name: n, expected: x, found: f })
                    if *n == name && *x == expected && *f == found
            )
        },
    )
}

/// An object far larger than any reader accepts: refused by the read bound, or by the size the
/// index promises, before it is read whole.
pub fn oversized(key: &str) -> Outcome {
    let name = relative(key);
    let full = key.to_owned();
    Outcome::err(
        format!("Store(TooLarge {{ {full} }}) or WrongSize {{ {name} }}"),
        move |e| {
            use chatvault::store::StoreError;
            match e {
                Error::Store(StoreError::TooLarge { key, .. }) => {
                    key.ends_with(&name) || *key == full
                }
                Error::Integrity(IntegrityProblem::WrongSize { name: n, .. }) => *n == name,
                _ => false,
            }
        },
    )
}

/// Either outcome's error (for a bucket with two faults, where which one a device meets first
/// depends on the order it checks devices in).
pub fn either(x: Outcome, y: Outcome) -> Outcome {
    match (x, y) {
        (Outcome::Err(Matcher(wx, fx)), Outcome::Err(Matcher(wy, fy))) => {
            Outcome::err(format!("{wx} or {wy}"), move |e| fx(e) || fy(e))
        }
        _ => panic!("either() takes two errors"),
    }
}

/// What each step must end with.
#[derive(Clone)]
pub struct Expect {
    /// `sync` on a device that had applied everything (`b`); its local state must not change.
    pub old_sync: Outcome,
    /// `sync` on a device that had not seen the last round (`c`).
    pub lagging_sync: Outcome,
    /// `sync` on a new device.
    pub fresh_sync: Outcome,
    /// `verify` on `b`, then on the new device.
    pub old_verify: Outcome,
    pub fresh_verify: Outcome,
    /// `verify` on a device that never synced: judges the bucket alone, like the new device
    /// after its sync, except for attachments (it knows no message that references one).
    pub unsynced_verify: Outcome,
    /// Downloading the template's attachment on `b`, for attacks on attachment chunks.
    pub download: Option<Outcome>,
}

impl Expect {
    /// Every step fails alike.
    pub fn everyone(outcome: Outcome) -> Self {
        Expect {
            old_sync: outcome.clone(),
            lagging_sync: outcome.clone(),
            fresh_sync: outcome.clone(),
            old_verify: outcome.clone(),
            fresh_verify: outcome.clone(),
            unsynced_verify: outcome,
            download: None,
        }
    }

    /// Nothing is wrong: a control.
    pub fn nothing() -> Self {
        Self::everyone(Outcome::Ok)
    }

    /// Only a device that reads the object fails: one that applied it already syncs on.
    pub fn readers_of_the_new(outcome: Outcome) -> Self {
        Expect {
            old_sync: Outcome::Ok,
            ..Self::everyone(outcome)
        }
    }

    /// Only a new device (which restores from the checkpoint) and `verify` read it.
    pub fn restorers(outcome: Outcome) -> Self {
        Expect {
            old_sync: Outcome::Ok,
            lagging_sync: Outcome::Ok,
            ..Self::everyone(outcome)
        }
    }

    /// Only `verify` reads it (a segment the newest checkpoint covers).
    pub fn verifiers(outcome: Outcome) -> Self {
        Expect {
            fresh_sync: Outcome::Ok,
            ..Self::restorers(outcome)
        }
    }
}

/// One attack of the catalogue.
pub struct Attack {
    pub name: &'static str,
    pub apply: Apply,
    pub expect: Expect,
    /// Needs a file system (sparse files): not run on S3.
    pub directory_only: bool,
}

/// The local state a sync must not change when it fails: chats and messages.
fn local_content(vault: &Vault) -> (Vec<(String, u64)>, Vec<Message>) {
    let chats = vault
        .chats()
        .unwrap()
        .into_iter()
        .map(|c| (c.chat.chat_id, c.message_count))
        .collect();
    (chats, vault.messages(None).unwrap())
}

/// What a run found: every mismatch, and the verify reports (for checks on new fields).
pub struct Findings {
    pub mismatches: Vec<String>,
    pub old_report: Option<VerifyReport>,
    pub fresh_report: Option<VerifyReport>,
}

/// Runs the steps against an attacked bucket, with device states copied from the template.
pub async fn run(attack: Attack, bucket: Bucket, states: &Path) -> Findings {
    let t = bucket.t;
    copy_dir(&t.states, states);
    let store = bucket.store.clone();
    let old = open_device(store.clone(), &states.join("b"), "b", &t.key).await;
    let lagging = open_device(store.clone(), &states.join("c"), "c", &t.key).await;
    let fresh = open_device(store.clone(), &states.join("fresh"), "fresh", &t.key).await;
    let before = local_content(&old);
    (attack.apply)(bucket).await;

    let e = &attack.expect;
    let mut mismatches = Vec::new();
    let old_sync = old.sync(None, None).await;
    mismatches.extend(e.old_sync.check("sync of the synced device", &old_sync));
    if local_content(&old) != before {
        mismatches.push("the synced device's chats or messages changed".into());
    }
    let lagging_sync = lagging.sync(None, None).await;
    mismatches.extend(
        e.lagging_sync
            .check("sync of the lagging device", &lagging_sync),
    );
    let fresh_sync = fresh.sync(None, None).await;
    mismatches.extend(e.fresh_sync.check("sync of a new device", &fresh_sync));
    if fresh_sync.is_ok() && e.fresh_sync.is_ok() {
        // Whatever a new device accepted must be what the honest vault holds.
        if local_content(&fresh) != before && e.old_sync.is_ok() {
            mismatches.push("a new device restored other content than the synced one".into());
        }
    }
    let old_verify = old.verify().await;
    mismatches.extend(
        e.old_verify
            .check("verify on the synced device", &old_verify),
    );
    let fresh_verify = fresh.verify().await;
    mismatches.extend(
        e.fresh_verify
            .check("verify on a new device", &fresh_verify),
    );
    let unsynced = open_device(store.clone(), &states.join("unsynced"), "unsynced", &t.key).await;
    let unsynced_verify = unsynced.verify().await;
    mismatches.extend(
        e.unsynced_verify
            .check("verify on a device that never synced", &unsynced_verify),
    );
    if let Some(download) = &e.download {
        let dest = states.join("download");
        let result = old
            .download_attachment(&t.attachment, &dest, None, &CancelToken::new())
            .await;
        mismatches.extend(download.check("download of the attachment", &result));
    }
    Findings {
        mismatches,
        old_report: old_verify.ok(),
        fresh_report: fresh_verify.ok(),
    }
}

impl Outcome {
    fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Serialises attacks that make readers allocate a lot (oversized objects), so that parallel
/// tests do not add up their memory.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs an attack on a copy of the template on a directory store; panics with every mismatch.
pub fn on_directory(attack: Attack) -> Findings {
    let t = template();
    let _heavy = attack
        .directory_only
        .then(|| HEAVY.lock().unwrap_or_else(|e| e.into_inner()));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    copy_dir(&t.bucket, &root);
    let bucket = Bucket {
        store: Arc::new(DirectoryStore::new(root.clone())),
        root: Some(root),
        t,
    };
    let name = attack.name;
    let findings = runtime().block_on(run(attack, bucket, &dir.path().join("states")));
    assert!(
        findings.mismatches.is_empty(),
        "attack {}:\n  {}",
        name,
        findings.mismatches.join("\n  ")
    );
    findings
}

/// Copies the template's objects under a fresh prefix of S3 server `server` and returns the
/// bucket handle.
pub async fn template_on_s3(server: &str) -> Bucket {
    let t = template();
    let config = crate::common::s3_server(server).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(chatvault::store::S3Store::new(config).unwrap());
    let source = DirectoryStore::new(t.bucket.clone());
    for object in source.list("").await.unwrap() {
        let bytes = source.get(&object.key, u64::MAX).await.unwrap().unwrap();
        store.put(&object.key, bytes).await.unwrap();
    }
    Bucket {
        store,
        root: None,
        t,
    }
}

/// Runs attacks on S3 server `server`, each on its own copy of the template; returns the
/// attacks with mismatches and what they were.
pub fn on_s3(server: &str, attacks: Vec<Attack>) -> Vec<String> {
    let mut failures = Vec::new();
    for attack in attacks.into_iter().filter(|a| !a.directory_only) {
        let dir = tempfile::tempdir().unwrap();
        let name = attack.name;
        let findings = runtime().block_on(async {
            let bucket = template_on_s3(server).await;
            run(attack, bucket, &dir.path().join("states")).await
        });
        if !findings.mismatches.is_empty() {
            failures.push(format!(
                "{}:\n    {}",
                name,
                findings.mismatches.join("\n    ")
            ));
        }
    }
    failures
}

/// Kind ids in object headers (FORMAT.md section 6).
pub const SEGMENT: u8 = 4;
pub const CHECKPOINT_INDEX: u8 = 6;

/// Far beyond any object chatvault writes; sparse, so it costs no disk.
pub const HUGE: u64 = 512 << 20;

/// An attack that runs on any store.
pub fn attack(
    name: &'static str,
    apply: impl FnOnce(Bucket) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
    expect: Expect,
) -> Attack {
    Attack {
        name,
        apply: Box::new(apply),
        expect,
        directory_only: false,
    }
}

/// Makes the object at `key` a sparse file of `len` bytes (directory store only).
pub fn sparse(bucket: &Bucket, key: &str, len: u64) {
    let path = bucket.path(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
}
