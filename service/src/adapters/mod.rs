//! Everything that talks to the world outside the process. Handlers and
//! jobs use these; none of them knows a handler, a job or the app.

pub mod crypto;
pub mod history;
pub mod lease;
pub mod mce;
pub mod metrics;
pub mod nats;
pub mod store;
pub mod telemetry;

/// Installs ring as rustls's process-wide crypto provider (once). reqwest
/// (MCE calls, OTLP over HTTP) takes the process default; async-nats and
/// sqlx bring ring too, so the process holds one TLS implementation.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A URL (or a comma-separated list of them) fit to print: user names,
/// passwords and tokens in the authority, and query parameters that look
/// like secrets (`password`, `sslpassword`, `token`, `secret`, `key`), are
/// replaced by `***`; an entry that is no URL becomes `(hidden)`.
pub fn redacted_urls(value: &str) -> String {
    value
        .split(',')
        .map(|entry| {
            let entry = entry.trim();
            let Ok(mut url) = reqwest::Url::parse(entry) else {
                return "(hidden)".to_string();
            };
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_password(None);
                let _ = url.set_username("***");
            }
            let secret = |k: &str| {
                let k = k.to_ascii_lowercase();
                ["pass", "token", "secret", "key"].iter().any(|s| k.contains(s))
            };
            if url.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) { "***".to_string() } else { v.to_string() };
                        (k.to_string(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_their_secrets() {
        assert_eq!(
            redacted_urls("nats://svc:pa55@n1:4222, nats://TOKEN123@n2:4222,tls://n3:4222"),
            "nats://***@n1:4222,nats://***@n2:4222,tls://n3:4222"
        );
        let db = redacted_urls("postgres://u:pa55@db/x?sslmode=verify-full&sslpassword=k3y&password=p");
        assert_eq!(
            db,
            "postgres://***@db/x?sslmode=verify-full&sslpassword=***&password=***"
        );
        assert_eq!(redacted_urls("not a url with pa55"), "(hidden)");
    }
}
