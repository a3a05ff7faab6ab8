//! One max-deliveries advisory of the jobs stream (`SHELL_QUERY_ADVISORIES`):
//! a message that no delivery could finish, because handling it crashed or
//! stalled the worker each time. Without this it would stay in the work
//! queue forever, undelivered, and the reconciler, seeing it pending, would
//! never move its run. Here the message's run (an execute message's) is
//! failed with a clear message, the message is copied to the DLQ
//! (redacted), then removed from the jobs stream.

use chrono::Utc;
use serde::Deserialize;
use shell_query_core::message::Subjects;
use shell_query_core::run::{Ending, FailCause};

use crate::adapters::nats::{self, JOBS_STREAM, NatsError};
use crate::adapters::store::{StoreError, runs};
use crate::handlers::delivery::{Delivery, Disposition};
use crate::lifecycle::Deps;
use crate::lifecycle::end::end_run;

/// The client-safe text of a run whose request could not be handled.
pub const UNPROCESSABLE: &str = "The run could not be processed: handling its request stopped the service repeatedly. Please check the query and run it again.";

/// The part of the server's advisory this handler reads.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Nats(#[from] NatsError),
}

pub async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    let advisory: MaxDeliveries = match serde_json::from_slice(&delivery.payload) {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!("an unreadable max-deliveries advisory; dropped");
            return Disposition::Ack;
        }
    };
    if advisory.stream != JOBS_STREAM {
        return Disposition::Ack;
    }
    match give_up(deps, &advisory).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "an undeliverable message could not be settled yet; will retry");
            Disposition::Retry(std::time::Duration::from_secs(5))
        }
    }
}

async fn give_up(deps: &Deps, advisory: &MaxDeliveries) -> Result<(), Error> {
    let Some((subject, payload)) = nats::job_message(&deps.js, advisory.stream_seq).await? else {
        return Ok(()); // finished or removed meanwhile
    };
    let run_id = Subjects::run_id_of(&subject);
    tracing::error!(subject = %subject, deliveries = advisory.deliveries, "a message no delivery could finish; giving up on it");
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
        "delivered {} times and never finished: handling it stopped the worker each time",
        advisory.deliveries
    );
    let (copy, redaction) = crate::lifecycle::dlq::redacted(&deps.cipher, execute, &payload);
    nats::publish_dlq(&deps.js, &deps.subjects, &subject, copy, redaction, &reason).await?;
    deps.metrics
        .inc(crate::adapters::metrics::DLQ_MESSAGES, &[("consumer", "undeliverable")]);
    nats::delete_job_message(&deps.js, advisory.stream_seq).await?;
    Ok(())
}
