//! One delivery (or one request) each: decode, do the work through the
//! adapters, and say what should become of the message. Handlers never
//! acknowledge anything themselves: the consumer loop (`app::consumer`)
//! applies the [`Disposition`] they return.

pub mod cancel;
pub mod execute;
pub mod poll;
pub mod results;

use std::time::Duration;

use bytes::Bytes;

use crate::lifecycle::Deps;

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

/// The handler a consumer runs, with the settings only it needs: a closed
/// set, dispatched in one `match`.
pub enum Handler {
    Execute(execute::Execute),
    Poll(poll::Poll),
    Cancel,
}

impl Handler {
    pub fn name(&self) -> &'static str {
        match self {
            Handler::Execute(_) => "execute",
            Handler::Poll(_) => "poll",
            Handler::Cancel => "cancel",
        }
    }

    pub async fn handle(&self, deps: &Deps, delivery: &Delivery) -> Disposition {
        match self {
            Handler::Execute(h) => h.handle(deps, delivery).await,
            Handler::Poll(h) => h.handle(deps, delivery).await,
            Handler::Cancel => cancel::handle(deps, delivery).await,
        }
    }
}
