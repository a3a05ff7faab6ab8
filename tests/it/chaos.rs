//! Whole batches of runs while things break (docs/RELIABILITY.md): the
//! worker SIGKILLed at random moments, nats-server killed and restarted,
//! PostgreSQL unreachable for a while, MCE failing a share of its calls.
//! After each batch: every run is terminal with its expected outcome, MCE
//! started each query once, no QueryDefinition is left once the sweeper has
//! passed, and the DLQ holds exactly the bad inputs.
//!
//! The random moments and faults come from a seed: `CHAOS_SEED=<n>` replays
//! a run; a failing test prints its seed.

use std::collections::BTreeSet;
use std::time::Duration;

use mce_sim::{Chaos, ChaosKind, Scenario, SimConfig};
use shell_query_core::naming::temp_de_key;
use tests::{Relay, wait_for};
use uuid::Uuid;

use crate::support::{PREFIX, System};

pub(crate) const BATCH_DEADLINE: Duration = Duration::from_secs(150);

/// Quick reconciling and sweeping, and short ack waits so that a delivery
/// cut short by a crash comes back in seconds.
pub(crate) const SETTINGS: &[(&str, &str)] = &[
    ("EXECUTE_ACK_WAIT_MS", "4000"),
    ("POLL_ACK_WAIT_MS", "4000"),
    ("RECONCILER_INTERVAL_MS", "2000"),
    ("RECONCILER_GRACE_MS", "6000"),
    ("SWEEPER_INTERVAL_MS", "1000"),
    ("SWEEPER_MIN_AGE_MS", "4000"),
];

/// The batch settings with MCE deadlines short enough for slow answers to
/// time out.
fn fault_settings() -> Vec<(&'static str, &'static str)> {
    SETTINGS
        .iter()
        .copied()
        .chain([("MCE_TIMEOUT_MS", "800"), ("MCE_ROWSET_TIMEOUT_MS", "800")])
        .collect()
}

pub(crate) fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_128)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    Ready,
    Failed,
    /// Canceled once MCE has started it.
    Canceled,
    /// Not an execute message at all: DLQ.
    Invalid,
}

pub(crate) struct Planned {
    pub(crate) id: Uuid,
    pub(crate) expect: Expect,
}

/// The scenarios a batch mixes; the marker in the SQL picks one.
fn script(system: &System) {
    let sim = &system.sim;
    sim.script("Quick", Scenario::completes_after(Duration::from_secs(1), 3));
    sim.script("Steady", Scenario::completes_after(Duration::from_secs(4), 5));
    sim.script(
        "Broken",
        Scenario::fails_after(Duration::from_secs(2), "Invalid column name 'Nope'."),
    );
    sim.script("Lengthy", Scenario::completes_after(Duration::from_secs(600), 1));
}

/// Submits `n` runs (ready, failed and canceled ones) and `invalid` messages
/// that are not execute messages.
pub(crate) async fn submit_batch(system: &System, n: usize, invalid: usize) -> Vec<Planned> {
    script(system);
    let mut planned = Vec::new();
    for i in 0..n {
        let (marker, expect) = match i % 7 {
            0 | 3 | 5 => ("Quick", Expect::Ready),
            1 | 4 => ("Steady", Expect::Ready),
            2 => ("Broken", Expect::Failed),
            _ => ("Lengthy", Expect::Canceled),
        };
        let id = system.submit(&format!("SELECT {marker}{i} FROM [Batch]"), None).await;
        planned.push(Planned { id, expect });
    }
    for _ in 0..invalid {
        let id = Uuid::new_v4();
        system
            .publish_raw(format!("{PREFIX}.execute.{id}"), "this is not JSON".into())
            .await;
        planned.push(Planned {
            id,
            expect: Expect::Invalid,
        });
    }
    planned
}

/// Cancels every run meant to be canceled that MCE has started and that is
/// not canceled yet; true when all are.
pub(crate) async fn cancel_started(system: &System, planned: &[Planned], sent: &mut BTreeSet<Uuid>) -> bool {
    let mut all = true;
    for p in planned.iter().filter(|p| p.expect == Expect::Canceled) {
        if sent.contains(&p.id) {
            continue;
        }
        let Some(run) = system.run(p.id).await else {
            all = false;
            continue;
        };
        if matches!(run.status.as_str(), "ready" | "failed" | "canceled") {
            continue; // ended without its cancel: check_batch reports it
        }
        all = false;
        if run.task_id.is_some() {
            system.cancel(p.id).await;
            sent.insert(p.id);
        }
    }
    all
}

/// Sends the cancels as their runs start, until every run is terminal.
pub(crate) async fn finish(system: &System, planned: &[Planned], sent: &mut BTreeSet<Uuid>, seed: u64) {
    let deadline = std::time::Instant::now() + BATCH_DEADLINE;
    loop {
        let cancels_done = cancel_started(system, planned, sent).await;
        let mut open = 0;
        for p in planned {
            let terminal = system
                .run(p.id)
                .await
                .is_some_and(|r| matches!(r.status.as_str(), "ready" | "failed" | "canceled"));
            open += usize::from(!terminal);
        }
        if open == 0 && cancels_done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: {open} runs still open after {BATCH_DEADLINE:?}; worker log:\n{}",
            system.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every promise a batch must keep once it is over.
pub(crate) async fn check_batch(system: &System, planned: &[Planned], seed: u64) {
    for p in planned {
        let run = system.run(p.id).await.expect("every run has a row");
        let want = match p.expect {
            Expect::Ready => "ready",
            Expect::Failed | Expect::Invalid => "failed",
            Expect::Canceled => "canceled",
        };
        let performs = system.sim.performs_into(&temp_de_key(p.id));
        let error = match run.status.as_str() {
            "failed" => system.error_message(p.id).await,
            _ => String::new(),
        };
        if run.status != want {
            panic!(
                "seed {seed}: run {} ({:?}) is {} {error}; worker log:\n{}",
                p.id,
                p.expect,
                run.status,
                system.log()
            );
        }
        let want_performs = usize::from(p.expect != Expect::Invalid);
        assert_eq!(
            performs, want_performs,
            "seed {seed}: run {} ({:?}) was started {performs} times in MCE",
            p.id, p.expect
        );
        if p.expect == Expect::Ready {
            assert!(run.row_count.unwrap_or(0) > 0, "seed {seed}: run {} has no rows", p.id);
        }
    }
    let expected_dlq: BTreeSet<String> = planned
        .iter()
        .filter(|p| p.expect == Expect::Invalid)
        .map(|p| format!("{PREFIX}.dlq.execute.{}", p.id))
        .collect();
    let dlq = system.dlq().await;
    assert!(
        dlq.iter().all(|(_, reason)| !reason.is_empty()),
        "every DLQ copy says why: {dlq:?}"
    );
    let dlq_subjects: BTreeSet<String> = dlq.into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        dlq_subjects,
        expected_dlq,
        "seed {seed}: the DLQ holds exactly the bad inputs; worker log:\n{}",
        system.log()
    );
    // Every run's terminal event was published exactly once and says what
    // the row says (an event a crash left owed is published by the next
    // delivery or the reconciler, after its grace).
    for p in planned {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while system.run(p.id).await.is_none_or(|r| r.terminal_event_at.is_none()) {
            assert!(
                std::time::Instant::now() < deadline,
                "seed {seed}: the terminal event of run {} was not confirmed in 30 s; worker log:\n{}",
                p.id,
                system.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let run = system.run(p.id).await.expect("every run has a row");
        let events = system.events(p.id).await;
        let terminal: Vec<_> = events
            .iter()
            .filter(|e| matches!(e.status.as_str(), "ready" | "failed" | "canceled"))
            .collect();
        assert_eq!(
            terminal.len(),
            1,
            "seed {seed}: run {} has terminal events {:?}",
            p.id,
            crate::support::statuses(&events)
        );
        let event = terminal[0];
        assert_eq!(event.status.as_str(), run.status, "seed {seed}: run {}", p.id);
        match run.status.as_str() {
            "ready" => assert_eq!(
                event.row_count,
                run.row_count.map(i64::from),
                "seed {seed}: run {}",
                p.id
            ),
            "failed" => assert_eq!(
                event.error_message.as_deref(),
                Some(system.error_message(p.id).await.as_str()),
                "seed {seed}: run {}",
                p.id
            ),
            _ => {}
        }
    }
    // nats.conf allows the service everything it does: a refusal would
    // stall it silently (a denied request waits out its timeout).
    assert!(
        !system.log().contains("Permissions Violation"),
        "seed {seed}: NATS refused the service something; worker log:\n{}",
        system.log()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !system.sim.query_definitions().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: QueryDefinitions left after the sweeper's passes: {:?}\nworker log:\n{}",
            system.sim.query_definitions(),
            system.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_random_sigkills() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut system = System::start_with(SETTINGS).await;
    let planned = submit_batch(&system, 21, 2).await;
    let mut sent = BTreeSet::new();
    for _ in 0..8 {
        // The random moment of the next crash: a schedule, not a wait.
        tokio::time::sleep(Duration::from_millis(rng.u64(200..2500))).await;
        cancel_started(&system, &planned, &mut sent).await;
        system.kill_worker();
        system.start_worker().await;
    }
    finish(&system, &planned, &mut sent, seed).await;
    check_batch(&system, &planned, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_nats_server_restart() {
    let seed = seed();
    let mut system = System::start_with(SETTINGS).await;
    let planned = submit_batch(&system, 14, 1).await;
    wait_for("some runs to start in MCE", Duration::from_secs(60), || async {
        system.sim.count("soap:Perform:QueryDefinition") >= 3
    })
    .await;

    system.nats.stop();
    wait_for("/readyz to report the outage", Duration::from_secs(20), || async {
        !system.worker.as_ref().expect("a worker").ready().await
    })
    .await;
    system.nats.resume().await;
    wait_for("/readyz to recover", Duration::from_secs(30), || async {
        system.worker.as_ref().expect("a worker").ready().await
    })
    .await;

    let mut sent = BTreeSet::new();
    finish(&system, &planned, &mut sent, seed).await;
    check_batch(&system, &planned, seed).await;
}

/// Poll deliveries the worker has handled (its `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_nats_server_waits_for_it() {
    let mut system = System::start().await;
    system.kill_worker();
    system.nats.stop();
    let mut env = system.env();
    env.extend(system.extra.iter().cloned());

    // Started with no server to talk to: alive, not ready, waiting.
    let worker = tests::Worker::spawn(&env);
    wait_for(
        "/healthz to answer while NATS is down",
        Duration::from_secs(30),
        || async { worker.http_get("/healthz").await.is_some_and(|b| b == "starting") },
    )
    .await;
    assert!(!worker.ready().await, "/readyz is not 200 while starting");
    let why = worker.http_get("/readyz").await.unwrap_or_default();
    assert!(why.starts_with("starting"), "{why}");
    wait_for("the worker to say it waits", Duration::from_secs(30), || async {
        worker.log().contains("NATS is not ready yet")
    })
    .await;

    // A worker whose STARTUP_TIMEOUT_MS runs out exits 1, saying why.
    let mut short = env.clone();
    short.push(("STARTUP_TIMEOUT_MS".into(), "1500".into()));
    let mut impatient = tests::Worker::spawn(&short);
    assert_eq!(impatient.wait_exit(Duration::from_secs(30)).await, Some(1));
    assert!(
        impatient
            .log()
            .contains("NATS was not ready within STARTUP_TIMEOUT_MS (1500 ms)"),
        "{}",
        impatient.log()
    );

    // The server comes up: the first worker declares, becomes ready, works.
    system.nats.resume().await;
    wait_for("/readyz once NATS is up", Duration::from_secs(60), || async {
        worker.ready().await
    })
    .await;
    system.worker = Some(worker);
    let id = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
}

/// The default `POLL_ACK_WAIT_MS` (a third of it between "in progress"
/// acknowledgements) brings back a tick cut short by SIGKILL within 15 s of
/// a replica being up, rather than a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_status_call_was_cut_by_sigkill_is_checked_again_within_15_s() {
    let mut system = System::start().await;
    system
        .sim
        .script("Long", Scenario::completes_after(Duration::from_secs(300), 3));
    let id = system.submit("SELECT Long FROM X", None).await;
    let task = system.started(id).await;
    wait_for("the run's first status check", Duration::from_secs(60), || async {
        !system.status_checks(&task).is_empty()
    })
    .await;
    // The next status call is answered only after a minute: the worker is
    // killed while it waits for it.
    let mut hang = mce_sim::Fault::new("soap:Retrieve:AsyncActivityStatus", 0, 1);
    hang.delay = Duration::from_secs(60);
    system.sim.inject(hang);
    let before = system.status_checks(&task).len();
    wait_for("a status call in flight", Duration::from_secs(60), || async {
        system.status_checks(&task).len() > before
    })
    .await;
    system.kill_worker();
    system.start_worker().await;
    let up = std::time::Instant::now();
    wait_for("the run checked again", Duration::from_secs(15), || async {
        system.status_checks(&task).iter().any(|at| *at > up)
    })
    .await;
    let row = system.run(id).await.expect("the row");
    assert_eq!(row.status, "running", "the run goes on");
}

async fn poll_ticks(system: &System) -> u64 {
    let worker = system.worker.as_ref().expect("a worker");
    worker.metric("shell_query_poll_ticks_total ").await.unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_database_outage() {
    let seed = seed();
    // Polls at most 3 s apart, so that ticks meet the outage whatever
    // moment it starts (by default a tick may wait 30 s).
    let settings: Vec<(&str, &str)> = SETTINGS
        .iter()
        .copied()
        .chain([("POLL_MAX_DELAY_MS", "3000")])
        .collect();
    let mut system = System::start_with(&settings).await;
    // The worker reaches PostgreSQL through a relay the test can cut.
    let target = system.database_url.clone();
    let host = target
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the database URL")
        .to_string();
    let relay = Relay::start(&host).await;
    let proxied = target.replacen(&host, &format!("127.0.0.1:{}", relay.port), 1);
    system.kill_worker();
    system.extra.push(("DATABASE_URL".into(), proxied));
    system.start_worker().await;

    let planned = submit_batch(&system, 14, 1).await;
    // Cut while the lengthy runs poll: they poll until canceled (after the
    // outage), so ticks keep meeting it whatever the others do.
    wait_for("the lengthy runs to poll", Duration::from_secs(60), || async {
        let mut polling = 0;
        for p in planned.iter().filter(|p| p.expect == Expect::Canceled) {
            polling += usize::from(system.run(p.id).await.is_some_and(|r| r.task_id.is_some()));
        }
        polling == 2
    })
    .await;
    let mut polling = 0;
    for p in &planned {
        polling += u64::from(
            system
                .run(p.id)
                .await
                .is_some_and(|r| r.task_id.is_some() && !matches!(r.status.as_str(), "ready" | "failed" | "canceled")),
        );
    }

    relay.cut();
    wait_for("/readyz to report the outage", Duration::from_secs(20), || async {
        !system.worker.as_ref().expect("a worker").ready().await
    })
    .await;
    // The outage lasts until the runs polling at the cut have met it twice
    // each, on average. A tick meets it for up to 5 s (the pool's acquire
    // timeout), then waits up to 3.6 s: 2 ticks take up to about 18 s.
    let ticks = poll_ticks(&system).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while poll_ticks(&system).await < ticks + 2 * polling {
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: {} poll ticks of {polling} polling runs met the outage in 60 s:\n{}",
            poll_ticks(&system).await - ticks,
            system.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!system.worker.as_ref().expect("a worker").ready().await);
    relay.restore();
    wait_for("/readyz to recover", Duration::from_secs(30), || async {
        system.worker.as_ref().expect("a worker").ready().await
    })
    .await;

    let mut sent = BTreeSet::new();
    finish(&system, &planned, &mut sent, seed).await;
    check_batch(&system, &planned, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_mce_faults_at_a_rate() {
    let seed = seed();
    let settings = fault_settings();
    let system = System::start_with_sim(SimConfig::default(), &settings).await;
    system.sim.chaos(Some(Chaos {
        seed,
        rate: 0.12,
        slow: Duration::from_millis(1500),
        kinds: Vec::new(),
    }));
    // Batches until the faults mean something (at least 20, of 5 kinds or
    // more): how many calls a batch makes varies with the faults drawn.
    let (mut planned, mut sent) = (Vec::new(), BTreeSet::new());
    for _ in 0..MCE_FAULT_BATCHES {
        let batch = submit_batch(&system, 14, 1).await;
        finish(&system, &batch, &mut sent, seed).await;
        planned.extend(batch);
        let faults = system.sim.chaos_counts();
        if faults.len() >= 5 && faults.values().sum::<u32>() >= 20 {
            break;
        }
    }
    let faults = system.sim.chaos_counts();
    // The sweeper's pass is checked without faults: it has its own tests.
    system.sim.chaos(None);
    check_batch(&system, &planned, seed).await;
    assert!(
        faults.len() >= 5 && faults.values().sum::<u32>() >= 20,
        "seed {seed}: too few faults in {MCE_FAULT_BATCHES} batches to mean anything: {faults:?}"
    );
}

/// The most batches the MCE fault test sends to meet enough faults.
const MCE_FAULT_BATCHES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_fails_the_run_once_and_clearly() {
    let system = System::start().await;
    let user = Uuid::new_v4();
    system.add_user(user, "a-refresh-token-mce-revoked");
    let tokens_before = system.sim.count("token");
    let id = system.submit_as(user, "SELECT Email FROM [Batch]").await;
    let run = system.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(run.status, "failed");
    assert_eq!(
        system.error_message(id).await,
        "Marketing Cloud session expired. Please re-authenticate."
    );
    let refused = system.sim.count("token") - tokens_before;
    assert_eq!(refused, 1, "the refused grant is not retried");
    assert_eq!(system.sim.performs_into(&temp_de_key(id)), 0);
}

/// One kind of MCE failure at a time, on every call Perform included, at
/// the rates a bad day brings: 20 % 5xx, 15 % 429, 10 % cut connections.
/// Every run still ends as planned, and MCE ran each query exactly once:
/// an unconfirmed Perform is recovered (isRunning, then a second Perform
/// only where it is harmless), never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ends_as_planned_under_each_kind_of_mce_fault_perform_included() {
    let seed = seed();
    let settings = fault_settings();
    // A 5xx on a create or on Perform fails that delivery (MCE may have
    // acted, so it is not retried in the call), and each execute delivery
    // makes three such calls: at 20 % one delivery fails with odds 1 - 0.8³
    // ≈ 49 %, all five of a run with ≈ 2.8 %, and a batch of ten planned
    // `ready` runs ended with one failed about one time in four. At 10 %:
    // 27 % a delivery, 0.14 % a run, about 1.4 % a batch.
    for (kind, rate) in [
        (ChaosKind::ServerError, 0.10),
        (ChaosKind::RateLimitedSeconds, 0.15),
        (ChaosKind::Dropped, 0.10),
    ] {
        let system = System::start_with_sim(SimConfig::default(), &settings).await;
        system.sim.chaos(Some(Chaos {
            seed,
            rate,
            slow: Duration::from_millis(1500),
            kinds: vec![kind],
        }));
        let planned = submit_batch(&system, 10, 0).await;
        let mut sent = BTreeSet::new();
        finish(&system, &planned, &mut sent, seed).await;
        let faults = system.sim.chaos_counts();
        system.sim.chaos(None);
        check_batch(&system, &planned, seed).await;
        assert!(
            faults.get(&kind).copied().unwrap_or(0) >= 3,
            "seed {seed}: too few {kind:?} faults to mean anything: {faults:?}"
        );
    }
}
