//! nats.conf's least privilege, action by action: each user connects and
//! tries every action of a matrix. An action counts as denied only when the
//! server says "Permissions Violation" for its subject, and every action is
//! also done by the admin user, so a denied one is a real action refused,
//! not one that fails anyway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use tests::{ADMIN_USER, API_USER, NatsServer, SERVICE_USER, SYS_USER, wait_for};

const RUN: &str = "0b5f3c1e-8a2d-4f6b-9c3e-1a0000000001";

/// A client that records the server's permission violations.
struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    violations: Arc<Mutex<Vec<String>>>,
}

async fn connect(server: &NatsServer, user: &str) -> Client {
    let violations = Arc::new(Mutex::new(Vec::new()));
    let seen = violations.clone();
    let options = server.options_for(user).event_callback(move |event| {
        let seen = seen.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                seen.lock().unwrap().push(e.to_string());
            }
        }
    });
    let nats = server.connect_with(&server.url(), options).await.expect("connecting");
    // Denied JetStream requests get no answer: do not wait long for one.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(700))
        .build(nats.clone());
    Client { nats, js, violations }
}

/// The actions of the matrix. Each returns whether it worked.
#[derive(Clone, Copy, Debug)]
enum Action {
    PublishExecute,
    PublishCancel,
    PublishPoll,
    PublishStatus,
    RequestResults,
    StatusDirectGet,
    StatusOwnConsumer,
    StatusSubscribe,
    CreateStream,
    UpdateJobsStream,
    PurgeStatusStream,
    DeleteDlqStream,
    DeletePollConsumer,
    CreateJobsConsumer,
    JobsDirectGet,
    JobsLastOnSubject,
    PullExecuteConsumer,
    DlqRead,
    LeaseRead,
    SubscribeAllInboxes,
    SubscribeServiceInbox,
    SubscribeApiInbox,
    ServerReport,
    /// A durable consumer on SHELL_QUERY_STATUS with one of the API's
    /// names (`api-0` ... `api-7`), and a pull from it.
    StatusApiNamedConsumer,
    /// Deleting that consumer again.
    DeleteApiStatusConsumer,
    /// A durable consumer on SHELL_QUERY_STATUS with another name.
    StatusOtherNamedConsumer,
    /// Deleting a consumer of SHELL_QUERY_STATUS someone else made.
    DeleteOtherStatusConsumer,
    /// `$SRV.PING.shell-query`: discovering the results service.
    ServiceDiscovery,
}

/// The consumer on SHELL_QUERY_STATUS the seed makes (an operator's).
const OPERATOR_CONSUMER: &str = "ops-seed";

/// The subject a denial of the action names.
fn subject(action: Action) -> String {
    match action {
        // A fresh run id follows (the jobs stream holds one message per subject).
        Action::PublishExecute => "shell_query.execute.".into(),
        Action::PublishCancel => "shell_query.cancel.".into(),
        Action::PublishPoll => "shell_query.poll.".into(),
        Action::PublishStatus => "shell_query.status.".into(),
        Action::RequestResults => "shell_query.api.results".into(),
        Action::StatusDirectGet => format!("$JS.API.DIRECT.GET.SHELL_QUERY_STATUS.shell_query.status.{RUN}"),
        Action::StatusOwnConsumer => "$JS.API.CONSUMER.CREATE.SHELL_QUERY_STATUS".into(),
        Action::StatusSubscribe => "shell_query.status.*".into(),
        Action::CreateStream => "$JS.API.STREAM.CREATE.OTHER".into(),
        Action::UpdateJobsStream => "$JS.API.STREAM.UPDATE.SHELL_QUERY_JOBS".into(),
        Action::PurgeStatusStream => "$JS.API.STREAM.PURGE.SHELL_QUERY_STATUS".into(),
        Action::DeleteDlqStream => "$JS.API.STREAM.DELETE.SHELL_QUERY_DLQ".into(),
        Action::DeletePollConsumer => "$JS.API.CONSUMER.DELETE.SHELL_QUERY_JOBS.shell-query-poll".into(),
        Action::CreateJobsConsumer => "$JS.API.CONSUMER.CREATE.SHELL_QUERY_JOBS".into(),
        Action::JobsDirectGet => "$JS.API.DIRECT.GET.SHELL_QUERY_JOBS".into(),
        Action::JobsLastOnSubject => format!("$JS.API.DIRECT.GET.SHELL_QUERY_JOBS.shell_query.execute.{RUN}"),
        Action::PullExecuteConsumer => "$JS.API.CONSUMER.MSG.NEXT.SHELL_QUERY_JOBS.shell-query-execute".into(),
        Action::DlqRead => "$JS.API.STREAM.MSG.GET.SHELL_QUERY_DLQ".into(),
        Action::LeaseRead => "$JS.API.STREAM.INFO.KV_SHELL_QUERY_LEASES".into(),
        Action::SubscribeAllInboxes => "_INBOX.>".into(),
        Action::SubscribeServiceInbox => "_INBOX.shell_query_service.>".into(),
        Action::SubscribeApiInbox => "_INBOX.shell_query_api.>".into(),
        Action::ServerReport => "$SYS.REQ.SERVER.PING.JSZ".into(),
        Action::StatusApiNamedConsumer => "$JS.API.CONSUMER.CREATE.SHELL_QUERY_STATUS.api-0".into(),
        Action::DeleteApiStatusConsumer => "$JS.API.CONSUMER.DELETE.SHELL_QUERY_STATUS.api-0".into(),
        Action::StatusOtherNamedConsumer => "$JS.API.CONSUMER.CREATE.SHELL_QUERY_STATUS.ops-watch".into(),
        Action::DeleteOtherStatusConsumer => format!("$JS.API.CONSUMER.DELETE.SHELL_QUERY_STATUS.{OPERATOR_CONSUMER}"),
        Action::ServiceDiscovery => "$SRV.PING.shell-query".into(),
    }
}

/// Whether a core subscription receives a message the admin publishes
/// (published again every 100 ms for 2 s, so a subscription the server
/// registers a moment late still gets one).
async fn receives(client: &Client, admin: &Client, filter: &str, subject: String) -> bool {
    let Ok(mut sub) = client.nats.subscribe(filter.to_string()).await else {
        return false;
    };
    let _ = client.nats.flush().await;
    for _ in 0..20 {
        admin.nats.publish(subject.clone(), "probe".into()).await.unwrap();
        admin.nats.flush().await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            return true;
        }
    }
    false
}

/// Whether a direct get of the last message on `subject` works.
async fn last_on(js: &jetstream::Context, stream: &str, subject: String) -> bool {
    match js.get_stream_no_info(stream).await {
        Ok(s) => s.direct_get_last_for_subject(subject).await.is_ok(),
        Err(_) => false,
    }
}

/// Whether a consumer on SHELL_QUERY_STATUS (unnamed, or durable with
/// this name) can be made and a status event pulled from it.
async fn pulls_one_status_event(js: &jetstream::Context, durable_name: Option<String>) -> bool {
    let Ok(s) = js.get_stream_no_info("SHELL_QUERY_STATUS").await else {
        return false;
    };
    let Ok(consumer) = s
        .create_consumer(pull::Config {
            durable_name,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
    else {
        return false;
    };
    let Ok(mut batch) = consumer.fetch().max_messages(1).messages().await else {
        return false;
    };
    matches!(batch.next().await, Some(Ok(_)))
}

async fn attempt(client: &Client, admin: &Client, action: Action) -> bool {
    let js = &client.js;
    match action {
        Action::PublishExecute | Action::PublishCancel | Action::PublishPoll | Action::PublishStatus => {
            match js
                .publish(format!("{}{}", subject(action), uuid::Uuid::new_v4()), "{}".into())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
        Action::RequestResults => client
            .nats
            .request(subject(action), "{}".into())
            .await
            .is_ok_and(|r| r.payload.as_ref() == b"answer"),
        Action::StatusDirectGet => last_on(js, "SHELL_QUERY_STATUS", format!("shell_query.status.{RUN}")).await,
        Action::StatusOwnConsumer => pulls_one_status_event(js, None).await,
        Action::StatusSubscribe => {
            receives(
                client,
                admin,
                "shell_query.status.*",
                format!("shell_query.status.{RUN}"),
            )
            .await
        }
        Action::CreateStream => js
            .create_stream(stream::Config {
                name: "OTHER".into(),
                subjects: vec!["other.>".into()],
                ..Default::default()
            })
            .await
            .is_ok(),
        Action::UpdateJobsStream => {
            let Ok(s) = admin.js.get_stream("SHELL_QUERY_JOBS").await else {
                return false;
            };
            js.update_stream(s.cached_info().config.clone()).await.is_ok()
        }
        Action::PurgeStatusStream => match js.get_stream_no_info("SHELL_QUERY_STATUS").await {
            Ok(s) => s.purge().filter(format!("shell_query.status.{RUN}")).await.is_ok(),
            Err(_) => false,
        },
        Action::DeleteDlqStream => js.delete_stream("SHELL_QUERY_DLQ").await.is_ok(),
        Action::DeletePollConsumer => match js.get_stream_no_info("SHELL_QUERY_JOBS").await {
            Ok(s) => s.delete_consumer("shell-query-poll").await.is_ok(),
            Err(_) => false,
        },
        Action::CreateJobsConsumer => match js.get_stream_no_info("SHELL_QUERY_JOBS").await {
            Ok(s) => s
                .create_consumer(pull::Config {
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .is_ok(),
            Err(_) => false,
        },
        Action::JobsDirectGet => match js.get_stream_no_info("SHELL_QUERY_JOBS").await {
            Ok(s) => s.direct_get(1).await.is_ok(),
            Err(_) => false,
        },
        Action::JobsLastOnSubject => last_on(js, "SHELL_QUERY_JOBS", format!("shell_query.execute.{RUN}")).await,
        Action::PullExecuteConsumer => {
            let Ok(s) = js.get_stream_no_info("SHELL_QUERY_JOBS").await else {
                return false;
            };
            let Ok(consumer) = s.get_consumer::<pull::Config>("shell-query-execute").await else {
                // Reading the consumer's info is denied too; try the pull itself.
                let reply = client.nats.new_inbox();
                let Ok(mut sub) = client.nats.subscribe(reply.clone()).await else {
                    return false;
                };
                let _ = client
                    .nats
                    .publish_with_reply(subject(action), reply, r#"{"batch":1,"no_wait":true}"#.into())
                    .await;
                return tokio::time::timeout(Duration::from_secs(2), sub.next())
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.headers.is_none());
            };
            let Ok(mut batch) = consumer.fetch().max_messages(1).messages().await else {
                return false;
            };
            matches!(batch.next().await, Some(Ok(_)))
        }
        Action::DlqRead => match js.get_stream_no_info("SHELL_QUERY_DLQ").await {
            Ok(s) => s.get_raw_message(1).await.is_ok(),
            Err(_) => false,
        },
        Action::LeaseRead => match js.get_key_value("SHELL_QUERY_LEASES").await {
            Ok(kv) => kv.get("reconciler").await.is_ok_and(|v| v.is_some()),
            Err(_) => false,
        },
        Action::SubscribeAllInboxes => receives(client, admin, "_INBOX.>", "_INBOX.probe.1".into()).await,
        Action::SubscribeServiceInbox => {
            receives(
                client,
                admin,
                "_INBOX.shell_query_service.>",
                "_INBOX.shell_query_service.x".into(),
            )
            .await
        }
        Action::SubscribeApiInbox => {
            receives(
                client,
                admin,
                "_INBOX.shell_query_api.>",
                "_INBOX.shell_query_api.x".into(),
            )
            .await
        }
        Action::ServerReport => client
            .nats
            .request(subject(action), "{}".into())
            .await
            .is_ok_and(|r| !r.payload.is_empty()),
        Action::StatusApiNamedConsumer | Action::StatusOtherNamedConsumer => {
            let name = subject(action).rsplit('.').next().unwrap().to_string();
            pulls_one_status_event(js, Some(name)).await
        }
        Action::DeleteApiStatusConsumer | Action::DeleteOtherStatusConsumer => {
            let name = subject(action).rsplit('.').next().unwrap().to_string();
            match js.get_stream_no_info("SHELL_QUERY_STATUS").await {
                Ok(s) => s.delete_consumer(&name).await.is_ok(),
                Err(_) => false,
            }
        }
        Action::ServiceDiscovery => client
            .nats
            .request(subject(action), "".into())
            .await
            .is_ok_and(|r| r.payload.as_ref() == b"answer"),
    }
}

/// Whether the server reported a permission violation naming `subject`.
fn violated(client: &Client, subject: &str) -> bool {
    client
        .violations
        .lock()
        .unwrap()
        .iter()
        .any(|v| v.to_lowercase().contains("permissions violation") && v.contains(subject))
}

/// Sets up what the actions read: the streams, one message on each stream
/// an action reads, a lease, and a responder on the results subject.
async fn seed(server: &NatsServer, admin: &Client) {
    crate::jetstream::declare_defaults(&admin.js, "shell_query").await;
    for subject in [
        format!("shell_query.status.{RUN}"),
        format!("shell_query.execute.{RUN}"),
        format!("shell_query.dlq.execute.{RUN}"),
    ] {
        admin.js.publish(subject, "{}".into()).await.unwrap().await.unwrap();
    }
    let kv = admin.js.get_key_value("SHELL_QUERY_LEASES").await.unwrap();
    kv.put("reconciler", "0".into()).await.unwrap();
    admin
        .js
        .get_stream_no_info("SHELL_QUERY_STATUS")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(OPERATOR_CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let responder = server.admin().await;
    let requests = responder.subscribe("shell_query.api.>").await.unwrap();
    let discovery = responder.subscribe("$SRV.PING.shell-query").await.unwrap();
    responder.flush().await.unwrap();
    let mut requests = futures::stream::select(requests, discovery);
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, "answer".into()).await;
            }
        }
    });
}

/// `allowed` lists the actions the user may do; every other action of the
/// matrix must be refused by the server.
async fn check_user(server: &NatsServer, admin: &Client, user: &str, allowed: &[Action], denied: &[Action]) {
    let client = connect(server, user).await;
    for &action in allowed {
        assert!(
            attempt(&client, admin, action).await,
            "{user} may {action:?}; the server said: {:?}",
            client.violations.lock().unwrap()
        );
    }
    for &action in denied {
        let worked = attempt(&client, admin, action).await;
        assert!(!worked, "{user} may not {action:?}, yet it worked");
        let subject = subject(action);
        wait_for(
            &format!("the server to refuse {action:?} to {user}"),
            Duration::from_secs(5),
            || async { violated(&client, &subject) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_may_do_only_its_own_part() {
    use Action::*;
    let server = NatsServer::start().await;
    assert!(
        async_nats::connect(server.url()).await.is_err(),
        "no anonymous connections"
    );
    let admin = connect(&server, ADMIN_USER).await;
    seed(&server, &admin).await;

    // The admin can do the actions (so a denial below is a real refusal),
    // except the system account's report, which belongs to the system user,
    // and a new consumer on the work-queue jobs stream, which overlaps the
    // service's own and is refused to anyone.
    let every = [
        PublishExecute,
        PublishCancel,
        PublishPoll,
        PublishStatus,
        RequestResults,
        StatusDirectGet,
        StatusOwnConsumer,
        StatusSubscribe,
        JobsDirectGet,
        JobsLastOnSubject,
        DlqRead,
        LeaseRead,
        PurgeStatusStream,
        UpdateJobsStream,
        CreateStream,
        SubscribeAllInboxes,
        StatusApiNamedConsumer,
        DeleteApiStatusConsumer,
        StatusOtherNamedConsumer,
        ServiceDiscovery,
    ];
    for action in every {
        assert!(attempt(&admin, &admin, action).await, "the admin may {action:?}");
    }
    // Seed again what the admin's actions used up.
    admin
        .js
        .publish(format!("shell_query.status.{RUN}"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    check_user(
        &server,
        &admin,
        API_USER,
        &[
            PublishExecute,
            PublishCancel,
            RequestResults,
            StatusDirectGet,
            StatusSubscribe,
            SubscribeApiInbox,
            StatusApiNamedConsumer,
            DeleteApiStatusConsumer,
            ServiceDiscovery,
        ],
        &[
            StatusOwnConsumer,
            StatusOtherNamedConsumer,
            DeleteOtherStatusConsumer,
            PublishPoll,
            PublishStatus,
            CreateStream,
            UpdateJobsStream,
            PurgeStatusStream,
            DeleteDlqStream,
            DeletePollConsumer,
            CreateJobsConsumer,
            JobsDirectGet,
            JobsLastOnSubject,
            PullExecuteConsumer,
            DlqRead,
            LeaseRead,
            SubscribeAllInboxes,
            SubscribeServiceInbox,
            ServerReport,
        ],
    )
    .await;
    check_user(
        &server,
        &admin,
        SERVICE_USER,
        &[
            PublishExecute,
            PublishPoll,
            PublishStatus,
            StatusDirectGet,
            JobsDirectGet,
            LeaseRead,
            SubscribeServiceInbox,
        ],
        &[
            PublishCancel,
            CreateStream,
            PurgeStatusStream,
            DeleteDlqStream,
            DeletePollConsumer,
            DlqRead,
            SubscribeAllInboxes,
            SubscribeApiInbox,
            ServerReport,
        ],
    )
    .await;
    // The system account sees the servers (`nats server report jetstream`)
    // and nothing of the application's subjects.
    check_user(&server, &admin, SYS_USER, &[ServerReport], &[]).await;
    let sys = connect(&server, SYS_USER).await;
    assert!(
        !attempt(&sys, &admin, StatusSubscribe).await,
        "the system account is another account: it sees no status events"
    );
}

/// The API holds at most its eight named consumers on SHELL_QUERY_STATUS
/// (a ninth name, or an unnamed one, is refused), and the stream itself
/// holds at most `STATUS_STREAM_MAX_CONSUMERS` (128 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_a_bounded_number_of_status_consumers() {
    let server = NatsServer::start().await;
    let admin = connect(&server, ADMIN_USER).await;
    seed(&server, &admin).await;
    let api = connect(&server, API_USER).await;
    let stream = api.js.get_stream_no_info("SHELL_QUERY_STATUS").await.unwrap();
    let create = |name: String| {
        let stream = stream.clone();
        async move {
            stream
                .create_consumer(pull::Config {
                    durable_name: Some(name),
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
        }
    };
    for n in 0..8 {
        create(format!("api-{n}")).await.expect("one of the API's names");
    }
    assert!(create("api-8".into()).await.is_err(), "a ninth name is refused");
    wait_for("the server to refuse api-8", Duration::from_secs(5), || async {
        violated(&api, "$JS.API.CONSUMER.CREATE.SHELL_QUERY_STATUS.api-8")
    })
    .await;
    let mut status = admin.js.get_stream("SHELL_QUERY_STATUS").await.unwrap();
    assert_eq!(status.info().await.unwrap().config.max_consumers, 128);
    // The admin fills the rest (the seed's consumer and the API's eight are
    // there already): the next is refused by the stream itself.
    let admin_stream = admin.js.get_stream_no_info("SHELL_QUERY_STATUS").await.unwrap();
    let mut made = 9;
    let refused = loop {
        let created = admin_stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("ops-{made}")),
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => made += 1,
            Err(e) => break e.to_string(),
        }
        assert!(made <= 128, "more than 128 consumers");
    };
    assert_eq!(made, 128, "{refused}");
    assert!(refused.contains("maximum consumers limit reached"), "{refused}");
}
