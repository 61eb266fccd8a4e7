//! Attachments through the CLI, with real process kills: a 120 MiB file is imported, the process
//! is killed (SIGKILL) part way through the upload and run again; a second device restores it
//! with `--attachments`, is killed part way through the download and run again. The resumed runs
//! must not send or fetch again what was complete, the result must be byte-identical, and the
//! peak memory (reported by the CLI from /proc/self/status) must stay far below the file size.
//!
//! Runs on a directory store, and on Garage when the test command has started it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chatvault::attachment::stream;
use serde_json::Value;

const CHUNK_KIB: u32 = 1024;
const FILE_MIB: usize = 120;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: String,
    key_file: PathBuf,
    credentials: Vec<(String, String)>,
}

impl Env {
    fn new(store: Option<String>, credentials: Vec<(String, String)>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let key = Command::new(env!("CARGO_BIN_EXE_chatvault"))
            .arg("keygen")
            .output()
            .unwrap();
        assert!(key.status.success());
        let key_file = root.join("key.txt");
        std::fs::write(&key_file, key.stdout).unwrap();
        Env {
            store: store.unwrap_or_else(|| format!("file://{}", root.join("bucket").display())),
            root,
            key_file,
            credentials,
            _dir: dir,
        }
    }

    fn command(&self, device: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatvault"));
        command
            .env("CHATVAULT_STORE", &self.store)
            .env("CHATVAULT_KEY_FILE", &self.key_file)
            .env("CHATVAULT_STATE", self.root.join(device))
            .envs(self.credentials.iter().map(|(k, v)| (k, v)))
            .args(args);
        command
    }

    fn run(&self, device: &str, args: &[&str]) -> (String, Vec<Value>) {
        let output = self
            .command(device, args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "chatvault {args:?} failed: {stderr}"
        );
        let events = stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (String::from_utf8_lossy(&output.stdout).into_owned(), events)
    }

    /// Runs a command with its transfer pause point at `fraction` of the file
    /// (`CHATVAULT_TEST_PAUSE_AFTER_BYTES`: the child stops after a completed chunk, with nothing
    /// in flight, and waits), SIGKILLs it once it says it paused, and returns the bytes of the
    /// file done at that point. The child cannot finish first: it waits until killed.
    fn run_and_kill(&self, device: &str, args: &[&str], fraction: f64) -> u64 {
        let total = u64::try_from(FILE_MIB << 20).unwrap();
        let pause_at = (fraction * total as f64) as u64;
        let mut child = self
            .command(device, args)
            .env("CHATVAULT_TEST_PAUSE_AFTER_BYTES", pause_at.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut done_at_kill = None;
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["event"] == "pausing"
            {
                done_at_kill = event["done"].as_u64();
            }
            if line == "paused" {
                child.kill().unwrap();
                break;
            }
            seen.push(line);
        }
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the process was to wait at its pause point until killed: {seen:?}"
        );
        let done = done_at_kill.expect("the pause point reported the bytes done");
        assert!(done >= pause_at, "paused at {done}, before {pause_at}");
        done
    }

    /// Bytes the store has received for this vault, measured at the store: every file under a
    /// directory store's root (temporary files of an interrupted write included), or the
    /// objects Garage lists (`chatvault stats`, which sums the server's listing).
    fn bytes_at_store(&self) -> u64 {
        match self.store.strip_prefix("file://") {
            Some(root) => bytes_under(Path::new(root)),
            None => {
                let (stdout, _) = self.run("phone", &["stats", "--json"]);
                let stats: Value = serde_json::from_str(stdout.trim()).unwrap();
                stats["bytes"].as_u64().unwrap()
            }
        }
    }
}

/// Every file under a directory store's root with its inode: a rewritten object gets a new one
/// (objects are written to a temporary file and renamed), which sizes alone would not show.
fn files_under(path: &Path, out: &mut std::collections::BTreeMap<PathBuf, u64>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), out);
        } else {
            out.insert(entry.path(), entry.metadata().unwrap().ino());
        }
    }
}

fn bytes_under(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                bytes_under(&entry.path())
            } else {
                entry.metadata().unwrap().len()
            }
        })
        .sum()
}

fn summary(events: &[Value]) -> &Value {
    events
        .iter()
        .rev()
        .find(|e| e["event"] == "transfers")
        .expect("a transfer summary")
}

fn write_random_file(path: &Path, mib: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        getrandom::fill(&mut block).unwrap();
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        let mut filled = 0;
        while filled < n {
            let m = b.read(&mut y[filled..n]).unwrap();
            if m == 0 {
                return false;
            }
            filled += m;
        }
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if x[..n] != y[..n] {
            return false;
        }
    }
}

fn kill_and_resume(env: &Env) {
    let chunk = CHUNK_KIB * 1024;
    let size = (FILE_MIB << 20) as u64;
    let big = env.root.join("media").join("big video.mp4");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    write_random_file(&big, FILE_MIB);
    let jsonl = env.root.join("history.jsonl");
    std::fs::write(
        &jsonl,
        concat!(
            r#"{"type":"chat","chat_id":"c","title":"Trip"}"#,
            "\n",
            r#"{"type":"message","chat_id":"c","message_id":"m1","sent_at_ms":1,"text":"the video","attachments":[{"path":"media/big video.mp4","name":"trip.mp4","mime":"video/mp4"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let jsonl = jsonl.to_str().unwrap();
    let chunk_kib = CHUNK_KIB.to_string();
    let import = [
        "import",
        jsonl,
        "--progress",
        "--chunk-kib",
        chunk_kib.as_str(),
    ];

    // Upload: kill at 40%, then resume. What the runs send is measured at the store, from a
    // vault that exists already (`init`), so that only attachment chunks arrive meanwhile.
    let count = stream::chunk_count(size, chunk);
    let object_len = |i: u64| stream::chunk_object_len(size, chunk, i);
    env.run("phone", &["init"]);
    let at_start = env.bytes_at_store();
    let done_at_kill = env.run_and_kill("phone", &import, 0.4);
    assert!(done_at_kill < size, "killed before the end");
    let sent_before = env.bytes_at_store() - at_start;
    let mut files_before = std::collections::BTreeMap::new();
    if let Some(root) = env.store.strip_prefix("file://") {
        files_under(Path::new(root), &mut files_before);
    }
    let (_, events) = env.run("phone", &import);
    let sent_after = env.bytes_at_store() - at_start - sent_before;
    if let Some(root) = env.store.strip_prefix("file://") {
        let mut files_after = std::collections::BTreeMap::new();
        files_under(Path::new(root), &mut files_after);
        for (path, inode) in &files_before {
            assert_eq!(
                files_after.get(path),
                Some(inode),
                "{} was written again by the resumed upload",
                path.display()
            );
        }
    }
    let resumed = summary(&events);
    let skipped = resumed["chunks_skipped"].as_u64().unwrap();
    assert_eq!(
        skipped,
        done_at_kill / u64::from(chunk),
        "every chunk done before the kill is kept, and only those"
    );
    assert!(skipped < count, "the kill left chunks to send");
    assert_eq!(
        sent_before,
        (0..skipped).map(object_len).sum::<u64>(),
        "the killed run stored exactly the chunks it reported done"
    );
    let expected_after: u64 = (skipped..count).map(object_len).sum();
    assert_eq!(
        sent_after, expected_after,
        "the resumed upload sends only missing chunks"
    );
    assert_eq!(
        resumed["bytes_transferred"].as_u64().unwrap(),
        sent_after,
        "the CLI's report agrees with the store"
    );
    let total_sent = sent_before + sent_after;
    let stored = stream::stored_len(size, chunk);
    assert_eq!(
        total_sent, stored,
        "{total_sent} bytes reached the store for a {size}-byte file ({stored} stored)"
    );
    let upload_peak = resumed["peak_rss_kib"].as_u64().expect("VmHWM on Linux");
    env.run("phone", &["sync"]);

    // Download on a new device: kill at 40%, then resume.
    let out = env.root.join("restore").join("history.jsonl");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let files = env.root.join("restore").join("files");
    let restore = [
        "restore",
        "--out",
        out.to_str().unwrap(),
        "--attachments",
        files.to_str().unwrap(),
        "--progress",
    ];
    let done_at_kill = env.run_and_kill("laptop", &restore, 0.4);
    assert!(done_at_kill < size, "killed before the end");
    let (stdout, events) = env.run("laptop", &restore);
    let resumed = summary(&events);
    let kept = resumed["chunks_skipped"].as_u64().unwrap();
    let fetched_after = resumed["bytes_transferred"].as_u64().unwrap();
    assert_eq!(
        kept,
        done_at_kill / u64::from(chunk),
        "every chunk on disk before the kill is kept"
    );
    let content_chunks = size.div_ceil(u64::from(chunk));
    let expected_after: u64 = (kept..content_chunks).map(object_len).sum();
    assert_eq!(
        fetched_after, expected_after,
        "the resumed download fetches only the rest"
    );
    assert!(stdout.contains("1 attachments in place"), "{stdout}");

    // The output line points at the file, relative to the output file, and it is identical.
    let restored = std::fs::read_to_string(&out).unwrap();
    let line: Value = serde_json::from_str(restored.lines().nth(1).unwrap()).unwrap();
    let attachment = &line["attachments"][0];
    assert_eq!(attachment["name"], "trip.mp4");
    assert_eq!(attachment["mime"], "video/mp4");
    assert_eq!(attachment["size"], size);
    let relative = attachment["path"].as_str().unwrap();
    assert!(relative.starts_with("files/"), "{relative}");
    assert!(same_content(&out.parent().unwrap().join(relative), &big));
    let leftovers: Vec<_> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let download_peak = resumed["peak_rss_kib"].as_u64().expect("VmHWM on Linux");

    // Peak memory stays far below the 120 MiB file.
    for peak in [upload_peak, download_peak] {
        assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    }
    eprintln!(
        "kill/resume with {FILE_MIB} MiB in {CHUNK_KIB} KiB chunks: the two upload runs \
         sent {total_sent} bytes in all, measured at the store ({sent_before} before the kill); download fetched {fetched_after} bytes after the kill; \
         peak RSS upload {upload_peak} KiB, download {download_peak} KiB"
    );

    // Without --attachments, lines keep references only.
    let refs = env.root.join("refs.jsonl");
    env.run("laptop", &["restore", "--out", refs.to_str().unwrap()]);
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&refs)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert!(line["attachments"][0]["path"].is_null());
    assert_eq!(
        line["attachments"][0]["content_id"].as_str().unwrap().len(),
        64
    );
}

#[test]
fn killed_uploads_and_downloads_resume_on_a_directory_store() {
    kill_and_resume(&Env::new(None, Vec::new()));
}

#[test]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
fn killed_uploads_and_downloads_resume_on_garage() {
    let Some(config) = common::s3_server("GARAGE") else {
        return;
    };
    let url = std::env::var("CHATVAULT_TEST_GARAGE_URL").unwrap();
    // The same server and bucket under a fresh prefix.
    let (path, query) = url.split_once('?').unwrap();
    let store = format!("{path}/{}?{query}", common::run_id());
    kill_and_resume(&Env::new(
        Some(store),
        vec![
            ("AWS_ACCESS_KEY_ID".into(), config.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                config.secret_access_key.clone(),
            ),
        ],
    ));
}
