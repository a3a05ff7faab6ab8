//! The reconciler (DESIGN.md "Reconciler and sweeper"): every interval, on
//! the one replica holding the lease, finds runs that should be moving and
//! are not, and moves them: a lost poll message is published again, a
//! stale queued run is re-submitted or failed, a run stuck before Perform
//! is failed.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::app::Deps;
use crate::jetstream::{JOBS_STREAM, PollPublished};
use crate::model::{StatusEvent, clip_error};
use crate::store::{self, Terminal};

/// What one pass did, for logs, metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub polls_republished: u32,
    pub executes_republished: u32,
    pub runs_failed: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Runs younger than this are left alone.
    pub grace: Duration,
    /// A run `running` without a TaskID for this long has no execute left.
    pub start_deadline: Duration,
}

const NOT_STARTED: &str = "The run could not be started. Please run it again.";

async fn pending(deps: &Deps, subject: String) -> bool {
    match deps.js.get_stream_no_info(JOBS_STREAM).await {
        Ok(stream) => stream.direct_get_last_for_subject(subject).await.is_ok(),
        // Unknown: assume a message is there rather than duplicate work.
        Err(_) => true,
    }
}

async fn fail(deps: &Deps, run: &store::Run, message: &str, now: DateTime<Utc>) -> Result<bool, sea_orm::DbErr> {
    let message = clip_error(message);
    let terminal = Terminal::Failed {
        error_message_encrypted: deps.cipher.encrypt(&message),
    };
    if !store::finish(&deps.db, run.id, terminal, now).await? {
        return Ok(false);
    }
    deps.publish_event(&StatusEvent::failed(run.id, &message, now)).await;
    deps.record_outcome("failed", "reconciler", run.created_at);
    if let Some(qd) = run.query_definition_id.as_deref().filter(|q| !q.is_empty()) {
        crate::poll::delete_query_definition(deps, run.tenant_id, run.user_id, &run.mid, qd).await;
    }
    deps.metrics
        .inc(crate::metrics::RECONCILER_ACTIONS, &[("action", "run_failed")]);
    Ok(true)
}

/// One pass over the live runs.
pub async fn reconcile_once(deps: &Deps, cfg: Config, now: DateTime<Utc>) -> Result<Report, sea_orm::DbErr> {
    let mut report = Report::default();
    let grace = chrono::Duration::from_std(cfg.grace).unwrap_or_default();
    let deadline = chrono::Duration::from_std(cfg.start_deadline).unwrap_or_default();
    for run in store::stale_runs(&deps.db, now - grace).await? {
        match (run.status.as_str(), run.task_id.as_deref()) {
            ("running", Some(_)) => {
                if pending(deps, deps.subjects.poll(run.id)).await {
                    continue;
                }
                // A fresh id: an id used within the duplicate window is dropped silently.
                let msg_id = format!("poll:{}:{}", run.id, now.timestamp_millis());
                match crate::jetstream::publish_poll(&deps.js, &deps.subjects, run.id, &msg_id).await {
                    Ok(PollPublished::New) => {
                        tracing::warn!(run_id = %run.id, "reconciler: poll message was missing; published again");
                        report.polls_republished += 1;
                        deps.metrics
                            .inc(crate::metrics::RECONCILER_ACTIONS, &[("action", "poll_republished")]);
                    }
                    Ok(PollPublished::AlreadyPending) => {}
                    Err(e) => tracing::warn!(run_id = %run.id, error = %e, "reconciler: could not publish a poll"),
                }
            }
            ("running", None) => {
                let started = run.started_at.unwrap_or(run.created_at);
                if started > now - deadline || pending(deps, deps.subjects.execute(run.id)).await {
                    continue;
                }
                tracing::warn!(run_id = %run.id, "reconciler: run never got past its start; failing it");
                if fail(deps, &run, NOT_STARTED, now).await? {
                    report.runs_failed += 1;
                }
            }
            ("queued", _) => {
                if pending(deps, deps.subjects.execute(run.id)).await {
                    continue;
                }
                match resubmit(deps, &run, now).await {
                    Ok(true) => {
                        tracing::warn!(run_id = %run.id, "reconciler: queued run had no execute message; submitted again");
                        report.executes_republished += 1;
                        deps.metrics
                            .inc(crate::metrics::RECONCILER_ACTIONS, &[("action", "execute_republished")]);
                    }
                    Ok(false) => {
                        tracing::warn!(run_id = %run.id, "reconciler: queued run cannot be submitted again; failing it");
                        if fail(deps, &run, NOT_STARTED, now).await? {
                            report.runs_failed += 1;
                        }
                    }
                    Err(e) => tracing::warn!(run_id = %run.id, error = %e, "reconciler: could not submit again"),
                }
            }
            _ => {}
        }
    }
    Ok(report)
}

/// Publishes the execute message again from the row, when the row holds all
/// it needs (the encrypted SQL, and no target it cannot name).
async fn resubmit(deps: &Deps, run: &store::Run, now: DateTime<Utc>) -> Result<bool, crate::jetstream::NatsError> {
    let Some(sql) = run
        .sql_text_encrypted
        .clone()
        .filter(|_| run.target_update_type.is_none() && !run.mid.is_empty())
    else {
        return Ok(false);
    };
    let body = serde_json::json!({
        "runId": run.id, "tenantId": run.tenant_id, "userId": run.user_id, "mid": run.mid,
        "sqlTextEncrypted": sql, "snippetName": run.snippet_name,
    });
    let subject = deps.subjects.execute(run.id);
    let publish = PublishMessage::build()
        .payload(Bytes::from(body.to_string()))
        .message_id(format!("execute:{}:{}", run.id, now.timestamp_millis()));
    let err = |e: String| crate::jetstream::NatsError::Publish {
        subject: subject.clone(),
        detail: e,
    };
    deps.js
        .send_publish(subject.clone(), publish)
        .await
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(true)
}

/// Runs passes every `interval` while this replica holds the lease.
pub async fn run(
    deps: std::sync::Arc<Deps>,
    cfg: Config,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::lease::periodically(&deps.js.clone(), "reconciler", interval, shutdown, |now| {
        let deps = deps.clone();
        async move {
            match reconcile_once(&deps, cfg, now).await {
                Ok(report) if report != Report::default() => tracing::info!(?report, "reconciler pass"),
                Ok(_) => tracing::debug!("reconciler pass: nothing to do"),
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
            }
        }
    })
    .await;
}
