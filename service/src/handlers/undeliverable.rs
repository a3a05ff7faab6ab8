//! One max-deliveries advisory of the jobs stream (`SHELL_QUERY_ADVISORIES`):
//! a message that no delivery could finish, because handling it crashed or
//! stalled the worker each time. Without this it would stay in the work
//! queue forever, undelivered, and the reconciler, seeing it pending, would
//! never move its run. Here the message's run (an execute message's) is
//! failed with a clear message, the message is copied to the DLQ
//! (redacted), then removed from the jobs stream.
//!
//! An advisory is checked, not believed: it must name the jobs stream and
//! the execute or cancel consumer (the poll consumer redelivers without
//! limit), and the deliveries the service itself recorded for that message
//! (`store::deliveries`, written at the start of each delivery) must have
//! reached that consumer's `max_deliver`. Anything else (a forged or
//! mistaken advisory) is dropped with a warning, and the message and its
//! run are left alone.

use chrono::Utc;
use serde::Deserialize;
use shell_query_core::message::Subjects;
use shell_query_core::run::{Ending, FailCause};

use crate::adapters::nats::{self, JOBS_STREAM, NatsError};
use crate::adapters::store::{StoreError, deliveries, runs};
use crate::handlers::delivery::{Delivery, Disposition};
use crate::lifecycle::Deps;
use crate::lifecycle::end::end_run;

/// The client-safe text of a run whose request could not be handled.
pub const UNPROCESSABLE: &str = "The run could not be processed: handling its request stopped the service repeatedly. Please check the query and run it again.";

/// The part of the server's advisory this handler reads.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    #[serde(default)]
    consumer: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// The `max_deliver` of the consumer an advisory names, if it is one of the
/// service's consumers whose deliveries are limited.
fn limit_of(consumer: &str) -> Option<i64> {
    match consumer {
        nats::EXECUTE_CONSUMER => Some(nats::EXECUTE_MAX_DELIVER),
        nats::CANCEL_CONSUMER => Some(nats::CANCEL_MAX_DELIVER),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Nats(#[from] NatsError),
}

pub(crate) async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    let advisory: MaxDeliveries = match serde_json::from_slice(&delivery.payload) {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!("an unreadable max-deliveries advisory; dropped");
            return Disposition::Ack;
        }
    };
    let limit = match (advisory.stream == JOBS_STREAM, limit_of(&advisory.consumer)) {
        (true, Some(limit)) => limit,
        _ => {
            tracing::warn!(
                stream = %advisory.stream,
                consumer = %advisory.consumer,
                "a max-deliveries advisory for no consumer of the service; dropped"
            );
            return Disposition::Ack;
        }
    };
    let seen = match deliveries::seen(&deps.store, advisory.stream_seq).await {
        Ok(seen) => seen.unwrap_or(0),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the recorded deliveries; will retry");
            return Disposition::Retry(std::time::Duration::from_secs(5));
        }
    };
    if seen < limit {
        tracing::warn!(
            stream_seq = advisory.stream_seq,
            claimed = advisory.deliveries,
            seen,
            max_deliver = limit,
            "a max-deliveries advisory the recorded deliveries do not bear out; dropped, the message left alone"
        );
        return Disposition::Ack;
    }
    match give_up(deps, &advisory, seen, limit).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "an undeliverable message could not be settled yet; will retry");
            Disposition::Retry(std::time::Duration::from_secs(5))
        }
    }
}

async fn give_up(deps: &Deps, advisory: &MaxDeliveries, seen: i64, limit: i64) -> Result<(), Error> {
    let Some((subject, payload)) = nats::job_message(&deps.js, advisory.stream_seq).await? else {
        return Ok(()); // finished or removed meanwhile
    };
    let run_id = Subjects::run_id_of(&subject);
    tracing::error!(subject = %subject, deliveries = seen, "a message no delivery could finish; giving up on it");
    let execute = deps.subjects.is_execute(&subject);
    if execute
        && let Some(run_id) = run_id
        && let Some(run) = runs::get_run(&deps.store, run_id).await?
    {
        let ending = Ending::Failed {
            message: UNPROCESSABLE.into(),
            cause: FailCause::Execute,
        };
        end_run(deps, &run, ending, run.query_definition(), Utc::now()).await?;
    }
    let reason = format!(
        "delivered {seen} times (max_deliver {limit}) and never finished: handling it stopped the worker each time"
    );
    let (copy, redaction) = crate::lifecycle::dlq::redacted(&deps.cipher, execute, &payload);
    nats::publish_dlq(&deps.js, &deps.subjects, &subject, copy, redaction, &reason).await?;
    deps.metrics
        .inc(crate::adapters::metrics::DLQ_MESSAGES, &[("consumer", "undeliverable")]);
    nats::delete_job_message(&deps.js, advisory.stream_seq).await?;
    deliveries::forget(&deps.store, advisory.stream_seq).await?;
    Ok(())
}
