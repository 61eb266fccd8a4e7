//! Device identities: each device's own long-term keys, and what is sealed to them.
//!
//! Every device draws an X25519 key (others seal epoch keys to it, [`seal_to`]) and an Ed25519
//! key (it signs what it writes) on first open. Design and status: docs/DEVICES.md.

mod epoch;
mod identity;
mod sealed_box;

#[cfg(test)]
pub(crate) use epoch::seal_epoch_with as epoch_with_randomness;
pub use epoch::{
    EpochObject, MAX_EPOCH_OBJECT, NewEpoch, epoch_in_name, epoch_object_hash, seal_epoch,
};
pub use identity::{
    DevicePublicKeys, DeviceSecrets, RecoverySigner, SIGNATURE_LEN, recovery_agreement_key,
    self_certified_id, verify_ed25519,
};
#[cfg(test)]
pub(crate) use sealed_box::seal_to_with_ephemeral;
pub use sealed_box::{BOX_OVERHEAD, open_box, seal_to};
