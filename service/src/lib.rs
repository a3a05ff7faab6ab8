//! shell-query-worker: runs SQL for Marketing Cloud Engagement users on NATS
//! JetStream and PostgreSQL. See ARCHITECTURE.md for the map.
//!
//! The layers, lowest first; a module imports only from its own layer or
//! lower ones (tests/it/layers.rs checks it):
//! 1. `shell_query_core` (its own crate): the decisions, no I/O;
//! 2. [`adapters`]: the database, MCE, NATS, crypto, metrics, telemetry;
//! 3. [`lifecycle`]: the handles handlers share, and the one place a run ends;
//! 4. [`handlers`] (one delivery or request each) and [`jobs`] (periodic);
//! 5. [`runtime`]: the consumer loop, its acknowledgements, the consumer
//!    watch and the HTTP probes;
//! 6. [`app`]: the composition root and the command line (commands, the
//!    demo).

pub mod adapters;
pub mod app;
pub mod handlers;
pub mod jobs;
pub mod lifecycle;
pub mod runtime;
