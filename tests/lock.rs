//! One writer per state directory: a second open of a state directory, by another process or in
//! the same one, fails at once with `Busy` while the first goes on unharmed. (The two-process
//! tests need `--features cli`.)

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use chatvault::Error;
use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Message};
use chatvault::vault::{DeviceInfo, Vault};

/// The exit status the CLI uses for a busy state directory (sysexits' EX_TEMPFAIL).
const EXIT_BUSY: i32 = 75;

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

    /// Starts an import that stops after its first batch, holding the state directory open,
    /// and returns once it says so. `resumable`: a line on its stdin lets it finish.
    fn import_paused(&self, device: &str, file: &Path, resumable: bool) -> Child {
        let mut command = self.command(
            device,
            &["import", file.to_str().unwrap(), "--batch", "1000"],
        );
        command
            .env("CHATVAULT_TEST_PAUSE_AFTER_BATCH", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if resumable {
            command.env("CHATVAULT_TEST_PAUSE_RESUME", "stdin");
        }
        let mut child = command.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if line.trim() == "paused" {
                // Keep draining stderr so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in stderr.lines() {});
                return child;
            }
            line.clear();
        }
        panic!("import ended before its pause point: {:?}", child.wait());
    }

    fn segments(&self) -> usize {
        let vault_dirs = std::fs::read_dir(self.root.join("bucket"))
            .map(|dirs| dirs.filter_map(|d| d.ok()).collect::<Vec<_>>())
            .unwrap_or_default();
        vault_dirs
            .iter()
            .map(|d| d.path().join("segments"))
            .filter(|p| p.is_dir())
            .flat_map(|p| std::fs::read_dir(p).unwrap())
            .flat_map(|device| std::fs::read_dir(device.unwrap().path()).unwrap())
            .count()
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

fn busy(output: Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_BUSY), "{stderr}");
    assert!(
        stderr.contains("is in use by another process"),
        "a clear message: {stderr}"
    );
}

fn history(path: &Path, lines: usize) {
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!(
            r#"{{"type":"message","chat_id":"chat{}","message_id":"m{i}","sent_at_ms":{i},"text":"message {i}"}}"#,
            i % 3
        ));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_second_process_on_a_held_state_directory_fails_busy_and_the_first_finishes() {
    let env = Env::new();
    let file = env.root.join("history.jsonl");
    history(&file, 3000);
    env.run("phone", &["init"]);
    let mut first = env.import_paused("phone", &file, true);

    // The first holds "phone" with 1,000 lines recorded and 2,000 to go. Every other command
    // on that directory stops at once, before touching anything, with its own exit status.
    busy(env.command("phone", &["sync"]).output().unwrap());
    busy(env.command("phone", &["stats"]).output().unwrap());
    busy(
        env.command("phone", &["import", file.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(env.segments(), 0, "the second process pushed nothing");
    // Another device's state directory is not affected.
    env.run("tablet", &["init"]);

    first.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = first.wait().unwrap();
    assert!(status.success(), "the first process finishes: {status}");

    // The lock went with the process: the directory opens again, everything was recorded
    // once, and another device gets it all through an unbroken chain.
    let stats = env.run("phone", &["stats", "--json"]);
    assert!(stats.contains("\"pending_operations\":3000"), "{stats}");
    env.run("phone", &["sync"]);
    let out = env.root.join("tablet.jsonl");
    env.run("tablet", &["restore", "--out", out.to_str().unwrap()]);
    let restored = std::fs::read_to_string(out).unwrap();
    assert_eq!(
        restored
            .lines()
            .filter(|l| l.contains("\"type\":\"message\""))
            .count(),
        3000
    );
    assert!(env.run("tablet", &["verify"]).starts_with("ok: 1 segments"));
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let env = Env::new();
    let file = env.root.join("history.jsonl");
    history(&file, 2000);
    let mut holder = env.import_paused("phone", &file, false);
    busy(env.command("phone", &["sync"]).output().unwrap());
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The operating system released the lock with the process: no file to clean up by hand.
    let stats = env.run("phone", &["stats", "--json"]);
    assert!(stats.contains("\"pending_operations\":1000"), "{stats}");
}

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
    }
}

#[tokio::test]
async fn a_second_vault_on_the_same_state_directory_in_one_process_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.path().join("bucket")));
    let key = RecoveryKey::generate().unwrap();
    let state = dir.path().join("phone");
    let first = Vault::open(store.clone(), &state, info("app"), &key)
        .await
        .unwrap();
    let second = Vault::open(store.clone(), &state, info("extension"), &key).await;
    assert!(matches!(second, Err(Error::Busy)), "{second:?}");
    // The lock file sits in the state directory, beside the database.
    assert!(state.join("chatvault.sqlite.lock").is_file());
    // A wrong recovery key is still reported as such, busy or not.
    let other_key = RecoveryKey::generate().unwrap();
    let wrong = Vault::open(store.clone(), &state, info("other"), &other_key).await;
    assert!(
        matches!(&wrong, Err(Error::InvalidInput(why)) if why.contains("belongs to another vault")),
        "{wrong:?}"
    );

    // The refused open harmed nothing: the first records and syncs as before.
    let message = Message {
        chat_id: "c".into(),
        message_id: "m".into(),
        text: "hello".into(),
        ..Message::default()
    };
    first.record(vec![Change::UpsertMessage(message)]).unwrap();
    first.sync(None, None).await.unwrap();
    let device = first.device_id();
    drop(first);

    // Closed, the directory opens again, as the same device.
    let again = Vault::open(store, &state, info("extension"), &key)
        .await
        .unwrap();
    assert_eq!(again.device_id(), device);
    assert_eq!(again.pending_operations().unwrap(), 0);
}
