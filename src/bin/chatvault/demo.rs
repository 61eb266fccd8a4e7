//! `chatvault demo`: the README's main job, on a local directory standing in for the bucket.
//!
//! An iPhone backs up three chats (with edits and a deletion), a new Android phone restores them
//! with the typed recovery key alone, both keep syncing incrementally, everything is verified, and
//! a passphrase envelope restores the same key. A video is attached once and forwarded to another
//! chat (stored once); the Android phone has the chats at once and downloads the video when opened.

use std::path::PathBuf;
use std::sync::Arc;

use chatvault::keys::{Argon2Params, PassphraseEnvelope, PassphrasePolicy, RecoveryKey};
use chatvault::local::CacheSetting;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::sync::{Change, Chat, Message};
use chatvault::vault::{CancelToken, DeviceInfo, Vault};

use crate::CliResult;

const CHATS: &[(&str, &str, &[&str])] = &[
    ("family", "Family 👪", &["mum", "dad", "me"]),
    ("climbing", "Climbing crew 🧗", &["ana", "me"]),
    ("landlord", "Landlord", &["mr-smith", "me"]),
];

/// What an app might keep about a video in its own protobuf (duration, width, height).
const VIDEO_PAYLOAD: [u8; 9] = [0x08, 0x9c, 0x01, 0x10, 0x80, 0x0f, 0x18, 0xb8, 0x08];

fn history() -> Vec<Change> {
    let mut changes = Vec::new();
    for (chat_id, title, members) in CHATS {
        changes.push(Change::UpsertChat(Chat {
            chat_id: chat_id.to_string(),
            title: title.to_string(),
            members: members.iter().map(|m| m.to_string()).collect(),
            ..Chat::default()
        }));
        for i in 0..400 {
            let sender = members[i % members.len()];
            changes.push(Change::UpsertMessage(Message {
                chat_id: chat_id.to_string(),
                message_id: format!("{chat_id}-{i}"),
                sender: sender.to_string(),
                sent_at_ms: 1_700_000_000_000 + i as i64 * 60_000,
                text: format!(
                    "Message {i} from {sender}: see you at {} o'clock? 🙂\n\"ok\"",
                    1 + i % 12
                ),
                reply_to: (i > 0).then(|| format!("{chat_id}-{}", i - 1)),
                kind: "text".into(),
                ..Message::default()
            }));
        }
    }
    changes.push(Change::UpsertMessage(Message {
        chat_id: "family".into(),
        message_id: "family-0".into(),
        sender: "mum".into(),
        sent_at_ms: 1_700_000_000_000,
        text: "Dinner at 7? 🍝 (edited)".into(),
        kind: "text".into(),
        ..Message::default()
    }));
    changes.push(Change::DeleteMessage {
        chat_id: "climbing".into(),
        message_id: "climbing-1".into(),
    });
    changes
}

fn device(name: &str, platform: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: platform.into(),
    }
}

pub async fn run(dir: Option<PathBuf>) -> CliResult {
    let root = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("chatvault-demo-{}", std::process::id()))
    });
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let bucket = root.join("bucket");
    let store: Arc<dyn ObjectStore> = Arc::new(DirectoryStore::new(bucket.clone()));

    // ---- Anna's iPhone creates the vault and backs up her chats.
    let recovery_key = RecoveryKey::generate()?;
    let key_text = recovery_key.to_text();
    let iphone = Vault::open(
        store.clone(),
        &root.join("iphone-state"),
        device("Anna's iPhone", "ios"),
        &recovery_key,
    )
    .await?;
    // These devices let chatvault answer questions about content (a new device keeps none:
    // an app's own database is normally the source of truth).
    iphone.set_content_cache(CacheSetting::On { max_bytes: None })?;
    println!("Anna's iPhone creates a vault in {}", bucket.display());
    println!("  recovery key (she writes it down): {}", key_text.as_str());
    let changes = history();
    let count = changes.len();
    iphone.record(changes)?;
    let report = iphone.sync(None, None).await?;
    println!(
        "  backed up {count} operations in {} object(s), {} bytes uploaded",
        report.objects_up, report.bytes_up
    );

    // A 12 MiB "video" (random bytes, as video is incompressible), sent to the family chat and
    // forwarded to the climbing chat.
    let video_path = root.join("holiday.mp4");
    let mut video = vec![0u8; 12 << 20];
    getrandom::fill(&mut video).map_err(|e| format!("random: {e}"))?;
    std::fs::write(&video_path, &video)?;
    let never = CancelToken::new();
    let (attachment, sent) = iphone
        .attach_file(&video_path, "holiday.mp4", "video/mp4", None, &never)
        .await?;
    let (forwarded, again) = iphone
        .attach_file(&video_path, "holiday.mp4", "video/mp4", None, &never)
        .await?;
    let with_video = |chat_id: &str, id: &str, attachment| {
        Change::UpsertMessage(Message {
            chat_id: chat_id.into(),
            message_id: id.into(),
            sender: "me".into(),
            sent_at_ms: 1_750_000_000_000,
            text: "Our holiday 🎬".into(),
            reply_to: None,
            attachments: vec![attachment],
            // The app's own fields, e.g. its protobuf of the video's duration and size.
            kind: "video".into(),
            payload: VIDEO_PAYLOAD.to_vec(),
        })
    };
    iphone.record(vec![
        with_video("family", "family-video", attachment),
        with_video("climbing", "climbing-video", forwarded),
    ])?;
    iphone.sync(None, None).await?;
    println!(
        "  attached a 12 MiB video: {} chunks, {} bytes up; forwarded to a second chat: {} bytes up (stored once)",
        sent.chunks_transferred, sent.bytes_transferred, again.bytes_transferred
    );
    let envelope = PassphraseEnvelope::seal(
        &recovery_key,
        "purple elephants dance at midnight",
        Argon2Params::DEFAULT,
        &PassphrasePolicy::default(),
    )?;
    store
        .put(&format!("{}/passphrase", iphone.vault_id()), envelope)
        .await?;
    println!(
        "  what the bucket holds (the vault id, random device ids and sequence numbers, keyed content ids; sizes padded):"
    );
    for object in store.list("").await? {
        println!("    {} ({} bytes)", object.key, object.size);
    }

    // ---- She switches to Android: the typed key and the bucket are all it needs.
    println!("Her new Android phone restores with the recovery key text alone");
    let typed = key_text.to_lowercase().replace('-', " ");
    let android = Vault::open(
        store.clone(),
        &root.join("android-state"),
        device("Anna's Pixel", "android"),
        &RecoveryKey::parse(&typed)?,
    )
    .await?;
    android.set_content_cache(CacheSetting::On { max_bytes: None })?;
    let report = android.sync(None, None).await?;
    println!(
        "  downloaded {} object(s), {} bytes; applied {} operations",
        report.objects_down, report.bytes_down, report.operations_applied
    );
    for summary in android.chats()? {
        println!(
            "  {} — {} messages ({} bytes), members: {}",
            summary.chat.title,
            summary.message_count,
            summary.message_bytes,
            summary.chat.members.join(", ")
        );
    }
    // The chats are usable now, with the app's own fields; the video downloads when opened.
    let video_message = android
        .messages(Some("family"))?
        .into_iter()
        .find(|m| m.message_id == "family-video")
        .ok_or("the video message did not arrive")?;
    let intact = video_message.payload == VIDEO_PAYLOAD;
    println!(
        "  the video message arrived as kind {:?} with the app's {}-byte payload intact: {intact}",
        video_message.kind,
        video_message.payload.len(),
    );
    if video_message.kind != "video" || !intact {
        return Err("the video message lost its kind or payload".into());
    }
    let references = android.attachments()?;
    println!(
        "  {} attachment reference(s) restored with the messages; nothing downloaded yet",
        references.len()
    );
    if let Some(reference) = references.first() {
        let opened = root.join("android-files").join(&reference.name);
        std::fs::create_dir_all(root.join("android-files"))?;
        let fetched = android
            .download_attachment(reference, &opened, None, &never)
            .await?;
        let identical = std::fs::read(&opened)? == video;
        println!(
            "  opening the video downloads {} bytes; identical to the original: {identical}",
            fetched.bytes_transferred
        );
        if !identical {
            return Err("the downloaded video differs".into());
        }
    }
    let first = android.messages(Some("family"))?;
    if let Some(message) = first.first() {
        println!(
            "  first family message: {}: {}",
            message.sender, message.text
        );
    }

    // ---- Both keep going: only what is new travels.
    android.record(vec![Change::UpsertMessage(Message {
        chat_id: "climbing".into(),
        message_id: "climbing-from-android".into(),
        sender: "me".into(),
        sent_at_ms: 1_800_000_000_000,
        text: "Written on Android, read on the iPhone ✅".into(),
        kind: "text".into(),
        ..Message::default()
    })])?;
    let up = android.sync(None, None).await?;
    let down = iphone.sync(None, None).await?;
    println!(
        "One new message on Android: {} bytes up in {} object(s); the iPhone pulls {} bytes",
        up.bytes_up, up.objects_up, down.bytes_down
    );
    let idle = iphone.sync(None, None).await?;
    println!("An idle sync costs {} request(s)", idle.requests);
    let same = iphone.messages(None)? == android.messages(None)?;
    println!(
        "Both devices hold the same {} messages: {same}",
        android.messages(None)?.len()
    );

    let verified = android.verify().await?;
    println!(
        "verify: {} segments from {} devices authenticated",
        verified.segments, verified.devices
    );
    let envelope = store
        .get(
            &format!("{}/passphrase", android.vault_id()),
            chatvault::format::MAX_OBJECT_LEN as u64,
        )
        .await?
        .ok_or("passphrase envelope missing")?;
    let vault_id = *chatvault::keys::VaultKeys::derive(&recovery_key).vault_id();
    let from_passphrase =
        PassphraseEnvelope::open(&envelope, &vault_id, "purple elephants dance at midnight")?;
    println!(
        "The passphrase envelope unlocks the same recovery key: {}",
        from_passphrase == recovery_key
    );
    if !same {
        return Err("devices diverged".into());
    }
    println!("Done. Everything is in {}", root.display());
    Ok(())
}
