//! Whatever MCE answers, in any order, a run ends within its budget, and a
//! tick asks each question at most once and ends in exactly one outcome.

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
struct Answers {
    status: StatusObservation,
    probe: ProbeObservation,
    is_running: IsRunningObservation,
    rowset: RowsetObservation,
    unit: f64,
}

fn status() -> impl Strategy<Value = StatusObservation> {
    let read = (
        prop::sample::select(vec![
            "Queued",
            " queued ",
            "Processing",
            "PENDING",
            "Complete",
            "Error",
            "FatalError",
            "Killed",
            "",
        ]),
        prop::option::weighted(0.1, Just("boom".to_string())),
        prop::option::of(Just("1/16/2026 10:54:35 AM".to_string())),
    )
        .prop_map(|(s, e, c)| StatusObservation::Read {
            status: Some(s.to_string()),
            error_msg: e,
            completed_date: c,
        });
    prop_oneof![8 => read, 2 => Just(StatusObservation::Unavailable)]
}

fn answers() -> impl Strategy<Value = Answers> {
    (
        status(),
        prop_oneof![9 => Just(ProbeObservation::NoSignal), 1 => (0i64..100).prop_map(|count| ProbeObservation::Rows { count })],
        prop::sample::select(vec![
            IsRunningObservation::Running,
            IsRunningObservation::NotRunning,
            IsRunningObservation::BadId,
            IsRunningObservation::Unavailable,
        ]),
        prop_oneof![Just(RowsetObservation::NotYet), (0i64..100).prop_map(|count| RowsetObservation::Queryable { count })],
        0.0f64..1.0,
    )
        .prop_map(|(status, probe, is_running, rowset, unit)| Answers { status, probe, is_running, rowset, unit })
}

/// Runs ticks until a terminal outcome, feeding answers in a cycle; the
/// persisted state changes only when a reschedule asks to write.
fn drive(cfg: &PollConfig, script: &[Answers], temp_de: bool, task_known: bool) -> (Outcome, u32, DateTime<Utc>) {
    let start = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut persisted = PollState::new(0, start);
    let mut now = start;
    let mut has_object_id = true;
    for tick_no in 1u32.. {
        let a = &script[(tick_no as usize - 1) % script.len()];
        let mut tick = Tick::new(
            PollState {
                poll_count: tick_no,
                ..persisted.clone()
            },
            "K",
            temp_de,
            has_object_id,
        );
        tick.task_known = task_known;
        let mut asked = Vec::new();
        let outcome = loop {
            let question = match decide(&tick, cfg, now, a.unit) {
                Decision::Ask(q) => q,
                Decision::Done(outcome) => break outcome,
            };
            let kind = std::mem::discriminant(&question);
            assert!(
                !asked.contains(&kind),
                "a question asked twice in one tick: {question:?}"
            );
            asked.push(kind);
            match question {
                Question::CheckStatus => tick.status = Some(a.status.clone()),
                Question::ProbeRows => tick.probe = Some(a.probe),
                Question::CheckIsRunning => tick.is_running = Some(a.is_running),
                Question::RecoverObjectId => {
                    tick.recovery_tried = true;
                    has_object_id = true;
                }
                Question::CheckRowset { .. } => tick.rowset = Some(a.rowset),
            }
        };
        match outcome {
            Outcome::Reschedule { delay, state, write } => {
                if write {
                    persisted = state;
                }
                persisted.poll_count = tick_no;
                now += chrono::Duration::from_std(delay).unwrap();
            }
            terminal => return (terminal, tick_no, now),
        }
        assert!(tick_no < 10_000, "no end in sight");
    }
    unreachable!()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_run_ends_within_its_budget(
        script in prop::collection::vec(answers(), 1..40),
        temp_de in any::<bool>(),
        task_known in prop::bool::weighted(0.8),
    ) {
        let cfg = super::cfg();
        let (outcome, ticks, ended) = drive(&cfg, &script, temp_de, task_known);
        prop_assert!(matches!(outcome, Outcome::Ready { .. } | Outcome::Fail { .. }), "{outcome:?}");
        // The count budget, plus the readiness attempts that follow completion.
        prop_assert!(ticks <= cfg.max_count + cfg.rowset_ready_max_attempts, "{ticks} ticks");
        // The duration budget, plus at most one delay past it.
        let longest = cfg.backoff.max.mul_f64(1.0 + cfg.backoff.jitter_range) + cfg.rowset_backoff.max.mul_f64(1.0 + cfg.rowset_backoff.jitter_range) * cfg.rowset_ready_max_attempts;
        let limit = chrono::Duration::from_std(cfg.max_duration + longest).unwrap();
        prop_assert!(ended - DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z").unwrap().with_timezone(&Utc) <= limit);
        if let Outcome::Ready { via: ReadyVia::Probe, .. } = outcome {
            prop_assert!(temp_de, "the probe never decides for a target DE");
        }
    }

    #[test]
    fn a_canceled_row_never_reschedules(answers in answers(), probe_due in any::<bool>()) {
        let mut tick = Tick::new(PollState::new(3, Utc::now()), "K", probe_due, true);
        tick.canceled = true;
        tick.status = Some(answers.status);
        tick.rowset = Some(answers.rowset);
        prop_assert_eq!(decide(&tick, &super::cfg(), Utc::now(), answers.unit), Decision::Done(Outcome::Canceled));
    }
}
