//! Keeps the durable consumers there. Every CONSUMER_CHECK_INTERVAL_MS each
//! consumer is checked: re-created if it was deleted (its stream too),
//! updated if its configuration was changed, and its pending counts
//! sampled. `/readyz` fails for a consumer unconfirmed for three checks
//! (one that cannot be declared again, or one an operator paused);
//! `/healthz` fails for a consumer loop that stopped while the service was
//! not shutting down (the pod is restarted).
//!
//! Architecture invariant: the consumer loops never re-declare anything;
//! this task is the one place that does after start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::watch;

use crate::adapters::metrics::{self, Metrics};
use crate::adapters::nats::{self, ConsumerSpec, Ensured, NatsError, StreamLimits, Subjects};

/// Checks a consumer may miss before `/readyz` fails.
const MISSED_CHECKS: u32 = 3;

struct Entry {
    role: &'static str,
    name: String,
    /// Milliseconds after `Watch::started` of the last confirmation.
    confirmed_at: AtomicU64,
    loop_alive: AtomicBool,
}

/// What the consumer checks and loops last reported, for the probes.
pub(crate) struct Watch {
    started: Instant,
    interval: Duration,
    entries: Vec<Entry>,
}

impl Watch {
    /// All consumers confirmed now (they were just declared).
    pub fn new(specs: &[ConsumerSpec], interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            interval,
            entries: specs
                .iter()
                .map(|s| Entry {
                    role: s.role,
                    name: s.name().to_string(),
                    confirmed_at: AtomicU64::new(0),
                    loop_alive: AtomicBool::new(true),
                })
                .collect(),
        })
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn entry(&self, role: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.role == role)
    }

    fn confirm(&self, role: &str) {
        self.confirm_at(role, self.now());
    }

    fn confirm_at(&self, role: &str, at: u64) {
        if let Some(e) = self.entry(role) {
            e.confirmed_at.store(at, Ordering::SeqCst);
        }
    }

    /// Why the service is not ready, if a consumer has gone unconfirmed for
    /// three checks.
    pub(crate) fn unready(&self) -> Option<String> {
        self.unready_at(self.now())
    }

    fn unready_at(&self, now: u64) -> Option<String> {
        let limit = self.interval.as_millis() as u64 * u64::from(MISSED_CHECKS);
        self.entries.iter().find_map(|e| {
            let age = now.saturating_sub(e.confirmed_at.load(Ordering::SeqCst));
            (age > limit).then(|| format!("consumer {} unconfirmed for {} s", e.name, age / 1000))
        })
    }

    /// The consumer loop that stopped without a shutdown, if one did.
    pub(crate) fn dead_loop(&self) -> Option<String> {
        self.entries
            .iter()
            .find(|e| !e.loop_alive.load(Ordering::SeqCst))
            .map(|e| format!("the {} consumer loop stopped", e.role))
    }

    /// A guard the consumer loop `role` holds: dropped (returned or
    /// panicked) while `shutdown` is still false, it marks the loop dead.
    pub(crate) fn loop_guard(self: &Arc<Self>, role: &'static str, shutdown: watch::Receiver<bool>) -> LoopGuard {
        LoopGuard {
            watch: self.clone(),
            role,
            shutdown,
        }
    }
}

pub(crate) struct LoopGuard {
    watch: Arc<Watch>,
    role: &'static str,
    shutdown: watch::Receiver<bool>,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if *self.shutdown.borrow() {
            return;
        }
        tracing::error!(consumer = self.role, "a consumer loop stopped while the service runs");
        if let Some(e) = self.watch.entry(self.role) {
            e.loop_alive.store(false, Ordering::SeqCst);
        }
    }
}

/// One check of one consumer: re-declares its stream (and the others) when
/// it is gone, then makes sure of the consumer.
async fn check(
    js: &jetstream::Context,
    subjects: &Subjects,
    limits: &StreamLimits,
    spec: &ConsumerSpec,
) -> Result<(Ensured, jetstream::consumer::Info), NatsError> {
    match nats::ensure_consumer(js, spec).await {
        Err(NatsError::StreamMissing(stream)) => {
            tracing::warn!(stream, "a stream was deleted; declaring the streams again");
            nats::declare_streams(js, subjects, limits).await?;
            nats::ensure_consumer(js, spec).await
        }
        other => other,
    }
}

/// Checks every consumer each interval until `shutdown`.
pub(crate) async fn run(
    watch: Arc<Watch>,
    js: jetstream::Context,
    subjects: Subjects,
    limits: StreamLimits,
    specs: Vec<ConsumerSpec>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(watch.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for spec in &specs {
            match check(&js, &subjects, &limits, spec).await {
                Ok((ensured, info)) => {
                    // A paused consumer delivers nothing: an operator's
                    // choice the service does not undo, but it is not ready.
                    if info.paused {
                        tracing::warn!(consumer = spec.name(), "the consumer is paused; it delivers nothing");
                    } else {
                        watch.confirm(spec.role);
                    }
                    if ensured != Ensured::Confirmed {
                        tracing::warn!(consumer = spec.name(), found = ?ensured, "consumer declared again");
                        metrics.inc(metrics::CONSUMER_REDECLARED, &[("consumer", spec.role)]);
                    }
                    for (kind, value) in [
                        ("pending", info.num_pending),
                        ("ack_pending", info.num_ack_pending as u64),
                    ] {
                        metrics.set(
                            metrics::CONSUMER_PENDING,
                            &[("consumer", spec.role), ("kind", kind)],
                            value as f64,
                        );
                    }
                }
                Err(e) => tracing::warn!(consumer = spec.name(), error = %e, "cannot confirm the consumer"),
            }
        }
        // A push consumer on the status stream delivering outside the
        // API's inbox would have the server publish events anywhere.
        match nats::remove_stray_push_consumers(&js, nats::API_DELIVER_PREFIX).await {
            Ok(removed) => {
                for name in removed {
                    tracing::warn!(consumer = %name, "deleted a status push consumer delivering outside the API's inbox");
                    metrics.inc(metrics::STRAY_CONSUMERS_REMOVED, &[]);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the status stream's push consumers"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ConsumerSpec> {
        nats::consumer_specs(
            &Subjects::new("sq"),
            &nats::ConsumerSettings {
                poll_max_ack_pending: 10,
                execute_ack_wait: Duration::from_secs(5),
                poll_ack_wait: Duration::from_secs(5),
            },
        )
        .to_vec()
    }

    #[tokio::test]
    async fn a_consumer_loop_that_ends_without_a_shutdown_is_reported_dead() {
        let watch = Watch::new(&specs(), Duration::from_secs(10));
        let (stop_tx, stop_rx) = watch::channel(false);
        // A loop that panics.
        let guard = watch.loop_guard("poll", stop_rx.clone());
        let died = tokio::spawn(async move {
            let _guard = guard;
            panic!("a consumer loop panics");
        });
        assert!(died.await.is_err());
        assert_eq!(watch.dead_loop().as_deref(), Some("the poll consumer loop stopped"));
        // A loop that ends because of a shutdown is not dead.
        let watch = Watch::new(&specs(), Duration::from_secs(10));
        let guard = watch.loop_guard("execute", stop_rx);
        stop_tx.send(true).unwrap();
        drop(guard);
        assert_eq!(watch.dead_loop(), None);
    }

    #[test]
    fn readiness_fails_after_three_missed_checks_and_returns_on_confirmation() {
        let watch = Watch::new(&specs(), Duration::from_millis(1000));
        assert_eq!(watch.unready_at(3000), None);
        for role in ["execute", "cancel", "undeliverable"] {
            watch.confirm_at(role, 2500);
        }
        let why = watch
            .unready_at(3500)
            .expect("poll unconfirmed for more than three checks");
        assert_eq!(why, "consumer shell-query-poll unconfirmed for 3 s");
        watch.confirm_at("poll", 3400);
        assert_eq!(watch.unready_at(3500), None);
    }
}
