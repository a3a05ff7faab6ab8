//! The composition root: the only module that knows every other one. It
//! builds the handles once, starts the consumers, the jobs, the results
//! service and the HTTP server, and shuts down on SIGTERM/SIGINT.

pub mod cli;
pub mod config;
pub mod contract;
#[cfg(feature = "demo")]
pub mod demo;
mod dlq;
mod migrate;
pub mod operator;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use secrecy::{ExposeSecret, SecretString};
use shell_query_core::poll::PollConfig;
use tokio::sync::watch;

use self::config::{ConfigError, RunArgs};
use crate::adapters::crypto::Cipher;
use crate::adapters::mce::{BaseUrls, Mce, RetryPolicy};
use crate::adapters::metrics::Metrics;
use crate::adapters::nats::Subjects;
use crate::adapters::nats::{ConsumerSettings, consumer_specs};
use crate::adapters::store::credentials::CredentialStore;
use crate::handlers::{Handler, execute::Execute, poll::Poll};
use crate::lifecycle::Deps;

/// How long in-flight messages get to finish after SIGTERM.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(25);

/// Settings `run` needs beyond what clap checks.
pub struct Validated {
    pub cipher: Cipher,
    pub client_id: String,
    pub client_secret: SecretString,
    pub poll: PollConfig,
    pub base_urls: BaseUrls,
    pub nats_servers: Vec<async_nats::ServerAddr>,
}

pub fn validate(args: &RunArgs) -> Result<Validated, ConfigError> {
    let cipher = args.keys.cipher()?;
    let (client_id, client_secret) = args.mce.client()?;
    let poll = args.poll.to_config()?;
    let base_urls = args.mce.checked_base_urls()?;
    let nats_servers = args.nats.servers()?;
    Ok(Validated {
        cipher,
        client_id,
        client_secret,
        poll,
        base_urls,
        nats_servers,
    })
}

/// Connects to `servers` with NATS_* settings `validate` has checked,
/// retrying until the first connection succeeds.
async fn connect_nats(args: &RunArgs, servers: Vec<async_nats::ServerAddr>) -> anyhow::Result<async_nats::Client> {
    let options = nats_options(&args.nats)
        .await?
        .retry_on_initial_connect()
        .event_callback(|event| async move { tracing::info!(%event, "nats connection event") });
    Ok(options.connect(servers).await?)
}

/// The connection options NATS_* settings ask for: credentials, the inbox
/// prefix, TLS.
pub(crate) async fn nats_options(n: &crate::app::config::NatsArgs) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut options = match &n.nats_creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .context("NATS_CREDS_FILE")?,
        None => async_nats::ConnectOptions::new(),
    };
    options = options
        .name("shell-query-worker")
        // Replies only under this client's own prefix (nats.conf lets each
        // user subscribe to `_INBOX.<user>.>` and nothing wider).
        .custom_inbox_prefix(&n.nats_inbox_prefix);
    if let (Some(user), Some(password)) = (&n.nats_user, &n.nats_password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_string());
    }
    if let Some(token) = &n.nats_token {
        options = options.token(token.expose_secret().to_string());
    }
    if let Some(ca) = &n.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&n.nats_tls_cert, &n.nats_tls_key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options)
}

/// `shell-query-worker run`.
pub(crate) async fn run(args: RunArgs, settings: Validated) -> anyhow::Result<()> {
    run_until(args, settings, shutdown_signal()).await
}

/// The service until `shutdown` completes (SIGTERM/SIGINT for `run`; the
/// demo's own end for `demo`).
pub(crate) async fn run_until(
    args: RunArgs,
    settings: Validated,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::adapters::store::migrate(args.db.database_url.expose_secret())
        .await
        .context("migrating the database")?;
    let store = crate::adapters::store::connect(args.db.database_url.expose_secret(), args.db.database_max_connections)
        .await
        .context("connecting to the database")?;
    let client = connect_nats(&args, settings.nats_servers)
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(client.clone());
    let subjects = Subjects::new(&args.nats.subject_prefix);
    let execute_ack_wait = Duration::from_millis(args.execute_ack_wait_ms);
    let poll_ack_wait = Duration::from_millis(args.poll_ack_wait_ms);
    let limits = args.streams.limits();
    let specs = consumer_specs(
        &subjects,
        &ConsumerSettings {
            poll_max_ack_pending: args.poll_max_ack_pending,
            execute_ack_wait,
            poll_ack_wait,
        },
    );
    let metrics = Arc::new(Metrics::default());
    metrics.record_build(crate::adapters::telemetry::VERSION);
    metrics.start_at_zero();
    crate::adapters::mce::client::start_metrics_at_zero(&metrics);
    crate::lifecycle::end::start_metrics_at_zero(&metrics);
    // Alive from here on; ready once NATS has taken the declarations.
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::OnceLock::new());
    let http = crate::runtime::http::serve(
        args.http_addr,
        crate::runtime::http::Health {
            store: store.clone(),
            nats: client.clone(),
            draining: draining.clone(),
            metrics: metrics.clone(),
            consumers: started.clone(),
        },
    )
    .await
    .context("HTTP_ADDR")?;
    let consumers = declare_when_ready(Duration::from_millis(args.startup_timeout_ms), || {
        crate::adapters::nats::declare(&js, &subjects, &limits, &specs)
    })
    .await?;
    let consumer_watch =
        crate::runtime::consumer_watch::Watch::new(&specs, Duration::from_millis(args.consumer_check_interval_ms));
    let _ = started.set(consumer_watch.clone());

    let mce = Mce::new(
        CredentialStore::new(store.clone()),
        settings.cipher.clone(),
        settings.client_id,
        settings.client_secret,
        settings.base_urls,
        RetryPolicy::default(),
    )
    .with_timeouts(args.mce.timeouts())
    .with_metrics(metrics.clone())
    .with_status_batching(
        Duration::from_millis(args.status_batch_window_ms),
        args.status_batch_max as usize,
    )
    .with_admission(
        crate::adapters::mce::admission::Admission::new(shell_query_core::admission::AdmissionConfig {
            limit: shell_query_core::limit::LimitConfig {
                initial: args.tenant_concurrency_initial.min(args.tenant_concurrency_max),
                max: args.tenant_concurrency_max,
                ..Default::default()
            },
            // A tenant may hold at most half the consumer's places.
            tick_share: args.poll_concurrency / 2,
        })
        .with_metrics(metrics.clone()),
    );
    let deps = Arc::new(Deps {
        store: store.clone(),
        js,
        subjects,
        mce,
        cipher: settings.cipher,
        metrics: metrics.clone(),
        histories: Default::default(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::runtime::consumer_watch::run(
        consumer_watch.clone(),
        deps.js.clone(),
        deps.subjects.clone(),
        limits,
        specs.to_vec(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    let loops = [
        (
            Handler::Execute(Execute::default()),
            consumers.execute,
            args.execute_concurrency as usize,
            execute_ack_wait,
        ),
        (
            Handler::Poll(Box::new(Poll::new(settings.poll))),
            consumers.poll,
            args.poll_concurrency as usize,
            poll_ack_wait,
        ),
        (
            Handler::Undeliverable,
            consumers.undeliverable,
            4,
            crate::adapters::nats::CANCEL_ACK_WAIT,
        ),
        (
            Handler::Cancel,
            consumers.cancel,
            8,
            crate::adapters::nats::CANCEL_ACK_WAIT,
        ),
    ];
    let settle_window = Duration::from_millis(args.settle_window_ms);
    for (handler, consumer, concurrency, ack_wait) in loops {
        let guard = consumer_watch.loop_guard(handler.name(), stop_rx.clone());
        let (deps, stop_rx) = (deps.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let _guard = guard;
            crate::runtime::consumer::run(handler, consumer, concurrency, ack_wait, settle_window, deps, stop_rx).await;
        });
    }
    tasks.spawn(crate::jobs::reconciler::run(
        deps.clone(),
        crate::jobs::reconciler::Config {
            grace: Duration::from_millis(args.reconciler_grace_ms),
            // Every execute delivery may take an ack wait, plus its backoff.
            start_deadline: (execute_ack_wait + Duration::from_secs(60))
                * crate::adapters::nats::EXECUTE_MAX_DELIVER as u32,
        },
        Duration::from_millis(args.reconciler_interval_ms),
        stop_rx.clone(),
    ));
    tasks.spawn(sample_runs(deps.store.clone(), metrics.clone(), stop_rx.clone()));
    let admission = deps.mce.admission().clone();
    tasks.spawn(crate::adapters::lease::keep_membership(
        deps.js.clone(),
        move |replicas| admission.set_replicas(replicas),
        stop_rx.clone(),
    ));
    tasks.spawn(crate::jobs::sweeper::run(
        deps.clone(),
        Duration::from_millis(args.sweeper_min_age_ms),
        Duration::from_millis(args.sweeper_interval_ms),
        stop_rx.clone(),
    ));
    let api = crate::handlers::results::serve(deps.clone(), client.clone(), &args.nats.subject_prefix, stop_rx.clone())
        .await
        .context("starting the results service")?;
    tracing::info!("shell-query-worker running");

    shutdown.await;
    tracing::info!("shutting down: draining in-flight messages");
    draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("drain deadline reached; unfinished messages will be redelivered");
    }
    let _ = api.await;
    let _ = client.flush().await;
    http.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Samples the runs by status and the oldest running run's age into their
/// gauges every 15 s (two indexed aggregates), until `shutdown`.
async fn sample_runs(store: crate::adapters::store::Store, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    use crate::adapters::metrics::{OLDEST_RUNNING, RUNS_BY_STATUS};
    let mut every = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        match crate::adapters::store::runs::run_counts(&store).await {
            Ok((counts, oldest)) => {
                for status in ["queued", "running", "ready", "failed", "canceled"] {
                    let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                    metrics.set(RUNS_BY_STATUS, &[("status", status)], n as f64);
                }
                let age = oldest.map_or(0.0, |at| {
                    (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics.set(OLDEST_RUNNING, &[], age);
            }
            Err(e) => tracing::warn!(error = %e, "could not sample the runs by status"),
        }
    }
}

/// Runs `declare` (the streams, the lease bucket and the consumers) until
/// NATS takes it: a server or cluster still forming times out or has no
/// JetStream yet. Tries again with a growing pause (200 ms to 5 s) until
/// `timeout` (STARTUP_TIMEOUT_MS), then gives up naming the last error.
async fn declare_when_ready<T, F, Fut>(timeout: Duration, mut declare: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::adapters::nats::NatsError>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = timeout.saturating_sub(started.elapsed());
        let error = match tokio::time::timeout(left, declare()).await {
            Ok(Ok(declared)) => {
                if attempt > 1 {
                    tracing::info!(attempt, "NATS is ready: streams and consumers declared");
                }
                return Ok(declared);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if started.elapsed() + pause >= timeout {
            anyhow::bail!(
                "NATS was not ready within STARTUP_TIMEOUT_MS ({} ms): declaring the streams and consumers failed {attempt} times, last: {error}",
                timeout.as_millis()
            );
        }
        tracing::warn!(attempt, error, "NATS is not ready yet; declaring again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
