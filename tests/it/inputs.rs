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
            "extra field",
            body(&system, Uuid::nil(), serde_json::json!({ "priority": 5 })).to_string(),
            "unknown field `priority`",
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

    for ((id, what), (_, _, reason)) in ids.iter().zip(&cases) {
        let error = error_of(&system, *id).await;
        assert!(
            error.starts_with("The run request is invalid:") && error.contains(reason),
            "{what}: {error}"
        );
    }
    assert!(error_of(&system, subject_id).await.contains("differs"));
    tests::wait_for("every DLQ copy", MINUTE, || async { system.dlq().await.len() >= 6 }).await;
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
    let big_sql = format!("SELECT Email FROM X WHERE Note = '{}'", "x".repeat(1024 * 1024));
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
