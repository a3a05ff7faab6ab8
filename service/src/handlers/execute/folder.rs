//! The results folder ("QueryPlusPlus Results") the temp DE and the
//! QueryDefinition go in: cached per (tenant, MID), found by name or
//! created once, and looked up again when MCE refuses a cached one.

use shell_query_core::message::ExecuteRequest;
use shell_query_core::naming::{FOLDER_CONTENT_TYPE, FOLDER_NAME, ROOT_FOLDER_NAME};
use uuid::Uuid;

use super::failure::Failure;
use crate::adapters::mce::{MceError, Session};
use crate::adapters::store::folders;
use crate::lifecycle::Deps;

/// The results folder as this delivery knows it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Folder {
    Unknown,
    /// From `tenant_settings`: MCE may have lost it since.
    Cached(i64),
    /// Just found or created in MCE.
    Fresh(i64),
}

/// Runs a create that needs the results folder; if the folder came from the
/// cache and MCE refuses, the folder is looked up again once and the create
/// retried.
pub(super) async fn with_folder<T, F, Fut>(
    deps: &Deps,
    session: &Session<'_>,
    req: &ExecuteRequest,
    folder: &mut Folder,
    create: F,
) -> Result<T, Failure>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<T, MceError>>,
{
    let mid = req.mid.as_str();
    if let Folder::Unknown = folder {
        *folder = match folders::folder_id(&deps.store, req.tenant_id, mid).await? {
            Some(id) => Folder::Cached(id),
            None => Folder::Fresh(find_or_create_folder(deps, session, req.tenant_id, mid).await?),
        };
    }
    match (*folder, create(folder_id(*folder)).await) {
        (Folder::Cached(stale), Err(MceError::SoapFailure { .. })) => {
            tracing::warn!(
                folder_id = stale,
                "the cached results folder was refused; looking it up again"
            );
            folders::forget_folder(&deps.store, req.tenant_id, mid).await?;
            *folder = Folder::Fresh(find_or_create_folder(deps, session, req.tenant_id, mid).await?);
            Ok(create(folder_id(*folder)).await?)
        }
        (_, result) => Ok(result?),
    }
}

fn folder_id(folder: Folder) -> i64 {
    match folder {
        Folder::Cached(id) | Folder::Fresh(id) => id,
        Folder::Unknown => 0,
    }
}

/// The "QueryPlusPlus Results" DE folder: found by name and content type,
/// else created under the root "Data Extensions" folder; cached per
/// (tenant, MID).
///
/// Two deliveries that both miss the cache must not both create it (the
/// sweeper looks in one folder): one at a time per process, and per
/// business unit across replicas; the second finds the first's.
async fn find_or_create_folder(deps: &Deps, session: &Session<'_>, tenant_id: Uuid, mid: &str) -> Result<i64, Failure> {
    static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_here = IN_PROCESS.lock().await;
    let across_replicas = folders::folder_lock(&deps.store, tenant_id, mid).await?;
    if let Some(id) = folders::folder_id(&deps.store, tenant_id, mid).await? {
        return Ok(id);
    }
    let id = match session.find_folder(FOLDER_NAME, Some(FOLDER_CONTENT_TYPE)).await? {
        Some(id) => id,
        None => {
            let root = session
                .find_folder(ROOT_FOLDER_NAME, Some(FOLDER_CONTENT_TYPE))
                .await?
                .ok_or_else(|| {
                    Failure::Permanent("The root Data Extensions folder was not found in Marketing Cloud.".into())
                })?;
            session.create_folder(FOLDER_NAME, root).await?
        }
    };
    folders::save_folder_id(&deps.store, tenant_id, mid, id).await?;
    across_replicas.release().await?;
    Ok(id)
}
