//! Sync benchmark: prints figures for a vault of N messages (default 1,000,000) on a directory
//! store in a temporary folder.
//!
//! `cargo run --release --example bench_sync -- [MESSAGES]`
//!
//! Figures: full backup (time, bytes, objects), an incremental sync of 1,000 new messages across
//! 20 chats (bytes and requests up, compared with the compressed size of those messages), an idle
//! sync, a full restore on a fresh device, a single-chat restore, and peak memory (VmHWM).

use std::sync::Arc;
use std::time::Instant;

use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Chat, Message};
use chatvault::vault::{DeviceInfo, Vault};

const CHATS: usize = 200;
const WORDS: &[&str] = &[
    "ok", "see", "you", "tomorrow", "at", "the", "station", "dinner", "tonight", "?", "love", "it",
    "haha", "send", "me", "photos", "when", "are", "we", "meeting", "running", "late", "sorry",
    "great", "news", "call", "later", "🙂", "👍", "🎉",
];

fn message(chat: usize, index: u64, seed: &mut u64) -> Change {
    let mut text = String::new();
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let words = 3 + (*seed >> 60) as usize;
    for w in 0..words {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if w > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[(*seed >> 33) as usize % WORDS.len()]);
    }
    Change::UpsertMessage(Message {
        chat_id: format!("chat-{chat:04}"),
        message_id: format!("m{index:08}"),
        sender: format!("user{}", (*seed >> 20) % 5),
        sent_at_ms: 1_600_000_000_000 + index as i64 * 1000,
        text,
        reply_to: None,
        ..Message::default()
    })
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "bench".into(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile_dir()?;
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(dir.join("bucket")));
    let key = RecoveryKey::generate()?;
    let phone = Vault::open(store.clone(), &dir.join("phone"), info("phone"), &key).await?;
    println!(
        "vault of {total} messages in {CHATS} chats, directory store in {}",
        dir.display()
    );

    let started = Instant::now();
    let mut seed = 1u64;
    let mut plaintext = 0u64;
    let mut index = 0u64;
    phone.record(
        (0..CHATS)
            .map(|c| {
                Change::UpsertChat(Chat {
                    chat_id: format!("chat-{c:04}"),
                    title: format!("Chat {c}"),
                    members: vec!["me".into(), format!("friend{c}")],
                    ..Chat::default()
                })
            })
            .collect(),
    )?;
    while index < total {
        let batch: Vec<Change> = (0..10_000.min(total - index))
            .map(|i| message(((index + i) % CHATS as u64) as usize, index + i, &mut seed))
            .collect();
        plaintext += batch
            .iter()
            .map(|c| match c {
                Change::UpsertMessage(m) => m.text.len() as u64 + 40,
                _ => 0,
            })
            .sum::<u64>();
        index += batch.len() as u64;
        phone.record(batch)?;
    }
    let recorded = started.elapsed();
    let backup = phone.sync(None, None).await?;
    let full = started.elapsed();
    println!(
        "full backup: {:.1} s ({:.1} s recording, {:.1} s syncing), {} objects, {:.1} MiB up ({:.1} MiB of message text and ids)",
        full.as_secs_f64(),
        recorded.as_secs_f64(),
        (full - recorded).as_secs_f64(),
        backup.objects_up,
        backup.bytes_up as f64 / 1048576.0,
        plaintext as f64 / 1048576.0
    );

    // Incremental: 1,000 new messages across 20 chats.
    let new: Vec<Change> = (0..1000u64)
        .map(|i| message((i % 20) as usize, total + i, &mut seed))
        .collect();
    let new_compressed = {
        let mut encoded = Vec::new();
        for change in &new {
            if let Change::UpsertMessage(m) = change {
                encoded.extend_from_slice(
                    format!(
                        "{}{}{}{}{}",
                        m.chat_id, m.message_id, m.sender, m.sent_at_ms, m.text
                    )
                    .as_bytes(),
                );
            }
        }
        zstd::bulk::compress(&encoded, 3)?.len()
    };
    phone.record(new)?;
    let incremental = phone.sync(None, None).await?;
    println!(
        "incremental sync of 1,000 messages in 20 chats: {} bytes up in {} objects, {} requests (zstd of the messages' fields alone: {} bytes)",
        incremental.bytes_up, incremental.objects_up, incremental.requests, new_compressed
    );
    let idle = phone.sync(None, None).await?;
    println!(
        "idle sync: {} requests, {} bytes",
        idle.requests,
        idle.bytes_up + idle.bytes_down
    );

    let started = Instant::now();
    let tablet = Vault::open(store.clone(), &dir.join("tablet"), info("tablet"), &key).await?;
    // This device answers content questions below from its own state.
    tablet.set_content_cache(chatvault::local::CacheSetting::On { max_bytes: None })?;
    let restore = tablet.sync(None, None).await?;
    let restored: u64 = tablet.chats()?.iter().map(|c| c.message_count).sum();
    println!(
        "full restore on a fresh device: {:.1} s, {} objects, {:.1} MiB down, {} messages",
        started.elapsed().as_secs_f64(),
        restore.objects_down,
        restore.bytes_down as f64 / 1048576.0,
        restored
    );
    let started = Instant::now();
    let one_chat = tablet.messages(Some("chat-0007"))?.len();
    println!(
        "single-chat read from local state after restore: {:.3} s, {one_chat} messages",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let checkpoint = phone.checkpoint().await?;
    println!(
        "checkpoint: {:.1} s, {} objects, {:.1} MiB",
        started.elapsed().as_secs_f64(),
        checkpoint.objects,
        checkpoint.bytes as f64 / 1048576.0
    );
    let deleted = phone.collect_garbage(0).await?;
    println!("garbage collection (grace 0 for the benchmark): {deleted} objects deleted");
    let started = Instant::now();
    let laptop = Vault::open(store.clone(), &dir.join("laptop"), info("laptop"), &key).await?;
    let restore = laptop.sync(None, None).await?;
    println!(
        "full restore from the checkpoint on a fresh device: {:.1} s, {} objects, {:.1} MiB down",
        started.elapsed().as_secs_f64(),
        restore.objects_down,
        restore.bytes_down as f64 / 1048576.0
    );
    let started = Instant::now();
    let phone2 = Vault::open(store.clone(), &dir.join("phone2"), info("phone2"), &key).await?;
    let fetched = phone2.fetch_chat("chat-0007").await?.len();
    println!(
        "single-chat restore from the bucket (index + ranged GETs) on a fresh device: {:.2} s, {fetched} messages",
        started.elapsed().as_secs_f64()
    );
    let usage = tablet.usage().await?;
    println!(
        "bucket: {} objects, {:.1} MiB",
        usage.objects,
        usage.bytes as f64 / 1048576.0
    );
    println!(
        "peak memory of this process, both devices and all steps (VmHWM): {:.0} MiB",
        peak_rss_mib()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("chatvault-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
