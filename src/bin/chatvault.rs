//! The `chatvault` command-line tool (cargo feature `cli`).
//!
//! `keygen` prints a new recovery key; `demo` walks through what the library does, on a local
//! directory standing in for the bucket: one device seals three chats, another device with only
//! the recovery key text restores them, and deleting a chat's key shreds that chat.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chatvault::format::proto;
use chatvault::keyring::Keyring;
use chatvault::keys::{Argon2Params, PassphraseEnvelope, PassphrasePolicy, RecoveryKey, VaultKeys};
use clap::{Parser, Subcommand};
use prost::Message as _;

#[derive(Parser)]
#[command(
    name = "chatvault",
    version,
    about = "Encrypted, zero-knowledge chat backup"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new recovery key on one line.
    Keygen,
    /// Back up three chats from one "device" and restore them on another, in a local directory.
    Demo {
        /// Directory standing in for the bucket (default: a fresh folder under the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen => keygen(),
        Command::Demo { dir } => demo(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatvault: {error}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn keygen() -> CliResult {
    println!("{}", RecoveryKey::generate()?.to_text().as_str());
    Ok(())
}

/// (chat id, title, members, messages as (sender, text))
type DemoChat = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const CHATS: &[DemoChat] = &[
    (
        "family",
        "Family 👪",
        &["mum", "dad", "me"],
        &[
            ("mum", "Dinner at 7? 🍝"),
            ("me", "Yes! Bringing dessert."),
            ("dad", "Line one\nline two, \"quoted\", tab\there"),
        ],
    ),
    (
        "climbing",
        "Climbing crew 🧗",
        &["ana", "me"],
        &[("ana", "Saturday at the crag?"), ("me", "If it is dry.")],
    ),
    (
        "landlord",
        "Landlord",
        &["mr-smith", "me"],
        &[("mr-smith", "Rent is due on the 1st.")],
    ),
];

fn chat_object_name(keys: &VaultKeys, chat_id: &str) -> String {
    format!(
        "chats/{}",
        keys.naming().object_name("demo-chat", chat_id.as_bytes())
    )
}

fn write(root: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = root.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)
}

fn bytes_under(dir: &Path) -> std::io::Result<(usize, u64)> {
    let mut count = 0;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let (c, t) = bytes_under(&entry.path())?;
            count += c;
            total += t;
        } else {
            count += 1;
            total += entry.metadata()?.len();
        }
    }
    Ok((count, total))
}

fn demo(dir: Option<PathBuf>) -> CliResult {
    let bucket = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("chatvault-demo-{}", std::process::id()))
    });
    if bucket.exists() {
        std::fs::remove_dir_all(&bucket)?;
    }

    // ---- Device 1 (say, an iPhone): create the vault and back up three chats.
    let recovery_key = RecoveryKey::generate()?;
    let key_text = recovery_key.to_text();
    let keys = VaultKeys::derive(&recovery_key);
    let vault = bucket.join(keys.vault_id().to_hex());
    println!("Device 1 creates a vault in {}", bucket.display());
    println!("  recovery key (write it down): {}", key_text.as_str());
    println!("  vault id (public prefix):     {}", keys.vault_id());

    let mut keyring = Keyring::new();
    let mut plaintext_bytes = 0usize;
    for (chat_id, title, members, messages) in CHATS {
        keyring.add_chat(chat_id)?;
        let batch = proto::ChatBatch {
            chat: Some(proto::Chat {
                chat_id: chat_id.to_string(),
                title: title.to_string(),
                members: members.iter().map(|m| m.to_string()).collect(),
            }),
            messages: messages
                .iter()
                .enumerate()
                .map(|(i, (sender, text))| proto::Message {
                    chat_id: chat_id.to_string(),
                    message_id: format!("{chat_id}-{i}"),
                    sender: sender.to_string(),
                    sent_at_ms: 1_700_000_000_000 + i as i64 * 60_000,
                    text: text.to_string(),
                    reply_to: None,
                })
                .collect(),
        };
        let body = batch.encode_to_vec();
        plaintext_bytes += body.len();
        let name = chat_object_name(&keys, chat_id);
        write(
            &vault,
            &name,
            &keyring.seal_chat_data(&keys, chat_id, &name, &body)?,
        )?;
    }
    write(&vault, "keyring/1", &keyring.seal(&keys, "keyring/1")?)?;
    // A passphrase envelope, so the key could also be recovered with a passphrase alone.
    let passphrase = "purple elephants dance at midnight";
    let envelope = PassphraseEnvelope::seal(
        &recovery_key,
        passphrase,
        Argon2Params::DEFAULT,
        &PassphrasePolicy::default(),
    )?;
    write(&vault, "passphrase", &envelope)?;
    let (objects, stored) = bytes_under(&vault)?;
    println!(
        "  sealed {} chats ({plaintext_bytes} bytes of messages) into {objects} objects, {stored} bytes",
        CHATS.len()
    );
    println!("  what the bucket sees:");
    let mut names: Vec<String> = Vec::new();
    for sub in ["chats", "keyring"] {
        for entry in std::fs::read_dir(vault.join(sub))? {
            let entry = entry?;
            names.push(format!(
                "{sub}/{} ({} bytes)",
                entry.file_name().to_string_lossy(),
                entry.metadata()?.len()
            ));
        }
    }
    names.sort();
    for name in names {
        println!("    {}/{name}", keys.vault_id());
    }

    // ---- Device 2 (say, a new Android phone): only the typed key text and the bucket.
    println!("Device 2 restores with the recovery key text alone");
    let typed = key_text.to_lowercase().replace('-', " ");
    let keys2 = VaultKeys::derive(&RecoveryKey::parse(&typed)?);
    let vault2 = bucket.join(keys2.vault_id().to_hex());
    let keyring2 = Keyring::open(
        &keys2,
        "keyring/1",
        &std::fs::read(vault2.join("keyring/1"))?,
    )?;
    for chat_id in keyring2.chat_ids() {
        let name = chat_object_name(&keys2, chat_id);
        let body =
            keyring2.open_chat_data(&keys2, chat_id, &name, &std::fs::read(vault2.join(&name))?)?;
        let batch = proto::ChatBatch::decode(&body[..])?;
        let chat = batch.chat.unwrap_or_default();
        println!(
            "  {} ({} messages, members: {})",
            chat.title,
            batch.messages.len(),
            chat.members.join(", ")
        );
        for message in &batch.messages {
            println!("    {}: {}", message.sender, message.text.escape_debug());
        }
    }
    let restored_by_passphrase = PassphraseEnvelope::open(
        &std::fs::read(vault2.join("passphrase"))?,
        keys2.vault_id(),
        passphrase,
    )?;
    println!(
        "  the passphrase envelope also unlocks the same key: {}",
        restored_by_passphrase == recovery_key
    );

    // ---- Deleting a chat really deletes: drop its key, rewrite the keyring, remove old objects.
    println!("Device 2 deletes the chat \"landlord\" (crypto-shredding)");
    let mut keyring3 = keyring2.clone();
    let shredded_name = chat_object_name(&keys2, "landlord");
    let shredded_object = std::fs::read(vault2.join(&shredded_name))?;
    keyring3.remove_chat("landlord");
    write(&vault2, "keyring/2", &keyring3.seal(&keys2, "keyring/2")?)?;
    std::fs::remove_file(vault2.join("keyring/1"))?;
    std::fs::remove_file(vault2.join(&shredded_name))?;
    let newest = Keyring::open(
        &keys2,
        "keyring/2",
        &std::fs::read(vault2.join("keyring/2"))?,
    )?;
    match newest.open_chat_data(&keys2, "landlord", &shredded_name, &shredded_object) {
        Err(error) => println!("  a leftover copy of that chat no longer opens: {error}"),
        Ok(_) => return Err("shredded chat still opens".into()),
    }
    println!(
        "  chats left: {}",
        newest.chat_ids().collect::<Vec<_>>().join(", ")
    );
    println!("Done. The bucket directory is {}", bucket.display());
    Ok(())
}
