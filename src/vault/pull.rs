//! Pulling: listing the vault, starting from the newest checkpoint when that is cheaper, and
//! fetching and applying other devices' segments as they arrive.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::*;

impl Vault {
    /// One LIST of the whole vault prefix, keys made relative to it.
    pub(super) async fn list_vault(&self) -> Result<Vec<ObjectInfo>> {
        let prefix = self.prefix();
        let listed = self.store.list(&prefix).await?;
        Ok(listed
            .into_iter()
            .map(|info| ObjectInfo {
                key: info
                    .key
                    .strip_prefix(&prefix)
                    .unwrap_or(&info.key)
                    .to_owned(),
                size: info.size,
                modified_ms: info.modified_ms,
            })
            .collect())
    }

    /// The newest checkpoint listed (the one covering the most segments), after learning the
    /// coverage of any checkpoint this device has not seen (one GET each, once) and forgetting
    /// those no longer listed.
    pub(super) async fn newest_checkpoint(
        &self,
        listed: &[ObjectInfo],
        report: &mut SyncReport,
    ) -> Result<Option<NewestCheckpoint>> {
        let names: Vec<&str> = listed
            .iter()
            .map(|i| i.key.as_str())
            .filter(|k| k.starts_with(CHECKPOINTS_PREFIX))
            .collect();
        let mut known = lock(&self.local)?.known_checkpoints()?;
        let mut fetched = BTreeMap::new();
        for name in &names {
            if known.contains_key(*name) {
                continue;
            }
            let index = self.fetch_checkpoint_index(name, report).await?;
            lock(&self.local)?.transaction(|tx| {
                local::note_checkpoint(tx, name, &index.covered, index.created_at_ms)
            })?;
            known.insert(
                (*name).to_owned(),
                (index.covered.clone(), index.created_at_ms),
            );
            fetched.insert((*name).to_owned(), index);
        }
        let gone: Vec<String> = known
            .keys()
            .filter(|k| !names.contains(&k.as_str()))
            .cloned()
            .collect();
        if !gone.is_empty() {
            lock(&self.local)?.transaction(|tx| {
                gone.iter()
                    .try_for_each(|name| local::forget_checkpoint(tx, name))
            })?;
        }
        Ok(known
            .into_iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .max_by_key(|(name, (covered, _))| {
                (covered.iter().map(|h| h.seq).sum::<u64>(), name.clone())
            })
            .map(|(name, (covered, created_at_ms))| NewestCheckpoint {
                index: fetched.remove(&name),
                name,
                covered,
                created_at_ms,
            }))
    }

    /// GETs an object the vault's own records say exists; its absence is an integrity problem.
    pub(super) async fn get_listed(&self, name: &str, report: &mut SyncReport) -> Result<Vec<u8>> {
        let object = self
            .store
            .get(&format!("{}{name}", self.prefix()))
            .await?
            .ok_or_else(|| {
                Error::Integrity(crate::IntegrityProblem::MissingObject {
                    name: name.to_owned(),
                })
            })?;
        report.objects_down += 1;
        report.bytes_down += object.len() as u64;
        Ok(object)
    }

    pub(super) async fn fetch_checkpoint_index(
        &self,
        name: &str,
        report: &mut SyncReport,
    ) -> Result<CheckpointIndex> {
        let object = self.get_listed(name, report).await?;
        open_checkpoint_index(&self.keys, name, &object)
    }

    /// The checkpoint's index: the one `newest_checkpoint` already fetched, or a fresh GET.
    pub(super) async fn take_index(
        &self,
        checkpoint: &mut NewestCheckpoint,
        report: &mut SyncReport,
    ) -> Result<CheckpointIndex> {
        match checkpoint.index.take() {
            Some(index) => Ok(index),
            None => self.fetch_checkpoint_index(&checkpoint.name, report).await,
        }
    }

    /// Fetches every pack of a checkpoint, [`PACK_PREFETCH`] GETs in flight, and hands each chat
    /// block's operations to `each` in index order of packs (one block, at most about 4 MiB of
    /// operations, opened at a time; at most `PACK_PREFETCH + 1` packs of about 8 MiB held).
    pub(super) async fn for_each_pack(
        &self,
        index: &CheckpointIndex,
        chat_keys: &ChatKeys,
        report: &mut SyncReport,
        mut each: impl FnMut(Vec<Operation>) -> Result<()>,
    ) -> Result<()> {
        let names: Vec<String> = index.packs.iter().map(|(name, _)| name.clone()).collect();
        let mut arriving = futures_util::stream::iter(names)
            .map(|pack_name| async move {
                let mut counted = SyncReport::default();
                let pack = self.get_listed(&pack_name, &mut counted).await;
                (pack, counted)
            })
            .buffered(PACK_PREFETCH);
        let mut pack_number = 0;
        while let Some((pack, counted)) = arriving.next().await {
            let pack = pack?;
            report.objects_down += counted.objects_down;
            report.bytes_down += counted.bytes_down;
            let pack_name = &index.packs[pack_number].0;
            for (block, entry) in index.chats.iter().enumerate() {
                if entry.pack == pack_number {
                    let bytes = pack
                        .get(entry.offset as usize..(entry.offset + entry.length) as usize)
                        .ok_or_else(|| {
                            Error::Integrity(crate::IntegrityProblem::Misplaced {
                                name: pack_name.clone(),
                            })
                        })?;
                    each(open_block(&self.keys, chat_keys, index, block, bytes)?)?;
                }
            }
            pack_number += 1;
        }
        Ok(())
    }

    /// Applies a checkpoint's state: every pack, then the covered heads.
    pub(super) async fn apply_checkpoint(
        &self,
        checkpoint: &mut NewestCheckpoint,
        listener: Option<&dyn ChangeListener>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let index = self.take_index(checkpoint, report).await?;
        {
            let local = lock(&self.local)?;
            for head in &index.covered {
                if local
                    .segment_hash(head.device, head.seq)?
                    .is_some_and(|hash| hash != head.hash)
                {
                    return Err(Error::Integrity(crate::IntegrityProblem::ChainBroken {
                        device: head.device.to_hex(),
                        seq: head.seq,
                    }));
                }
            }
        }
        let mut chat_keys = lock(&self.chat_keys)?.clone();
        for (key_id, chat_id, key) in &index.grants {
            chat_keys.insert(*key_id, chat_id, key.clone())?;
        }
        let sealed_keys = seal_chat_keys(&self.keys, &chat_keys)?;
        let tombstones: Vec<Operation> = index
            .deleted_chats
            .iter()
            .map(|(chat_id, stamp)| Operation {
                stamp: *stamp,
                change: Change::DeleteChat {
                    chat_id: chat_id.clone(),
                },
            })
            .collect();
        let writer = index.device.to_hex();
        let mut applied_total = 0;
        self.for_each_pack(&index, &chat_keys, report, |operations| {
            if let Some(listener) = listener
                && !operations.is_empty()
            {
                listener.on_changes(&writer, &operations).map_err(|why| {
                    Error::invalid_input(format!("change listener failed: {why}"))
                })?;
            }
            applied_total += lock(&self.local)?.apply(&operations, |_| Ok(()))?.0;
            Ok(())
        })
        .await?;
        report.operations_applied += applied_total;
        let (applied, ()) = lock(&self.local)?.apply(&tombstones, |tx| {
            for head in &index.covered {
                local::advance_head(tx, head)?;
            }
            local::set_meta(tx, META_CHAT_KEYS, &sealed_keys)
        })?;
        report.operations_applied += applied;
        *lock(&self.chat_keys)? = chat_keys;
        Ok(())
    }

    pub(super) async fn fetch(
        &self,
        fetch: &Fetch,
        report: &mut SyncReport,
    ) -> Result<(OpenedSegment, u64)> {
        let (segment, size) = self.fetch_segment(fetch).await?;
        report.objects_down += 1;
        report.bytes_down += size;
        Ok((segment, size))
    }

    /// GETs a planned segment and opens its outer layer; the caller counts the request.
    pub(super) async fn fetch_segment(&self, fetch: &Fetch) -> Result<(OpenedSegment, u64)> {
        let object = self
            .store
            .get(&format!("{}{}", self.prefix(), fetch.name))
            .await?
            .ok_or_else(|| {
                Error::Integrity(crate::IntegrityProblem::MissingSegment {
                    device: fetch.device.to_hex(),
                    seq: fetch.seq,
                })
            })?;
        Ok((
            open_segment(&self.keys, &fetch.name, &object)?,
            object.len() as u64,
        ))
    }

    pub(super) async fn pull(
        &self,
        progress: Option<&dyn SyncProgress>,
        listener: Option<&dyn ChangeListener>,
        report: &mut SyncReport,
        cancel: &CancelToken,
    ) -> Result<Uncovered> {
        if let Some(progress) = progress {
            progress.on_progress(SyncPhase::List, 0, 1);
        }
        let listed = self.list_vault().await?;
        let names = segment_names(&listed);
        let mut checkpoint = self.newest_checkpoint(&listed, report).await?;
        let base = coverage(checkpoint.as_ref().map(|c| c.covered.as_slice()));
        let mut heads = lock(&self.local)?.heads()?;
        let size_of: BTreeMap<&str, u64> =
            listed.iter().map(|i| (i.key.as_str(), i.size)).collect();
        // The newest checkpoint's bytes: its index and the packs it references, which may be
        // earlier checkpoints' too. Without fetching the index, every listed pack counts (packs
        // nothing references any more are soon collected).
        let checkpoint_bytes: Option<u64> = checkpoint.as_ref().map(|c| {
            listed
                .iter()
                .filter(|i| i.key == c.name || parse_pack_name(&i.key).is_some())
                .map(|i| i.size)
                .sum()
        });
        // Start from the checkpoint when segments this device still needs were collected, or
        // when the checkpoint is smaller than the segments it replaces (a new device).
        if let Some(checkpoint) = &mut checkpoint {
            let covered = &checkpoint.covered;
            let mut missing = false;
            let mut replaced_bytes = 0u64;
            for head in covered {
                let done = heads.get(&head.device).map_or(0, |h| h.seq);
                for seq in done + 1..=head.seq {
                    match size_of.get(segment_name(head.device, seq).as_str()) {
                        Some(size) => replaced_bytes += size,
                        None => missing = true,
                    }
                }
            }
            if missing || replaced_bytes > checkpoint_bytes.unwrap_or(u64::MAX) {
                self.apply_checkpoint(checkpoint, listener, report).await?;
                heads = lock(&self.local)?.heads()?;
            }
        }
        let fetches = plan_pull(&names, &heads, &base)?;
        // Segments not covered by the newest checkpoint: they decide when to write a new one.
        let mut uncovered = Uncovered {
            checkpoint_bytes,
            ..Uncovered::default()
        };
        let mut redundant = false;
        for name in &names {
            if let Some((device, seq)) = parse_segment_name(name) {
                if base.get(&device).is_none_or(|covered| seq > *covered) {
                    uncovered.segments += 1;
                    uncovered.bytes += size_of.get(name.as_str()).copied().unwrap_or(0);
                } else {
                    redundant = true;
                }
            }
        }
        if let Some(newest) = &checkpoint {
            redundant |= listed
                .iter()
                .any(|i| i.key.starts_with(CHECKPOINTS_PREFIX) && i.key != newest.name);
            if redundant {
                uncovered.garbage_since_ms = Some(newest.created_at_ms);
            }
        }
        let available: BTreeMap<DeviceId, u64> = fetches
            .iter()
            .map(|f| (f.device, f.seq))
            .chain(heads.values().map(|h| (h.device, h.seq)))
            .chain(base.iter().map(|(d, s)| (*d, *s)))
            .fold(BTreeMap::new(), |mut map, (device, seq)| {
                let entry = map.entry(device).or_insert(0);
                *entry = (*entry).max(seq);
                map
            });
        if fetches.is_empty() {
            return Ok(uncovered);
        }

        // Segments arrive in plan order with up to PULL_PREFETCH GETs in flight, and each is
        // applied as soon as it arrives, so memory holds a few segments, not everything new.
        // A segment whose blocks use a chat key no segment has granted yet (a device writing
        // with a key another device created) waits, with the rest of its device's segments,
        // until every segment has arrived.
        let mut pulled = Pulled {
            chat_keys: lock(&self.chat_keys)?.clone(),
            keys_dirty: false,
            chain_heads: heads.clone(),
            fetched: BTreeMap::new(),
            available,
            done: 0,
            total: fetches.len() as u64,
        };
        let mut waiting: Vec<(OpenedSegment, u64)> = Vec::new();
        let mut waiting_devices = std::collections::BTreeSet::new();
        // Each arrived segment's blocks are opened (decrypted, decompressed, decoded) on a
        // blocking thread while the previous one is applied: the keys it may use are those
        // every earlier segment granted, gathered in plan order. If that fails (a key a later
        // segment grants), it is opened again, with the error reported, when it is applied.
        let mut known_keys = pulled.chat_keys.clone();
        let mut arriving = futures_util::stream::iter(fetches.iter().cloned())
            .map(|fetch| async move { self.fetch_segment(&fetch).await })
            .buffered(PULL_PREFETCH)
            .map(move |arrived| {
                let opening = arrived.map(|(segment, size)| {
                    for (key_id, chat_id, key) in &segment.grants {
                        // A clash is reported when the segment is applied.
                        let _ = known_keys.insert(*key_id, chat_id, key.clone());
                    }
                    let keys = self.keys.clone();
                    let chat_keys = known_keys.clone();
                    tokio::task::spawn_blocking(move || {
                        let operations = open_blocks(&keys, &chat_keys, &segment).ok();
                        (segment, size, operations)
                    })
                });
                async move {
                    match opening {
                        Ok(task) => task
                            .await
                            .map_err(|e| Error::invalid_input(format!("opening a segment: {e}"))),
                        Err(error) => Err(error),
                    }
                }
            })
            .buffered(2);
        while let Some(arrived) = arriving.next().await {
            if cancel.is_cancelled() {
                // Keys learned so far are already persisted with the segments applied.
                *lock(&self.chat_keys)? = pulled.chat_keys;
                return Err(Error::Cancelled);
            }
            let (segment, size, opened) = arrived?;
            report.objects_down += 1;
            report.bytes_down += size;
            let device = segment.head.device;
            check_chain(pulled.chain_heads.get(&device), &segment)?;
            pulled.chain_heads.insert(device, segment.head);
            pulled
                .fetched
                .insert((device, segment.head.seq), segment.head.hash);
            for (key_id, chat_id, key) in &segment.grants {
                pulled.keys_dirty |= pulled.chat_keys.insert(*key_id, chat_id, key.clone())?;
            }
            let keys_known = segment
                .blocks
                .iter()
                .all(|(key_id, _)| pulled.chat_keys.key(key_id).is_some());
            if !keys_known || waiting_devices.contains(&device) {
                waiting_devices.insert(device);
                waiting.push((segment, size));
                continue;
            }
            self.apply_pulled(
                segment,
                size,
                opened,
                &mut pulled,
                progress,
                listener,
                report,
            )?;
        }
        drop(arriving);
        for (segment, size) in waiting {
            cancel.check()?;
            self.apply_pulled(segment, size, None, &mut pulled, progress, listener, report)?;
        }
        *lock(&self.chat_keys)? = pulled.chat_keys;
        Ok(uncovered)
    }

    /// Applies one pulled segment: opens its blocks (unless `opened` holds them, opened with keys
    /// this pull already knew), checks its claims about other devices,
    /// hands its operations to the listener, then applies them and advances its device's head
    /// (with the chat keys learned so far) in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_pulled(
        &self,
        segment: OpenedSegment,
        size: u64,
        opened: Option<Vec<Operation>>,
        pulled: &mut Pulled,
        progress: Option<&dyn SyncProgress>,
        listener: Option<&dyn ChangeListener>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let operations = match opened {
            Some(operations) => operations,
            None => open_blocks(&self.keys, &pulled.chat_keys, &segment)?,
        };
        {
            let local = lock(&self.local)?;
            check_seen(&segment, &pulled.available, |device, seq| {
                if let Some(hash) = pulled.fetched.get(&(device, seq)) {
                    return Some(*hash);
                }
                local.segment_hash(device, seq).ok().flatten()
            })?;
        }
        let device_hex = segment.head.device.to_hex();
        if let Some(listener) = listener
            && segment.head.device != self.device
            && !operations.is_empty()
        {
            listener
                .on_changes(&device_hex, &operations)
                .map_err(|why| Error::invalid_input(format!("change listener failed: {why}")))?;
        }
        let sealed_keys = if pulled.keys_dirty {
            Some(seal_chat_keys(&self.keys, &pulled.chat_keys)?)
        } else {
            None
        };
        let mut clock = lock(&self.clock)?;
        let mut new_clock = *clock;
        for operation in &operations {
            new_clock.observe(operation.stamp);
        }
        let (applied, ()) = lock(&self.local)?.apply(&operations, |tx| {
            local::commit_head(tx, &segment.head, size)?;
            local::note_device(
                tx,
                segment.head.device,
                &segment.device_name,
                &segment.platform,
            )?;
            if let Some(last) = new_clock.last() {
                local::set_meta(tx, META_CLOCK, &last.to_sortable_bytes())?;
            }
            if let Some(sealed) = &sealed_keys {
                local::set_meta(tx, META_CHAT_KEYS, sealed)?;
            }
            Ok(())
        })?;
        *clock = new_clock;
        if sealed_keys.is_some() {
            // What is in memory matches what was just persisted, whatever stops the pull later:
            // a `record` that re-seals the key set must never drop keys applied segments granted.
            *lock(&self.chat_keys)? = pulled.chat_keys.clone();
        }
        pulled.keys_dirty = false;
        report.operations_applied += applied;
        report.segments_applied += 1;
        pulled.done += 1;
        if let Some(progress) = progress {
            progress.on_progress(SyncPhase::Pull, pulled.done, pulled.total);
        }
        Ok(())
    }
}

/// Segment GETs a pull keeps in flight; two more segments are opened on blocking threads while
/// one is applied. Measured on a 1M-message restore (directory store, 2 cores): 4 GETs without
/// that overlap 6.0-6.3 s and 86-91 MiB peak; with it, 4 GETs 4.4-5.6 s and 131-145 MiB, 2 GETs
/// 5.0-5.3 s and 105 MiB.
pub(super) const PULL_PREFETCH: usize = 2;

/// Pack GETs a restore from a checkpoint keeps in flight (packs are about 8 MiB).
pub(super) const PACK_PREFETCH: usize = 3;

/// What a pull carries from one applied segment to the next.
pub(super) struct Pulled {
    /// Chat keys known so far (those of applied segments are persisted).
    pub(super) chat_keys: ChatKeys,
    /// Keys learned since the last persisted copy.
    pub(super) keys_dirty: bool,
    /// Newest segment of each device whose chain was checked.
    pub(super) chain_heads: BTreeMap<DeviceId, Head>,
    /// Hashes of every segment this pull fetched.
    pub(super) fetched: BTreeMap<(DeviceId, u64), crate::sync::segment::SegmentHash>,
    /// Newest segment of each device the listing showed.
    pub(super) available: BTreeMap<DeviceId, u64>,
    /// Segments applied, of `total`.
    pub(super) done: u64,
    pub(super) total: u64,
}

/// What the newest checkpoint leaves uncovered, as a pull saw it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Uncovered {
    /// Segments not covered.
    pub(super) segments: u64,
    /// Their bytes.
    pub(super) bytes: u64,
    /// The newest checkpoint's bytes (index and packs), if there is one.
    pub(super) checkpoint_bytes: Option<u64>,
    /// When the listing shows objects the newest checkpoint made redundant (covered segments,
    /// other checkpoints): that checkpoint's creation time.
    pub(super) garbage_since_ms: Option<u64>,
}

/// The newest checkpoint in the bucket, with its index if this call fetched it.
pub(super) struct NewestCheckpoint {
    pub(super) name: String,
    pub(super) covered: Vec<Head>,
    pub(super) created_at_ms: u64,
    pub(super) index: Option<CheckpointIndex>,
}

/// Segment names among listed vault objects.
pub(super) fn segment_names(listed: &[ObjectInfo]) -> Vec<String> {
    listed
        .iter()
        .filter(|i| i.key.starts_with(SEGMENTS_PREFIX))
        .map(|i| i.key.clone())
        .collect()
}

/// Covered sequence number per device.
pub(super) fn coverage(covered: Option<&[Head]>) -> BTreeMap<DeviceId, u64> {
    covered
        .unwrap_or_default()
        .iter()
        .map(|h| (h.device, h.seq))
        .collect()
}
