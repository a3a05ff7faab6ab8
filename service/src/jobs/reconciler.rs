//! The reconciler (ARCHITECTURE.md, "How a run moves: Reconciler and
//! sweeper"): every interval, on the one replica holding the lease, finds
//! runs that should be moving and are not, and moves them: a lost poll
//! message is published again, a stale queued run is re-submitted or
//! failed, a run stuck before Perform is failed.

use std::time::Duration;
use tracing::Instrument as _;

use chrono::{DateTime, Utc};
use shell_query_core::message::ExecuteMessage;
use shell_query_core::run::{CancelSource, Ending, FailCause, Run, RunStatus, StartPhase};

use crate::adapters::nats::{NatsError, PollPublished};
use crate::adapters::store::{StoreError, runs};
use crate::lifecycle::Deps;
use crate::lifecycle::end::{end_run, publish_owed_event};

/// What one pass did, for logs, metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub polls_republished: u32,
    pub executes_republished: u32,
    pub runs_failed: u32,
    /// Terminal events owed by runs that ended, published from their rows.
    pub events_published: u32,
    /// Cancels the API made that nothing else handled (no message left to
    /// bring the run back to a handler).
    pub cancels_handled: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// Runs younger than this are left alone.
    pub grace: Duration,
    /// A run `running` without a TaskID for this long has no execute left.
    pub start_deadline: Duration,
}

const NOT_STARTED: &str = "The run could not be started. Please run it again.";
const CANNOT_REBUILD: &str = "The run's request could not be rebuilt to start it again (its query text, business unit or target is missing). Please run it again.";

async fn pending(deps: &Deps, subject: String) -> bool {
    match crate::adapters::nats::holds_message_on(&deps.js, subject).await {
        Ok(held) => held,
        // Unknown (NATS away, a leader moving): assume a message is there
        // rather than duplicate work; the next pass looks again.
        Err(e) => {
            tracing::debug!(error = %e, "reconciler: cannot tell whether a message is pending");
            true
        }
    }
}

async fn fail(deps: &Deps, run: &Run, message: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let ending = Ending::Failed {
        message: message.to_string(),
        cause: FailCause::Reconciler,
    };
    if !end_run(deps, run, ending, run.query_definition(), now).await? {
        return Ok(false);
    }
    deps.metrics.inc(
        crate::adapters::metrics::RECONCILER_ACTIONS,
        &[("action", "run_failed")],
    );
    Ok(true)
}

/// One pass over the live runs.
pub(crate) async fn reconcile_once(deps: &Deps, cfg: Config, now: DateTime<Utc>) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let grace = chrono::Duration::from_std(cfg.grace).unwrap_or_default();
    let deadline = chrono::Duration::from_std(cfg.start_deadline).unwrap_or_default();
    let mut after = None;
    loop {
        let page = runs::stale_runs(&deps.store, now - grace, after).await?;
        after = page.last().map(|r| (r.created_at, r.id));
        let full = page.len() == runs::PAGE;
        for run in page {
            reconcile_run(deps, run, deadline, now, &mut report).await?;
        }
        if !full {
            break;
        }
    }
    // Delivery records of messages settled long ago (an advisory comes
    // within an ack wait of the last delivery).
    crate::adapters::store::deliveries::prune(&deps.store, now - chrono::Duration::days(1)).await?;
    for run in runs::pending_cancels(&deps.store, now - grace).await? {
        let ending = Ending::Canceled(CancelSource::Api);
        if end_run(deps, &run, ending, run.query_definition(), now).await? {
            report.cancels_handled += 1;
            deps.metrics.inc(
                crate::adapters::metrics::RECONCILER_ACTIONS,
                &[("action", "cancel_handled")],
            );
        }
    }
    for run in runs::runs_owing_an_event(&deps.store, now - grace).await? {
        if publish_owed_event(deps, &run, now).await? {
            report.events_published += 1;
            deps.metrics.inc(
                crate::adapters::metrics::RECONCILER_ACTIONS,
                &[("action", "event_published")],
            );
        }
    }
    Ok(report)
}

/// What one stale live run needs, if anything.
async fn reconcile_run(
    deps: &Deps,
    run: Run,
    deadline: chrono::Duration,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), StoreError> {
    match (run.status, &run.start) {
        (RunStatus::Running, StartPhase::Started(_)) => {
            if pending(deps, deps.subjects.poll(run.id)).await {
                return Ok(());
            }
            // A fresh id: an id used within the duplicate window is dropped silently.
            let msg_id = format!("poll:{}:{}", run.id, now.timestamp_millis());
            match crate::adapters::nats::publish_poll(&deps.js, &deps.subjects, run.id, &msg_id).await {
                Ok(PollPublished::New) => {
                    tracing::warn!(run_id = %run.id, "reconciler: poll message was missing; published again");
                    report.polls_republished += 1;
                    deps.metrics.inc(
                        crate::adapters::metrics::RECONCILER_ACTIONS,
                        &[("action", "poll_republished")],
                    );
                }
                Ok(PollPublished::AlreadyPending) => {}
                Err(e) => tracing::warn!(run_id = %run.id, error = %e, "reconciler: could not publish a poll"),
            }
        }
        (RunStatus::Running, _) => {
            let started = run.started_at.unwrap_or(run.created_at);
            if started > now - deadline || pending(deps, deps.subjects.execute(run.id)).await {
                return Ok(());
            }
            tracing::warn!(run_id = %run.id, "reconciler: run never got past its start; failing it");
            if fail(deps, &run, NOT_STARTED, now).await? {
                report.runs_failed += 1;
            }
        }
        (RunStatus::Queued, _) => {
            if pending(deps, deps.subjects.execute(run.id)).await {
                return Ok(());
            }
            match resubmit(deps, &run, now).await {
                Ok(true) => {
                    tracing::warn!(run_id = %run.id, "reconciler: queued run had no execute message; submitted again");
                    report.executes_republished += 1;
                    deps.metrics.inc(
                        crate::adapters::metrics::RECONCILER_ACTIONS,
                        &[("action", "execute_republished")],
                    );
                }
                Ok(false) => {
                    tracing::warn!(run_id = %run.id, "reconciler: queued run cannot be submitted again; failing it");
                    if fail(deps, &run, CANNOT_REBUILD, now).await? {
                        report.runs_failed += 1;
                    }
                }
                Err(e) => tracing::warn!(run_id = %run.id, error = %e, "reconciler: could not submit again"),
            }
        }
        _ => {}
    }
    Ok(())
}

/// Publishes the execute message again from the row: every field the row
/// holds, the destination included (a run-to-target never turns into a
/// temp run). The row does not hold `tableMetadata`; the execute step reads
/// the fields of every table a message does not describe from MCE. False
/// when the row cannot rebuild the request (no SQL, no MID, or an update
/// type without its target): the run is then failed, never left queued.
async fn resubmit(deps: &Deps, run: &Run, now: DateTime<Utc>) -> Result<bool, NatsError> {
    let Some(msg) = request_of(run) else {
        return Ok(false);
    };
    let msg_id = format!("execute:{}:{}", run.id, now.timestamp_millis());
    crate::adapters::nats::publish_execute(&deps.js, &deps.subjects, &msg, &msg_id).await?;
    Ok(true)
}

/// The execute message the row holds (`None` when it cannot be rebuilt).
pub(crate) fn request_of(run: &Run) -> Option<ExecuteMessage> {
    let (Some(sql), false) = (run.sql_text_encrypted.clone(), run.account.mid.is_empty()) else {
        return None;
    };
    if run.target_de_customer_key.is_none() && run.update_type.is_some() {
        return None;
    }
    Some(ExecuteMessage {
        run_id: run.id,
        tenant_id: run.account.tenant_id(),
        user_id: run.account.user_id(),
        mid: run.account.mid.to_string(),
        sql_text_encrypted: Some(sql),
        snippet_name: run.snippet_name.clone(),
        target_de_customer_key: run.target_de_customer_key.clone(),
        target_update_type: run.update_type.as_ref().map(|u| u.as_str().to_string()),
        ..Default::default()
    })
}

/// Runs passes every `interval` while this replica holds the lease.
pub(crate) async fn run(
    deps: std::sync::Arc<Deps>,
    cfg: Config,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::adapters::lease::periodically(&deps.js.clone(), "reconciler", interval, shutdown, |now| {
        let deps = deps.clone();
        let span = tracing::info_span!(parent: None, "reconciler_pass", otel.name = "reconciler pass");
        async move {
            match reconcile_once(&deps, cfg, now).await {
                Ok(report) => {
                    deps.metrics.set_now(crate::adapters::metrics::RECONCILER_LAST_SUCCESS);
                    if report == Report::default() {
                        tracing::debug!("reconciler pass: nothing to do");
                    } else {
                        tracing::info!(?report, "reconciler pass");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
            }
        }
        .instrument(span)
    })
    .await;
}
