//! What `Vault::record` costs per message, content cache off and on, and nothing else (no JSON
//! parsing, no sync). The history is synthetic but shaped like `scripts/bench_vs_restic.py`'s
//! corpus: 200 chats, then messages of 4-14 words spread over all chats at random, recorded in
//! batches (so a batch of 1,000 touches every chat, about 5 messages each).
//!
//! ```text
//! cargo run --release --example bench_record -- [--messages 200000] [--batch 1000]
//!                                               [--cache off|on|both] [--dir DIR]
//! ```
//!
//! Prints one JSON line per cache setting: us per message overall (wall, and CPU time of the
//! recording thread: the difference is mostly the fsync of each commit) and per tenth of the
//! history (does it grow with the vault?). The state directory is a fresh temporary directory under
//! `--dir` (default: the system's temporary directory) and is removed afterwards.

use std::sync::Arc;
use std::time::Instant;

use chatvault::keys::RecoveryKey;
use chatvault::local::CacheSetting;
use chatvault::store::MemoryStore;
use chatvault::sync::{Change, Chat, Message};
use chatvault::vault::{DeviceInfo, Vault};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CHATS: u64 = 200;
const WORDS: &[&str] = &[
    "ok", "see", "you", "tomorrow", "at", "the", "station", "dinner", "tonight", "?", "love", "it",
    "haha", "send", "me", "photos", "when", "are", "we", "meeting", "running", "late", "sorry",
    "great", "news", "call", "later", "🙂", "👍", "🎉",
];

/// A small deterministic generator (xorshift64*), so every run records the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn history(messages: u64) -> Vec<Change> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut changes: Vec<Change> = (0..CHATS)
        .map(|c| {
            Change::UpsertChat(Chat {
                chat_id: format!("chat-{c:04}"),
                title: format!("Chat {c}"),
                members: vec!["me".into(), format!("contact{c:03}")],
                ..Chat::default()
            })
        })
        .collect();
    for m in 0..messages {
        let chat = rng.next() % CHATS;
        let words = 4 + rng.next() % 11;
        let text: Vec<&str> = (0..words)
            .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
            .collect();
        changes.push(Change::UpsertMessage(Message {
            chat_id: format!("chat-{chat:04}"),
            message_id: format!("m{m:08}"),
            sender: if rng.next().is_multiple_of(2) {
                "me".into()
            } else {
                format!("contact{chat:03}")
            },
            sent_at_ms: 1_600_000_000_000 + m as i64 * 60_000,
            text: text.join(" "),
            ..Message::default()
        }));
    }
    changes
}

/// CPU time this thread has run, in seconds (Linux: `/proc/thread-self/schedstat`; 0 elsewhere).
/// Wall time includes the fsync that ends every commit, which on a shared virtual disk ranges
/// from 0.3 to 4 ms; CPU time is what the code itself costs.
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn option(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let messages: u64 = option("messages").map_or(Ok(200_000), |v| v.parse())?;
    let batch: usize = option("batch").map_or(Ok(1000), |v| v.parse())?;
    let batch = batch.max(1);
    let settings: Vec<(&str, CacheSetting)> = match option("cache").as_deref() {
        Some("off") => vec![("off", CacheSetting::Off)],
        Some("on") => vec![("on", CacheSetting::On { max_bytes: None })],
        None | Some("both") => vec![
            ("off", CacheSetting::Off),
            ("on", CacheSetting::On { max_bytes: None }),
        ],
        Some(other) => return Err(format!("--cache {other}: off, on or both").into()),
    };
    let base = option("dir").map_or_else(std::env::temp_dir, Into::into);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = RecoveryKey::generate()?;
    for (name, setting) in settings {
        let dir = tempfile::tempdir_in(&base)?;
        let vault = runtime.block_on(Vault::open(
            Arc::new(MemoryStore::new()),
            dir.path(),
            DeviceInfo {
                name: "bench".into(),
                platform: "bench".into(),
            },
            &key,
        ))?;
        vault.set_content_cache(setting)?;
        let changes = history(messages);
        let mut batches: Vec<f64> = Vec::new();
        let mut cpu = 0.0;
        let mut rest = changes.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Change> = rest.by_ref().take(batch).collect();
            let cpu_before = thread_cpu_s();
            let started = Instant::now();
            vault.record(chunk)?;
            batches.push(started.elapsed().as_secs_f64());
            cpu += thread_cpu_s() - cpu_before;
        }
        let total: f64 = batches.iter().sum();
        let tenth = batches.len().div_ceil(10).max(1);
        let by_tenth: Vec<String> = batches
            .chunks(tenth)
            .map(|c| {
                format!(
                    "{:.2}",
                    c.iter().sum::<f64>() * 1e6 / (c.len() * batch) as f64
                )
            })
            .collect();
        println!(
            "{{\"cache\":\"{name}\",\"messages\":{messages},\"batch\":{batch},\"record_us_per_message\":{:.3},\"record_cpu_us_per_message\":{:.3},\"by_tenth\":[{}]}}",
            total * 1e6 / (messages + CHATS) as f64,
            cpu * 1e6 / (messages + CHATS) as f64,
            by_tenth.join(",")
        );
    }
    Ok(())
}
