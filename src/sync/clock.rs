//! Hybrid logical clocks: stamps that follow wall time when clocks agree and stay ordered when
//! they do not, so "last writer wins" means what a person expects across devices.

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

    pub(crate) fn from_proto(stamp: &proto::Stamp) -> Option<Stamp> {
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

/// A hybrid logical clock for one device.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    device: DeviceId,
    last: Option<Stamp>,
}

/// Stamps further than this ahead of the local wall clock are not adopted when observed, so one
/// device with a wildly wrong clock cannot drag everyone's stamps into the future.
const MAX_FUTURE_DRIFT_MS: u64 = 24 * 60 * 60 * 1000;

impl Clock {
    /// A clock for `device` that last issued `last` (persisted by the caller).
    pub fn new(device: DeviceId, last: Option<Stamp>) -> Self {
        Clock { device, last }
    }

    /// The newest stamp issued or observed.
    pub fn last(&self) -> Option<Stamp> {
        self.last
    }

    /// A stamp for a new local event at wall time `now_ms`: greater than every stamp issued or
    /// observed so far.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        let stamp = match self.last {
            Some(last) if last.wall_ms >= now_ms => match last.counter.checked_add(1) {
                Some(counter) => Stamp {
                    wall_ms: last.wall_ms,
                    counter,
                    device: self.device,
                },
                None => Stamp {
                    wall_ms: last.wall_ms + 1,
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
        self.last = Some(stamp);
        stamp
    }

    /// Takes note of a stamp from another device, so later local events order after it.
    pub fn observe(&mut self, stamp: Stamp, now_ms: u64) {
        if stamp.wall_ms > now_ms.saturating_add(MAX_FUTURE_DRIFT_MS) {
            return;
        }
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

    #[test]
    fn ticks_are_strictly_increasing_even_when_the_wall_clock_goes_back() {
        let mut clock = Clock::new(A, None);
        let mut previous = clock.tick(1000);
        for now in [1000, 999, 500, 1000, 1001, 1001, 2000, 10] {
            let next = clock.tick(now);
            assert!(next > previous, "{next:?} <= {previous:?}");
            previous = next;
        }
    }

    #[test]
    fn observed_stamps_order_later_local_events_after_them() {
        let mut a = Clock::new(A, None);
        let remote = Stamp {
            wall_ms: 5000,
            counter: 7,
            device: B,
        };
        a.observe(remote, 1000);
        let next = a.tick(1000);
        assert!(next > remote);
        assert_eq!(next.device, A);
    }

    #[test]
    fn absurd_future_stamps_are_not_adopted() {
        let mut a = Clock::new(A, None);
        a.observe(
            Stamp {
                wall_ms: u64::MAX - 5,
                counter: 0,
                device: B,
            },
            1000,
        );
        assert_eq!(a.tick(1000).wall_ms, 1000);
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
