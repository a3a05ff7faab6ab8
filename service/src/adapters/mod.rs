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

/// Installs ring as rustls's process-wide crypto provider (once). reqwest
/// (MCE calls, OTLP over HTTP) takes the process default; async-nats and
/// sqlx bring ring too, so the process holds one TLS implementation.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
