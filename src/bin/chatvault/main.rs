//! The `chatvault` command-line tool (cargo feature `cli`).
//!
//! Global options name the store, this device's state directory and the recovery-key file; each
//! command opens the vault, does one job and prints a readable result (or one JSON line with
//! `--json`).

mod demo;
mod jsonl;
mod link;
mod progress;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::collections::BTreeMap;

use chatvault::attachment::{Attachment, ContentId, TransferReport};
use chatvault::keys::RecoveryKey;
use chatvault::local::CacheSetting;
use chatvault::store::ObjectStore;
use chatvault::sync::roster::Signer;
use chatvault::vault::{CancelToken, DeviceInfo, SyncReport, Vault};
use clap::{Parser, Subcommand};
use progress::{
    ProgressPrinter, SyncPrinter, add_report, print_event, print_transfer_summary, test_pause,
};

#[derive(Parser)]
#[command(
    name = "chatvault",
    version,
    about = "Encrypted, zero-knowledge chat backup and sync"
)]
struct Cli {
    /// Store URL: file:///path or s3://bucket/prefix?endpoint=...&region=...&path_style=true
    #[arg(long, env = "CHATVAULT_STORE", global = true)]
    store: Option<String>,
    /// This device's state directory.
    #[arg(long, env = "CHATVAULT_STATE", global = true)]
    state: Option<PathBuf>,
    /// A file holding the recovery key text.
    #[arg(long, env = "CHATVAULT_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// A file holding the device key of a device that joined by `link join` (64 hex digits;
    /// default: `device.key` in the state directory). Used when no recovery key file is given.
    #[arg(long, env = "CHATVAULT_DEVICE_KEY_FILE", global = true)]
    device_key_file: Option<PathBuf>,
    /// This device's name, as `devices` lists it on every device (set when the device first
    /// syncs or joins).
    #[arg(
        long,
        env = "CHATVAULT_DEVICE_NAME",
        global = true,
        default_value = "chatvault CLI"
    )]
    device_name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new recovery key on one line.
    Keygen,
    /// Create the vault in the store if absent, or join it as a new device.
    Init,
    /// Record the operations of a JSON Lines file into the local outbox. Attachments named by
    /// `path` are uploaded first (resumable: run it again after an interruption).
    Import {
        /// The file.
        file: PathBuf,
        /// Chunk size of new attachments, in KiB (a power of two from 64 to 8192).
        #[arg(long, default_value_t = 4096)]
        chunk_kib: u32,
        /// Print transfer progress, each batch of lines once it is durably recorded
        /// (`{"event":"recorded","lines":N}`: the first N lines survive a crash) and each sync
        /// it ran, and a final transfer summary, as JSON lines on stderr.
        #[arg(long)]
        progress: bool,
        /// Lines recorded per local transaction: larger batches record faster, smaller ones
        /// keep the write-ahead log smaller.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
        /// Sync (push what was recorded) after every this many lines, so a long history never
        /// waits in the local outbox whole; 0 records everything and leaves it to `sync`.
        #[arg(long, default_value_t = 100_000)]
        sync_every: u64,
    },
    /// Push local changes and pull other devices' changes.
    Sync {
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
        /// Print each unit once it is durable as a JSON line on stderr: operations uploaded
        /// (`"phase":"push"`) and segments applied (`"phase":"pull"`), with `done` and `total`.
        #[arg(long)]
        progress: bool,
    },
    /// Write the current state as JSON Lines: chats, then messages.
    Restore {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Only these chats (repeatable).
        #[arg(long = "chat")]
        chats: Vec<String>,
        /// Only messages sent at or after this time (milliseconds since the Unix epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Download the attachments of the restored messages into this directory (resumable),
        /// and point to them from the output lines. Without it, lines keep references only.
        #[arg(long)]
        attachments: Option<PathBuf>,
        /// Print transfer progress and a final transfer summary as JSON lines on stderr.
        #[arg(long)]
        progress: bool,
    },
    /// List chats with message counts and sizes.
    Chats {
        /// One JSON line per chat.
        #[arg(long)]
        json: bool,
    },
    /// Objects and bytes the vault occupies in the store.
    Stats {
        /// Print as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Sync, then list the devices of the vault: id, name, platform, when and by whom each was
    /// added, when it was revoked, and which one is this device.
    Devices {
        /// One JSON line per device.
        #[arg(long)]
        json: bool,
    },
    /// Replace the recovery key (needs --key-file): prints the new key's text as one line. The
    /// old key opens nothing written from now on; put the new one in the key file.
    RotateKey,
    /// Remove a lost or stolen device (its id from `devices`): it opens nothing written from
    /// now on, and every device refuses what it writes afterwards (syncs first).
    Revoke {
        /// The device's id (32 hex digits).
        device_id: String,
    },
    /// Link a new device by a code, without typing the recovery key on it.
    Link {
        #[command(subcommand)]
        action: link::LinkCommand,
    },
    /// Fetch and authenticate everything in the store; non-zero exit on any problem.
    Verify,
    /// Compact the vault's state into a checkpoint (syncs first).
    Checkpoint,
    /// Delete segments and checkpoints the newest checkpoint made redundant, and attachment
    /// content no live message references (syncs first).
    Gc {
        /// Only what has been redundant this many hours (other devices may still be reading what
        /// a checkpoint replaces, or uploading an attachment whose message is not synced yet).
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
    /// Back up a chat history from one "device" and restore it on another through a local
    /// directory store, with a readable summary. No server needed.
    Demo {
        /// Directory standing in for the bucket (default: a fresh folder under the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatvault: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let state = cli.state.clone();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if matches!(error.downcast_ref(), Some(chatvault::Error::Busy)) => {
            // Its own exit code, so a script can tell "try again later" from a failure.
            let state = state
                .map(|s| format!(" {}", s.display()))
                .unwrap_or_default();
            eprintln!(
                "chatvault: the state directory{state} is in use by another process (another \
                 chatvault command, or an app using it); nothing was done, try again when it \
                 has finished"
            );
            ExitCode::from(EXIT_BUSY)
        }
        Err(error) => {
            eprintln!("chatvault: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status when another process holds the state directory: 75, `EX_TEMPFAIL` of
/// sysexits.h ("try again later"), distinct from 1 for every other failure.
const EXIT_BUSY: u8 = 75;

async fn run(cli: Cli) -> CliResult {
    match &cli.command {
        Command::Keygen => {
            println!("{}", RecoveryKey::generate()?.to_text().as_str());
            Ok(())
        }
        Command::Demo { dir } => demo::run(dir.clone()).await,
        Command::Link { action } => link::run(&cli, action).await,
        Command::Init => {
            let vault = open_vault(&cli).await?;
            let report = vault.sync(None, None).await?;
            println!(
                "vault {} ready; this device is {} ({} segments from other devices applied)",
                vault.vault_id(),
                vault.device_id(),
                report.segments_applied
            );
            Ok(())
        }
        Command::Import {
            file,
            chunk_kib,
            progress,
            batch: batch_size,
            sync_every,
        } => {
            let batch_size = *batch_size as usize;
            let open_input = || {
                File::open(file)
                    .map(BufReader::new)
                    .map_err(|e| format!("{}: {e}", file.display()))
            };
            // Two streaming passes: the first checks every line, so a malformed one anywhere
            // imports nothing; the second uploads attachments and records.
            let base = file.parent().unwrap_or(Path::new("."));
            for line in jsonl::parse_lines(open_input()?) {
                let (number, line) =
                    line.map_err(|e| format!("{}: {e}; nothing was imported", file.display()))?;
                for path in line.attachments().iter().filter_map(|a| a.path.as_ref()) {
                    if !base.join(path).is_file() {
                        return Err(format!(
                            "{} line {number}: attachment {path:?} is not a readable file; \
                             nothing was imported",
                            file.display()
                        )
                        .into());
                    }
                }
                jsonl::check_line(number, line)
                    .map_err(|e| format!("{}: {e}; nothing was imported", file.display()))?;
            }
            let vault = open_vault(&cli).await?;
            vault.set_attachment_chunk_size(chunk_kib.saturating_mul(1024))?;
            let mut totals = TransferReport::default();
            let mut batch = Vec::with_capacity(batch_size);
            let mut count = 0;
            let mut synced = 0;
            let import_pause = test_pause("CHATVAULT_TEST_PAUSE_AFTER_BATCH");
            for line in jsonl::parse_lines(open_input()?) {
                // Checked by the first pass; an error now means the file changed meanwhile.
                let (number, line) = line.map_err(|e| {
                    format!(
                        "{}: {e} (the file changed during the import)",
                        file.display()
                    )
                })?;
                let mut resolved = Vec::new();
                for attachment in line.attachments() {
                    resolved.push(match &attachment.path {
                        Some(path) => {
                            let path = base.join(path);
                            let name = if attachment.name.is_empty() {
                                path.file_name()
                                    .map(|n| n.to_string_lossy().into_owned())
                                    .unwrap_or_default()
                            } else {
                                attachment.name.clone()
                            };
                            let reporter = ProgressPrinter::new(*progress, &path);
                            let (uploaded, report) = vault
                                .attach_file(
                                    &path,
                                    &name,
                                    &attachment.mime,
                                    reporter.as_listener(),
                                    &CancelToken::new(),
                                )
                                .await
                                .map_err(|e| format!("{} line {number}: {e}", file.display()))?;
                            add_report(&mut totals, &report);
                            uploaded
                        }
                        None => attachment
                            .as_reference()
                            .map_err(|e| format!("{} line {number}: {e}", file.display()))?,
                    });
                }
                batch.push(line.into_change(resolved));
                // Recorded in batches, each one transaction: the write-ahead log stays small
                // however long the file. Every line was checked, so only the disk (or a missing
                // attachment file) can stop it half way, and importing the file again is
                // harmless (upserts and deletes are idempotent).
                if batch.len() == batch_size {
                    count += batch.len();
                    vault.record(std::mem::take(&mut batch))?;
                    print_event(
                        *progress,
                        serde_json::json!({"event": "recorded", "lines": count}),
                    );
                    if let Some(pause) = &import_pause {
                        pause.reached((count / batch_size) as u64);
                    }
                    // The outbox (and the local file with it) stays bounded: what was recorded
                    // goes up in segments, and its rows' pages are reused.
                    if *sync_every > 0 && (count - synced) as u64 >= *sync_every {
                        vault.sync(None, None).await?;
                        synced = count;
                        print_event(
                            *progress,
                            serde_json::json!({"event": "synced", "lines": count}),
                        );
                    }
                }
            }
            count += batch.len();
            vault.record(batch)?;
            print_event(
                *progress,
                serde_json::json!({"event": "recorded", "lines": count}),
            );
            print_transfer_summary(*progress, &totals);
            let waiting = if synced == 0 {
                "run `chatvault sync` to upload them".to_owned()
            } else {
                format!(
                    "{synced} uploaded during the import; run `chatvault sync` to upload the rest"
                )
            };
            println!(
                "recorded {count} operations ({} attachment chunks uploaded, {} already stored); \
                 {waiting}",
                totals.chunks_transferred, totals.chunks_skipped
            );
            Ok(())
        }
        Command::Sync { json, progress } => {
            let vault = open_vault(&cli).await?;
            let printer = SyncPrinter;
            let report = vault
                .sync(
                    progress.then_some(&printer as &dyn chatvault::vault::SyncProgress),
                    None,
                )
                .await?;
            print_report(&report, *json);
            Ok(())
        }
        Command::Restore {
            out,
            chats,
            since_ms,
            attachments,
            progress,
        } => {
            let vault = open_vault(&cli).await?;
            let pause = test_pause("CHATVAULT_TEST_PAUSE_AFTER_SEGMENT");
            vault.sync(pause.as_ref().map(|p| p as _), None).await?;
            let mut chat_list: Vec<_> = vault.chats()?.into_iter().map(|s| s.chat).collect();
            if !chats.is_empty() {
                chat_list.retain(|c| chats.contains(&c.chat_id));
            }
            let since = since_ms.unwrap_or(i64::MIN);
            // Messages stream from local state twice (for attachments, then for the lines), so
            // memory stays flat however long the history.
            let mut selected: Vec<Option<&str>> = chats.iter().map(|c| Some(c.as_str())).collect();
            selected.sort_unstable();
            selected.dedup();
            if chats.is_empty() {
                selected.push(None);
            }
            let mut totals = TransferReport::default();
            let mut downloaded: BTreeMap<ContentId, String> = BTreeMap::new();
            let mut failed: Vec<(ContentId, String)> = Vec::new();
            if let Some(dir) = attachments {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let out_dir = absolute(
                    out.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                )?;
                // Each content once, in the order the messages reference it.
                let mut wanted: Vec<Attachment> = Vec::new();
                let mut seen = std::collections::BTreeSet::new();
                for chat in &selected {
                    vault.for_each_message(*chat, since, |message| {
                        for attachment in message.attachments {
                            if seen.insert(attachment.content_id) {
                                wanted.push(attachment);
                            }
                        }
                        Ok(())
                    })?;
                }
                for attachment in &wanted {
                    let dest = dir.join(attachment_file_name(attachment));
                    let complete = std::fs::metadata(&dest)
                        .is_ok_and(|m| m.is_file() && m.len() == attachment.size);
                    if !complete {
                        let reporter = ProgressPrinter::new(*progress, &dest);
                        match vault
                            .download_attachment(
                                attachment,
                                &dest,
                                reporter.as_listener(),
                                &CancelToken::new(),
                            )
                            .await
                        {
                            Ok(report) => add_report(&mut totals, &report),
                            // Keep going: one damaged file must not cost the others; the lines
                            // keep its reference and the command fails at the end.
                            Err(error) => {
                                failed.push((
                                    attachment.content_id,
                                    format!("{}: {error}", dest.display()),
                                ));
                                continue;
                            }
                        }
                    }
                    let relative = relative_path(&out_dir, &absolute(&dest)?);
                    downloaded.insert(attachment.content_id, relative);
                }
            }
            let file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
            let mut writer = jsonl::LineWriter::new(BufWriter::new(file));
            for chat in &chat_list {
                writer.chat(chat)?;
            }
            let mut message_count = 0;
            let mut write_error = None;
            for chat in &selected {
                let written = vault.for_each_message(*chat, since, |message| {
                    writer
                        .message(message, |a| downloaded.get(&a.content_id).cloned())
                        .map_err(|e| {
                            write_error = Some(format!("{}: {e}", out.display()));
                            // Stops the iteration; the write error is reported below.
                            chatvault::Error::Cancelled
                        })
                });
                match (written, write_error.take()) {
                    (_, Some(error)) => return Err(error.into()),
                    (written, None) => message_count += written?,
                }
            }
            writer.finish()?;
            print_transfer_summary(*progress, &totals);
            println!(
                "restored {} chats and {} messages to {}{}",
                chat_list.len(),
                message_count,
                out.display(),
                if attachments.is_some() {
                    format!(
                        ", {} attachments in place ({} bytes downloaded)",
                        downloaded.len(),
                        totals.bytes_transferred
                    )
                } else {
                    String::new()
                }
            );
            if failed.is_empty() {
                Ok(())
            } else {
                let list: Vec<_> = failed.into_iter().map(|(_, e)| e).collect();
                Err(format!(
                    "{} attachment(s) could not be downloaded (their lines keep the reference; run \
                     restore again to retry):\n  {}",
                    list.len(),
                    list.join("\n  ")
                )
                .into())
            }
        }
        Command::Chats { json } => {
            let vault = open_vault(&cli).await?;
            for summary in vault.chats()? {
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "chat_id": summary.chat.chat_id,
                            "title": summary.chat.title,
                            "members": summary.chat.members,
                            "messages": summary.message_count,
                            "bytes": summary.message_bytes,
                        })
                    );
                } else {
                    println!(
                        "{}\t{}\t{} messages\t{} bytes",
                        summary.chat.chat_id,
                        summary.chat.title,
                        summary.message_count,
                        summary.message_bytes
                    );
                }
            }
            Ok(())
        }
        Command::Devices { json } => {
            let vault = open_vault(&cli).await?;
            vault.sync(None, None).await?;
            for device in vault.devices()? {
                let added_by = match device.added_by {
                    Signer::Recovery => "recovery_key".to_owned(),
                    Signer::Device(id) => id.to_hex(),
                };
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "device_id": device.id.to_hex(),
                            "name": device.name,
                            "platform": device.platform,
                            "added_at_ms": device.added_at_ms,
                            "added_by": added_by,
                            "revoked_at_ms": device.revoked_at_ms,
                            "this_device": device.is_this_device,
                        })
                    );
                } else {
                    let revoked = device
                        .revoked_at_ms
                        .map(|ms| format!("\trevoked {}", human_time(ms)))
                        .unwrap_or_default();
                    let this = if device.is_this_device {
                        "\t(this device)"
                    } else {
                        ""
                    };
                    println!(
                        "{}\t{}\t{}\tadded {} by {added_by}{revoked}{this}",
                        device.id,
                        device.platform,
                        device.name,
                        human_time(device.added_at_ms)
                    );
                }
            }
            Ok(())
        }
        Command::RotateKey => {
            let vault = open_vault(&cli).await?;
            let key = vault.rotate_recovery_key().await?;
            println!("{}", &*key.to_text());
            Ok(())
        }
        Command::Revoke { device_id } => {
            let device = chatvault::sync::DeviceId::from_hex(device_id).ok_or_else(|| {
                format!("not a device id (32 lower-case hex digits): {device_id}")
            })?;
            let vault = open_vault(&cli).await?;
            vault.revoke(device).await?;
            println!("revoked {device_id}: it opens nothing written from now on");
            Ok(())
        }
        Command::Stats { json } => {
            let vault = open_vault(&cli).await?;
            let usage = vault.usage().await?;
            let pending = vault.pending_operations()?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({"objects": usage.objects, "bytes": usage.bytes, "pending_operations": pending})
                );
            } else {
                println!(
                    "{} objects, {} bytes in the store; {pending} operations not yet uploaded",
                    usage.objects, usage.bytes
                );
            }
            Ok(())
        }
        Command::Verify => {
            let vault = open_vault(&cli).await?;
            let report = vault.verify().await?;
            println!(
                "ok: {} segments from {} devices, {} checkpoint(s) and {} roster entries \
                 authenticated, {} operations; all chunks of {} attachment(s) present",
                report.segments,
                report.devices,
                report.checkpoints,
                report.roster_entries,
                report.operations,
                report.attachments
            );
            if report.roster_refused > 0 {
                eprintln!(
                    "warning: {} roster entr(y/ies) do not count (signed without the authority \
                     they claim, or settled by a race); the devices list leaves them out",
                    report.roster_refused
                );
            }
            // Names that are no vault object: not ours, not fatal, but the person should know.
            for name in &report.unknown {
                eprintln!("warning: unknown object in the vault prefix: {name}");
            }
            if report.unreferenced_packs > 0 {
                eprintln!(
                    "note: {} pack(s) no checkpoint references (an interrupted checkpoint; gc removes them)",
                    report.unreferenced_packs
                );
            }
            Ok(())
        }
        Command::Checkpoint => {
            let vault = open_vault(&cli).await?;
            let report = vault.checkpoint().await?;
            if report.name.is_empty() {
                println!("nothing to checkpoint yet");
            } else {
                println!(
                    "checkpoint {}: {} objects, {} bytes",
                    report.name, report.objects, report.bytes
                );
            }
            Ok(())
        }
        Command::Gc { grace_hours } => {
            let vault = open_vault(&cli).await?;
            // Attachment content is collected only by a device that has applied everything.
            vault.sync(None, None).await?;
            let deleted = vault
                .collect_garbage(grace_hours.saturating_mul(3_600_000))
                .await?;
            println!("deleted {deleted} redundant objects");
            Ok(())
        }
    }
}

fn print_report(report: &SyncReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "objects_up": report.objects_up,
                "bytes_up": report.bytes_up,
                "objects_down": report.objects_down,
                "bytes_down": report.bytes_down,
                "requests": report.requests,
                "operations_sent": report.operations_sent,
                "operations_applied": report.operations_applied,
                "segments_applied": report.segments_applied,
                "objects_deleted": report.objects_deleted,
                "unknown_objects": report.unknown_objects,
            })
        );
    } else {
        println!(
            "up: {} objects, {} bytes ({} operations); down: {} objects, {} bytes ({} operations applied); {} requests",
            report.objects_up,
            report.bytes_up,
            report.operations_sent,
            report.objects_down,
            report.bytes_down,
            report.operations_applied,
            report.requests
        );
    }
    if report.unknown_objects > 0 {
        eprintln!(
            "warning: {} unknown object(s) in the vault prefix, skipped (`verify` names them)",
            report.unknown_objects
        );
    }
}

/// A time in milliseconds since the Unix epoch as RFC 3339 in UTC (the raw number when it is out
/// of range: the time comes from another device's clock).
fn human_time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| format!("{ms} ms"), |time| time.to_string())
}

fn required<'a, T>(value: &'a Option<T>, what: &str) -> CliResult<&'a T> {
    value
        .as_ref()
        .ok_or_else(|| format!("{what} is required").into())
}

async fn open_vault(cli: &Cli) -> CliResult<Vault> {
    let store = open_store(required(&cli.store, "--store (or CHATVAULT_STORE)")?)?;
    let state = required(&cli.state, "--state (or CHATVAULT_STATE)")?;
    let device_key_file = link::device_key_file(cli, state);
    let vault = match &cli.key_file {
        Some(key_file) => Vault::open(store, state, cli_device(cli), &read_key(key_file)?).await?,
        // A device that joined by a link opens with its device key.
        None if device_key_file.exists() => {
            let key = link::read_device_key(&device_key_file)?;
            Vault::open_device(store, state, cli_device(cli), &key).await?
        }
        None => {
            return Err(
                "--key-file (or CHATVAULT_KEY_FILE) is required (or a device key from \
                        `chatvault link join`)"
                    .into(),
            );
        }
    };
    // The CLI answers content questions itself (`restore`), so its devices keep the content
    // cache that a new library device starts without. It never turns the cache off.
    if vault.content_cache()? == CacheSetting::Off {
        vault.set_content_cache(CacheSetting::On { max_bytes: None })?;
    }
    Ok(vault)
}

fn read_key(path: &Path) -> CliResult<RecoveryKey> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    Ok(RecoveryKey::parse(&text)?)
}

fn cli_device(cli: &Cli) -> DeviceInfo {
    DeviceInfo {
        name: cli.device_name.clone(),
        platform: std::env::consts::OS.into(),
    }
}

pub(crate) fn open_store(url: &str) -> CliResult<Arc<dyn ObjectStore>> {
    Ok(chatvault::store::open_store(url)?)
}

/// A file name for a downloaded attachment: a prefix of its content id (unique per content)
/// and its name with anything that could leave the directory replaced.
fn attachment_file_name(attachment: &Attachment) -> String {
    let mut name: String = attachment
        .name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    name = name.trim_start_matches('.').trim().to_owned();
    if name.is_empty() {
        name = "attachment".into();
    }
    format!("{}-{name}", &attachment.content_id.to_hex()[..16])
}

fn absolute(path: &Path) -> CliResult<PathBuf> {
    Ok(std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// `path` relative to the directory `base` (both absolute), with `..` where needed.
fn relative_path(base: &Path, path: &Path) -> String {
    let base: Vec<_> = base.components().collect();
    let target: Vec<_> = path.components().collect();
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for component in &target[common..] {
        relative.push(component);
    }
    relative
        .to_string_lossy()
        .replace(std::path::MAIN_SEPARATOR, "/")
}
