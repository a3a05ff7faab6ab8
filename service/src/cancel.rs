//! One delivery of `P.cancel.<runId>` (DESIGN.md "Cancel"): compare-and-set
//! the row to `canceled` (a run already ready or failed stays so), publish
//! `canceled`, delete the run's QueryDefinition. An execute in progress
//! stops before Perform (its own compare-and-set fails); the run's pending
//! poll message acks without calling MCE when it next comes back.

use chrono::Utc;
use serde::Deserialize;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::app::Deps;
use crate::consumer::{Delivery, Disposition};
use crate::jetstream::Subjects;
use crate::model::{EventStatus, StatusEvent};
use crate::store::{self, NewRun, Terminal};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CancelMessage {
    run_id: Uuid,
    tenant_id: Uuid,
    #[serde(default)]
    user_id: Option<Uuid>,
}

pub async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    let msg: CancelMessage = match serde_json::from_slice(&delivery.payload) {
        Ok(m) => m,
        Err(e) => return Disposition::DeadLetter(format!("invalid cancel message: {e}")),
    };
    if Subjects::run_id_of(&delivery.subject) != Some(msg.run_id) {
        return Disposition::DeadLetter("the subject's run id differs from the body's runId".into());
    }
    let span = tracing::info_span!(
        "cancel",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        run_id = %msg.run_id,
        tenant_id = %msg.tenant_id,
        run.id = %msg.run_id,
        tenant.id = %msg.tenant_id,
        messaging.system = "nats",
        messaging.destination.name = %delivery.subject,
        messaging.operation.type = "process",
    );
    crate::telemetry::set_parent(&span, delivery.headers.as_ref());
    crate::telemetry::record_ids(&span);
    match cancel(deps, &msg).instrument(span).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cancel failed transiently");
            Disposition::Retry(std::time::Duration::from_secs(1))
        }
    }
}

async fn cancel(deps: &Deps, msg: &CancelMessage) -> Result<Disposition, sea_orm::DbErr> {
    let now = Utc::now();
    let run = match store::get_run(&deps.db, msg.run_id).await? {
        Some(run) => run,
        None => {
            // Canceled before its execute message was handled: the row is made
            // canceled, so the execute step finds it finished.
            let row = NewRun {
                id: msg.run_id,
                tenant_id: msg.tenant_id,
                user_id: msg.user_id,
                mid: String::new(),
                snippet_name: None,
                sql_text_hash: String::new(),
                sql_text_encrypted: None,
                target_update_type: None,
            };
            store::insert_run_if_absent(&deps.db, row, now).await?;
            store::get_run(&deps.db, msg.run_id)
                .await?
                .expect("the row was just inserted")
        }
    };
    if run.tenant_id != msg.tenant_id || run.user_id != msg.user_id {
        return Ok(Disposition::DeadLetter(
            "cancel for a run of another tenant or user".into(),
        ));
    }
    if store::finish(&deps.db, run.id, Terminal::Canceled, now).await? {
        tracing::info!("run canceled");
        deps.record_outcome("canceled", "cancel_message", run.created_at);
        deps.publish_event(&StatusEvent::new(run.id, EventStatus::Canceled, now))
            .await;
        if let Some(qd) = run.query_definition_id.as_deref().filter(|q| !q.is_empty()) {
            crate::poll::delete_query_definition(deps, run.tenant_id, run.user_id, &run.mid, qd).await;
        }
    }
    Ok(Disposition::Ack)
}
