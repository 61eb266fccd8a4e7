//! Passphrase envelopes from a hostile bucket: parameters are checked before any Argon2 work, and
//! nothing panics. Argon2 runs only for the cheapest allowed parameters (to keep the fuzzer fast).
#![no_main]
use chatvault::keys::{Argon2Params, PassphraseEnvelope, VaultId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = PassphraseEnvelope::params(data) {
        if params == Argon2Params::MIN {
            let _ = PassphraseEnvelope::open(data, &VaultId::from_bytes([7; 16]), "passphrase");
        }
    }
});
