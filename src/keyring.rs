//! The keyring: every chat's random key, sealed as one object under the keyring key.
//!
//! Removing a chat from the keyring and writing a new keyring generation is crypto-shredding: once
//! the older keyring objects are deleted from the bucket, no one (not even a later holder of the
//! recovery key) can open that chat's objects again. See `docs/SECURITY.md` for what can remain.

use std::collections::BTreeMap;

use prost::Message as _;
use zeroize::Zeroizing;

use crate::error::{DecodeProblem, Error, Result};
use crate::format::{ObjectKind, decode_body, proto};
use crate::keys::{ChatKey, VaultKeys};
use crate::sealing::{self, ObjectContext};

/// The longest chat id accepted, in UTF-8 bytes.
pub const MAX_CHAT_ID_LEN: usize = 1024;

/// Every chat's key, by chat id.
#[derive(Clone, Default)]
pub struct Keyring {
    generation: u64,
    chats: BTreeMap<String, ChatKey>,
}

impl core::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keyring")
            .field("generation", &self.generation)
            .field("chats", &self.chats.len())
            .finish()
    }
}

fn check_chat_id(chat_id: &str) -> Result<()> {
    if chat_id.is_empty() || chat_id.len() > MAX_CHAT_ID_LEN {
        return Err(Error::invalid_input(format!(
            "chat id must be 1..={MAX_CHAT_ID_LEN} bytes, got {}",
            chat_id.len()
        )));
    }
    Ok(())
}

impl Keyring {
    /// An empty keyring at generation 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The generation: bumped by each [`seal`](Self::seal), so a newer keyring is recognisable.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of chats with a key.
    pub fn len(&self) -> usize {
        self.chats.len()
    }

    /// True when no chat has a key.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
    }

    /// The chat ids that have a key, in byte order.
    pub fn chat_ids(&self) -> impl Iterator<Item = &str> {
        self.chats.keys().map(String::as_str)
    }

    /// The key of a chat, creating a random one if the chat has none yet.
    pub fn add_chat(&mut self, chat_id: &str) -> Result<&ChatKey> {
        check_chat_id(chat_id)?;
        if !self.chats.contains_key(chat_id) {
            self.chats.insert(chat_id.to_owned(), ChatKey::generate()?);
        }
        self.chat_key(chat_id)
            .ok_or_else(|| Error::invalid_input("chat key vanished"))
    }

    /// The key of a chat, if it has one.
    pub fn chat_key(&self, chat_id: &str) -> Option<&ChatKey> {
        self.chats.get(chat_id)
    }

    /// Forgets a chat's key (crypto-shredding once no older keyring object survives).
    /// Returns whether the chat had a key.
    pub fn remove_chat(&mut self, chat_id: &str) -> bool {
        self.chats.remove(chat_id).is_some()
    }

    /// Seals the keyring as the object `name`, after bumping the generation.
    pub fn seal(&mut self, keys: &VaultKeys, name: &str) -> Result<Vec<u8>> {
        let nonce = crate::random::array::<{ sealing::NONCE_LEN }>()?;
        self.seal_with_nonce(keys, name, &nonce)
    }

    /// [`seal`](Self::seal) with a given nonce; only `seal` and the test-vector generator call it.
    pub(crate) fn seal_with_nonce(
        &mut self,
        keys: &VaultKeys,
        name: &str,
        nonce: &[u8; sealing::NONCE_LEN],
    ) -> Result<Vec<u8>> {
        self.generation = self.generation.saturating_add(1);
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::Keyring,
            name,
        };
        sealing::seal_with_nonce(
            &keys.keyring().0,
            &context,
            &self.body(),
            nonce,
            sealing::Compression::Auto,
        )
    }

    /// The protobuf body: a `Keyring` message with entries in chat-id order.
    pub(crate) fn body(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(
            proto::Keyring {
                generation: self.generation,
                chats: self
                    .chats
                    .iter()
                    .map(|(chat_id, key)| proto::ChatKeyEntry {
                        chat_id: chat_id.clone(),
                        key: key.0.bytes().to_vec(),
                    })
                    .collect(),
            }
            .encode_to_vec(),
        )
    }

    /// Inserts a given key (the test-vector generator needs fixed keys).
    #[cfg(test)]
    pub(crate) fn insert_key(&mut self, chat_id: &str, key: ChatKey) {
        self.chats.insert(chat_id.to_owned(), key);
    }

    /// Opens a keyring object stored under `name`.
    pub fn open(keys: &VaultKeys, name: &str, object: &[u8]) -> Result<Keyring> {
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::Keyring,
            name,
        };
        let body = sealing::open(&keys.keyring().0, &context, object)?;
        let mut message: proto::Keyring = decode_body(ObjectKind::Keyring, &body)?;
        let malformed =
            |why: String| Error::decode(ObjectKind::Keyring, DecodeProblem::Malformed(why));
        let mut chats = BTreeMap::new();
        for mut entry in message.chats.drain(..) {
            let key = Zeroizing::new(std::mem::take(&mut entry.key));
            let key: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| malformed(format!("chat key of {} bytes", key.len())))?;
            if check_chat_id(&entry.chat_id).is_err() {
                return Err(malformed("chat id out of bounds".to_owned()));
            }
            if chats
                .insert(entry.chat_id, ChatKey::from_bytes(key))
                .is_some()
            {
                return Err(malformed("duplicate chat id".to_owned()));
            }
        }
        Ok(Keyring {
            generation: message.generation,
            chats,
        })
    }

    /// Seals `plaintext` as chat data of `chat_id` (under that chat's key) named `name`.
    pub fn seal_chat_data(
        &self,
        keys: &VaultKeys,
        chat_id: &str,
        name: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let key = self.known_chat(chat_id)?;
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::ChatData,
            name,
        };
        sealing::seal(&key.0, &context, plaintext)
    }

    /// Opens chat data of `chat_id` stored under `name`.
    pub fn open_chat_data(
        &self,
        keys: &VaultKeys,
        chat_id: &str,
        name: &str,
        object: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let key = self.known_chat(chat_id)?;
        let context = ObjectContext {
            vault_id: keys.vault_id(),
            kind: ObjectKind::ChatData,
            name,
        };
        sealing::open(&key.0, &context, object)
    }

    fn known_chat(&self, chat_id: &str) -> Result<&ChatKey> {
        self.chat_key(chat_id)
            .ok_or_else(|| Error::invalid_input(format!("no key for chat {chat_id:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RecoveryKey;

    fn keys(byte: u8) -> VaultKeys {
        VaultKeys::derive(&RecoveryKey::from_bytes([byte; 32]))
    }

    #[test]
    fn keyring_round_trips_and_bumps_generation() {
        let k = keys(1);
        let mut ring = Keyring::new();
        let a = ring.add_chat("a").unwrap().0.bytes().to_owned();
        ring.add_chat("b").unwrap();
        // Adding again keeps the key.
        assert_eq!(ring.add_chat("a").unwrap().0.bytes(), &a);
        let object = ring.seal(&k, "keyring/1").unwrap();
        assert_eq!(ring.generation(), 1);
        let opened = Keyring::open(&k, "keyring/1", &object).unwrap();
        assert_eq!(opened.generation(), 1);
        assert_eq!(opened.chat_ids().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(opened.chat_key("a").unwrap().0.bytes(), &a);
    }

    #[test]
    fn chat_data_is_bound_to_its_chat() {
        let k = keys(1);
        let mut ring = Keyring::new();
        ring.add_chat("a").unwrap();
        ring.add_chat("b").unwrap();
        let object = ring.seal_chat_data(&k, "a", "p", b"hi").unwrap();
        assert_eq!(
            &ring.open_chat_data(&k, "a", "p", &object).unwrap()[..],
            b"hi"
        );
        assert!(matches!(
            ring.open_chat_data(&k, "b", "p", &object),
            Err(Error::Decode {
                kind: ObjectKind::ChatData,
                problem: DecodeProblem::AuthenticationFailed
            })
        ));
        assert!(matches!(
            ring.open_chat_data(&k, "zz", "p", &object),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn removed_chats_cannot_be_opened_from_the_new_keyring() {
        let k = keys(1);
        let mut ring = Keyring::new();
        let mut data = Vec::new();
        for chat in ["before", "gone", "after"] {
            ring.add_chat(chat).unwrap();
            let name = format!("p/{chat}");
            let object = ring
                .seal_chat_data(&k, chat, &name, chat.as_bytes())
                .unwrap();
            data.push((chat, name, object));
        }
        let kept_keys: Vec<[u8; 32]> = ["before", "after"]
            .iter()
            .map(|chat| *ring.chat_key(chat).unwrap().0.bytes())
            .collect();
        assert!(ring.remove_chat("gone"), "the chat had a key");
        assert!(!ring.remove_chat("gone"), "and now has none");
        let object = ring.seal(&k, "keyring/2").unwrap();
        let reopened = Keyring::open(&k, "keyring/2", &object).unwrap();
        // The removed chat is gone; its neighbours on either side keep their keys and data.
        assert_eq!(reopened.chat_ids().collect::<Vec<_>>(), ["after", "before"]);
        assert!(reopened.chat_key("gone").is_none());
        for (chat, kept) in ["before", "after"].iter().zip(&kept_keys) {
            assert_eq!(reopened.chat_key(chat).unwrap().0.bytes(), kept);
        }
        for (chat, name, object) in &data {
            let opened = reopened.open_chat_data(&k, chat, name, object);
            if *chat == "gone" {
                assert!(
                    matches!(&opened, Err(Error::InvalidInput(why)) if why.contains("no key")),
                    "{opened:?}"
                );
            } else {
                assert_eq!(&opened.unwrap()[..], chat.as_bytes());
            }
        }
    }

    #[test]
    fn bad_chat_ids_are_refused() {
        let mut ring = Keyring::new();
        assert!(ring.add_chat("").is_err());
        assert!(ring.add_chat(&"x".repeat(MAX_CHAT_ID_LEN + 1)).is_err());
    }

    fn seal_raw_keyring(k: &VaultKeys, message: &proto::Keyring) -> Vec<u8> {
        let context = ObjectContext {
            vault_id: k.vault_id(),
            kind: ObjectKind::Keyring,
            name: "r",
        };
        sealing::seal(&k.keyring().0, &context, &message.encode_to_vec()).unwrap()
    }

    #[test]
    fn authentic_but_invalid_keyrings_are_rejected() {
        let k = keys(1);
        let entry = |id: &str, len: usize| proto::ChatKeyEntry {
            chat_id: id.to_owned(),
            key: vec![1; len],
        };
        let cases = [
            vec![entry("a", 31)],
            vec![entry("a", 33)],
            vec![entry("", 32)],
            vec![entry("a", 32), entry("a", 32)],
        ];
        for chats in cases {
            let object = seal_raw_keyring(
                &k,
                &proto::Keyring {
                    generation: 1,
                    chats,
                },
            );
            assert!(matches!(
                Keyring::open(&k, "r", &object),
                Err(Error::Decode {
                    kind: ObjectKind::Keyring,
                    problem: DecodeProblem::Malformed(_)
                })
            ));
        }
        // A body that is not protobuf at all.
        let context = ObjectContext {
            vault_id: k.vault_id(),
            kind: ObjectKind::Keyring,
            name: "r",
        };
        let garbage = sealing::seal(&k.keyring().0, &context, &[0xff; 40]).unwrap();
        assert!(matches!(
            Keyring::open(&k, "r", &garbage),
            Err(Error::Decode {
                problem: DecodeProblem::Malformed(_),
                ..
            })
        ));
    }

    #[test]
    fn keyring_from_another_vault_is_rejected() {
        let mut ring = Keyring::new();
        ring.add_chat("a").unwrap();
        let object = ring.seal(&keys(1), "k").unwrap();
        assert!(matches!(
            Keyring::open(&keys(2), "k", &object),
            Err(Error::Decode {
                problem: DecodeProblem::AuthenticationFailed,
                ..
            })
        ));
    }
}
