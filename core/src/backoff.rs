//! The one backoff schedule of the service: `min(initial * multiplier^n, max)`
//! scaled by a jitter factor drawn uniformly from `[1 - range/2, 1 + range/2]`.
//! Used for poll delays, rowset readiness, MCE call retries and execute retries.
//! Pure: the random draw is a parameter.

use std::time::Duration;

/// No delay handed to NATS is shorter than this (a zero nak delay is an
/// immediate redelivery, a hot loop) ...
pub const MIN_DELAY: Duration = Duration::from_millis(50);
/// ... or longer than this (the server treats a delay it cannot represent as
/// a plain nak: immediate redelivery).
pub const MAX_DELAY: Duration = Duration::from_secs(6 * 60 * 60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// Total width of the jitter band: 0.4 means ±20 %.
    pub jitter_range: f64,
}

impl Backoff {
    /// The delay before attempt `n + 1` without jitter.
    pub fn base(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(n.min(64) as i32);
        let millis = (self.initial.as_secs_f64() * 1000.0 * factor).min(self.max.as_secs_f64() * 1000.0);
        Duration::from_secs_f64(millis.max(0.0) / 1000.0)
    }

    /// The jittered delay; `unit` is a uniform draw from `[0, 1)`.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let jitter = 1.0 - self.jitter_range / 2.0 + unit.clamp(0.0, 1.0) * self.jitter_range;
        clamp(self.base(n).mul_f64(jitter.max(0.0)))
    }
}

/// Clamps any delay to what NATS can carry out as intended.
pub fn clamp(d: Duration) -> Duration {
    d.clamp(MIN_DELAY, MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(2000),
            max: Duration::from_millis(30000),
            multiplier: 2.0,
            jitter_range: 0.4,
        }
    }

    #[test]
    fn grows_geometrically_then_caps() {
        let b = poll_default();
        let got: Vec<u64> = (0..7).map(|n| b.base(n).as_millis() as u64).collect();
        assert_eq!(got, [2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.base(10_000), Duration::from_millis(30000), "huge n stays at the cap");
    }

    #[test]
    fn jitter_spans_the_band() {
        let b = poll_default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(1600));
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(2000));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(2400));
        assert_eq!(
            b.delay(4, 1.0),
            Duration::from_millis(36000),
            "jitter applies after the cap"
        );
        for i in 0..1000 {
            let d = b.delay(1, f64::from(i) / 1000.0);
            assert!(
                d >= Duration::from_millis(3200) && d <= Duration::from_millis(4800),
                "{d:?}"
            );
        }
    }

    #[test]
    fn delays_are_clamped_to_what_nats_honours() {
        let zero = Backoff {
            initial: Duration::ZERO,
            ..poll_default()
        };
        assert_eq!(zero.delay(0, 0.5), MIN_DELAY);
        let huge = Backoff {
            initial: Duration::from_secs(1 << 40),
            max: Duration::from_secs(1 << 41),
            ..poll_default()
        };
        assert_eq!(huge.delay(3, 0.5), MAX_DELAY);
    }

    #[test]
    fn a_multiplier_of_one_is_a_fixed_schedule() {
        let fixed = Backoff {
            multiplier: 1.0,
            initial: Duration::from_secs(30),
            ..poll_default()
        };
        assert_eq!(fixed.base(0), fixed.base(50));
    }
}
