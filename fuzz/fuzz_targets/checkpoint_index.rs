//! Checkpoint indexes from a hostile bucket.
#![no_main]
use chatvault::keys::{RecoveryKey, VaultKeys};
use chatvault::sync::DeviceId;
use chatvault::sync::checkpoint::{checkpoint_name, open_checkpoint_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]));
    let _ = open_checkpoint_index(&keys, &checkpoint_name(DeviceId([1; 16]), 1, 1), data);
});
