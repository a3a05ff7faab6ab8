//! How many poll ticks of one tenant may talk to MCE at once: a limit that
//! adapts (additive increase, multiplicative decrease), as TCP's congestion
//! window does. It grows by about one each time a full limit's worth of
//! calls succeeds while the tenant uses it all, and halves on a 429 or a
//! 5xx (at most once a second, so one burst of refusals is one decrease);
//! recent calls twice as slow as the tenant's usual shrink it a little. A
//! throttled tenant so waits on itself, and the others keep their pace.
//! Pure: the caller passes the time and counts what is in flight.

use std::time::Duration;

/// The bounds and steps of every tenant's limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitConfig {
    /// Where a tenant starts.
    pub initial: u32,
    /// The operator's hard cap per tenant.
    pub max: u32,
    /// Never below this (a throttled tenant still makes progress).
    pub min: u32,
    /// The factor of a decrease after a refusal.
    pub backoff: f64,
    /// Recent calls this many times slower than the tenant's usual count
    /// as congestion.
    pub latency_tolerance: f64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            initial: 8,
            max: 64,
            min: 1,
            backoff: 0.5,
            latency_tolerance: 2.0,
        }
    }
}

/// What one MCE call said about the tenant's pace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    /// Answered, after this long.
    Answered(Duration),
    /// 429: MCE asks the tenant to slow down.
    Throttled,
    /// 5xx, a timeout or no connection.
    Failed,
}

/// One tenant's limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    config: LimitConfig,
    limit: f64,
    /// The tenant's usual latency, in seconds: a slow average (about the
    /// last hundred calls).
    usual: Option<f64>,
    /// Its recent latency: a quick average (about the last twenty calls), so
    /// one slow call among fast ones is not congestion.
    recent: Option<f64>,
    /// When (seconds on the caller's clock) the limit last went down.
    last_decrease: Option<f64>,
    /// Answers seen: the first few make the usual latency (their mean)
    /// before the latency rule applies.
    answers: u32,
}

/// Answers averaged evenly into the usual latency before it starts to move
/// slowly; the latency rule applies from then on.
const WARM_UP: u32 = 20;

impl Limit {
    pub fn new(config: LimitConfig) -> Self {
        let config = LimitConfig {
            min: config.min.max(1),
            max: config.max.max(config.min.max(1)),
            ..config
        };
        Self {
            limit: f64::from(config.initial.clamp(config.min, config.max)),
            config,
            usual: None,
            recent: None,
            last_decrease: None,
            answers: 0,
        }
    }

    /// Ticks that may be in flight now.
    pub fn current(&self) -> u32 {
        // The limit stays within [min, max], both u32.
        self.limit.floor() as u32
    }

    /// Whether the tenant is held below where it started.
    pub fn throttled(&self) -> bool {
        self.current() < self.config.initial.clamp(self.config.min, self.config.max)
    }

    /// Takes one call's signal; `in_flight` counts the tenant's ticks at
    /// MCE when the call ended, `now` is seconds on any steady clock.
    pub fn record(&mut self, signal: Signal, in_flight: u32, now: f64) {
        match signal {
            Signal::Answered(took) => {
                let took = took.as_secs_f64();
                self.answers = self.answers.saturating_add(1);
                // The first answers weigh evenly (a mean), later ones slowly.
                let even = 1.0 / f64::from(self.answers);
                let average = |avg: Option<f64>, weight: f64| avg.map_or(took, |a| a + (took - a) * weight);
                let warm = self.answers > WARM_UP;
                let usual = average(self.usual, if warm { 0.01 } else { even });
                let recent = average(self.recent, if warm { 0.05 } else { even });
                self.usual = Some(usual);
                self.recent = Some(recent);
                if warm && recent > usual * self.config.latency_tolerance && recent > 0.05 {
                    self.decrease(0.9, now);
                } else if f64::from(in_flight) + 1.0 >= self.limit.floor() {
                    // Grow only while the tenant uses what it has.
                    self.limit = (self.limit + 1.0 / self.limit).min(f64::from(self.config.max));
                }
            }
            Signal::Throttled | Signal::Failed => self.decrease(self.config.backoff, now),
        }
    }

    fn decrease(&mut self, factor: f64, now: f64) {
        if self.last_decrease.is_some_and(|at| now - at < 1.0) {
            return;
        }
        self.last_decrease = Some(now);
        self.limit = (self.limit * factor).max(f64::from(self.config.min));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Signal {
        Signal::Answered(Duration::from_millis(ms))
    }

    #[test]
    fn a_busy_tenant_grows_by_about_one_per_window_up_to_the_cap() {
        let mut l = Limit::new(LimitConfig::default());
        assert_eq!(l.current(), 8);
        // 1/8 + 1/8.125 + ...: nine calls at the limit make it 9.
        for i in 0..9 {
            l.record(ok(300), 8, f64::from(i));
        }
        assert_eq!(l.current(), 9);
        for i in 0..10_000 {
            l.record(ok(300), l.current(), f64::from(i));
        }
        assert_eq!(l.current(), 64, "the operator's cap holds");
    }

    #[test]
    fn an_idle_tenant_does_not_grow() {
        let mut l = Limit::new(LimitConfig::default());
        for i in 0..1000 {
            l.record(ok(300), 1, f64::from(i));
        }
        assert_eq!(l.current(), 8);
    }

    #[test]
    fn refusals_halve_the_limit_once_a_second_down_to_the_floor() {
        let mut l = Limit::new(LimitConfig::default());
        l.record(Signal::Throttled, 8, 10.0);
        assert_eq!(l.current(), 4);
        assert!(l.throttled());
        // The rest of the same burst does not count again.
        l.record(Signal::Throttled, 8, 10.2);
        l.record(Signal::Failed, 8, 10.9);
        assert_eq!(l.current(), 4);
        for t in 11..30 {
            l.record(Signal::Throttled, 1, f64::from(t));
        }
        assert_eq!(l.current(), 1, "a throttled tenant still gets one");
        // And it recovers when MCE answers again.
        for i in 0..200 {
            l.record(ok(300), l.current(), 40.0 + f64::from(i));
        }
        assert!(l.current() > 8, "{}", l.current());
    }

    #[test]
    fn latency_that_keeps_rising_shrinks_the_limit_but_one_slow_call_does_not() {
        let mut l = Limit::new(LimitConfig {
            initial: 20,
            ..LimitConfig::default()
        });
        for i in 0..50 {
            l.record(ok(200), 1, f64::from(i));
        }
        l.record(ok(3000), 1, 60.0);
        assert_eq!(l.current(), 20, "one slow call among fast ones");
        for i in 0..20 {
            l.record(ok(2000), 1, 70.0 + f64::from(i));
        }
        assert!(l.current() < 20, "{}", l.current());
        // MCE's usual spread (median 300 ms, a tail to 2 s) is not congestion.
        let mut spread = Limit::new(LimitConfig::default());
        for i in 1..4000 {
            let ms = if i % 100 == 0 {
                2000
            } else if i % 10 == 0 {
                800
            } else {
                300
            };
            spread.record(ok(ms), spread.current(), f64::from(i) / 100.0);
        }
        assert_eq!(spread.current(), 64, "{}", spread.current());
        // A fast first answer does not make the usual spread look slow.
        let mut cold = Limit::new(LimitConfig::default());
        cold.record(ok(20), 1, 0.0);
        for i in 1..200 {
            cold.record(ok(if i % 2 == 0 { 200 } else { 600 }), 1, f64::from(i));
        }
        assert_eq!(cold.current(), 8);
        // Slower calls from the start are the tenant's usual.
        let mut slow = Limit::new(LimitConfig::default());
        for i in 0..50 {
            slow.record(ok(2000), 1, f64::from(i));
        }
        assert_eq!(slow.current(), 8);
    }

    #[test]
    fn bounds_are_kept_whatever_the_config() {
        let l = Limit::new(LimitConfig {
            initial: 500,
            max: 10,
            min: 0,
            ..LimitConfig::default()
        });
        assert_eq!(l.current(), 10);
        let l = Limit::new(LimitConfig {
            initial: 0,
            max: 0,
            min: 0,
            ..LimitConfig::default()
        });
        assert_eq!(l.current(), 1);
    }
}
