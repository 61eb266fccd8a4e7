//! `chatvault link offer` and `chatvault link join`: linking a new device by a code, without the
//! recovery key on it (docs/DEVICES.md, "Linking").

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chatvault::vault::{CancelToken, DeviceKey, Vault};
use clap::Subcommand;

use crate::{Cli, CliResult, cli_device, open_store, open_vault, required};

#[derive(Subcommand)]
pub(crate) enum LinkCommand {
    /// On a device of the vault: print a link offer as the first line of standard output, read
    /// the check code the new device shows as one line from standard input, and add the new
    /// device. Exits non-zero on a wrong code (the link is then burned) or at the expiry.
    Offer {
        /// How long the offer lasts, in seconds (at most 3600).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// On a new device (with --store and --state, no key file): answer the offer PAYLOAD, print
    /// the check code as the first line of standard output, and wait for the offering device.
    /// Writes this device's key to --device-key-file (default `device.key` in the state
    /// directory); later commands open the vault with it.
    Join {
        /// The offer, as `link offer` printed it.
        payload: String,
    },
}

pub(crate) fn device_key_file(cli: &Cli, state: &Path) -> PathBuf {
    cli.device_key_file
        .clone()
        .unwrap_or_else(|| state.join("device.key"))
}

pub(crate) fn read_device_key(path: &Path) -> CliResult<DeviceKey> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    DeviceKey::from_hex(&text)
        .ok_or_else(|| format!("{}: not a device key (64 hex digits)", path.display()).into())
}

fn write_device_key(path: &Path, key: &DeviceKey) -> CliResult {
    let hex = key.to_hex();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

pub(crate) async fn run(cli: &Cli, action: &LinkCommand) -> CliResult {
    match action {
        LinkCommand::Offer { timeout_s } => {
            let vault = open_vault(cli).await?;
            let offering = vault.offer_link(Duration::from_secs(*timeout_s), Vec::new())?;
            println!("{}", offering.text());
            std::io::stdout().flush()?;
            eprintln!("type the check code the new device shows, then Enter:");
            let mut code = String::new();
            std::io::stdin().lock().read_line(&mut code)?;
            let added = vault
                .complete_link(&offering, code.trim(), &CancelToken::new())
                .await?;
            println!(
                "linked device {} ({}, {})",
                added.id, added.name, added.platform
            );
            Ok(())
        }
        LinkCommand::Join { payload } => {
            let store = open_store(required(&cli.store, "--store (or CHATVAULT_STORE)")?)?;
            let state = required(&cli.state, "--state (or CHATVAULT_STATE)")?;
            let key_file = device_key_file(cli, state);
            if key_file.exists() {
                return Err(format!(
                    "{} exists: this state directory already joined a vault",
                    key_file.display()
                )
                .into());
            }
            let key = DeviceKey::generate()?;
            // Written first, so that a device that joined always has its key, and removed again
            // if the link fails.
            write_device_key(&key_file, &key)?;
            let joined = async {
                let joining = Vault::join_link(
                    store,
                    state,
                    cli_device(cli),
                    payload,
                    DeviceKey::from_bytes(*key.to_bytes()),
                )
                .await?;
                println!("{}", joining.check_code());
                std::io::stdout().flush()?;
                eprintln!("type this code on the offering device; waiting for it...");
                Ok::<_, Box<dyn std::error::Error>>(joining.finish(&CancelToken::new()).await?)
            }
            .await;
            let vault = match joined {
                Ok(vault) => vault,
                Err(error) => {
                    // Only if the device never came to exist: otherwise its key is all that
                    // opens it.
                    if !chatvault::vault::holds_linked_device(state) {
                        std::fs::remove_file(&key_file).ok();
                    }
                    return Err(error);
                }
            };
            println!(
                "joined vault {} as device {}",
                vault.vault_id(),
                vault.device_id()
            );
            Ok(())
        }
    }
}
