use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub mid: String,
    /// Encrypted (shared AES-256-GCM format).
    #[sea_orm(column_type = "Text", nullable)]
    pub access_token: Option<String>,
    /// Encrypted; rotates on every refresh.
    #[sea_orm(column_type = "Text")]
    pub refresh_token: String,
    pub expires_at: DateTimeUtc,
    pub updated_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
