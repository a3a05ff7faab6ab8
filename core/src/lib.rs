//! The decisions of shell-query-worker, apart from every adapter: the poll
//! decision and schedule, backoff, schema analysis and inference, target
//! checks, asset naming, the run's state machine and how it ends, whether a
//! second Perform is harmless, and the message types. Synchronous functions over plain data; time and random
//! draws are parameters. This crate depends on data crates only, so the
//! compiler keeps it free of I/O.

pub mod account;
pub mod admission;
pub mod api;
pub mod backoff;
pub mod event;
pub mod limit;
pub mod message;
pub mod naming;
pub mod poll;
pub mod resume;
pub mod run;
pub mod schema;
