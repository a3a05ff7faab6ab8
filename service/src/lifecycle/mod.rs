//! What handlers and jobs share: the handles ([`Deps`]), and [`end`], the
//! one place a run ends.

pub mod dlq;
pub mod end;

use std::sync::Arc;

use async_nats::jetstream;
use shell_query_core::event::StatusEvent;
use shell_query_core::message::Subjects;

use crate::adapters::crypto::Cipher;
use crate::adapters::history::HistoryCache;
use crate::adapters::mce::Mce;
use crate::adapters::metrics::Metrics;
use crate::adapters::store::Store;

/// The handles every handler and job needs, built once by the app. What
/// only one handler needs (its settings) stays with that handler.
pub(crate) struct Deps {
    pub store: Store,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub mce: Mce,
    pub cipher: Cipher,
    pub metrics: Arc<Metrics>,
    /// Recent durations of each query, for the adaptive poll schedule.
    pub histories: HistoryCache,
}

impl Deps {
    /// Publishes a status event after the change it describes. A failure is
    /// logged: the row, not the event, is the truth.
    pub(crate) async fn publish_event(&self, event: &StatusEvent) {
        if let Err(e) = crate::adapters::nats::publish_status(&self.js, &self.subjects, event).await {
            tracing::warn!(run_id = %event.run_id, status = event.status.as_str(), error = %e, "status event not published");
        }
    }

    /// Deletes a QueryDefinition of a run's business unit (never another
    /// run's). A failure is logged and left to the sweeper.
    pub(crate) async fn delete_query_definition(&self, account: &shell_query_core::account::Account, object_id: &str) {
        let result = match self.mce.session(account).await {
            Ok(session) => session.delete_query_definition(object_id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not delete the QueryDefinition; the sweeper will");
        }
    }
}
