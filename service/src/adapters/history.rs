//! Recent durations of each query, for the adaptive poll schedule
//! (`shell_query_core::poll::schedule`): read from the database at most
//! once a minute per (tenant, query hash); bounded (cleared when it grows
//! past 10,000 entries).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shell_query_core::poll::schedule::{HISTORY_RUNS, History};
use uuid::Uuid;

use crate::adapters::store::{Store, StoreError, runs};

const HISTORY_TTL: Duration = Duration::from_secs(60);
const HISTORY_CAPACITY: usize = 10_000;

/// A tenant and the hash of a query's text.
type QueryKey = (Uuid, String);

#[derive(Default)]
pub(crate) struct HistoryCache {
    entries: Mutex<HashMap<QueryKey, (Instant, Option<History>)>>,
}

impl HistoryCache {
    pub(crate) async fn get(
        &self,
        store: &Store,
        tenant_id: Uuid,
        sql_text_hash: &str,
    ) -> Result<Option<History>, StoreError> {
        let key = (tenant_id, sql_text_hash.to_string());
        if let Some((at, history)) = self.entries.lock().expect("history cache lock").get(&key)
            && at.elapsed() < HISTORY_TTL
        {
            return Ok(*history);
        }
        let durations = runs::recent_durations(store, tenant_id, sql_text_hash, HISTORY_RUNS).await?;
        let history = History::of(&durations);
        let mut entries = self.entries.lock().expect("history cache lock");
        if entries.len() >= HISTORY_CAPACITY {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), history));
        Ok(history)
    }

    /// A run of this query just finished here: the next read sees it.
    /// (Other replicas see it within a minute.)
    pub(crate) fn forget(&self, tenant_id: Uuid, sql_text_hash: &str) {
        self.entries
            .lock()
            .expect("history cache lock")
            .remove(&(tenant_id, sql_text_hash.to_string()));
    }
}
