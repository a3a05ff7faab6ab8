//! Command line and configuration (docs/CONTRACT.md sections 6 and 7). Every flag
//! also reads its environment variable. Parsing is the only validation: a
//! value that parses is in range, and a bad one names its setting.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::adapters::crypto::Cipher;
use shell_query_core::backoff::Backoff;
pub use shell_query_core::poll::PollConfig;

#[derive(Debug, Parser)]
#[command(
    name = "shell-query-worker",
    version,
    about = "Runs SQL for Salesforce Marketing Cloud Engagement users"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Apply pending migrations and exit; `migrate status` lists every
    /// migration, `migrate --dry-run` those that would be applied.
    Migrate(MigrateArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage MCE credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// The whole pipeline on one machine, with the MCE simulator.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// List, show and cancel runs (operators).
    #[command(subcommand)]
    Runs(RunsCommand),
    /// List, show and replay the dead-letter queue (operators; needs a NATS
    /// user that may read SHELL_QUERY_DLQ, such as shell_query_admin).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Check the settings, NATS and the streams, the database and its
    /// migrations and, with --tenant and --mid, an MCE token: one line each.
    Doctor(Box<DoctorArgs>),
    /// The effective settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The JSON Schemas and the AsyncAPI document, from the message types.
    #[command(subcommand)]
    Contract(ContractCommand),
}

/// How an operator command prints what it found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Text for a person: a table, or one line per item.
    #[default]
    Table,
    /// One JSON document on stdout (docs/CONTRACT.md section 7).
    Json,
}

/// `-o table` or `-o json`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct OutputArgs {
    /// `table` for a person, `json` for a program: one JSON document on
    /// stdout, camelCase keys, times in RFC 3339 UTC.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl OutputArgs {
    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// The one time format of the commands' output: RFC 3339, UTC, in
/// milliseconds (`2026-12-04T13:23:23.764Z`).
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A table for a person: a header, no borders, columns two spaces apart,
/// the first flush left, no trailing blanks.
pub(crate) fn table<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header);
    for row in rows {
        t.add_row(row);
    }
    if let Some(first) = t.column_mut(0) {
        first.set_padding((0, 1));
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints one JSON document on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A point in time given as RFC 3339 or as an age before now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    At(chrono::DateTime<chrono::Utc>),
    Ago(std::time::Duration),
}

impl Moment {
    /// The time it names, ages counted back from `now`.
    pub fn resolve(self, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        match self {
            Moment::At(t) => t,
            Moment::Ago(age) => now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// `2026-12-04T10:00:00Z`, or a whole number with `s`, `m`, `h` or `d`.
pub fn parse_moment(text: &str) -> Result<Moment, String> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Moment::At(t.with_timezone(&chrono::Utc)));
    }
    parse_age(text)
        .map(Moment::Ago)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor an age like 90s, 30m, 6h or 7d"))
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The newest runs first.
    List {
        /// Only runs in this status.
        #[arg(long, value_parser = ["queued", "running", "ready", "failed", "canceled"])]
        status: Option<String>,
        /// Only runs of this tenant.
        #[arg(long)]
        tenant: Option<Uuid>,
        /// Only runs created at or after this time: RFC 3339
        /// (`2026-12-04T10:00:00Z`) or an age (`90s`, `30m`, `6h`, `7d`).
        #[arg(long, value_parser = parse_moment)]
        since: Option<Moment>,
        /// Only runs created before this time: RFC 3339 or an age (`1h`:
        /// runs older than an hour).
        #[arg(long, value_parser = parse_moment)]
        older_than: Option<Moment>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Runs by status, and the age of the oldest run still running.
    Stats {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run a failed or canceled run again: a new run, under a new runId
    /// (printed), with the same request, whose row names the old one in
    /// `retry_of`. Refused for a run that wrote into a target in Append
    /// mode once its Perform may have been sent, unless --force.
    Retry {
        /// The run to retry.
        run_id: Uuid,
        /// Retry even where the first attempt may have added rows already.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// A run's row, its poll state, the last MCE status and its status events.
    Show {
        /// The run's id.
        run_id: Uuid,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Cancel a live run as the API does (the row becomes `canceled`); the
    /// service then deletes its MCE assets and publishes the event.
    Cancel {
        /// The run's id.
        run_id: Uuid,
        #[command(flatten)]
        db: DbArgs,
    },
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The newest copies first: sequence, time, original subject, reason.
    List {
        /// At most this many copies.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// One copy: its headers and its body, SQL redacted.
    Show {
        /// The copy's sequence number in SHELL_QUERY_DLQ.
        seq: u64,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Publish a copy's original body to its original subject again (after
    /// the fix that lets the service handle it), then remove the copy: a
    /// copy is replayed once. With --all, every copy that matches the
    /// filters, oldest first.
    Replay {
        /// The copy's sequence number in SHELL_QUERY_DLQ.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every copy that matches --older-than, --reason and --subject.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: DlqFilter,
        /// List what would be replayed (and what could not be); publish
        /// and remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Remove one copy without replaying it.
    Rm {
        /// The copy's sequence number in SHELL_QUERY_DLQ.
        seq: u64,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Remove every copy that matches the filters (with none: every copy
    /// there is now; later ones stay).
    Purge {
        #[command(flatten)]
        filter: DlqFilter,
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// Which DLQ copies a command takes; all must hold.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Filters")]
pub struct DlqFilter {
    /// Only copies stored longer ago than this: a whole number with `s`,
    /// `m`, `h` or `d` (`90s`, `30m`, `6h`, `7d`).
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Only copies whose reason (the Shell-Query-Error header) contains
    /// this text, in any case.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only copies whose original subject matches this NATS subject
    /// (`*` one token, `>` the rest): `shell_query.execute.*`.
    #[arg(long)]
    pub subject: Option<String>,
}

impl DlqFilter {
    /// Whether any filter is set.
    pub fn is_empty(&self) -> bool {
        self.older_than.is_none() && self.reason.is_none() && self.subject.is_none()
    }
}

/// `90s`, `30m`, `6h`, `7d`: a whole number and its unit.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let unit = |c: char| match c {
        's' => Some(1u64),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    // By characters: a multi-byte last character is refused, not sliced.
    text.char_indices()
        .last()
        .and_then(|(i, c)| text[..i].parse::<u64>().ok()?.checked_mul(unit(c)?))
        .filter(|s| *s <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not an age like 90s, 30m, 6h or 7d"))
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
    /// List the migrations that would be applied; apply nothing (the
    /// database must exist).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Every migration, applied (and when) or pending; changes nothing (the
    /// database must exist). Exit 0 either way.
    Status {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Also get an MCE token for this tenant (with --mid).
    #[arg(long, requires = "mid", help_heading = "Doctor")]
    pub tenant: Option<Uuid>,
    /// The business unit whose credentials are used for the token.
    #[arg(long, requires = "tenant", value_parser = parse_mid, help_heading = "Doctor")]
    pub mid: Option<String>,
    /// The user whose credentials are used (default: the business unit's first).
    #[arg(long, requires = "tenant", help_heading = "Doctor")]
    pub user: Option<Uuid>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every setting of `run` with its value and where it came from
    /// (flag, env or default); secrets redacted.
    Print(Box<ConfigPrintArgs>),
}

/// `config print`'s arguments: every setting of `run`, and `-o`.
#[derive(Debug, Clone, Args)]
pub struct ConfigPrintArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ContractCommand {
    /// Write schemas/*.json and asyncapi.yaml under DIR.
    Write {
        /// The folder (the repository's docs).
        #[arg(default_value = "docs")]
        dir: std::path::PathBuf,
    },
    /// Fail (exit 1) when the files under DIR differ from what the types generate.
    Check {
        /// The folder (the repository's docs).
        #[arg(default_value = "docs")]
        dir: std::path::PathBuf,
    },
}

#[cfg(feature = "demo")]
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Unset: an embedded SQLite database in a temporary folder.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Unset: a private nats-server on a free port.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// The nats-server to start when NATS_URL is unset.
    #[arg(long, env = "NATS_SERVER_BIN", default_value = "nats-server")]
    pub nats_server_bin: String,
    /// With NATS_URL: the user (and NATS_PASSWORD) to connect as.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// The password of NATS_USER.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<SecretString>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create or update a tenant.
    Upsert {
        /// The tenant's id (a UUID the API uses).
        #[arg(long, env = "TENANT_ID")]
        tenant_id: Uuid,
        /// The tenant's MCE enterprise id.
        #[arg(long, env = "TENANT_EID")]
        eid: String,
        /// The tenant's subdomain: `[a-z0-9-]+`.
        #[arg(long, env = "TENANT_TSSD", value_parser = parse_tssd)]
        tssd: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Store a user's refresh token for a business unit, encrypted.
    Upsert {
        /// The tenant the credentials belong to.
        #[arg(long, env = "TENANT_ID")]
        tenant_id: Uuid,
        /// The user whose refresh token this is.
        #[arg(long, env = "USER_ID")]
        user_id: Uuid,
        /// The business unit (MID) the token is for.
        #[arg(long, env = "MID", value_parser = parse_mid)]
        mid: String,
        /// Read the refresh token from standard input (never from argv).
        #[arg(long, required = true)]
        refresh_token_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DbArgs {
    /// PostgreSQL URL (`postgres://user:password@host:5432/db?sslmode=verify-full`). `run`, `migrate`, `tenant upsert`
    /// and `credentials upsert` create the database when it is missing; `runs` and `doctor` need it to exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/shell_query",
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// Connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Encryption")]
pub struct KeyArgs {
    /// 64 hex characters (AES-256): encrypts SQL, tokens and errors at rest.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<SecretString>,
    /// Comma-separated; the first encrypts. Takes precedence over ENCRYPTION_KEY.
    #[arg(long, env = "ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<SecretString>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsArgs {
    /// NATS servers, comma-separated (`nats://` or `tls://`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<std::path::PathBuf>,
    /// The NATS user (with NATS_PASSWORD).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// The password of NATS_USER.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<SecretString>,
    /// A NATS token, instead of a user.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<SecretString>,
    /// The first token of every subject (`<prefix>.execute.<runId>`...).
    #[arg(long, env = "SUBJECT_PREFIX", default_value = "shell_query", value_parser = parse_prefix)]
    pub subject_prefix: String,
    /// The subject prefix of this client's reply inboxes: nats.conf lets
    /// each user receive replies only under `_INBOX.<user>`.
    #[arg(long, env = "NATS_INBOX_PREFIX", default_value = "_INBOX.shell_query_service", value_parser = parse_prefix)]
    pub nats_inbox_prefix: String,
    /// PEM file of the certificate authorities that sign the servers'
    /// certificates; setting it (or a `tls://` URL) requires TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that verify clients (with NATS_TLS_KEY).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of NATS_TLS_CERT.
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

/// Replicas and sizes of the JetStream streams, applied when a stream is
/// created and raised (never lowered) on start.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Streams")]
pub struct StreamArgs {
    /// Replicas of every stream and of the lease bucket: 1, or 3 (or 5) on a cluster.
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = parse_replicas)]
    pub stream_replicas: usize,
    /// Size limit of SHELL_QUERY_JOBS; when full, new work is refused to its publisher.
    #[arg(long, env = "JOBS_STREAM_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub jobs_stream_max_bytes: i64,
    /// Size limit of SHELL_QUERY_STATUS; when full, the oldest events go.
    #[arg(long, env = "STATUS_STREAM_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub status_stream_max_bytes: i64,
    /// The most consumers SHELL_QUERY_STATUS may hold (the API's and
    /// operators'); past it, creating one is refused.
    #[arg(long, env = "STATUS_STREAM_MAX_CONSUMERS", default_value_t = 128, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub status_stream_max_consumers: i32,
    /// Size limit of SHELL_QUERY_DLQ; when full, the oldest copies go.
    #[arg(long, env = "DLQ_MAX_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub dlq_max_bytes: i64,
    /// How long a DLQ copy is kept.
    #[arg(long, env = "DLQ_MAX_AGE_MS", default_value_t = 14 * 24 * 3_600_000, value_parser = millis(60_000))]
    pub dlq_max_age_ms: u64,
    /// Size limit of SHELL_QUERY_ADVISORIES.
    #[arg(long, env = "ADVISORIES_STREAM_MAX_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub advisories_stream_max_bytes: i64,
}

impl NatsArgs {
    /// The servers of NATS_URL (comma-separated: every server of a cluster,
    /// or some of them; the others are learnt from the cluster), once the
    /// TLS files given exist.
    pub(crate) fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, ConfigError> {
        let bad = |reason: String| ConfigError {
            setting: "NATS_URL",
            reason,
        };
        let servers = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| bad(format!("{} is not a server address: {e}", redacted_urls(s))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(bad("no server given".into()));
        }
        for (setting, path) in [
            ("NATS_TLS_CA", &self.nats_tls_ca),
            ("NATS_TLS_CERT", &self.nats_tls_cert),
            ("NATS_TLS_KEY", &self.nats_tls_key),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(ConfigError {
                    setting,
                    reason: format!("{} is not a file", path.display()),
                });
            }
        }
        Ok(servers)
    }
}

impl StreamArgs {
    pub fn limits(&self) -> crate::adapters::nats::StreamLimits {
        crate::adapters::nats::StreamLimits {
            replicas: self.stream_replicas,
            jobs_max_bytes: self.jobs_stream_max_bytes,
            status_max_bytes: self.status_stream_max_bytes,
            status_max_consumers: self.status_stream_max_consumers,
            dlq_max_bytes: self.dlq_max_bytes,
            dlq_max_age: Duration::from_millis(self.dlq_max_age_ms),
            advisories_max_bytes: self.advisories_stream_max_bytes,
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "MCE")]
pub struct MceArgs {
    /// The installed package's client id.
    #[arg(long, env = "MCE_CLIENT_ID")]
    pub mce_client_id: Option<String>,
    /// The installed package's client secret.
    #[arg(long, env = "MCE_CLIENT_SECRET", hide_env_values = true)]
    pub mce_client_secret: Option<SecretString>,
    /// Auth base URL; `{tssd}` becomes the tenant's subdomain.
    #[arg(long, env = "MCE_AUTH_BASE_URL", default_value = "https://{tssd}.auth.marketingcloudapis.com", value_parser = parse_base_url)]
    pub mce_auth_base_url: String,
    /// SOAP base URL; `{tssd}` becomes the tenant's subdomain.
    #[arg(long, env = "MCE_SOAP_BASE_URL", default_value = "https://{tssd}.soap.marketingcloudapis.com", value_parser = parse_base_url)]
    pub mce_soap_base_url: String,
    /// REST base URL; `{tssd}` becomes the tenant's subdomain.
    #[arg(long, env = "MCE_REST_BASE_URL", default_value = "https://{tssd}.rest.marketingcloudapis.com", value_parser = parse_base_url)]
    pub mce_rest_base_url: String,
    /// Accept `http://` MCE base URLs (the simulator, the demo, tests);
    /// otherwise they must be `https://`.
    #[arg(long, env = "MCE_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub mce_allow_http: bool,
    /// Deadline of a SOAP or REST call other than the token and rowset calls.
    #[arg(long, env = "MCE_TIMEOUT_MS", default_value_t = 30_000, value_parser = millis(100))]
    pub mce_timeout_ms: u64,
    /// Deadline of a token grant.
    #[arg(long, env = "MCE_TOKEN_TIMEOUT_MS", default_value_t = 15_000, value_parser = millis(100))]
    pub mce_token_timeout_ms: u64,
    /// Deadline of a rowset (results page) call.
    #[arg(long, env = "MCE_ROWSET_TIMEOUT_MS", default_value_t = 120_000, value_parser = millis(100))]
    pub mce_rowset_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Polling")]
pub struct PollArgs {
    /// The first delay between polls (exponential schedule).
    #[arg(long, env = "POLL_INITIAL_DELAY_MS", default_value_t = 2000, value_parser = millis(1))]
    pub poll_initial_delay_ms: u64,
    /// The longest delay between polls (exponential schedule).
    #[arg(long, env = "POLL_MAX_DELAY_MS", default_value_t = 30000, value_parser = millis(1))]
    pub poll_max_delay_ms: u64,
    /// Each delay is the last times this (exponential schedule).
    #[arg(long, env = "POLL_BACKOFF_MULTIPLIER", default_value_t = 2.0, value_parser = parse_multiplier)]
    pub poll_backoff_multiplier: f64,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %).
    #[arg(long, env = "POLL_JITTER_RANGE", default_value_t = 0.4, value_parser = parse_jitter)]
    pub poll_jitter_range: f64,
    /// Polls of one run before it fails.
    #[arg(long, env = "POLL_MAX_COUNT", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub poll_max_count: u32,
    /// How long a run may poll before it fails (a timeout).
    #[arg(long, env = "POLL_MAX_DURATION_MS", default_value_t = 1_740_000, value_parser = millis(1))]
    pub poll_max_duration_ms: u64,
    /// Runtime after which a CompletedDate in the status triggers the isRunning check.
    #[arg(long, env = "POLL_COMPLETED_DATE_TRIGGER_MIN_RUNTIME_MS", default_value_t = 5000, value_parser = millis(0))]
    pub poll_completed_date_trigger_min_runtime_ms: u64,
    /// Runtime after which a pending status triggers the isRunning check.
    #[arg(long, env = "POLL_STUCK_THRESHOLD_MS", default_value_t = 180_000, value_parser = millis(0))]
    pub poll_stuck_threshold_ms: u64,
    /// Not-running answers needed before the run counts as complete.
    #[arg(long, env = "POLL_NOT_RUNNING_CONFIRMATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub poll_not_running_confirmations: u32,
    /// Least time between counted not-running answers.
    #[arg(long, env = "POLL_NOT_RUNNING_MIN_GAP_MS", default_value_t = 15000, value_parser = millis(0))]
    pub poll_not_running_min_gap_ms: u64,
    /// Checks that the results are readable before the run fails.
    #[arg(long, env = "POLL_ROWSET_READY_MAX_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub poll_rowset_ready_max_attempts: u32,
    /// First delay between those checks.
    #[arg(long, env = "POLL_ROWSET_READY_INITIAL_DELAY_MS", default_value_t = 1500, value_parser = millis(1))]
    pub poll_rowset_ready_initial_delay_ms: u64,
    /// Longest delay between those checks.
    #[arg(long, env = "POLL_ROWSET_READY_MAX_DELAY_MS", default_value_t = 8000, value_parser = millis(1))]
    pub poll_rowset_ready_max_delay_ms: u64,
    /// Runtime after which a temporary DE is probed for rows.
    #[arg(long, env = "POLL_ROW_PROBE_MIN_RUNTIME_MS", default_value_t = 5000, value_parser = millis(0))]
    pub poll_row_probe_min_runtime_ms: u64,
    /// Least time between row probes of one run.
    #[arg(long, env = "POLL_ROW_PROBE_MIN_INTERVAL_MS", default_value_t = 15000, value_parser = millis(0))]
    pub poll_row_probe_min_interval_ms: u64,
    /// When to look again at a pending run: `exponential` (the POLL_*_DELAY
    /// settings), `reference` (30 s ± 20 %) or `adaptive` (from the query's
    /// recent durations; see docs/BENCHMARKS.md).
    #[arg(long, env = "POLL_SCHEDULE", default_value = "adaptive", value_parser = parse_schedule)]
    pub poll_schedule: shell_query_core::poll::schedule::Schedule,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Consumers, jobs and HTTP")]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub mce: MceArgs,
    #[command(flatten)]
    pub poll: PollArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    /// How often each consumer is checked (and re-created if deleted);
    /// /readyz fails once one has gone unconfirmed for three checks (at
    /// most 20 s, so that is within a minute).
    #[arg(long, env = "CONSUMER_CHECK_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=20_000))]
    pub consumer_check_interval_ms: u64,
    /// How long a start waits for NATS (a server or cluster still coming
    /// up): connecting and declaring the streams and consumers are tried
    /// again until then, /healthz answering and /readyz not; then the
    /// worker exits 1 naming the last error.
    #[arg(long, env = "STARTUP_TIMEOUT_MS", default_value_t = 300_000, value_parser = millis(1000))]
    pub startup_timeout_ms: u64,
    /// Execute messages handled at once.
    #[arg(long, env = "EXECUTE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub execute_concurrency: u32,
    /// Poll deliveries in flight at once: the global ceiling, sized for
    /// memory (a few KB each). Most of a tick waits on MCE; how many of one
    /// tenant's ticks call MCE at once adapts (TENANT_CONCURRENCY_*), and a
    /// tenant may hold at most half of this ceiling waiting.
    #[arg(long, env = "POLL_CONCURRENCY", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub poll_concurrency: u32,
    /// Poll ticks of one tenant at MCE at first; the limit then adapts:
    /// it grows while MCE keeps up and halves on a 429 or a 5xx.
    #[arg(long, env = "TENANT_CONCURRENCY_INITIAL", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub tenant_concurrency_initial: u32,
    /// How long the first status check of a tenant, user and business unit
    /// waits for others falling due, to ask them all in one call (a TaskID
    /// IN filter); 0 asks each task alone.
    #[arg(long, env = "STATUS_BATCH_WINDOW_MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub status_batch_window_ms: u64,
    /// The most tasks one status call asks about.
    #[arg(long, env = "STATUS_BATCH_MAX", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub status_batch_max: u32,
    /// The hard cap on one tenant's poll ticks at MCE, whatever the limit learns.
    #[arg(long, env = "TENANT_CONCURRENCY_MAX", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub tenant_concurrency_max: u32,
    /// Acknowledgements leave together at each multiple of this window on
    /// the wall clock, so that nats-server, between bursts, has the quiet it
    /// needs to find the waiting messages that are due; 0 sends each at once.
    #[arg(long, env = "SETTLE_WINDOW_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub settle_window_ms: u64,
    /// Runs waiting between polls per replica set (the poll consumer's max_ack_pending).
    #[arg(long, env = "POLL_MAX_ACK_PENDING", default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub poll_max_ack_pending: i64,
    /// How long an execute delivery may go silent before NATS redelivers it
    /// (the handler sends "in progress" every third of it).
    #[arg(long, env = "EXECUTE_ACK_WAIT_MS", default_value_t = 60_000, value_parser = millis(3000))]
    pub execute_ack_wait_ms: u64,
    /// How long a poll delivery may go silent before NATS redelivers it
    /// (the handler sends "in progress" every third of it, so a long MCE
    /// call is never redelivered): after a crash, a run whose tick was
    /// under way is checked again this long after.
    #[arg(long, env = "POLL_ACK_WAIT_MS", default_value_t = 9_000, value_parser = millis(3000))]
    pub poll_ack_wait_ms: u64,
    /// Between reconciler passes (one replica at a time).
    #[arg(long, env = "RECONCILER_INTERVAL_MS", default_value_t = 120_000, value_parser = millis(1000))]
    pub reconciler_interval_ms: u64,
    /// How old a run must be before the reconciler acts on it.
    #[arg(long, env = "RECONCILER_GRACE_MS", default_value_t = 60_000, value_parser = millis(0))]
    pub reconciler_grace_ms: u64,
    /// Between sweeper passes (one replica at a time).
    #[arg(long, env = "SWEEPER_INTERVAL_MS", default_value_t = 3_600_000, value_parser = millis(1000))]
    pub sweeper_interval_ms: u64,
    /// How old a leaked QueryDefinition must be before it is deleted.
    #[arg(long, env = "SWEEPER_MIN_AGE_MS", default_value_t = 86_400_000, value_parser = millis(0))]
    pub sweeper_min_age_ms: u64,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// `json` or `pretty`; unset: JSON unless stdout is a terminal.
    #[arg(long, env = "LOG_FORMAT", value_parser = ["json", "pretty"])]
    pub log_format: Option<String>,
}

/// The values the command line gives when nothing is set, without reading
/// the environment: each setting's default is written once, in its
/// `#[arg]`, and `Default` (the demo's settings, tests) reads it from there.
fn command_line_defaults<T: Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default or may be missing");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

macro_rules! default_from_command_line {
    ($($args:ty),*) => {$(
        impl Default for $args {
            fn default() -> Self {
                command_line_defaults()
            }
        }
    )*};
}

default_from_command_line!(DbArgs, KeyArgs, NatsArgs, MceArgs, PollArgs, StreamArgs, RunArgs);

/// A setting that is missing or wrong; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl KeyArgs {
    pub(crate) fn cipher(&self) -> Result<Cipher, ConfigError> {
        let (setting, value) = match (&self.encryption_keys, &self.encryption_key) {
            (Some(keys), _) => ("ENCRYPTION_KEYS", keys),
            (None, Some(key)) => ("ENCRYPTION_KEY", key),
            (None, None) => {
                return Err(ConfigError {
                    setting: "ENCRYPTION_KEY",
                    reason: "is required".into(),
                });
            }
        };
        Cipher::parse(value.expose_secret()).map_err(|e| ConfigError {
            setting,
            reason: e.to_string(),
        })
    }
}

impl PollArgs {
    pub fn to_config(&self) -> Result<PollConfig, ConfigError> {
        if self.poll_max_delay_ms < self.poll_initial_delay_ms {
            return Err(ConfigError {
                setting: "POLL_MAX_DELAY_MS",
                reason: "must not be below POLL_INITIAL_DELAY_MS".into(),
            });
        }
        if self.poll_rowset_ready_max_delay_ms < self.poll_rowset_ready_initial_delay_ms {
            return Err(ConfigError {
                setting: "POLL_ROWSET_READY_MAX_DELAY_MS",
                reason: "must not be below POLL_ROWSET_READY_INITIAL_DELAY_MS".into(),
            });
        }
        let ms = Duration::from_millis;
        Ok(PollConfig {
            schedule: self.poll_schedule,
            backoff: Backoff {
                initial: ms(self.poll_initial_delay_ms),
                max: ms(self.poll_max_delay_ms),
                multiplier: self.poll_backoff_multiplier,
                jitter_range: self.poll_jitter_range,
            },
            max_count: self.poll_max_count,
            max_duration: ms(self.poll_max_duration_ms),
            completed_date_trigger_min_runtime: ms(self.poll_completed_date_trigger_min_runtime_ms),
            stuck_threshold: ms(self.poll_stuck_threshold_ms),
            not_running_confirmations: self.poll_not_running_confirmations,
            not_running_min_gap: ms(self.poll_not_running_min_gap_ms),
            rowset_ready_max_attempts: self.poll_rowset_ready_max_attempts,
            rowset_backoff: Backoff {
                initial: ms(self.poll_rowset_ready_initial_delay_ms),
                max: ms(self.poll_rowset_ready_max_delay_ms),
                multiplier: 2.0,
                jitter_range: self.poll_jitter_range,
            },
            row_probe_min_runtime: ms(self.poll_row_probe_min_runtime_ms),
            row_probe_min_interval: ms(self.poll_row_probe_min_interval_ms),
        })
    }
}

impl MceArgs {
    /// The client id and secret, which `run` requires.
    pub(crate) fn client(&self) -> Result<(String, SecretString), ConfigError> {
        let id = self.mce_client_id.clone().filter(|s| !s.trim().is_empty());
        let secret = self
            .mce_client_secret
            .clone()
            .filter(|s| !s.expose_secret().trim().is_empty());
        match (id, secret) {
            (Some(id), Some(secret)) => Ok((id, secret)),
            (None, _) => Err(ConfigError {
                setting: "MCE_CLIENT_ID",
                reason: "is required".into(),
            }),
            (_, None) => Err(ConfigError {
                setting: "MCE_CLIENT_SECRET",
                reason: "is required".into(),
            }),
        }
    }

    /// The base URLs, each `https://` unless MCE_ALLOW_HTTP: a token and
    /// refresh tokens never travel in clear text by accident.
    pub(crate) fn checked_base_urls(&self) -> Result<crate::adapters::mce::BaseUrls, ConfigError> {
        for (setting, url) in [
            ("MCE_AUTH_BASE_URL", &self.mce_auth_base_url),
            ("MCE_SOAP_BASE_URL", &self.mce_soap_base_url),
            ("MCE_REST_BASE_URL", &self.mce_rest_base_url),
        ] {
            if !self.mce_allow_http && !url.starts_with("https://") {
                return Err(ConfigError {
                    setting,
                    reason: "must be an https:// URL (MCE_ALLOW_HTTP=true allows http:// for a simulator)".into(),
                });
            }
        }
        Ok(crate::adapters::mce::BaseUrls {
            auth: self.mce_auth_base_url.clone(),
            soap: self.mce_soap_base_url.clone(),
            rest: self.mce_rest_base_url.clone(),
        })
    }

    pub(crate) fn timeouts(&self) -> crate::adapters::mce::Timeouts {
        crate::adapters::mce::Timeouts {
            token: Duration::from_millis(self.mce_token_timeout_ms),
            rowset: Duration::from_millis(self.mce_rowset_timeout_ms),
            call: Duration::from_millis(self.mce_timeout_ms),
        }
    }
}

fn millis(min: u64) -> impl clap::builder::TypedValueParser<Value = u64> {
    clap::value_parser!(u64).range(min..=365 * 24 * 3_600_000)
}

fn parse_replicas(s: &str) -> Result<usize, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err("must be 1, 3 or 5".into()),
    }
}

/// A size in bytes: a number, optionally with KiB, MiB or GiB (or KB, MB,
/// GB, the same powers of 1024), at least 1 KiB and at most 1 TiB.
fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| "must be a number of bytes, optionally with KiB, MiB or GiB".to_string())?;
    let scale: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err("unit must be KiB, MiB or GiB".into()),
    };
    match n.checked_mul(scale) {
        Some(v) if (1 << 10..=1 << 40).contains(&v) => Ok(v),
        _ => Err("must be between 1KiB and 1024GiB".into()),
    }
}

fn parse_schedule(s: &str) -> Result<shell_query_core::poll::schedule::Schedule, String> {
    shell_query_core::poll::schedule::Schedule::parse(s)
        .ok_or_else(|| "must be exponential, reference or adaptive".into())
}

fn parse_multiplier(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=10.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 1 and 10".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_jitter(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0 and 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A tenant subdomain: trimmed, lower-cased, `[a-z0-9-]+`.
pub use shell_query_core::naming::parse_tssd;

fn parse_mid(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        Ok(t.to_string())
    } else {
        Err("must be a numeric MID".into())
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.split('.')
            .all(|tok| !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("must be dot-separated tokens of [A-Za-z0-9_-]".into())
    }
}

/// A base URL template: http(s), optionally with `{tssd}` in the host.
fn parse_base_url(s: &str) -> Result<String, String> {
    let t = s.trim().trim_end_matches('/');
    let probe = t.replace("{tssd}", "tenant");
    match reqwest::Url::parse(&probe) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(t.to_string()),
        Ok(_) => Err("must be an http(s) URL with a host".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses the command line; on an error prints one line naming the bad
/// setting and exits 2 (help and version exit 0).
pub use crate::adapters::redacted_urls;

pub fn parse_or_exit<I, T>(args: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            std::process::exit(
                if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                },
            );
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            std::process::exit(2);
        }
    }
}

/// The first line of a clap error, which names the argument and its variable.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("error: bad arguments")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command, with the path of commands to it.
    fn every_argument() -> Vec<(String, clap::Arg)> {
        use clap::CommandFactory as _;
        fn walk(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Arg)>) {
            for arg in command.get_arguments() {
                if !matches!(arg.get_id().as_str(), "help" | "version") {
                    out.push((path.clone(), arg.clone()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut out = Vec::new();
        walk(&Cli::command(), String::new(), &mut out);
        out
    }

    #[test]
    fn every_flag_has_a_description_and_settings_are_grouped_under_headings() {
        let all = every_argument();
        assert!(all.len() > 100, "{}", all.len());
        for (path, arg) in &all {
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "`{path}` --{}: no description",
                arg.get_id()
            );
            // The service's settings (everything with an environment
            // variable, in `run`, `doctor` and `config print`) sit under a
            // heading of their group.
            if arg.get_env().is_some() && [" run", " doctor", " config print"].contains(&path.as_str()) {
                assert!(
                    arg.get_help_heading().is_some(),
                    "`{path}` --{}: no heading",
                    arg.get_id()
                );
            }
        }
        // `credentials upsert` reads its flags from the environment like the rest.
        for (path, arg) in all.iter().filter(|(p, _)| p == " credentials upsert") {
            if arg.get_action().takes_values() {
                assert!(
                    arg.get_env().is_some(),
                    "`{path}` --{}: no environment variable",
                    arg.get_id()
                );
            }
        }
    }

    fn run_args(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec!["shell-query-worker", "run"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    fn error_line(extra: &[&str]) -> String {
        one_line(&run_args(extra).unwrap_err().render().to_string())
    }

    #[test]
    fn moments_are_times_or_ages() {
        let now = chrono::Utc::now();
        assert_eq!(
            parse_moment("90s").map(|m| m.resolve(now)),
            Ok(now - chrono::Duration::seconds(90))
        );
        assert_eq!(
            parse_moment("7d"),
            Ok(Moment::Ago(std::time::Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            parse_moment("2026-12-04T10:00:00Z").map(|m| m.resolve(now).to_rfc3339()),
            Ok("2026-12-04T10:00:00+00:00".to_string())
        );
        for bad in ["", "yesterday", "5w", "-3h", "99999999999999999d", "h", "5é"] {
            assert!(parse_moment(bad).is_err(), "{bad}");
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_units_and_stay_in_range() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("64 MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12").is_err(), "below 1 KiB");
        assert!(parse_bytes("2000GiB").is_err(), "above 1 TiB");
        assert!(parse_bytes("1TB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        assert!(error_line(&["--stream-replicas", "2"]).contains("STREAM_REPLICAS"));
    }

    #[test]
    fn nats_servers_and_tls_files_are_checked_before_start() {
        let mut nats = NatsArgs {
            nats_url: "nats://a:4222, tls://b:4222,".into(),
            ..NatsArgs::default()
        };
        assert_eq!(nats.servers().unwrap().len(), 2);
        nats.nats_url = " , ".into();
        assert_eq!(nats.servers().unwrap_err().setting, "NATS_URL");
        nats.nats_url = "nats://a:4222".into();
        nats.nats_tls_ca = Some("/nonexistent/ca.pem".into());
        assert_eq!(nats.servers().unwrap_err().setting, "NATS_TLS_CA");
        assert!(error_line(&["--consumer-check-interval-ms", "60000"]).contains("CONSUMER_CHECK_INTERVAL_MS"));
    }

    #[test]
    fn mce_urls_must_be_https_unless_allowed() {
        let mut mce = MceArgs::default();
        assert!(mce.checked_base_urls().is_ok(), "the defaults are https");
        mce.mce_soap_base_url = "http://127.0.0.1:9090".into();
        let refused = mce.checked_base_urls().unwrap_err();
        assert_eq!(refused.setting, "MCE_SOAP_BASE_URL");
        mce.mce_allow_http = true;
        assert_eq!(mce.checked_base_urls().unwrap().soap, "http://127.0.0.1:9090");
    }

    #[test]
    fn defaults_match_the_contract() {
        let Command::Run(run) = run_args(&[]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            format!("{run:?}"),
            format!("{:?}", RunArgs::default()),
            "`Default` builds what the command line's defaults say"
        );
        let poll = run.poll.to_config().unwrap();
        assert_eq!(poll.backoff.initial, Duration::from_secs(2));
        assert_eq!(poll.backoff.max, Duration::from_secs(30));
        assert_eq!(poll.max_count, 120);
        assert_eq!(poll.max_duration, Duration::from_secs(29 * 60));
        assert_eq!(poll.rowset_ready_max_attempts, 6);
        assert_eq!(run.poll_max_ack_pending, 1_000_000);
        assert_eq!(run.execute_concurrency, 16);
        assert_eq!(run.poll_concurrency, 2048);
        assert_eq!((run.tenant_concurrency_initial, run.tenant_concurrency_max), (8, 64));
        assert_eq!(run.nats.subject_prefix, "shell_query");
        assert_eq!(run.http_addr.port(), 8080);
    }

    #[test]
    fn a_bad_value_names_its_setting_in_one_line() {
        let line = error_line(&["--poll-max-count", "abc"]);
        assert!(line.contains("--poll-max-count"), "{line}");
        let line = error_line(&["--poll-jitter-range", "3"]);
        assert!(
            line.contains("--poll-jitter-range") && line.contains("between 0 and 1"),
            "{line}"
        );
        let line = error_line(&["--mce-soap-base-url", "ftp://x"]);
        assert!(line.contains("--mce-soap-base-url"), "{line}");
        let line = error_line(&["--subject-prefix", "a..b"]);
        assert!(line.contains("--subject-prefix"), "{line}");
        let line = error_line(&["--poll-concurrency", "0"]);
        assert!(line.contains("--poll-concurrency"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn missing_required_settings_are_named() {
        let Command::Run(run) = run_args(&[]).unwrap().command else {
            panic!()
        };
        assert_eq!(run.keys.cipher().unwrap_err().setting, "ENCRYPTION_KEY");
        assert_eq!(run.mce.client().unwrap_err().setting, "MCE_CLIENT_ID");
        let Command::Run(run) = run_args(&["--encryption-key", "12", "--mce-client-id", "x"])
            .unwrap()
            .command
        else {
            panic!()
        };
        let err = run.keys.cipher().unwrap_err();
        assert_eq!(err.setting, "ENCRYPTION_KEY");
        assert!(err.to_string().contains("64 hex"), "{err}");
        assert_eq!(run.mce.client().unwrap_err().setting, "MCE_CLIENT_SECRET");
    }

    #[test]
    fn secrets_never_print() {
        let secrets = [
            "postgres://u:db-pass-9@h/d",
            "nats-pass-9",
            "nats-token-9",
            "client-secret-9",
            &"ab".repeat(32),
        ];
        let cli = run_args(&[
            "--database-url",
            secrets[0],
            "--nats-user",
            "svc",
            "--nats-password",
            secrets[1],
            "--nats-token",
            secrets[2],
            "--mce-client-id",
            "id",
            "--mce-client-secret",
            secrets[3],
            "--encryption-key",
            secrets[4],
        ])
        .unwrap();
        let printed = format!("{cli:?} {:#?}", cli);
        for secret in secrets {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        let Command::Run(run) = cli.command else { panic!() };
        assert_eq!(run.mce.client().unwrap().1.expose_secret(), secrets[3]);
        assert_eq!(run.mce.timeouts(), crate::adapters::mce::Timeouts::default());
    }

    #[test]
    fn inconsistent_delays_are_rejected() {
        let Command::Run(run) = run_args(&["--poll-initial-delay-ms", "5000", "--poll-max-delay-ms", "1000"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(run.poll.to_config().unwrap_err().setting, "POLL_MAX_DELAY_MS");
    }

    #[test]
    fn tssd_is_normalised_and_checked() {
        assert_eq!(parse_tssd(" MC123-abc ").unwrap(), "mc123-abc");
        assert!(parse_tssd("evil.com/x").is_err());
        assert!(parse_tssd("").is_err());
    }
}
