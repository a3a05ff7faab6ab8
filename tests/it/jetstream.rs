//! Streams and consumers as docs/CONTRACT.md section 2 sets them, declared
//! idempotently, and the poll message's one-per-run guarantee.

use std::time::Duration;

use async_nats::jetstream::{self, stream::DiscardPolicy, stream::RetentionPolicy};
use service::adapters::nats::{
    ConsumerSettings, Consumers, PollPublished, StreamLimits, Subjects, consumer_specs, declare, publish_poll,
};
use service::app::config::StreamArgs;
use tests::NatsServer;
use uuid::Uuid;

fn settings(poll_max_ack_pending: i64) -> ConsumerSettings {
    ConsumerSettings {
        poll_max_ack_pending,
        execute_ack_wait: Duration::from_secs(60),
        poll_ack_wait: Duration::from_secs(60),
    }
}

/// Declares everything with the default limits, as a replica starts.
pub async fn declare_defaults(js: &jetstream::Context, prefix: &str) -> Consumers {
    let subjects = Subjects::new(prefix);
    declare(
        js,
        &subjects,
        &StreamArgs::default().limits(),
        &consumer_specs(&subjects, &settings(1000)),
    )
    .await
    .expect("declaring")
}

#[tokio::test]
async fn declaring_twice_keeps_the_contract_settings_and_pending_messages() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.admin().await);
    let subjects = Subjects::new("sq");
    declare_defaults(&js, "sq").await;

    let run = Uuid::new_v4();
    assert_eq!(
        publish_poll(&js, &subjects, run, &format!("poll:{run}")).await.unwrap(),
        PollPublished::New
    );
    assert_eq!(
        publish_poll(&js, &subjects, run, &format!("poll:{run}")).await.unwrap(),
        PollPublished::AlreadyPending,
        "same id: a duplicate"
    );
    assert_eq!(
        publish_poll(&js, &subjects, run, &format!("poll:{run}:1"))
            .await
            .unwrap(),
        PollPublished::AlreadyPending,
        "fresh id, same subject: refused by one-message-per-subject"
    );

    // A second declaration (another replica, a restart) with a new limit
    // updates in place and keeps the pending message.
    let limits = StreamArgs::default().limits();
    let consumers = declare(&js, &subjects, &limits, &consumer_specs(&subjects, &settings(250_000)))
        .await
        .unwrap();
    let mut poll = consumers.poll;
    let info = poll.info().await.unwrap().clone();
    assert_eq!(info.config.max_deliver, -1);
    assert_eq!(info.config.max_ack_pending, 250_000);
    assert!(info.config.backoff.is_empty());
    assert_eq!(info.config.inactive_threshold, Duration::ZERO);
    assert_eq!(info.num_pending, 1, "the poll message survived the redeclaration");

    let mut jobs = js.get_stream("SHELL_QUERY_JOBS").await.unwrap();
    let config = jobs.info().await.unwrap().config.clone();
    assert_eq!(config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(config.discard, DiscardPolicy::New);
    assert!(config.discard_new_per_subject);
    assert_eq!(config.max_messages_per_subject, 1);
    assert!(config.duplicate_window >= Duration::from_secs(120));
    assert_eq!(config.max_bytes, 1 << 30, "bounded: JOBS_STREAM_MAX_BYTES");
    let mut status = js.get_stream("SHELL_QUERY_STATUS").await.unwrap();
    let config = status.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(24 * 3600));
    assert!(config.max_messages_per_subject >= 50);
    assert_eq!(config.max_bytes, 1 << 30);
    let mut dlq = js.get_stream("SHELL_QUERY_DLQ").await.unwrap();
    let config = dlq.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(14 * 24 * 3600));
    assert_eq!(config.max_bytes, 512 << 20);
    assert_eq!(config.discard, DiscardPolicy::Old, "a full DLQ drops its oldest copies");
    let mut advisories = js.get_stream("SHELL_QUERY_ADVISORIES").await.unwrap();
    assert_eq!(advisories.info().await.unwrap().config.max_bytes, 64 << 20);
    let mut leases = js.get_stream("KV_SHELL_QUERY_LEASES").await.unwrap();
    assert_eq!(leases.info().await.unwrap().config.max_bytes, 1 << 20);
}

#[tokio::test]
async fn declaring_never_lowers_a_limit_an_operator_raised() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.admin().await);
    declare_defaults(&js, "sq").await;
    // An operator raises the jobs stream's size and the DLQ's age, and
    // lowers the status stream's size.
    let raise = |name: &'static str, change: fn(&mut jetstream::stream::Config)| {
        let js = &js;
        async move {
            let mut config = js.get_stream(name).await.unwrap().cached_info().config.clone();
            change(&mut config);
            js.update_stream(config).await.unwrap();
        }
    };
    raise("SHELL_QUERY_JOBS", |c| c.max_bytes = 4 << 30).await;
    raise("SHELL_QUERY_DLQ", |c| c.max_age = Duration::from_secs(30 * 24 * 3600)).await;
    raise("SHELL_QUERY_STATUS", |c| {
        c.max_bytes = 1 << 20;
        c.max_messages_per_subject = 500;
    })
    .await;
    // A stream an older version made without a size limit.
    raise("SHELL_QUERY_ADVISORIES", |c| c.max_bytes = -1).await;

    declare_defaults(&js, "sq").await;
    let config = |name: &'static str| {
        let js = &js;
        async move { js.get_stream(name).await.unwrap().cached_info().config.clone() }
    };
    assert_eq!(config("SHELL_QUERY_JOBS").await.max_bytes, 4 << 30, "kept, not lowered");
    assert_eq!(
        config("SHELL_QUERY_DLQ").await.max_age,
        Duration::from_secs(30 * 24 * 3600)
    );
    let status = config("SHELL_QUERY_STATUS").await;
    assert_eq!(status.max_bytes, 1 << 30, "below the setting: raised to it");
    assert_eq!(status.max_messages_per_subject, 500, "events kept per run: kept");
    assert_eq!(
        config("SHELL_QUERY_ADVISORIES").await.max_bytes,
        64 << 20,
        "an unbounded stream gets its bound"
    );
    // Replicas above what a single server can hold are refused with a clear error.
    let subjects = Subjects::new("sq");
    let three = StreamLimits {
        replicas: 3,
        ..StreamArgs::default().limits()
    };
    let refused = declare(&js, &subjects, &three, &consumer_specs(&subjects, &settings(1000)))
        .await
        .err()
        .expect("three replicas on one server are refused");
    assert!(refused.to_string().contains("SHELL_QUERY_JOBS"), "{refused}");
}

#[tokio::test]
async fn a_full_jobs_stream_refuses_new_work_and_a_poll_publish_says_so() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.admin().await);
    let subjects = Subjects::new("sq");
    let small = StreamLimits {
        jobs_max_bytes: 4096,
        ..StreamArgs::default().limits()
    };
    declare(&js, &subjects, &small, &consumer_specs(&subjects, &settings(1000)))
        .await
        .unwrap();
    // Junk fills the stream.
    let mut refused = None;
    for i in 0..20 {
        let ack = js
            .publish(format!("sq.execute.{}", Uuid::new_v4()), vec![b'x'; 1000].into())
            .await
            .unwrap()
            .await;
        if let Err(e) = ack {
            refused = Some((i, e.to_string()));
            break;
        }
    }
    let (after, error) = refused.expect("a full stream refuses the publisher");
    assert!(after >= 2, "some junk fitted first");
    assert!(error.contains("maximum bytes exceeded"), "{error}");
    // Small junk fills what is left, to the last byte.
    let mut small_refused = false;
    for _ in 0..100 {
        let ack = js
            .publish(format!("sq.cancel.{}", Uuid::new_v4()), vec![b'x'; 8].into())
            .await
            .unwrap()
            .await;
        if ack.is_err() {
            small_refused = true;
            break;
        }
    }
    assert!(small_refused, "the stream filled up");
    // A poll publish on a full stream is an error, never "already pending".
    let run = Uuid::new_v4();
    let poll = publish_poll(&js, &subjects, run, &format!("poll:{run}")).await;
    assert!(poll.is_err(), "a full stream is not a pending poll: {poll:?}");
}
