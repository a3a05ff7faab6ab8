//! Logs, traces and trace-context propagation: one home for all three.
//!
//! Logs are JSON lines (or pretty on a terminal). Traces go out over OTLP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the other
//! standard `OTEL_EXPORTER_OTLP_*` variables, e.g. `_PROTOCOL`). W3C
//! `traceparent`/`tracestate` travel in NATS headers.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The service's name in traces unless `OTEL_SERVICE_NAME` (or a
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) names it otherwise.
pub(crate) const SERVICE_NAME: &str = "shell-query-worker";
/// The version in `service.version`, `/metrics`' build info and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The first of the trace-specific and the general OTLP variable that is set
/// and not empty (`OTEL_EXPORTER_OTLP_TRACES_X`, then `OTEL_EXPORTER_OTLP_X`).
fn otlp_var(suffix: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
    .into_iter()
    .find_map(|name| match std::env::var(&name) {
        Ok(v) if !v.trim().is_empty() => Some((name, v.trim().to_string())),
        _ => None,
    })
}

/// The OTLP span exporter the standard variables ask for, or `None` when no
/// endpoint is set. `grpc` goes over tonic, `http/protobuf` (the default)
/// and `http/json` over reqwest; an `https://` endpoint is verified against
/// the system's roots plus `OTEL_EXPORTER_OTLP_CERTIFICATE` when it is set.
fn exporter() -> Option<Result<opentelemetry_otlp::SpanExporter, String>> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
    let switched_off = |var: &str, off: &str| std::env::var(var).is_ok_and(|v| v.trim().eq_ignore_ascii_case(off));
    if switched_off("OTEL_SDK_DISABLED", "true") || switched_off("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    let (_, endpoint) = otlp_var("ENDPOINT")?;
    let https = endpoint.starts_with("https://");
    let ca = match otlp_var("CERTIFICATE").filter(|_| https) {
        None => None,
        Some((name, path)) => match std::fs::read(&path) {
            Ok(pem) => Some(pem),
            Err(e) => return Some(Err(format!("{name}: {path}: {e}"))),
        },
    };
    let timeout = otlp_var("TIMEOUT")
        .and_then(|(_, ms)| ms.parse().ok())
        .map_or(std::time::Duration::from_secs(10), std::time::Duration::from_millis);
    let (protocol_var, protocol) =
        otlp_var("PROTOCOL").unwrap_or_else(|| ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()));
    crate::adapters::install_crypto_provider();
    let built = match protocol.as_str() {
        "grpc" => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout);
            if https {
                use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = ca {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
        "http/protobuf" | "http/json" => {
            let client = match http_client(ca, timeout) {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            // Said explicitly: with both encodings compiled in, the
            // exporter's own default is JSON.
            let encoding = if protocol == "http/json" {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(encoding)
                .with_timeout(timeout)
                .build()
        }
        other => {
            return Some(Err(format!(
                "{protocol_var}: {other:?} is not grpc, http/protobuf or http/json"
            )));
        }
    };
    Some(built.map_err(|e| {
        format!(
            "the OTLP exporter for {} could not start: {e}",
            crate::adapters::redacted_urls(&endpoint)
        )
    }))
}

/// The blocking client the batch exporter's thread sends with. It is built
/// on a thread of its own: reqwest's blocking client may not be made (or
/// dropped) on an async worker thread.
fn http_client(ca: Option<Vec<u8>>, timeout: std::time::Duration) -> Result<reqwest::blocking::Client, String> {
    std::thread::spawn(move || {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(pem) = ca {
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: not a PEM certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build()
            .map_err(|e| format!("the OTLP HTTP client could not be built: {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("building the OTLP HTTP client panicked".into()))
}

/// `service.name` (ours unless the environment names one), `service.version`
/// and whatever `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource() -> opentelemetry_sdk::Resource {
    let named = |var: &str, needle: &str| std::env::var(var).is_ok_and(|v| v.contains(needle) && !v.trim().is_empty());
    let builder =
        opentelemetry_sdk::Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", VERSION));
    if named("OTEL_SERVICE_NAME", "") || named("OTEL_RESOURCE_ATTRIBUTES", "service.name=") {
        builder.build()
    } else {
        builder.with_service_name(SERVICE_NAME).build()
    }
}

/// Keeps the trace exporter alive; `shutdown` flushes it.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every span still buffered.
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace export shutdown: {e}");
        }
    }
}

/// The NATS client logs every protocol line at debug and whole message
/// payloads (execute messages carry SQL) at trace: it is capped at info
/// unless `RUST_LOG` names `async_nats` itself. PostgreSQL's notices come
/// through sqlx at info (`relation "seaql_migrations" already exists,
/// skipping`, each time the migrator checks its table): they are capped at
/// warn, so its warnings still show, unless `RUST_LOG` names `sqlx`. A
/// filter that lets nothing below a cap through needs no cap (and a
/// quieter one, the demo's `warn`, is not raised).
fn capped(rust_log: Option<&str>, filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::filter::LevelFilter;
    let max = filter.max_level_hint();
    let named = |target: &str| rust_log.is_some_and(|l| l.contains(target));
    let above = |cap: LevelFilter| max.is_none_or(|max| max > cap);
    let mut filter = filter;
    if !named("async_nats") && above(LevelFilter::INFO) {
        filter = filter.add_directive("async_nats=info".parse().expect("a static directive parses"));
    }
    if !named("sqlx") && above(LevelFilter::WARN) {
        filter = filter.add_directive(
            "sqlx::postgres::notice=warn"
                .parse()
                .expect("a static directive parses"),
        );
    }
    filter
}

/// Installs the subscriber: `format` is `json`, `pretty` or unset (JSON
/// unless stdout is a terminal); `default_level` applies without `RUST_LOG`.
pub(crate) fn init(format: Option<&str>, default_level: &str) -> Telemetry {
    use std::io::IsTerminal as _;
    let filter = capped(
        std::env::var("RUST_LOG").ok().as_deref(),
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
    );
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stdout().is_terminal(),
    };
    let provider = match exporter() {
        None => None,
        Some(Ok(exporter)) => Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build(),
        ),
        Some(Err(e)) => {
            eprintln!("trace export is off: {e}");
            None
        }
    };
    // Without an exporter no span is built at all (a tick costs a fifth
    // more with the layer on); the incoming context still travels through
    // `with_incoming` and `inject`.
    let otel = provider.as_ref().map(|p| {
        let scope = opentelemetry::InstrumentationScope::builder("shell_query_worker")
            .with_version(VERSION)
            .build();
        tracing_opentelemetry::layer().with_tracer(p.tracer_with_scope(scope))
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init();
    } else {
        registry.with(tracing_subscriber::fmt::layer()).init();
    }
    Telemetry { provider }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// The trace context a message carries (empty when it has none).
pub(crate) fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&HeaderExtractor(h)),
        None => opentelemetry::Context::new(),
    }
}

tokio::task_local! {
    /// The context of the message a task handles, for [`inject`] when no
    /// span carries one (no exporter configured).
    static INCOMING: opentelemetry::Context;
}

/// Runs `work` with the message's trace context at hand, so everything it
/// publishes carries the trace on, exported or not.
pub(crate) async fn with_incoming<F: std::future::Future>(headers: Option<&HeaderMap>, work: F) -> F::Output {
    INCOMING.scope(extract(headers), work).await
}

/// Writes the current trace context into outgoing headers: the current
/// span's when traces are exported; otherwise a child of the handled
/// message's context (same trace, a fresh span id).
pub(crate) fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        return;
    }
    let Ok(incoming) = INCOMING.try_with(|c| c.span().span_context().clone()) else {
        return;
    };
    if !incoming.is_valid() {
        return;
    }
    let span_id = loop {
        let id = fastrand::u64(..);
        if id != 0 {
            break opentelemetry::trace::SpanId::from(id);
        }
    };
    let child = opentelemetry::trace::SpanContext::new(
        incoming.trace_id(),
        span_id,
        incoming.trace_flags(),
        false,
        incoming.trace_state().clone(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(child);
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the message's context (execute, cancel).
pub(crate) fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Writes the span's trace and span ids into its `trace_id` and `span_id`
/// fields, so log lines carry them (only when traces are exported).
pub(crate) fn record_ids(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
        span.record("span_id", sc.span_id().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nats_client_is_capped_at_info_unless_asked_for() {
        use tracing_subscriber::filter::LevelFilter;
        let f = |rust_log: &str| capped(Some(rust_log), tracing_subscriber::EnvFilter::new(rust_log));
        for verbose in ["trace", "debug", "info,service=debug"] {
            assert!(f(verbose).to_string().contains("async_nats=info"), "{}", f(verbose));
        }
        // Nothing below info gets through: nothing to cap, nothing raised.
        for quiet in ["info", "warn", "error"] {
            assert!(!f(quiet).to_string().contains("async_nats"), "{}", f(quiet));
        }
        assert_eq!(f("warn").max_level_hint(), Some(LevelFilter::WARN));
        // Named, it is the user's choice.
        assert!(!f("info,async_nats=trace").to_string().contains("async_nats=info"));
    }

    /// PostgreSQL's notices (info) are capped at warn: its warnings show,
    /// `already exists, skipping` does not; a filter quieter than warn is
    /// not raised, and one that names sqlx is the user's.
    #[test]
    fn postgres_notices_are_capped_at_warn_unless_asked_for() {
        use tracing_subscriber::filter::LevelFilter;
        let f = |rust_log: &str| capped(Some(rust_log), tracing_subscriber::EnvFilter::new(rust_log));
        for verbose in ["trace", "debug", "info", "warn,service=info"] {
            assert!(
                f(verbose).to_string().contains("sqlx::postgres::notice=warn"),
                "{}",
                f(verbose)
            );
        }
        for quiet in ["warn", "error"] {
            assert!(!f(quiet).to_string().contains("sqlx"), "{}", f(quiet));
        }
        assert_eq!(f("error").max_level_hint(), Some(LevelFilter::ERROR));
        assert!(!f("info,sqlx=debug").to_string().contains("notice=warn"));

        // What gets through: a notice's info line does not, its warning does.
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;
        #[derive(Clone, Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                let m = event.metadata();
                self.0.lock().unwrap().push(format!("{} {}", m.level(), m.target()));
            }
        }
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(f("info")).with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "sqlx::postgres::notice", "relation \"seaql_migrations\" already exists, skipping");
            tracing::warn!(target: "sqlx::postgres::notice", "a real warning");
            tracing::info!(target: "sea_orm_migration::migrator::exec", "Applying all pending migrations");
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["WARN sqlx::postgres::notice", "INFO sea_orm_migration::migrator::exec"]
        );
    }
}
