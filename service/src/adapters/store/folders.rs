//! `tenant_settings`: each business unit's results folder.

use entities::tenant_settings;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Set, Statement, TransactionTrait};
use uuid::Uuid;

use super::{Store, StoreError};

/// Forgets the cached results folder (MCE no longer has it).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "DELETE tenant_settings", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "DELETE", db.collection.name = "tenant_settings", code.function.name = "forget_folder"))]
pub(crate) async fn forget_folder(store: &Store, tenant_id: Uuid, mid: &str) -> Result<(), StoreError> {
    tenant_settings::Entity::delete_by_id((tenant_id, mid.to_string()))
        .exec(&store.db)
        .await?;
    Ok(())
}

/// Every (tenant, MID, folder) with a results folder.
pub(crate) async fn folders(store: &Store) -> Result<Vec<(Uuid, String, i64)>, StoreError> {
    Ok(tenant_settings::Entity::find()
        .all(&store.db)
        .await?
        .into_iter()
        .filter_map(|s| s.qpp_folder_id.map(|f| (s.tenant_id, s.mid, i64::from(f))))
        .collect())
}

/// Serialises finding or creating a business unit's results folder across
/// replicas: a PostgreSQL advisory lock held by the returned transaction
/// until it ends. SQLite (the demo) has one process: nothing is held.
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT tenant_settings", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "tenant_settings", code.function.name = "folder_lock"))]
pub(crate) async fn folder_lock(store: &Store, tenant_id: Uuid, mid: &str) -> Result<FolderLock, StoreError> {
    if store.db.get_database_backend() != DbBackend::Postgres {
        return Ok(FolderLock(None));
    }
    let digest = crate::adapters::crypto::sha256_hex(&format!("results-folder:{tenant_id}:{mid}"));
    let key = i64::from_str_radix(&digest[..15], 16).unwrap_or_default();
    let txn = store.db.begin().await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [key.into()],
    ))
    .await?;
    Ok(FolderLock(Some(txn)))
}

/// Held while a business unit's results folder is found or created.
pub(crate) struct FolderLock(Option<sea_orm::DatabaseTransaction>);

impl FolderLock {
    /// Ends the lock (the transaction holds nothing else).
    pub(crate) async fn release(self) -> Result<(), StoreError> {
        if let Some(txn) = self.0 {
            txn.commit().await?;
        }
        Ok(())
    }
}

#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT tenant_settings", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "tenant_settings", code.function.name = "folder_id"))]
pub async fn folder_id(store: &Store, tenant_id: Uuid, mid: &str) -> Result<Option<i64>, StoreError> {
    Ok(tenant_settings::Entity::find_by_id((tenant_id, mid.to_string()))
        .one(&store.db)
        .await?
        .and_then(|s| s.qpp_folder_id)
        .map(i64::from))
}

#[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT tenant_settings", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "INSERT", db.collection.name = "tenant_settings", code.function.name = "save_folder_id"))]
pub async fn save_folder_id(store: &Store, tenant_id: Uuid, mid: &str, folder_id: i64) -> Result<(), StoreError> {
    let row = tenant_settings::ActiveModel {
        tenant_id: Set(tenant_id),
        mid: Set(mid.to_string()),
        qpp_folder_id: Set(i32::try_from(folder_id).ok()),
    };
    tenant_settings::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([tenant_settings::Column::TenantId, tenant_settings::Column::Mid])
                .update_column(tenant_settings::Column::QppFolderId)
                .to_owned(),
        )
        .exec_without_returning(&store.db)
        .await?;
    Ok(())
}
