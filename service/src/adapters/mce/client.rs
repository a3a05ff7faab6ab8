//! The HTTP side: base URLs, retries, the auth retry, and the typed
//! operations of a [`Session`] (one tenant, user and business unit).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use uuid::Uuid;

use super::admission::Permit;
use super::auth::{Auth, Grant, TokenKey, read_grant};
use super::error::{MceError, Op, Timeouts};
use super::rest::{self, Rowset, Validation};
use super::soap::{self, AsyncStatus, DataExtensionInfo, DeTarget, FieldInfo, QueryDefinitionSpec, ReadError, Verb};
use super::xml::{self, Element};
use crate::adapters::crypto::Cipher;
use crate::adapters::store::credentials::CredentialStore;
use shell_query_core::account::Account;
use shell_query_core::backoff::Backoff;
use shell_query_core::schema::DeField;

/// URL templates with `{tssd}` for the tenant's subdomain.
#[derive(Clone, Debug)]
pub struct BaseUrls {
    pub auth: String,
    pub soap: String,
    pub rest: String,
}

/// Retries of one call for 429, 5xx and timeouts.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff: Backoff,
    /// A `Retry-After` longer than this is cut to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
                multiplier: 2.0,
                jitter_range: 0.4,
            },
            max_retry_after: Duration::from_secs(30),
        }
    }
}

pub struct Mce {
    http: reqwest::Client,
    auth: Auth,
    urls: BaseUrls,
    retry: RetryPolicy,
    timeouts: Timeouts,
    metrics: std::sync::Arc<crate::adapters::metrics::Metrics>,
    /// Each tenant's admission: its adaptive limit of calls in flight at
    /// MCE, its share of ticks, its stretch.
    admission: super::admission::Admission,
    /// Status checks that fall due together, asked in one call.
    statuses: std::sync::Arc<super::batch::StatusBatcher>,
    /// Tenant subdomains, read once per process: a poll tick reads only its run.
    tssds: std::sync::Mutex<std::collections::HashMap<Uuid, String>>,
}

/// Shows the MCE call families from the start: every operation's calls
/// at 0 (answered, and refused for their token, which an alert watches),
/// and its empty duration histogram.
pub(crate) fn start_metrics_at_zero(metrics: &crate::adapters::metrics::Metrics) {
    use crate::adapters::metrics::{MCE_CALL_DURATION, MCE_CALLS};
    for op in Op::ALL {
        for result in ["ok", "token_refused"] {
            metrics.add(MCE_CALLS, &[("operation", op.name()), ("result", result)], 0);
        }
        metrics.touch(MCE_CALL_DURATION, &[("operation", op.name())]);
    }
}

/// The HTTP client attributes of the current MCE call's span: its method
/// and the host it goes to (never the path or the query, which name keys).
fn record_request(method: &'static str, url: &str) {
    let span = tracing::Span::current();
    span.record("http.request.method", method);
    if let Some(host) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    {
        span.record("server.address", host);
    }
}

/// A bounded label for an MCE call's result.
fn result_label(result: &Result<impl Sized, MceError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(MceError::Unavailable { .. }) => "unavailable",
        Err(MceError::Unreachable { .. }) => "unreachable",
        Err(MceError::TokenRefused { .. }) => "token_refused",
        Err(MceError::RateLimited { .. }) => "rate_limited",
        Err(MceError::AuthExpired { .. }) => "auth_expired",
        Err(MceError::Forbidden { .. }) => "forbidden",
        Err(MceError::BadRequest { .. }) => "bad_request",
        Err(MceError::SoapFailure { .. }) => "soap_failure",
        Err(MceError::SoapFault { .. }) => "soap_fault",
        Err(MceError::Protocol { .. }) => "protocol",
        Err(_) => "other",
    }
}

/// The outcome of one HTTP exchange before retries.
enum Attempt<T> {
    Done(T),
    /// The token was refused (REST 401, SOAP "Login Failed").
    AuthRefused,
}

fn transport_error(op: Op, e: &reqwest::Error) -> MceError {
    let detail = if e.is_timeout() {
        "request timed out".to_string()
    } else if e.is_connect() {
        return MceError::Unreachable { op: op.name() };
    } else {
        "request failed".to_string()
    };
    MceError::Unavailable { op: op.name(), detail }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

fn status_error(op: Op, status: u16, headers: &reqwest::header::HeaderMap, message: String) -> MceError {
    match status {
        403 => MceError::Forbidden { op: op.name() },
        429 => MceError::RateLimited {
            op: op.name(),
            retry_after: retry_after(headers),
        },
        500..=599 => MceError::Unavailable {
            op: op.name(),
            detail: format!("HTTP {status}"),
        },
        _ => MceError::BadRequest {
            op: op.name(),
            status,
            message,
        },
    }
}

fn read_error(op: Op, e: ReadError) -> MceError {
    match e {
        ReadError::Fault { code, message } => MceError::SoapFault {
            op: op.name(),
            code,
            message,
        },
        ReadError::Status { status, message } => MceError::SoapFailure {
            op: op.name(),
            status,
            message,
        },
        ReadError::Shape(detail) => MceError::Protocol { op: op.name(), detail },
    }
}

/// The message MCE gives with a REST error, cut to 500 characters.
fn rest_message(body: &str) -> String {
    let text = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    text.chars().take(500).collect()
}

impl Mce {
    pub fn new(
        credentials: CredentialStore,
        cipher: Cipher,
        client_id: String,
        client_secret: SecretString,
        urls: BaseUrls,
        retry: RetryPolicy,
    ) -> Self {
        crate::adapters::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds with static settings");
        Self {
            http,
            auth: Auth::new(credentials, cipher, client_id, client_secret),
            urls,
            retry,
            timeouts: Timeouts::default(),
            metrics: Default::default(),
            admission: Default::default(),
            statuses: Default::default(),
            tssds: Default::default(),
        }
    }

    /// Whole-request deadlines other than the reference's.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Admits each tenant's ticks and calls through this admission
    /// (default: calls 8 a tenant growing to 64, ticks unbounded).
    pub(crate) fn with_admission(mut self, admission: super::admission::Admission) -> Self {
        self.admission = admission;
        self
    }

    /// The tenants' admission (the poll handler takes tick places in it).
    pub(crate) fn admission(&self) -> &super::admission::Admission {
        &self.admission
    }

    /// Asks the status of tasks of one tenant, user and business unit that
    /// fall due within `window` in one call, at most `max` at a time (`window`
    /// zero: one call per task).
    pub(crate) fn with_status_batching(mut self, window: std::time::Duration, max: usize) -> Self {
        self.statuses = std::sync::Arc::new(super::batch::StatusBatcher::new(window, max));
        self
    }

    /// Records calls and token refreshes in these metrics.
    pub(crate) fn with_metrics(mut self, metrics: std::sync::Arc<crate::adapters::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// A session for one account: a tenant's user in one business unit.
    pub async fn session(&self, account: &Account) -> Result<Session<'_>, MceError> {
        let tenant_id = account.tenant_id();
        let cached = self.tssds.lock().expect("tssd cache lock").get(&tenant_id).cloned();
        let tssd = match cached {
            Some(tssd) => tssd,
            None => {
                let stored = self
                    .auth
                    .credentials
                    .tenant_tssd(tenant_id)
                    .await
                    .map_err(|e| MceError::CredentialsUnavailable(e.to_string()))?
                    .ok_or(MceError::TenantNotFound)?;
                let tssd = shell_query_core::naming::parse_tssd(&stored).map_err(|_| MceError::InvalidTssd)?;
                self.tssds
                    .lock()
                    .expect("tssd cache lock")
                    .insert(tenant_id, tssd.clone());
                tssd
            }
        };
        Ok(Session {
            mce: self,
            key: account.clone(),
            tssd,
        })
    }
}

/// MCE as one tenant, user and business unit sees it.
pub struct Session<'a> {
    mce: &'a Mce,
    key: TokenKey,
    tssd: String,
}

/// The batcher asks MCE through the session it was handed, in the place
/// its leader waited for.
impl super::batch::StatusSource for Session<'_> {
    type Place = Permit;

    fn key(&self) -> Account {
        Session::key(self).clone()
    }

    async fn place(&self) -> Result<Permit, MceError> {
        Ok(self.place_for().await)
    }

    fn async_status(&self, task_id: &str) -> impl Future<Output = Result<AsyncStatus, MceError>> + Send {
        Session::async_status(self, task_id)
    }

    fn async_status_in(
        &self,
        place: Permit,
        task_id: &str,
    ) -> impl Future<Output = Result<AsyncStatus, MceError>> + Send {
        Session::async_status_in(self, Some(place), task_id)
    }

    fn async_statuses_in(
        &self,
        place: Permit,
        task_ids: &[&str],
    ) -> impl Future<Output = Result<std::collections::HashMap<String, AsyncStatus>, MceError>> + Send {
        Session::async_statuses_in(self, Some(place), task_ids)
    }
}

impl Session<'_> {
    /// The account this session speaks for.
    pub(crate) fn key(&self) -> &Account {
        &self.key
    }

    /// A task's status, asked together with the other tasks of this
    /// session's key that fall due at the same time (`adapters/mce/batch.rs`).
    pub(crate) async fn async_status_batched(&self, task_id: &str) -> Result<AsyncStatus, MceError> {
        let statuses = self.mce.statuses.clone();
        statuses.status(self, task_id).await
    }

    fn url(&self, template: &str, path: &str) -> String {
        format!("{}{}", template.replace("{tssd}", &self.tssd), path)
    }

    async fn grant(&self, refresh: SecretString) -> Result<Grant, MceError> {
        let mce = self.mce;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose_secret()),
            ("client_id", mce.auth.client_id.as_str()),
            ("client_secret", mce.auth.client_secret.expose_secret()),
            ("account_id", self.key.mid.as_str()),
        ];
        let response = mce
            .http
            .post(self.url(&mce.urls.auth, "/v2/token"))
            .timeout(mce.timeouts.of(Op::Token))
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(Op::Token, &e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| transport_error(Op::Token, &e))?;
        let grant = read_grant(status, &body);
        let result = match &grant {
            Ok(Grant::Granted { .. }) => "ok",
            Ok(Grant::Refused(_)) => "refused",
            Err(_) => "error",
        };
        mce.metrics
            .inc(crate::adapters::metrics::TOKEN_REFRESHES, &[("result", result)]);
        grant
    }

    /// Gets an access token (the stored one while it is valid, else a
    /// grant): `doctor`'s check of a tenant's credentials.
    pub(crate) async fn check_token(&self) -> Result<(), MceError> {
        self.token(None).await.map(|_| ())
    }

    async fn token(&self, refused: Option<&str>) -> Result<SecretString, MceError> {
        self.mce
            .auth
            .token(&self.key, refused, |refresh| self.grant(refresh))
            .await
    }

    /// Runs one exchange with the auth retry inside and the transient retries
    /// around it.
    async fn call<T, F, Fut>(&self, op: Op, exchange: F) -> Result<T, MceError>
    where
        F: FnMut(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>, MceError>>,
    {
        self.call_in(None, op, exchange).await
    }

    /// The tenant's place at MCE (this replica's part of its adaptive
    /// limit of calls in flight).
    async fn place_for(&self) -> Permit {
        self.mce.admission.enter(self.key.tenant_id()).await
    }

    /// [`Session::call`] in a place already held (`Some`), or in one it
    /// waits for.
    async fn call_in<T, F, Fut>(&self, place: Option<Permit>, op: Op, exchange: F) -> Result<T, MceError>
    where
        F: FnMut(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>, MceError>>,
    {
        use tracing::Instrument as _;
        // OpenTelemetry's client span of a remote call, named by operation.
        let span = tracing::info_span!(
            "mce",
            otel.name = format!("mce {}", op.name()),
            otel.kind = "client",
            mce.operation = op.name(),
            http.request.method = tracing::field::Empty,
            server.address = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            mce.retries = tracing::field::Empty,
            mce.result = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let _place = match place {
            Some(place) => place,
            None => self.place_for().await,
        };
        let result = self.call_inner(op, exchange).instrument(span).await;
        self.mce.metrics.observe(
            crate::adapters::metrics::MCE_CALL_DURATION,
            &[("operation", op.name())],
            started.elapsed(),
        );
        result
    }

    /// Tells the tenant's adaptive limit how one attempt went.
    fn signal<T>(&self, result: &Result<T, MceError>, took: std::time::Duration) {
        use shell_query_core::limit::Signal;
        let signal = match result {
            Ok(_) => Signal::Answered(took),
            Err(MceError::RateLimited { .. }) => Signal::Throttled,
            Err(MceError::Unavailable { .. } | MceError::Unreachable { .. }) => Signal::Failed,
            Err(_) => return,
        };
        self.mce.admission.record(self.key.tenant_id(), signal);
    }

    async fn call_inner<T, F, Fut>(&self, op: Op, mut exchange: F) -> Result<T, MceError>
    where
        F: FnMut(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>, MceError>>,
    {
        let policy = &self.mce.retry;
        let mut attempt = 0;
        loop {
            let attempt_started = std::time::Instant::now();
            let result = async {
                let token = self.token(None).await?;
                let refused = token.expose_secret().to_string();
                match exchange(token).await? {
                    Attempt::Done(v) => Ok(v),
                    Attempt::AuthRefused => {
                        let token = self.token(Some(&refused)).await?;
                        match exchange(token).await? {
                            Attempt::Done(v) => Ok(v),
                            Attempt::AuthRefused => Err(MceError::TokenRefused { op: op.name() }),
                        }
                    }
                }
            }
            .await;
            self.signal(&result, attempt_started.elapsed());
            match result {
                Err(e)
                    if e.is_transient()
                        && (op.is_idempotent() || e.surely_not_received())
                        && attempt < policy.max_retries =>
                {
                    let hinted = match &e {
                        MceError::RateLimited {
                            retry_after: Some(d), ..
                        } => Some((*d).min(policy.max_retry_after)),
                        _ => None,
                    };
                    let delay = hinted.unwrap_or_else(|| policy.backoff.delay(attempt, fastrand::f64()));
                    tracing::debug!(op = op.name(), attempt, ?delay, error = %e, "retrying MCE call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => {
                    let span = tracing::Span::current();
                    span.record("mce.retries", attempt);
                    span.record("mce.result", result_label(&other));
                    if other.is_err() {
                        span.record("otel.status_code", "ERROR");
                    }
                    self.mce.metrics.inc(
                        crate::adapters::metrics::MCE_CALLS,
                        &[("operation", op.name()), ("result", result_label(&other))],
                    );
                    return other;
                }
            }
        }
    }

    /// One SOAP call; the parsed envelope on success.
    async fn soap(&self, op: Op, verb: Verb, body: &str) -> Result<Element, MceError> {
        self.soap_in(None, op, verb, body).await
    }

    /// A SOAP call in `place` (a place at the tenant's admission the caller
    /// already holds), or in a place of its own when `None`.
    async fn soap_in(&self, place: Option<Permit>, op: Op, verb: Verb, body: &str) -> Result<Element, MceError> {
        let url = self.url(&self.mce.urls.soap, "/Service.asmx");
        self.call_in(place, op, |token| {
            let envelope = soap::envelope(token.expose_secret(), body);
            let request = self
                .mce
                .http
                .post(&url)
                .timeout(self.mce.timeouts.of(op))
                .header(reqwest::header::CONTENT_TYPE, "text/xml")
                .header("SOAPAction", verb.as_str())
                .body(envelope);
            record_request("POST", &url);
            async move {
                let response = request.send().await.map_err(|e| transport_error(op, &e))?;
                let status = response.status().as_u16();
                tracing::Span::current().record("http.response.status_code", status);
                let headers = response.headers().clone();
                let text = response.text().await.map_err(|e| transport_error(op, &e))?;
                // A fault can come with any HTTP status: read it before classifying.
                let parsed = xml::parse(&text).ok();
                if parsed.as_ref().is_some_and(soap::is_login_failed) || status == 401 {
                    return Ok(Attempt::AuthRefused);
                }
                match (status, parsed) {
                    (200..=299, Some(root)) => Ok(Attempt::Done(root)),
                    (200..=299, None) => Err(MceError::Protocol {
                        op: op.name(),
                        detail: "the SOAP body is not XML".into(),
                    }),
                    (_, parsed) => {
                        let message = parsed
                            .as_ref()
                            .and_then(soap::fault)
                            .map(|(_, m)| m)
                            .unwrap_or_default();
                        Err(status_error(op, status, &headers, message))
                    }
                }
            }
        })
        .await
    }

    /// One REST call; `(status, JSON body)` for any 2xx.
    async fn rest(&self, op: Op, path: &str, json_body: Option<&Value>) -> Result<(u16, Value), MceError> {
        let url = self.url(&self.mce.urls.rest, path);
        let payload = json_body.map(|b| b.to_string());
        self.call(op, |token| {
            let mut request = match &payload {
                Some(p) => self
                    .mce
                    .http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(p.clone()),
                None => self.mce.http.get(&url),
            };
            request = request
                .timeout(self.mce.timeouts.of(op))
                .bearer_auth(token.expose_secret());
            record_request(if payload.is_some() { "POST" } else { "GET" }, &url);
            async move {
                let response = request.send().await.map_err(|e| transport_error(op, &e))?;
                let status = response.status().as_u16();
                tracing::Span::current().record("http.response.status_code", status);
                let headers = response.headers().clone();
                let text = response.text().await.map_err(|e| transport_error(op, &e))?;
                match status {
                    401 => Ok(Attempt::AuthRefused),
                    200..=299 => {
                        let value = if text.trim().is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_str(&text).map_err(|_| MceError::Protocol {
                                op: op.name(),
                                detail: "the body is not JSON".into(),
                            })?
                        };
                        Ok(Attempt::Done((status, value)))
                    }
                    _ => Err(status_error(op, status, &headers, rest_message(&text))),
                }
            }
        })
        .await
    }

    // ---- operations ----

    pub async fn validate(&self, sql: &str) -> Result<Validation, MceError> {
        let (_, body) = self
            .rest(
                Op::Validate,
                rest::VALIDATE_PATH,
                Some(&serde_json::json!({ "Text": sql })),
            )
            .await?;
        Ok(rest::read_validation(&body))
    }

    pub async fn is_running(&self, query_definition_id: &str) -> Result<bool, MceError> {
        let (_, body) = self
            .rest(Op::IsRunning, &rest::is_running_path(query_definition_id), None)
            .await?;
        rest::read_is_running(&body).ok_or_else(|| MceError::Protocol {
            op: Op::IsRunning.name(),
            detail: "no isRunning boolean".into(),
        })
    }

    pub(crate) async fn rowset(&self, de_key: &str, page: u32, page_size: u32) -> Result<Rowset, MceError> {
        let (_, body) = self
            .rest(Op::Rowset, &rest::rowset_path(de_key, page, page_size), None)
            .await?;
        rest::read_rowset(&body).ok_or_else(|| MceError::Protocol {
            op: Op::Rowset.name(),
            detail: "no count".into(),
        })
    }

    pub(crate) async fn async_status(&self, task_id: &str) -> Result<AsyncStatus, MceError> {
        self.async_status_in(None, task_id).await
    }

    async fn async_status_in(&self, place: Option<Permit>, task_id: &str) -> Result<AsyncStatus, MceError> {
        let root = self
            .soap_in(
                place,
                Op::AsyncStatus,
                Verb::Retrieve,
                &soap::retrieve_async_status(task_id),
            )
            .await?;
        soap::read_async_status(&root).map_err(|e| read_error(Op::AsyncStatus, e))
    }

    /// The statuses of several tasks in one call, by TaskID, in a place at
    /// the tenant's admission; a task MCE leaves out is missing from the map.
    async fn async_statuses_in(
        &self,
        place: Option<Permit>,
        task_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, AsyncStatus>, MceError> {
        let root = self
            .soap_in(
                place,
                Op::AsyncStatuses,
                Verb::Retrieve,
                &soap::retrieve_async_statuses(task_ids),
            )
            .await?;
        soap::read_async_statuses(&root).map_err(|e| read_error(Op::AsyncStatuses, e))
    }

    /// The id of the first DataFolder matching, if any.
    pub async fn find_folder(&self, name: &str, content_type: Option<&str>) -> Result<Option<i64>, MceError> {
        let root = self
            .soap(
                Op::RetrieveFolder,
                Verb::Retrieve,
                &soap::retrieve_folder(name, content_type),
            )
            .await?;
        let retrieved = soap::read_retrieve(&root).map_err(|e| read_error(Op::RetrieveFolder, e))?;
        Ok(retrieved
            .results
            .first()
            .and_then(|r| r.text_at(&["ID"]))
            .and_then(|id| id.parse().ok()))
    }

    pub(crate) async fn create_folder(&self, name: &str, parent_id: i64) -> Result<i64, MceError> {
        let body = soap::create_folder(name, parent_id, "Temporary storage for Query++ results");
        let root = self.soap(Op::CreateFolder, Verb::Create, &body).await?;
        soap::read_create_new_id(&root).map_err(|e| read_error(Op::CreateFolder, e))
    }

    /// Deletes a DE by key; a DE that does not exist is fine.
    pub(crate) async fn delete_data_extension_if_exists(&self, customer_key: &str) -> Result<(), MceError> {
        let root = self
            .soap(
                Op::DeleteDataExtension,
                Verb::Delete,
                &soap::delete_data_extension(customer_key),
            )
            .await?;
        match soap::read_delete(&root) {
            Ok(()) | Err(ReadError::Status { .. }) => Ok(()),
            Err(e) => Err(read_error(Op::DeleteDataExtension, e)),
        }
    }

    /// Creates a DE; returns its ObjectID.
    pub(crate) async fn create_data_extension(
        &self,
        name: &str,
        key: &str,
        folder_id: i64,
        fields: &[DeField],
    ) -> Result<String, MceError> {
        let body = soap::create_data_extension(name, key, folder_id, fields);
        let root = self.soap(Op::CreateDataExtension, Verb::Create, &body).await?;
        soap::read_create_object_id(&root).map_err(|e| read_error(Op::CreateDataExtension, e))
    }

    /// A DataExtension by Name (`by_key` false) or CustomerKey.
    pub(crate) async fn find_data_extension(
        &self,
        value: &str,
        by_key: bool,
    ) -> Result<Option<DataExtensionInfo>, MceError> {
        let property = if by_key { "CustomerKey" } else { "Name" };
        let root = self
            .soap(
                Op::RetrieveDataExtension,
                Verb::Retrieve,
                &soap::retrieve_data_extension(property, value),
            )
            .await?;
        soap::read_data_extension(&root).map_err(|e| read_error(Op::RetrieveDataExtension, e))
    }

    /// The fields of the DataExtension with this CustomerKey.
    pub(crate) async fn data_extension_fields(&self, customer_key: &str) -> Result<Vec<FieldInfo>, MceError> {
        let body = soap::retrieve_data_extension_fields(customer_key);
        let root = self.soap(Op::RetrieveFields, Verb::Retrieve, &body).await?;
        soap::read_fields(&root).map_err(|e| read_error(Op::RetrieveFields, e))
    }

    /// The ObjectID of the QueryDefinition with this key, if it exists.
    pub(crate) async fn find_query_definition(&self, customer_key: &str) -> Result<Option<String>, MceError> {
        let body = soap::retrieve_query_definition(customer_key);
        let root = self.soap(Op::RetrieveQueryDefinition, Verb::Retrieve, &body).await?;
        let retrieved = soap::read_retrieve(&root).map_err(|e| read_error(Op::RetrieveQueryDefinition, e))?;
        Ok(retrieved
            .results
            .first()
            .and_then(|r| r.non_empty_at(&["ObjectID"]))
            .map(str::to_string))
    }

    /// `(ObjectID, CustomerKey)` of the QueryDefinitions in a folder created
    /// before `created_before`, following `MoreDataAvailable` pages.
    pub(crate) async fn query_definitions_in_folder(
        &self,
        category_id: i64,
        created_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(String, String)>, MceError> {
        const MAX_PAGES: usize = 100;
        let before = created_before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut body = soap::retrieve_query_definitions_in_folder(category_id, &before);
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let root = self.soap(Op::RetrieveQueryDefinition, Verb::Retrieve, &body).await?;
            let page = soap::read_retrieve(&root).map_err(|e| read_error(Op::RetrieveQueryDefinition, e))?;
            out.extend(page.results.iter().filter_map(|r| {
                Some((
                    r.non_empty_at(&["ObjectID"])?.to_string(),
                    r.text_at(&["CustomerKey"]).unwrap_or("").to_string(),
                ))
            }));
            match (page.more_data(), page.request_id.clone()) {
                (true, Some(id)) => body = soap::continue_retrieve(&id),
                _ => return Ok(out),
            }
        }
        Err(MceError::Protocol {
            op: Op::RetrieveQueryDefinition.name(),
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Creates a QueryDefinition; returns its ObjectID.
    pub(crate) async fn create_query_definition(
        &self,
        key: &str,
        query_text: &str,
        target: &DeTarget,
        update_type: &str,
        category_id: Option<i64>,
    ) -> Result<String, MceError> {
        let body = soap::create_query_definition(&QueryDefinitionSpec {
            key,
            query_text,
            target,
            update_type,
            category_id,
        });
        let root = self.soap(Op::CreateQueryDefinition, Verb::Create, &body).await?;
        soap::read_create_object_id(&root).map_err(|e| read_error(Op::CreateQueryDefinition, e))
    }

    pub(crate) async fn delete_query_definition(&self, object_id: &str) -> Result<(), MceError> {
        let root = self
            .soap(
                Op::DeleteQueryDefinition,
                Verb::Delete,
                &soap::delete_query_definition(object_id),
            )
            .await?;
        soap::read_delete(&root).map_err(|e| read_error(Op::DeleteQueryDefinition, e))
    }

    /// Starts the QueryDefinition; returns the TaskID.
    pub async fn perform_start(&self, object_id: &str) -> Result<String, MceError> {
        let root = self
            .soap(Op::Perform, Verb::Perform, &soap::perform_start(object_id))
            .await?;
        soap::read_perform(&root).map_err(|e| read_error(Op::Perform, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Mon, 01 Jan 2001 00:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None, "a past date is no hint");
    }

    #[test]
    fn statuses_map_to_errors() {
        let h = reqwest::header::HeaderMap::new();
        assert!(matches!(
            status_error(Op::Rowset, 404, &h, String::new()),
            MceError::BadRequest { status: 404, .. }
        ));
        assert!(matches!(
            status_error(Op::Rowset, 409, &h, String::new()),
            MceError::BadRequest { status: 409, .. }
        ));
        assert!(matches!(
            status_error(Op::Rowset, 403, &h, String::new()),
            MceError::Forbidden { .. }
        ));
        assert!(matches!(
            status_error(Op::Rowset, 429, &h, String::new()),
            MceError::RateLimited { .. }
        ));
        assert!(matches!(
            status_error(Op::Rowset, 503, &h, String::new()),
            MceError::Unavailable { .. }
        ));
    }
}
