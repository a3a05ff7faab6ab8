//! Around a run's life: cancel, the reconciler and its lease, the sweeper,
//! event history and the results and status service.

use std::time::Duration;

use mce_sim::{Fault, Scenario, SimConfig};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::support::{PREFIX, System, statuses};

const MINUTE: Duration = Duration::from_secs(60);

async fn wait_status(system: &System, id: Uuid, status: &str) {
    tests::wait_for(&format!("run {id} to be {status}"), MINUTE, || async {
        system.run(id).await.is_some_and(|r| r.status == status)
    })
    .await;
}

/// Submits a run whose QueryDefinition is created but answered only 2 s
/// later (time to cancel while execute works); returns once MCE has it.
async fn submit_held_at_query_definition(system: &System) -> Uuid {
    system.sim.inject(Fault::slow_answer(
        "soap:Create:QueryDefinition",
        Duration::from_secs(2),
        1,
    ));
    let id = system.submit("SELECT Email FROM X", None).await;
    tests::wait_for("the QueryDefinition create", MINUTE, || async {
        system.sim.count("soap:Create:QueryDefinition") == 1
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_executing_stops_before_perform() {
    let system = System::start().await;
    let id = submit_held_at_query_definition(&system).await;
    system.cancel(id).await;
    wait_status(&system, id, "canceled").await;
    tests::wait_for("the execute message to finish", MINUTE, || async {
        !system.pending_on(format!("{PREFIX}.execute.{id}")).await
    })
    .await;
    tests::wait_for("the QueryDefinition to be deleted", MINUTE, || async {
        system.sim.query_definitions().is_empty()
    })
    .await;
    assert_eq!(
        system.sim.count("soap:Perform:QueryDefinition"),
        0,
        "no Perform after a cancel"
    );
    assert_eq!(system.sim.count("soap:Retrieve:AsyncActivityStatus"), 0);
    let events = system.events(id).await;
    assert_eq!(statuses(&events).iter().filter(|s| **s == "canceled").count(), 1);
    assert!(!statuses(&events).contains(&"executing_query"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_polling_takes_effect_at_once_and_stops_status_checks() {
    let system = System::start().await;
    system
        .sim
        .script("Long", Scenario::completes_after(Duration::from_secs(600), 1));
    let id = system.submit("SELECT Long FROM X", None).await;
    tests::wait_for("polling", MINUTE, || async {
        system.sim.count("soap:Retrieve:AsyncActivityStatus") >= 2
    })
    .await;
    let sent = std::time::Instant::now();
    system.cancel(id).await;
    wait_status(&system, id, "canceled").await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "canceled after {:?}",
        sent.elapsed()
    );
    let checks = system.sim.count("soap:Retrieve:AsyncActivityStatus");
    tests::wait_for("the poll message to go", MINUTE, || async {
        !system.poll_pending(id).await
    })
    .await;
    assert!(
        system.sim.count("soap:Retrieve:AsyncActivityStatus") <= checks + 1,
        "at most the tick already in flight"
    );
    system.wait_no_query_definitions().await;
    system.wait_event(id, "canceled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_ready_changes_nothing() {
    let system = System::start().await;
    let id = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "ready");
    system.cancel(id).await;
    tests::wait_for("the cancel message to be handled", MINUTE, || async {
        !system.pending_on(format!("{PREFIX}.cancel.{id}")).await
    })
    .await;
    let run = system.run(id).await.unwrap();
    assert_eq!(run.status, "ready");
    assert!(!statuses(&system.events(id).await).contains(&"canceled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_poll_message_is_published_again_by_the_reconciler() {
    let system = System::start_with(&[("RECONCILER_INTERVAL_MS", "1000"), ("RECONCILER_GRACE_MS", "0")]).await;
    system
        .sim
        .script("Lost", Scenario::completes_after(Duration::from_secs(4), 6));
    let id = system.submit("SELECT Lost FROM X", None).await;
    tests::wait_for("the poll message", MINUTE, || async { system.poll_pending(id).await }).await;
    let stream = system.js.get_stream("SHELL_QUERY_JOBS").await.unwrap();
    stream.purge().filter(format!("{PREFIX}.poll.{id}")).await.unwrap();
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(6));
    assert!(
        system.log().contains("poll message was missing"),
        "the reconciler did it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_without_its_execute_message_is_submitted_again() {
    let system = System::start_with(&[("RECONCILER_INTERVAL_MS", "1000"), ("RECONCILER_GRACE_MS", "0")]).await;
    // The API inserted the row but its publish was lost.
    let id = system.insert_queued_run("SELECT Email FROM X", &[]).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
}

#[tokio::test]
async fn two_replicas_never_hold_the_lease_in_the_same_interval() {
    let nats = tests::NatsServer::start().await;
    let js = async_nats::jetstream::new(nats.admin().await);
    crate::jetstream::declare_defaults(&js, "sq").await;
    let store = service::adapters::lease::bucket(&js).await.unwrap();
    let now = chrono::Utc::now();
    let hold = Duration::from_secs(2);
    let attempts = (0..6).map(|_| service::adapters::lease::try_take(&store, "reconciler", hold, now));
    let winners = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|w| *w)
        .count();
    assert_eq!(winners, 1, "exactly one of six concurrent replicas takes the lease");
    assert!(!service::adapters::lease::try_take(&store, "reconciler", hold, now + chrono::Duration::seconds(1)).await);
    assert!(
        service::adapters::lease::try_take(&store, "sweeper", hold, now).await,
        "leases are independent"
    );
    let later = now + chrono::Duration::seconds(3);
    let attempts = (0..6).map(|_| service::adapters::lease::try_take(&store, "reconciler", hold, later));
    let winners = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|w| *w)
        .count();
    assert_eq!(winners, 1, "after the interval, again exactly one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_deletes_old_leaked_query_definitions_across_pages() {
    let config = SimConfig {
        retrieve_page_size: 2,
        ..SimConfig::default()
    };
    let system = System::start_with_sim(
        config,
        &[("SWEEPER_INTERVAL_MS", "1000"), ("SWEEPER_MIN_AGE_MS", "3600000")],
    )
    .await;
    // A first run makes the results folder.
    let first = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(first, MINUTE).await.status, "ready");
    let folder = system.sim.folders_named("QueryPlusPlus Results")[0];
    let two_days = Duration::from_secs(2 * 24 * 3600);
    let leaked: Vec<String> = (0..5)
        .map(|i| {
            system
                .sim
                .add_query_definition(&format!("QPP_Q_leaked{i}"), folder, two_days)
        })
        .collect();
    let foreign = system.sim.add_query_definition("Someone Elses Query", folder, two_days);
    let young = system
        .sim
        .add_query_definition("QPP_Q_young", folder, Duration::from_secs(60));
    let live = system.sim.add_query_definition("QPP_Q_live", folder, two_days);
    let sql = format!(
        "INSERT INTO shell_query_runs (id, tenant_id, mid, sql_text_hash, status, task_id, query_definition_id) VALUES ('{}', '{}', '{}', 'h', 'running', '1', '{live}')",
        Uuid::new_v4(),
        system.tenant_id,
        system.mid
    );
    system
        .db
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap();

    // A run whose start made its QueryDefinition but could not record it
    // yet (the database was away): the key alone marks it as the run's.
    let starting = Uuid::new_v4();
    let unrecorded = system
        .sim
        .add_query_definition(&shell_query_core::naming::query_key(starting), folder, two_days);
    let sql = format!(
        "INSERT INTO shell_query_runs (id, tenant_id, mid, sql_text_hash, status) VALUES ('{starting}', '{}', '{}', 'h', 'running')",
        system.tenant_id, system.mid
    );
    system
        .db
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap();

    tests::wait_for("the leaked QueryDefinitions to go", MINUTE, || async {
        leaked.iter().all(|id| !system.sim.has_query_definition(id))
    })
    .await;
    for (what, id) in [
        ("another's", &foreign),
        ("a young", &young),
        ("a live run's", &live),
        ("a starting run's", &unrecorded),
    ] {
        assert!(system.sim.has_query_definition(id), "{what} QueryDefinition was kept");
    }
    assert!(
        system.sim.calls().iter().any(|c| c.action == "soap:Retrieve:Continue"),
        "more than one page was read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_page_through_all_rows_in_de_column_order() {
    let system = System::start().await;
    system.sim.script(
        "Big",
        Scenario {
            lowercase_fields: true,
            ..Scenario::completes_after(Duration::from_secs(1), 3000)
        },
    );
    let meta = serde_json::json!({ "Big": [
        { "Name": "Email", "FieldType": "EmailAddress" }, { "Name": "Age", "FieldType": "Number" } ] });
    let id = system.submit("SELECT Email, Age FROM Big", Some(meta)).await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.row_count, Some(3000));
    let ask = |page: i64, size: i64| serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "page": page, "pageSize": size });
    let mut all = Vec::new();
    for page in 1..=3 {
        let reply = system
            .request("results", ask(page, 1000))
            .await
            .expect("a results page");
        assert_eq!(reply["columns"], serde_json::json!(["Email", "Age"]));
        assert_eq!(reply["totalRows"], 3000);
        assert_eq!(reply["status"], "ready");
        all.extend(reply["rows"].as_array().unwrap().clone());
    }
    assert_eq!(all.len(), 3000, "no 2,500-row cap");
    // On the wire each row's keys come in the columns' order (Email before
    // Age), not sorted: read the raw reply, not a `Value` (which sorts).
    let api = system.nats.connect_as(tests::API_USER).await.unwrap();
    let raw = api
        .request(format!("{PREFIX}.api.results"), ask(1, 2).to_string().into())
        .await
        .unwrap();
    let page: shell_query_core::api::ResultsReply = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(page.rows.len(), 2);
    for row in &page.rows {
        assert_eq!(row.keys().collect::<Vec<_>>(), ["Email", "Age"]);
    }
    let text = String::from_utf8_lossy(&raw.payload);
    assert!(text.contains(r#"{"Email":"user1@example.com","Age":"1"}"#), "{text}");
    assert_eq!(all[0], serde_json::json!({ "Email": "user1@example.com", "Age": "1" }));
    assert_eq!(all[2999]["Age"], "3000", "in order");
    assert!(all.iter().all(|r| r.get("_CustomObjectKey").is_none()));

    let (code, text) = system.request("results", ask(0, 10)).await.unwrap_err();
    assert_eq!(code, "400", "{text}");
    // A page past 32 bits is refused, not cut to another page.
    for page in [1_000_000_000_000_000_000, 1 << 32] {
        let (code, text) = system.request("results", ask(page, 10)).await.unwrap_err();
        assert_eq!(code, "400", "{text}");
        assert!(text.contains(&page.to_string()), "{text}");
    }
    let other_user = serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "userId": Uuid::new_v4() });
    let missing =
        serde_json::json!({ "runId": Uuid::new_v4(), "tenantId": system.tenant_id, "userId": system.user_id });
    assert_eq!(
        system.request("results", other_user.clone()).await.unwrap_err(),
        system.request("results", missing.clone()).await.unwrap_err()
    );
    assert_eq!(system.request("results", missing).await.unwrap_err().0, "404");
    assert_eq!(system.request("status", other_user).await.unwrap_err().0, "404");

    let status = system
        .request(
            "status",
            serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "userId": system.user_id }),
        )
        .await
        .unwrap();
    assert_eq!(
        (status["status"].as_str(), status["rowCount"].as_i64()),
        (Some("ready"), Some(3000))
    );
    assert!(status["completedAt"].is_string());

    // The whole history is there for a late reader, and agrees with the row.
    let events = system.events(id).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_runs_not_ready_or_failed_are_clear_errors() {
    let system = System::start().await;
    system
        .sim
        .script("Slow", Scenario::completes_after(Duration::from_secs(600), 1));
    system.sim.script(
        "Bad",
        Scenario::fails_after(Duration::from_millis(500), "Invalid column name 'x'."),
    );
    let slow = system.submit("SELECT Slow FROM X", None).await;
    let bad = system.submit("SELECT Bad FROM X", None).await;
    assert_eq!(system.wait_terminal(bad, MINUTE).await.status, "failed");
    let ask = |id: Uuid| serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "userId": system.user_id });
    let (code, text) = system.request("results", ask(bad)).await.unwrap_err();
    assert_eq!(
        (code.as_str(), text.as_str()),
        ("422", "The run failed: Invalid column name 'x'.")
    );
    wait_status(&system, slow, "running").await;
    let (code, text) = system.request("results", ask(slow)).await.unwrap_err();
    assert_eq!(code, "409");
    assert!(text.contains("not ready"), "{text}");
    let status = system.request("status", ask(bad)).await.unwrap();
    assert_eq!(status["errorMessage"], "Invalid column name 'x'.");
}

/// The times of the log lines that mark a pass of a lease-guarded job.
fn passes(log: &str, marker: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        })
        .map(|t| t.with_timezone(&chrono::Utc))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_take_turns_at_reconciling_and_sweeping() {
    let system = System::start_with(&[("RECONCILER_INTERVAL_MS", "1000"), ("SWEEPER_INTERVAL_MS", "1000")]).await;
    let other = system.extra_worker().await;
    tests::wait_for("several passes", MINUTE, || async {
        let all = format!("{}{}", system.log(), other.log());
        passes(&all, "reconciler pass").len() >= 6 && passes(&all, "sweeper pass").len() >= 6
    })
    .await;
    for marker in ["reconciler pass", "sweeper pass"] {
        let (mine, theirs) = (passes(&system.log(), marker), passes(&other.log(), marker));
        let mut all: Vec<_> = mine.iter().chain(theirs.iter()).copied().collect();
        all.sort();
        for pair in all.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap > chrono::Duration::milliseconds(500),
                "{marker}: two passes {gap} apart"
            );
        }
    }
}

/// A worker killed between a run's ending and its terminal event leaves the
/// row terminal with the event owed; the reconciler publishes it from the
/// row, once, and records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_event_lost_after_the_ending_is_published_by_the_reconciler() {
    let system = System::start_with(&[("RECONCILER_INTERVAL_MS", "1000"), ("RECONCILER_GRACE_MS", "0")]).await;
    // A run that ended normally confirms its event.
    system
        .sim
        .script("Owed", Scenario::completes_after(Duration::from_secs(1), 3));
    let normal = system.submit("SELECT Owed FROM X", None).await;
    let run = system.wait_terminal(normal, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    tests::wait_for("the normal run's event to be confirmed", MINUTE, || async {
        system.run(normal).await.is_some_and(|r| r.terminal_event_at.is_some())
    })
    .await;

    // Rows as a crash after the compare-and-set leaves them: terminal, no event.
    let (ready, failed) = (Uuid::new_v4(), Uuid::new_v4());
    let reason = system.cipher().encrypt("MCE said no");
    for (id, status, extra_cols, extra_vals) in [
        (ready, "ready", ", row_count", ", 7".to_string()),
        (failed, "failed", ", error_message", format!(", '{reason}'")),
    ] {
        let sql = format!(
            "INSERT INTO shell_query_runs (id, tenant_id, user_id, mid, sql_text_hash, status, created_at, completed_at{extra_cols}) VALUES ('{id}', '{}', '{}', '{}', 'h', '{status}', now(), now(){extra_vals})",
            system.tenant_id, system.user_id, system.mid
        );
        system
            .db
            .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap();
    }
    system.wait_event(ready, "ready").await;
    system.wait_event(failed, "failed").await;
    tests::wait_for("both events to be confirmed", MINUTE, || async {
        system.run(ready).await.is_some_and(|r| r.terminal_event_at.is_some())
            && system.run(failed).await.is_some_and(|r| r.terminal_event_at.is_some())
    })
    .await;
    let ready_events = system.events(ready).await;
    assert_eq!(statuses(&ready_events), vec!["ready"], "exactly one event");
    assert_eq!(ready_events[0].row_count, Some(7));
    let failed_events = system.events(failed).await;
    assert_eq!(statuses(&failed_events), vec!["failed"]);
    assert_eq!(failed_events[0].error_message.as_deref(), Some("MCE said no"));
    let owed = |id: Uuid| {
        system
            .log()
            .lines()
            .any(|l| l.contains("owed terminal event") && l.contains(&id.to_string()))
    };
    assert!(owed(ready) && owed(failed), "the reconciler published them");
    assert!(!owed(normal), "a confirmed event is never published again");
    assert_eq!(
        statuses(&system.events(normal).await)
            .iter()
            .filter(|s| **s == "ready")
            .count(),
        1
    );
}

/// The API's own cancel statement (it also sets `completed_at`).
fn api_cancel(id: Uuid) -> String {
    format!(
        "UPDATE shell_query_runs SET status = 'canceled', completed_at = now() WHERE id = '{id}' AND status IN ('queued','running')"
    )
}

/// Waits for the run's one `canceled` event and the service's own marker.
async fn wait_cancel_handled(system: &System, id: Uuid) {
    system.wait_event(id, "canceled").await;
    tests::wait_for("the cancel to be marked handled", MINUTE, || async {
        system.run(id).await.is_some_and(|r| r.cancel_handled_at.is_some())
    })
    .await;
    let events = system.events(id).await;
    assert_eq!(
        statuses(&events).iter().filter(|s| **s == "canceled").count(),
        1,
        "{:?}",
        statuses(&events)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_s_cancel_of_a_queued_run_is_handled_without_perform() {
    let system = System::start().await;
    // The API inserted the row, canceled it, and its execute message arrives after.
    let id = system.insert_queued_run("SELECT Email FROM X", &[]).await;
    system.execute_sql(api_cancel(id)).await;
    let enc = system.run(id).await.unwrap().sql_text_encrypted.unwrap();
    let body = serde_json::json!({
        "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid,
        "sqlTextEncrypted": enc,
    });
    system
        .publish_raw(format!("{PREFIX}.execute.{id}"), body.to_string())
        .await;
    wait_cancel_handled(&system, id).await;
    tests::wait_for("the execute message to finish", MINUTE, || async {
        !system.pending_on(format!("{PREFIX}.execute.{id}")).await
    })
    .await;
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 0);
    assert_eq!(
        system.sim.count("soap:Create:QueryDefinition"),
        0,
        "nothing was made in MCE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_s_cancel_during_execute_stops_before_perform_and_deletes_the_query_definition() {
    let system = System::start().await;
    let id = submit_held_at_query_definition(&system).await;
    system.execute_sql(api_cancel(id)).await;
    wait_cancel_handled(&system, id).await;
    system.wait_no_query_definitions().await;
    tests::wait_for("the execute message to finish", MINUTE, || async {
        !system.pending_on(format!("{PREFIX}.execute.{id}")).await
    })
    .await;
    assert_eq!(
        system.sim.count("soap:Perform:QueryDefinition"),
        0,
        "no Perform after a cancel"
    );
    assert!(!statuses(&system.events(id).await).contains(&"executing_query"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_s_cancel_mid_poll_is_handled_within_one_interval() {
    let system = System::start().await;
    system
        .sim
        .script("ApiCancel", Scenario::completes_after(Duration::from_secs(600), 1));
    let id = system.submit("SELECT ApiCancel FROM X", None).await;
    tests::wait_for("polling", MINUTE, || async {
        system.sim.count("soap:Retrieve:AsyncActivityStatus") >= 2
    })
    .await;
    let canceled_at = std::time::Instant::now();
    system.execute_sql(api_cancel(id)).await;
    wait_cancel_handled(&system, id).await;
    // POLL_MAX_DELAY_MS is 2 s in the tests, jittered by ±20 %.
    assert!(
        canceled_at.elapsed() < Duration::from_millis(2400 + 1500),
        "handled after {:?}",
        canceled_at.elapsed()
    );
    let checks = system.sim.count("soap:Retrieve:AsyncActivityStatus");
    tests::wait_for("the poll message to go", MINUTE, || async {
        !system.poll_pending(id).await
    })
    .await;
    assert_eq!(
        system.sim.count("soap:Retrieve:AsyncActivityStatus"),
        checks,
        "no status check after the cancel was handled"
    );
    system.wait_no_query_definitions().await;
}
