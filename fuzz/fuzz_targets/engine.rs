//! The sync engine driven over a scripted bucket, through the driver the engine's tests use
//! (`chatvault::sync::engine::driver`): the input is a script of honest writes (segments of three
//! devices with the heads they saw, checkpoints, garbage collection, pulls), junk names, and
//! dishonest acts (deleted, flipped, cut, swapped objects; listing sizes that lie; segments and
//! checkpoints a key holder forged with arbitrary sequence numbers, chains and claims). Then
//! pulls and verifies by a device that followed along and by a fresh one.
//!
//! Honest writes include forks: a copy of a device's state directory writing after one of its
//! earlier segments (possibly one garbage collection already took), as a VM snapshot restored
//! later does.
//!
//! Nothing may panic; on an honest script (junk names included) every pull and verify must
//! succeed, and a fresh device must end up with every message written.
#![no_main]

mod common;

use chatvault::sync::DeviceId;
use chatvault::sync::engine::driver::{Bucket, CHECKPOINT_WRITER, Device};
use chatvault::sync::segment::{Head, SegmentId};
use chatvault::{Error, Result};
use common::{Reader, keys};
use libfuzzer_sys::fuzz_target;

const DEVICES: [DeviceId; 3] = [
    CHECKPOINT_WRITER,
    DeviceId([0xb; 16]),
    DeviceId([0xc; 16]),
];

fn pick(bucket: &Bucket, reader: &mut Reader<'_>) -> Option<String> {
    if bucket.objects.is_empty() {
        return None;
    }
    let index = reader.below(256) % bucket.objects.len();
    bucket.objects.keys().nth(index).cloned()
}

fn pull(bucket: &Bucket, device: &mut Device) -> Result<()> {
    chatvault::sync::engine::driver::pull(keys(), bucket, device)
}

fn verify(bucket: &Bucket, device: &Device) -> Result<()> {
    chatvault::sync::engine::driver::verify(keys(), bucket, device)
}

/// Names that are no vault object: set aside, never an error.
fn junk(bucket: &Bucket, reader: &mut Reader<'_>) -> String {
    let device = DEVICES[reader.below(3)].to_hex();
    let one = "0000000000000001";
    let zero = "0000000000000000";
    match reader.below(10) {
        0 => "segments/README".to_owned(),
        1 => format!("segments/{device}/{zero}-{one}-{zero}"),
        2 => format!("segments/{}/{one}-{one}-{zero}", device.to_uppercase()),
        3 => format!("packs/{device}/{one}-{one}/x"),
        4 => format!("checkpoints/{device}/1"),
        6 => format!("segments/{device}/{one}-{zero}-{zero}"),
        7 => format!("segments/{device}/{one}-{one}-{one}"),
        8 => format!("checkpoints/{device}/{one}-{zero}"),
        5 => pick(bucket, reader).map_or_else(|| "stray".to_owned(), |n| n.to_uppercase()),
        _ => "stray".to_owned(),
    }
}

fn honest_failure(what: &str, result: Result<()>, script: &[u8]) {
    if let Err(error) = result {
        panic!("{what} failed on an honest script {script:?}: {error:?}");
    }
}

fn checked(result: Result<()>) {
    // Every refusal is a typed error of the kinds a hostile bucket causes.
    if let Err(error) = result {
        assert!(
            matches!(
                error,
                Error::Integrity(_) | Error::Decode { .. } | Error::Store(_)
            ),
            "{error:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let mut reader = Reader::new(data);
    let mut bucket = Bucket::default();
    let mut honest = true;
    let mut checkpoints = 0;
    let mut follower = Device::default();
    for _ in 0..32 {
        if reader.is_empty() {
            break;
        }
        match reader.u8() % 16 {
            0..=4 => {
                let device = DEVICES[reader.below(3)];
                let mask = reader.u8();
                let seen: Vec<Head> = bucket
                    .heads
                    .values()
                    .enumerate()
                    .filter(|(i, h)| h.device != device && mask & (1 << i) != 0)
                    .map(|(_, h)| *h)
                    .collect();
                bucket.write(keys, device, &seen);
            }
            5 => {
                if !bucket.tips().is_empty() {
                    checkpoints += 1;
                    bucket.checkpoint(keys, checkpoints);
                }
            }
            6 => {
                // Garbage collection of what the newest honest checkpoint covers (sometimes
                // cut short).
                let keep = if reader.bool() { 0 } else { reader.below(4) };
                bucket.collect_keeping(keep);
            }
            7 => {
                let result = pull(&bucket, &mut follower);
                if honest {
                    honest_failure("a pull", result, data);
                }
            }
            8 => {
                let name = junk(&bucket, &mut reader);
                if !bucket.objects.contains_key(&name) {
                    bucket.objects.insert(name, b"junk".to_vec());
                }
            }
            9 => {
                if let Some(name) = pick(&bucket, &mut reader) {
                    bucket.objects.remove(&name);
                    honest = false;
                }
            }
            10 => {
                if let Some(name) = pick(&bucket, &mut reader) {
                    let bytes = bucket.objects.get_mut(&name).expect("picked");
                    match reader.below(3) {
                        0 if !bytes.is_empty() => {
                            let at = reader.below(256) * bytes.len() / 256;
                            bytes[at] ^= 1 << reader.below(8);
                        }
                        1 => bytes.truncate(reader.below(256) * bytes.len() / 256),
                        _ => bytes.extend_from_slice(&[0; 7]),
                    }
                    honest = false;
                }
            }
            11 => {
                if let (Some(from), Some(to)) = (pick(&bucket, &mut reader), pick(&bucket, &mut reader))
                {
                    let bytes = bucket.objects[&from].clone();
                    bucket.objects.insert(to, bytes);
                    honest = false;
                }
            }
            12 => {
                if let Some(name) = pick(&bucket, &mut reader) {
                    let size = match reader.below(3) {
                        0 => reader.seq(),
                        1 => bucket.objects[&name].len() as u64 + 1,
                        _ => u64::MAX,
                    };
                    bucket.lies.insert(name, size);
                    honest = false;
                }
            }
            13 => {
                // A key holder's segment: any place, tags, chain and claims.
                let device = DEVICES[reader.below(3)];
                let seq = reader.seq();
                let tag = u64::from(reader.u8());
                let previous = match reader.below(3) {
                    0 => None,
                    1 => bucket.heads.get(&device).map(|h| (h.tag, h.hash)),
                    _ => Some((u64::from(reader.u8()), reader.array())),
                };
                let claims: Vec<Head> = (0..reader.below(3))
                    .map(|_| Head {
                        device: DEVICES[reader.below(3)],
                        seq: reader.seq(),
                        tag: u64::from(reader.u8()),
                        hash: reader.array(),
                    })
                    .collect();
                bucket.put_segment(keys, SegmentId { device, seq, tag }, previous, &claims);
                honest = false;
            }
            14 => {
                // A key holder's checkpoint: any coverage.
                let covered: Vec<Head> = (0..1 + reader.below(3))
                    .map(|_| {
                        let device = DEVICES[reader.below(3)];
                        let real = bucket.heads.get(&device).copied();
                        match (reader.below(2), real) {
                            (0, Some(head)) => head,
                            _ => Head {
                                device,
                                seq: reader.seq(),
                                tag: u64::from(reader.u8()),
                                hash: reader.array(),
                            },
                        }
                    })
                    .collect();
                checkpoints += 1;
                bucket.put_checkpoint(keys, checkpoints, &covered, 8);
                honest = false;
            }
            15 if reader.bool() => {
                // A copy of a device's state directory writes after one of its earlier
                // segments (or as if it had written none).
                let device = DEVICES[reader.below(3)];
                let history = bucket.history.get(&device).cloned().unwrap_or_default();
                let at = reader.below(history.len() + 1);
                bucket.write_after(keys, device, history.get(at).copied(), &[]);
            }
            _ => {
                if honest {
                    honest_failure("a verify", verify(&bucket, &follower), data);
                } else {
                    checked(verify(&bucket, &follower));
                }
            }
        }
    }
    let mut fresh = Device::default();
    let fresh_pull = pull(&bucket, &mut fresh);
    let followed = pull(&bucket, &mut follower);
    if honest {
        honest_failure("a fresh pull", fresh_pull, data);
        assert_eq!(
            fresh.messages, bucket.messages,
            "a fresh pull lost messages: {data:?}"
        );
        honest_failure("the follower's pull", followed, data);
        honest_failure("a fresh verify", verify(&bucket, &Device::default()), data);
        honest_failure("the follower's verify", verify(&bucket, &follower), data);
    } else {
        checked(fresh_pull);
        checked(followed);
        checked(verify(&bucket, &Device::default()));
        checked(verify(&bucket, &follower));
    }
});
