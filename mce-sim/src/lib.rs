//! An MCE simulator: the token endpoint, the SOAP endpoint and the REST
//! endpoints of reference/MCE-PROTOCOL.md, with realistic envelopes, queries
//! that run for a chosen time and then complete or fail, and a record of
//! every call for tests to assert on.
//!
//! One listener serves all three base URLs: point `MCE_AUTH_BASE_URL`,
//! `MCE_SOAP_BASE_URL` and `MCE_REST_BASE_URL` at [`Sim::url`].

mod soap;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use state::{
    Call, Chaos, ChaosKind, Fault, Load, Outcome, PropertyShape, QueryDefinition, Scenario, State, StatusCase,
    StatusStyle, log_normal,
};

/// Settings fixed for a simulator's life.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// `expires_in` of issued access tokens, in seconds.
    pub token_lifetime_secs: i64,
    /// The scenario of a query no script matches.
    pub default_scenario: Scenario,
    /// Results per Retrieve page (MCE: 2500); more come with `MoreDataAvailable`.
    pub retrieve_page_size: usize,
    /// `rest_instance_url` and `soap_instance_url` of token answers: hosts a
    /// client must never use (it has its configured base URLs).
    pub instance_url: String,
    /// MCE's pace: latency per call, rate limits per business unit.
    pub load: Load,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 1079,
            default_scenario: Scenario::completes_after(Duration::from_secs(1), 3),
            retrieve_page_size: 2500,
            instance_url: "https://example.rest.marketingcloudapis.com/".into(),
            load: Load::default(),
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

/// A running simulator. Dropping it stops the server.
pub struct Sim {
    pub state: Shared,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v2/token", post(state::token))
        .route("/Service.asmx", post(soap::handle))
        .route("/automation/v1/queries/actions/validate/", post(state::validate))
        .route("/automation/v1/queries/{id}/actions/isrunning/", get(state::is_running))
        .route("/data/v1/customobjectdata/key/{key}/rowset", get(state::rowset))
        .with_state(state)
}

impl Sim {
    /// Starts on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Sim> {
        let state: Shared = Arc::new(Mutex::new(State::new(config)));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sim { state, addr, server })
    }

    /// Starts on a free loopback port.
    pub async fn start(config: SimConfig) -> std::io::Result<Sim> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// The base URL for all three MCE services.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("simulator state lock"))
    }

    /// Accepts `token` as a valid refresh token (once: tokens rotate).
    pub fn add_refresh_token(&self, token: &str) {
        self.with(|s| s.add_refresh_token(token));
    }

    /// Makes every access token issued so far invalid (as if expired), so the
    /// next SOAP call gets "Login Failed" and the next REST call HTTP 401.
    pub fn expire_access_tokens(&self) {
        self.with(|s| s.expire_access_tokens());
    }

    /// Queries whose text contains `pattern` follow `scenario`.
    pub fn script(&self, pattern: &str, scenario: Scenario) {
        self.with(|s| s.scripts.push((pattern.to_string(), scenario)));
    }

    /// Queue a fault for the next calls of one action (see [`Call::action`]).
    pub fn inject(&self, fault: Fault) {
        self.with(|s| s.faults.push(fault));
    }

    /// MCE's pace from now on.
    pub fn set_load(&self, load: Load) {
        self.with(|s| s.load = load);
    }

    /// 429s answered so far, per business unit.
    pub fn throttled(&self) -> std::collections::HashMap<String, u64> {
        self.with(|s| s.throttled.clone())
    }

    /// Faults at a rate from now on (`None`: no more).
    pub fn chaos(&self, chaos: Option<Chaos>) {
        self.with(|s| s.set_chaos(chaos));
    }

    /// How many faults of each kind chaos has caused.
    pub fn chaos_counts(&self) -> std::collections::HashMap<ChaosKind, u32> {
        self.with(|s| s.chaos_counts.clone())
    }

    /// How many times MCE really started a query writing into this Data
    /// Extension (Performs refused by a fault are not counted).
    pub fn performs_into(&self, target_key: &str) -> usize {
        self.with(|s| s.tasks.values().filter(|t| t.target_key == target_key).count())
    }

    /// A query MCE is already running (as if started by Perform), for
    /// benchmarks that put runs in flight without starting each one.
    pub fn seed_task(&self, task_id: &str, target_key: &str, scenario: Scenario) {
        self.with(|s| s.seed_task(task_id, target_key, scenario));
    }

    /// Forgets the calls recorded so far (long benchmarks).
    pub fn clear_calls(&self) {
        self.with(|s| s.calls.clear());
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    /// How many calls of `action` were made.
    pub fn count(&self, action: &str) -> usize {
        self.with(|s| s.calls.iter().filter(|c| c.action == action).count())
    }

    /// The QueryDefinitions that exist now.
    pub fn query_definitions(&self) -> Vec<QueryDefinition> {
        self.with(|s| s.query_definitions.values().cloned().collect())
    }
}

impl Sim {
    /// Every access token issued so far.
    pub fn access_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued_access_tokens())
    }

    /// Refresh tokens that would be accepted now (rotation replaces them).
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.with(|s| s.refresh_tokens())
    }
}

/// A field of a Data Extension seeded into the simulator.
#[derive(Clone, Debug)]
pub struct SeedField {
    pub name: String,
    pub field_type: String,
    pub primary_key: bool,
    pub required: bool,
}

impl SeedField {
    pub fn new(name: &str, field_type: &str) -> Self {
        Self {
            name: name.into(),
            field_type: field_type.into(),
            primary_key: false,
            required: false,
        }
    }

    pub fn primary_key(mut self) -> Self {
        self.primary_key = true;
        self
    }
}

impl Sim {
    /// Creates a Data Extension with `rows` generated rows, as if a user had made it.
    pub fn add_data_extension(&self, name: &str, customer_key: &str, fields: &[SeedField], rows: i64) {
        self.with(|s| s.seed_data_extension(name, customer_key, fields, rows));
    }

    /// The rows of a Data Extension now.
    pub fn rows(&self, customer_key: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.with(|s| {
            s.data_extensions
                .get(customer_key)
                .map(|d| d.rows.clone())
                .unwrap_or_default()
        })
    }

    /// Whether a Data Extension with this key exists.
    pub fn has_data_extension(&self, customer_key: &str) -> bool {
        self.with(|s| s.data_extensions.contains_key(customer_key))
    }

    /// Deletes folders by name (as a user cleaning up in MCE would).
    pub fn delete_folder(&self, name: &str) {
        self.with(|s| s.folders.retain(|f| f.name != name));
    }

    /// `(QueryText, TargetUpdateType)` of the QueryDefinition created with this key.
    pub fn created_query(&self, customer_key: &str) -> Option<(String, String)> {
        self.with(|s| {
            s.created_queries
                .iter()
                .rev()
                .find(|(k, _, _)| k == customer_key)
                .map(|(_, text, update)| (text.clone(), update.clone()))
        })
    }

    /// `(name, FieldType)` of a Data Extension's fields.
    pub fn fields(&self, customer_key: &str) -> Vec<(String, String)> {
        self.with(|s| {
            s.data_extensions
                .get(customer_key)
                .map(|d| d.fields.clone())
                .unwrap_or_default()
        })
    }

    /// Adds a QueryDefinition created `age` ago in a folder (as a leaked one would be).
    pub fn add_query_definition(&self, customer_key: &str, category_id: i64, age: Duration) -> String {
        self.with(|s| s.seed_query_definition(customer_key, category_id, age))
    }

    /// Whether the QueryDefinition with this ObjectID exists.
    pub fn has_query_definition(&self, object_id: &str) -> bool {
        self.with(|s| s.query_definitions.contains_key(object_id))
    }

    /// The ids of folders with this name.
    pub fn folders_named(&self, name: &str) -> Vec<i64> {
        self.with(|s| s.folders.iter().filter(|f| f.name == name).map(|f| f.id).collect())
    }
}
