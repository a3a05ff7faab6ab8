//! The status events of `P.status.<runId>` (docs/CONTRACT.md).

use serde::{Deserialize, Serialize};

/// The `status` of a status event: the row's states plus execute's steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(title = "EventStatus")]
pub enum EventStatus {
    Queued,
    Running,
    ValidatingQuery,
    CreatingDataExtension,
    TargetingDataExtension,
    ExecutingQuery,
    FetchingResults,
    Ready,
    Failed,
    Canceled,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Running => "running",
            EventStatus::ValidatingQuery => "validating_query",
            EventStatus::CreatingDataExtension => "creating_data_extension",
            EventStatus::TargetingDataExtension => "targeting_data_extension",
            EventStatus::ExecutingQuery => "executing_query",
            EventStatus::FetchingResults => "fetching_results",
            EventStatus::Ready => "ready",
            EventStatus::Failed => "failed",
            EventStatus::Canceled => "canceled",
        }
    }

    /// The reference's `STATUS_MESSAGES`.
    pub fn message(self) -> &'static str {
        match self {
            EventStatus::Queued => "Queued...",
            EventStatus::Running => "Running...",
            EventStatus::ValidatingQuery => "Validating query...",
            EventStatus::CreatingDataExtension => "Creating temp Data Extension...",
            EventStatus::TargetingDataExtension => "Targeting Data Extension...",
            EventStatus::ExecutingQuery => "Executing query...",
            EventStatus::FetchingResults => "Fetching results...",
            EventStatus::Ready => "Query completed",
            EventStatus::Failed => "Query failed",
            EventStatus::Canceled => "Query canceled",
        }
    }
}

/// The JSON body of `P.status.<runId>`: one step of a run. Terminal
/// events (`ready`, `failed`, `canceled`) come once per run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub run_id: uuid::Uuid,
    pub status: EventStatus,
    /// A short sentence for the status, e.g. `Executing query...`.
    pub message: String,
    /// Only on `failed`: why, in words a user may read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_message: Option<String>,
    /// Only on `ready`: rows in the result.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schemars(range(min = 0))]
    pub row_count: Option<i64>,
    /// RFC 3339 UTC with milliseconds (`2026-12-04T13:23:23.764Z`).
    #[schemars(extend("format" = "date-time"))]
    pub timestamp: String,
}

impl StatusEvent {
    pub fn new(run_id: uuid::Uuid, status: EventStatus, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            run_id,
            status,
            message: status.message().to_string(),
            error_message: None,
            row_count: None,
            timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    pub fn failed(run_id: uuid::Uuid, error: &str, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            message: format!("Query failed: {error}"),
            error_message: Some(error.to_string()),
            ..Self::new(run_id, EventStatus::Failed, now)
        }
    }
}

/// Client-safe messages are cut to this many characters.
pub const MAX_ERROR_CHARS: usize = 4000;

/// Trims and cuts a client-safe message to `MAX_ERROR_CHARS`.
pub fn clip_error(message: &str) -> String {
    let trimmed = message.trim();
    if trimmed.chars().count() <= MAX_ERROR_CHARS {
        return trimmed.to_string();
    }
    let mut cut: String = trimmed.chars().take(MAX_ERROR_CHARS - 3).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_as_the_contract_says() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00.123Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let id = uuid::Uuid::nil();
        let e = serde_json::to_value(StatusEvent::new(id, EventStatus::ExecutingQuery, now)).unwrap();
        assert_eq!(
            e,
            serde_json::json!({"runId": id, "status": "executing_query", "message": "Executing query...", "timestamp": "2026-11-28T12:00:00.123Z"})
        );
        let f = serde_json::to_value(StatusEvent::failed(id, "Syntax error", now)).unwrap();
        assert_eq!(f["message"], "Query failed: Syntax error");
        assert_eq!(f["errorMessage"], "Syntax error");
    }

    #[test]
    fn errors_are_clipped() {
        assert_eq!(clip_error("  x "), "x");
        let long = "é".repeat(5000);
        let cut = clip_error(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS);
        assert!(cut.ends_with("..."));
    }
}
