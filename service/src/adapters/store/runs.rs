//! `shell_query_runs`: one row per run, read out as the domain [`Run`].

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use entities::shell_query_runs as runs;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use shell_query_core::account::{Account, Mid};
use shell_query_core::poll::decide::PollState;
use shell_query_core::run::{Run, RunStatus, StartPhase, Task};
use shell_query_core::schema::UpdateType;
use uuid::Uuid;

use super::{Store, StoreError};

/// The live statuses as the column holds them.
const LIVE: [&str; 2] = [RunStatus::LIVE[0].as_str(), RunStatus::LIVE[1].as_str()];

/// The domain run of a row. A status outside the CHECK constraint is a
/// corrupt row, reported, never guessed.
fn to_run(m: runs::Model) -> Result<Run, StoreError> {
    let status = RunStatus::parse(&m.status)
        .ok_or_else(|| StoreError::Corrupt(format!("run {}: unknown status {:?}", m.id, m.status)))?;
    let start = match (m.task_id, m.perform_requested_at) {
        (Some(task), _) if task.is_empty() => StartPhase::Started(Task::Lost),
        (Some(task), _) => StartPhase::Started(Task::Known(task)),
        (None, Some(at)) => StartPhase::PerformRequested { at },
        (None, None) => StartPhase::NotRequested,
    };
    let count = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(Run {
        id: m.id,
        account: Account::new(m.tenant_id, m.user_id, Mid::stored(m.mid)),
        snippet_name: m.snippet_name,
        sql_text_hash: m.sql_text_hash,
        sql_text_encrypted: m.sql_text_encrypted,
        status,
        start,
        query_definition_id: m.query_definition_id,
        query_customer_key: m.query_customer_key,
        target_de_customer_key: m.target_de_customer_key,
        update_type: m.target_update_type.as_deref().map(UpdateType::from_stored),
        poll_started_at: m.poll_started_at,
        error_message: m.error_message,
        row_count: m.row_count.map(i64::from),
        created_at: m.created_at,
        started_at: m.started_at,
        completed_at: m.completed_at,
        terminal_event_at: m.terminal_event_at,
        cancel_handled_at: m.cancel_handled_at,
        retry_of: m.retry_of,
        poll: PollState {
            poll_count: count(m.poll_count),
            started_at: m.poll_started_at.unwrap_or(m.created_at),
            not_running_count: count(m.poll_not_running_count),
            not_running_first_at: m.poll_not_running_first_at,
            rowset_attempts: count(m.poll_rowset_attempts),
            rowset_first_at: m.poll_rowset_first_at,
            probe_attempts: count(m.poll_probe_attempts),
            last_look_at: m.poll_last_probe_at,
            transient_errors: count(m.poll_transient_errors),
            last_status: m.poll_last_status,
        },
    })
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
    /// Run-to-target: the DE the request names, so the row can rebuild it.
    pub target_de_customer_key: Option<String>,
    pub target_update_type: Option<String>,
}

/// Inserts the run as `queued` unless a row exists (the API may have made it).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "INSERT", db.collection.name = "shell_query_runs", code.function.name = "insert_run_if_absent"))]
pub async fn insert_run_if_absent(store: &Store, run: NewRun, now: DateTime<Utc>) -> Result<(), StoreError> {
    runs::Entity::insert(new_row(run, now))
        .on_conflict(OnConflict::column(runs::Column::Id).do_nothing().to_owned())
        .exec_without_returning(&store.db)
        .await?;
    Ok(())
}

/// A new row, `queued`, as the execute message describes it.
fn new_row(run: NewRun, now: DateTime<Utc>) -> runs::ActiveModel {
    runs::ActiveModel {
        id: Set(run.id),
        tenant_id: Set(run.tenant_id),
        user_id: Set(run.user_id),
        mid: Set(run.mid),
        snippet_name: Set(run.snippet_name),
        sql_text_hash: Set(run.sql_text_hash),
        sql_text_encrypted: Set(run.sql_text_encrypted),
        status: Set(RunStatus::Queued.as_str().into()),
        target_de_customer_key: Set(run.target_de_customer_key),
        target_update_type: Set(run.target_update_type),
        created_at: Set(now),
        poll_count: Set(0),
        poll_not_running_count: Set(0),
        poll_rowset_attempts: Set(0),
        poll_probe_attempts: Set(0),
        poll_transient_errors: Set(0),
        ..Default::default()
    }
}

#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "get_run"))]
pub async fn get_run(store: &Store, id: Uuid) -> Result<Option<Run>, StoreError> {
    runs::Entity::find_by_id(id)
        .one(&store.db)
        .await?
        .map(to_run)
        .transpose()
}

/// The row as a poll tick needs it: everything but the SQL text (up to
/// 256 KB encrypted), which a tick never reads. Read together with the
/// other ticks' rows due at the same moment ([`super::batch`]).
pub async fn get_run_for_poll(store: &Store, id: Uuid) -> Result<Option<Run>, StoreError> {
    store.poll_rows.get(&store.db, id).await?.map(to_run).transpose()
}

/// The newest runs first, optionally of one status and tenant, without
/// their SQL text (operators' `runs list`).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "list_runs"))]
pub(crate) async fn list(store: &Store, filter: &RunFilter, limit: u64) -> Result<Vec<Run>, StoreError> {
    let RunFilter {
        status,
        tenant_id,
        since,
        before,
    } = *filter;
    use sea_orm::Iterable as _;
    let mut query = runs::Entity::find()
        .select_only()
        .columns(runs::Column::iter().filter(|c| !matches!(c, runs::Column::SqlTextEncrypted)))
        .column_as(Expr::value(Option::<String>::None), "sql_text_encrypted");
    if let Some(status) = status {
        query = query.filter(runs::Column::Status.eq(status.as_str()));
    }
    if let Some(tenant_id) = tenant_id {
        query = query.filter(runs::Column::TenantId.eq(tenant_id));
    }
    if let Some(since) = since {
        query = query.filter(runs::Column::CreatedAt.gte(since));
    }
    if let Some(before) = before {
        query = query.filter(runs::Column::CreatedAt.lt(before));
    }
    query
        .order_by_desc(runs::Column::CreatedAt)
        .limit(limit)
        .all(&store.db)
        .await?
        .into_iter()
        .map(to_run)
        .collect()
}

/// Which runs `runs list` shows.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RunFilter {
    pub status: Option<RunStatus>,
    pub tenant_id: Option<Uuid>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub before: Option<DateTime<Utc>>,
}

/// A new run, `queued`, that retries `old` under `id`: the same request
/// (SQL, account, snippet, target), linked by `retry_of`.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "INSERT", db.collection.name = "shell_query_runs", code.function.name = "insert_retry"))]
pub(crate) async fn insert_retry(store: &Store, old: &Run, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
    let mut row = new_row(
        NewRun {
            id,
            tenant_id: old.account.tenant_id(),
            user_id: old.account.user_id(),
            mid: old.account.mid.to_string(),
            snippet_name: old.snippet_name.clone(),
            sql_text_hash: old.sql_text_hash.clone(),
            sql_text_encrypted: old.sql_text_encrypted.clone(),
            target_de_customer_key: old.target().map(str::to_string),
            target_update_type: old.update_type.as_ref().map(|u| u.as_str().to_string()),
        },
        now,
    );
    row.retry_of = Set(Some(old.id));
    runs::Entity::insert(row).exec_without_returning(&store.db).await?;
    Ok(())
}

/// The API's cancel, for operators: a live run becomes `canceled` with
/// `completed_at`; the service then claims it ([`claim_api_cancel`]),
/// deletes its assets and publishes the event. False if the run had ended.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "cancel_as_api"))]
pub(crate) async fn cancel_as_api(store: &Store, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(RunStatus::Canceled.as_str()))
        .col_expr(runs::Column::CompletedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.is_in(LIVE))
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// `queued → running`, setting `started_at`. False if the row was not queued.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "mark_running"))]
pub async fn mark_running(store: &Store, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(RunStatus::Running.as_str()))
        .col_expr(runs::Column::StartedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Queued.as_str()))
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The assets of a run about to be started, persisted with the marker
/// `perform_requested_at` before Perform is sent. False if the row is no
/// longer running (canceled meanwhile).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "record_prepared"))]
pub(crate) async fn record_prepared(
    store: &Store,
    id: Uuid,
    query_definition_id: &str,
    query_customer_key: &str,
    target_de_customer_key: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
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
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Perform was surely not received by MCE (no connection, 429, token
/// failure): the marker goes, so a later delivery may send it.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "clear_perform_requested"))]
pub(crate) async fn clear_perform_requested(store: &Store, id: Uuid) -> Result<(), StoreError> {
    runs::Entity::update_many()
        .col_expr(
            runs::Column::PerformRequestedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::TaskId.is_null())
        .exec(&store.db)
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
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "record_started"))]
pub async fn record_started(store: &Store, id: Uuid, s: &Started) -> Result<bool, StoreError> {
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
        .exec(&store.db)
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
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "finish"))]
pub async fn finish(store: &Store, id: Uuid, terminal: Terminal, now: DateTime<Utc>) -> Result<bool, StoreError> {
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
        Terminal::Canceled => update
            .col_expr(runs::Column::Status, Expr::value(RunStatus::Canceled.as_str()))
            .col_expr(runs::Column::CancelHandledAt, Expr::value(now)),
    };
    let result = update
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.is_in(LIVE))
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Claims the handling of a cancel the API made itself (`status =
/// 'canceled'`, with or without `completed_at`): sets the service's marker
/// `cancel_handled_at`, and `completed_at` if the API left it empty. Only
/// the winner publishes `canceled` and deletes MCE assets.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "claim_api_cancel"))]
pub(crate) async fn claim_api_cancel(store: &Store, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let completed = sea_orm::sea_query::Func::coalesce([Expr::col(runs::Column::CompletedAt), Expr::value(now)]);
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::CancelHandledAt, Expr::value(now))
        .col_expr(runs::Column::CompletedAt, completed.into())
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Canceled.as_str()))
        .filter(runs::Column::CancelHandledAt.is_null())
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Runs the API canceled before `cutoff` (by their `completed_at`, which the
/// API's cancel sets, else their creation), within [`SETTLE_WINDOW`], whose
/// cancel the service has not handled (at most 1000 a pass). A handler
/// meets a fresh cancel first; these are the ones no message brings back.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "pending_cancels"))]
pub(crate) async fn pending_cancels(store: &Store, cutoff: DateTime<Utc>) -> Result<Vec<Run>, StoreError> {
    use sea_orm::Condition;
    let canceled_before = Condition::any().add(runs::Column::CompletedAt.lt(cutoff)).add(
        Condition::all()
            .add(runs::Column::CompletedAt.is_null())
            .add(runs::Column::CreatedAt.lt(cutoff)),
    );
    let query = runs::Entity::find()
        .filter(runs::Column::Status.eq(RunStatus::Canceled.as_str()))
        .filter(runs::Column::CancelHandledAt.is_null())
        .filter(canceled_before)
        .filter(runs::Column::CreatedAt.gt(cutoff - SETTLE_WINDOW))
        .order_by_asc(runs::Column::CreatedAt);
    first_thousand(store, query).await
}

/// Inserts a run that is `failed` from the start (a request too broken to
/// run), unless a row with its id exists. True if this call made the row:
/// a broken message never finishes a run it did not create.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "INSERT", db.collection.name = "shell_query_runs", code.function.name = "insert_failed_if_absent"))]
pub(crate) async fn insert_failed_if_absent(
    store: &Store,
    run: NewRun,
    error_message_encrypted: String,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let mut row = new_row(run, now);
    row.status = Set(RunStatus::Failed.as_str().into());
    row.error_message = Set(Some(error_message_encrypted));
    row.completed_at = Set(Some(now));
    let inserted = runs::Entity::insert(row)
        .on_conflict(OnConflict::column(runs::Column::Id).do_nothing().to_owned())
        .exec_without_returning(&store.db)
        .await?;
    Ok(inserted == 1)
}

/// Saves a live run's poll state. False if the run is no longer running.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "save_poll_state"))]
pub async fn save_poll_state(store: &Store, id: Uuid, s: &PollState) -> Result<bool, StoreError> {
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let result = runs::Entity::update_many()
        .col_expr(runs::Column::PollCount, Expr::value(int(s.poll_count)))
        .col_expr(runs::Column::PollNotRunningCount, Expr::value(int(s.not_running_count)))
        .col_expr(runs::Column::PollNotRunningFirstAt, Expr::value(s.not_running_first_at))
        .col_expr(runs::Column::PollRowsetAttempts, Expr::value(int(s.rowset_attempts)))
        .col_expr(runs::Column::PollRowsetFirstAt, Expr::value(s.rowset_first_at))
        .col_expr(runs::Column::PollProbeAttempts, Expr::value(int(s.probe_attempts)))
        .col_expr(runs::Column::PollLastProbeAt, Expr::value(s.last_look_at))
        .col_expr(runs::Column::PollTransientErrors, Expr::value(int(s.transient_errors)))
        .col_expr(runs::Column::PollLastStatus, Expr::value(s.last_status.clone()))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::Status.eq(RunStatus::Running.as_str()))
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Persists a QueryDefinition ObjectID recovered by CustomerKey.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "set_query_definition_id"))]
pub(crate) async fn set_query_definition_id(store: &Store, id: Uuid, object_id: &str) -> Result<(), StoreError> {
    runs::Entity::update_many()
        .col_expr(runs::Column::QueryDefinitionId, Expr::value(object_id.to_string()))
        .filter(runs::Column::Id.eq(id))
        .exec(&store.db)
        .await?;
    Ok(())
}

/// Records that the run's terminal event was confirmed by the stream.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "UPDATE", db.collection.name = "shell_query_runs", code.function.name = "confirm_terminal_event"))]
pub(crate) async fn confirm_terminal_event(store: &Store, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
    runs::Entity::update_many()
        .col_expr(runs::Column::TerminalEventAt, Expr::value(now))
        .filter(runs::Column::Id.eq(id))
        .filter(runs::Column::TerminalEventAt.is_null())
        .exec(&store.db)
        .await?;
    Ok(())
}

/// How far back the service settles what a run still owes (an event, a
/// cancel): the status stream keeps events for 24 hours, and no run lives
/// that long.
pub(crate) const SETTLE_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// Terminal runs that ended before `cutoff` (and within [`SETTLE_WINDOW`])
/// and still owe their terminal event, oldest first (at most 1000 a pass).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "runs_owing_an_event"))]
pub async fn runs_owing_an_event(store: &Store, cutoff: DateTime<Utc>) -> Result<Vec<Run>, StoreError> {
    let query = runs::Entity::find()
        .filter(runs::Column::CompletedAt.gt(cutoff - SETTLE_WINDOW))
        .filter(runs::Column::Status.is_in([
            RunStatus::Ready.as_str(),
            RunStatus::Failed.as_str(),
            RunStatus::Canceled.as_str(),
        ]))
        .filter(runs::Column::TerminalEventAt.is_null())
        .filter(runs::Column::CompletedAt.is_not_null())
        .filter(runs::Column::CompletedAt.lt(cutoff))
        .order_by_asc(runs::Column::CompletedAt);
    first_thousand(store, query).await
}

/// Live runs created before `cutoff`, oldest first, a page of at most 1000
/// after the run `after` (the last of the previous page): a pass walks them
/// all, however many are in flight.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "stale_runs"))]
pub async fn stale_runs(
    store: &Store,
    cutoff: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<Run>, StoreError> {
    use sea_orm::Condition;
    let mut query = runs::Entity::find()
        .filter(runs::Column::Status.is_in(LIVE))
        .filter(runs::Column::CreatedAt.lt(cutoff))
        .order_by_asc(runs::Column::CreatedAt)
        .order_by_asc(runs::Column::Id);
    if let Some((created_at, id)) = after {
        query = query.filter(
            Condition::any().add(runs::Column::CreatedAt.gt(created_at)).add(
                Condition::all()
                    .add(runs::Column::CreatedAt.eq(created_at))
                    .add(runs::Column::Id.gt(id)),
            ),
        );
    }
    first_thousand(store, query).await
}

/// Runs by status, and when the oldest run still running was created.
pub(crate) type RunCounts = (Vec<(String, i64)>, Option<DateTime<Utc>>);

/// The dashboard's gauges, read with two aggregates: runs by status, and
/// when the oldest run still running was created.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "run_counts"))]
pub(crate) async fn run_counts(store: &Store) -> Result<RunCounts, StoreError> {
    let counts: Vec<(String, i64)> = runs::Entity::find()
        .select_only()
        .column(runs::Column::Status)
        .column_as(runs::Column::Id.count(), "n")
        .group_by(runs::Column::Status)
        .into_tuple()
        .all(&store.db)
        .await?;
    let oldest: Option<DateTime<Utc>> = runs::Entity::find()
        .select_only()
        .column_as(runs::Column::CreatedAt.min(), "oldest")
        .filter(runs::Column::Status.eq(RunStatus::Running.as_str()))
        .into_tuple::<Option<DateTime<Utc>>>()
        .one(&store.db)
        .await?
        .flatten();
    Ok((counts, oldest))
}

/// How many runs a page of [`stale_runs`] holds at most.
pub const PAGE: usize = 1000;

/// The first 1000 rows a query selects, as runs (a pass's batch).
async fn first_thousand(store: &Store, query: sea_orm::Select<runs::Entity>) -> Result<Vec<Run>, StoreError> {
    query
        .limit(PAGE as u64)
        .all(&store.db)
        .await?
        .into_iter()
        .map(to_run)
        .collect()
}

/// The QueryDefinitions live runs hold: their ObjectIDs where recorded, and
/// their CustomerKeys (one per run, `naming::query_key`), which a run's
/// start creates before it can record anything: a start waiting out a
/// database outage holds a QueryDefinition its row does not name yet. The
/// sweeper leaves them alone.
#[derive(Debug, Default)]
pub(crate) struct LiveQueryDefinitions {
    pub object_ids: HashSet<String>,
    pub keys: HashSet<String>,
}

impl LiveQueryDefinitions {
    pub(crate) fn holds(&self, object_id: &str, key: &str) -> bool {
        self.object_ids.contains(object_id) || self.keys.contains(key)
    }
}

#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "live_query_definitions"))]
pub(crate) async fn live_query_definitions(store: &Store) -> Result<LiveQueryDefinitions, StoreError> {
    let rows: Vec<(Uuid, Option<String>)> = runs::Entity::find()
        .select_only()
        .columns([runs::Column::Id, runs::Column::QueryDefinitionId])
        .filter(runs::Column::Status.is_in(LIVE))
        .into_tuple()
        .all(&store.db)
        .await?;
    let mut live = LiveQueryDefinitions::default();
    for (id, object_id) in rows {
        live.object_ids.extend(object_id);
        live.keys.insert(shell_query_core::naming::query_key(id));
    }
    Ok(live)
}

/// How long the tenant's last `limit` ready runs of the same query took,
/// from the start of polling to completion, newest first.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "recent_durations"))]
pub(crate) async fn recent_durations(
    store: &Store,
    tenant_id: Uuid,
    sql_text_hash: &str,
    limit: u64,
) -> Result<Vec<std::time::Duration>, StoreError> {
    Ok(runs::Entity::find()
        .filter(runs::Column::TenantId.eq(tenant_id))
        .filter(runs::Column::SqlTextHash.eq(sql_text_hash))
        .filter(runs::Column::Status.eq(RunStatus::Ready.as_str()))
        .filter(runs::Column::CompletedAt.is_not_null())
        .filter(runs::Column::PollStartedAt.is_not_null())
        .order_by_desc(runs::Column::CompletedAt)
        .limit(limit)
        .all(&store.db)
        .await?
        .into_iter()
        .filter_map(|r| (r.completed_at? - r.poll_started_at?).to_std().ok())
        .collect())
}
