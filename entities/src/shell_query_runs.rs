//! One row per run. The poll-state columns (`poll_*`) are what lets any replica
//! take any poll tick: nothing about a run's progress lives in the message.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "shell_query_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub mid: String,
    pub snippet_name: Option<String>,
    /// SHA-256 hex of the plain SQL: the only trace of the SQL that may be logged.
    pub sql_text_hash: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub sql_text_encrypted: Option<String>,
    /// `queued`, `running`, `ready`, `failed` or `canceled` (CHECK constraint).
    pub status: String,
    pub task_id: Option<String>,
    pub query_definition_id: Option<String>,
    pub query_customer_key: Option<String>,
    pub target_de_customer_key: Option<String>,
    pub target_update_type: Option<String>,
    pub poll_started_at: Option<DateTimeUtc>,
    /// Encrypted, client-safe.
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    pub row_count: Option<i32>,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    /// Poll ticks recorded at the last state-changing write (the delivery count
    /// of the poll message counts the ticks in between).
    pub poll_count: i32,
    /// Consecutive "not running" answers of the REST isRunning gate.
    pub poll_not_running_count: i32,
    pub poll_not_running_first_at: Option<DateTimeUtc>,
    /// Rowset readiness checks made after completion was detected.
    pub poll_rowset_attempts: i32,
    pub poll_rowset_first_at: Option<DateTimeUtc>,
    /// Row-probe fast-path checks made.
    pub poll_probe_attempts: i32,
    pub poll_last_probe_at: Option<DateTimeUtc>,
    /// Consecutive ticks that failed transiently (MCE, database, NATS).
    pub poll_transient_errors: i32,
    /// The last AsyncActivityStatus seen, normalised (trimmed, lower case).
    pub poll_last_status: Option<String>,
    /// Set just before Perform is sent: with no `task_id`, an earlier
    /// delivery may have started the query.
    pub perform_requested_at: Option<DateTimeUtc>,
    /// When the terminal status event was confirmed by the stream; a
    /// terminal row without it still owes its event.
    pub terminal_event_at: Option<DateTimeUtc>,
    /// When the service handled a cancel; a `canceled` row without it (the
    /// API canceled it) still needs its clean-up and `canceled` event.
    pub cancel_handled_at: Option<DateTimeUtc>,
    /// The run this one retries (`runs retry`), if any.
    pub retry_of: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
