//! The one integration-test binary: real nats-server, real PostgreSQL, the
//! MCE simulator and the real `shell-query-worker` binary.

mod chaos;
mod cluster;
mod commands;
mod connections;
mod contract;
mod deploy;
mod e2e;
mod execute;
mod fairness;
mod inputs;
mod jetstream;
mod layers;
mod lifecycle;
mod mce_client;
mod operations;
mod operator;
mod permissions;
mod poll;
mod store;
mod support;
mod traces;
