//! A delivery as handlers see it, and what they say should become of it.

use std::time::Duration;

use bytes::Bytes;

/// What to do with a message once its handler is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done: remove it.
    Ack,
    /// Come back after this delay (a negative acknowledgement with delay).
    Retry(Duration),
    /// Give up: copy it to the DLQ with this one-line reason, then terminate it.
    DeadLetter(String),
}

/// One delivery as handlers see it.
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    /// 1-based; every delayed nak is a delivery.
    pub delivered: i64,
    /// Carries the publisher's `traceparent`.
    pub headers: Option<async_nats::HeaderMap>,
}

/// Logs at debug, once per process and field name, a field a message
/// carried that the service ignores (the API may add fields before the
/// service knows them). Bounded: at most 256 names are remembered.
pub fn note_ignored_fields(kind: &'static str, names: &[String]) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for name in names {
        if seen.len() < 256 && seen.insert(format!("{kind}.{name}")) {
            tracing::debug!(message_kind = kind, field = %name, "ignoring a field the service does not know");
        }
    }
}
