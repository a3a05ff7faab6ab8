//! Per-tenant admission to MCE, its decisions: one place that holds, for
//! each tenant,
//! - its adaptive limit of MCE calls in flight ([`Limit`]), divided among
//!   the replicas that serve it, so N replicas together make no more calls
//!   at once than one would;
//! - its share of poll ticks in flight (a tick past it is turned back, so
//!   one tenant never fills the consumer's places);
//! - its stretch: the factor every one of its runs' poll intervals is
//!   multiplied by while it asks for more checks than its budget serves,
//!   so all its runs are checked a little later, none minutes late.
//!
//! Pure: the caller counts what is in flight through these methods, passes
//! the time, and does the waiting (`service/src/adapters/mce/admission.rs`).

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::limit::{Limit, LimitConfig, Signal};

/// Every tenant's bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionConfig {
    /// The limit of calls in flight, for the whole replica set.
    pub limit: LimitConfig,
    /// The most ticks of one tenant in flight on one replica.
    pub tick_share: u32,
}

/// A call that waited at least this long for its place counts as a sign
/// the tenant asks more than its budget serves. Not less: a tenant that
/// uses its whole budget always has calls waiting a little, and a short
/// threshold stretches it below what its budget serves (measured with
/// 1 s: the largest tenant of `bench realistic --refuse-in` got 57 % of
/// its calls-in-flight budget).
pub const LONG_WAIT: Duration = Duration::from_secs(5);
/// The stretch is reconsidered over windows of this length.
pub const STRETCH_WINDOW: Duration = Duration::from_secs(2);
/// The most a tenant's intervals are stretched.
pub const MAX_STRETCH: f64 = 10.0;
/// Over-budget ticks below this fraction of a window leave the stretch to
/// relax.
const OVER_TOLERANCE: f64 = 0.01;
/// How far the stretch relaxes per poll interval once the tenant is served.
const RELAX_PER_INTERVAL: f64 = 0.97;
/// The poll interval assumed until a tenant's own is seen.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct Tenant {
    limit: Limit,
    calls: u32,
    ticks: u32,
    stretch: f64,
    /// This window: ticks seen, and of them those over budget (turned
    /// back, or whose call waited [`LONG_WAIT`] or more).
    seen: u32,
    over: u32,
    window_started: f64,
    /// The tenant's usual poll interval (seconds, a moving average).
    interval: f64,
}

/// Every tenant's admission on this replica.
#[derive(Clone, Debug)]
pub struct Admission {
    config: AdmissionConfig,
    replicas: u32,
    tenants: HashMap<Uuid, Tenant>,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            replicas: 1,
            tenants: HashMap::new(),
        }
    }

    /// The replicas serving the tenants now (this one included).
    pub fn set_replicas(&mut self, replicas: u32) {
        self.replicas = replicas.max(1);
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    fn tenant(&mut self, tenant: Uuid, now: f64) -> &mut Tenant {
        let config = self.config.limit;
        self.tenants.entry(tenant).or_insert_with(|| Tenant {
            limit: Limit::new(config),
            calls: 0,
            ticks: 0,
            stretch: 1.0,
            seen: 0,
            over: 0,
            window_started: now,
            interval: DEFAULT_INTERVAL.as_secs_f64(),
        })
    }

    /// A tick of `tenant` starts: `true` when admitted (it then counts in
    /// flight until [`Admission::tick_done`]), `false` when the tenant
    /// holds its share of ticks already (the tick is turned back).
    pub fn tick(&mut self, tenant: Uuid, now: f64) -> bool {
        let share = self.config.tick_share.max(1);
        let t = self.tenant(tenant, now);
        t.seen += 1;
        if t.ticks >= share {
            t.over += 1;
            settle_window(t, now);
            return false;
        }
        t.ticks += 1;
        settle_window(t, now);
        true
    }

    pub fn tick_done(&mut self, tenant: Uuid) {
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.ticks = t.ticks.saturating_sub(1);
        }
        self.forget_idle(tenant);
    }

    /// This replica's part of the tenant's limit of calls in flight.
    pub fn call_limit(&self, tenant: Uuid) -> u32 {
        let whole = self
            .tenants
            .get(&tenant)
            .map_or_else(|| Limit::new(self.config.limit).current(), |t| t.limit.current());
        (whole / self.replicas).max(1)
    }

    /// Whether a call of `tenant` may go to MCE now; when it may, it counts
    /// in flight until [`Admission::call_done`].
    pub fn try_call(&mut self, tenant: Uuid, now: f64) -> bool {
        let limit = self.call_limit(tenant);
        let t = self.tenant(tenant, now);
        if t.calls < limit {
            t.calls += 1;
            true
        } else {
            false
        }
    }

    /// A call that got its place after waiting `waited`.
    pub fn waited(&mut self, tenant: Uuid, waited: Duration, now: f64) {
        if waited >= LONG_WAIT {
            let t = self.tenant(tenant, now);
            t.over += 1;
            settle_window(t, now);
        }
    }

    pub fn call_done(&mut self, tenant: Uuid) {
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.calls = t.calls.saturating_sub(1);
        }
        self.forget_idle(tenant);
    }

    /// Takes one MCE call's outcome for the tenant's limit; whether the
    /// tenant's throttled state changed.
    pub fn record(&mut self, tenant: Uuid, signal: Signal, now: f64) -> bool {
        let replicas = self.replicas;
        let Some(t) = self.tenants.get_mut(&tenant) else {
            return false;
        };
        let was = t.limit.throttled();
        // The limit grows while this replica uses its part of it.
        t.limit.record(signal, t.calls.saturating_mul(replicas), now);
        was != t.limit.throttled()
    }

    /// A run of `tenant` is to be checked again after `interval` (its
    /// schedule's, before the stretch): the tenant's usual interval.
    pub fn note_interval(&mut self, tenant: Uuid, interval: Duration, now: f64) {
        let t = self.tenant(tenant, now);
        t.interval += (interval.as_secs_f64() - t.interval) * 0.05;
    }

    /// The factor the tenant's poll intervals are stretched by (1 when its
    /// budget serves every check it asks).
    pub fn stretch(&self, tenant: Uuid) -> f64 {
        self.tenants.get(&tenant).map_or(1.0, |t| t.stretch)
    }

    /// Tenants held below the limit they started with.
    pub fn throttled(&self) -> usize {
        self.tenants.values().filter(|t| t.limit.throttled()).count()
    }

    /// (limit, calls, ticks) of a tenant, for tests and operators.
    pub fn snapshot(&self, tenant: Uuid) -> Option<(u32, u32, u32)> {
        self.tenants.get(&tenant).map(|t| (t.limit.current(), t.calls, t.ticks))
    }

    /// A tenant with nothing in flight, at its starting limit and not
    /// stretched, is forgotten (it starts afresh next time).
    fn forget_idle(&mut self, tenant: Uuid) {
        let fresh = Limit::new(self.config.limit);
        if self
            .tenants
            .get(&tenant)
            .is_some_and(|t| t.calls == 0 && t.ticks == 0 && t.seen == 0 && t.stretch <= 1.0 && t.limit == fresh)
        {
            self.tenants.remove(&tenant);
        }
    }
}

/// Ends the tenant's window once it is [`STRETCH_WINDOW`] old: over budget
/// in more than a sliver of its ticks, the stretch grows by the factor that
/// would have served them (1 / (1 − over)), spread over one poll interval
/// (the time a stretched interval takes to show); served, it relaxes.
fn settle_window(t: &mut Tenant, now: f64) {
    let length = now - t.window_started;
    if length < STRETCH_WINDOW.as_secs_f64() {
        return;
    }
    let share_of_interval = (length / t.interval.max(1.0)).min(1.0);
    let over = if t.seen == 0 {
        0.0
    } else {
        (f64::from(t.over) / f64::from(t.seen)).min(0.9)
    };
    let factor = if over > OVER_TOLERANCE {
        (1.0 / (1.0 - over)).powf(share_of_interval)
    } else {
        RELAX_PER_INTERVAL.powf(share_of_interval)
    };
    t.stretch = (t.stretch * factor).clamp(1.0, MAX_STRETCH);
    t.seen = 0;
    t.over = 0;
    t.window_started = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tick_share: u32) -> AdmissionConfig {
        AdmissionConfig {
            limit: LimitConfig {
                initial: 8,
                max: 64,
                ..LimitConfig::default()
            },
            tick_share,
        }
    }

    #[test]
    fn a_tenant_holds_at_most_its_share_of_ticks_and_others_pass() {
        let mut a = Admission::new(config(2));
        let (busy, other) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(a.tick(busy, 0.0) && a.tick(busy, 0.0));
        assert!(!a.tick(busy, 0.0), "a third is past the share");
        assert!(a.tick(other, 0.0), "another tenant is not held back");
        a.tick_done(busy);
        assert!(a.tick(busy, 0.0), "a place given back is taken again");
        assert!(Admission::new(config(0)).tick(busy, 0.0), "a share is at least one");
    }

    #[test]
    fn calls_wait_under_the_limit_and_a_refusal_lowers_it() {
        let mut a = Admission::new(config(100));
        let t = Uuid::new_v4();
        for _ in 0..8 {
            assert!(a.try_call(t, 0.0));
        }
        assert!(!a.try_call(t, 0.0), "the ninth waits");
        assert!(a.record(t, Signal::Throttled, 1.0), "now throttled");
        assert_eq!(a.call_limit(t), 4);
        for _ in 0..8 {
            a.call_done(t);
        }
        assert_eq!(a.throttled(), 1);
    }

    #[test]
    fn replicas_split_one_budget_and_each_keeps_at_least_one() {
        let mut a = Admission::new(config(100));
        let t = Uuid::new_v4();
        a.set_replicas(3);
        assert_eq!(a.call_limit(t), 2, "8 / 3");
        let mut sum = 0;
        for r in 1..=4 {
            a.set_replicas(r);
            sum = a.call_limit(t) * r;
            assert!(sum <= 8, "{r} replicas together: {sum}");
        }
        assert_eq!(sum, 8);
        a.set_replicas(100);
        assert_eq!(a.call_limit(t), 1);
        // A replica grows its part while it uses it: the whole limit grows
        // as if one replica made every call.
        a.set_replicas(2);
        for i in 0..2000 {
            let _ = a.try_call(t, 0.0);
            a.record(t, Signal::Answered(Duration::from_millis(300)), f64::from(i));
            a.call_done(t);
            let _ = a.try_call(t, 0.0);
        }
        assert!(a.call_limit(t) > 4, "{}", a.call_limit(t));
        assert!(a.call_limit(t) <= 32, "{}", a.call_limit(t));
    }

    /// A tenant asking `asked` checks a second of which `capacity` can be
    /// served in flight, polled every `interval`: the stretch settles where
    /// the checks it asks meet what is served, and no tick is turned back
    /// once it has.
    fn settle(asked: f64, capacity: u32) -> (f64, f64) {
        let mut a = Admission::new(config(capacity));
        let t = Uuid::new_v4();
        let interval = 120.0;
        let mut turned_back = 0.0_f64;
        let mut ticks = 0.0_f64;
        // One second steps; a tick holds its place for one second. The
        // ticks due now were scheduled one interval ago, at the stretch of
        // then.
        let mut stretches = vec![1.0; 120];
        for second in 0..3600 {
            let now = f64::from(second);
            stretches.push(a.stretch(t));
            let then = stretches[stretches.len() - 121];
            let arriving = (asked / then).round() as u32;
            let mut admitted = 0;
            for _ in 0..arriving {
                a.note_interval(t, Duration::from_secs_f64(interval), now);
                if a.tick(t, now) {
                    admitted += 1;
                } else if second >= 3000 {
                    turned_back += 1.0;
                }
                if second >= 3000 {
                    ticks += 1.0;
                }
            }
            for _ in 0..admitted {
                a.tick_done(t);
            }
        }
        (a.stretch(t), turned_back / ticks.max(1.0))
    }

    #[test]
    fn a_tenant_over_its_budget_is_stretched_evenly_until_it_is_served() {
        let (stretch, turned_back) = settle(400.0, 150);
        assert!((2.2..3.5).contains(&stretch), "{stretch}");
        assert!(turned_back < 0.05, "{turned_back}");
        let (stretch, _) = settle(100.0, 150);
        assert_eq!(stretch, 1.0, "a tenant within its budget is not stretched");
    }

    #[test]
    fn long_waits_for_a_place_stretch_too_and_the_stretch_relaxes() {
        let mut a = Admission::new(config(100));
        let t = Uuid::new_v4();
        a.note_interval(t, Duration::from_secs(10), 0.0);
        for i in 0..40 {
            let now = f64::from(i) * 0.5;
            assert!(a.tick(t, now));
            a.waited(t, Duration::from_secs(6), now);
            a.tick_done(t);
        }
        let stretched = a.stretch(t);
        assert!(stretched > 1.5, "{stretched}");
        for i in 0..10_000 {
            let now = 20.0 + f64::from(i) * 0.5;
            assert!(a.tick(t, now));
            a.waited(t, Duration::ZERO, now);
            a.tick_done(t);
        }
        assert_eq!(a.stretch(t), 1.0);
    }
}
