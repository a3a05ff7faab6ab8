//! The sweeper (DESIGN.md "Reconciler and sweeper"): every interval, on the
//! one replica holding the lease, deletes the QueryDefinitions this service
//! made (key `QPP_Q_…`) in each business unit's results folder that are
//! older than `SWEEPER_MIN_AGE` and belong to no live run (by ObjectID, or
//! by the CustomerKey a live run's start creates before the row names it).
//! A backstop for clean-ups that failed; one business unit's failure does
//! not stop the rest.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::app::Deps;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub deleted: u32,
    pub failed_units: u32,
}

/// Whether this service made a QueryDefinition with this key.
pub fn ours(customer_key: &str) -> bool {
    customer_key.starts_with("QPP_Q_")
}

pub async fn sweep_once(deps: &Deps, min_age: Duration, now: DateTime<Utc>) -> Result<Report, sea_orm::DbErr> {
    let mut report = Report::default();
    let live = crate::store::live_query_definitions(&deps.db).await?;
    let before = now - chrono::Duration::from_std(min_age).unwrap_or_default();
    for (tenant_id, mid, folder) in crate::store::folders(&deps.db).await? {
        let Some(user) = crate::store::credential_user(&deps.db, tenant_id, &mid).await? else {
            continue;
        };
        let result = async {
            let session = deps.mce.session(tenant_id, Some(user), &mid).await?;
            let mut deleted = 0;
            for (object_id, key) in session.query_definitions_in_folder(folder, before).await? {
                if !ours(&key) || live.holds(&object_id, &key) {
                    continue;
                }
                match session.delete_query_definition(&object_id).await {
                    Ok(()) => {
                        deleted += 1;
                        deps.metrics.inc(crate::metrics::SWEEPER_DELETIONS, &[]);
                    }
                    Err(e) if e.is_unrecoverable() => return Err(e),
                    Err(e) => tracing::warn!(%tenant_id, error = %e, "sweeper: one delete failed"),
                }
            }
            Ok::<u32, crate::mce::MceError>(deleted)
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
pub async fn run(
    deps: std::sync::Arc<Deps>,
    min_age: Duration,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::lease::periodically(&deps.js.clone(), "sweeper", interval, shutdown, |now| {
        let deps = deps.clone();
        async move {
            match sweep_once(&deps, min_age, now).await {
                Ok(report) => tracing::info!(?report, "sweeper pass"),
                Err(e) => tracing::warn!(error = %e, "sweeper pass failed"),
            }
        }
    })
    .await;
}
