//! Recovery-key text parsing: never panics; whatever parses re-encodes to a text that parses to
//! the same key.
#![no_main]
use chatvault::keys::RecoveryKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = RecoveryKey::parse(&text) {
        let again = RecoveryKey::parse(&key.to_text()).expect("canonical text parses");
        assert!(again == key);
    }
});
