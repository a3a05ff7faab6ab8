//! The service's whole poll tick against the reference's whole tick in Node
//! (`bench/bullmq/tick.mjs`: BullMQ, pg, axios, fast-xml-parser), one after
//! the other on the same runs: the same rows in PostgreSQL, the same tasks
//! in the same zero-latency simulator (inside this process, running for the
//! whole benchmark). CPU per tick counts every process of a side over the
//! window: the service's is the worker, nats-server, every PostgreSQL
//! process and this process (the simulator); the reference's is Node,
//! redis-server, every PostgreSQL process and this process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use uuid::Uuid;

use crate::infra::{Bench, cpu_seconds, rss_mib};
use crate::throughput::{endless, seed_runs_of, worker_settings};

/// The refresh token Node's one grant presents (the worker has its own).
const NODE_REFRESH_TOKEN: &str = "rt-bench-node";

/// CPU seconds used so far by each part of a side.
struct Cpu {
    main: f64,
    queue: f64,
    postgres: HashMap<u32, f64>,
    bench: f64,
}

impl Cpu {
    /// `main`: the worker or Node; `queue`: nats-server or redis-server.
    fn take(main: u32, queue: u32) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            main: cpu_seconds(main)?,
            queue: cpu_seconds(queue)?,
            postgres: postgres_cpu(),
            bench: cpu_seconds(std::process::id())?,
        })
    }
}

/// CPU seconds (user + system) of every process named `postgres`: the
/// postmaster, its background processes and every backend.
fn postgres_cpu() -> HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "postgres"))
        .filter_map(|pid| Some((pid, cpu_seconds(pid).ok()?)))
        .collect()
}

/// CPU seconds each part used between two samples.
struct Used {
    main: f64,
    queue: f64,
    postgres: f64,
    bench: f64,
}

impl Used {
    fn between(before: &Cpu, after: &Cpu) -> Used {
        // A process started inside the window used all its CPU inside it.
        let postgres = after
            .postgres
            .iter()
            .map(|(pid, c)| c - before.postgres.get(pid).copied().unwrap_or(0.0))
            .sum();
        Used {
            main: after.main - before.main,
            queue: after.queue - before.queue,
            postgres,
            bench: after.bench - before.bench,
        }
    }

    fn total(&self) -> f64 {
        self.main + self.queue + self.postgres + self.bench
    }
}

/// One side's figures over its window.
struct Side {
    ticks: f64,
    seconds: f64,
    cpu: Used,
    /// MCE requests the simulator answered in the window (an IN request
    /// about several tasks is one).
    mce_requests: usize,
    /// RSS of the worker or Node, and of nats-server or redis-server.
    rss: (f64, f64),
}

impl Side {
    fn rate(&self) -> f64 {
        self.ticks / self.seconds.max(1e-9)
    }

    /// Microseconds of CPU per tick.
    fn per_tick(&self, cpu: f64) -> f64 {
        1e6 * cpu / self.ticks.max(1.0)
    }
}

/// Requests the simulator has answered since its calls were last cleared:
/// the per-task records of an IN request are not requests.
fn mce_requests(bench: &Bench) -> usize {
    bench.sim.calls().iter().filter(|c| !c.action.ends_with(":IN")).count()
}

pub async fn reference_tick(runs: usize, delay_ms: u64, seconds: u64, redis: &str) -> anyhow::Result<()> {
    let dir = node_dir()?;
    let mut bench = Bench::start(endless()).await?;
    bench.start_worker(&worker_settings(delay_ms, 0.2)).await;
    let js = jetstream::new(bench.nats.admin().await);
    let tenant = (bench.tenant_id, bench.user_id, bench.mid.clone());
    let scenario = endless().default_scenario;
    let seeded = seed_runs_of(&bench, &js, &tenant, runs, |_| scenario.clone()).await?;

    let service = service_side(&bench, runs, seconds).await?;
    // Neither the worker nor nats-server runs during the reference's window.
    bench.worker = None;
    bench.nats.stop();
    let (reference, notes) = reference_side(&bench, &dir, &seeded, delay_ms, seconds, redis).await?;

    let demand = runs as f64 / (delay_ms as f64 / 1000.0);
    println!(
        "{runs} runs in flight, each due every {delay_ms} ms (the service: ±10 % jitter; the reference: exactly), {demand:.0} ticks/s asked of each side; the same rows in PostgreSQL and the same tasks in one zero-latency simulator; each side measured over {seconds} s, the service first, then the reference (its worker and nats-server stopped)."
    );
    println!();
    println!(
        "| side | ticks/s | CPU per tick, all processes | worker / Node | nats-server / redis-server | PostgreSQL (all processes) | bench process (simulator) | MCE requests per tick | RSS: process + queue server |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, side) in [
        ("service: shell-query-worker, JetStream, sqlx".to_string(), &service),
        (
            format!(
                "reference: Node {}, BullMQ {} on Redis, pg {}, axios {}, fast-xml-parser {}, concurrency 50",
                notes["versions"]["node"].as_str().unwrap_or("?"),
                notes["versions"]["bullmq"].as_str().unwrap_or("?"),
                notes["versions"]["pg"].as_str().unwrap_or("?"),
                notes["versions"]["axios"].as_str().unwrap_or("?"),
                notes["versions"]["fast-xml-parser"].as_str().unwrap_or("?"),
            ),
            &reference,
        ),
    ] {
        println!(
            "| {label} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.2} | {:.0} + {:.0} MiB |",
            side.rate(),
            side.per_tick(side.cpu.total()),
            side.per_tick(side.cpu.main),
            side.per_tick(side.cpu.queue),
            side.per_tick(side.cpu.postgres),
            side.per_tick(side.cpu.bench),
            side.mce_requests as f64 / side.ticks.max(1.0),
            side.rss.0,
            side.rss.1,
        );
    }
    println!();
    println!(
        "Service ÷ reference: **{:.2}×** the ticks per second. Reference ÷ service: **{:.2}×** the CPU per tick (above 1, the reference spends more CPU on each tick).",
        service.rate() / reference.rate().max(1e-9),
        reference.per_tick(reference.cpu.total()) / service.per_tick(service.cpu.total()).max(1e-9),
    );
    println!();
    println!(
        "Machine CPU in use over the window: the service's processes {:.0} % of one core, the reference's {:.0} %. Node's own count of its CPU (`process.cpuUsage()`): {:.2} s against {:.2} s read from /proc. Reference ticks that failed: {}{}; statuses read: {}.",
        100.0 * service.cpu.total() / service.seconds,
        100.0 * reference.cpu.total() / reference.seconds,
        notes["nodeCpuSeconds"].as_f64().unwrap_or(0.0),
        reference.cpu.main,
        notes["errors"].as_u64().unwrap_or(0),
        notes["firstError"]
            .as_str()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        notes["statuses"],
    );
    Ok(())
}

/// The service's tick as `bench ticks` measures it: the release worker's
/// tick counter over the window, once every run has ticked.
async fn service_side(bench: &Bench, runs: usize, seconds: u64) -> anyhow::Result<Side> {
    let want = runs as u64;
    bench
        .wait("every run to tick once", Duration::from_secs(120), || async {
            bench.ticks().await >= want
        })
        .await?;
    let worker = bench.worker().pid();
    let nats = bench.nats.pid().context("nats-server is not running")?;
    let t0 = bench.ticks().await;
    let c0 = Cpu::take(worker, nats)?;
    let at0 = Instant::now();
    bench.sim.clear_calls();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let t1 = bench.ticks().await;
    let c1 = Cpu::take(worker, nats)?;
    let elapsed = at0.elapsed().as_secs_f64();
    Ok(Side {
        ticks: (t1 - t0) as f64,
        seconds: elapsed,
        cpu: Used::between(&c0, &c1),
        mce_requests: mce_requests(bench),
        rss: (rss_mib(worker)?, rss_mib(nats)?),
    })
}

/// The reference's tick in Node against the same rows and tasks; its window
/// is Node's (it prints when the window starts and ends). Returns the side
/// and Node's other figures (`window-end` and `done` merged).
async fn reference_side(
    bench: &Bench,
    dir: &Path,
    seeded: &[(Uuid, String)],
    delay_ms: u64,
    seconds: u64,
    redis: &str,
) -> anyhow::Result<(Side, Value)> {
    bench.sim.add_refresh_token(NODE_REFRESH_TOKEN);
    // The reference's poll payload, one job per run.
    let jobs: Vec<Value> = seeded
        .iter()
        .map(|(id, task)| {
            json!({
                "runId": id,
                "tenantId": bench.tenant_id,
                "userId": bench.user_id,
                "mid": bench.mid,
                "taskId": task,
                "queryDefinitionId": format!("qd-{id}"),
                "queryCustomerKey": shell_query_core::naming::query_key(*id),
                "targetDeCustomerKey": shell_query_core::naming::temp_de_key(*id),
            })
        })
        .collect();
    let runs_file = RunsFile(std::env::temp_dir().join(format!("bench-reference-tick-{}.json", std::process::id())));
    std::fs::write(&runs_file.0, serde_json::to_vec(&jobs)?)?;
    let (host, port) = redis.split_once(':').unwrap_or((redis, "6379"));
    let mut child = tokio::process::Command::new("node")
        .arg("tick.mjs")
        .current_dir(dir)
        .env("RUNS_FILE", &runs_file.0)
        .env("DELAY_MS", delay_ms.to_string())
        .env("SECONDS", seconds.to_string())
        .env("CONCURRENCY", "50")
        .env("REDIS_HOST", host)
        .env("REDIS_PORT", port)
        .env("DATABASE_URL", &bench.database_url)
        .env("MCE_URL", bench.sim.url())
        .env("MCE_REFRESH_TOKEN", NODE_REFRESH_TOKEN)
        .env("MCE_CLIENT_ID", "bench-client")
        .env("MCE_CLIENT_SECRET", "bench-secret")
        .env("MCE_MID", &bench.mid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (Node 20 on PATH)")?;
    let node = child.id().context("node's pid")?;
    let mut stderr = child.stderr.take().context("node's stderr")?;
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().context("node's stdout")?).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(delay_ms) + Duration::from_secs(seconds + 300);

    let mut window: Option<(Cpu, u32)> = None;
    let mut side: Option<Side> = None;
    let mut notes = serde_json::Map::new();
    while let Some(line) = tokio::time::timeout_at(deadline, lines.next_line())
        .await
        .context("timed out waiting for the Node tick")??
    {
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match event.get("event").and_then(Value::as_str) {
            Some("window-start") => {
                let redis_pid = event.get("redisPid").and_then(Value::as_u64).unwrap_or(0) as u32;
                let comm = std::fs::read_to_string(format!("/proc/{redis_pid}/comm")).unwrap_or_default();
                anyhow::ensure!(
                    comm.starts_with("redis-server"),
                    "Redis (process {redis_pid}) is not a process of this machine: its CPU cannot be counted"
                );
                window = Some((Cpu::take(node, redis_pid)?, redis_pid));
                bench.sim.clear_calls();
            }
            Some("window-end") => {
                let (before, redis_pid) = window.take().context("window-end before window-start")?;
                let after = Cpu::take(node, redis_pid)?;
                side = Some(Side {
                    ticks: event.get("ticks").and_then(Value::as_f64).unwrap_or(0.0),
                    seconds: event.get("seconds").and_then(Value::as_f64).unwrap_or(seconds as f64),
                    cpu: Used::between(&before, &after),
                    mce_requests: mce_requests(bench),
                    rss: (rss_mib(node)?, rss_mib(redis_pid)?),
                });
                notes.extend(event);
            }
            Some("done") => notes.extend(event),
            _ => {}
        }
    }
    let status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .context("timed out waiting for node to exit")??;
    let stderr = errors.await.unwrap_or_default();
    anyhow::ensure!(status.success(), "the Node tick failed ({status}): {stderr}");
    let side = side.with_context(|| format!("the Node tick printed no figures: {stderr}"))?;
    Ok((side, Value::Object(notes)))
}

/// The runs handed to Node, removed when done.
struct RunsFile(PathBuf);

impl Drop for RunsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `bench/bullmq`, its packages installed from package-lock.json
/// (`npm ci`) when one the tick needs is missing.
fn node_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bullmq");
    let installed = ["bullmq", "ioredis", "axios", "fast-xml-parser", "pg"]
        .iter()
        .all(|p| dir.join("node_modules").join(p).join("package.json").exists());
    if !installed {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "npm ci in {} failed", dir.display());
    }
    Ok(dir)
}
