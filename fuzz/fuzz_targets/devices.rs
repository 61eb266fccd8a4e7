//! The device and link formats from a hostile bucket or a scanned QR code (docs/DEVICES.md,
//! FORMAT.md section 13): link offers, key boxes, channel messages (and the join and welcome
//! decoders behind a real channel), epoch objects and roster entries. Roster entries that decode are also signed again by keys the target holds (the
//! recovery key and two devices, with the signer and parents the fuzzer's bytes chose), so the
//! fold sees entries whose signatures verify: it must never panic, must refuse nothing but as
//! contested, and must give the same roster for the entries in reverse order.
#![no_main]

mod common;

use chatvault::devices::{DeviceSecrets, EpochObject, open_box};
use chatvault::format::ObjectKind;
use chatvault::keys::{RecoveryKey, VaultId};
use chatvault::link::{Channel, Ephemeral, LinkOffer};
use chatvault::sync::roster::{SignedEntry, Signer, fold};
use chatvault::{Error, IntegrityProblem};
use common::Reader;
use libfuzzer_sys::fuzz_target;

const VAULT: VaultId = VaultId::from_bytes([1; 16]);

fn secrets(n: u8) -> DeviceSecrets {
    DeviceSecrets::from_bytes(&[n; 64])
}

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data);
    match reader.u8() % 5 {
        0 => {
            let text = String::from_utf8_lossy(reader.rest());
            if let Ok(offer) = LinkOffer::parse(&text) {
                // What parses prints as a text that parses to the same offer.
                let again = LinkOffer::parse(&offer.to_text().expect("it parsed")).expect("reparse");
                assert_eq!(again, offer);
                if let Ok(own) = Ephemeral::generate() {
                    let _ = Channel::joiner(own, &offer).map(|c| c.check_code());
                }
            }
        }
        1 => {
            let _ = open_box(&secrets(1), ObjectKind::KeyBox, b"context", reader.rest());
        }
        2 => {
            let own = Ephemeral::generate().expect("random");
            let offer = LinkOffer {
                offerer_key: own.public(),
                link_id: [2; 16],
                expires_at_ms: 1,
                vault_id: VAULT,
                app_data: Vec::new(),
            };
            let mode = reader.u8() % 3;
            if mode == 0 {
                let joiner: [u8; 32] = reader.array();
                if let Ok(mut channel) = Channel::offerer(own, &offer, &joiner) {
                    let _ = channel.open(reader.rest());
                }
                return;
            }
            // The link messages' decoders behind the channel: the fuzzer's bytes sealed as a real
            // joiner's record (mode 1) or a real offerer's welcome (mode 2).
            let joiner = Ephemeral::generate().expect("random");
            let joiner_key = joiner.public();
            let mut joining = Channel::joiner(joiner, &offer).expect("a valid offer");
            let mut offering = Channel::offerer(own, &offer, &joiner_key).expect("a valid key");
            if mode == 1 {
                let mut object = joiner_key.to_vec();
                object.extend_from_slice(&joining.seal(reader.rest()).expect("seals"));
                if let Ok(record) = chatvault::link::open_join(&mut offering, &object) {
                    assert!(record.name.len() <= chatvault::sync::roster::MAX_DEVICE_NAME_LEN);
                }
            } else {
                offering
                    .confirm_check_code(&joining.check_code())
                    .expect("the right code");
                let sealed = offering.seal(reader.rest()).expect("seals");
                let _ = chatvault::link::open_welcome(&mut joining, &sealed);
            }
        }
        3 => {
            let name = "epochs/0000000000000001-0000000000000001";
            if let Ok(epoch) = EpochObject::decode(name, reader.rest()) {
                let _ = epoch.open_as_device(&[1; 16], &secrets(1));
                let recovery = chatvault::devices::RecoverySigner::recovery_secrets(
                    &RecoveryKey::from_bytes([3; 32]),
                );
                if let Ok(secret) = epoch.open_with_recovery(&recovery) {
                    let _ = epoch.previous(&secret);
                }
            }
        }
        _ => {
            // Up to 8 entries: each is either a raw body under its claimed id, or the decoded
            // entry of a body re-signed by a key the target holds.
            let recovery = secrets(0x99);
            let mut entries: Vec<SignedEntry> = Vec::new();
            for _ in 0..1 + reader.below(8) {
                let len = usize::from(reader.u8());
                let body: Vec<u8> = (0..len).map(|_| reader.u8()).collect();
                let id: [u8; 16] = reader.array();
                let Ok(decoded) = SignedEntry::decode(id, &body) else {
                    continue;
                };
                let mut entry = decoded.entry().clone();
                // Parents among the entries so far (so the DAG is not all orphans).
                entry.parents = entries
                    .iter()
                    .filter(|_| reader.bool())
                    .map(|e| e.id())
                    .collect();
                let signed = match reader.below(3) {
                    0 => {
                        entry.signer = Signer::Recovery;
                        SignedEntry::sign(&VAULT, entry, |m| recovery.sign(m))
                    }
                    n => {
                        let n = 0xa + n as u8;
                        entry.signer = Signer::Device(chatvault::sync::DeviceId([n; 16]));
                        SignedEntry::sign(&VAULT, entry, |m| secrets(n).sign(m))
                    }
                };
                entries.push(signed);
            }
            let root = recovery.public().verifying;
            let forward = fold(&VAULT, root, entries.clone());
            entries.reverse();
            let backward = fold(&VAULT, root, entries);
            match (forward, backward) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => {
                    assert!(matches!(a, Error::Integrity(IntegrityProblem::RosterContested)));
                    assert_eq!(a.to_string(), b.to_string());
                }
                (a, b) => panic!("{a:?} / {b:?}"),
            }
        }
    }
});
