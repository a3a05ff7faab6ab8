//! One delivery of `P.poll.<runId>` (DESIGN.md "Poll"): one check of MCE,
//! then a terminal transition or a delayed redelivery of the same message.
//! The decision itself is [`decide`], pure; this module does the I/O.

pub mod decide;

use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use self::decide::{Decision, Observation, PollState, RowsetObservation};
use crate::app::Deps;
use crate::consumer::{Delivery, Disposition};
use crate::jetstream::Subjects;
use crate::mce::{MceError, Session};
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
    let span = tracing::info_span!("poll", run_id = %msg.run_id, poll_count = delivery.delivered);
    let _enter = span.enter();
    match tick(deps, msg.run_id, delivery).await {
        Ok(d) => d,
        Err(e) => {
            // The database could not be read or written: come back later.
            tracing::warn!(error = %e, "poll tick failed transiently");
            let n = u32::try_from(delivery.delivered - 1).unwrap_or(0);
            Disposition::Retry(deps.poll.backoff.delay_random(n))
        }
    }
}

async fn tick(deps: &Deps, run_id: Uuid, delivery: &Delivery) -> Result<Disposition, sea_orm::DbErr> {
    let Some(run) = store::get_run(&deps.db, run_id).await? else {
        return Ok(Disposition::DeadLetter("poll message for an unknown run".into()));
    };
    let status = RunStatus::parse(&run.status).unwrap_or(RunStatus::Failed);
    if status == RunStatus::Canceled && run.completed_at.is_none() {
        // Canceled by the API: one replica claims the clean-up.
        if store::claim_api_cancel(&deps.db, run_id, Utc::now()).await? {
            deps.publish_event(&StatusEvent::new(run_id, EventStatus::Canceled, Utc::now()))
                .await;
            cleanup(deps, &run).await;
        }
        return Ok(Disposition::Ack);
    }
    if status.is_terminal() {
        return Ok(Disposition::Ack);
    }
    let (Some(task_id), Some(de_key)) = (run.task_id.clone(), run.target_de_customer_key.clone()) else {
        return Ok(Disposition::DeadLetter(
            "poll message for a run that was never started".into(),
        ));
    };
    let now = Utc::now();
    let state = store::poll_state(&run, u32::try_from(delivery.delivered).unwrap_or(u32::MAX), now);
    let session = match deps.mce.session(run.tenant_id, run.user_id, &run.mid).await {
        Ok(s) => s,
        Err(e) if e.is_transient() => return Ok(reschedule_transient(deps, &state)),
        Err(e) => return finish_failed(deps, &run, &e.client_message()).await,
    };

    let mut decision = if state.rowset_attempts > 0 {
        Decision::CheckRowset
    } else {
        let observation = match session.async_status(&task_id).await {
            Ok(s) => Observation::Status {
                status: s.status,
                error_msg: s.error_msg,
                completed_date: s.completed_date,
            },
            Err(e) if e.is_unrecoverable() => {
                return finish_failed(deps, &run, &e.client_message()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "status check failed");
                Observation::Unavailable
            }
        };
        decide::decide(&state, &observation, &deps.poll, now, fastrand::f64())
    };
    loop {
        match decision {
            Decision::CheckRowset => {
                if state.rowset_attempts == 0 {
                    deps.publish_event(&StatusEvent::new(run_id, EventStatus::FetchingResults, Utc::now()))
                        .await;
                }
                let observation = match check_rowset(&session, &de_key).await {
                    Ok(o) => o,
                    Err(e) => return finish_failed(deps, &run, &e.client_message()).await,
                };
                decision = decide::decide_rowset(&state, observation, &de_key, &deps.poll, Utc::now(), fastrand::f64());
            }
            Decision::Ready { row_count } => {
                let now = Utc::now();
                if store::finish(&deps.db, run_id, Terminal::Ready { row_count }, now).await? {
                    tracing::info!(row_count, "run ready");
                    let mut event = StatusEvent::new(run_id, EventStatus::Ready, now);
                    event.row_count = Some(row_count);
                    deps.publish_event(&event).await;
                    cleanup(deps, &run).await;
                }
                return Ok(Disposition::Ack);
            }
            Decision::Fail { reason, message } => {
                tracing::info!(reason = reason.label(), "run failed");
                return finish_failed(deps, &run, &message).await;
            }
            Decision::Reschedule { delay, state, write } => {
                if write && !store::save_poll_state(&deps.db, run_id, &state).await? {
                    // The run left `running` meanwhile (canceled): the next look sees it.
                    return Ok(Disposition::Retry(std::time::Duration::ZERO));
                }
                return Ok(Disposition::Retry(delay));
            }
        }
    }
}

fn reschedule_transient(deps: &Deps, state: &PollState) -> Disposition {
    Disposition::Retry(deps.poll.backoff.delay_random(state.poll_count.saturating_sub(1)))
}

/// Any 200 means queryable; an unrecoverable error ends the run; anything
/// else (404, 409, 5xx, timeout) means not yet.
async fn check_rowset(session: &Session<'_>, de_key: &str) -> Result<RowsetObservation, MceError> {
    match session.rowset(de_key, 1, 1).await {
        Ok(rowset) => Ok(RowsetObservation::Queryable { count: rowset.count }),
        Err(e) if e.is_unrecoverable() => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "results not queryable yet");
            Ok(RowsetObservation::NotYet)
        }
    }
}

async fn finish_failed(deps: &Deps, run: &Run, message: &str) -> Result<Disposition, sea_orm::DbErr> {
    let message = clip_error(message);
    let now = Utc::now();
    let terminal = Terminal::Failed {
        error_message_encrypted: deps.cipher.encrypt(&message),
    };
    if store::finish(&deps.db, run.id, terminal, now).await? {
        deps.publish_event(&StatusEvent::failed(run.id, &message, now)).await;
        cleanup(deps, run).await;
    }
    Ok(Disposition::Ack)
}

/// Deletes the run's QueryDefinition (never another run's). A failure is
/// logged and left to the sweeper.
async fn cleanup(deps: &Deps, run: &Run) {
    if let Some(qd) = &run.query_definition_id {
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
