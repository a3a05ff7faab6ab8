//! The requests and replies of the `shell-query` NATS micro service
//! (`P.api.results`, `P.api.status`). An error is not a body: the reply
//! carries the headers `Nats-Service-Error-Code` (400, 404, 409, 413, 422,
//! 503) and `Nats-Service-Error` (a sentence a user may read).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The version of the contract (docs/asyncapi.yaml's `info.version`): the
/// minor goes up when a field or subject is added, the major when one
/// changes or goes.
pub const CONTRACT_VERSION: &str = "1.1.0";

/// The micro service's endpoints: name, request schema, reply schema (the
/// files under docs/schemas/, named in each endpoint's metadata).
pub const ENDPOINTS: [(&str, &str, &str); 2] = [
    ("results", "results-request.json", "results-reply.json"),
    ("status", "status-request.json", "status-reply.json"),
];

/// MCE's rowset answers at most this many rows a page.
pub const MAX_PAGE_SIZE: i64 = 2500;

/// One page of a ready run's results.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultsRequest {
    pub run_id: Uuid,
    /// The run's tenant: a run of another tenant answers 404, like a missing one.
    pub tenant_id: Uuid,
    /// When set, the run's user must match (404 otherwise).
    #[serde(default)]
    pub user_id: Option<Uuid>,
    /// 1-based.
    #[serde(default = "first_page")]
    #[schemars(range(min = 1))]
    pub page: i64,
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 2500))]
    pub page_size: i64,
}

fn first_page() -> i64 {
    1
}

fn default_page_size() -> i64 {
    50
}

/// A run's row as the API may show it.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusRequest {
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    #[serde(default)]
    pub user_id: Option<Uuid>,
}

/// A page of results; each row maps every column (in the Data Extension's
/// order) to its value, `null` where MCE gave none.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultsReply {
    pub run_id: Uuid,
    /// Always `ready`: other states answer an error.
    pub status: String,
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
    /// Rows in the whole result.
    pub total_rows: i64,
    pub page: i64,
    pub page_size: i64,
}

/// The run's state; times are ISO-8601 UTC with milliseconds.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub run_id: Uuid,
    /// `queued`, `running`, `ready`, `failed` or `canceled`.
    pub status: String,
    /// Set when the run failed: a sentence a user may read.
    pub error_message: Option<String>,
    pub row_count: Option<i32>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}
