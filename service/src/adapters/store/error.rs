//! The store's one error type.

use sea_orm::DbErr;

/// A statement failed, or a row held what the schema forbids.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Database(#[from] DbErr),
    #[error("a row could not be read: {0}")]
    Corrupt(String),
}
