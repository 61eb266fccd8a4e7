//! Chat-data objects: hostile bytes never panic, and any plaintext survives seal/open unchanged
//! (compression, padding and framing on arbitrary data).
#![no_main]
use chatvault::keyring::Keyring;
use chatvault::keys::{RecoveryKey, VaultKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&RecoveryKey::from_bytes([7; 32]));
    let mut keyring = Keyring::new();
    keyring.add_chat("c").expect("valid chat id");
    let _ = keyring.open_chat_data(&keys, "c", "name", data);
    let sealed = keyring
        .seal_chat_data(&keys, "c", "name", data)
        .expect("any plaintext up to the limit seals");
    let opened = keyring
        .open_chat_data(&keys, "c", "name", &sealed)
        .expect("own object opens");
    assert_eq!(&opened[..], data);
});
