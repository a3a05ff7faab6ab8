//! The service's metrics, rendered in the Prometheus text format on
//! `/metrics`. Every name is defined here, once; label values come from
//! closed sets (outcomes, reasons, operations), so series stay bounded.
//! docs/METRICS.md lists them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Counter names.
pub(crate) const RUNS: &str = "shell_query_runs_total";
pub(crate) const POLL_TICKS: &str = "shell_query_poll_ticks_total";
pub(crate) const POLL_TICKS_DEFERRED: &str = "shell_query_poll_ticks_deferred_total";
pub(crate) const IS_RUNNING_CHECKS: &str = "shell_query_isrunning_checks_total";
pub(crate) const NOT_RUNNING_CONFIRMATIONS: &str = "shell_query_not_running_confirmations_total";
pub(crate) const FAST_PATH_COMPLETIONS: &str = "shell_query_fast_path_completions_total";
pub(crate) const ROWSET_READINESS_RETRIES: &str = "shell_query_rowset_readiness_retries_total";
pub(crate) const POLL_TIMEOUTS: &str = "shell_query_poll_timeouts_total";
pub(crate) const RECONCILER_ACTIONS: &str = "shell_query_reconciler_actions_total";
pub(crate) const SWEEPER_DELETIONS: &str = "shell_query_sweeper_deletions_total";
pub(crate) const MCE_CALLS: &str = "shell_query_mce_calls_total";
pub(crate) const TOKEN_REFRESHES: &str = "shell_query_token_refreshes_total";
pub(crate) const DLQ_MESSAGES: &str = "shell_query_dlq_messages_total";
pub(crate) const CONSUMER_REDECLARED: &str = "shell_query_consumer_redeclared_total";
pub(crate) const STRAY_CONSUMERS_REMOVED: &str = "shell_query_stray_consumers_removed_total";
pub(crate) const RECONCILER_LAST_SUCCESS: &str = "shell_query_reconciler_last_success_timestamp_seconds";
pub(crate) const SWEEPER_LAST_SUCCESS: &str = "shell_query_sweeper_last_success_timestamp_seconds";
pub(crate) const BUILD_INFO: &str = "shell_query_build_info";
pub(crate) const TENANTS_THROTTLED: &str = "shell_query_tenants_throttled";
pub(crate) const REPLICAS: &str = "shell_query_replicas";
pub(crate) const NATS_CONNECTED: &str = "shell_query_nats_connected";
pub(crate) const RUNS_BY_STATUS: &str = "shell_query_runs";
pub(crate) const OLDEST_RUNNING: &str = "shell_query_oldest_running_run_age_seconds";
/// Histogram names.
pub(crate) const RUN_DURATION: &str = "shell_query_run_duration_seconds";
pub(crate) const POLL_TICK_DURATION: &str = "shell_query_poll_tick_duration_seconds";
pub(crate) const POLL_TICK_LATENESS: &str = "shell_query_poll_tick_lateness_seconds";
pub(crate) const MCE_CALL_DURATION: &str = "shell_query_mce_call_duration_seconds";
pub(crate) const DETECTION_DELAY: &str = "shell_query_detection_delay_seconds";
/// Gauge name.
pub(crate) const CONSUMER_PENDING: &str = "shell_query_consumer_pending";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Upper bounds of the run-duration buckets, in seconds (1 s to 30 min).
const RUN_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0];
/// A tick's own work: a database read, maybe an MCE call, a write.
const TICK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How late a delivery came after the delay its last tick asked for.
const LATENESS_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
/// One MCE call with its retries.
const CALL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// From the first sign that a query had finished to its run being ready.
const DETECTION_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0];

/// Every family the service defines: name, kind, help and (histograms) its
/// buckets. Rendered in this order.
const FAMILIES: &[(&str, Kind, &str, &[f64])] = &[
    (
        RUNS,
        Kind::Counter,
        "Runs that reached a terminal state, by outcome and reason.",
        &[],
    ),
    (POLL_TICKS, Kind::Counter, "Poll deliveries handled.", &[]),
    (
        POLL_TICKS_DEFERRED,
        Kind::Counter,
        "Poll deliveries sent back unasked because their tenant had its share of ticks in flight.",
        &[],
    ),
    (
        IS_RUNNING_CHECKS,
        Kind::Counter,
        "REST isRunning checks, by answer.",
        &[],
    ),
    (
        NOT_RUNNING_CONFIRMATIONS,
        Kind::Counter,
        "Not-running answers counted towards completion.",
        &[],
    ),
    (
        FAST_PATH_COMPLETIONS,
        Kind::Counter,
        "Runs completed by the row probe.",
        &[],
    ),
    (
        ROWSET_READINESS_RETRIES,
        Kind::Counter,
        "Rowset readiness checks that found the results not yet queryable.",
        &[],
    ),
    (
        POLL_TIMEOUTS,
        Kind::Counter,
        "Runs failed by the poll duration budget.",
        &[],
    ),
    (RECONCILER_ACTIONS, Kind::Counter, "Reconciler actions, by kind.", &[]),
    (
        SWEEPER_DELETIONS,
        Kind::Counter,
        "Leaked QueryDefinitions deleted by the sweeper.",
        &[],
    ),
    (
        MCE_CALLS,
        Kind::Counter,
        "MCE calls (after retries), by operation and result.",
        &[],
    ),
    (TOKEN_REFRESHES, Kind::Counter, "Refresh-token grants, by result.", &[]),
    (
        DLQ_MESSAGES,
        Kind::Counter,
        "Messages copied to the DLQ, by consumer.",
        &[],
    ),
    (
        CONSUMER_REDECLARED,
        Kind::Counter,
        "Consumers found deleted or changed and declared again, by consumer.",
        &[],
    ),
    (
        STRAY_CONSUMERS_REMOVED,
        Kind::Counter,
        "Push consumers of SHELL_QUERY_STATUS deleted for delivering outside the API's inbox.",
        &[],
    ),
    (
        RUN_DURATION,
        Kind::Histogram,
        "Seconds from a run's creation to its terminal state, by outcome.",
        RUN_BUCKETS,
    ),
    (
        POLL_TICK_DURATION,
        Kind::Histogram,
        "Seconds one poll delivery took to handle.",
        TICK_BUCKETS,
    ),
    (
        POLL_TICK_LATENESS,
        Kind::Histogram,
        "Seconds a poll delivery came after the time its previous tick on this replica asked for.",
        LATENESS_BUCKETS,
    ),
    (
        MCE_CALL_DURATION,
        Kind::Histogram,
        "Seconds of one MCE call including its retries, by operation.",
        CALL_BUCKETS,
    ),
    (
        DETECTION_DELAY,
        Kind::Histogram,
        "Seconds from the first tick that saw a query finished (complete or not running) to its run being ready.",
        DETECTION_BUCKETS,
    ),
    (
        CONSUMER_PENDING,
        Kind::Gauge,
        "Messages of a consumer: not yet delivered (pending) or waiting for an ack (ack_pending).",
        &[],
    ),
    (
        RECONCILER_LAST_SUCCESS,
        Kind::Gauge,
        "Unix time of this replica's last complete reconciler pass.",
        &[],
    ),
    (
        SWEEPER_LAST_SUCCESS,
        Kind::Gauge,
        "Unix time of this replica's last complete sweeper pass.",
        &[],
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        "Always 1; the labels name the running build.",
        &[],
    ),
    (
        TENANTS_THROTTLED,
        Kind::Gauge,
        "Tenants whose adaptive limit of poll ticks at MCE is below where it started (429s or 5xx).",
        &[],
    ),
    (
        NATS_CONNECTED,
        Kind::Gauge,
        "1 while this replica's NATS connection is up, 0 while it reconnects.",
        &[],
    ),
    (
        RUNS_BY_STATUS,
        Kind::Gauge,
        "Runs in the database by status, sampled every 15 s.",
        &[],
    ),
    (
        OLDEST_RUNNING,
        Kind::Gauge,
        "Age of the oldest run still running, in seconds (0 when none), sampled every 15 s.",
        &[],
    ),
    (
        REPLICAS,
        Kind::Gauge,
        "Replicas sharing every tenant's MCE budget, as this one counts them (each takes its part).",
        &[],
    ),
];

/// The process families rendered from /proc at each scrape (Linux only),
/// under the names Prometheus client libraries use.
const PROCESS_FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU seconds.",
    ),
    (
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory in bytes.",
    ),
    ("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory in bytes."),
    ("process_open_fds", Kind::Gauge, "Open file descriptors."),
    ("process_max_fds", Kind::Gauge, "The open file descriptor limit."),
    (
        "process_start_time_seconds",
        Kind::Gauge,
        "Unix time the process started.",
    ),
];

/// The name of every family `/metrics` may show (histograms by their base
/// name): dashboards and alert rules are checked against it.
pub fn exported_names() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .map(|f| f.0)
        .chain(PROCESS_FAMILIES.iter().map(|f| f.0))
        .collect()
}

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub(crate) struct Metrics {
    gauges: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

impl Metrics {
    pub(crate) fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub(crate) fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        *self.counters.lock().expect("metrics lock").entry(key).or_default() += n;
    }

    pub(crate) fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.gauges.lock().expect("metrics lock").insert(key, value);
    }

    pub(crate) fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        let secs = value.as_secs_f64();
        let mut histograms = self.histograms.lock().expect("metrics lock");
        let bounds = buckets(name);
        let h = histograms.entry(key).or_insert_with(|| Histogram {
            buckets: vec![0; bounds.len()],
            ..Default::default()
        });
        for (i, bound) in bounds.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// A histogram with no observation yet, shown from the start.
    pub(crate) fn touch(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        let bounds = buckets(name).len();
        self.histograms
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_insert_with(|| Histogram {
                buckets: vec![0; bounds],
                ..Default::default()
            });
    }

    /// Shows every family this module knows the labels of from the start:
    /// counters at 0 (so the first DLQ copy or refused token is an
    /// increase, and dashboards never say "No data"), histograms empty.
    /// The MCE adapter and the lifecycle add the families whose labels
    /// they own (`adapters::mce::start_metrics_at_zero`,
    /// `lifecycle::end::start_metrics_at_zero`).
    pub(crate) fn start_at_zero(&self) {
        for consumer in ["execute", "poll", "cancel", "undeliverable"] {
            self.add(DLQ_MESSAGES, &[("consumer", consumer)], 0);
            self.add(CONSUMER_REDECLARED, &[("consumer", consumer)], 0);
        }
        for result in ["ok", "refused", "error"] {
            self.add(TOKEN_REFRESHES, &[("result", result)], 0);
        }
        for answer in ["running", "not_running", "bad_id", "unavailable"] {
            self.add(IS_RUNNING_CHECKS, &[("answer", answer)], 0);
        }
        for action in [
            "run_failed",
            "cancel_handled",
            "event_published",
            "poll_republished",
            "execute_republished",
        ] {
            self.add(RECONCILER_ACTIONS, &[("action", action)], 0);
        }
        for name in [
            POLL_TICKS,
            POLL_TICKS_DEFERRED,
            STRAY_CONSUMERS_REMOVED,
            NOT_RUNNING_CONFIRMATIONS,
            FAST_PATH_COMPLETIONS,
            ROWSET_READINESS_RETRIES,
            POLL_TIMEOUTS,
            SWEEPER_DELETIONS,
        ] {
            self.add(name, &[], 0);
        }
        for name in [POLL_TICK_DURATION, POLL_TICK_LATENESS, DETECTION_DELAY] {
            self.touch(name, &[]);
        }
        self.set(NATS_CONNECTED, &[], 0.0);
    }

    /// Sets `shell_query_build_info{version}` to 1.
    pub(crate) fn record_build(&self, version: &str) {
        self.set(BUILD_INFO, &[("version", version)], 1.0);
    }

    /// Sets a gauge to the current Unix time (a job's last success).
    pub(crate) fn set_now(&self, name: &'static str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.set(name, &[], now.as_secs_f64());
    }

    /// The Prometheus text exposition of everything recorded, then the
    /// process families.
    pub(crate) fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        // Read before any lock is taken: no tick waits on /proc.
        let process = process::sample();
        let gauges = self.gauges.lock().expect("metrics lock");
        let counters = self.counters.lock().expect("metrics lock");
        let histograms = self.histograms.lock().expect("metrics lock");
        for (name, kind, help, bounds) in FAMILIES {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {}\n", kind.as_str());
            match kind {
                Kind::Counter => {
                    for ((_, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{name}{} {v}", labels_text(labels, None));
                    }
                }
                Kind::Gauge => {
                    for ((_, labels), v) in gauges.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{name}{} {v}", labels_text(labels, None));
                    }
                }
                Kind::Histogram => {
                    for ((_, labels), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                        for (bound, count) in bounds.iter().zip(&h.buckets) {
                            let le = labels_text(labels, Some(("le", bound.to_string())));
                            let _ = writeln!(out, "{name}_bucket{le} {count}");
                        }
                        let plain = labels_text(labels, None);
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}\n{name}_sum{plain} {}\n{name}_count{plain} {}",
                            labels_text(labels, Some(("le", "+Inf".into()))),
                            h.count,
                            h.sum,
                            h.count
                        );
                    }
                }
            }
        }
        drop((gauges, counters, histograms));
        for ((name, kind, help), value) in PROCESS_FAMILIES.iter().zip(process) {
            if let Some(v) = value {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {}\n{name} {v}\n",
                    kind.as_str()
                );
            }
        }
        out
    }
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

fn buckets(name: &str) -> &'static [f64] {
    FAMILIES.iter().find(|f| f.0 == name).map_or(RUN_BUCKETS, |f| f.3)
}

fn labels_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The process families, read from /proc/self in `PROCESS_FAMILIES`'
/// order; `None` where this system does not tell.
mod process {
    pub(crate) fn sample() -> [Option<f64>; 6] {
        #[cfg(target_os = "linux")]
        {
            linux()
        }
        #[cfg(not(target_os = "linux"))]
        {
            [None; 6]
        }
    }

    #[cfg(target_os = "linux")]
    fn linux() -> [Option<f64>; 6] {
        // SAFETY: sysconf reads a configuration value; it has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // `fields[0]` is field 3 (state) of proc(5).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let per_tick = |v: f64| (ticks > 0).then(|| v / ticks as f64);
        let cpu = field(14).zip(field(15)).and_then(|(u, s)| per_tick(u + s));
        let virtual_bytes = field(23);
        let resident = field(24).map(|pages| pages * page as f64);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        let start = field(22)
            .and_then(per_tick)
            .zip(boot)
            .map(|(since_boot, boot)| boot + since_boot);
        let open = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        let max = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
        [cpu, resident, virtual_bytes, open, max, start]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_in_the_text_format() {
        let m = Metrics::default();
        m.inc(RUNS, &[("outcome", "ready"), ("reason", "complete")]);
        m.inc(RUNS, &[("outcome", "ready"), ("reason", "complete")]);
        m.inc(POLL_TICKS, &[]);
        m.observe(RUN_DURATION, &[("outcome", "ready")], Duration::from_secs(7));
        let text = m.render();
        assert!(text.contains("# TYPE shell_query_runs_total counter\n"), "{text}");
        assert!(
            text.contains("shell_query_runs_total{outcome=\"ready\",reason=\"complete\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("shell_query_poll_ticks_total 1\n"));
        assert!(
            text.contains("shell_query_run_duration_seconds_bucket{outcome=\"ready\",le=\"5\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("shell_query_run_duration_seconds_bucket{outcome=\"ready\",le=\"15\"} 1\n"));
        assert!(text.contains("shell_query_run_duration_seconds_count{outcome=\"ready\"} 1\n"));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn each_histogram_has_its_own_buckets_and_the_process_is_described() {
        let m = Metrics::default();
        m.observe(POLL_TICK_DURATION, &[], Duration::from_millis(3));
        m.record_build("1.2.3");
        m.set_now(RECONCILER_LAST_SUCCESS);
        let text = m.render();
        assert!(
            text.contains("shell_query_poll_tick_duration_seconds_bucket{le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("shell_query_poll_tick_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("shell_query_build_info{version=\"1.2.3\"} 1\n"));
        let last: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("shell_query_reconciler_last_success_timestamp_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(last > 1.7e9, "{last}");
        for (name, _, _) in PROCESS_FAMILIES {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing:\n{text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "{rss}");
    }
}
