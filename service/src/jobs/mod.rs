//! The periodic jobs, each run on the one replica holding its lease.

pub mod reconciler;
pub mod sweeper;
