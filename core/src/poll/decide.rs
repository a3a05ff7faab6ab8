//! The poll decision (ARCHITECTURE.md, "How a run moves: Poll"): from the
//! run's persisted poll state and what MCE has said so far this tick, to
//! the next thing to ask or the tick's outcome. No I/O; time and the
//! jitter draw are parameters.
//!
//! A tick calls [`decide`] repeatedly: each answer is either
//! [`Decision::Ask`] with a [`Question`] for MCE, whose answer the caller
//! records in the [`Tick`] before asking again, or [`Decision::Done`] with
//! the tick's [`Outcome`] (`Ready`, `Fail`, `Canceled`, `Reschedule`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PollConfig;

/// Everything earlier ticks left for this one. Lives in the run's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollState {
    /// This tick's number, 1-based.
    pub poll_count: u32,
    /// When polling began (after Perform).
    pub started_at: DateTime<Utc>,
    /// Not-running answers of the isRunning gate, and when the first came.
    pub not_running_count: u32,
    pub not_running_first_at: Option<DateTime<Utc>>,
    /// Rowset readiness checks that found the DE not yet queryable; non-zero
    /// means completion was seen and the rowset is the one check per tick.
    pub rowset_attempts: u32,
    pub rowset_first_at: Option<DateTime<Utc>>,
    pub probe_attempts: u32,
    /// When the last look past the status was made: a row probe or an
    /// isRunning check (see [`in_doubt`]).
    pub last_look_at: Option<DateTime<Utc>>,
    /// Consecutive ticks that could not read the status.
    pub transient_errors: u32,
    /// The last status seen, normalised.
    pub last_status: Option<String>,
}

impl PollState {
    pub fn new(poll_count: u32, started_at: DateTime<Utc>) -> Self {
        Self {
            poll_count,
            started_at,
            not_running_count: 0,
            not_running_first_at: None,
            rowset_attempts: 0,
            rowset_first_at: None,
            probe_attempts: 0,
            last_look_at: None,
            transient_errors: 0,
            last_status: None,
        }
    }
}

/// What the AsyncActivityStatus retrieve said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusObservation {
    Read {
        status: Option<String>,
        error_msg: Option<String>,
        completed_date: Option<String>,
    },
    /// 5xx, 429, timeout or an unreadable answer, after the client's retries.
    Unavailable,
}

/// What a one-row rowset probe said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeObservation {
    Rows {
        count: i64,
    },
    /// No rows, or no answer: no signal.
    NoSignal,
}

/// What REST isRunning said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsRunningObservation {
    Running,
    NotRunning,
    /// HTTP 400 (or another plain 4xx): the id is not one MCE accepts.
    BadId,
    /// 5xx, 429, timeout: no signal.
    Unavailable,
}

/// What the rowset readiness check (page size 1) said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsetObservation {
    Queryable {
        count: i64,
    },
    /// 404, 409, other 4xx, 5xx or a timeout: not yet.
    NotYet,
}

/// What one tick knows: the persisted state, facts about the run, and the
/// answers gathered so far this tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    pub state: PollState,
    /// The results DE's CustomerKey (for messages).
    pub de_key: String,
    /// The row says `canceled` (set by the API).
    pub canceled: bool,
    /// The results DE is a temp DE created by this run (the probe's precondition).
    pub temp_de: bool,
    /// The QueryDefinition ObjectID is known.
    pub has_object_id: bool,
    /// The TaskID is known. When an interrupted start lost it, no status can
    /// be read: the isRunning gate is open from the first tick.
    pub task_known: bool,
    pub status: Option<StatusObservation>,
    pub probe: Option<ProbeObservation>,
    pub is_running: Option<IsRunningObservation>,
    /// An ObjectID recovery was tried this tick (its result is persisted by the caller).
    pub recovery_tried: bool,
    pub rowset: Option<RowsetObservation>,
    /// MCE refused in a way no retry fixes (auth, access, tenant): the client-safe text.
    pub refused: Option<String>,
    /// How long this query took its last times (the adaptive schedule's input).
    pub history: Option<super::schedule::History>,
}

impl Tick {
    pub fn new(state: PollState, de_key: &str, temp_de: bool, has_object_id: bool) -> Self {
        Self {
            state,
            de_key: de_key.to_string(),
            canceled: false,
            temp_de,
            has_object_id,
            task_known: true,
            status: None,
            probe: None,
            is_running: None,
            recovery_tried: false,
            rowset: None,
            refused: None,
            history: None,
        }
    }
}

/// Why a run failed, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// MCE reported an error, or a status that can never complete.
    Mce,
    /// MCE refused the credentials or access.
    Refused,
    Timeout,
    Budget,
    NotQueryable,
}

impl FailReason {
    pub fn label(self) -> &'static str {
        match self {
            FailReason::Mce => "mce_error",
            FailReason::Refused => "refused",
            FailReason::Timeout => "timeout",
            FailReason::Budget => "poll_budget",
            FailReason::NotQueryable => "not_queryable",
        }
    }
}

/// How a ready run was detected, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyVia {
    /// Status `Complete`, then the rowset.
    Complete,
    /// Confirmed not running by REST isRunning, then the rowset.
    NotRunning,
    /// The row probe saw rows.
    Probe,
}

/// What a tick does next: ask MCE one question (the caller records the
/// answer in the [`Tick`] and decides again), or be done.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Ask(Question),
    Done(Outcome),
}

/// A question for MCE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    CheckStatus,
    ProbeRows,
    CheckIsRunning,
    /// Find the QueryDefinition's ObjectID by its CustomerKey (and persist it).
    RecoverObjectId,
    /// Ask the rowset whether the results DE is queryable. `first` when
    /// completion was detected on this tick.
    CheckRowset {
        first: bool,
    },
}

/// How a tick ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ready {
        row_count: i64,
        via: ReadyVia,
    },
    Fail {
        reason: FailReason,
        message: String,
    },
    /// The row was canceled by the API: clean up and publish `canceled`.
    Canceled,
    /// Come back after `delay`; `state` is what to remember, written only
    /// when `write` (a tick that changes nothing writes nothing).
    Reschedule {
        delay: Duration,
        state: PollState,
        write: bool,
    },
}

/// How a normalised status reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Complete,
    /// An error, or a status that can never complete; the client-safe text.
    Failed(String),
    Pending,
}

/// Trimmed, lower case.
pub fn normalise(status: &str) -> String {
    status.trim().to_ascii_lowercase()
}

pub fn classify(status: Option<&str>, error_msg: Option<&str>) -> StatusClass {
    let raw = status.unwrap_or("").trim();
    let s = normalise(raw);
    let error_msg = error_msg.map(str::trim).filter(|m| !m.is_empty());
    if s.contains("error") || error_msg.is_some() {
        let message = match (error_msg, raw.is_empty()) {
            (Some(m), _) => m.to_string(),
            (None, true) => "MCE Query Execution Error".to_string(),
            (None, false) => format!("MCE Query Execution Error (status={raw})"),
        };
        return StatusClass::Failed(message);
    }
    if matches!(s.as_str(), "canceled" | "cancelled" | "stopped" | "killed" | "aborted") {
        return StatusClass::Failed(format!("The query was stopped in Marketing Cloud (status={raw})"));
    }
    if s == "complete" || s == "completed" {
        return StatusClass::Complete;
    }
    StatusClass::Pending
}

fn elapsed(state: &PollState, now: DateTime<Utc>) -> Duration {
    (now - state.started_at).to_std().unwrap_or(Duration::ZERO)
}

fn since(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    at.map(|t| (now - t).to_std().unwrap_or(Duration::ZERO))
}

fn minutes_text(d: Duration) -> String {
    match d.as_secs().div_ceil(60) {
        1 => "1 minute".to_string(),
        n => format!("{n} minutes"),
    }
}

/// The budget, checked only after this tick's status was read.
fn over_budget(state: &PollState, cfg: &PollConfig, now: DateTime<Utc>) -> Option<Decision> {
    if elapsed(state, now) >= cfg.max_duration {
        return Some(Decision::Done(Outcome::Fail {
            reason: FailReason::Timeout,
            message: format!("Query timed out after {}", minutes_text(cfg.max_duration)),
        }));
    }
    if state.poll_count >= cfg.max_count {
        return Some(Decision::Done(Outcome::Fail {
            reason: FailReason::Budget,
            message: "Poll budget exceeded".into(),
        }));
    }
    None
}

/// The readiness check once completion is known.
fn rowset(tick: &Tick, next: PollState, via: ReadyVia, cfg: &PollConfig, now: DateTime<Utc>, unit: f64) -> Decision {
    match tick.rowset {
        None => Decision::Ask(Question::CheckRowset {
            first: tick.state.rowset_attempts == 0,
        }),
        Some(RowsetObservation::Queryable { count }) => Decision::Done(Outcome::Ready { row_count: count, via }),
        Some(RowsetObservation::NotYet) => {
            let attempts = tick.state.rowset_attempts + 1;
            if attempts >= cfg.rowset_ready_max_attempts {
                return Decision::Done(Outcome::Fail {
                    reason: FailReason::NotQueryable,
                    message: format!(
                        "Data Extension \"{}\" not queryable after {attempts} attempts",
                        tick.de_key
                    ),
                });
            }
            let next = PollState {
                rowset_attempts: attempts,
                rowset_first_at: next.rowset_first_at.or(Some(now)),
                ..next
            };
            Decision::Done(Outcome::Reschedule {
                delay: cfg.rowset_backoff.delay(attempts - 1, unit),
                state: next,
                write: true,
            })
        }
    }
}

/// The next step of a tick. `unit` is a uniform draw from `[0, 1)`.
pub fn decide(tick: &Tick, cfg: &PollConfig, now: DateTime<Utc>, unit: f64) -> Decision {
    if tick.canceled {
        return Decision::Done(Outcome::Canceled);
    }
    if let Some(message) = &tick.refused {
        return Decision::Done(Outcome::Fail {
            reason: FailReason::Refused,
            message: message.clone(),
        });
    }
    let state = &tick.state;
    let mut next = state.clone();
    // Completion already seen: the readiness check is this tick's one check.
    if state.rowset_attempts > 0 {
        let via = if state.not_running_count >= cfg.not_running_confirmations {
            ReadyVia::NotRunning
        } else {
            ReadyVia::Complete
        };
        return rowset(tick, next, via, cfg, now, unit);
    }
    let mut write = false;
    let completed_date = match &tick.status {
        None if !tick.task_known => false,
        None => return Decision::Ask(Question::CheckStatus),
        Some(StatusObservation::Unavailable) => {
            // Transient: counted and rescheduled; only the budget ends the run.
            next.transient_errors += 1;
            if let Some(fail) = over_budget(state, cfg, now) {
                return fail;
            }
            let delay = cfg.backoff.delay(state.poll_count.saturating_sub(1), unit);
            return Decision::Done(Outcome::Reschedule {
                delay,
                state: next,
                write: true,
            });
        }
        Some(StatusObservation::Read {
            status,
            error_msg,
            completed_date,
        }) => {
            match classify(status.as_deref(), error_msg.as_deref()) {
                StatusClass::Failed(message) => {
                    return Decision::Done(Outcome::Fail {
                        reason: FailReason::Mce,
                        message,
                    });
                }
                StatusClass::Complete => return rowset(tick, next, ReadyVia::Complete, cfg, now, unit),
                StatusClass::Pending => {}
            }
            let normalised = status.as_deref().map(normalise);
            write |= next.transient_errors > 0 || next.last_status != normalised;
            next.transient_errors = 0;
            next.last_status = normalised;
            completed_date.as_deref().is_some_and(|d| !d.trim().is_empty())
        }
    };
    let ran_for = elapsed(state, now);
    let doubt = in_doubt(tick, state, cfg, completed_date, ran_for, now);

    // Row probe: a temp DE of this run only, when the status is in doubt,
    // after the minimum runtime, at most every interval. Rows present means
    // done.
    let probe_due = doubt != Doubt::None
        && tick.temp_de
        && ran_for >= cfg.row_probe_min_runtime
        && since(state.last_look_at, now).is_none_or(|d| d >= cfg.row_probe_min_interval);
    if probe_due {
        match tick.probe {
            None => return Decision::Ask(Question::ProbeRows),
            Some(ProbeObservation::Rows { count }) => {
                return Decision::Done(Outcome::Ready {
                    row_count: count,
                    via: ReadyVia::Probe,
                });
            }
            Some(ProbeObservation::NoSignal) => {
                next.probe_attempts += 1;
                next.last_look_at = Some(now);
                write = true;
            }
        }
    }

    // REST isRunning gate: the same doubt.
    if doubt != Doubt::None {
        let answer = if tick.has_object_id {
            match tick.is_running {
                None => return Decision::Ask(Question::CheckIsRunning),
                Some(answer) => {
                    if doubt == Doubt::Stuck {
                        // The stuck looks are spaced from this one.
                        next.last_look_at = Some(now);
                        write = true;
                    }
                    Some(answer)
                }
            }
        } else {
            None
        };
        match answer {
            // No usable ObjectID: recover it by CustomerKey; it is used next tick.
            None | Some(IsRunningObservation::BadId) => {
                if !tick.recovery_tried {
                    return Decision::Ask(Question::RecoverObjectId);
                }
            }
            Some(IsRunningObservation::Running) => {
                if next.not_running_count > 0 || next.not_running_first_at.is_some() {
                    write = true;
                }
                next.not_running_count = 0;
                next.not_running_first_at = None;
            }
            Some(IsRunningObservation::NotRunning) => {
                match next.not_running_first_at {
                    None => {
                        next.not_running_count = 1;
                        next.not_running_first_at = Some(now);
                        write = true;
                    }
                    Some(first) if since(Some(first), now).is_some_and(|d| d >= cfg.not_running_min_gap) => {
                        next.not_running_count += 1;
                        write = true;
                    }
                    Some(_) => {}
                }
                if next.not_running_count >= cfg.not_running_confirmations {
                    return rowset(tick, next, ReadyVia::NotRunning, cfg, now, unit);
                }
            }
            Some(IsRunningObservation::Unavailable) => {}
        }
    }

    if let Some(fail) = over_budget(state, cfg, now) {
        return fail;
    }
    let delay = super::schedule::next_delay(
        cfg.schedule,
        &cfg.backoff,
        state.poll_count.saturating_sub(1),
        ran_for,
        tick.history.as_ref(),
        unit,
    );
    Decision::Done(Outcome::Reschedule {
        delay,
        state: next,
        write,
    })
}

/// A look past the status is spaced at least this fraction of the run's
/// age apart while the run is merely stuck: a quarter, so a run stuck for
/// 20 minutes is looked at about every 5.
const STUCK_LOOK_SPACING: u32 = 4;

/// Whether this tick looks past the status (row probe, isRunning). The
/// status is the one signal while it answers as expected; the other looks
/// are for a status that is in doubt, and each is a call no batch shares:
/// - the task is unknown (an interrupted start): there is no status to ask;
/// - a not-running answer waits for its confirmation;
/// - the status carries a CompletedDate but does not say `Complete`
///   (after `completed_date_trigger_min_runtime`);
/// - the run has run past `stuck_threshold`: then spaced, at least
///   `row_probe_min_interval` and a quarter of the run's age apart.
///
/// A run whose status says pending, without a CompletedDate, before the
/// stuck threshold is not in doubt: its next status check answers as soon
/// as a probe would, so a probe at every tick would only double its calls.
pub fn in_doubt(
    tick: &Tick,
    state: &PollState,
    cfg: &PollConfig,
    completed_date: bool,
    ran_for: Duration,
    now: DateTime<Utc>,
) -> Doubt {
    if !tick.task_known
        || state.not_running_first_at.is_some()
        || (completed_date && ran_for >= cfg.completed_date_trigger_min_runtime)
    {
        return Doubt::Signal;
    }
    let spaced = since(state.last_look_at, now)
        .is_none_or(|d| d >= cfg.row_probe_min_interval.max(ran_for / STUCK_LOOK_SPACING));
    if ran_for >= cfg.stuck_threshold && spaced {
        Doubt::Stuck
    } else {
        Doubt::None
    }
}

/// Why a tick looks past the status, if it does ([`in_doubt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doubt {
    /// The status is trusted: no other look.
    None,
    /// The status itself, or an earlier look, gives a reason: look at
    /// every tick (the probe at most every `row_probe_min_interval`).
    Signal,
    /// Only the run's age: a spaced look.
    Stuck,
}

/// The delay of a tick turned back unasked because its tenant has its
/// share of ticks in flight: the one its schedule gives for a run still
/// running, as if MCE had said so. The check is skipped, not retried soon:
/// a tenant past its share waits its own turn, and its backlog does not
/// cycle through the consumer ahead of the other tenants' ticks.
pub fn deferred_delay(tick: &Tick, cfg: &PollConfig, now: DateTime<Utc>, unit: f64) -> Duration {
    super::schedule::next_delay(
        cfg.schedule,
        &cfg.backoff,
        tick.state.poll_count.saturating_sub(1),
        elapsed(&tick.state, now),
        tick.history.as_ref(),
        unit,
    )
}

#[cfg(test)]
mod tests;
