//! One delivery of `P.execute.<runId>` (ARCHITECTURE.md, "How a run
//! moves: Execute"), in its steps:
//!
//! 1. [`prepare`]: the row exists before anything can fail, the SQL is
//!    read, and an earlier delivery's progress is honoured;
//! 2. [`analyse`]: MCE validates the SQL, unknown tables are looked up, the
//!    output columns are typed;
//! 3. [`destination`]: a temp DE (run-to-temp) or the checked target DE;
//! 4. [`query_definition`]: the run's QueryDefinition in the results folder
//!    ([`folder`]);
//! 5. [`perform`]: the marker, Perform, the TaskID, the poll message.
//!
//! Failures are [`Failure`]s: transient ones come back with a backoff until
//! the last delivery; permanent ones end the run through `lifecycle::end`.

mod analyse;
mod destination;
mod failure;
mod folder;
mod perform;
mod prepare;
mod query_definition;

use chrono::Utc;
use shell_query_core::backoff::Backoff;
use shell_query_core::event::{EventStatus, StatusEvent, clip_error};
use shell_query_core::message::{ExecuteRequest, MAX_EXECUTE_BYTES, Subjects};
use shell_query_core::run::{Ending, FailCause};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::adapters::nats::EXECUTE_MAX_DELIVER;
use crate::adapters::store::StoreError;
use crate::adapters::store::runs::{self, NewRun};
use crate::handlers::delivery::{Consumed, Delivery, Disposition, delivery_span, note_delivery, note_ignored_fields};
use crate::lifecycle::Deps;
use crate::lifecycle::end::{announce_ending, end_run};

use failure::Failure;
pub use perform::{APPEND_UNCONFIRMED, INTERRUPTED};

/// The execute handler and its settings.
pub(crate) struct Execute {
    /// Delays between deliveries of an execute message that failed transiently.
    pub backoff: Backoff,
}

impl Default for Execute {
    fn default() -> Self {
        Self {
            backoff: Backoff {
                initial: std::time::Duration::from_secs(5),
                max: std::time::Duration::from_secs(60),
                multiplier: 2.0,
                jitter_range: 0.4,
            },
        }
    }
}

impl Execute {
    pub(crate) async fn handle(&self, deps: &Deps, delivery: &Delivery) -> Disposition {
        if let Err(later) = note_delivery(deps, delivery).await {
            return later;
        }
        if delivery.payload.len() > MAX_EXECUTE_BYTES {
            let reason = format!(
                "the execute message is {} KB; the most accepted is {} KB",
                delivery.payload.len() / 1024,
                MAX_EXECUTE_BYTES / 1024
            );
            return malformed(deps, delivery, reason).await;
        }
        let req = match ExecuteRequest::decode(&delivery.subject, &delivery.payload) {
            Ok(decoded) => {
                note_ignored_fields("execute", &decoded.ignored_fields);
                decoded.message
            }
            Err(reason) => return malformed(deps, delivery, reason).await,
        };
        let span = delivery_span(Consumed::Execute, delivery, req.run_id, Some(req.tenant_id));
        self.handle_decoded(deps, delivery, req).instrument(span).await
    }

    async fn handle_decoded(&self, deps: &Deps, delivery: &Delivery, req: ExecuteRequest) -> Disposition {
        let mut created_qd: Option<String> = None;
        match execute(deps, &req, &mut created_qd).await {
            Ok(()) => Disposition::Ack,
            Err(Failure::Transient(detail)) if delivery.delivered < EXECUTE_MAX_DELIVER => {
                tracing::warn!(error = %detail, "execute failed transiently; will retry");
                let n = u32::try_from(delivery.delivered - 1).unwrap_or(0);
                Disposition::Retry(self.backoff.delay(n, fastrand::f64()))
            }
            Err(Failure::Transient(detail)) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                tracing::error!(error = %detail, "execute failed on its last delivery");
                let reason = "Marketing Cloud is temporarily unavailable. Please try again.";
                fail_run(deps, req.run_id, reason, created_qd.as_deref()).await
            }
            Err(Failure::Permanent(reason)) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                tracing::info!("run failed permanently");
                fail_run(deps, req.run_id, &reason, created_qd.as_deref()).await
            }
            Err(Failure::Refused(reason)) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                tracing::warn!(reason, "execute message refused; its run is left as it is");
                Disposition::DeadLetter(reason)
            }
        }
    }
}

/// The longest text of a malformed message kept in its failed row.
const MAX_STORED_CHARS: usize = 1024;

/// A message that does not decode: to the DLQ, and when its subject names a
/// run that has no row yet, that run is recorded `failed` with the reason.
/// A broken message never finishes a run it did not create: a live run's
/// own request cannot be taken over by garbage on its subject.
async fn malformed(deps: &Deps, delivery: &Delivery, reason: String) -> Disposition {
    // An oversized body is not read at all.
    let body: serde_json::Value = match delivery.payload.len() <= MAX_EXECUTE_BYTES {
        true => serde_json::from_slice(&delivery.payload).unwrap_or_default(),
        false => serde_json::Value::Null,
    };
    // Only what the database can store: a field the decoder refused (a
    // NUL, an over-long value) is left out of the failed row.
    let field = |name: &str| {
        body.get(name)
            .and_then(|v| v.as_str())
            .filter(|v| shell_query_core::message::storable(v, MAX_STORED_CHARS))
            .map(str::to_string)
    };
    let uuid = |name: &str| field(name).and_then(|v| Uuid::parse_str(&v).ok());
    if let Some(run_id) = Subjects::run_id_of(&delivery.subject) {
        let now = Utc::now();
        let row = NewRun {
            id: run_id,
            tenant_id: uuid("tenantId").unwrap_or_default(),
            user_id: uuid("userId"),
            mid: field("mid").unwrap_or_default(),
            snippet_name: field("snippetName"),
            sql_text_hash: field("sqlText")
                .map(|s| crate::adapters::crypto::sha256_hex(&s))
                .unwrap_or_default(),
            sql_text_encrypted: None,
            target_de_customer_key: None,
            target_update_type: None,
        };
        let message = clip_error(&format!("The run request is invalid: {reason}"));
        let ending = Ending::Failed {
            message: message.clone(),
            cause: FailCause::Malformed,
        };
        let recorded = async {
            if !runs::insert_failed_if_absent(&deps.store, row, deps.cipher.encrypt(&message), now).await? {
                tracing::info!(run_id = %run_id, "a malformed message for an existing run: the run is left as it is");
                return Ok(());
            }
            let run = runs::get_run(&deps.store, run_id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("the run row vanished".into()))?;
            announce_ending(deps, &run, ending, None, now).await
        }
        .await;
        match recorded {
            Ok(()) => {}
            // Refused every time: the DLQ copy below is the record.
            Err(e) if e.is_refused_data() => {
                tracing::warn!(run_id = %run_id, error = %e, "the database refused the malformed run's row");
            }
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "could not record the malformed run; will retry");
                return Disposition::Retry(std::time::Duration::from_secs(5));
            }
        }
    }
    Disposition::DeadLetter(reason)
}

/// Ends the run `failed` and deletes the QueryDefinition this delivery
/// created. A database error here leaves the message for another delivery.
/// The message is acknowledged only once its run's row has ended: a run
/// with no row (its insert was refused) goes to the DLQ with the reason,
/// so no run request ever vanishes.
async fn fail_run(deps: &Deps, run_id: Uuid, reason: &str, created_qd: Option<&str>) -> Disposition {
    let ending = Ending::Failed {
        message: reason.to_string(),
        cause: FailCause::Execute,
    };
    let ended = async {
        let Some(run) = runs::get_run(&deps.store, run_id).await? else {
            return Ok(None);
        };
        let ended = end_run(deps, &run, ending, created_qd, Utc::now()).await?;
        // Another path ended the run first: the QueryDefinition this
        // delivery made, which the row may not name, is still ours to delete.
        if !ended && let Some(qd) = created_qd.filter(|qd| Some(*qd) != run.query_definition()) {
            deps.delete_query_definition(&run.account, qd).await;
        }
        Ok::<Option<bool>, StoreError>(Some(ended))
    }
    .await;
    match ended {
        Ok(Some(_)) => Disposition::Ack,
        Ok(None) => {
            tracing::error!(%run_id, "the run has no row to end: its request goes to the DLQ");
            Disposition::DeadLetter(format!("the run could not be recorded: {reason}"))
        }
        Err(e) => {
            tracing::error!(error = %e, "could not mark the run failed");
            Disposition::Retry(std::time::Duration::from_secs(5))
        }
    }
}

/// The steps, in order; `created_qd` is the QueryDefinition this delivery
/// made, for the clean-up of a failure.
async fn execute(deps: &Deps, req: &ExecuteRequest, created_qd: &mut Option<String>) -> Result<(), Failure> {
    let (sql, session) = match prepare::prepare(deps, req).await? {
        prepare::Prepared::Fresh { sql, session } => (sql, session),
        prepare::Prepared::Handled => return Ok(()),
        prepare::Prepared::Ended => return perform::stop_for_cancel(deps, req.run_id, None).await,
        prepare::Prepared::Interrupted { run, session } => {
            *created_qd = run.query_definition_id.clone();
            return perform::resume_interrupted(deps, &session, &run).await;
        }
    };
    deps.publish_event(&StatusEvent::new(req.run_id, EventStatus::ValidatingQuery, Utc::now()))
        .await;
    let analysis = analyse::analyse(&session, req, &sql).await?;
    let mut folder = folder::Folder::Unknown;
    let destination = destination::choose(deps, &session, req, &analysis, &mut folder).await?;
    let qd = query_definition::create(deps, &session, req, &analysis, &destination, &mut folder).await?;
    *created_qd = Some(qd.object_id.clone());
    perform::perform(deps, &session, req.run_id, &qd, &destination).await
}
