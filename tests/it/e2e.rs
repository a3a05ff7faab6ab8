//! End to end through the real binary: an execute message in, a terminal row
//! and status events out, with MCE played by the simulator.

use std::time::Duration;

use mce_sim::Scenario;

use crate::support::{System, statuses};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_runs_from_execute_to_ready() {
    let system = System::start().await;
    system.sim.script(
        "FROM [Subscribers_DE]",
        Scenario::completes_after(Duration::from_secs(5), 42),
    );
    let meta =
        serde_json::json!({ "Subscribers_DE": [ { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 254 } ] });
    let run_id = system
        .submit("SELECT Email, FirstName FROM [Subscribers_DE]", Some(meta))
        .await;

    let run = system.wait_terminal(run_id, Duration::from_secs(60)).await;
    assert_eq!(run.status, "ready", "worker log:\n{}", system.log());
    assert_eq!(run.row_count, Some(42));
    let task_id = run.task_id.clone().expect("task_id set");
    assert!(run.query_definition_id.is_some() && run.poll_started_at.is_some() && run.started_at.is_some());
    assert_eq!(
        run.target_de_customer_key.as_deref(),
        Some(shell_query_core::naming::temp_de_key(run_id).as_str())
    );
    assert_eq!(
        run.query_customer_key.as_deref(),
        Some(shell_query_core::naming::query_key(run_id).as_str())
    );
    assert!(run.completed_at.is_some());

    // Exactly one Perform, and the run's QueryDefinition is gone again.
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 1);
    system.wait_no_query_definitions().await;
    assert_eq!(system.sim.count("soap:Delete:QueryDefinition"), 1);

    // The poll message came back with growing delays until completion.
    let polls: Vec<_> = system
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action == "soap:Retrieve:AsyncActivityStatus" && c.detail == task_id)
        .map(|c| c.at)
        .collect();
    assert!(polls.len() >= 4, "expected several status checks, got {}", polls.len());
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2).take(2) {
        assert!(pair[1] > pair[0], "delays must grow before the cap: {gaps:?}");
    }

    system.wait_event(run_id, "ready").await;
    let events = system.events(run_id).await;
    assert_eq!(
        statuses(&events),
        [
            "running",
            "validating_query",
            "creating_data_extension",
            "executing_query",
            "fetching_results",
            "ready"
        ]
    );
    assert_eq!(events.last().and_then(|e| e.row_count), Some(42));
    assert_eq!(events[2].message, "Creating temp Data Extension...");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_mce_fails_ends_failed_with_mce_text() {
    let system = System::start().await;
    let mce_text = "Invalid column name 'Nope'.";
    system
        .sim
        .script("Nope", Scenario::fails_after(Duration::from_secs(1), mce_text));
    let run_id = system.submit("SELECT Nope FROM [Subscribers_DE]", None).await;

    let run = system.wait_terminal(run_id, Duration::from_secs(60)).await;
    assert_eq!(run.status, "failed", "worker log:\n{}", system.log());
    let stored = system
        .cipher()
        .decrypt(run.error_message.as_deref().expect("an error message"))
        .unwrap();
    assert_eq!(stored, mce_text);
    assert!(run.row_count.is_none());
    system.wait_no_query_definitions().await;
    assert_eq!(system.sim.count("rest:rowset"), 0, "a failed query is never read");

    system.wait_event(run_id, "failed").await;
    let events = system.events(run_id).await;
    let last = events.last().expect("events");
    assert_eq!(last.error_message.as_deref(), Some(mce_text));
    assert_eq!(last.message, format!("Query failed: {mce_text}"));
    assert_eq!(statuses(&events).first(), Some(&"running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_mce_refuses_at_validation_fails_without_starting() {
    let system = System::start().await;
    system.sim.script(
        "Broken",
        Scenario {
            invalid: Some(vec!["Invalid syntax near SELEC".into(), "Unknown table Broken".into()]),
            ..Scenario::completes_after(Duration::from_secs(1), 0)
        },
    );
    let run_id = system.submit("SELEC x FROM Broken", None).await;
    let run = system.wait_terminal(run_id, Duration::from_secs(60)).await;
    assert_eq!(run.status, "failed");
    let stored = system.cipher().decrypt(run.error_message.as_deref().unwrap()).unwrap();
    assert_eq!(stored, "Invalid syntax near SELEC\nUnknown table Broken");
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 0);
    assert!(run.task_id.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_execute_message_goes_to_the_dlq_and_the_consumer_goes_on() {
    use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
    use futures::StreamExt;

    let system = System::start().await;
    let bad_id = uuid::Uuid::new_v4();
    system
        .js
        .publish(format!("shell_query.execute.{bad_id}"), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let good = system.submit("SELECT Email FROM [Subscribers_DE]", None).await;
    assert_eq!(
        system.wait_terminal(good, Duration::from_secs(60)).await.status,
        "ready"
    );

    let dlq = system.js.get_stream("SHELL_QUERY_DLQ").await.unwrap();
    let consumer: PullConsumer = dlq
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(10).messages().await.unwrap();
    let msg = messages.next().await.expect("a DLQ message").unwrap();
    assert_eq!(msg.subject.as_str(), format!("shell_query.dlq.execute.{bad_id}"));
    let headers = msg.headers.clone().expect("DLQ headers");
    assert_eq!(
        headers
            .get("Shell-Query-Original-Subject")
            .map(|v| v.as_str().to_string()),
        Some(format!("shell_query.execute.{bad_id}"))
    );
    let reason = headers.get("Shell-Query-Error").unwrap().as_str().to_string();
    assert!(reason.starts_with("invalid execute message"), "{reason}");
    // Not JSON, so it may hold SQL: the copy is the body encrypted.
    assert_eq!(
        headers.get("Shell-Query-Redacted").map(|v| v.as_str().to_string()),
        Some("body encrypted".to_string())
    );
    let copy = system
        .cipher()
        .decrypt(std::str::from_utf8(&msg.payload).unwrap())
        .unwrap();
    assert_eq!(copy, "{not json");
    // Its run id can be read from the subject: the run is failed with the reason.
    let row = system.run(bad_id).await.expect("a row for the malformed run");
    assert_eq!(row.status, "failed");
    let stored = system.cipher().decrypt(row.error_message.as_deref().unwrap()).unwrap();
    assert!(
        stored.starts_with("The run request is invalid: invalid execute message"),
        "{stored}"
    );
    system.wait_event(bad_id, "failed").await;
}
