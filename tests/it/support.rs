//! A whole system for one test: nats-server, a fresh database, the simulator,
//! a tenant with credentials, and a running worker.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use futures::StreamExt;
use mce_sim::{Sim, SimConfig};
use sea_orm::{Database, DatabaseConnection, EntityTrait};
use service::adapters::crypto::Cipher;
use shell_query_core::event::StatusEvent;
use tests::{ENCRYPTION_KEY, NatsServer, Worker, fresh_database_url, run_command, wait_for};
use uuid::Uuid;

pub const PREFIX: &str = "shell_query";

/// The statuses of a run's events, in order.
/// One message of the DLQ stream.
pub struct DlqCopy {
    pub subject: String,
    pub reason: String,
    /// How the copy was redacted, if it was.
    pub redacted: Option<String>,
    /// The DLQ sequence of the copy it was replayed from, if it was.
    pub replayed_from: Option<String>,
    pub payload: String,
}

pub fn statuses(events: &[StatusEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.status.as_str()).collect()
}
pub const REFRESH_TOKEN: &str = "rt-seed-token";

/// Runs a NATS operation of the test's own client until it succeeds, for
/// up to 30 s: while a cluster moves a stream's leader, requests time out
/// or find no responder for a moment, and a client (the API; here, the
/// test) tries again.
pub async fn retrying<T, E, F, Fut>(what: &str, mut op: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{what}: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Publishes to the jobs stream under a message id and waits for the
/// stream's acknowledgement, trying again (the id makes a repeat a no-op).
pub async fn publish_acked(js: &jetstream::Context, subject: String, body: String, msg_id: String) {
    retrying(&format!("publishing to {subject}"), || async {
        let publish = PublishMessage::build()
            .payload(body.clone().into())
            .message_id(msg_id.clone());
        js.send_publish(subject.clone(), publish)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Every message a fresh ephemeral consumer (filtered or not) finds on a
/// stream: as many as the consumer counted pending when it was made.
pub async fn read_all(
    js: &jetstream::Context,
    stream: &str,
    filter: Option<String>,
) -> Vec<async_nats::jetstream::Message> {
    retrying(&format!("reading {stream}"), || async {
        let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.clone().unwrap_or_default(),
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let expected = consumer.info().await.map_err(|e| e.to_string())?.num_pending as usize;
        let mut out = Vec::new();
        while out.len() < expected {
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let before = out.len();
            while let Some(Ok(msg)) = batch.next().await {
                out.push(msg);
            }
            if out.len() == before {
                return Err(format!("{} of {expected} messages read", out.len()));
            }
        }
        Ok::<_, String>(out)
    })
    .await
}

/// The URLs of a server and its peers, comma-separated (NATS_URL).
fn urls(first: &NatsServer, peers: &[NatsServer]) -> String {
    std::iter::once(first)
        .chain(peers)
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

pub struct System {
    pub nats: NatsServer,
    /// The other servers of a cluster (none for one server).
    pub peers: Vec<NatsServer>,
    pub sim: Sim,
    pub database_url: String,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub mid: String,
    pub js: jetstream::Context,
    pub db: DatabaseConnection,
    pub worker: Option<Worker>,
    /// Settings for the worker beyond `env()`.
    pub extra: Vec<(String, String)>,
}

impl System {
    /// The environment of every command: connection settings, keys, MCE
    /// pointed at the simulator, and a quick poll schedule.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.clone()),
            ("NATS_URL", self.nats_urls()),
            ("NATS_USER", tests::SERVICE_USER.to_string()),
            ("NATS_PASSWORD", self.nats.service_password.clone()),
            ("ENCRYPTION_KEY", ENCRYPTION_KEY.to_string()),
            ("MCE_CLIENT_ID", "test-client".to_string()),
            ("MCE_CLIENT_SECRET", "test-secret".to_string()),
            ("MCE_AUTH_BASE_URL", self.sim.url()),
            ("MCE_SOAP_BASE_URL", self.sim.url()),
            ("MCE_REST_BASE_URL", self.sim.url()),
            ("MCE_ALLOW_HTTP", "true".to_string()),
            ("POLL_INITIAL_DELAY_MS", "300".to_string()),
            ("POLL_MAX_DELAY_MS", "2000".to_string()),
            ("POLL_ROWSET_READY_INITIAL_DELAY_MS", "200".to_string()),
            ("POLL_ROWSET_READY_MAX_DELAY_MS", "1000".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.nats.tls().into_iter().flat_map(|tls| {
            [
                ("NATS_TLS_CA", &tls.ca),
                ("NATS_TLS_CERT", &tls.client_cert),
                ("NATS_TLS_KEY", &tls.client_key),
            ]
            .map(|(k, path)| (k.to_string(), path.display().to_string()))
        }))
        .collect()
    }

    pub async fn start() -> System {
        Self::start_with(&[]).await
    }

    /// Starts with extra settings for the worker (they win over the defaults).
    pub async fn start_with(extra: &[(&str, &str)]) -> System {
        Self::start_with_sim(SimConfig::default(), extra).await
    }

    /// Starts with a configured simulator and extra worker settings.
    pub async fn start_with_sim(config: SimConfig, extra: &[(&str, &str)]) -> System {
        Self::start_on(vec![NatsServer::start().await], config, extra).await
    }

    /// Starts on a three-server cluster, the streams at three replicas.
    pub async fn start_clustered(extra: &[(&str, &str)]) -> System {
        let mut settings = vec![("STREAM_REPLICAS", "3")];
        settings.extend_from_slice(extra);
        Self::start_on(NatsServer::start_cluster(3).await, SimConfig::default(), &settings).await
    }

    /// Every server's URL, comma-separated (NATS_URL).
    pub fn nats_urls(&self) -> String {
        urls(&self.nats, &self.peers)
    }

    /// Starts on the given servers (the first, then its peers).
    pub async fn start_on(servers: Vec<NatsServer>, config: SimConfig, extra: &[(&str, &str)]) -> System {
        let mut servers = servers.into_iter();
        let nats = servers.next().expect("at least one server");
        let peers: Vec<NatsServer> = servers.collect();
        let admin = nats
            .connect_as_to(tests::ADMIN_USER, &urls(&nats, &peers))
            .await
            .expect("connecting to nats as admin");
        let sim = Sim::start(config).await.expect("starting the simulator");
        sim.add_refresh_token(REFRESH_TOKEN);
        let mut system = System {
            js: jetstream::new(admin),
            nats,
            peers,
            sim,
            database_url: fresh_database_url(),
            tenant_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            mid: "510000123".into(),
            db: DatabaseConnection::default(),
            worker: None,
            extra: Vec::new(),
        };
        let env = system.env();
        let (code, _, err) = run_command(&["migrate"], &env, None);
        assert_eq!(code, 0, "migrate failed: {err}");
        let tenant = system.tenant_id.to_string();
        let eid = format!("5000{}", &system.tenant_id.simple().to_string()[..6]);
        let (code, _, err) = run_command(
            &[
                "tenant",
                "upsert",
                "--tenant-id",
                &tenant,
                "--eid",
                &eid,
                "--tssd",
                "mc-test-tenant",
            ],
            &env,
            None,
        );
        assert_eq!(code, 0, "tenant upsert failed: {err}");
        let user = system.user_id.to_string();
        let (code, _, err) = run_command(
            &[
                "credentials",
                "upsert",
                "--tenant-id",
                &tenant,
                "--user-id",
                &user,
                "--mid",
                &system.mid,
                "--refresh-token-stdin",
            ],
            &env,
            Some(REFRESH_TOKEN),
        );
        assert_eq!(code, 0, "credentials upsert failed: {err}");
        system.db = Database::connect(&system.database_url)
            .await
            .expect("connecting to the test database");
        system.extra = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        system.start_worker().await;
        system
    }

    /// (Re)starts the worker with this system's settings.
    pub async fn start_worker(&mut self) {
        let mut env = self.env();
        env.extend(self.extra.iter().cloned());
        self.worker = Some(Worker::start(&env).await);
    }

    /// A request to the `shell-query` service: `Ok(body)` or `Err((code, text))`.
    pub async fn request(
        &self,
        endpoint: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, (String, String)> {
        let client = self
            .nats
            .connect_as(tests::API_USER)
            .await
            .expect("connecting to nats as the API");
        let reply = client
            .request(format!("{PREFIX}.api.{endpoint}"), body.to_string().into())
            .await
            .expect("the service answers");
        if let Some(headers) = &reply.headers
            && let Some(code) = headers.get("Nats-Service-Error-Code")
        {
            let text = headers
                .get("Nats-Service-Error")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            return Err((code.as_str().to_string(), text));
        }
        Ok(serde_json::from_slice(&reply.payload).expect("a JSON reply"))
    }

    /// Publishes `P.cancel.<runId>` as the API does.
    pub async fn cancel(&self, id: Uuid) {
        let body = serde_json::json!({ "runId": id, "tenantId": self.tenant_id, "userId": self.user_id });
        publish_acked(
            &self.js,
            format!("{PREFIX}.cancel.{id}"),
            body.to_string(),
            format!("cancel:{id}"),
        )
        .await;
    }

    /// Whether a message is pending on a subject of the jobs stream.
    pub async fn pending_on(&self, subject: String) -> bool {
        let stream = retrying("the jobs stream", || self.js.get_stream("SHELL_QUERY_JOBS")).await;
        stream.direct_get_last_for_subject(subject).await.is_ok()
    }

    /// Starts one more worker with this system's settings (another replica).
    pub async fn extra_worker(&self) -> Worker {
        let mut env = self.env();
        env.extend(self.extra.iter().cloned());
        Worker::start(&env).await
    }

    pub fn worker(&mut self) -> &mut Worker {
        self.worker.as_mut().expect("a running worker")
    }

    /// Kills the worker with SIGKILL: no drain, no goodbye.
    pub fn kill_worker(&mut self) {
        self.worker = None;
    }

    /// The status checks MCE received for a task, in order.
    pub fn status_checks(&self, task_id: &str) -> Vec<std::time::Instant> {
        self.sim
            .calls()
            .into_iter()
            .filter(|c| c.action == "soap:Retrieve:AsyncActivityStatus" && c.detail == task_id)
            .map(|c| c.at)
            .collect()
    }

    /// Whether a poll message for the run is still in the stream.
    pub async fn poll_pending(&self, id: Uuid) -> bool {
        self.pending_on(format!("{PREFIX}.poll.{id}")).await
    }

    pub fn log(&self) -> String {
        self.worker.as_ref().map(Worker::log).unwrap_or_default()
    }

    /// Publishes an execute message as the API does; returns the run id.
    pub async fn submit(&self, sql: &str, table_metadata: Option<serde_json::Value>) -> Uuid {
        let run_id = Uuid::new_v4();
        let mut body = serde_json::json!({
            "runId": run_id, "tenantId": self.tenant_id, "userId": self.user_id,
            "mid": self.mid, "eid": "500000001", "sqlText": sql, "snippetName": "Test run",
        });
        if let Some(meta) = table_metadata {
            body["tableMetadata"] = meta;
        }
        publish_acked(
            &self.js,
            format!("{PREFIX}.execute.{run_id}"),
            body.to_string(),
            format!("execute:{run_id}"),
        )
        .await;
        run_id
    }

    pub async fn run(&self, id: Uuid) -> Option<entities::shell_query_runs::Model> {
        entities::shell_query_runs::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .expect("reading the run")
    }

    /// Waits until the run has a TaskID (Perform happened); returns it.
    pub async fn started(&self, id: Uuid) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(task) = self.run(id).await.and_then(|r| r.task_id) {
                return task;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} never started:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the run leaves `queued`/`running`; returns its row.
    pub async fn wait_terminal(&self, id: Uuid, timeout: Duration) -> entities::shell_query_runs::Model {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(run) = self.run(id).await
                && matches!(run.status.as_str(), "ready" | "failed" | "canceled")
            {
                return run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} did not finish in {timeout:?}; worker log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every status event of a run, replayed from the stream, in order.
    pub async fn events(&self, id: Uuid) -> Vec<StatusEvent> {
        read_all(&self.js, "SHELL_QUERY_STATUS", Some(format!("{PREFIX}.status.{id}")))
            .await
            .iter()
            .map(|msg| serde_json::from_slice(&msg.payload).expect("a status event is JSON"))
            .collect()
    }

    /// Waits until the run's events include `status`.
    pub async fn wait_event(&self, id: Uuid, status: &str) {
        wait_for(&format!("a `{status}` event"), Duration::from_secs(30), || async {
            self.events(id).await.iter().any(|e| e.status.as_str() == status)
        })
        .await;
    }

    /// The run's stored error message, decrypted.
    pub async fn error_message(&self, id: Uuid) -> String {
        let run = self.run(id).await.expect("the run exists");
        self.cipher()
            .decrypt(run.error_message.as_deref().expect("an error message"))
            .expect("it decrypts")
    }

    pub fn cipher(&self) -> Cipher {
        Cipher::parse(ENCRYPTION_KEY).expect("the test key parses")
    }
}

impl System {
    /// Publishes any body on any subject of the jobs stream (a fresh message id).
    pub async fn publish_raw(&self, subject: String, body: String) {
        publish_acked(&self.js, subject, body, Uuid::new_v4().to_string()).await;
    }

    /// `(subject, reason)` of every DLQ message so far.
    pub async fn dlq(&self) -> Vec<(String, String)> {
        self.dlq_copies()
            .await
            .into_iter()
            .map(|c| (c.subject, c.reason))
            .collect()
    }

    /// Runs one SQL statement on the service's database (as the API or an
    /// operator would).
    pub async fn execute_sql(&self, sql: String) {
        use sea_orm::ConnectionTrait;
        self.db
            .execute_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql))
            .await
            .expect("a test statement");
    }

    /// Inserts a `queued` row as the API does, its SQL encrypted, plus the
    /// given `(column, SQL literal)` pairs; no execute message is published.
    pub async fn insert_queued_run(&self, sql: &str, extra: &[(&str, &str)]) -> Uuid {
        let id = Uuid::new_v4();
        let enc = self.cipher().encrypt(sql);
        let columns: String = extra.iter().map(|(c, _)| format!(", {c}")).collect();
        let values: String = extra.iter().map(|(_, v)| format!(", {v}")).collect();
        self.execute_sql(format!(
            "INSERT INTO shell_query_runs (id, tenant_id, user_id, mid, sql_text_hash, sql_text_encrypted, status{columns}) VALUES ('{id}', '{}', '{}', '{}', 'h', '{enc}', 'queued'{values})",
            self.tenant_id, self.user_id, self.mid
        ))
        .await;
        id
    }

    /// Every DLQ copy so far, whole.
    pub async fn dlq_copies(&self) -> Vec<DlqCopy> {
        read_all(&self.js, "SHELL_QUERY_DLQ", None)
            .await
            .iter()
            .map(|m| {
                let header = |name: &str| {
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_string())
                };
                DlqCopy {
                    subject: m.subject.to_string(),
                    reason: header("Shell-Query-Error").unwrap_or_default(),
                    redacted: header("Shell-Query-Redacted"),
                    replayed_from: header("Shell-Query-Replayed-From"),
                    payload: String::from_utf8_lossy(&m.payload).to_string(),
                }
            })
            .collect()
    }

    /// Stores credentials for another user of the tenant (any refresh token).
    pub fn add_user(&self, user_id: Uuid, refresh_token: &str) {
        let (tenant, user) = (self.tenant_id.to_string(), user_id.to_string());
        let (code, _, err) = run_command(
            &[
                "credentials",
                "upsert",
                "--tenant-id",
                &tenant,
                "--user-id",
                &user,
                "--mid",
                &self.mid,
                "--refresh-token-stdin",
            ],
            &self.env(),
            Some(refresh_token),
        );
        assert_eq!(code, 0, "credentials upsert failed: {err}");
    }

    /// Publishes an execute message for another user; returns the run id.
    /// A second tenant with its own business unit and credentials (the
    /// simulator accepts its refresh token): `(tenant, user, mid)`.
    pub fn add_tenant(&self, mid: &str) -> (Uuid, Uuid, String) {
        tests::add_tenant(&self.env(), &self.sim, mid).expect("a second tenant")
    }

    /// Submits a run for another tenant (from [`System::add_tenant`]).
    pub async fn submit_for(&self, (tenant, user, mid): &(Uuid, Uuid, String), sql: &str) -> Uuid {
        let run_id = Uuid::new_v4();
        let body = serde_json::json!({
            "runId": run_id, "tenantId": tenant, "userId": user, "mid": mid, "sqlText": sql, "snippetName": "Test run",
        });
        publish_acked(
            &self.js,
            format!("{PREFIX}.execute.{run_id}"),
            body.to_string(),
            format!("execute:{run_id}"),
        )
        .await;
        run_id
    }

    pub async fn submit_as(&self, user_id: Uuid, sql: &str) -> Uuid {
        let run_id = Uuid::new_v4();
        let body = serde_json::json!({
            "runId": run_id, "tenantId": self.tenant_id, "userId": user_id,
            "mid": self.mid, "eid": "500000001", "sqlText": sql, "snippetName": "Test run",
        });
        self.publish_raw(format!("{PREFIX}.execute.{run_id}"), body.to_string())
            .await;
        run_id
    }

    /// Waits until no QueryDefinition is left in the simulator (the clean-up
    /// follows the row's terminal state).
    pub async fn wait_no_query_definitions(&self) {
        wait_for("no QueryDefinition left", Duration::from_secs(30), || async {
            self.sim.query_definitions().is_empty()
        })
        .await;
    }
}
