//! Keyring objects from a hostile bucket.
#![no_main]
use chatvault::keyring::Keyring;
use chatvault::keys::{RecoveryKey, VaultKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]));
    let _ = Keyring::open(&keys, "keyring/1", data);
});
