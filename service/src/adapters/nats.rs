//! Streams, consumers and publishing (docs/CONTRACT.md section 2).
//!
//! Architecture invariant: consumers are created or updated in place, never
//! deleted and re-created: deleting the poll consumer would lose every
//! pending delay.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use tracing::Instrument as _;
use uuid::Uuid;

use shell_query_core::event::StatusEvent;
pub use shell_query_core::message::Subjects;
use shell_query_core::message::{ExecuteMessage, PollMessage};

pub(crate) const JOBS_STREAM: &str = "SHELL_QUERY_JOBS";
pub(crate) const STATUS_STREAM: &str = "SHELL_QUERY_STATUS";
pub(crate) const DLQ_STREAM: &str = "SHELL_QUERY_DLQ";
pub(crate) const EXECUTE_CONSUMER: &str = "shell-query-execute";
pub(crate) const POLL_CONSUMER: &str = "shell-query-poll";
pub(crate) const CANCEL_CONSUMER: &str = "shell-query-cancel";
/// Keeps the server's max-deliveries advisories of the jobs stream: a
/// message no delivery could finish (it crashed or stalled the worker each
/// time) is announced here even while every replica is down.
pub(crate) const ADVISORY_STREAM: &str = "SHELL_QUERY_ADVISORIES";
pub(crate) const UNDELIVERABLE_CONSUMER: &str = "shell-query-undeliverable";

pub(crate) const HEADER_ERROR: &str = "Shell-Query-Error";
pub(crate) const HEADER_ORIGINAL_SUBJECT: &str = "Shell-Query-Original-Subject";
/// How a DLQ copy was redacted (no SQL text leaves in plain text).
pub(crate) const HEADER_REDACTED: &str = "Shell-Query-Redacted";
/// On a replayed message, and on the DLQ copy of one that failed again:
/// the DLQ sequence of the copy it was replayed from.
pub(crate) const HEADER_REPLAYED_FROM: &str = "Shell-Query-Replayed-From";

/// Deliveries of one execute message before the run is given up.
pub const EXECUTE_MAX_DELIVER: i64 = 5;
pub(crate) const CANCEL_ACK_WAIT: Duration = Duration::from_secs(30);
pub(crate) const CANCEL_MAX_DELIVER: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("declare {what}: {detail}")]
    Declare { what: &'static str, detail: String },
    #[error("publish to {subject}: {detail}")]
    Publish { subject: String, detail: String },
    /// The stream is gone (deleted by hand): declaring the streams again
    /// brings it back.
    #[error("stream {0} not found")]
    StreamMissing(&'static str),
    /// An operator's read of a stream or consumer failed.
    #[error("{what}: {detail}")]
    Read { what: String, detail: String },
}

impl NatsError {
    /// What went wrong, without the name of what was read (a line that
    /// names it already).
    pub(crate) fn detail(&self) -> String {
        match self {
            NatsError::Read { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }
}

fn read_error(what: impl Into<String>, e: impl std::fmt::Display) -> NatsError {
    NatsError::Read {
        what: what.into(),
        detail: e.to_string(),
    }
}

/// A stored message as an operator sees it.
pub(crate) struct StoredMessage {
    pub(crate) subject: String,
    /// When the stream stored it.
    pub(crate) stored_at: chrono::DateTime<chrono::Utc>,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// The first and last sequence and the message count of a stream.
pub(crate) async fn stream_range(js: &jetstream::Context, name: &str) -> Result<(u64, u64, u64), NatsError> {
    let mut stream = js.get_stream(name).await.map_err(|e| read_error(name, e))?;
    let state = stream.info().await.map_err(|e| read_error(name, e))?.state.clone();
    Ok((state.first_sequence, state.last_sequence, state.messages))
}

/// The message count and replicas of a stream.
pub(crate) async fn stream_summary(js: &jetstream::Context, name: &str) -> Result<(u64, usize), NatsError> {
    let mut stream = js.get_stream(name).await.map_err(|e| read_error(name, e))?;
    let info = stream.info().await.map_err(|e| read_error(name, e))?;
    Ok((info.state.messages, info.config.num_replicas))
}

/// A durable consumer's state.
pub(crate) async fn consumer_state(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<jetstream::consumer::Info, NatsError> {
    let mut c: PullConsumer = js
        .get_consumer_from_stream(consumer, stream)
        .await
        .map_err(|e| read_error(consumer, e))?;
    Ok(c.info().await.map_err(|e| read_error(consumer, e))?.clone())
}

/// The message at `seq` of a stream; `None` when it is gone (removed by
/// age, size or hand).
pub(crate) async fn stored_message(
    js: &jetstream::Context,
    name: &str,
    seq: u64,
) -> Result<Option<StoredMessage>, NatsError> {
    let stream = js.get_stream_no_info(name).await.map_err(|e| read_error(name, e))?;
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(StoredMessage {
            subject: m.subject.to_string(),
            stored_at: chrono::DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
                .unwrap_or_default(),
            headers: m.headers,
            payload: m.payload,
        })),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(read_error(format!("{name} message {seq}"), e)),
    }
}

/// Every message on `subject` of the status stream, oldest first (an
/// operator's ephemeral consumer reads them).
pub(crate) async fn status_payloads(js: &jetstream::Context, subject: &str) -> Result<Vec<Bytes>, NatsError> {
    use futures::StreamExt as _;
    let what = || STATUS_STREAM.to_string();
    let stream = js.get_stream(STATUS_STREAM).await.map_err(|e| read_error(what(), e))?;
    let consumer = reading_consumer(&stream, subject)
        .await
        .map_err(|e| read_error(what(), e))?;
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| read_error(what(), e))?;
    let mut payloads = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.map_err(|e| read_error(what(), e))?;
        let last = message.info().map(|i| i.pending == 0).unwrap_or(false);
        payloads.push(message.payload.clone());
        if last {
            break;
        }
    }
    Ok(payloads)
}

/// Why a replay was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    #[error("{0} holds a message already (the run's poll is pending): nothing replayed")]
    AlreadyHolds(String),
    #[error("no stream takes {0}: is the service's SUBJECT_PREFIX the same?")]
    NoStream(String),
    #[error("publishing to {0}: {1}")]
    Other(String, String),
}

/// What a replay stored.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub(crate) stream: String,
    pub(crate) sequence: u64,
    /// The jobs stream had taken this copy's replay already (within its
    /// duplicate window): nothing new was stored.
    pub(crate) duplicate: bool,
}

/// Publishes a DLQ copy's original body to its original subject again,
/// under a message id of the copy (`replay:<seq>:<stored nanos>`): a
/// second replay of the same copy within the jobs stream's duplicate
/// window is not stored twice.
pub(crate) async fn replay(
    js: &jetstream::Context,
    subject: &str,
    seq: u64,
    stored_at: chrono::DateTime<chrono::Utc>,
    body: Bytes,
) -> Result<Replayed, ReplayError> {
    let mut headers = HeaderMap::new();
    let id = format!(
        "replay:{seq}:{}",
        stored_at.timestamp_nanos_opt().unwrap_or_else(|| stored_at.timestamp())
    );
    headers.insert("Nats-Msg-Id", id.as_str());
    headers.insert(HEADER_REPLAYED_FROM, seq.to_string().as_str());
    let other = |e: &dyn std::fmt::Display| ReplayError::Other(subject.to_string(), e.to_string());
    let ack = js
        .publish_with_headers(subject.to_string(), headers, body)
        .await
        .map_err(|e| other(&e))?
        .await;
    match ack {
        Ok(ack) => Ok(Replayed {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }),
        Err(e) if subject_already_holds_one(&e) => Err(ReplayError::AlreadyHolds(subject.to_string())),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
            Err(ReplayError::NoStream(subject.to_string()))
        }
        Err(e) => Err(other(&e)),
    }
}

/// Removes the message at `seq` of a stream (a DLQ copy replayed or
/// dropped by an operator); `false` when it was not there.
pub(crate) async fn delete_stored_message(js: &jetstream::Context, name: &str, seq: u64) -> Result<bool, NatsError> {
    let stream = js.get_stream_no_info(name).await.map_err(|e| read_error(name, e))?;
    match stream.delete_message(seq).await {
        Ok(_) => Ok(true),
        Err(e) => match stream.get_raw_message(seq).await {
            Err(g) if g.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            _ => Err(read_error(format!("removing {name} message {seq}"), e)),
        },
    }
}

/// Removes every message of a stream below sequence `below` (those an
/// operator saw; later ones stay); how many went.
pub(crate) async fn purge_below(js: &jetstream::Context, name: &str, below: u64) -> Result<u64, NatsError> {
    let stream = js.get_stream_no_info(name).await.map_err(|e| read_error(name, e))?;
    let purged = stream
        .purge()
        .sequence(below)
        .await
        .map_err(|e| read_error(format!("purging {name}"), e))?;
    Ok(purged.purged)
}

pub struct Consumers {
    pub execute: PullConsumer,
    pub poll: PullConsumer,
    pub cancel: PullConsumer,
    pub undeliverable: PullConsumer,
}

/// The subject of the server's advisories for jobs-stream messages that
/// reached their consumer's `max_deliver`.
pub(crate) fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*")
}

/// Replicas and sizes of the streams (settings `STREAM_REPLICAS`,
/// `*_MAX_BYTES`, `DLQ_MAX_AGE_MS`). Every stream is bounded so that junk
/// cannot fill the server's store and stop every publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    pub replicas: usize,
    pub jobs_max_bytes: i64,
    pub status_max_bytes: i64,
    /// The most consumers `SHELL_QUERY_STATUS` holds (the API's own and
    /// operators'): a client cannot fill the server with them.
    pub status_max_consumers: i32,
    pub dlq_max_bytes: i64,
    pub dlq_max_age: Duration,
    pub advisories_max_bytes: i64,
}

/// The lease bucket holds two small keys.
pub(crate) const LEASES_MAX_BYTES: i64 = 1024 * 1024;

/// How the service's durable consumers are set up.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub poll_max_ack_pending: i64,
    pub execute_ack_wait: Duration,
    pub poll_ack_wait: Duration,
}

/// One durable pull consumer of the service: the stream it reads and its
/// configuration.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// The role: `execute`, `poll`, `cancel` or `undeliverable`.
    pub role: &'static str,
    pub stream: &'static str,
    pub config: pull::Config,
}

impl ConsumerSpec {
    pub(crate) fn name(&self) -> &str {
        self.config.durable_name.as_deref().unwrap_or_default()
    }
}

/// The four consumers, in the order `execute`, `poll`, `cancel`,
/// `undeliverable`.
pub fn consumer_specs(subjects: &Subjects, settings: &ConsumerSettings) -> [ConsumerSpec; 4] {
    let spec = |role, stream, name: &str, filter: String, ack_wait, max_deliver, max_ack_pending| ConsumerSpec {
        role,
        stream,
        config: pull::Config {
            durable_name: Some(name.to_string()),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait,
            max_deliver,
            max_ack_pending,
            // No `backoff` (it distorts nak delays) and no `inactive_threshold`.
            ..Default::default()
        },
    };
    [
        spec(
            "execute",
            JOBS_STREAM,
            EXECUTE_CONSUMER,
            subjects.all("execute"),
            settings.execute_ack_wait,
            EXECUTE_MAX_DELIVER,
            10_000,
        ),
        // Every delayed nak is a delivery and every waiting run holds an ack slot.
        spec(
            "poll",
            JOBS_STREAM,
            POLL_CONSUMER,
            subjects.all("poll"),
            settings.poll_ack_wait,
            -1,
            settings.poll_max_ack_pending,
        ),
        spec(
            "cancel",
            JOBS_STREAM,
            CANCEL_CONSUMER,
            subjects.all("cancel"),
            CANCEL_ACK_WAIT,
            CANCEL_MAX_DELIVER,
            10_000,
        ),
        spec(
            "undeliverable",
            ADVISORY_STREAM,
            UNDELIVERABLE_CONSUMER,
            max_deliveries_subject(),
            CANCEL_ACK_WAIT,
            -1,
            1_000,
        ),
    ]
}

fn stream_configs(subjects: &Subjects, limits: &StreamLimits) -> [stream::Config; 4] {
    [
        stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![subjects.all("execute"), subjects.all("poll"), subjects.all("cancel")],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            // Full: new work is refused to its publisher, nothing queued is dropped.
            discard: DiscardPolicy::New,
            // One message per subject: a run never has two pending polls.
            discard_new_per_subject: true,
            max_messages_per_subject: 1,
            max_bytes: limits.jobs_max_bytes,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        stream::Config {
            name: STATUS_STREAM.into(),
            subjects: vec![subjects.all("status")],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(24 * 3600),
            max_messages_per_subject: 100,
            max_bytes: limits.status_max_bytes,
            max_consumers: limits.status_max_consumers,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        stream::Config {
            name: ADVISORY_STREAM.into(),
            subjects: vec![max_deliveries_subject()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_age: Duration::from_secs(14 * 24 * 3600),
            max_bytes: limits.advisories_max_bytes,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        stream::Config {
            name: DLQ_STREAM.into(),
            subjects: vec![format!("{}.dlq.>", subjects.prefix())],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            // Full or old: the oldest copies go first.
            discard: DiscardPolicy::Old,
            max_age: limits.dlq_max_age,
            max_bytes: limits.dlq_max_bytes,
            num_replicas: limits.replicas,
            ..Default::default()
        },
    ]
}

/// A message limit ordered by how much it allows: zero or less means none,
/// the most of all.
fn count_allowance(v: i64) -> i64 {
    if v <= 0 { i64::MAX } else { v }
}

/// A size limit ordered for keeping: a stream without one (as versions
/// before bounded streams made them) ranks lowest, so it gets the
/// setting's size; a size an operator raised ranks by its value.
fn bytes_allowance(v: i64) -> i64 {
    v.max(0)
}

/// An age limit ordered by how much it allows: zero means none.
fn age_allowance(v: Duration) -> Duration {
    if v.is_zero() { Duration::MAX } else { v }
}

fn show_count(v: i64) -> String {
    if v <= 0 { "unlimited".into() } else { v.to_string() }
}

fn show_age(v: Duration) -> String {
    if v.is_zero() {
        "unlimited".into()
    } else {
        format!("{}s", v.as_secs())
    }
}

/// The configuration to declare over an existing stream: the service's,
/// except that a limit the existing stream has higher (replicas, bytes,
/// messages, age: an operator raised it) is kept, never lowered. Also
/// returns each difference, for one log line. Pure.
pub(crate) fn keep_raised(mut wanted: stream::Config, existing: &stream::Config) -> (stream::Config, Vec<String>) {
    let mut differences = Vec::new();
    if existing.num_replicas != wanted.num_replicas {
        differences.push(format!(
            "num_replicas {} (settings {})",
            existing.num_replicas, wanted.num_replicas
        ));
        wanted.num_replicas = wanted.num_replicas.max(existing.num_replicas);
    }
    // With `discard_new_per_subject` the per-subject limit is a rule (one
    // pending poll per run), not a retention limit: it is always the
    // service's.
    let per_subject = if wanted.discard_new_per_subject {
        wanted.max_messages_per_subject
    } else {
        existing.max_messages_per_subject
    };
    let counts = [
        (
            "max_bytes",
            existing.max_bytes,
            &mut wanted.max_bytes,
            bytes_allowance as fn(i64) -> i64,
        ),
        (
            "max_messages",
            existing.max_messages,
            &mut wanted.max_messages,
            count_allowance,
        ),
        (
            "max_messages_per_subject",
            per_subject,
            &mut wanted.max_messages_per_subject,
            count_allowance,
        ),
    ];
    for (what, have, want, allowance) in counts {
        if allowance(have) != allowance(*want) {
            differences.push(format!("{what} {} (settings {})", show_count(have), show_count(*want)));
            if allowance(have) > allowance(*want) {
                *want = have;
            }
        }
    }
    if wanted.discard_new_per_subject && existing.max_messages_per_subject != wanted.max_messages_per_subject {
        differences.push(format!(
            "max_messages_per_subject {} (settings {}: a rule of the service, set back)",
            existing.max_messages_per_subject, wanted.max_messages_per_subject
        ));
    }
    // Consumers as sizes: none set (older versions) gets the setting's.
    let (have, want) = (i64::from(existing.max_consumers), i64::from(wanted.max_consumers));
    if bytes_allowance(have) != bytes_allowance(want) {
        differences.push(format!(
            "max_consumers {} (settings {})",
            show_count(have),
            show_count(want)
        ));
        if bytes_allowance(have) > bytes_allowance(want) {
            wanted.max_consumers = existing.max_consumers;
        }
    }
    if age_allowance(existing.max_age) != age_allowance(wanted.max_age) {
        differences.push(format!(
            "max_age {} (settings {})",
            show_age(existing.max_age),
            show_age(wanted.max_age)
        ));
        if age_allowance(existing.max_age) > age_allowance(wanted.max_age) {
            wanted.max_age = existing.max_age;
        }
    }
    (wanted, differences)
}

fn declare_error(what: &'static str, name: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Declare {
        what,
        detail: format!("{name}: {e}"),
    }
}

/// Creates a stream, or updates it keeping any limit an operator raised.
async fn declare_stream(js: &jetstream::Context, wanted: stream::Config) -> Result<(), NatsError> {
    let name = wanted.name.clone();
    match js.get_stream(&name).await {
        Ok(stream) => {
            let existing = stream.cached_info().config.clone();
            let (config, differences) = keep_raised(wanted, &existing);
            if !differences.is_empty() {
                tracing::warn!(
                    stream = %name,
                    differences = %differences.join(", "),
                    "the stream differs from the settings: the larger of each limit is kept"
                );
            }
            js.update_stream(config)
                .await
                .map_err(|e| declare_error("stream", &name, e))?;
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            // Another replica may create it at the same moment: same config.
            js.create_or_update_stream(wanted)
                .await
                .map_err(|e| declare_error("stream", &name, e))?;
        }
        Err(e) => return Err(declare_error("stream", &name, e)),
    }
    Ok(())
}

/// The lease bucket (adapters/lease.rs), at the streams' replicas.
async fn declare_leases(js: &jetstream::Context, limits: &StreamLimits) -> Result<(), NatsError> {
    let bucket = crate::adapters::lease::BUCKET;
    if let Ok(existing) = js.get_stream(format!("KV_{bucket}")).await {
        let mut wanted = existing.cached_info().config.clone();
        wanted.num_replicas = limits.replicas;
        wanted.max_bytes = LEASES_MAX_BYTES;
        return declare_stream(js, wanted).await;
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.into(),
            history: 1,
            max_bytes: LEASES_MAX_BYTES,
            num_replicas: limits.replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another replica may have created it meanwhile.
        Err(e) => match js.get_key_value(bucket).await {
            Ok(_) => Ok(()),
            Err(_) => Err(declare_error("key-value bucket", bucket, e)),
        },
    }
}

/// What making sure of a consumer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ensured {
    /// It exists as the service declares it.
    Confirmed,
    /// It was missing (deleted) and is created again.
    Recreated,
    /// It existed with another configuration and is updated.
    Updated,
}

/// Whether an existing consumer is the one the service declares (the
/// fields that decide how its messages are delivered).
fn same_consumer(have: &async_nats::jetstream::consumer::Config, want: &pull::Config) -> bool {
    have.deliver_subject.is_none()
        && have.filter_subject == want.filter_subject
        && have.ack_policy == want.ack_policy
        && have.ack_wait == want.ack_wait
        && have.max_deliver == want.max_deliver
        && have.max_ack_pending == want.max_ack_pending
        && have.backoff.is_empty()
        && have.inactive_threshold.is_zero()
}

/// Makes sure a consumer exists as the service declares it: creates it if
/// it is missing, updates it in place if it differs; returns what it found
/// and the consumer's state. A consumer is never deleted (that would lose
/// every pending delay).
pub(crate) async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<(Ensured, async_nats::jetstream::consumer::Info), NatsError> {
    let stream = js
        .get_stream_no_info(spec.stream)
        .await
        .map_err(|e| declare_error("stream", spec.stream, e))?;
    let ensured = match stream.consumer_info(spec.name()).await {
        Ok(info) if same_consumer(&info.config, &spec.config) => return Ok((Ensured::Confirmed, info)),
        Ok(_) => Ensured::Updated,
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ensured::Recreated,
        Err(e) if e.kind() == ConsumerInfoErrorKind::StreamNotFound => {
            return Err(NatsError::StreamMissing(spec.stream));
        }
        Err(e) => return Err(declare_error("consumer", spec.name(), e)),
    };
    let consumer = create_consumer(js, spec).await?;
    Ok((ensured, consumer.cached_info().clone()))
}

/// Creates the consumer, or updates it in place.
async fn create_consumer(js: &jetstream::Context, spec: &ConsumerSpec) -> Result<PullConsumer, NatsError> {
    js.get_stream_no_info(spec.stream)
        .await
        .map_err(|e| declare_error("stream", spec.stream, e))?
        .create_consumer(spec.config.clone())
        .await
        .map_err(|e| declare_error("consumer", spec.name(), e))
}

/// Declares the streams, the lease bucket and the four consumers. Safe to
/// run on every start of every replica: a stream's limits an operator
/// raised are kept, and consumers are updated in place.
pub async fn declare(
    js: &jetstream::Context,
    subjects: &Subjects,
    limits: &StreamLimits,
    specs: &[ConsumerSpec; 4],
) -> Result<Consumers, NatsError> {
    declare_streams(js, subjects, limits).await?;
    let [execute, poll, cancel, undeliverable] = specs;
    Ok(Consumers {
        execute: create_consumer(js, execute).await?,
        poll: create_consumer(js, poll).await?,
        cancel: create_consumer(js, cancel).await?,
        undeliverable: create_consumer(js, undeliverable).await?,
    })
}

/// Declares the streams and the lease bucket (at start, and again when a
/// stream was deleted).
pub(crate) async fn declare_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    limits: &StreamLimits,
) -> Result<(), NatsError> {
    for config in stream_configs(subjects, limits) {
        declare_stream(js, config).await?;
    }
    declare_leases(js, limits).await
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
pub(crate) async fn job_message(js: &jetstream::Context, seq: u64) -> Result<Option<(String, Bytes)>, NatsError> {
    match jobs_stream(js).await?.direct_get(seq).await {
        Ok(msg) => Ok(Some((msg.subject.to_string(), msg.payload))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(jobs_error(e.to_string())),
    }
}

/// Whether the jobs stream holds a message on `subject`.
pub(crate) async fn holds_message_on(js: &jetstream::Context, subject: String) -> Result<bool, NatsError> {
    match jobs_stream(js).await?.direct_get_last_for_subject(subject).await {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(jobs_error(e.to_string())),
    }
}

/// Removes a message from the jobs stream (one that no delivery can finish).
pub(crate) async fn delete_job_message(js: &jetstream::Context, seq: u64) -> Result<(), NatsError> {
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

/// Whether a refused publish means "this subject already holds its one
/// message". The server answers error code 10077 for that and for a full
/// stream alike ("maximum bytes exceeded", "maximum messages exceeded"):
/// only the description tells them apart, and a full stream must surface
/// as an error, not as a poll already pending.
pub(crate) fn subject_already_holds_one(e: &(dyn std::error::Error + 'static)) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| {
            j.error_code() == ErrorCode::STREAM_STORE_FAILED && j.to_string().contains("maximum messages per subject")
        })
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
    let span = producer_span(&subject);
    send_poll(js, subject, run, msg_id).instrument(span).await
}

async fn send_poll(
    js: &jetstream::Context,
    subject: String,
    run: Uuid,
    msg_id: &str,
) -> Result<PollPublished, NatsError> {
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
        Err(e) if e.kind() == PublishErrorKind::Other && subject_already_holds_one(&e) => {
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
    let span = producer_span(&subject);
    async move {
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
    .instrument(span)
    .await
}

/// The PRODUCER span of one publish, by the messaging conventions: named
/// `send <template>`, the `traceparent` the message carries is this
/// span's, so whatever consumes it continues the same trace.
fn producer_span(subject: &str) -> tracing::Span {
    let template = destination_template(subject);
    tracing::info_span!(
        "publish",
        otel.name = format!("send {template}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = %subject,
        messaging.destination.template = %template,
    )
}

/// A run's subject with its run id generalised: `shell_query.poll.{runId}`.
pub(crate) fn destination_template(subject: &str) -> String {
    match subject.rsplit_once('.') {
        Some((head, last)) if Uuid::parse_str(last).is_ok() => format!("{head}.{{runId}}"),
        _ => subject.to_string(),
    }
}

/// Publishes an execute message (the reconciler's resubmission), under a
/// fresh message id.
pub(crate) async fn publish_execute(
    js: &jetstream::Context,
    subjects: &Subjects,
    msg: &ExecuteMessage,
    msg_id: &str,
) -> Result<(), NatsError> {
    publish_json(js, subjects.execute(msg.run_id), msg, msg_id.to_string()).await
}

/// Publishes a status event, deduplicated per (run, status) so a re-publish
/// after a crash is harmless.
pub(crate) async fn publish_status(
    js: &jetstream::Context,
    subjects: &Subjects,
    event: &StatusEvent,
) -> Result<(), NatsError> {
    let msg_id = format!("status:{}:{}", event.run_id, event.status.as_str());
    publish_json(js, subjects.status(event.run_id), event, msg_id).await
}

/// The status of the last event on a run's status subject, if any (the
/// stream keeps them for 24 hours).
pub(crate) async fn last_status(
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

/// A consumer that reads `subject` of `stream` for an operator (the
/// events `runs show` prints): ephemeral, nothing acknowledged, removed by
/// the server 10 s after its last read. The service's own consumers are
/// [`declare`]d and [`ensure_consumer`]d.
pub(crate) async fn reading_consumer(
    stream: &stream::Stream,
    subject: &str,
) -> Result<PullConsumer, stream::ConsumerError> {
    stream
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
}

/// Where the API's push consumers on `SHELL_QUERY_STATUS` may deliver: its
/// own inbox, the only subjects it may subscribe to.
pub(crate) const API_DELIVER_PREFIX: &str = "_INBOX.shell_query_api.";

/// Deletes every push consumer of `SHELL_QUERY_STATUS` that delivers
/// anywhere but under `allowed_prefix`. nats.conf cannot check a consumer's
/// deliver subject, and the server would publish the stream's events there
/// (into the jobs stream's subjects, the lease bucket, a request subject).
/// The names deleted.
pub(crate) async fn remove_stray_push_consumers(
    js: &jetstream::Context,
    allowed_prefix: &str,
) -> Result<Vec<String>, NatsError> {
    use futures::StreamExt as _;
    let failed = |e: &dyn std::fmt::Display| declare_error("status consumer", STATUS_STREAM, e);
    let stream = js.get_stream_no_info(STATUS_STREAM).await.map_err(|e| failed(&e))?;
    let mut stray = Vec::new();
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.next().await {
        let info = info.map_err(|e| failed(&e))?;
        if info
            .config
            .deliver_subject
            .as_deref()
            .is_some_and(|subject| !subject.starts_with(allowed_prefix))
        {
            stray.push(info.name);
        }
    }
    let mut removed = Vec::new();
    for name in stray {
        match stream.delete_consumer(&name).await {
            Ok(_) => removed.push(name),
            Err(e) => tracing::warn!(consumer = %name, error = %e, "could not delete a stray push consumer"),
        }
    }
    Ok(removed)
}

/// Copies a message the service gave up on to the DLQ with the reason.
pub(crate) async fn publish_dlq(
    js: &jetstream::Context,
    subjects: &Subjects,
    original_subject: &str,
    payload: Bytes,
    redaction: Option<&str>,
    reason: &str,
) -> Result<(), NatsError> {
    publish_dlq_copy(js, subjects, original_subject, payload, redaction, reason, None).await
}

/// [`publish_dlq`], for a message that may have been replayed from the
/// DLQ: `replayed_from` (its [`HEADER_REPLAYED_FROM`]) goes on the copy,
/// which stands in for the copy replayed (`dlq replay` removed that one).
pub(crate) async fn publish_dlq_copy(
    js: &jetstream::Context,
    subjects: &Subjects,
    original_subject: &str,
    payload: Bytes,
    redaction: Option<&str>,
    reason: &str,
    replayed_from: Option<&str>,
) -> Result<(), NatsError> {
    let subject = subjects.dlq(original_subject);
    let mut headers = HeaderMap::new();
    if let Some(how) = redaction {
        headers.insert(HEADER_REDACTED, how);
    }
    if let Some(seq) = replayed_from.filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty()) {
        headers.insert(HEADER_REPLAYED_FROM, seq);
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

    fn limits() -> StreamLimits {
        StreamLimits {
            replicas: 1,
            jobs_max_bytes: 1 << 30,
            status_max_bytes: 1 << 30,
            status_max_consumers: 128,
            dlq_max_bytes: 512 << 20,
            dlq_max_age: Duration::from_secs(14 * 24 * 3600),
            advisories_max_bytes: 64 << 20,
        }
    }

    #[test]
    fn a_declaration_keeps_raised_limits_and_raises_lowered_ones() {
        let [jobs, _, _, dlq] = stream_configs(&Subjects::new("sq"), &limits());
        let same = keep_raised(jobs.clone(), &jobs);
        assert!(same.1.is_empty(), "nothing differs: {:?}", same.1);

        let mut raised = jobs.clone();
        raised.num_replicas = 3;
        raised.max_bytes = 4 << 30;
        let (config, differences) = keep_raised(jobs.clone(), &raised);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.max_bytes, 4 << 30);
        assert_eq!(
            differences,
            vec![
                "num_replicas 3 (settings 1)",
                "max_bytes 4294967296 (settings 1073741824)"
            ]
        );

        // A stream an older version made without a size limit gets one.
        let mut unbounded = jobs.clone();
        unbounded.max_bytes = -1;
        let (config, differences) = keep_raised(jobs.clone(), &unbounded);
        assert_eq!(config.max_bytes, 1 << 30);
        assert_eq!(differences, vec!["max_bytes unlimited (settings 1073741824)"]);

        // The jobs stream's one message per subject is a rule, never kept
        // from the server; the status stream's is retention, kept if raised.
        let mut widened = jobs.clone();
        widened.max_messages_per_subject = 5;
        assert_eq!(keep_raised(jobs.clone(), &widened).0.max_messages_per_subject, 1);
        let [_, status, _, _] = stream_configs(&Subjects::new("sq"), &limits());
        let mut kept = status.clone();
        kept.max_messages_per_subject = 500;
        assert_eq!(keep_raised(status.clone(), &kept).0.max_messages_per_subject, 500);

        let mut lowered = dlq.clone();
        lowered.max_bytes = 1024;
        lowered.max_age = Duration::from_secs(60);
        let (config, differences) = keep_raised(dlq.clone(), &lowered);
        assert_eq!(config.max_bytes, 512 << 20, "raised to the setting");
        assert_eq!(config.max_age, dlq.max_age);
        assert_eq!(differences.len(), 2);

        let mut ageless = dlq.clone();
        ageless.max_age = Duration::ZERO;
        assert_eq!(
            keep_raised(dlq.clone(), &ageless).0.max_age,
            Duration::ZERO,
            "no age limit is the highest"
        );
    }

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
