//! The messages the service consumes on `P.execute.*`, `P.poll.*` and
//! `P.cancel.*`, their subjects, and the domain types they decode into
//! (docs/CONTRACT.md). A decoded [`ExecuteRequest`] cannot hold an invalid
//! state: one SQL source, a numeric MID, a target or none.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::TableMetadata;

/// The longest query text accepted.
pub const MAX_SQL_BYTES: usize = 256 * 1024;

/// The largest execute message read: the longest SQL, escaped (even as
/// `\uXXXX`, six bytes a character) or encrypted, with room for
/// `tableMetadata` and the other fields. A larger one is
/// refused before it is decoded, encrypted or stored. (nats.conf's
/// `max_payload` is 2 MB, so NATS refuses anything past that to the
/// publisher itself.)
pub const MAX_EXECUTE_BYTES: usize = 1536 * 1024;

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
    /// Whether a subject is an execute message's (`P.execute.<runId>`).
    pub fn is_execute(&self, subject: &str) -> bool {
        subject
            .strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with(".execute."))
    }

    /// The run id a subject ends with, if it is one.
    pub fn run_id_of(subject: &str) -> Option<Uuid> {
        subject.rsplit('.').next().and_then(|t| Uuid::parse_str(t).ok())
    }
}

// [`ExecuteRequest::decode`] reads it field by field; the reconciler
// publishes it. The doc comment below is the schema's description.
/// The body of `P.execute.<runId>`: one run to start. Exactly one of
/// `sqlText` and `sqlTextEncrypted`; `null` counts as absent; fields the
/// service does not know are ignored. At most 1.5 MiB.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    { "title": "PlainSql", "type": "object", "required": ["sqlText"], "properties": { "sqlText": { "type": "string" }, "sqlTextEncrypted": { "type": "null" } } },
    { "title": "EncryptedSql", "type": "object", "required": ["sqlTextEncrypted"], "properties": { "sqlTextEncrypted": { "type": "string" }, "sqlText": { "type": "null" } } }
]))]
pub struct ExecuteMessage {
    /// The run's id; the subject's last token must be the same.
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    /// The user whose MCE credentials run the query (the tenant's first
    /// credentials when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The business unit's MID: digits, surrounding spaces ignored.
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*$"))]
    pub mid: String,
    /// The enterprise id; read and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<String>,
    /// The query, at most 256 KiB of UTF-8 (the schema's `maxLength`
    /// counts characters, so it is the looser of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub sql_text: Option<String>,
    /// The query encrypted with the shared key: AES-256-GCM, sent as
    /// base64 (standard alphabet, padded) of IV (12 bytes) ‖ tag (16 bytes) ‖
    /// ciphertext, one string with no separator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_text_encrypted: Option<String>,
    /// A name for the run's assets and history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet_name: Option<String>,
    /// The fields of tables the query reads, by table name, for schema
    /// inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(title = "TableMetadata")]
    pub table_metadata: Option<TableMetadata>,
    /// Run into this existing Data Extension instead of a temporary one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_de_customer_key: Option<String>,
    /// `Overwrite` (default), `Append` or `Update`; only with a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_update_type: Option<String>,
}

pub use crate::account::Mid;

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

/// The fields of an execute message; any other is ignored (the API may
/// add fields without a lockstep deploy).
const EXECUTE_FIELDS: [&str; 11] = [
    "runId",
    "tenantId",
    "userId",
    "mid",
    "eid",
    "sqlText",
    "sqlTextEncrypted",
    "snippetName",
    "tableMetadata",
    "targetDeCustomerKey",
    "targetUpdateType",
];

const CANCEL_FIELDS: [&str; 3] = ["runId", "tenantId", "userId"];

/// A message decoded, with the names of the fields it carried that the
/// service does not know (ignored; the caller may log their names).
#[derive(Clone, Debug)]
pub struct Decoded<T> {
    pub message: T,
    pub ignored_fields: Vec<String>,
}

/// The body as a JSON object. Errors name what is wrong, never a value.
fn object(kind: &str, payload: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice(payload) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("invalid {kind} message: the body must be a JSON object")),
        // Syntax errors say where, not what: no value is echoed.
        Err(e) => Err(format!("invalid {kind} message: not JSON ({e})")),
    }
}

/// Field names the service does not know, at most 16, each at most 64
/// characters (a hostile body cannot make them large).
fn unknown_fields(map: &serde_json::Map<String, serde_json::Value>, known: &[&str]) -> Vec<String> {
    map.keys()
        .filter(|k| !known.contains(&k.as_str()))
        .take(16)
        .map(|k| k.chars().take(64).collect())
        .collect()
}

/// A required field: present, not null, and of the type `what` names.
fn required<T: serde::de::DeserializeOwned>(
    kind: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    what: &str,
) -> Result<T, String> {
    optional(kind, map, name, what)?.ok_or_else(|| format!("invalid {kind} message: missing field `{name}`"))
}

/// An optional field: absent or null is `None`; otherwise of the type `what` names.
fn optional<T: serde::de::DeserializeOwned>(
    kind: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    what: &str,
) -> Result<Option<T>, String> {
    match map.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|_| format!("invalid {kind} message: field `{name}` must be {what}")),
    }
}

/// The most characters each text field of an execute message may hold
/// (the SQL text is bounded by the message's size and `MAX_SQL_BYTES`).
pub const MAX_SNIPPET_NAME_CHARS: usize = 512;
pub const MAX_CUSTOMER_KEY_CHARS: usize = 200;
pub const MAX_UPDATE_TYPE_CHARS: usize = 32;
pub const MAX_MID_CHARS: usize = 20;
pub const MAX_EID_CHARS: usize = 64;
/// No bound but the message's own size.
const UNBOUNDED: usize = usize::MAX;

/// Text the database (and MCE's XML) can carry: no NUL character, at most
/// `max` characters. (JSON text is Unicode already: a lone surrogate
/// escape makes the whole message unreadable.)
pub fn storable(s: &str, max: usize) -> bool {
    !s.contains('\0') && (max == UNBOUNDED || s.chars().count() <= max)
}

/// An optional text field that must be [`storable`]; the error names it.
fn text(
    kind: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, String> {
    let value: Option<String> = optional(kind, map, name, "a string")?;
    match value {
        Some(v) if v.contains('\0') => Err(format!(
            "invalid {kind} message: field `{name}` contains a NUL character"
        )),
        Some(v) if !storable(&v, max) => Err(format!(
            "invalid {kind} message: field `{name}` is longer than {max} characters"
        )),
        v => Ok(v),
    }
}

/// Whether any text in a JSON value (keys included) holds a NUL character.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The run id a subject names must be the body's.
fn same_run(subject: &str, run_id: Uuid) -> Result<(), String> {
    match Subjects::run_id_of(subject) == Some(run_id) {
        true => Ok(()),
        false => Err("the subject's run id differs from the body's runId".into()),
    }
}

impl ExecuteRequest {
    /// Decodes and checks a message on `subject`; the error is the DLQ
    /// reason. Unknown fields are ignored and named in the result.
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Decoded<ExecuteRequest>, String> {
        const K: &str = "execute";
        let map = object(K, payload)?;
        let run_id: Uuid = required(K, &map, "runId", "a UUID")?;
        same_run(subject, run_id)?;
        let sql_text = text(K, &map, "sqlText", UNBOUNDED)?;
        let sql_text_encrypted = text(K, &map, "sqlTextEncrypted", UNBOUNDED)?;
        let sql = match (sql_text, sql_text_encrypted) {
            (Some(_), Some(_)) => return Err("both sqlText and sqlTextEncrypted are present".into()),
            (None, None) => return Err("neither sqlText nor sqlTextEncrypted is present".into()),
            (Some(plain), None) => SqlSource::Plain(plain),
            (None, Some(encrypted)) => SqlSource::Encrypted(encrypted),
        };
        let mid =
            text(K, &map, "mid", MAX_MID_CHARS)?.ok_or_else(|| format!("invalid {K} message: missing field `mid`"))?;
        let mid = Mid::parse(&mid).ok_or("invalid execute message: field `mid` must be a numeric MID")?;
        let _eid = text(K, &map, "eid", MAX_EID_CHARS)?;
        let target_update_type = text(K, &map, "targetUpdateType", MAX_UPDATE_TYPE_CHARS)?;
        if map.get("tableMetadata").is_some_and(holds_nul) {
            return Err(format!(
                "invalid {K} message: field `tableMetadata` contains a NUL character"
            ));
        }
        let request = ExecuteRequest {
            run_id,
            tenant_id: required(K, &map, "tenantId", "a UUID")?,
            user_id: optional(K, &map, "userId", "a UUID")?,
            mid,
            sql,
            snippet_name: text(K, &map, "snippetName", MAX_SNIPPET_NAME_CHARS)?,
            table_metadata: optional(
                K,
                &map,
                "tableMetadata",
                "an object of tables, each a list of fields with a Name",
            )?
            .unwrap_or_default(),
            target: text(K, &map, "targetDeCustomerKey", MAX_CUSTOMER_KEY_CHARS)?.map(|customer_key| TargetRequest {
                customer_key,
                update_type: target_update_type,
            }),
        };
        Ok(Decoded {
            message: request,
            ignored_fields: unknown_fields(&map, &EXECUTE_FIELDS),
        })
    }
}

/// The body of `P.poll.<runId>`: published by the service itself, one per run.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollMessage {
    pub run_id: Uuid,
}

/// The body of `P.cancel.<runId>`: cancel a run of this tenant (and user).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelMessage {
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    /// When set, the run's user must match.
    #[serde(default)]
    pub user_id: Option<Uuid>,
}

impl CancelMessage {
    /// Decodes and checks a message on `subject`; the error is the DLQ
    /// reason. Unknown fields are ignored and named in the result.
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Decoded<CancelMessage>, String> {
        const K: &str = "cancel";
        let map = object(K, payload)?;
        let run_id: Uuid = required(K, &map, "runId", "a UUID")?;
        same_run(subject, run_id)?;
        let message = CancelMessage {
            run_id,
            tenant_id: required(K, &map, "tenantId", "a UUID")?,
            user_id: optional(K, &map, "userId", "a UUID")?,
        };
        Ok(Decoded {
            message,
            ignored_fields: unknown_fields(&map, &CANCEL_FIELDS),
        })
    }
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
        let ok = ExecuteRequest::decode(&subject, body("").as_bytes()).unwrap().message;
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
        .unwrap()
        .message;
        assert_eq!(
            target.target,
            Some(TargetRequest {
                customer_key: "T".into(),
                update_type: Some("Append".into())
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_named_and_errors_never_echo_values() {
        let subject = format!("shell_query.execute.{RUN}");
        let extra = ExecuteRequest::decode(&subject, body(r#","priority":5,"trace":{"a":1}"#).as_bytes()).unwrap();
        assert_eq!(extra.ignored_fields, vec!["priority".to_string(), "trace".to_string()]);
        assert_eq!(extra.message.sql, SqlSource::Plain("SELECT 1".into()));
        // A hostile body: a secret where a UUID or a number belongs.
        let secret = "SELECT secret_column FROM Secret";
        for bad in [
            body("").replace(&format!(r#""tenantId":"{RUN}""#), &format!(r#""tenantId":"{secret}""#)),
            body("").replace(r#""sqlText":"SELECT 1""#, &format!(r#""sqlText":["{secret}"]"#)),
            body(&format!(r#","tableMetadata":"{secret}""#)),
            format!(r#"{{"runId":"{RUN}","mid":"{secret}"#),
        ] {
            let error = ExecuteRequest::decode(&subject, bad.as_bytes()).unwrap_err();
            assert!(!error.contains("secret"), "{error}");
            assert!(
                error.starts_with("invalid execute message") || error.contains("mid"),
                "{error}"
            );
        }
        let named = body("").replace(&format!(r#""tenantId":"{RUN}""#), r#""tenantId":7"#);
        assert_eq!(
            ExecuteRequest::decode(&subject, named.as_bytes()).unwrap_err(),
            "invalid execute message: field `tenantId` must be a UUID"
        );
        let cancel = format!(r#"{{"runId":"{RUN}","tenantId":"{RUN}","reason":"user"}}"#);
        let decoded = CancelMessage::decode(&format!("shell_query.cancel.{RUN}"), cancel.as_bytes()).unwrap();
        assert_eq!(decoded.ignored_fields, vec!["reason".to_string()]);
    }

    /// Any JSON value: text of any characters (NUL included), numbers,
    /// UUIDs and digits where they are expected, nested arrays and objects.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[0-9]{0,40}".prop_map(Value::from),
            "\\PC{0,600}".prop_map(Value::from),
            Just(Value::from(RUN)),
            Just(Value::from("a\u{0}b")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_value_in_any_field_decodes_to_a_storable_request_or_is_refused_naming_the_field(
            field in proptest::sample::select(EXECUTE_FIELDS.to_vec()),
            value in any_json(),
        ) {
            let subject = format!("shell_query.execute.{RUN}");
            let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body("")).unwrap();
            map.insert(field.to_string(), value);
            let payload = serde_json::to_vec(&map).unwrap();
            match ExecuteRequest::decode(&subject, &payload) {
                Ok(decoded) => {
                    let r = decoded.message;
                    let sql = match &r.sql {
                        SqlSource::Plain(s) | SqlSource::Encrypted(s) => s,
                    };
                    proptest::prop_assert!(storable(sql, usize::MAX));
                    proptest::prop_assert!(storable(r.mid.as_str(), MAX_MID_CHARS));
                    proptest::prop_assert!(r.snippet_name.as_deref().is_none_or(|s| storable(s, MAX_SNIPPET_NAME_CHARS)));
                    if let Some(t) = &r.target {
                        proptest::prop_assert!(storable(&t.customer_key, MAX_CUSTOMER_KEY_CHARS));
                        proptest::prop_assert!(t.update_type.as_deref().is_none_or(|s| storable(s, MAX_UPDATE_TYPE_CHARS)));
                    }
                }
                Err(reason) => proptest::prop_assert!(reason.contains(field), "{field}: {reason}"),
            }
        }
    }

    #[test]
    fn nul_characters_and_over_long_text_are_refused_naming_the_field() {
        let subject = format!("shell_query.execute.{RUN}");
        for (field, value) in [
            ("snippetName", "a\u{0}b".to_string()),
            ("targetDeCustomerKey", "k\u{0}".to_string()),
            ("sqlText", "SELECT 1\u{0}".to_string()),
            ("snippetName", "x".repeat(MAX_SNIPPET_NAME_CHARS + 1)),
            ("targetDeCustomerKey", "k".repeat(MAX_CUSTOMER_KEY_CHARS + 1)),
            ("mid", "1".repeat(MAX_MID_CHARS + 1)),
        ] {
            let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body("")).unwrap();
            map.insert(field.into(), value.into());
            let error = ExecuteRequest::decode(&subject, &serde_json::to_vec(&map).unwrap()).unwrap_err();
            assert!(error.contains(&format!("`{field}`")), "{error}");
            assert!(error.contains("NUL") || error.contains("longer than"), "{error}");
        }
        let nested = body(r#","tableMetadata":{"T":[{"Name":"a\u0000"}]}"#);
        let error = ExecuteRequest::decode(&subject, nested.as_bytes()).unwrap_err();
        assert!(error.contains("`tableMetadata`"), "{error}");
        // A lone surrogate escape is no Unicode text: the message is unreadable.
        let lone = body(r#","snippetName":"\ud800""#);
        assert!(
            ExecuteRequest::decode(&subject, lone.as_bytes())
                .unwrap_err()
                .starts_with("invalid execute message")
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
