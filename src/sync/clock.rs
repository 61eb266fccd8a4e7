//! Hybrid logical clocks: stamps that follow wall time when clocks agree and stay ordered when
//! they do not, so "last writer wins" means what a person expects across devices.
//!
//! The clock rule (docs/SYNC.md, "Clocks"): a device observes every stamp it applies, however
//! far in the future, so its own next event always orders after everything it has seen; and a
//! stamp whose `wall_ms` exceeds [`MAX_WALL_MS`] is malformed wherever it is decoded. Both
//! depend only on the data, never on the applying device's own clock, so every device (and
//! every implementation) accepts and orders exactly the same operations.

use std::cmp::Ordering;

use crate::format::proto;

/// A device's identifier: 16 random bytes chosen when the device first joins a vault.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 16]);

impl DeviceId {
    /// A fresh random device id.
    pub fn generate() -> crate::Result<Self> {
        Ok(DeviceId(crate::random::array::<16>()?))
    }

    /// The id `keys` certify ([`self_certified_id`](crate::devices::self_certified_id)): the id
    /// of every device made since device keys exist.
    pub fn of_keys(keys: &crate::devices::DevicePublicKeys) -> Self {
        DeviceId(crate::devices::self_certified_id(&keys.verifying))
    }

    /// 32 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses the 32-character hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::decode(text).map(DeviceId)
    }
}

impl core::fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DeviceId({})", self.to_hex())
    }
}

impl core::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A totally ordered timestamp: wall-clock milliseconds, a counter for events in the same
/// millisecond (or while the wall clock lags), and the device id as the final tie-break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch (as the writing device believed).
    pub wall_ms: u64,
    /// Orders events within one `wall_ms`.
    pub counter: u32,
    /// The writing device.
    pub device: DeviceId,
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall_ms, self.counter, self.device).cmp(&(other.wall_ms, other.counter, other.device))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Stamp {
    pub(crate) fn to_proto(self) -> proto::Stamp {
        proto::Stamp {
            wall_ms: self.wall_ms,
            counter: self.counter,
            device_id: self.device.0.to_vec(),
        }
    }

    /// The stamp a decoded protobuf holds, or `None` when it is malformed: a device id that is
    /// not 16 bytes, or a wall time past [`MAX_WALL_MS`]. Every stamp read from the bucket comes
    /// through here, so the bound holds for segments, checkpoint blocks and index tombstones.
    pub(crate) fn from_proto(stamp: &proto::Stamp) -> Option<Stamp> {
        if stamp.wall_ms > MAX_WALL_MS {
            return None;
        }
        Some(Stamp {
            wall_ms: stamp.wall_ms,
            counter: stamp.counter,
            device: DeviceId(stamp.device_id.as_slice().try_into().ok()?),
        })
    }

    /// 28 bytes that sort like the stamp (for storage keys).
    pub(crate) fn to_sortable_bytes(self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..8].copy_from_slice(&self.wall_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.counter.to_be_bytes());
        out[12..].copy_from_slice(&self.device.0);
        out
    }

    /// Inverse of [`to_sortable_bytes`](Self::to_sortable_bytes).
    pub(crate) fn from_sortable_bytes(bytes: &[u8]) -> Option<Stamp> {
        if bytes.len() != 28 {
            return None;
        }
        Some(Stamp {
            wall_ms: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            counter: u32::from_be_bytes(bytes[8..12].try_into().ok()?),
            device: DeviceId(bytes[12..].try_into().ok()?),
        })
    }
}

/// The greatest wall time a stamp may carry: 2^47 ms after the Unix epoch (about the year
/// 6429). A stamp beyond it is malformed when decoded, and [`Clock::tick`] never issues one, so
/// `wall_ms + 1` can never overflow and no device can push everyone's stamps out of `u64`
/// range. A fixed number, not "now plus a margin": a bound that depended on the reader's own
/// clock would let one device accept what another rejects, and they would no longer converge.
pub const MAX_WALL_MS: u64 = 1 << 47;

/// A hybrid logical clock for one device.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    device: DeviceId,
    last: Option<Stamp>,
}

/// [`Clock::tick`] could not issue a stamp: the next one would be past [`MAX_WALL_MS`] (the
/// device's wall clock reads past the year 6429, or the greatest stamp it has seen is at the
/// bound with its counter exhausted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOutOfRange;

impl Clock {
    /// A clock for `device` that last issued or observed `last` (persisted by the caller).
    pub fn new(device: DeviceId, last: Option<Stamp>) -> Self {
        Clock { device, last }
    }

    /// The newest stamp issued or observed.
    pub fn last(&self) -> Option<Stamp> {
        self.last
    }

    /// A stamp for a new local event at wall time `now_ms`: greater than every stamp issued or
    /// observed so far, and never past [`MAX_WALL_MS`] (then it fails and changes nothing).
    pub fn tick(&mut self, now_ms: u64) -> Result<Stamp, ClockOutOfRange> {
        let stamp = match self.last {
            Some(last) if last.wall_ms >= now_ms => match last.counter.checked_add(1) {
                Some(counter) => Stamp {
                    wall_ms: last.wall_ms,
                    counter,
                    device: self.device,
                },
                None => Stamp {
                    wall_ms: last.wall_ms.checked_add(1).ok_or(ClockOutOfRange)?,
                    counter: 0,
                    device: self.device,
                },
            },
            _ => Stamp {
                wall_ms: now_ms,
                counter: 0,
                device: self.device,
            },
        };
        if stamp.wall_ms > MAX_WALL_MS {
            return Err(ClockOutOfRange);
        }
        self.last = Some(stamp);
        Ok(stamp)
    }

    /// Takes note of a stamp this device applies (another device's, or one restored from a
    /// checkpoint), so later local events order after it. Every stamp is taken, however far
    /// ahead of this device's wall clock: a cutoff would make the device's own later edits
    /// lose to the stamp it ignored (see the module documentation).
    pub fn observe(&mut self, stamp: Stamp) {
        if self.last.is_none_or(|last| stamp > last) {
            self.last = Some(Stamp {
                device: self.device,
                ..stamp
            });
        }
    }
}

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DeviceId = DeviceId([1; 16]);
    const B: DeviceId = DeviceId([2; 16]);

    const YEAR_MS: u64 = 365 * 24 * 60 * 60 * 1000;

    fn stamp(wall_ms: u64, counter: u32, device: DeviceId) -> Stamp {
        Stamp {
            wall_ms,
            counter,
            device,
        }
    }

    #[test]
    fn ticks_are_strictly_increasing_even_when_the_wall_clock_goes_back() {
        let mut clock = Clock::new(A, None);
        let mut previous = clock.tick(1000).unwrap();
        for now in [1000, 999, 500, 1000, 1001, 1001, 2000, 10] {
            let next = clock.tick(now).unwrap();
            assert!(next > previous, "{next:?} <= {previous:?}");
            previous = next;
        }
    }

    #[test]
    fn observed_stamps_order_later_local_events_after_them() {
        let mut a = Clock::new(A, None);
        let remote = stamp(5000, 7, B);
        a.observe(remote);
        let next = a.tick(1000).unwrap();
        assert!(next > remote);
        assert_eq!(next.device, A);
    }

    #[test]
    fn a_stamp_a_year_ahead_is_observed_so_the_next_local_event_wins_over_it() {
        // The old rule ignored stamps more than 24 h ahead: the next local edit was then
        // stamped before the remote one and silently lost to it.
        let now = 1_700_000_000_000;
        let mut a = Clock::new(A, Some(stamp(now - 5, 0, A)));
        let from_the_future = stamp(now + YEAR_MS, 3, B);
        a.observe(from_the_future);
        let next = a.tick(now).unwrap();
        assert!(next > from_the_future, "{next:?}");
        // It keeps ordering after it while the wall clock is behind, by counter.
        let after = a.tick(now + 1).unwrap();
        assert!(after > next);
        assert_eq!(after.wall_ms, now + YEAR_MS);
    }

    #[test]
    fn a_clock_a_year_behind_catches_up_with_the_first_stamp_it_observes() {
        let now = 1_700_000_000_000;
        let mut behind = Clock::new(A, None);
        let own_before = behind.tick(now - YEAR_MS).unwrap();
        let others = stamp(now, 0, B);
        assert!(own_before < others, "before syncing, its edits lose (LWW)");
        behind.observe(others);
        let next = behind.tick(now - YEAR_MS + 10).unwrap();
        assert!(next > others, "after syncing, its edits win: {next:?}");
    }

    #[test]
    fn observing_an_older_stamp_changes_nothing() {
        let mut a = Clock::new(A, None);
        let issued = a.tick(9000).unwrap();
        a.observe(stamp(100, 0, B));
        assert_eq!(a.last(), Some(issued));
    }

    #[test]
    fn no_stamp_past_the_bound_is_ever_issued() {
        assert_eq!(
            Clock::new(A, None).tick(MAX_WALL_MS + 1),
            Err(ClockOutOfRange)
        );
        assert_eq!(Clock::new(A, None).tick(u64::MAX), Err(ClockOutOfRange));
        let at_bound = Clock::new(A, None).tick(MAX_WALL_MS).unwrap();
        assert_eq!(at_bound.wall_ms, MAX_WALL_MS);
        // At the bound the counter still orders events ...
        let mut a = Clock::new(A, Some(stamp(MAX_WALL_MS, 5, B)));
        assert_eq!(a.tick(1000), Ok(stamp(MAX_WALL_MS, 6, A)));
        // ... and once it is exhausted, the clock fails instead of stepping past, changing
        // nothing.
        let exhausted = stamp(MAX_WALL_MS, u32::MAX, B);
        let mut a = Clock::new(A, Some(exhausted));
        assert_eq!(a.tick(1000), Err(ClockOutOfRange));
        assert_eq!(a.last(), Some(exhausted));
        // Below the bound an exhausted counter moves to the next millisecond.
        let mut a = Clock::new(A, Some(stamp(MAX_WALL_MS - 1, u32::MAX, B)));
        assert_eq!(a.tick(1000), Ok(stamp(MAX_WALL_MS, 0, A)));
    }

    #[test]
    fn a_decoded_stamp_past_the_bound_is_malformed() {
        let decoded = |wall_ms| {
            Stamp::from_proto(&proto::Stamp {
                wall_ms,
                counter: 1,
                device_id: vec![2; 16],
            })
        };
        assert_eq!(decoded(MAX_WALL_MS), Some(stamp(MAX_WALL_MS, 1, B)));
        assert_eq!(decoded(MAX_WALL_MS + 1), None);
        assert_eq!(decoded(u64::MAX), None);
        assert_eq!(decoded(0), Some(stamp(0, 1, B)));
        // 2^47 ms is in the year 6429: far beyond any real clock, far below u64 overflow.
        assert_eq!(MAX_WALL_MS, 140_737_488_355_328);
    }

    #[test]
    fn device_id_breaks_ties_and_sortable_bytes_sort_like_stamps() {
        let s = |wall_ms, counter, device| Stamp {
            wall_ms,
            counter,
            device,
        };
        let mut stamps = vec![s(2, 0, A), s(1, 5, B), s(1, 5, A), s(1, 0, B), s(300, 1, A)];
        let mut by_bytes = stamps.clone();
        stamps.sort();
        by_bytes.sort_by_key(|st| st.to_sortable_bytes());
        assert_eq!(stamps, by_bytes);
        assert!(s(1, 5, A) < s(1, 5, B));
        for st in stamps {
            assert_eq!(
                Stamp::from_sortable_bytes(&st.to_sortable_bytes()),
                Some(st)
            );
        }
        assert_eq!(DeviceId::from_hex(&A.to_hex()), Some(A));
        assert_eq!(DeviceId::from_hex("zz"), None);
    }
}
