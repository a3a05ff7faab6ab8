//! The one place a run ends. Every path that finishes a run (a poll tick,
//! a cancel, the API's own cancel, the execute step, a malformed message,
//! the reconciler) calls [`end_run`], which does, in this order:
//!
//! 1. the compare-and-set into the terminal state (losing it is normal:
//!    another path ended the run, and nothing else happens here);
//! 2. the outcome metrics;
//! 3. the terminal status event, and, once the stream confirmed it, the
//!    row's `terminal_event_at`;
//! 4. the adaptive schedule's history reset (a ready run is a new duration);
//! 5. the deletion of the run's QueryDefinition.
//!
//! The event is owed until confirmed: a crash or a NATS error between the
//! compare-and-set and the confirmation leaves `terminal_event_at` empty,
//! and [`publish_owed_event`] (the run's next poll delivery, or the
//! reconciler) publishes it from the row. Events carry the message id
//! `status:<runId>:<status>`, so a second publish of one that did reach the
//! stream is dropped there.

use chrono::{DateTime, Utc};
use shell_query_core::event::{EventStatus, StatusEvent, clip_error};
use shell_query_core::poll::decide::{FailReason, ReadyVia};
use shell_query_core::run::{CancelSource, Ending, FailCause, Run, RunStatus};

use super::Deps;
use crate::adapters::metrics::{DETECTION_DELAY, FAST_PATH_COMPLETIONS, POLL_TIMEOUTS, RUN_DURATION, RUNS};
use crate::adapters::store::StoreError;
use crate::adapters::store::runs::{self, Terminal};

/// Ends `run` as `ending` says. `query_definition` is the QueryDefinition to
/// delete, if any (the run's recorded one, or the one an execute delivery
/// made before it could record it). True if this call ended the run.
pub(crate) async fn end_run(
    deps: &Deps,
    run: &Run,
    ending: Ending,
    query_definition: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let won = match &ending {
        // The API set the row to `canceled` itself: one replica claims the
        // handling (the service's own marker, never `completed_at`).
        Ending::Canceled(CancelSource::Api) => runs::claim_api_cancel(&deps.store, run.id, now).await?,
        Ending::Ready { row_count, .. } => {
            runs::finish(&deps.store, run.id, Terminal::Ready { row_count: *row_count }, now).await?
        }
        Ending::Failed { message, .. } => {
            let terminal = Terminal::Failed {
                error_message_encrypted: deps.cipher.encrypt(&clip_error(message)),
            };
            runs::finish(&deps.store, run.id, terminal, now).await?
        }
        Ending::Canceled(CancelSource::CancelMessage) => {
            runs::finish(&deps.store, run.id, Terminal::Canceled, now).await?
        }
    };
    if !won {
        return Ok(false);
    }
    announce_ending(deps, run, ending, query_definition, now).await?;
    Ok(true)
}

/// Steps 2 to 5 for a run this call ended: metrics, the terminal event, the
/// history reset, the QueryDefinition's deletion. [`end_run`] calls it after
/// winning the compare-and-set; a row made terminal by its own insert (a
/// broken request) calls it directly.
pub(crate) async fn announce_ending(
    deps: &Deps,
    run: &Run,
    ending: Ending,
    query_definition: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let event = match &ending {
        Ending::Ready { row_count, .. } => StatusEvent {
            row_count: Some(*row_count),
            ..StatusEvent::new(run.id, EventStatus::Ready, now)
        },
        Ending::Failed { message, .. } => StatusEvent::failed(run.id, &clip_error(message), now),
        Ending::Canceled(_) => StatusEvent::new(run.id, EventStatus::Canceled, now),
    };
    tracing::info!(
        run_id = %run.id,
        outcome = ending.outcome_label(),
        reason = ending.reason_label(),
        "run ended"
    );
    record_metrics(deps, &ending, run, now);
    publish_terminal(deps, &event, now).await?;
    if matches!(ending, Ending::Ready { .. }) {
        deps.histories.forget(run.account.tenant_id(), &run.sql_text_hash);
    }
    if let Some(qd) = query_definition.filter(|q| !q.trim().is_empty()) {
        deps.delete_query_definition(&run.account, qd).await;
    }
    Ok(())
}

/// Publishes a terminal event and records its confirmation. A publish that
/// fails is logged and left owed.
async fn publish_terminal(deps: &Deps, event: &StatusEvent, now: DateTime<Utc>) -> Result<bool, StoreError> {
    match crate::adapters::nats::publish_status(&deps.js, &deps.subjects, event).await {
        Ok(()) => match runs::confirm_terminal_event(&deps.store, event.run_id, now).await {
            Ok(()) => Ok(true),
            // Published but not recorded: it stays owed, and a second
            // publish is dropped by its message id. The clean-up goes on.
            Err(e) => {
                tracing::warn!(run_id = %event.run_id, error = %e, "terminal event published; its confirmation not recorded");
                Ok(false)
            }
        },
        Err(e) => {
            tracing::warn!(run_id = %event.run_id, status = event.status.as_str(), error = %e, "terminal event not published; it stays owed");
            Ok(false)
        }
    }
}

/// Publishes the terminal event a run still owes, rebuilt from its row.
/// True once the stream confirmed it.
pub(crate) async fn publish_owed_event(deps: &Deps, run: &Run, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let at = run.completed_at.unwrap_or(now);
    let event = match run.status {
        RunStatus::Ready => StatusEvent {
            row_count: run.row_count,
            ..StatusEvent::new(run.id, EventStatus::Ready, at)
        },
        RunStatus::Failed => {
            let message = run
                .error_message
                .as_deref()
                .and_then(|e| deps.cipher.decrypt(e).ok())
                .unwrap_or_else(|| "The run failed.".into());
            StatusEvent::failed(run.id, &message, at)
        }
        RunStatus::Canceled => StatusEvent::new(run.id, EventStatus::Canceled, at),
        RunStatus::Queued | RunStatus::Running => return Ok(false),
    };
    // The first try may have landed without its acknowledgement (NATS went
    // away meanwhile, and a restarted server may not remember the message
    // id): an event already on the stream is only recorded.
    if let Ok(Some(last)) = crate::adapters::nats::last_status(&deps.js, &deps.subjects, run.id).await
        && last == event.status
    {
        runs::confirm_terminal_event(&deps.store, run.id, now).await?;
        return Ok(true);
    }
    tracing::info!(run_id = %run.id, status = event.status.as_str(), "publishing an owed terminal event");
    publish_terminal(deps, &event, now).await
}

/// Shows the run families from the start: every kind of ending counted at
/// 0, and each outcome's empty duration histogram.
pub(crate) fn start_metrics_at_zero(metrics: &crate::adapters::metrics::Metrics) {
    for ending in Ending::every_kind() {
        let outcome = ending.outcome_label();
        metrics.add(RUNS, &[("outcome", outcome), ("reason", ending.reason_label())], 0);
        metrics.touch(RUN_DURATION, &[("outcome", outcome)]);
    }
}

fn record_metrics(deps: &Deps, ending: &Ending, run: &Run, now: DateTime<Utc>) {
    let outcome = ending.outcome_label();
    deps.metrics
        .inc(RUNS, &[("outcome", outcome), ("reason", ending.reason_label())]);
    let took = (now - run.created_at).to_std().unwrap_or_default();
    deps.metrics.observe(RUN_DURATION, &[("outcome", outcome)], took);
    // Known only when an earlier tick saw the query finished (its rowset
    // not yet readable, or MCE saying it no longer runs).
    let first_seen_done = [run.poll.rowset_first_at, run.poll.not_running_first_at]
        .into_iter()
        .flatten()
        .min();
    if let (Ending::Ready { .. }, Some(seen)) = (ending, first_seen_done) {
        let delay = (now - seen).to_std().unwrap_or_default();
        deps.metrics.observe(DETECTION_DELAY, &[], delay);
    }
    match ending {
        Ending::Ready {
            via: ReadyVia::Probe, ..
        } => deps.metrics.inc(FAST_PATH_COMPLETIONS, &[]),
        Ending::Failed {
            cause: FailCause::Poll(FailReason::Timeout),
            ..
        } => deps.metrics.inc(POLL_TIMEOUTS, &[]),
        _ => {}
    }
}
