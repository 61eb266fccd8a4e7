//! What the keyed targets share: the vault keys they hold and a reader that turns the fuzzer's
//! bytes into choices (an exhausted input reads as zeros, so every input is a valid script).
#![allow(dead_code)]

use std::sync::OnceLock;

use chatvault::keys::{RecoveryKey, VaultKeys};
use chatvault::sync::DeviceId;

/// The vault every keyed target works in.
pub fn keys() -> &'static VaultKeys {
    static KEYS: OnceLock<VaultKeys> = OnceLock::new();
    KEYS.get_or_init(|| VaultKeys::derive(&RecoveryKey::from_bytes([7; 32])))
}

/// The device a body names when its own device id is not 16 bytes.
pub const DEFAULT_DEVICE: DeviceId = DeviceId([1; 16]);

/// Choices read from the front of the fuzzer's bytes.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }

    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        for byte in &mut bytes {
            *byte = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    /// A sequence number: mostly small, sometimes at the edges of the type.
    pub fn seq(&mut self) -> u64 {
        match self.u8() {
            0..=199 => u64::from(self.u8() % 8),
            200..=239 => u64::from(self.u8()),
            240..=249 => u64::MAX - u64::from(self.u8() % 4),
            _ => self.u64(),
        }
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        for byte in &mut out {
            *byte = self.u8();
        }
        out
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
