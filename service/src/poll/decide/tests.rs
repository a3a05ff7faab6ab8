use super::*;
use crate::backoff::Backoff;

fn cfg() -> PollConfig {
    let ms = Duration::from_millis;
    PollConfig {
        backoff: Backoff {
            initial: ms(2000),
            max: ms(30000),
            multiplier: 2.0,
            jitter_range: 0.4,
        },
        max_count: 120,
        max_duration: ms(1_740_000),
        completed_date_trigger_min_runtime: ms(5000),
        stuck_threshold: ms(180_000),
        not_running_confirmations: 2,
        not_running_min_gap: ms(15000),
        rowset_ready_max_attempts: 6,
        rowset_backoff: Backoff {
            initial: ms(1500),
            max: ms(8000),
            multiplier: 2.0,
            jitter_range: 0.4,
        },
        row_probe_min_runtime: ms(5000),
        row_probe_min_interval: ms(15000),
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn state(poll_count: u32) -> PollState {
    PollState {
        poll_count,
        started_at: t0(),
        rowset_attempts: 0,
        rowset_first_at: None,
        transient_errors: 0,
        last_status: None,
    }
}

fn status(s: &str) -> Observation {
    Observation::Status {
        status: Some(s.into()),
        error_msg: None,
        completed_date: None,
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

#[test]
fn statuses_classify() {
    assert_eq!(classify(Some(" Complete "), None), StatusClass::Complete);
    assert_eq!(classify(Some("COMPLETE"), None), StatusClass::Complete);
    assert_eq!(classify(Some("Queued"), None), StatusClass::Pending);
    assert_eq!(classify(None, None), StatusClass::Pending);
    assert_eq!(
        classify(Some("Error"), Some("Syntax error in query")),
        StatusClass::Failed("Syntax error in query".into())
    );
    assert_eq!(
        classify(Some("FatalError"), None),
        StatusClass::Failed("MCE Query Execution Error (status=FatalError)".into())
    );
    assert_eq!(
        classify(Some("Processing"), Some("boom")),
        StatusClass::Failed("boom".into())
    );
    for never in ["Canceled", "stopped", " KILLED "] {
        assert!(matches!(classify(Some(never), None), StatusClass::Failed(_)), "{never}");
    }
}

#[test]
fn complete_goes_to_the_rowset_and_errors_fail() {
    assert_eq!(
        decide(&state(1), &status("Complete"), &cfg(), at(3), 0.5),
        Decision::CheckRowset
    );
    let d = decide(
        &state(1),
        &Observation::Status {
            status: Some("Error".into()),
            error_msg: Some("bad".into()),
            completed_date: None,
        },
        &cfg(),
        at(3),
        0.5,
    );
    assert_eq!(
        d,
        Decision::Fail {
            reason: FailReason::Mce,
            message: "bad".into()
        }
    );
}

#[test]
fn pending_reschedules_on_the_backoff_and_writes_only_on_change() {
    let Decision::Reschedule {
        delay,
        state: next,
        write,
    } = decide(&state(1), &status("Queued"), &cfg(), at(2), 0.5)
    else {
        panic!()
    };
    assert_eq!(delay, Duration::from_millis(2000));
    assert!(write, "first status seen is a change");
    assert_eq!(next.last_status.as_deref(), Some("queued"));
    let Decision::Reschedule { delay, write, .. } =
        decide(&next.clone().with_count(3), &status(" queued"), &cfg(), at(10), 0.5)
    else {
        panic!()
    };
    assert_eq!(delay, Duration::from_millis(8000));
    assert!(!write, "same status: nothing to write");
}

impl PollState {
    fn with_count(mut self, n: u32) -> Self {
        self.poll_count = n;
        self
    }
}

#[test]
fn the_budget_is_checked_after_the_status_and_at_its_boundaries() {
    // A status read at the deadline still wins if it is Complete.
    assert_eq!(
        decide(&state(200), &status("Complete"), &cfg(), at(10_000), 0.5),
        Decision::CheckRowset
    );
    // Just below the duration: reschedule; at it: timeout.
    assert!(matches!(
        decide(&state(5), &status("Queued"), &cfg(), at(1739), 0.5),
        Decision::Reschedule { .. }
    ));
    assert_eq!(
        decide(&state(5), &status("Queued"), &cfg(), at(1740), 0.5),
        Decision::Fail {
            reason: FailReason::Timeout,
            message: "Query timed out after 29 minutes".into()
        }
    );
    // Just below the count: reschedule; at it: budget.
    assert!(matches!(
        decide(&state(119), &status("Queued"), &cfg(), at(60), 0.5),
        Decision::Reschedule { .. }
    ));
    assert_eq!(
        decide(&state(120), &status("Queued"), &cfg(), at(60), 0.5),
        Decision::Fail {
            reason: FailReason::Budget,
            message: "Poll budget exceeded".into()
        }
    );
}

#[test]
fn a_transient_failure_reschedules_until_the_budget() {
    let Decision::Reschedule { state: next, write, .. } =
        decide(&state(3), &Observation::Unavailable, &cfg(), at(20), 0.5)
    else {
        panic!()
    };
    assert!(write);
    assert_eq!(next.transient_errors, 1);
    let again = PollState {
        transient_errors: 50,
        ..state(60)
    };
    assert!(matches!(
        decide(&again, &Observation::Unavailable, &cfg(), at(900), 0.5),
        Decision::Reschedule { .. }
    ));
    assert!(matches!(
        decide(&again, &Observation::Unavailable, &cfg(), at(1740), 0.5),
        Decision::Fail {
            reason: FailReason::Timeout,
            ..
        }
    ));
    // A good read after errors resets the streak and writes it.
    let Decision::Reschedule { state: next, write, .. } = decide(&again, &status("Queued"), &cfg(), at(100), 0.5)
    else {
        panic!()
    };
    assert!(write);
    assert_eq!(next.transient_errors, 0);
}

#[test]
fn rowset_readiness_is_bounded_and_resumable() {
    assert_eq!(
        decide_rowset(
            &state(4),
            RowsetObservation::Queryable { count: 0 },
            "K",
            &cfg(),
            at(9),
            0.5
        ),
        Decision::Ready { row_count: 0 }
    );
    let Decision::Reschedule {
        delay,
        state: s1,
        write,
    } = decide_rowset(&state(4), RowsetObservation::NotYet, "K", &cfg(), at(9), 0.5)
    else {
        panic!()
    };
    assert!(write);
    assert_eq!(delay, Duration::from_millis(1500));
    assert_eq!((s1.rowset_attempts, s1.rowset_first_at), (1, Some(at(9))));
    // Once completion was seen, a tick goes straight to the rowset.
    assert_eq!(
        decide(&s1, &status("Queued"), &cfg(), at(12), 0.5),
        Decision::CheckRowset
    );
    let five = PollState {
        rowset_attempts: 4,
        ..s1.clone()
    };
    assert!(matches!(
        decide_rowset(&five, RowsetObservation::NotYet, "K", &cfg(), at(30), 0.5),
        Decision::Reschedule { .. }
    ));
    let six = PollState {
        rowset_attempts: 5,
        ..s1
    };
    assert_eq!(
        decide_rowset(&six, RowsetObservation::NotYet, "K", &cfg(), at(40), 0.5),
        Decision::Fail {
            reason: FailReason::NotQueryable,
            message: "Data Extension \"K\" not queryable after 6 attempts".into()
        }
    );
}
