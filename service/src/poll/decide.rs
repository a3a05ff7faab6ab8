//! The poll decision: from the run's persisted poll state, what MCE said this
//! tick, the configuration and the time, to what happens next. No I/O; time
//! and the jitter draw are parameters, so every branch is testable.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::PollConfig;

/// Everything a tick needs to know about earlier ticks. Lives in the run's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollState {
    /// This tick's number, 1-based.
    pub poll_count: u32,
    /// When polling began (after Perform).
    pub started_at: DateTime<Utc>,
    pub rowset_attempts: u32,
    pub rowset_first_at: Option<DateTime<Utc>>,
    /// Consecutive ticks that could not read the status.
    pub transient_errors: u32,
    /// The last status seen, normalised.
    pub last_status: Option<String>,
}

/// What MCE said of the task this tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Status {
        status: Option<String>,
        error_msg: Option<String>,
        completed_date: Option<String>,
    },
    /// The status could not be read (5xx, timeout, after the client's retries).
    Unavailable,
}

/// What the rowset said when asked whether the results DE is queryable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsetObservation {
    Queryable {
        count: i64,
    },
    /// 404, 409, other 4xx, 5xx or a timeout: not yet.
    NotYet,
}

/// Why a run failed, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// MCE reported an error, or a status that can never complete.
    Mce,
    Timeout,
    Budget,
    NotQueryable,
}

impl FailReason {
    pub fn label(self) -> &'static str {
        match self {
            FailReason::Mce => "mce_error",
            FailReason::Timeout => "timeout",
            FailReason::Budget => "poll_budget",
            FailReason::NotQueryable => "not_queryable",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Ask the rowset (page size 1) whether the results DE is queryable.
    CheckRowset,
    Ready {
        row_count: i64,
    },
    Fail {
        reason: FailReason,
        message: String,
    },
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
        let message = error_msg
            .map(str::to_string)
            .unwrap_or_else(|| format!("MCE Query Execution Error (status={raw})"));
        return StatusClass::Failed(message);
    }
    if matches!(s.as_str(), "canceled" | "cancelled" | "stopped" | "killed") {
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

/// The budget, checked only after this tick's status was read.
fn over_budget(state: &PollState, cfg: &PollConfig, now: DateTime<Utc>) -> Option<Decision> {
    if elapsed(state, now) >= cfg.max_duration {
        let minutes = cfg.max_duration.as_secs().div_ceil(60);
        return Some(Decision::Fail {
            reason: FailReason::Timeout,
            message: format!("Query timed out after {minutes} minutes"),
        });
    }
    if state.poll_count >= cfg.max_count {
        return Some(Decision::Fail {
            reason: FailReason::Budget,
            message: "Poll budget exceeded".into(),
        });
    }
    None
}

/// A tick that asked for the status. `unit` is a uniform draw from `[0, 1)`.
pub fn decide(
    state: &PollState,
    observation: &Observation,
    cfg: &PollConfig,
    now: DateTime<Utc>,
    unit: f64,
) -> Decision {
    // Completion already seen: the readiness check is this tick's one check.
    if state.rowset_attempts > 0 {
        return Decision::CheckRowset;
    }
    let mut next = state.clone();
    let mut write = false;
    match observation {
        Observation::Status { status, error_msg, .. } => {
            match classify(status.as_deref(), error_msg.as_deref()) {
                StatusClass::Failed(message) => {
                    return Decision::Fail {
                        reason: FailReason::Mce,
                        message,
                    };
                }
                StatusClass::Complete => return Decision::CheckRowset,
                StatusClass::Pending => {}
            }
            let normalised = status.as_deref().map(normalise);
            if next.transient_errors > 0 || next.last_status != normalised {
                write = true;
            }
            next.transient_errors = 0;
            next.last_status = normalised;
            if let Some(fail) = over_budget(state, cfg, now) {
                return fail;
            }
        }
        Observation::Unavailable => {
            // Transient: counted and rescheduled; only the budget ends the run.
            next.transient_errors += 1;
            write = true;
            if let Some(fail) = over_budget(state, cfg, now) {
                return fail;
            }
        }
    }
    let delay = cfg.backoff.delay(state.poll_count.saturating_sub(1), unit);
    next.poll_count = state.poll_count;
    Decision::Reschedule {
        delay,
        state: next,
        write,
    }
}

/// A tick that asked the rowset whether the results DE is queryable.
pub fn decide_rowset(
    state: &PollState,
    observation: RowsetObservation,
    de_key: &str,
    cfg: &PollConfig,
    now: DateTime<Utc>,
    unit: f64,
) -> Decision {
    match observation {
        RowsetObservation::Queryable { count } => Decision::Ready { row_count: count },
        RowsetObservation::NotYet => {
            let attempts = state.rowset_attempts + 1;
            if attempts >= cfg.rowset_ready_max_attempts {
                return Decision::Fail {
                    reason: FailReason::NotQueryable,
                    message: format!("Data Extension \"{de_key}\" not queryable after {attempts} attempts"),
                };
            }
            let next = PollState {
                rowset_attempts: attempts,
                rowset_first_at: state.rowset_first_at.or(Some(now)),
                ..state.clone()
            };
            Decision::Reschedule {
                delay: cfg.rowset_backoff.delay(attempts - 1, unit),
                state: next,
                write: true,
            }
        }
    }
}

#[cfg(test)]
mod tests;
