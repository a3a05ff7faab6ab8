//! Live benchmarks: tick throughput, runs in flight, and the
//! delayed-reschedule mechanism against BullMQ.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use mce_sim::{Scenario, SimConfig};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::infra::{Bench, PREFIX, cpu_seconds, rss_mib};
use crate::schedules::percentile;

/// Queries that outlast any benchmark.
pub(crate) fn endless() -> SimConfig {
    SimConfig {
        default_scenario: Scenario::completes_after(Duration::from_secs(6 * 3600), 1),
        ..SimConfig::default()
    }
}

/// Worker settings of the live benchmarks: a fixed poll delay (no jitter
/// unless asked), no budget, no isRunning gate; everything else default.
pub(crate) fn worker_settings(delay_ms: u64, jitter: f64) -> Vec<(&'static str, String)> {
    vec![
        ("POLL_SCHEDULE", "exponential".into()),
        ("POLL_INITIAL_DELAY_MS", delay_ms.to_string()),
        ("POLL_MAX_DELAY_MS", delay_ms.to_string()),
        ("POLL_JITTER_RANGE", jitter.to_string()),
        ("POLL_MAX_COUNT", "100000000".into()),
        ("POLL_MAX_DURATION_MS", (30u64 * 24 * 3_600_000).to_string()),
        ("POLL_STUCK_THRESHOLD_MS", (30u64 * 24 * 3_600_000).to_string()),
    ]
}

/// Puts `n` started runs in flight at once: rows as execute leaves them, the
/// queries running in the simulator, and one poll message each.
async fn seed_runs(bench: &Bench, js: &jetstream::Context, n: usize) -> anyhow::Result<Vec<(Uuid, String)>> {
    let tenant = (bench.tenant_id, bench.user_id, bench.mid.clone());
    let endless = Scenario::completes_after(Duration::from_secs(6 * 3600), 1);
    seed_runs_of(bench, js, &tenant, n, |_| endless.clone()).await
}

/// [`seed_runs`] for one tenant, each query following `scenario(i)`.
pub(crate) async fn seed_runs_of(
    bench: &Bench,
    js: &jetstream::Context,
    tenant: &(Uuid, Uuid, String),
    n: usize,
    scenario: impl Fn(usize) -> Scenario,
) -> anyhow::Result<Vec<(Uuid, String)>> {
    let runs = seed_rows_of(bench, tenant, n, scenario).await?;
    let ids: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
    publish_polls(js, &ids).await?;
    Ok(runs)
}

/// The rows and simulator tasks of [`seed_runs_of`], without poll messages.
pub(crate) async fn seed_rows_of(
    bench: &Bench,
    (tenant_id, user_id, mid): &(Uuid, Uuid, String),
    n: usize,
    scenario: impl Fn(usize) -> Scenario,
) -> anyhow::Result<Vec<(Uuid, String)>> {
    let mut runs = Vec::with_capacity(n);
    // A query of about 3 KB, stored encrypted as execute stores it.
    let sql_text = service::adapters::crypto::Cipher::parse(tests::ENCRYPTION_KEY)?.encrypt(&format!(
        "SELECT {} FROM [Subscribers]",
        vec!["EmailAddress"; 250].join(", ")
    ));
    for chunk in 0..n.div_ceil(1000) {
        let size = 1000.min(n - chunk * 1000);
        let mut values = Vec::with_capacity(size);
        for _ in 0..size {
            let id = Uuid::new_v4();
            let task = format!("bench-{}", id.simple());
            let de_key = shell_query_core::naming::temp_de_key(id);
            bench.sim.seed_task(&task, &de_key, scenario(runs.len()));
            // Execute created the run's empty temp DE: row probes find it.
            bench
                .sim
                .add_data_extension(&de_key, &de_key, &[mce_sim::SeedField::new("Id", "Number")], 0);
            values.push(format!(
                "('{id}', '{tenant}', '{user}', '{mid}', 'bench', '{sql}', 'running', '{task}', 'qd-{id}', '{qk}', '{de_key}', now(), now(), now())",
                sql = sql_text,
                tenant = tenant_id,
                user = user_id,
                mid = mid,
                qk = shell_query_core::naming::query_key(id),
            ));
            runs.push((id, task));
        }
        let sql = format!(
            "INSERT INTO shell_query_runs (id, tenant_id, user_id, mid, sql_text_hash, sql_text_encrypted, status, task_id, query_definition_id, query_customer_key, target_de_customer_key, poll_started_at, created_at, started_at) VALUES {}",
            values.join(", ")
        );
        bench
            .db
            .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await?;
    }
    Ok(runs)
}

/// One poll message per run, published as execute does, acknowledgements
/// awaited in batches.
pub(crate) async fn publish_polls(js: &jetstream::Context, ids: &[Uuid]) -> anyhow::Result<()> {
    for batch in ids.chunks(2000) {
        let mut acks = Vec::with_capacity(batch.len());
        for id in batch {
            let publish = jetstream::message::PublishMessage::build()
                .payload(serde_json::json!({ "runId": id }).to_string().into())
                .message_id(format!("poll:{id}"));
            acks.push(js.send_publish(format!("{PREFIX}.poll.{id}"), publish).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

pub async fn ticks(runs: usize, delay_ms: u64, seconds: u64) -> anyhow::Result<()> {
    let mut bench = Bench::start(endless()).await?;
    bench.start_worker(&worker_settings(delay_ms, 0.2)).await;
    let js = jetstream::new(bench.nats.admin().await);
    seed_runs(&bench, &js, runs).await?;
    let pid = bench.worker().pid();
    // Warm up: every run has ticked at least once.
    let want = runs as u64;
    bench
        .wait("every run to tick once", Duration::from_secs(120), || async {
            bench.ticks().await >= want
        })
        .await?;
    let (t0, c0, at0) = (bench.ticks().await, cpu_seconds(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (t1, c1, elapsed) = (bench.ticks().await, cpu_seconds(pid)?, at0.elapsed().as_secs_f64());
    let ticks = (t1 - t0) as f64;
    let demand = runs as f64 / (delay_ms as f64 / 1000.0);
    println!(
        "{runs} runs in flight, each due every {delay_ms} ms (±10 %): {demand:.0} ticks/s asked of one replica, measured over {seconds} s."
    );
    println!();
    println!("| ticks/s | CPU per tick | worker CPU | worker RSS | nats-server RSS | MCE calls per tick |");
    println!("|---|---|---|---|---|---|");
    // Requests MCE received: the per-task records of an IN call are not.
    let calls = bench.sim.calls().iter().filter(|c| !c.action.ends_with(":IN")).count() as f64;
    println!(
        "| {:.0} | {:.0} µs | {:.0} % of one core | {:.0} MiB | {:.0} MiB | {:.2} |",
        ticks / elapsed,
        1e6 * (c1 - c0) / ticks.max(1.0),
        100.0 * (c1 - c0) / elapsed,
        rss_mib(pid)?,
        bench.nats.pid().map(rss_mib).transpose()?.unwrap_or(0.0),
        calls / t1.max(1) as f64,
    );
    Ok(())
}

pub async fn inflight(runs: usize, step: usize, delay_ms: u64, seconds: u64) -> anyhow::Result<()> {
    let mut bench = Bench::start(endless()).await?;
    bench.start_worker(&worker_settings(delay_ms, 0.0)).await;
    let js = jetstream::new(bench.nats.admin().await);
    let pid = bench.worker().pid();
    println!(
        "Runs added {step} at a time up to {runs}; each is polled every {delay_ms} ms exactly (no jitter), so a tick's lateness is the gap between two status checks of its query minus {delay_ms} ms."
    );
    println!();
    println!("| runs in flight | worker RSS | nats-server RSS | poll consumer ack pending |");
    println!("|---|---|---|---|");
    let mut total = 0;
    while total < runs {
        let n = step.min(runs - total);
        seed_runs(&bench, &js, n).await?;
        total += n;
        let target = total as u64;
        bench
            .wait("every run to tick once", Duration::from_secs(600), || async {
                bench.ticks().await >= target
            })
            .await?;
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream("SHELL_QUERY_JOBS")
            .await?
            .get_consumer("shell-query-poll")
            .await
            .map_err(|e| anyhow::anyhow!("the poll consumer: {e}"))?;
        let info = consumer.info().await?.clone();
        println!(
            "| {total} | {:.0} MiB | {:.0} MiB | {} |",
            rss_mib(pid)?,
            bench.nats.pid().map(rss_mib).transpose()?.unwrap_or(0.0),
            info.num_ack_pending
        );
    }
    // Lateness: status checks of each query over the window.
    bench.sim.clear_calls();
    let (c0, at0) = (cpu_seconds(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = at0.elapsed().as_secs_f64();
    let c1 = cpu_seconds(pid)?;
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut lateness = Vec::new();
    let mut checks = 0usize;
    for call in bench.sim.calls() {
        if call.action != "soap:Retrieve:AsyncActivityStatus" {
            continue;
        }
        checks += 1;
        if let Some(prev) = last.insert(call.detail.clone(), call.at) {
            let gap = call.at.duration_since(prev).as_secs_f64() * 1000.0;
            lateness.push(gap - delay_ms as f64);
        }
    }
    lateness.sort_by(f64::total_cmp);
    println!();
    println!(
        "Over {seconds} s with {total} runs in flight: {:.0} status checks/s on average (in bursts: each step's runs fall due together), worker CPU {:.0} % of one core; lateness of {} ticks:",
        checks as f64 / elapsed,
        100.0 * (c1 - c0) / elapsed,
        lateness.len()
    );
    println!();
    println!("| p50 | p90 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        percentile(&lateness, 50.0),
        percentile(&lateness, 90.0),
        percentile(&lateness, 99.0),
        lateness.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

/// The bare mechanism on JetStream: `jobs` messages, each negatively
/// acknowledged with `delay` on every delivery, as the poll consumer does
/// (same consumer settings), with no work in between.
async fn nats_loop(bench: &Bench, jobs: usize, delay: Duration, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let client = bench.nats.admin().await;
    let js = jetstream::new(client);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "BENCH_LOOP".into(),
            subjects: vec!["bench.loop.>".into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench-loop".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: -1,
            max_ack_pending: 1_000_000,
            ..Default::default()
        })
        .await?;
    for batch in (0..jobs).collect::<Vec<_>>().chunks(2000) {
        let mut acks = Vec::new();
        for i in batch {
            acks.push(js.publish(format!("bench.loop.{i}"), "{}".into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    let task = tokio::spawn(async move {
        let mut messages = consumer.messages().await.expect("a pull stream");
        while let Some(Ok(msg)) = messages.next().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = msg.ack_with(jetstream::AckKind::Nak(Some(delay))).await;
        }
    });
    // Warm up one delay, then measure.
    tokio::time::sleep(delay + Duration::from_secs(2)).await;
    let pid = std::process::id();
    let (n0, c0, at0) = (
        count.load(std::sync::atomic::Ordering::Relaxed),
        cpu_seconds(pid)?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n1 = count.load(std::sync::atomic::Ordering::Relaxed);
    let _cpu = cpu_seconds(pid)? - c0;
    let rate = (n1 - n0) as f64 / at0.elapsed().as_secs_f64();
    let memory = bench.nats.pid().map(rss_mib).transpose()?.unwrap_or(0.0) + rss_mib(pid)?;
    task.abort();
    Ok((rate, memory))
}

pub async fn bullmq(jobs: usize, delay_ms: u64, seconds: u64, redis: &str) -> anyhow::Result<()> {
    let delay = Duration::from_millis(delay_ms);
    let bench = Bench::start(endless()).await?;
    let (nats_rate, nats_memory) = nats_loop(&bench, jobs, delay, seconds).await?;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bullmq");
    if !dir.join("node_modules").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "npm ci in {} failed", dir.display());
    }
    let (host, port) = redis.split_once(':').unwrap_or((redis, "6379"));
    let output = tokio::process::Command::new("node")
        .arg("loop.mjs")
        .current_dir(&dir)
        .env("JOBS", jobs.to_string())
        .env("DELAY_MS", delay_ms.to_string())
        .env("SECONDS", seconds.to_string())
        .env("REDIS_HOST", host)
        .env("REDIS_PORT", port)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "the BullMQ loop failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let bull_rate = result["ticksPerSecond"].as_f64().unwrap_or(0.0);
    let bull_memory = result["nodeRssMiB"].as_f64().unwrap_or(0.0) + result["redisUsedMiB"].as_f64().unwrap_or(0.0);

    println!(
        "{jobs} jobs, each rescheduled {delay_ms} ms later on every delivery, {:.0} reschedules/s asked; measured over {seconds} s after one delay of warm-up.",
        jobs as f64 / delay.as_secs_f64()
    );
    println!();
    println!("| mechanism | reschedules/s | memory |");
    println!("|---|---|---|");
    println!("| JetStream nak with delay (nats-server + this consumer) | {nats_rate:.0} | {nats_memory:.0} MiB |");
    println!(
        "| BullMQ {} `moveToDelayed` (Node worker + Redis used memory) | {bull_rate:.0} | {bull_memory:.0} MiB |",
        result["bullmq"].as_str().unwrap_or("?")
    );
    println!();
    println!(
        "Ratio JetStream / BullMQ: {:.2}× the reschedules per second, {:.2}× the memory.",
        nats_rate / bull_rate.max(1e-9),
        nats_memory / bull_memory.max(1e-9)
    );
    Ok(())
}
