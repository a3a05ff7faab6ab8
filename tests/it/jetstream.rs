//! Streams and consumers as CONTRACT.md section 3 sets them, declared
//! idempotently, and the poll message's one-per-run guarantee.

use std::time::Duration;

use async_nats::jetstream::{self, stream::DiscardPolicy, stream::RetentionPolicy};
use service::adapters::nats::{PollPublished, Subjects, declare, publish_poll};
use tests::NatsServer;
use uuid::Uuid;

#[tokio::test]
async fn declaring_twice_keeps_the_contract_settings_and_pending_messages() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.admin().await);
    let subjects = Subjects::new("sq");
    declare(&js, &subjects, 1000, Duration::from_secs(60), Duration::from_secs(60))
        .await
        .unwrap();

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
    let consumers = declare(
        &js,
        &subjects,
        250_000,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
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
    let mut status = js.get_stream("SHELL_QUERY_STATUS").await.unwrap();
    let config = status.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(24 * 3600));
    assert!(config.max_messages_per_subject >= 50);
    let mut dlq = js.get_stream("SHELL_QUERY_DLQ").await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().config.max_age,
        Duration::from_secs(14 * 24 * 3600)
    );
}

#[tokio::test]
async fn nats_conf_gives_the_api_and_the_service_only_their_own_subjects() {
    let nats = NatsServer::start().await;
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "no anonymous connections"
    );
    let js = jetstream::new(nats.admin().await);
    declare(
        &js,
        &Subjects::new("shell_query"),
        1000,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    let allowed = |user: &'static str, subject: &'static str| {
        let nats = &nats;
        async move {
            let js = jetstream::new(nats.connect_as(user).await.unwrap());
            let publish = js.publish(subject, "{}".into()).await;
            match publish {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    };
    let run = "0b5f3c1e-8a2d-4f6b-9c3e-1a0000000001";
    let subject = |kind: &str| -> &'static str { Box::leak(format!("shell_query.{kind}.{run}").into_boxed_str()) };
    assert!(allowed(tests::API_USER, subject("execute")).await);
    assert!(allowed(tests::API_USER, subject("cancel")).await);
    assert!(
        !allowed(tests::API_USER, subject("poll")).await,
        "the API may not schedule polls"
    );
    assert!(
        !allowed(tests::API_USER, subject("status")).await,
        "the API may not forge status events"
    );
    assert!(allowed(tests::SERVICE_USER, subject("poll")).await);
    assert!(allowed(tests::SERVICE_USER, subject("status")).await);
    assert!(
        !allowed(tests::SERVICE_USER, subject("cancel")).await,
        "only the API cancels"
    );
}
