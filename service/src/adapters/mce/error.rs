//! The MCE boundary's errors and operations.

use std::time::Duration;

/// Every MCE operation the service performs; each has its own timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Token,
    Validate,
    RetrieveFolder,
    CreateFolder,
    DeleteDataExtension,
    CreateDataExtension,
    RetrieveDataExtension,
    RetrieveFields,
    RetrieveQueryDefinition,
    CreateQueryDefinition,
    DeleteQueryDefinition,
    Perform,
    AsyncStatus,
    /// The status of several tasks in one call (a TaskID IN filter).
    AsyncStatuses,
    IsRunning,
    Rowset,
}

impl Op {
    /// Every operation, for counters that start at zero.
    pub(crate) const ALL: [Op; 16] = [
        Op::Token,
        Op::Validate,
        Op::RetrieveFolder,
        Op::CreateFolder,
        Op::DeleteDataExtension,
        Op::CreateDataExtension,
        Op::RetrieveDataExtension,
        Op::RetrieveFields,
        Op::RetrieveQueryDefinition,
        Op::CreateQueryDefinition,
        Op::DeleteQueryDefinition,
        Op::Perform,
        Op::AsyncStatus,
        Op::AsyncStatuses,
        Op::IsRunning,
        Op::Rowset,
    ];

    /// A stable name for logs, spans and metric labels.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Token => "token",
            Op::Validate => "validate",
            Op::RetrieveFolder => "retrieve_folder",
            Op::CreateFolder => "create_folder",
            Op::DeleteDataExtension => "delete_data_extension",
            Op::CreateDataExtension => "create_data_extension",
            Op::RetrieveDataExtension => "retrieve_data_extension",
            Op::RetrieveFields => "retrieve_fields",
            Op::RetrieveQueryDefinition => "retrieve_query_definition",
            Op::CreateQueryDefinition => "create_query_definition",
            Op::DeleteQueryDefinition => "delete_query_definition",
            Op::Perform => "perform",
            Op::AsyncStatus => "async_status",
            Op::AsyncStatuses => "async_statuses",
            Op::IsRunning => "is_running",
            Op::Rowset => "rowset",
        }
    }

    /// Whether sending the request twice does no harm. A create or Perform
    /// whose answer was lost may have been carried out: the client retries it
    /// only when MCE surely did not act (429, no connection), and leaves the
    /// rest to the next delivery, which looks before it creates or starts.
    pub(crate) fn is_idempotent(self) -> bool {
        !matches!(
            self,
            Op::CreateFolder | Op::CreateDataExtension | Op::CreateQueryDefinition | Op::Perform
        )
    }
}

/// Whole-request deadlines; the defaults are the reference's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub token: Duration,
    pub rowset: Duration,
    /// Every other SOAP and REST call.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            token: Duration::from_secs(15),
            rowset: Duration::from_secs(120),
            call: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    pub(crate) fn of(&self, op: Op) -> Duration {
        match op {
            Op::Token => self.token,
            Op::Rowset => self.rowset,
            _ => self.call,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MceError {
    /// 5xx, timeout or connection failure, still so after the client's retries.
    #[error("{op}: Marketing Cloud unavailable: {detail}")]
    Unavailable { op: &'static str, detail: String },
    /// A freshly granted token was refused too: MCE did not act, and the
    /// credentials are fine (the grant worked), so a later try may succeed.
    #[error("{op}: a freshly granted token was refused")]
    TokenRefused { op: &'static str },
    /// No connection could be made: MCE surely received nothing.
    #[error("{op}: Marketing Cloud unreachable: connection failed")]
    Unreachable { op: &'static str },
    /// 429, still so after the client's retries.
    #[error("{op}: rate limited by Marketing Cloud")]
    RateLimited {
        op: &'static str,
        retry_after: Option<Duration>,
    },
    /// The refresh token was rejected: only a new authorisation helps.
    #[error("authentication with Marketing Cloud failed: {detail}")]
    AuthExpired { detail: String },
    /// HTTP 403.
    #[error("{op}: forbidden")]
    Forbidden { op: &'static str },
    /// 400, 404, 409 and other 4xx: the request itself was refused.
    #[error("{op}: HTTP {status}: {message}")]
    BadRequest {
        op: &'static str,
        status: u16,
        message: String,
    },
    /// A SOAP operation answered with a status other than OK.
    #[error("{op}: status {status}: {message}")]
    SoapFailure {
        op: &'static str,
        status: String,
        message: String,
    },
    /// A SOAP Fault other than "Login Failed".
    #[error("{op}: SOAP fault {code}: {message}")]
    SoapFault {
        op: &'static str,
        code: String,
        message: String,
    },
    /// A body that does not have the shape the operation returns.
    #[error("{op}: unexpected response: {detail}")]
    Protocol { op: &'static str, detail: String },
    /// No credentials row for (tenant, user, MID).
    #[error("no credentials stored for this user and business unit")]
    CredentialsMissing,
    /// No tenant row.
    #[error("unknown tenant")]
    TenantNotFound,
    /// The tenant's subdomain is not `[a-z0-9-]+`: never contacted.
    #[error("the tenant's subdomain is invalid")]
    InvalidTssd,
    /// Stored credentials do not decrypt with the configured keys.
    #[error("stored credentials do not decrypt")]
    Undecryptable,
    /// The credential store did not answer (its detail is for logs only).
    #[error("credential store: {0}")]
    CredentialsUnavailable(String),
}

impl MceError {
    /// Worth another attempt later: the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MceError::Unavailable { .. }
                | MceError::Unreachable { .. }
                | MceError::TokenRefused { .. }
                | MceError::RateLimited { .. }
                | MceError::CredentialsUnavailable(_)
        )
    }

    /// MCE surely did not act on the request: sending it again is safe even
    /// for an operation that is not idempotent. A failed token call means the
    /// operation itself was never sent (or was refused with "Login Failed").
    pub fn surely_not_received(&self) -> bool {
        match self {
            MceError::Unreachable { .. }
            | MceError::TokenRefused { .. }
            | MceError::RateLimited { .. }
            | MceError::AuthExpired { .. } => true,
            MceError::Unavailable { op, .. } => *op == Op::Token.name(),
            _ => false,
        }
    }

    /// Nothing about this run can succeed until a person acts (re-authenticate,
    /// grant access, fix the tenant): probes and fallbacks stop at once.
    pub fn is_unrecoverable(&self) -> bool {
        matches!(
            self,
            MceError::AuthExpired { .. }
                | MceError::Forbidden { .. }
                | MceError::CredentialsMissing
                | MceError::TenantNotFound
                | MceError::InvalidTssd
                | MceError::Undecryptable
        )
    }

    /// The text a user may see: MCE's own words where it gives them, never
    /// internal detail.
    pub fn client_message(&self) -> String {
        match self {
            MceError::Unavailable { .. }
            | MceError::Unreachable { .. }
            | MceError::TokenRefused { .. }
            | MceError::CredentialsUnavailable(_) => {
                "Marketing Cloud is temporarily unavailable. Please try again.".into()
            }
            MceError::RateLimited { .. } => "Marketing Cloud rate limit reached. Please wait and try again.".into(),
            MceError::AuthExpired { .. } => "Marketing Cloud session expired. Please re-authenticate.".into(),
            MceError::Forbidden { .. } => "Access denied. You don't have permission for this operation.".into(),
            MceError::BadRequest { message, .. } if !message.is_empty() => {
                format!("Invalid request to Marketing Cloud: {message}")
            }
            MceError::BadRequest { .. } => "Invalid request to Marketing Cloud.".into(),
            MceError::SoapFailure { message, .. } | MceError::SoapFault { message, .. } if !message.is_empty() => {
                format!("Marketing Cloud operation failed: {message}")
            }
            MceError::SoapFailure { .. } | MceError::SoapFault { .. } | MceError::Protocol { .. } => {
                "Marketing Cloud operation failed. Please try again.".into()
            }
            MceError::CredentialsMissing => {
                "No Marketing Cloud credentials are stored for this user and business unit. Please re-authenticate."
                    .into()
            }
            MceError::TenantNotFound => "The tenant is not known.".into(),
            MceError::InvalidTssd => "The tenant's Marketing Cloud subdomain is invalid.".into(),
            MceError::Undecryptable => {
                "Stored Marketing Cloud credentials cannot be read. Please re-authenticate.".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases: Vec<(MceError, bool, bool)> = vec![
            (
                MceError::Unavailable {
                    op: "x",
                    detail: "502".into(),
                },
                true,
                false,
            ),
            (
                MceError::RateLimited {
                    op: "x",
                    retry_after: None,
                },
                true,
                false,
            ),
            (MceError::CredentialsUnavailable("down".into()), true, false),
            (MceError::TokenRefused { op: "x" }, true, false),
            (MceError::Unreachable { op: "x" }, true, false),
            (MceError::AuthExpired { detail: "d".into() }, false, true),
            (MceError::Forbidden { op: "x" }, false, true),
            (MceError::CredentialsMissing, false, true),
            (MceError::TenantNotFound, false, true),
            (MceError::InvalidTssd, false, true),
            (
                MceError::BadRequest {
                    op: "x",
                    status: 404,
                    message: String::new(),
                },
                false,
                false,
            ),
            (
                MceError::SoapFailure {
                    op: "x",
                    status: "Error".into(),
                    message: "m".into(),
                },
                false,
                false,
            ),
            (
                MceError::Protocol {
                    op: "x",
                    detail: "d".into(),
                },
                false,
                false,
            ),
        ];
        for (err, transient, unrecoverable) in cases {
            assert_eq!(err.is_transient(), transient, "{err:?}");
            assert_eq!(err.is_unrecoverable(), unrecoverable, "{err:?}");
            assert!(!err.client_message().is_empty());
        }
    }

    #[test]
    fn client_messages_carry_mce_words_but_no_internals() {
        let e = MceError::SoapFailure {
            op: "create_query_definition",
            status: "Error".into(),
            message: "Invalid SQL syntax".into(),
        };
        assert_eq!(
            e.client_message(),
            "Marketing Cloud operation failed: Invalid SQL syntax"
        );
        let e = MceError::CredentialsUnavailable("connection refused at 10.0.0.3".into());
        assert!(!e.client_message().contains("10.0.0.3"));
    }
}
