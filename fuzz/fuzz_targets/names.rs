//! Every parser of names a bucket listing (or a user) hands in: never panics, and accepts only
//! the one spelling the writers produce, so parse -> name gives the input back and name -> parse
//! gives the values back.
//!
//! The first byte picks the mode: even, the rest is one text given to every parser; odd, the rest
//! gives values (device, seq, pack number, content id, chunk index) whose names must parse back,
//! then a listing of several texts split at newlines.
#![no_main]

mod common;

use std::collections::BTreeSet;

use chatvault::attachment::{ContentId, parse_chunk_name};
use chatvault::store::{StoreConfig, parse_s3_url, validate_key};
use chatvault::sync::DeviceId;
use chatvault::sync::checkpoint::{
    checkpoint_name, pack_prefix, parse_checkpoint_name, parse_pack_name,
};
use chatvault::sync::listing::Listing;
use chatvault::sync::segment::{SegmentName, parse_segment_name};
use common::Reader;
use libfuzzer_sys::fuzz_target;

fn pack_name(device: DeviceId, seq: u64, tag: u64, number: u32) -> String {
    format!("{}{number:04}", pack_prefix(device, seq, tag))
}

fn chunk_name(id: &ContentId, index: u64) -> String {
    format!("{}/{index:08x}", id.to_hex())
}

/// One text through every parser.
fn text(text: &str) {
    if let Some(segment) = parse_segment_name(text) {
        assert_eq!(segment.to_name(), text);
        assert!(segment.seq > 0 && segment.tag != 0);
        assert_eq!(segment.seq == 1, segment.parent == 0);
    }
    if let Some((device, seq, tag)) = parse_checkpoint_name(text) {
        assert_eq!(checkpoint_name(device, seq, tag), text);
        assert_ne!(tag, 0);
    }
    if let Some((device, seq, tag, number)) = parse_pack_name(text) {
        assert_eq!(pack_name(device, seq, tag, number), text);
        assert_ne!(tag, 0);
    }
    if let Some((id, index)) = parse_chunk_name(text) {
        assert_eq!(chunk_name(&id, index), text);
    }
    if let Some(id) = chatvault::sync::roster::parse_roster_name(text) {
        assert_eq!(chatvault::sync::roster::roster_name(&id), text);
    }
    if let Some((id, part)) = chatvault::link::parse_link_name(text) {
        assert_eq!(chatvault::link::link_object_name(&id, part), text);
    }
    if let Some(device) = DeviceId::from_hex(text) {
        assert_eq!(device.to_hex(), text.to_ascii_lowercase());
    }
    if validate_key(text).is_ok() {
        assert!(!text.is_empty() && !text.starts_with('/') && !text.ends_with('/'));
        assert!(
            !text
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        );
    }
    // A parsed S3 URL prints as a URL that parses to the same configuration.
    if let Ok(config) = parse_s3_url(text) {
        let url = config.to_string();
        let again = parse_s3_url(&url).unwrap_or_else(|e| panic!("{url:?} from {text:?}: {e}"));
        assert_eq!(again.to_string(), url, "from {text:?}");
        assert_eq!(
            (
                &again.bucket,
                again.prefix.trim_end_matches('/'),
                &again.endpoint
            ),
            (
                &config.bucket,
                config.prefix.trim_end_matches('/'),
                &config.endpoint
            ),
            "from {text:?}"
        );
        assert_eq!(
            (&again.region, again.path_style),
            (&config.region, config.path_style)
        );
    } else if let Ok(config) = StoreConfig::parse(text) {
        let _ = config.to_string();
    }
}

fn values(reader: &mut Reader<'_>) {
    let device = DeviceId(reader.array());
    let seq = reader.seq().max(1);
    // Tags are never zero; a parent tag is zero exactly at seq 1.
    let tag = u64::from_le_bytes(reader.array()).max(1);
    let parent = if seq == 1 {
        0
    } else {
        u64::from_le_bytes(reader.array()).max(1)
    };
    let number = u32::from(u16::from_le_bytes(reader.array())) % 10_000;
    let id = ContentId(reader.array());
    let index = u64::from(u32::from_le_bytes(reader.array()));
    let segment = SegmentName {
        device,
        seq,
        tag,
        parent,
    };
    assert_eq!(parse_segment_name(&segment.to_name()), Some(segment));
    assert_eq!(
        parse_checkpoint_name(&checkpoint_name(device, seq, tag)),
        Some((device, seq, tag))
    );
    assert_eq!(
        parse_pack_name(&pack_name(device, seq, tag, number)),
        Some((device, seq, tag, number))
    );
    assert_eq!(parse_chunk_name(&chunk_name(&id, index)), Some((id, index)));
    assert_eq!(DeviceId::from_hex(&device.to_hex()), Some(device));
}

/// A listing sorts every distinct name into exactly one kind.
fn listing(text: &str) {
    let names: BTreeSet<&str> = text.split('\n').collect();
    let listing = Listing::classify(names.iter().map(|n| (*n, n.len() as u64)));
    let segments: usize = listing.segments.values().map(|s| s.len()).sum();
    assert_eq!(
        segments
            + listing.checkpoints.len()
            + listing.packs.len()
            + listing.roster.len()
            + listing.links.len()
            + listing.unknown.len(),
        names.len()
    );
    for (segment, listed) in listing.all_segments() {
        assert!(segment.seq > 0);
        assert_eq!(parse_segment_name(&listed.name), Some(segment));
    }
    for name in listing.checkpoints.keys() {
        assert!(parse_checkpoint_name(name).is_some());
    }
    for name in listing.packs.keys() {
        assert!(parse_pack_name(name).is_some());
    }
    let _ = listing.newest_segments();
}

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data);
    if reader.u8() % 2 == 0 {
        text(&String::from_utf8_lossy(reader.rest()));
    } else {
        values(&mut reader);
        let rest = String::from_utf8_lossy(reader.rest()).into_owned();
        listing(&rest);
        for line in rest.split('\n') {
            text(line);
        }
    }
});
