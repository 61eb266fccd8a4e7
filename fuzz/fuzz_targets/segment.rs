//! Sync segments from a hostile bucket: the outer layer and, if it opens, the chat blocks.
#![no_main]
use chatvault::keys::{RecoveryKey, VaultKeys};
use chatvault::sync::segment::{ChatKeys, open_blocks, open_segment, segment_name};
use chatvault::sync::DeviceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]));
    let name = segment_name(DeviceId([1; 16]), 1, 1, 0);
    if let Ok(segment) = open_segment(&keys, &name, data) {
        let _ = open_blocks(&keys, &ChatKeys::new(), &segment);
    }
});
