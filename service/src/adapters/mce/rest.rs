//! REST paths and answers (reference/MCE-PROTOCOL.md section 4). Pure.

use serde_json::Value;

/// `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )` is escaped.
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) const VALIDATE_PATH: &str = "/automation/v1/queries/actions/validate/";

pub(crate) fn is_running_path(query_definition_id: &str) -> String {
    format!(
        "/automation/v1/queries/{}/actions/isrunning/",
        encode_component(query_definition_id)
    )
}

/// The `$` stays literal: MCE's tolerance of `%24` is untested.
pub(crate) fn rowset_path(de_key: &str, page: u32, page_size: u32) -> String {
    format!(
        "/data/v1/customobjectdata/key/{}/rowset?$page={page}&$pageSize={page_size}",
        encode_component(de_key)
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    pub valid: bool,
    /// MCE's messages, in its order.
    pub errors: Vec<String>,
}

pub(crate) fn read_validation(body: &Value) -> Validation {
    if body.get("queryValid").and_then(Value::as_bool) == Some(true) {
        return Validation {
            valid: true,
            errors: vec![],
        };
    }
    let mut errors = Vec::new();
    if let Some(m) = body
        .get("errorMessage")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
    {
        errors.push(m.trim().to_string());
    }
    for e in body.get("errors").and_then(Value::as_array).into_iter().flatten() {
        let text = e.as_str().or_else(|| {
            ["message", "errorMessage", "Error"]
                .iter()
                .find_map(|k| e.get(*k).and_then(Value::as_str))
        });
        if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
            errors.push(t.trim().to_string());
        }
    }
    if errors.is_empty() {
        errors.push("Query validation failed".into());
    }
    Validation { valid: false, errors }
}

pub(crate) fn read_is_running(body: &Value) -> Option<bool> {
    body.get("isRunning").and_then(Value::as_bool)
}

/// One page of a DE's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Rowset {
    /// Rows in the whole DE.
    pub count: i64,
    pub items: Vec<serde_json::Map<String, Value>>,
}

pub(crate) fn read_rowset(body: &Value) -> Option<Rowset> {
    let count = body
        .get("count")
        .and_then(|c| c.as_i64().or_else(|| c.as_str()?.parse().ok()))?;
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("values").and_then(Value::as_object).cloned())
                .collect()
        })
        .unwrap_or_default();
    Some(Rowset { count, items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_encode_like_encode_uri_component() {
        assert_eq!(
            rowset_path("QPP_My Snippet/x_1", 1, 50),
            "/data/v1/customobjectdata/key/QPP_My%20Snippet%2Fx_1/rowset?$page=1&$pageSize=50"
        );
        assert_eq!(
            is_running_path("5a1c-(x)"),
            "/automation/v1/queries/5a1c-(x)/actions/isrunning/"
        );
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn validation_collects_every_message() {
        assert!(read_validation(&json!({"queryValid": true})).valid);
        let v = read_validation(
            &json!({"queryValid": false, "errorMessage": "Invalid syntax near SELECT",
            "errors": ["a", {"message": "b"}, {"errorMessage": "c"}, {"Error": "d"}, {"other": 1}]}),
        );
        assert_eq!(v.errors, ["Invalid syntax near SELECT", "a", "b", "c", "d"]);
        assert_eq!(
            read_validation(&json!({"queryValid": false})).errors,
            ["Query validation failed"]
        );
    }

    #[test]
    fn rowset_and_is_running() {
        let r = read_rowset(&json!({"count": 3, "page": 1, "pageSize": 1,
            "items": [{"keys": {"_CustomObjectKey": "1"}, "values": {"email": "a@b.c"}}]}))
        .unwrap();
        assert_eq!(r.count, 3);
        assert_eq!(r.items[0]["email"], "a@b.c");
        assert_eq!(read_rowset(&json!({"nope": 1})), None);
        assert_eq!(read_is_running(&json!({"isRunning": false})), Some(false));
        assert_eq!(read_is_running(&json!({"isRunning": "true"})), None);
    }
}
