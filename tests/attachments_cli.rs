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

    /// Runs a command with `--progress` and SIGKILLs it once a progress event reports at least
    /// `fraction` of the file done; returns the bytes the last event before the kill reported.
    fn run_and_kill(&self, device: &str, args: &[&str], fraction: f64) -> u64 {
        let mut child = self
            .command(device, args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut done_at_kill = None;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["event"] == "progress" {
                let done = event["done"].as_u64().unwrap();
                let total = event["total"].as_u64().unwrap();
                if done as f64 >= fraction * total as f64 {
                    child.kill().unwrap();
                    done_at_kill = Some(done);
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the process was killed, not finished"
        );
        done_at_kill.expect("progress was reported before the kill")
    }
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

    // Upload: kill at 40%, then resume.
    let count = stream::chunk_count(size, chunk);
    let object_len = |i: u64| stream::chunk_object_len(size, chunk, i);
    let done_at_kill = env.run_and_kill("phone", &import, 0.4);
    assert!(done_at_kill < size, "killed before the end");
    let (_, events) = env.run("phone", &import);
    let resumed = summary(&events);
    let skipped = resumed["chunks_skipped"].as_u64().unwrap();
    let sent_after = resumed["bytes_transferred"].as_u64().unwrap();
    assert!(
        skipped >= done_at_kill / u64::from(chunk),
        "every chunk reported done before the kill is kept: {skipped} chunks"
    );
    assert!(skipped < count, "the kill left chunks to send");
    let expected_after: u64 = (skipped..count).map(object_len).sum();
    assert_eq!(
        sent_after, expected_after,
        "the resumed upload sends only missing chunks"
    );
    // Before the kill at most `skipped` whole chunks and the one in flight went out.
    let sent_before_at_most: u64 = (0..=skipped).map(object_len).sum();
    let total_sent = sent_before_at_most + sent_after;
    let stored = stream::stored_len(size, chunk);
    assert!(
        total_sent <= stored + object_len(0),
        "{total_sent} bytes sent for a {size}-byte file ({stored} stored)"
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
    assert!(done_at_kill < size);
    let (stdout, events) = env.run("laptop", &restore);
    let resumed = summary(&events);
    let kept = resumed["chunks_skipped"].as_u64().unwrap();
    let fetched_after = resumed["bytes_transferred"].as_u64().unwrap();
    assert!(
        kept >= done_at_kill / u64::from(chunk),
        "{kept} chunks kept"
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
        "kill/resume with {FILE_MIB} MiB in {CHUNK_KIB} KiB chunks: upload sent at most {total_sent} \
         bytes in all ({stored} stored); download fetched {fetched_after} bytes after the kill; \
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
