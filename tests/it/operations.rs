//! What operators see: metrics, graceful shutdown, logs free of secrets.

use std::time::Duration;

use mce_sim::Scenario;

use crate::support::{REFRESH_TOKEN, System};

const MINUTE: Duration = Duration::from_secs(60);

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// The levels of the worker's JSON log lines, and the lines below INFO.
fn below_info(log: &str) -> (usize, Vec<&str>) {
    let levels: Vec<(&str, String)> = log
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((l, v["level"].as_str()?.to_string()))
        })
        .collect();
    let below = levels
        .iter()
        .filter(|(_, level)| level == "DEBUG" || level == "TRACE")
        .map(|(l, _)| *l)
        .collect();
    (levels.len(), below)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_log_level_writes_nothing_below_info() {
    // RUST_LOG unset (as in production), then RUST_LOG=info: a run each.
    let mut system = System::start_with(&[("RUST_LOG", "")]).await;
    for rust_log in ["", "info"] {
        if !rust_log.is_empty() {
            system.extra = vec![("RUST_LOG".into(), rust_log.into())];
            system.start_worker().await;
        }
        let id = system.submit("SELECT Email FROM X", None).await;
        assert_eq!(system.wait_terminal(id, MINUTE).await.status, "ready");
        let log = system.worker().log();
        let (lines, below) = below_info(&log);
        assert!(
            log.contains("shell-query-worker running"),
            "RUST_LOG={rust_log:?}: the INFO lines are written:\n{log}"
        );
        assert!(lines > 0, "RUST_LOG={rust_log:?}: the log is JSON lines");
        assert!(
            below.is_empty(),
            "RUST_LOG={rust_log:?}: {} of {lines} lines below INFO, the first:\n{}",
            below.len(),
            below.iter().take(5).copied().collect::<Vec<_>>().join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let mut system = System::start().await;
    system
        .sim
        .script("Bad", Scenario::fails_after(Duration::from_millis(500), "Nope"));
    let good = system.submit("SELECT Email FROM X", None).await;
    let bad = system.submit("SELECT Bad FROM X", None).await;
    assert_eq!(system.wait_terminal(good, MINUTE).await.status, "ready");
    assert_eq!(system.wait_terminal(bad, MINUTE).await.status, "failed");
    let text = system.worker().http_get("/metrics").await.expect("/metrics answers");
    assert_eq!(
        metric(&text, r#"shell_query_runs_total{outcome="ready",reason="complete"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"shell_query_runs_total{outcome="failed",reason="mce_error"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"shell_query_mce_calls_total{operation="perform",result="ok"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, r#"shell_query_token_refreshes_total{result="ok"}"#),
        Some(1.0)
    );
    let ticks = metric(&text, "shell_query_poll_ticks_total").unwrap();
    let status_calls = system.sim.count("soap:Retrieve:AsyncActivityStatus") as f64;
    assert!(
        ticks >= status_calls,
        "every status call came from a tick: {ticks} < {status_calls}"
    );
    assert_eq!(
        metric(&text, r#"shell_query_run_duration_seconds_count{outcome="ready"}"#),
        Some(1.0)
    );
    assert!(text.contains("# TYPE shell_query_run_duration_seconds histogram"));
    assert!(
        metric(
            &text,
            r#"shell_query_consumer_pending{consumer="poll",kind="ack_pending"}"#
        )
        .is_some(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_0_and_loses_nothing() {
    let mut system = System::start().await;
    system
        .sim
        .script("Term", Scenario::completes_after(Duration::from_secs(5), 9));
    let ids = [
        system.submit("SELECT Term FROM X", None).await,
        system.submit("SELECT Term FROM Y", None).await,
    ];
    tests::wait_for("polling to begin", MINUTE, || async {
        system.sim.count("soap:Retrieve:AsyncActivityStatus") >= 2
    })
    .await;
    let worker = system.worker();
    worker.terminate();
    // The drain deadline is 25 s (below Kubernetes' default 30 s grace).
    let code = worker.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", system.log());
    assert!(system.log().contains("shutting down"));
    system.start_worker().await;
    for id in ids {
        let run = system.wait_terminal(id, MINUTE).await;
        assert_eq!(
            (run.status.as_str(), run.row_count),
            ("ready", Some(9)),
            "{}",
            system.log()
        );
    }
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_carry_sql_text_or_tokens() {
    let system = System::start().await;
    let secret_sql = "SELECT Email AS ThisIsTheSecretSqlText FROM [Private_DE] WHERE Salary > 123456";
    system
        .sim
        .script("Salary", Scenario::fails_after(Duration::from_millis(500), "boom"));
    let id = system.submit(secret_sql, None).await;
    system.wait_terminal(id, MINUTE).await;
    let ok = system
        .submit("SELECT Email AS AnotherSecretColumn FROM [Private_DE]", None)
        .await;
    system.wait_terminal(ok, MINUTE).await;
    let log = system.log();
    assert!(log.len() > 1000, "the worker logged something");
    for needle in [
        "ThisIsTheSecretSqlText",
        "Salary > 123456",
        "AnotherSecretColumn",
        REFRESH_TOKEN,
        "test-secret",
    ] {
        assert!(!log.contains(needle), "the log contains {needle:?}");
    }
    for token in system
        .sim
        .access_tokens()
        .into_iter()
        .chain(system.sim.refresh_tokens())
    {
        assert!(!log.contains(&token), "the log contains a token");
    }
    let events: String = system
        .events(id)
        .await
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    assert!(!events.contains("ThisIsTheSecretSqlText"), "events carry no SQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_base_urls_are_contacted() {
    // A trap the token answers name as the instance URLs.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}/", trap.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while trap.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let config = mce_sim::SimConfig {
        instance_url: trap_url,
        ..Default::default()
    };
    let system = System::start_with_sim(config, &[]).await;
    let id = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "ready");
    system.sim.expire_access_tokens();
    let again = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(again, MINUTE).await.status, "ready");
    assert!(system.sim.count("token") >= 2, "token answers were read");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no host from a response is contacted"
    );
}

/// A dashboard can trust `/metrics` from the start: every family has a
/// sample (counters at 0, histograms empty), but the two passes' success
/// times, which stay absent until a first pass (their alerts watch for the
/// absence); the runs by status and the oldest running run's age are
/// sampled from the database, and the NATS connection shows as up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_has_a_sample_from_the_start() {
    let mut system =
        System::start_with(&[("RECONCILER_INTERVAL_MS", "600000"), ("SWEEPER_INTERVAL_MS", "600000")]).await;
    let queued = system.insert_queued_run("SELECT A FROM X", &[]).await;
    let worker = system.worker();
    // Sampled every 15 s: the queued run is counted within one.
    tests::wait_for("the queued run counted", MINUTE, || async {
        let text = worker.http_get("/metrics").await.unwrap_or_default();
        metric(&text, r#"shell_query_runs{status="queued"}"#) >= Some(1.0)
    })
    .await;
    let text = worker.http_get("/metrics").await.expect("/metrics answers");
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() > 25, "{families:?}");
    let waiting_for_a_pass = [
        "shell_query_reconciler_last_success_timestamp_seconds",
        "shell_query_sweeper_last_success_timestamp_seconds",
    ];
    for family in families.iter().filter(|f| !waiting_for_a_pass.contains(f)) {
        assert!(
            text.lines().any(|l| !l.starts_with('#')
                && (l.starts_with(&format!("{family} "))
                    || l.starts_with(&format!("{family}{{"))
                    || l.starts_with(&format!("{family}_")))),
            "{family} has no sample:\n{text}"
        );
    }
    for zero in [
        r#"shell_query_runs_total{outcome="failed",reason="timeout"}"#,
        r#"shell_query_mce_calls_total{operation="perform",result="token_refused"}"#,
        r#"shell_query_isrunning_checks_total{answer="not_running"}"#,
        "shell_query_sweeper_deletions_total",
        "shell_query_detection_delay_seconds_count",
    ] {
        assert_eq!(metric(&text, zero), Some(0.0), "{zero}");
    }
    assert_eq!(metric(&text, "shell_query_nats_connected"), Some(1.0));
    assert_eq!(
        metric(&text, r#"shell_query_runs{status="running"}"#),
        Some(0.0),
        "{queued} is queued"
    );
    assert!(metric(&text, "shell_query_oldest_running_run_age_seconds").is_some());
}
