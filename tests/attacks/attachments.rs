//! Attacks on attachment chunks. Sync never reads them; `verify` checks that every chunk a
//! live message references is listed with its expected size (one LIST, no content: reading
//! every attachment would cost the whole vault's bytes), and a download authenticates each
//! chunk and the whole content.

use chatvault::{DecodeProblem, Error, IntegrityProblem};

use crate::harness::*;
use crate::template::template;

/// Sync is untouched; `verify` says `verify`; the download says `download`.
fn chunk_attack(verify: Outcome, download: Outcome) -> Expect {
    Expect {
        old_verify: verify.clone(),
        fresh_verify: verify,
        // A device that never synced knows no message referencing the attachment.
        unsynced_verify: Outcome::Ok,
        download: Some(download),
        ..Expect::nothing()
    }
}

/// The size a full chunk object has: header, chunk, tag.
fn full_chunk_len() -> u64 {
    8 + u64::from(template().attachment.chunk_size) + 16
}

/// A download that meets a chunk of the wrong size: refused before decryption.
fn download_refuses_size() -> Outcome {
    Outcome::err(
        "Decode { Truncated | TooLarge } or WrongSize or Store(TooLarge)",
        |e| {
            matches!(
                e,
                Error::Decode {
                    problem: DecodeProblem::Truncated { .. } | DecodeProblem::TooLarge { .. },
                    ..
                } | Error::Integrity(IntegrityProblem::WrongSize { .. })
                    | Error::Store(chatvault::store::StoreError::TooLarge { .. })
            )
        },
    )
}

fn download_finds_missing(key: &str) -> Outcome {
    let name = relative(key);
    Outcome::err(
        format!("MissingObject {{ ..{name} }}"),
        move |e| matches!(e, Error::Integrity(IntegrityProblem::MissingObject { name: n }) if n.ends_with(&name)),
    )
}

/// Same size, other bytes: only the download (AEAD) can tell.
pub fn flipped_bit_in_an_attachment_chunk() -> Attack {
    attack(
        "flipped bit in an attachment chunk",
        |b| Box::pin(async move { b.flip_middle(&b.t.chunks[1]).await }),
        chunk_attack(Outcome::Ok, auth_failed()),
    )
}

/// Two full chunks of one content exchange places: same sizes, so only the download (the
/// chunk index is in each chunk's nonce) can tell.
pub fn two_attachment_chunks_swapped() -> Attack {
    attack(
        "two attachment chunks swapped",
        |b| Box::pin(async move { b.swap(&b.t.chunks[0], &b.t.chunks[1]).await }),
        chunk_attack(Outcome::Ok, auth_failed()),
    )
}

pub fn attachment_chunk_cut_short() -> Attack {
    let t = template();
    let full = full_chunk_len();
    attack(
        "attachment chunk cut short",
        |b| {
            Box::pin(async move {
                let len = b.get(&b.t.chunks[1]).await.len();
                b.truncate(&b.t.chunks[1], len / 2).await
            })
        },
        chunk_attack(
            wrong_size(&t.chunks[1], full, full / 2),
            download_refuses_size(),
        ),
    )
}

pub fn attachment_chunk_emptied() -> Attack {
    let t = template();
    attack(
        "attachment chunk emptied",
        |b| Box::pin(async move { b.put(&b.t.chunks[1], Vec::new()).await }),
        chunk_attack(
            wrong_size(&t.chunks[1], full_chunk_len(), 0),
            download_refuses_size(),
        ),
    )
}

pub fn bytes_appended_to_an_attachment_chunk() -> Attack {
    let t = template();
    let full = full_chunk_len();
    attack(
        "bytes appended to an attachment chunk",
        |b| {
            Box::pin(async move {
                let mut bytes = b.get(&b.t.chunks[1]).await;
                bytes.extend_from_slice(&[0; 10]);
                b.put(&b.t.chunks[1], bytes).await
            })
        },
        chunk_attack(
            wrong_size(&t.chunks[1], full, full + 10),
            download_refuses_size(),
        ),
    )
}

pub fn attachment_chunk_deleted() -> Attack {
    let t = template();
    attack(
        "attachment chunk deleted",
        |b| Box::pin(async move { b.delete(&b.t.chunks[1]).await }),
        chunk_attack(
            missing_object(&t.chunks[1]),
            download_finds_missing(&t.chunks[1]),
        ),
    )
}

/// A chunk grown to 512 MiB (sparse): the listing's size gives it away to `verify`; the
/// download refuses it without reading it whole.
pub fn oversized_attachment_chunk() -> Attack {
    let t = template();
    Attack {
        directory_only: true,
        ..attack(
            "an attachment chunk grown to 512 MiB",
            |b| Box::pin(async move { sparse(&b, &b.t.chunks[1], HUGE) }),
            chunk_attack(
                wrong_size(&t.chunks[1], full_chunk_len(), HUGE),
                download_refuses_size(),
            ),
        )
    }
}
