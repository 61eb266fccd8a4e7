//! Checks `tests/vectors/*.json` through the public API only, as a binding or an independent
//! implementation would. (The files themselves are generated and pinned by `src/vectors.rs`.)

use chatvault::keyring::Keyring;
use chatvault::keys::{DERIVATION_LABELS, HKDF_SALT, PassphraseEnvelope, RecoveryKey, VaultKeys};
use chatvault::{Error, RecoveryKeyError};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(value: &Value) -> Vec<u8> {
    hex::decode(value.as_str().unwrap()).unwrap()
}

fn key_of(value: &Value) -> RecoveryKey {
    RecoveryKey::from_bytes(bytes(value).try_into().unwrap())
}

#[test]
fn recovery_key_texts() {
    let v = load("recovery_key.json");
    for case in v["valid"].as_array().unwrap() {
        let key = key_of(&case["bytes"]);
        assert_eq!(key.to_text().as_str(), case["text"].as_str().unwrap());
        assert_eq!(
            RecoveryKey::parse(case["text"].as_str().unwrap()).unwrap(),
            key
        );
    }
    assert!(!v["lenient"].as_array().unwrap().is_empty());
    for case in v["lenient"].as_array().unwrap() {
        let parsed = RecoveryKey::parse(case["text"].as_str().unwrap()).unwrap();
        assert_eq!(parsed, key_of(&case["bytes"]));
    }
    let invalid = v["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 8);
    for case in invalid {
        let text = case["text"].as_str().unwrap();
        let reason = match RecoveryKey::parse(text) {
            Err(Error::RecoveryKeyMistyped(e)) => match e {
                RecoveryKeyError::WrongLength { .. } => "wrong_length",
                RecoveryKeyError::InvalidCharacter { .. } => "invalid_character",
                RecoveryKeyError::ChecksumMismatch => "checksum_mismatch",
                RecoveryKeyError::UnsupportedVersion(_) => "unsupported_version",
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("{text:?} gave {other:?}"),
        };
        assert_eq!(reason, case["reason"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn hkdf_vectors_cover_every_label_and_match_the_key_tree() {
    let v = load("hkdf.json");
    let list = v.as_array().unwrap();
    for (label, length) in DERIVATION_LABELS {
        let hits: Vec<&Value> = list
            .iter()
            .filter(|c| bytes(&c["info"]) == label.as_bytes())
            .collect();
        assert!(!hits.is_empty(), "no vector for {label}");
        for case in hits {
            assert_eq!(case["length"].as_u64().unwrap() as usize, *length);
            assert_eq!(bytes(&case["salt"]), HKDF_SALT);
        }
    }
    // The vault id is public, so it can be checked against the vectors through the API.
    for case in list {
        if bytes(&case["info"]) == b"chatvault/v1/vault-id" {
            let keys = VaultKeys::derive(&key_of(&case["ikm"]));
            assert_eq!(keys.vault_id().as_bytes().to_vec(), bytes(&case["okm"]));
        }
    }
}

#[test]
fn sealed_objects_open_through_the_public_api() {
    let v = load("sealed_objects.json");
    let mut keyring = None;
    let mut opened = 0;
    for case in v.as_array().unwrap() {
        let recovery_key = RecoveryKey::parse(case["recovery_key_text"].as_str().unwrap()).unwrap();
        assert_eq!(recovery_key, key_of(&case["recovery_key"]));
        let keys = VaultKeys::derive(&recovery_key);
        assert_eq!(keys.vault_id().to_hex(), case["vault_id"].as_str().unwrap());
        let object = bytes(&case["object"]);
        let plaintext = bytes(&case["plaintext"]);
        match case["kind"].as_u64().unwrap() {
            1 => {
                let ring = Keyring::open(&keys, case["name"].as_str().unwrap(), &object).unwrap();
                let ids: Vec<&str> = case["chat_keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["chat_id"].as_str().unwrap())
                    .collect();
                assert_eq!(ring.chat_ids().collect::<Vec<_>>(), ids);
                keyring = Some(ring);
            }
            2 => {
                let ring = keyring.as_ref().expect("keyring vector comes first");
                let body = ring
                    .open_chat_data(
                        &keys,
                        case["chat_id"].as_str().unwrap(),
                        case["name"].as_str().unwrap(),
                        &object,
                    )
                    .unwrap();
                assert_eq!(&body[..], &plaintext[..]);
                // The same bytes under another name do not open.
                assert!(
                    ring.open_chat_data(
                        &keys,
                        case["chat_id"].as_str().unwrap(),
                        "elsewhere",
                        &object
                    )
                    .is_err()
                );
            }
            3 => {
                let key = PassphraseEnvelope::open(
                    &object,
                    keys.vault_id(),
                    case["passphrase"].as_str().unwrap(),
                )
                .unwrap();
                assert_eq!(key.to_bytes().to_vec(), plaintext);
                assert!(matches!(
                    PassphraseEnvelope::open(&object, keys.vault_id(), "not the passphrase"),
                    Err(Error::WrongPassphrase)
                ));
            }
            other => panic!("unknown kind {other}"),
        }
        opened += 1;
    }
    assert_eq!(opened, 5);
}
