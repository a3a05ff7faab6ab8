//! Step 1: the row exists before anything can fail (so every failure is
//! recorded), the SQL is read and checked, and what an earlier delivery
//! did is honoured: a finished run is left alone, a started one only gets
//! its poll message again, an interrupted start is resumed, never
//! performed twice.

use chrono::Utc;
use shell_query_core::account::Account;
use shell_query_core::event::{EventStatus, StatusEvent};
use shell_query_core::message::{ExecuteRequest, MAX_SQL_BYTES, SqlSource};
use shell_query_core::run::{Run, RunStatus, StartPhase};

use super::failure::Failure;
use crate::adapters::mce::Session;
use crate::adapters::store::runs::{self, NewRun};
use crate::lifecycle::Deps;

/// Where the run stands after this step.
pub(super) enum Prepared<'a> {
    /// Go on with the next step: the plain SQL, and a session for the run.
    Fresh { sql: String, session: Session<'a> },
    /// Nothing more to do for this delivery.
    Handled,
    /// The run left the live states before it started (canceled): its
    /// ending is finished here.
    Ended,
    /// An earlier delivery sent (or was about to send) Perform.
    Interrupted { run: Box<Run>, session: Session<'a> },
}

pub(super) async fn prepare<'a>(deps: &'a Deps, req: &ExecuteRequest) -> Result<Prepared<'a>, Failure> {
    let sql = match &req.sql {
        SqlSource::Plain(plain) => Ok(plain.clone()),
        SqlSource::Encrypted(enc) => deps.cipher.decrypt(enc).map_err(|_| {
            Failure::Permanent("The query text could not be decrypted. Please submit the query again.".into())
        }),
    };
    let now = Utc::now();
    runs::insert_run_if_absent(
        &deps.store,
        NewRun {
            id: req.run_id,
            tenant_id: req.tenant_id,
            user_id: req.user_id,
            mid: req.mid.as_str().to_string(),
            snippet_name: req.snippet_name.clone(),
            sql_text_hash: sql
                .as_deref()
                .map(crate::adapters::crypto::sha256_hex)
                .unwrap_or_default(),
            sql_text_encrypted: match (&req.sql, &sql) {
                (SqlSource::Encrypted(enc), _) => Some(enc.clone()),
                (SqlSource::Plain(_), Ok(plain)) => Some(deps.cipher.encrypt(plain)),
                (SqlSource::Plain(_), Err(_)) => None,
            },
            target_de_customer_key: req.target.as_ref().map(|t| t.customer_key.clone()),
            target_update_type: req.target.as_ref().and_then(|t| t.update_type.clone()),
        },
        now,
    )
    .await?;
    let run = runs::get_run(&deps.store, req.run_id)
        .await?
        .ok_or_else(|| Failure::Transient("the run row vanished".into()))?;
    // The API inserts the row first: a message naming another tenant, user
    // or business unit is not this run's, and nothing is done under its
    // credentials.
    if run.account != Account::new(req.tenant_id, req.user_id, req.mid.clone()) {
        return Err(Failure::Refused(
            "the message's tenant, user or business unit differs from its run's row".into(),
        ));
    }
    let sql = sql?;
    if sql.trim().is_empty() {
        return Err(Failure::Permanent("The query text is empty.".into()));
    }
    if sql.len() > MAX_SQL_BYTES {
        return Err(Failure::Permanent(format!(
            "The query text is {} KB long; the most accepted is {} KB.",
            sql.len() / 1024,
            MAX_SQL_BYTES / 1024
        )));
    }
    if run.status.is_terminal() {
        tracing::info!(status = run.status.as_str(), "run already finished; nothing to do");
        return Ok(if run.cancel_pending() || run.owes_terminal_event() {
            Prepared::Ended
        } else {
            Prepared::Handled
        });
    }
    if let StartPhase::Started(_) = run.start {
        // Started by an earlier delivery: only make sure its poll exists.
        let msg_id = format!("poll:{}", req.run_id);
        crate::adapters::nats::publish_poll(&deps.js, &deps.subjects, req.run_id, &msg_id).await?;
        return Ok(Prepared::Handled);
    }
    let session = deps.mce.session(&run.account).await?;
    if let StartPhase::PerformRequested { .. } = run.start {
        return Ok(Prepared::Interrupted {
            run: Box::new(run),
            session,
        });
    }
    if run.status == RunStatus::Queued {
        if !runs::mark_running(&deps.store, req.run_id, now).await? {
            // Canceled (or ended) while queued: never started.
            return Ok(Prepared::Ended);
        }
        deps.publish_event(&StatusEvent::new(req.run_id, EventStatus::Running, now))
            .await;
    }
    Ok(Prepared::Fresh { sql, session })
}
