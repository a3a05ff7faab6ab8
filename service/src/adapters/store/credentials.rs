//! `credentials`: each user's tokens per business unit, encrypted. The MCE
//! client reaches them only through [`CredentialStore`], a door that can
//! lock one row for a token refresh and read a tenant's subdomain.

use chrono::{DateTime, Utc};
use entities::credentials;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{Store, StoreError};

/// What the MCE client may do with the database, and nothing more.
#[derive(Clone, Debug)]
pub struct CredentialStore {
    store: Store,
}

impl CredentialStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The tenant's subdomain as stored (`None`: no such tenant).
    pub(crate) async fn tenant_tssd(&self, tenant_id: Uuid) -> Result<Option<String>, StoreError> {
        super::tenants::tssd(&self.store, tenant_id).await
    }

    /// Locks the credentials row of (tenant, user, MID) (`SELECT … FOR
    /// UPDATE`) until the returned lock is released; `None`: no such row.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT credentials", otel.kind = "client", db.system.name = super::backend::system_name(&self.store.db), db.operation.name = "SELECT", db.collection.name = "credentials", code.function.name = "lock_credentials"))]
    pub(crate) async fn lock(
        &self,
        tenant_id: Uuid,
        user_id: Option<Uuid>,
        mid: &str,
    ) -> Result<Option<LockedCredentials>, StoreError> {
        let txn = self.store.db.begin().await?;
        let mut query = credentials::Entity::find()
            .filter(credentials::Column::TenantId.eq(tenant_id))
            .filter(credentials::Column::Mid.eq(mid));
        query = match user_id {
            Some(user) => query.filter(credentials::Column::UserId.eq(user)),
            None => query.filter(credentials::Column::UserId.is_null()),
        };
        let Some(row) = query.lock_exclusive().one(&txn).await? else {
            txn.rollback().await?;
            return Ok(None);
        };
        Ok(Some(LockedCredentials {
            txn,
            row,
            store: self.store.clone(),
        }))
    }
}

/// One credentials row, locked until [`release`](Self::release),
/// [`abandon`](Self::abandon) or [`store_tokens`](Self::store_tokens).
pub(crate) struct LockedCredentials {
    txn: DatabaseTransaction,
    row: credentials::Model,
    store: Store,
}

impl LockedCredentials {
    /// The stored access token (encrypted), if any, and when it expires.
    pub(crate) fn access_token(&self) -> Option<(&str, DateTime<Utc>)> {
        self.row.access_token.as_deref().map(|t| (t, self.row.expires_at))
    }

    /// The stored refresh token (encrypted).
    pub(crate) fn refresh_token(&self) -> &str {
        &self.row.refresh_token
    }

    /// Nothing changed: ends the lock.
    pub(crate) async fn release(self) -> Result<(), StoreError> {
        Ok(self.txn.commit().await?)
    }

    /// The refresh was refused: ends the lock without a change.
    pub(crate) async fn abandon(self) -> Result<(), StoreError> {
        Ok(self.txn.rollback().await?)
    }

    /// Stores fresh tokens (encrypted) and ends the lock. The old refresh
    /// token is spent, so a rotated one must not be lost: if the locked
    /// write fails, it is tried again outside the transaction; what still
    /// fails is logged (the credentials then need renewing).
    pub(crate) async fn store_tokens(
        self,
        access_token: String,
        rotated_refresh_token: Option<String>,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        let mut active: credentials::ActiveModel = self.row.into();
        active.access_token = Set(Some(access_token));
        if let Some(rotated) = rotated_refresh_token {
            active.refresh_token = Set(rotated);
        }
        active.expires_at = Set(expires_at);
        active.updated_at = Set(Some(now));
        let stored = match active.clone().update(&self.txn).await {
            Ok(_) => self.txn.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "storing the rotated refresh token failed; retrying");
            for _ in 0..3 {
                if active.clone().update(&self.store.db).await.is_ok() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            tracing::error!("the rotated refresh token could not be stored: the credentials need renewing");
        }
    }
}

/// A user with credentials for the business unit (the most recently refreshed).
pub(crate) async fn credential_user(store: &Store, tenant_id: Uuid, mid: &str) -> Result<Option<Uuid>, StoreError> {
    Ok(credentials::Entity::find()
        .filter(credentials::Column::TenantId.eq(tenant_id))
        .filter(credentials::Column::Mid.eq(mid))
        .filter(credentials::Column::UserId.is_not_null())
        .order_by_desc(credentials::Column::UpdatedAt)
        .one(&store.db)
        .await?
        .and_then(|c| c.user_id))
}

/// Stores a refresh token (encrypted) and forgets any access token, so the
/// next call refreshes with it.
pub async fn upsert_credentials(
    store: &Store,
    tenant_id: Uuid,
    user_id: Uuid,
    mid: &str,
    refresh_token_encrypted: String,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let epoch = DateTime::<Utc>::from_timestamp(0, 0).expect("the epoch is a valid time");
    let row = credentials::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant_id),
        user_id: Set(Some(user_id)),
        mid: Set(mid.to_string()),
        access_token: Set(None),
        refresh_token: Set(refresh_token_encrypted),
        expires_at: Set(epoch),
        updated_at: Set(Some(now)),
    };
    credentials::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                credentials::Column::UserId,
                credentials::Column::TenantId,
                credentials::Column::Mid,
            ])
            .update_columns([
                credentials::Column::AccessToken,
                credentials::Column::RefreshToken,
                credentials::Column::ExpiresAt,
                credentials::Column::UpdatedAt,
            ])
            .to_owned(),
        )
        .exec_without_returning(&store.db)
        .await?;
    Ok(())
}
