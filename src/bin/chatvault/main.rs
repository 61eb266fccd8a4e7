//! The `chatvault` command-line tool (cargo feature `cli`).
//!
//! Global options name the store, this device's state directory and the recovery-key file; each
//! command opens the vault, does one job and prints a readable result (or one JSON line with
//! `--json`).

mod demo;
mod jsonl;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chatvault::keys::RecoveryKey;
use chatvault::store::ObjectStore;
use chatvault::vault::{DeviceInfo, SyncReport, Vault};
use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new recovery key on one line.
    Keygen,
    /// Create the vault in the store if absent, or join it as a new device.
    Init,
    /// Record the operations of a JSON Lines file into the local outbox (no network).
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Push local changes and pull other devices' changes.
    Sync {
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
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
    /// Fetch and authenticate everything in the store; non-zero exit on any problem.
    Verify,
    /// Compact the vault's state into a checkpoint (syncs first).
    Checkpoint,
    /// Delete segments and checkpoints the newest checkpoint made redundant.
    Gc {
        /// Only once the newest checkpoint is this many hours old (other devices may still be
        /// reading what it replaces).
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatvault: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> CliResult {
    match &cli.command {
        Command::Keygen => {
            println!("{}", RecoveryKey::generate()?.to_text().as_str());
            Ok(())
        }
        Command::Demo { dir } => demo::run(dir.clone()).await,
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
        Command::Import { file } => {
            let input = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let changes = jsonl::read_changes(BufReader::new(input))
                .map_err(|e| format!("{}: {e}; nothing was imported", file.display()))?;
            let count = changes.len();
            let vault = open_vault(&cli).await?;
            vault.record(changes)?;
            println!("recorded {count} operations; run `chatvault sync` to upload them");
            Ok(())
        }
        Command::Sync { json } => {
            let vault = open_vault(&cli).await?;
            let report = vault.sync(None, None).await?;
            print_report(&report, *json);
            Ok(())
        }
        Command::Restore {
            out,
            chats,
            since_ms,
        } => {
            let vault = open_vault(&cli).await?;
            vault.sync(None, None).await?;
            let mut chat_list: Vec<_> = vault.chats()?.into_iter().map(|s| s.chat).collect();
            let mut messages = vault.messages_since(None, since_ms.unwrap_or(i64::MIN))?;
            if !chats.is_empty() {
                chat_list.retain(|c| chats.contains(&c.chat_id));
                messages.retain(|m| chats.contains(&m.chat_id));
            }
            let file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
            jsonl::write_state(BufWriter::new(file), &chat_list, &messages)?;
            println!(
                "restored {} chats and {} messages to {}",
                chat_list.len(),
                messages.len(),
                out.display()
            );
            Ok(())
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
                "ok: {} segments from {} devices and {} checkpoint(s) authenticated, {} operations",
                report.segments, report.devices, report.checkpoints, report.operations
            );
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
}

fn required<'a, T>(value: &'a Option<T>, what: &str) -> CliResult<&'a T> {
    value
        .as_ref()
        .ok_or_else(|| format!("{what} is required").into())
}

async fn open_vault(cli: &Cli) -> CliResult<Vault> {
    let store = open_store(required(&cli.store, "--store (or CHATVAULT_STORE)")?)?;
    let state = required(&cli.state, "--state (or CHATVAULT_STATE)")?;
    let key_file = required(&cli.key_file, "--key-file (or CHATVAULT_KEY_FILE)")?;
    let key = read_key(key_file)?;
    Ok(Vault::open(store, state, cli_device(), &key).await?)
}

fn read_key(path: &Path) -> CliResult<RecoveryKey> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    Ok(RecoveryKey::parse(&text)?)
}

fn cli_device() -> DeviceInfo {
    DeviceInfo {
        name: "chatvault CLI".into(),
        platform: std::env::consts::OS.into(),
    }
}

pub(crate) fn open_store(url: &str) -> CliResult<Arc<dyn ObjectStore>> {
    Ok(chatvault::store::open_store(url)?)
}
