//! The error type of every fallible chatvault call.
//!
//! Errors are typed so that an app can act on them: a mistyped recovery key is reported while the
//! person is still typing it ([`Error::RecoveryKeyMistyped`]), a wrong passphrase is not confused
//! with a damaged envelope beyond what cryptography allows, and anything that came out of the
//! bucket and does not decode is an [`Error::Decode`] naming the object kind and the problem.

use crate::format::ObjectKind;

/// Result alias used throughout chatvault.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in chatvault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The recovery key text does not parse: the person mistyped it (or it is not a chatvault key).
    #[error("recovery key mistyped: {0}")]
    RecoveryKeyMistyped(#[from] RecoveryKeyError),

    /// An object (from the bucket, a file or local state) failed to decode or authenticate.
    ///
    /// With [`DecodeProblem::AuthenticationFailed`] the object was tampered with, sealed under
    /// another key (a different vault or chat), or moved to another name.
    #[error("{kind} object rejected: {problem}")]
    Decode {
        /// What was being decoded.
        kind: ObjectKind,
        /// Why it was rejected.
        problem: DecodeProblem,
    },

    /// The passphrase does not open the passphrase envelope (or the envelope was tampered with:
    /// the two cannot be told apart).
    #[error("wrong passphrase (or the passphrase envelope was tampered with)")]
    WrongPassphrase,

    /// The device key does not open this state directory's device keys (or they were tampered
    /// with: the two cannot be told apart). The app passed another key than the device joined
    /// with.
    #[error("wrong device key for this state directory (or its device keys were tampered with)")]
    WrongDeviceKey,

    /// The passphrase fails the app's [`PassphrasePolicy`](crate::keys::PassphrasePolicy).
    #[error("passphrase too weak: {0}")]
    WeakPassphrase(String),

    /// An argument from the caller is not acceptable (empty chat id, unknown chat, oversized input, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The bucket's set of objects is inconsistent with what the vault's devices wrote: an object
    /// is missing, rolled back, replayed or misplaced. Nothing from the sync was applied.
    #[error("integrity problem in the bucket: {0}")]
    Integrity(IntegrityProblem),

    /// A field the app passed is larger than chatvault accepts (`field` names it: `payload`,
    /// `kind`, `text`, `title`). Nothing of the batch was recorded. A payload this large belongs
    /// in an attachment.
    #[error("{field} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size in bytes.
        size: u64,
        /// The most accepted.
        limit: u64,
    },

    /// The object store failed (network, credentials, throttling, disk).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),

    /// The local state database failed or is damaged.
    #[error("local state: {0}")]
    LocalState(String),

    /// The content cache does not hold this chat (the cache is off, or the chat was evicted to
    /// keep the cache within its bounds): read its history from the bucket
    /// ([`Vault::fetch_history`](crate::vault::Vault::fetch_history)) or from the app's own
    /// database. Nothing is lost: eviction never removes anything from the vault.
    #[error("chat {chat_id:?} is not in the content cache")]
    NotCached {
        /// The chat asked for (empty when the question was about every chat).
        chat_id: String,
    },

    /// The app cancelled the operation through its [`CancelToken`](crate::vault::CancelToken).
    /// Everything done before the cancellation is durable; running it again continues.
    #[error("cancelled")]
    Cancelled,

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,

    /// Another process (or another `Vault` in this one) holds this device's state directory:
    /// one writer per state directory, so that two never seal the same sequence number. An app
    /// and its share extension take turns; try again when the other is done.
    #[error("the state directory is in use by another process")]
    Busy,

    /// This device's clock reads past the latest time a stamp may carry (the year 6429, see
    /// [`MAX_WALL_MS`](crate::sync::clock::MAX_WALL_MS)): nothing was recorded. Set the clock
    /// right; stamps past the bound would be rejected by every other device.
    #[error("the device clock reads past the latest time chatvault can stamp (the year 6429)")]
    ClockOutOfRange,

    /// A device link ended without linking (docs/DEVICES.md, "Linking"): start a new one.
    #[error("device link failed: {0}")]
    Link(LinkProblem),

    /// This device was revoked (removed from the vault by another device or the recovery key):
    /// it can no longer sync, and it holds no key of anything written after its revocation.
    /// What it holds locally stays; to use the vault again, link it anew or open it with the
    /// recovery key in a new state directory.
    #[error("this device was removed from the vault")]
    DeviceRevoked,

    /// The recovery key this vault is open with was replaced by a newer one
    /// ([`Vault::rotate_recovery_key`](crate::vault::Vault::rotate_recovery_key)): it opens
    /// nothing written since. Open the vault again with the new key (the same state directory
    /// works).
    #[error("this recovery key was replaced by a newer one; open the vault with the new key")]
    RecoveryKeyReplaced,
}

/// Why a device link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkProblem {
    /// The typed check code is not the joining device's: the link is burned (one attempt, so a
    /// bucket that swapped the joiner's key has one chance in a million).
    #[error("the check code does not match; this link is burned")]
    CheckCodeWrong,
    /// The link was burned before (a wrong code), or is used before its code was confirmed.
    #[error("this link is burned or not confirmed")]
    Burned,
    /// The offer expired before the link completed: show a new one.
    #[error("the link offer expired; start a new link")]
    Expired,
    /// Another device answered this offer first: show a new one.
    #[error("another device already answered this link offer; start a new link")]
    AlreadyUsed,
    /// This device may not add devices: it is not an active device of the vault's roster (not
    /// added yet, or revoked).
    #[error("this device is not an active device of the vault, so it cannot link another")]
    NotAllowed,
}

impl From<crate::sync::clock::ClockOutOfRange> for Error {
    fn from(_: crate::sync::clock::ClockOutOfRange) -> Self {
        Error::ClockOutOfRange
    }
}

impl Error {
    pub(crate) fn decode(kind: ObjectKind, problem: DecodeProblem) -> Self {
        Error::Decode { kind, problem }
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
}

/// Why a recovery key text was rejected. Each case is a typing mistake the app can explain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryKeyError {
    /// The text has the wrong number of key characters (spaces and dashes do not count).
    #[error("expected {expected} characters, found {found}")]
    WrongLength {
        /// Characters found, not counting separators.
        found: usize,
        /// Characters a recovery key has.
        expected: usize,
    },
    /// A character outside the recovery-key alphabet.
    #[error("character {character:?} at position {position} is not used in recovery keys")]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// 1-based position among the key characters (separators not counted).
        position: usize,
    },
    /// Every character is valid but the checksum does not match: some character is mistyped.
    #[error("checksum mismatch: a character is mistyped")]
    ChecksumMismatch,
    /// The key is well-formed but of a version this library does not know (made by a newer app).
    #[error("recovery key version {0} is not supported by this version of chatvault")]
    UnsupportedVersion(u8),
}

/// What is wrong with the bucket's set of segments. Devices are named by their hex id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityProblem {
    /// A segment that must exist is not in the bucket (deleted, or withheld by the store).
    #[error("segment {seq} of device {device} is missing")]
    MissingSegment {
        /// Device that wrote it.
        device: String,
        /// Its sequence number.
        seq: u64,
    },
    /// The bucket shows fewer segments of a device than were already seen (a rollback).
    #[error(
        "device {device} rolled back: {seen} segments were seen before, the bucket has {found}"
    )]
    RolledBack {
        /// The device.
        device: String,
        /// Segments known to exist.
        seen: u64,
        /// Segments present now.
        found: u64,
    },
    /// A segment does not follow its predecessor in its device's hash chain (replaced, replayed
    /// or reordered).
    #[error("segment {seq} of device {device} breaks the device's hash chain")]
    ChainBroken {
        /// The device.
        device: String,
        /// The segment.
        seq: u64,
    },
    /// An object that the vault's index or listing names is not in the bucket.
    #[error("object {name} is missing")]
    MissingObject {
        /// The object's name.
        name: String,
    },
    /// A segment's content does not match the name it is stored under.
    #[error("object {name} holds content that belongs elsewhere")]
    Misplaced {
        /// The object's name.
        name: String,
    },
    /// An object's size is not the size the listing or the checkpoint index promises (bytes
    /// appended or cut off by the store).
    #[error("object {name} has {found} bytes where {expected} were promised")]
    WrongSize {
        /// The object's name.
        name: String,
        /// The size promised.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A segment of a revoked device past the tips its revocation pinned (written after it was
    /// revoked, or by someone holding its keys), or, once a device was revoked or the recovery
    /// key replaced, of a device the roster does not list, or an unsigned one of a listed device
    /// outside the unsigned tips its roster entry names: refused by every device.
    #[error("segment {seq} of device {device} is not one its roster entry lets count")]
    RevokedWriter {
        /// The device whose id the segment is under.
        device: String,
        /// The segment.
        seq: u64,
    },
    /// An object is not the one a checkpoint index vouched for: a block whose SHA-256 differs
    /// from the one its index records, or an index read again that no longer carries the
    /// signature it had when this device judged it. Overwritten in the bucket (by anyone who
    /// can write there; with a chat key or the log key of its epoch, so that it still opens).
    #[error("{name} was replaced: its bytes are not the ones vouched for")]
    Replaced {
        /// The object's name (for a block: its pack's name and the block's).
        name: String,
    },
    /// The device roster's entries do not settle on one roster (docs/DEVICES.md, "Roster"): a
    /// bucket or a key holder wrote entries whose counting depends on each other in a circle.
    #[error("the device roster is contested")]
    RosterContested,
    /// A segment's operations are sealed under a chat key no segment granted.
    #[error("segment {seq} of device {device} uses an unknown chat key")]
    UnknownKey {
        /// The device.
        device: String,
        /// The segment.
        seq: u64,
    },
}

/// Why an object was rejected. Never more detail than is safe: authentication failures do not say
/// which byte was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeProblem {
    /// The object ends before its structure does.
    #[error("truncated: needed at least {needed} bytes, got {got}")]
    Truncated {
        /// Minimum size needed to go on.
        needed: usize,
        /// Size present.
        got: usize,
    },
    /// The object, or a length declared inside it, exceeds the format's limit.
    #[error("too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Size found or declared.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The first bytes are not the chatvault magic: not a chatvault object.
    #[error("not a chatvault object (bad magic)")]
    BadMagic,
    /// A format version this library does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// A cipher suite this library does not implement.
    #[error("unsupported cipher suite {0}")]
    UnsupportedSuite(u8),
    /// The header names a different object kind than the one expected at this place.
    #[error("object kind {found} where {expected} was expected")]
    WrongKind {
        /// Kind expected by the caller.
        expected: u8,
        /// Kind found in the header.
        found: u8,
    },
    /// Bits reserved by this format version are set.
    #[error("reserved header bits set")]
    ReservedBitsSet,
    /// The AEAD tag does not verify: tampered, wrong key (other vault or chat), or moved object.
    #[error("authentication failed: tampered, sealed under another key, or moved")]
    AuthenticationFailed,
    /// Authenticated content that violates the format (possible only with a buggy or hostile writer
    /// that holds the key).
    #[error("malformed content: {0}")]
    Malformed(String),
    /// A signature does not verify under the signer's key (forged, altered, or another signer).
    #[error("bad signature")]
    BadSignature,
    /// The object is sealed in another key epoch than the one whose key the reader used.
    #[error("sealed in key epoch {found}, expected {expected}")]
    KeyEpoch {
        /// The epoch whose key the reader holds for it.
        expected: u8,
        /// The epoch its header names.
        found: u8,
    },
}
