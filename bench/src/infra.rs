//! What the live benchmarks run on: a private nats-server with the
//! project's nats.conf, a fresh PostgreSQL database, the simulator in this
//! process, a tenant with credentials, and the release `shell-query-worker`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use mce_sim::{Sim, SimConfig};
use service::app::config::{Cli, Command, PollConfig};
use tests::{ENCRYPTION_KEY, NatsServer, Worker, fresh_database_url, run_command};
use uuid::Uuid;

pub const PREFIX: &str = "shell_query";
const REFRESH_TOKEN: &str = "rt-bench";

/// The poll configuration `run` gets with every setting at its default.
pub fn default_poll_config() -> anyhow::Result<PollConfig> {
    let cli = <Cli as clap::Parser>::try_parse_from(["shell-query-worker", "run"])?;
    let Command::Run(run) = cli.command else {
        anyhow::bail!("`run` parses as run");
    };
    run.poll.to_config().map_err(|e| anyhow::anyhow!("{e}"))
}

pub struct Bench {
    pub nats: NatsServer,
    pub sim: Sim,
    pub database_url: String,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub mid: String,
    pub db: sea_orm::DatabaseConnection,
    pub worker: Option<Worker>,
    /// More replicas beside `worker` (`realistic --replicas`).
    pub others: Vec<Worker>,
}

/// The release worker next to this binary, unless `SHELL_QUERY_WORKER_BIN`
/// names another (an older build, measured side by side with this one).
fn use_release_worker() -> anyhow::Result<()> {
    if let Some(bin) = std::env::var_os("SHELL_QUERY_WORKER_BIN") {
        let bin = std::path::Path::new(&bin);
        anyhow::ensure!(bin.exists(), "SHELL_QUERY_WORKER_BIN: {} is missing", bin.display());
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("shell-query-worker");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p service -p bench` first",
        bin.display()
    );
    // SAFETY: set once at start, before any thread reads the environment.
    unsafe { std::env::set_var("SHELL_QUERY_WORKER_BIN", &bin) };
    Ok(())
}

impl Bench {
    pub async fn start(sim: SimConfig) -> anyhow::Result<Bench> {
        use_release_worker()?;
        let nats = NatsServer::start().await;
        let sim = Sim::start(sim).await?;
        sim.add_refresh_token(REFRESH_TOKEN);
        let mut bench = Bench {
            nats,
            sim,
            database_url: fresh_database_url(),
            tenant_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            mid: "510000123".into(),
            db: sea_orm::DatabaseConnection::default(),
            worker: None,
            others: Vec::new(),
        };
        let env = bench.env(&[]);
        let (code, _, err) = run_command(&["migrate"], &env, None);
        anyhow::ensure!(code == 0, "migrate: {err}");
        let (tenant, user) = (bench.tenant_id.to_string(), bench.user_id.to_string());
        let (code, _, err) = run_command(
            &[
                "tenant",
                "upsert",
                "--tenant-id",
                &tenant,
                "--eid",
                "500000001",
                "--tssd",
                "bench",
            ],
            &env,
            None,
        );
        anyhow::ensure!(code == 0, "tenant upsert: {err}");
        let (code, _, err) = run_command(
            &[
                "credentials",
                "upsert",
                "--tenant-id",
                &tenant,
                "--user-id",
                &user,
                "--mid",
                &bench.mid,
                "--refresh-token-stdin",
            ],
            &env,
            Some(REFRESH_TOKEN),
        );
        anyhow::ensure!(code == 0, "credentials upsert: {err}");
        // Raw statements (bulk inserts of runs) go straight to the database.
        let mut options = sea_orm::ConnectOptions::new(bench.database_url.clone());
        options.max_connections(4).sqlx_logging(false);
        bench.db = sea_orm::Database::connect(options).await?;
        Ok(bench)
    }

    /// Another tenant with its own business unit and credentials:
    /// `(tenant, user, mid)`.
    pub fn add_tenant(&self, mid: &str) -> anyhow::Result<(Uuid, Uuid, String)> {
        tests::add_tenant(&self.env(&[]), &self.sim, mid).map_err(anyhow::Error::msg)
    }

    /// A counter or gauge of the workers' `/metrics`, summed over the
    /// replicas (0 when absent).
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let mut sum = 0.0;
        for worker in self.workers() {
            sum += worker.metric(line_prefix).await.unwrap_or(0.0);
        }
        sum
    }

    /// Every running replica, the first one first.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.worker.iter().chain(&self.others)
    }

    pub fn env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", self.database_url.clone()),
            ("NATS_URL", self.nats.url()),
            ("NATS_USER", tests::SERVICE_USER.to_string()),
            ("NATS_PASSWORD", self.nats.service_password.clone()),
            ("ENCRYPTION_KEY", ENCRYPTION_KEY.to_string()),
            ("MCE_CLIENT_ID", "bench-client".to_string()),
            ("MCE_CLIENT_SECRET", "bench-secret".to_string()),
            ("MCE_AUTH_BASE_URL", self.sim.url()),
            ("MCE_SOAP_BASE_URL", self.sim.url()),
            ("MCE_REST_BASE_URL", self.sim.url()),
            ("MCE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        // Experiments: `WORKER_X=v` in the bench's environment sets the
        // worker's `X` (after the mode's own settings, so it wins).
        env.extend(std::env::vars().filter_map(|(k, v)| Some((k.strip_prefix("WORKER_")?.to_string(), v))));
        env
    }

    pub async fn start_worker(&mut self, extra: &[(&str, String)]) {
        let mut env = self.env(extra);
        // The production default: info, not the tests' debug.
        env.push(("RUST_LOG".into(), "info".into()));
        self.worker = Some(Worker::start(&env).await);
    }

    /// `n` replicas on the same nats-server and database (the first as
    /// [`Bench::start_worker`]).
    pub async fn start_workers(&mut self, n: usize, extra: &[(&str, String)]) {
        self.start_worker(extra).await;
        let mut env = self.env(extra);
        env.push(("RUST_LOG".into(), "info".into()));
        for _ in 1..n {
            self.others.push(Worker::start(&env).await);
        }
    }

    pub fn worker(&self) -> &Worker {
        self.worker.as_ref().expect("a running worker")
    }

    /// Poll deliveries the worker has handled.
    pub async fn ticks(&self) -> u64 {
        self.metric("shell_query_poll_ticks_total ").await as u64
    }

    /// Waits until `check` holds, up to `timeout`.
    pub async fn wait<F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or(&stat);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}
