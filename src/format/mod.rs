//! The on-bucket byte format: the header every object starts with, the object kinds, size limits,
//! and the protobuf messages inside sealed objects.
//!
//! `docs/FORMAT.md` is the normative description; this module is its implementation.

use crate::error::{DecodeProblem, Error, Result};

/// Protobuf messages generated from `proto/chatvault/v1/chatvault.proto` (checked in; a test
/// keeps them current).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!("chatvault.v1.rs");
}

/// The four bytes every chatvault object starts with.
pub const MAGIC: [u8; 4] = *b"CVLT";
/// The format version this library writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The format version of objects sealed in a key epoch other than 0 (docs/DEVICES.md): the
/// header's last byte holds the epoch.
pub const FORMAT_VERSION_EPOCHS: u8 = 2;
/// Length of the fixed object header.
pub const HEADER_LEN: usize = 8;
/// The largest object this library writes or reads (64 MiB). Larger input is rejected before any
/// allocation that depends on it.
pub const MAX_OBJECT_LEN: usize = 64 * 1024 * 1024;

/// The cipher suites a sealed object can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CipherSuite {
    /// XChaCha20-Poly1305 with a random 192-bit nonce (suite id 1).
    XChaCha20Poly1305 = 1,
    /// XChaCha20-Poly1305 STREAM chunks of an attachment: a per-file key and a nonce made of the
    /// chunk counter and the last-chunk flag (suite id 2; see `attachment::stream`).
    XChaCha20Poly1305Stream = 2,
}

impl CipherSuite {
    /// The suite's id in the header.
    pub fn id(self) -> u8 {
        self as u8
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(CipherSuite::XChaCha20Poly1305),
            2 => Some(CipherSuite::XChaCha20Poly1305Stream),
            _ => None,
        }
    }
}

/// What an object is. The kind is in the header and bound into the associated data, so an object
/// of one kind can never be opened as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectKind {
    /// The keyring of per-chat keys, sealed under the keyring key.
    Keyring = 1,
    /// Content of one chat, sealed under that chat's key.
    ChatData = 2,
    /// The recovery key wrapped under a passphrase.
    PassphraseEnvelope = 3,
    /// A batch of one device's operations, sealed under the log key.
    Segment = 4,
    /// A set of chat keys kept in a device's local state, sealed under the keyring key.
    KeySet = 5,
    /// The index of a checkpoint (the merged state in packs), sealed under the log key.
    CheckpointIndex = 6,
    /// One chunk of an attachment's content, sealed under that content's file key.
    AttachmentChunk = 7,
    /// A key sealed to one device's X25519 key (docs/DEVICES.md); not a sealed object itself.
    KeyBox = 8,
    /// A message of the device-linking channel (docs/DEVICES.md); not a sealed object itself.
    LinkMessage = 9,
    /// One epoch's secret, boxed for devices and the recovery key (docs/DEVICES.md).
    Epoch = 10,
    /// One signed entry of the device roster (docs/DEVICES.md), sealed under a log key.
    Roster = 11,
    /// Where a rotated recovery key's vault is (docs/DEVICES.md), sealed under a key the new
    /// recovery key derives.
    Redirect = 12,
}

impl ObjectKind {
    /// The kind's id in the header.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The kind with this id, if this library knows it.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(ObjectKind::Keyring),
            2 => Some(ObjectKind::ChatData),
            3 => Some(ObjectKind::PassphraseEnvelope),
            4 => Some(ObjectKind::Segment),
            5 => Some(ObjectKind::KeySet),
            6 => Some(ObjectKind::CheckpointIndex),
            7 => Some(ObjectKind::AttachmentChunk),
            8 => Some(ObjectKind::KeyBox),
            9 => Some(ObjectKind::LinkMessage),
            10 => Some(ObjectKind::Epoch),
            11 => Some(ObjectKind::Roster),
            12 => Some(ObjectKind::Redirect),
            _ => None,
        }
    }
}

impl core::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ObjectKind::Keyring => "keyring",
            ObjectKind::ChatData => "chat data",
            ObjectKind::PassphraseEnvelope => "passphrase envelope",
            ObjectKind::Segment => "segment",
            ObjectKind::KeySet => "key set",
            ObjectKind::CheckpointIndex => "checkpoint index",
            ObjectKind::AttachmentChunk => "attachment chunk",
            ObjectKind::KeyBox => "key box",
            ObjectKind::LinkMessage => "link message",
            ObjectKind::Epoch => "epoch",
            ObjectKind::Roster => "roster entry",
            ObjectKind::Redirect => "redirect",
        })
    }
}

/// The fixed 8-byte header: magic, format version, cipher suite, object kind, and a last byte
/// that is zero in version 1 and the key epoch (1-255) in version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The cipher suite the rest of the object uses.
    pub suite: CipherSuite,
    /// The object kind.
    pub kind: ObjectKind,
    /// The key epoch the object is sealed in (0: version 1).
    pub epoch: u8,
}

impl Header {
    /// A version-1 header with the default suite.
    pub fn new(kind: ObjectKind) -> Self {
        Self::in_epoch(kind, 0)
    }

    /// A header with the default suite for an object sealed in key epoch `epoch` (version 1 for
    /// epoch 0, version 2 otherwise).
    pub fn in_epoch(kind: ObjectKind, epoch: u8) -> Self {
        Header {
            suite: CipherSuite::XChaCha20Poly1305,
            kind,
            epoch,
        }
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            if self.epoch == 0 {
                FORMAT_VERSION
            } else {
                FORMAT_VERSION_EPOCHS
            },
            self.suite.id(),
            self.kind.id(),
            self.epoch,
        ]
    }

    /// Parses a header of version 1 or 2 (an object sealed in any key epoch), of kind
    /// `expected`. A version-2 header of epoch 0 is refused: every object has one encoding.
    pub fn parse_any_epoch(object: &[u8], expected: ObjectKind) -> Result<Header> {
        Self::parse_versioned(object, expected, true)
    }

    /// Parses and checks the version-1 header at the start of `object`, which must be of kind
    /// `expected` (a version-2 header is `UnsupportedVersion(2)` here: its reader must know
    /// epochs).
    pub fn parse(object: &[u8], expected: ObjectKind) -> Result<Header> {
        Self::parse_versioned(object, expected, false)
    }

    fn parse_versioned(object: &[u8], expected: ObjectKind, epochs: bool) -> Result<Header> {
        let fail = |problem| Error::decode(expected, problem);
        if object.len() > MAX_OBJECT_LEN {
            return Err(fail(DecodeProblem::TooLarge {
                len: object.len() as u64,
                max: MAX_OBJECT_LEN as u64,
            }));
        }
        let Some(header) = object.get(..HEADER_LEN) else {
            return Err(fail(DecodeProblem::Truncated {
                needed: HEADER_LEN,
                got: object.len(),
            }));
        };
        if header[..4] != MAGIC {
            return Err(fail(DecodeProblem::BadMagic));
        }
        let version = header[4];
        if version != FORMAT_VERSION && !(epochs && version == FORMAT_VERSION_EPOCHS) {
            return Err(fail(DecodeProblem::UnsupportedVersion(version)));
        }
        let suite = CipherSuite::from_id(header[5])
            .ok_or(fail(DecodeProblem::UnsupportedSuite(header[5])))?;
        if header[6] != expected.id() {
            return Err(fail(DecodeProblem::WrongKind {
                expected: expected.id(),
                found: header[6],
            }));
        }
        let epoch = header[7];
        if version == FORMAT_VERSION && epoch != 0 {
            return Err(fail(DecodeProblem::ReservedBitsSet));
        }
        if version == FORMAT_VERSION_EPOCHS && epoch == 0 {
            return Err(fail(DecodeProblem::Malformed(
                "a version-2 header of key epoch 0".into(),
            )));
        }
        Ok(Header {
            suite,
            kind: expected,
            epoch,
        })
    }
}

/// Decodes a protobuf body that has already been authenticated, mapping failures to
/// [`DecodeProblem::Malformed`].
pub(crate) fn decode_body<M: prost::Message + Default>(
    kind: ObjectKind,
    bytes: &[u8],
) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::decode(kind, DecodeProblem::Malformed(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = Header::new(ObjectKind::Keyring);
        let bytes = header.to_bytes();
        assert_eq!(&bytes, b"CVLT\x01\x01\x01\x00");
        assert_eq!(Header::parse(&bytes, ObjectKind::Keyring).unwrap(), header);
    }

    #[test]
    fn header_rejects_each_kind_of_damage() {
        let good = Header::new(ObjectKind::ChatData).to_bytes();
        let problem = |bytes: &[u8], kind| match Header::parse(bytes, kind) {
            Err(Error::Decode { problem, .. }) => problem,
            other => panic!("expected a decode error, got {other:?}"),
        };
        assert_eq!(
            problem(&good[..5], ObjectKind::ChatData),
            DecodeProblem::Truncated { needed: 8, got: 5 }
        );
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(problem(&bad, ObjectKind::ChatData), DecodeProblem::BadMagic);
        let mut bad = good;
        bad[4] = 2;
        assert_eq!(
            problem(&bad, ObjectKind::ChatData),
            DecodeProblem::UnsupportedVersion(2)
        );
        let mut bad = good;
        bad[5] = 9;
        assert_eq!(
            problem(&bad, ObjectKind::ChatData),
            DecodeProblem::UnsupportedSuite(9)
        );
        assert_eq!(
            problem(&good, ObjectKind::Keyring),
            DecodeProblem::WrongKind {
                expected: 1,
                found: 2
            }
        );
        let mut bad = good;
        bad[7] = 1;
        assert_eq!(
            problem(&bad, ObjectKind::ChatData),
            DecodeProblem::ReservedBitsSet
        );
        let huge = vec![0u8; MAX_OBJECT_LEN + 1];
        assert!(matches!(
            problem(&huge, ObjectKind::ChatData),
            DecodeProblem::TooLarge { .. }
        ));
    }

    #[test]
    fn a_header_of_a_key_epoch_is_version_2_and_only_epoch_aware_readers_take_it() {
        let header = Header::in_epoch(ObjectKind::Segment, 3);
        let bytes = header.to_bytes();
        assert_eq!(&bytes, b"CVLT\x02\x01\x04\x03");
        assert_eq!(
            Header::parse_any_epoch(&bytes, ObjectKind::Segment).unwrap(),
            header
        );
        // A reader that knows no epochs: "update the app".
        assert!(matches!(
            Header::parse(&bytes, ObjectKind::Segment),
            Err(Error::Decode {
                problem: DecodeProblem::UnsupportedVersion(2),
                ..
            })
        ));
        // Epoch 0 is version 1 only; version 1 keeps its zero byte.
        let v1 = Header::new(ObjectKind::Segment);
        assert_eq!(
            Header::parse_any_epoch(&v1.to_bytes(), ObjectKind::Segment).unwrap(),
            v1
        );
        let mut zero_epoch = bytes;
        zero_epoch[7] = 0;
        assert!(matches!(
            Header::parse_any_epoch(&zero_epoch, ObjectKind::Segment),
            Err(Error::Decode {
                problem: DecodeProblem::Malformed(_),
                ..
            })
        ));
        let mut version_three = bytes;
        version_three[4] = 3;
        assert!(matches!(
            Header::parse_any_epoch(&version_three, ObjectKind::Segment),
            Err(Error::Decode {
                problem: DecodeProblem::UnsupportedVersion(3),
                ..
            })
        ));
    }

    #[test]
    fn kinds_round_trip_through_ids() {
        for kind in [
            ObjectKind::Keyring,
            ObjectKind::ChatData,
            ObjectKind::PassphraseEnvelope,
        ] {
            assert_eq!(ObjectKind::from_id(kind.id()), Some(kind));
        }
        assert_eq!(ObjectKind::from_id(0), None);
        assert_eq!(ObjectKind::from_id(200), None);
    }
}
