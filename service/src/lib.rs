//! shell-query-worker: runs SQL for Marketing Cloud Engagement users on NATS
//! JetStream and PostgreSQL. See ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod backoff;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod crypto;
pub mod demo;
pub mod execute;
pub mod http;
pub mod jetstream;
pub mod lease;
pub mod mce;
pub mod metrics;
pub mod model;
pub mod poll;
pub mod reconciler;
pub mod schema;
pub mod store;
pub mod sweeper;
pub mod telemetry;
