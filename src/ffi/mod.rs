//! The foreign-language facade: the only module with uniffi attributes. Swift, Kotlin and Python
//! bindings are generated from it (`uniffi/`, `bindings/`). It mirrors the Rust API one to one,
//! with types foreign languages can hold: records, one error enum, objects behind `Arc`, async
//! functions on a tokio runtime, and synchronous listener traits.
//!
//! Nothing here panics on input: every failure becomes a [`ChatVaultError`] case an app can
//! switch on.
#![allow(unsafe_code)] // uniffi's generated scaffolding is `extern "C"` glue.
#![allow(missing_docs)] // the records mirror documented Rust types field for field.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{DecodeProblem, Error};
use crate::keys::{self, Argon2Params, PassphraseEnvelope, PassphrasePolicy};
use crate::sync;
use crate::vault;

#[cfg(target_os = "android")]
mod android;
mod devices;
mod settle;

uniffi::setup_scaffolding!("chatvault");

/// Every error, as cases an app can act on. (Fields are `detail`, not `message`: Kotlin
/// exceptions already have a `message`.)
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum ChatVaultError {
    /// The recovery key text has a typo: ask the person to check it (`reason` says where).
    #[error("mistyped recovery key: {reason}")]
    MistypedKey { reason: String },
    /// The recovery key is fine but belongs to another vault than this device's state.
    #[error("wrong key: {detail}")]
    WrongKey { detail: String },
    /// The passphrase does not open the envelope.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase fails the app's policy.
    #[error("weak passphrase: {detail}")]
    WeakPassphrase { detail: String },
    /// Data from the bucket is damaged, tampered with, or in an unknown format.
    #[error("tampered or damaged data: {detail}")]
    Tampered { detail: String },
    /// The bucket's set of objects is inconsistent (missing, rolled back, replayed).
    #[error("integrity problem: {detail}")]
    Integrity { detail: String },
    /// The store failed; `retryable` says whether trying later may help.
    #[error("store error: {detail}")]
    Store { detail: String, retryable: bool },
    /// A field is larger than chatvault accepts (`field`: "payload", "kind", "text", "title");
    /// nothing of the batch was recorded. Put large data in an attachment.
    #[error("{field} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        field: String,
        size: u64,
        limit: u64,
    },
    /// An argument was rejected.
    #[error("invalid input: {detail}")]
    InvalidInput { detail: String },
    /// The device's local state failed.
    #[error("local state: {detail}")]
    LocalState { detail: String },
    /// The app cancelled the operation; what finished before stays done.
    #[error("cancelled")]
    Cancelled,
    /// The content cache does not hold this chat (cache off, or evicted within its bounds):
    /// read it from the app's database or page it from the bucket with `fetchHistory`.
    #[error("chat {chat_id:?} is not in the content cache")]
    NotCached { chat_id: String },
    /// Another process holds this device's state directory (an app and its extension take
    /// turns): try again when it is done.
    #[error("state directory busy")]
    Busy,
    /// The link offer expired before the link completed: show a new one.
    #[error("link expired: {detail}")]
    LinkExpired { detail: String },
    /// The typed check code was not the joining device's: the link is burned, start a new one.
    #[error("check code wrong: {detail}")]
    CheckCodeWrong { detail: String },
    /// The link ended without completing (a wrong code on the other device, or used already):
    /// start a new one.
    #[error("link burned: {detail}")]
    LinkBurned { detail: String },
    /// This device may not do that: it is not an active device of the vault.
    #[error("not allowed: {detail}")]
    NotAllowed { detail: String },
    /// This device was removed from the vault (revoked): it can no longer sync. Link it anew,
    /// or open the vault with the recovery key in a new state directory.
    #[error("device revoked: {detail}")]
    DeviceRevoked { detail: String },
    /// The recovery key this vault is open with was replaced (`rotateRecoveryKey`): open the
    /// vault again with the new key (the same state directory works).
    #[error("recovery key replaced: {detail}")]
    RecoveryKeyReplaced { detail: String },
    /// Anything else (for example the OS random generator failing).
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl From<Error> for ChatVaultError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::RecoveryKeyMistyped(reason) => ChatVaultError::MistypedKey {
                reason: reason.to_string(),
            },
            Error::WrongPassphrase => ChatVaultError::WrongPassphrase,
            Error::WrongDeviceKey => ChatVaultError::WrongKey { detail: message },
            Error::WeakPassphrase(message) => ChatVaultError::WeakPassphrase { detail: message },
            Error::Decode { .. } => ChatVaultError::Tampered { detail: message },
            Error::Integrity(_) => ChatVaultError::Integrity { detail: message },
            Error::Store(store) => ChatVaultError::Store {
                retryable: store.is_retryable(),
                detail: message,
            },
            Error::InvalidInput(text) if text.contains("belongs to another vault") => {
                ChatVaultError::WrongKey { detail: text }
            }
            Error::InvalidInput(message) => ChatVaultError::InvalidInput { detail: message },
            Error::LocalState(message) => ChatVaultError::LocalState { detail: message },
            Error::TooLarge { field, size, limit } => ChatVaultError::TooLarge {
                field: field.to_owned(),
                size,
                limit,
            },
            Error::Cancelled => ChatVaultError::Cancelled,
            Error::NotCached { chat_id } => ChatVaultError::NotCached { chat_id },
            Error::Busy => ChatVaultError::Busy,
            Error::Link(problem) => devices::link_error(problem, message),
            Error::DeviceRevoked => ChatVaultError::DeviceRevoked { detail: message },
            Error::RecoveryKeyReplaced => ChatVaultError::RecoveryKeyReplaced { detail: message },
            _ => ChatVaultError::Internal { detail: message },
        }
    }
}

impl From<crate::store::StoreError> for ChatVaultError {
    fn from(error: crate::store::StoreError) -> Self {
        Error::Store(error).into()
    }
}

type FfiResult<T> = Result<T, ChatVaultError>;

/// A recovery key. Keep its bytes in the Keychain / Keystore; show its text once.
#[derive(uniffi::Object)]
pub struct RecoveryKey(keys::RecoveryKey);

#[uniffi::export]
impl RecoveryKey {
    /// A new random key.
    #[uniffi::constructor]
    pub fn generate() -> FfiResult<Arc<Self>> {
        Ok(Arc::new(RecoveryKey(keys::RecoveryKey::generate()?)))
    }

    /// Parses typed text (case, spaces and dashes do not matter); typos fail with `MistypedKey`.
    #[uniffi::constructor]
    pub fn parse(text: String) -> FfiResult<Arc<Self>> {
        Ok(Arc::new(RecoveryKey(keys::RecoveryKey::parse(&text)?)))
    }

    /// A key from its 32 bytes.
    #[uniffi::constructor]
    pub fn from_bytes(bytes: Vec<u8>) -> FfiResult<Arc<Self>> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| ChatVaultError::InvalidInput {
            detail: "a recovery key is 32 bytes".into(),
        })?;
        Ok(Arc::new(RecoveryKey(keys::RecoveryKey::from_bytes(bytes))))
    }

    /// The text form: nine groups of six characters.
    pub fn to_text(&self) -> String {
        self.0.to_text().to_string()
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }

    /// The public vault id (hex): the vault's prefix in the bucket.
    pub fn vault_id(&self) -> String {
        keys::VaultKeys::derive(&self.0).vault_id().to_hex()
    }
}

/// Wraps the recovery key under a passphrase (Argon2id, default cost) for the bucket.
#[uniffi::export]
pub fn seal_passphrase_envelope(
    key: Arc<RecoveryKey>,
    passphrase: String,
    min_chars: u32,
) -> FfiResult<Vec<u8>> {
    let policy = PassphrasePolicy {
        min_chars: min_chars as usize,
        ..PassphrasePolicy::default()
    };
    Ok(PassphraseEnvelope::seal(
        &key.0,
        &passphrase,
        Argon2Params::DEFAULT,
        &policy,
    )?)
}

/// Unwraps the recovery key of vault `vault_id` (hex) from its passphrase envelope.
#[uniffi::export]
pub fn open_passphrase_envelope(
    envelope: Vec<u8>,
    vault_id: String,
    passphrase: String,
) -> FfiResult<Arc<RecoveryKey>> {
    let bytes: Option<[u8; 16]> = crate::hex::decode(&vault_id);
    let vault_id = keys::VaultId::from_bytes(bytes.ok_or(ChatVaultError::InvalidInput {
        detail: "a vault id is 32 hex characters".into(),
    })?);
    Ok(Arc::new(RecoveryKey(PassphraseEnvelope::open(
        &envelope,
        &vault_id,
        &passphrase,
    )?)))
}

/// Opens a sealed keyring object and returns its chat ids (test vectors and diagnostics).
#[uniffi::export]
pub fn open_keyring_chat_ids(
    key: Arc<RecoveryKey>,
    name: String,
    object: Vec<u8>,
) -> FfiResult<Vec<String>> {
    let keys = keys::VaultKeys::derive(&key.0);
    let keyring = crate::keyring::Keyring::open(&keys, &name, &object)?;
    Ok(keyring.chat_ids().map(str::to_owned).collect())
}

/// Opens chat data sealed under a chat key from a keyring object (test vectors).
#[uniffi::export]
pub fn open_chat_data(
    key: Arc<RecoveryKey>,
    keyring_name: String,
    keyring_object: Vec<u8>,
    chat_id: String,
    name: String,
    object: Vec<u8>,
) -> FfiResult<Vec<u8>> {
    let keys = keys::VaultKeys::derive(&key.0);
    let keyring = crate::keyring::Keyring::open(&keys, &keyring_name, &keyring_object)?;
    Ok(keyring
        .open_chat_data(&keys, &chat_id, &name, &object)?
        .to_vec())
}

/// The largest fields `Vault.record` accepts, in bytes (of UTF-8 for text), so an app can check
/// before recording (over a limit, `record` throws `TooLarge` and records nothing of the batch).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MessageLimits {
    pub max_kind_bytes: u32,
    pub max_payload_bytes: u32,
    pub max_text_bytes: u32,
}

/// How a device's content cache is set.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ContentCache {
    pub enabled: bool,
    pub max_bytes: Option<u64>,
}

/// The limits `record` enforces.
#[uniffi::export]
pub fn message_limits() -> MessageLimits {
    MessageLimits {
        max_kind_bytes: sync::model::MAX_KIND_LEN as u32,
        max_payload_bytes: sync::model::MAX_PAYLOAD_LEN as u32,
        max_text_bytes: sync::model::MAX_TEXT_LEN as u32,
    }
}

/// A chat's metadata.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Chat {
    pub chat_id: String,
    pub title: String,
    pub members: Vec<String>,
    /// Bytes the app defines, at most 64 KiB; empty by default.
    #[uniffi(default)]
    pub payload: Vec<u8>,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    pub chat_id: String,
    pub message_id: String,
    pub sender: String,
    pub sent_at_ms: i64,
    pub text: String,
    pub reply_to: Option<String>,
    /// Files attached (references from `Vault.attachFile`); empty by default.
    #[uniffi(default)]
    pub attachments: Vec<Attachment>,
    /// The app's name for the sort of message ("text", "image", "reaction", ...), at most 64
    /// bytes; empty by default.
    #[uniffi(default = "")]
    pub kind: String,
    /// Bytes the app defines (e.g. its own protobuf), at most 64 KiB; empty by default. Larger
    /// data goes in an attachment.
    #[uniffi(default)]
    pub payload: Vec<u8>,
}

/// A position in a chat's history: the send time and id of a message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryCursor {
    pub sent_at_ms: i64,
    pub message_id: String,
}

/// One page of history, oldest first; `next` is where the older page starts (null at the
/// beginning of the chat).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub next: Option<HistoryCursor>,
}

fn cursor_from(cursor: HistoryCursor) -> crate::history::HistoryCursor {
    crate::history::HistoryCursor {
        sent_at_ms: cursor.sent_at_ms,
        message_id: cursor.message_id,
    }
}

fn page_to(page: crate::history::HistoryPage) -> HistoryPage {
    HistoryPage {
        messages: page.messages.into_iter().map(message_to).collect(),
        next: page.next.map(|c| HistoryCursor {
            sent_at_ms: c.sent_at_ms,
            message_id: c.message_id,
        }),
    }
}

/// A reference to a file stored in the vault: put it in a message, download it with
/// `Vault.downloadAttachment`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Attachment {
    /// The content's keyed hash, 64 hex characters (equal for equal files in one vault).
    pub content_id: String,
    pub size: u64,
    pub chunk_size: u32,
    pub name: String,
    pub mime: String,
    /// The key epoch whose keys the content is under (0 unless a device was revoked before it
    /// was attached). Keep it with the other fields: a download needs it.
    #[uniffi(default = 0)]
    pub key_epoch: u8,
}

/// What an attachment upload or download did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TransferReport {
    pub bytes_transferred: u64,
    pub chunks_transferred: u64,
    /// Chunks already in place (deduplicated or resumed).
    pub chunks_skipped: u64,
    pub requests: u64,
}

/// An uploaded attachment: the reference for the message, and what the upload did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentUpload {
    pub attachment: Attachment,
    pub report: TransferReport,
}

/// One change to record.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Change {
    UpsertChat { chat: Chat },
    UpsertMessage { message: Message },
    DeleteMessage { chat_id: String, message_id: String },
    DeleteChat { chat_id: String },
}

/// A chat as listed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatSummary {
    pub chat: Chat,
    pub message_count: u64,
    pub message_bytes: u64,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    pub objects_up: u64,
    pub bytes_up: u64,
    pub objects_down: u64,
    pub bytes_down: u64,
    pub requests: u64,
    pub operations_sent: u64,
    pub operations_applied: u64,
    pub segments_applied: u64,
    /// Redundant objects automatic garbage collection deleted.
    pub objects_deleted: u64,
    /// Objects under the vault prefix that are no vault object: skipped (verify names them).
    pub unknown_objects: u64,
}

/// Space used in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UsageStats {
    pub objects: u64,
    pub bytes: u64,
}

/// What verify checked.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct VerifyReport {
    pub checkpoints: u64,
    pub segments: u64,
    pub devices: u64,
    pub operations: u64,
    /// Attachment contents whose chunks are all present.
    pub attachments: u64,
    /// Names under the vault prefix that are no vault object: reported, not refused.
    pub unknown: Vec<String>,
    /// Listed packs no listed checkpoint references (an interrupted checkpoint's leftovers).
    pub unreferenced_packs: u64,
    /// Roster entries fetched and authenticated.
    pub roster_entries: u64,
    /// Of those, entries the roster does not count (signed without the authority they claim).
    pub roster_refused: u64,
}

impl Vault {
    async fn open_store(
        store: Arc<dyn crate::store::ObjectStore>,
        state_dir: String,
        device_name: String,
        platform: String,
        key: Arc<RecoveryKey>,
    ) -> FfiResult<Arc<Self>> {
        let info = vault::DeviceInfo {
            name: device_name,
            platform,
        };
        let vault = vault::Vault::open(store, &PathBuf::from(state_dir), info, &key.0).await?;
        Ok(Arc::new(Vault(vault)))
    }
}

/// Sync phases for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncPhase {
    Push,
    List,
    Pull,
}

/// Progress during a sync (called on a background thread; keep it quick).
#[uniffi::export(with_foreign)]
pub trait SyncProgressListener: Send + Sync {
    fn on_progress(&self, phase: SyncPhase, done: u64, total: u64);
}

/// Progress of an attachment transfer in bytes of the file (called on a background thread;
/// keep it quick).
#[uniffi::export(with_foreign)]
pub trait TransferProgressListener: Send + Sync {
    fn on_progress(&self, done: u64, total: u64);
}

struct TransferBridge(Arc<dyn TransferProgressListener>);

impl crate::attachment::TransferListener for TransferBridge {
    fn on_progress(&self, done: u64, total: u64) {
        self.0.on_progress(done, total);
    }
}

fn attachment_to(a: crate::attachment::Attachment) -> Attachment {
    Attachment {
        content_id: a.content_id.to_hex(),
        size: a.size,
        chunk_size: a.chunk_size,
        name: a.name,
        mime: a.mime,
        key_epoch: a.key_epoch,
    }
}

fn attachment_from(a: Attachment) -> FfiResult<crate::attachment::Attachment> {
    let content_id = crate::attachment::ContentId::from_hex(&a.content_id).ok_or_else(|| {
        ChatVaultError::InvalidInput {
            detail: "attachment content id must be 64 hex characters".into(),
        }
    })?;
    Ok(crate::attachment::Attachment {
        content_id,
        size: a.size,
        chunk_size: a.chunk_size,
        name: a.name,
        mime: a.mime,
        key_epoch: a.key_epoch,
    })
}

fn transfer_report_to(r: crate::attachment::TransferReport) -> TransferReport {
    TransferReport {
        bytes_transferred: r.bytes_transferred,
        chunks_transferred: r.chunks_transferred,
        chunks_skipped: r.chunks_skipped,
        requests: r.requests,
    }
}

/// Changes from other devices, at least once; return `false` to stop the sync and get the same
/// changes again next time.
#[uniffi::export(with_foreign)]
pub trait ChangeListener: Send + Sync {
    fn on_changes(&self, device: String, changes: Vec<Change>) -> bool;
}

fn chat_to(chat: sync::Chat) -> Chat {
    Chat {
        chat_id: chat.chat_id,
        title: chat.title,
        members: chat.members,
        payload: chat.payload,
    }
}

fn message_to(m: sync::Message) -> Message {
    Message {
        chat_id: m.chat_id,
        message_id: m.message_id,
        sender: m.sender,
        sent_at_ms: m.sent_at_ms,
        text: m.text,
        reply_to: m.reply_to,
        attachments: m.attachments.into_iter().map(attachment_to).collect(),
        kind: m.kind,
        payload: m.payload,
    }
}

fn change_from(change: Change) -> FfiResult<sync::Change> {
    Ok(match change {
        Change::UpsertChat { chat } => sync::Change::UpsertChat(sync::Chat {
            chat_id: chat.chat_id,
            title: chat.title,
            members: chat.members,
            payload: chat.payload,
        }),
        Change::UpsertMessage { message: m } => sync::Change::UpsertMessage(sync::Message {
            chat_id: m.chat_id,
            message_id: m.message_id,
            sender: m.sender,
            sent_at_ms: m.sent_at_ms,
            text: m.text,
            reply_to: m.reply_to,
            attachments: m
                .attachments
                .into_iter()
                .map(attachment_from)
                .collect::<FfiResult<_>>()?,
            kind: m.kind,
            payload: m.payload,
        }),
        Change::DeleteMessage {
            chat_id,
            message_id,
        } => sync::Change::DeleteMessage {
            chat_id,
            message_id,
        },
        Change::DeleteChat { chat_id } => sync::Change::DeleteChat { chat_id },
    })
}

fn change_to(change: sync::Change) -> Change {
    match change {
        sync::Change::UpsertChat(chat) => Change::UpsertChat {
            chat: chat_to(chat),
        },
        sync::Change::UpsertMessage(m) => Change::UpsertMessage {
            message: message_to(m),
        },
        sync::Change::DeleteMessage {
            chat_id,
            message_id,
        } => Change::DeleteMessage {
            chat_id,
            message_id,
        },
        sync::Change::DeleteChat { chat_id } => Change::DeleteChat { chat_id },
    }
}

struct ProgressBridge(Arc<dyn SyncProgressListener>);

impl vault::SyncProgress for ProgressBridge {
    fn on_progress(&self, phase: vault::SyncPhase, done: u64, total: u64) {
        let phase = match phase {
            vault::SyncPhase::Push => SyncPhase::Push,
            vault::SyncPhase::List => SyncPhase::List,
            vault::SyncPhase::Pull => SyncPhase::Pull,
        };
        self.0.on_progress(phase, done, total);
    }
}

struct ChangeBridge(Arc<dyn ChangeListener>);

impl vault::ChangeListener for ChangeBridge {
    fn on_changes(&self, device: &str, operations: &[sync::Operation]) -> Result<(), String> {
        let changes = operations
            .iter()
            .map(|o| change_to(o.change.clone()))
            .collect();
        if self.0.on_changes(device.to_owned(), changes) {
            Ok(())
        } else {
            Err("the app's listener declined the changes".into())
        }
    }
}

/// Cancels a long operation from any thread: `vault.syncCancellable(…, handle)`, then
/// `handle.cancel()`; the sync stops at the next segment with `Cancelled`.
#[derive(uniffi::Object, Default)]
pub struct CancelHandle(vault::CancelToken);

#[uniffi::export]
impl CancelHandle {
    /// A handle not yet cancelled.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks the operation to stop.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// S3 credentials passed by the app (phones have no environment variables to read them from).
#[derive(Clone, uniffi::Record)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl core::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// An open vault on this device.
// Every async method's body runs inside `settle::settled`, so that no runtime thread is still
// inside a foreign continuation callback once the foreign side has a result (settle.rs: the
// Python exit abort).
#[derive(uniffi::Object)]
pub struct Vault(vault::Vault);

#[uniffi::export(async_runtime = "tokio")]
impl Vault {
    /// Opens (or joins) the vault of `key` in the store named by `store_url` (file:///…, s3://…),
    /// with this device's state in `state_dir`.
    #[uniffi::constructor]
    pub async fn open(
        store_url: String,
        state_dir: String,
        device_name: String,
        platform: String,
        key: Arc<RecoveryKey>,
    ) -> FfiResult<Arc<Self>> {
        settle::settled(async {
            let store = crate::store::open_store(&store_url)?;
            Self::open_store(store, state_dir, device_name, platform, key).await
        })
        .await
    }

    /// [`open`](Self::open) with explicit S3 credentials (ignored for other stores).
    #[uniffi::constructor]
    pub async fn open_with_credentials(
        store_url: String,
        credentials: S3Credentials,
        state_dir: String,
        device_name: String,
        platform: String,
        key: Arc<RecoveryKey>,
    ) -> FfiResult<Arc<Self>> {
        settle::settled(async {
            let store = crate::store::StoreConfig::parse(&store_url)?
                .with_credentials(
                    &credentials.access_key_id,
                    &credentials.secret_access_key,
                    credentials.session_token.as_deref(),
                )
                .open()?;
            Self::open_store(store, state_dir, device_name, platform, key).await
        })
        .await
    }

    /// The vault id (hex).
    pub fn vault_id(&self) -> String {
        self.0.vault_id()
    }

    /// Records a batch of changes locally (durable when this returns; no network).
    pub fn record(&self, changes: Vec<Change>) -> FfiResult<()> {
        Ok(self.0.record(
            changes
                .into_iter()
                .map(change_from)
                .collect::<FfiResult<_>>()?,
        )?)
    }

    /// Pushes local changes, then pulls other devices'.
    pub async fn sync(
        &self,
        progress: Option<Arc<dyn SyncProgressListener>>,
        listener: Option<Arc<dyn ChangeListener>>,
    ) -> FfiResult<SyncReport> {
        // Settled inside sync_cancellable.
        self.sync_cancellable(progress, listener, CancelHandle::new())
            .await
    }

    /// [`sync`](Self::sync) that `cancel` can stop.
    pub async fn sync_cancellable(
        &self,
        progress: Option<Arc<dyn SyncProgressListener>>,
        listener: Option<Arc<dyn ChangeListener>>,
        cancel: Arc<CancelHandle>,
    ) -> FfiResult<SyncReport> {
        settle::settled(async {
            let progress = progress.map(ProgressBridge);
            let listener = listener.map(ChangeBridge);
            let report = self
                .0
                .sync_cancellable(
                    progress.as_ref().map(|p| p as &dyn vault::SyncProgress),
                    listener.as_ref().map(|l| l as &dyn vault::ChangeListener),
                    &cancel.0,
                )
                .await?;
            Ok(SyncReport {
                objects_up: report.objects_up,
                bytes_up: report.bytes_up,
                objects_down: report.objects_down,
                bytes_down: report.bytes_down,
                requests: report.requests,
                operations_sent: report.operations_sent,
                operations_applied: report.operations_applied,
                segments_applied: report.segments_applied,
                objects_deleted: report.objects_deleted,
                unknown_objects: report.unknown_objects,
            })
        })
        .await
    }

    /// Visible chats with counts.
    pub fn chats(&self) -> FfiResult<Vec<ChatSummary>> {
        Ok(self
            .0
            .chats()?
            .into_iter()
            .map(|s| ChatSummary {
                chat: chat_to(s.chat),
                message_count: s.message_count,
                message_bytes: s.message_bytes,
            })
            .collect())
    }

    /// Live messages of a chat (or all), by chat, time, id.
    pub fn messages(&self, chat_id: Option<String>) -> FfiResult<Vec<Message>> {
        Ok(self
            .0
            .messages(chat_id.as_deref())?
            .into_iter()
            .map(message_to)
            .collect())
    }

    /// One page of a chat's history from local state: up to `limit` messages before `before`
    /// (from the newest when null), oldest first. Pass the page's `next` to get the page before
    /// it; `next` is null at the chat's beginning. No message is skipped or repeated, even when
    /// many share a millisecond.
    pub fn history_page(
        &self,
        chat_id: String,
        before: Option<HistoryCursor>,
        limit: u32,
    ) -> FfiResult<HistoryPage> {
        let before = before.map(cursor_from);
        Ok(page_to(self.0.history_page(
            &chat_id,
            before.as_ref(),
            limit,
        )?))
    }

    /// [`history_page`](Self::history_page) read from the bucket, for history no longer on the
    /// device (no local state change).
    pub async fn fetch_history(
        &self,
        chat_id: String,
        before: Option<HistoryCursor>,
        limit: u32,
    ) -> FfiResult<HistoryPage> {
        settle::settled(async {
            let before = before.map(cursor_from);
            Ok(page_to(
                self.0
                    .fetch_history(&chat_id, before.as_ref(), limit)
                    .await?,
            ))
        })
        .await
    }

    /// One chat read straight from the bucket (no local state change).
    pub async fn fetch_chat(&self, chat_id: String) -> FfiResult<Vec<Message>> {
        settle::settled(async {
            Ok(self
                .0
                .fetch_chat(&chat_id)
                .await?
                .into_iter()
                .map(message_to)
                .collect())
        })
        .await
    }

    /// Uploads the file at `path` as an attachment and returns the reference to put in a
    /// message. Streams the file (memory stays at a few MiB); content the vault already holds is
    /// not sent again; after an interruption (network loss, app killed), calling this again with
    /// the same file sends only the missing chunks.
    pub async fn attach_file(
        &self,
        path: String,
        name: String,
        mime: String,
        progress: Option<Arc<dyn TransferProgressListener>>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> FfiResult<AttachmentUpload> {
        settle::settled(async {
            let progress = progress.map(TransferBridge);
            let cancel = cancel.map(|c| c.0.clone()).unwrap_or_default();
            let (attachment, report) = self
                .0
                .attach_file(
                    &PathBuf::from(path),
                    &name,
                    &mime,
                    progress
                        .as_ref()
                        .map(|p| p as &dyn crate::attachment::TransferListener),
                    &cancel,
                )
                .await?;
            Ok(AttachmentUpload {
                attachment: attachment_to(attachment),
                report: transfer_report_to(report),
            })
        })
        .await
    }

    /// Downloads an attachment to `dest_path`, verifying it; resumes an interrupted download to
    /// the same path.
    pub async fn download_attachment(
        &self,
        attachment: Attachment,
        dest_path: String,
        progress: Option<Arc<dyn TransferProgressListener>>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> FfiResult<TransferReport> {
        settle::settled(async {
            let attachment = attachment_from(attachment)?;
            let progress = progress.map(TransferBridge);
            let cancel = cancel.map(|c| c.0.clone()).unwrap_or_default();
            let report = self
                .0
                .download_attachment(
                    &attachment,
                    &PathBuf::from(dest_path),
                    progress
                        .as_ref()
                        .map(|p| p as &dyn crate::attachment::TransferListener),
                    &cancel,
                )
                .await?;
            Ok(transfer_report_to(report))
        })
        .await
    }

    /// Every attachment live messages reference, once per content (for "download all").
    pub fn attachments(&self) -> FfiResult<Vec<Attachment>> {
        Ok(self
            .0
            .attachments()?
            .into_iter()
            .map(attachment_to)
            .collect())
    }

    /// Deletes what is no longer needed: segments and checkpoints a newer checkpoint replaced,
    /// and attachment content no live message references, when older than `grace_hours`.
    /// Attachment content goes only on a device whose content cache holds every chat and that
    /// has synced everything (call `sync` first). Returns the number of objects deleted.
    pub async fn collect_garbage(&self, grace_hours: u32) -> FfiResult<u64> {
        settle::settled(async {
            Ok(self
                .0
                .collect_garbage(u64::from(grace_hours) * 3_600_000)
                .await?)
        })
        .await
    }

    /// Sets the content cache (off on a new device; call this before recording or syncing to
    /// keep content from the start). Your database is the source of truth: with `enabled` false
    /// chatvault keeps no message content (only sync metadata, about 32 bytes per message), and
    /// `messages`, `historyPage` and `attachments` throw `NotCached` (page from the bucket with
    /// `fetchHistory`). Enabled, it keeps sealed content up to `maxBytes` (null: no bound),
    /// evicting whole chats, least recently written first, never a pinned one.
    pub fn set_content_cache(&self, enabled: bool, max_bytes: Option<u64>) -> FfiResult<()> {
        let setting = if enabled {
            crate::local::CacheSetting::On { max_bytes }
        } else {
            crate::local::CacheSetting::Off
        };
        Ok(self.0.set_content_cache(setting)?)
    }

    /// How the content cache is set (off on a new device; on, unbounded, for state directories
    /// created before that default).
    pub fn content_cache(&self) -> FfiResult<ContentCache> {
        Ok(match self.0.content_cache()? {
            crate::local::CacheSetting::Off => ContentCache {
                enabled: false,
                max_bytes: None,
            },
            crate::local::CacheSetting::On { max_bytes } => ContentCache {
                enabled: true,
                max_bytes,
            },
        })
    }

    /// Keeps a chat in the content cache whatever its bound (`pinned` false lets it go again).
    pub fn pin_chat(&self, chat_id: String, pinned: bool) -> FfiResult<()> {
        Ok(self.0.pin_chat(&chat_id, pinned)?)
    }

    /// Rebuilds the content cache of one chat from the bucket (after pushing this device's
    /// changes): for a chat that questions answer with `NotCached` because the cache evicted it,
    /// was turned on after it, or found its content damaged or stale. Sync first. Does nothing
    /// with the cache off.
    pub async fn refill_cache(&self, chat_id: String) -> FfiResult<()> {
        settle::settled(async { Ok(self.0.refill_cache(&chat_id).await?) }).await
    }

    /// Bytes of sealed message content the cache holds on this device.
    pub fn content_cache_bytes(&self) -> FfiResult<u64> {
        Ok(self.0.content_cache_bytes()?)
    }

    /// Objects and bytes in the bucket.
    pub async fn usage(&self) -> FfiResult<UsageStats> {
        settle::settled(async {
            let usage = self.0.usage().await?;
            Ok(UsageStats {
                objects: usage.objects,
                bytes: usage.bytes,
            })
        })
        .await
    }

    /// Fetches and authenticates everything.
    pub async fn verify(&self) -> FfiResult<VerifyReport> {
        settle::settled(async {
            let report = self.0.verify().await?;
            Ok(VerifyReport {
                checkpoints: report.checkpoints,
                segments: report.segments,
                devices: report.devices,
                operations: report.operations,
                attachments: report.attachments,
                unknown: report.unknown,
                unreferenced_packs: report.unreferenced_packs,
                roster_entries: report.roster_entries,
                roster_refused: report.roster_refused,
            })
        })
        .await
    }
}

impl From<DecodeProblem> for ChatVaultError {
    fn from(problem: DecodeProblem) -> Self {
        ChatVaultError::Tampered {
            detail: problem.to_string(),
        }
    }
}
