//! The execute step end to end: star expansion, metadata, validation,
//! run-to-target, folders, idempotent redelivery, concurrent runs.

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use mce_sim::{Fault, Scenario, SeedField};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::support::{PREFIX, System, statuses};

const MINUTE: Duration = Duration::from_secs(60);

fn creates(system: &System) -> usize {
    system
        .sim
        .calls()
        .iter()
        .filter(|c| c.action.starts_with("soap:Create:"))
        .count()
}

/// Publishes an execute message with extra fields; returns the run id.
async fn submit_with(system: &System, sql: &str, extra: serde_json::Value) -> Uuid {
    let run_id = Uuid::new_v4();
    let mut body = serde_json::json!({
        "runId": run_id, "tenantId": system.tenant_id, "userId": system.user_id,
        "mid": system.mid, "sqlText": sql,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    publish_execute(system, run_id, &body, &format!("execute:{run_id}")).await;
    run_id
}

async fn publish_execute(system: &System, run_id: Uuid, body: &serde_json::Value, msg_id: &str) {
    let publish = PublishMessage::build()
        .payload(body.to_string().into())
        .message_id(msg_id);
    system
        .js
        .send_publish(format!("{PREFIX}.execute.{run_id}"), publish)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The source DE `Customers` (3 rows), the target DE `target-key` (2
/// rows, `Email` its primary key), and queries from `Customers` that end
/// after half a second with 3 rows.
fn seed_target(system: &System) {
    seed_source(system);
    let target = [
        SeedField::new("Email", "EmailAddress").primary_key(),
        SeedField::new("Age", "Number"),
    ];
    system.sim.add_data_extension("Target DE", "target-key", &target, 2);
    system.sim.script(
        "FROM Customers",
        Scenario::completes_after(Duration::from_millis(500), 3),
    );
}

/// The update type the run's QueryDefinition was created with.
fn created_mode(system: &System, id: Uuid) -> String {
    let key = shell_query_core::naming::query_key(id);
    system.sim.created_query(&key).expect("the run's QueryDefinition").1
}

fn seed_source(system: &System) {
    system.sim.add_data_extension(
        "Customers",
        "customers-key",
        &[
            SeedField::new("Email", "EmailAddress"),
            SeedField::new("Age", "Number"),
            SeedField::new("Joined", "Date"),
        ],
        3,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_star_expands_over_table_metadata() {
    let system = System::start().await;
    let meta = serde_json::json!({ "Orders_DE": [
        { "Name": "OrderID", "FieldType": "Number" },
        { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 254 },
        { "Name": "Total", "FieldType": "Decimal", "Scale": 2, "Precision": 12 } ] });
    let id = system
        .submit("SELECT * FROM [Orders_DE] WHERE Total > 10", Some(meta))
        .await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    let key = shell_query_core::naming::query_key(id);
    let (text, update) = system.sim.created_query(&key).unwrap();
    assert_eq!(text, "SELECT OrderID, Email, Total FROM [Orders_DE] WHERE Total > 10");
    assert_eq!(update, "Overwrite");
    let de = run.target_de_customer_key.unwrap();
    assert_eq!(
        system.sim.fields(&de),
        [
            ("OrderID".to_string(), "Number".to_string()),
            ("Email".into(), "EmailAddress".into()),
            ("Total".into(), "Decimal".into())
        ]
    );
    assert_eq!(
        system.sim.count("rest:validate"),
        2,
        "the expanded query is validated again"
    );
    assert_eq!(
        system.sim.count("soap:Retrieve:DataExtension"),
        0,
        "tableMetadata needs no lookup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_star_expands_over_mce_metadata_fetched_once_per_table() {
    let system = System::start().await;
    seed_source(&system);
    let id = system
        .submit(
            "SELECT c.*, j.JobID FROM Customers c JOIN _Sent j ON 1 = 1 WHERE c.Age > (SELECT MIN(Age) FROM Customers)",
            None,
        )
        .await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    let (text, _) = system
        .sim
        .created_query(&shell_query_core::naming::query_key(id))
        .unwrap();
    assert!(
        text.starts_with("SELECT c.Email, c.Age, c.Joined, j.JobID FROM Customers c"),
        "{text}"
    );
    assert_eq!(
        system.sim.count("soap:Retrieve:DataExtension"),
        1,
        "one lookup for Customers, none for _Sent"
    );
    assert_eq!(system.sim.count("soap:Retrieve:DataExtensionField"), 1);
    let de = run.target_de_customer_key.unwrap();
    let types: Vec<String> = system.sim.fields(&de).into_iter().map(|(_, t)| t).collect();
    assert_eq!(types, ["EmailAddress", "Number", "Date", "Number"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_query_fails_with_mce_messages_and_writes_nothing() {
    let system = System::start().await;
    system.sim.script(
        "Broken",
        Scenario {
            invalid: Some(vec!["Invalid column \"x\".".into(), "Unknown table Broken".into()]),
            ..Scenario::completes_after(Duration::from_secs(1), 0)
        },
    );
    let id = system.submit("SELECT x FROM Broken", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed");
    assert_eq!(
        system.error_message(id).await,
        "Invalid column \"x\".\nUnknown table Broken"
    );
    assert_eq!(creates(&system), 0, "no folder, DE or QueryDefinition");
    // An unparseable query that MCE let through is refused with a clear message.
    let id = system.submit("SELECT FROM WHERE", None).await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "failed");
    assert!(
        system
            .error_message(id)
            .await
            .starts_with("The query could not be parsed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_endpoint_that_is_down_does_not_stop_the_run() {
    let system = System::start().await;
    system.sim.inject(Fault::new("rest:validate", 503, 4));
    let id = system.submit("SELECT Email FROM [Subscribers_DE]", None).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(system.sim.count("rest:validate"), 4);
    // A refusal that is not an outage (here 403) fails the run instead.
    system.sim.inject(Fault::new("rest:validate", 403, 1));
    let id = system.submit("SELECT Email FROM [Subscribers_DE]", None).await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "failed");
    assert_eq!(
        system.error_message(id).await,
        "Access denied. You don't have permission for this operation."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_target_in_each_update_mode() {
    let system = System::start().await;
    seed_target(&system);

    let cases = [("Append", 5), ("Update", 5), ("Overwrite", 3)];
    for (mode, rows_after) in cases {
        let id = submit_with(
            &system,
            "SELECT Email, Age FROM Customers",
            serde_json::json!({ "targetDeCustomerKey": "target-key", "targetUpdateType": mode }),
        )
        .await;
        let run = system.wait_terminal(id, MINUTE).await;
        assert_eq!(run.status, "ready", "{mode}: {}", system.log());
        assert_eq!(run.target_de_customer_key.as_deref(), Some("target-key"));
        assert_eq!(created_mode(&system, id), mode);
        assert_eq!(system.sim.rows("target-key").len(), rows_after, "{mode}");
        assert_eq!(run.row_count, Some(rows_after as i32));
        system.wait_event(id, "ready").await;
        assert!(statuses(&system.events(id).await).contains(&"targeting_data_extension"));
    }
    assert_eq!(
        system.sim.count("soap:Create:DataExtension"),
        0,
        "a target run creates no DE"
    );

    // A target that does not exist, and output that does not fit, fail clearly.
    let id = submit_with(
        &system,
        "SELECT Email FROM Customers",
        serde_json::json!({ "targetDeCustomerKey": "nope" }),
    )
    .await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "failed");
    assert_eq!(
        system.error_message(id).await,
        "Target Data Extension \"nope\" was not found."
    );
    let id = submit_with(
        &system,
        "SELECT Email, Joined AS Age, Age AS Extra FROM Customers",
        serde_json::json!({ "targetDeCustomerKey": "target-key", "targetUpdateType": "Append" }),
    )
    .await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "failed");
    assert_eq!(
        system.error_message(id).await,
        "Query output does not match target Data Extension \"Target DE\".\nColumn \"Age\" is Date but target field \"Age\" is Number.\nTarget DE missing field \"Extra\"."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_reading_its_own_target_fails_before_any_mce_write() {
    let system = System::start().await;
    let target = [SeedField::new("Email", "EmailAddress")];
    system.sim.add_data_extension("Target DE", "target-key", &target, 2);
    let id = submit_with(
        &system,
        "WITH t AS (SELECT Email FROM [Target DE]) SELECT Email FROM t",
        serde_json::json!({ "targetDeCustomerKey": "target-key" }),
    )
    .await;
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "failed");
    assert!(
        system
            .error_message(id)
            .await
            .starts_with("Cannot overwrite Data Extension \"Target DE\"")
    );
    assert_eq!(creates(&system), 0);
    assert_eq!(system.sim.rows("target-key").len(), 2, "the target is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_execute_message_twice_starts_the_query_once() {
    let system = System::start().await;
    system
        .sim
        .script("Twice", Scenario::completes_after(Duration::from_secs(3), 1));
    let id = Uuid::new_v4();
    let body = serde_json::json!({
        "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid, "sqlText": "SELECT Twice FROM X",
    });
    publish_execute(&system, id, &body, &format!("execute:{id}")).await;
    tests::wait_for("the first Perform", MINUTE, || async {
        system.run(id).await.and_then(|r| r.task_id).is_some()
    })
    .await;
    // The API retries with a new message id (the same id would be deduplicated).
    tests::wait_for("the first message to be acked", MINUTE, || async {
        system
            .js
            .get_stream("SHELL_QUERY_JOBS")
            .await
            .unwrap()
            .direct_get_last_for_subject(format!("{PREFIX}.execute.{id}"))
            .await
            .is_err()
    })
    .await;
    publish_execute(&system, id, &body, &format!("execute:{id}:again")).await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready");
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_right_after_perform_never_performs_twice() {
    let mut system =
        System::start_with(&[("EXECUTE_ACK_WAIT_MS", "3000"), ("POLL_NOT_RUNNING_MIN_GAP_MS", "500")]).await;
    system
        .sim
        .script("Crash", Scenario::completes_after(Duration::from_secs(8), 4));
    // MCE starts the query at once but answers Perform only after 3 s.
    system.sim.inject(Fault::slow_answer(
        "soap:Perform:QueryDefinition",
        Duration::from_secs(3),
        1,
    ));
    let id = system.submit("SELECT Crash FROM X", None).await;
    tests::wait_for("Perform to reach MCE", MINUTE, || async {
        system.sim.count("soap:Perform:QueryDefinition") == 1
    })
    .await;
    system.kill_worker();
    let killed = Instant::now();
    system.start_worker().await;
    let run = system.wait_terminal(id, Duration::from_secs(90)).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(4));
    assert_eq!(
        system.sim.count("soap:Perform:QueryDefinition"),
        1,
        "Perform was sent once"
    );
    assert_eq!(
        run.task_id.as_deref(),
        Some(""),
        "the lost TaskID is recorded as unknown"
    );
    assert!(killed.elapsed() > Duration::from_secs(3));
}

/// The worker dies while MCE holds Perform, which MCE then never carries
/// out. Its fate is unknown; MCE says the query is not running, and the
/// run's own temp DE makes a second Perform harmless: it is sent, and the
/// run ends ready with MCE having run the query once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_before_mce_got_perform_is_performed_again_where_harmless() {
    let mut system = System::start_with(&[("EXECUTE_ACK_WAIT_MS", "3000")]).await;
    system
        .sim
        .script("Lost", Scenario::completes_after(Duration::from_secs(2), 4));
    // Perform is recorded, then held for 3 s and cut without being carried
    // out: the worker dies while it waits, so nobody learns the outcome.
    system
        .sim
        .inject(Fault::dropped("soap:Perform:QueryDefinition", 1).after(Duration::from_secs(3)));
    let id = system.submit("SELECT Lost FROM X", None).await;
    tests::wait_for("Perform to reach MCE", MINUTE, || async {
        system.sim.count("soap:Perform:QueryDefinition") == 1
    })
    .await;
    system.kill_worker();
    system.start_worker().await;
    let run = system.wait_terminal(id, Duration::from_secs(90)).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(4));
    assert_eq!(
        system.sim.performs_into(&shell_query_core::naming::temp_de_key(id)),
        1,
        "MCE ran the query once"
    );
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 2, "sent again once");
    system.wait_no_query_definitions().await;
}

/// The same unknown fate for a run that appends to its target: a second
/// Perform could add its rows twice, so it is never sent; the run fails
/// saying exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_run_whose_perform_was_not_confirmed_is_never_performed_twice() {
    let system = System::start_with(&[("EXECUTE_ACK_WAIT_MS", "3000")]).await;
    seed_target(&system);
    // MCE fails Perform with a 500 without carrying it out: its fate is unknown to us.
    system.sim.inject(Fault::new("soap:Perform:QueryDefinition", 500, 1));
    let id = submit_with(
        &system,
        "SELECT Email, Age FROM Customers",
        serde_json::json!({ "targetDeCustomerKey": "target-key", "targetUpdateType": "Append" }),
    )
    .await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed", "{}", system.log());
    assert_eq!(
        system.error_message(id).await,
        service::handlers::execute::APPEND_UNCONFIRMED
    );
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 1, "never sent twice");
    assert_eq!(system.sim.rows("target-key").len(), 2, "nothing appended");
    system.wait_no_query_definitions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_one_user_keep_to_their_own_query_definitions() {
    let system = System::start().await;
    system
        .sim
        .script("One", Scenario::completes_after(Duration::from_secs(2), 1));
    system
        .sim
        .script("Two", Scenario::completes_after(Duration::from_secs(3), 2));
    let a = system.submit("SELECT One FROM X", None).await;
    let b = system.submit("SELECT Two FROM X", None).await;
    let (ra, rb) = (
        system.wait_terminal(a, MINUTE).await,
        system.wait_terminal(b, MINUTE).await,
    );
    assert_eq!(
        (ra.status.as_str(), rb.status.as_str()),
        ("ready", "ready"),
        "{}",
        system.log()
    );
    assert_eq!((ra.row_count, rb.row_count), (Some(1), Some(2)));
    let (qa, qb) = (ra.query_definition_id.unwrap(), rb.query_definition_id.unwrap());
    assert_ne!(qa, qb);
    let deletes: Vec<String> = system
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action == "soap:Delete:QueryDefinition")
        .map(|c| c.detail)
        .collect();
    assert_eq!(deletes.iter().filter(|d| **d == qa).count(), 1);
    assert_eq!(deletes.iter().filter(|d| **d == qb).count(), 1);
    assert_eq!(deletes.len(), 2, "no other QueryDefinition was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_results_folder_is_cached_and_looked_up_again_when_mce_lost_it() {
    let system = System::start().await;
    let first = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(first, MINUTE).await.status, "ready");
    assert_eq!(system.sim.count("soap:Create:DataFolder"), 1);
    let second = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(second, MINUTE).await.status, "ready");
    assert_eq!(
        system.sim.count("soap:Retrieve:DataFolder"),
        2,
        "the second run used the cached folder"
    );

    // Someone deletes the folder in MCE: the cached id is refused, the folder made again.
    system.sim.delete_folder("QueryPlusPlus Results");
    let third = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(
        system.wait_terminal(third, MINUTE).await.status,
        "ready",
        "{}",
        system.log()
    );
    assert_eq!(system.sim.count("soap:Create:DataFolder"), 2);
    let folder = system.sim.folders_named("QueryPlusPlus Results");
    let row = system
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT qpp_folder_id FROM tenant_settings".to_string(),
        ))
        .await
        .unwrap()
        .unwrap();
    let cached: i32 = row.try_get("", "qpp_folder_id").unwrap();
    assert_eq!(vec![i64::from(cached)], folder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_sql_is_decrypted_and_a_bad_one_fails_clearly() {
    let system = System::start().await;
    let enc = system.cipher().encrypt("SELECT Email FROM [Subscribers_DE]");
    // Published by hand: exactly one of sqlText and sqlTextEncrypted.
    let good = Uuid::new_v4();
    let body = serde_json::json!({ "runId": good, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid, "sqlTextEncrypted": enc });
    publish_execute(&system, good, &body, &format!("execute:{good}")).await;
    assert_eq!(
        system.wait_terminal(good, MINUTE).await.status,
        "ready",
        "{}",
        system.log()
    );
    let bad = Uuid::new_v4();
    let body = serde_json::json!({ "runId": bad, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid, "sqlTextEncrypted": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" });
    publish_execute(&system, bad, &body, &format!("execute:{bad}")).await;
    assert_eq!(system.wait_terminal(bad, MINUTE).await.status, "failed");
    assert_eq!(
        system.error_message(bad).await,
        "The query text could not be decrypted. Please submit the query again."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_starting_together_on_two_replicas_make_one_results_folder() {
    let system = System::start().await;
    let _second = system.extra_worker().await;
    // A slow folder lookup keeps every first delivery inside the lookup at once.
    system.sim.inject(mce_sim::Fault::slow_answer(
        "soap:Retrieve:DataFolder",
        Duration::from_millis(400),
        4,
    ));
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(system.submit("SELECT Email FROM X", None).await);
    }
    for id in ids {
        assert_eq!(
            system.wait_terminal(id, MINUTE).await.status,
            "ready",
            "{}",
            system.log()
        );
    }
    assert_eq!(system.sim.count("soap:Create:DataFolder"), 1);
    assert_eq!(system.sim.folders_named("QueryPlusPlus Results").len(), 1);
}

/// A run-to-target row whose execute message was lost is submitted again
/// with its target and update type: it writes into the target, never into
/// a temp DE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_to_target_is_submitted_again_to_its_own_target() {
    let system = System::start_with(&[("RECONCILER_INTERVAL_MS", "1000"), ("RECONCILER_GRACE_MS", "0")]).await;
    seed_target(&system);
    // The API inserted the row; its execute message never arrived.
    let id = system
        .insert_queued_run(
            "SELECT Email, Age FROM Customers",
            &[
                ("target_de_customer_key", "'target-key'"),
                ("target_update_type", "'Append'"),
            ],
        )
        .await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.target_de_customer_key.as_deref(), Some("target-key"));
    assert_eq!(created_mode(&system, id), "Append");
    assert_eq!(system.sim.rows("target-key").len(), 5, "appended to the target");
    assert_eq!(system.sim.count("soap:Create:DataExtension"), 0, "no temp DE");
}

/// An update type without its target cannot be rebuilt: the run fails
/// clearly instead of staying queued or running into a temp DE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_the_row_cannot_rebuild_fails_clearly() {
    let system = System::start_with(&[("RECONCILER_INTERVAL_MS", "1000"), ("RECONCILER_GRACE_MS", "0")]).await;
    let id = system
        .insert_queued_run("SELECT Email FROM X", &[("target_update_type", "'Append'")])
        .await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed");
    assert!(system.error_message(id).await.contains("could not be rebuilt"));
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 0);
    system.wait_event(id, "failed").await;
}

/// SQL this service's parser cannot read (a T-SQL query hint) but MCE
/// accepts: a run-to-target with Append or Update runs it as written, MCE's
/// validation the judge; Overwrite, which must prove the query does not
/// read its own target, and a temp run, which needs the columns, refuse it
/// clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_target_lets_mce_judge_sql_the_parser_cannot_read() {
    let system = System::start().await;
    seed_target(&system);
    let sql = "SELECT Email, Age FROM Customers OPTION (MAXDOP 1)";
    assert!(
        shell_query_core::schema::referenced_tables(sql).is_err(),
        "the parser refuses it"
    );

    let append = submit_with(
        &system,
        sql,
        serde_json::json!({ "targetDeCustomerKey": "target-key", "targetUpdateType": "Append" }),
    )
    .await;
    let run = system.wait_terminal(append, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    let (text, mode) = system
        .sim
        .created_query(&shell_query_core::naming::query_key(append))
        .unwrap();
    assert_eq!((text.as_str(), mode.as_str()), (sql, "Append"), "runs as written");
    assert_eq!(system.sim.rows("target-key").len(), 5);

    let overwrite = submit_with(
        &system,
        sql,
        serde_json::json!({ "targetDeCustomerKey": "target-key", "targetUpdateType": "Overwrite" }),
    )
    .await;
    assert_eq!(system.wait_terminal(overwrite, MINUTE).await.status, "failed");
    assert!(
        system
            .error_message(overwrite)
            .await
            .contains("Cannot safely verify overwrite")
    );

    let temp = system.submit(sql, None).await;
    assert_eq!(system.wait_terminal(temp, MINUTE).await.status, "failed");
    assert!(system.error_message(temp).await.contains("could not be parsed"));
}

/// A message whose handling stops the worker every time (here the worker
/// is killed during each delivery) reaches the execute consumer's
/// `max_deliver`: its run fails with a clear message, the message goes to
/// the DLQ (its SQL encrypted) and leaves the jobs stream, instead of
/// staying there undelivered with its run stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_stops_the_worker_every_time_fails_its_run_and_goes_to_the_dlq() {
    let mut system = System::start_with(&[("EXECUTE_ACK_WAIT_MS", "3000")]).await;
    // Validation hangs, so every delivery is still at work when the worker dies.
    system
        .sim
        .inject(Fault::slow_answer("rest:validate", Duration::from_secs(120), 10));
    let id = system.submit("SELECT Email FROM X", None).await;
    for n in 1..=service::adapters::nats::EXECUTE_MAX_DELIVER as usize {
        tests::wait_for(&format!("delivery {n} at work"), MINUTE, || async {
            system.sim.count("rest:validate") >= n
        })
        .await;
        system.kill_worker();
        system.start_worker().await;
    }
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "failed", "{}", system.log());
    assert_eq!(
        system.error_message(id).await,
        service::handlers::undeliverable::UNPROCESSABLE
    );
    system.wait_event(id, "failed").await;
    tests::wait_for("the DLQ copy", MINUTE, || async { !system.dlq().await.is_empty() }).await;
    let copy = system.dlq_copies().await.remove(0);
    assert_eq!(copy.subject, format!("{PREFIX}.dlq.execute.{id}"));
    assert!(copy.reason.starts_with("delivered 5 times"), "{}", copy.reason);
    assert_eq!(copy.redacted.as_deref(), Some("body encrypted"));
    assert!(!copy.payload.contains("Email FROM"));
    tests::wait_for("the message to leave the jobs stream", MINUTE, || async {
        !system.pending_on(format!("{PREFIX}.execute.{id}")).await
    })
    .await;
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 0);
}

/// The API inserts a run's row before it publishes the run's execute
/// message. A message for that run naming another tenant, user or business
/// unit is refused to the DLQ: no MCE call is made with its credentials,
/// and the row waits untouched for its real message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_message_never_runs_as_a_tenant_other_than_its_row_s() {
    let system = System::start().await;
    let intruder = system.add_tenant("510000777");
    let id = system.insert_queued_run("SELECT Email FROM X", &[]).await;
    let calls_before = system.sim.calls().len();
    let forged = serde_json::json!({
        "runId": id, "tenantId": intruder.0, "userId": intruder.1, "mid": intruder.2,
        "sqlText": "SELECT Email FROM Secrets",
    });
    publish_execute(&system, id, &forged, &format!("execute:{id}:forged")).await;
    tests::wait_for("the forged message in the DLQ", Duration::from_secs(30), || async {
        system
            .dlq_copies()
            .await
            .iter()
            .any(|c| c.subject.ends_with(&id.to_string()))
    })
    .await;
    let copy = system
        .dlq_copies()
        .await
        .into_iter()
        .find(|c| c.subject.ends_with(&id.to_string()))
        .unwrap();
    assert!(copy.reason.contains("tenant, user or business unit"), "{}", copy.reason);
    assert_eq!(
        system.sim.calls().len(),
        calls_before,
        "no MCE call: {:?}",
        system.sim.calls()
    );
    let row = system.run(id).await.expect("the row");
    assert_eq!(row.status, "queued", "the row waits for its real message");
    assert_eq!(row.tenant_id, system.tenant_id);
    assert!(system.events(id).await.is_empty(), "no event for the forged message");

    // The real message then runs as the row says.
    let real = serde_json::json!({
        "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid,
        "sqlText": "SELECT Email FROM X",
    });
    publish_execute(&system, id, &real, &format!("execute:{id}")).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
}

/// A max-deliveries advisory is checked, not believed: one the admin user
/// forges for a healthy run's pending message (naming the execute
/// consumer, the poll consumer, or another stream) is dropped; the run, its
/// message and the DLQ are left alone, and the run ends `ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_max_deliveries_advisory_leaves_a_healthy_run_alone() {
    let system = System::start().await;
    system
        .sim
        .script("Long", Scenario::completes_after(Duration::from_secs(12), 3));
    let id = system.submit("SELECT Long FROM X", None).await;
    system.started(id).await;
    tests::wait_for("the run polling", MINUTE, || async { system.poll_pending(id).await }).await;
    let stream = system.js.get_stream("SHELL_QUERY_JOBS").await.unwrap();
    let seq = stream
        .direct_get_last_for_subject(format!("{PREFIX}.poll.{id}"))
        .await
        .expect("the run's poll message")
        .sequence;
    for (stream, consumer) in [
        ("SHELL_QUERY_JOBS", "shell-query-execute"),
        ("SHELL_QUERY_JOBS", "shell-query-poll"),
        ("SHELL_QUERY_JOBS", "shell-query-cancel"),
    ] {
        let advisory = serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": Uuid::new_v4().simple().to_string(),
            "timestamp": "2026-12-04T00:00:00Z",
            "stream": stream, "consumer": consumer, "stream_seq": seq, "deliveries": 5,
        });
        system
            .js
            .publish(
                format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"),
                advisory.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    tests::wait_for("the forged advisories dropped", MINUTE, || async {
        let log = system.log();
        log.matches("do not bear out").count() == 2 && log.contains("for no consumer of the service")
    })
    .await;
    assert!(system.dlq().await.is_empty(), "no DLQ copy");
    assert_eq!(system.run(id).await.unwrap().status, "running");
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "ready");
    assert!(system.dlq().await.is_empty(), "no DLQ copy");
}
