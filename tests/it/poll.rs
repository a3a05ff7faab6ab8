//! The poll decision tree end to end, one MCE behaviour per test, through
//! the real binary: the row, the MCE calls made (and not made), the events.

use std::time::{Duration, Instant};

use mce_sim::{PropertyShape, Scenario, StatusCase, StatusStyle};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::support::{System, statuses};

const MINUTE: Duration = Duration::from_secs(60);

fn calls(system: &System, action: &str, detail: &str) -> usize {
    system
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == action && c.detail == detail)
        .count()
}

async fn execute_sql(system: &System, sql: &str) {
    system
        .db
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql.to_string()))
        .await
        .expect("a test statement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_without_a_message_fails_with_the_status() {
    let system = System::start().await;
    system
        .sim
        .script("Fatal", Scenario::ends_with(Duration::from_secs(1), "FatalError", None));
    let id = system.submit("SELECT Fatal FROM [X]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed");
    assert_eq!(
        system.error_message(id).await,
        "MCE Query Execution Error (status=FatalError)"
    );
    system.wait_no_query_definitions().await;
    assert_eq!(system.sim.count("rest:rowset"), 0);
    system.wait_event(id, "failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_on_queued_with_an_early_completed_date_completes_through_two_not_running_answers() {
    let system = System::start_with(&[
        ("POLL_COMPLETED_DATE_TRIGGER_MIN_RUNTIME_MS", "1500"),
        ("POLL_NOT_RUNNING_MIN_GAP_MS", "1000"),
        ("POLL_ROW_PROBE_MIN_RUNTIME_MS", "600000"),
    ])
    .await;
    system.sim.script(
        "Stuck",
        Scenario {
            status_style: StatusStyle::QueuedForever,
            completed_date_early: true,
            ..Scenario::completes_after(Duration::from_secs(3), 7)
        },
    );
    let id = system.submit("SELECT Stuck FROM [X]", None).await;
    let task = system.started(id).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(7));

    let qd = run.query_definition_id.clone().unwrap();
    let all = system.sim.calls();
    let perform = all
        .iter()
        .find(|c| c.action == "soap:Perform:QueryDefinition")
        .unwrap()
        .at;
    let checks: Vec<_> = all
        .iter()
        .filter(|c| c.action == "rest:isrunning" && c.detail == qd)
        .collect();
    assert!(
        checks.len() >= 3,
        "running answers, then two not-running ones: {}",
        checks.len()
    );
    // CompletedDate was there from the first poll, yet isRunning waited for the minimum runtime.
    assert!(
        checks[0].at - perform >= Duration::from_millis(1500),
        "{:?}",
        checks[0].at - perform
    );
    assert!(system.status_checks(&task).len() >= 2);
    system.wait_event(id, "ready").await;
    let events = system.events(id).await;
    assert_eq!(&statuses(&events)[4..], ["fetching_results", "ready"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_refused_object_id_is_recovered_by_customer_key_and_persisted() {
    let system = System::start_with(&[
        ("POLL_COMPLETED_DATE_TRIGGER_MIN_RUNTIME_MS", "2000"),
        ("POLL_NOT_RUNNING_MIN_GAP_MS", "500"),
        ("POLL_ROW_PROBE_MIN_RUNTIME_MS", "600000"),
    ])
    .await;
    let stuck = |reject| Scenario {
        status_style: StatusStyle::QueuedForever,
        completed_date_early: true,
        reject_is_running: reject,
        ..Scenario::completes_after(Duration::from_secs(3), 2)
    };
    system.sim.script("Missing", stuck(0));
    system.sim.script("Refused", stuck(1));

    // The row lost its ObjectID: recovered by CustomerKey and written back.
    let missing = system.submit("SELECT Missing FROM [X]", None).await;
    system.started(missing).await;
    let object_id = system.run(missing).await.unwrap().query_definition_id.unwrap();
    execute_sql(
        &system,
        &format!("UPDATE shell_query_runs SET query_definition_id = NULL WHERE id = '{missing}'"),
    )
    .await;
    let run = system.wait_terminal(missing, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(
        run.query_definition_id.as_deref(),
        Some(object_id.as_str()),
        "the recovered ObjectID is persisted"
    );
    let key = shell_query_core::naming::query_key(missing);
    assert_eq!(
        calls(&system, "soap:Retrieve:QueryDefinition", &key),
        2,
        "one lookup before create, one recovery"
    );
    assert!(calls(&system, "rest:isrunning", &object_id) >= 2);
    // The clean-up follows the row's change to `ready`.
    tests::wait_for("cleanup to use the recovered id", MINUTE, || async {
        system.sim.query_definitions().iter().all(|q| q.object_id != object_id)
    })
    .await;

    // isRunning answered 400: the ObjectID is looked up by CustomerKey, then used.
    let refused = system.submit("SELECT Refused FROM [X]", None).await;
    let run = system.wait_terminal(refused, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    let key = shell_query_core::naming::query_key(refused);
    assert_eq!(calls(&system, "soap:Retrieve:QueryDefinition", &key), 2);
    assert!(calls(&system, "rest:isrunning", run.query_definition_id.as_deref().unwrap()) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rowset_slow_to_become_queryable_is_retried_until_ready() {
    let system = System::start().await;
    system.sim.script(
        "Slow",
        Scenario {
            rowset_delay: Duration::from_millis(2500),
            rowset_not_ready_status: 409,
            ..Scenario::completes_after(Duration::from_secs(1), 3)
        },
    );
    let id = system.submit("SELECT Slow FROM [X]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(3));
    assert!(run.poll_rowset_attempts >= 1, "the attempts were recorded in the row");
    let key = shell_query_core::naming::temp_de_key(id);
    assert!(calls(&system, "rest:rowset", &key) >= 2);
    system.wait_event(id, "ready").await;
    let events = system.events(id).await;
    assert_eq!(
        statuses(&events).iter().filter(|s| **s == "fetching_results").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rowset_never_queryable_fails_with_the_reference_message() {
    let system = System::start_with(&[("POLL_ROWSET_READY_MAX_ATTEMPTS", "3")]).await;
    system.sim.script(
        "Never",
        Scenario {
            rowset_delay: Duration::from_secs(3600),
            ..Scenario::completes_after(Duration::from_secs(1), 3)
        },
    );
    let id = system.submit("SELECT Never FROM [X]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed", "{}", system.log());
    let key = shell_query_core::naming::temp_de_key(id);
    assert_eq!(
        system.error_message(id).await,
        format!("Data Extension \"{key}\" not queryable after 3 attempts")
    );
    assert_eq!(calls(&system, "rest:rowset", &key), 3);
    system.wait_no_query_definitions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duration_budget_fails_the_run_and_deletes_its_query_definition() {
    let system = System::start_with(&[("POLL_MAX_DURATION_MS", "2500")]).await;
    system
        .sim
        .script("Long", Scenario::completes_after(Duration::from_secs(600), 1));
    let id = system.submit("SELECT Long FROM [X]", None).await;
    let task = system.started(id).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed");
    assert_eq!(system.error_message(id).await, "Query timed out after 1 minute");
    system.wait_no_query_definitions().await;
    let checks = system.status_checks(&task);
    assert!(
        !checks.is_empty(),
        "the status was read before the timeout was declared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_canceled_mid_poll_stops_polling_within_one_interval() {
    let system = System::start().await;
    system
        .sim
        .script("Cancel", Scenario::completes_after(Duration::from_secs(600), 1));
    let id = system.submit("SELECT Cancel FROM [X]", None).await;
    let task = system.started(id).await;
    tests::wait_for("two status checks", MINUTE, || async {
        system.status_checks(&task).len() >= 2
    })
    .await;

    let canceled_at = Instant::now();
    execute_sql(
        &system,
        &format!("UPDATE shell_query_runs SET status = 'canceled' WHERE id = '{id}'"),
    )
    .await;
    system.wait_event(id, "canceled").await;
    let noticed = canceled_at.elapsed();
    assert!(
        noticed < Duration::from_millis(2000 * 12 / 10 + 1500),
        "noticed after {noticed:?}"
    );
    let checks_when_noticed = system.status_checks(&task).len();
    tests::wait_for("the poll message to be gone", MINUTE, || async {
        !system.poll_pending(id).await
    })
    .await;
    assert_eq!(
        system.status_checks(&task).len(),
        checks_when_noticed,
        "no status check after the cancel was seen"
    );

    let run = system.run(id).await.unwrap();
    assert_eq!(run.status, "canceled");
    assert!(run.completed_at.is_some(), "the clean-up was claimed");
    system.wait_no_query_definitions().await;
    let events = system.events(id).await;
    assert_eq!(statuses(&events).last(), Some(&"canceled"));
    assert_eq!(statuses(&events).iter().filter(|s| **s == "canceled").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_ticks_is_replaced_and_the_run_completes() {
    let mut system = System::start().await;
    system
        .sim
        .script("Survive", Scenario::completes_after(Duration::from_secs(6), 5));
    let id = system.submit("SELECT Survive FROM [X]", None).await;
    let task = system.started(id).await;
    tests::wait_for("two status checks", MINUTE, || async {
        system.status_checks(&task).len() >= 2
    })
    .await;
    system.kill_worker();
    let before = system.status_checks(&task).len();
    system.start_worker().await;
    let run = system.wait_terminal(id, Duration::from_secs(120)).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(5));
    assert!(
        system.status_checks(&task).len() > before,
        "the new worker took over the polling"
    );
    assert_eq!(
        system.sim.count("soap:Perform:QueryDefinition"),
        1,
        "the query was started once"
    );
    system.wait_no_query_definitions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_spellings_and_shapes_are_all_understood() {
    let system = System::start().await;
    let cases = [
        ("Upper", StatusCase::Upper, PropertyShape::Single),
        ("Padded", StatusCase::Padded, PropertyShape::Direct),
        ("Lower", StatusCase::Lower, PropertyShape::List),
    ];
    let mut ids = Vec::new();
    for (tag, case, shape) in cases {
        system.sim.script(
            tag,
            Scenario {
                status_case: case,
                property_shape: shape,
                lowercase_fields: true,
                ..Scenario::completes_after(Duration::from_millis(800), 4)
            },
        );
        ids.push(system.submit(&format!("SELECT {tag} FROM [X]"), None).await);
    }
    let failing = "Failing";
    system.sim.script(
        failing,
        Scenario {
            status_case: StatusCase::Padded,
            property_shape: PropertyShape::Direct,
            ..Scenario::ends_with(Duration::from_millis(800), "Error", Some("Bad column"))
        },
    );
    let failed = system.submit("SELECT Failing FROM [X]", None).await;
    for id in ids {
        let run = system.wait_terminal(id, MINUTE).await;
        assert_eq!(
            (run.status.as_str(), run.row_count),
            ("ready", Some(4)),
            "{}",
            system.log()
        );
    }
    assert_eq!(system.wait_terminal(failed, MINUTE).await.status, "failed");
    assert_eq!(system.error_message(failed).await, "Bad column");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_cannot_read_the_status_is_rescheduled_not_failed() {
    let system = System::start().await;
    system
        .sim
        .script("Flaky", Scenario::completes_after(Duration::from_secs(1), 2));
    // Five 503s: the first tick's call and all three of its retries fail.
    system
        .sim
        .inject(mce_sim::Fault::new("soap:Retrieve:AsyncActivityStatus", 503, 5));
    let id = system.submit("SELECT Flaky FROM [X]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(2));
    assert!(system.sim.count("soap:Retrieve:AsyncActivityStatus") >= 6);
    assert!(
        system.log().contains("status check failed"),
        "the failed tick was logged"
    );
}

/// The gap between the last two status checks of a run (the one that saw
/// it finish and the one before).
async fn last_gap(system: &System, id: Uuid) -> Duration {
    let task = system.started(id).await;
    assert_eq!(
        system.wait_terminal(id, MINUTE).await.status,
        "ready",
        "{}",
        system.log()
    );
    let checks = system.status_checks(&task);
    assert!(checks.len() >= 3, "{checks:?}");
    checks[checks.len() - 1] - checks[checks.len() - 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_schedule_looks_often_when_the_same_query_usually_ends() {
    let system = System::start_with(&[
        ("POLL_SCHEDULE", "adaptive"),
        ("POLL_MAX_DELAY_MS", "4000"),
        ("POLL_ROW_PROBE_MIN_RUNTIME_MS", "600000"),
    ])
    .await;
    system
        .sim
        .script("Twelve", Scenario::completes_after(Duration::from_secs(12), 4));
    // No history: the exponential schedule, 4 s apart by the end.
    let first = system.submit("SELECT Twelve FROM [X]", None).await;
    let gap = last_gap(&system, first).await;
    assert!(gap >= Duration::from_millis(3000), "{gap:?}");
    // The first run was measured from the start of polling to the look that
    // saw the end (12 s and up to one 4 s gap more).
    let run = system.run(first).await.expect("the first run");
    let measured = (run.completed_at.unwrap() - run.poll_started_at.unwrap())
        .to_std()
        .unwrap();
    // The same query again: around 12 s it looks every 5 % of the measured
    // duration (± 5 % jitter), plus the ticks' own time.
    let second = system.submit("SELECT Twelve FROM [X]", None).await;
    let gap = last_gap(&system, second).await;
    let step = measured.mul_f64(0.05 * 1.05);
    assert!(
        gap <= step + Duration::from_millis(250),
        "{gap:?} after a first run of {measured:?}"
    );
}

/// The row probe sees the rows of a query whose status never says
/// `Complete`: the run is ready, and like every other path it announces
/// `fetching_results` before `ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_probe_fast_path_announces_fetching_results() {
    let system = System::start_with(&[
        ("POLL_ROW_PROBE_MIN_RUNTIME_MS", "500"),
        ("POLL_ROW_PROBE_MIN_INTERVAL_MS", "500"),
    ])
    .await;
    system.sim.script(
        "Probed",
        Scenario {
            status_style: StatusStyle::QueuedForever,
            ..Scenario::completes_after(Duration::from_secs(1), 3)
        },
    );
    let id = system.submit("SELECT Probed FROM [X]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(3));
    system.wait_event(id, "ready").await;
    let events = statuses(&system.events(id).await);
    let fetching = events.iter().position(|s| *s == "fetching_results");
    let ready = events.iter().position(|s| *s == "ready");
    assert!(fetching.is_some() && fetching < ready, "{events:?}");
    assert!(
        system.log().contains("row_probe"),
        "the probe found it, not the status: {}",
        system.log()
    );
}
