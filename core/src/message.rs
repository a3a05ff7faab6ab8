//! The messages the service consumes on `P.execute.*`, `P.poll.*` and
//! `P.cancel.*`, their subjects, and the domain types they decode into
//! (docs/CONTRACT.md). A decoded [`ExecuteRequest`] cannot hold an invalid
//! state: one SQL source, a numeric MID, a target or none.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::TableMetadata;

/// The longest query text accepted.
pub const MAX_SQL_BYTES: usize = 256 * 1024;

/// The subjects under `SUBJECT_PREFIX`.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn execute(&self, run: Uuid) -> String {
        format!("{}.execute.{run}", self.prefix)
    }
    pub fn poll(&self, run: Uuid) -> String {
        format!("{}.poll.{run}", self.prefix)
    }
    pub fn cancel(&self, run: Uuid) -> String {
        format!("{}.cancel.{run}", self.prefix)
    }
    pub fn status(&self, run: Uuid) -> String {
        format!("{}.status.{run}", self.prefix)
    }
    pub fn dlq(&self, original: &str) -> String {
        let tail = original.strip_prefix(&format!("{}.", self.prefix)).unwrap_or(original);
        format!("{}.dlq.{tail}", self.prefix)
    }
    /// Every subject of one kind: `P.<kind>.*`.
    pub fn all(&self, kind: &str) -> String {
        format!("{}.{kind}.*", self.prefix)
    }
    /// The run id a subject ends with, if it is one.
    pub fn run_id_of(subject: &str) -> Option<Uuid> {
        subject.rsplit('.').next().and_then(|t| Uuid::parse_str(t).ok())
    }
}

/// The body of `P.execute.<runId>` as it travels. Unknown fields are
/// refused: a field the service would ignore is a request it would not
/// carry out.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteMessage {
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub mid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_text_encrypted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_metadata: Option<TableMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_de_customer_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_update_type: Option<String>,
}

/// A business unit's MID: digits only, trimmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mid(String);

impl Mid {
    pub fn parse(s: &str) -> Option<Mid> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| Mid(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the query text comes from: exactly one of the two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlSource {
    Plain(String),
    /// AES-256-GCM in the shared format (the API encrypted it).
    Encrypted(String),
}

/// Run-to-target: an existing DE the query writes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRequest {
    pub customer_key: String,
    /// `Overwrite`, `Append` or `Update` as sent; checked when the
    /// destination is chosen, so a bad one fails the run, not the message.
    pub update_type: Option<String>,
}

/// A run request, decoded and checked.
#[derive(Clone, Debug)]
pub struct ExecuteRequest {
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub mid: Mid,
    pub sql: SqlSource,
    pub snippet_name: Option<String>,
    /// Empty when the message had none.
    pub table_metadata: TableMetadata,
    pub target: Option<TargetRequest>,
}

impl ExecuteRequest {
    /// Decodes and checks a message on `subject`; the error is the DLQ reason.
    pub fn decode(subject: &str, payload: &[u8]) -> Result<ExecuteRequest, String> {
        let msg: ExecuteMessage =
            serde_json::from_slice(payload).map_err(|e| format!("invalid execute message: {e}"))?;
        if Subjects::run_id_of(subject) != Some(msg.run_id) {
            return Err("the subject's run id differs from the body's runId".into());
        }
        let sql = match (msg.sql_text, msg.sql_text_encrypted) {
            (Some(_), Some(_)) => return Err("both sqlText and sqlTextEncrypted are present".into()),
            (None, None) => return Err("neither sqlText nor sqlTextEncrypted is present".into()),
            (Some(plain), None) => SqlSource::Plain(plain),
            (None, Some(encrypted)) => SqlSource::Encrypted(encrypted),
        };
        let mid = Mid::parse(&msg.mid).ok_or("mid must be a numeric MID")?;
        Ok(ExecuteRequest {
            run_id: msg.run_id,
            tenant_id: msg.tenant_id,
            user_id: msg.user_id,
            mid,
            sql,
            snippet_name: msg.snippet_name,
            table_metadata: msg.table_metadata.unwrap_or_default(),
            target: msg.target_de_customer_key.map(|customer_key| TargetRequest {
                customer_key,
                update_type: msg.target_update_type,
            }),
        })
    }
}

/// The body of `P.poll.<runId>`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PollMessage {
    pub run_id: Uuid,
}

/// The body of `P.cancel.<runId>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelMessage {
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    #[serde(default)]
    pub user_id: Option<Uuid>,
}

/// Decodes a poll or cancel message and checks that its subject names the
/// same run; the error is the DLQ reason.
pub fn decode_for_run<T: serde::de::DeserializeOwned>(
    kind: &str,
    subject: &str,
    payload: &[u8],
    run_id: impl Fn(&T) -> Uuid,
) -> Result<T, String> {
    let msg: T = serde_json::from_slice(payload).map_err(|e| format!("invalid {kind} message: {e}"))?;
    if Subjects::run_id_of(subject) != Some(run_id(&msg)) {
        return Err("the subject's run id differs from the body's runId".into());
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "3f2a9c1e-0b5f-4c1e-8a2d-4f6b9c3e1a00";

    fn body(extra: &str) -> String {
        format!(
            r#"{{"runId":"{RUN}","tenantId":"{RUN}","userId":"{RUN}","mid":"510000123","sqlText":"SELECT 1"{extra}}}"#
        )
    }

    #[test]
    fn decode_checks_the_message() {
        let subject = format!("shell_query.execute.{RUN}");
        let ok = ExecuteRequest::decode(&subject, body("").as_bytes()).unwrap();
        assert_eq!(ok.sql, SqlSource::Plain("SELECT 1".into()));
        assert_eq!(ok.mid.as_str(), "510000123");
        assert!(ok.target.is_none());
        let decode = |s: &str, b: &str| ExecuteRequest::decode(s, b.as_bytes()).map(|_| ());
        assert!(
            decode(&subject, "not json")
                .unwrap_err()
                .starts_with("invalid execute message")
        );
        assert!(
            decode("shell_query.execute.other", &body(""))
                .unwrap_err()
                .contains("differs")
        );
        assert!(
            decode(&subject, &body(r#","sqlTextEncrypted":"x""#))
                .unwrap_err()
                .contains("both")
        );
        let no_mid = body("").replace("510000123", "abc");
        assert!(decode(&subject, &no_mid).unwrap_err().contains("mid"));
        let target = ExecuteRequest::decode(
            &subject,
            body(r#","targetDeCustomerKey":"T","targetUpdateType":"Append""#).as_bytes(),
        )
        .unwrap();
        assert_eq!(
            target.target,
            Some(TargetRequest {
                customer_key: "T".into(),
                update_type: Some("Append".into())
            })
        );
    }

    #[test]
    fn poll_and_cancel_messages_name_their_subject_s_run() {
        let subject = format!("shell_query.poll.{RUN}");
        let body = format!(r#"{{"runId":"{RUN}"}}"#);
        assert!(decode_for_run::<PollMessage>("poll", &subject, body.as_bytes(), |m| m.run_id).is_ok());
        let other = "shell_query.poll.3f2a9c1e-0000-4000-8000-000000000000";
        assert!(decode_for_run::<PollMessage>("poll", other, body.as_bytes(), |m| m.run_id).is_err());
    }
}
