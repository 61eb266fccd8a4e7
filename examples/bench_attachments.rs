//! Attachment benchmark: upload and download throughput of one file through chatvault, as a
//! ratio to raw PUT and GET of the same bytes on the same store.
//!
//! `cargo run --release --example bench_attachments -- [STORE_URL] [MIB]`
//!
//! STORE_URL defaults to a directory store in a temporary folder; an `s3://` URL takes its
//! credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. MIB defaults to 256.
//!
//! Raw baselines: one PUT (and one GET) of the whole file as a single object, and the same bytes
//! as sequential 4 MiB objects (the request pattern chatvault uses, without the cryptography), and
//! those GETs written to a file and flushed (what any download to a file must also do).
//! chatvault figures include everything an app waits for: the hashing pass that names the
//! content, encryption, padding, the listing that finds chunks already stored, and on download
//! the check of the whole file against its content id.

use std::sync::Arc;
use std::time::Instant;

use chatvault::attachment::DEFAULT_CHUNK_SIZE;
use chatvault::keys::RecoveryKey;
use chatvault::store::{DirectoryStore, ObjectStore};
use chatvault::vault::{CancelToken, DeviceInfo, Vault};

fn rate(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / seconds
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let temp = tempfile::tempdir()?;
    let (store, label): (Arc<dyn ObjectStore>, String) = match args.first() {
        Some(url) if url != "-" => (chatvault::store::open_store(url)?, url.clone()),
        _ => (
            Arc::new(DirectoryStore::new(temp.path().join("bucket"))),
            "directory store (temp dir)".into(),
        ),
    };
    let mib: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(256);
    let size = mib << 20;
    let run = format!("bench-{}", std::process::id());

    let mut bytes = vec![0u8; size];
    getrandom::fill(&mut bytes).map_err(|e| format!("random: {e}"))?;
    let path = temp.path().join("video.bin");
    std::fs::write(&path, &bytes)?;

    // Raw: one object.
    let start = Instant::now();
    store
        .put(&format!("{run}/raw-single"), bytes.clone())
        .await?;
    let raw_put = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let back = store.get(&format!("{run}/raw-single"), size as u64).await?;
    let raw_get = start.elapsed().as_secs_f64();
    assert_eq!(back.as_deref().map(<[u8]>::len), Some(size));
    drop(back);
    // Raw: sequential 4 MiB objects.
    let chunk = DEFAULT_CHUNK_SIZE as usize;
    let start = Instant::now();
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        store
            .put(&format!("{run}/raw-chunks/{i:08x}"), piece.to_vec())
            .await?;
    }
    let raw_chunks_put = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..size.div_ceil(chunk) {
        store
            .get(&format!("{run}/raw-chunks/{i:08x}"), chunk as u64)
            .await?;
    }
    let raw_chunks_get = start.elapsed().as_secs_f64();
    // Raw GETs written to a file and flushed to disk: what any download to a file must do.
    let start = Instant::now();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(temp.path().join("raw.bin"))?;
        for i in 0..size.div_ceil(chunk) {
            if let Some(piece) = store
                .get(&format!("{run}/raw-chunks/{i:08x}"), chunk as u64)
                .await?
            {
                file.write_all(&piece)?;
            }
        }
        file.sync_all()?;
    }
    let raw_chunks_to_file = start.elapsed().as_secs_f64();
    std::fs::remove_file(temp.path().join("raw.bin"))?;
    drop(bytes);

    let key = RecoveryKey::generate()?;
    let info = DeviceInfo {
        name: "bench".into(),
        platform: "linux".into(),
    };
    let vault = Vault::open(store.clone(), &temp.path().join("state"), info, &key).await?;
    let never = CancelToken::new();
    let start = Instant::now();
    let (attachment, report) = vault
        .attach_file(&path, "video.bin", "video/mp4", None, &never)
        .await?;
    let upload = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (_, again) = vault
        .attach_file(&path, "video.bin", "video/mp4", None, &never)
        .await?;
    let dedup = start.elapsed().as_secs_f64();
    let out = temp.path().join("restored.bin");
    let start = Instant::now();
    vault
        .download_attachment(&attachment, &out, None, &never)
        .await?;
    let download = start.elapsed().as_secs_f64();
    assert_eq!(std::fs::metadata(&out)?.len(), size as u64);

    println!(
        "store: {label}; file: {mib} MiB; chunk: {} MiB",
        chunk >> 20
    );
    println!(
        "raw PUT, one object:        {:8.1} MiB/s   raw GET: {:8.1} MiB/s",
        rate(size, raw_put),
        rate(size, raw_get)
    );
    println!(
        "raw PUT, 4 MiB objects:     {:8.1} MiB/s   raw GET: {:8.1} MiB/s",
        rate(size, raw_chunks_put),
        rate(size, raw_chunks_get)
    );
    println!(
        "raw GET, 4 MiB objects to a file (write + fsync): {:8.1} MiB/s",
        rate(size, raw_chunks_to_file)
    );
    println!(
        "chatvault attach (upload):  {:8.1} MiB/s   download: {:8.1} MiB/s",
        rate(size, upload),
        rate(size, download)
    );
    println!(
        "ratio to raw one object:    upload {:.2}   download {:.2}",
        raw_put / upload,
        raw_get / download
    );
    println!(
        "ratio to raw 4 MiB objects: upload {:.2}   download {:.2}",
        raw_chunks_put / upload,
        raw_chunks_get / download
    );
    println!(
        "download ratio to raw GETs written to a file: {:.2}",
        raw_chunks_to_file / download
    );
    println!(
        "stored {} bytes for {} ({:.2}% overhead: padding and per-chunk header and tag)",
        report.bytes_transferred,
        size,
        (report.bytes_transferred as f64 / size as f64 - 1.0) * 100.0
    );
    println!(
        "attaching the same file again: {:.2} s, {} bytes sent (deduplicated)",
        dedup, again.bytes_transferred
    );

    for object in store.list(&format!("{run}/")).await? {
        store.delete(&object.key).await?;
    }
    Ok(())
}
