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
    /// The message's sequence in its stream.
    pub stream_seq: u64,
    /// Carries the publisher's `traceparent`.
    pub headers: Option<async_nats::HeaderMap>,
}

/// Records, before anything else is done with it, that an execute or
/// cancel message was delivered once more: a max-deliveries advisory is
/// believed only up to what was recorded here. `Err` is a disposition: the
/// database did not take the record, and the message comes back later.
pub(crate) async fn note_delivery(deps: &crate::lifecycle::Deps, delivery: &Delivery) -> Result<(), Disposition> {
    crate::adapters::store::deliveries::note(&deps.store, delivery.stream_seq, delivery.delivered, chrono::Utc::now())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not record the delivery; will retry");
            Disposition::Retry(Duration::from_secs(5))
        })
}

/// Logs at debug, once per process and field name, a field a message
/// carried that the service ignores (the API may add fields before the
/// service knows them). Bounded: at most 256 names are remembered.
pub(crate) fn note_ignored_fields(kind: &'static str, names: &[String]) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for name in names {
        if seen.len() < 256 && seen.insert(format!("{kind}.{name}")) {
            tracing::debug!(message_kind = kind, field = %name, "ignoring a field the service does not know");
        }
    }
}

/// Which consumer a delivery came from, for its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Consumed {
    Execute,
    Poll,
    Cancel,
}

impl Consumed {
    /// The span's name by the messaging conventions: `process <destination template>`.
    fn operation(self) -> &'static str {
        match self {
            Self::Execute => "process shell_query.execute",
            Self::Poll => "process shell_query.poll",
            Self::Cancel => "process shell_query.cancel",
        }
    }

    /// The durable consumer it came from.
    fn consumer(self) -> &'static str {
        match self {
            Self::Execute => crate::adapters::nats::EXECUTE_CONSUMER,
            Self::Poll => crate::adapters::nats::POLL_CONSUMER,
            Self::Cancel => crate::adapters::nats::CANCEL_CONSUMER,
        }
    }
}

/// The span of one delivery of a run's message: every handler opens its
/// span here, by the messaging conventions (a CONSUMER span `process
/// <destination template>`). Each continues the trace of the message it
/// handles: execute and cancel the publisher's (the API's); a poll tick
/// that of the poll message, whose PRODUCER span is a child of the execute
/// span (DECISIONS.md, "One run, one trace"). The run's tenant is recorded
/// when the message names it (a poll tick records it once it has read the
/// row), and the fields a tick fills in later (`mce.status`,
/// `poll.decision`, `otel.status_code`) start empty.
pub(crate) fn delivery_span(
    consumed: Consumed,
    delivery: &Delivery,
    run_id: uuid::Uuid,
    tenant_id: Option<uuid::Uuid>,
) -> tracing::Span {
    use tracing::field::{Empty, display};
    let span = tracing::info_span!(
        "delivery",
        otel.name = consumed.operation(),
        otel.kind = "consumer",
        trace_id = Empty,
        span_id = Empty,
        run.id = %run_id,
        tenant.id = Empty,
        poll.count = Empty,
        mce.status = Empty,
        poll.decision = Empty,
        otel.status_code = Empty,
        messaging.system = "nats",
        messaging.destination.name = %delivery.subject,
        messaging.destination.template = %crate::adapters::nats::destination_template(&delivery.subject),
        messaging.consumer.group.name = consumed.consumer(),
        messaging.operation.type = "process",
        messaging.message.delivery_count = delivery.delivered,
    );
    if let Some(tenant) = tenant_id {
        span.record("tenant.id", display(tenant));
    }
    if consumed == Consumed::Poll {
        span.record("poll.count", delivery.delivered);
    }
    crate::adapters::telemetry::set_parent(&span, delivery.headers.as_ref());
    crate::adapters::telemetry::record_ids(&span);
    span
}
