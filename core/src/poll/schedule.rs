//! When to look again at a run MCE still reports pending. `POLL_SCHEDULE`
//! chooses one of three schedules (docs/BENCHMARKS.md compares them):
//!
//! - `exponential`: `POLL_INITIAL_DELAY_MS × POLL_BACKOFF_MULTIPLIER^n`,
//!   capped at `POLL_MAX_DELAY_MS`, jittered by `POLL_JITTER_RANGE`;
//! - `reference`: the TypeScript reference's fixed 30 s ± 20 %;
//! - `adaptive`: uses how long the same query took the last times this
//!   tenant ran it. Until the shortest of those durations is near, it backs
//!   off quickly (doubling, capped at a fifth of the expected duration, so
//!   an early failure is still seen soon); across the window the recent
//!   durations span (opened early enough for a duration measured one
//!   jittered maximum delay late), it looks often (every 5 % of the
//!   expected duration); past it, it backs off with the elapsed time. A
//!   query with no history follows the exponential schedule.
//!
//! Pure: time, history and the jitter draw are parameters. The cache of
//! recent durations is the service's (`adapters/history.rs`).

use std::time::Duration;

use crate::backoff::{Backoff, clamp};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    #[default]
    Exponential,
    Reference,
    Adaptive,
}

impl Schedule {
    pub fn parse(s: &str) -> Option<Schedule> {
        match s.trim().to_ascii_lowercase().as_str() {
            "exponential" => Some(Schedule::Exponential),
            "reference" => Some(Schedule::Reference),
            "adaptive" => Some(Schedule::Adaptive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Exponential => "exponential",
            Schedule::Reference => "reference",
            Schedule::Adaptive => "adaptive",
        }
    }
}

/// How long the same query ran its last few times (Perform to detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    pub shortest: Duration,
    pub median: Duration,
    pub longest: Duration,
}

impl History {
    /// From recent durations, any order; `None` when there are none.
    pub fn of(durations: &[Duration]) -> Option<History> {
        let mut sorted: Vec<Duration> = durations.to_vec();
        sorted.sort();
        Some(History {
            shortest: *sorted.first()?,
            median: sorted[sorted.len() / 2],
            longest: *sorted.last()?,
        })
    }
}

/// How many recent runs make a history.
pub const HISTORY_RUNS: u64 = 5;

/// The reference's schedule: 30 s ± 20 %.
const REFERENCE: Backoff = Backoff {
    initial: Duration::from_secs(30),
    max: Duration::from_secs(30),
    multiplier: 1.0,
    jitter_range: 0.4,
};

/// The window of likely completion starts this much before the shortest
/// recent duration (or earlier: see `adaptive`) and ends this much after
/// the longest.
const WINDOW_BEFORE: f64 = 0.9;
const WINDOW_AFTER: f64 = 1.1;
/// Inside the window, one look per this share of the expected duration.
const WINDOW_STEP: f64 = 0.05;
/// Before the window, no gap longer than this share of the expected duration
/// (or the configured maximum delay, if longer).
const RAMP_CAP: f64 = 0.2;
/// Past the window, a gap of this share of the elapsed time.
const LATE_STEP: f64 = 0.1;
/// Adaptive delays are jittered by ± half of this (they aim at moments).
const ADAPTIVE_JITTER: f64 = 0.1;

/// The delay before the next look at a pending run.
///
/// `n` is the number of looks so far minus one (the exponential schedule's
/// exponent), `elapsed` the time since Perform, `unit` a uniform draw from
/// `[0, 1)`.
pub fn next_delay(
    schedule: Schedule,
    backoff: &Backoff,
    n: u32,
    elapsed: Duration,
    history: Option<&History>,
    unit: f64,
) -> Duration {
    match (schedule, history) {
        (Schedule::Exponential, _) | (Schedule::Adaptive, None) => backoff.delay(n, unit),
        (Schedule::Reference, _) => REFERENCE.delay(n, unit),
        (Schedule::Adaptive, Some(h)) => {
            let base = adaptive(backoff, elapsed, h);
            clamp(base.mul_f64(1.0 - ADAPTIVE_JITTER / 2.0 + unit.clamp(0.0, 1.0) * ADAPTIVE_JITTER))
        }
    }
}

fn adaptive(backoff: &Backoff, elapsed: Duration, h: &History) -> Duration {
    let floor = backoff.initial;
    // A recorded duration runs to the look that saw the end: up to one
    // jittered maximum delay late, plus the time the ticks themselves took.
    // The window opens early enough for that, with one initial delay spare.
    let late = backoff.max.mul_f64(1.0 + backoff.jitter_range / 2.0) + floor;
    let opens = h.shortest.mul_f64(WINDOW_BEFORE).min(h.shortest.saturating_sub(late));
    let closes = h.longest.mul_f64(WINDOW_AFTER);
    if elapsed + floor < opens {
        // Before the window: double, capped; land on the window's start.
        let cap = backoff.max.max(h.median.mul_f64(RAMP_CAP));
        return elapsed.max(floor).min(cap).min(opens - elapsed);
    }
    if elapsed < closes {
        return h.median.mul_f64(WINDOW_STEP).clamp(floor, backoff.max);
    }
    elapsed.mul_f64(LATE_STEP).clamp(floor, backoff.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn backoff() -> Backoff {
        Backoff {
            initial: S(2),
            max: S(30),
            multiplier: 2.0,
            jitter_range: 0.4,
        }
    }

    fn history(secs: &[u64]) -> History {
        History::of(&secs.iter().map(|s| S(*s)).collect::<Vec<_>>()).unwrap()
    }

    /// The midpoint of the jitter band: the delay without jitter.
    fn at(schedule: Schedule, n: u32, elapsed: u64, h: Option<&History>) -> Duration {
        next_delay(schedule, &backoff(), n, S(elapsed), h, 0.5)
    }

    #[test]
    fn parses_the_three_names() {
        for s in [Schedule::Exponential, Schedule::Reference, Schedule::Adaptive] {
            assert_eq!(Schedule::parse(s.as_str()), Some(s));
        }
        assert_eq!(Schedule::parse(" Adaptive "), Some(Schedule::Adaptive));
        assert_eq!(Schedule::parse("fast"), None);
    }

    #[test]
    fn history_is_read_in_any_order() {
        assert_eq!(History::of(&[]), None);
        let h = history(&[300, 100, 200]);
        assert_eq!((h.shortest, h.median, h.longest), (S(100), S(200), S(300)));
    }

    #[test]
    fn exponential_and_reference() {
        assert_eq!(at(Schedule::Exponential, 0, 0, None), S(2));
        assert_eq!(at(Schedule::Exponential, 3, 30, None), S(16));
        assert_eq!(at(Schedule::Exponential, 9, 300, None), S(30));
        assert_eq!(at(Schedule::Reference, 0, 0, None), S(30));
        assert_eq!(at(Schedule::Reference, 7, 900, None), S(30));
        let low = next_delay(Schedule::Reference, &backoff(), 0, S(0), None, 0.0);
        let high = next_delay(Schedule::Reference, &backoff(), 0, S(0), None, 0.999_999);
        assert_eq!(low, S(24));
        assert!(high > Duration::from_millis(35_990) && high <= S(36), "{high:?}");
    }

    #[test]
    fn adaptive_without_history_is_exponential() {
        let h = None;
        assert_eq!(at(Schedule::Adaptive, 3, 30, h), at(Schedule::Exponential, 3, 30, h));
    }

    #[test]
    fn adaptive_ramps_up_then_lands_on_the_window() {
        // Recent runs of 1000 to 1100 s: the window is [900 s, 1210 s).
        let h = history(&[1000, 1050, 1100]);
        assert_eq!(at(Schedule::Adaptive, 0, 0, Some(&h)), S(2));
        assert_eq!(at(Schedule::Adaptive, 1, 2, Some(&h)), S(2));
        assert_eq!(at(Schedule::Adaptive, 2, 4, Some(&h)), S(4));
        assert_eq!(at(Schedule::Adaptive, 5, 64, Some(&h)), S(64));
        // Capped at a fifth of the expected duration (above the 30 s maximum).
        assert_eq!(at(Schedule::Adaptive, 7, 400, Some(&h)), S(210));
        // Never past the window's start.
        assert_eq!(at(Schedule::Adaptive, 9, 850, Some(&h)), S(50));
    }

    #[test]
    fn adaptive_window_opens_before_a_late_measurement_could_hide_the_end() {
        // A recorded 60 s may be up to 36 s (30 s ± 20 %) late, plus the
        // ticks' own time: the window opens at 60 - 36 - 2 = 22 s.
        let h = history(&[60]);
        assert_eq!(at(Schedule::Adaptive, 4, 16, Some(&h)), S(6));
        assert_eq!(at(Schedule::Adaptive, 5, 22, Some(&h)), S(3));
        // Short queries: the window is open from the start.
        let quick = history(&[12]);
        assert_eq!(at(Schedule::Adaptive, 0, 0, Some(&quick)), S(2));
        assert_eq!(at(Schedule::Adaptive, 1, 2, Some(&quick)), S(2));
    }

    #[test]
    fn adaptive_looks_often_in_the_window_then_backs_off() {
        let h = history(&[1000, 1050, 1100]);
        // 5 % of 1050 s, capped at the 30 s maximum.
        assert_eq!(
            at(Schedule::Adaptive, 12, 900, Some(&h)),
            Duration::from_millis(52_500).min(S(30))
        );
        let minutes = history(&[200, 240]);
        assert_eq!(at(Schedule::Adaptive, 12, 190, Some(&minutes)), S(12));
        assert_eq!(at(Schedule::Adaptive, 20, 1209, Some(&h)), S(30));
        // Short queries: never below the configured initial delay.
        let quick = history(&[10, 12]);
        assert_eq!(at(Schedule::Adaptive, 3, 9, Some(&quick)), S(2));
        // Past the window: a tenth of the elapsed time.
        assert_eq!(at(Schedule::Adaptive, 9, 60, Some(&quick)), S(6));
        assert_eq!(at(Schedule::Adaptive, 30, 3000, Some(&h)), S(30));
    }

    #[test]
    fn adaptive_is_jittered_within_ten_percent() {
        let h = history(&[1000]);
        let low = next_delay(Schedule::Adaptive, &backoff(), 2, S(4), Some(&h), 0.0);
        let high = next_delay(Schedule::Adaptive, &backoff(), 2, S(4), Some(&h), 0.999_999);
        assert_eq!(low, Duration::from_millis(3800));
        assert!(high > Duration::from_millis(4190) && high <= Duration::from_millis(4200));
    }
}
