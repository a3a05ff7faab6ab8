//! The operator's commands, run as the real binary against the real
//! database, NATS and the running service.

use std::time::Duration;

use mce_sim::Scenario;
use uuid::Uuid;

use crate::support::{PREFIX, System};

/// Runs the binary off the test's threads (it blocks until it exits).
async fn command(args: &[&str], env: Vec<(String, String)>) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tests::run_command(&args, &env, None)
    })
    .await
    .unwrap()
}

/// The system's settings, connecting to NATS as the admin (operators read
/// the DLQ and every event).
fn as_admin(system: &System) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = system
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("NATS_USER") && k != "NATS_PASSWORD")
        .collect();
    env.push(("NATS_USER".into(), tests::ADMIN_USER.into()));
    env.push(("NATS_PASSWORD".into(), system.nats.password(tests::ADMIN_USER).into()));
    env.push(("NATS_INBOX_PREFIX".into(), format!("_INBOX.{}", tests::ADMIN_USER)));
    env
}

/// A command's `-o json` output: one JSON document on stdout, every time
/// in it RFC 3339 in UTC.
fn json_of(out: &str) -> serde_json::Value {
    let value: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{out}"));
    times_are_rfc3339_utc(&value);
    value
}

/// Every string under a key that names a time (`…At`, `time`,
/// `timestamp`) is RFC 3339 in UTC (`2026-12-04T13:23:23.764Z`).
fn times_are_rfc3339_utc(value: &serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key.ends_with("At") || key == "time" || key == "timestamp" {
                    match v.as_str() {
                        Some(t) => assert_rfc3339_utc(t),
                        None => assert!(v.is_null(), "{key}: {v}"),
                    }
                }
                times_are_rfc3339_utc(v);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(times_are_rfc3339_utc),
        _ => {}
    }
}

fn assert_rfc3339_utc(t: &str) {
    let parsed = chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
    assert!(
        t.ends_with('Z') && parsed.offset().local_minus_utc() == 0,
        "{t:?} is not UTC"
    );
}

/// The times a table shows are RFC 3339 UTC too: no other format (such as
/// `2026-12-04 13:23:57.664198303 +00:00:00`) appears.
fn table_times_are_rfc3339_utc(out: &str) {
    assert!(!out.contains("+00:00"), "a time not in RFC 3339 UTC:\n{out}");
    let mut seen = 0;
    for word in out
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| "(),;:".contains(c)))
    {
        if word.len() >= 20 && word.as_bytes()[4] == b'-' && word.contains('T') && word[..4].parse::<u16>().is_ok() {
            assert_rfc3339_utc(word);
            seen += 1;
        }
    }
    assert!(seen > 0, "no time in:\n{out}");
}

/// The ids of a `runs list -o json`.
fn run_ids(list: &serde_json::Value) -> Vec<Uuid> {
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .iter()
        .map(|r| r["runId"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_shown_and_canceled() {
    let system = System::start().await;
    system
        .sim
        .script("Slow", Scenario::completes_after(Duration::from_secs(300), 5));
    let slow = system.submit("SELECT Email FROM Slow", None).await;
    let quick = system.submit("SELECT Email FROM Quick", None).await;
    assert_eq!(
        system.wait_terminal(quick, Duration::from_secs(60)).await.status,
        "ready"
    );
    system.wait_event(quick, "ready").await;
    tests::wait_for("the slow run polling", Duration::from_secs(30), || async {
        system
            .run(slow)
            .await
            .is_some_and(|r| r.status == "running" && r.poll_count > 0)
    })
    .await;
    let env = as_admin(&system);

    let (code, out, err) = command(&["runs", "list"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&slow.to_string()) && out.contains(&quick.to_string()),
        "{out}"
    );
    table_times_are_rfc3339_utc(&out);
    let (code, out, err) = command(&["runs", "list", "-o", "json"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let list = json_of(&out);
    let ids = run_ids(&list);
    assert!(ids.contains(&slow) && ids.contains(&quick), "{out}");
    let quick_item = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["runId"] == quick.to_string())
        .unwrap();
    assert_eq!(quick_item["status"], "ready", "{out}");
    assert_eq!(quick_item["tenantId"], system.tenant_id.to_string(), "{out}");
    assert!(
        quick_item["createdAt"].is_string() && quick_item["completedAt"].is_string(),
        "{out}"
    );
    let (_, out, _) = command(&["runs", "list", "--status", "ready", "--output", "json"], env.clone()).await;
    assert_eq!(run_ids(&json_of(&out)), [quick], "{out}");
    let (code, out, err) = command(&["runs", "stats", "-o", "json"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let stats = json_of(&out);
    assert!(
        stats["counts"]["ready"].as_u64() >= Some(1) && stats["counts"]["running"].as_u64() >= Some(1),
        "{out}"
    );
    assert!(
        stats["oldestRunningCreatedAt"].is_string() && stats["oldestRunningAgeSeconds"].is_u64(),
        "{out}"
    );
    let (code, _, err) = command(&["runs", "stats", "-o", "yaml"], env.clone()).await;
    assert_eq!(code, 2, "only table and json: {err}");
    let (_, out, _) = command(&["runs", "list", "--status", "ready"], env.clone()).await;
    assert!(
        out.contains(&quick.to_string()) && !out.contains(&slow.to_string()),
        "{out}"
    );
    let tenant = system.tenant_id.to_string();
    let (_, out, _) = command(&["runs", "list", "--tenant", &tenant, "--limit", "1"], env.clone()).await;
    assert!(out.contains("1 run(s)"), "{out}");
    let other = Uuid::new_v4().to_string();
    let (_, out, _) = command(&["runs", "list", "--tenant", &other], env.clone()).await;
    assert!(out.contains("0 run(s)"), "{out}");
    let (code, _, err) = command(&["runs", "list", "--status", "done"], env.clone()).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = command(&["runs", "show", &quick.to_string()], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    for needle in [
        "status            ready",
        "poll message      none",
        "executing_query",
        "Query completed",
        // Its last tick saw `Complete`: not the pending status before it.
        "last MCE status   complete",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    assert!(!out.contains("SELECT"), "no SQL text: {out}");
    let rows = out.lines().find_map(|l| l.strip_prefix("rows ")).unwrap().trim();
    assert!(rows.parse::<u64>().is_ok(), "{out}");
    table_times_are_rfc3339_utc(&out);
    let (code, out, err) = command(&["runs", "show", &quick.to_string(), "-o", "json"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let shown = json_of(&out);
    assert_eq!(shown["runId"], quick.to_string(), "{out}");
    assert_eq!(shown["status"], "ready", "{out}");
    assert_eq!(shown["pollMessage"], "none", "{out}");
    assert!(
        shown["lastMceStatus"]
            .as_str()
            .is_some_and(|s| s.starts_with("complete")),
        "{out}"
    );
    assert!(shown["rowCount"].is_u64() && shown["poll"]["count"].is_u64(), "{out}");
    let events: Vec<&str> = shown["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events: {out}"))
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert!(
        events.contains(&"executing_query") && events.contains(&"ready"),
        "{out}"
    );
    assert!(!out.contains("SELECT"), "no SQL text: {out}");
    let (_, out, _) = command(&["runs", "show", &slow.to_string()], env.clone()).await;
    assert!(out.contains("poll message      pending"), "{out}");
    assert!(out.contains("last MCE status"), "{out}");
    // As the service's own NATS user the row shows; the events need more.
    let (code, out, _) = command(&["runs", "show", &slow.to_string()], system.env()).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("status            running") && out.contains("events           unavailable"),
        "{out}"
    );
    let (code, out, _) = command(&["runs", "show", &slow.to_string(), "-o", "json"], system.env()).await;
    assert_eq!(code, 0);
    let shown = json_of(&out);
    assert_eq!(shown["status"], "running", "{out}");
    assert!(shown["events"].is_null() && shown["eventsError"].is_string(), "{out}");

    let (code, out, err) = command(&["runs", "cancel", &slow.to_string()], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("canceled"), "{out}");
    system.wait_event(slow, "canceled").await;
    let row = system.run(slow).await.unwrap();
    assert_eq!(row.status, "canceled");
    tests::wait_for("the QueryDefinition deleted", Duration::from_secs(30), || async {
        system.sim.query_definitions().is_empty()
    })
    .await;
    let (code, _, err) = command(&["runs", "cancel", &slow.to_string()], env.clone()).await;
    assert_eq!(code, 1);
    assert!(err.contains("has ended already (canceled)"), "{err}");
    let (code, _, err) = command(&["runs", "show", &other], env).await;
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_copies_are_listed_shown_redacted_and_replayed() {
    let system = System::start().await;
    let id = Uuid::new_v4();
    let secret_sql = "SELECT very_secret_column FROM Secrets";
    let body = serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "mid": system.mid, "sqlText": secret_sql, "sqlTextEncrypted": "also" });
    let subject = format!("{PREFIX}.execute.{id}");
    system.publish_raw(subject.clone(), body.to_string()).await;
    tests::wait_for("a DLQ copy", Duration::from_secs(30), || async {
        system.dlq().await.len() == 1
    })
    .await;
    let env = as_admin(&system);

    let (code, out, err) = command(&["dlq", "list"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&subject) && out.contains("both sqlText and sqlTextEncrypted"),
        "{out}"
    );
    assert!(out.contains("1 of 1 message(s)"), "{out}");
    table_times_are_rfc3339_utc(&out);
    let seq = out
        .lines()
        .find(|l| l.contains(&subject))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (code, out, err) = command(&["dlq", "list", "-o", "json"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let list = json_of(&out);
    let copies = list.as_array().unwrap_or_else(|| panic!("an array: {out}"));
    assert_eq!(copies.len(), 1, "{out}");
    assert_eq!(copies[0]["seq"].to_string(), seq, "{out}");
    assert_eq!(copies[0]["originalSubject"], subject.as_str(), "{out}");
    assert!(
        copies[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("both sqlText and sqlTextEncrypted"),
        "{out}"
    );
    let (code, out, err) = command(&["dlq", "show", &seq, "-o", "json"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let shown = json_of(&out);
    assert_eq!(shown["seq"].to_string(), seq, "{out}");
    assert_eq!(
        shown["headers"]["Shell-Query-Original-Subject"][0],
        subject.as_str(),
        "{out}"
    );
    assert_eq!(shown["body"]["runId"], id.to_string(), "the body, as JSON: {out}");
    assert!(!out.contains("very_secret_column"), "{out}");

    let (code, out, err) = command(&["dlq", "show", &seq], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    table_times_are_rfc3339_utc(&out);
    assert!(
        out.contains("Shell-Query-Original-Subject:") && out.contains(&subject),
        "{out}"
    );
    assert!(
        out.contains(&format!("<redacted: {} bytes>", secret_sql.len())),
        "{out}"
    );
    assert!(out.contains(&id.to_string()), "the other fields show: {out}");
    assert!(!out.contains("very_secret_column"), "{out}");
    let without_key: Vec<(String, String)> = env.iter().filter(|(k, _)| k != "ENCRYPTION_KEY").cloned().collect();
    let (_, out, _) = command(&["dlq", "show", &seq], without_key.clone()).await;
    assert!(
        out.contains("set ENCRYPTION_KEY") && !out.contains("very_secret_column"),
        "{out}"
    );

    // The service's own user may not read the DLQ: a clear error, no output.
    let (code, _, err) = command(&["dlq", "list"], system.env()).await;
    assert_eq!(code, 1);
    assert!(err.contains("shell_query_admin"), "{err}");

    // Replay restores the original body and publishes it where it came
    // from, then removes the copy: the service reads it again and gives up
    // again, and the new copy takes the place of the one replayed (it names
    // it): a failed replay adds no copy.
    let (code, _, err) = command(&["dlq", "replay", &seq], without_key).await;
    assert_eq!(code, 2, "no key, no replay: a setting is missing: {err}");
    assert!(err.contains("ENCRYPTION_KEY"), "{err}");
    assert_eq!(system.dlq().await.len(), 1, "a refused replay changes nothing");
    let (code, out, err) = command(&["dlq", "replay", &seq], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("published to {subject}")) && out.contains("removed from the DLQ"),
        "{out}"
    );
    tests::wait_for("the replay's own copy", Duration::from_secs(30), || async {
        system
            .dlq_copies()
            .await
            .iter()
            .any(|c| c.replayed_from.as_deref() == Some(seq.as_str()))
    })
    .await;
    let copies = system.dlq_copies().await;
    assert_eq!(copies.len(), 1, "the copy replayed is gone, one stands in for it");
    let cipher = system.cipher();
    let restored = cipher.decrypt(&copies[0].payload).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&restored).unwrap(),
        body,
        "the replayed body is the original"
    );
    let (_, out, _) = command(&["dlq", "list"], env.clone()).await;
    assert!(out.contains("1 of 1 message(s)"), "{out}");
    assert!(
        !out.lines()
            .any(|l| l.split_whitespace().next() == Some(seq.as_str()) && !l.ends_with("message(s)")),
        "{out}"
    );
    // A second replay of the same copy is refused, and publishes nothing.
    let (code, out, err) = command(&["dlq", "replay", &seq], env.clone()).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains(&format!("DLQ message {seq} is not in the DLQ")), "{err}");
    assert_eq!(system.dlq().await.len(), 1);
    let (code, _, err) = command(&["dlq", "show", "999"], env).await;
    assert_eq!(code, 1);
    assert!(err.contains("999"), "{err}");
}

/// Stores a copy in the DLQ as the service would (the worker is stopped:
/// a replayed message stays on its subject); its sequence.
async fn dlq_copy(system: &System, original: &str, reason: &str, body: serde_json::Value) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Shell-Query-Error", reason);
    headers.insert("Shell-Query-Original-Subject", original);
    let dlq_subject = format!("{PREFIX}.dlq.{}", original.strip_prefix(&format!("{PREFIX}.")).unwrap());
    system
        .js
        .publish_with_headers(dlq_subject, headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// The sequences `dlq list` shows.
async fn listed(env: &[(String, String)], filters: &[&str]) -> Vec<u64> {
    let mut args = vec!["dlq", "list"];
    args.extend_from_slice(filters);
    let (code, out, err) = command(&args, env.to_vec()).await;
    assert_eq!(code, 0, "{err}");
    let mut seqs: Vec<u64> = out
        .lines()
        .filter(|l| !l.ends_with("message(s)"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs
}

/// `dlq replay --all` with filters (dry or not), `dlq rm` and `dlq purge`
/// with --reason and --older-than: each takes exactly the copies its
/// filters name, a dry run changes nothing, a replayed or removed copy is
/// gone and cannot be replayed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_copies_are_removed_purged_and_replayed_in_bulk() {
    let mut system = System::start().await;
    system.kill_worker();
    let env = as_admin(&system);
    let tenant = system.tenant_id;
    let (a_run, b_run, c_run, d_run) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a = dlq_copy(
        &system,
        &format!("{PREFIX}.cancel.{a_run}"),
        "cancel for a run of another tenant or user",
        serde_json::json!({ "runId": a_run, "tenantId": tenant }),
    )
    .await;
    let poll = |run: Uuid| format!("{PREFIX}.poll.{run}");
    let b = dlq_copy(
        &system,
        &poll(b_run),
        "MCE refused the token",
        serde_json::json!({ "runId": b_run }),
    )
    .await;
    let c = dlq_copy(
        &system,
        &poll(c_run),
        "MCE refused the token",
        serde_json::json!({ "runId": c_run }),
    )
    .await;
    let d = dlq_copy(
        &system,
        &format!("{PREFIX}.status.{d_run}"),
        "mce REFUSED, on a subject no one replays to",
        serde_json::json!({ "runId": d_run }),
    )
    .await;
    assert_eq!(listed(&env, &[]).await, [a, b, c, d]);
    assert_eq!(listed(&env, &["--subject", &format!("{PREFIX}.poll.*")]).await, [b, c]);
    assert_eq!(listed(&env, &["--reason", "mce refused"]).await, [b, c, d]);

    // A dry run lists what would be replayed, and what could not be.
    let (code, out, err) = command(
        &["dlq", "replay", "--all", "--reason", "MCE refused", "--dry-run"],
        env.clone(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    for seq in [b, c] {
        assert!(out.contains(&format!("would replay  {seq} ")), "{seq}: {out}");
    }
    assert!(
        out.contains(&format!("cannot replay {d}: ")) && out.contains("not an execute, poll or cancel subject"),
        "{out}"
    );
    assert!(!out.contains(&format!("replay  {a} ")), "{out}");
    assert!(out.contains("2 message(s) would be replayed, 1 could not"), "{out}");
    assert_eq!(listed(&env, &[]).await, [a, b, c, d], "a dry run removes nothing");
    assert!(!system.pending_on(poll(b_run)).await, "a dry run publishes nothing");

    // Filters without --all, or a number with --all: refused.
    let (code, _, err) = command(&["dlq", "replay", &b.to_string(), "--reason", "x"], env.clone()).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = command(&["dlq", "replay", &b.to_string(), "--all"], env.clone()).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = command(
        &["dlq", "replay", "--all", "--subject", &format!("{PREFIX}.poll.*")],
        env.clone(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 message(s) replayed, 0 failed"), "{out}");
    assert!(system.pending_on(poll(b_run)).await && system.pending_on(poll(c_run)).await);
    assert_eq!(listed(&env, &[]).await, [a, d], "the replayed copies are gone");
    let (code, _, err) = command(&["dlq", "replay", &b.to_string()], env.clone()).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not in the DLQ"), "{err}");
    // Nothing left that matches: nothing replayed, exit 0.
    let (code, out, _) = command(
        &["dlq", "replay", "--all", "--subject", &format!("{PREFIX}.poll.*")],
        env.clone(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("0 message(s) replayed"), "{out}");
    // One that cannot be replayed fails the bulk replay (exit 1) and stays.
    let (code, out, _) = command(&["dlq", "replay", "--all", "--reason", "refused"], env.clone()).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(listed(&env, &[]).await, [a, d]);

    let (code, out, err) = command(&["dlq", "rm", &a.to_string()], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("DLQ message {a} removed")), "{out}");
    let (code, _, err) = command(&["dlq", "rm", &a.to_string()], env.clone()).await;
    assert_eq!(code, 1);
    assert!(err.contains("not in the DLQ"), "{err}");
    assert_eq!(listed(&env, &[]).await, [d]);

    // Purge by reason, then by age, then the rest.
    let e_run = Uuid::new_v4();
    let e = dlq_copy(
        &system,
        &poll(e_run),
        "kept for a while",
        serde_json::json!({ "runId": e_run }),
    )
    .await;
    let (code, out, err) = command(&["dlq", "purge", "--reason", "REFUSED"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 message(s) removed"), "{out}");
    assert_eq!(listed(&env, &[]).await, [e]);
    let stored = chrono::Utc::now();
    // Five seconds: the commands below all run before `f` is that old.
    tests::wait_for("the copy five seconds old", Duration::from_secs(15), || async {
        chrono::Utc::now() - stored > chrono::Duration::milliseconds(5100)
    })
    .await;
    let f_run = Uuid::new_v4();
    let f = dlq_copy(&system, &poll(f_run), "new", serde_json::json!({ "runId": f_run })).await;
    let (code, out, _) = command(&["dlq", "purge", "--older-than", "5s", "--dry-run"], env.clone()).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("would remove  {e} ")) && !out.contains(&format!("would remove  {f} ")),
        "{out}"
    );
    assert_eq!(listed(&env, &[]).await, [e, f], "a dry run removes nothing");
    let (code, _, err) = command(&["dlq", "purge", "--older-than", "1h"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&env, &[]).await, [e, f], "none is an hour old");
    let (code, _, err) = command(&["dlq", "purge", "--older-than", "5s"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&env, &[]).await, [f]);
    let (code, _, err) = command(&["dlq", "purge", "--older-than", "soon"], env.clone()).await;
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = command(&["dlq", "purge"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 message(s) removed"), "{out}");
    assert!(listed(&env, &[]).await.is_empty());
}

/// `migrate status` and `migrate --dry-run` list and change nothing; plain
/// `migrate` applies, without PostgreSQL's "already exists" notices.
#[test]
fn migrate_status_and_dry_run_list_and_apply_nothing() {
    use migration::MigratorTrait as _;
    let names: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let url = tests::fresh_database_url();
    let env = vec![("DATABASE_URL".to_string(), url.clone())];

    // Read-only: a database that does not exist is not made.
    let (code, _, err) = tests::run_command(&["migrate", "status"], &env, None);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    let (name, server) = {
        let (server, name) = url.rsplit_once('/').unwrap();
        (name.to_string(), server.to_string())
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sea_orm::ConnectionTrait as _;
        let admin = sea_orm::Database::connect(format!("{server}/postgres")).await.unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
    });

    let (code, out, err) = tests::run_command(&["migrate", "status"], &env, None);
    assert_eq!(code, 0, "{err}");
    for n in &names {
        assert!(out.contains(&format!("pending  {n}")), "{n}: {out}");
    }
    assert!(out.contains(&format!("0 applied, {} pending", names.len())), "{out}");
    let (code, out, err) = tests::run_command(&["migrate", "status", "-o", "json"], &env, None);
    assert_eq!(code, 0, "{err}");
    let status = json_of(&out);
    let listed: Vec<&str> = status
        .as_array()
        .unwrap_or_else(|| panic!("an array: {out}"))
        .iter()
        .map(|m| {
            assert!(m["applied"] == false && m["appliedAt"].is_null(), "{out}");
            m["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(listed, names, "{out}");
    let (code, out, err) = tests::run_command(&["migrate", "--dry-run"], &env, None);
    assert_eq!(code, 0, "{err}");
    for n in &names {
        assert!(out.contains(&format!("would apply  {n}")), "{n}: {out}");
    }
    assert!(out.contains("nothing was applied"), "{out}");
    let (_, out, _) = tests::run_command(&["migrate", "status"], &env, None);
    assert!(
        out.contains(&format!("0 applied, {} pending", names.len())),
        "the dry run applied nothing: {out}"
    );

    let (code, out, err) = tests::run_command(&["migrate"], &env, None);
    assert_eq!(code, 0, "{err}");
    let logs = format!("{out}{err}");
    assert!(logs.contains(&names[0]), "it logs what it applies: {logs}");
    assert!(!logs.contains("already exists"), "no notice noise: {logs}");
    let (code, out, err) = tests::run_command(&["migrate", "status"], &env, None);
    assert_eq!(code, 0, "{err}");
    for n in &names {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("applied  {n} "))),
            "{n}: {out}"
        );
    }
    assert!(out.contains(&format!("{} applied, 0 pending", names.len())), "{out}");
    table_times_are_rfc3339_utc(&out);
    let (code, out, err) = tests::run_command(&["migrate", "status", "-o", "json"], &env, None);
    assert_eq!(code, 0, "{err}");
    let status = json_of(&out);
    let migrations = status.as_array().unwrap_or_else(|| panic!("an array: {out}"));
    assert_eq!(migrations.len(), names.len(), "{out}");
    for (m, name) in migrations.iter().zip(&names) {
        assert_eq!(m["name"], name.as_str(), "{out}");
        assert!(m["applied"] == true && m["appliedAt"].is_string(), "{out}");
    }
    let (_, out, _) = tests::run_command(&["migrate", "--dry-run"], &env, None);
    assert!(out.contains("0 migration(s) would be applied"), "{out}");
    // Again: nothing to apply, and still no notice.
    let (code, out, err) = tests::run_command(&["migrate"], &env, None);
    assert_eq!(code, 0, "{err}");
    assert!(!format!("{out}{err}").contains("already exists"), "{out}{err}");
    let (code, _, err) = tests::run_command(&["migrate", "--dry-run", "status"], &env, None);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_system_and_names_what_fails() {
    let system = System::start().await;
    let tenant = system.tenant_id.to_string();
    let (code, out, err) = command(&["doctor", "--tenant", &tenant, "--mid", &system.mid], system.env()).await;
    assert_eq!(code, 0, "{out}{err}");
    for check in [
        "ok    settings",
        "ok    database",
        "ok    migrations",
        "ok    nats",
        "ok    stream SHELL_QUERY_JOBS",
        "ok    stream SHELL_QUERY_DLQ",
        "ok    consumer shell-query-poll",
        "ok    consumer shell-query-undeliverable",
        "ok    mce token",
    ] {
        assert!(out.contains(check), "{check:?} missing:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    let (code, out, err) = command(
        &["doctor", "--tenant", &tenant, "--mid", &system.mid, "-o", "json"],
        system.env(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let report = json_of(&out);
    assert_eq!(report["ok"], true, "{out}");
    assert_eq!(report["exitCode"], 0, "{out}");
    let checks = report["checks"].as_array().unwrap_or_else(|| panic!("checks: {out}"));
    let check = |checks: &[serde_json::Value], name: &str| -> serde_json::Value {
        checks
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    for name in [
        "settings",
        "database",
        "migrations",
        "nats",
        "stream SHELL_QUERY_DLQ",
        "consumer shell-query-poll",
        "mce token",
    ] {
        let c = check(checks, name);
        assert!(c["ok"] == true && c["detail"].is_string(), "{c}");
    }

    let mut broken: Vec<(String, String)> = system
        .env()
        .into_iter()
        .filter(|(k, _)| k != "DATABASE_URL" && k != "NATS_URL" && k != "MCE_CLIENT_ID")
        .collect();
    let closed = tests::free_port();
    broken.push((
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:{closed}/x"),
    ));
    broken.push(("NATS_URL".into(), format!("nats://127.0.0.1:{closed}")));
    let (code, out, _) = command(&["doctor", "--tenant", &tenant, "--mid", &system.mid], broken.clone()).await;
    assert_eq!(code, 2, "bad settings exit 2, every check still printed: {out}");
    for check in [
        "FAIL  settings: MCE_CLIENT_ID",
        "FAIL  database",
        "FAIL  nats",
        "FAIL  mce token",
    ] {
        assert!(out.contains(check), "{check:?} missing:\n{out}");
    }
    let (code, out, _) = command(
        &["doctor", "--tenant", &tenant, "--mid", &system.mid, "-o", "json"],
        broken.clone(),
    )
    .await;
    assert_eq!(code, 2, "the same exit codes with -o json: {out}");
    let report = json_of(&out);
    assert_eq!(report["ok"], false, "{out}");
    assert_eq!(report["exitCode"], 2, "{out}");
    let checks = report["checks"].as_array().unwrap();
    let settings = check(checks, "settings");
    assert!(
        settings["ok"] == false && settings["detail"].as_str().unwrap().contains("MCE_CLIENT_ID"),
        "{out}"
    );
    assert_eq!(check(checks, "database")["ok"], false, "{out}");
    // Credentials that do not exist: the token line fails, the rest passes.
    let (code, out, _) = command(&["doctor", "--tenant", &tenant, "--mid", "999"], system.env()).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  mce token") && out.contains("ok    database"),
        "{out}"
    );
}

/// The help says which commands create the database: the operators'
/// commands do not (a typo in its name is an error, not a new database).
#[test]
fn the_help_says_who_creates_the_database() {
    for command in [["runs", "list"], ["runs", "show"], ["runs", "cancel"]] {
        let (code, help, err) = tests::run_command(&[command[0], command[1], "--help"], &[], None);
        assert_eq!(code, 0, "{err}");
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!help.contains("created if missing"), "{command:?}: {help}");
        assert!(
            help.contains("`runs` and `doctor` need it to exist"),
            "{command:?}: {help}"
        );
    }
}

#[test]
fn config_print_shows_each_setting_its_source_and_no_secret() {
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", "postgres://shell:pa55word@db.internal:5432/shell_query"),
        ("ENCRYPTION_KEY", tests::ENCRYPTION_KEY),
        ("MCE_CLIENT_SECRET", "client-secret-value"),
        ("NATS_PASSWORD", "nats-password-value"),
        ("NATS_TOKEN", "nats-token-value"),
        ("NATS_URL", "nats://svc:url-pa55@n1:4222,nats://url-t0ken@n2:4222"),
        ("MCE_AUTH_BASE_URL", "https://auth.example/?secret_key=q-secret"),
        ("STREAM_REPLICAS", "3"),
        ("RUST_LOG", "warn,shell_query=debug"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otel:collector-pa55@collector:4318",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=otel-header-secret"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, out, err) = tests::run_command(&["config", "print", "--poll-max-count", "7"], &env, None);
    assert_eq!(code, 0, "{err}");
    for line in [
        "POLL_MAX_COUNT=7  (flag)",
        "STREAM_REPLICAS=3  (env)",
        "POLL_MAX_DELAY_MS=30000  (default)",
        "DATABASE_URL=postgres://***@db.internal:5432/shell_query  (env)",
        "ENCRYPTION_KEY=(set, hidden)  (env)",
        "MCE_CLIENT_SECRET=(set, hidden)  (env)",
        "MCE_CLIENT_ID=(unset)  (unset)",
        "NATS_URL=nats://***@n1:4222,nats://***@n2:4222  (env)",
        "NATS_TOKEN=(set, hidden)  (env)",
        "# NATS",
        "# Polling",
        // The log and trace settings, read from the environment only.
        "# Telemetry and logs (environment only)",
        "RUST_LOG=warn,shell_query=debug  (env)",
        "OTEL_EXPORTER_OTLP_ENDPOINT=https://***@collector:4318/  (env)",
        "OTEL_EXPORTER_OTLP_HEADERS=(set, hidden)  (env)",
        "OTEL_TRACES_SAMPLER=always_on  (env)",
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf  (default)",
        "OTEL_SDK_DISABLED=false  (default)",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    for secret in [
        "pa55word",
        tests::ENCRYPTION_KEY,
        "client-secret-value",
        "nats-password-value",
        "collector-pa55",
        "otel-header-secret",
    ] {
        assert!(!out.contains(secret), "{secret} shown");
    }
    let (code, json_out, err) =
        tests::run_command(&["config", "print", "--poll-max-count", "7", "-o", "json"], &env, None);
    assert_eq!(code, 0, "{err}");
    let settings = json_of(&json_out);
    let setting = |name: &str| -> (serde_json::Value, String) {
        let s = settings
            .as_array()
            .unwrap_or_else(|| panic!("an array: {json_out}"))
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {json_out}"));
        (s["value"].clone(), s["source"].as_str().unwrap().to_string())
    };
    for (name, value, source) in [
        ("POLL_MAX_COUNT", serde_json::json!("7"), "flag"),
        ("STREAM_REPLICAS", serde_json::json!("3"), "env"),
        ("POLL_MAX_DELAY_MS", serde_json::json!("30000"), "default"),
        (
            "DATABASE_URL",
            serde_json::json!("postgres://***@db.internal:5432/shell_query"),
            "env",
        ),
        ("ENCRYPTION_KEY", serde_json::json!("(set, hidden)"), "env"),
        ("MCE_CLIENT_SECRET", serde_json::json!("(set, hidden)"), "env"),
        ("MCE_CLIENT_ID", serde_json::Value::Null, "unset"),
        ("NATS_TOKEN", serde_json::json!("(set, hidden)"), "env"),
        ("RUST_LOG", serde_json::json!("warn,shell_query=debug"), "env"),
        ("OTEL_EXPORTER_OTLP_HEADERS", serde_json::json!("(set, hidden)"), "env"),
    ] {
        assert_eq!(setting(name), (value, source.to_string()), "{name}");
    }
    for secret in [
        "pa55word",
        tests::ENCRYPTION_KEY,
        "client-secret-value",
        "nats-password-value",
        "collector-pa55",
        "otel-header-secret",
    ] {
        assert!(!json_out.contains(secret), "{secret} shown in JSON");
    }
    // Every setting `run` reads is printed.
    let (_, help, _) = tests::run_command(&["run", "--help"], &[], None);
    for name in help.split("[env: ").skip(1).filter_map(|r| r.split(['=', ']']).next()) {
        assert!(
            out.contains(&format!("\n{name}=")) || out.starts_with(&format!("{name}=")),
            "{name} missing"
        );
    }
}

/// The latency metrics measure what happens: ticks, MCE calls, lateness,
/// the delay from a finished query to its run being ready, the jobs' last
/// success and the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_measure_ticks_calls_lateness_and_detection() {
    let system = System::start_with(&[
        ("RECONCILER_INTERVAL_MS", "1000"),
        ("SWEEPER_INTERVAL_MS", "1000"),
        // Rowset checks for about 27 s (200 ms doubling to 1 s, 30 times).
        ("POLL_ROWSET_READY_MAX_ATTEMPTS", "30"),
    ])
    .await;
    system.sim.script(
        "Late",
        Scenario {
            // Well past the tests' longest poll delay (2 s), so that even a
            // late tick that sees the query complete finds its rows not
            // ready; well inside the rowset checks' 27 s, so the run is ready.
            rowset_delay: Duration::from_secs(6),
            ..Scenario::completes_after(Duration::from_secs(2), 3)
        },
    );
    let id = system.submit("SELECT Email FROM Late", None).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    let worker = system.worker.as_ref().unwrap();
    // The run is ready as soon as its last tick publishes so; the tick's
    // duration is measured after it has also deleted the QueryDefinition.
    let settled = |t: &str| {
        t.contains("shell_query_sweeper_last_success_timestamp_seconds ")
            && t.contains("shell_query_reconciler_last_success_timestamp_seconds ")
            && tests::metric_value(t, "shell_query_poll_ticks_total ")
                == tests::metric_value(t, "shell_query_poll_tick_duration_seconds_count ")
    };
    tests::wait_for(
        "the jobs' first passes and the last tick's end",
        Duration::from_secs(30),
        || async { settled(&worker.http_get("/metrics").await.unwrap_or_default()) },
    )
    .await;
    let text = worker.http_get("/metrics").await.unwrap();
    let value = |prefix: &str| -> f64 {
        tests::metric_value(&text, prefix).unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
    };
    let ticks = value("shell_query_poll_ticks_total ");
    assert!(ticks >= 3.0, "{ticks}");
    // Every tick but the first of the run follows one that ran here.
    assert_eq!(value("shell_query_poll_tick_lateness_seconds_count "), ticks - 1.0);
    assert!(value("shell_query_poll_tick_lateness_seconds_sum ") < ticks * 5.0);
    let status_checks = value("shell_query_mce_call_duration_seconds_count{operation=\"async_status\"} ");
    assert!(status_checks >= 1.0);
    assert_eq!(
        status_checks,
        value("shell_query_mce_calls_total{operation=\"async_status\",result=\"ok\"} ")
    );
    // The rowset was not readable at first: the delay is known and about
    // the simulator's rowset delay.
    assert_eq!(value("shell_query_detection_delay_seconds_count "), 1.0);
    let delay = value("shell_query_detection_delay_seconds_sum ");
    assert!((0.5..30.0).contains(&delay), "{delay}");
    assert_eq!(
        value(&format!(
            "shell_query_build_info{{version=\"{}\"}} ",
            service::adapters::telemetry::VERSION
        )),
        1.0
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - value("shell_query_reconciler_last_success_timestamp_seconds ")).abs() < 60.0);
    assert_eq!(value("shell_query_dlq_messages_total{consumer=\"execute\"} "), 0.0);
    assert!(value("process_resident_memory_bytes ") > 1e6);
    assert!(value("process_start_time_seconds ") <= now);
}

/// `runs retry`: a failed run runs again under a new runId that names the
/// old one; a run that has not failed is refused, and so is an Append run
/// whose Perform may have been sent, unless --force. `runs list` filters by
/// age; `runs stats` counts by status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_retried_counted_and_filtered_by_age() {
    let system = System::start().await;
    let env = as_admin(&system);
    let failed = system.insert_queued_run("SELECT Email FROM Quick", &[]).await;
    system
        .execute_sql(format!(
            "UPDATE shell_query_runs SET status = 'failed', completed_at = now(), created_at = now() - interval '2 hours' WHERE id = '{failed}'"
        ))
        .await;

    let (code, out, err) = command(&["runs", "retry", &failed.to_string()], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let retry: Uuid = out
        .split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the new run's id: {out}"));
    assert!(out.contains(&format!("retries run {failed}")), "{out}");
    let run = system.wait_terminal(retry, Duration::from_secs(60)).await;
    assert_eq!(run.status, "ready", "{}", system.log());
    assert_eq!(run.retry_of, Some(failed));
    let (_, out, _) = command(&["runs", "show", &retry.to_string()], env.clone()).await;
    assert!(out.contains(&format!("retry of          {failed}")), "{out}");

    let (code, _, err) = command(&["runs", "retry", &retry.to_string()], env.clone()).await;
    assert_eq!(code, 1);
    assert!(err.contains("only a failed or canceled run"), "{err}");

    let append = system
        .insert_queued_run(
            "SELECT Email FROM Quick",
            &[
                ("target_de_customer_key", "'Target'"),
                ("target_update_type", "'Append'"),
                ("perform_requested_at", "now()"),
            ],
        )
        .await;
    system
        .execute_sql(format!(
            "UPDATE shell_query_runs SET status = 'failed', completed_at = now() WHERE id = '{append}'"
        ))
        .await;
    let (code, _, err) = command(&["runs", "retry", &append.to_string()], env.clone()).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force") && err.contains("twice"), "{err}");
    assert_eq!(
        system.run(append).await.unwrap().status,
        "failed",
        "refused: nothing changed"
    );
    let (code, out, err) = command(&["runs", "retry", &append.to_string(), "--force"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let forced: Uuid = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let forced_row = system.run(forced).await.expect("the forced retry's row");
    assert_eq!(forced_row.retry_of, Some(append));
    assert_eq!(forced_row.target_de_customer_key.as_deref(), Some("Target"));
    assert_eq!(forced_row.target_update_type.as_deref(), Some("Append"));

    let (code, out, err) = command(&["runs", "list", "--older-than", "1h"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&failed.to_string()) && !out.contains(&retry.to_string()),
        "{out}"
    );
    let (_, out, _) = command(&["runs", "list", "--since", "30m"], env.clone()).await;
    assert!(
        out.contains(&retry.to_string()) && !out.contains(&failed.to_string()),
        "{out}"
    );
    let (code, _, err) = command(&["runs", "list", "--since", "yesterday"], env.clone()).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = command(&["runs", "stats"], env.clone()).await;
    assert_eq!(code, 0, "{err}");
    let count = |status: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(status))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{status}: {out}"))
    };
    assert!(count("failed") >= 1 && count("ready") >= 1, "{out}");
    assert!(out.contains("oldest running:"), "{out}");
}

/// The system's settings, connecting to NATS as `user`.
fn as_user(system: &System, user: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = system
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("NATS_USER") && k != "NATS_PASSWORD" && k != "NATS_INBOX_PREFIX")
        .collect();
    env.push(("NATS_USER".into(), user.into()));
    env.push(("NATS_PASSWORD".into(), system.nats.password(user).into()));
    env.push(("NATS_INBOX_PREFIX".into(), format!("_INBOX.{user}")));
    env
}

/// A right the NATS user lacks is reported at once, naming the user and
/// what the server refused, instead of a request timing out: `doctor` as
/// the API user lists the streams and consumers it may not read (each
/// request would otherwise wait 5 s), and `dlq show` as the service user
/// fails naming its user and the DLQ. No error says the same thing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_nats_right_is_named_at_once() {
    let system = System::start().await;
    let started = std::time::Instant::now();
    let (code, out, err) = command(&["doctor"], as_user(&system, tests::API_USER)).await;
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ok    database"), "{out}");
    for refused in [
        "FAIL  stream SHELL_QUERY_JOBS: NATS user shell_query_api is not allowed this",
        "$JS.API.STREAM.INFO.SHELL_QUERY_JOBS",
        "FAIL  consumer shell-query-poll: NATS user shell_query_api",
    ] {
        assert!(out.contains(refused), "{refused:?} missing:\n{out}");
    }
    // Nine refused requests answered by the server at once, not nine
    // 5-second timeouts.
    assert!(took < std::time::Duration::from_secs(5), "doctor took {took:?}:\n{out}");
    assert!(!out.contains("timed out"), "{out}");

    let started = std::time::Instant::now();
    let (code, out, err) = command(&["dlq", "show", "1"], as_user(&system, tests::SERVICE_USER)).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("NATS user shell_query_service is not allowed")
            && err.contains("SHELL_QUERY_DLQ")
            && err.contains("shell_query_admin"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{err}");
    for line in err.lines() {
        let parts: Vec<&str> = line.split(": ").collect();
        for (i, part) in parts.iter().enumerate() {
            assert!(!parts[i + 1..].contains(part), "{part:?} repeats itself: {line}");
        }
    }
}
