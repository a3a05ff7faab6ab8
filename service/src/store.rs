//! Every query the service makes, in one place. State changes are
//! compare-and-set in SQL: losing one is a normal outcome (`false`), not an
//! error.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use entities::{credentials, shell_query_runs as runs, tenant_settings, tenants};
use migration::MigratorTrait;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};
use uuid::Uuid;

use crate::model::RunStatus;
use crate::poll::decide::PollState;

pub type Run = runs::Model;

/// An arbitrary, fixed key for the migration advisory lock.
const MIGRATION_LOCK_KEY: i64 = 0x5348_454c_4c51; // "SHELLQ"

/// Connects, creating the PostgreSQL database first when it is missing.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    if url.starts_with("postgres") {
        create_database_if_missing(url).await?;
    }
    let mut options = ConnectOptions::new(url.to_string());
    // SQLite (the demo) has one writer: a single connection avoids the
    // deadlock of two deferred transactions upgrading to write at once.
    let max_connections = if url.starts_with("sqlite") { 1 } else { max_connections };
    // During an outage a query fails in seconds (its delivery is retried)
    // instead of waiting half a minute for a connection.
    options
        .max_connections(max_connections)
        .connect_timeout(std::time::Duration::from_secs(5))
        .acquire_timeout(std::time::Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options).await
}

async fn create_database_if_missing(url: &str) -> Result<(), DbErr> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| DbErr::Custom(format!("DATABASE_URL: {e}")))?;
    let name = parsed.path().trim_start_matches('/').to_string();
    if name.is_empty() || name == "postgres" {
        return Ok(());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(DbErr::Custom(
            "DATABASE_URL: the database name must be [A-Za-z0-9_-]".into(),
        ));
    }
    parsed.set_path("/postgres");
    let mut options = ConnectOptions::new(parsed.to_string());
    options.max_connections(1).sqlx_logging(false);
    let Ok(admin) = Database::connect(options).await else {
        // No maintenance database to talk to: let the real connect report.
        return Ok(());
    };
    let exists = |admin: DatabaseConnection| {
        let name = name.clone();
        async move {
            let row = admin
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT 1 AS one FROM pg_database WHERE datname = $1",
                    [name.into()],
                ))
                .await?;
            Ok::<_, DbErr>((admin, row.is_some()))
        }
    };
    let (admin, found) = exists(admin).await?;
    if !found {
        let created = admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await;
        if let Err(e) = created {
            // Another replica may have created it in the meantime.
            let (_, found) = exists(admin.clone()).await?;
            if !found {
                return Err(e);
            }
        }
    }
    admin.close().await
}

/// Applies pending migrations; on PostgreSQL under an advisory lock, so many
/// replicas starting at once migrate one after the other.
pub async fn migrate(url: &str) -> Result<(), DbErr> {
    let db = connect(url, 1).await?;
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    if postgres {
        db.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .await?;
    }
    let result = migration::Migrator::up(&db, None).await;
    if postgres {
        db.execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
            .await?;
    }
    db.close().await?;
    result
}

/// A run as the execute message describes it.
pub struct NewRun {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub mid: String,
    pub snippet_name: Option<String>,
    pub sql_text_hash: String,
    pub sql_text_encrypted: Option<String>,
    pub target_update_type: Option<String>,
}

/// Inserts the run as `queued` unless a row exists (the API may have made it).
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "insert_run_if_absent"))]
pub async fn insert_run_if_absent(db: &DatabaseConnection, run: NewRun, now: DateTime<Utc>) -> Result<(), DbErr> {
    let row = runs::ActiveModel {
        id: Set(run.id),
        tenant_id: Set(run.tenant_id),
        user_id: Set(run.user_id),
        mid: Set(run.mid),
        snippet_name: Set(run.snippet_name),
        sql_text_hash: Set(run.sql_text_hash),
        sql_text_encrypted: Set(run.sql_text_encrypted),
        status: Set(RunStatus::Queued.as_str().into()),
        target_update_type: Set(run.target_update_type),
        created_at: Set(now),
        poll_count: Set(0),
        poll_not_running_count: Set(0),
        poll_rowset_attempts: Set(0),
        poll_probe_attempts: Set(0),
        poll_transient_errors: Set(0),
        ..Default::default()
    };
    runs::Entity::insert(row)
        .on_conflict(OnConflict::column(runs::Column::Id).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    Ok(())
}

#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "get_run"))]
pub async fn get_run(db: &DatabaseConnection, id: Uuid) -> Result<Option<Run>, DbErr> {
    runs::Entity::find_by_id(id).one(db).await
}

/// The row as a poll tick needs it: everything but the SQL text (up to
/// 256 KB encrypted), which a tick never reads.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "get_run_for_poll"))]
pub async fn get_run_for_poll(db: &DatabaseConnection, id: Uuid) -> Result<Option<Run>, DbErr> {
    use sea_orm::Iterable as _;
    runs::Entity::find_by_id(id)
        .select_only()
        .columns(runs::Column::iter().filter(|c| !matches!(c, runs::Column::SqlTextEncrypted)))
        .column_as(Expr::value(Option::<String>::None), "sql_text_encrypted")
        .one(db)
        .await
}

/// `queued → running`, setting `started_at`. False if the row was not queued.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "mark_running"))]
pub async fn mark_running(db: &DatabaseConnection, id: Uuid, now: DateTime<Utc>) -> Result<bool, DbErr> {
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(RunStatus::Running.as_str()))
        .col_expr(runs::Column::StartedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Queued.as_str()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The assets of a run about to be started, persisted with the marker
/// `perform_requested_at` before Perform is sent. False if the row is no
/// longer running (canceled meanwhile).
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "record_prepared"))]
pub async fn record_prepared(
    db: &DatabaseConnection,
    id: Uuid,
    query_definition_id: &str,
    query_customer_key: &str,
    target_de_customer_key: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let result = runs::Entity::update_many()
        .col_expr(
            runs::Column::QueryDefinitionId,
            Expr::value(query_definition_id.to_string()),
        )
        .col_expr(
            runs::Column::QueryCustomerKey,
            Expr::value(query_customer_key.to_string()),
        )
        .col_expr(
            runs::Column::TargetDeCustomerKey,
            Expr::value(target_de_customer_key.to_string()),
        )
        .col_expr(runs::Column::PerformRequestedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Running.as_str()))
        .filter(runs::Column::TaskId.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Perform was surely not received by MCE (no connection, 429, token
/// failure): the marker goes, so a later delivery may send it.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "clear_perform_requested"))]
pub async fn clear_perform_requested(db: &DatabaseConnection, id: Uuid) -> Result<(), DbErr> {
    runs::Entity::update_many()
        .col_expr(
            runs::Column::PerformRequestedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::TaskId.is_null())
        .exec(db)
        .await?;
    Ok(())
}

/// A run request too broken to start: the row is made (or moved) `failed`
/// with the reason. True if the row changed.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "fail_malformed"))]
pub async fn fail_malformed(
    db: &DatabaseConnection,
    run: NewRun,
    error_message_encrypted: String,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let id = run.id;
    insert_run_if_absent(db, run, now).await?;
    finish(
        db,
        id,
        Terminal::Failed {
            error_message_encrypted,
        },
        now,
    )
    .await
}

/// Forgets the cached results folder (MCE no longer has it).
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "forget_folder"))]
pub async fn forget_folder(db: &DatabaseConnection, tenant_id: Uuid, mid: &str) -> Result<(), DbErr> {
    tenant_settings::Entity::delete_by_id((tenant_id, mid.to_string()))
        .exec(db)
        .await?;
    Ok(())
}

/// What Perform started, persisted in one update before the poll message.
pub struct Started {
    pub task_id: String,
    pub query_definition_id: String,
    pub query_customer_key: String,
    pub target_de_customer_key: String,
    pub poll_started_at: DateTime<Utc>,
}

/// Records the started query on a running row. False if the row is no longer running.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "record_started"))]
pub async fn record_started(db: &DatabaseConnection, id: Uuid, s: &Started) -> Result<bool, DbErr> {
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::TaskId, Expr::value(s.task_id.clone()))
        .col_expr(
            runs::Column::QueryDefinitionId,
            Expr::value(s.query_definition_id.clone()),
        )
        .col_expr(
            runs::Column::QueryCustomerKey,
            Expr::value(s.query_customer_key.clone()),
        )
        .col_expr(
            runs::Column::TargetDeCustomerKey,
            Expr::value(s.target_de_customer_key.clone()),
        )
        .col_expr(runs::Column::PollStartedAt, Expr::value(s.poll_started_at))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Running.as_str()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The terminal state a run moves into.
pub enum Terminal {
    Ready {
        row_count: i64,
    },
    /// `error_message` is client-safe and already encrypted.
    Failed {
        error_message_encrypted: String,
    },
    Canceled,
}

/// Compare-and-set from a live state into a terminal one. Only the winner
/// (true) publishes the event and cleans up.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "finish"))]
pub async fn finish(db: &DatabaseConnection, id: Uuid, terminal: Terminal, now: DateTime<Utc>) -> Result<bool, DbErr> {
    let mut update = runs::Entity::update_many().col_expr(runs::Column::CompletedAt, Expr::value(now));
    update = match terminal {
        Terminal::Ready { row_count } => update
            .col_expr(runs::Column::Status, Expr::value(RunStatus::Ready.as_str()))
            .col_expr(
                runs::Column::RowCount,
                Expr::value(i32::try_from(row_count).unwrap_or(i32::MAX)),
            ),
        Terminal::Failed {
            error_message_encrypted,
        } => update
            .col_expr(runs::Column::Status, Expr::value(RunStatus::Failed.as_str()))
            .col_expr(runs::Column::ErrorMessage, Expr::value(error_message_encrypted)),
        Terminal::Canceled => update.col_expr(runs::Column::Status, Expr::value(RunStatus::Canceled.as_str())),
    };
    let result = update
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.is_in(RunStatus::LIVE))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Claims the cleanup of a run the API set to `canceled` (no `completed_at`
/// yet). Only the winner publishes `canceled` and deletes MCE assets.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "claim_api_cancel"))]
pub async fn claim_api_cancel(db: &DatabaseConnection, id: Uuid, now: DateTime<Utc>) -> Result<bool, DbErr> {
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::CompletedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Canceled.as_str()))
        .filter(runs::Column::CompletedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The poll state as the row holds it; `delivered` is the poll message's
/// delivery count (the row's count wins if the consumer was ever reset).
pub fn poll_state(run: &Run, delivered: u32, fallback_start: DateTime<Utc>) -> PollState {
    let count = |v: i32| u32::try_from(v).unwrap_or(0);
    PollState {
        poll_count: delivered.max(count(run.poll_count) + 1),
        started_at: run.poll_started_at.unwrap_or(fallback_start),
        not_running_count: count(run.poll_not_running_count),
        not_running_first_at: run.poll_not_running_first_at,
        rowset_attempts: count(run.poll_rowset_attempts),
        rowset_first_at: run.poll_rowset_first_at,
        probe_attempts: count(run.poll_probe_attempts),
        last_probe_at: run.poll_last_probe_at,
        transient_errors: count(run.poll_transient_errors),
        last_status: run.poll_last_status.clone(),
    }
}

/// Saves a live run's poll state. False if the run is no longer running.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "save_poll_state"))]
pub async fn save_poll_state(db: &DatabaseConnection, id: Uuid, s: &PollState) -> Result<bool, DbErr> {
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::PollCount, Expr::value(int(s.poll_count)))
        .col_expr(runs::Column::PollNotRunningCount, Expr::value(int(s.not_running_count)))
        .col_expr(runs::Column::PollNotRunningFirstAt, Expr::value(s.not_running_first_at))
        .col_expr(runs::Column::PollRowsetAttempts, Expr::value(int(s.rowset_attempts)))
        .col_expr(runs::Column::PollRowsetFirstAt, Expr::value(s.rowset_first_at))
        .col_expr(runs::Column::PollProbeAttempts, Expr::value(int(s.probe_attempts)))
        .col_expr(runs::Column::PollLastProbeAt, Expr::value(s.last_probe_at))
        .col_expr(runs::Column::PollTransientErrors, Expr::value(int(s.transient_errors)))
        .col_expr(runs::Column::PollLastStatus, Expr::value(s.last_status.clone()))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Running.as_str()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Persists a QueryDefinition ObjectID recovered by CustomerKey.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "set_query_definition_id"))]
pub async fn set_query_definition_id(db: &DatabaseConnection, id: Uuid, object_id: &str) -> Result<(), DbErr> {
    runs::Entity::update_many()
        .col_expr(runs::Column::QueryDefinitionId, Expr::value(object_id.to_string()))
        .filter(runs::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Live runs created before `cutoff`, oldest first (at most 1000 a pass).
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "stale_runs"))]
pub async fn stale_runs(db: &DatabaseConnection, cutoff: DateTime<Utc>) -> Result<Vec<Run>, DbErr> {
    runs::Entity::find()
        .filter(runs::Column::Status.is_in(RunStatus::LIVE))
        .filter(runs::Column::CreatedAt.lt(cutoff))
        .order_by_asc(runs::Column::CreatedAt)
        .limit(1000)
        .all(db)
        .await
}

/// The QueryDefinitions live runs hold: their ObjectIDs where recorded, and
/// their CustomerKeys (one per run, `execute::query_key`), which a run's
/// start creates before it can record anything: a start waiting out a
/// database outage holds a QueryDefinition its row does not name yet. The
/// sweeper leaves them alone.
#[derive(Debug, Default)]
pub struct LiveQueryDefinitions {
    pub object_ids: HashSet<String>,
    pub keys: HashSet<String>,
}

impl LiveQueryDefinitions {
    pub fn holds(&self, object_id: &str, key: &str) -> bool {
        self.object_ids.contains(object_id) || self.keys.contains(key)
    }
}

#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "live_query_definitions"))]
pub async fn live_query_definitions(db: &DatabaseConnection) -> Result<LiveQueryDefinitions, DbErr> {
    let rows: Vec<(Uuid, Option<String>)> = runs::Entity::find()
        .select_only()
        .columns([runs::Column::Id, runs::Column::QueryDefinitionId])
        .filter(runs::Column::Status.is_in(RunStatus::LIVE))
        .into_tuple()
        .all(db)
        .await?;
    let mut live = LiveQueryDefinitions::default();
    for (id, object_id) in rows {
        live.object_ids.extend(object_id);
        live.keys.insert(crate::execute::query_key(id));
    }
    Ok(live)
}

/// Every (tenant, MID, folder) with a results folder.
pub async fn folders(db: &DatabaseConnection) -> Result<Vec<(Uuid, String, i64)>, DbErr> {
    Ok(tenant_settings::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .filter_map(|s| s.qpp_folder_id.map(|f| (s.tenant_id, s.mid, i64::from(f))))
        .collect())
}

/// A user with credentials for the business unit (the most recently refreshed).
pub async fn credential_user(db: &DatabaseConnection, tenant_id: Uuid, mid: &str) -> Result<Option<Uuid>, DbErr> {
    Ok(credentials::Entity::find()
        .filter(credentials::Column::TenantId.eq(tenant_id))
        .filter(credentials::Column::Mid.eq(mid))
        .filter(credentials::Column::UserId.is_not_null())
        .order_by_desc(credentials::Column::UpdatedAt)
        .one(db)
        .await?
        .and_then(|c| c.user_id))
}

/// How long the tenant's last `limit` ready runs of the same query took,
/// from the start of polling to completion, newest first.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "recent_durations"))]
pub async fn recent_durations(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    sql_text_hash: &str,
    limit: u64,
) -> Result<Vec<std::time::Duration>, DbErr> {
    Ok(runs::Entity::find()
        .filter(runs::Column::TenantId.eq(tenant_id))
        .filter(runs::Column::SqlTextHash.eq(sql_text_hash))
        .filter(runs::Column::Status.eq(RunStatus::Ready.as_str()))
        .filter(runs::Column::CompletedAt.is_not_null())
        .filter(runs::Column::PollStartedAt.is_not_null())
        .order_by_desc(runs::Column::CompletedAt)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|r| (r.completed_at? - r.poll_started_at?).to_std().ok())
        .collect())
}

/// Serialises finding or creating a business unit's results folder across
/// replicas: a PostgreSQL advisory lock held by the returned transaction
/// until it ends. SQLite (the demo) has one process: `None`.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "folder_lock"))]
pub async fn folder_lock(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    mid: &str,
) -> Result<Option<sea_orm::DatabaseTransaction>, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(None);
    }
    let digest = crate::crypto::sha256_hex(&format!("results-folder:{tenant_id}:{mid}"));
    let key = i64::from_str_radix(&digest[..15], 16).unwrap_or_default();
    let txn = db.begin().await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [key.into()],
    ))
    .await?;
    Ok(Some(txn))
}

#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "folder_id"))]
pub async fn folder_id(db: &DatabaseConnection, tenant_id: Uuid, mid: &str) -> Result<Option<i64>, DbErr> {
    Ok(tenant_settings::Entity::find_by_id((tenant_id, mid.to_string()))
        .one(db)
        .await?
        .and_then(|s| s.qpp_folder_id)
        .map(i64::from))
}

#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "save_folder_id"))]
pub async fn save_folder_id(db: &DatabaseConnection, tenant_id: Uuid, mid: &str, folder_id: i64) -> Result<(), DbErr> {
    let row = tenant_settings::ActiveModel {
        tenant_id: Set(tenant_id),
        mid: Set(mid.to_string()),
        qpp_folder_id: Set(i32::try_from(folder_id).ok()),
    };
    tenant_settings::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([tenant_settings::Column::TenantId, tenant_settings::Column::Mid])
                .update_column(tenant_settings::Column::QppFolderId)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

pub async fn upsert_tenant(db: &DatabaseConnection, id: Uuid, eid: &str, tssd: &str) -> Result<(), DbErr> {
    let row = tenants::ActiveModel {
        id: Set(id),
        eid: Set(eid.to_string()),
        tssd: Set(tssd.to_string()),
    };
    tenants::Entity::insert(row)
        .on_conflict(
            OnConflict::column(tenants::Column::Id)
                .update_columns([tenants::Column::Eid, tenants::Column::Tssd])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Stores a refresh token (encrypted) and forgets any access token, so the
/// next call refreshes with it.
pub async fn upsert_credentials(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    user_id: Uuid,
    mid: &str,
    refresh_token_encrypted: String,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let epoch = DateTime::<Utc>::from_timestamp(0, 0).expect("the epoch is a valid time");
    let row = credentials::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant_id),
        user_id: Set(Some(user_id)),
        mid: Set(mid.to_string()),
        access_token: Set(None),
        refresh_token: Set(refresh_token_encrypted),
        expires_at: Set(epoch),
        updated_at: Set(Some(now)),
    };
    credentials::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                credentials::Column::UserId,
                credentials::Column::TenantId,
                credentials::Column::Mid,
            ])
            .update_columns([
                credentials::Column::AccessToken,
                credentials::Column::RefreshToken,
                credentials::Column::ExpiresAt,
                credentials::Column::UpdatedAt,
            ])
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}
