//! The sweeper (ARCHITECTURE.md, "How a run moves: Reconciler and
//! sweeper"): every interval, on the one replica holding the lease,
//! deletes the QueryDefinitions this service made (key `QPP_Q_…`) in each
//! business unit's results folder that are older than `SWEEPER_MIN_AGE`
//! and belong to no live run (by ObjectID, or by the CustomerKey a live
//! run's start creates before the row names it). A backstop for clean-ups
//! that failed; one business unit's failure does not stop the rest.

use std::time::Duration;
use tracing::Instrument as _;

use chrono::{DateTime, Utc};
use shell_query_core::account::{Account, Mid};
use shell_query_core::naming::is_our_query_key;

use crate::adapters::mce::MceError;
use crate::adapters::store::{StoreError, credentials, folders, runs};
use crate::lifecycle::Deps;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub deleted: u32,
    pub failed_units: u32,
}

pub(crate) async fn sweep_once(deps: &Deps, min_age: Duration, now: DateTime<Utc>) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let live = runs::live_query_definitions(&deps.store).await?;
    let before = now - chrono::Duration::from_std(min_age).unwrap_or_default();
    for (tenant_id, mid, folder) in folders::folders(&deps.store).await? {
        let Some(user) = credentials::credential_user(&deps.store, tenant_id, &mid).await? else {
            continue;
        };
        let result = async {
            let session = deps
                .mce
                .session(&Account::new(tenant_id, Some(user), Mid::stored(mid.clone())))
                .await?;
            let mut deleted = 0;
            for (object_id, key) in session.query_definitions_in_folder(folder, before).await? {
                if !is_our_query_key(&key) || live.holds(&object_id, &key) {
                    continue;
                }
                match session.delete_query_definition(&object_id).await {
                    Ok(()) => {
                        deleted += 1;
                        deps.metrics.inc(crate::adapters::metrics::SWEEPER_DELETIONS, &[]);
                    }
                    Err(e) if e.is_unrecoverable() => return Err(e),
                    Err(e) => tracing::warn!(%tenant_id, error = %e, "sweeper: one delete failed"),
                }
            }
            Ok::<u32, MceError>(deleted)
        }
        .await;
        match result {
            Ok(n) => report.deleted += n,
            Err(e) => {
                tracing::warn!(%tenant_id, mid = %mid, error = %e, "sweeper: business unit skipped");
                report.failed_units += 1;
            }
        }
    }
    Ok(report)
}

/// Runs passes every `interval` while this replica holds the lease.
pub(crate) async fn run(
    deps: std::sync::Arc<Deps>,
    min_age: Duration,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::adapters::lease::periodically(&deps.js.clone(), "sweeper", interval, shutdown, |now| {
        let deps = deps.clone();
        let span = tracing::info_span!(parent: None, "sweeper_pass", otel.name = "sweeper pass");
        async move {
            match sweep_once(&deps, min_age, now).await {
                Ok(report) => {
                    deps.metrics.set_now(crate::adapters::metrics::SWEEPER_LAST_SUCCESS);
                    tracing::info!(?report, "sweeper pass");
                }
                Err(e) => tracing::warn!(error = %e, "sweeper pass failed"),
            }
        }
        .instrument(span)
    })
    .await;
}
