//! The poll decision and the schedule of looks, and the settings they read.

pub mod decide;
pub mod schedule;

use std::time::Duration;

use crate::backoff::Backoff;

/// The poll decision's view of the settings (`POLL_*`); the service's
/// configuration builds it.
#[derive(Clone, Debug, PartialEq)]
pub struct PollConfig {
    pub schedule: schedule::Schedule,
    pub backoff: Backoff,
    pub max_count: u32,
    pub max_duration: Duration,
    pub completed_date_trigger_min_runtime: Duration,
    pub stuck_threshold: Duration,
    pub not_running_confirmations: u32,
    pub not_running_min_gap: Duration,
    pub rowset_ready_max_attempts: u32,
    pub rowset_backoff: Backoff,
    pub row_probe_min_runtime: Duration,
    pub row_probe_min_interval: Duration,
}
