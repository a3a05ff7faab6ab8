//! The service's metrics, rendered in the Prometheus text format on
//! `/metrics`. Every name is defined here, once; label values come from
//! closed sets (outcomes, reasons, operations), so series stay bounded.
//! docs/METRICS.md lists them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Counter names.
pub const RUNS: &str = "shell_query_runs_total";
pub const POLL_TICKS: &str = "shell_query_poll_ticks_total";
pub const IS_RUNNING_CHECKS: &str = "shell_query_isrunning_checks_total";
pub const NOT_RUNNING_CONFIRMATIONS: &str = "shell_query_not_running_confirmations_total";
pub const FAST_PATH_COMPLETIONS: &str = "shell_query_fast_path_completions_total";
pub const ROWSET_READINESS_RETRIES: &str = "shell_query_rowset_readiness_retries_total";
pub const POLL_TIMEOUTS: &str = "shell_query_poll_timeouts_total";
pub const RECONCILER_ACTIONS: &str = "shell_query_reconciler_actions_total";
pub const SWEEPER_DELETIONS: &str = "shell_query_sweeper_deletions_total";
pub const MCE_CALLS: &str = "shell_query_mce_calls_total";
pub const TOKEN_REFRESHES: &str = "shell_query_token_refreshes_total";
pub const DLQ_MESSAGES: &str = "shell_query_dlq_messages_total";
pub const CONSUMER_REDECLARED: &str = "shell_query_consumer_redeclared_total";
/// Histogram name.
pub const RUN_DURATION: &str = "shell_query_run_duration_seconds";
/// Gauge name.
pub const CONSUMER_PENDING: &str = "shell_query_consumer_pending";

const HELP: &[(&str, &str)] = &[
    (RUNS, "Runs that reached a terminal state, by outcome and reason."),
    (POLL_TICKS, "Poll deliveries handled."),
    (IS_RUNNING_CHECKS, "REST isRunning checks, by answer."),
    (
        NOT_RUNNING_CONFIRMATIONS,
        "Not-running answers counted towards completion.",
    ),
    (FAST_PATH_COMPLETIONS, "Runs completed by the row probe."),
    (
        ROWSET_READINESS_RETRIES,
        "Rowset readiness checks that found the results not yet queryable.",
    ),
    (POLL_TIMEOUTS, "Runs failed by the poll duration budget."),
    (RECONCILER_ACTIONS, "Reconciler actions, by kind."),
    (SWEEPER_DELETIONS, "Leaked QueryDefinitions deleted by the sweeper."),
    (MCE_CALLS, "MCE calls (after retries), by operation and result."),
    (TOKEN_REFRESHES, "Refresh-token grants, by result."),
    (DLQ_MESSAGES, "Messages copied to the DLQ, by consumer."),
    (
        CONSUMER_REDECLARED,
        "Consumers found deleted or changed and declared again, by consumer.",
    ),
    (RUN_DURATION, "Seconds from a run's creation to its terminal state."),
    (
        CONSUMER_PENDING,
        "Messages of a consumer: not yet delivered (pending) or waiting for an ack (ack_pending).",
    ),
];

/// Upper bounds of the run-duration buckets, in seconds.
const DURATION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    gauges: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        *self.counters.lock().expect("metrics lock").entry(key).or_default() += n;
    }

    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.gauges.lock().expect("metrics lock").insert(key, value);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        let secs = value.as_secs_f64();
        let mut histograms = self.histograms.lock().expect("metrics lock");
        let h = histograms.entry(key).or_insert_with(|| Histogram {
            buckets: vec![0; DURATION_BUCKETS.len()],
            ..Default::default()
        });
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let labels_text = |labels: &Labels, extra: Option<(&str, String)>| {
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
        };
        for (name, help) in HELP {
            let is_histogram = *name == RUN_DURATION;
            let is_gauge = *name == CONSUMER_PENDING;
            let kind = if is_histogram {
                "histogram"
            } else if is_gauge {
                "gauge"
            } else {
                "counter"
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            if is_gauge {
                for ((n, labels), v) in self
                    .gauges
                    .lock()
                    .expect("metrics lock")
                    .iter()
                    .filter(|((n, _), _)| n == name)
                {
                    out.push_str(&format!("{n}{} {v}\n", labels_text(labels, None)));
                }
            } else if is_histogram {
                for ((n, labels), h) in self
                    .histograms
                    .lock()
                    .expect("metrics lock")
                    .iter()
                    .filter(|((n, _), _)| n == name)
                {
                    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
                        out.push_str(&format!(
                            "{n}_bucket{} {}\n",
                            labels_text(labels, Some(("le", bound.to_string()))),
                            h.buckets[i]
                        ));
                    }
                    out.push_str(&format!(
                        "{n}_bucket{} {}\n",
                        labels_text(labels, Some(("le", "+Inf".into()))),
                        h.count
                    ));
                    out.push_str(&format!(
                        "{n}_sum{} {}\n{n}_count{} {}\n",
                        labels_text(labels, None),
                        h.sum,
                        labels_text(labels, None),
                        h.count
                    ));
                }
            } else {
                for ((n, labels), v) in self
                    .counters
                    .lock()
                    .expect("metrics lock")
                    .iter()
                    .filter(|((n, _), _)| n == name)
                {
                    out.push_str(&format!("{n}{} {v}\n", labels_text(labels, None)));
                }
            }
        }
        out
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
}
