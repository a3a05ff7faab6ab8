//! The store's one error type.

use sea_orm::{DbErr, RuntimeErr};

/// A statement failed, or a row held what the schema forbids.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Database(#[from] DbErr),
    #[error("a row could not be read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database refused the data itself (SQLSTATE class 22, "data
    /// exception": a NUL byte or an invalid byte sequence in text, a value
    /// out of range): the same statement fails every time, so it is not
    /// worth another delivery.
    pub(crate) fn is_refused_data(&self) -> bool {
        let StoreError::Database(DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = self
        else {
            return false;
        };
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code.starts_with("22"))
    }
}
