//! SeaORM entities for the tables of docs/CONTRACT.md section 5.
//!
//! Architecture invariant: this crate describes rows and nothing else. It knows
//! no business rules; the service's `store` module owns every query.

pub mod credentials;
pub mod shell_query_deliveries;
pub mod shell_query_runs;
pub mod tenant_settings;
pub mod tenants;

pub mod prelude {
    pub use super::credentials::Entity as Credentials;
    pub use super::shell_query_deliveries::Entity as ShellQueryDeliveries;
    pub use super::shell_query_runs::Entity as ShellQueryRuns;
    pub use super::tenant_settings::Entity as TenantSettings;
    pub use super::tenants::Entity as Tenants;
}
