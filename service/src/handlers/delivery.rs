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
