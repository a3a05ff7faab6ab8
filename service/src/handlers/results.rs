//! The NATS micro service `shell-query`: `P.api.results` pages a ready run's
//! results through MCE's rowset endpoint; `P.api.status` answers the run's
//! row. A run of another tenant or user answers exactly like a missing one.

use std::sync::Arc;

use async_nats::service::{Request, ServiceExt, error::Error as ServiceError};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tracing::Instrument as _;
use uuid::Uuid;

use shell_query_core::run::{Run, RunStatus};

use crate::adapters::store::runs;
use crate::lifecycle::Deps;

pub use shell_query_core::api::MAX_PAGE_SIZE;
use shell_query_core::api::{
    ResultsReply, ResultsRequest, ResultsRow, ResultsStatus, RunState, StatusReply, StatusRequest,
};

/// An error reply: the text a user may see and a code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ApiError {
    BadRequest(String),
    NotFound,
    NotReady(String),
    Failed(String),
    Unavailable(String),
    /// The reply would exceed the server's `max_payload`.
    TooLarge(String),
}

impl ApiError {
    fn into_service(self) -> ServiceError {
        let (code, status) = match self {
            ApiError::BadRequest(m) => (400, m),
            ApiError::NotFound => (404, "Run not found.".to_string()),
            ApiError::NotReady(m) => (409, m),
            ApiError::Failed(m) => (422, m),
            ApiError::Unavailable(m) => (503, m),
            ApiError::TooLarge(m) => (413, m),
        };
        ServiceError { status, code }
    }
}

/// The run, if it exists and belongs to this tenant and user.
async fn owned_run(deps: &Deps, run_id: Uuid, tenant_id: Uuid, user_id: Option<Uuid>) -> Result<Run, ApiError> {
    let run = runs::get_run(&deps.store, run_id)
        .await
        .map_err(|_| ApiError::Unavailable("The run store is unavailable. Please try again.".into()))?
        .ok_or(ApiError::NotFound)?;
    if !run.account.owned_by(tenant_id, user_id) {
        return Err(ApiError::NotFound);
    }
    Ok(run)
}

fn decrypted_error(deps: &Deps, run: &Run) -> Option<String> {
    run.error_message
        .as_deref()
        .map(|e| deps.cipher.decrypt(e).unwrap_or_else(|_| "The run failed.".into()))
}

/// Checks the paging of a results request (pure).
pub(crate) fn check_paging(page: i64, page_size: i64) -> Result<(u32, u32), ApiError> {
    // A page past u32 (MCE's page numbers) is refused, never cut short.
    if !(1..=i64::from(u32::MAX)).contains(&page) || !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::BadRequest(format!(
            "page must be between 1 and {} and pageSize between 1 and {MAX_PAGE_SIZE} (got page {page}, pageSize {page_size}).",
            u32::MAX
        )));
    }
    Ok((page as u32, page_size as u32))
}

/// Orders a row's values by the DE's columns, matching names without
/// regard to case (MCE may lower-case them). The row keeps that order on
/// the wire (a `Map` would sort its keys).
pub(crate) fn order_row(columns: &[String], values: &Map<String, Value>) -> ResultsRow {
    ResultsRow(
        columns
            .iter()
            .map(|c| {
                let v = values
                    .get(c)
                    .or_else(|| values.iter().find(|(k, _)| k.eq_ignore_ascii_case(c)).map(|(_, v)| v))
                    .cloned()
                    .unwrap_or(Value::Null);
                (c.clone(), v)
            })
            .collect(),
    )
}

async fn results(deps: &Deps, req: ResultsRequest) -> Result<ResultsReply, ApiError> {
    let (page, page_size) = check_paging(req.page, req.page_size)?;
    let run = owned_run(deps, req.run_id, req.tenant_id, req.user_id).await?;
    match run.status {
        RunStatus::Ready => {}
        RunStatus::Failed => {
            let reason = decrypted_error(deps, &run).unwrap_or_else(|| "unknown reason".into());
            return Err(ApiError::Failed(format!("The run failed: {reason}")));
        }
        RunStatus::Canceled => return Err(ApiError::NotReady("The run was canceled.".into())),
        _ => {
            return Err(ApiError::NotReady(format!(
                "The run is not ready yet (status: {}).",
                run.status.as_str()
            )));
        }
    }
    let key = run.target_de_customer_key.clone().ok_or(ApiError::NotFound)?;
    let mce_error = |e: crate::adapters::mce::MceError| ApiError::Unavailable(e.client_message());
    let session = deps.mce.session(&run.account).await.map_err(mce_error)?;
    let fields = session.data_extension_fields(&key).await.map_err(mce_error)?;
    let rowset = session.rowset(&key, page, page_size).await.map_err(mce_error)?;
    let mut columns: Vec<String> = fields
        .into_iter()
        .map(|f| f.name)
        .filter(|n| !n.eq_ignore_ascii_case("_CustomObjectKey"))
        .collect();
    if columns.is_empty() {
        columns = rowset
            .items
            .first()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
    }
    let rows = rowset.items.iter().map(|values| order_row(&columns, values)).collect();
    Ok(ResultsReply {
        run_id: run.id,
        status: ResultsStatus::Ready,
        columns,
        rows,
        total_rows: rowset.count,
        page: i64::from(page),
        page_size: i64::from(page_size),
    })
}

async fn status(deps: &Deps, req: StatusRequest) -> Result<StatusReply, ApiError> {
    let run = owned_run(deps, req.run_id, req.tenant_id, req.user_id).await?;
    let ts = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Ok(StatusReply {
        run_id: run.id,
        error_message: decrypted_error(deps, &run),
        status: RunState::from(run.status),
        row_count: run.row_count.and_then(|n| i32::try_from(n).ok()),
        created_at: ts(run.created_at),
        started_at: run.started_at.map(ts),
        completed_at: run.completed_at.map(ts),
    })
}

/// The reply's body, unless it is larger than the server carries: then a
/// clear error instead of a reply that could not be sent at all.
pub(crate) fn fitting(body: Vec<u8>, max_payload: usize) -> Result<Bytes, ApiError> {
    if body.len() <= max_payload {
        return Ok(Bytes::from(body));
    }
    Err(ApiError::TooLarge(format!(
        "The page is {} KB, more than the {} KB a reply can carry. Ask for fewer rows with a smaller pageSize.",
        body.len().div_ceil(1024),
        max_payload / 1024
    )))
}

async fn reply<T: Serialize>(request: Request, result: Result<T, ApiError>, max_payload: usize) {
    let response = result
        .and_then(|body| fitting(serde_json::to_vec(&body).expect("replies serialise"), max_payload))
        .map_err(ApiError::into_service);
    if let Err(e) = request.respond(response).await {
        tracing::warn!(error = %e, "could not send a reply");
    }
}

fn parse<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    serde_json::from_slice(&request.message.payload).map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))
}

/// A request's own span (a root, or the caller's child when the request
/// carries a `traceparent`), so the MCE calls it makes are not orphans.
fn request_span(name: &'static str, request: &Request) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "api_request",
        otel.name = name,
        otel.kind = "server",
        messaging.system = "nats",
        messaging.destination.name = %request.message.subject,
        messaging.operation.type = "process",
        otel.status_code = tracing::field::Empty,
    );
    crate::adapters::telemetry::set_parent(&span, request.message.headers.as_ref());
    span
}

/// Starts the service; it answers until `shutdown` turns true.
pub(crate) async fn serve(
    deps: Arc<Deps>,
    client: async_nats::Client,
    prefix: &str,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let service = client
        .service_builder()
        .description("Results and status of shell-query runs")
        .start("shell-query", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting the shell-query service: {e}"))?;
    // What one reply may carry, with room for the protocol's headers.
    let max_payload = client.server_info().max_payload.saturating_sub(4096);
    let group = service.group(format!("{prefix}.api"));
    // Each endpoint names its request and reply schemas (docs/schemas/).
    let endpoint = |name: &'static str| {
        let (_, request, reply) = shell_query_core::api::ENDPOINTS
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .expect("every endpoint has schemas");
        let metadata = [("request_schema", request), ("response_schema", reply)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let group = &group;
        async move {
            group
                .endpoint_builder()
                .name(name)
                .metadata(metadata)
                .add(name)
                .await
                .map_err(|e| anyhow::anyhow!("{name} endpoint: {e}"))
        }
    };
    let mut results_ep = endpoint("results").await?;
    let mut status_ep = endpoint("status").await?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(request) = results_ep.next() => {
                    let deps = deps.clone();
                    let span = request_span("process shell_query.api.results", &request);
                    tokio::spawn(async move {
                        let result = match parse::<ResultsRequest>(&request) {
                            Ok(req) => results(&deps, req).await,
                            Err(e) => Err(e),
                        };
                        reply(request, result, max_payload).await;
                    }.instrument(span));
                }
                Some(request) = status_ep.next() => {
                    let deps = deps.clone();
                    let span = request_span("process shell_query.api.status", &request);
                    tokio::spawn(async move {
                        let result = match parse::<StatusRequest>(&request) {
                            Ok(req) => status(&deps, req).await,
                            Err(e) => Err(e),
                        };
                        reply(request, result, max_payload).await;
                    }.instrument(span));
                }
                _ = shutdown.changed() => break,
            }
        }
        let _ = service.stop().await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_larger_than_a_reply_can_carry_is_a_clear_413() {
        assert_eq!(fitting(vec![b'x'; 10], 10).unwrap().len(), 10);
        let too_large = fitting(vec![b'x'; 3 * 1024 * 1024], 2 * 1024 * 1024).unwrap_err();
        assert_eq!(
            too_large,
            ApiError::TooLarge(
                "The page is 3072 KB, more than the 2048 KB a reply can carry. Ask for fewer rows with a smaller pageSize."
                    .into()
            )
        );
        assert_eq!(too_large.into_service().code, 413);
    }

    #[test]
    fn paging_is_checked() {
        assert_eq!(check_paging(1, 50), Ok((1, 50)));
        assert_eq!(check_paging(3, 2500), Ok((3, 2500)));
        for (page, size) in [
            (0, 50),
            (1, 0),
            (1, 2501),
            (-1, 10),
            (1_000_000_000_000_000_000, 10),
            (1 << 32, 10),
        ] {
            assert!(
                matches!(check_paging(page, size), Err(ApiError::BadRequest(_))),
                "{page} {size}"
            );
        }
    }

    #[test]
    fn rows_follow_the_de_columns_whatever_the_case() {
        let columns = vec!["Email".to_string(), "Age".to_string(), "Missing".to_string()];
        let values: Map<String, Value> = serde_json::from_str(r#"{"age": "3", "email": "a@b.c"}"#).unwrap();
        let row = order_row(&columns, &values);
        assert_eq!(row.keys().collect::<Vec<_>>(), ["Email", "Age", "Missing"]);
        assert_eq!(row.get("Email"), Some(&Value::from("a@b.c")));
        assert_eq!(row.get("Age"), Some(&Value::from("3")));
        assert_eq!(row.get("Missing"), Some(&Value::Null));
        // On the wire too: the keys in the columns' order, not sorted.
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"Email":"a@b.c","Age":"3","Missing":null}"#
        );
    }
}
