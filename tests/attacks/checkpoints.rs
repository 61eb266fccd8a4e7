//! Attacks on checkpoints: their indexes and the packs holding their blocks. Devices that
//! already know a checkpoint do not read it again; a new device restores from the newest one,
//! and `verify` reads it whole.

use crate::harness::*;
use crate::template::template;

pub fn flipped_bit_in_the_newest_checkpoint_index() -> Attack {
    attack(
        "flipped bit in the newest checkpoint index",
        |b| Box::pin(async move { b.flip_middle(&b.t.newest_checkpoint).await }),
        Expect::restorers(auth_failed()),
    )
}

pub fn newest_checkpoint_index_cut_short() -> Attack {
    attack(
        "newest checkpoint index cut short",
        |b| {
            Box::pin(async move {
                let len = b.get(&b.t.newest_checkpoint).await.len();
                b.truncate(&b.t.newest_checkpoint, len / 2).await
            })
        },
        Expect::restorers(cut_short()),
    )
}

pub fn newest_checkpoint_index_emptied() -> Attack {
    attack(
        "newest checkpoint index emptied",
        |b| Box::pin(async move { b.put(&b.t.newest_checkpoint, Vec::new()).await }),
        Expect::restorers(empty_object()),
    )
}

/// A new device opens every listed index to learn which is newest, so a damaged superseded
/// one stops it; `verify` must find what would stop a new device.
pub fn flipped_bit_in_a_superseded_checkpoint_index() -> Attack {
    attack(
        "flipped bit in a superseded checkpoint index",
        |b| Box::pin(async move { b.flip_middle(&b.t.older_checkpoint).await }),
        Expect::restorers(auth_failed()),
    )
}

/// The newest checkpoint and the segments it covers vanish: the older checkpoint is served as
/// if it were the newest, and what lies between is gone.
pub fn stale_checkpoint_served_as_the_newest() -> Attack {
    let t = template();
    // `c` wrote nothing after the newest checkpoint, so a device that applied its covered
    // segments sees it rolled back to the older checkpoint's coverage; `a` and `b` have newer
    // segments, so they show a gap. Which a device names first depends on the ids.
    let c_seqs: Vec<u64> = t
        .covered
        .iter()
        .filter(|k| k.contains(&t.c))
        .map(|k| t.seq_of(k))
        .collect();
    let (c_first, c_last) = (*c_seqs.iter().min().unwrap(), *c_seqs.iter().max().unwrap());
    let seen_more = either(
        rolled_back(&t.c, c_last, c_first - 1),
        any_missing_segment(),
    );
    Attack {
        expect: Expect {
            old_sync: seen_more.clone(),
            lagging_sync: seen_more.clone(),
            old_verify: seen_more,
            ..Expect::everyone(any_missing_segment())
        },
        ..stale_checkpoint_attack()
    }
}

fn stale_checkpoint_attack() -> Attack {
    attack(
        "a stale checkpoint served as the newest",
        |b| {
            Box::pin(async move {
                b.delete(&b.t.newest_checkpoint).await;
                for key in &b.t.covered {
                    b.delete(key).await;
                }
            })
        },
        Expect::everyone(any_missing_segment()),
    )
}

/// Only the newest index goes: the older checkpoint and the segments after it still hold
/// everything, so nothing is lost (a control).
pub fn newest_checkpoint_index_deleted() -> Attack {
    attack(
        "newest checkpoint index deleted, its segments kept (control)",
        |b| Box::pin(async move { b.delete(&b.t.newest_checkpoint).await }),
        Expect::nothing(),
    )
}

pub fn checkpoint_replayed_under_a_new_name() -> Attack {
    attack(
        "a checkpoint index replayed under a new name",
        |b| {
            Box::pin(async move {
                let next = next_checkpoint_name(&b);
                b.copy(&b.t.newest_checkpoint, &next).await
            })
        },
        Expect::everyone(auth_failed()),
    )
}

pub fn checkpoint_from_another_vault() -> Attack {
    attack(
        "a checkpoint index from another vault",
        |b| {
            Box::pin(async move {
                let (key, bytes) = b.t.other("/checkpoints/");
                let name = key.split_once('/').unwrap().1;
                b.put(&b.t.key_of(name), bytes).await
            })
        },
        Expect::everyone(auth_failed()),
    )
}

pub fn oversized_checkpoint_index() -> Attack {
    let t = template();
    let next = next_name(&t.newest_checkpoint);
    Attack {
        directory_only: true,
        ..attack(
            "a 512 MiB object under a checkpoint name",
            |b| {
                Box::pin(async move {
                    let next = next_checkpoint_name(&b);
                    sparse(&b, &next, HUGE)
                })
            },
            Expect::everyone(oversized(&next)),
        )
    }
}

/// The name the newest checkpoint's writer would give its next checkpoint (with a tag it did
/// not draw).
fn next_checkpoint_name(b: &Bucket) -> String {
    next_name(&b.t.newest_checkpoint)
}

/// `<prefix>/<seq + 1>-<another tag>` for the checkpoint key `<prefix>/<seq>-<tag>`.
fn next_name(key: &str) -> String {
    let (prefix, name) = key.rsplit_once('/').unwrap();
    let (seq, _) = name.split_once('-').unwrap();
    format!(
        "{prefix}/{:016x}-{:016x}",
        u64::from_str_radix(seq, 16).unwrap() + 1,
        0x0e0e_0e0e_0e0e_0e0eu64
    )
}

// Packs of the newest checkpoint.

pub fn flipped_bit_in_a_pack_block() -> Attack {
    attack(
        "flipped bit in a pack's block",
        |b| {
            Box::pin(async move {
                let (pack, _) = b.t.newest_pack(0);
                let block = b.t.newest_index.chats.iter().find(|c| c.pack == 0).unwrap();
                b.flip(&pack, (block.offset + block.length / 2) as usize)
                    .await
            })
        },
        Expect::restorers(replaced_block()),
    )
}

/// The zero bytes after a pack's last block carry nothing: flipping one changes no content
/// (a control; the size is unchanged, so nothing can be told).
pub fn flipped_bit_in_pack_padding() -> Attack {
    attack(
        "flipped bit in a pack's padding (control)",
        |b| {
            Box::pin(async move {
                let (pack, size) = b.t.newest_pack(0);
                let end =
                    b.t.newest_index
                        .chats
                        .iter()
                        .filter(|c| c.pack == 0)
                        .map(|c| c.offset + c.length)
                        .max()
                        .unwrap();
                assert!(end < size, "the pack has padding after its blocks");
                b.flip(&pack, (size - 1) as usize).await
            })
        },
        Expect::nothing(),
    )
}

pub fn bytes_appended_to_a_pack() -> Attack {
    let (pack, size) = template().newest_pack(0);
    attack(
        "bytes appended to a pack",
        |b| {
            Box::pin(async move {
                let (pack, _) = b.t.newest_pack(0);
                let mut bytes = b.get(&pack).await;
                bytes.extend_from_slice(&[0xa5; 100]);
                b.put(&pack, bytes).await
            })
        },
        Expect::restorers(wrong_size(&pack, size, size + 100)),
    )
}

/// One byte short: every block still lies inside the pack, only the size tells.
pub fn pack_cut_short_by_one_byte() -> Attack {
    let (pack, size) = template().newest_pack(0);
    attack(
        "pack cut short by one byte",
        |b| {
            Box::pin(async move {
                let (pack, size) = b.t.newest_pack(0);
                b.truncate(&pack, (size - 1) as usize).await
            })
        },
        Expect::restorers(wrong_size(&pack, size, size - 1)),
    )
}

pub fn pack_emptied() -> Attack {
    let (pack, size) = template().newest_pack(0);
    attack(
        "pack emptied",
        |b| Box::pin(async move { b.put(&b.t.newest_pack(0).0, Vec::new()).await }),
        Expect::restorers(wrong_size(&pack, size, 0)),
    )
}

/// The newest index names a pack that is not in the bucket.
pub fn pack_the_index_names_deleted() -> Attack {
    let (pack, _) = template().newest_pack(0);
    attack(
        "a pack the newest index names deleted",
        |b| Box::pin(async move { b.delete(&b.t.newest_pack(0).0).await }),
        Expect::restorers(missing_object(&pack)),
    )
}

/// The size the index promises catches a pack of another size before any block is opened;
/// one of the same size fails authentication.
fn substituted_pack(bytes_len: u64) -> Outcome {
    let (pack, size) = template().newest_pack(0);
    if bytes_len == size {
        auth_failed()
    } else {
        wrong_size(&pack, size, bytes_len)
    }
}

pub fn two_packs_swapped() -> Attack {
    let t = template();
    let older = t
        .older_only_packs
        .first()
        .expect("the older checkpoint has a pack of its own");
    let older_size = std::fs::metadata(t.bucket.join(older)).unwrap().len();
    attack(
        "the newest pack swapped with an older one",
        |b| {
            Box::pin(async move {
                let (pack, _) = b.t.newest_pack(0);
                b.swap(&pack, &b.t.older_only_packs[0]).await
            })
        },
        Expect::restorers(substituted_pack(older_size)),
    )
}

/// Two blocks of the same length exchange places inside their pack.
pub fn two_blocks_swapped() -> Attack {
    attack(
        "two blocks of a pack swapped",
        |b| {
            Box::pin(async move {
                let (pack, _) = b.t.newest_pack(0);
                let blocks: Vec<_> =
                    b.t.newest_index
                        .chats
                        .iter()
                        .filter(|c| c.pack == 0)
                        .collect();
                let (x, y) = blocks
                    .iter()
                    .enumerate()
                    .find_map(|(i, x)| {
                        blocks[i + 1..]
                            .iter()
                            .find(|y| y.length == x.length)
                            .map(|y| (*x, *y))
                    })
                    .expect("two blocks of one length (the twin chats)");
                let mut bytes = b.get(&pack).await;
                let (xs, ys) = (x.offset as usize, y.offset as usize);
                let len = x.length as usize;
                let block_x = bytes[xs..xs + len].to_vec();
                bytes.copy_within(ys..ys + len, xs);
                bytes[ys..ys + len].copy_from_slice(&block_x);
                b.put(&pack, bytes).await
            })
        },
        Expect::restorers(replaced_block()),
    )
}

pub fn pack_from_another_vault() -> Attack {
    let foreign = template().other("/packs/").1.len() as u64;
    attack(
        "a pack from another vault under the newest pack's name",
        |b| {
            Box::pin(async move {
                let (_, bytes) = b.t.other("/packs/");
                b.put(&b.t.newest_pack(0).0, bytes).await
            })
        },
        Expect::restorers(substituted_pack(foreign)),
    )
}

/// The pack grown to 512 MiB (sparse): refused by the size the index promises, unread.
pub fn oversized_pack() -> Attack {
    let (pack, _) = template().newest_pack(0);
    Attack {
        directory_only: true,
        ..attack(
            "a pack grown to 512 MiB",
            |b| Box::pin(async move { sparse(&b, &b.t.newest_pack(0).0, HUGE) }),
            Expect::restorers(oversized(&pack)),
        )
    }
}

/// What garbage collection does anyway (a control).
pub fn superseded_pack_deleted() -> Attack {
    attack(
        "a pack only a superseded checkpoint lists deleted (control)",
        |b| Box::pin(async move { b.delete(&b.t.older_only_packs[0]).await }),
        Expect::nothing(),
    )
}
