//! A run as the service knows it: its state machine, where its start
//! stands, and how it can end. The store reads rows into [`Run`]; nothing
//! above the store sees a raw status string or an empty-string marker.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::account::Account;
use crate::poll::decide::{FailReason, PollState, ReadyVia};
use crate::schema::UpdateType;

/// The row's `status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Queued,
    Running,
    Ready,
    Failed,
    Canceled,
}

impl RunStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Ready => "ready",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "ready" => RunStatus::Ready,
            "failed" => RunStatus::Failed,
            "canceled" => RunStatus::Canceled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Ready | RunStatus::Failed | RunStatus::Canceled)
    }

    /// The states a terminal compare-and-set may start from.
    pub const LIVE: [RunStatus; 2] = [RunStatus::Queued, RunStatus::Running];
}

/// Where the start of a run's query stands. Perform is sent at most once:
/// once it may have been sent, only [`StartPhase::PerformRequested`] or
/// [`StartPhase::Started`] can follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPhase {
    /// Perform was not requested.
    NotRequested,
    /// Perform was (or was about to be) sent at `at`; its TaskID is unknown:
    /// an earlier delivery may have started the query.
    PerformRequested { at: DateTime<Utc> },
    /// MCE started the query.
    Started(Task),
}

/// The started query's AsyncActivity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    Known(String),
    /// An interrupted start lost the TaskID: the run is polled by the
    /// isRunning gate and the rowset only.
    Lost,
}

impl Task {
    pub fn id(&self) -> Option<&str> {
        match self {
            Task::Known(id) => Some(id),
            Task::Lost => None,
        }
    }
}

/// One run, as its row holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub id: Uuid,
    /// Whom its MCE calls act as.
    pub account: Account,
    pub snippet_name: Option<String>,
    pub sql_text_hash: String,
    /// `None` when the caller did not ask for it (a poll tick never reads it).
    pub sql_text_encrypted: Option<String>,
    pub status: RunStatus,
    pub start: StartPhase,
    pub query_definition_id: Option<String>,
    pub query_customer_key: Option<String>,
    pub target_de_customer_key: Option<String>,
    /// A run-to-target's update type, as the row names it.
    pub update_type: Option<UpdateType>,
    pub poll_started_at: Option<DateTime<Utc>>,
    /// Encrypted, client-safe.
    pub error_message: Option<String>,
    pub row_count: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the terminal event was confirmed published; `None` on a
    /// terminal row means the event is still owed.
    pub terminal_event_at: Option<DateTime<Utc>>,
    /// When the service handled a cancel. The API cancels by setting
    /// `status` (and `completed_at`) itself; only this marker says the
    /// service has done its part.
    pub cancel_handled_at: Option<DateTime<Utc>>,
    /// The run this one retries (an operator's `runs retry`).
    pub retry_of: Option<Uuid>,
    /// What earlier poll ticks left in the row (its `poll_count` is the
    /// tick number at the last state-changing write).
    pub poll: PollState,
}

impl Run {
    /// Why an operator may not retry this run as it stands: it has not
    /// ended as failed or canceled, or it wrote into a target in `Append`
    /// mode (or a mode the service does not know) after its Perform may
    /// have been sent (a retry could add its rows twice; `force` accepts
    /// that).
    pub fn retry_refused(&self, force: bool) -> Option<String> {
        if !matches!(self.status, RunStatus::Failed | RunStatus::Canceled) {
            return Some(format!(
                "run {} is {}: only a failed or canceled run is retried",
                self.id,
                self.status.as_str()
            ));
        }
        let performed = !matches!(self.start, StartPhase::NotRequested);
        // The same rule as a resumed start's (`resume::second_perform_harmless`).
        let temp_de = self.target().is_none();
        let harmless = crate::resume::second_perform_harmless(temp_de, UpdateType::mode_of(self.update_type.as_ref()));
        if performed && !harmless && !force {
            return Some(format!(
                "run {} wrote into {} in {} mode and its Perform may have been sent: a retry could add its rows twice; check the target, then pass --force to run it again",
                self.id,
                self.target_de_customer_key.as_deref().unwrap_or("its target"),
                self.update_type.as_ref().map_or("Overwrite", |u| u.as_str())
            ));
        }
        None
    }

    /// The Data Extension the request named (a run-to-target), not the
    /// run's own temp DE.
    pub fn target(&self) -> Option<&str> {
        self.target_de_customer_key
            .as_deref()
            .filter(|key| *key != crate::naming::temp_de_key(self.id))
    }

    /// The recorded ObjectID of the run's QueryDefinition, if any.
    pub fn query_definition(&self) -> Option<&str> {
        self.query_definition_id.as_deref().filter(|id| !id.trim().is_empty())
    }

    /// A terminal run whose status event was never confirmed. (A row the
    /// API canceled is not ended yet until its cancel is handled: the
    /// handling publishes the event.)
    pub fn owes_terminal_event(&self) -> bool {
        self.status.is_terminal()
            && self.completed_at.is_some()
            && self.terminal_event_at.is_none()
            && !self.cancel_pending()
    }

    /// The API canceled the run and the service has not handled it yet: its
    /// `canceled` event and clean-up are still to come (through `end_run`).
    pub fn cancel_pending(&self) -> bool {
        self.status == RunStatus::Canceled && self.cancel_handled_at.is_none()
    }

    /// The TaskID of the started query, when known.
    pub fn start_task_id(&self) -> Option<&str> {
        match &self.start {
            StartPhase::Started(task) => task.id(),
            _ => None,
        }
    }

    /// The poll state a tick starts from; `delivered` is the poll message's
    /// delivery count (the row's count wins if the consumer was ever reset).
    pub fn poll_state(&self, delivered: u32, fallback_start: DateTime<Utc>) -> PollState {
        PollState {
            poll_count: delivered.max(self.poll.poll_count + 1),
            started_at: self.poll_started_at.unwrap_or(fallback_start),
            ..self.poll.clone()
        }
    }
}

/// How a run ends. Every path that ends a run names one of these; the
/// metric labels come from here and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Ready {
        row_count: i64,
        via: ReadyVia,
    },
    /// `message` is client-safe (it is clipped and encrypted on the way in).
    Failed {
        message: String,
        cause: FailCause,
    },
    Canceled(CancelSource),
}

/// Which step failed a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailCause {
    /// A poll tick's decision.
    Poll(FailReason),
    /// The execute step (MCE refused, or the query cannot run).
    Execute,
    /// The execute message could not be read.
    Malformed,
    /// The reconciler found the run unable to move.
    Reconciler,
}

/// Who asked for the cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelSource {
    /// The API set the row to `canceled` itself.
    Api,
    /// A `P.cancel.<runId>` message.
    CancelMessage,
}

impl Ending {
    /// The terminal status the run moves into.
    pub fn status(&self) -> RunStatus {
        match self {
            Ending::Ready { .. } => RunStatus::Ready,
            Ending::Failed { .. } => RunStatus::Failed,
            Ending::Canceled(_) => RunStatus::Canceled,
        }
    }

    /// The `outcome` label of `shell_query_runs_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Ending::Ready { .. } => "ready",
            Ending::Failed { .. } => "failed",
            Ending::Canceled(_) => "canceled",
        }
    }

    /// Every ending, for counters that start at zero: one of each
    /// `(outcome, reason)` label pair.
    pub fn every_kind() -> Vec<Ending> {
        use crate::poll::decide::FailReason as R;
        let failed = |cause| Ending::Failed {
            message: String::new(),
            cause,
        };
        let mut all: Vec<Ending> = [ReadyVia::Complete, ReadyVia::NotRunning, ReadyVia::Probe]
            .into_iter()
            .map(|via| Ending::Ready { row_count: 0, via })
            .collect();
        all.extend(
            [R::Mce, R::Refused, R::Timeout, R::Budget, R::NotQueryable]
                .into_iter()
                .map(|r| failed(FailCause::Poll(r))),
        );
        all.extend([FailCause::Execute, FailCause::Malformed, FailCause::Reconciler].map(failed));
        all.extend([CancelSource::Api, CancelSource::CancelMessage].map(Ending::Canceled));
        all
    }

    /// The `reason` label of `shell_query_runs_total`: a closed set.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Ending::Ready { via, .. } => match via {
                ReadyVia::Complete => "complete",
                ReadyVia::NotRunning => "not_running",
                ReadyVia::Probe => "row_probe",
            },
            Ending::Failed { cause, .. } => match cause {
                FailCause::Poll(reason) => reason.label(),
                FailCause::Execute => "execute",
                FailCause::Malformed => "malformed",
                FailCause::Reconciler => "reconciler",
            },
            Ending::Canceled(CancelSource::Api) => "api",
            Ending::Canceled(CancelSource::CancelMessage) => "cancel_message",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Ready,
            RunStatus::Failed,
            RunStatus::Canceled,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunStatus::parse("done"), None);
    }

    #[test]
    fn a_retry_is_refused_where_the_first_attempt_may_have_added_rows() {
        let id = Uuid::new_v4();
        let base = Run {
            id,
            account: Account::new(Uuid::new_v4(), None, crate::account::Mid::parse("1").unwrap()),
            snippet_name: None,
            sql_text_hash: String::new(),
            sql_text_encrypted: None,
            status: RunStatus::Failed,
            start: StartPhase::Started(Task::Known("7".into())),
            query_definition_id: None,
            query_customer_key: None,
            target_de_customer_key: Some(crate::naming::temp_de_key(id)),
            update_type: None,
            poll_started_at: None,
            error_message: None,
            row_count: None,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            terminal_event_at: None,
            cancel_handled_at: None,
            retry_of: None,
            poll: PollState::new(0, Utc::now()),
        };
        assert_eq!(base.retry_refused(false), None, "its own temp DE: harmless");
        assert_eq!(base.target(), None);
        let append = Run {
            target_de_customer_key: Some("Target".into()),
            update_type: Some(UpdateType::from_stored("Append")),
            ..base.clone()
        };
        assert!(append.retry_refused(false).unwrap().contains("--force"));
        assert_eq!(append.retry_refused(true), None);
        let never_sent = Run {
            start: StartPhase::NotRequested,
            ..append.clone()
        };
        assert_eq!(never_sent.retry_refused(false), None, "no Perform: no rows");
        let overwrite = Run {
            update_type: Some(UpdateType::from_stored("Overwrite")),
            ..append.clone()
        };
        assert_eq!(overwrite.retry_refused(false), None);
        let running = Run {
            status: RunStatus::Running,
            ..base
        };
        assert!(
            running
                .retry_refused(true)
                .unwrap()
                .contains("only a failed or canceled")
        );
    }

    #[test]
    fn every_kind_of_ending_is_listed_once() {
        let pairs: std::collections::BTreeSet<(&str, &str)> = Ending::every_kind()
            .iter()
            .map(|e| (e.outcome_label(), e.reason_label()))
            .collect();
        assert_eq!(pairs.len(), Ending::every_kind().len());
        assert_eq!(pairs.len(), 13);
    }

    #[test]
    fn every_ending_names_its_status_and_labels() {
        let ready = Ending::Ready {
            row_count: 3,
            via: ReadyVia::Probe,
        };
        assert_eq!(
            (ready.status(), ready.outcome_label(), ready.reason_label()),
            (RunStatus::Ready, "ready", "row_probe")
        );
        let failed = Ending::Failed {
            message: "x".into(),
            cause: FailCause::Poll(FailReason::Timeout),
        };
        assert_eq!((failed.status(), failed.reason_label()), (RunStatus::Failed, "timeout"));
        let canceled = Ending::Canceled(CancelSource::Api);
        assert_eq!(
            (canceled.status(), canceled.reason_label()),
            (RunStatus::Canceled, "api")
        );
    }
}
