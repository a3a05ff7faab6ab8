//! One delivery of `P.cancel.<runId>` (ARCHITECTURE.md, "How a run moves:
//! Cancel"): compare-and-set the row to `canceled` (a run already ready or
//! failed stays so), publish `canceled`, delete the run's QueryDefinition.
//! An execute in progress stops before Perform (its own compare-and-set
//! fails); the run's pending poll message acks without calling MCE when it
//! next comes back.

use chrono::Utc;
use shell_query_core::message::CancelMessage;
use shell_query_core::run::{CancelSource, Ending};
use tracing::Instrument as _;

use crate::adapters::store::StoreError;
use crate::adapters::store::runs::{self, NewRun};
use crate::handlers::delivery::{Consumed, Delivery, Disposition, delivery_span, note_delivery, note_ignored_fields};
use crate::lifecycle::Deps;
use crate::lifecycle::end::end_run;

pub(crate) async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    if let Err(later) = note_delivery(deps, delivery).await {
        return later;
    }
    let msg = match CancelMessage::decode(&delivery.subject, &delivery.payload) {
        Ok(decoded) => {
            note_ignored_fields("cancel", &decoded.ignored_fields);
            decoded.message
        }
        Err(reason) => return Disposition::DeadLetter(reason),
    };
    let span = delivery_span(Consumed::Cancel, delivery, msg.run_id, Some(msg.tenant_id));
    match cancel(deps, &msg).instrument(span).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cancel failed transiently");
            Disposition::Retry(std::time::Duration::from_secs(1))
        }
    }
}

async fn cancel(deps: &Deps, msg: &CancelMessage) -> Result<Disposition, StoreError> {
    let now = Utc::now();
    let run = match runs::get_run(&deps.store, msg.run_id).await? {
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
                target_de_customer_key: None,
                target_update_type: None,
            };
            runs::insert_run_if_absent(&deps.store, row, now).await?;
            match runs::get_run(&deps.store, msg.run_id).await? {
                Some(run) => run,
                // Deleted in between (an operator): nothing left to cancel.
                None => return Ok(Disposition::Ack),
            }
        }
    };
    if !run.account.owned_by(msg.tenant_id, msg.user_id) {
        return Ok(Disposition::DeadLetter(
            "cancel for a run of another tenant or user".into(),
        ));
    }
    // The API may have set the row to `canceled` itself already: then this
    // message is how its cancel gets handled.
    let ending = Ending::Canceled(match run.cancel_pending() {
        true => CancelSource::Api,
        false => CancelSource::CancelMessage,
    });
    end_run(deps, &run, ending, run.query_definition(), now).await?;
    Ok(Disposition::Ack)
}
