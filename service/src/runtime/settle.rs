//! Settling deliveries in bursts on the wall clock.
//!
//! nats-server keeps a consumer's waiting messages (a poll message between
//! two ticks is one) in its pending list and finds the due ones with a scan
//! of the whole list. A negative acknowledgement with a delay sets that scan
//! to run 10 ms later, pushing back one already set; and with more than
//! 1,024 pending, a scan gives up, for 100 ms, as soon as an acknowledgement
//! arrives during it. At 100,000 runs a replica settles hundreds of ticks a
//! second, one every few milliseconds, so the scan kept being pushed back or
//! given up, and due messages came out late and in lumps (a second and more).
//!
//! So a consumer's acknowledgements leave together, at each multiple of the
//! window on the wall clock (`SETTLE_WINDOW_MS`), and the server has the
//! rest of the window, quiet, to scan. Replicas share the wall clock, so
//! their bursts line up. A negative acknowledgement asks for the delay that
//! is left at the moment it leaves, so waiting for the burst moves no tick.
//! "In progress" does not wait: it is rare and has its own deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a delivery ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settlement {
    Ack,
    /// Comes back at this instant.
    NakUntil(Instant),
    Term,
}

impl Settlement {
    /// The acknowledgement to send at `now`: a delay counts from then.
    fn kind(self, now: Instant) -> AckKind {
        match self {
            Self::Ack => AckKind::Ack,
            Self::NakUntil(due) => AckKind::Nak(Some(due.saturating_duration_since(now))),
            Self::Term => AckKind::Term,
        }
    }
}

/// One consumer's outgoing acknowledgements.
#[derive(Clone)]
pub(crate) struct Settler {
    consumer: &'static str,
    /// `None`: each leaves at once (a window of 0).
    queue: Option<mpsc::Sender<(Acker, Settlement)>>,
}

/// A burst that NATS has not taken in this long is given up on: its
/// deliveries come back after their ack wait, as after a crash.
const BURST_DEADLINE: Duration = Duration::from_secs(10);

impl Settler {
    /// Starts the sending task. `capacity` bounds the queue (a consumer's
    /// concurrency: a full queue holds the handlers, so the consumer stops
    /// pulling). The task ends, having sent everything, once every clone of
    /// the settler is dropped.
    pub(crate) fn start(consumer: &'static str, window: Duration, capacity: usize) -> (Self, Option<JoinHandle<()>>) {
        if window.is_zero() {
            return (Self { consumer, queue: None }, None);
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(send_in_bursts(consumer, window, rx));
        (
            Self {
                consumer,
                queue: Some(tx),
            },
            Some(task),
        )
    }

    pub(crate) async fn settle(&self, acker: Acker, settlement: Settlement) {
        let acker = match &self.queue {
            Some(queue) => match queue.send((acker, settlement)).await {
                Ok(()) => return,
                // The task is gone (it only ends once every sender is
                // dropped, so this is a panic in it): send it here.
                Err(mpsc::error::SendError((acker, _))) => acker,
            },
            None => acker,
        };
        send(self.consumer, &acker, settlement).await;
    }
}

async fn send(consumer: &str, acker: &Acker, settlement: Settlement) {
    if let Err(e) = acker.ack_with(settlement.kind(Instant::now())).await {
        tracing::warn!(consumer, error = %e, "acknowledgement failed; NATS will redeliver");
    }
}

async fn send_in_bursts(consumer: &'static str, window: Duration, mut rx: mpsc::Receiver<(Acker, Settlement)>) {
    let mut burst = Vec::new();
    while let Some(first) = rx.recv().await {
        burst.push(first);
        tokio::time::sleep(until_next_multiple(wall_clock(), window)).await;
        while let Ok(next) = rx.try_recv() {
            burst.push(next);
        }
        // Each send only queues the acknowledgement on the connection, which
        // writes the burst out together.
        let sending = futures::future::join_all(burst.iter().map(|(acker, s)| send(consumer, acker, *s)));
        if tokio::time::timeout(BURST_DEADLINE, sending).await.is_err() {
            tracing::warn!(
                consumer,
                deliveries = burst.len(),
                "NATS did not take a burst of acknowledgements; they come back after their ack wait"
            );
        }
        burst.clear();
    }
}

fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// From `now` (since the epoch) to the next multiple of `window`; a whole
/// window when `now` is on one (so every burst is a window after the last).
fn until_next_multiple(now: Duration, window: Duration) -> Duration {
    let window_ns = window.as_nanos().max(1);
    let into = now.as_nanos() % window_ns;
    Duration::from_nanos((window_ns - into) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_fall_on_multiples_of_the_window() {
        let w = Duration::from_millis(50);
        assert_eq!(until_next_multiple(Duration::from_millis(1_000), w), w);
        assert_eq!(
            until_next_multiple(Duration::from_millis(1_001), w),
            Duration::from_millis(49)
        );
        assert_eq!(
            until_next_multiple(Duration::from_millis(1_049), w),
            Duration::from_millis(1)
        );
        // Two replicas whose settlements fall anywhere in a window send at the same instant.
        for now_ms in [10_000_003, 10_000_021, 10_000_049] {
            let now = Duration::from_millis(now_ms);
            assert_eq!(now + until_next_multiple(now, w), Duration::from_millis(10_000_050));
        }
    }

    #[test]
    fn a_delay_counts_from_when_the_acknowledgement_leaves() {
        let now = Instant::now();
        let due = now + Duration::from_secs(120);
        let later = now + Duration::from_millis(30);
        let kind = |s: Settlement| format!("{:?}", s.kind(later));
        let nak = |d: Duration| format!("{:?}", AckKind::Nak(Some(d)));
        assert_eq!(kind(Settlement::NakUntil(due)), nak(Duration::from_millis(119_970)));
        // Already due: comes back at once.
        assert_eq!(kind(Settlement::NakUntil(now)), nak(Duration::ZERO));
        assert_eq!(kind(Settlement::Ack), format!("{:?}", AckKind::Ack));
        assert_eq!(kind(Settlement::Term), format!("{:?}", AckKind::Term));
    }
}
