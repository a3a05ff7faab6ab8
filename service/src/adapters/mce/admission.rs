//! Per-tenant admission to MCE, its waiting: the one adapter over
//! [`shell_query_core::admission::Admission`] (the decisions). A poll tick
//! takes its tenant's tick place first ([`Admission::tick`]: none when the
//! tenant holds its share, and the tick is turned back); each MCE call then
//! waits for a place under the tenant's adaptive limit of calls in flight
//! ([`Admission::enter`]), this replica's part of it, and reports how it
//! went ([`Admission::record`]). A throttled tenant's calls wait on their
//! own tenant; the other tenants' calls pass. The replica set's size comes
//! from [`crate::adapters::lease::keep_membership`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shell_query_core::admission::{Admission as Decisions, AdmissionConfig};
use shell_query_core::limit::{LimitConfig, Signal};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::adapters::metrics::{Metrics, TENANTS_THROTTLED};

/// Every tenant's admission on this replica. Cloned handles share it.
#[derive(Clone)]
pub(crate) struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Option<Arc<Metrics>>,
    epoch: Instant,
    state: Mutex<State>,
}

struct State {
    decisions: Decisions,
    /// Woken when a tenant's call place frees (or its limit grows).
    freed: HashMap<Uuid, Arc<Notify>>,
}

/// A tenant's call place: dropping it lets the next call of the tenant in.
pub(crate) struct Permit {
    admission: Admission,
    tenant: Uuid,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.decisions.call_done(self.tenant);
        if let Some(freed) = state.freed.get(&self.tenant) {
            freed.notify_one();
        }
    }
}

/// A tick of a tenant counted in flight until dropped.
pub(crate) struct TickPlace {
    admission: Admission,
    tenant: Uuid,
}

impl Drop for TickPlace {
    fn drop(&mut self) {
        self.admission.lock().decisions.tick_done(self.tenant);
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(AdmissionConfig {
            limit: LimitConfig::default(),
            tick_share: u32::MAX,
        })
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics: None,
                epoch: Instant::now(),
                state: Mutex::new(State {
                    decisions: Decisions::new(config),
                    freed: HashMap::new(),
                }),
            }),
        }
    }

    /// Keeps `shell_query_tenants_throttled` and `shell_query_replicas`
    /// up to date. Call before the admission is shared.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics.clone());
        }
        metrics.set(TENANTS_THROTTLED, &[], 0.0);
        metrics.set(crate::adapters::metrics::REPLICAS, &[], 1.0);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("admission lock")
    }

    fn now(&self) -> f64 {
        self.inner.epoch.elapsed().as_secs_f64()
    }

    /// The replicas sharing every tenant's budget (this one included).
    pub(crate) fn set_replicas(&self, replicas: u32) {
        let mut state = self.lock();
        if state.decisions.replicas() == replicas.max(1) {
            return;
        }
        state.decisions.set_replicas(replicas);
        // A smaller replica set gives each a larger part: wake the waiters.
        for freed in state.freed.values() {
            freed.notify_waiters();
        }
        drop(state);
        if let Some(metrics) = &self.inner.metrics {
            metrics.set(crate::adapters::metrics::REPLICAS, &[], f64::from(replicas.max(1)));
        }
    }

    /// A place for one more poll tick of `tenant`, unless it holds its
    /// share of ticks in flight.
    pub(crate) fn tick(&self, tenant: Uuid) -> Option<TickPlace> {
        let now = self.now();
        self.lock().decisions.tick(tenant, now).then(|| TickPlace {
            admission: self.clone(),
            tenant,
        })
    }

    /// Waits for a place under the tenant's limit of calls in flight.
    pub(crate) async fn enter(&self, tenant: Uuid) -> Permit {
        let asked = Instant::now();
        loop {
            let freed = {
                let now = self.now();
                let mut state = self.lock();
                if state.decisions.try_call(tenant, now) {
                    state.decisions.waited(tenant, asked.elapsed(), now);
                    return Permit {
                        admission: self.clone(),
                        tenant,
                    };
                }
                state.freed.entry(tenant).or_default().clone()
            };
            // A place frees when a permit drops; the limit may also have
            // grown meanwhile, so look again at least every 100 ms.
            let _ = tokio::time::timeout(Duration::from_millis(100), freed.notified()).await;
        }
    }

    /// Takes one MCE call's outcome for the tenant's limit.
    pub(crate) fn record(&self, tenant: Uuid, signal: Signal) {
        let now = self.now();
        let mut state = self.lock();
        let changed = state.decisions.record(tenant, signal, now);
        // A grown limit may let a waiting call in.
        if let Some(freed) = state.freed.get(&tenant) {
            freed.notify_one();
        }
        if changed && let Some(metrics) = &self.inner.metrics {
            metrics.set(TENANTS_THROTTLED, &[], state.decisions.throttled() as f64);
        }
    }

    /// The tenant's poll interval stretched while it asks for more checks
    /// than its budget serves; notes the unstretched one.
    pub(crate) fn stretched(&self, tenant: Uuid, interval: Duration) -> Duration {
        let now = self.now();
        let mut state = self.lock();
        state.decisions.note_interval(tenant, interval, now);
        interval.mul_f64(state.decisions.stretch(tenant))
    }

    /// (current limit, calls in flight, ticks in flight), for tests.
    #[cfg(test)]
    pub(crate) fn snapshot(&self, tenant: Uuid) -> Option<(u32, u32, u32)> {
        self.lock().decisions.snapshot(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(initial: u32) -> Admission {
        Admission::new(AdmissionConfig {
            limit: LimitConfig {
                initial,
                ..LimitConfig::default()
            },
            tick_share: 3,
        })
    }

    #[tokio::test]
    async fn a_throttled_tenant_waits_and_another_passes() {
        let admission = admission(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = admission.enter(a).await;
        let second = admission.enter(a).await;
        admission.record(a, Signal::Throttled);
        // a is at its limit (now 1, two in flight): its next call waits...
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move {
                let _permit = admission.enter(a).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // ...while b passes at once.
        let _b = tokio::time::timeout(Duration::from_millis(10), admission.enter(b))
            .await
            .expect("another tenant is not held");
        // Two permits of a must go before a third fits under a limit of 1.
        drop(first);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished());
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("let in once a place frees")
            .unwrap();
        assert_eq!(admission.snapshot(a).map(|(_, calls, _)| calls), Some(0));
    }

    #[tokio::test]
    async fn a_wait_given_up_holds_no_place_and_a_smaller_set_of_replicas_lets_more_in() {
        let admission = admission(4);
        let a = Uuid::new_v4();
        admission.set_replicas(2);
        let _one = admission.enter(a).await;
        let _two = admission.enter(a).await;
        let given_up = tokio::time::timeout(Duration::from_millis(50), admission.enter(a)).await;
        assert!(given_up.is_err(), "half of 4 is this replica's part: it waited");
        assert_eq!(admission.snapshot(a).map(|(_, calls, _)| calls), Some(2));
        let third = tokio::spawn({
            let admission = admission.clone();
            async move {
                let _permit = admission.enter(a).await;
            }
        });
        admission.set_replicas(1);
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("alone again, the replica has the whole limit")
            .unwrap();
    }

    #[test]
    fn ticks_past_the_share_are_turned_back() {
        let admission = admission(8);
        let a = Uuid::new_v4();
        let held: Vec<_> = (0..3).map(|_| admission.tick(a).expect("within the share")).collect();
        assert!(admission.tick(a).is_none());
        drop(held);
        assert!(admission.tick(a).is_some());
    }
}
