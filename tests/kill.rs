//! Real processes killed for real at known points: a bulk import and a fresh-device restore
//! SIGKILLed half way resume, when run again, with nothing lost and nothing doubled.
//! (Needs `--features cli`.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let key = ok(Command::new(env!("CARGO_BIN_EXE_chatvault"))
            .arg("keygen")
            .output()
            .unwrap());
        std::fs::write(root.join("key.txt"), key).unwrap();
        Env { _dir: dir, root }
    }

    fn command(&self, device: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatvault"));
        command
            .env(
                "CHATVAULT_STORE",
                format!("file://{}", self.root.join("bucket").display()),
            )
            .env("CHATVAULT_KEY_FILE", self.root.join("key.txt"))
            .env("CHATVAULT_STATE", self.root.join(device))
            .args(args);
        command
    }

    fn run(&self, device: &str, args: &[&str]) -> String {
        ok(self.command(device, args).output().unwrap())
    }

    /// Runs the command with a pause point, waits until it reports `paused`, and SIGKILLs it.
    fn kill_at(&self, device: &str, args: &[&str], variable: &str, at: u64) {
        let mut child = self
            .command(device, args)
            .env(variable, at.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if line == "paused" {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                assert!(!status.success(), "killed, not finished");
                return;
            }
            seen.push(line);
        }
        panic!(
            "{args:?} ended without reaching its pause point: {:?}; stderr: {seen:?}",
            child.wait()
        );
    }

    fn restore(&self, device: &str) -> String {
        let out = self.root.join(format!("{device}.jsonl"));
        self.run(device, &["restore", "--out", out.to_str().unwrap()]);
        std::fs::read_to_string(out).unwrap()
    }
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A history of `lines` lines over 10 chats, with edits and deletes mixed in.
fn history(path: &Path, first: usize, lines: usize) {
    let mut text = String::new();
    for i in first..first + lines {
        let chat = i % 10;
        text.push_str(&match i % 50 {
            0 => format!(
                r#"{{"type":"chat","chat_id":"chat{chat}","title":"Chat {chat} / {i}","members":["a","b"]}}"#
            ),
            7 => format!(
                r#"{{"type":"delete_message","chat_id":"chat{chat}","message_id":"m{}"}}"#,
                i.saturating_sub(20)
            ),
            13 => format!(
                r#"{{"type":"message","chat_id":"chat{chat}","message_id":"m{}","sent_at_ms":{},"text":"edited at {i}","kind":"text","payload":"AAEC"}}"#,
                i.saturating_sub(10),
                i.saturating_sub(10)
            ),
            _ => format!(
                r#"{{"type":"message","chat_id":"chat{chat}","message_id":"m{i}","sender":"a","sent_at_ms":{i},"text":"message {i} 💬"}}"#
            ),
        });
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_killed_import_and_a_killed_restore_resume_with_nothing_lost_or_doubled() {
    // The reference: the same four files imported and synced without interruption.
    let reference = Env::new();
    let files: Vec<PathBuf> = (0..4)
        .map(|n| {
            let path = reference.root.join(format!("part{n}.jsonl"));
            history(&path, n * 5_500, 5_500);
            path
        })
        .collect();
    for file in &files {
        reference.run("phone", &["import", file.to_str().unwrap()]);
        reference.run("phone", &["sync"]);
    }
    let expected = reference.restore("phone");
    assert!(expected.lines().count() > 15_000);

    // Each import (in batches of 1,000 lines) is killed after its third batch (durably
    // recorded), then run again whole, then synced: four segments.
    let env = Env::new();
    for file in &files {
        let file = file.to_str().unwrap();
        env.kill_at(
            "phone",
            &["import", file, "--batch", "1000"],
            "CHATVAULT_TEST_PAUSE_AFTER_BATCH",
            3,
        );
        let stats = env.run("phone", &["stats", "--json"]);
        assert!(stats.contains("\"pending_operations\":3000"), "{stats}");
        env.run("phone", &["import", file]);
        env.run("phone", &["sync"]);
    }
    assert_eq!(env.restore("phone"), expected);

    // A new device's restore is killed after applying two of the four segments; run again, it
    // applies the other two (the first two are not applied twice) and writes the same history.
    env.kill_at(
        "tablet",
        &["restore", "--out", "/dev/null"],
        "CHATVAULT_TEST_PAUSE_AFTER_SEGMENT",
        2,
    );
    let resumed = env.run("tablet", &["sync", "--json"]);
    let report: serde_json::Value = serde_json::from_str(resumed.trim()).unwrap();
    assert_eq!(report["segments_applied"], 2, "{resumed}");
    assert_eq!(env.restore("tablet"), expected);
    assert!(env.run("tablet", &["verify"]).starts_with("ok: 4 segments"));
}

#[path = "kill/model.rs"]
mod model;
#[path = "kill/trials.rs"]
mod trials;
#[path = "kill/world.rs"]
mod world;

/// Issue 11: SIGKILL the CLI at random instants of `import`, `sync` (push, and pull by an
/// existing or a new device), `checkpoint` and `gc`; after each kill, check what the killed run
/// acknowledged is durable, run the command again, sync both devices and compare their exports
/// with the model of everything imported. Across all trials no segment, checkpoint index or pack
/// name may ever hold two different contents. `CHATVAULT_KILL_TRIALS` (default 100) sets the
/// number of trials, `CHATVAULT_KILL_SEED` replays a run's data and delays (the instants a
/// kill lands at still depend on the machine) and `CHATVAULT_KILL_PHASES` (comma-separated)
/// picks phases. Run with `--nocapture` for the summary.
#[test]
fn random_sigkills_of_import_sync_checkpoint_and_gc_lose_nothing_and_reseal_nothing() {
    let trials: usize = std::env::var("CHATVAULT_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("CHATVAULT_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    // `CHATVAULT_KILL_PHASES=checkpoint,gc` runs only those phases.
    let phases: Vec<&'static str> = match std::env::var("CHATVAULT_KILL_PHASES") {
        Ok(list) => trials::PHASES
            .into_iter()
            .filter(|p| list.split(',').any(|l| l.trim() == *p))
            .collect(),
        Err(_) => trials::PHASES.to_vec(),
    };
    assert!(!phases.is_empty(), "CHATVAULT_KILL_PHASES names no phase");
    println!("kill trials: seed {seed} (replay with CHATVAULT_KILL_SEED={seed})");
    let summary = trials::run(seed, trials, &phases);
    println!("{summary}");
}

/// A store whose PUT of the first object whose name contains `fail_on` lands and then reports
/// failure, like a process killed after the object reached the bucket and before it recorded
/// that; it records every name's first bytes and counts PUTs that gave a name other bytes.
struct LandsThenDies {
    inner: chatvault::store::MemoryStore,
    fail_on: std::sync::Mutex<Option<&'static str>>,
    first: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
    resealed: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl chatvault::store::ObjectStore for LandsThenDies {
    async fn put(&self, key: &str, body: Vec<u8>) -> chatvault::store::StoreResult<()> {
        {
            let mut first = self.first.lock().unwrap();
            match first.get(key) {
                Some(bytes) if *bytes != body => self.resealed.lock().unwrap().push(key.into()),
                Some(_) => {}
                None => {
                    first.insert(key.into(), body.clone());
                }
            }
        }
        self.inner.put(key, body).await?;
        let mut fail_on = self.fail_on.lock().unwrap();
        if fail_on.is_some_and(|part| key.contains(part)) {
            *fail_on = None;
            return Err(chatvault::store::StoreError::Unavailable(
                "stored, then the writer died".into(),
            ));
        }
        Ok(())
    }
    async fn get(&self, key: &str, max_len: u64) -> chatvault::store::StoreResult<Option<Vec<u8>>> {
        self.inner.get(key, max_len).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> chatvault::store::StoreResult<Option<Vec<u8>>> {
        self.inner.get_range(key, range).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> chatvault::store::StoreResult<Vec<chatvault::store::ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> chatvault::store::StoreResult<()> {
        self.inner.delete(key).await
    }
    fn requests_sent(&self) -> u64 {
        self.inner.requests_sent()
    }
}

/// A checkpoint interrupted after one of its objects landed (a pack, or the index itself) must
/// not reuse its sequence number: the next attempt seals other bytes under the same pack and
/// index names. Worse, when the index had landed, the next attempt builds on it, keeps a large
/// chat's blocks where that index says they lie (in pack 0 of the same sequence number), and
/// then overwrites that very pack with its own blocks: the new checkpoint points into bytes
/// that are no longer there, and once garbage collection removes the segments it covers, the
/// chat is gone. Here each interruption is followed by more messages in another chat, the next
/// checkpoint, garbage collection, and a new device restoring from the checkpoint. (Found by
/// the kill trials' write-once ledger; fails without the sequence number reserved before the
/// first PUT, `src/vault/checkpointing.rs`.)
#[tokio::test]
async fn a_checkpoint_interrupted_after_an_object_landed_never_reuses_its_names() {
    use chatvault::keys::RecoveryKey;
    use chatvault::sync::{Change, Message};
    use chatvault::vault::{DeviceInfo, Vault};
    let mut rng = model::Rng::new(11);
    // Incompressible payloads: a pack over 1 MiB that stays mostly live is kept, not copied.
    let mut message = |n: u32, chat: &str, payload: usize| {
        Change::UpsertMessage(Message {
            chat_id: chat.into(),
            message_id: format!("m{n}"),
            sender: "me".into(),
            sent_at_ms: i64::from(n),
            text: format!("message {n}"),
            reply_to: None,
            attachments: Vec::new(),
            kind: String::new(),
            payload: (0..payload).map(|_| rng.next() as u8).collect(),
        })
    };
    for interrupted in ["/packs/", "/checkpoints/"] {
        let store = std::sync::Arc::new(LandsThenDies {
            inner: chatvault::store::MemoryStore::new(),
            fail_on: std::sync::Mutex::new(None),
            first: Default::default(),
            resealed: Default::default(),
        });
        let shared: std::sync::Arc<dyn chatvault::store::ObjectStore> = store.clone();
        let key = RecoveryKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let info = || DeviceInfo {
            name: "phone".into(),
            platform: "test".into(),
        };
        let phone_dir = dir.path().join("phone");
        let mut recorded = 0;
        for round in 0..3 {
            let phone = Vault::open(shared.clone(), &phone_dir, info(), &key)
                .await
                .unwrap();
            // Rounds 0 and 1: a large chat (about 1.5 MiB); round 2: a small one.
            let changes = (recorded..recorded + 12)
                .map(|n| match round {
                    2 => message(n, "small", 10),
                    _ => message(n, "large", 64 * 1024),
                })
                .collect();
            phone.record(changes).unwrap();
            recorded += 12;
            phone.sync(None, None).await.unwrap();
            if round == 1 {
                *store.fail_on.lock().unwrap() = Some(interrupted);
                let error = phone.checkpoint().await.unwrap_err();
                assert!(matches!(error, chatvault::Error::Store(_)), "{error}");
                // The process dies here: the vault is dropped, its state reopened next round.
            } else {
                phone.checkpoint().await.unwrap();
            }
        }
        let phone = Vault::open(shared.clone(), &phone_dir, info(), &key)
            .await
            .unwrap();
        phone.collect_garbage(0).await.unwrap();
        let tablet = Vault::open(shared.clone(), &dir.path().join("tablet"), info(), &key)
            .await
            .unwrap();
        let restored = tablet.sync(None, None).await.map(|_| {
            let chats = tablet.chats().unwrap();
            chats.iter().map(|c| c.message_count).sum::<u64>()
        });
        assert!(
            matches!(restored, Ok(36)),
            "interrupted at {interrupted}: a new device restored {restored:?} of 36 messages"
        );
        tablet.verify().await.unwrap();
        assert_eq!(
            *store.resealed.lock().unwrap(),
            Vec::<String>::new(),
            "interrupted at {interrupted}: names that received two different objects"
        );
    }
}
