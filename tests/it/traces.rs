//! Traces end to end: the service exports OTLP (by default OTLP/HTTP
//! protobuf) to a local receiver; one run is one trace: the execute span
//! continues the publisher's, the poll message's PRODUCER span is its child,
//! every tick a child of that, and MCE calls, database calls and status
//! publishes children of the tick or step that made them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use axum::Router;
use axum::routing::post;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{PREFIX, System};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";
/// OTLP's `SpanKind` numbers.
const SPAN_KIND_SERVER: i64 = 2;
const SPAN_KIND_CLIENT: i64 = 3;
const SPAN_KIND_PRODUCER: i64 = 4;
const SPAN_KIND_CONSUMER: i64 = 5;

/// What an OTLP/HTTP receiver kept: every export, as OTLP/JSON (a protobuf
/// body is decoded and re-encoded), and each request's content type.
#[derive(Clone, Default)]
struct Received {
    bodies: Arc<Mutex<Vec<Value>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

/// A few lines of OTLP/HTTP receiver, for protobuf and JSON bodies.
async fn receiver() -> (String, Received) {
    use prost::Message as _;
    let received = Received::default();
    let store = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let decoded = if content_type == "application/x-protobuf" {
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
                        .ok()
                        .and_then(|r| serde_json::to_value(r).ok())
                } else {
                    serde_json::from_slice(&body).ok()
                };
                store.content_types.lock().unwrap().push(content_type);
                if let Some(v) = decoded {
                    store.bodies.lock().unwrap().push(v);
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// The TLS side of a receiver: the test CA's server certificate, offering
/// HTTP/2 (gRPC) and HTTP/1.1.
fn acceptor(certs: &tests::TlsFiles) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&certs.server_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An OTLP/HTTP receiver over TLS, written out by hand (HTTP/1.1 with
/// keep-alive): every request body, kept raw.
async fn https_receiver(certs: &tests::TlsFiles) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let acceptor = acceptor(certs);
    let store = bodies.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, store) = (acceptor.clone(), store.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut stream = tokio::io::BufReader::new(tls);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    store.lock().unwrap().push(body);
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

/// An OTLP/gRPC receiver (HTTP/2, plain or TLS): every export request's
/// protobuf, kept raw, answered with an empty `ExportTraceServiceResponse`.
async fn grpc_receiver(certs: Option<&tests::TlsFiles>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match certs {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    let acceptor = certs.map(acceptor);
    let store = bodies.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, store) = (acceptor.clone(), store.clone());
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve_grpc(tls, store).await;
                        }
                    }
                    None => serve_grpc(tcp, store).await,
                }
            });
        }
    });
    (url, bodies)
}

async fn serve_grpc<T>(io: T, store: Arc<Mutex<Vec<Vec<u8>>>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut connection) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let store = store.clone();
        tokio::spawn(async move {
            let path = request.uri().path().to_string();
            let mut body = request.into_body();
            let mut bytes = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            if path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
                store.lock().unwrap().push(bytes);
            }
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            // One message: not compressed, zero bytes long (an empty response).
            let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
        });
    }
}

/// Waits until the raw export bodies hold every one of `needles`.
async fn wait_for_bytes(bodies: &Arc<Mutex<Vec<Vec<u8>>>>, needles: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<u8> = bodies.lock().unwrap().concat();
        let missing: Vec<&&str> = needles
            .iter()
            .filter(|n| !all.windows(n.len()).any(|w| w == n.as_bytes()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver never got {missing:?} ({} bodies)",
            bodies.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every span exported: (name, the span object).
fn spans(bodies: &[Value]) -> Vec<Value> {
    bodies
        .iter()
        .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn attr(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .map(str::to_string)
                .or_else(|| v["intValue"].as_str().map(str::to_string))
                .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
                .unwrap_or_default()
        })
}

/// Waits until both periodic jobs have exported a pass.
async fn wait_for_passes(bodies: &Arc<Mutex<Vec<Value>>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = spans(&bodies.lock().unwrap());
        if ["reconciler pass", "sweeper pass"]
            .iter()
            .all(|pass| all.iter().any(|s| s["name"] == *pass))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconciler or sweeper pass exported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes an execute message that carries the publisher's `traceparent`.
async fn publish_traced_execute(system: &System) -> Uuid {
    let id = Uuid::new_v4();
    let body = serde_json::json!({
        "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid, "sqlText": "SELECT Email FROM X",
    });
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN}-01").as_str());
    let publish = PublishMessage::build()
        .payload(body.to_string().into())
        .message_id(format!("execute:{id}"))
        .headers(headers);
    system
        .js
        .send_publish(format!("{PREFIX}.execute.{id}"), publish)
        .await
        .unwrap()
        .await
        .unwrap();
    id
}

/// The span whose id is `id`.
fn by_id<'a>(all: &'a [Value], id: &Value) -> Option<&'a Value> {
    all.iter().find(|s| s["spanId"] == *id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_is_one_trace_from_the_publisher_through_every_tick_to_its_ending() {
    let (url, received) = receiver().await;
    // No OTEL_EXPORTER_OTLP_PROTOCOL: the default, http/protobuf.
    let mut system = System::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("RECONCILER_INTERVAL_MS", "1000"),
        ("SWEEPER_INTERVAL_MS", "1000"),
    ])
    .await;
    let bodies = received.bodies.clone();
    let id = publish_traced_execute(&system).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    system.wait_event(id, "ready").await;
    let page = serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "page": 1, "pageSize": 10 });
    system.request("results", page).await.expect("a results page");
    wait_for_passes(&bodies).await;
    // A clean stop flushes every buffered span.
    system.worker().terminate();
    assert_eq!(system.worker().wait_exit(Duration::from_secs(30)).await, Some(0));
    let types = received.content_types.lock().unwrap().clone();
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "application/x-protobuf"),
        "OTLP/HTTP protobuf by default: {types:?}"
    );

    let all = spans(&bodies.lock().unwrap());
    let run = id.to_string();
    let execute = all
        .iter()
        .find(|s| s["name"] == "process shell_query.execute" && attr(s, "run.id").as_deref() == Some(&run))
        .unwrap_or_else(|| panic!("no execute span among {} spans", all.len()));
    assert_eq!(
        execute["traceId"], TRACE_ID,
        "the execute span continues the publisher's trace"
    );
    assert_eq!(execute["parentSpanId"], PARENT_SPAN);
    assert_eq!(execute["kind"], SPAN_KIND_CONSUMER, "{execute}");
    for (key, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.template", "shell_query.execute.{runId}"),
        ("messaging.consumer.group.name", "shell-query-execute"),
    ] {
        assert_eq!(attr(execute, key).as_deref(), Some(value), "{key}: {execute}");
    }

    // The poll message's PRODUCER span, a child of execute.
    let poll_producer = all
        .iter()
        .find(|s| s["name"] == "send shell_query.poll.{runId}")
        .expect("a PRODUCER span for the poll publish");
    assert_eq!(poll_producer["kind"], SPAN_KIND_PRODUCER);
    assert_eq!(poll_producer["traceId"], TRACE_ID);
    assert_eq!(poll_producer["parentSpanId"], execute["spanId"]);
    assert_eq!(
        attr(poll_producer, "messaging.destination.name"),
        Some(format!("{PREFIX}.poll.{id}"))
    );

    // Every tick: in the run's trace, a child of the poll message's producer.
    let ticks: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "process shell_query.poll" && attr(s, "run.id").as_deref() == Some(&run))
        .collect();
    assert!(ticks.len() >= 2, "poll ticks are traced: {}", ticks.len());
    for tick in &ticks {
        assert_eq!(tick["traceId"], TRACE_ID, "each tick is in the run's trace: {tick}");
        assert_eq!(tick["parentSpanId"], poll_producer["spanId"], "{tick}");
        assert_eq!(tick["kind"], SPAN_KIND_CONSUMER);
        assert_eq!(
            attr(tick, "messaging.consumer.group.name").as_deref(),
            Some("shell-query-poll")
        );
        assert!(
            attr(tick, "poll.count").is_some() && attr(tick, "poll.decision").is_some(),
            "{tick}"
        );
    }
    // A tick's MCE status call and database read are its children.
    let status_call = all
        .iter()
        .find(|s| s["name"] == "mce async_status" && ticks.iter().any(|t| t["spanId"] == s["parentSpanId"]))
        .expect("a tick's status call is its child");
    assert_eq!(status_call["kind"], SPAN_KIND_CLIENT);
    assert_eq!(attr(status_call, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr(status_call, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(status_call, "http.response.status_code").as_deref(), Some("200"));
    let db = all
        .iter()
        .find(|s| s["name"] == "UPDATE shell_query_runs" && s["traceId"] == TRACE_ID)
        .expect("a database write in the run's trace");
    for (key, value) in [
        ("db.system.name", "postgresql"),
        ("db.operation.name", "UPDATE"),
        ("db.collection.name", "shell_query_runs"),
    ] {
        assert_eq!(attr(db, key).as_deref(), Some(value), "{key}: {db}");
    }

    // The status publishes: PRODUCER spans in the run's trace; the ending's
    // is a child of the tick that ended the run.
    let status_producers: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "send shell_query.status.{runId}" && s["traceId"] == TRACE_ID)
        .collect();
    assert!(
        status_producers.len() >= 3,
        "{} status publishes traced",
        status_producers.len()
    );
    assert!(status_producers.iter().all(|s| s["kind"] == SPAN_KIND_PRODUCER));
    let ending = ticks
        .iter()
        .find(|t| attr(t, "poll.decision").as_deref() == Some("ready"))
        .expect("the tick that ended the run");
    assert!(
        status_producers.iter().any(|p| p["parentSpanId"] == ending["spanId"]),
        "the ready event is published inside the ending tick"
    );

    // Walking up from any span of the run reaches the publisher's span.
    for span in all.iter().filter(|s| s["traceId"] == TRACE_ID) {
        let mut at = span;
        let mut hops = 0;
        while at["parentSpanId"] != PARENT_SPAN {
            at = by_id(&all, &at["parentSpanId"]).unwrap_or_else(|| panic!("a broken tree at {at}"));
            hops += 1;
            assert!(hops < 20, "no cycle");
        }
    }
    // No attribute set twice under two names.
    assert!(
        all.iter()
            .all(|s| attr(s, "run_id").is_none() && attr(s, "tenant_id").is_none()),
        "run.id and tenant.id only"
    );
    let perform = all
        .iter()
        .find(|s| s["name"] == "mce perform" && attr(s, "mce.operation").as_deref() == Some("perform"))
        .expect("a span for the Perform call");
    assert_eq!(perform["traceId"], TRACE_ID, "MCE calls are in the run's trace");
    assert_eq!(perform["kind"], SPAN_KIND_CLIENT);
    assert_eq!(attr(perform, "mce.result").as_deref(), Some("ok"));

    // The results API, the reconciler and the sweeper: spans of their own,
    // each the root of its trace, with the MCE calls they make inside.
    let results = all
        .iter()
        .find(|s| s["name"] == "process shell_query.api.results")
        .expect("a span for the results request");
    assert_eq!(results["kind"], SPAN_KIND_SERVER);
    let results_mce: Vec<&Value> = all
        .iter()
        .filter(|s| s["traceId"] == results["traceId"] && s["name"] == "mce rowset")
        .collect();
    assert_eq!(results_mce.len(), 1, "the rowset call is inside the request's trace");
    assert_eq!(results_mce[0]["parentSpanId"], results["spanId"]);
    for pass in ["reconciler pass", "sweeper pass"] {
        let span = all
            .iter()
            .find(|s| s["name"] == pass)
            .unwrap_or_else(|| panic!("no {pass} span"));
        assert!(
            span["parentSpanId"].as_str().unwrap_or_default().is_empty(),
            "{pass} is a root: {span}"
        );
    }
    assert!(
        !all.iter()
            .any(|s| s["name"].as_str().unwrap_or_default().starts_with("mce ")
                && s["parentSpanId"].as_str().unwrap_or_default().is_empty()),
        "no MCE call is an orphan"
    );
    let resource = bodies.lock().unwrap()[0]["resourceSpans"][0]["resource"].clone();
    let resource = &resource;
    assert_eq!(attr(resource, "service.name").as_deref(), Some("shell-query-worker"));
    assert_eq!(
        attr(resource, "service.version").as_deref(),
        Some(service::adapters::telemetry::VERSION)
    );

    // No SQL text, token or secret in any exported byte.
    let exported = serde_json::to_string(&*bodies.lock().unwrap()).unwrap();
    assert!(!exported.contains("Email FROM"), "spans carry no SQL text");
    let tokens = system
        .sim
        .access_tokens()
        .into_iter()
        .chain(system.sim.refresh_tokens());
    for secret in tokens.chain([crate::support::REFRESH_TOKEN.to_string(), "test-secret".to_string()]) {
        assert!(!exported.contains(&secret), "spans carry no token or secret");
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_json_when_asked() {
    let (url, received) = receiver().await;
    let system = System::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let id = publish_traced_execute(&system).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    tests::wait_for(
        "a JSON export with the execute span",
        Duration::from_secs(30),
        || async {
            spans(&received.bodies.lock().unwrap())
                .iter()
                .any(|s| s["name"] == "process shell_query.execute")
        },
    )
    .await;
    let types = received.content_types.lock().unwrap().clone();
    assert!(types.iter().all(|t| t == "application/json"), "{types:?}");
}

/// With no trace exporter configured, the publisher's W3C context still
/// travels: every status event, from the execute step and from the poll
/// ticks, carries the publisher's trace in its `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_travels_without_an_exporter() {
    let system = System::start().await;
    let id = publish_traced_execute(&system).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    system.wait_event(id, "ready").await;

    let stream = system.js.get_stream("SHELL_QUERY_STATUS").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("{PREFIX}.status.{id}"),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(100).messages().await.unwrap();
    let mut seen = Vec::new();
    while let Some(Ok(msg)) = futures::StreamExt::next(&mut batch).await {
        let event: Value = serde_json::from_slice(&msg.payload).unwrap();
        let traceparent = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("{} carries no traceparent", event["status"]));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_ne!(parts[1], "0".repeat(32), "{traceparent}");
        seen.push((event["status"].as_str().unwrap().to_string(), parts[1].to_string()));
    }
    for (status, trace) in &seen {
        assert_eq!(trace, TRACE_ID, "{status} continues the publisher's trace");
    }
    assert!(seen.iter().any(|(s, _)| s == "executing_query"), "{seen:?}");
    assert!(seen.iter().any(|(s, _)| s == "ready"), "{seen:?}");
}

/// OTLP over HTTPS, verified against `OTEL_EXPORTER_OTLP_CERTIFICATE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_https_collector() {
    let certs = tests::make_certs();
    let (url, bodies) = https_receiver(&certs).await;
    let ca = certs.ca.display().to_string();
    let system = System::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let id = publish_traced_execute(&system).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    wait_for_bytes(&bodies, &["process shell_query.execute", "shell-query-worker"]).await;
}

/// OTLP over gRPC, plain and over TLS; `OTEL_SERVICE_NAME` names the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_in_the_clear_and_over_tls() {
    let certs = tests::make_certs();
    let ca = certs.ca.display().to_string();
    for tls in [false, true] {
        let (url, bodies) = grpc_receiver(tls.then_some(&certs)).await;
        let system = System::start_with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_SERVICE_NAME", "sq-named-by-env"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ])
        .await;
        let id = publish_traced_execute(&system).await;
        assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
        wait_for_bytes(
            &bodies,
            &[
                "process shell_query.execute",
                "sq-named-by-env",
                service::adapters::telemetry::VERSION,
            ],
        )
        .await;
        assert!(
            !bodies
                .lock()
                .unwrap()
                .concat()
                .windows(18)
                .any(|w| w == b"shell-query-worker"),
            "OTEL_SERVICE_NAME replaces the default name (tls: {tls})"
        );
    }
}
