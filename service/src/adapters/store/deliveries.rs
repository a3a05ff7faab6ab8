//! How many times the service saw each execute or cancel message of the
//! jobs stream delivered, by the message's stream sequence: what a
//! max-deliveries advisory is checked against before anything is failed
//! (`handlers/undeliverable.rs`). Written at the start of every such
//! delivery, before the message is even decoded, so a message that stops
//! the worker each time is counted each time.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::{Store, StoreError};

/// `$n` for PostgreSQL, `?` for SQLite (the demo).
fn sql(store: &Store, postgres: &str) -> String {
    match store.db.get_database_backend() {
        DbBackend::Postgres => postgres.to_string(),
        _ => {
            let mut text = postgres.to_string();
            for n in (1..=3).rev() {
                text = text.replace(&format!("${n}"), "?");
            }
            text
        }
    }
}

fn statement(store: &Store, postgres: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(store.db.get_database_backend(), sql(store, postgres), values)
}

/// Records that the message at `stream_seq` was delivered `delivered`
/// times (a count never goes down).
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "note_delivery"))]
pub(crate) async fn note(store: &Store, stream_seq: u64, delivered: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
    let seq = i64::try_from(stream_seq).unwrap_or(i64::MAX);
    store
        .db
        .execute_raw(statement(
            store,
            "INSERT INTO shell_query_deliveries (stream_seq, deliveries, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_seq) DO UPDATE SET deliveries = excluded.deliveries, seen_at = excluded.seen_at \
             WHERE shell_query_deliveries.deliveries < excluded.deliveries",
            vec![seq.into(), delivered.into(), now.into()],
        ))
        .await?;
    Ok(())
}

/// The most deliveries of the message at `stream_seq` the service saw.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "seen_deliveries"))]
pub(crate) async fn seen(store: &Store, stream_seq: u64) -> Result<Option<i64>, StoreError> {
    let seq = i64::try_from(stream_seq).unwrap_or(i64::MAX);
    let row = store
        .db
        .query_one_raw(statement(
            store,
            "SELECT deliveries FROM shell_query_deliveries WHERE stream_seq = $1",
            vec![seq.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<i64>("", "deliveries")?),
        None => None,
    })
}

/// Forgets the message at `stream_seq` (settled).
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "forget_delivery"))]
pub(crate) async fn forget(store: &Store, stream_seq: u64) -> Result<(), StoreError> {
    let seq = i64::try_from(stream_seq).unwrap_or(i64::MAX);
    store
        .db
        .execute_raw(statement(
            store,
            "DELETE FROM shell_query_deliveries WHERE stream_seq = $1",
            vec![seq.into()],
        ))
        .await?;
    Ok(())
}

/// Forgets every message last seen before `before` (its advisory, if any,
/// came long ago); how many.
#[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "prune_deliveries"))]
pub(crate) async fn prune(store: &Store, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let result = store
        .db
        .execute_raw(statement(
            store,
            "DELETE FROM shell_query_deliveries WHERE seen_at < $1",
            vec![before.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}
