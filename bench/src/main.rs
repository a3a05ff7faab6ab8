//! The benchmarks of docs/BENCHMARKS.md. Each prints its figures as a
//! Markdown table, with the command line, the machine and the date, ready to
//! paste into docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p bench -- schedules
//! cargo run --release -p bench -- ticks
//! cargo run --release -p bench -- inflight
//! cargo run --release -p bench -- bullmq
//! cargo run --release -p bench -- realistic
//! cargo run --release -p bench -- reference-tick
//! ```

mod infra;
mod realistic;
mod reference;
mod schedules;
mod throughput;

use clap::{Parser, Subcommand};
use shell_query_core::poll::schedule::Schedule;

#[derive(Parser)]
#[command(name = "bench", about = "Benchmarks of shell-query-worker (docs/BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// MCE calls and detection latency of the three poll schedules on a mix
    /// of query durations (virtual time, the service's decision tree).
    Schedules {
        #[arg(long, default_value_t = 60)]
        families: usize,
        #[arg(long, default_value_t = 5)]
        runs_per_family: usize,
        #[arg(long, default_value_t = 20_261_128)]
        seed: u64,
        /// Also write one line per run to this CSV file.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// Ticks per second and CPU per tick of one replica against a
    /// zero-latency simulator, NATS and PostgreSQL on this machine.
    Ticks {
        /// Runs in flight, each ticking every `--delay-ms`.
        #[arg(long, default_value_t = 2000)]
        runs: usize,
        #[arg(long, default_value_t = 1000)]
        delay_ms: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Memory and tick lateness of one replica as runs in flight are added.
    Inflight {
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
        /// Added in steps of this many runs; memory is read after each.
        #[arg(long, default_value_t = 20_000)]
        step: usize,
        /// Every run's fixed poll delay (no jitter), so lateness is measurable.
        #[arg(long, default_value_t = 120_000)]
        delay_ms: u64,
        /// Lateness is measured over this long after the last step; at
        /// least two delays, so that every run is checked twice or more.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// One replica at MCE's real pace: runs over tenants of very different
    /// sizes, a log-normal latency per call, a rate limit per business unit.
    Realistic(realistic::Settings),
    /// The delayed-reschedule mechanism alone: JetStream negative
    /// acknowledgements with a delay against BullMQ's `moveToDelayed` on
    /// Redis, the same number of jobs, side by side.
    Bullmq {
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        #[arg(long, default_value_t = 1000)]
        delay_ms: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Redis for BullMQ.
        #[arg(long, default_value = "127.0.0.1:6379")]
        redis: String,
    },
    /// The service's whole poll tick against the reference's whole tick
    /// (BullMQ, pg, axios and fast-xml-parser in Node), the same runs, one
    /// after the other, against a zero-latency simulator; CPU per tick of
    /// every process of each side.
    ReferenceTick {
        #[arg(long, default_value_t = 2000)]
        runs: usize,
        #[arg(long, default_value_t = 1000)]
        delay_ms: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Redis for BullMQ (on this machine: its CPU is counted).
        #[arg(long, default_value = "127.0.0.1:6379")]
        redis: String,
    },
}

fn header(command: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    println!("`{command}`");
    println!();
    println!(
        "Machine: {cpu}, {cores} cores, {memory}. Date: {}.",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    header(&format!("cargo run --release -p bench -- {command}"));
    match cli.command {
        Command::Schedules {
            families,
            runs_per_family,
            seed,
            csv,
        } => schedules_report(families, runs_per_family, seed, csv),
        Command::Ticks {
            runs,
            delay_ms,
            seconds,
        } => throughput::ticks(runs, delay_ms, seconds).await,
        Command::Inflight {
            runs,
            step,
            delay_ms,
            seconds,
        } => {
            anyhow::ensure!(
                seconds * 1000 >= 2 * delay_ms,
                "--seconds must cover two delays (at least {} s) for every run to be checked twice",
                (2 * delay_ms).div_ceil(1000)
            );
            throughput::inflight(runs, step, delay_ms, seconds).await
        }
        Command::Realistic(settings) => realistic::realistic(settings).await,
        Command::Bullmq {
            jobs,
            delay_ms,
            seconds,
            redis,
        } => throughput::bullmq(jobs, delay_ms, seconds, &redis).await,
        Command::ReferenceTick {
            runs,
            delay_ms,
            seconds,
            redis,
        } => reference::reference_tick(runs, delay_ms, seconds, &redis).await,
    }
}

fn schedules_report(
    families: usize,
    runs_per_family: usize,
    seed: u64,
    csv: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let cfg = infra::default_poll_config()?;
    let mut rows = Vec::new();
    let mut lines = vec!["schedule,family,duration_s,calls,latency_s".to_string()];
    for schedule in [Schedule::Reference, Schedule::Exponential, Schedule::Adaptive] {
        let outcomes = schedules::run_mix(&cfg, schedule, families, runs_per_family, seed);
        for o in &outcomes {
            lines.push(format!(
                "{},{},{:.1},{},{:.2}",
                o.schedule.as_str(),
                o.family,
                o.duration.as_secs_f64(),
                o.calls,
                o.latency.as_secs_f64()
            ));
        }
        rows.push(schedules::summarise(&outcomes));
    }
    println!(
        "{} runs: {families} queries × {runs_per_family} runs, durations 3 s to 25 min (seed {seed}).",
        families * runs_per_family
    );
    println!();
    println!(
        "| schedule | MCE calls, total | per run, mean | per run, median | detection latency, median | p90 | max |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.1} s | {:.1} s | {:.1} s |",
            r.schedule.as_str(),
            r.calls_total,
            r.calls_mean,
            r.calls_median,
            r.latency_median,
            r.latency_p90,
            r.latency_max
        );
    }
    let (reference, adaptive) = (&rows[0], &rows[2]);
    println!();
    println!(
        "Adaptive against the reference: {:.0} % of its MCE calls, {:.0} % of its median detection latency (target: under 100 % and at most 50 %).",
        100.0 * adaptive.calls_total as f64 / reference.calls_total as f64,
        100.0 * adaptive.latency_median / reference.latency_median
    );
    if let Some(path) = csv {
        std::fs::write(&path, lines.join("\n") + "\n")?;
        println!();
        println!("Per run: `{}`.", path.display());
    }
    Ok(())
}
