//! One delivery (or one request) each: decode, do the work through the
//! adapters, and say what should become of the message. Handlers never
//! acknowledge anything themselves: the consumer loop (`runtime::consumer`)
//! applies the [`Disposition`] they return.

pub mod cancel;
pub mod delivery;
pub mod execute;
pub mod poll;
pub mod results;
pub mod undeliverable;

pub use self::delivery::{Delivery, Disposition};
use crate::lifecycle::Deps;

/// The handler a consumer runs, with the settings only it needs: a closed
/// set, dispatched in one `match`.
pub(crate) enum Handler {
    Execute(execute::Execute),
    Poll(Box<poll::Poll>),
    Cancel,
    /// Max-deliveries advisories of the jobs stream.
    Undeliverable,
}

impl Handler {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Handler::Execute(_) => "execute",
            Handler::Poll(_) => "poll",
            Handler::Cancel => "cancel",
            Handler::Undeliverable => "undeliverable",
        }
    }

    pub(crate) async fn handle(&self, deps: &Deps, delivery: &Delivery) -> Disposition {
        match self {
            Handler::Execute(h) => h.handle(deps, delivery).await,
            Handler::Poll(h) => h.handle(deps, delivery).await,
            Handler::Cancel => cancel::handle(deps, delivery).await,
            Handler::Undeliverable => undeliverable::handle(deps, delivery).await,
        }
    }
}
