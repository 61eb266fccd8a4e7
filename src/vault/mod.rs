//! The vault: what an app opens. It records changes locally, syncs them with the bucket (push,
//! then pull), and answers questions about the merged state.
//!
//! The sync logic itself lives in [`crate::sync`] and does no I/O; this module moves bytes between
//! the store, the local state and that logic. See `docs/SYNC.md`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt as _;
use prost::Message as _;

use crate::attachment::{Attachment, TransferListener, TransferReport};
use crate::error::{Error, Result};
use crate::format::{ObjectKind, decode_body, proto};
use crate::history::{HistoryCursor, HistoryPage};
use crate::keys::{ChatKey, KeyEpochs, RecoveryKey, VaultKeys};
use crate::local::{self, CacheSetting, ChatSummary, LocalState, PendingSegment};
use crate::sealing::{self, ObjectContext};
use crate::store::{ObjectInfo, ObjectStore};
use crate::sync::batch::EncodedBatch;
use crate::sync::checkpoint::{
    CheckpointIndex, checkpoint_due, open_block, open_checkpoint_index, parse_checkpoint_name,
    parse_pack_name,
};
use crate::sync::segment::{
    ChatKeys, Head, KeyId, MAX_SEGMENT_BODY, NewSegment, OpenedSegment, open_blocks, open_segment,
    parse_segment_name, random_tag, seal_segment,
};
use crate::sync::{Change, Clock, DeviceId, Message, Operation, Stamp, clock::now_ms};

mod checkpointing;
mod device_key;
mod epochs;
mod fork;
mod identity;
mod link;
mod maintenance;
mod opening;
mod pull;
mod reading;
mod revoke;
mod roster;
mod rotate;
#[cfg(test)]
mod test_devices;
mod vouching;

pub use device_key::{DeviceKey, holds_linked_device};
pub use link::{DEFAULT_LINK_TIMEOUT, LINK_POLL, LinkJoining, LinkOffering, MAX_LINK_TIMEOUT};
use maintenance::AUTO_GC_GRACE_MS;
pub use roster::VaultDevice;

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

impl DeviceInfo {
    /// Refuses a name longer than the roster carries
    /// ([`MAX_DEVICE_NAME_LEN`](crate::sync::roster::MAX_DEVICE_NAME_LEN) bytes of UTF-8) or a
    /// platform longer than [`MAX_PLATFORM_LEN`](crate::sync::roster::MAX_PLATFORM_LEN).
    fn check(&self) -> Result<()> {
        use crate::sync::roster::{MAX_DEVICE_NAME_LEN, MAX_PLATFORM_LEN};
        if self.name.len() > MAX_DEVICE_NAME_LEN {
            return Err(Error::invalid_input(format!(
                "a device name may hold at most {MAX_DEVICE_NAME_LEN} bytes of UTF-8"
            )));
        }
        if self.platform.len() > MAX_PLATFORM_LEN {
            return Err(Error::invalid_input(format!(
                "a platform name may hold at most {MAX_PLATFORM_LEN} bytes of UTF-8"
            )));
        }
        Ok(())
    }
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
    /// HTTP requests the store sent (every LIST page, GET, PUT, DELETE and retry; for local
    /// stores, one per operation).
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
    /// Objects under the vault prefix that are no vault object: skipped, not refused (`verify`
    /// names them).
    pub unknown_objects: u64,
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
    /// Roster entries fetched and authenticated.
    pub roster_entries: u64,
    /// Of those, entries the roster's fold does not count (a signature that does not verify
    /// under its signer's key, a missing parent, an entry a revocation or a later epoch
    /// excludes): written by a device without the authority it claimed, or left behind by a
    /// race the fold settled.
    pub roster_refused: u64,
    /// Names under the vault prefix that are no vault object (relative to the prefix): not
    /// refused, never deleted, skipped by every device. Something else wrote them there.
    pub unknown: Vec<String>,
    /// Listed packs no listed checkpoint references (left by a checkpoint whose writer was
    /// interrupted, or being written right now); garbage collection removes them once a later
    /// checkpoint supersedes their writer's attempt.
    pub unreferenced_packs: u64,
}

/// An open vault on one device.
pub struct Vault {
    keys: VaultKeys,
    store: Arc<dyn ObjectStore>,
    /// This device's id: fixed, except when this state directory turns out to be a copy of
    /// another that writes as the same device (see `fork_off`).
    device: Mutex<DeviceId>,
    /// This device's own keys (`identity.rs`), replaced with the id by `fork_off`.
    device_secrets: Mutex<crate::devices::DeviceSecrets>,
    /// The recovery key's signer, when the vault is open with the recovery key.
    recovery_signer: Option<crate::devices::RecoverySigner>,
    /// The key epochs this device holds (`epochs.rs`): segments, checkpoint indexes and roster
    /// entries open with the tree of the epoch their header names and are sealed in the newest
    /// confirmed one. (`keys` is the tree the local state is sealed with: epoch 0's, or for a
    /// linked device the one of the epoch it joined in.)
    epochs: Mutex<Arc<crate::keys::HeldEpochs>>,
    /// The recovery key's own keys, when the vault is open with the recovery key.
    recovery_secrets: Option<crate::devices::DeviceSecrets>,
    /// The recovery key's X25519 public key: new epochs' secrets are boxed to it.
    recovery_agreement_key: [u8; 32],
    /// The roster's root of trust: the first recovery key's signing public key.
    roster_root: [u8; 32],
    /// The roster as the last sync folded it (`None` until something folds it).
    /// Shared, not copied: every fetched segment is checked against it.
    roster: Mutex<Option<Arc<crate::sync::roster::Roster>>>,
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
    /// Added to the system clock wherever this vault reads the time (see
    /// [`set_clock_offset_ms`](Vault::set_clock_offset_ms)).
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

impl core::fmt::Debug for Vault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vault")
            .field("vault_id", self.keys.vault_id())
            .field("device", &self.device_id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| Error::LocalState("a previous operation panicked".into()))
}

impl Vault {
    /// The vault's public id (its prefix in the bucket).
    pub fn vault_id(&self) -> String {
        self.keys.vault_id().to_hex()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        // A poisoned lock still holds a valid id.
        match self.device.lock() {
            Ok(device) => *device,
            Err(poisoned) => *poisoned.into_inner(),
        }
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

    /// Shifts the time this vault reads from the system clock by `offset_ms` (negative: back):
    /// for tests that give a device a clock a year ahead or behind, and for an app that knows
    /// its device's clock is wrong (from a trusted time source). Stamps are an order, never a
    /// displayed time, so no correction is needed for correctness: the clock rule in
    /// `docs/SYNC.md` keeps devices converging whatever their clocks say. Not persisted.
    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.clock_offset_ms
            .store(offset_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The time as this vault sees it: the system clock plus
    /// [`set_clock_offset_ms`](Self::set_clock_offset_ms).
    pub(crate) fn now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(
            self.clock_offset_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
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
            &*self.epochs()?,
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
            &*self.epochs()?,
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
        // Every local event orders after every stamp already in the local state, including
        // those applied without passing the clock (a restore from a checkpoint): otherwise
        // this batch could lose, silently, to a version the index already holds.
        if let Some(greatest) = local.greatest_stamp() {
            new_clock.observe(greatest);
        }
        let mut created: Vec<KeyId> = Vec::new();
        let now = self.now_ms();
        // Keys of the epoch this device writes in (a new one after a revocation).
        let epoch = self.epochs()?.newest().0;
        let operations: Vec<Operation> = changes
            .into_iter()
            .map(|change| {
                Ok(Operation {
                    stamp: new_clock.tick(now)?,
                    change,
                })
            })
            .collect::<Result<_>>()?;
        // The key set is copied only when a chat needs its first key (rare after the first
        // batches), not on every record.
        let mut new_keys: Option<ChatKeys> = None;
        for operation in &operations {
            let chat_id = operation.change.chat_id();
            let known = new_keys.as_ref().unwrap_or(&chat_keys);
            if known.writing_key(chat_id, epoch).is_none() {
                let key_id = new_keys
                    .get_or_insert_with(|| chat_keys.clone())
                    .mint(chat_id, epoch)?;
                created.push(key_id);
            }
        }
        let sealed_keys = match &new_keys {
            Some(keys) => Some(seal_chat_keys(&self.keys, keys)?),
            None => None,
        };
        // Each operation is encoded once here; pushing copies these bytes into segments, and
        // the content cache seals them as they are.
        let mut rows = vec![EncodedBatch::new()];
        for operation in &operations {
            if rows
                .last()
                .is_some_and(|row| row.encoded_len() >= local::OUTBOX_ROW_TARGET)
            {
                rows.push(EncodedBatch::new());
            }
            if let Some(row) = rows.last_mut() {
                row.push(operation);
            }
        }
        local.record(&operations, &rows, |tx| {
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
        if let Some(keys) = new_keys {
            *chat_keys = keys;
        }
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
        // Requests are what the store sent over the wire (every LIST page, retry and multipart
        // part), not what this code asked for. Anything else using the same store meanwhile (an
        // attachment transfer) counts too.
        let requests_before = self.store.requests_sent();
        let mut report = SyncReport::default();
        cancel.check()?;
        self.before_writing(&mut report).await?;
        self.push(progress, &mut report, cancel).await?;
        let uncovered = self.pull(progress, listener, &mut report, cancel).await?;
        // A checkpoint is written from the bucket (the newest checkpoint and the segments after
        // it), so any device writes one when it is due, with or without the content cache.
        if checkpoint_due(
            uncovered.segments,
            uncovered.bytes,
            uncovered.checkpoint_bytes,
        ) {
            let written = self.write_checkpoint().await?;
            report.objects_up += written.objects;
            report.bytes_up += written.bytes;
        } else if let Some(age_ms) = uncovered.garbage_age_ms {
            // What the newest checkpoint replaced goes once it is old enough: no app has to
            // remember to call collect_garbage for the bucket to stop growing.
            let grace = self
                .auto_gc_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if age_ms >= grace {
                let mut scratch = SyncReport::default();
                let mut pass = self.start_pass(&mut scratch).await?;
                let deleted = self.collect_log_garbage(&mut pass, grace).await?;
                report.objects_deleted += deleted;
            }
        }
        if report.operations_sent > 0 || report.segments_applied > 0 {
            // Drained outbox rows and applied segments leave free pages and a log behind; once
            // there are enough of them they go back to the file system.
            lock(&self.local)?.compact()?;
        }
        report.requests = self.store.requests_sent().saturating_sub(requests_before);
        Ok(report)
    }

    /// Uploads a staged segment under a name nothing else may hold, then commits it as this
    /// device's head.
    async fn upload(&self, pending: PendingSegment, report: &mut SyncReport) -> Result<()> {
        let mut pending = pending;
        loop {
            let size = pending.object.len() as u64;
            // A name already taken with the same bytes is this device's own earlier attempt (a
            // retry after a lost answer, or after a crash); with other bytes, another copy of
            // this state directory writing as the same device (a clone).
            if !self.put_once(&pending.name, pending.object.clone()).await? {
                pending = self
                    .fork_off(Some(pending))?
                    .ok_or_else(|| Error::LocalState("no segment resealed".into()))?;
                continue;
            }
            report.objects_up += 1;
            report.bytes_up += size;
            let name = parse_segment_name(&pending.name)
                .ok_or_else(|| Error::LocalState("a staged segment of no segment name".into()))?;
            return lock(&self.local)?
                .transaction(|tx| local::commit_head(tx, &name, &pending.hash, size));
        }
    }

    /// Writes `bytes` under `name` (inside the vault prefix) unless something else is there:
    /// the same bytes (this device's own earlier attempt whose answer was lost) count as
    /// written; other bytes mean another copy of this state directory took the name (`false`).
    async fn put_once(&self, name: &str, bytes: Vec<u8>) -> Result<bool> {
        let key = format!("{}{name}", self.prefix());
        if self.store.put_if_absent(&key, bytes.clone()).await? {
            return Ok(true);
        }
        match self.store.get(&key, bytes.len() as u64).await {
            Ok(existing) => Ok(existing.as_deref() == Some(bytes.as_slice())),
            // Longer than ours: not ours.
            Err(crate::store::StoreError::TooLarge { .. }) => Ok(false),
            Err(other) => Err(other.into()),
        }
    }

    async fn push(
        &self,
        progress: Option<&dyn SyncProgress>,
        report: &mut SyncReport,
        cancel: &CancelToken,
    ) -> Result<()> {
        cancel.check()?;
        lock(&self.local)?.refuse_untagged_vault()?;
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
                // A copy, taken before the local state's lock (`fork_off` takes the keys' lock
                // while it holds that one).
                let signer = identity::copy(&*lock(&self.device_secrets)?);
                // The chat keys' lock before the local state's, in the order `record` takes them.
                let mut chat_keys = lock(&self.chat_keys)?;
                let mut local = lock(&self.local)?;
                let Some((last_id, operations)) = local.outbox(MAX_SEGMENT_BODY / 2)? else {
                    break;
                };
                let heads = local.heads()?;
                let device = self.device_id();
                let (own, seen): (Vec<Head>, Vec<Head>) =
                    heads.into_iter().partition(|h| h.device == device);
                // A pull that finds a segment of this id it did not write forks off before
                // anything more is pushed, so this id's own tree never branches here.
                if own.len() > 1 {
                    return Err(Error::LocalState(format!(
                        "this device's own segments have {} tips; it should have forked off",
                        own.len()
                    )));
                }
                let own = own.first().copied();
                let epochs = self.epochs()?;
                let epoch = epochs.newest().0;
                let mut grants = local.ungranted_keys()?;
                // Operations recorded before this device moved to a new epoch: their chats get
                // keys of the new one, granted with them.
                let mut minted = Vec::new();
                for (chat_id, _) in operations.chats() {
                    if chat_keys.writing_key(chat_id, epoch).is_none() {
                        minted.push(chat_keys.mint(chat_id, epoch)?);
                    }
                }
                if !minted.is_empty() {
                    let sealed = seal_chat_keys(&self.keys, &chat_keys)?;
                    local.transaction(|tx| {
                        local::set_meta(tx, META_CHAT_KEYS, &sealed)?;
                        minted
                            .iter()
                            .try_for_each(|key_id| local::add_ungranted_key(tx, key_id))
                    })?;
                    grants.extend(minted);
                }
                // A chat deleted and then written to again: checkpoints leave the keys of
                // deleted chats out, so a device that starts from one written after the
                // deletion knows no key for it. The segment grants its key again.
                let deleted: std::collections::BTreeSet<String> = local
                    .deleted_chats()?
                    .into_iter()
                    .map(|(chat_id, _)| chat_id)
                    .collect();
                for (chat_id, _) in operations.chats() {
                    if deleted.contains(chat_id)
                        && let Some((key_id, _)) = chat_keys.writing_key(chat_id, epoch)
                        && !grants.contains(&key_id)
                    {
                        grants.push(key_id);
                    }
                }
                let seq = own.map_or(1, |h| h.seq + 1);
                let (name, object, hash) = seal_segment(
                    &*epochs,
                    &chat_keys,
                    &NewSegment {
                        device,
                        seq,
                        tag: random_tag()?,
                        previous: own.map(|h| (h.tag, h.hash)),
                        seen: &seen,
                        grants: &grants,
                        operations: &operations,
                        device_name: &self.info.name,
                        platform: &self.info.platform,
                        signer: Some(&signer),
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

    /// How the content cache is set (off on a new device unless the app turned it on; on for
    /// state directories created before that default).
    pub fn content_cache(&self) -> Result<CacheSetting> {
        lock(&self.local)?.cache_setting()
    }

    /// Sets the content cache: the app's database is the source of truth, and chatvault keeps
    /// message content only to answer [`messages`](Self::messages),
    /// [`history_page`](Self::history_page) and exports. Off (a new device's default), it keeps
    /// none (the version index, 32 bytes per message, keeps the merge correct); bounded, it
    /// evicts whole chats, least recently written first. Queries about content it does not hold
    /// fail with [`Error::NotCached`]; nothing evicted leaves the vault.
    pub fn set_content_cache(&self, setting: CacheSetting) -> Result<()> {
        lock(&self.local)?.set_cache_setting(setting)
    }

    /// Keeps a chat in the content cache whatever its bound (or lets it go again).
    pub fn pin_chat(&self, chat_id: &str, pinned: bool) -> Result<()> {
        lock(&self.local)?.pin_chat(chat_id, pinned)
    }

    /// Bytes of (sealed, compressed) message content the cache holds.
    pub fn content_cache_bytes(&self) -> Result<u64> {
        lock(&self.local)?.cache_bytes()
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

impl Vault {
    /// Adds `grants` to this device's chat keys and keeps the set.
    fn keep_chat_keys(&self, grants: &[crate::sync::segment::KeyGrant]) -> Result<()> {
        if grants.is_empty() {
            return Ok(());
        }
        let mut chat_keys = lock(&self.chat_keys)?;
        let mut next = chat_keys.clone();
        for grant in grants {
            next.learn(grant)?;
        }
        let sealed = seal_chat_keys(&self.keys, &next)?;
        // Granted again in this device's next segment: a device that pulls segments instead of
        // adopting the checkpoint learns them there.
        lock(&self.local)?.transaction(|tx| {
            local::set_meta(tx, META_CHAT_KEYS, &sealed)?;
            grants
                .iter()
                .try_for_each(|grant| local::add_ungranted_key(tx, &grant.key_id))
        })?;
        *chat_keys = next;
        Ok(())
    }
}

fn seal_chat_keys(keys: &VaultKeys, chat_keys: &ChatKeys) -> Result<Vec<u8>> {
    let body = zeroize::Zeroizing::new(
        proto::KeySet {
            keys: chat_keys
                .entries()
                .filter_map(|(key_id, _, _, _)| chat_keys.grant(key_id))
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
        let epoch = u8::try_from(grant.epoch).map_err(|_| malformed())?;
        chat_keys.insert(key_id, &grant.chat_id, ChatKey::from_bytes(key), epoch)?;
    }
    Ok(chat_keys)
}
