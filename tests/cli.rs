//! The `chatvault` binary as a person runs it (needs `--features cli`).

use std::process::Command;

use chatvault::keys::RecoveryKey;

fn chatvault() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chatvault"))
}

#[test]
fn keygen_prints_one_parsable_key_per_run() {
    let first = chatvault().arg("keygen").output().unwrap();
    let second = chatvault().arg("keygen").output().unwrap();
    assert!(first.status.success());
    let first = String::from_utf8(first.stdout).unwrap();
    let second = String::from_utf8(second.stdout).unwrap();
    assert_eq!(first.lines().count(), 1);
    assert_ne!(first, second);
    RecoveryKey::parse(first.trim()).unwrap();
}

#[test]
fn demo_backs_up_restores_and_shreds() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let output = chatvault()
        .args(["demo", "--dir"])
        .arg(&bucket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Family 👪 (3 messages"), "{stdout}");
    assert!(stdout.contains("the passphrase envelope also unlocks the same key: true"));
    assert!(stdout.contains("chats left: climbing, family"));

    // Nothing the bucket holds names a chat or contains message text.
    let mut files = Vec::new();
    let mut stack = vec![bucket.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert_eq!(
        files.len(),
        4,
        "two chats, one keyring, one passphrase envelope: {files:?}"
    );
    for file in files {
        let name = file
            .strip_prefix(&bucket)
            .unwrap()
            .to_string_lossy()
            .to_string();
        for secret in ["family", "climbing", "landlord", "Dinner", "crag"] {
            assert!(!name.contains(secret), "{name}");
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name}"
            );
        }
    }
}
