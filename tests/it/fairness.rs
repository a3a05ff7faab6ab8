//! Tenants at MCE's real pace: a tenant MCE throttles slows only itself;
//! status checks that fall due together share one call, and an MCE that
//! refuses or half-answers that call still gets every run checked.

use std::time::{Duration, Instant};

use mce_sim::{Load, Scenario};

use crate::support::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_tenant_slows_only_itself() {
    // A small global ceiling, so that a throttled tenant could fill it; one
    // status call per tick (batched checks would keep it under its rate).
    let system = System::start_with(&[
        ("POLL_CONCURRENCY", "8"),
        ("TENANT_CONCURRENCY_INITIAL", "4"),
        ("STATUS_BATCH_WINDOW_MS", "0"),
    ])
    .await;
    let other = system.add_tenant("510000999");
    system
        .sim
        .script("FROM Busy", Scenario::completes_after(Duration::from_secs(4), 1));
    let busy: Vec<_> = futures::future::join_all((0..30).map(|_| system.submit("SELECT A FROM Busy", None))).await;
    for id in &busy {
        system.started(*id).await;
    }
    // From now on MCE answers in about 50 ms and lets the busy tenant's
    // business unit make 3 calls a second.
    system.sim.set_load(Load {
        latency: Some((Duration::from_millis(50), Duration::from_millis(200))),
        calls_per_second_of: [(system.mid.clone(), 3)].into(),
        ..Load::default()
    });
    tests::wait_for("MCE refusing the busy tenant", Duration::from_secs(30), || async {
        system.sim.throttled().get(&system.mid).is_some_and(|n| *n > 0)
    })
    .await;
    let worker = system.worker.as_ref().unwrap();
    tests::wait_for(
        "the busy tenant held below its start",
        Duration::from_secs(30),
        || async {
            let metrics = worker.http_get("/metrics").await.unwrap_or_default();
            metrics.lines().any(|l| l == "shell_query_tenants_throttled 1")
        },
    )
    .await;

    let started = Instant::now();
    let quick: Vec<_> =
        futures::future::join_all((0..5).map(|_| system.submit_for(&other, "SELECT A FROM Quick"))).await;
    for id in &quick {
        let run = system.wait_terminal(*id, Duration::from_secs(60)).await;
        assert_eq!(run.status, "ready", "worker log:\n{}", system.log());
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "the other tenant's runs took {took:?} while the busy one was throttled"
    );
    assert!(
        !system.sim.throttled().contains_key(&other.2),
        "the other tenant was never refused"
    );
    // The throttled tenant still gets through, at MCE's pace.
    for id in &busy {
        assert_eq!(
            system.wait_terminal(*id, Duration::from_secs(120)).await.status,
            "ready"
        );
    }
}

/// Batched status checks, every poll after the first 1 s apart exactly:
/// a batch's runs stay in step.
async fn batching_system() -> System {
    System::start_with(&[
        ("STATUS_BATCH_WINDOW_MS", "100"),
        ("POLL_INITIAL_DELAY_MS", "1000"),
        ("POLL_MAX_DELAY_MS", "1000"),
        ("POLL_JITTER_RANGE", "0"),
    ])
    .await
}

/// Submits `n` runs of one tenant at once and waits until all are ready.
async fn batch_of_runs(system: &System, n: usize) -> Vec<uuid::Uuid> {
    system
        .sim
        .script("FROM Batch", Scenario::completes_after(Duration::from_secs(3), 2));
    let ids: Vec<_> = futures::future::join_all((0..n).map(|_| system.submit("SELECT A FROM Batch", None))).await;
    for id in &ids {
        assert_eq!(
            system.wait_terminal(*id, Duration::from_secs(60)).await.status,
            "ready",
            "worker log:\n{}",
            system.log()
        );
    }
    ids
}

fn count(system: &System, action: &str) -> usize {
    system.sim.count(action)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_checks_falling_due_together_share_one_call() {
    let system = batching_system().await;
    let ids = batch_of_runs(&system, 12).await;
    let single = count(&system, "soap:Retrieve:AsyncActivityStatus");
    let requests = count(&system, "soap:Retrieve:AsyncActivityStatus:IN-request");
    let answered_in_batches = count(&system, "soap:Retrieve:AsyncActivityStatus:IN");
    assert!(requests > 0, "no IN request made");
    // Every run's checks, and far fewer calls than checks.
    let checks = single + answered_in_batches;
    assert!(checks >= 2 * ids.len(), "{checks} checks");
    assert!(
        (single + requests) * 2 <= checks,
        "{single} single calls and {requests} IN requests for {checks} status checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mce_that_refuses_in_filters_still_gets_every_run_checked() {
    let system = batching_system().await;
    system.sim.set_load(Load {
        refuse_in_filter: true,
        ..Load::default()
    });
    let ids = batch_of_runs(&system, 8).await;
    // Refused, remembered for the tenant: single calls from then on. A batch
    // that closed while the first refusal was on its way asks once more; a
    // later round (a poll period, 1 s, on) never does.
    let in_requests: Vec<Instant> = system
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action == "soap:Retrieve:AsyncActivityStatus:IN-request")
        .map(|c| c.at)
        .collect();
    let first = *in_requests.iter().min().expect("an IN request was made");
    assert!(
        in_requests
            .iter()
            .all(|at| at.duration_since(first) < Duration::from_millis(800)),
        "an IN request a round after the first refusal: {:?}",
        in_requests
            .iter()
            .map(|at| at.duration_since(first))
            .collect::<Vec<_>>()
    );
    let single: Vec<String> = system
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action == "soap:Retrieve:AsyncActivityStatus")
        .map(|c| c.detail)
        .collect();
    let tasks: Vec<String> = futures::future::join_all(ids.iter().map(|id| system.run(*id)))
        .await
        .into_iter()
        .map(|r| r.unwrap().task_id.unwrap())
        .collect();
    for task in &tasks {
        assert!(single.contains(task), "{task} was never checked alone");
    }
    assert!(
        system.log().contains("MCE refused a TaskID IN filter"),
        "the refusal is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_an_in_answer_leaves_out_is_asked_alone() {
    let system = batching_system().await;
    system.sim.set_load(Load {
        in_filter_leaves_out: 1,
        ..Load::default()
    });
    batch_of_runs(&system, 6).await;
    assert!(count(&system, "soap:Retrieve:AsyncActivityStatus:IN-request") > 0);
    // Each IN answer left one task out; that task was asked alone.
    assert!(
        count(&system, "soap:Retrieve:AsyncActivityStatus")
            >= count(&system, "soap:Retrieve:AsyncActivityStatus:IN-request")
    );
}

/// Group commit: a tenant whose calls wait for their place at its gate (one
/// call at a time here, each taking about 300 ms at MCE once every run is
/// polling) asks the checks that fall due meanwhile in the waiting call, so
/// its batches grow with the congestion: far fewer calls than checks, and
/// every run still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_congested_tenant_s_batches_grow_while_they_wait_for_a_place() {
    let system = System::start_with(&[
        ("TENANT_CONCURRENCY_INITIAL", "1"),
        ("TENANT_CONCURRENCY_MAX", "1"),
        ("POLL_SCHEDULE", "exponential"),
        ("POLL_INITIAL_DELAY_MS", "500"),
        ("POLL_MAX_DELAY_MS", "1000"),
        ("POLL_JITTER_RANGE", "0.5"),
        // No row probes: this counts status checks.
        ("POLL_ROW_PROBE_MIN_RUNTIME_MS", "600000"),
    ])
    .await;
    system
        .sim
        .script("FROM Crowd", Scenario::completes_after(Duration::from_secs(25), 2));
    let ids: Vec<_> = futures::future::join_all((0..24).map(|_| system.submit("SELECT A FROM Crowd", None))).await;
    for id in &ids {
        system.started(*id).await;
    }
    system.sim.clear_calls();
    system.sim.set_load(Load {
        latency: Some((Duration::from_millis(300), Duration::from_millis(600))),
        ..Load::default()
    });
    for id in &ids {
        assert_eq!(
            system.wait_terminal(*id, Duration::from_secs(120)).await.status,
            "ready",
            "worker log:\n{}",
            system.log()
        );
    }
    let single = count(&system, "soap:Retrieve:AsyncActivityStatus");
    let requests = count(&system, "soap:Retrieve:AsyncActivityStatus:IN-request");
    let checks = single + count(&system, "soap:Retrieve:AsyncActivityStatus:IN");
    eprintln!("{single} single calls and {requests} IN requests for {checks} status checks");
    assert!(checks >= 2 * ids.len(), "{checks} checks");
    assert!(
        (single + requests) * 5 < checks,
        "{single} single calls and {requests} IN requests for {checks} status checks"
    );
}

/// The most calls about status MCE held at once, from its own record.
fn most_status_calls_at_once(system: &System) -> usize {
    let mut edges: Vec<(Instant, i32)> = system
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action.starts_with("soap:Retrieve:AsyncActivityStatus") && !c.action.ends_with(":IN"))
        .flat_map(|c| [(c.at, 1), (c.at + c.latency, -1)])
        .collect();
    // An answer leaving at the instant another call arrives is not overlap.
    edges.sort_by_key(|(at, step)| (*at, *step));
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// One budget across replicas: two workers polling one business unit
/// together keep within the calls in flight one replica may make
/// (TENANT_CONCURRENCY_MAX 4), though each alone would make 4 and the runs
/// ask for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_keep_a_business_unit_within_one_budget() {
    let system = System::start_with(&[
        ("TENANT_CONCURRENCY_INITIAL", "4"),
        ("TENANT_CONCURRENCY_MAX", "4"),
        // One status call per check: the runs ask about 60 calls a second.
        ("STATUS_BATCH_WINDOW_MS", "0"),
        ("POLL_SCHEDULE", "exponential"),
        ("POLL_INITIAL_DELAY_MS", "400"),
        ("POLL_MAX_DELAY_MS", "400"),
        ("POLL_JITTER_RANGE", "0.2"),
    ])
    .await;
    let second = system.extra_worker().await;
    let first = system.worker.as_ref().unwrap();
    for worker in [first, &second] {
        tests::wait_for("each replica counting two", Duration::from_secs(30), || async {
            worker.metric("shell_query_replicas ").await == Some(2.0)
        })
        .await;
    }
    system
        .sim
        .script("FROM Shared", Scenario::completes_after(Duration::from_secs(12), 1));
    let ids: Vec<_> = futures::future::join_all((0..24).map(|_| system.submit("SELECT A FROM Shared", None))).await;
    for id in &ids {
        system.started(*id).await;
    }
    system.sim.clear_calls();
    system.sim.set_load(Load {
        latency: Some((Duration::from_millis(250), Duration::from_millis(300))),
        ..Load::default()
    });
    for id in &ids {
        assert_eq!(
            system.wait_terminal(*id, Duration::from_secs(120)).await.status,
            "ready",
            "worker log:\n{}",
            system.log()
        );
    }
    let (a, b) = (
        first.metric("shell_query_poll_ticks_total ").await.unwrap_or(0.0),
        second.metric("shell_query_poll_ticks_total ").await.unwrap_or(0.0),
    );
    assert!(a > 0.0 && b > 0.0, "both replicas polled: {a} and {b} ticks");
    let most = most_status_calls_at_once(&system);
    assert!(most >= 2, "the runs asked for calls at once: {most}");
    assert!(
        most <= 4,
        "{most} status calls at MCE at once from two replicas; one budget is 4"
    );
}
