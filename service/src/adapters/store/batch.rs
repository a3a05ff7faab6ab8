//! Poll ticks that fall due together read their rows with one statement.
//!
//! A tick asks for its run's row here instead of querying alone. The first
//! request of a batch opens a short window ([`WINDOW`]); every request that
//! arrives before it closes, up to [`MAX`], joins the same
//! `SELECT … WHERE id IN (…)`, and each tick gets its own row back. At a few
//! thousand ticks a second that turns dozens of round trips (and statements
//! PostgreSQL parses and plans) into one; a lone tick waits the window.
//!
//! The `IN` list is padded to a power of two (repeating the last id), so the
//! batches use at most seven statement texts, each prepared once per
//! connection, and no batch builds a statement the connection has not seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use entities::shell_query_runs as runs;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::error::StoreError;

type RunRow = runs::Model;

/// How long the first tick of a batch waits for others.
pub(crate) const WINDOW: Duration = Duration::from_millis(2);
/// The most rows one statement reads.
pub(crate) const MAX: usize = 64;
/// Batch statements in flight at once (each holds a pool connection).
const IN_FLIGHT: usize = 4;

type Answer = Result<Option<RunRow>, StoreError>;
type Request = (Uuid, oneshot::Sender<Answer>);

/// The batcher of one [`super::Store`]; its driver task starts with the
/// first read, on the runtime of that read.
#[derive(Default)]
pub(super) struct RowBatcher {
    requests: OnceLock<mpsc::UnboundedSender<Request>>,
    /// Statements issued so far.
    statements: Arc<AtomicU64>,
}

impl std::fmt::Debug for RowBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowBatcher")
    }
}

impl RowBatcher {
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// The row of `id` as a poll tick reads it, read with the others due now
    /// (`runs::get_run_for_poll` makes it a `Run`).
    pub(super) async fn get(&self, db: &DatabaseConnection, id: Uuid) -> Answer {
        let requests = self.requests.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drive(db.clone(), rx, self.statements.clone()));
            tx
        });
        let (tx, rx) = oneshot::channel();
        if requests.send((id, tx)).is_ok()
            && let Ok(answer) = rx.await
        {
            return answer;
        }
        // The driver is gone (its runtime ended, as between tests that share
        // a store): read alone rather than fail the tick.
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(answer_for(&read(db, &[id]).await?, id))
    }
}

/// Collects requests into batches and reads each batch with one statement.
async fn drive(db: DatabaseConnection, mut requests: mpsc::UnboundedReceiver<Request>, statements: Arc<AtomicU64>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        let mut batch = Vec::with_capacity(MAX);
        batch.push(first);
        let close = tokio::time::Instant::now() + WINDOW;
        while batch.len() < MAX {
            match tokio::time::timeout_at(close, requests.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let db = db.clone();
        statements.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
            match read(&db, &ids).await {
                Ok(rows) => {
                    for (id, reply) in batch {
                        let _ = reply.send(Ok(answer_for(&rows, id)));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    for (_, reply) in batch {
                        let _ = reply.send(Err(StoreError::Database(DbErr::Custom(text.clone()))));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The rows of `ids`, by id.
async fn read(db: &DatabaseConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, RunRow>, StoreError> {
    let rows = poll_rows(db, pad(ids)).await?;
    Ok(rows.into_iter().map(|m| (m.id, m)).collect())
}

/// The rows of `ids` as `runs::get_run_for_poll` reads them, in one
/// statement: everything but the SQL text.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT shell_query_runs", otel.kind = "client", db.system.name = super::backend::system_name(db), db.operation.name = "SELECT", db.collection.name = "shell_query_runs", code.function.name = "get_runs_for_poll", db.batch.size = ids.len()))]
async fn poll_rows(db: &DatabaseConnection, ids: Vec<Uuid>) -> Result<Vec<RunRow>, StoreError> {
    use sea_orm::Iterable as _;
    Ok(runs::Entity::find()
        .select_only()
        .columns(runs::Column::iter().filter(|c| !matches!(c, runs::Column::SqlTextEncrypted)))
        .column_as(Expr::value(Option::<String>::None), "sql_text_encrypted")
        .filter(runs::Column::Id.is_in(ids))
        .all(db)
        .await?)
}

/// One request's row (the same run asked twice in a batch gets its row
/// twice; `runs::get_run_for_poll` reports a row that cannot be read as
/// that request's error).
fn answer_for(rows: &HashMap<Uuid, RunRow>, id: Uuid) -> Option<RunRow> {
    rows.get(&id).cloned()
}

/// `ids` lengthened to the next power of two by repeating the last.
fn pad(ids: &[Uuid]) -> Vec<Uuid> {
    let mut padded = ids.to_vec();
    if let Some(&last) = ids.last() {
        padded.resize(ids.len().next_power_of_two(), last);
    }
    padded
}

#[cfg(test)]
mod tests {
    use super::pad;
    use uuid::Uuid;

    #[test]
    fn batches_use_few_statement_shapes() {
        let ids: Vec<Uuid> = (0..super::MAX).map(|_| Uuid::new_v4()).collect();
        let mut shapes = std::collections::BTreeSet::new();
        for n in 1..=ids.len() {
            let padded = pad(&ids[..n]);
            assert!(padded.len() >= n && padded.len() < 2 * n);
            assert_eq!(&padded[..n], &ids[..n]);
            assert!(padded[n..].iter().all(|id| *id == ids[n - 1]));
            shapes.insert(padded.len());
        }
        assert_eq!(shapes.len(), 7, "{shapes:?}");
        assert!(pad(&[]).is_empty());
    }
}
