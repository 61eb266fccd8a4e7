//! Multi-device sync: operations with hybrid-logical-clock stamps, a merge that converges in any
//! order, and hash-chained segments that make the bucket's omissions and replays detectable.
//!
//! The logic here does no I/O: it is fed store listings and object bytes and says what to fetch
//! and what to write (see `docs/SYNC.md`).

pub mod batch;
pub mod checkpoint;
pub mod clock;
pub mod deletions;
pub mod engine;
pub mod history;
pub mod listing;
pub mod model;
pub mod names;
pub mod next_checkpoint;
pub mod plan;
pub mod roster;
pub mod segment;
pub mod signature;
pub mod state;
pub mod tree;

pub use clock::{Clock, DeviceId, Stamp};
pub use model::{Change, Chat, Message, Operation};
pub use state::{Applied, ChatRecord, MemoryState, MessageRecord, StateStore, apply};
