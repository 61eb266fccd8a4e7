//! Keeping the bucket sound and small: verify, checkpoints and garbage collection.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::*;

impl Vault {
    /// Fetches and authenticates everything in the bucket: the newest checkpoint (index, every
    /// pack and chat block) and every segment after it, checking every device's chain from the
    /// checkpoint (or from its first segment), every claim segments make about each other, and
    /// that nothing this device already applied was rolled back; and that every chunk of every
    /// attachment referenced by this device's messages is present. Changes nothing but the cache
    /// of known checkpoints.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut scratch = SyncReport::default();
        let listed = self.list_vault().await?;
        let names = segment_names(&listed);
        let mut checkpoint = self.newest_checkpoint(&listed, &mut scratch).await?;
        let base = coverage(checkpoint.as_ref().map(|c| c.covered.as_slice()));
        let applied = lock(&self.local)?.heads()?;
        plan_pull(&names, &applied, &base)?;

        let mut report = VerifyReport::default();
        let mut chat_keys = lock(&self.chat_keys)?.clone();
        let mut chain: BTreeMap<DeviceId, Head> = BTreeMap::new();
        if let Some(checkpoint) = checkpoint.as_mut() {
            let index = self.take_index(checkpoint, &mut scratch).await?;
            let covered = &checkpoint.covered;
            for (key_id, chat_id, key) in &index.grants {
                chat_keys.insert(*key_id, chat_id, key.clone())?;
            }
            let mut operations = 0;
            self.for_each_pack(&index, &chat_keys, &mut scratch, |ops| {
                operations += ops.len() as u64;
                Ok(())
            })
            .await?;
            report.operations += operations;
            report.checkpoints = 1;
            chain = covered.iter().map(|h| (h.device, *h)).collect();
        }
        let fetches = plan_pull(&names, &chain, &base)?;
        let mut segments = Vec::new();
        for fetch in &fetches {
            let (segment, _) = self.fetch(fetch, &mut scratch).await?;
            check_chain(chain.get(&fetch.device), &segment)?;
            chain.insert(fetch.device, segment.head);
            for (key_id, chat_id, key) in &segment.grants {
                chat_keys.insert(*key_id, chat_id, key.clone())?;
            }
            segments.push(segment);
        }
        let available: BTreeMap<DeviceId, u64> = chain
            .iter()
            .map(|(device, head)| (*device, head.seq))
            .collect();
        let mut hashes: BTreeMap<(DeviceId, u64), [u8; 32]> = segments
            .iter()
            .map(|s| ((s.head.device, s.head.seq), s.head.hash))
            .collect();
        if let Some(NewestCheckpoint { covered, .. }) = &checkpoint {
            hashes.extend(covered.iter().map(|h| ((h.device, h.seq), h.hash)));
        }
        for (device, head) in &applied {
            let below_checkpoint = base.get(device).is_some_and(|b| head.seq < *b);
            if !below_checkpoint && hashes.get(&(*device, head.seq)) != Some(&head.hash) {
                return Err(Error::Integrity(crate::IntegrityProblem::ChainBroken {
                    device: device.to_hex(),
                    seq: head.seq,
                }));
            }
        }
        report.devices = chain.len() as u64;
        for segment in &segments {
            check_seen(segment, &available, |device, seq| {
                hashes.get(&(device, seq)).copied()
            })?;
            report.operations += open_blocks(&self.keys, &chat_keys, segment)?.len() as u64;
            report.segments += 1;
        }
        report.attachments = self.check_attachments_present().await?;
        Ok(report)
    }

    /// Checks that every chunk of every attachment this device's messages reference is in the
    /// bucket with its expected size (one LIST; the content itself is authenticated when it is
    /// downloaded). Returns the number of contents checked.
    pub(super) async fn check_attachments_present(&self) -> Result<u64> {
        let Some(referenced) = self.referenced_attachments()? else {
            return Ok(0);
        };
        if referenced.is_empty() {
            return Ok(0);
        }
        let root = self.attachments_prefix();
        let sizes: BTreeMap<String, u64> = self
            .store
            .list(&root)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.key.strip_prefix(&root)?.to_owned(), o.size)))
            .collect();
        for attachment in referenced.values() {
            for index in 0..attachment.chunk_count() {
                let name = attachment.chunk_name(index);
                let expected = crate::attachment::stream::chunk_object_len(
                    attachment.size,
                    attachment.chunk_size,
                    index,
                );
                match sizes.get(&name) {
                    Some(&size) if size == expected => {}
                    Some(_) => {
                        return Err(Error::Integrity(crate::IntegrityProblem::Misplaced {
                            name,
                        }));
                    }
                    None => {
                        return Err(Error::Integrity(crate::IntegrityProblem::MissingObject {
                            name,
                        }));
                    }
                }
            }
        }
        Ok(referenced.len() as u64)
    }

    /// Attachments live messages reference, or `None` when the content cache does not hold every
    /// chat (so which attachments are referenced is not known here).
    fn referenced_attachments(
        &self,
    ) -> Result<Option<BTreeMap<crate::attachment::ContentId, Attachment>>> {
        match lock(&self.local)?.referenced_attachments() {
            Ok(referenced) => Ok(Some(referenced)),
            Err(Error::NotCached { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Deletes what the newest checkpoint made redundant, once it is older than `grace_ms`:
    /// the segments it covers and older checkpoints with their packs. Without locks: a device
    /// still reading those objects has had `grace_ms` to finish, and a device that falls behind
    /// starts again from the checkpoint. Returns the number of objects deleted.
    ///
    /// It also deletes attachment content that no live message references any more and whose
    /// chunks are all older than `grace_ms`: content of deleted messages and chats, and chunks
    /// of uploads abandoned half way. The grace period protects an upload in progress on another
    /// device, whose message is not synced yet. That needs every device's references: only a
    /// device whose content cache holds every chat, and that has applied every segment in the
    /// bucket (call [`sync`](Self::sync) first), deletes attachment content; otherwise none is.
    ///
    /// It pushes what this device recorded first, but does not pull: pulled changes go to the
    /// app's listener, which only `sync` has.
    pub async fn collect_garbage(&self, grace_ms: u64) -> Result<u64> {
        let _guard = self.sync_lock.lock().await;
        let mut scratch = SyncReport::default();
        let never = CancelToken::new();
        self.push(None, &mut scratch, &never).await?;
        let log = self.collect_log_garbage(grace_ms).await?;
        let attachments = if self.has_applied_everything().await? {
            self.collect_attachment_garbage(grace_ms).await?
        } else {
            0
        };
        Ok(log + attachments)
    }

    /// Whether this device has applied every segment the bucket lists.
    async fn has_applied_everything(&self) -> Result<bool> {
        let mut scratch = SyncReport::default();
        let listed = self.list_vault().await?;
        let names = segment_names(&listed);
        let checkpoint = self.newest_checkpoint(&listed, &mut scratch).await?;
        let base = coverage(checkpoint.as_ref().map(|c| c.covered.as_slice()));
        let applied = lock(&self.local)?.heads()?;
        Ok(plan_pull(&names, &applied, &base)?.is_empty())
    }

    /// Deletes unreferenced attachment chunks older than `grace_ms` (the caller holds the sync
    /// lock and has just synced).
    pub(super) async fn collect_attachment_garbage(&self, grace_ms: u64) -> Result<u64> {
        // Without every chat's content nothing can be shown unreferenced: delete nothing.
        let Some(referenced) = self.referenced_attachments()? else {
            return Ok(0);
        };
        let root = self.attachments_prefix();
        let listed = self.store.list(&root).await?;
        let cutoff = now_ms().saturating_sub(grace_ms);
        // Per content: its chunk names, and whether every one is old enough.
        let mut candidates: BTreeMap<crate::attachment::ContentId, (Vec<String>, bool)> =
            BTreeMap::new();
        for object in &listed {
            let Some(name) = object.key.strip_prefix(&root) else {
                continue;
            };
            let Some((content_id, _)) = crate::attachment::parse_chunk_name(name) else {
                continue; // not ours: leave it
            };
            if referenced.contains_key(&content_id) {
                continue;
            }
            let old = object.modified_ms.is_some_and(|at| at <= cutoff);
            let entry = candidates.entry(content_id).or_insert((Vec::new(), true));
            entry.0.push(object.key.clone());
            entry.1 &= old;
        }
        let mut deleted = 0;
        for (keys, all_old) in candidates.into_values() {
            if !all_old {
                continue;
            }
            for key in keys {
                self.store.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The segment, checkpoint and pack part of [`collect_garbage`](Self::collect_garbage).
    /// Returns the objects deleted.
    pub(super) async fn collect_log_garbage(&self, grace_ms: u64) -> Result<u64> {
        let mut scratch = SyncReport::default();
        let listed = self.list_vault().await?;
        let Some(mut checkpoint) = self.newest_checkpoint(&listed, &mut scratch).await? else {
            return Ok(0);
        };
        if now_ms() < checkpoint.created_at_ms.saturating_add(grace_ms) {
            return Ok(0);
        }
        // Checkpoints keep unchanged chats' blocks where they lie: every pack the newest index
        // references stays, whichever checkpoint wrote it.
        let index = self.take_index(&mut checkpoint, &mut scratch).await?;
        let referenced: std::collections::BTreeSet<&str> =
            index.packs.iter().map(|(name, _)| name.as_str()).collect();
        let NewestCheckpoint {
            name: newest,
            covered,
            ..
        } = checkpoint;
        let base = coverage(Some(&covered));
        let Some(newest_id) = parse_checkpoint_name(&newest) else {
            return Ok(0);
        };
        // Packs are written before their index, so packs without a listed index may belong to a
        // checkpoint another device is writing right now: only packs of a listed, superseded
        // checkpoint, or of an attempt its writer has since replaced, are redundant.
        let indexes: Vec<(DeviceId, u64)> = listed
            .iter()
            .filter_map(|o| parse_checkpoint_name(&o.key))
            .collect();
        let pack_is_redundant = |key: &str| {
            let Some((device, seq, _)) = parse_pack_name(key) else {
                return false;
            };
            !referenced.contains(key)
                && (device, seq) != newest_id
                && indexes.iter().any(|(d, s)| *d == device && *s >= seq)
        };
        let mut deleted = 0;
        for object in &listed {
            let redundant = if let Some((device, seq)) = parse_segment_name(&object.key) {
                base.get(&device).is_some_and(|covered| seq <= *covered)
            } else if object.key.starts_with(CHECKPOINTS_PREFIX) {
                object.key != newest
            } else {
                pack_is_redundant(&object.key)
            };
            if redundant {
                self.store
                    .delete(&format!("{}{}", self.prefix(), object.key))
                    .await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// How old the newest checkpoint must be before a sync deletes what it replaced (7 days).
pub(super) const AUTO_GC_GRACE_MS: u64 = 7 * 24 * 3_600_000;
