//! The requests and replies of the `shell-query` NATS micro service
//! (`P.api.results`, `P.api.status`). An error is not a body: the reply
//! carries the headers `Nats-Service-Error-Code` (400, 404, 409, 413, 422,
//! 503) and `Nats-Service-Error` (a sentence a user may read).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::run::RunStatus;

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

/// The `status` of a results reply: always `ready`, since only a ready run
/// has results (other states answer an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(title = "ResultsStatus")]
pub enum ResultsStatus {
    Ready,
}

/// A run's state, as its row holds it: `queued` and `running` while it
/// lives, then one of `ready`, `failed` or `canceled` for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "RunStatus", title = "RunStatus")]
pub enum RunState {
    Queued,
    Running,
    Ready,
    Failed,
    Canceled,
}

impl From<RunStatus> for RunState {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Queued => RunState::Queued,
            RunStatus::Running => RunState::Running,
            RunStatus::Ready => RunState::Ready,
            RunStatus::Failed => RunState::Failed,
            RunStatus::Canceled => RunState::Canceled,
        }
    }
}

/// One row of results: every column, in the order of the reply's
/// `columns`, to its value (`null` where MCE gave none). It serialises as
/// a JSON object whose keys keep that order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultsRow(pub Vec<(String, Value)>);

impl ResultsRow {
    /// The value of a column, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == column).map(|(_, v)| v)
    }

    /// The columns, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl Serialize for ResultsRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ResultsRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> serde::de::Visitor<'de> for Ordered {
            type Value = ResultsRow;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of column values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ResultsRow, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(ResultsRow(pairs))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

impl JsonSchema for ResultsRow {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ResultsRow".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "title": "ResultsRow",
            "description": "One row: every column, in the order of `columns`, to its value (`null` where MCE gave none).",
            "type": "object",
            "additionalProperties": true,
        })
    }
}

/// A page of results; each row maps every column (in the Data Extension's
/// order, which is the order of `columns` and of each row's keys) to its
/// value, `null` where MCE gave none.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultsReply {
    pub run_id: Uuid,
    // Always `ready` (other states answer an error): the type says so.
    pub status: ResultsStatus,
    pub columns: Vec<String>,
    pub rows: Vec<ResultsRow>,
    /// Rows in the whole result.
    #[schemars(range(min = 0))]
    pub total_rows: i64,
    #[schemars(range(min = 1))]
    pub page: i64,
    #[schemars(range(min = 1, max = 2500))]
    pub page_size: i64,
}

/// The run's state; times are RFC 3339 UTC with milliseconds
/// (`2026-12-04T13:23:23.764Z`). Every field is present; those that do not
/// apply yet are `null`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub run_id: Uuid,
    pub status: RunState,
    /// Set when the run failed: a sentence a user may read.
    pub error_message: Option<String>,
    /// Rows in the result, once the run is ready.
    #[schemars(range(min = 0))]
    pub row_count: Option<i32>,
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    #[schemars(extend("format" = "date-time"))]
    pub started_at: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub completed_at: Option<String>,
}
