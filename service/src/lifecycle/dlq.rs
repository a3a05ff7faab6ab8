//! What a DLQ copy may hold. No SQL text leaves the database in plain
//! text, so the copy of a message that may carry SQL is redacted first:
//!
//! - a JSON object's `sqlText` is moved, encrypted with the service's key,
//!   into `sqlTextEncrypted` (the shared format: the API and operators
//!   holding the key can read it back, and `dlq replay` can resubmit it);
//! - a body that is not a JSON object is encrypted whole;
//! - a body larger than [`MAX_COPY_BYTES`] is replaced by its size and
//!   SHA-256 (a DLQ is no place for megabytes).
//!
//! The header `Shell-Query-Redacted` says which was done.

use bytes::Bytes;

use crate::adapters::crypto::{Cipher, sha256_hex};

/// The largest body copied (redacted) to the DLQ: the largest execute
/// message the service reads.
pub(crate) const MAX_COPY_BYTES: usize = shell_query_core::message::MAX_EXECUTE_BYTES;

/// The body of a DLQ copy, and how it was redacted (`None`: as it came).
/// `carries_sql`: the message is an execute message.
pub(crate) fn redacted(cipher: &Cipher, carries_sql: bool, payload: &[u8]) -> (Bytes, Option<&'static str>) {
    if payload.len() > MAX_COPY_BYTES {
        let summary = serde_json::json!({
            "size": payload.len(),
            "sha256": sha256_hex(&String::from_utf8_lossy(payload)),
        });
        return (Bytes::from(summary.to_string()), Some("summary"));
    }
    let encrypted_whole = || {
        (
            Bytes::from(cipher.encrypt(&String::from_utf8_lossy(payload))),
            Some("body encrypted"),
        )
    };
    if carries_sql {
        return encrypted_whole();
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut map)) => {
            let Some(sql) = map.remove("sqlText") else {
                return (Bytes::copy_from_slice(payload), None);
            };
            let plain = match sql {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            map.insert("sqlTextEncrypted".into(), cipher.encrypt(&plain).into());
            let body = serde_json::Value::Object(map).to_string();
            (Bytes::from(body), Some("sqlText encrypted"))
        }
        _ => encrypted_whole(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::parse(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn sql_never_reaches_a_copy_in_plain_text() {
        let c = cipher();
        let (body, how) = redacted(
            &c,
            false,
            br#"{"runId":"r","sqlText":"SELECT secret FROM T","extra":1}"#,
        );
        assert_eq!(how, Some("sqlText encrypted"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("sqlText").is_none());
        assert_eq!(v["runId"], "r");
        let enc = v["sqlTextEncrypted"].as_str().unwrap();
        assert_eq!(c.decrypt(enc).unwrap(), "SELECT secret FROM T");

        let (body, how) = redacted(&c, false, b"SELECT secret FROM T; oops");
        assert_eq!(how, Some("body encrypted"));
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
        assert_eq!(
            c.decrypt(&String::from_utf8_lossy(&body)).unwrap(),
            "SELECT secret FROM T; oops"
        );

        let (body, how) = redacted(&c, false, br#"{"runId":"r"}"#);
        assert_eq!((how, &body[..]), (None, &br#"{"runId":"r"}"#[..]));

        let huge = format!(r#"{{"sqlText":"SELECT secret {}"}}"#, "x".repeat(MAX_COPY_BYTES));
        let (body, how) = redacted(&c, true, huge.as_bytes());
        assert_eq!(how, Some("summary"));
        assert!(!String::from_utf8_lossy(&body).contains("secret"));

        // An execute message may hold SQL under any name: all of it is encrypted.
        let body_in = br#"{"runId":"r","query":"SELECT secret FROM T"}"#;
        let (body, how) = redacted(&c, true, body_in);
        assert_eq!(how, Some("body encrypted"));
        assert_eq!(c.decrypt(&String::from_utf8_lossy(&body)).unwrap().as_bytes(), body_in);
    }
}
