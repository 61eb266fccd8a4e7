//! Prints how long the default passphrase stretching (Argon2id) takes on this machine, and how much
//! memory it uses, so the defaults can be checked against the 0.5-1 s / ~48 MiB phone budget.
//!
//! `cargo run --release --example argon2_cost`

use std::time::Instant;

use chatvault::keys::{Argon2Params, PassphraseEnvelope, PassphrasePolicy, RecoveryKey, VaultKeys};

fn main() -> Result<(), chatvault::Error> {
    let key = RecoveryKey::generate()?;
    let vault_id = *VaultKeys::derive(&key).vault_id();
    let passphrase = "a passphrase long enough for the policy";
    for params in [Argon2Params::MIN, Argon2Params::DEFAULT] {
        let envelope =
            PassphraseEnvelope::seal(&key, passphrase, params, &PassphrasePolicy::default())?;
        let runs = 5;
        let start = Instant::now();
        for _ in 0..runs {
            PassphraseEnvelope::open(&envelope, &vault_id, passphrase)?;
        }
        let each = start.elapsed() / runs;
        println!(
            "argon2id m={} MiB t={} p={}: {:.0} ms per unlock (mean of {runs}), memory {} MiB",
            params.memory_kib / 1024,
            params.iterations,
            params.parallelism,
            each.as_secs_f64() * 1000.0,
            params.memory_kib / 1024,
        );
    }
    Ok(())
}
