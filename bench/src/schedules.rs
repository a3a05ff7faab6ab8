//! Poll schedules compared on a mix of query durations, in virtual time:
//! every tick runs the service's own decision tree (`poll::decide::decide`)
//! against a model of MCE that answers as the simulator does (status
//! `Complete`, rows present, not running, rowset queryable once the query's
//! time is up). Counts every MCE call a tick makes and the detection
//! latency (MCE finished → the tick that makes the run `ready`).
//!
//! The mix: `families` queries, each run `runs_per_family` times by one
//! tenant; a family's typical duration is log-uniform between 3 s and
//! 25 min, and each run lasts the typical duration ± 15 %. The adaptive
//! schedule learns each family's history as the service does (the last 5
//! runs, measured from the start of polling to detection).

use std::time::Duration;

use chrono::{DateTime, Utc};
use shell_query_core::poll::PollConfig;
use shell_query_core::poll::decide::{
    Decision, IsRunningObservation, Outcome as TickOutcome, PollState, ProbeObservation, Question, RowsetObservation,
    StatusObservation, Tick, decide,
};
use shell_query_core::poll::schedule::{HISTORY_RUNS, History, Schedule};

pub struct Outcome {
    pub schedule: Schedule,
    pub family: usize,
    pub duration: Duration,
    pub calls: u32,
    pub latency: Duration,
}

/// One run from Perform to `ready`, in virtual time.
fn simulate(
    cfg: &PollConfig,
    duration: Duration,
    history: Option<History>,
    rng: &mut fastrand::Rng,
) -> (u32, Duration) {
    let start: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).expect("a fixed instant");
    let mut state = PollState::new(1, start);
    let mut at = Duration::ZERO;
    let mut calls = 0;
    loop {
        let now = start + chrono::Duration::from_std(at).expect("a short duration");
        let done = at >= duration;
        let mut tick = Tick::new(state.clone(), "QPP_R_bench", true, true);
        tick.history = history;
        loop {
            match decide(&tick, cfg, now, rng.f64()) {
                Decision::Ask(Question::CheckStatus) => {
                    calls += 1;
                    tick.status = Some(StatusObservation::Read {
                        status: Some(if done { "Complete" } else { "Running" }.into()),
                        error_msg: None,
                        completed_date: done.then(|| "2027-01-15T10:00:00".into()),
                    })
                }
                Decision::Ask(Question::ProbeRows) => {
                    calls += 1;
                    tick.probe = Some(if done {
                        ProbeObservation::Rows { count: 5 }
                    } else {
                        ProbeObservation::NoSignal
                    })
                }
                Decision::Ask(Question::CheckIsRunning) => {
                    calls += 1;
                    tick.is_running = Some(if done {
                        IsRunningObservation::NotRunning
                    } else {
                        IsRunningObservation::Running
                    })
                }
                Decision::Ask(Question::RecoverObjectId) => {
                    calls += 1;
                    tick.recovery_tried = true;
                }
                Decision::Ask(Question::CheckRowset { .. }) => {
                    calls += 1;
                    tick.rowset = Some(RowsetObservation::Queryable { count: 5 });
                }
                Decision::Done(TickOutcome::Ready { .. }) => return (calls, at - duration),
                Decision::Done(TickOutcome::Fail { message, .. }) => panic!("a run of {duration:?} failed: {message}"),
                Decision::Done(TickOutcome::Canceled) => unreachable!("nothing cancels"),
                Decision::Done(TickOutcome::Reschedule { delay, state: next, .. }) => {
                    state = PollState {
                        poll_count: next.poll_count + 1,
                        ..next
                    };
                    at += delay;
                    break;
                }
            }
        }
    }
}

/// Every run of the mix under one schedule.
pub fn run_mix(
    cfg: &PollConfig,
    schedule: Schedule,
    families: usize,
    runs_per_family: usize,
    seed: u64,
) -> Vec<Outcome> {
    let cfg = PollConfig {
        schedule,
        ..cfg.clone()
    };
    let mut mix = fastrand::Rng::with_seed(seed);
    let mut jitter = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut out = Vec::new();
    for family in 0..families {
        let typical = 3.0 * (1500.0f64 / 3.0).powf(mix.f64());
        let mut seen: Vec<Duration> = Vec::new();
        for _ in 0..runs_per_family {
            let duration = Duration::from_secs_f64(typical * (0.85 + 0.3 * mix.f64()));
            let recent = &seen[seen.len().saturating_sub(HISTORY_RUNS as usize)..];
            let (calls, latency) = simulate(&cfg, duration, History::of(recent), &mut jitter);
            seen.push(duration + latency);
            out.push(Outcome {
                schedule,
                family,
                duration,
                calls,
                latency,
            });
        }
    }
    out
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub struct Summary {
    pub schedule: Schedule,
    pub calls_total: u64,
    pub calls_mean: f64,
    pub calls_median: f64,
    pub latency_median: f64,
    pub latency_p90: f64,
    pub latency_max: f64,
}

pub fn summarise(outcomes: &[Outcome]) -> Summary {
    let mut calls: Vec<f64> = outcomes.iter().map(|o| f64::from(o.calls)).collect();
    let mut latency: Vec<f64> = outcomes.iter().map(|o| o.latency.as_secs_f64()).collect();
    calls.sort_by(f64::total_cmp);
    latency.sort_by(f64::total_cmp);
    Summary {
        schedule: outcomes[0].schedule,
        calls_total: outcomes.iter().map(|o| u64::from(o.calls)).sum(),
        calls_mean: calls.iter().sum::<f64>() / calls.len() as f64,
        calls_median: percentile(&calls, 50.0),
        latency_median: percentile(&latency, 50.0),
        latency_p90: percentile(&latency, 90.0),
        latency_max: latency.last().copied().unwrap_or(0.0),
    }
}
