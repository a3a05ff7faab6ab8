//! The consumer loop: fetch, run the handler under a concurrency limit, apply
//! the disposition it returns. Handlers never touch acknowledgements; this is
//! the one place that decides them (and that copies messages to the DLQ);
//! `settle` sends them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};

use shell_query_core::backoff;

use super::settle::{Settlement, Settler};
use crate::handlers::Handler;
use crate::handlers::delivery::{Delivery, Disposition};
use crate::lifecycle::Deps;

async fn handle_one(handler: &Handler, progress_every: Duration, settler: &Settler, deps: Arc<Deps>, msg: Message) {
    let (delivered, stream_seq) = msg.info().map(|i| (i.delivered, i.stream_sequence)).unwrap_or((1, 0));
    let delivery = Delivery {
        subject: msg.subject.to_string(),
        payload: msg.payload.clone(),
        delivered,
        stream_seq,
        headers: msg.headers.clone(),
    };
    let (msg, acker) = msg.split();

    // A handler that panics must not leave its message "in progress"
    // forever: the panic is caught, the message comes back later, and after
    // `max_deliver` the advisory handler settles it (handlers/undeliverable.rs).
    let handled = std::panic::AssertUnwindSafe(crate::adapters::telemetry::with_incoming(
        delivery.headers.as_ref(),
        handler.handle(&deps, &delivery),
    ));
    let mut handled = std::pin::pin!(futures::FutureExt::catch_unwind(handled));
    // Long handlers tell NATS they are alive, so it does not redeliver. The
    // timer lives in this task: most handlers end long before it first fires.
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    let outcome = loop {
        tokio::select! {
            outcome = &mut handled => break outcome,
            _ = progress.tick() => {
                // A failed "in progress" (NATS briefly away) is tried again at
                // the next tick: giving up would let NATS hand the message to a
                // second worker while this one still works on it. It waits at
                // most half a period, so a NATS outage never holds the handler.
                match tokio::time::timeout(progress_every / 2, acker.ack_with(AckKind::Progress)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "an in-progress acknowledgement failed; trying again"),
                    Err(_) => tracing::debug!("an in-progress acknowledgement timed out; trying again"),
                }
            }
        }
    };
    let disposition = match outcome {
        Ok(disposition) => disposition,
        Err(_) => {
            tracing::error!(consumer = handler.name(), subject = %delivery.subject, "the handler panicked; the message comes back later");
            Disposition::Retry(Duration::from_secs(30))
        }
    };

    let settlement = match &disposition {
        Disposition::Ack => Settlement::Ack,
        Disposition::Retry(delay) => Settlement::NakUntil(tokio::time::Instant::now() + backoff::clamp(*delay)),
        Disposition::DeadLetter(reason) => {
            deps.metrics
                .inc(crate::adapters::metrics::DLQ_MESSAGES, &[("consumer", handler.name())]);
            tracing::warn!(consumer = handler.name(), subject = %delivery.subject, reason = %reason, "message sent to the DLQ");
            let carries_sql = deps.subjects.is_execute(&delivery.subject);
            let (copy, redaction) = crate::lifecycle::dlq::redacted(&deps.cipher, carries_sql, &msg.payload);
            // A replayed message that fails again: its copy stands in for
            // the one replayed (which `dlq replay` removed), and says so.
            let replayed_from = delivery
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::adapters::nats::HEADER_REPLAYED_FROM))
                .map(|v| v.as_str().to_string());
            match crate::adapters::nats::publish_dlq_copy(
                &deps.js,
                &deps.subjects,
                &delivery.subject,
                copy,
                redaction,
                reason,
                replayed_from.as_deref(),
            )
            .await
            {
                Ok(()) => Settlement::Term,
                // Not copied: keep the message and try again later.
                Err(e) => {
                    tracing::error!(error = %e, "could not copy a message to the DLQ");
                    Settlement::NakUntil(tokio::time::Instant::now() + Duration::from_secs(10))
                }
            }
        }
    };
    settler.settle(acker, settlement).await;
}

/// Runs a consumer until `shutdown` turns true, then waits for in-flight
/// handlers to finish.
/// `ack_wait` is the consumer's: "in progress" goes out every third of it.
/// Acknowledgements leave in bursts every `settle_window` (`settle`).
pub(crate) async fn run(
    handler: Handler,
    consumer: PullConsumer,
    concurrency: usize,
    ack_wait: Duration,
    settle_window: Duration,
    deps: Arc<Deps>,
    mut shutdown: watch::Receiver<bool>,
) {
    let progress_every = ack_wait / 3;
    let (settler, sending) = Settler::start(handler.name(), settle_window, concurrency);
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(concurrency));
    'outer: while !*shutdown.borrow() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut messages = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(consumer = handler.name(), error = %e, "cannot pull; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = shutdown.changed() => break 'outer,
            };
            let next = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.changed() => break 'outer,
            };
            match next {
                Some(Ok(msg)) => {
                    let (deps, handler, settler) = (deps.clone(), handler.clone(), settler.clone());
                    tokio::spawn(async move {
                        handle_one(&handler, progress_every, &settler, deps, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
                    // Only a consumer that is gone ends this stream; anything else
                    // (missed heartbeats while disconnected, a failed pull) passes,
                    // and dropping the stream would strand its buffered messages
                    // until their ack wait runs out.
                    if matches!(
                        e.kind(),
                        Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded
                    ) {
                        tracing::warn!(consumer = handler.name(), error = %e, "pull stream ended");
                        break;
                    }
                    tracing::debug!(consumer = handler.name(), error = %e, "pull stream hiccup");
                }
                None => break,
            }
        }
        // The pull stream ended (consumer gone, connection trouble): start a
        // new one shortly, without spinning.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Drain: every permit back means every handler is done; then the last
    // burst of acknowledgements goes out.
    let _ = permits.acquire_many(concurrency as u32).await;
    drop(settler);
    if let Some(sending) = sending {
        let _ = sending.await;
    }
}
