//! Objects in the vault prefix that chatvault never writes: junk, traversal and look-alike
//! names, a planted keyring. They must not stop anyone: every sync succeeds and changes
//! nothing, and `verify` reports each by name (relative to the vault prefix) in
//! `VerifyReport::unknown`. Part of the attack catalogue of `tests/attacks.rs`, kept apart
//! because it needs that field.

mod common;
#[path = "attacks/harness.rs"]
mod harness;
#[path = "attacks/template.rs"]
mod template;

use std::future::Future;
use std::pin::Pin;

use harness::{Bucket, Expect, attack, on_directory};
use template::template;

/// Plants a copy of `source` (or, if empty, a line of text) under `relative` (a name inside the
/// vault prefix), then checks that both verifying devices name exactly it.
fn planted(relative: &str, source: String) {
    let key = template().key_of(relative);
    let apply = move |b: Bucket| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let bytes = if source.is_empty() {
                b"not a chatvault object\n".to_vec()
            } else {
                b.get(&source).await
            };
            b.put(&key, bytes).await
        })
    };
    let findings = on_directory(attack("an unknown object", apply, Expect::nothing()));
    for (who, report) in [
        ("the synced device", findings.old_report),
        ("a new device", findings.fresh_report),
    ] {
        let report = report.unwrap();
        assert_eq!(report.unknown, [relative], "verify on {who}");
    }
}

fn text() -> String {
    String::new()
}

fn a_new_segment() -> String {
    template().a_uncovered[0].clone()
}

#[test]
fn a_readme_among_the_segments() {
    planted("segments/README", text());
}

#[test]
fn a_stray_file_at_the_vault_root() {
    planted("notes.txt", text());
}

#[test]
fn a_segment_under_an_upper_case_device_id() {
    let t = template();
    let parsed = t.parsed(&t.a_uncovered[0]);
    let name = format!(
        "segments/{}/{:016x}-{:016x}-{:016x}",
        t.a.to_ascii_uppercase(),
        parsed.seq,
        parsed.tag,
        parsed.parent
    );
    planted(&name, a_new_segment());
}

#[test]
fn a_segment_under_an_upper_case_sequence_number() {
    let t = template();
    let name = format!(
        "segments/{}/000000000000000A-0000000000000001-0000000000000001",
        t.a
    );
    planted(&name, a_new_segment());
}

#[test]
fn a_segment_under_a_short_sequence_number() {
    let t = template();
    let name = format!("segments/{}/{:015x}-{:016x}-{:016x}", t.a, 2, 1, 1);
    planted(&name, a_new_segment());
}

#[test]
fn a_readme_among_the_checkpoints() {
    planted("checkpoints/README", text());
}

#[test]
fn a_pack_name_of_another_form() {
    let t = template();
    let name = format!("packs/{}/junk", t.a);
    planted(&name, text());
}

/// chatvault keeps no keyring in the bucket (keys derive from the recovery key; chat keys
/// travel in segments and checkpoints), so a planted one is just an unknown object.
#[test]
fn a_planted_keyring() {
    planted("keyring/1", text());
}

/// A directory cannot hold a `..` entry: what a provider writes as `segments/../escaped` is
/// the file `escaped` at the vault root, an unknown object like any other.
#[test]
fn a_traversal_name_lands_inside_the_vault() {
    let t = template();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    template::copy_dir(&t.bucket, &root);
    let traversal = root
        .join(&t.vault)
        .join("segments")
        .join("..")
        .join("escaped");
    std::fs::write(&traversal, b"escaped").unwrap();
    let store = chatvault::store::DirectoryStore::new(root);
    let listed: Vec<String> = template::runtime().block_on(async {
        use chatvault::store::ObjectStore;
        store
            .list(&format!("{}/", t.vault))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with("escaped"))
            .collect()
    });
    assert_eq!(listed, [t.key_of("escaped")]);
    planted("escaped", text());
}
