//! Everything that talks to the world outside the process. Handlers and
//! jobs use these; none of them knows a handler, a job or the app.

pub mod crypto;
pub mod history;
pub mod lease;
pub mod mce;
pub mod metrics;
pub mod nats;
pub mod store;
pub mod telemetry;
