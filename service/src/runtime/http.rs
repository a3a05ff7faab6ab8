//! `/healthz` (alive: every consumer loop running, or still starting) and
//! `/readyz` (started, NATS connected, every consumer loop running and every
//! consumer confirmed, database reachable, not draining).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::adapters::store::Store;

#[derive(Clone)]
pub(crate) struct Health {
    pub store: Store,
    pub nats: async_nats::Client,
    pub draining: Arc<AtomicBool>,
    pub metrics: Arc<crate::adapters::metrics::Metrics>,
    /// Set once the streams and consumers are declared: until then the
    /// service is starting (alive, not ready).
    pub consumers: Arc<std::sync::OnceLock<Arc<super::consumer_watch::Watch>>>,
}

async fn metrics(State(h): State<Health>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let connected = h.nats.connection_state() == async_nats::connection::State::Connected;
    h.metrics.set(
        crate::adapters::metrics::NATS_CONNECTED,
        &[],
        if connected { 1.0 } else { 0.0 },
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
}

async fn healthz(State(h): State<Health>) -> (StatusCode, String) {
    let Some(consumers) = h.consumers.get() else {
        return (StatusCode::OK, "starting".into());
    };
    match consumers.dead_loop() {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
        None => (StatusCode::OK, "ok".into()),
    }
}

async fn readyz(State(h): State<Health>) -> (StatusCode, String) {
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, why.to_string());
    if h.draining.load(Ordering::SeqCst) {
        return unavailable("draining");
    }
    let Some(consumers) = h.consumers.get() else {
        return unavailable("starting: waiting for NATS and its streams");
    };
    if h.nats.connection_state() != async_nats::connection::State::Connected {
        return unavailable("nats disconnected");
    }
    if let Some(why) = consumers.dead_loop().or_else(|| consumers.unready()) {
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    // A database that does not answer is as unready as one that refuses.
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), h.store.ping()).await;
    if !matches!(ping, Ok(true)) {
        return unavailable("database unreachable");
    }
    (StatusCode::OK, "ready".into())
}

/// Binds and serves in the background.
pub(crate) async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}
