//! The store's statements on both databases it supports: PostgreSQL (the
//! service) and SQLite (the demo's embedded database).

use chrono::Utc;
use service::adapters::store::runs::{self, NewRun, Started, Terminal};
use service::adapters::store::{self, Store, credentials, folders, tenants};
use shell_query_core::run::{Run, RunStatus, StartPhase, Task};
use tests::{TempDir, fresh_database_url};
use uuid::Uuid;

fn new_run(id: Uuid, tenant: Uuid) -> NewRun {
    NewRun {
        id,
        tenant_id: tenant,
        user_id: Some(Uuid::new_v4()),
        mid: "510000123".into(),
        snippet_name: None,
        sql_text_hash: "ab".repeat(32),
        sql_text_encrypted: Some("enc".into()),
        target_de_customer_key: None,
        target_update_type: None,
    }
}

async fn exercise(url: &str) {
    store::migrate(url).await.unwrap();
    store::migrate(url).await.expect("migrating twice is a no-op");
    let db: Store = store::connect(url, 2).await.unwrap();
    let (tenant, run_id, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());

    tenants::upsert_tenant(&db, tenant, "5000001", "mc-one").await.unwrap();
    tenants::upsert_tenant(&db, tenant, "5000001", "mc-two")
        .await
        .expect("upsert updates");
    let user = Uuid::new_v4();
    credentials::upsert_credentials(&db, tenant, user, "510000123", "rt1".into(), now)
        .await
        .unwrap();
    credentials::upsert_credentials(&db, tenant, user, "510000123", "rt2".into(), now)
        .await
        .unwrap();

    runs::insert_run_if_absent(&db, new_run(run_id, tenant), now)
        .await
        .unwrap();
    runs::insert_run_if_absent(&db, new_run(run_id, tenant), now)
        .await
        .expect("a second insert is ignored");
    let run = runs::get_run(&db, run_id).await.unwrap().unwrap();
    assert_eq!((run.status, &run.start), (RunStatus::Queued, &StartPhase::NotRequested));

    assert!(runs::mark_running(&db, run_id, now).await.unwrap());
    assert!(!runs::mark_running(&db, run_id, now).await.unwrap(), "only from queued");
    let started = Started {
        task_id: "10684".into(),
        query_definition_id: "qd".into(),
        query_customer_key: "QPP_Q_x".into(),
        target_de_customer_key: "QPP_R_x".into(),
        poll_started_at: now,
    };
    assert!(runs::record_started(&db, run_id, &started).await.unwrap());
    let run = runs::get_run(&db, run_id).await.unwrap().unwrap();
    let for_poll = runs::get_run_for_poll(&db, run_id).await.unwrap().unwrap();
    assert_eq!(run.start, StartPhase::Started(Task::Known("10684".into())));
    assert_eq!(run.sql_text_encrypted.as_deref(), Some("enc"));
    assert_eq!(for_poll.sql_text_encrypted, None, "a tick never loads the SQL text");
    assert_eq!(
        Run {
            sql_text_encrypted: None,
            ..run.clone()
        },
        for_poll,
        "everything else is the row"
    );
    let mut state = run.poll_state(3, now);
    assert_eq!(state.poll_count, 3);
    state.rowset_attempts = 2;
    state.last_status = Some("queued".into());
    assert!(runs::save_poll_state(&db, run_id, &state).await.unwrap());
    let run = runs::get_run(&db, run_id).await.unwrap().unwrap();
    assert_eq!((run.poll.poll_count, run.poll.rowset_attempts), (3, 2));
    assert_eq!(
        run.poll_state(1, now).poll_count,
        4,
        "the row's count wins over a reset delivery count"
    );

    assert!(
        runs::finish(&db, run_id, Terminal::Ready { row_count: 7 }, now)
            .await
            .unwrap()
    );
    assert!(
        !runs::finish(&db, run_id, Terminal::Canceled, now).await.unwrap(),
        "a terminal row stays terminal"
    );
    let run = runs::get_run(&db, run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.row_count), (RunStatus::Ready, Some(7)));
    assert!(!runs::save_poll_state(&db, run_id, &state).await.unwrap());

    assert_eq!(folders::folder_id(&db, tenant, "510000123").await.unwrap(), None);
    folders::save_folder_id(&db, tenant, "510000123", 4242).await.unwrap();
    folders::save_folder_id(&db, tenant, "510000123", 4343).await.unwrap();
    assert_eq!(folders::folder_id(&db, tenant, "510000123").await.unwrap(), Some(4343));

    // The status CHECK constraint holds on both databases.
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(url).await.unwrap();
    let bad = db
        .execute_unprepared(&format!(
            "UPDATE shell_query_runs SET status = 'done' WHERE id = '{run_id}'"
        ))
        .await;
    let bad_sqlite = db
        .execute_unprepared("UPDATE shell_query_runs SET status = 'done'")
        .await;
    assert!(
        bad.is_err() || bad_sqlite.is_err(),
        "status outside the CHECK list is refused"
    );
}

#[tokio::test]
async fn store_on_postgres() {
    exercise(&fresh_database_url()).await;
}

#[tokio::test]
async fn store_on_sqlite() {
    let dir = TempDir::new("sqlite");
    exercise(&format!("sqlite://{}?mode=rwc", dir.0.join("demo.db").display())).await;
}

/// Poll ticks due together read their rows with one statement, each tick
/// gets its own row (a run asked twice gets it twice, an unknown run none),
/// on both databases.
async fn rows_read_together(url: &str) {
    store::migrate(url).await.unwrap();
    let db = store::connect(url, 2).await.unwrap();
    let (tenant, now) = (Uuid::new_v4(), Utc::now());
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = Uuid::new_v4();
        let mut run = new_run(id, tenant);
        run.mid = format!("51{i:07}");
        runs::insert_run_if_absent(&db, run, now).await.unwrap();
        ids.push(id);
    }
    let unknown = Uuid::new_v4();
    let mut asked = ids.clone();
    asked.push(ids[7]);
    asked.push(unknown);
    let before = db.poll_row_statements();
    let rows = futures::future::join_all(asked.iter().map(|id| runs::get_run_for_poll(&db, *id))).await;
    let statements = db.poll_row_statements() - before;
    assert!(statements <= 2, "42 reads due together took {statements} statements");
    for (id, row) in asked.iter().zip(rows) {
        let row = row.unwrap();
        if *id == unknown {
            assert!(row.is_none());
            continue;
        }
        let row = row.expect("a known run's row");
        let i = ids.iter().position(|x| x == id).unwrap();
        assert_eq!((row.id, row.account.mid.as_str()), (*id, format!("51{i:07}").as_str()));
        assert_eq!(row.sql_text_encrypted, None, "a tick never loads the SQL text");
    }
    // A lone tick, after its window, reads its row alone.
    let before = db.poll_row_statements();
    assert!(runs::get_run_for_poll(&db, ids[0]).await.unwrap().is_some());
    assert_eq!(db.poll_row_statements() - before, 1);
}

#[tokio::test]
async fn poll_rows_due_together_share_a_statement_on_postgres() {
    rows_read_together(&fresh_database_url()).await;
}

#[tokio::test]
async fn poll_rows_due_together_share_a_statement_on_sqlite() {
    let dir = TempDir::new("sqlite-batch");
    rows_read_together(&format!("sqlite://{}?mode=rwc", dir.0.join("demo.db").display())).await;
}

/// A reconciler pass walks every stale live run, page by page, however many
/// are in flight (two runs may share a creation time).
#[tokio::test]
async fn stale_runs_page_through_every_live_run() {
    let url = fresh_database_url();
    store::migrate(&url).await.unwrap();
    let db = store::connect(&url, 2).await.unwrap();
    let tenant = Uuid::new_v4();
    let start = Utc::now() - chrono::Duration::hours(1);
    let mut ids = Vec::new();
    for i in 0..(runs::PAGE + 5) {
        let id = Uuid::new_v4();
        // Pairs of runs share a creation time.
        let created = start + chrono::Duration::milliseconds((i / 2) as i64);
        runs::insert_run_if_absent(&db, new_run(id, tenant), created)
            .await
            .unwrap();
        ids.push(id);
    }
    let ended = ids[3];
    assert!(runs::finish(&db, ended, Terminal::Canceled, Utc::now()).await.unwrap());

    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = runs::stale_runs(&db, Utc::now(), after).await.unwrap();
        pages += 1;
        after = page.last().map(|r| (r.created_at, r.id));
        let full = page.len() == runs::PAGE;
        seen.extend(page.into_iter().map(|r| r.id));
        if !full {
            break;
        }
    }
    assert_eq!(pages, 2);
    let mut want: Vec<Uuid> = ids.into_iter().filter(|id| *id != ended).collect();
    want.sort();
    let mut got = seen.clone();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), seen.len(), "no run twice");
    assert_eq!(got, want, "every live run, the ended one left out");
}

/// On a database with history, the migrations that add the service's
/// markers mark only what ended in the last 24 hours (their events went
/// out the old way); the service settles nothing older.
#[tokio::test]
async fn the_marker_migrations_mark_only_recent_history() {
    use migration::MigratorTrait;
    use sea_orm::ConnectionTrait;
    let url = fresh_database_url();
    store::connect(&url, 1).await.unwrap(); // creates the database
    let raw = sea_orm::Database::connect(&url).await.unwrap();
    // Every migration before the two markers.
    let before = migration::Migrator::migrations()
        .iter()
        .position(|m| m.name().contains("terminal_event_confirmed"))
        .expect("the first marker migration");
    migration::Migrator::up(&raw, Some(before as u32)).await.unwrap();
    let tenant = Uuid::new_v4();
    let rows = [
        ("recent_ready", "ready", "now() - interval '1 hour'"),
        ("old_ready", "ready", "now() - interval '3 days'"),
        ("recent_cancel", "canceled", "now() - interval '1 hour'"),
        ("live", "running", "NULL"),
    ];
    let mut ids = std::collections::HashMap::new();
    for (name, status, completed) in rows {
        let id = Uuid::new_v4();
        raw.execute_unprepared(&format!(
            "INSERT INTO shell_query_runs (id, tenant_id, mid, sql_text_hash, status, completed_at) VALUES ('{id}', '{tenant}', '1', 'h', '{status}', {completed})"
        ))
        .await
        .unwrap();
        ids.insert(name, id);
    }
    store::migrate(&url).await.unwrap();
    let db = store::connect(&url, 1).await.unwrap();
    let run = |name: &'static str| {
        let (db, id) = (db.clone(), ids[name]);
        async move { runs::get_run(&db, id).await.unwrap().unwrap() }
    };
    assert!(run("recent_ready").await.terminal_event_at.is_some());
    assert!(
        run("old_ready").await.terminal_event_at.is_none(),
        "outside the window: left alone"
    );
    let cancel = run("recent_cancel").await;
    assert!(cancel.cancel_handled_at.is_some() && cancel.terminal_event_at.is_some());
    let live = run("live").await;
    assert!(live.terminal_event_at.is_none() && live.cancel_handled_at.is_none());
    assert!(
        runs::runs_owing_an_event(&db, Utc::now()).await.unwrap().is_empty(),
        "nothing of the history is owed"
    );
}
