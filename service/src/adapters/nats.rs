//! Streams, consumers and publishing (CONTRACT.md section 3).
//!
//! Architecture invariant: consumers are created or updated in place, never
//! deleted and re-created: deleting the poll consumer would lose every
//! pending delay.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use uuid::Uuid;

use shell_query_core::event::StatusEvent;
pub use shell_query_core::message::Subjects;
use shell_query_core::message::{ExecuteMessage, PollMessage};

pub const JOBS_STREAM: &str = "SHELL_QUERY_JOBS";
pub const STATUS_STREAM: &str = "SHELL_QUERY_STATUS";
pub const DLQ_STREAM: &str = "SHELL_QUERY_DLQ";
pub const EXECUTE_CONSUMER: &str = "shell-query-execute";
pub const POLL_CONSUMER: &str = "shell-query-poll";
pub const CANCEL_CONSUMER: &str = "shell-query-cancel";
/// Keeps the server's max-deliveries advisories of the jobs stream: a
/// message no delivery could finish (it crashed or stalled the worker each
/// time) is announced here even while every replica is down.
pub const ADVISORY_STREAM: &str = "SHELL_QUERY_ADVISORIES";
pub const UNDELIVERABLE_CONSUMER: &str = "shell-query-undeliverable";

pub const HEADER_ERROR: &str = "Shell-Query-Error";
pub const HEADER_ORIGINAL_SUBJECT: &str = "Shell-Query-Original-Subject";
/// How a DLQ copy was redacted (no SQL text leaves in plain text).
pub const HEADER_REDACTED: &str = "Shell-Query-Redacted";

/// Deliveries of one execute message before the run is given up.
pub const EXECUTE_MAX_DELIVER: i64 = 5;
pub const CANCEL_ACK_WAIT: Duration = Duration::from_secs(30);
pub const CANCEL_MAX_DELIVER: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("declare {what}: {detail}")]
    Declare { what: &'static str, detail: String },
    #[error("publish to {subject}: {detail}")]
    Publish { subject: String, detail: String },
}

pub struct Consumers {
    pub execute: PullConsumer,
    pub poll: PullConsumer,
    pub cancel: PullConsumer,
    pub undeliverable: PullConsumer,
}

/// The subject of the server's advisories for jobs-stream messages that
/// reached their consumer's `max_deliver`.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*")
}

/// Declares the four streams and four consumers, updating any whose
/// configuration differs. Safe to run on every start of every replica.
pub async fn declare(
    js: &jetstream::Context,
    subjects: &Subjects,
    poll_max_ack_pending: i64,
    execute_ack_wait: Duration,
    poll_ack_wait: Duration,
) -> Result<Consumers, NatsError> {
    let streams = [
        stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![subjects.all("execute"), subjects.all("poll"), subjects.all("cancel")],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            // One message per subject: a run never has two pending polls.
            discard_new_per_subject: true,
            max_messages_per_subject: 1,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        },
        stream::Config {
            name: STATUS_STREAM.into(),
            subjects: vec![subjects.all("status")],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(24 * 3600),
            max_messages_per_subject: 100,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        },
        stream::Config {
            name: ADVISORY_STREAM.into(),
            subjects: vec![max_deliveries_subject()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_age: Duration::from_secs(14 * 24 * 3600),
            ..Default::default()
        },
        stream::Config {
            name: DLQ_STREAM.into(),
            subjects: vec![format!("{}.dlq.>", subjects.prefix())],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(14 * 24 * 3600),
            ..Default::default()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|e| NatsError::Declare {
                what: "stream",
                detail: format!("{name}: {e}"),
            })?;
    }
    let jobs = js
        .get_stream_no_info(JOBS_STREAM)
        .await
        .map_err(|e| NatsError::Declare {
            what: "stream",
            detail: e.to_string(),
        })?;
    let consumer = |name: &str, filter: String, ack_wait: Duration, max_deliver: i64, max_ack_pending: i64| {
        pull::Config {
            durable_name: Some(name.to_string()),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait,
            max_deliver,
            max_ack_pending,
            // No `backoff` (it distorts nak delays) and no `inactive_threshold`.
            ..Default::default()
        }
    };
    let create = |config: pull::Config| {
        let jobs = &jobs;
        async move {
            let name = config.durable_name.clone().unwrap_or_default();
            jobs.create_consumer(config).await.map_err(|e| NatsError::Declare {
                what: "consumer",
                detail: format!("{name}: {e}"),
            })
        }
    };
    Ok(Consumers {
        execute: create(consumer(
            EXECUTE_CONSUMER,
            subjects.all("execute"),
            execute_ack_wait,
            EXECUTE_MAX_DELIVER,
            10_000,
        ))
        .await?,
        // Every delayed nak is a delivery and every waiting run holds an ack slot.
        poll: create(consumer(
            POLL_CONSUMER,
            subjects.all("poll"),
            poll_ack_wait,
            -1,
            poll_max_ack_pending,
        ))
        .await?,
        cancel: create(consumer(
            CANCEL_CONSUMER,
            subjects.all("cancel"),
            CANCEL_ACK_WAIT,
            CANCEL_MAX_DELIVER,
            10_000,
        ))
        .await?,
        undeliverable: js
            .get_stream_no_info(ADVISORY_STREAM)
            .await
            .map_err(|e| NatsError::Declare {
                what: "stream",
                detail: e.to_string(),
            })?
            .create_consumer(consumer(
                UNDELIVERABLE_CONSUMER,
                max_deliveries_subject(),
                CANCEL_ACK_WAIT,
                -1,
                1_000,
            ))
            .await
            .map_err(|e| NatsError::Declare {
                what: "consumer",
                detail: format!("{UNDELIVERABLE_CONSUMER}: {e}"),
            })?,
    })
}

fn jobs_error(detail: String) -> NatsError {
    NatsError::Declare {
        what: "jobs message",
        detail,
    }
}

async fn jobs_stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream<()>, NatsError> {
    js.get_stream_no_info(JOBS_STREAM)
        .await
        .map_err(|e| jobs_error(e.to_string()))
}

fn not_found(e: &async_nats::jetstream::stream::DirectGetError) -> bool {
    e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound
}

/// A message of the jobs stream by its sequence: its subject and body;
/// `None` when it is gone.
pub async fn job_message(js: &jetstream::Context, seq: u64) -> Result<Option<(String, Bytes)>, NatsError> {
    match jobs_stream(js).await?.direct_get(seq).await {
        Ok(msg) => Ok(Some((msg.subject.to_string(), msg.payload))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(jobs_error(e.to_string())),
    }
}

/// Removes a message from the jobs stream (one that no delivery can finish).
pub async fn delete_job_message(js: &jetstream::Context, seq: u64) -> Result<(), NatsError> {
    let stream = jobs_stream(js).await?;
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) => match stream.direct_get(seq).await {
            // Already gone: what was asked for holds.
            Err(g) if not_found(&g) => Ok(()),
            _ => Err(jobs_error(e.to_string())),
        },
    }
}

/// What publishing a poll message found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollPublished {
    New,
    /// A poll message for the run is already pending (or this id was seen).
    AlreadyPending,
}

fn js_error_code(e: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|j| j.error_code())
}

/// Publishes `P.poll.<runId>` with a message id. A duplicate id or the
/// one-message-per-subject rule both mean a poll is already pending.
pub async fn publish_poll(
    js: &jetstream::Context,
    subjects: &Subjects,
    run: Uuid,
    msg_id: &str,
) -> Result<PollPublished, NatsError> {
    let subject = subjects.poll(run);
    let body = Bytes::from(serde_json::to_vec(&PollMessage { run_id: run }).expect("a poll message serialises"));
    let mut headers = HeaderMap::new();
    crate::adapters::telemetry::inject(&mut headers);
    let publish = Publish::build().payload(body).message_id(msg_id).headers(headers);
    let err = |detail: String| NatsError::Publish {
        subject: subject.clone(),
        detail,
    };
    let ack = js
        .send_publish(subject.clone(), publish)
        .await
        .map_err(|e| err(e.to_string()))?
        .await;
    match ack {
        Ok(ack) if ack.duplicate => Ok(PollPublished::AlreadyPending),
        Ok(_) => Ok(PollPublished::New),
        Err(e) if e.kind() == PublishErrorKind::Other && js_error_code(&e) == Some(ErrorCode::STREAM_STORE_FAILED) => {
            Ok(PollPublished::AlreadyPending)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Publishes a JSON message under a message id, with the current trace
/// context, and waits for the stream's acknowledgement.
async fn publish_json<T: serde::Serialize>(
    js: &jetstream::Context,
    subject: String,
    body: &T,
    msg_id: String,
) -> Result<(), NatsError> {
    let payload = Bytes::from(serde_json::to_vec(body).expect("the service's messages serialise"));
    let mut headers = HeaderMap::new();
    crate::adapters::telemetry::inject(&mut headers);
    let publish = Publish::build().payload(payload).message_id(msg_id).headers(headers);
    let err = |detail: String| NatsError::Publish {
        subject: subject.clone(),
        detail,
    };
    js.send_publish(subject.clone(), publish)
        .await
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Publishes an execute message (the reconciler's resubmission), under a
/// fresh message id.
pub async fn publish_execute(
    js: &jetstream::Context,
    subjects: &Subjects,
    msg: &ExecuteMessage,
    msg_id: &str,
) -> Result<(), NatsError> {
    publish_json(js, subjects.execute(msg.run_id), msg, msg_id.to_string()).await
}

/// Publishes a status event, deduplicated per (run, status) so a re-publish
/// after a crash is harmless.
pub async fn publish_status(
    js: &jetstream::Context,
    subjects: &Subjects,
    event: &StatusEvent,
) -> Result<(), NatsError> {
    let msg_id = format!("status:{}:{}", event.run_id, event.status.as_str());
    publish_json(js, subjects.status(event.run_id), event, msg_id).await
}

/// The status of the last event on a run's status subject, if any (the
/// stream keeps them for 24 hours).
pub async fn last_status(
    js: &jetstream::Context,
    subjects: &Subjects,
    run: Uuid,
) -> Result<Option<shell_query_core::event::EventStatus>, NatsError> {
    let err = |detail: String| NatsError::Declare {
        what: "status event",
        detail,
    };
    let stream = js
        .get_stream_no_info(STATUS_STREAM)
        .await
        .map_err(|e| err(e.to_string()))?;
    match stream.direct_get_last_for_subject(subjects.status(run)).await {
        Ok(msg) => Ok(serde_json::from_slice::<StatusEvent>(&msg.payload)
            .ok()
            .map(|e| e.status)),
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Copies a message the service gave up on to the DLQ with the reason.
pub async fn publish_dlq(
    js: &jetstream::Context,
    subjects: &Subjects,
    original_subject: &str,
    payload: Bytes,
    redaction: Option<&str>,
    reason: &str,
) -> Result<(), NatsError> {
    let subject = subjects.dlq(original_subject);
    let mut headers = HeaderMap::new();
    if let Some(how) = redaction {
        headers.insert(HEADER_REDACTED, how);
    }
    // Header values are one line.
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    headers.insert(HEADER_ERROR, one_line.as_str());
    headers.insert(HEADER_ORIGINAL_SUBJECT, original_subject);
    crate::adapters::telemetry::inject(&mut headers);
    let err = |detail: String| NatsError::Publish {
        subject: subject.clone(),
        detail,
    };
    js.send_publish(subject.clone(), Publish::build().payload(payload).headers(headers))
        .await
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let s = Subjects::new("sq");
        let id = Uuid::nil();
        assert_eq!(s.poll(id), "sq.poll.00000000-0000-0000-0000-000000000000");
        assert_eq!(s.dlq("sq.execute.abc"), "sq.dlq.execute.abc");
        assert_eq!(Subjects::run_id_of(&s.cancel(id)), Some(id));
        assert_eq!(Subjects::run_id_of("sq.poll.nope"), None);
    }
}
