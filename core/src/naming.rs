//! The names this service gives MCE assets. Every key fits MCE's 36
//! characters and carries the run's tag, so two runs never share one.

use uuid::Uuid;

/// The DE folder results go to, found by name under the root folder.
pub const FOLDER_NAME: &str = "QueryPlusPlus Results";
pub const ROOT_FOLDER_NAME: &str = "Data Extensions";
pub const FOLDER_CONTENT_TYPE: &str = "dataextension";

/// The part of the run id that goes into MCE names: 30 hex characters of the
/// UUID without its fixed version digit, so keys fit MCE's 36 characters.
pub fn run_tag(run_id: Uuid) -> String {
    let hex = run_id.simple().to_string();
    format!("{}{}", &hex[..12], &hex[13..31])
}

/// The QueryDefinition's Name and CustomerKey: one per run (36 characters).
pub fn query_key(run_id: Uuid) -> String {
    format!("QPP_Q_{}", run_tag(run_id))
}

/// Whether this service made a QueryDefinition with this key.
pub fn is_our_query_key(customer_key: &str) -> bool {
    customer_key.starts_with("QPP_Q_")
}

/// A tenant's subdomain, lower-cased: `[a-z0-9-]+`, so it can only ever
/// name a host under the configured MCE base URLs.
pub fn parse_tssd(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    if !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(t)
    } else {
        Err("must match [a-z0-9-]+".into())
    }
}

/// The temp DE's CustomerKey (36 characters).
pub fn temp_de_key(run_id: Uuid) -> String {
    format!("QPP_R_{}", run_tag(run_id))
}

/// The temp DE's Name: the snippet name made safe (letters, digits, `_`,
/// at most 50 characters), then the run tag, so names never collide.
pub fn temp_de_name(run_id: Uuid, snippet: Option<&str>) -> String {
    let cleaned: String = snippet
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(50)
        .collect();
    let stem = if cleaned.is_empty() {
        "Results".to_string()
    } else {
        cleaned
    };
    format!("QPP_{stem}_{}", run_tag(run_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "3f2a9c1e-0b5f-4c1e-8a2d-4f6b9c3e1a00";

    #[test]
    fn names_fit_mce_limits_and_never_collide_on_a_prefix() {
        let run = Uuid::parse_str(RUN).unwrap();
        assert_eq!(query_key(run), "QPP_Q_3f2a9c1e0b5fc1e8a2d4f6b9c3e1a0");
        assert_eq!(query_key(run).len(), 36);
        assert!(is_our_query_key(&query_key(run)));
        assert_eq!(temp_de_key(run).len(), 36);
        assert_eq!(
            temp_de_name(run, Some("  My  Report: Q4! ")),
            "QPP_My_Report_Q4_3f2a9c1e0b5fc1e8a2d4f6b9c3e1a0"
        );
        assert_eq!(temp_de_name(run, None), "QPP_Results_3f2a9c1e0b5fc1e8a2d4f6b9c3e1a0");
        let other = Uuid::parse_str("3f2a9c1e-0000-4000-8000-000000000000").unwrap();
        assert_ne!(
            temp_de_key(run),
            temp_de_key(other),
            "same 8-character prefix, different keys"
        );
    }
}
