use super::*;
use crate::backoff::Backoff;

fn cfg() -> PollConfig {
    let ms = Duration::from_millis;
    PollConfig {
        schedule: crate::poll::schedule::Schedule::Exponential,
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

fn at(ms: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::milliseconds(ms)
}

fn state(poll_count: u32) -> PollState {
    PollState::new(poll_count, t0())
}

/// A tick of a temp-DE run whose ObjectID is known, with a status read.
fn tick_with(state: PollState, status: &str, completed_date: Option<&str>) -> Tick {
    let mut t = Tick::new(state, "QPP_R_key", false, true);
    t.status = Some(StatusObservation::Read {
        status: Some(status.into()),
        error_msg: None,
        completed_date: completed_date.map(str::to_string),
    });
    t
}

fn tick(status: &str) -> Tick {
    tick_with(state(1), status, None)
}

fn decide_at(t: &Tick, ms: i64) -> Decision {
    decide(t, &cfg(), at(ms), 0.5)
}

fn reschedule(d: Decision) -> (Duration, PollState, bool) {
    match d {
        Decision::Done(Outcome::Reschedule { delay, state, write }) => (delay, state, write),
        other => panic!("expected a reschedule, got {other:?}"),
    }
}

#[test]
fn statuses_classify() {
    assert_eq!(classify(Some(" Complete "), None), StatusClass::Complete);
    assert_eq!(classify(Some("COMPLETE"), None), StatusClass::Complete);
    for pending in ["Queued", "Processing", "Pending", "  queued ", ""] {
        assert_eq!(classify(Some(pending), None), StatusClass::Pending, "{pending}");
    }
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
        classify(Some(" ERROR "), None),
        StatusClass::Failed("MCE Query Execution Error (status=ERROR)".into())
    );
    assert_eq!(
        classify(Some("Processing"), Some(" boom ")),
        StatusClass::Failed("boom".into())
    );
    assert_eq!(classify(None, Some("x")), StatusClass::Failed("x".into()));
    assert_eq!(
        classify(Some("Processing"), Some("   ")),
        StatusClass::Pending,
        "a blank ErrorMsg is no error"
    );
    for never in ["Canceled", "cancelled", "stopped", " KILLED ", "Aborted"] {
        assert!(matches!(classify(Some(never), None), StatusClass::Failed(_)), "{never}");
    }
}

#[test]
fn the_status_is_asked_first_and_cancel_and_refusal_win() {
    let mut t = Tick::new(state(1), "K", true, true);
    assert_eq!(decide_at(&t, 0), Decision::Ask(Question::CheckStatus));
    t.refused = Some("Marketing Cloud session expired. Please re-authenticate.".into());
    assert_eq!(
        decide_at(&t, 0),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Refused,
            message: "Marketing Cloud session expired. Please re-authenticate.".into()
        })
    );
    t.canceled = true;
    assert_eq!(decide_at(&t, 0), Decision::Done(Outcome::Canceled));
    let mut done = tick("Complete");
    done.canceled = true;
    assert_eq!(
        decide_at(&done, 0),
        Decision::Done(Outcome::Canceled),
        "a canceled row wins over anything MCE says"
    );
}

#[test]
fn errors_fail_with_mce_text() {
    let mut t = tick("Error");
    t.status = Some(StatusObservation::Read {
        status: Some("Error".into()),
        error_msg: Some("bad".into()),
        completed_date: None,
    });
    assert_eq!(
        decide_at(&t, 1000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Mce,
            message: "bad".into()
        })
    );
    assert_eq!(
        decide_at(&tick("FatalError"), 1000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Mce,
            message: "MCE Query Execution Error (status=FatalError)".into()
        })
    );
    assert!(matches!(
        decide_at(&tick("Stopped"), 1000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Mce,
            ..
        })
    ));
}

#[test]
fn complete_goes_to_the_rowset_which_decides() {
    let mut t = tick("Complete");
    assert_eq!(
        decide_at(&t, 3000),
        Decision::Ask(Question::CheckRowset { first: true })
    );
    t.rowset = Some(RowsetObservation::Queryable { count: 0 });
    assert_eq!(
        decide_at(&t, 3000),
        Decision::Done(Outcome::Ready {
            row_count: 0,
            via: ReadyVia::Complete
        }),
        "an empty result is ready"
    );
    t.rowset = Some(RowsetObservation::NotYet);
    let (delay, next, write) = reschedule(decide_at(&t, 3000));
    assert!(write);
    assert_eq!(delay, Duration::from_millis(1500));
    assert_eq!((next.rowset_attempts, next.rowset_first_at), (1, Some(at(3000))));
}

#[test]
fn the_readiness_phase_is_resumable_and_bounded() {
    let mut phase = state(7);
    phase.rowset_attempts = 1;
    phase.rowset_first_at = Some(at(3000));
    let mut t = Tick::new(phase.clone(), "QPP_R_key", true, true);
    assert_eq!(
        decide_at(&t, 6000),
        Decision::Ask(Question::CheckRowset { first: false }),
        "no status check: the rowset is the check"
    );
    t.rowset = Some(RowsetObservation::NotYet);
    let (delay, next, _) = reschedule(decide_at(&t, 6000));
    assert_eq!(delay, Duration::from_millis(3000), "the readiness backoff grows");
    assert_eq!(
        (next.rowset_attempts, next.rowset_first_at),
        (2, Some(at(3000))),
        "first detection is kept"
    );
    // Attempt 5 of 6 reschedules; attempt 6 fails with the reference's message.
    t.state.rowset_attempts = 4;
    assert!(matches!(
        decide_at(&t, 9000),
        Decision::Done(Outcome::Reschedule { .. })
    ));
    t.state.rowset_attempts = 5;
    assert_eq!(
        decide_at(&t, 9000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::NotQueryable,
            message: "Data Extension \"QPP_R_key\" not queryable after 6 attempts".into()
        })
    );
    t.rowset = Some(RowsetObservation::Queryable { count: 9 });
    assert_eq!(
        decide_at(&t, 9000),
        Decision::Done(Outcome::Ready {
            row_count: 9,
            via: ReadyVia::Complete
        })
    );
}

#[test]
fn pending_reschedules_on_the_backoff_and_writes_only_on_change() {
    let (delay, next, write) = reschedule(decide_at(&tick("Queued"), 2000));
    assert_eq!(delay, Duration::from_millis(2000));
    assert!(write, "the first status seen is a change");
    assert_eq!(next.last_status.as_deref(), Some("queued"));
    let again = tick_with(PollState { poll_count: 3, ..next }, " QUEUED", None);
    let (delay, _, write) = reschedule(decide_at(&again, 4000));
    assert_eq!(delay, Duration::from_millis(8000));
    assert!(!write, "same status: nothing to write");
    let (_, next, write) = reschedule(decide_at(&tick_with(again.state.clone(), "Processing", None), 4000));
    assert!(write);
    assert_eq!(next.last_status.as_deref(), Some("processing"));
}

#[test]
fn a_deferred_tick_waits_the_delay_of_a_run_still_running() {
    for poll_count in [1, 3, 9] {
        let unasked = Tick::new(state(poll_count), "QPP_R_key", true, true);
        let (delay, _, _) = reschedule(decide_at(&tick_with(state(poll_count), "Processing", None), 20_000));
        assert_eq!(deferred_delay(&unasked, &cfg(), at(20_000), 0.5), delay);
    }
}

/// A pending tick whose isRunning gate (if open) answered "running".
fn pending(poll_count: u32) -> Tick {
    let mut t = tick_with(state(poll_count), "Queued", None);
    t.is_running = Some(IsRunningObservation::Running);
    t
}

#[test]
fn the_budget_is_checked_after_the_status_and_at_its_boundaries() {
    assert_eq!(
        decide_at(&tick_with(state(500), "Complete", None), 10_000_000),
        Decision::Ask(Question::CheckRowset { first: true })
    );
    assert!(matches!(
        decide_at(&pending(5), 1_739_999),
        Decision::Done(Outcome::Reschedule { .. })
    ));
    assert_eq!(
        decide_at(&pending(5), 1_740_000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Timeout,
            message: "Query timed out after 29 minutes".into()
        })
    );
    assert!(matches!(
        decide_at(&pending(119), 60_000),
        Decision::Done(Outcome::Reschedule { .. })
    ));
    assert_eq!(
        decide_at(&pending(120), 60_000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Budget,
            message: "Poll budget exceeded".into()
        })
    );
    let one_minute = PollConfig {
        max_duration: Duration::from_secs(60),
        ..cfg()
    };
    assert_eq!(
        decide(&tick("Queued"), &one_minute, at(60_000), 0.5),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Timeout,
            message: "Query timed out after 1 minute".into()
        })
    );
    // Past the deadline, the gate's own checks still come first: they may find the run done.
    assert_eq!(
        decide_at(&tick_with(state(5), "Queued", None), 1_740_000),
        Decision::Ask(Question::CheckIsRunning)
    );
}

#[test]
fn a_transient_failure_reschedules_until_the_budget() {
    let mut t = Tick::new(state(3), "K", true, true);
    t.status = Some(StatusObservation::Unavailable);
    let (delay, next, write) = reschedule(decide_at(&t, 20_000));
    assert!(write);
    assert_eq!(next.transient_errors, 1);
    assert_eq!(delay, Duration::from_millis(8000));
    t.state = PollState {
        transient_errors: 50,
        ..state(60)
    };
    assert!(
        matches!(decide_at(&t, 900_000), Decision::Done(Outcome::Reschedule { .. })),
        "a long streak alone does not fail the run"
    );
    assert!(matches!(
        decide_at(&t, 1_740_000),
        Decision::Done(Outcome::Fail {
            reason: FailReason::Timeout,
            ..
        })
    ));
    let mut recovered = tick_with(t.state.clone(), "Queued", None);
    recovered.is_running = Some(IsRunningObservation::Running);
    let (_, next, write) = reschedule(decide_at(&recovered, 100_000));
    assert!(write, "the end of a streak is written");
    assert_eq!(next.transient_errors, 0);
}

#[test]
fn the_row_probe_is_for_temp_des_and_respects_its_gates() {
    let mut plain = tick("Processing");
    plain.temp_de = true;
    assert!(
        matches!(decide_at(&plain, 60_000), Decision::Done(Outcome::Reschedule { .. })),
        "a status not in doubt is the tick's one call"
    );
    let mut t = tick_with(state(1), "Processing", Some("1/16/2026 10:54:35 AM"));
    t.temp_de = true;
    assert!(
        matches!(decide_at(&t, 4999), Decision::Done(Outcome::Reschedule { .. })),
        "just below the minimum runtime: no probe"
    );
    assert_eq!(decide_at(&t, 5000), Decision::Ask(Question::ProbeRows));
    let mut target = t.clone();
    target.temp_de = false;
    assert_eq!(
        decide_at(&target, 60_000),
        Decision::Ask(Question::CheckIsRunning),
        "never for a target DE: isRunning alone"
    );

    t.probe = Some(ProbeObservation::Rows { count: 12 });
    assert_eq!(
        decide_at(&t, 5000),
        Decision::Done(Outcome::Ready {
            row_count: 12,
            via: ReadyVia::Probe
        })
    );
    t.probe = Some(ProbeObservation::NoSignal);
    t.is_running = Some(IsRunningObservation::Running);
    let (_, next, write) = reschedule(decide_at(&t, 5000));
    assert!(write);
    assert_eq!((next.probe_attempts, next.last_look_at), (1, Some(at(5000))));

    let mut later = tick_with(next, "Processing", Some("1/16/2026 10:54:35 AM"));
    later.temp_de = true;
    later.is_running = Some(IsRunningObservation::Running);
    assert!(
        matches!(decide_at(&later, 19_999), Decision::Done(Outcome::Reschedule { .. })),
        "just below the interval"
    );
    assert_eq!(decide_at(&later, 20_000), Decision::Ask(Question::ProbeRows));
}

#[test]
fn the_is_running_gate_opens_on_completed_date_or_when_stuck() {
    let early = tick_with(state(2), "Queued", Some("1/16/2026 10:54:35 AM"));
    assert!(matches!(
        decide_at(&early, 4999),
        Decision::Done(Outcome::Reschedule { .. })
    ));
    assert_eq!(decide_at(&early, 5000), Decision::Ask(Question::CheckIsRunning));
    let blank = tick_with(state(2), "Queued", Some("  "));
    assert!(
        matches!(decide_at(&blank, 60_000), Decision::Done(Outcome::Reschedule { .. })),
        "a blank CompletedDate is none"
    );
    let stuck = tick("Queued");
    assert!(matches!(
        decide_at(&stuck, 179_999),
        Decision::Done(Outcome::Reschedule { .. })
    ));
    assert_eq!(decide_at(&stuck, 180_000), Decision::Ask(Question::CheckIsRunning));
}

#[test]
fn a_stuck_run_is_looked_past_its_status_at_spaced_ticks() {
    let mut stuck = tick_with(state(10), "Queued", None);
    stuck.temp_de = true;
    // The first stuck look: probe, then isRunning, and the look is written.
    assert_eq!(decide_at(&stuck, 200_000), Decision::Ask(Question::ProbeRows));
    stuck.probe = Some(ProbeObservation::NoSignal);
    assert_eq!(decide_at(&stuck, 200_000), Decision::Ask(Question::CheckIsRunning));
    stuck.is_running = Some(IsRunningObservation::Running);
    let (_, looked, write) = reschedule(decide_at(&stuck, 200_000));
    assert!(write);
    assert_eq!(looked.last_look_at, Some(at(200_000)));
    // A quarter of its age later (at 266.7 s), not before: the status alone.
    let next = |ms| {
        let mut t = tick_with(looked.clone(), "Queued", None);
        t.temp_de = true;
        decide_at(&t, ms)
    };
    assert!(matches!(
        next(266_000),
        Decision::Done(Outcome::Reschedule { write: false, .. })
    ));
    assert_eq!(next(267_000), Decision::Ask(Question::ProbeRows));
    // A target DE's stuck run: isRunning alone, spaced the same way.
    let mut target = tick_with(state(10), "Queued", None);
    target.is_running = Some(IsRunningObservation::Running);
    let (_, looked, _) = reschedule(decide_at(&target, 400_000));
    let mut again = tick_with(looked, "Queued", None);
    assert!(matches!(
        decide_at(&again, 533_000),
        Decision::Done(Outcome::Reschedule { .. })
    ));
    assert_eq!(decide_at(&again, 534_000), Decision::Ask(Question::CheckIsRunning));
    // A not-running answer is confirmed at the next tick, whatever the spacing.
    again.is_running = Some(IsRunningObservation::NotRunning);
    let (_, first, _) = reschedule(decide_at(&again, 534_000));
    let confirm = tick_with(first, "Queued", None);
    assert_eq!(decide_at(&confirm, 549_000), Decision::Ask(Question::CheckIsRunning));
}

#[test]
fn a_missing_or_refused_object_id_is_recovered_once_per_tick() {
    let mut t = tick("Queued");
    t.has_object_id = false;
    assert_eq!(decide_at(&t, 200_000), Decision::Ask(Question::RecoverObjectId));
    t.recovery_tried = true;
    assert!(
        matches!(decide_at(&t, 200_000), Decision::Done(Outcome::Reschedule { .. })),
        "the recovered id is used next tick"
    );
    let mut bad = tick("Queued");
    bad.is_running = Some(IsRunningObservation::BadId);
    assert_eq!(decide_at(&bad, 200_000), Decision::Ask(Question::RecoverObjectId));
    bad.recovery_tried = true;
    assert!(matches!(
        decide_at(&bad, 200_000),
        Decision::Done(Outcome::Reschedule { .. })
    ));
}

#[test]
fn two_not_running_answers_a_gap_apart_lead_to_the_rowset() {
    let mut t = tick_with(state(2), "Queued", Some("1/16/2026 10:54:35 AM"));
    t.is_running = Some(IsRunningObservation::NotRunning);
    let (_, first, write) = reschedule(decide_at(&t, 6000));
    assert!(write);
    assert_eq!(
        (first.not_running_count, first.not_running_first_at),
        (1, Some(at(6000)))
    );

    let mut second = tick_with(first.clone(), "Queued", Some("x"));
    second.is_running = Some(IsRunningObservation::NotRunning);
    let (_, unchanged, write) = reschedule(decide_at(&second, 20_999));
    assert!(!write, "just below the gap: not counted");
    assert_eq!(unchanged.not_running_count, 1);
    assert_eq!(
        decide_at(&second, 21_000),
        Decision::Ask(Question::CheckRowset { first: true })
    );
    second.rowset = Some(RowsetObservation::Queryable { count: 5 });
    assert_eq!(
        decide_at(&second, 21_000),
        Decision::Done(Outcome::Ready {
            row_count: 5,
            via: ReadyVia::NotRunning
        })
    );
    second.rowset = Some(RowsetObservation::NotYet);
    let (_, next, _) = reschedule(decide_at(&second, 21_000));
    assert_eq!(
        (next.not_running_count, next.rowset_attempts),
        (2, 1),
        "the confirmations are kept with the attempt"
    );

    let mut running = tick_with(first, "Queued", Some("x"));
    running.is_running = Some(IsRunningObservation::Running);
    let (_, reset, write) = reschedule(decide_at(&running, 30_000));
    assert!(write);
    assert_eq!(
        (reset.not_running_count, reset.not_running_first_at),
        (0, None),
        "running resets the confirmations"
    );
    running.state = reset;
    let (_, _, write) = reschedule(decide_at(&running, 31_000));
    assert!(!write, "nothing to reset: nothing written");

    let mut silent = tick_with(state(2), "Queued", Some("x"));
    silent.is_running = Some(IsRunningObservation::Unavailable);
    let (_, same, _) = reschedule(decide_at(&silent, 6000));
    assert_eq!(same.not_running_count, 0, "no answer is no signal");
}

#[test]
fn without_a_task_id_the_gate_is_open_from_the_first_tick() {
    let mut t = Tick::new(state(1), "K", false, true);
    t.task_known = false;
    assert_eq!(
        decide_at(&t, 100),
        Decision::Ask(Question::CheckIsRunning),
        "no status check without a TaskID"
    );
    t.is_running = Some(IsRunningObservation::NotRunning);
    let (_, next, _) = reschedule(decide_at(&t, 100));
    assert_eq!(next.not_running_count, 1);
}

#[test]
fn one_confirmation_is_enough_when_configured() {
    let single = PollConfig {
        not_running_confirmations: 1,
        ..cfg()
    };
    let mut t = tick_with(state(2), "Queued", Some("x"));
    t.is_running = Some(IsRunningObservation::NotRunning);
    assert_eq!(
        decide(&t, &single, at(6000), 0.5),
        Decision::Ask(Question::CheckRowset { first: true })
    );
}

mod properties;
