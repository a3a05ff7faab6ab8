//! The service's connections as production has them: NATS over TLS with a
//! client certificate, PostgreSQL with `sslmode=verify-full`, MCE only over
//! https unless allowed; and durable consumers that disappear or stop
//! delivering are noticed.

use std::time::Duration;

use async_nats::jetstream;
use mce_sim::{Scenario, SimConfig};
use tests::{ADMIN_USER, NatsServer, ServerOptions, make_certs, run_command, wait_for};

use crate::support::System;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_against_nats_with_tls_and_client_certificates() {
    let server = NatsServer::start_with(ServerOptions {
        tls: Some(make_certs()),
        ..ServerOptions::default()
    })
    .await;
    // Without the CA (and a client certificate) nobody gets in.
    let plain = server
        .options_for(ADMIN_USER)
        .connect(format!("127.0.0.1:{}", server.port))
        .await;
    assert!(plain.is_err(), "a client without TLS is refused");

    let system = System::start_on(vec![server], SimConfig::default(), &[]).await;
    assert!(system.nats_urls().starts_with("tls://"));
    let id = system.submit("SELECT Email FROM [Subscribers]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
}

/// The machine's PostgreSQL serves TLS with Debian's snakeoil certificate,
/// issued to `localhost`: with it as the root, `verify-full` holds.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn verify_full(url: &str, root: &str) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={root}",
        url.replacen("127.0.0.1", "localhost", 1)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_can_be_reached_with_sslmode_verify_full() {
    assert!(
        std::path::Path::new(SNAKEOIL).exists(),
        "this test needs the machine's PostgreSQL with ssl = on and {SNAKEOIL}"
    );
    let mut system = System::start().await;
    let verified = verify_full(&system.database_url, SNAKEOIL);
    system.kill_worker();
    system.extra.push(("DATABASE_URL".into(), verified));
    system.start_worker().await;
    let id = system.submit("SELECT Email FROM [Subscribers]", None).await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "ready");

    // A root that did not sign the server's certificate is refused.
    let stranger = make_certs();
    let mut env = system.env();
    env.push((
        "DATABASE_URL".into(),
        verify_full(&system.database_url, &stranger.ca.display().to_string()),
    ));
    let (code, _, err) = run_command(&["migrate"], &env, None);
    assert_ne!(code, 0, "an unverified server is refused");
    assert!(!err.is_empty());
}

#[tokio::test]
async fn mce_base_urls_must_be_https_unless_allowed() {
    let system_env = |allow: Option<&str>| {
        let mut env = vec![
            (
                "DATABASE_URL".to_string(),
                "postgres://postgres@127.0.0.1:1/none".to_string(),
            ),
            ("ENCRYPTION_KEY".into(), tests::ENCRYPTION_KEY.into()),
            ("MCE_CLIENT_ID".into(), "id".into()),
            ("MCE_CLIENT_SECRET".into(), "secret".into()),
            ("MCE_AUTH_BASE_URL".into(), "http://mce.example".into()),
        ];
        if let Some(v) = allow {
            env.push(("MCE_ALLOW_HTTP".into(), v.into()));
        }
        env
    };
    let (code, _, err) = run_command(&["run"], &system_env(None), None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MCE_AUTH_BASE_URL") && err.contains("https://"), "{err}");
    // Allowed: the settings pass and the run gets as far as the database.
    let (code, _, err) = run_command(&["run"], &system_env(Some("true")), None);
    assert_ne!(code, 2, "{err}");
    assert!(!err.contains("MCE_AUTH_BASE_URL"), "{err}");
}

async fn consumer_exists(js: &jetstream::Context, name: &str) -> bool {
    match js.get_stream("SHELL_QUERY_JOBS").await {
        Ok(stream) => stream.consumer_info(name).await.is_ok(),
        Err(_) => false,
    }
}

async fn redeclared(system: &System, consumer: &str) -> bool {
    let metrics = system
        .worker
        .as_ref()
        .expect("a worker")
        .http_get("/metrics")
        .await
        .unwrap_or_default();
    metrics.lines().any(|l| {
        l.starts_with(&format!(
            "shell_query_consumer_redeclared_total{{consumer=\"{consumer}\"}}"
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_poll_consumer_is_declared_again_and_its_runs_finish() {
    let system = System::start_with(&[("CONSUMER_CHECK_INTERVAL_MS", "500")]).await;
    system
        .sim
        .script("Slow", Scenario::completes_after(Duration::from_secs(4), 3));
    let id = system.submit("SELECT Slow FROM [Subscribers]", None).await;
    wait_for("the run to poll", MINUTE, || async {
        system.run(id).await.is_some_and(|r| r.task_id.is_some())
    })
    .await;
    let stream = system.js.get_stream("SHELL_QUERY_JOBS").await.unwrap();
    stream.delete_consumer("shell-query-poll").await.unwrap();

    wait_for("the poll consumer to be declared again", MINUTE, || async {
        consumer_exists(&system.js, "shell-query-poll").await
    })
    .await;
    assert_eq!(
        system.wait_terminal(id, MINUTE).await.status,
        "ready",
        "{}",
        system.log()
    );
    assert!(redeclared(&system, "poll").await);
    assert!(system.worker.as_ref().unwrap().ready().await);
    // A deleted stream is declared again too, with its consumers.
    system.js.delete_stream("SHELL_QUERY_JOBS").await.unwrap();
    wait_for("the jobs stream and its consumers to be back", MINUTE, || async {
        consumer_exists(&system.js, "shell-query-execute").await
            && consumer_exists(&system.js, "shell-query-poll").await
    })
    .await;
    let again = system.submit("SELECT Email FROM [Subscribers]", None).await;
    assert_eq!(
        system.wait_terminal(again, MINUTE).await.status,
        "ready",
        "{}",
        system.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_delivering_fails_readiness_until_it_delivers_again() {
    let system = System::start_with(&[("CONSUMER_CHECK_INTERVAL_MS", "300")]).await;
    let worker = system.worker.as_ref().expect("a worker");
    assert!(worker.ready().await);
    let stream = system.js.get_stream("SHELL_QUERY_JOBS").await.unwrap();
    // An operator pauses the poll consumer: it delivers nothing.
    let until = async_nats::datetime::parse_rfc3339(&(chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339())
        .expect("a timestamp");
    stream.pause_consumer("shell-query-poll", until).await.unwrap();
    wait_for("/readyz to fail", Duration::from_secs(10), || async {
        !worker.ready().await
    })
    .await;
    let why = worker.http_get("/readyz").await.unwrap_or_default();
    assert!(why.contains("shell-query-poll"), "{why}");
    assert!(
        tests::http_ok(&format!("http://127.0.0.1:{}/healthz", worker.http_port)).await,
        "alive: every loop still runs"
    );
    stream.resume_consumer("shell-query-poll").await.unwrap();
    wait_for("/readyz to recover", Duration::from_secs(10), || async {
        worker.ready().await
    })
    .await;
}

/// nats.conf cannot check where a push consumer delivers: the service
/// deletes, at its consumer checks, a push consumer of the status stream
/// that delivers outside the API's inbox (here into the jobs stream's poll
/// subjects), and leaves one delivering to the inbox alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_push_consumer_delivering_outside_the_api_inbox_is_deleted() {
    use async_nats::jetstream::consumer::push;
    let mut system = System::start_with(&[("CONSUMER_CHECK_INTERVAL_MS", "500")]).await;
    let api = system.nats.connect_as(tests::API_USER).await.unwrap();
    let js = jetstream::new(api);
    let stream = js.get_stream_no_info("SHELL_QUERY_STATUS").await.unwrap();
    for (name, deliver) in [
        ("api-1", format!("shell_query.poll.{}", uuid::Uuid::new_v4())),
        ("api-2", "_INBOX.shell_query_api.events".to_string()),
    ] {
        stream
            .create_consumer(push::Config {
                durable_name: Some(name.into()),
                deliver_subject: deliver,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("the API creates {name}: {e}"));
    }
    wait_for("the stray push consumer deleted", Duration::from_secs(30), || async {
        stream.consumer_info("api-1").await.is_err()
    })
    .await;
    assert!(stream.consumer_info("api-2").await.is_ok(), "the inbox one stays");
    let removed = system
        .worker()
        .metric("shell_query_stray_consumers_removed_total ")
        .await;
    assert_eq!(removed, Some(1.0));
}
