//! The vault: what an app opens. It records changes locally, syncs them with the bucket (push,
//! then pull), and answers questions about the merged state.
//!
//! The sync logic itself lives in [`crate::sync`] and does no I/O; this module moves bytes between
//! the store, the local state and that logic. See `docs/SYNC.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt as _;
use prost::Message as _;

use crate::attachment::{Attachment, TransferListener, TransferReport};
use crate::error::{Error, Result};
use crate::format::{ObjectKind, decode_body, proto};
use crate::history::{HistoryCursor, HistoryPage};
use crate::keys::{ChatKey, RecoveryKey, VaultKeys};
use crate::local::{self, ChatSummary, LocalState, PendingSegment};
use crate::sealing::{self, ObjectContext};
use crate::store::{ObjectInfo, ObjectStore};
use crate::sync::batch::EncodedBatch;
use crate::sync::checkpoint::{
    CHECKPOINTS_PREFIX, ChatContent, CheckpointIndex, CheckpointInput, PACKS_PREFIX,
    checkpoint_due, open_block, open_checkpoint_index, pack_prefix, parse_checkpoint_name,
    seal_checkpoint,
};
use crate::sync::plan::{Fetch, check_chain, check_seen, plan_pull};
use crate::sync::segment::{
    ChatKeys, Head, KeyId, MAX_SEGMENT_BODY, NewSegment, OpenedSegment, SEGMENTS_PREFIX,
    open_blocks, open_segment, parse_device_and_seq, parse_segment_name, seal_segment,
    segment_name,
};
use crate::sync::{Change, Clock, DeviceId, Message, Operation, Stamp, clock::now_ms};

mod reading;

const STATE_FILE: &str = "chatvault.sqlite";
const META_VAULT_ID: &str = "vault_id";
const META_DEVICE_ID: &str = "device_id";
const META_CLOCK: &str = "clock";
const META_CHAT_KEYS: &str = "chat_keys";
const CHAT_KEYS_NAME: &str = "local/chat-keys";
const META_CHECKPOINT_SEQ: &str = "checkpoint_seq";

/// Who this device is, as other devices will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// A human-readable name, e.g. "Anna's iPhone".
    pub name: String,
    /// The platform, e.g. "ios", "android", "linux".
    pub platform: String,
}

/// Phases of a sync, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPhase {
    /// Uploading this device's segments.
    Push,
    /// Listing the bucket.
    List,
    /// Downloading and applying other devices' segments.
    Pull,
}

/// Receives progress during a sync (called from the syncing task; keep it quick).
pub trait SyncProgress: Send + Sync {
    /// `done` of `total` units (segments) of `phase` are finished.
    fn on_progress(&self, phase: SyncPhase, done: u64, total: u64);
}

/// Receives changes made by other devices, at least once each.
///
/// The vault advances its cursor past a segment only after this returns `Ok`; on `Err` the sync
/// stops and the same changes are delivered again next time.
pub trait ChangeListener: Send + Sync {
    /// Changes from one segment of another device, in that device's recording order.
    fn on_changes(&self, device: &str, operations: &[Operation])
    -> std::result::Result<(), String>;
}

/// Lets an app stop a long sync from another thread (a screen closed, the OS ending a background
/// task). The sync stops at the next segment boundary with [`Error::Cancelled`]; what it
/// finished stays done.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<std::sync::atomic::AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the operation holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects uploaded.
    pub objects_up: u64,
    /// Bytes uploaded.
    pub bytes_up: u64,
    /// Objects downloaded.
    pub objects_down: u64,
    /// Bytes downloaded.
    pub bytes_down: u64,
    /// Requests sent to the store (LIST, GET, PUT).
    pub requests: u64,
    /// Local operations uploaded.
    pub operations_sent: u64,
    /// Remote operations that changed the local state.
    pub operations_applied: u64,
    /// Remote segments applied.
    pub segments_applied: u64,
    /// Redundant objects (segments and checkpoints the newest checkpoint replaced) deleted by
    /// automatic garbage collection.
    pub objects_deleted: u64,
}

/// Objects and bytes the vault occupies in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageStats {
    /// Number of objects under the vault prefix.
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
}

/// What `checkpoint` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The index's name (empty if there was nothing to checkpoint).
    pub name: String,
    /// Objects written (index and packs).
    pub objects: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// What `verify` checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Checkpoints fetched and authenticated (the newest, with every pack and block).
    pub checkpoints: u64,
    /// Segments fetched and authenticated.
    pub segments: u64,
    /// Devices whose chains were checked.
    pub devices: u64,
    /// Operations decrypted.
    pub operations: u64,
    /// Attachment contents whose chunks were all found with their expected sizes.
    pub attachments: u64,
}

/// An open vault on one device.
pub struct Vault {
    keys: VaultKeys,
    store: Arc<dyn ObjectStore>,
    device: DeviceId,
    info: DeviceInfo,
    local: Mutex<LocalState>,
    chat_keys: Mutex<ChatKeys>,
    clock: Mutex<Clock>,
    /// Serialises syncs of this vault object.
    sync_lock: tokio::sync::Mutex<()>,
    /// Chunk size for new attachments.
    attachment_chunk_size: std::sync::atomic::AtomicU32,
    /// How old the newest checkpoint must be before a sync deletes what it replaced
    /// (`u64::MAX`: never by itself).
    auto_gc_grace_ms: std::sync::atomic::AtomicU64,
}

impl core::fmt::Debug for Vault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vault")
            .field("vault_id", self.keys.vault_id())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| Error::LocalState("a previous operation panicked".into()))
}

impl Vault {
    /// Opens the vault of `recovery_key` in `store`, with this device's state in `state_dir`
    /// (created if missing). A new state directory makes a new device that joins the vault.
    ///
    /// Fails with [`Error::InvalidInput`] if `state_dir` belongs to another vault.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        state_dir: &Path,
        info: DeviceInfo,
        recovery_key: &RecoveryKey,
    ) -> Result<Vault> {
        let keys = VaultKeys::derive(recovery_key);
        std::fs::create_dir_all(state_dir).map_err(|e| {
            Error::LocalState(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        let local = LocalState::open(&state_dir.join(STATE_FILE))?;
        match local.meta(META_VAULT_ID)? {
            Some(id) if id.as_slice() != keys.vault_id().as_bytes() => {
                return Err(Error::invalid_input(
                    "this state directory belongs to another vault (a different recovery key)",
                ));
            }
            Some(_) => {}
            None => local.set_meta(META_VAULT_ID, keys.vault_id().as_bytes())?,
        }
        let device = match local.meta(META_DEVICE_ID)? {
            Some(bytes) => DeviceId(
                bytes
                    .try_into()
                    .map_err(|_| Error::LocalState("damaged device id".into()))?,
            ),
            None => {
                let device = DeviceId::generate()?;
                local.set_meta(META_DEVICE_ID, &device.0)?;
                device
            }
        };
        let last = match local.meta(META_CLOCK)? {
            Some(bytes) => Some(
                Stamp::from_sortable_bytes(&bytes)
                    .ok_or_else(|| Error::LocalState("damaged clock".into()))?,
            ),
            None => None,
        };
        let chat_keys = match local.meta(META_CHAT_KEYS)? {
            Some(sealed) => open_chat_keys(&keys, &sealed)?,
            None => ChatKeys::new(),
        };
        Ok(Vault {
            keys,
            store,
            device,
            info,
            local: Mutex::new(local),
            chat_keys: Mutex::new(chat_keys),
            clock: Mutex::new(Clock::new(device, last)),
            sync_lock: tokio::sync::Mutex::new(()),
            attachment_chunk_size: std::sync::atomic::AtomicU32::new(
                crate::attachment::DEFAULT_CHUNK_SIZE,
            ),
            auto_gc_grace_ms: std::sync::atomic::AtomicU64::new(AUTO_GC_GRACE_MS),
        })
    }

    /// The vault's public id (its prefix in the bucket).
    pub fn vault_id(&self) -> String {
        self.keys.vault_id().to_hex()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    fn prefix(&self) -> String {
        format!("{}/", self.keys.vault_id().to_hex())
    }

    /// Where this vault's attachment chunks live: beside its prefix, not inside it.
    fn attachments_prefix(&self) -> String {
        format!(
            "{}{}",
            self.keys.vault_id().to_hex(),
            crate::attachment::ATTACHMENTS_SUFFIX
        )
    }

    /// Sets how old the newest checkpoint must be before a sync deletes, by itself, the
    /// segments and older checkpoints it replaced (default 7 days; `None`: only
    /// [`collect_garbage`](Self::collect_garbage) deletes). A device that was offline longer
    /// than this restarts from the checkpoint, losing nothing; the grace period only spares it
    /// that download.
    pub fn set_auto_gc_grace_ms(&self, grace_ms: Option<u64>) {
        self.auto_gc_grace_ms.store(
            grace_ms.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Sets the chunk size of attachments uploaded from now on (a power of two from 64 KiB to
    /// 8 MiB; the default is 4 MiB). Smaller chunks repeat less after an interruption and cost
    /// more requests. Content already stored keeps its chunk size.
    pub fn set_attachment_chunk_size(&self, chunk_size: u32) -> Result<()> {
        crate::attachment::check_chunk_size(chunk_size)?;
        self.attachment_chunk_size
            .store(chunk_size, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Uploads the file at `path` as an attachment (streamed: memory stays at about two chunks)
    /// and returns the reference to put in a message's `attachments`. Content the vault already
    /// holds is not sent again; an upload interrupted earlier resumes, sending only the chunks
    /// that are missing. `name` and `mime` travel only inside the encrypted message.
    pub async fn attach_file(
        &self,
        path: &Path,
        name: &str,
        mime: &str,
        listener: Option<&dyn TransferListener>,
        cancel: &CancelToken,
    ) -> Result<(Attachment, TransferReport)> {
        crate::attachment::upload(
            self.store.as_ref(),
            &self.attachments_prefix(),
            &self.keys,
            path,
            name,
            mime,
            self.attachment_chunk_size
                .load(std::sync::atomic::Ordering::Relaxed),
            listener,
            cancel,
        )
        .await
    }

    /// Downloads an attachment to `dest` (replaced when complete), verifying every chunk and the
    /// whole content. An interrupted download leaves `<dest>.<id>.part`; calling this again with
    /// the same `dest` resumes it.
    pub async fn download_attachment(
        &self,
        attachment: &Attachment,
        dest: &Path,
        listener: Option<&dyn TransferListener>,
        cancel: &CancelToken,
    ) -> Result<TransferReport> {
        crate::attachment::download(
            self.store.as_ref(),
            &self.attachments_prefix(),
            &self.keys,
            attachment,
            dest,
            listener,
            cancel,
        )
        .await
    }

    /// Every attachment referenced by a live message on this device, once per content.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        Ok(lock(&self.local)?
            .referenced_attachments()?
            .into_values()
            .collect())
    }

    /// Records changes: they are validated, stamped, applied to the local state and queued for
    /// the next sync, all in one transaction. Once this returns, a crash loses none of them.
    pub fn record(&self, changes: Vec<Change>) -> Result<()> {
        for change in &changes {
            change.validate()?;
        }
        let mut clock = lock(&self.clock)?;
        let mut chat_keys = lock(&self.chat_keys)?;
        let mut local = lock(&self.local)?;
        let mut new_clock = *clock;
        let mut new_keys = chat_keys.clone();
        let mut created: Vec<KeyId> = Vec::new();
        let now = now_ms();
        let operations: Vec<Operation> = changes
            .into_iter()
            .map(|change| Operation {
                stamp: new_clock.tick(now),
                change,
            })
            .collect();
        for operation in &operations {
            let chat_id = operation.change.chat_id();
            if new_keys.writing_key(chat_id).is_none() {
                let key_id = crate::random::array::<16>()?;
                new_keys.insert(key_id, chat_id, ChatKey::generate()?)?;
                created.push(key_id);
            }
        }
        let sealed_keys = if created.is_empty() {
            None
        } else {
            Some(seal_chat_keys(&self.keys, &new_keys)?)
        };
        local.transaction(|tx| {
            local::apply_operations(tx, &operations)?;
            // Each operation is encoded once here; pushing copies these bytes into segments.
            let mut row = EncodedBatch::new();
            for operation in &operations {
                row.push(operation);
                if row.encoded_len() >= local::OUTBOX_ROW_TARGET {
                    local::insert_outbox_row(tx, &std::mem::take(&mut row))?;
                }
            }
            local::insert_outbox_row(tx, &row)?;
            if let Some(last) = new_clock.last() {
                local::set_meta(tx, META_CLOCK, &last.to_sortable_bytes())?;
            }
            if let Some(sealed) = &sealed_keys {
                local::set_meta(tx, META_CHAT_KEYS, sealed)?;
                for key_id in &created {
                    local::add_ungranted_key(tx, key_id)?;
                }
            }
            Ok(())
        })?;
        *clock = new_clock;
        *chat_keys = new_keys;
        Ok(())
    }

    /// Pushes this device's recorded changes, then pulls every other device's new segments.
    pub async fn sync(
        &self,
        progress: Option<&dyn SyncProgress>,
        listener: Option<&dyn ChangeListener>,
    ) -> Result<SyncReport> {
        self.sync_cancellable(progress, listener, &CancelToken::new())
            .await
    }

    /// [`sync`](Self::sync) that stops with [`Error::Cancelled`] at the next segment once
    /// `cancel` is cancelled.
    pub async fn sync_cancellable(
        &self,
        progress: Option<&dyn SyncProgress>,
        listener: Option<&dyn ChangeListener>,
        cancel: &CancelToken,
    ) -> Result<SyncReport> {
        let _guard = self.sync_lock.lock().await;
        let mut report = SyncReport::default();
        self.push(progress, &mut report, cancel).await?;
        let uncovered = self.pull(progress, listener, &mut report, cancel).await?;
        if checkpoint_due(
            uncovered.segments,
            uncovered.bytes,
            uncovered.checkpoint_bytes,
        ) {
            let written = self.write_checkpoint().await?;
            report.objects_up += written.objects;
            report.bytes_up += written.bytes;
            report.requests += written.objects;
        } else if let Some(created_at_ms) = uncovered.garbage_since_ms {
            // What the newest checkpoint replaced goes once it is old enough: no app has to
            // remember to call collect_garbage for the bucket to stop growing.
            let grace = self
                .auto_gc_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if now_ms() >= created_at_ms.saturating_add(grace) {
                let (deleted, requests) = self.collect_log_garbage(grace).await?;
                report.objects_deleted += deleted;
                report.requests += requests;
            }
        }
        if report.operations_sent > 0 || report.segments_applied > 0 {
            // The outbox rows and applied segments leave free pages and a full log behind.
            lock(&self.local)?.compact()?;
        }
        Ok(report)
    }

    async fn upload(&self, pending: PendingSegment, report: &mut SyncReport) -> Result<()> {
        let size = pending.object.len() as u64;
        self.store
            .put(
                &format!("{}{}", self.prefix(), pending.name),
                pending.object,
            )
            .await?;
        report.requests += 1;
        report.objects_up += 1;
        report.bytes_up += size;
        let head = Head {
            device: self.device,
            seq: pending.seq,
            hash: pending.hash,
        };
        lock(&self.local)?.transaction(|tx| local::commit_head(tx, &head, size))
    }

    async fn push(
        &self,
        progress: Option<&dyn SyncProgress>,
        report: &mut SyncReport,
        cancel: &CancelToken,
    ) -> Result<()> {
        cancel.check()?;
        // A segment sealed by an interrupted sync goes first, byte for byte as sealed.
        let pending = lock(&self.local)?.pending_segment()?;
        if let Some(pending) = pending {
            self.upload(pending, report).await?;
        }
        let total = lock(&self.local)?.outbox_len()?;
        let mut done = 0u64;
        loop {
            cancel.check()?;
            let staged = {
                let mut local = lock(&self.local)?;
                let Some((last_id, operations)) = local.outbox(MAX_SEGMENT_BODY / 2)? else {
                    break;
                };
                let heads = local.heads()?;
                let own = heads.get(&self.device).copied();
                let seen: Vec<Head> = heads
                    .values()
                    .filter(|h| h.device != self.device)
                    .copied()
                    .collect();
                let grants = local.ungranted_keys()?;
                let chat_keys = lock(&self.chat_keys)?;
                let seq = own.map_or(1, |h| h.seq + 1);
                let (name, object, hash) = seal_segment(
                    &self.keys,
                    &chat_keys,
                    &NewSegment {
                        device: self.device,
                        seq,
                        prev_hash: own.map(|h| h.hash),
                        seen: &seen,
                        grants: &grants,
                        operations: &operations,
                        device_name: &self.info.name,
                        platform: &self.info.platform,
                    },
                )?;
                let pending = PendingSegment {
                    seq,
                    name,
                    object,
                    hash,
                };
                local.transaction(|tx| local::stage_segment(tx, &pending, last_id))?;
                report.operations_sent += operations.operation_count();
                done += operations.operation_count();
                pending
            };
            self.upload(staged, report).await?;
            if let Some(progress) = progress {
                progress.on_progress(SyncPhase::Push, done, total);
            }
        }
        Ok(())
    }

    /// One LIST of the whole vault prefix, keys made relative to it.
    async fn list_vault(&self, report: &mut SyncReport) -> Result<Vec<ObjectInfo>> {
        let prefix = self.prefix();
        let listed = self.store.list(&prefix).await?;
        report.requests += 1;
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
    async fn newest_checkpoint(
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
    async fn get_listed(&self, name: &str, report: &mut SyncReport) -> Result<Vec<u8>> {
        let object = self
            .store
            .get(&format!("{}{name}", self.prefix()))
            .await?
            .ok_or_else(|| {
                Error::Integrity(crate::IntegrityProblem::MissingObject {
                    name: name.to_owned(),
                })
            })?;
        report.requests += 1;
        report.objects_down += 1;
        report.bytes_down += object.len() as u64;
        Ok(object)
    }

    async fn fetch_checkpoint_index(
        &self,
        name: &str,
        report: &mut SyncReport,
    ) -> Result<CheckpointIndex> {
        let object = self.get_listed(name, report).await?;
        open_checkpoint_index(&self.keys, name, &object)
    }

    /// The checkpoint's index: the one `newest_checkpoint` already fetched, or a fresh GET.
    async fn take_index(
        &self,
        checkpoint: &mut NewestCheckpoint,
        report: &mut SyncReport,
    ) -> Result<CheckpointIndex> {
        match checkpoint.index.take() {
            Some(index) => Ok(index),
            None => self.fetch_checkpoint_index(&checkpoint.name, report).await,
        }
    }

    /// Fetches every pack of a checkpoint in turn and hands each chat block's operations to
    /// `each` (one block, at most about 4 MiB of operations, in memory at a time).
    async fn for_each_pack(
        &self,
        index: &CheckpointIndex,
        chat_keys: &ChatKeys,
        report: &mut SyncReport,
        mut each: impl FnMut(Vec<Operation>) -> Result<()>,
    ) -> Result<()> {
        for (pack_number, (pack_name, _)) in index.packs.iter().enumerate() {
            let pack = self.get_listed(pack_name, report).await?;
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
        }
        Ok(())
    }

    /// Applies a checkpoint's state: every pack, then the covered heads.
    async fn apply_checkpoint(
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
            applied_total +=
                lock(&self.local)?.transaction(|tx| local::apply_operations(tx, &operations))?;
            Ok(())
        })
        .await?;
        report.operations_applied += applied_total;
        let applied = lock(&self.local)?.transaction(|tx| {
            let applied = local::apply_operations(tx, &tombstones)?;
            for head in &index.covered {
                local::advance_head(tx, head)?;
            }
            local::set_meta(tx, META_CHAT_KEYS, &sealed_keys)?;
            Ok(applied)
        })?;
        report.operations_applied += applied;
        *lock(&self.chat_keys)? = chat_keys;
        Ok(())
    }

    async fn fetch(&self, fetch: &Fetch, report: &mut SyncReport) -> Result<(OpenedSegment, u64)> {
        let (segment, size) = self.fetch_segment(fetch).await?;
        report.requests += 1;
        report.objects_down += 1;
        report.bytes_down += size;
        Ok((segment, size))
    }

    /// GETs a planned segment and opens its outer layer; the caller counts the request.
    async fn fetch_segment(&self, fetch: &Fetch) -> Result<(OpenedSegment, u64)> {
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

    async fn pull(
        &self,
        progress: Option<&dyn SyncProgress>,
        listener: Option<&dyn ChangeListener>,
        report: &mut SyncReport,
        cancel: &CancelToken,
    ) -> Result<Uncovered> {
        if let Some(progress) = progress {
            progress.on_progress(SyncPhase::List, 0, 1);
        }
        let listed = self.list_vault(report).await?;
        let names = segment_names(&listed);
        let mut checkpoint = self.newest_checkpoint(&listed, report).await?;
        let base = coverage(checkpoint.as_ref().map(|c| c.covered.as_slice()));
        let mut heads = lock(&self.local)?.heads()?;
        let size_of: BTreeMap<&str, u64> =
            listed.iter().map(|i| (i.key.as_str(), i.size)).collect();
        let checkpoint_bytes: Option<u64> = checkpoint
            .as_ref()
            .and_then(|c| parse_checkpoint_name(&c.name).map(|id| (id, &c.name)))
            .map(|((device, seq), name)| {
                let packs = pack_prefix(device, seq);
                listed
                    .iter()
                    .filter(|i| i.key == *name || i.key.starts_with(&packs))
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
        let mut arriving = futures_util::stream::iter(fetches.iter().cloned())
            .map(|fetch| async move { self.fetch_segment(&fetch).await })
            .buffered(PULL_PREFETCH);
        while let Some(arrived) = arriving.next().await {
            if cancel.is_cancelled() {
                // Keys learned so far are already persisted with the segments applied.
                *lock(&self.chat_keys)? = pulled.chat_keys;
                return Err(Error::Cancelled);
            }
            let (segment, size) = arrived?;
            report.requests += 1;
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
            self.apply_pulled(segment, size, &mut pulled, progress, listener, report)?;
        }
        drop(arriving);
        for (segment, size) in waiting {
            cancel.check()?;
            self.apply_pulled(segment, size, &mut pulled, progress, listener, report)?;
        }
        *lock(&self.chat_keys)? = pulled.chat_keys;
        Ok(uncovered)
    }

    /// Applies one pulled segment: opens its blocks, checks its claims about other devices,
    /// hands its operations to the listener, then applies them and advances its device's head
    /// (with the chat keys learned so far) in one transaction.
    fn apply_pulled(
        &self,
        segment: OpenedSegment,
        size: u64,
        pulled: &mut Pulled,
        progress: Option<&dyn SyncProgress>,
        listener: Option<&dyn ChangeListener>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let operations = open_blocks(&self.keys, &pulled.chat_keys, &segment)?;
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
        let now = now_ms();
        for operation in &operations {
            new_clock.observe(operation.stamp, now);
        }
        let applied = lock(&self.local)?.transaction(|tx| {
            let applied = local::apply_operations(tx, &operations)?;
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
            Ok(applied)
        })?;
        *clock = new_clock;
        pulled.keys_dirty = false;
        report.operations_applied += applied;
        report.segments_applied += 1;
        pulled.done += 1;
        if let Some(progress) = progress {
            progress.on_progress(SyncPhase::Pull, pulled.done, pulled.total);
        }
        Ok(())
    }

    /// Visible chats with message counts and sizes.
    pub fn chats(&self) -> Result<Vec<ChatSummary>> {
        lock(&self.local)?.chat_summaries()
    }

    /// Live messages of one chat, or of every chat, by chat, send time and message id.
    pub fn messages(&self, chat_id: Option<&str>) -> Result<Vec<Message>> {
        lock(&self.local)?.messages(chat_id)
    }

    /// Hands each live message sent at or after `since_ms` (of one chat or of all), by chat, send
    /// time and id, to `each`, one at a time, so an export of any size runs in flat memory.
    /// `each` must not call this vault (it holds the local state). Returns the count.
    pub fn for_each_message(
        &self,
        chat_id: Option<&str>,
        since_ms: i64,
        mut each: impl FnMut(Message) -> Result<()>,
    ) -> Result<u64> {
        lock(&self.local)?.for_each_message(chat_id, since_ms, &mut each)
    }

    /// Live messages sent at or after `since_ms` (of one chat or of all): restore "since a time".
    pub fn messages_since(&self, chat_id: Option<&str>, since_ms: i64) -> Result<Vec<Message>> {
        lock(&self.local)?.messages_sent_since(chat_id, since_ms)
    }

    /// One page of a chat's history from local state: up to `limit` messages before `before`
    /// (from the newest when `None`), oldest first, with the cursor of the next older page. For
    /// history the app dropped locally, see [`fetch_history`](Self::fetch_history).
    pub fn history_page(
        &self,
        chat_id: &str,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<HistoryPage> {
        check_page_limit(limit)?;
        lock(&self.local)?.history_page(chat_id, before, limit)
    }

    /// Operations recorded here and not yet uploaded.
    pub fn pending_operations(&self) -> Result<u64> {
        lock(&self.local)?.outbox_len()
    }

    /// Objects and bytes the vault holds: its prefix and its attachments (two LISTs).
    pub async fn usage(&self) -> Result<UsageStats> {
        let mut listed = self.store.list(&self.prefix()).await?;
        listed.extend(self.store.list(&self.attachments_prefix()).await?);
        Ok(UsageStats {
            objects: listed.len() as u64,
            bytes: listed.iter().map(|i| i.size).sum(),
        })
    }

    /// Fetches and authenticates everything in the bucket: the newest checkpoint (index, every
    /// pack and chat block) and every segment after it, checking every device's chain from the
    /// checkpoint (or from its first segment), every claim segments make about each other, and
    /// that nothing this device already applied was rolled back; and that every chunk of every
    /// attachment referenced by this device's messages is present. Changes nothing but the cache
    /// of known checkpoints.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut scratch = SyncReport::default();
        let listed = self.list_vault(&mut scratch).await?;
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
    async fn check_attachments_present(&self) -> Result<u64> {
        let referenced = lock(&self.local)?.referenced_attachments()?;
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

    /// Writes a checkpoint of the merged state (after a full sync), so new devices and
    /// single-chat restores read a few packs instead of every segment. Returns its figures.
    pub async fn checkpoint(&self) -> Result<CheckpointReport> {
        let _guard = self.sync_lock.lock().await;
        let mut sync = SyncReport::default();
        let never = CancelToken::new();
        self.push(None, &mut sync, &never).await?;
        self.pull(None, None, &mut sync, &never).await?;
        self.write_checkpoint().await
    }

    /// Seals and uploads a checkpoint of the local state (the caller holds the sync lock and has
    /// just synced).
    async fn write_checkpoint(&self) -> Result<CheckpointReport> {
        let sealed = {
            let local = lock(&self.local)?;
            let covered: Vec<Head> = local.heads()?.into_values().collect();
            if covered.is_empty() {
                return Ok(CheckpointReport::default());
            }
            let deleted = local.deleted_chats()?;
            let seq = local
                .meta(META_CHECKPOINT_SEQ)?
                .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0)
                + 1;
            let chat_keys = lock(&self.chat_keys)?;
            let chats = local.all_chat_ids()?.into_iter().map(|chat_id| {
                let (operations, _) = local.chat_operations(&chat_id)?;
                Ok(ChatContent {
                    chat_id,
                    operations,
                })
            });
            seal_checkpoint(
                &self.keys,
                &CheckpointInput {
                    device: self.device,
                    seq,
                    covered: &covered,
                    chat_keys: &chat_keys,
                    deleted_chats: &deleted,
                    created_at_ms: now_ms(),
                },
                chats,
            )
            .map(|sealed| (sealed, seq, covered))?
        };
        let (sealed, seq, covered) = sealed;
        let mut report = CheckpointReport {
            name: sealed.index_name.clone(),
            objects: 1 + sealed.packs.len() as u64,
            bytes: sealed.index.len() as u64,
        };
        // Packs first, the index last: an index is never listed before its packs exist.
        for (name, bytes) in sealed.packs {
            report.bytes += bytes.len() as u64;
            self.store
                .put(&format!("{}{name}", self.prefix()), bytes)
                .await?;
        }
        self.store
            .put(
                &format!("{}{}", self.prefix(), sealed.index_name),
                sealed.index,
            )
            .await?;
        lock(&self.local)?.transaction(|tx| {
            local::note_checkpoint(tx, &report.name, &covered, now_ms())?;
            local::set_meta(tx, META_CHECKPOINT_SEQ, &seq.to_be_bytes())
        })?;
        Ok(report)
    }

    /// Deletes what the newest checkpoint made redundant, once it is older than `grace_ms`:
    /// the segments it covers and older checkpoints with their packs. Without locks: a device
    /// still reading those objects has had `grace_ms` to finish, and a device that falls behind
    /// starts again from the checkpoint. Returns the number of objects deleted.
    ///
    /// It also deletes attachment content that no live message references any more (after a
    /// full sync, so every device's references are known) and whose chunks are all older than
    /// `grace_ms`: content of deleted messages and chats, and chunks of uploads abandoned half
    /// way. The grace period protects an upload in progress on another device, whose message is
    /// not synced yet.
    pub async fn collect_garbage(&self, grace_ms: u64) -> Result<u64> {
        let _guard = self.sync_lock.lock().await;
        let mut scratch = SyncReport::default();
        let never = CancelToken::new();
        self.push(None, &mut scratch, &never).await?;
        self.pull(None, None, &mut scratch, &never).await?;
        let (log, _) = self.collect_log_garbage(grace_ms).await?;
        let attachments = self.collect_attachment_garbage(grace_ms).await?;
        Ok(log + attachments)
    }

    /// Deletes unreferenced attachment chunks older than `grace_ms` (the caller holds the sync
    /// lock and has just synced).
    async fn collect_attachment_garbage(&self, grace_ms: u64) -> Result<u64> {
        let referenced = lock(&self.local)?.referenced_attachments()?;
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
    /// Returns the objects deleted and the requests made.
    async fn collect_log_garbage(&self, grace_ms: u64) -> Result<(u64, u64)> {
        let mut scratch = SyncReport::default();
        let listed = self.list_vault(&mut scratch).await?;
        let Some(NewestCheckpoint {
            name: newest,
            covered,
            created_at_ms,
            ..
        }) = self.newest_checkpoint(&listed, &mut scratch).await?
        else {
            return Ok((0, scratch.requests));
        };
        if now_ms() < created_at_ms.saturating_add(grace_ms) {
            return Ok((0, scratch.requests));
        }
        let base = coverage(Some(&covered));
        let Some(newest_id) = parse_checkpoint_name(&newest) else {
            return Ok((0, scratch.requests));
        };
        // Packs are written before their index, so packs without a listed index may belong to a
        // checkpoint another device is writing right now: only packs of a listed, superseded
        // checkpoint, or of an attempt its writer has since replaced, are redundant.
        let indexes: Vec<(DeviceId, u64)> = listed
            .iter()
            .filter_map(|o| parse_checkpoint_name(&o.key))
            .collect();
        let pack_is_redundant = |key: &str| {
            let Some(rest) = key.strip_prefix(PACKS_PREFIX) else {
                return false;
            };
            let Some((device_and_seq, _)) = rest.rsplit_once('/') else {
                return false;
            };
            let Some((device, seq)) = parse_device_and_seq(device_and_seq) else {
                return false;
            };
            (device, seq) != newest_id && indexes.iter().any(|(d, s)| *d == device && *s >= seq)
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
        Ok((deleted, scratch.requests + deleted))
    }
}

/// A page of no messages would read as "the beginning of the chat": refuse it.
fn check_page_limit(limit: u32) -> Result<()> {
    if limit == 0 {
        return Err(Error::invalid_input(
            "a history page needs a limit of at least 1",
        ));
    }
    Ok(())
}

/// How old the newest checkpoint must be before a sync deletes what it replaced (7 days).
const AUTO_GC_GRACE_MS: u64 = 7 * 24 * 3_600_000;

/// GETs a pull keeps in flight.
const PULL_PREFETCH: usize = 4;

/// What a pull carries from one applied segment to the next.
struct Pulled {
    /// Chat keys known so far (those of applied segments are persisted).
    chat_keys: ChatKeys,
    /// Keys learned since the last persisted copy.
    keys_dirty: bool,
    /// Newest segment of each device whose chain was checked.
    chain_heads: BTreeMap<DeviceId, Head>,
    /// Hashes of every segment this pull fetched.
    fetched: BTreeMap<(DeviceId, u64), crate::sync::segment::SegmentHash>,
    /// Newest segment of each device the listing showed.
    available: BTreeMap<DeviceId, u64>,
    /// Segments applied, of `total`.
    done: u64,
    total: u64,
}

/// What the newest checkpoint leaves uncovered, as a pull saw it.
#[derive(Debug, Default, Clone, Copy)]
struct Uncovered {
    /// Segments not covered.
    segments: u64,
    /// Their bytes.
    bytes: u64,
    /// The newest checkpoint's bytes (index and packs), if there is one.
    checkpoint_bytes: Option<u64>,
    /// When the listing shows objects the newest checkpoint made redundant (covered segments,
    /// other checkpoints): that checkpoint's creation time.
    garbage_since_ms: Option<u64>,
}

/// The newest checkpoint in the bucket, with its index if this call fetched it.
struct NewestCheckpoint {
    name: String,
    covered: Vec<Head>,
    created_at_ms: u64,
    index: Option<CheckpointIndex>,
}

/// Segment names among listed vault objects.
fn segment_names(listed: &[ObjectInfo]) -> Vec<String> {
    listed
        .iter()
        .filter(|i| i.key.starts_with(SEGMENTS_PREFIX))
        .map(|i| i.key.clone())
        .collect()
}

/// Covered sequence number per device.
fn coverage(covered: Option<&[Head]>) -> BTreeMap<DeviceId, u64> {
    covered
        .unwrap_or_default()
        .iter()
        .map(|h| (h.device, h.seq))
        .collect()
}

fn seal_chat_keys(keys: &VaultKeys, chat_keys: &ChatKeys) -> Result<Vec<u8>> {
    let body = zeroize::Zeroizing::new(
        proto::KeySet {
            keys: chat_keys
                .entries()
                .map(|(key_id, chat_id, key)| proto::ChatKeyGrant {
                    chat_id: chat_id.to_owned(),
                    key_id: key_id.to_vec(),
                    key: key.0.bytes().to_vec(),
                })
                .collect(),
        }
        .encode_to_vec(),
    );
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::KeySet,
        name: CHAT_KEYS_NAME,
    };
    sealing::seal(&keys.keyring().0, &context, &body)
}

fn open_chat_keys(keys: &VaultKeys, sealed: &[u8]) -> Result<ChatKeys> {
    let context = ObjectContext {
        vault_id: keys.vault_id(),
        kind: ObjectKind::KeySet,
        name: CHAT_KEYS_NAME,
    };
    let body = sealing::open(&keys.keyring().0, &context, sealed)?;
    let set: proto::KeySet = decode_body(ObjectKind::KeySet, &body)?;
    let mut chat_keys = ChatKeys::new();
    for grant in set.keys {
        let malformed = || Error::LocalState("damaged chat key set".into());
        let key_id: KeyId = grant
            .key_id
            .as_slice()
            .try_into()
            .map_err(|_| malformed())?;
        let key: [u8; 32] = grant.key.as_slice().try_into().map_err(|_| malformed())?;
        chat_keys.insert(key_id, &grant.chat_id, ChatKey::from_bytes(key))?;
    }
    Ok(chat_keys)
}
