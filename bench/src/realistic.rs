//! One replica at MCE's real pace: runs in flight spread over tenants of
//! very different sizes (one holds half), every MCE call answered after a
//! log-normal latency, each business unit limited to a rate of calls (429
//! with `Retry-After` above it). Reports per tenant size: tick lateness,
//! status checks served against asked, MCE requests per check, 429s, each
//! business unit's MCE calls per second summed over the replicas against
//! its limit; and each replica's CPU and memory. `--refuse-in` makes the
//! simulator refuse `TaskID IN` filters (every check a call of its own).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use mce_sim::{Load, Scenario};

use crate::infra::{Bench, cpu_seconds, rss_mib};
use crate::schedules::percentile;
use crate::throughput::{endless, publish_polls, seed_rows_of, worker_settings};

#[derive(clap::Args)]
pub struct Settings {
    #[arg(long, default_value_t = 100_000)]
    pub runs: usize,
    #[arg(long, default_value_t = 50)]
    pub tenants: usize,
    /// Every run's fixed poll delay (no jitter), so lateness is measurable.
    #[arg(long, default_value_t = 120_000)]
    pub delay_ms: u64,
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// MCE calls per second each business unit may make.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    #[arg(long, default_value_t = 300)]
    pub median_ms: u64,
    #[arg(long, default_value_t = 2000)]
    pub p99_ms: u64,
    /// The worker's STATUS_BATCH_WINDOW_MS (0: one status call per task).
    #[arg(long, default_value_t = 20)]
    pub batch_window_ms: u64,
    /// Worker processes on the same nats-server and database.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// The simulator refuses `TaskID IN` filters.
    #[arg(long)]
    pub refuse_in: bool,
}

/// Runs per tenant: the first holds half; the rest share the other half
/// in proportion to 1/rank (a few large, many small), each at least one.
pub fn tenant_sizes(runs: usize, tenants: usize) -> Vec<usize> {
    if tenants <= 1 {
        return vec![runs];
    }
    let first = runs / 2;
    let rest = runs - first;
    let weights: Vec<f64> = (1..tenants).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut sizes: Vec<usize> = std::iter::once(first)
        .chain(
            weights
                .iter()
                .map(|w| ((rest as f64 * w / total).floor() as usize).max(1)),
        )
        .collect();
    // Rounding: the second tenant takes what is left (or gives back).
    let sum: usize = sizes.iter().sum();
    sizes[1] = (sizes[1] + runs).saturating_sub(sum).max(1);
    sizes
}

/// The groups the report has a line for: (label, tenant indices).
fn groups(tenants: usize) -> Vec<(String, std::ops::Range<usize>)> {
    let mut groups = vec![("the largest (half the runs)".to_string(), 0..1.min(tenants))];
    for (from, to) in [(1, 5), (5, 20), (20, usize::MAX)] {
        let to = to.min(tenants);
        if from < to {
            groups.push((format!("tenants {}–{}", from + 1, to), from..to));
        }
    }
    groups
}

pub async fn realistic(s: Settings) -> anyhow::Result<()> {
    let mut bench = Bench::start(endless()).await?;
    let sizes = tenant_sizes(s.runs, s.tenants);
    let mut tenants = vec![(bench.tenant_id, bench.user_id, bench.mid.clone())];
    for i in 1..sizes.len() {
        tenants.push(bench.add_tenant(&format!("52{i:07}"))?);
    }
    bench.sim.set_load(Load {
        latency: Some((Duration::from_millis(s.median_ms), Duration::from_millis(s.p99_ms))),
        calls_per_second: Some(s.rate),
        refuse_in_filter: s.refuse_in,
        ..Load::default()
    });
    let mut settings = worker_settings(s.delay_ms, 0.0);
    settings.push(("STATUS_BATCH_WINDOW_MS", s.batch_window_ms.to_string()));
    // The rows are all written first and their poll messages published over
    // one delay: the reconciler must not take a row still waiting for its
    // message for a lost one.
    settings.push(("RECONCILER_GRACE_MS", (2 * s.delay_ms + 600_000).to_string()));
    bench.start_workers(s.replicas.max(1), &settings).await;
    let js = jetstream::new(bench.nats.admin().await);
    let pids: Vec<u32> = bench.workers().map(|w| w.pid()).collect();

    // Queries of realistic durations: log-normal, median 10 minutes, most
    // between 2 and 40 (MCE's own limit is 30), none ending inside the
    // benchmark, so every run is measured throughout.
    let mut rng = fastrand::Rng::with_seed(20_261_130);
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut de_task: HashMap<String, String> = HashMap::new();
    let mut ids = Vec::with_capacity(s.runs);
    for (index, (tenant, size)) in tenants.iter().zip(&sizes).enumerate() {
        let durations: Vec<Duration> = (0..*size)
            .map(|_| {
                let d = mce_sim::log_normal(
                    Duration::from_secs(600),
                    Duration::from_secs(2400),
                    1.0 - rng.f64(),
                    rng.f64(),
                );
                d.max(Duration::from_secs(s.seconds + 600) + 2 * Duration::from_millis(s.delay_ms))
            })
            .collect();
        let seeded = seed_rows_of(&bench, tenant, *size, |i| Scenario::completes_after(durations[i], 1)).await?;
        for (id, task) in seeded {
            de_task.insert(shell_query_core::naming::temp_de_key(id), task.clone());
            owner.insert(task, index);
            ids.push(id);
        }
    }
    // Runs start as they would in production: spread over one delay, the
    // tenants mixed, so their ticks fall due evenly (all at once, every
    // delay would bring a burst of every run in flight).
    rng.shuffle(&mut ids);
    let paced = Instant::now();
    let per_slice = (s.runs as f64 * 0.1 / (s.delay_ms as f64 / 1000.0)).ceil().max(1.0) as usize;
    for (i, slice) in ids.chunks(per_slice).enumerate() {
        tokio::time::sleep_until((paced + Duration::from_millis(100) * i as u32).into()).await;
        publish_polls(&js, slice).await?;
    }
    let want = s.runs as u64;
    bench
        .wait("every run to tick once", Duration::from_secs(1800), || async {
            bench.ticks().await >= want
        })
        .await?;

    // The window.
    bench.sim.clear_calls();
    let throttled_before = bench.sim.throttled();
    let deferred0 = bench.metric("shell_query_poll_ticks_deferred_total ").await;
    let late0 = lateness_buckets(&bench).await;
    let cpu = |pids: &[u32]| {
        pids.iter()
            .map(|p| cpu_seconds(*p))
            .collect::<anyhow::Result<Vec<f64>>>()
    };
    let (t0, c0, at0) = (bench.ticks().await, cpu(&pids)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(s.seconds)).await;
    let (t1, c1, elapsed) = (bench.ticks().await, cpu(&pids)?, at0.elapsed().as_secs_f64());
    let rss = pids.iter().map(|p| rss_mib(*p)).collect::<anyhow::Result<Vec<f64>>>()?;
    let throttled_tenants = bench.metric("shell_query_tenants_throttled ").await;
    let deferred = bench.metric("shell_query_poll_ticks_deferred_total ").await - deferred0;
    let late1 = lateness_buckets(&bench).await;
    let calls = bench.sim.calls();
    let throttled_after = bench.sim.throttled();

    // Per task, when MCE answered the last call about it (its status check
    // or its DE's row probe): the tick ends there and its delay starts.
    let mut answered: HashMap<&str, Instant> = HashMap::new();
    let mut lateness: Vec<Vec<f64>> = vec![Vec::new(); tenants.len()];
    let mut checks = vec![0usize; tenants.len()];
    // MCE requests by tenant: a single status call or a row probe is its
    // task's tenant's; an IN request is the tenant of its first task (its
    // per-task records follow it).
    let mut requests_of = vec![0usize; tenants.len()];
    // Per business unit (one per tenant here), requests in each second of
    // the window, whatever replica made them.
    let window_start = calls.first().map_or(at0, |c| c.at.min(at0));
    let mut per_second: Vec<HashMap<u64, u32>> = vec![HashMap::new(); tenants.len()];
    let mut count_at = |index: usize, at: Instant| {
        *per_second[index]
            .entry(at.saturating_duration_since(window_start).as_secs())
            .or_default() += 1;
    };
    let mut in_request = false;
    for call in &calls {
        if call.action.ends_with(":IN-request") {
            in_request = true;
            continue;
        }
        if call.action == "rest:rowset" {
            if let Some(task) = de_task.get(&call.detail) {
                answered.insert(task.as_str(), call.at + call.latency);
                requests_of[owner[task]] += 1;
                count_at(owner[task], call.at);
            }
            continue;
        }
        // A status check: a call about one task, or one task of an IN call.
        if !matches!(
            call.action.as_str(),
            "soap:Retrieve:AsyncActivityStatus" | "soap:Retrieve:AsyncActivityStatus:IN"
        ) {
            continue;
        }
        let Some(&index) = owner.get(&call.detail) else {
            continue;
        };
        checks[index] += 1;
        if !call.action.ends_with(":IN") || std::mem::take(&mut in_request) {
            requests_of[index] += 1;
            count_at(index, call.at);
        }
        if let Some(previous) = answered.insert(call.detail.as_str(), call.at + call.latency) {
            let gap = call.at.saturating_duration_since(previous).as_secs_f64() * 1000.0;
            lateness[index].push(gap - s.delay_ms as f64);
        }
    }
    let refusals = |index: usize| {
        let mid = &tenants[index].2;
        throttled_after.get(mid).copied().unwrap_or(0) - throttled_before.get(mid).copied().unwrap_or(0)
    };

    let ticks = (t1 - t0) as f64;
    println!(
        "{} runs in flight over {} tenants (the largest {}, the smallest {}), each polled every {} ms (no jitter); MCE answers after a log-normal latency (median {} ms, p99 {} ms) and allows each business unit {} calls/s (429 with Retry-After: 1 above it){}; status batching window {} ms; {} replica(s). Measured over {} s.",
        s.runs,
        tenants.len(),
        sizes[0],
        sizes.iter().min().unwrap_or(&0),
        s.delay_ms,
        s.median_ms,
        s.p99_ms,
        s.rate,
        if s.refuse_in {
            ", refusing TaskID IN filters"
        } else {
            ""
        },
        s.batch_window_ms,
        pids.len(),
        s.seconds
    );
    println!();
    let asked = |index: usize| sizes[index] as f64 * 1000.0 / s.delay_ms as f64;
    let peak = |index: usize| per_second[index].values().copied().max().unwrap_or(0);
    println!(
        "| tenants | runs | status checks/s | served ÷ asked | MCE requests per check (status and row probe) | lateness p50 | p90 | p99 | max | 429s | busiest business unit's peak MCE calls/s, all replicas (limit {}) |",
        s.rate
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, range) in groups(tenants.len()) {
        let mut late: Vec<f64> = range.clone().flat_map(|i| lateness[i].iter().copied()).collect();
        late.sort_by(f64::total_cmp);
        let runs: usize = sizes[range.clone()].iter().sum();
        let checked: usize = checks[range.clone()].iter().sum();
        let refused: u64 = range.clone().map(refusals).sum();
        let asked_rate: f64 = range.clone().map(asked).sum();
        println!(
            "| {label} | {runs} | {:.0} | {:.0} % | {:.2} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {refused} | {} |",
            checked as f64 / elapsed,
            100.0 * checked as f64 / elapsed / asked_rate.max(f64::MIN_POSITIVE),
            range.clone().map(|i| requests_of[i]).sum::<usize>() as f64 / checked.max(1) as f64,
            percentile(&late, 50.0),
            percentile(&late, 90.0),
            percentile(&late, 99.0),
            late.last().copied().unwrap_or(0.0),
            range.clone().map(peak).max().unwrap_or(0),
        );
    }
    println!();
    // The target reads per tenant: p99 under 1 s for each tenant neither
    // MCE throttled (429s in the window) nor its cap held back (checked at
    // less than 90 % of the rate its runs ask), whatever those went through.
    let held = |index: usize| {
        if refusals(index) > 0 {
            Some("throttled by MCE")
        } else if (checks[index] as f64 / elapsed) < 0.9 * asked(index) {
            Some("held by its cap")
        } else {
            None
        }
    };
    println!("| tenant | runs | status checks/s (asked) | 429s in the window | lateness p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    let row = |index: usize, label: String, late: &[f64]| {
        println!(
            "| {} ({label}) | {} | {:.0} ({:.0}) | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            index + 1,
            sizes[index],
            checks[index] as f64 / elapsed,
            asked(index),
            refusals(index),
            percentile(late, 50.0),
            percentile(late, 99.0),
            late.last().copied().unwrap_or(0.0),
        );
    };
    let mut worst: Option<(usize, f64)> = None;
    for (index, late) in lateness.iter_mut().enumerate() {
        late.sort_by(f64::total_cmp);
        let p99 = percentile(late, 99.0);
        if let Some(why) = held(index) {
            row(index, why.into(), late);
        } else if worst.is_none_or(|(_, w)| p99 > w) {
            worst = Some((index, p99));
        }
    }
    if let Some((index, _)) = worst {
        let free = (0..tenants.len()).filter(|i| held(*i).is_none()).count();
        row(
            index,
            format!("the latest at p99 of the {free} neither throttled nor held"),
            &lateness[index],
        );
    }
    println!();
    println!(
        "| replicas | ticks/s | of which deferred (tenant's share full) | MCE requests per tick (429s included) | MCE requests per status check | worker CPU, each replica | CPU per tick | worker RSS, each replica | tenants held below their start |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Requests MCE received: the per-task records of IN calls are not requests.
    let requests = calls.iter().filter(|c| !c.action.ends_with(":IN")).count() as f64;
    let cpu_used: Vec<f64> = c1.iter().zip(&c0).map(|(a, b)| a - b).collect();
    let each = |values: Vec<String>| values.join(" / ");
    println!(
        "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.0} µs | {} | {throttled_tenants} |",
        pids.len(),
        ticks / elapsed,
        deferred / elapsed,
        requests / ticks.max(1.0),
        requests / (checks.iter().sum::<usize>() as f64).max(1.0),
        each(
            cpu_used
                .iter()
                .map(|c| format!("{:.0} %", 100.0 * c / elapsed))
                .collect()
        ),
        1e6 * cpu_used.iter().sum::<f64>() / ticks.max(1.0),
        each(rss.iter().map(|r| format!("{r:.0} MiB")).collect()),
    );
    println!();
    println!(
        "The worker's own view (`shell_query_poll_tick_lateness_seconds`: a delivery's start minus the time its previous tick's delay asked for, so NATS and the consumer loop only): p50 {}, p90 {}, p99 {}.",
        bucket_quantile(&late0, &late1, 0.5),
        bucket_quantile(&late0, &late1, 0.9),
        bucket_quantile(&late0, &late1, 0.99),
    );
    Ok(())
}

/// The workers' own tick lateness histogram, summed over the replicas:
/// (upper bound in seconds, ticks at most that late), cumulative.
async fn lateness_buckets(bench: &Bench) -> Vec<(f64, f64)> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for worker in bench.workers() {
        let text = worker.http_get("/metrics").await.unwrap_or_default();
        let buckets = text
            .lines()
            .filter_map(|l| l.strip_prefix("shell_query_poll_tick_lateness_seconds_bucket{le=\""))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.parse().unwrap_or(f64::INFINITY), count.trim().parse::<f64>().ok()?))
            });
        for (i, (le, count)) in buckets.enumerate() {
            match sum.get_mut(i) {
                Some(slot) => slot.1 += count,
                None => sum.push((le, count)),
            }
        }
    }
    sum
}

/// The smallest bucket bound holding `q` of the window's ticks.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> String {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m)))
        .collect();
    let total = counts.last().map_or(0.0, |(_, n)| *n);
    match counts.iter().find(|(_, n)| total > 0.0 && *n >= q * total) {
        Some((le, _)) if le.is_finite() => format!("≤ {:.0} ms", le * 1000.0),
        Some(_) => "above the last bucket".into(),
        None => "no ticks".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_holds_half_and_every_tenant_has_runs() {
        let sizes = tenant_sizes(100_000, 50);
        assert_eq!(sizes.len(), 50);
        assert_eq!(sizes[0], 50_000);
        assert_eq!(sizes.iter().sum::<usize>(), 100_000);
        assert!(sizes.iter().all(|n| *n >= 1));
        assert!(sizes[1] > 10 * sizes[49], "{sizes:?}");
        assert_eq!(tenant_sizes(10, 1), vec![10]);
    }
}
