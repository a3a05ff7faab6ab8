//! Why a delivery could not finish: a [`Failure`], transient (another
//! delivery) or permanent (the run fails).

use crate::adapters::mce::MceError;
use crate::adapters::nats::NatsError;
use crate::adapters::store::StoreError;

/// Why this delivery could not finish.
#[derive(Debug)]
pub(super) enum Failure {
    /// Worth another delivery: MCE 5xx/429/timeout, database, NATS.
    Transient(String),
    /// The run cannot succeed; the client-safe reason.
    Permanent(String),
    /// The message itself is refused (it is not its run's to act on): to
    /// the DLQ with the reason, the run left as it is.
    Refused(String),
}

impl From<MceError> for Failure {
    fn from(e: MceError) -> Self {
        if e.is_transient() {
            Failure::Transient(e.to_string())
        } else {
            Failure::Permanent(e.client_message())
        }
    }
}

impl From<StoreError> for Failure {
    /// A database briefly away is worth another delivery; one that refuses
    /// the data itself refuses it every time.
    fn from(e: StoreError) -> Self {
        if e.is_refused_data() {
            tracing::warn!(error = %e, "the database refused the run's data");
            Failure::Permanent("The run request holds data that cannot be stored.".into())
        } else {
            Failure::Transient(format!("database: {e}"))
        }
    }
}

impl From<NatsError> for Failure {
    fn from(e: NatsError) -> Self {
        Failure::Transient(e.to_string())
    }
}

/// Clean-up and lookup steps may fail without failing the run, unless MCE
/// is briefly away (retry the delivery) or nothing can work (credentials
/// gone, access denied).
pub(super) fn best_effort<T>(result: Result<T, MceError>) -> Result<Option<T>, Failure> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_unrecoverable() || e.is_transient() => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "best-effort MCE step failed");
            Ok(None)
        }
    }
}
