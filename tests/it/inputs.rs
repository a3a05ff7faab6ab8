//! Bad input, each with a clear outcome: a DLQ copy with the reason and/or
//! a `failed` row with a client-safe message; the consumer goes on.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::support::{PREFIX, System};

const MINUTE: Duration = Duration::from_secs(60);

async fn error_of(system: &System, id: Uuid) -> String {
    assert_eq!(system.wait_terminal(id, MINUTE).await.status, "failed");
    system.error_message(id).await
}

fn body(system: &System, id: Uuid, extra: serde_json::Value) -> serde_json::Value {
    let mut b = serde_json::json!({
        "runId": id, "tenantId": system.tenant_id, "userId": system.user_id, "mid": system.mid, "sqlText": "SELECT Email FROM X",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v.clone();
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dlq_and_fail_their_run() {
    let system = System::start().await;
    let cases = [
        (
            "wrong shape",
            serde_json::json!(["not", "an", "object"]).to_string(),
            "invalid execute message",
        ),
        (
            "missing field",
            body(&system, Uuid::nil(), serde_json::json!({ "tenantId": null })).to_string(),
            "missing field `tenantId`",
        ),
        (
            "invalid uuid",
            body(&system, Uuid::nil(), serde_json::json!({ "tenantId": "not-a-uuid" })).to_string(),
            "invalid",
        ),
    ];
    let mut ids = Vec::new();
    for (what, text, _) in &cases {
        let id = Uuid::new_v4();
        let text = text.replace(&Uuid::nil().to_string(), &id.to_string());
        system.publish_raw(format!("{PREFIX}.execute.{id}"), text).await;
        ids.push((id, *what));
    }
    // The body names another run than the subject.
    let subject_id = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.execute.{subject_id}"),
            body(&system, Uuid::new_v4(), serde_json::json!({})).to_string(),
        )
        .await;
    // A poll message for a run that does not exist.
    let ghost = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.poll.{ghost}"),
            serde_json::json!({ "runId": ghost }).to_string(),
        )
        .await;
    // And the consumer goes on.
    let good = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(good, MINUTE).await.status, "ready");
    // A field the service does not know is ignored: the API may add one.
    let extra = Uuid::new_v4();
    let text = body(&system, extra, serde_json::json!({ "priority": 5, "labels": ["a"] })).to_string();
    system.publish_raw(format!("{PREFIX}.execute.{extra}"), text).await;
    assert_eq!(
        system.wait_terminal(extra, MINUTE).await.status,
        "ready",
        "{}",
        system.log()
    );

    for ((id, what), (_, _, reason)) in ids.iter().zip(&cases) {
        let error = error_of(&system, *id).await;
        assert!(
            error.starts_with("The run request is invalid:") && error.contains(reason),
            "{what}: {error}"
        );
    }
    assert!(error_of(&system, subject_id).await.contains("differs"));
    tests::wait_for("every DLQ copy", MINUTE, || async { system.dlq().await.len() >= 5 }).await;
    let copies = system.dlq().await;
    assert!(
        copies
            .iter()
            .any(|(s, r)| s == &format!("{PREFIX}.dlq.poll.{ghost}") && r.contains("unknown run")),
        "{copies:?}"
    );
    assert!(copies.iter().all(|(_, r)| !r.is_empty()), "every copy says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_cannot_start_fail_with_a_clear_message() {
    let system = System::start().await;
    let unknown_tenant = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.execute.{unknown_tenant}"),
            body(
                &system,
                unknown_tenant,
                serde_json::json!({ "tenantId": Uuid::new_v4() }),
            )
            .to_string(),
        )
        .await;
    let no_credentials = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.execute.{no_credentials}"),
            body(&system, no_credentials, serde_json::json!({ "userId": Uuid::new_v4() })).to_string(),
        )
        .await;
    let empty = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.execute.{empty}"),
            body(&system, empty, serde_json::json!({ "sqlText": "   " })).to_string(),
        )
        .await;
    let huge = Uuid::new_v4();
    let big_sql = format!("SELECT Email FROM X WHERE Note = '{}'", "x".repeat(300 * 1024));
    system
        .publish_raw(
            format!("{PREFIX}.execute.{huge}"),
            body(&system, huge, serde_json::json!({ "sqlText": big_sql })).to_string(),
        )
        .await;

    assert_eq!(error_of(&system, unknown_tenant).await, "The tenant is not known.");
    assert!(
        error_of(&system, no_credentials)
            .await
            .starts_with("No Marketing Cloud credentials are stored")
    );
    assert_eq!(error_of(&system, empty).await, "The query text is empty.");
    assert!(error_of(&system, huge).await.contains("the most accepted is 256 KB"));

    // A tenant whose subdomain is not [a-z0-9-]+ is never contacted.
    let bad_tenant = Uuid::new_v4();
    let sql = format!("INSERT INTO tenants (id, eid, tssd) VALUES ('{bad_tenant}', 'evil', 'evil.example.com/x')");
    system
        .db
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap();
    let id = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.execute.{id}"),
            body(&system, id, serde_json::json!({ "tenantId": bad_tenant })).to_string(),
        )
        .await;
    assert_eq!(
        error_of(&system, id).await,
        "The tenant's Marketing Cloud subdomain is invalid."
    );
    assert_eq!(system.sim.count("soap:Perform:QueryDefinition"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_never_finishes_a_live_run_it_did_not_create() {
    let system = System::start().await;
    system
        .sim
        .script("Victim", mce_sim::Scenario::completes_after(Duration::from_secs(3), 4));
    let id = system.submit("SELECT Victim FROM X", None).await;
    // Polling: its execute message is done, so its subject takes another.
    tests::wait_for("the run to poll", MINUTE, || async { system.poll_pending(id).await }).await;
    // Garbage on the live run's own subject: to the DLQ, and nothing else.
    system
        .publish_raw(format!("{PREFIX}.execute.{id}"), "oops".into())
        .await;
    tests::wait_for("the DLQ copy", MINUTE, || async {
        system
            .dlq()
            .await
            .iter()
            .any(|(s, _)| s == &format!("{PREFIX}.dlq.execute.{id}"))
    })
    .await;
    let run = system.wait_terminal(id, MINUTE).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.row_count, Some(4));
    let events = system.events(id).await;
    assert!(
        !crate::support::statuses(&events).contains(&"failed"),
        "{:?}",
        crate::support::statuses(&events)
    );
    system.wait_no_query_definitions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_copies_and_errors_never_carry_sql_in_plain_text() {
    let system = System::start().await;
    let secret = "SELECT SecretColumn FROM SecretTable";
    // Decodes as JSON, but the MID is not one: the copy keeps the SQL encrypted.
    let bad_mid = Uuid::new_v4();
    let text = body(
        &system,
        bad_mid,
        serde_json::json!({ "mid": "not-a-mid", "sqlText": secret }),
    )
    .to_string();
    system.publish_raw(format!("{PREFIX}.execute.{bad_mid}"), text).await;
    // Not JSON at all: the whole copy is encrypted.
    let garbage = Uuid::new_v4();
    system
        .publish_raw(format!("{PREFIX}.execute.{garbage}"), format!("{{ oops {secret}"))
        .await;
    // A value of the wrong type: the error names the field, not the value.
    let wrong_type = Uuid::new_v4();
    let text = body(&system, wrong_type, serde_json::json!({ "tenantId": "EchoMe" })).to_string();
    system.publish_raw(format!("{PREFIX}.execute.{wrong_type}"), text).await;
    tests::wait_for("three DLQ copies", MINUTE, || async { system.dlq().await.len() >= 3 }).await;

    let copies = system.dlq_copies().await;
    for copy in &copies {
        assert!(!copy.payload.contains("Secret"), "{}: {}", copy.subject, copy.payload);
        assert!(!copy.reason.contains("Secret"), "{}", copy.reason);
    }
    let of = |id: Uuid| {
        copies
            .iter()
            .find(|c| c.subject == format!("{PREFIX}.dlq.execute.{id}"))
            .unwrap_or_else(|| panic!("a copy for {id}"))
    };
    let cipher = system.cipher();
    // An execute message may hold SQL under any name: the copy is all encrypted.
    let copy = of(bad_mid);
    assert_eq!(copy.redacted.as_deref(), Some("body encrypted"));
    let v: serde_json::Value = serde_json::from_str(&cipher.decrypt(&copy.payload).unwrap()).unwrap();
    assert_eq!(v["sqlText"], secret);
    let copy = of(garbage);
    assert_eq!(copy.redacted.as_deref(), Some("body encrypted"));
    assert!(cipher.decrypt(&copy.payload).unwrap().contains(secret));
    assert_eq!(
        of(wrong_type).reason,
        "invalid execute message: field `tenantId` must be a UUID"
    );
    assert!(!system.error_message(wrong_type).await.contains("EchoMe"));
    for id in [bad_mid, garbage, wrong_type] {
        assert!(!system.error_message(id).await.contains("Secret"));
    }
    assert!(!system.log().contains("Secret"), "the logs never carry SQL");
}

/// Size is checked before work: an execute message over 1.5 MB fails its run
/// clearly without being decoded, encrypted or stored, and its DLQ copy is
/// a summary; one over nats.conf's 2 MB never reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_execute_messages_are_refused_before_any_work() {
    let system = System::start().await;
    let id = Uuid::new_v4();
    let sql = format!("SELECT Email FROM X WHERE Email = '{}'", "x".repeat(1536 * 1024));
    let text = body(&system, id, serde_json::json!({ "sqlText": sql })).to_string();
    system.publish_raw(format!("{PREFIX}.execute.{id}"), text).await;
    let error = error_of(&system, id).await;
    assert!(
        error.starts_with("The run request is invalid: the execute message is 15")
            && error.contains("the most accepted is 1536 KB"),
        "{error}"
    );
    let row = system.run(id).await.unwrap();
    assert_eq!(row.sql_text_encrypted, None, "nothing of it was stored");
    tests::wait_for("the DLQ copy", MINUTE, || async { !system.dlq().await.is_empty() }).await;
    let copy = system.dlq_copies().await.remove(0);
    assert_eq!(copy.redacted.as_deref(), Some("summary"));
    assert!(copy.payload.len() < 200, "{}", copy.payload);

    let huge = "x".repeat(3 * 1024 * 1024);
    let refused = system
        .js
        .publish(format!("{PREFIX}.execute.{}", Uuid::new_v4()), huge.into())
        .await;
    assert!(refused.is_err(), "nats-server refuses a message over max_payload");
}

/// Poison SQL: a 6,000-term sum (12 KB) used to overflow the stack in type
/// inference and abort the worker, so four of them crash-looped it. Now each
/// run fails with a clear message and the worker stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_sql_fails_its_run_and_never_crashes_the_worker() {
    let mut system = System::start().await;
    let sum = format!("SELECT {} AS x FROM X", vec!["1"; 6000].join("+"));
    let nested = format!("SELECT {}1{} AS x FROM X", "(".repeat(5000), ")".repeat(5000));
    let mut ids = Vec::new();
    for sql in [&sum, &sum, &nested, &sum] {
        ids.push(system.submit(sql, None).await);
    }
    for id in ids {
        let error = error_of(&system, id).await;
        assert!(
            error.starts_with("The query is nested too deeply to analyse"),
            "{error}"
        );
    }
    let good = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(good, MINUTE).await.status, "ready");
    assert_eq!(
        system.worker().wait_exit(Duration::ZERO).await,
        None,
        "the same worker is still up"
    );
}

/// Every text field of an execute message holding what PostgreSQL or MCE's
/// XML cannot carry (a NUL, a lone surrogate escape) or more than its
/// bound: each run ends `failed` with a row and a DLQ copy naming the
/// field; none vanishes, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_the_database_cannot_store_is_refused_naming_the_field() {
    let system = System::start().await;
    let long = |n: usize| "7".repeat(n);
    let mut cases: Vec<(String, String, &str)> = Vec::new();
    for field in [
        "snippetName",
        "targetDeCustomerKey",
        "targetUpdateType",
        "mid",
        "eid",
        "sqlText",
        "sqlTextEncrypted",
    ] {
        // With sqlTextEncrypted, the plain text goes.
        let base = |value: serde_json::Value| {
            let mut extra = serde_json::json!({ field: value });
            if field == "sqlTextEncrypted" {
                extra["sqlText"] = serde_json::Value::Null;
            }
            extra
        };
        cases.push((
            format!("{field} NUL"),
            body(&system, Uuid::nil(), base("a\u{0}b".into())).to_string(),
            "NUL",
        ));
        let lone = body(&system, Uuid::nil(), base("LONE".into()))
            .to_string()
            .replace("\"LONE\"", "\"\\ud800\"");
        cases.push((format!("{field} lone surrogate"), lone, "invalid execute message"));
        let bound = match field {
            "snippetName" => Some(513),
            "targetDeCustomerKey" => Some(201),
            "targetUpdateType" => Some(33),
            "mid" => Some(21),
            "eid" => Some(65),
            _ => None,
        };
        if let Some(n) = bound {
            cases.push((
                format!("{field} over-long"),
                body(&system, Uuid::nil(), base(long(n).into())).to_string(),
                "longer than",
            ));
        }
    }
    let mut ids = Vec::new();
    for (what, text, _) in &cases {
        let id = Uuid::new_v4();
        system
            .publish_raw(
                format!("{PREFIX}.execute.{id}"),
                text.replace(&Uuid::nil().to_string(), &id.to_string()),
            )
            .await;
        ids.push((id, what.clone()));
    }
    for ((id, what), (_, _, reason)) in ids.iter().zip(&cases) {
        let error = error_of(&system, *id).await;
        assert!(
            error.starts_with("The run request is invalid:") && error.contains(reason),
            "{what}: {error}"
        );
        if *reason != "invalid execute message" {
            let field = what.split(' ').next().unwrap();
            assert!(error.contains(&format!("`{field}`")), "{what} names its field: {error}");
        }
    }
    tests::wait_for("a DLQ copy of each", MINUTE, || async {
        let copies = system.dlq().await;
        ids.iter()
            .all(|(id, _)| copies.iter().any(|(s, _)| s == &format!("{PREFIX}.dlq.execute.{id}")))
    })
    .await;
    let good = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(good, MINUTE).await.status, "ready");
}

/// A database that refuses a run's data itself (SQLSTATE class 22, here a
/// trigger standing in for it) is not retried as if it were away: with no
/// row to end, the message goes to the DLQ at once, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_database_refuses_goes_to_the_dlq_not_away() {
    let system = System::start().await;
    for sql in [
        "CREATE FUNCTION refuse_marked() RETURNS trigger AS $$ BEGIN \
         IF NEW.snippet_name = 'refuse me' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; \
         RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_marked BEFORE INSERT ON shell_query_runs FOR EACH ROW EXECUTE FUNCTION refuse_marked()",
    ] {
        system.execute_sql(sql.to_string()).await;
    }
    let id = Uuid::new_v4();
    system
        .publish_raw(
            format!("{PREFIX}.execute.{id}"),
            body(&system, id, serde_json::json!({ "snippetName": "refuse me" })).to_string(),
        )
        .await;
    tests::wait_for("the DLQ copy", MINUTE, || async {
        system
            .dlq()
            .await
            .iter()
            .any(|(s, r)| s == &format!("{PREFIX}.dlq.execute.{id}") && r.contains("could not be recorded"))
    })
    .await;
    assert!(
        !system.log().contains("execute failed transiently"),
        "refused on its first delivery, never retried as a database outage:\n{}",
        system.log()
    );
    assert!(system.run(id).await.is_none(), "no row could be written");
}
