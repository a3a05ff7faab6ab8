//! How many times the service saw each execute or cancel message of the
//! jobs stream delivered, by the message's stream sequence: what a
//! max-deliveries advisory is checked against before anything is failed
//! (`handlers/undeliverable.rs`). Written at the start of every such
//! delivery, before the message is even decoded, so a message that stops
//! the worker each time is counted each time.

use chrono::{DateTime, Utc};
use entities::shell_query_deliveries::{self as deliveries, Column};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};

use super::{Store, StoreError};

/// A stream sequence as the table holds it.
fn key(stream_seq: u64) -> i64 {
    i64::try_from(stream_seq).unwrap_or(i64::MAX)
}

/// Records that the message at `stream_seq` was delivered `delivered`
/// times (a count never goes down).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT shell_query_deliveries", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "INSERT", db.collection.name = "shell_query_deliveries", code.function.name = "note_delivery"))]
pub(crate) async fn note(store: &Store, stream_seq: u64, delivered: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
    let row = deliveries::ActiveModel {
        stream_seq: Set(key(stream_seq)),
        deliveries: Set(delivered),
        seen_at: Set(now),
    };
    deliveries::Entity::insert(row)
        .on_conflict(
            OnConflict::column(Column::StreamSeq)
                .update_columns([Column::Deliveries, Column::SeenAt])
                .action_and_where(Expr::col((deliveries::Entity, Column::Deliveries)).lt(delivered))
                .to_owned(),
        )
        .exec_without_returning(&store.db)
        .await?;
    Ok(())
}

/// The most deliveries of the message at `stream_seq` the service saw.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_deliveries", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "shell_query_deliveries", code.function.name = "seen_deliveries"))]
pub(crate) async fn seen(store: &Store, stream_seq: u64) -> Result<Option<i64>, StoreError> {
    Ok(deliveries::Entity::find_by_id(key(stream_seq))
        .one(&store.db)
        .await?
        .map(|row| row.deliveries))
}

/// Forgets the message at `stream_seq` (settled).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "DELETE shell_query_deliveries", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "DELETE", db.collection.name = "shell_query_deliveries", code.function.name = "forget_delivery"))]
pub(crate) async fn forget(store: &Store, stream_seq: u64) -> Result<(), StoreError> {
    deliveries::Entity::delete_by_id(key(stream_seq))
        .exec(&store.db)
        .await?;
    Ok(())
}

/// Forgets every message last seen before `before` (its advisory, if any,
/// came long ago); how many.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "DELETE shell_query_deliveries", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "DELETE", db.collection.name = "shell_query_deliveries", code.function.name = "prune_deliveries"))]
pub(crate) async fn prune(store: &Store, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let result = deliveries::Entity::delete_many()
        .filter(Column::SeenAt.lt(before))
        .exec(&store.db)
        .await?;
    Ok(result.rows_affected)
}
