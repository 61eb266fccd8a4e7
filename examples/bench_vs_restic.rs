//! The Rust-API side of `scripts/bench-vs-restic.sh` (chatvault against restic backing up the
//! app's SQLite database). Each mode is one process, so the script can take its wall time and
//! peak RSS with `/usr/bin/time -v`; each prints one JSON line of figures on stdout.
//!
//! ```text
//! bench_vs_restic backup    --corpus F.jsonl --store DIR --state DIR --key-file K
//!                           [--batch 1000] [--messages LIMIT] [--cache off|on]
//! bench_vs_restic restore   --store DIR --state NEW_DIR --key-file K [--cache off|on]
//! bench_vs_restic amortized --corpus F.jsonl --store DIR --state DIR --key-file K
//!                           [--base 200000] [--syncs 200] [--per-sync 10]
//! ```
//!
//! - `backup` streams the corpus (chatvault JSON Lines, as written by
//!   `scripts/bench_vs_restic.py corpus`) line by line, records it in batches of 1,000 changes into
//!   a vault on a directory store, then syncs once. JSON parsing is timed apart from `record`.
//!   `--batch` changes the batch size and `--messages` stops early (for experiments). `--cache`
//!   sets the content cache (default off: the app's database is the source of truth).
//! - `restore` opens a second device with an empty state directory and syncs, counting the
//!   operations delivered to a [`ChangeListener`].
//! - `amortized` backs up the first `--base` messages of the corpus (a store of its own), then runs
//!   `--syncs` syncs that each record `--per-sync` new messages spread over the chats, and sums the
//!   bytes every sync uploaded (automatic checkpoints included).

// Messages and chats are built with `..Default::default()` so this compiles whatever fields the
// model gains; today that update may be needless for some of them.
#![allow(clippy::needless_update)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatvault::keys::RecoveryKey;
use chatvault::local::CacheSetting;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Chat, Message, Operation};
use chatvault::vault::{ChangeListener, DeviceInfo, Vault};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Changes per `record` call unless `--batch` says otherwise.
const BATCH: u64 = 1000;
const WORDS: &[&str] = &[
    "ok", "see", "you", "tomorrow", "at", "the", "station", "dinner", "tonight", "?", "love", "it",
    "haha", "send", "me", "photos", "when", "are", "we", "meeting", "running", "late", "sorry",
    "great", "news", "call", "later", "🙂", "👍", "🎉",
];

struct Args {
    mode: String,
    options: BTreeMap<String, String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = std::env::args().skip(1);
        let mode = args
            .next()
            .ok_or("usage: bench_vs_restic backup|restore|amortized ...")?;
        let mut options = BTreeMap::new();
        while let Some(name) = args.next() {
            let name = name
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {name:?}"))?
                .to_owned();
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            options.insert(name, value);
        }
        Ok(Args { mode, options })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        Ok(self
            .options
            .get(name)
            .ok_or_else(|| format!("--{name} is required"))?
            .into())
    }

    fn number(&self, name: &str, default: u64) -> Result<u64> {
        match self.options.get(name) {
            Some(v) => Ok(v.parse().map_err(|e| format!("--{name} {v}: {e}"))?),
            None => Ok(default),
        }
    }
}

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "bench".into(),
    }
}

/// Opens the device's vault with the content cache as `--cache` says (`off`: the app's database
/// is the source of truth and chatvault keeps only sync metadata; `on`: chatvault also keeps the
/// sealed content, as the CLI does), `default` if not given.
async fn open(args: &Args, device: &str, default: &str) -> Result<Vault> {
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(args.path("store")?));
    let key_file = args.path("key-file")?;
    let text =
        std::fs::read_to_string(&key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key = RecoveryKey::parse(&text)?;
    let vault = Vault::open(store, &args.path("state")?, info(device), &key).await?;
    match args.options.get("cache").map_or(default, String::as_str) {
        "off" => vault.set_content_cache(CacheSetting::Off)?,
        "on" => vault.set_content_cache(CacheSetting::On { max_bytes: None })?,
        other => return Err(format!("--cache {other}: on or off").into()),
    }
    Ok(vault)
}

fn text(value: &Value, field: &str, number: usize) -> Result<String> {
    Ok(value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("line {number}: no string {field}"))?
        .to_owned())
}

/// The change of one corpus line.
fn change_of(line: &str, number: usize) -> Result<Change> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("line {number}: {e}"))?;
    match value.get("type").and_then(Value::as_str) {
        Some("chat") => Ok(Change::UpsertChat(Chat {
            chat_id: text(&value, "chat_id", number)?,
            title: text(&value, "title", number)?,
            members: value
                .get("members")
                .and_then(Value::as_array)
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        })),
        Some("message") => Ok(Change::UpsertMessage(Message {
            chat_id: text(&value, "chat_id", number)?,
            message_id: text(&value, "message_id", number)?,
            sender: text(&value, "sender", number)?,
            sent_at_ms: value
                .get("sent_at_ms")
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("line {number}: no sent_at_ms"))?,
            text: text(&value, "text", number)?,
            reply_to: value
                .get("reply_to")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..Default::default()
        })),
        other => Err(format!("line {number}: unexpected type {other:?}").into()),
    }
}

/// What recording a corpus took.
#[derive(Default)]
struct Recorded {
    chats: Vec<String>,
    messages: u64,
    last_sent_at_ms: i64,
    parse: Duration,
    record: Duration,
    /// Seconds each `record` call took, in order.
    batches: Vec<f64>,
}

/// Streams the corpus into `vault` in batches of `batch_size` changes, stopping after `limit`
/// messages.
fn record_corpus(vault: &Vault, corpus: &Path, limit: u64, batch_size: usize) -> Result<Recorded> {
    let file = std::fs::File::open(corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut recorded = Recorded::default();
    let mut batch = Vec::with_capacity(batch_size);
    let flush = |batch: &mut Vec<Change>, recorded: &mut Recorded| -> Result<()> {
        if !batch.is_empty() {
            let started = Instant::now();
            vault.record(std::mem::take(batch))?;
            let took = started.elapsed();
            recorded.record += took;
            recorded.batches.push(took.as_secs_f64());
        }
        Ok(())
    };
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if recorded.messages >= limit {
            break;
        }
        let started = Instant::now();
        let change = change_of(&line, index + 1)?;
        recorded.parse += started.elapsed();
        match &change {
            Change::UpsertChat(chat) => recorded.chats.push(chat.chat_id.clone()),
            Change::UpsertMessage(message) => {
                recorded.messages += 1;
                recorded.last_sent_at_ms = message.sent_at_ms;
            }
            _ => {}
        }
        batch.push(change);
        if batch.len() == batch_size {
            flush(&mut batch, &mut recorded)?;
        }
    }
    flush(&mut batch, &mut recorded)?;
    Ok(recorded)
}

/// Bytes of the files in a directory (the local state).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn backup(args: &Args) -> Result<Value> {
    let started = Instant::now();
    let vault = open(args, "bench phone", "off").await?;
    let open_s = started.elapsed().as_secs_f64();
    let batch_size = args.number("batch", BATCH)?.max(1) as usize;
    let limit = args.number("messages", u64::MAX)?;
    let recorded = record_corpus(&vault, &args.path("corpus")?, limit, batch_size)?;
    let started = Instant::now();
    let report = vault.sync(None, None).await?;
    let sync_s = started.elapsed().as_secs_f64();
    let record_s = recorded.record.as_secs_f64();
    // Record cost per message in each tenth of the history (does it grow with the vault?).
    let tenth = recorded.batches.len().div_ceil(10).max(1);
    let by_tenth: Vec<f64> = recorded
        .batches
        .chunks(tenth)
        .map(|c| c.iter().sum::<f64>() * 1e6 / (c.len() * batch_size) as f64)
        .collect();
    Ok(json!({
        "mode": "backup",
        "cache": format!("{:?}", vault.content_cache()?),
        "state_bytes": dir_bytes(&args.path("state")?),
        "batch": batch_size,
        "messages": recorded.messages,
        "chats": recorded.chats.len(),
        "open_s": open_s,
        "parse_s": recorded.parse.as_secs_f64(),
        "record_s": record_s,
        "record_us_per_message": record_s * 1e6 / recorded.messages.max(1) as f64,
        "record_us_per_message_by_tenth": by_tenth,
        "sync_s": sync_s,
        "total_s": record_s + sync_s,
        "objects_up": report.objects_up,
        "bytes_up": report.bytes_up,
        "requests": report.requests,
        "peak_rss_kib": peak_rss_kib(),
    }))
}

/// Counts what a sync delivers.
#[derive(Default)]
struct Counter {
    operations: AtomicU64,
    calls: AtomicU64,
}

impl ChangeListener for Counter {
    fn on_changes(
        &self,
        _device: &str,
        operations: &[Operation],
    ) -> std::result::Result<(), String> {
        self.operations
            .fetch_add(operations.len() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn restore(args: &Args) -> Result<Value> {
    let started = Instant::now();
    let vault = open(args, "bench tablet", "off").await?;
    let open_s = started.elapsed().as_secs_f64();
    let counter = Counter::default();
    let started = Instant::now();
    let report = vault.sync(None, Some(&counter)).await?;
    let sync_s = started.elapsed().as_secs_f64();
    let chats = vault.chats()?;
    Ok(json!({
        "mode": "restore",
        "cache": format!("{:?}", vault.content_cache()?),
        "state_bytes": dir_bytes(&args.path("state")?),
        "open_s": open_s,
        "sync_s": sync_s,
        "objects_down": report.objects_down,
        "bytes_down": report.bytes_down,
        "requests": report.requests,
        "operations_applied": report.operations_applied,
        "operations_delivered": counter.operations.load(Ordering::Relaxed),
        "listener_calls": counter.calls.load(Ordering::Relaxed),
        "chats": chats.len(),
        "messages": chats.iter().map(|c| c.message_count).sum::<u64>(),
        "peak_rss_kib": peak_rss_kib(),
    }))
}

async fn amortized(args: &Args) -> Result<Value> {
    let base = args.number("base", 200_000)?;
    let syncs = args.number("syncs", 200)?;
    let per_sync = args.number("per-sync", 10)?;
    // Checkpoints are built from the bucket: this device, like an app's, keeps no content
    // (`--cache on` to measure with it).
    let vault = open(args, "bench amortized", "off").await?;
    let started = Instant::now();
    let recorded = record_corpus(&vault, &args.path("corpus")?, base, BATCH as usize)?;
    let first = vault.sync(None, None).await?;
    let first_backup_s = started.elapsed().as_secs_f64();
    if recorded.chats.is_empty() {
        return Err("the corpus has no chats".into());
    }

    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed
    };
    let mut sent_at_ms = recorded.last_sent_at_ms;
    let mut sizes = Vec::with_capacity(syncs as usize);
    let started = Instant::now();
    for s in 0..syncs {
        let changes = (0..per_sync)
            .map(|j| {
                let i = s * per_sync + j;
                // Spread over the chats: consecutive messages land in different chats.
                let chat = &recorded.chats[(i as usize * 37) % recorded.chats.len()];
                let words = 3 + (next() >> 60) as usize;
                let text = (0..words)
                    .map(|_| WORDS[(next() >> 33) as usize % WORDS.len()])
                    .collect::<Vec<_>>()
                    .join(" ");
                sent_at_ms += 60_000;
                Change::UpsertMessage(Message {
                    chat_id: chat.clone(),
                    message_id: format!("n{i:08}"),
                    sender: "me".into(),
                    sent_at_ms,
                    text,
                    reply_to: None,
                    ..Default::default()
                })
            })
            .collect();
        vault.record(changes)?;
        sizes.push(vault.sync(None, None).await?.bytes_up);
    }
    let increments_s = started.elapsed().as_secs_f64();
    let total: u64 = sizes.iter().sum();
    let large: Vec<u64> = sizes.iter().copied().filter(|&b| b > 65_536).collect();
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    Ok(json!({
        "mode": "amortized",
        "base_messages": recorded.messages,
        "syncs": syncs,
        "per_sync": per_sync,
        "first_backup_bytes_up": first.bytes_up,
        "first_backup_objects_up": first.objects_up,
        "first_backup_s": first_backup_s,
        "increments_bytes_up": total,
        "increments_s": increments_s,
        "ratio": total as f64 / first.bytes_up.max(1) as f64,
        "median_sync_bytes": sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        "max_sync_bytes": sorted.last().copied().unwrap_or(0),
        "large_syncs": large.len(),
        "large_syncs_bytes": large.iter().sum::<u64>(),
        "sync_bytes": sizes,
        "peak_rss_kib": peak_rss_kib(),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    let figures = match args.mode.as_str() {
        "backup" => backup(&args).await?,
        "restore" => restore(&args).await?,
        "amortized" => amortized(&args).await?,
        other => {
            return Err(format!("unknown mode {other:?}: backup, restore or amortized").into());
        }
    };
    println!("{figures}");
    Ok(())
}
