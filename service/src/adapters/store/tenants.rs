//! `tenants`: each tenant's EID and subdomain.

use entities::tenants;
use sea_orm::sea_query::OnConflict;
use sea_orm::{EntityTrait, Set};
use uuid::Uuid;

use super::{Store, StoreError};

pub async fn upsert_tenant(store: &Store, id: Uuid, eid: &str, tssd: &str) -> Result<(), StoreError> {
    let row = tenants::ActiveModel {
        id: Set(id),
        eid: Set(eid.to_string()),
        tssd: Set(tssd.to_string()),
    };
    tenants::Entity::insert(row)
        .on_conflict(
            OnConflict::column(tenants::Column::Id)
                .update_columns([tenants::Column::Eid, tenants::Column::Tssd])
                .to_owned(),
        )
        .exec_without_returning(&store.db)
        .await?;
    Ok(())
}

/// The tenant's subdomain as stored (`None`: no such tenant).
#[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT tenants", otel.kind = "client", db.system.name = super::backend::system_name(&store.db), db.operation.name = "SELECT", db.collection.name = "tenants", code.function.name = "tenant_tssd"))]
pub(crate) async fn tssd(store: &Store, id: Uuid) -> Result<Option<String>, StoreError> {
    Ok(tenants::Entity::find_by_id(id).one(&store.db).await?.map(|t| t.tssd))
}
