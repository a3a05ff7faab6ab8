//! Everything that talks to Marketing Cloud. The only module that knows XML,
//! SOAP, REST paths and token grants; the rest of the service calls typed
//! operations on a [`Session`] and gets typed answers or an [`MceError`].
//!
//! Architecture invariant: only the three configured base URLs are ever
//! contacted, with a tenant subdomain that matched `[a-z0-9-]+`. No host is
//! ever taken from a response or a database value.

pub mod admission;
pub mod auth;
pub mod batch;
pub mod client;
pub mod error;
pub mod rest;
pub mod soap;
pub mod xml;

pub use client::{BaseUrls, Mce, RetryPolicy, Session};
pub use error::{MceError, Op, Timeouts};
pub use rest::{Rowset, Validation};
pub use soap::{AsyncStatus, DataExtensionInfo, DeTarget, FieldInfo};
