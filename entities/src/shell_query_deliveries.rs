use sea_orm::entity::prelude::*;

/// How many times the service saw an execute or cancel message of the jobs
/// stream delivered, by the message's stream sequence.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "shell_query_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub stream_seq: i64,
    pub deliveries: i64,
    pub seen_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
