//! Reconnect backoff: exponential, capped, with jitter.
//!
//! A pure calculation: the caller passes the attempt number and a random
//! sample, so tests can pin every delay. The client draws its samples from a
//! generator seeded by the standard library's per-process random hash keys;
//! jitter only has to decorrelate a fleet that lost its broker at the same
//! moment, it protects no secret.

use std::time::Duration;

/// How long to wait before reconnect attempt `n` (0-based) after a lost or
/// refused connection.
///
/// The ceiling of attempt `n` is `min(max, initial · 2^n)`; the delay is
/// drawn uniformly from `[ceiling / 2, ceiling]` ("equal jitter"), so a
/// thousand devices that lost the broker together come back spread over
/// half the ceiling instead of all at once, and none retries faster than
/// half the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Consecutive failed attempts after which the client gives up and
    /// closes; `None` retries for ever (a device normally should).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The ceiling of attempt `attempt`: `min(max, initial · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before attempt `attempt`, given a uniformly random
    /// `sample`. Always within `[ceiling / 2, ceiling]` and never above
    /// [`Backoff::max`].
    pub fn delay(&self, attempt: u32, sample: u64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        let extra = match span.checked_add(1) {
            Some(modulus) => sample % modulus,
            None => sample,
        };
        half + Duration::from_micros(extra)
    }
}

/// SplitMix64, seeded once per client: the jitter source.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        Self(h.finish())
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_and_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            max_attempts: None,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(3200));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(31), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn delays_stay_in_the_jitter_band() {
        let b = Backoff::default();
        let mut j = Jitter(7);
        for attempt in [0, 1, 2, 10, 40, u32::MAX] {
            let c = b.ceiling(attempt);
            for _ in 0..1000 {
                let d = b.delay(attempt, j.next());
                assert!(d >= c / 2 && d <= c && d <= b.max, "{attempt}: {d:?}");
            }
        }
        assert_eq!(b.delay(0, 0), Duration::from_millis(100));
        assert_eq!(b.delay(0, 100_000), Duration::from_millis(200));
        assert_eq!(b.delay(0, u64::MAX), b.delay(0, u64::MAX % 100_001));
    }

    #[test]
    fn extreme_configurations() {
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            max_attempts: Some(0),
        };
        assert_eq!(zero.delay(3, u64::MAX), Duration::ZERO);
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            max_attempts: None,
        };
        assert!(huge.delay(30, 12345) >= Duration::MAX / 2);
    }

    #[test]
    fn jitter_samples_differ() {
        let mut j = Jitter::from_entropy();
        let a = j.next();
        let b = j.next();
        assert_ne!(a, b);
    }
}
