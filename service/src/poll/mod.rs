//! One delivery of `P.poll.<runId>` (DESIGN.md "Poll"): load the row, ask
//! MCE what [`decide`] asks for, carry out its outcome. The decision is pure;
//! this module does the I/O.

pub mod decide;
pub mod schedule;

use chrono::Utc;
use serde::Deserialize;
use tracing::Instrument as _;
use uuid::Uuid;

use self::decide::{Decision, IsRunningObservation, ProbeObservation, RowsetObservation, StatusObservation, Tick};
use crate::app::Deps;
use crate::consumer::{Delivery, Disposition};
use crate::jetstream::Subjects;
use crate::mce::MceError;
use crate::model::{EventStatus, RunStatus, StatusEvent, clip_error};
use crate::store::{self, Run, Terminal};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollMessage {
    run_id: Uuid,
}

pub async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    let msg: PollMessage = match serde_json::from_slice(&delivery.payload) {
        Ok(m) => m,
        Err(e) => return Disposition::DeadLetter(format!("invalid poll message: {e}")),
    };
    if Subjects::run_id_of(&delivery.subject) != Some(msg.run_id) {
        return Disposition::DeadLetter("the subject's run id differs from the body's runId".into());
    }
    deps.metrics.inc(crate::metrics::POLL_TICKS, &[]);
    // Each tick is its own trace, linked to the run's execute span.
    let span = tracing::info_span!(
        "poll",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        run_id = %msg.run_id,
        run.id = %msg.run_id,
        tenant.id = tracing::field::Empty,
        poll.count = delivery.delivered,
        mce.status = tracing::field::Empty,
        poll.decision = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.destination.name = %delivery.subject,
        messaging.operation.type = "process",
    );
    crate::telemetry::link(&span, delivery.headers.as_ref());
    crate::telemetry::record_ids(&span);
    match tick(deps, msg.run_id, delivery).instrument(span).await {
        Ok(d) => d,
        Err(e) => {
            // The database could not be read or written: come back later.
            tracing::warn!(error = %e, "poll tick failed transiently");
            let n = u32::try_from(delivery.delivered - 1).unwrap_or(0);
            Disposition::Retry(deps.poll.backoff.delay_random(n))
        }
    }
}

/// An error no retry fixes ends the run with its client-safe text; any
/// other error is "no answer".
fn refused(e: &MceError) -> Option<String> {
    e.is_unrecoverable().then(|| e.client_message())
}

async fn tick(deps: &Deps, run_id: Uuid, delivery: &Delivery) -> Result<Disposition, sea_orm::DbErr> {
    let Some(run) = store::get_run_for_poll(&deps.db, run_id).await? else {
        return Ok(Disposition::DeadLetter("poll message for an unknown run".into()));
    };
    let status = RunStatus::parse(&run.status).unwrap_or(RunStatus::Failed);
    let canceled = status == RunStatus::Canceled && run.completed_at.is_none();
    if status.is_terminal() && !canceled {
        return Ok(Disposition::Ack);
    }
    let (Some(task_id), Some(de_key)) = (run.task_id.clone(), run.target_de_customer_key.clone()) else {
        return Ok(Disposition::DeadLetter(
            "poll message for a run that was never started".into(),
        ));
    };
    tracing::Span::current().record("tenant.id", tracing::field::display(run.tenant_id));
    let now = Utc::now();
    let state = store::poll_state(&run, u32::try_from(delivery.delivered).unwrap_or(u32::MAX), now);
    let temp_de = de_key == crate::execute::temp_de_key(run_id);
    let mut object_id = run.query_definition_id.clone().filter(|id| !id.trim().is_empty());
    let mut tick = Tick::new(state, &de_key, temp_de, object_id.is_some());
    tick.canceled = canceled;
    // An interrupted start may have lost the TaskID (see execute::resume_interrupted).
    tick.task_known = !task_id.is_empty();
    if deps.poll.schedule == schedule::Schedule::Adaptive && !canceled {
        tick.history = deps.histories.get(&deps.db, run.tenant_id, &run.sql_text_hash).await?;
    }

    let session = if canceled {
        None
    } else {
        match deps.mce.session(run.tenant_id, run.user_id, &run.mid).await {
            Ok(s) => Some(s),
            Err(e) => match refused(&e) {
                Some(message) => {
                    tick.refused = Some(message);
                    None
                }
                None => {
                    tracing::warn!(error = %e, "no MCE session this tick");
                    return Ok(Disposition::Retry(
                        deps.poll.backoff.delay_random(tick.state.poll_count.saturating_sub(1)),
                    ));
                }
            },
        }
    };

    loop {
        let decision = decide::decide(&tick, &deps.poll, Utc::now(), fastrand::f64());
        let Some(session) = session.as_ref().filter(|_| is_question(&decision)) else {
            return conclude(deps, &run, object_id.as_deref(), decision).await;
        };
        match decision {
            Decision::CheckStatus => {
                let answer = session.async_status(&task_id).await;
                if let Ok(s) = &answer {
                    tracing::Span::current().record("mce.status", s.status.as_deref().unwrap_or(""));
                }
                tick.status = Some(match answer {
                    Ok(s) => StatusObservation::Read {
                        status: s.status,
                        error_msg: s.error_msg,
                        completed_date: s.completed_date,
                    },
                    Err(e) => {
                        tick.refused = refused(&e);
                        tracing::warn!(error = %e, "status check failed");
                        StatusObservation::Unavailable
                    }
                });
            }
            Decision::ProbeRows => {
                tick.probe = Some(match session.rowset(&de_key, 1, 1).await {
                    Ok(r) if r.count > 0 || !r.items.is_empty() => ProbeObservation::Rows { count: r.count },
                    Ok(_) => ProbeObservation::NoSignal,
                    Err(e) => {
                        tick.refused = refused(&e);
                        ProbeObservation::NoSignal
                    }
                });
            }
            Decision::CheckIsRunning => {
                let id = object_id.as_deref().unwrap_or_default();
                tick.is_running = Some(match session.is_running(id).await {
                    Ok(true) => IsRunningObservation::Running,
                    Ok(false) => IsRunningObservation::NotRunning,
                    Err(MceError::BadRequest { .. }) => IsRunningObservation::BadId,
                    Err(e) => {
                        tick.refused = refused(&e);
                        tracing::debug!(error = %e, "isRunning gave no answer");
                        IsRunningObservation::Unavailable
                    }
                });
                let answer = match tick.is_running {
                    Some(IsRunningObservation::Running) => "running",
                    Some(IsRunningObservation::NotRunning) => "not_running",
                    Some(IsRunningObservation::BadId) => "bad_id",
                    _ => "unavailable",
                };
                deps.metrics
                    .inc(crate::metrics::IS_RUNNING_CHECKS, &[("answer", answer)]);
                if answer == "not_running" {
                    deps.metrics.inc(crate::metrics::NOT_RUNNING_CONFIRMATIONS, &[]);
                }
            }
            Decision::RecoverObjectId => {
                tick.recovery_tried = true;
                let key = run
                    .query_customer_key
                    .clone()
                    .unwrap_or_else(|| crate::execute::query_key(run_id));
                match session.find_query_definition(&key).await {
                    Ok(Some(found)) => {
                        tracing::info!("QueryDefinition ObjectID recovered by CustomerKey");
                        store::set_query_definition_id(&deps.db, run_id, &found).await?;
                        object_id = Some(found);
                    }
                    Ok(None) => tracing::warn!("no QueryDefinition with the run's CustomerKey"),
                    Err(e) => {
                        tick.refused = refused(&e);
                        tracing::warn!(error = %e, "QueryDefinition lookup failed");
                    }
                }
            }
            Decision::CheckRowset { first } => {
                if first {
                    deps.publish_event(&StatusEvent::new(run_id, EventStatus::FetchingResults, Utc::now()))
                        .await;
                }
                tick.rowset = Some(match session.rowset(&de_key, 1, 1).await {
                    Ok(r) => RowsetObservation::Queryable { count: r.count },
                    Err(e) => {
                        tick.refused = refused(&e);
                        tracing::debug!(error = %e, "results not queryable yet");
                        RowsetObservation::NotYet
                    }
                });
                if tick.rowset == Some(RowsetObservation::NotYet) {
                    deps.metrics.inc(crate::metrics::ROWSET_READINESS_RETRIES, &[]);
                }
            }
            _ => unreachable!("only questions reach here"),
        }
    }
}

fn is_question(d: &Decision) -> bool {
    matches!(
        d,
        Decision::CheckStatus
            | Decision::ProbeRows
            | Decision::CheckIsRunning
            | Decision::RecoverObjectId
            | Decision::CheckRowset { .. }
    )
}

/// Carries out a tick's outcome.
async fn conclude(
    deps: &Deps,
    run: &Run,
    object_id: Option<&str>,
    decision: Decision,
) -> Result<Disposition, sea_orm::DbErr> {
    let label = match &decision {
        Decision::Ready { .. } => "ready",
        Decision::Fail { .. } => {
            tracing::Span::current().record("otel.status_code", "ERROR");
            "fail"
        }
        Decision::Canceled => "canceled",
        Decision::Reschedule { .. } => "reschedule",
        _ => "question",
    };
    tracing::Span::current().record("poll.decision", label);
    let now = Utc::now();
    match decision {
        Decision::Ready { row_count, via } => {
            if store::finish(&deps.db, run.id, Terminal::Ready { row_count }, now).await? {
                tracing::info!(row_count, via = ?via, "run ready");
                let reason = match via {
                    decide::ReadyVia::Complete => "complete",
                    decide::ReadyVia::NotRunning => "not_running",
                    decide::ReadyVia::Probe => "row_probe",
                };
                if via == decide::ReadyVia::Probe {
                    deps.metrics.inc(crate::metrics::FAST_PATH_COMPLETIONS, &[]);
                }
                deps.record_outcome("ready", reason, run.created_at);
                deps.histories.forget(run.tenant_id, &run.sql_text_hash);
                let mut event = StatusEvent::new(run.id, EventStatus::Ready, now);
                event.row_count = Some(row_count);
                deps.publish_event(&event).await;
                cleanup(deps, run, object_id).await;
            }
            Ok(Disposition::Ack)
        }
        Decision::Fail { reason, message } => {
            tracing::info!(reason = reason.label(), "run failed");
            let message = clip_error(&message);
            let terminal = Terminal::Failed {
                error_message_encrypted: deps.cipher.encrypt(&message),
            };
            if store::finish(&deps.db, run.id, terminal, now).await? {
                deps.record_outcome("failed", reason.label(), run.created_at);
                if reason == decide::FailReason::Timeout {
                    deps.metrics.inc(crate::metrics::POLL_TIMEOUTS, &[]);
                }
                deps.publish_event(&StatusEvent::failed(run.id, &message, now)).await;
                cleanup(deps, run, object_id).await;
            }
            Ok(Disposition::Ack)
        }
        Decision::Canceled => {
            // Canceled by the API: one replica claims the clean-up.
            if store::claim_api_cancel(&deps.db, run.id, now).await? {
                tracing::info!("run canceled");
                deps.record_outcome("canceled", "api", run.created_at);
                deps.publish_event(&StatusEvent::new(run.id, EventStatus::Canceled, now))
                    .await;
                cleanup(deps, run, object_id).await;
            }
            Ok(Disposition::Ack)
        }
        Decision::Reschedule { delay, state, write } => {
            if write && !store::save_poll_state(&deps.db, run.id, &state).await? {
                // The run left `running` meanwhile (canceled): look again at once.
                return Ok(Disposition::Retry(std::time::Duration::ZERO));
            }
            Ok(Disposition::Retry(delay))
        }
        question => unreachable!("a question without a session: {question:?}"),
    }
}

/// Deletes the run's QueryDefinition (never another run's). A failure is
/// logged and left to the sweeper.
async fn cleanup(deps: &Deps, run: &Run, object_id: Option<&str>) {
    if let Some(qd) = object_id {
        delete_query_definition(deps, run.tenant_id, run.user_id, &run.mid, qd).await;
    }
}

pub async fn delete_query_definition(deps: &Deps, tenant_id: Uuid, user_id: Option<Uuid>, mid: &str, object_id: &str) {
    let result = match deps.mce.session(tenant_id, user_id, mid).await {
        Ok(session) => session.delete_query_definition(object_id).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not delete the QueryDefinition; the sweeper will");
    }
}
