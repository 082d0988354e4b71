//! RFC 7252 §4.8 transmission parameters and the retransmission schedule
//! they imply. Pure: the caller supplies the random draw and the clock.

use std::time::Duration;

use crate::error::{Error, Result};

/// Transmission parameters (RFC 7252 §4.8). The defaults are the RFC's;
/// tests shrink `ack_timeout` and `max_latency` so exchanges finish in
/// milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransmissionParams {
    ack_timeout: Duration,
    ack_random_factor: f64,
    max_retransmit: u32,
    max_latency: Duration,
}

impl Default for TransmissionParams {
    /// ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4,
    /// MAX_LATENCY 100 s.
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            max_latency: Duration::from_secs(100),
        }
    }
}

impl TransmissionParams {
    /// Checked constructor: `ack_timeout` at least 1 ms, `ack_random_factor`
    /// in 1.0..=4.0 (RFC 7252 §4.8.1 requires ≥ 1.0), `max_retransmit` at
    /// most 20 (beyond that the doubling overflows any useful timer).
    pub fn new(
        ack_timeout: Duration,
        ack_random_factor: f64,
        max_retransmit: u32,
        max_latency: Duration,
    ) -> Result<Self> {
        if ack_timeout < Duration::from_millis(1) || ack_timeout > Duration::from_secs(600) {
            return Err(Error::Config("ACK_TIMEOUT must be 1 ms to 600 s"));
        }
        if !(1.0..=4.0).contains(&ack_random_factor) {
            return Err(Error::Config("ACK_RANDOM_FACTOR must be within 1.0..=4.0"));
        }
        if max_retransmit > 20 {
            return Err(Error::Config("MAX_RETRANSMIT must be at most 20"));
        }
        if max_latency > Duration::from_secs(3600) {
            return Err(Error::Config("MAX_LATENCY must be at most an hour"));
        }
        Ok(Self {
            ack_timeout,
            ack_random_factor,
            max_retransmit,
            max_latency,
        })
    }

    /// ACK_TIMEOUT.
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// ACK_RANDOM_FACTOR.
    pub fn ack_random_factor(&self) -> f64 {
        self.ack_random_factor
    }

    /// MAX_RETRANSMIT.
    pub fn max_retransmit(&self) -> u32 {
        self.max_retransmit
    }

    /// MAX_LATENCY.
    pub fn max_latency(&self) -> Duration {
        self.max_latency
    }

    /// MAX_TRANSMIT_SPAN = ACK_TIMEOUT × (2^MAX_RETRANSMIT − 1) × ACK_RANDOM_FACTOR.
    pub fn max_transmit_span(&self) -> Duration {
        self.ack_timeout
            .mul_f64(((1u64 << self.max_retransmit) - 1) as f64 * self.ack_random_factor)
    }

    /// MAX_TRANSMIT_WAIT = ACK_TIMEOUT × (2^(MAX_RETRANSMIT+1) − 1) × ACK_RANDOM_FACTOR.
    pub fn max_transmit_wait(&self) -> Duration {
        self.ack_timeout
            .mul_f64(((1u64 << (self.max_retransmit + 1)) - 1) as f64 * self.ack_random_factor)
    }

    /// EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY
    /// (PROCESSING_DELAY = ACK_TIMEOUT): how long a message id stays in the
    /// deduplication cache (RFC 7252 §4.5). 247 s with the defaults.
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + self.max_latency * 2 + self.ack_timeout
    }

    /// NON_LIFETIME = MAX_TRANSMIT_SPAN + MAX_LATENCY: how long a
    /// non-confirmable message id is remembered. 145 s with the defaults.
    pub fn non_lifetime(&self) -> Duration {
        self.max_transmit_span() + self.max_latency
    }

    /// The schedule of one confirmable message. `unit` is a uniform draw in
    /// [0, 1) that places the initial timeout in
    /// [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR] (RFC 7252 §4.2).
    pub fn schedule(&self, unit: f64) -> RetransmitSchedule {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let factor = 1.0 + unit * (self.ack_random_factor - 1.0);
        RetransmitSchedule {
            timeout: self.ack_timeout.mul_f64(factor),
            retransmits: 0,
            max_retransmit: self.max_retransmit,
        }
    }
}

/// The timeouts of one confirmable message: the initial random timeout,
/// doubled after each retransmission, at most MAX_RETRANSMIT
/// retransmissions (RFC 7252 §4.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetransmitSchedule {
    timeout: Duration,
    retransmits: u32,
    max_retransmit: u32,
}

impl RetransmitSchedule {
    /// How long to wait for the ACK of the transmission just made.
    pub fn current_timeout(&self) -> Duration {
        self.timeout
    }

    /// Retransmissions made so far.
    pub fn retransmits(&self) -> u32 {
        self.retransmits
    }

    /// Called when the current timeout expired: `Some(next timeout)` if the
    /// message is to be sent again, `None` when the attempt is given up.
    pub fn on_timeout(&mut self) -> Option<Duration> {
        if self.retransmits >= self.max_retransmit {
            return None;
        }
        self.retransmits += 1;
        self.timeout = self.timeout.saturating_mul(2);
        Some(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_derived_values() {
        let p = TransmissionParams::default();
        assert_eq!(p.max_transmit_span(), Duration::from_secs(45));
        assert_eq!(p.max_transmit_wait(), Duration::from_secs(93));
        assert_eq!(p.exchange_lifetime(), Duration::from_secs(247));
        assert_eq!(p.non_lifetime(), Duration::from_secs(145));
    }

    #[test]
    fn exponential_backoff_with_jitter() {
        let p = TransmissionParams::default();
        let lo = p.schedule(0.0);
        assert_eq!(lo.current_timeout(), Duration::from_secs(2));
        let hi = p.schedule(0.999_999);
        assert!(hi.current_timeout() < Duration::from_secs(3));
        assert!(hi.current_timeout() > Duration::from_millis(2990));

        let mut s = p.schedule(0.5);
        assert_eq!(s.current_timeout(), Duration::from_millis(2500));
        let timeouts: Vec<_> = std::iter::from_fn(|| s.on_timeout()).collect();
        assert_eq!(
            timeouts,
            [5000, 10_000, 20_000, 40_000].map(Duration::from_millis)
        );
        assert_eq!(s.retransmits(), 4);
        assert_eq!(s.on_timeout(), None);
    }

    #[test]
    fn bounds() {
        let ms = Duration::from_millis;
        assert!(TransmissionParams::new(ms(0), 1.5, 4, ms(10)).is_err());
        assert!(TransmissionParams::new(ms(10), 0.9, 4, ms(10)).is_err());
        assert!(TransmissionParams::new(ms(10), f64::NAN, 4, ms(10)).is_err());
        assert!(TransmissionParams::new(ms(10), 1.5, 21, ms(10)).is_err());
        assert!(TransmissionParams::new(ms(10), 1.5, 4, ms(10)).is_ok());
        // A NaN draw cannot break the schedule.
        let p = TransmissionParams::default();
        assert_eq!(
            p.schedule(f64::NAN).current_timeout(),
            Duration::from_secs(2)
        );
    }
}
