//! Step 5: Perform, at most once per run. The marker `perform_requested_at`
//! and the assets are recorded first (a cancel meanwhile stops here), then
//! Perform, then the TaskID, then the poll message. A delivery that finds
//! the marker without a TaskID never sends Perform again: it resumes
//! ([`resume_interrupted`]). The two writes around Perform are made sure
//! of ([`write_surely`]): a database blink never leaves them ambiguous.

use chrono::Utc;
use shell_query_core::event::{EventStatus, StatusEvent};
use shell_query_core::naming::temp_de_key;
use shell_query_core::resume::{self, Resume};
use shell_query_core::run::{CancelSource, Ending, Run, RunStatus, StartPhase, Task};
use shell_query_core::schema::UpdateType;
use uuid::Uuid;

use super::destination::Destination;
use super::failure::Failure;
use super::query_definition::QueryDefinition;
use crate::adapters::mce::Session;
use crate::adapters::store::StoreError;
use crate::adapters::store::runs::{self, Started};
use crate::lifecycle::Deps;
use crate::lifecycle::end::{end_run, publish_owed_event};

/// The client-safe text of a run whose start left nothing to resume from
/// (its row does not name its QueryDefinition and destination).
pub const INTERRUPTED: &str =
    "The query was interrupted while starting and its start could not be confirmed. Please run it again.";

/// The client-safe text of an Append run whose Perform MCE did not confirm
/// and which is not running: it may or may not have added its rows, and it
/// is never performed twice.
pub const APPEND_UNCONFIRMED: &str = "Marketing Cloud did not confirm that the query started, and it is not running now. An Append run is never started twice, so its rows may or may not have been added to the target Data Extension. Please check the target before running it again.";

pub(super) async fn perform(
    deps: &Deps,
    session: &Session<'_>,
    run_id: Uuid,
    qd: &QueryDefinition,
    destination: &Destination,
) -> Result<(), Failure> {
    // Canceled while we worked: stop before Perform.
    let de_key = destination.target.customer_key.clone();
    let now = Utc::now();
    let prepared = write_surely(
        deps,
        run_id,
        || runs::record_prepared(&deps.store, run_id, &qd.object_id, &qd.key, &de_key, now),
        |run| {
            matches!(run.start, StartPhase::PerformRequested { .. })
                && run.query_definition_id.as_deref() == Some(qd.object_id.as_str())
        },
    )
    .await?;
    if !prepared {
        tracing::info!("run no longer running before Perform; stopping");
        return stop_for_cancel(deps, run_id, Some(&qd.object_id)).await;
    }
    deps.publish_event(&StatusEvent::new(run_id, EventStatus::ExecutingQuery, Utc::now()))
        .await;
    // From here a redelivery cannot know whether MCE received Perform: it goes
    // through `resume_interrupted`, never through a second Perform.
    let task_id = match session.perform_start(&qd.object_id).await {
        Ok(task_id) => task_id,
        Err(e) if e.surely_not_received() => {
            // MCE did not get it: the next delivery may send Perform.
            runs::clear_perform_requested(&deps.store, run_id).await?;
            return Err(e.into());
        }
        Err(e) if e.is_transient() => {
            // MCE may have acted (5xx, timeout, a cut connection): ask it at
            // once, while a query it started is surely still running.
            tracing::warn!(error = %e, "Perform was not confirmed; asking MCE what happened");
            let Some(run) = runs::get_run(&deps.store, run_id).await? else {
                return Err(e.into());
            };
            return resume_interrupted(deps, session, &run).await;
        }
        Err(e) => return Err(e.into()),
    };
    started(deps, run_id, task_id, &qd.object_id, &qd.key, &de_key).await
}

/// How long a delivery waits for the database to learn how a write it
/// could not confirm ended.
const DB_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// A write whose outcome a lost connection would leave unknown (the marker
/// before Perform, the TaskID after it): on an error the row is read back
/// until the database answers, and the write is tried again unless `landed`
/// shows it committed. Gives up after [`DB_PATIENCE`] with a transient error.
async fn write_surely<F, Fut>(
    deps: &Deps,
    run_id: Uuid,
    mut write: F,
    landed: impl Fn(&Run) -> bool,
) -> Result<bool, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    let deadline = std::time::Instant::now() + DB_PATIENCE;
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let error = match write().await {
            Ok(changed) => return Ok(changed),
            Err(e) => e,
        };
        tracing::warn!(error = %error, "a write could not be confirmed; reading the row back");
        loop {
            if std::time::Instant::now() >= deadline {
                return Err(error.into());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
            match runs::get_run(&deps.store, run_id).await {
                Ok(Some(run)) if landed(&run) => return Ok(true),
                Ok(_) => break,
                Err(_) => continue,
            }
        }
    }
}

/// Records the started query and publishes its poll message.
async fn started(
    deps: &Deps,
    run_id: Uuid,
    task_id: String,
    qd_id: &str,
    qd_key: &str,
    de_key: &str,
) -> Result<(), Failure> {
    let started = Started {
        task_id,
        query_definition_id: qd_id.to_string(),
        query_customer_key: qd_key.to_string(),
        target_de_customer_key: de_key.to_string(),
        poll_started_at: Utc::now(),
    };
    // The TaskID is in hand: it is not lost to a database that blinks.
    let recorded = write_surely(
        deps,
        run_id,
        || runs::record_started(&deps.store, run_id, &started),
        |run| match &run.start {
            StartPhase::Started(Task::Known(id)) => *id == started.task_id,
            StartPhase::Started(Task::Lost) => started.task_id.is_empty(),
            _ => false,
        },
    )
    .await?;
    if !recorded {
        tracing::info!("run left `running` during Perform; its poll will not start");
        return stop_for_cancel(deps, run_id, Some(qd_id)).await;
    }
    tracing::info!(task_id = %started.task_id, "query started");
    crate::adapters::nats::publish_poll(&deps.js, &deps.subjects, run_id, &format!("poll:{run_id}")).await?;
    Ok(())
}

/// An earlier delivery sent (or was about to send) Perform and did not
/// learn its TaskID: MCE failed to answer (5xx, timeout, a cut connection)
/// or the worker died. MCE is asked what happened, as
/// `shell_query_core::resume::decide` asks: a query that started is polled
/// without a TaskID (by isRunning and the rowset), a second Perform is sent
/// only where it is harmless, and a target in `Append` mode fails with a
/// message that says its rows may or may not have been added.
pub(super) async fn resume_interrupted(deps: &Deps, session: &Session<'_>, run: &Run) -> Result<(), Failure> {
    let (Some(qd_id), Some(qd_key), Some(de_key)) = (
        run.query_definition_id.clone(),
        run.query_customer_key.clone(),
        run.target_de_customer_key.clone(),
    ) else {
        return Err(Failure::Permanent(INTERRUPTED.into()));
    };
    let mut facts = resume::Facts::new(
        de_key == temp_de_key(run.id),
        UpdateType::mode_of(run.update_type.as_ref()),
    );
    loop {
        match resume::decide(&facts) {
            Resume::Ask(resume::Question::IsRunning) => {
                facts.running = Some(match session.is_running(&qd_id).await {
                    Ok(r) => r,
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(_) => false,
                });
            }
            Resume::Ask(resume::Question::HasRows) => {
                facts.has_rows = Some(session.rowset(&de_key, 1, 1).await.is_ok_and(|r| r.count > 0));
            }
            Resume::Poll => {
                tracing::warn!("resuming a run whose TaskID was lost: polling by isRunning and rowset");
                return started(deps, run.id, String::new(), &qd_id, &qd_key, &de_key).await;
            }
            Resume::Refuse => return Err(Failure::Permanent(APPEND_UNCONFIRMED.into())),
            Resume::PerformAgain => break,
        }
    }
    // Canceled since this delivery read the row: no second Perform.
    let still_running = runs::get_run(&deps.store, run.id)
        .await?
        .is_some_and(|r| r.status == RunStatus::Running);
    if !still_running {
        return stop_for_cancel(deps, run.id, None).await;
    }
    tracing::warn!(
        "Perform was not confirmed and the query is not running; a second Perform is harmless here: sending it"
    );
    let task_id = session.perform_start(&qd_id).await?;
    started(deps, run.id, task_id, &qd_id, &qd_key, &de_key).await
}

/// The run left `running` while this delivery worked on it (a cancel):
/// stop, never Perform. A cancel the API made is handled here (its event,
/// the QueryDefinition's deletion); after any other ending, the
/// QueryDefinition this delivery made and could not record is deleted.
pub(super) async fn stop_for_cancel(deps: &Deps, run_id: Uuid, made_here: Option<&str>) -> Result<(), Failure> {
    let Some(run) = runs::get_run(&deps.store, run_id).await? else {
        return Ok(());
    };
    if run.cancel_pending() {
        let qd = made_here.or(run.query_definition());
        end_run(deps, &run, Ending::Canceled(CancelSource::Api), qd, Utc::now()).await?;
        return Ok(());
    }
    if run.owes_terminal_event() {
        publish_owed_event(deps, &run, Utc::now()).await?;
    }
    if let Some(qd) = made_here.filter(|qd| Some(*qd) != run.query_definition()) {
        deps.delete_query_definition(&run.account, qd).await;
    }
    Ok(())
}
