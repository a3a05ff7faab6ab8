//! One delivery of `P.execute.<runId>` (DESIGN.md "Execute"), run-to-temp.

use chrono::Utc;
use serde::Deserialize;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::app::Deps;
use crate::consumer::{Delivery, Disposition};
use crate::jetstream::{EXECUTE_MAX_DELIVER, NatsError, Subjects};
use crate::mce::{DeTarget, MceError, Session};
use crate::model::{EventStatus, RunStatus, StatusEvent, clip_error};
use crate::schema::{self, TableMetadata};
use crate::store::{self, NewRun, Started, Terminal};

pub const FOLDER_NAME: &str = "QueryPlusPlus Results";
pub const ROOT_FOLDER_NAME: &str = "Data Extensions";
pub const FOLDER_CONTENT_TYPE: &str = "dataextension";
/// The longest query text accepted.
pub const MAX_SQL_BYTES: usize = 256 * 1024;

/// The body of `P.execute.<runId>`. Unknown fields are refused: a field
/// the service would ignore is a request it would not carry out.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteMessage {
    pub run_id: Uuid,
    pub tenant_id: Uuid,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    pub mid: String,
    #[serde(default)]
    pub eid: Option<String>,
    #[serde(default)]
    pub sql_text: Option<String>,
    #[serde(default)]
    pub sql_text_encrypted: Option<String>,
    #[serde(default)]
    pub snippet_name: Option<String>,
    #[serde(default)]
    pub table_metadata: Option<TableMetadata>,
    #[serde(default)]
    pub target_de_customer_key: Option<String>,
    #[serde(default)]
    pub target_update_type: Option<String>,
}

/// Decodes and checks a message; the error is the DLQ reason.
pub fn decode(subject: &str, payload: &[u8]) -> Result<ExecuteMessage, String> {
    let msg: ExecuteMessage = serde_json::from_slice(payload).map_err(|e| format!("invalid execute message: {e}"))?;
    if Subjects::run_id_of(subject) != Some(msg.run_id) {
        return Err("the subject's run id differs from the body's runId".into());
    }
    match (&msg.sql_text, &msg.sql_text_encrypted) {
        (Some(_), Some(_)) => return Err("both sqlText and sqlTextEncrypted are present".into()),
        (None, None) => return Err("neither sqlText nor sqlTextEncrypted is present".into()),
        _ => {}
    }
    if msg.mid.trim().is_empty() || !msg.mid.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err("mid must be a numeric MID".into());
    }
    Ok(msg)
}

/// The part of the run id that goes into MCE names: 30 hex characters of the
/// UUID without its fixed version digit, so keys fit MCE's 36 characters.
pub fn run_tag(run_id: Uuid) -> String {
    let hex = run_id.simple().to_string();
    format!("{}{}", &hex[..12], &hex[13..31])
}

/// The QueryDefinition's Name and CustomerKey: one per run (36 characters).
pub fn query_key(run_id: Uuid) -> String {
    format!("QPP_Q_{}", run_tag(run_id))
}

/// The temp DE's CustomerKey (36 characters).
pub fn temp_de_key(run_id: Uuid) -> String {
    format!("QPP_R_{}", run_tag(run_id))
}

/// The temp DE's Name: the snippet name made safe (letters, digits, `_`,
/// at most 50 characters), then the run tag, so names never collide.
pub fn temp_de_name(run_id: Uuid, snippet: Option<&str>) -> String {
    let cleaned: String = snippet
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(50)
        .collect();
    let stem = if cleaned.is_empty() {
        "Results".to_string()
    } else {
        cleaned
    };
    format!("QPP_{stem}_{}", run_tag(run_id))
}

/// Why this delivery could not finish.
#[derive(Debug)]
enum Failure {
    /// Worth another delivery: MCE 5xx/429/timeout, database, NATS.
    Transient(String),
    /// The run cannot succeed; the client-safe reason.
    Permanent(String),
}

impl From<MceError> for Failure {
    fn from(e: MceError) -> Self {
        if e.is_transient() {
            Failure::Transient(e.to_string())
        } else {
            Failure::Permanent(e.client_message())
        }
    }
}

impl From<sea_orm::DbErr> for Failure {
    fn from(e: sea_orm::DbErr) -> Self {
        Failure::Transient(format!("database: {e}"))
    }
}

impl From<NatsError> for Failure {
    fn from(e: NatsError) -> Self {
        Failure::Transient(e.to_string())
    }
}

/// The client-safe text of a run whose worker died between recording the
/// Perform request and learning its TaskID, when MCE shows no sign of it.
pub const INTERRUPTED: &str =
    "The query was interrupted while starting and its start could not be confirmed. Please run it again.";

pub async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    let msg = match decode(&delivery.subject, &delivery.payload) {
        Ok(m) => m,
        Err(reason) => return malformed(deps, delivery, reason).await,
    };
    let span = tracing::info_span!(
        "execute",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        run_id = %msg.run_id,
        tenant_id = %msg.tenant_id,
        run.id = %msg.run_id,
        tenant.id = %msg.tenant_id,
        messaging.system = "nats",
        messaging.destination.name = %delivery.subject,
        messaging.operation.type = "process",
        messaging.message.delivery_count = delivery.delivered,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::set_parent(&span, delivery.headers.as_ref());
    crate::telemetry::record_ids(&span);
    handle_decoded(deps, delivery, msg).instrument(span).await
}

async fn handle_decoded(deps: &Deps, delivery: &Delivery, msg: ExecuteMessage) -> Disposition {
    let mut created_qd: Option<String> = None;
    match execute(deps, &msg, &mut created_qd).await {
        Ok(()) => Disposition::Ack,
        Err(Failure::Transient(detail)) if delivery.delivered < EXECUTE_MAX_DELIVER => {
            tracing::warn!(error = %detail, "execute failed transiently; will retry");
            Disposition::Retry(
                deps.execute_backoff
                    .delay_random(u32::try_from(delivery.delivered - 1).unwrap_or(0)),
            )
        }
        Err(Failure::Transient(detail)) => {
            tracing::Span::current().record("otel.status_code", "ERROR");
            tracing::error!(error = %detail, "execute failed on its last delivery");
            let reason = "Marketing Cloud is temporarily unavailable. Please try again.";
            fail_run(deps, msg.run_id, reason, created_qd.as_deref(), &msg).await
        }
        Err(Failure::Permanent(reason)) => {
            tracing::Span::current().record("otel.status_code", "ERROR");
            tracing::info!("run failed permanently");
            fail_run(deps, msg.run_id, &reason, created_qd.as_deref(), &msg).await
        }
    }
}

/// A message that does not decode: to the DLQ, and when its run id can be
/// read, the run's row is made `failed` with the reason.
async fn malformed(deps: &Deps, delivery: &Delivery, reason: String) -> Disposition {
    let body: serde_json::Value = serde_json::from_slice(&delivery.payload).unwrap_or_default();
    let field = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let uuid = |name: &str| field(name).and_then(|v| Uuid::parse_str(&v).ok());
    if let Some(run_id) = Subjects::run_id_of(&delivery.subject) {
        let message = clip_error(&format!("The run request is invalid: {reason}"));
        let now = Utc::now();
        let run = NewRun {
            id: run_id,
            tenant_id: uuid("tenantId").unwrap_or_default(),
            user_id: uuid("userId"),
            mid: field("mid").unwrap_or_default(),
            snippet_name: field("snippetName"),
            sql_text_hash: field("sqlText")
                .map(|s| crate::crypto::sha256_hex(&s))
                .unwrap_or_default(),
            sql_text_encrypted: None,
            target_update_type: None,
        };
        match store::fail_malformed(&deps.db, run, deps.cipher.encrypt(&message), now).await {
            Ok(true) => deps.publish_event(&StatusEvent::failed(run_id, &message, now)).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "could not record the malformed run; will retry");
                return Disposition::Retry(std::time::Duration::from_secs(5));
            }
        }
    }
    Disposition::DeadLetter(reason)
}

/// Marks the run failed (compare-and-set), publishes `failed` and deletes
/// the QueryDefinition this delivery created. A database error here leaves
/// the message for another delivery.
async fn fail_run(
    deps: &Deps,
    run_id: Uuid,
    reason: &str,
    created_qd: Option<&str>,
    msg: &ExecuteMessage,
) -> Disposition {
    let reason = clip_error(reason);
    let now = Utc::now();
    let terminal = Terminal::Failed {
        error_message_encrypted: deps.cipher.encrypt(&reason),
    };
    match store::finish(&deps.db, run_id, terminal, now).await {
        Ok(true) => {
            let created = store::get_run(&deps.db, run_id)
                .await
                .ok()
                .flatten()
                .map(|r| r.created_at)
                .unwrap_or(now);
            deps.record_outcome("failed", "execute", created);
            deps.publish_event(&StatusEvent::failed(run_id, &reason, now)).await;
            if let Some(qd) = created_qd {
                crate::poll::delete_query_definition(deps, msg.tenant_id, msg.user_id, &msg.mid, qd).await;
            }
            Disposition::Ack
        }
        Ok(false) => Disposition::Ack,
        Err(e) => {
            tracing::error!(error = %e, "could not mark the run failed");
            Disposition::Retry(std::time::Duration::from_secs(5))
        }
    }
}

/// Where the results go and how.
struct Destination {
    target: DeTarget,
    update_type: &'static str,
}

async fn execute(deps: &Deps, msg: &ExecuteMessage, created_qd: &mut Option<String>) -> Result<(), Failure> {
    let sql = match (&msg.sql_text, &msg.sql_text_encrypted) {
        (Some(plain), _) => Ok(plain.clone()),
        (None, Some(enc)) => deps.cipher.decrypt(enc).map_err(|_| {
            Failure::Permanent("The query text could not be decrypted. Please submit the query again.".into())
        }),
        (None, None) => unreachable!("decode rejects a message without SQL"),
    };
    let now = Utc::now();
    let mid = msg.mid.trim();
    // The row exists before anything can fail, so every failure is recorded.
    store::insert_run_if_absent(
        &deps.db,
        NewRun {
            id: msg.run_id,
            tenant_id: msg.tenant_id,
            user_id: msg.user_id,
            mid: mid.to_string(),
            snippet_name: msg.snippet_name.clone(),
            sql_text_hash: sql.as_deref().map(crate::crypto::sha256_hex).unwrap_or_default(),
            sql_text_encrypted: match (&msg.sql_text_encrypted, &sql) {
                (Some(enc), _) => Some(enc.clone()),
                (None, Ok(plain)) => Some(deps.cipher.encrypt(plain)),
                (None, Err(_)) => None,
            },
            target_update_type: msg.target_update_type.clone(),
        },
        now,
    )
    .await?;
    let sql = sql?;
    if sql.trim().is_empty() {
        return Err(Failure::Permanent("The query text is empty.".into()));
    }
    if sql.len() > MAX_SQL_BYTES {
        return Err(Failure::Permanent(format!(
            "The query text is {} KB long; the most accepted is {} KB.",
            sql.len() / 1024,
            MAX_SQL_BYTES / 1024
        )));
    }
    let run = store::get_run(&deps.db, msg.run_id)
        .await?
        .ok_or_else(|| Failure::Transient("the run row vanished".into()))?;
    let status = RunStatus::parse(&run.status).unwrap_or(RunStatus::Failed);
    if status.is_terminal() {
        tracing::info!(status = status.as_str(), "run already finished; nothing to do");
        return Ok(());
    }
    if run.task_id.is_some() {
        // Started by an earlier delivery: only make sure its poll exists.
        crate::jetstream::publish_poll(&deps.js, &deps.subjects, msg.run_id, &format!("poll:{}", msg.run_id)).await?;
        return Ok(());
    }
    let session = deps.mce.session(msg.tenant_id, msg.user_id, mid).await?;
    if run.perform_requested_at.is_some() {
        *created_qd = run.query_definition_id.clone();
        return resume_interrupted(deps, &session, &run).await;
    }
    if status == RunStatus::Queued && store::mark_running(&deps.db, msg.run_id, now).await? {
        deps.publish_event(&StatusEvent::new(msg.run_id, EventStatus::Running, now))
            .await;
    }

    deps.publish_event(&StatusEvent::new(msg.run_id, EventStatus::ValidatingQuery, Utc::now()))
        .await;
    validate(&session, &sql).await?;
    let empty = TableMetadata::new();
    let mut catalog = schema::Catalog::from_metadata(msg.table_metadata.as_ref().unwrap_or(&empty));
    fetch_metadata(&session, &sql, &mut catalog).await?;
    let analysis = schema::analyse(&sql, &catalog).map_err(|e| Failure::Permanent(e.to_string()))?;
    if analysis.sql != sql {
        // The stars were expanded: MCE checks the query that will really run.
        validate(&session, &analysis.sql).await?;
    }

    let mut folder = Folder::Unknown;
    let destination = match &msg.target_de_customer_key {
        None => {
            deps.publish_event(&StatusEvent::new(
                msg.run_id,
                EventStatus::CreatingDataExtension,
                Utc::now(),
            ))
            .await;
            let de_key = temp_de_key(msg.run_id);
            let de_name = temp_de_name(msg.run_id, msg.snippet_name.as_deref());
            // A DE left by an earlier delivery of this run is replaced.
            best_effort(session.delete_data_extension_if_exists(&de_key).await)?;
            let object_id = with_folder(deps, &session, msg, &mut folder, |folder_id| {
                session.create_data_extension(&de_name, &de_key, folder_id, &analysis.fields)
            })
            .await?;
            Destination {
                target: DeTarget {
                    object_id,
                    customer_key: de_key,
                    name: de_name,
                },
                update_type: "Overwrite",
            }
        }
        Some(key) => {
            deps.publish_event(&StatusEvent::new(
                msg.run_id,
                EventStatus::TargetingDataExtension,
                Utc::now(),
            ))
            .await;
            let mode = schema::TargetMode::parse(msg.target_update_type.as_deref())
                .ok_or_else(|| Failure::Permanent("targetUpdateType must be Overwrite, Append or Update.".into()))?;
            let target = session.find_data_extension(key.trim(), true).await?.ok_or_else(|| {
                Failure::Permanent(format!("Target Data Extension \"{}\" was not found.", key.trim()))
            })?;
            let fields: Vec<schema::TargetField> = session
                .data_extension_fields(&target.customer_key)
                .await?
                .iter()
                .map(|f| schema::TargetField {
                    name: f.name.clone(),
                    field_type: schema::FieldType::from_mce(&f.field_type),
                    max_length: f.max_length,
                    is_primary_key: f.is_primary_key,
                    is_required: f.is_required,
                })
                .collect();
            let problems = schema::check_target(
                &analysis.sql,
                &analysis.columns,
                &target.name,
                &target.customer_key,
                &fields,
                mode,
            );
            if !problems.is_empty() {
                return Err(Failure::Permanent(problems.join("\n")));
            }
            Destination {
                target: DeTarget {
                    object_id: target.object_id,
                    customer_key: target.customer_key,
                    name: target.name,
                },
                update_type: mode.as_mce(),
            }
        }
    };

    let qd_key = query_key(msg.run_id);
    if let Some(old) = best_effort(session.find_query_definition(&qd_key).await)?.flatten() {
        best_effort(session.delete_query_definition(&old).await)?;
    }
    let qd_id = with_folder(deps, &session, msg, &mut folder, |folder_id| {
        session.create_query_definition(
            &qd_key,
            &analysis.sql,
            &destination.target,
            destination.update_type,
            Some(folder_id),
        )
    })
    .await?;
    *created_qd = Some(qd_id.clone());

    // Canceled while we worked: stop before Perform.
    let de_key = destination.target.customer_key.clone();
    let now = Utc::now();
    let prepared = write_surely(
        deps,
        msg.run_id,
        || store::record_prepared(&deps.db, msg.run_id, &qd_id, &qd_key, &de_key, now),
        |run| run.perform_requested_at.is_some() && run.query_definition_id.as_deref() == Some(qd_id.as_str()),
    )
    .await?;
    if !prepared {
        tracing::info!("run no longer running before Perform; stopping");
        best_effort(session.delete_query_definition(&qd_id).await)?;
        return Ok(());
    }
    deps.publish_event(&StatusEvent::new(msg.run_id, EventStatus::ExecutingQuery, Utc::now()))
        .await;
    // From here a redelivery cannot know whether MCE received Perform: it goes
    // through `resume_interrupted`, never through a second Perform.
    let task_id = match session.perform_start(&qd_id).await {
        Ok(task_id) => task_id,
        Err(e) => {
            if e.surely_not_received() {
                // MCE did not get it: the next delivery may send Perform.
                store::clear_perform_requested(&deps.db, msg.run_id).await?;
            }
            return Err(e.into());
        }
    };
    started(deps, msg.run_id, task_id, &qd_id, &qd_key, &de_key).await
}

/// How long a delivery waits for the database to learn how a write it
/// could not confirm ended.
const DB_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// A write whose outcome a lost connection would leave unknown (the marker
/// before Perform, the TaskID after it): on an error the row is read back
/// until the database answers, and the write is tried again unless `landed`
/// shows it committed. Gives up after [`DB_PATIENCE`] with a transient error.
async fn write_surely<F, Fut>(
    deps: &Deps,
    run_id: Uuid,
    mut write: F,
    landed: impl Fn(&store::Run) -> bool,
) -> Result<bool, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, sea_orm::DbErr>>,
{
    let deadline = std::time::Instant::now() + DB_PATIENCE;
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let error = match write().await {
            Ok(changed) => return Ok(changed),
            Err(e) => e,
        };
        tracing::warn!(error = %error, "a write could not be confirmed; reading the row back");
        loop {
            if std::time::Instant::now() >= deadline {
                return Err(error.into());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
            match store::get_run(&deps.db, run_id).await {
                Ok(Some(run)) if landed(&run) => return Ok(true),
                Ok(_) => break,
                Err(_) => continue,
            }
        }
    }
}

/// Records the started query and publishes its poll message.
async fn started(
    deps: &Deps,
    run_id: Uuid,
    task_id: String,
    qd_id: &str,
    qd_key: &str,
    de_key: &str,
) -> Result<(), Failure> {
    let started = Started {
        task_id,
        query_definition_id: qd_id.to_string(),
        query_customer_key: qd_key.to_string(),
        target_de_customer_key: de_key.to_string(),
        poll_started_at: Utc::now(),
    };
    // The TaskID is in hand: it is not lost to a database that blinks.
    let recorded = write_surely(
        deps,
        run_id,
        || store::record_started(&deps.db, run_id, &started),
        |run| run.task_id.as_deref() == Some(started.task_id.as_str()),
    )
    .await?;
    if !recorded {
        tracing::info!("run left `running` during Perform; its poll will not start");
        return Ok(());
    }
    tracing::info!(task_id = %started.task_id, "query started");
    crate::jetstream::publish_poll(&deps.js, &deps.subjects, run_id, &format!("poll:{run_id}")).await?;
    Ok(())
}

/// An earlier delivery sent (or was about to send) Perform and stopped
/// before recording the TaskID. Perform is never sent again: if MCE shows
/// the query running or its rows present, the run is polled without a
/// TaskID (by isRunning and the rowset); otherwise it fails, asking the
/// user to run it again.
async fn resume_interrupted(deps: &Deps, session: &Session<'_>, run: &crate::store::Run) -> Result<(), Failure> {
    let (Some(qd_id), Some(qd_key), Some(de_key)) = (
        run.query_definition_id.clone(),
        run.query_customer_key.clone(),
        run.target_de_customer_key.clone(),
    ) else {
        return Err(Failure::Permanent(INTERRUPTED.into()));
    };
    let running = match session.is_running(&qd_id).await {
        Ok(r) => r,
        Err(e) if e.is_transient() => return Err(e.into()),
        Err(_) => false,
    };
    let has_rows =
        !running && de_key == temp_de_key(run.id) && session.rowset(&de_key, 1, 1).await.is_ok_and(|r| r.count > 0);
    if !running && !has_rows {
        return Err(Failure::Permanent(INTERRUPTED.into()));
    }
    tracing::warn!("resuming a run whose TaskID was lost: polling by isRunning and rowset");
    started(deps, run.id, String::new(), &qd_id, &qd_key, &de_key).await
}

async fn validate(session: &Session<'_>, sql: &str) -> Result<(), Failure> {
    match session.validate(sql).await {
        Ok(v) if v.valid => Ok(()),
        Ok(v) => Err(Failure::Permanent(v.errors.join("\n"))),
        // Validation is advisory while MCE is briefly unavailable: fail open.
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "validation unavailable; continuing");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Adds to the catalog the fields of every table the query reads that it
/// does not know yet: the DE by Name, then its fields (two SOAP calls per
/// table, once per run). A table MCE does not know stays unknown.
async fn fetch_metadata(session: &Session<'_>, sql: &str, catalog: &mut schema::Catalog) -> Result<(), Failure> {
    let Ok(tables) = schema::referenced_tables(sql) else {
        return Ok(()); // the analysis reports the parse error
    };
    let unknown: Vec<String> = tables.into_iter().filter(|t| !catalog.knows(t)).collect();
    for table in &unknown {
        let name = match table.split_once('.') {
            Some((ent, rest)) if ent.eq_ignore_ascii_case("ent") => rest,
            _ => table.as_str(),
        };
        let Some(de) = best_effort(session.find_data_extension(name, false).await)?.flatten() else {
            continue;
        };
        let Some(fields) = best_effort(session.data_extension_fields(&de.customer_key).await)? else {
            continue;
        };
        let fields: Vec<schema::SourceField> = fields
            .iter()
            .map(|f| {
                schema::MetadataField {
                    name: f.name.clone(),
                    field_type: Some(f.field_type.clone()),
                    max_length: f.max_length,
                    scale: None,
                    precision: None,
                }
                .to_source()
            })
            .collect();
        if !fields.is_empty() {
            catalog.insert(table, fields);
        }
    }
    Ok(())
}

/// Clean-up and lookup steps may fail without failing the run, unless MCE
/// is briefly away (retry the delivery) or nothing can work (credentials
/// gone, access denied).
fn best_effort<T>(result: Result<T, MceError>) -> Result<Option<T>, Failure> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_unrecoverable() || e.is_transient() => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "best-effort MCE step failed");
            Ok(None)
        }
    }
}

/// The results folder as this delivery knows it.
#[derive(Clone, Copy, Debug)]
enum Folder {
    Unknown,
    /// From `tenant_settings`: MCE may have lost it since.
    Cached(i64),
    /// Just found or created in MCE.
    Fresh(i64),
}

/// Runs a create that needs the results folder; if the folder came from the
/// cache and MCE refuses, the folder is looked up again once and the create
/// retried.
async fn with_folder<T, F, Fut>(
    deps: &Deps,
    session: &Session<'_>,
    msg: &ExecuteMessage,
    folder: &mut Folder,
    create: F,
) -> Result<T, Failure>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<T, MceError>>,
{
    let mid = msg.mid.trim();
    if let Folder::Unknown = folder {
        *folder = match store::folder_id(&deps.db, msg.tenant_id, mid).await? {
            Some(id) => Folder::Cached(id),
            None => Folder::Fresh(find_or_create_folder(deps, session, msg.tenant_id, mid).await?),
        };
    }
    match (*folder, create(folder_id(*folder)).await) {
        (Folder::Cached(stale), Err(MceError::SoapFailure { .. })) => {
            tracing::warn!(
                folder_id = stale,
                "the cached results folder was refused; looking it up again"
            );
            store::forget_folder(&deps.db, msg.tenant_id, mid).await?;
            *folder = Folder::Fresh(find_or_create_folder(deps, session, msg.tenant_id, mid).await?);
            Ok(create(folder_id(*folder)).await?)
        }
        (_, result) => Ok(result?),
    }
}

fn folder_id(folder: Folder) -> i64 {
    match folder {
        Folder::Cached(id) | Folder::Fresh(id) => id,
        Folder::Unknown => 0,
    }
}

/// The "QueryPlusPlus Results" DE folder: found by name and content type,
/// else created under the root "Data Extensions" folder; cached per
/// (tenant, MID).
///
/// Two deliveries that both miss the cache must not both create it (the
/// sweeper looks in one folder): one at a time per process, and per
/// business unit across replicas; the second finds the first's.
async fn find_or_create_folder(deps: &Deps, session: &Session<'_>, tenant_id: Uuid, mid: &str) -> Result<i64, Failure> {
    static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_here = IN_PROCESS.lock().await;
    let across_replicas = store::folder_lock(&deps.db, tenant_id, mid).await?;
    if let Some(id) = store::folder_id(&deps.db, tenant_id, mid).await? {
        return Ok(id);
    }
    let id = match session.find_folder(FOLDER_NAME, Some(FOLDER_CONTENT_TYPE)).await? {
        Some(id) => id,
        None => {
            let root = session
                .find_folder(ROOT_FOLDER_NAME, Some(FOLDER_CONTENT_TYPE))
                .await?
                .ok_or_else(|| {
                    Failure::Permanent("The root Data Extensions folder was not found in Marketing Cloud.".into())
                })?;
            session.create_folder(FOLDER_NAME, root).await?
        }
    };
    store::save_folder_id(&deps.db, tenant_id, mid, id).await?;
    if let Some(lock) = across_replicas {
        lock.commit().await?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "3f2a9c1e-0b5f-4c1e-8a2d-4f6b9c3e1a00";

    fn body(extra: &str) -> String {
        format!(
            r#"{{"runId":"{RUN}","tenantId":"{RUN}","userId":"{RUN}","mid":"510000123","sqlText":"SELECT 1"{extra}}}"#
        )
    }

    #[test]
    fn names_fit_mce_limits_and_never_collide_on_a_prefix() {
        let run = Uuid::parse_str(RUN).unwrap();
        assert_eq!(query_key(run), "QPP_Q_3f2a9c1e0b5fc1e8a2d4f6b9c3e1a0");
        assert_eq!(query_key(run).len(), 36);
        assert_eq!(temp_de_key(run).len(), 36);
        assert_eq!(
            temp_de_name(run, Some("  My  Report: Q4! ")),
            "QPP_My_Report_Q4_3f2a9c1e0b5fc1e8a2d4f6b9c3e1a0"
        );
        assert_eq!(temp_de_name(run, None), "QPP_Results_3f2a9c1e0b5fc1e8a2d4f6b9c3e1a0");
        let other = Uuid::parse_str("3f2a9c1e-0000-4000-8000-000000000000").unwrap();
        assert_ne!(
            temp_de_key(run),
            temp_de_key(other),
            "same 8-character prefix, different keys"
        );
    }

    #[test]
    fn decode_checks_the_message() {
        let subject = format!("shell_query.execute.{RUN}");
        assert!(decode(&subject, body("").as_bytes()).is_ok());
        assert!(
            decode(&subject, b"not json")
                .unwrap_err()
                .starts_with("invalid execute message")
        );
        assert!(
            decode("shell_query.execute.other", body("").as_bytes())
                .unwrap_err()
                .contains("differs")
        );
        assert!(
            decode(&subject, body(r#","sqlTextEncrypted":"x""#).as_bytes())
                .unwrap_err()
                .contains("both")
        );
        let no_mid = body("").replace("510000123", "abc");
        assert!(decode(&subject, no_mid.as_bytes()).unwrap_err().contains("mid"));
    }
}
