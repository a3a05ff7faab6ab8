//! The operator's commands: `runs`, `dlq`, `doctor`, `config print` and
//! `contract`. They read the service's own settings (flags or environment)
//! and print text for a person (tables from comfy-table) or, with `-o json`,
//! one JSON document (docs/CONTRACT.md section 7); every time they print is
//! RFC 3339 in UTC. None logs SQL text, a token or a secret.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use uuid::Uuid;

use shell_query_core::message::Subjects;
use shell_query_core::run::{Run, RunStatus, StartPhase, Task};

use crate::adapters::crypto::Cipher;
use crate::adapters::nats as nats_adapter;
use crate::adapters::store::{self, Store, runs};
use crate::app::config::{
    Cli, ConfigError, ContractCommand, DbArgs, DlqCommand, DoctorArgs, KeyArgs, NatsArgs, Output, RunsCommand,
    print_json, rfc3339, table,
};

/// How long an operator command waits for NATS or the database before it
/// says so.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn database(db: &DbArgs) -> anyhow::Result<Store> {
    let connect = store::open(db.database_url.expose_secret(), 1);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(store) => store.context("connecting to the database (DATABASE_URL)"),
        Err(_) => bail!(
            "connecting to the database (DATABASE_URL): no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// The last permissions violation the NATS server reported to this
/// process (an operator command is one process, one connection).
fn denials() -> &'static tokio::sync::watch::Sender<Option<String>> {
    static DENIED: std::sync::OnceLock<tokio::sync::watch::Sender<Option<String>>> = std::sync::OnceLock::new();
    DENIED.get_or_init(|| tokio::sync::watch::channel(None).0)
}

/// Runs `work`, unless the NATS server refuses one of its requests for
/// lack of rights first: a refused request is never answered (the client
/// would wait for its timeout), but the server says so at once, and that
/// ends `work` with the user's name and what it was refused.
pub(crate) async fn permitted<T>(
    user: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let denials = denials();
    denials.send_replace(None);
    let mut denied = denials.subscribe();
    tokio::select! {
        result = work => result,
        Ok(text) = denied.wait_for(Option::is_some) => {
            let text = text.clone().unwrap_or_default();
            bail!(
                "NATS user {user} is not allowed this: the server refused it ({}); the DLQ and every status event need a user that may read them, such as shell_query_admin in nats.conf",
                text.trim()
            )
        }
    }
}

/// The NATS user the environment names (`NATS_USER`), for messages.
pub(crate) fn nats_user_of_env() -> String {
    match (std::env::var("NATS_USER"), std::env::var_os("NATS_CREDS_FILE")) {
        (Ok(user), _) if !user.trim().is_empty() => user,
        (_, Some(_)) => "(NATS_CREDS_FILE)".into(),
        _ => "(anonymous)".into(),
    }
}

/// The name a NATS connection acts as, for messages.
pub(crate) fn nats_user(n: &NatsArgs) -> String {
    match (&n.nats_user, &n.nats_creds_file) {
        (Some(user), _) => user.clone(),
        (None, Some(_)) => "(NATS_CREDS_FILE)".into(),
        (None, None) => "(anonymous)".into(),
    }
}

async fn nats(n: &NatsArgs) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let servers = n.servers()?;
    let client = crate::app::nats_options(n)
        .await?
        .event_callback(|event| async move {
            if let async_nats::Event::ServerError(e) = &event {
                let text = e.to_string();
                if text.to_ascii_lowercase().contains("permissions violation") {
                    denials().send_replace(Some(text));
                }
            }
        })
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(CONNECT_TIMEOUT))
        .connect(servers)
        .await
        .context("connecting to NATS (NATS_URL)")?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// The key when one is set; a malformed one is bad configuration (exit 2).
fn optional_cipher(keys: &KeyArgs) -> Result<Option<Cipher>, ConfigError> {
    if keys.encryption_key.is_none() && keys.encryption_keys.is_none() {
        return Ok(None);
    }
    keys.cipher().map(Some)
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), rfc3339)
}

/// A run as `runs list -o json` gives it.
fn run_json(run: &Run) -> serde_json::Value {
    serde_json::json!({
        "runId": run.id,
        "status": run.status.as_str(),
        "tenantId": run.account.tenant.0,
        "userId": run.account.user.map(|u| u.0),
        "businessUnit": run.account.mid.to_string(),
        "snippetName": run.snippet_name,
        "createdAt": rfc3339(run.created_at),
        "startedAt": run.started_at.map(rfc3339),
        "completedAt": run.completed_at.map(rfc3339),
        "pollCount": run.poll.poll_count,
        "rowCount": run.row_count,
        "retryOf": run.retry_of,
    })
}

/// `runs list`, `runs show`, `runs cancel`.
pub(crate) async fn runs(command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::List {
            status,
            tenant,
            since,
            older_than,
            limit,
            output,
            db,
        } => {
            let store = database(&db).await?;
            let now = Utc::now();
            let filter = runs::RunFilter {
                status: status.as_deref().and_then(RunStatus::parse),
                tenant_id: tenant,
                since: since.map(|m| m.resolve(now)),
                before: older_than.map(|m| m.resolve(now)),
            };
            let list = runs::list(&store, &filter, limit).await?;
            if output.json() {
                print_json(&list.iter().map(run_json).collect());
                return Ok(());
            }
            print!(
                "{}",
                table(
                    ["created", "run", "tenant", "status", "polls", "snippet"],
                    list.iter().map(|run| {
                        [
                            time(Some(run.created_at)),
                            run.id.to_string(),
                            run.account.tenant.to_string(),
                            run.status.as_str().to_string(),
                            run.poll.poll_count.to_string(),
                            run.snippet_name.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                )
            );
            println!("{} run(s)", list.len());
            Ok(())
        }
        RunsCommand::Stats { output, db } => {
            let store = database(&db).await?;
            let (counts, oldest) = runs::run_counts(&store).await?;
            let count = |status: &str| counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
            const STATUSES: [&str; 5] = ["queued", "running", "ready", "failed", "canceled"];
            if output.json() {
                let by_status: serde_json::Map<String, serde_json::Value> =
                    STATUSES.iter().map(|s| (s.to_string(), count(s).into())).collect();
                print_json(&serde_json::json!({
                    "counts": by_status,
                    "oldestRunningCreatedAt": oldest.map(rfc3339),
                    "oldestRunningAgeSeconds": oldest.map(|at| (Utc::now() - at).num_seconds().max(0)),
                }));
                return Ok(());
            }
            print!(
                "{}",
                table(
                    ["status", "runs"],
                    STATUSES.iter().map(|s| [s.to_string(), count(s).to_string()])
                )
            );
            match oldest {
                Some(at) => println!(
                    "oldest running: created {}, {} s ago",
                    time(Some(at)),
                    (Utc::now() - at).num_seconds().max(0)
                ),
                None => println!("oldest running: none"),
            }
            Ok(())
        }
        RunsCommand::Retry {
            run_id,
            force,
            db,
            nats,
        } => {
            let store = database(&db).await?;
            let old = runs::get_run(&store, run_id)
                .await?
                .ok_or_else(|| anyhow!("run {run_id} not found"))?;
            if let Some(why) = old.retry_refused(force) {
                bail!(why);
            }
            let msg = crate::jobs::reconciler::request_of(&old)
                .ok_or_else(|| anyhow!("run {run_id}'s request cannot be rebuilt from its row (its query text, business unit or target is missing)"))?;
            let (_client, js) = self::nats(&nats).await?;
            let id = Uuid::new_v4();
            runs::insert_retry(&store, &old, id, Utc::now()).await?;
            // A temp-DE run's retry makes its own temp DE.
            let msg = shell_query_core::message::ExecuteMessage {
                run_id: id,
                target_de_customer_key: old.target().map(str::to_string),
                ..msg
            };
            let subjects = shell_query_core::message::Subjects::new(&nats.subject_prefix);
            crate::adapters::nats::publish_execute(&js, &subjects, &msg, &format!("execute:{id}")).await?;
            println!("run {id} retries run {run_id}");
            Ok(())
        }
        RunsCommand::Show {
            run_id,
            output,
            db,
            nats,
            keys,
        } => {
            let store = database(&db).await?;
            let run = runs::get_run(&store, run_id)
                .await?
                .ok_or_else(|| anyhow!("run {run_id} not found"))?;
            let cipher = optional_cipher(&keys)?;
            let state = nats_state(&nats, run_id).await;
            if output.json() {
                print_json(&show_json(&run, cipher.as_ref(), &state));
                return Ok(());
            }
            print!("{}", describe_run(&run, cipher.as_ref()));
            print!("{}", state.text());
            Ok(())
        }
        RunsCommand::Cancel { run_id, db } => {
            let store = database(&db).await?;
            if runs::cancel_as_api(&store, run_id, Utc::now()).await? {
                println!("run {run_id} canceled; the service deletes its MCE assets and publishes the event");
                return Ok(());
            }
            match runs::get_run(&store, run_id).await? {
                None => bail!("run {run_id} not found"),
                Some(run) => bail!("run {run_id} has ended already ({})", run.status.as_str()),
            }
        }
    }
}

/// The row, in the order an operator reads it. The error text is
/// decrypted when the key is at hand; the SQL text is never shown.
pub(crate) fn describe_run(run: &Run, cipher: Option<&Cipher>) -> String {
    let mut out = String::new();
    let task = match &run.start {
        StartPhase::NotRequested => "not started".to_string(),
        StartPhase::PerformRequested { at } => format!("Perform sent at {}, no TaskID yet", time(Some(*at))),
        StartPhase::Started(Task::Known(id)) => id.clone(),
        StartPhase::Started(Task::Lost) => "started, TaskID lost".into(),
    };
    let error = error_text(run, cipher);
    let p = &run.poll;
    let lines = [
        ("run", run.id.to_string()),
        ("status", run.status.as_str().to_string()),
        ("tenant", run.account.tenant.to_string()),
        ("user", run.account.user.map_or_else(|| "-".into(), |u| u.to_string())),
        ("business unit", run.account.mid.to_string()),
        ("snippet", run.snippet_name.clone().unwrap_or_else(|| "-".into())),
        ("created", time(Some(run.created_at))),
        ("started", time(run.started_at)),
        ("completed", time(run.completed_at)),
        ("task", task),
        (
            "query definition",
            run.query_definition_id.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "query key",
            run.query_customer_key.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "results DE",
            run.target_de_customer_key.clone().unwrap_or_else(|| "-".into()),
        ),
        ("rows", run.row_count.map_or_else(|| "-".into(), |n| n.to_string())),
        ("retry of", run.retry_of.map_or_else(|| "-".into(), |id| id.to_string())),
        ("error", error.unwrap_or_else(|| "-".into())),
        ("last MCE status", last_mce_status(run.status, p)),
        (
            "poll state",
            format!(
                "{} tick(s) since {}; not running {}x (first {}); rowset checks {}; row probes {}; transient errors {}",
                p.poll_count,
                time(run.poll_started_at),
                p.not_running_count,
                time(p.not_running_first_at),
                p.rowset_attempts,
                p.probe_attempts,
                p.transient_errors
            ),
        ),
        ("terminal event", time(run.terminal_event_at)),
    ];
    let _ = write!(out, "{}", pairs(lines));
    out
}

/// Names and values, two columns without a header.
fn pairs(lines: impl IntoIterator<Item = (&'static str, String)>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    for (name, value) in lines {
        t.add_row([name.to_string(), value]);
    }
    if let Some(first) = t.column_mut(0) {
        first.set_padding((0, 1));
    }
    let mut out = String::new();
    for line in t.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The run's error text: decrypted when the key is at hand.
fn error_text(run: &Run, cipher: Option<&Cipher>) -> Option<String> {
    run.error_message.as_deref().map(|e| match cipher {
        Some(c) => c
            .decrypt(e)
            .unwrap_or_else(|_| "(cannot be decrypted with this key)".into()),
        None => "(encrypted: set ENCRYPTION_KEY to read it)".into(),
    })
}

/// `runs show -o json`: the row, its poll state, its poll message and its
/// status events (each as published); the SQL text is never shown.
fn show_json(run: &Run, cipher: Option<&Cipher>, state: &NatsState) -> serde_json::Value {
    let (phase, task_id, perform_at) = match &run.start {
        StartPhase::NotRequested => ("notRequested", None, None),
        StartPhase::PerformRequested { at } => ("performRequested", None, Some(rfc3339(*at))),
        StartPhase::Started(Task::Known(id)) => ("started", Some(id.clone()), None),
        StartPhase::Started(Task::Lost) => ("taskLost", None, None),
    };
    let p = &run.poll;
    let mut value = run_json(run);
    let more = serde_json::json!({
        "startPhase": phase,
        "taskId": task_id,
        "performRequestedAt": perform_at,
        "queryDefinitionId": run.query_definition_id,
        "queryCustomerKey": run.query_customer_key,
        "targetDeCustomerKey": run.target_de_customer_key,
        "errorMessage": error_text(run, cipher),
        "lastMceStatus": last_mce_status(run.status, p),
        "poll": {
            "count": p.poll_count,
            "startedAt": run.poll_started_at.map(rfc3339),
            "notRunningCount": p.not_running_count,
            "notRunningFirstAt": p.not_running_first_at.map(rfc3339),
            "rowsetAttempts": p.rowset_attempts,
            "probeAttempts": p.probe_attempts,
            "transientErrors": p.transient_errors,
        },
        "terminalEventAt": run.terminal_event_at.map(rfc3339),
        "pollMessage": match &state.poll {
            Ok(true) => serde_json::json!("pending"),
            Ok(false) => serde_json::json!("none"),
            Err(_) => serde_json::Value::Null,
        },
        "pollMessageError": state.poll.as_ref().err(),
        "events": state.events.as_ref().ok(),
        "eventsError": state.events.as_ref().err(),
    });
    if let (Some(v), serde_json::Value::Object(more)) = (value.as_object_mut(), more) {
        v.extend(more);
    }
    value
}

/// What the run's last tick knew of its query in MCE. The row keeps only
/// the last status seen while the query was pending (`poll_last_status`,
/// written when it changes): the tick that sees the query finish goes on to
/// its results, or ends the run, without writing it. So a finished query
/// is told from the rest of the row, and the stored status is shown for
/// what it then is, the one seen before.
pub(crate) fn last_mce_status(status: RunStatus, p: &shell_query_core::poll::decide::PollState) -> String {
    let with_pending = |s: &str| match p.last_status.as_deref() {
        Some(last) => format!("{s} (last pending status: {last})"),
        None => s.to_string(),
    };
    match status {
        RunStatus::Ready => with_pending("complete"),
        // A readiness check is under way: completion (or a confirmed "not
        // running", which the isRunning answers record) was seen.
        RunStatus::Running if p.rowset_attempts > 0 => {
            let seen = match p.not_running_count {
                0 => "complete".to_string(),
                n => format!("complete, or not running ({n} answer(s))"),
            };
            with_pending(&format!(
                "{seen}; results not readable yet after {} check(s)",
                p.rowset_attempts
            ))
        }
        RunStatus::Failed | RunStatus::Canceled => match p.last_status.as_deref() {
            Some(last) => format!("{last} (the last pending status; the run then {})", status.as_str()),
            None => "-".into(),
        },
        RunStatus::Queued | RunStatus::Running => {
            let last = p.last_status.clone().unwrap_or_else(|| "-".into());
            match p.transient_errors {
                0 => last,
                n => format!("{last} (unreadable for the last {n} tick(s))"),
            }
        }
    }
}

/// What NATS holds of a run, as far as this NATS user may read it: its
/// poll message (pending or not) and its status events, or why not.
struct NatsState {
    poll: Result<bool, String>,
    events: Result<Vec<serde_json::Value>, String>,
}

impl NatsState {
    /// `runs show`'s last lines.
    fn text(&self) -> String {
        let poll = match &self.poll {
            Ok(true) => "pending".to_string(),
            Ok(false) => "none".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let mut out = format!("{:<17} {poll}\n", "poll message");
        match &self.events {
            Ok(events) => {
                let _ = writeln!(out, "events ({}):", events.len());
                let lines = table(
                    ["time", "status", "message"],
                    events.iter().map(|event| {
                        let text = |key: &str| event[key].as_str().unwrap_or("").to_string();
                        let mut message = text("message");
                        if let Some(error) = event["errorMessage"].as_str() {
                            let _ = write!(message, ": {error}");
                        }
                        if let Some(rows) = event["rowCount"].as_i64() {
                            let _ = write!(message, " ({rows} rows)");
                        }
                        [text("timestamp"), text("status"), message]
                    }),
                );
                for line in lines.lines().skip(1) {
                    let _ = writeln!(out, "  {line}");
                }
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "events           unavailable ({e}; reading them needs a NATS user that may read SHELL_QUERY_STATUS)"
                );
            }
        }
        out
    }
}

async fn nats_state(n: &NatsArgs, run_id: Uuid) -> NatsState {
    let (_client, js) = match nats(n).await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("{e:#}");
            return NatsState {
                poll: Err(e.clone()),
                events: Err(e),
            };
        }
    };
    let subjects = Subjects::new(&n.subject_prefix);
    let poll = nats_adapter::holds_message_on(&js, subjects.poll(run_id))
        .await
        .map_err(|e| e.to_string());
    let events = async {
        let mut events = Vec::new();
        for payload in nats_adapter::status_payloads(&js, &subjects.status(run_id)).await? {
            events.push(serde_json::from_slice(&payload).unwrap_or_default());
        }
        anyhow::Ok(events)
    }
    .await
    .map_err(|e| format!("{e:#}"));
    NatsState { poll, events }
}

/// `dlq list`, `show`, `replay`, `rm` and `purge` ([`crate::app::dlq`]),
/// connected, with the key when one is set.
pub(crate) async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let (nats_args, keys) = match &command {
        DlqCommand::List { nats, .. } | DlqCommand::Rm { nats, .. } | DlqCommand::Purge { nats, .. } => (nats, None),
        DlqCommand::Show { nats, keys, .. } | DlqCommand::Replay { nats, keys, .. } => (nats, Some(keys)),
    };
    let (_client, js) = nats(nats_args).await?;
    let cipher = keys.map(optional_cipher).transpose()?.flatten();
    let prefix = nats_args.subject_prefix.clone();
    crate::app::dlq::dlq(command, &js, &prefix, cipher.as_ref()).await
}

/// `doctor`: one line per check; the exit code: 2 when the settings are
/// bad (every other check still runs and prints), else 1 if any check
/// failed, else 0.
pub(crate) async fn doctor(args: DoctorArgs) -> i32 {
    let json = args.output.json();
    let mut checks: Vec<serde_json::Value> = Vec::new();
    let mut line = |pass: bool, what: &str, detail: String| {
        if !json {
            println!("{}  {what}: {detail}", if pass { "ok  " } else { "FAIL" });
        }
        checks.push(serde_json::json!({ "name": what, "ok": pass, "detail": detail }));
    };
    let run = &args.run;
    let settings = crate::app::validate(run);
    match &settings {
        Ok(_) => line(true, "settings", "valid".into()),
        Err(e) => line(false, "settings", e.to_string()),
    }

    let store = match database(&run.db).await {
        Ok(s) => {
            line(true, "database", "connected".into());
            match s.pending_migrations().await {
                Ok(p) if p.is_empty() => line(true, "migrations", "all applied".into()),
                Ok(p) => line(false, "migrations", format!("not applied: {}", p.join(", "))),
                Err(e) => line(false, "migrations", e.to_string()),
            }
            Some(s)
        }
        Err(e) => {
            line(false, "database", format!("{e:#}"));
            None
        }
    };

    match nats(&run.nats).await {
        Ok((client, js)) => {
            line(
                true,
                "nats",
                format!("connected to {}", client.server_info().server_name),
            );
            for name in [
                nats_adapter::JOBS_STREAM,
                nats_adapter::STATUS_STREAM,
                nats_adapter::DLQ_STREAM,
                nats_adapter::ADVISORY_STREAM,
                &format!("KV_{}", crate::adapters::lease::BUCKET),
            ] {
                let user = nats_user(&run.nats);
                let summary = permitted(&user, async {
                    nats_adapter::stream_summary(&js, name)
                        .await
                        .map_err(|e| anyhow!(e.detail()))
                });
                match summary.await {
                    Ok((messages, replicas)) => line(
                        true,
                        &format!("stream {name}"),
                        format!("{messages} message(s), {replicas} replica(s)"),
                    ),
                    Err(e) => line(false, &format!("stream {name}"), format!("{e:#}")),
                }
            }
            for (stream, consumer) in [
                (nats_adapter::JOBS_STREAM, nats_adapter::EXECUTE_CONSUMER),
                (nats_adapter::JOBS_STREAM, nats_adapter::POLL_CONSUMER),
                (nats_adapter::JOBS_STREAM, nats_adapter::CANCEL_CONSUMER),
                (nats_adapter::ADVISORY_STREAM, nats_adapter::UNDELIVERABLE_CONSUMER),
            ] {
                let user = nats_user(&run.nats);
                let state = permitted(&user, async {
                    nats_adapter::consumer_state(&js, stream, consumer)
                        .await
                        .map_err(|e| anyhow!(e.detail()))
                });
                match state.await {
                    Ok(i) if i.paused => line(false, &format!("consumer {consumer}"), "paused".into()),
                    Ok(i) => line(
                        true,
                        &format!("consumer {consumer}"),
                        format!("{} pending, {} waiting for an ack", i.num_pending, i.num_ack_pending),
                    ),
                    Err(e) => line(false, &format!("consumer {consumer}"), format!("{e:#}")),
                }
            }
        }
        Err(e) => line(false, "nats", format!("{e:#}")),
    }

    if let (Some(tenant), Some(mid)) = (args.tenant, args.mid.as_deref()) {
        let what = format!("mce token for tenant {tenant}, business unit {mid}");
        match (&settings, &store) {
            (Ok(settings), Some(store)) => {
                let mce = crate::adapters::mce::Mce::new(
                    crate::adapters::store::credentials::CredentialStore::new(store.clone()),
                    settings.cipher.clone(),
                    settings.client_id.clone(),
                    settings.client_secret.clone(),
                    settings.base_urls.clone(),
                    crate::adapters::mce::RetryPolicy::default(),
                )
                .with_timeouts(run.mce.timeouts());
                let checked = async {
                    // As the execute step does: the business unit's first user
                    // unless one is named.
                    let user = match args.user {
                        Some(user) => Some(user),
                        None => crate::adapters::store::credentials::credential_user(store, tenant, mid)
                            .await
                            .map_err(|e| crate::adapters::mce::MceError::CredentialsUnavailable(e.to_string()))?,
                    };
                    let account = shell_query_core::account::Account::new(
                        tenant,
                        user,
                        shell_query_core::account::Mid::stored(mid.to_string()),
                    );
                    let session = mce.session(&account).await?;
                    session.check_token().await
                }
                .await;
                match checked {
                    Ok(()) => line(true, &what, "granted".into()),
                    Err(e) => line(false, &what, e.client_message()),
                }
            }
            _ => line(false, &what, "needs valid settings and the database".into()),
        }
    }
    let ok = checks.iter().all(|c| c["ok"] == true);
    let code = match (settings.is_ok(), ok) {
        (false, _) => 2,
        (true, false) => 1,
        (true, true) => 0,
    };
    if json {
        print_json(&serde_json::json!({ "ok": ok, "exitCode": code, "checks": checks }));
    }
    code
}

/// `config print`: every setting of `run` as `NAME=value  (source)`, by
/// heading; secrets show only whether they are set, and a database URL
/// shows without its password.
pub(crate) fn config_print(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<String> {
    use clap::CommandFactory as _;
    use clap::parser::ValueSource;
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(args)?;
    let (_, config) = matches.subcommand().ok_or_else(|| anyhow!("no command"))?;
    let (_, print) = config.subcommand().ok_or_else(|| anyhow!("no config command"))?;
    let spec = command
        .find_subcommand("config")
        .and_then(|c| c.find_subcommand("print"))
        .ok_or_else(|| anyhow!("config print is not a command"))?;
    let mut entries = Vec::new();
    let mut settings: Vec<&clap::Arg> = spec.get_arguments().filter(|a| a.get_env().is_some()).collect();
    settings.sort_by_key(|a| a.get_help_heading().unwrap_or(""));
    for arg in settings {
        let heading = arg.get_help_heading().unwrap_or("Other").to_string();
        let name = arg
            .get_env()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default();
        let id = arg.get_id().as_str();
        let raw: Option<Vec<String>> = print
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().to_string()).collect());
        let value = raw.map(|values| {
            let value = values.join(",");
            if name.ends_with("_URL") {
                crate::app::config::redacted_urls(&value)
            } else if arg.is_hide_env_values_set() {
                "(set, hidden)".into()
            } else {
                value
            }
        });
        let source = match print.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        entries.push(Setting {
            group: heading,
            name,
            value,
            source,
        });
    }
    let environment: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    entries.extend(telemetry_entries(&environment));
    let json = print.get_one::<Output>("output") == Some(&Output::Json);
    if json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|s| serde_json::json!({ "name": s.name, "value": s.value, "source": s.source, "group": s.group }))
            .collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&list)?));
    }
    Ok(settings_text(&entries))
}

/// One setting as `config print` shows it: its value redacted (`None`:
/// unset), where it came from (`flag`, `env`, `default` or `unset`).
pub(crate) struct Setting {
    group: String,
    name: String,
    value: Option<String>,
    source: &'static str,
}

/// `NAME=value  (source)` lines under `# group` headings.
fn settings_text(settings: &[Setting]) -> String {
    let mut out = String::new();
    let mut group = None;
    for s in settings {
        if group != Some(&s.group) {
            group = Some(&s.group);
            let _ = writeln!(out, "# {}", s.group);
        }
        let _ = writeln!(
            out,
            "{}={}  ({})",
            s.name,
            s.value.as_deref().unwrap_or("(unset)"),
            s.source
        );
    }
    out
}

/// The log and trace settings, with what applies when one is unset. The
/// log filter and the OpenTelemetry exporter read them from the
/// environment, not from flags; the `_TRACES_` form wins over the general
/// one.
const TELEMETRY_SETTINGS: [(&str, Option<&str>); 15] = [
    ("RUST_LOG", Some("info")),
    ("OTEL_SDK_DISABLED", Some("false")),
    ("OTEL_TRACES_EXPORTER", Some("otlp")),
    ("OTEL_SERVICE_NAME", Some(crate::adapters::telemetry::SERVICE_NAME)),
    ("OTEL_RESOURCE_ATTRIBUTES", None),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", Some("http/protobuf")),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", None),
    ("OTEL_EXPORTER_OTLP_HEADERS", None),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", None),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", None),
    ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", None),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", Some("10000")),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", None),
];

/// `config print`'s last part: every setting of [`TELEMETRY_SETTINGS`],
/// then any other `OTEL_*` variable set, redacted like the rest: headers
/// (they carry the collector's credentials) and anything named like a key,
/// token, secret or password show only that they are set, an endpoint
/// shows without its user and password.
#[cfg(test)]
pub(crate) fn telemetry_settings(environment: &[(String, String)]) -> String {
    settings_text(&telemetry_entries(environment))
}

/// [`telemetry_settings`] as [`Setting`]s.
fn telemetry_entries(environment: &[(String, String)]) -> Vec<Setting> {
    let get = |name: &str| environment.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let others = environment
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("OTEL_") && !TELEMETRY_SETTINGS.iter().any(|(n, _)| n == k))
        .collect::<std::collections::BTreeSet<_>>();
    let mut out = Vec::new();
    let known = TELEMETRY_SETTINGS.iter().map(|(name, default)| (*name, *default));
    for (name, default) in known.chain(others.into_iter().map(|name| (name, None))) {
        let hidden = ["HEADERS", "KEY", "TOKEN", "SECRET", "PASSWORD"]
            .iter()
            .any(|s| name.contains(s));
        let (value, source) = match (get(name), default) {
            (Some(_), _) if hidden => (Some("(set, hidden)".to_string()), "env"),
            (Some(v), _) if name.ends_with("_ENDPOINT") => (Some(crate::app::config::redacted_urls(v)), "env"),
            (Some(v), _) => (Some(v.to_string()), "env"),
            (None, Some(d)) => (Some(d.to_string()), "default"),
            (None, None) => (None, "unset"),
        };
        out.push(Setting {
            group: "Telemetry and logs (environment only)".into(),
            name: name.to_string(),
            value,
            source,
        });
    }
    out
}

/// `contract write` / `contract check`: 0, or 1 when files are stale.
pub(crate) fn contract(command: ContractCommand) -> i32 {
    match command {
        ContractCommand::Write { dir } => match crate::app::contract::write(&dir) {
            Ok(written) => {
                for path in written {
                    println!("wrote {}", dir.join(path).display());
                }
                0
            }
            Err(e) => {
                eprintln!("error: writing under {}: {e}", dir.display());
                1
            }
        },
        ContractCommand::Check { dir } => {
            let stale = crate::app::contract::stale(&dir);
            if stale.is_empty() {
                println!("the contract files under {} match the message types", dir.display());
                0
            } else {
                for path in &stale {
                    eprintln!("stale: {}", dir.join(path).display());
                }
                eprintln!(
                    "error: run `shell-query-worker contract write {}` and commit the result",
                    dir.display()
                );
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_settings_are_listed_redacted() {
        let env: Vec<(String, String)> = [
            ("RUST_LOG", "debug,async_nats=info"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://u:collector-pa55@otel.internal:4318",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer header-t0ken"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/otel/key.pem"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let out = telemetry_settings(&env);
        for line in [
            "# Telemetry and logs (environment only)",
            "RUST_LOG=debug,async_nats=info  (env)",
            "OTEL_EXPORTER_OTLP_ENDPOINT=https://***@otel.internal:4318/  (env)",
            "OTEL_EXPORTER_OTLP_HEADERS=(set, hidden)  (env)",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY=(set, hidden)  (env)",
            "OTEL_TRACES_SAMPLER=parentbased_always_on  (env)",
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf  (default)",
            "OTEL_SERVICE_NAME=shell-query-worker  (default)",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS=(unset)  (unset)",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
        }
        for secret in ["collector-pa55", "header-t0ken", "key.pem", "PATH"] {
            assert!(!out.contains(secret), "{secret} shown:\n{out}");
        }
    }

    #[test]
    fn the_last_mce_status_is_what_the_last_tick_saw() {
        use shell_query_core::poll::decide::PollState;
        let mut p = PollState::new(4, Utc::now());
        p.last_status = Some("processing".into());
        // The tick that saw `Complete` ended the run without writing it.
        assert_eq!(
            last_mce_status(RunStatus::Ready, &p),
            "complete (last pending status: processing)"
        );
        assert_eq!(last_mce_status(RunStatus::Running, &p), "processing");
        p.transient_errors = 2;
        assert_eq!(
            last_mce_status(RunStatus::Running, &p),
            "processing (unreadable for the last 2 tick(s))"
        );
        p.transient_errors = 0;
        p.rowset_attempts = 3;
        assert_eq!(
            last_mce_status(RunStatus::Running, &p),
            "complete; results not readable yet after 3 check(s) (last pending status: processing)"
        );
        assert_eq!(
            last_mce_status(RunStatus::Failed, &p),
            "processing (the last pending status; the run then failed)"
        );
        assert_eq!(
            last_mce_status(RunStatus::Canceled, &PollState::new(0, Utc::now())),
            "-"
        );
        assert_eq!(
            last_mce_status(RunStatus::Ready, &PollState::new(1, Utc::now())),
            "complete"
        );
    }
}
