//! The simulated account: tokens, folders, Data Extensions, QueryDefinitions
//! and running tasks, plus the REST and token handlers.

use std::collections::{HashMap, HashSet};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Shared, SimConfig};

/// How one query behaves once started.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// From Perform until MCE reports the end.
    pub duration: Duration,
    pub outcome: Outcome,
    /// After completion, the rowset answers `rowset_not_ready_status` for this long.
    pub rowset_delay: Duration,
    /// 404 by default; MCE also answers 409 and 5xx while a DE settles.
    pub rowset_not_ready_status: u16,
    /// `Some(errors)`: the validate endpoint refuses the query with these.
    pub invalid: Option<Vec<String>>,
    pub status_style: StatusStyle,
    /// CompletedDate is filled in from the first poll, with a time before the start.
    pub completed_date_early: bool,
    pub status_case: StatusCase,
    pub property_shape: PropertyShape,
    /// The first this many isRunning calls for the query's QueryDefinition answer 400.
    pub reject_is_running: u32,
    /// Rowset values are keyed by lower-cased field names.
    pub lowercase_fields: bool,
}

/// What AsyncActivityStatus says while the query runs and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusStyle {
    /// `Queued`, then `Processing` from half-time, then the outcome.
    QueuedThenProcessing,
    /// `Queued` for the whole run and after it: never `Complete` (a failure still shows).
    QueuedForever,
}

/// How the status text is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCase {
    AsIs,
    Upper,
    Lower,
    /// Surrounded by whitespace.
    Padded,
}

/// How the AsyncActivityStatus result carries its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyShape {
    /// `Properties/Property` for Status, ErrorMsg and CompletedDate.
    List,
    /// One `Property`: Status only.
    Single,
    /// `Status`, `ErrorMsg`, `CompletedDate` as direct children of `Results`.
    Direct,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Complete {
        rows: i64,
    },
    /// Ends with this status (e.g. `Error`) and optional ErrorMsg.
    Fail {
        status: String,
        error_msg: Option<String>,
    },
}

impl Scenario {
    pub fn completes_after(duration: Duration, rows: i64) -> Self {
        Self {
            duration,
            outcome: Outcome::Complete { rows },
            rowset_delay: Duration::ZERO,
            rowset_not_ready_status: 404,
            invalid: None,
            status_style: StatusStyle::QueuedThenProcessing,
            completed_date_early: false,
            status_case: StatusCase::AsIs,
            property_shape: PropertyShape::List,
            reject_is_running: 0,
            lowercase_fields: false,
        }
    }

    pub fn fails_after(duration: Duration, error_msg: &str) -> Self {
        Self::ends_with(duration, "Error", Some(error_msg))
    }

    /// Ends with this status and optional ErrorMsg (e.g. `FatalError`, none).
    pub fn ends_with(duration: Duration, status: &str, error_msg: Option<&str>) -> Self {
        Self {
            outcome: Outcome::Fail {
                status: status.into(),
                error_msg: error_msg.map(str::to_string),
            },
            ..Self::completes_after(duration, 0)
        }
    }
}

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    /// `token`, `soap:<Verb>:<ObjectType>`, `rest:validate`, `rest:isrunning`, `rest:rowset`.
    pub action: String,
    /// What it was about: a task id, object id or key.
    pub detail: String,
    pub at: Instant,
    /// How long the answer was held back (the load's latency).
    pub latency: Duration,
}

/// Makes the next `times` calls of `action` fail with `status`, optionally
/// after a delay (longer than the client's timeout: a timeout) and with a
/// `Retry-After` header.
#[derive(Clone, Debug)]
pub struct Fault {
    pub action: String,
    /// 0: no error; the call is carried out and only its answer is delayed.
    pub status: u16,
    pub times: u32,
    pub delay: Duration,
    pub retry_after: Option<String>,
    /// SOAP only: the body is a "Login Failed" fault (whatever the status).
    pub login_failed: bool,
    /// The connection is cut in the middle of the answer.
    pub drop_connection: bool,
}

impl Fault {
    pub fn new(action: &str, status: u16, times: u32) -> Self {
        Self {
            action: action.to_string(),
            status,
            times,
            delay: Duration::ZERO,
            retry_after: None,
            login_failed: false,
            drop_connection: false,
        }
    }

    /// The connection is cut after the headers, before the body ends; the
    /// call is not carried out.
    pub fn dropped(action: &str, times: u32) -> Self {
        Self {
            drop_connection: true,
            ..Self::new(action, 200, times)
        }
    }

    /// Carries the call out, then answers only after `delay` (a client that
    /// gives up or dies meanwhile never learns the outcome).
    pub fn slow_answer(action: &str, delay: Duration, times: u32) -> Self {
        Self {
            delay,
            ..Self::new(action, 0, times)
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// A "Login Failed" fault sent with this HTTP status.
    pub fn login_failed(action: &str, status: u16, times: u32) -> Self {
        Self {
            login_failed: true,
            ..Self::new(action, status, times)
        }
    }

    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_string());
        self
    }

    /// The HTTP answer, after the delay.
    pub async fn respond(self, body: Response) -> Response {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.drop_connection {
            let cut = futures::stream::once(async { Err::<axum::body::Bytes, _>(std::io::Error::other("cut")) });
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-length", "4096")
                .body(axum::body::Body::from_stream(cut))
                .expect("a static response");
        }
        let mut response = body;
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Some(value) = self.retry_after.and_then(|v| v.parse().ok()) {
            response.headers_mut().insert("retry-after", value);
        }
        response
    }
}

#[derive(Clone, Debug)]
pub struct Folder {
    pub id: i64,
    pub name: String,
    pub parent_id: i64,
    pub content_type: String,
}

#[derive(Clone, Debug)]
pub struct DataExtension {
    pub object_id: String,
    pub name: String,
    pub customer_key: String,
    pub folder_id: i64,
    pub fields: Vec<(String, String)>,
    /// Primary-key and required field names.
    pub primary_keys: Vec<String>,
    pub required: Vec<String>,
    pub rows: Vec<serde_json::Map<String, Value>>,
    /// The rowset answers `not_ready_status` until then.
    pub queryable_at: Option<Instant>,
    pub not_ready_status: u16,
}

#[derive(Clone, Debug)]
pub struct QueryDefinition {
    pub object_id: String,
    pub customer_key: String,
    pub name: String,
    pub query_text: String,
    pub target_key: String,
    pub category_id: Option<i64>,
    /// `Overwrite`, `Append` or `Update`.
    pub update_type: String,
    pub created: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub query_object_id: String,
    pub target_key: String,
    pub update_type: String,
    pub started: Instant,
    pub scenario: Scenario,
    pub finished: bool,
}

/// MCE's pace: a latency per call and a rate limit per business unit.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Each SOAP and REST call waits a log-normal time with this median and
    /// 99th percentile before it is answered (`None`: at once).
    pub latency: Option<(Duration, Duration)>,
    /// Calls per second each business unit (the `account_id` its token was
    /// granted for) may make; above it, HTTP 429 with `Retry-After: 1`.
    pub calls_per_second: Option<u32>,
    /// Per-MID limits that replace `calls_per_second`.
    pub calls_per_second_of: HashMap<String, u32>,
    /// Refuse a `TaskID IN` filter (`OverallStatus` "Error: ...").
    pub refuse_in_filter: bool,
    /// Leave this many tasks (the last asked) out of an `IN` answer.
    pub in_filter_leaves_out: usize,
}

impl Load {
    /// Real MCE's status calls: median 300 ms, 99th percentile 2 s.
    pub fn realistic() -> Self {
        Self {
            latency: Some((Duration::from_millis(300), Duration::from_secs(2))),
            ..Self::default()
        }
    }
}

/// A latency drawn from the log-normal with this median and 99th percentile
/// (at most ten times the percentile); `unit1`, `unit2` are uniform in (0, 1].
pub fn log_normal(median: Duration, p99: Duration, unit1: f64, unit2: f64) -> Duration {
    let sigma = (p99.as_secs_f64() / median.as_secs_f64().max(1e-9)).ln().max(0.0) / 2.326_347_874;
    let z = (-2.0 * unit1.max(f64::MIN_POSITIVE).ln()).sqrt() * (std::f64::consts::TAU * unit2).cos();
    let secs = median.as_secs_f64() * (sigma * z).exp();
    Duration::from_secs_f64(secs.min(p99.as_secs_f64() * 10.0))
}

pub struct State {
    pub config: SimConfig,
    pub load: Load,
    load_rng: fastrand::Rng,
    /// The business unit each access token was granted for.
    token_mids: HashMap<String, String>,
    /// Per business unit: the start of its current one-second window and
    /// the calls in it.
    windows: HashMap<String, (Instant, u32)>,
    /// 429s answered, per business unit.
    pub throttled: HashMap<String, u64>,
    refresh_tokens: HashSet<String>,
    access_tokens: HashMap<String, Instant>,
    /// Every access token ever issued (tests look for them in logs).
    issued: Vec<String>,
    pub folders: Vec<Folder>,
    pub data_extensions: HashMap<String, DataExtension>,
    pub query_definitions: HashMap<String, QueryDefinition>,
    pub(crate) tasks: HashMap<String, Task>,
    /// Unfinished tasks by the moment they end: `advance` costs what ends.
    ending: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, String)>>,
    /// isRunning 400 answers given per QueryDefinition.
    pub is_running_rejections: HashMap<String, u32>,
    pub scripts: Vec<(String, Scenario)>,
    pub faults: Vec<Fault>,
    /// Results still to send, by the RequestID a `ContinueRequest` names.
    pub continuations: HashMap<String, Vec<String>>,
    /// Every QueryDefinition ever created: (CustomerKey, QueryText, TargetUpdateType).
    pub created_queries: Vec<(String, String, String)>,
    pub calls: Vec<Call>,
    /// Faults at a rate, when set.
    chaos: Option<(Chaos, fastrand::Rng)>,
    pub chaos_counts: HashMap<ChaosKind, u32>,
    next_id: i64,
}

/// Faults drawn at random (seeded) for a share of all calls: 5xx, 429 with
/// `Retry-After` in seconds or as a date, answers slower than the client's
/// timeout, connections cut mid-answer, expired access tokens and "Login
/// Failed". Only faults that leave MCE's state unambiguous for a careful
/// client hit the token call and Perform: a lost token answer would lose the
/// rotated refresh token, and a 5xx on Perform cannot tell whether the query
/// started (that case has its own test).
#[derive(Clone, Debug)]
pub struct Chaos {
    pub seed: u64,
    /// Share of calls that get a fault, 0 to 1.
    pub rate: f64,
    /// Delay of a slow answer; set it above the client's timeout.
    pub slow: Duration,
    /// Only these kinds are drawn (where the call can get them); empty: all.
    pub kinds: Vec<ChaosKind>,
}

/// What a chaos draw did to a call, counted for the test's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChaosKind {
    ServerError,
    RateLimitedSeconds,
    RateLimitedDate,
    Slow,
    Dropped,
    ExpiredTokens,
    LoginFailed,
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        Self {
            load: config.load.clone(),
            load_rng: fastrand::Rng::with_seed(7),
            token_mids: HashMap::new(),
            windows: HashMap::new(),
            throttled: HashMap::new(),
            config,
            refresh_tokens: HashSet::new(),
            access_tokens: HashMap::new(),
            issued: Vec::new(),
            folders: vec![Folder {
                id: 1,
                name: "Data Extensions".into(),
                parent_id: 0,
                content_type: "dataextension".into(),
            }],
            data_extensions: HashMap::new(),
            query_definitions: HashMap::new(),
            tasks: HashMap::new(),
            ending: Default::default(),
            is_running_rejections: HashMap::new(),
            scripts: Vec::new(),
            faults: Vec::new(),
            created_queries: Vec::new(),
            continuations: HashMap::new(),
            calls: Vec::new(),
            chaos: None,
            chaos_counts: HashMap::new(),
            next_id: 10_000,
        }
    }

    pub fn add_refresh_token(&mut self, token: &str) {
        self.refresh_tokens.insert(token.to_string());
    }

    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.issued.clone()
    }

    pub fn expire_access_tokens(&mut self) {
        self.access_tokens.clear();
    }

    /// Refresh tokens that would be accepted now.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.refresh_tokens.iter().cloned().collect()
    }

    pub fn seed_data_extension(&mut self, name: &str, customer_key: &str, fields: &[crate::SeedField], rows: i64) {
        let fields_list: Vec<(String, String)> =
            fields.iter().map(|f| (f.name.clone(), f.field_type.clone())).collect();
        let de = DataExtension {
            object_id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            customer_key: customer_key.to_string(),
            folder_id: 1,
            rows: (1..=rows).map(|i| row(&fields_list, i, false)).collect(),
            fields: fields_list,
            primary_keys: fields
                .iter()
                .filter(|f| f.primary_key)
                .map(|f| f.name.clone())
                .collect(),
            required: fields.iter().filter(|f| f.required).map(|f| f.name.clone()).collect(),
            queryable_at: Some(Instant::now()),
            not_ready_status: 404,
        };
        self.data_extensions.insert(customer_key.to_string(), de);
    }

    pub fn seed_query_definition(&mut self, customer_key: &str, category_id: i64, age: Duration) -> String {
        let object_id = uuid::Uuid::new_v4().to_string();
        let qd = QueryDefinition {
            object_id: object_id.clone(),
            customer_key: customer_key.to_string(),
            name: customer_key.to_string(),
            query_text: "SELECT 1 AS One".into(),
            target_key: String::new(),
            category_id: Some(category_id),
            update_type: "Overwrite".into(),
            created: chrono::Utc::now() - chrono::Duration::from_std(age).unwrap_or_default(),
        };
        self.query_definitions.insert(object_id.clone(), qd);
        object_id
    }

    pub fn seed_task(&mut self, task_id: &str, target_key: &str, scenario: Scenario) {
        self.start_task(
            task_id.to_string(),
            Task {
                query_object_id: String::new(),
                target_key: target_key.to_string(),
                update_type: "Overwrite".into(),
                started: Instant::now(),
                scenario,
                finished: false,
            },
        );
    }

    pub fn start_task(&mut self, task_id: String, task: Task) {
        self.ending.push(std::cmp::Reverse((
            task.started + task.scenario.duration,
            task_id.clone(),
        )));
        self.tasks.insert(task_id, task);
    }

    pub fn task(&self, task_id: &str) -> Option<&Task> {
        self.tasks.get(task_id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = (&String, &Task)> {
        self.tasks.iter()
    }

    pub fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn record(&mut self, action: &str, detail: &str) {
        self.calls.push(Call {
            action: action.to_string(),
            detail: detail.to_string(),
            at: Instant::now(),
            latency: Duration::ZERO,
        });
    }

    /// The injected fault due for this action, if any: a queued one, else
    /// one drawn by chaos.
    pub fn take_fault(&mut self, action: &str) -> Option<Fault> {
        if let Some(fault) = self.faults.iter_mut().find(|f| f.action == action && f.times > 0) {
            fault.times -= 1;
            return Some(fault.clone());
        }
        self.chaos_fault(action)
    }

    pub fn set_chaos(&mut self, chaos: Option<Chaos>) {
        self.chaos = chaos.map(|c| {
            let rng = fastrand::Rng::with_seed(c.seed);
            (c, rng)
        });
    }

    fn chaos_fault(&mut self, action: &str) -> Option<Fault> {
        let (chaos, rng) = self.chaos.as_mut()?;
        if rng.f64() >= chaos.rate {
            return None;
        }
        use ChaosKind::*;
        let kinds: &[ChaosKind] = match action {
            "token" => &[ServerError, RateLimitedSeconds, Dropped],
            a if a.starts_with("soap:") => &[
                ServerError,
                RateLimitedSeconds,
                RateLimitedDate,
                Slow,
                Dropped,
                ExpiredTokens,
                LoginFailed,
            ],
            _ => &[
                ServerError,
                RateLimitedSeconds,
                RateLimitedDate,
                Slow,
                Dropped,
                ExpiredTokens,
            ],
        };
        let allowed: Vec<ChaosKind> = kinds
            .iter()
            .copied()
            .filter(|k| chaos.kinds.is_empty() || chaos.kinds.contains(k))
            .collect();
        if allowed.is_empty() {
            return None;
        }
        let kind = allowed[rng.usize(..allowed.len())];
        let slow = chaos.slow;
        let server_error = [500, 502, 503][rng.usize(..3)];
        *self.chaos_counts.entry(kind).or_default() += 1;
        let fault = match kind {
            ServerError => Fault::new(action, server_error, 1),
            RateLimitedSeconds => Fault::new(action, 429, 1).retry_after("1"),
            RateLimitedDate => {
                let when = chrono::Utc::now() + chrono::Duration::seconds(2);
                Fault::new(action, 429, 1).retry_after(&when.to_rfc2822().replace("+0000", "GMT"))
            }
            // SOAP calls are carried out and answered late; REST reads just time out.
            Slow if action.starts_with("soap:") => Fault::slow_answer(action, slow, 1),
            Slow => Fault::new(action, 504, 1).after(slow),
            Dropped => Fault::dropped(action, 1),
            ExpiredTokens => {
                self.access_tokens.clear();
                return None;
            }
            LoginFailed => Fault::login_failed(action, [200, 500][rng.usize(..2)], 1),
        };
        Some(fault)
    }

    /// Notes the latency of the last `n` calls recorded (one request's).
    pub fn note_latency(&mut self, n: usize, latency: Duration) {
        let len = self.calls.len();
        for call in &mut self.calls[len.saturating_sub(n)..] {
            call.latency = latency;
        }
    }

    /// How long a call with this token takes, if it is within its business
    /// unit's rate (then it is counted); `None` is a 429.
    pub fn admit(&mut self, token: &str) -> Option<Duration> {
        let mid = self.token_mids.get(token).cloned().unwrap_or_default();
        let limit = self
            .load
            .calls_per_second_of
            .get(&mid)
            .copied()
            .or(self.load.calls_per_second);
        if let Some(limit) = limit {
            let now = Instant::now();
            let window = self.windows.entry(mid.clone()).or_insert((now, 0));
            if now.duration_since(window.0) >= Duration::from_secs(1) {
                *window = (now, 0);
            }
            if window.1 >= limit {
                *self.throttled.entry(mid).or_default() += 1;
                return None;
            }
            window.1 += 1;
        }
        Some(match self.load.latency {
            None => Duration::ZERO,
            Some((median, p99)) => {
                let (u1, u2) = (1.0 - self.load_rng.f64(), self.load_rng.f64());
                log_normal(median, p99, u1, u2)
            }
        })
    }

    pub fn token_valid(&self, token: &str) -> bool {
        self.access_tokens.get(token).is_some_and(|exp| Instant::now() < *exp)
    }

    pub fn scenario_for(&self, query_text: &str) -> Scenario {
        self.scripts
            .iter()
            .find(|(pattern, _)| query_text.contains(pattern.as_str()))
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| self.config.default_scenario.clone())
    }

    /// Finishes tasks whose time has come: rows appear in the target only then.
    pub fn advance(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(std::cmp::Reverse((at, _))) = self.ending.peek()
            && *at <= now
        {
            let std::cmp::Reverse((_, id)) = self.ending.pop().expect("peeked");
            due.push(id);
        }
        for id in due {
            let Some(task) = self.tasks.get_mut(&id).filter(|t| !t.finished) else {
                continue;
            };
            task.finished = true;
            let (target, scenario, ended) = (
                task.target_key.clone(),
                task.scenario.clone(),
                task.started + task.scenario.duration,
            );
            let update_type = task.update_type.clone();
            if let (Outcome::Complete { rows }, Some(de)) = (&scenario.outcome, self.data_extensions.get_mut(&target)) {
                let new: Vec<_> = (1..=*rows)
                    .map(|i| row(&de.fields, i, scenario.lowercase_fields))
                    .collect();
                match update_type.as_str() {
                    "Append" => de.rows.extend(new),
                    "Update" => {
                        // Rows whose key matches are replaced, the others added.
                        let key = de.primary_keys.first().cloned().unwrap_or_default();
                        for r in new {
                            match de.rows.iter_mut().find(|old| old.get(&key) == r.get(&key)) {
                                Some(old) => *old = r,
                                None => de.rows.push(r),
                            }
                        }
                    }
                    _ => de.rows = new,
                }
                de.not_ready_status = scenario.rowset_not_ready_status;
                de.queryable_at = Some(ended + scenario.rowset_delay);
            }
        }
    }

    /// `(Status, ErrorMsg, CompletedDate)` of a task as MCE reports it now.
    pub fn task_status(&self, task: &Task) -> (String, Option<String>, Option<String>) {
        let scenario = &task.scenario;
        let (status, error) = match (task.finished, &scenario.outcome, scenario.status_style) {
            (true, Outcome::Fail { status, error_msg }, _) => (status.clone(), error_msg.clone()),
            (_, _, StatusStyle::QueuedForever) => ("Queued".to_string(), None),
            (true, Outcome::Complete { .. }, _) => ("Complete".to_string(), None),
            (false, _, StatusStyle::QueuedThenProcessing) => {
                let half = task.started + scenario.duration / 2;
                let status = if Instant::now() < half { "Queued" } else { "Processing" };
                (status.to_string(), None)
            }
        };
        let status = match scenario.status_case {
            StatusCase::AsIs => status,
            StatusCase::Upper => status.to_uppercase(),
            StatusCase::Lower => status.to_lowercase(),
            StatusCase::Padded => format!("  {status} \n"),
        };
        let completed = if scenario.completed_date_early {
            // Production logs show a CompletedDate before the query even started.
            Some(mce_date(chrono::Utc::now() - chrono::Duration::hours(1)))
        } else if task.finished {
            Some(mce_date(chrono::Utc::now()))
        } else {
            None
        };
        (status, error, completed)
    }
}

/// `M/D/YYYY h:mm:ss AM`, as MCE writes CompletedDate.
fn mce_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%-m/%-d/%Y %-I:%M:%S %p").to_string()
}

fn row(fields: &[(String, String)], i: i64, lowercase: bool) -> serde_json::Map<String, Value> {
    fields
        .iter()
        .map(|(name, field_type)| {
            let value = match field_type.as_str() {
                "Number" | "Decimal" => json!(i.to_string()),
                "EmailAddress" => json!(format!("user{i}@example.com")),
                _ => json!(format!("{name}-{i}")),
            };
            (if lowercase { name.to_lowercase() } else { name.clone() }, value)
        })
        .collect()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

/// Records a REST call, checks its token and applies a due fault; the
/// state, locked, when the call may proceed.
async fn enter<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    action: &str,
    detail: &str,
) -> Result<MutexGuard<'a, State>, Box<Response>> {
    let (fault, pace) = {
        let mut state = shared.lock().expect("simulator state lock");
        state.record(action, detail);
        let token = bearer(headers);
        if !token.as_deref().is_some_and(|t| state.token_valid(t)) {
            let body = axum::Json(json!({"message": "Not Authorized", "errorcode": 0}));
            return Err(Box::new((StatusCode::UNAUTHORIZED, body).into_response()));
        }
        let fault = state.take_fault(action);
        let pace = state.admit(&token.unwrap_or_default());
        if let Some(latency) = pace {
            state.note_latency(1, latency);
        }
        (fault, pace)
    };
    if let Some(fault) = fault {
        return Err(Box::new(
            fault
                .respond(axum::Json(json!({"message": "injected fault"})).into_response())
                .await,
        ));
    }
    match pace {
        None => Err(Box::new(too_many_requests())),
        Some(latency) => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let mut state = shared.lock().expect("simulator state lock");
            state.advance();
            Ok(state)
        }
    }
}

/// MCE's answer above an account's rate.
pub fn too_many_requests() -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"message": "Too many requests", "errorcode": 429})),
    )
        .into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

pub async fn token(AxState(shared): AxState<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let fault = {
        let mut state = shared.lock().expect("simulator state lock");
        state.record("token", form.get("account_id").map(String::as_str).unwrap_or(""));
        state.take_fault("token")
    };
    let delay = match fault {
        Some(fault) if fault.status == 0 => fault.delay,
        Some(fault) => return fault.respond(StatusCode::SERVICE_UNAVAILABLE.into_response()).await,
        None => Duration::ZERO,
    };
    let response = grant(&shared, &form);
    // A slow answer: the grant (and its rotation) happened; the reply is late.
    tokio::time::sleep(delay).await;
    response
}

fn grant(shared: &Shared, form: &HashMap<String, String>) -> Response {
    let mut state = shared.lock().expect("simulator state lock");
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token")
        || form.get("client_id").is_none_or(|c| c.is_empty())
        || !state.refresh_tokens.remove(&presented)
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "Token revoked"})),
        )
            .into_response();
    }
    let access = format!("at-{}", uuid::Uuid::new_v4().simple());
    let rotated = format!("rt-{}", uuid::Uuid::new_v4().simple());
    let lifetime = state.config.token_lifetime_secs;
    state.access_tokens.insert(
        access.clone(),
        Instant::now() + Duration::from_secs(lifetime.max(0) as u64),
    );
    state.refresh_tokens.insert(rotated.clone());
    state.issued.push(access.clone());
    let mid = form.get("account_id").cloned().unwrap_or_default();
    state.token_mids.insert(access.clone(), mid);
    axum::Json(json!({
        "access_token": access, "refresh_token": rotated, "expires_in": lifetime, "token_type": "Bearer",
        "scope": "offline data_extensions_read data_extensions_write automations_execute",
        "rest_instance_url": state.config.instance_url.clone(),
        "soap_instance_url": state.config.instance_url.clone()
    }))
    .into_response()
}

pub async fn validate(AxState(shared): AxState<Shared>, headers: HeaderMap, body: String) -> Response {
    let state = match enter(&shared, &headers, "rest:validate", "").await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let text = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("Text")?.as_str().map(str::to_string));
    let Some(text) = text else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Text is required"})),
        )
            .into_response();
    };
    match state.scenario_for(&text).invalid {
        Some(errors) => axum::Json(json!({"queryValid": false, "errors": errors})).into_response(),
        None => axum::Json(json!({"queryValid": true})).into_response(),
    }
}

pub async fn is_running(AxState(shared): AxState<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let mut state = match enter(&shared, &headers, "rest:isrunning", &id).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let allowed_rejections = state
        .tasks
        .values()
        .find(|t| t.query_object_id == id)
        .map(|t| t.scenario.reject_is_running)
        .unwrap_or(0);
    let rejected = state.is_running_rejections.entry(id.clone()).or_insert(0);
    let refuse = *rejected < allowed_rejections;
    if refuse {
        *rejected += 1;
    }
    if refuse || !state.query_definitions.contains_key(&id) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Invalid query id"})),
        )
            .into_response();
    }
    let running = state.tasks.values().any(|t| t.query_object_id == id && !t.finished);
    axum::Json(json!({ "isRunning": running })).into_response()
}

pub async fn rowset(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let state = match enter(&shared, &headers, "rest:rowset", &key).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let page: usize = query.get("$page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let page_size: usize = query.get("$pageSize").and_then(|p| p.parse().ok()).unwrap_or(0);
    if page < 1 || page_size < 1 {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "$page and $pageSize are required"})),
        )
            .into_response();
    }
    let Some(de) = state.data_extensions.get(&key) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Data Extension not found"})),
        )
            .into_response();
    };
    if de.queryable_at.is_none_or(|at| Instant::now() < at) {
        return (
            StatusCode::from_u16(de.not_ready_status).unwrap_or(StatusCode::NOT_FOUND),
            axum::Json(json!({"message": "Data Extension not queryable"})),
        )
            .into_response();
    }
    let items: Vec<Value> = de
        .rows
        .iter()
        .enumerate()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(i, values)| json!({"keys": {"_CustomObjectKey": (i + 1).to_string()}, "values": values}))
        .collect();
    axum::Json(json!({
        "links": {}, "requestToken": uuid::Uuid::new_v4().to_string(), "customObjectKey": key,
        "pageSize": page_size, "page": page, "count": de.rows.len(), "top": 0, "items": items
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_have_the_asked_median_and_99th_percentile() {
        let mut rng = fastrand::Rng::with_seed(3);
        let (median, p99) = (Duration::from_millis(300), Duration::from_secs(2));
        let mut draws: Vec<f64> = (0..20_000)
            .map(|_| log_normal(median, p99, 1.0 - rng.f64(), rng.f64()).as_secs_f64())
            .collect();
        draws.sort_by(f64::total_cmp);
        let at = |q: f64| draws[(q * draws.len() as f64) as usize];
        assert!((0.27..0.33).contains(&at(0.5)), "median {}", at(0.5));
        assert!((1.6..2.5).contains(&at(0.99)), "p99 {}", at(0.99));
    }

    #[test]
    fn each_business_unit_gets_its_own_rate() {
        let mut state = State::new(SimConfig::default());
        state.load = Load {
            calls_per_second: Some(3),
            calls_per_second_of: [("2".to_string(), 1)].into(),
            ..Load::default()
        };
        state.token_mids.insert("a".into(), "1".into());
        state.token_mids.insert("b".into(), "2".into());
        let admitted = |state: &mut State, token: &str| (0..5).filter(|_| state.admit(token).is_some()).count();
        assert_eq!(admitted(&mut state, "a"), 3);
        assert_eq!(admitted(&mut state, "b"), 1);
        assert_eq!(state.throttled["1"], 2);
        assert_eq!(state.throttled["2"], 4);
    }
}
