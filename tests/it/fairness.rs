//! Tenants at MCE's real pace: a tenant MCE throttles slows only itself.

use std::time::{Duration, Instant};

use mce_sim::{Load, Scenario};

use crate::support::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_tenant_slows_only_itself() {
    // A small global ceiling, so that a throttled tenant could fill it.
    let system = System::start_with(&[("POLL_CONCURRENCY", "8"), ("TENANT_CONCURRENCY_INITIAL", "4")]).await;
    let other = system.add_tenant("510000999");
    system
        .sim
        .script("FROM Busy", Scenario::completes_after(Duration::from_secs(4), 1));
    let busy: Vec<_> = futures::future::join_all((0..30).map(|_| system.submit("SELECT A FROM Busy", None))).await;
    tests::wait_for("every busy run polling", Duration::from_secs(60), || async {
        for id in &busy {
            if system.run(*id).await.is_none_or(|r| r.task_id.is_none()) {
                return false;
            }
        }
        true
    })
    .await;
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
    let metrics = system.worker.as_ref().unwrap().http_get("/metrics").await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "shell_query_tenants_throttled 1"),
        "the busy tenant is held below its start ({} bytes of metrics):\n{}",
        metrics.len(),
        metrics
            .lines()
            .filter(|l| l.contains("throttled"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The throttled tenant still gets through, at MCE's pace.
    for id in &busy {
        assert_eq!(
            system.wait_terminal(*id, Duration::from_secs(120)).await.status,
            "ready"
        );
    }
}
