//! Per-tenant admission to MCE: each call waits for a place under its
//! tenant's adaptive limit of calls in flight ([`Limit`]), fed by every
//! attempt's outcome. A throttled tenant's calls wait on their own tenant;
//! the other tenants' calls pass. The consumer's `POLL_CONCURRENCY` stays
//! the global ceiling on deliveries; a tenant may hold at most half of it
//! (in flight or waiting), so one tenant can never fill it: a call past that
//! share is answered "slow down" without reaching MCE.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shell_query_core::limit::{Limit, LimitConfig, Signal};
use tokio::sync::Notify;
use uuid::Uuid;

struct Tenant {
    limit: Limit,
    in_flight: u32,
    waiting: u32,
    freed: Arc<Notify>,
}

/// Every tenant's limit. Cloned handles share it.
#[derive(Clone)]
pub(crate) struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    config: LimitConfig,
    metrics: Option<Arc<crate::adapters::metrics::Metrics>>,
    /// A tenant holding this many places (at MCE or waiting) gets `None`
    /// for another tick (it is redelivered later): one tenant never fills
    /// the consumer's ceiling.
    max_held: u32,
    epoch: Instant,
    tenants: Mutex<HashMap<Uuid, Tenant>>,
}

/// A tenant's place: dropping it lets the next tick of the tenant in.
pub(crate) struct Permit {
    gate: Gate,
    tenant: Uuid,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut tenants = self.gate.inner.tenants.lock().expect("gate lock");
        if let Some(t) = tenants.get_mut(&self.tenant) {
            t.in_flight = t.in_flight.saturating_sub(1);
            t.freed.notify_one();
        }
    }
}

/// A waiting tick's count; dropped without a place, it takes the count back.
struct Queued {
    gate: Gate,
    tenant: Uuid,
    counted: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut tenants = self.gate.inner.tenants.lock().expect("gate lock");
        if let Some(t) = tenants.get_mut(&self.tenant) {
            t.waiting = t.waiting.saturating_sub(1);
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(LimitConfig::default(), u32::MAX)
    }
}

impl Gate {
    pub fn new(config: LimitConfig, max_held: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                metrics: None,
                max_held: max_held.max(1),
                epoch: Instant::now(),
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Keeps `shell_query_tenants_throttled` up to date. Call before the
    /// gate is shared.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::adapters::metrics::Metrics>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics.clone());
        }
        metrics.set(crate::adapters::metrics::TENANTS_THROTTLED, &[], 0.0);
        self
    }

    fn now(&self) -> f64 {
        self.inner.epoch.elapsed().as_secs_f64()
    }

    /// Waits for a place under the tenant's limit; `None` when the tenant
    /// holds its share of places already.
    pub(crate) async fn enter(&self, tenant: Uuid) -> Option<Permit> {
        // Counts this tick among the tenant's waiting ones until it gets a
        // place or is dropped (a cancelled wait never leaks a count).
        let mut queued: Option<Queued> = None;
        loop {
            let freed = {
                let mut tenants = self.inner.tenants.lock().expect("gate lock");
                let t = tenants.entry(tenant).or_insert_with(|| Tenant {
                    limit: Limit::new(self.inner.config),
                    in_flight: 0,
                    waiting: 0,
                    freed: Arc::new(Notify::new()),
                });
                if t.in_flight < t.limit.current() {
                    t.in_flight += 1;
                    if let Some(mut q) = queued.take() {
                        // Taken back here, under the lock the guard's drop
                        // would take again.
                        q.counted = false;
                        t.waiting = t.waiting.saturating_sub(1);
                    }
                    return Some(Permit {
                        gate: self.clone(),
                        tenant,
                    });
                }
                if queued.is_none() {
                    if t.waiting + t.in_flight >= self.inner.max_held {
                        return None;
                    }
                    t.waiting += 1;
                    queued = Some(Queued {
                        gate: self.clone(),
                        tenant,
                        counted: true,
                    });
                }
                t.freed.clone()
            };
            // A place frees when a permit drops; the limit may also have
            // grown meanwhile, so look again at least every 100 ms.
            let _ = tokio::time::timeout(Duration::from_millis(100), freed.notified()).await;
        }
    }

    /// Takes one MCE call's outcome for the tenant's limit.
    pub(crate) fn record(&self, tenant: Uuid, signal: Signal) {
        let now = self.now();
        let mut tenants = self.inner.tenants.lock().expect("gate lock");
        let Some(t) = tenants.get_mut(&tenant) else {
            return;
        };
        let was = t.limit.throttled();
        t.limit.record(signal, t.in_flight, now);
        // A grown limit may let a waiting tick in.
        t.freed.notify_one();
        if was != t.limit.throttled()
            && let Some(metrics) = &self.inner.metrics
        {
            let count = tenants.values().filter(|t| t.limit.throttled()).count();
            metrics.set(crate::adapters::metrics::TENANTS_THROTTLED, &[], count as f64);
        }
    }

    /// (tenant, current limit, in flight, waiting), for tests.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<(Uuid, u32, u32, u32)> {
        let tenants = self.inner.tenants.lock().expect("gate lock");
        tenants
            .iter()
            .map(|(id, t)| (*id, t.limit.current(), t.in_flight, t.waiting))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_throttled_tenant_waits_and_another_passes() {
        let gate = Gate::new(
            LimitConfig {
                initial: 2,
                ..LimitConfig::default()
            },
            3,
        );
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = gate.enter(a).await.unwrap();
        let _second = gate.enter(a).await.unwrap();
        gate.record(a, Signal::Throttled);
        // a is at its limit (now 1, two in flight): its next tick waits...
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(a).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // ...while b passes at once.
        let _b = tokio::time::timeout(Duration::from_millis(10), gate.enter(b))
            .await
            .expect("another tenant is not held")
            .unwrap();
        // Two permits of a must go before a third fits under a limit of 1.
        drop(first);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished());
        drop(_second);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_wait_given_up_gives_its_place_in_the_queue_back() {
        let gate = Gate::new(
            LimitConfig {
                initial: 1,
                ..LimitConfig::default()
            },
            2,
        );
        let a = Uuid::new_v4();
        let _held = gate.enter(a).await.unwrap();
        let given_up = tokio::time::timeout(Duration::from_millis(50), gate.enter(a)).await;
        assert!(given_up.is_err(), "it waited");
        assert_eq!(gate.snapshot()[0].3, 0, "the dropped wait is not counted");
        // So the tenant may queue again.
        let again = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(a).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gate.snapshot()[0].3, 1);
        drop(_held);
        assert!(again.await.unwrap());
    }

    #[tokio::test]
    async fn a_tenant_may_not_queue_without_bound() {
        let gate = Gate::new(
            LimitConfig {
                initial: 1,
                ..LimitConfig::default()
            },
            2,
        );
        let a = Uuid::new_v4();
        let _held = gate.enter(a).await.unwrap();
        let waiters: Vec<_> = (0..1)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.enter(a).await.is_some() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(gate.enter(a).await.is_none(), "a third place is refused");
        assert_eq!(gate.snapshot()[0].3, 1);
        drop(_held);
        for w in waiters {
            assert!(w.await.unwrap());
        }
    }
}
