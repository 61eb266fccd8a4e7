//! The `chatvault` binary as a person runs it (needs `--features cli`).

use std::path::Path;
use std::process::{Command, Output};

use chatvault::keys::RecoveryKey;

fn chatvault() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chatvault"))
}

fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn keygen_prints_one_parsable_key_per_run() {
    let first = ok(chatvault().arg("keygen").output().unwrap());
    let second = ok(chatvault().arg("keygen").output().unwrap());
    assert_eq!(first.lines().count(), 1);
    assert_ne!(first, second);
    RecoveryKey::parse(first.trim()).unwrap();
}

#[test]
fn demo_backs_up_and_restores_across_devices() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = ok(chatvault()
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap());
    assert!(stdout.contains("Family 👪 — 401 messages"), "{stdout}");
    assert!(
        stdout.contains("Climbing crew 🧗 — 400 messages"),
        "{stdout}"
    );
    assert!(stdout.contains("first family message: mum: Dinner at 7? 🍝 (edited)"));
    assert!(stdout.contains("Both devices hold the same 1202 messages: true"));
    assert!(stdout.contains("forwarded to a second chat: 0 bytes up (stored once)"));
    assert!(stdout.contains("1 attachment reference(s) restored with the messages"));
    assert!(stdout.contains("identical to the original: true"));
    assert!(stdout.contains("An idle sync costs 1 request(s)"));
    assert!(stdout.contains("The passphrase envelope unlocks the same recovery key: true"));

    // Nothing in the bucket names a chat or contains message text.
    let bucket = dir.path().join("demo/bucket");
    let mut stack = vec![bucket.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let name = path
                .strip_prefix(&bucket)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let bytes = std::fs::read(&path).unwrap();
            // Secrets of six bytes or more: 12 MiB of ciphertext contains a given 3-byte string
            // by chance, a 6-byte one with odds of about 1 in 20 million.
            for secret in ["family", "climbing", "landlord", "Dinner at", "holiday.mp4"] {
                assert!(!name.contains(secret), "{name}");
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{name}"
                );
            }
            assert!(!name.contains("mum"), "{name}");
        }
    }
    assert!(files >= 3);
}

struct Env {
    _dir: tempfile::TempDir,
    store: String,
    key_file: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let key = ok(chatvault().arg("keygen").output().unwrap());
    let key_file = root.join("key.txt");
    std::fs::write(&key_file, key).unwrap();
    Env {
        store: format!("file://{}", root.join("bucket").display()),
        key_file,
        root,
        _dir: dir,
    }
}

fn run(env: &Env, device: &str, args: &[&str]) -> Output {
    chatvault()
        .env("CHATVAULT_STORE", &env.store)
        .env("CHATVAULT_KEY_FILE", &env.key_file)
        .env("CHATVAULT_STATE", env.root.join(device))
        .args(args)
        .output()
        .unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn import_sync_restore_round_trips_every_character() {
    let env = env();
    let input = env.root.join("in.jsonl");
    write(
        &input,
        concat!(
            r#"{"type":"chat","chat_id":"c1","title":"Tabs\tand \"quotes\" \\ 🎉","members":["a","b"]}"#,
            "\n",
            r#"{"type":"message","chat_id":"c1","message_id":"m1","sender":"a","sent_at_ms":2,"text":"line\nbreak","reply_to":null}"#,
            "\n",
            r#"{"type":"message","chat_id":"c1","message_id":"m0","sender":"b","sent_at_ms":1,"text":"first","reply_to":null}"#,
            "\n",
            r#"{"type":"message","chat_id":"c1","message_id":"m1","sender":"a","sent_at_ms":2,"text":"edited ✏️","reply_to":"m0"}"#,
            "\n",
            r#"{"type":"message","chat_id":"c2","message_id":"x","sender":"a","sent_at_ms":3,"text":"bye","reply_to":null}"#,
            "\n",
            r#"{"type":"delete_chat","chat_id":"c2"}"#,
            "\n",
            r#"{"type":"message","chat_id":"c1","message_id":"gone","sender":"a","sent_at_ms":4,"text":"oops","reply_to":null}"#,
            "\n",
            r#"{"type":"delete_message","chat_id":"c1","message_id":"gone"}"#,
            "\n",
        ),
    );
    ok(run(&env, "phone", &["init"]));
    ok(run(&env, "phone", &["import", input.to_str().unwrap()]));
    let report = ok(run(&env, "phone", &["sync", "--json"]));
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["objects_up"], 1);
    assert_eq!(report["operations_sent"], 8);

    let out = env.root.join("out.jsonl");
    ok(run(
        &env,
        "tablet",
        &["restore", "--out", out.to_str().unwrap()],
    ));
    let restored = std::fs::read_to_string(&out).unwrap();
    let expected = concat!(
        r#"{"type":"chat","chat_id":"c1","title":"Tabs\tand \"quotes\" \\ 🎉","members":["a","b"]}"#,
        "\n",
        r#"{"type":"message","chat_id":"c1","message_id":"m0","sender":"b","sent_at_ms":1,"text":"first","reply_to":null}"#,
        "\n",
        r#"{"type":"message","chat_id":"c1","message_id":"m1","sender":"a","sent_at_ms":2,"text":"edited ✏️","reply_to":"m0"}"#,
        "\n",
    );
    assert_eq!(restored, expected);

    let chats = ok(run(&env, "tablet", &["chats", "--json"]));
    let chat: serde_json::Value = serde_json::from_str(chats.trim()).unwrap();
    assert_eq!(chat["messages"], 2);
    let stats = ok(run(&env, "tablet", &["stats", "--json"]));
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    // One segment, and the roster entries of the two devices that synced.
    assert_eq!(stats["objects"], 3);
    assert!(ok(run(&env, "tablet", &["verify"])).starts_with("ok: 1 segments"));
    assert!(ok(run(&env, "tablet", &["checkpoint"])).starts_with("checkpoint checkpoints/"));
    assert_eq!(
        ok(run(&env, "tablet", &["gc"])).trim(),
        "deleted 0 redundant objects"
    );
    assert_eq!(
        ok(run(&env, "tablet", &["gc", "--grace-hours", "0"])).trim(),
        "deleted 1 redundant objects"
    );
    let again = env.root.join("again.jsonl");
    ok(run(
        &env,
        "laptop",
        &["restore", "--out", again.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read_to_string(&again).unwrap(), expected);
    assert!(ok(run(&env, "laptop", &["verify"])).contains("1 checkpoint(s)"));

    let since = env.root.join("since.jsonl");
    ok(run(
        &env,
        "tablet",
        &[
            "restore",
            "--out",
            since.to_str().unwrap(),
            "--since-ms",
            "2",
        ],
    ));
    let since = std::fs::read_to_string(&since).unwrap();
    assert_eq!(since.lines().count(), 2, "{since}");
    assert!(since.contains("\"message_id\":\"m1\"") && !since.contains("\"message_id\":\"m0\""));

    let only = env.root.join("only.jsonl");
    ok(run(
        &env,
        "tablet",
        &["restore", "--out", only.to_str().unwrap(), "--chat", "nope"],
    ));
    assert_eq!(std::fs::read_to_string(&only).unwrap(), "");
}

/// `restore --chat` writes exactly the chosen chats: their chat lines and messages, as imported
/// (the lines below are in the form `restore` writes), and nothing of the others.
#[test]
fn restore_of_chosen_chats_writes_those_chats_and_nothing_else() {
    let env = env();
    let chat = |id: &str| {
        vec![
            format!(
                r#"{{"type":"chat","chat_id":"{id}","title":"Chat {id}","members":["a","b"]}}"#
            ),
            format!(
                r#"{{"type":"message","chat_id":"{id}","message_id":"{id}-1","sender":"a","sent_at_ms":1,"text":"first of {id}","reply_to":null}}"#
            ),
            format!(
                r#"{{"type":"message","chat_id":"{id}","message_id":"{id}-2","sender":"b","sent_at_ms":2,"text":"second of {id} 🎉","reply_to":"{id}-1"}}"#
            ),
        ]
    };
    let (c1, c2, c3) = (chat("c1"), chat("c2"), chat("c3"));
    let input = env.root.join("in.jsonl");
    let all = [c1.clone(), c2.clone(), c3.clone()].concat();
    write(&input, &(all.join("\n") + "\n"));
    ok(run(&env, "phone", &["import", input.to_str().unwrap()]));
    ok(run(&env, "phone", &["sync"]));

    let restore = |chats: &[&str]| {
        let out = env.root.join(format!("only-{}.jsonl", chats.join("-")));
        let mut args = vec!["restore", "--out", out.to_str().unwrap()];
        for chat in chats {
            args.extend(["--chat", chat]);
        }
        ok(run(&env, "tablet", &args));
        std::fs::read_to_string(&out).unwrap()
    };
    let lines = |parts: &[&Vec<String>]| -> String {
        let chats: Vec<&String> = parts.iter().map(|p| &p[0]).collect();
        let messages: Vec<&String> = parts.iter().flat_map(|p| &p[1..]).collect();
        chats
            .into_iter()
            .chain(messages)
            .map(|line| format!("{line}\n"))
            .collect()
    };
    // The whole vault first, so a wrong expectation cannot hide behind the filter.
    assert_eq!(restore(&[]), lines(&[&c1, &c2, &c3]));
    assert_eq!(restore(&["c2"]), lines(&[&c2]));
    assert_eq!(restore(&["c3", "c1"]), lines(&[&c1, &c3]));
}

#[test]
fn app_kinds_and_payloads_survive_an_export_and_import_unchanged() {
    let env = env();
    // Every byte value, in standard base64 with padding.
    let every_byte: Vec<u8> = (0..=255).collect();
    let every_byte_b64 = base64_standard(&every_byte);
    let input = env.root.join("in.jsonl");
    let lines = [
        format!(
            r#"{{"type":"chat","chat_id":"c","title":"T","members":["a"],"payload":"{every_byte_b64}"}}"#
        ),
        r#"{"type":"message","chat_id":"c","message_id":"m1","sender":"a","sent_at_ms":1,"text":"hi","reply_to":null}"#.to_owned(),
        format!(
            r#"{{"type":"message","chat_id":"c","message_id":"m2","sender":"a","sent_at_ms":2,"text":"","reply_to":null,"kind":"sticker","payload":"{every_byte_b64}"}}"#
        ),
        r#"{"type":"message","chat_id":"c","message_id":"m3","sender":"a","sent_at_ms":3,"text":"👍","reply_to":"m2","kind":"reaction"}"#.to_owned(),
    ];
    write(&input, &(lines.join("\n") + "\n"));
    ok(run(&env, "phone", &["import", input.to_str().unwrap()]));
    ok(run(&env, "phone", &["sync"]));
    let out = env.root.join("out.jsonl");
    ok(run(
        &env,
        "tablet",
        &["restore", "--out", out.to_str().unwrap()],
    ));
    // The export is the input, line for line: fields omitted when empty.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        lines.join("\n") + "\n"
    );
    // And it imports again unchanged, on a device of another vault.
    let other = self::env();
    ok(run(&other, "laptop", &["import", out.to_str().unwrap()]));
    let again = other.root.join("again.jsonl");
    ok(run(
        &other,
        "laptop",
        &["restore", "--out", again.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        lines.join("\n") + "\n"
    );
}

#[test]
fn bad_base64_oversized_fields_and_missing_files_name_their_line_and_import_nothing() {
    let env = env();
    let big = base64_standard(&vec![7u8; 64 * 1024 + 1]);
    let long_kind = "k".repeat(65);
    let cases = [
        (
            r#"{"type":"message","chat_id":"c","message_id":"2","sent_at_ms":1,"payload":"not base64!"}"#.to_owned(),
            "not standard base64",
        ),
        (
            r#"{"type":"chat","chat_id":"c","payload":"AAE"}"#.to_owned(),
            "not standard base64",
        ),
        (
            format!(r#"{{"type":"message","chat_id":"c","message_id":"2","sent_at_ms":1,"payload":"{big}"}}"#),
            "payload of 65537 bytes exceeds the limit of 65536",
        ),
        (
            format!(r#"{{"type":"message","chat_id":"c","message_id":"2","sent_at_ms":1,"kind":"{long_kind}"}}"#),
            "kind of 65 bytes exceeds the limit of 64",
        ),
        (
            r#"{"type":"message","chat_id":"c","message_id":"2","sent_at_ms":1,"attachments":[{"path":"missing.jpg"}]}"#.to_owned(),
            "attachment \"missing.jpg\" is not a readable file",
        ),
    ];
    for (line, reason) in cases {
        let input = env.root.join("bad.jsonl");
        write(
            &input,
            &format!(
                "{}\n{line}\n",
                r#"{"type":"message","chat_id":"c","message_id":"1","sent_at_ms":1,"text":"fine"}"#
            ),
        );
        let output = run(&env, "phone", &["import", input.to_str().unwrap()]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("line 2"), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        let stats = ok(run(&env, "phone", &["stats", "--json"]));
        assert!(stats.contains("\"pending_operations\":0"), "{stats}");
    }
}

/// Standard base64 with padding (RFC 4648 section 4), written out here so the test does not
/// share the CLI's encoder.
fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The fixture's vault was written under untagged segment names, which no reader accepts
/// since names carry tags (a format change before the first release): the state migrates, its
/// content and outbox stay readable, and every sync is refused with an error that says why.
#[test]
fn a_state_directory_of_the_first_layout_keeps_its_content_and_refuses_its_untagged_vault() {
    // tests/fixtures/state-v0: written by the CLI of f6647f2, with 5 operations in its outbox.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    let cli = |state: &str, args: &[&str]| {
        chatvault()
            .env(
                "CHATVAULT_STORE",
                format!("file://{}", dir.path().join("bucket").display()),
            )
            .env("CHATVAULT_KEY_FILE", dir.path().join("key.txt"))
            .env("CHATVAULT_STATE", dir.path().join(state))
            .args(args)
            .output()
            .unwrap()
    };
    let stats = ok(cli("state", &["stats", "--json"]));
    assert!(stats.contains("\"pending_operations\":5"), "{stats}");
    // Every chat of what the device held (expected.jsonl) is still listed locally.
    let expected = std::fs::read_to_string(fixture.join("expected.jsonl")).unwrap();
    let chats = ok(cli("state", &["chats", "--json"]));
    for line in expected.lines().filter(|l| l.contains("\"type\":\"chat\"")) {
        let id = line
            .split("\"chat_id\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(chats.contains(id), "{id} missing from {chats}");
    }
    let out = dir.path().join("out.jsonl");
    let refused = cli("state", &["restore", "--out", out.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("before segment names carried tags"),
        "{stderr}"
    );
    // Nothing was pushed: the outbox still holds its 5 operations.
    let stats = ok(cli("state", &["stats", "--json"]));
    assert!(stats.contains("\"pending_operations\":5"), "{stats}");
    // A new device sees the old segments as names it does not know, not as an error.
    let fresh = dir.path().join("fresh.jsonl");
    ok(cli("fresh", &["restore", "--out", fresh.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "");
}

#[test]
fn a_malformed_line_is_reported_and_nothing_is_imported() {
    let env = env();
    let input = env.root.join("bad.jsonl");
    write(
        &input,
        concat!(
            r#"{"type":"message","chat_id":"c","message_id":"1","sent_at_ms":1,"text":"fine"}"#,
            "\n",
            r#"{"type":"message","chat_id":"c","message_id":"2","sent_at_ms":"yesterday"}"#,
            "\n",
        ),
    );
    let output = run(&env, "phone", &["import", input.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    let stats = ok(run(&env, "phone", &["stats", "--json"]));
    assert!(stats.contains("\"pending_operations\":0"), "{stats}");
}

#[test]
fn verify_fails_loudly_on_a_tampered_store() {
    let env = env();
    let input = env.root.join("in.jsonl");
    write(
        &input,
        "{\"type\":\"message\",\"chat_id\":\"c\",\"message_id\":\"1\",\"sent_at_ms\":1,\"text\":\"x\"}\n",
    );
    ok(run(&env, "phone", &["import", input.to_str().unwrap()]));
    ok(run(&env, "phone", &["sync"]));
    let mut stack = vec![env.root.join("bucket")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let mut bytes = std::fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0x40;
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
    let output = run(&env, "laptop", &["verify"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("authentication failed"));
}

#[test]
fn restore_downloads_what_it_can_and_reports_a_tampered_attachment() {
    let env = env();
    std::fs::create_dir_all(env.root.join("media")).unwrap();
    std::fs::write(env.root.join("media/good.txt"), "good content".repeat(1000)).unwrap();
    std::fs::write(env.root.join("media/bad.txt"), "other content".repeat(1000)).unwrap();
    let jsonl = env.root.join("in.jsonl");
    write(
        &jsonl,
        concat!(
            r#"{"type":"message","chat_id":"c","message_id":"1","sent_at_ms":1,"attachments":[{"path":"media/good.txt","mime":"text/plain"}]}"#,
            "\n",
            r#"{"type":"message","chat_id":"c","message_id":"2","sent_at_ms":2,"attachments":[{"path":"media/bad.txt"}]}"#,
            "\n"
        ),
    );
    ok(run(&env, "phone", &["import", jsonl.to_str().unwrap()]));
    ok(run(&env, "phone", &["sync"]));

    // Damage the one chunk of bad.txt: find its reference, then flip a byte of the chunk.
    let refs = env.root.join("refs.jsonl");
    ok(run(
        &env,
        "laptop",
        &["restore", "--out", refs.to_str().unwrap()],
    ));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&refs)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bad = lines
        .iter()
        .find(|l| l["attachments"][0]["name"] == "bad.txt")
        .unwrap();
    let bad_id = bad["attachments"][0]["content_id"].as_str().unwrap();
    let mut chunk = None;
    let mut stack = vec![env.root.join("bucket")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.parent().unwrap().ends_with(bad_id) {
                chunk = Some(path);
            }
        }
    }
    let chunk = chunk.expect("the chunk of bad.txt");
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();

    let out = env.root.join("restored/out.jsonl");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let files = env.root.join("restored/files");
    let output = run(
        &env,
        "laptop",
        &[
            "restore",
            "--out",
            out.to_str().unwrap(),
            "--attachments",
            files.to_str().unwrap(),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 attachment(s) could not be downloaded"),
        "{stderr}"
    );
    assert!(stderr.contains("authentication failed"), "{stderr}");
    let restored: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["type"] == "message")
        .collect();
    let good = &restored[0]["attachments"][0];
    assert_eq!(good["name"], "good.txt");
    let path = out.parent().unwrap().join(good["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        "good content".repeat(1000)
    );
    assert!(restored[1]["attachments"][0]["path"].is_null());
    assert_eq!(restored[1]["attachments"][0]["content_id"], bad_id);
}

/// A long import pushes what it recorded every `--sync-every` lines, so the outbox never holds
/// the whole history; what is left goes with the next sync, and a restore gets every line.
#[test]
fn a_long_import_uploads_as_it_goes() {
    let env = env();
    let input = env.root.join("in.jsonl");
    let lines: String = (0..55)
        .map(|i| {
            format!(
                "{{\"type\":\"message\",\"chat_id\":\"c{}\",\"message_id\":\"m{i}\",\"sender\":\"a\",\"sent_at_ms\":{i},\"text\":\"t{i}\"}}\n",
                i % 3
            )
        })
        .collect();
    write(&input, &lines);
    ok(run(&env, "phone", &["init"]));
    let said = ok(run(
        &env,
        "phone",
        &[
            "import",
            input.to_str().unwrap(),
            "--batch",
            "10",
            "--sync-every",
            "20",
        ],
    ));
    assert!(said.contains("recorded 55 operations"), "{said}");
    assert!(said.contains("40 uploaded during the import"), "{said}");
    let segments = |env: &Env| {
        walk(&env.root.join("bucket"))
            .iter()
            .filter(|p| p.to_string_lossy().contains("/segments/"))
            .count()
    };
    assert_eq!(segments(&env), 2);
    let report = ok(run(&env, "phone", &["sync", "--json"]));
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["operations_sent"], 15);
    let out = env.root.join("out.jsonl");
    ok(run(
        &env,
        "tablet",
        &["restore", "--out", out.to_str().unwrap()],
    ));
    let restored = std::fs::read_to_string(&out).unwrap();
    assert_eq!(restored.matches("\"type\":\"message\"").count(), 55);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn devices_lists_every_device_that_synced_and_which_one_is_this() {
    let env = env();
    ok(run(&env, "laptop", &["init"]));
    let lines = ok(run(&env, "tablet", &["devices", "--json"]));
    let devices: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(devices.len(), 2, "{lines}");
    let this: Vec<&serde_json::Value> = devices
        .iter()
        .filter(|d| d["this_device"] == true)
        .collect();
    assert_eq!(this.len(), 1);
    for device in &devices {
        assert_eq!(device["device_id"].as_str().unwrap().len(), 32);
        assert_eq!(device["name"], "chatvault CLI");
        assert_eq!(device["platform"], std::env::consts::OS);
        assert_eq!(device["added_by"], "recovery_key");
        assert!(device["revoked_at_ms"].is_null());
        assert!(device["added_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    // The laptop sees the tablet, and itself as this device.
    let text = ok(run(&env, "laptop", &["devices"]));
    assert_eq!(text.lines().count(), 2, "{text}");
    let own = text.lines().find(|l| l.ends_with("(this device)")).unwrap();
    // Times as a person reads them: RFC 3339, UTC.
    assert!(
        own.contains("\tadded 20") && own.contains("Z by recovery_key"),
        "{own}"
    );
    assert_ne!(
        own.split('\t').next(),
        this[0]["device_id"].as_str(),
        "the laptop's own line is not the tablet's"
    );
    let verified = ok(run(&env, "laptop", &["verify"]));
    assert!(verified.contains("2 roster entries"), "{verified}");
}

/// `chatvault` for `device`'s state directory, without the recovery key file: a device that
/// joined by a link opens with its device key.
fn without_key(env: &Env, device: &str) -> Command {
    let mut command = chatvault();
    command
        .env("CHATVAULT_STORE", &env.store)
        .env_remove("CHATVAULT_KEY_FILE")
        .env("CHATVAULT_STATE", env.root.join(device))
        .env("CHATVAULT_DEVICE_NAME", device);
    command
}

/// Runs `link offer` on `offerer` and `link join` on `joiner` as two processes, handing the
/// offer and then the code (`code` maps the joiner's code to what the person types) between
/// them as a person would; returns both outputs.
fn link(env: &Env, offerer: &str, joiner: &str, code: impl Fn(&str) -> String) -> (Output, Output) {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;
    let mut offer = chatvault()
        .env("CHATVAULT_STORE", &env.store)
        .env("CHATVAULT_KEY_FILE", &env.key_file)
        .env("CHATVAULT_STATE", env.root.join(offerer))
        .args(["link", "offer", "--timeout-s", "120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut offer_out = BufReader::new(offer.stdout.take().unwrap());
    let mut payload = String::new();
    offer_out.read_line(&mut payload).unwrap();
    assert!(payload.starts_with("CHATVAULT-LINK:"), "{payload:?}");
    let mut join = without_key(env, joiner)
        .args(["link", "join", payload.trim()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut join_out = BufReader::new(join.stdout.take().unwrap());
    let mut shown = String::new();
    join_out.read_line(&mut shown).unwrap();
    let shown = shown.trim();
    assert!(
        shown.len() == 6 && shown.bytes().all(|b| b.is_ascii_digit()),
        "{shown:?}"
    );
    let mut stdin = offer.stdin.take().unwrap();
    writeln!(stdin, "{}", code(shown)).unwrap();
    drop(stdin);
    let collect = |child: std::process::Child, mut out: BufReader<std::process::ChildStdout>| {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let mut output = child.wait_with_output().unwrap();
        output.stdout = rest.into_bytes();
        output
    };
    (collect(offer, offer_out), collect(join, join_out))
}

#[test]
fn link_offer_and_join_add_a_device_that_never_sees_the_recovery_key() {
    let env = env();
    let input = env.root.join("in.jsonl");
    write(
        &input,
        r#"{"type":"message","chat_id":"c","message_id":"m1","sender":"a","sent_at_ms":1,"text":"before the link","reply_to":null}"#,
    );
    ok(run(&env, "laptop", &["import", input.to_str().unwrap()]));
    ok(run(&env, "laptop", &["sync"]));
    let (offered, joined) = link(&env, "laptop", "phone", str::to_owned);
    let offered = ok(offered);
    let joined = ok(joined);
    assert!(offered.starts_with("linked device "), "{offered}");
    assert!(joined.starts_with("joined vault "), "{joined}");
    // The new device holds a device key, not the recovery key, and works like any other.
    let key_file = env.root.join("phone").join("device.key");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().len(), 64);
    let out = env.root.join("out.jsonl");
    ok(without_key(&env, "phone")
        .args(["restore", "--out", out.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("before the link")
    );
    let devices = ok(without_key(&env, "phone")
        .args(["devices", "--json"])
        .output()
        .unwrap());
    let devices: Vec<serde_json::Value> = devices
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(devices.len(), 2);
    let laptop = devices.iter().find(|d| d["this_device"] == false).unwrap();
    let phone = devices.iter().find(|d| d["this_device"] == true).unwrap();
    assert_eq!(phone["name"], "phone");
    assert_eq!(phone["added_by"], laptop["device_id"]);
    assert_eq!(laptop["added_by"], "recovery_key");
    ok(without_key(&env, "phone").arg("verify").output().unwrap());
    // Joining again into the same state directory is refused.
    let again = without_key(&env, "phone")
        .args(["link", "join", "CHATVAULT-LINK:AAAA"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("already joined a vault"), "{why}");
}

#[test]
fn revoke_cuts_a_linked_device_off_and_devices_shows_it() {
    let env = env();
    let input = env.root.join("in.jsonl");
    write(
        &input,
        r#"{"type":"message","chat_id":"c","message_id":"m1","sender":"a","sent_at_ms":1,"text":"before","reply_to":null}"#,
    );
    ok(run(&env, "laptop", &["import", input.to_str().unwrap()]));
    ok(run(&env, "laptop", &["sync"]));
    let (offered, joined) = link(&env, "laptop", "phone", str::to_owned);
    ok(offered);
    ok(joined);
    ok(without_key(&env, "phone").arg("sync").output().unwrap());
    let phone_id = ok(without_key(&env, "phone")
        .args(["devices", "--json"])
        .output()
        .unwrap())
    .lines()
    .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
    .find(|d| d["this_device"] == true)
    .unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A device cannot revoke itself; a garbage id is refused with a clear message.
    let own = without_key(&env, "phone")
        .args(["revoke", &phone_id])
        .output()
        .unwrap();
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("cannot revoke itself"));
    let garbage = run(&env, "laptop", &["revoke", "xyz"]);
    assert!(!garbage.status.success());
    assert!(String::from_utf8_lossy(&garbage.stderr).contains("not a device id"));

    let revoked = ok(run(&env, "laptop", &["revoke", &phone_id]));
    assert!(
        revoked.starts_with(&format!("revoked {phone_id}")),
        "{revoked}"
    );
    let devices = ok(run(&env, "laptop", &["devices", "--json"]));
    let phone = devices
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|d| d["device_id"] == phone_id.as_str())
        .unwrap();
    assert!(phone["revoked_at_ms"].as_u64().is_some(), "{phone}");
    // The revoked phone's next sync fails with a clear message; the laptop's vault verifies.
    let refused = without_key(&env, "phone").arg("sync").output().unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("removed from the vault"), "{why}");
    write(
        &input,
        r#"{"type":"message","chat_id":"c","message_id":"m2","sender":"a","sent_at_ms":2,"text":"after","reply_to":null}"#,
    );
    ok(run(&env, "laptop", &["import", input.to_str().unwrap()]));
    ok(run(&env, "laptop", &["sync"]));
    ok(run(&env, "laptop", &["verify"]));
}

#[test]
fn rotate_key_prints_a_new_key_that_restores_everything_and_retires_the_old_one() {
    let env = env();
    let input = env.root.join("in.jsonl");
    write(
        &input,
        r#"{"type":"message","chat_id":"c","message_id":"m1","sender":"a","sent_at_ms":1,"text":"before the rotation","reply_to":null}"#,
    );
    ok(run(&env, "laptop", &["import", input.to_str().unwrap()]));
    ok(run(&env, "laptop", &["sync"]));
    ok(run(&env, "desktop", &["sync"]));
    let old_key = std::fs::read_to_string(&env.key_file).unwrap();
    let printed = ok(run(&env, "laptop", &["rotate-key"]));
    assert_eq!(printed.lines().count(), 1, "{printed}");
    let new_key = printed.trim().to_owned();
    assert_ne!(new_key, old_key.trim());
    RecoveryKey::parse(&new_key).unwrap();
    // The old key no longer syncs, with a message saying what to do.
    let refused = run(&env, "desktop", &["sync"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("replaced by a newer one"), "{why}");
    // With the new key in the key file, the same state directories and a new one work.
    write(&env.key_file, &new_key);
    ok(run(&env, "desktop", &["sync"]));
    let out = env.root.join("out.jsonl");
    ok(run(
        &env,
        "fresh",
        &["restore", "--out", out.to_str().unwrap()],
    ));
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("before the rotation")
    );
    ok(run(&env, "fresh", &["verify"]));
}

#[test]
fn a_wrong_check_code_fails_both_commands_and_leaves_no_device() {
    let env = env();
    ok(run(&env, "laptop", &["init"]));
    let (offered, joined) = link(&env, "laptop", "phone", |shown| {
        // One digit off.
        let last = shown.as_bytes()[5];
        let other = if last == b'9' {
            '0'
        } else {
            (last + 1) as char
        };
        format!("{}{other}", &shown[..5])
    });
    assert!(!offered.status.success());
    assert!(!joined.status.success());
    let offer_error = String::from_utf8_lossy(&offered.stderr);
    let join_error = String::from_utf8_lossy(&joined.stderr);
    assert!(
        offer_error.contains("check code does not match"),
        "{offer_error}"
    );
    assert!(join_error.contains("burned"), "{join_error}");
    assert!(!env.root.join("phone").join("device.key").exists());
    let devices = ok(run(&env, "laptop", &["devices", "--json"]));
    assert_eq!(devices.lines().count(), 1);
}
