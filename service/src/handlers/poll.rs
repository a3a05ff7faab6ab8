//! One delivery of `P.poll.<runId>` (ARCHITECTURE.md, "How a run moves:
//! Poll"): load the row, ask MCE what the pure [`decide`] asks for, carry
//! out its outcome. The decision lives in `shell_query_core::poll`; this
//! module does the I/O.

use chrono::Utc;
use shell_query_core::event::{EventStatus, StatusEvent};
use shell_query_core::message::{PollMessage, Subjects, decode_for_run};
use shell_query_core::naming;
use shell_query_core::poll::PollConfig;
use shell_query_core::poll::decide::{
    Decision, IsRunningObservation, Outcome, ProbeObservation, Question, ReadyVia, RowsetObservation,
    StatusObservation, Tick, decide, deferred_delay,
};
use shell_query_core::poll::schedule::Schedule;
use shell_query_core::run::{CancelSource, Ending, FailCause, Run, StartPhase, Task};
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::adapters::mce::{MceError, Session};
use crate::adapters::store::{StoreError, runs};
use crate::handlers::delivery::{Consumed, Delivery, Disposition, delivery_span};
use crate::lifecycle::Deps;
use crate::lifecycle::end::{end_run, publish_owed_event};

/// The poll handler and its settings.
pub(crate) struct Poll {
    pub config: PollConfig,
    /// For each run whose last tick ran here: that tick's delivery count
    /// and when the next delivery is due (the delay its negative
    /// acknowledgement asked for). The next delivery's lateness is known
    /// only when it is the very next one (the tick between did not run on
    /// another replica).
    due: std::sync::Mutex<std::collections::HashMap<Uuid, (i64, Instant)>>,
}

/// At this many remembered due times, those long overdue (their run ended,
/// or its deliveries went to another replica) are forgotten; if that frees
/// too little, all are (the next tick of each run is then not measured).
const DUE_PRUNE_AT: usize = 200_000;
const DUE_FORGET_AFTER: Duration = Duration::from_secs(600);

impl Poll {
    pub fn new(config: PollConfig) -> Self {
        Self {
            config,
            due: Default::default(),
        }
    }

    pub(crate) async fn handle(&self, deps: &Deps, delivery: &Delivery) -> Disposition {
        let started = Instant::now();
        let run_id = Subjects::run_id_of(&delivery.subject);
        let previous = run_id.and_then(|id| self.due.lock().expect("due lock").remove(&id));
        if let Some((count, due)) = previous
            && count + 1 == delivery.delivered
        {
            deps.metrics.observe(
                crate::adapters::metrics::POLL_TICK_LATENESS,
                &[],
                started.saturating_duration_since(due),
            );
        }
        let disposition = handle(deps, &self.config, delivery).await;
        let finished = Instant::now();
        deps.metrics
            .observe(crate::adapters::metrics::POLL_TICK_DURATION, &[], finished - started);
        if let (Disposition::Retry(delay), Some(id)) = (&disposition, run_id) {
            let mut due = self.due.lock().expect("due lock");
            if due.len() >= DUE_PRUNE_AT {
                due.retain(|_, (_, at)| finished.saturating_duration_since(*at) < DUE_FORGET_AFTER);
                if due.len() >= DUE_PRUNE_AT / 2 {
                    due.clear();
                }
            }
            due.insert(id, (delivery.delivered, finished + *delay));
        }
        disposition
    }
}

async fn handle(deps: &Deps, config: &PollConfig, delivery: &Delivery) -> Disposition {
    let msg: PollMessage =
        match decode_for_run("poll", &delivery.subject, &delivery.payload, |m: &PollMessage| m.run_id) {
            Ok(m) => m,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
    deps.metrics.inc(crate::adapters::metrics::POLL_TICKS, &[]);
    // Each tick continues the run's trace (the poll message's).
    let span = delivery_span(Consumed::Poll, delivery, msg.run_id, None);
    match tick(deps, config, msg.run_id, delivery).instrument(span).await {
        Ok(d) => d,
        Err(e) => {
            // The database could not be read or written: come back later.
            tracing::warn!(error = %e, "poll tick failed transiently");
            let n = u32::try_from(delivery.delivered - 1).unwrap_or(0);
            Disposition::Retry(config.backoff.delay(n, fastrand::f64()))
        }
    }
}

/// An error no retry fixes ends the run with its client-safe text; any
/// other error is "no answer".
fn refused(e: &MceError) -> Option<String> {
    e.is_unrecoverable().then(|| e.client_message())
}

/// One tick, in its steps: [`load`] the row (an ended or never-started run
/// needs no MCE), [`observe_from`] its persisted state, take the tenant's
/// place ([`admit`]), open an MCE session ([`open_session`]), then [`ask`]
/// MCE what [`decide`] asks until it decides, and [`conclude`].
async fn tick(deps: &Deps, config: &PollConfig, run_id: Uuid, delivery: &Delivery) -> Result<Disposition, StoreError> {
    let (run, task) = match load(deps, config, run_id, delivery).await? {
        Loaded::Live(run, task) => (*run, task),
        Loaded::Settled(disposition) => return Ok(disposition),
    };
    let now = Utc::now();
    let mut tick = observe_from(deps, config, &run, &task, delivery, now).await?;
    let canceled = tick.canceled;
    // A canceled run's tick asks MCE nothing and is never held back.
    let tenant = run.account.tenant_id();
    let admission = deps.mce.admission();
    let _place = match (canceled, admission.tick(tenant)) {
        (true, place) => place,
        (false, Some(place)) => Some(place),
        (false, None) => {
            // Past the tenant's share of ticks in flight (the others of the
            // tenant are waiting on MCE already): this check is skipped and
            // the run comes back after its usual delay, stretched like
            // every other of the tenant's runs.
            deps.metrics.inc(crate::adapters::metrics::POLL_TICKS_DEFERRED, &[]);
            let delay = deferred_delay(&tick, config, now, fastrand::f64());
            return Ok(Disposition::Retry(admission.stretched(tenant, delay)));
        }
    };
    let session = match open_session(deps, config, &run, &mut tick).await {
        Ok(session) => session,
        Err(disposition) => return Ok(disposition),
    };
    let mut asked = Asked {
        task_id: task.id().unwrap_or_default().to_string(),
        object_id: run.query_definition().map(str::to_string),
    };
    loop {
        let question = match decide(&tick, config, Utc::now(), fastrand::f64()) {
            Decision::Ask(question) => question,
            Decision::Done(outcome) => return conclude(deps, &run, asked.object_id.as_deref(), outcome).await,
        };
        let Some(session) = session.as_ref() else {
            // `decide` ends a canceled or refused tick before asking; should
            // it ever ask anyway, the tick comes back later, the worker stays up.
            tracing::error!(?question, "a question for MCE without a session; looking again later");
            return Ok(Disposition::Retry(
                config.backoff.delay(tick.state.poll_count, fastrand::f64()),
            ));
        };
        ask(deps, &run, session, question, &mut tick, &mut asked).await?;
    }
}

/// What [`load`] found.
enum Loaded {
    /// A started run still to check, with its task.
    Live(Box<Run>, Task),
    /// Nothing to ask MCE: the delivery's fate is known.
    Settled(Disposition),
}

/// The run's row, unless the run needs no check: unknown or never started
/// (dead-lettered), or ended (acked once any owed event is out).
async fn load(deps: &Deps, config: &PollConfig, run_id: Uuid, delivery: &Delivery) -> Result<Loaded, StoreError> {
    let Some(run) = runs::get_run_for_poll(&deps.store, run_id).await? else {
        return Ok(Loaded::Settled(Disposition::DeadLetter(
            "poll message for an unknown run".into(),
        )));
    };
    if run.status.is_terminal() && !run.cancel_pending() {
        // Ended; its event may still be owed (a crash after the ending).
        if run.owes_terminal_event() && !publish_owed_event(deps, &run, Utc::now()).await? {
            let n = u32::try_from(delivery.delivered - 1).unwrap_or(0);
            return Ok(Loaded::Settled(Disposition::Retry(
                config.backoff.delay(n, fastrand::f64()),
            )));
        }
        return Ok(Loaded::Settled(Disposition::Ack));
    }
    let (StartPhase::Started(task), Some(_)) = (&run.start, &run.target_de_customer_key) else {
        return Ok(Loaded::Settled(Disposition::DeadLetter(
            "poll message for a run that was never started".into(),
        )));
    };
    let task = task.clone();
    Ok(Loaded::Live(Box::new(run), task))
}

/// The tick's starting point from the run's persisted poll state: its
/// destination, whether it is canceled, whether its task is known, and
/// (for the adaptive schedule) its query's recent durations.
async fn observe_from(
    deps: &Deps,
    config: &PollConfig,
    run: &Run,
    task: &Task,
    delivery: &Delivery,
    now: chrono::DateTime<Utc>,
) -> Result<Tick, StoreError> {
    tracing::Span::current().record("tenant.id", tracing::field::display(run.account.tenant));
    let de_key = run.target_de_customer_key.as_deref().unwrap_or_default();
    let state = run.poll_state(u32::try_from(delivery.delivered).unwrap_or(u32::MAX), now);
    let temp_de = de_key == naming::temp_de_key(run.id);
    let mut tick = Tick::new(state, de_key, temp_de, run.query_definition().is_some());
    tick.canceled = run.cancel_pending();
    // An interrupted start may have lost the TaskID (see execute's resume).
    tick.task_known = matches!(task, Task::Known(_));
    if config.schedule == Schedule::Adaptive && !tick.canceled {
        tick.history = deps
            .histories
            .get(&deps.store, run.account.tenant_id(), &run.sql_text_hash)
            .await?;
    }
    Ok(tick)
}

/// The run's MCE session; none for a canceled run (it asks nothing) or
/// when MCE refuses for good (recorded in the tick, which then fails the
/// run). A session that is briefly unavailable sends the run back later.
async fn open_session<'a>(
    deps: &'a Deps,
    config: &PollConfig,
    run: &'a Run,
    tick: &mut Tick,
) -> Result<Option<Session<'a>>, Disposition> {
    if tick.canceled {
        return Ok(None);
    }
    match deps.mce.session(&run.account).await {
        Ok(session) => Ok(Some(session)),
        Err(e) => match refused(&e) {
            Some(message) => {
                tick.refused = Some(message);
                Ok(None)
            }
            None => {
                tracing::warn!(error = %e, "no MCE session this tick");
                Err(Disposition::Retry(
                    config
                        .backoff
                        .delay(tick.state.poll_count.saturating_sub(1), fastrand::f64()),
                ))
            }
        },
    }
}

/// What the tick knows of the run's MCE handles as it asks.
struct Asked {
    task_id: String,
    /// The QueryDefinition's ObjectID, once known (it may be recovered).
    object_id: Option<String>,
}

/// Asks MCE one question and records the answer in the tick.
async fn ask(
    deps: &Deps,
    run: &Run,
    session: &Session<'_>,
    question: Question,
    tick: &mut Tick,
    asked: &mut Asked,
) -> Result<(), StoreError> {
    let de_key = run.target_de_customer_key.as_deref().unwrap_or_default();
    match question {
        Question::CheckStatus => {
            let answer = session.async_status_batched(&asked.task_id).await;
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
        Question::ProbeRows => {
            tick.probe = Some(match session.rowset(de_key, 1, 1).await {
                Ok(r) if r.count > 0 || !r.items.is_empty() => ProbeObservation::Rows { count: r.count },
                Ok(_) => ProbeObservation::NoSignal,
                Err(e) => {
                    tick.refused = refused(&e);
                    ProbeObservation::NoSignal
                }
            });
        }
        Question::CheckIsRunning => check_is_running(deps, session, tick, asked.object_id.as_deref()).await,
        Question::RecoverObjectId => {
            tick.recovery_tried = true;
            let key = run
                .query_customer_key
                .clone()
                .unwrap_or_else(|| naming::query_key(run.id));
            match session.find_query_definition(&key).await {
                Ok(Some(found)) => {
                    tracing::info!("QueryDefinition ObjectID recovered by CustomerKey");
                    runs::set_query_definition_id(&deps.store, run.id, &found).await?;
                    asked.object_id = Some(found);
                }
                Ok(None) => tracing::warn!("no QueryDefinition with the run's CustomerKey"),
                Err(e) => {
                    tick.refused = refused(&e);
                    tracing::warn!(error = %e, "QueryDefinition lookup failed");
                }
            }
        }
        Question::CheckRowset { first } => {
            if first {
                deps.publish_event(&StatusEvent::new(run.id, EventStatus::FetchingResults, Utc::now()))
                    .await;
            }
            tick.rowset = Some(match session.rowset(de_key, 1, 1).await {
                Ok(r) => RowsetObservation::Queryable { count: r.count },
                Err(e) => {
                    tick.refused = refused(&e);
                    tracing::debug!(error = %e, "results not queryable yet");
                    RowsetObservation::NotYet
                }
            });
            if tick.rowset == Some(RowsetObservation::NotYet) {
                deps.metrics
                    .inc(crate::adapters::metrics::ROWSET_READINESS_RETRIES, &[]);
            }
        }
    }
    Ok(())
}

/// REST isRunning on the QueryDefinition, counted by its answer.
async fn check_is_running(deps: &Deps, session: &Session<'_>, tick: &mut Tick, object_id: Option<&str>) {
    tick.is_running = Some(match session.is_running(object_id.unwrap_or_default()).await {
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
        .inc(crate::adapters::metrics::IS_RUNNING_CHECKS, &[("answer", answer)]);
    if answer == "not_running" {
        deps.metrics
            .inc(crate::adapters::metrics::NOT_RUNNING_CONFIRMATIONS, &[]);
    }
}

/// Carries out a tick's outcome.
async fn conclude(
    deps: &Deps,
    run: &Run,
    object_id: Option<&str>,
    outcome: Outcome,
) -> Result<Disposition, StoreError> {
    let label = match &outcome {
        Outcome::Ready { .. } => "ready",
        Outcome::Fail { .. } => {
            tracing::Span::current().record("otel.status_code", "ERROR");
            "fail"
        }
        Outcome::Canceled => "canceled",
        Outcome::Reschedule { .. } => "reschedule",
    };
    tracing::Span::current().record("poll.decision", label);
    let ending = match outcome {
        Outcome::Ready { row_count, via } => {
            if via == ReadyVia::Probe {
                // The other paths announce it when they first ask the rowset.
                deps.publish_event(&StatusEvent::new(run.id, EventStatus::FetchingResults, Utc::now()))
                    .await;
            }
            Ending::Ready { row_count, via }
        }
        Outcome::Fail { reason, message } => Ending::Failed {
            message,
            cause: FailCause::Poll(reason),
        },
        Outcome::Canceled => Ending::Canceled(CancelSource::Api),
        Outcome::Reschedule { delay, state, write } => {
            if write && !runs::save_poll_state(&deps.store, run.id, &state).await? {
                // The run left `running` meanwhile (canceled): look again at once.
                return Ok(Disposition::Retry(std::time::Duration::ZERO));
            }
            // While the tenant asks for more checks than its budget serves,
            // all its running runs wait a little longer (core/admission.rs);
            // a readiness check or a retry after no answer keeps its backoff.
            let running = state.rowset_attempts == 0 && state.transient_errors == 0;
            return Ok(Disposition::Retry(if running {
                deps.mce.admission().stretched(run.account.tenant_id(), delay)
            } else {
                delay
            }));
        }
    };
    end_run(deps, run, ending, object_id, Utc::now()).await?;
    Ok(Disposition::Ack)
}
