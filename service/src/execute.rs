//! One delivery of `P.execute.<runId>` (DESIGN.md "Execute"), run-to-temp.

use chrono::Utc;
use serde::Deserialize;
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

/// The body of `P.execute.<runId>`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
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

pub async fn handle(deps: &Deps, delivery: &Delivery) -> Disposition {
    let msg = match decode(&delivery.subject, &delivery.payload) {
        Ok(m) => m,
        Err(reason) => return Disposition::DeadLetter(reason),
    };
    let span =
        tracing::info_span!("execute", run_id = %msg.run_id, tenant_id = %msg.tenant_id, delivery = delivery.delivered);
    let _enter = span.enter();
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
            tracing::error!(error = %detail, "execute failed on its last delivery");
            let reason = "Marketing Cloud is temporarily unavailable. Please try again.";
            fail_run(deps, msg.run_id, reason, created_qd.as_deref(), &msg).await
        }
        Err(Failure::Permanent(reason)) => {
            tracing::info!("run failed permanently");
            fail_run(deps, msg.run_id, &reason, created_qd.as_deref(), &msg).await
        }
    }
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

async fn execute(deps: &Deps, msg: &ExecuteMessage, created_qd: &mut Option<String>) -> Result<(), Failure> {
    let sql = match (&msg.sql_text, &msg.sql_text_encrypted) {
        (Some(plain), _) => plain.clone(),
        (None, Some(enc)) => deps.cipher.decrypt(enc).map_err(|_| {
            Failure::Permanent("The query text could not be decrypted. Please submit the query again.".into())
        })?,
        (None, None) => unreachable!("decode rejects a message without SQL"),
    };
    let now = Utc::now();
    store::insert_run_if_absent(
        &deps.db,
        NewRun {
            id: msg.run_id,
            tenant_id: msg.tenant_id,
            user_id: msg.user_id,
            mid: msg.mid.trim().to_string(),
            snippet_name: msg.snippet_name.clone(),
            sql_text_hash: crate::crypto::sha256_hex(&sql),
            sql_text_encrypted: Some(
                msg.sql_text_encrypted
                    .clone()
                    .unwrap_or_else(|| deps.cipher.encrypt(&sql)),
            ),
            target_update_type: msg.target_update_type.clone(),
        },
        now,
    )
    .await?;
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
    if status == RunStatus::Queued && store::mark_running(&deps.db, msg.run_id, now).await? {
        deps.publish_event(&StatusEvent::new(msg.run_id, EventStatus::Running, now))
            .await;
    }

    if msg.target_de_customer_key.is_some() {
        return Err(Failure::Permanent(
            "Running into an existing Data Extension is not available yet.".into(),
        ));
    }
    let session = deps.mce.session(msg.tenant_id, msg.user_id, msg.mid.trim()).await?;
    deps.publish_event(&StatusEvent::new(msg.run_id, EventStatus::ValidatingQuery, Utc::now()))
        .await;
    match session.validate(&sql).await {
        Ok(v) if v.valid => {}
        Ok(v) => return Err(Failure::Permanent(v.errors.join("\n"))),
        // Validation is advisory when MCE is briefly unavailable: fail open.
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "validation unavailable; continuing")
        }
        Err(e) => return Err(e.into()),
    }
    let empty = TableMetadata::new();
    let catalog = schema::Catalog::from_metadata(msg.table_metadata.as_ref().unwrap_or(&empty));
    let analysis = schema::analyse(&sql, &catalog).map_err(|e| Failure::Permanent(e.to_string()))?;
    let fields = analysis.fields;
    let sql = analysis.sql;

    deps.publish_event(&StatusEvent::new(
        msg.run_id,
        EventStatus::CreatingDataExtension,
        Utc::now(),
    ))
    .await;
    let folder_id = ensure_folder(deps, &session, msg.tenant_id, msg.mid.trim()).await?;
    let de_key = temp_de_key(msg.run_id);
    let de_name = temp_de_name(msg.run_id, msg.snippet_name.as_deref());
    // A DE left by an earlier delivery of this run is replaced.
    best_effort(session.delete_data_extension_if_exists(&de_key).await)?;
    let de_object_id = session
        .create_data_extension(&de_name, &de_key, folder_id, &fields)
        .await?;

    let qd_key = query_key(msg.run_id);
    if let Some(old) = best_effort(session.find_query_definition(&qd_key).await)?.flatten() {
        best_effort(session.delete_query_definition(&old).await)?;
    }
    let target = DeTarget {
        object_id: de_object_id,
        customer_key: de_key.clone(),
        name: de_name,
    };
    let qd_id = session
        .create_query_definition(&qd_key, &sql, &target, "Overwrite", Some(folder_id))
        .await?;
    *created_qd = Some(qd_id.clone());

    // Canceled while we worked: stop before Perform.
    let current = store::get_run(&deps.db, msg.run_id).await?;
    if current.as_ref().is_none_or(|r| r.status != RunStatus::Running.as_str()) {
        tracing::info!("run no longer running before Perform; stopping");
        best_effort(session.delete_query_definition(&qd_id).await)?;
        return Ok(());
    }
    deps.publish_event(&StatusEvent::new(msg.run_id, EventStatus::ExecutingQuery, Utc::now()))
        .await;
    let task_id = session.perform_start(&qd_id).await?;
    let started = Started {
        task_id,
        query_definition_id: qd_id,
        query_customer_key: qd_key,
        target_de_customer_key: de_key,
        poll_started_at: Utc::now(),
    };
    if !store::record_started(&deps.db, msg.run_id, &started).await? {
        tracing::info!("run left `running` during Perform; cleaning up");
        best_effort(session.delete_query_definition(&started.query_definition_id).await)?;
        return Ok(());
    }
    tracing::info!(task_id = %started.task_id, "query started");
    crate::jetstream::publish_poll(&deps.js, &deps.subjects, msg.run_id, &format!("poll:{}", msg.run_id)).await?;
    Ok(())
}

/// Clean-up steps may fail without failing the run, unless nothing else can
/// work either (credentials gone, access denied).
fn best_effort<T>(result: Result<T, MceError>) -> Result<Option<T>, Failure> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_unrecoverable() => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "best-effort MCE step failed");
            Ok(None)
        }
    }
}

/// The "QueryPlusPlus Results" folder's id: cached per (tenant, MID), else
/// found by name and content type, else created under the root DE folder.
async fn ensure_folder(deps: &Deps, session: &Session<'_>, tenant_id: Uuid, mid: &str) -> Result<i64, Failure> {
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
