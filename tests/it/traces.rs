//! Traces end to end: the service exports OTLP (here OTLP/HTTP JSON) to a
//! local receiver; the execute span continues the publisher's trace, poll
//! ticks link to it, MCE calls are spans with their operation and status.

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

/// A few lines of OTLP/HTTP receiver: every export body, kept.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let store = store.clone();
            async move {
                if let Ok(v) = serde_json::from_str(&body) {
                    store.lock().unwrap().push(v);
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, bodies)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_run_from_the_publisher_through_every_poll() {
    let (url, bodies) = receiver().await;
    let mut system = System::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let id = publish_traced_execute(&system).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    // A clean stop flushes every buffered span.
    system.worker().terminate();
    assert_eq!(system.worker().wait_exit(Duration::from_secs(30)).await, Some(0));

    let all = spans(&bodies.lock().unwrap());
    let execute = all
        .iter()
        .find(|s| s["name"] == "execute" && attr(s, "run.id").as_deref() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("no execute span among {} spans", all.len()));
    assert_eq!(
        execute["traceId"], TRACE_ID,
        "the execute span continues the publisher's trace"
    );
    assert_eq!(execute["parentSpanId"], PARENT_SPAN);
    assert_eq!(attr(execute, "messaging.system").as_deref(), Some("nats"));
    let execute_span = execute["spanId"].as_str().unwrap();

    let polls: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "poll" && attr(s, "run.id").as_deref() == Some(&id.to_string()))
        .collect();
    assert!(!polls.is_empty(), "poll ticks are traced");
    for poll in &polls {
        assert_ne!(poll["traceId"], TRACE_ID, "each tick is its own trace");
        let links = poll["links"].as_array().expect("a link");
        assert!(
            links
                .iter()
                .any(|l| l["traceId"] == TRACE_ID && l["spanId"] == execute_span),
            "{poll}"
        );
        assert!(
            attr(poll, "poll.count").is_some() && attr(poll, "poll.decision").is_some(),
            "{poll}"
        );
    }
    let perform = all
        .iter()
        .find(|s| s["name"] == "mce" && attr(s, "mce.operation").as_deref() == Some("perform"))
        .expect("a span for the Perform call");
    assert_eq!(
        perform["traceId"], TRACE_ID,
        "MCE calls are children of the execute trace"
    );
    assert_eq!(attr(perform, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(perform, "mce.result").as_deref(), Some("ok"));
    assert!(
        all.iter()
            .any(|s| s["name"] == "mce" && attr(s, "mce.operation").as_deref() == Some("async_status"))
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
