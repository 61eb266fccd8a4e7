//! Pulling: listing the vault, starting from the newest checkpoint when that is cheaper, and
//! fetching and applying other devices' segments as they arrive.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::local::KnownCheckpoint;
use crate::sync::checkpoint::parse_checkpoint_name;
use crate::sync::engine::{Coverage, Engine};
use crate::sync::listing::Listing;
use crate::sync::plan::Get;
use crate::sync::roster::checkpoint_counts;
use crate::sync::segment::SegmentName;

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

    /// Lists the vault and starts a pass of the sync engine: learns the coverage of every
    /// checkpoint this device has not seen (one GET each, once; remembered in the local state)
    /// and forgets those no longer listed.
    pub(super) async fn start_pass(&self, report: &mut SyncReport) -> Result<Pass> {
        lock(&self.local)?.refuse_untagged_vault()?;
        let listed = self.list_vault().await?;
        let mut listing = Listing::classify(listed.iter().map(|i| (i.key.as_str(), i.size)));
        // Keys of epochs this device does not hold yet, before anything sealed in them is read,
        // then the roster: who may write what this pass reads.
        self.sync_epochs(&listing, report).await?;
        let roster = self.sync_roster(&listing, false, report).await?;
        if roster
            .devices
            .get(&self.device_id())
            .is_some_and(|device| device.revoked.is_some())
        {
            return Err(Error::DeviceRevoked);
        }
        if let Some(signer) = &self.recovery_signer
            && roster.recovery_key != signer.verifying_key()
        {
            return Err(Error::RecoveryKeyReplaced);
        }
        let store_now_ms = listed.iter().filter_map(|i| i.modified_ms).max();
        let written_ms = listed
            .iter()
            .filter(|i| listing.checkpoints.contains_key(&i.key))
            .filter_map(|i| Some((i.key.clone(), i.modified_ms?)))
            .collect();
        let (known, applied) = {
            let local = lock(&self.local)?;
            (local.known_checkpoints()?, local.heads()?)
        };
        crate::sync::roster::refuse_segments(&roster, &mut listing, &applied);
        crate::sync::roster::refuse_checkpoints(&roster, &mut listing);
        let vault = self.keys.vault_id();
        let mut coverage = BTreeMap::new();
        for (name, known) in known {
            // Known indexes that no longer count (the roster changed) are refused here, before
            // the engine could start from one; those no longer listed go to the engine, which
            // forgets them.
            if listing.checkpoints.contains_key(&name) {
                let writer = parse_checkpoint_name(&name)
                    .ok_or_else(|| Error::LocalState("damaged checkpoint name".into()))?
                    .0;
                let signature = known.signature.as_ref();
                if !checkpoint_counts(&roster, vault, &name, writer, signature) {
                    listing.refuse_checkpoint(&name);
                    continue;
                }
            }
            coverage.insert(
                name,
                Coverage {
                    covered: known.covered,
                    created_at_ms: known.created_at_ms,
                },
            );
        }
        let chat_keys = lock(&self.chat_keys)?.clone();
        let mut engine = Engine::new(listing, applied, coverage, chat_keys);
        let mut indexes = BTreeMap::new();
        for get in engine.indexes_to_read()? {
            let bytes = self.read_exact(&get, report).await?;
            let index = engine.index_arrived(&*self.epochs()?, &get, &bytes)?;
            let signature = index.signature.as_ref();
            let counts = checkpoint_counts(&roster, vault, &get.name, index.device, signature);
            let known = KnownCheckpoint {
                covered: index.covered.clone(),
                created_at_ms: index.created_at_ms,
                signature: index.signature,
            };
            lock(&self.local)?.transaction(|tx| local::note_checkpoint(tx, &get.name, &known))?;
            if counts {
                indexes.insert(get.name, index);
            } else {
                engine.refuse_index(&get.name);
            }
        }
        if !engine.forgotten().is_empty() {
            lock(&self.local)?.transaction(|tx| {
                engine
                    .forgotten()
                    .iter()
                    .try_for_each(|name| local::forget_checkpoint(tx, name))
            })?;
        }
        Ok(Pass {
            engine,
            indexes,
            store_now_ms,
            written_ms,
        })
    }

    /// GETs an object the listing or an index promises, bounded by its promised size, and
    /// refuses it if it is missing or of another size.
    pub(super) async fn read_exact(&self, get: &Get, report: &mut SyncReport) -> Result<Vec<u8>> {
        let object = self.get_promised(get).await?;
        report.objects_down += 1;
        report.bytes_down += object.len() as u64;
        Ok(object)
    }

    /// GETs `get` bounded by its promised size; a body shorter than promised is asked for again
    /// (twice) before it is reported: a connection cut with a matching `Content-Length` is far
    /// more common than a store that cut the object, and HTTP cannot tell them apart.
    async fn get_promised(&self, get: &Get) -> Result<Vec<u8>> {
        let key = format!("{}{}", self.prefix(), get.name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let object = self
                .store
                .get(&key, get.size)
                .await?
                .ok_or_else(|| get.missing())?;
            match get.check_len(&object) {
                Err(_) if attempt < SHORT_BODY_ATTEMPTS => continue,
                checked => return checked.map(|()| object),
            }
        }
    }

    /// Opens a listed index fetched again after `start_pass` judged it by what it was then (its
    /// signature as noted in the local state): it must still count, with that same signature,
    /// whose digest binds the body. An index overwritten since under the same name (unsigned,
    /// or signed otherwise) is `Integrity(Replaced)`, not taken for the one that was judged.
    pub(super) fn index_that_counts(
        &self,
        pass: &mut Pass,
        get: &Get,
        bytes: &[u8],
    ) -> Result<CheckpointIndex> {
        let index = pass.engine.index_arrived(&*self.epochs()?, get, bytes)?;
        let roster = self.current_roster()?;
        let counts = checkpoint_counts(
            &roster,
            self.keys.vault_id(),
            &get.name,
            index.device,
            index.signature.as_ref(),
        );
        let noted = lock(&self.local)?
            .known_checkpoint(&get.name)?
            .map(|known| known.signature);
        if !counts || noted.is_some_and(|noted| noted != index.signature) {
            return Err(Error::Integrity(crate::IntegrityProblem::Replaced {
                name: get.name.clone(),
            }));
        }
        Ok(index)
    }

    /// The newest checkpoint's index: the one this pass already fetched, or a fresh GET.
    pub(super) async fn newest_index(
        &self,
        pass: &mut Pass,
        report: &mut SyncReport,
    ) -> Result<Option<CheckpointIndex>> {
        let Some((name, _)) = pass.engine.newest() else {
            return Ok(None);
        };
        let name = name.to_owned();
        if let Some(index) = pass.indexes.remove(&name) {
            return Ok(Some(index));
        }
        let get = pass
            .engine
            .all_indexes()?
            .into_iter()
            .find(|get| get.name == name)
            .ok_or(Error::Integrity(crate::IntegrityProblem::MissingObject {
                name,
            }))?;
        let bytes = self.read_exact(&get, report).await?;
        Ok(Some(self.index_that_counts(pass, &get, &bytes)?))
    }

    /// Fetches the packs `gets` names (those [`Engine::adopt`] returned for `index`),
    /// [`PACK_PREFETCH`] GETs in flight, and hands each chat block's operations to `each` in
    /// index order of packs (one block, at most about 4 MiB of operations, opened at a time; at
    /// most `PACK_PREFETCH + 1` packs of about 8 MiB held).
    pub(super) async fn for_each_pack(
        &self,
        index: &CheckpointIndex,
        gets: &[Get],
        chat_keys: &ChatKeys,
        report: &mut SyncReport,
        mut each: impl FnMut(Vec<Operation>) -> Result<()>,
    ) -> Result<()> {
        let mut arriving = futures_util::stream::iter(gets.to_vec())
            .map(|get| async move {
                let mut counted = SyncReport::default();
                let pack = self.read_exact(&get, &mut counted).await;
                (pack, counted)
            })
            .buffered(PACK_PREFETCH);
        let mut pack_number = 0;
        while let Some((pack, counted)) = arriving.next().await {
            let pack = pack?;
            report.objects_down += counted.objects_down;
            report.bytes_down += counted.bytes_down;
            for (block, entry) in index.chats.iter().enumerate() {
                if entry.pack == pack_number {
                    // `adopt` checked that every block lies inside its pack's promised size.
                    let bytes = pack
                        .get(entry.offset as usize..(entry.offset + entry.length) as usize)
                        .ok_or_else(|| {
                            Error::Integrity(crate::IntegrityProblem::Misplaced {
                                name: gets[pack_number].name.clone(),
                            })
                        })?;
                    each(open_block(&self.keys, chat_keys, index, block, bytes)?)?;
                }
            }
            pack_number += 1;
        }
        Ok(())
    }

    /// Applies the newest checkpoint's state: every pack, then the covered heads.
    pub(super) async fn apply_checkpoint(
        &self,
        pass: &mut Pass,
        listener: Option<&dyn ChangeListener>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let Some(index) = self.newest_index(pass, report).await? else {
            return Ok(());
        };
        let gets = {
            let local = lock(&self.local)?;
            pass.engine.adopt(&index, |id| local.segment_hash(id))?
        };
        let chat_keys = pass.engine.chat_keys().clone();
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
        self.for_each_pack(&index, &gets, &chat_keys, report, |operations| {
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
        let tips = pass.engine.tips_after_adopting(&index);
        let (applied, ()) = lock(&self.local)?.apply(&tombstones, |tx| {
            local::set_tips(tx, &tips)?;
            local::set_meta(tx, META_CHAT_KEYS, &sealed_keys)
        })?;
        report.operations_applied += applied;
        *lock(&self.chat_keys)? = chat_keys;
        Ok(())
    }

    /// GETs a planned segment and opens its outer layer; the caller counts the request.
    pub(super) async fn fetch_segment(&self, get: &Get) -> Result<(OpenedSegment, u64)> {
        let object = self.get_promised(get).await?;
        let segment = get.open_segment(&*self.epochs()?, &object)?;
        // One this device applied before the roster changed stays taken (as `refuse_segments`
        // keeps it in the listing): a checkpoint or verify reading it again must not refuse it.
        let head = &segment.head;
        let applied = lock(&self.local)?.segment_hash(head.id())? == Some(head.hash);
        if !applied {
            crate::sync::roster::check_segment(
                &*self.current_roster()?,
                self.keys.vault_id(),
                &segment,
            )?;
        }
        Ok((segment, object.len() as u64))
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
        let mut pass = self.start_pass(report).await?;
        if let Err(Error::Integrity(crate::IntegrityProblem::RolledBack { .. })) =
            pass.engine.check_rollback()
        {
            // A store whose listing lags (an answer served before a write it acknowledged
            // became visible) looks exactly like one that rolled a device back: list once more
            // before saying so.
            tokio::time::sleep(RELIST_DELAY).await;
            pass = self.start_pass(report).await?;
        }
        report.unknown_objects = pass.engine.unknown().len() as u64;
        let mut uncovered = uncovered(&pass.engine);
        if uncovered.garbage {
            uncovered.garbage_age_ms = pass.newest_checkpoint_age_ms(self.now_ms());
        }
        pass.engine.check_rollback()?;
        // Start from the checkpoint when segments this device still needs were collected, or
        // when the checkpoint is smaller than the segments it replaces (a new device).
        if pass
            .engine
            .restore_is_cheaper(uncovered.checkpoint_bytes.unwrap_or(u64::MAX))
        {
            self.apply_checkpoint(&mut pass, listener, report).await?;
        } else {
            pass.engine.note_base();
        }
        self.fork_off_if_copied(&pass.engine)?;
        self.sync_roster(pass.engine.listing(), true, report)
            .await?;
        let fetches = {
            let local = lock(&self.local)?;
            pass.engine
                .plan(|id| Ok(local.segment_hash(id)?.is_some()))?
        };
        if fetches.is_empty() {
            return Ok(uncovered);
        }

        // Segments arrive in plan order with up to PULL_PREFETCH GETs in flight, and each is
        // applied as soon as it arrives, so memory holds a few segments, not everything new.
        // A segment whose blocks use a chat key no segment has granted yet (a device writing
        // with a key another device created) waits, with the rest of its device's segments,
        // until every segment has arrived.
        let mut known_keys = pass.engine.chat_keys().clone();
        let mut pulled = Pulled {
            engine: pass.engine,
            keys_dirty: false,
            done: 0,
            total: fetches.len() as u64,
        };
        let mut waiting: Vec<(OpenedSegment, u64)> = Vec::new();
        let mut waiting_devices = std::collections::BTreeSet::new();
        // Each arrived segment's blocks are opened (decrypted, decompressed, decoded) on a
        // blocking thread while the previous one is applied: the keys it may use are those
        // every earlier segment granted, gathered in plan order. If that fails (a key a later
        // segment grants), it is opened again, with the error reported, when it is applied.
        let mut arriving = futures_util::stream::iter(fetches.iter().cloned())
            .map(|fetch| async move { self.fetch_segment(&fetch).await })
            .buffered(PULL_PREFETCH)
            .map(move |arrived| {
                let opening = arrived.map(|(segment, size)| {
                    for grant in &segment.grants {
                        // A clash is reported when the segment is applied.
                        let _ = known_keys.learn(grant);
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
                return Err(Error::Cancelled);
            }
            let (segment, size, opened) = arrived?;
            report.objects_down += 1;
            report.bytes_down += size;
            let device = segment.head.device;
            pulled.keys_dirty |= {
                let local = lock(&self.local)?;
                pulled
                    .engine
                    .accept(&segment, |id| local.segment_hash(id))?
            };
            let keys_known = segment
                .blocks
                .iter()
                .all(|(key_id, _)| pulled.engine.chat_keys().key(key_id).is_some());
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
        Ok(uncovered)
    }

    /// A listed segment under this device's own id that it did not write (no hash recorded for
    /// it, not the staged one) means this state directory was copied and the copy wrote as this
    /// device: it continues as a device of its own (see [`fork_off`](Self::fork_off)) before it
    /// pushes anything more, and pulls the old id's segments like any other device's. Each copy
    /// does this when it sees the other's segments, so the old id gets no more writers.
    fn fork_off_if_copied(&self, engine: &Engine) -> Result<()> {
        let device = self.device_id();
        let (copied, pending) = {
            let local = lock(&self.local)?;
            let pending = local.pending_segment()?;
            // A local-state error must stop the pull, not read as "not written here": that
            // would fork off a device nobody copied.
            let mut copied = false;
            for name in engine.unapplied_of(device) {
                if local.segment_hash(name.id())?.is_none()
                    && pending.as_ref().is_none_or(|p| p.name != name.to_name())
                {
                    copied = true;
                    break;
                }
            }
            (copied, pending)
        };
        if copied {
            self.fork_off(pending)?;
        }
        Ok(())
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
            None => open_blocks(&self.keys, pulled.engine.chat_keys(), &segment)?,
        };
        {
            let local = lock(&self.local)?;
            pulled
                .engine
                .check_claims(&segment, |id| local.segment_hash(id))?;
        }
        let device_hex = segment.head.device.to_hex();
        if let Some(listener) = listener
            && segment.head.device != self.device_id()
            && !operations.is_empty()
        {
            listener
                .on_changes(&device_hex, &operations)
                .map_err(|why| Error::invalid_input(format!("change listener failed: {why}")))?;
        }
        let sealed_keys = if pulled.keys_dirty {
            Some(seal_chat_keys(&self.keys, pulled.engine.chat_keys())?)
        } else {
            None
        };
        // The clock needs nothing from here: the local state keeps the greatest stamp it
        // holds (applied in this same transaction), and `record` stamps after it.
        let (applied, ()) = lock(&self.local)?.apply(&operations, |tx| {
            let name = SegmentName {
                device: segment.head.device,
                seq: segment.head.seq,
                tag: segment.head.tag,
                parent: segment.parent_tag,
            };
            local::commit_head(tx, &name, &segment.head.hash, size)?;
            local::note_device(
                tx,
                segment.head.device,
                &segment.device_name,
                &segment.platform,
            )?;
            if let Some(sealed) = &sealed_keys {
                local::set_meta(tx, META_CHAT_KEYS, sealed)?;
            }
            Ok(())
        })?;
        if sealed_keys.is_some() {
            // What is in memory matches what was just persisted, whatever stops the pull later:
            // a `record` that re-seals the key set must never drop keys applied segments granted.
            *lock(&self.chat_keys)? = pulled.engine.chat_keys().clone();
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

/// How long a pull waits before listing again when the listing looks rolled back.
const RELIST_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// GETs of an object whose body came back shorter than promised, before that is reported.
const SHORT_BODY_ATTEMPTS: u32 = 3;

/// Pack GETs a restore from a checkpoint keeps in flight (packs are about 8 MiB).
pub(super) const PACK_PREFETCH: usize = 3;

/// What a pull carries from one applied segment to the next.
pub(super) struct Pulled {
    /// The engine's pass: chains, hashes and chat keys so far (keys of applied segments are
    /// persisted).
    pub(super) engine: Engine,
    /// Keys learned since the last persisted copy.
    pub(super) keys_dirty: bool,
    /// Segments applied, of `total`.
    pub(super) done: u64,
    pub(super) total: u64,
}

/// One pass of the sync engine, with the checkpoint indexes it fetched to learn their coverage
/// (kept so the newest is not fetched twice).
pub(super) struct Pass {
    pub(super) engine: Engine,
    pub(super) indexes: BTreeMap<String, CheckpointIndex>,
    /// The newest write time the listing shows: the store's clock, as far as it can be read.
    pub(super) store_now_ms: Option<u64>,
    /// When the store says each listed checkpoint index was written.
    pub(super) written_ms: BTreeMap<String, u64>,
}

impl Pass {
    /// How long ago the newest checkpoint was written, by the store's clock: its index's write
    /// time against the newest write the listing shows (never later than this device's `now`).
    /// Garbage collection waits on this, not on the writer's stamp or this device's clock alone:
    /// a device whose clock runs a year fast must not collect what others still read. `None`
    /// when the store gives no times.
    pub(super) fn newest_checkpoint_age_ms(&self, now_ms: u64) -> Option<u64> {
        let (name, _) = self.engine.newest()?;
        let written = *self.written_ms.get(name)?;
        let store_now = self.store_now_ms?.min(now_ms);
        Some(store_now.saturating_sub(written))
    }
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
    /// Whether the listing shows objects the newest checkpoint made redundant (covered
    /// segments, other checkpoints).
    pub(super) garbage: bool,
    /// If so, how long ago that checkpoint was written, by the store's clock.
    pub(super) garbage_age_ms: Option<u64>,
}

/// What the newest checkpoint the engine knows leaves uncovered in its listing.
fn uncovered(engine: &Engine) -> Uncovered {
    let listing = engine.listing();
    let covered = engine.newest_covered();
    let mut uncovered = Uncovered::default();
    let mut redundant = false;
    for (segment, listed) in listing.all_segments() {
        if !covered.reached(segment.id()) {
            uncovered.segments += 1;
            uncovered.bytes += listed.size;
        } else {
            redundant = true;
        }
    }
    if let Some((name, _)) = engine.newest() {
        // The newest checkpoint's bytes: its index and the packs it references, which may be
        // earlier checkpoints' too. Without fetching the index, every listed pack counts (packs
        // nothing references any more are soon collected).
        uncovered.checkpoint_bytes = Some(
            listing.checkpoints.get(name).map_or(0, |l| l.size)
                + listing.packs.values().map(|l| l.size).sum::<u64>(),
        );
        redundant |= listing.checkpoints.keys().any(|other| other != name);
        uncovered.garbage = redundant;
    }
    uncovered
}
