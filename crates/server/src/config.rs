//! Configuration of the reference server.
//!
//! Every setting is a command-line flag and an environment variable, so the same binary
//! runs from a shell, a systemd unit or a container without a config file. Defaults are
//! chosen so that `sonzai-webhooks serve` with no arguments starts a working server on
//! an embedded SQLite database in `./data`.
//!
//! Durations use one humane syntax (`500ms`, `10s`, `2m`, `1h30m`, `7d`); see
//! the `duration` module. Each default is written once, in its flag's attribute;
//! [`Config::default`] reads them from there.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::delivery::guard::IpRange;
use crate::delivery::retry::{RetrySchedule, DEFAULT_RETRY_SCHEDULE};
use crate::duration;
use crate::store::{DisablePolicy, StoreResult, WebhookStore};

/// Default listen address: loopback only, so a first start never exposes an
/// unauthenticated-looking port to the network by accident.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default directory of the embedded database.
pub(crate) const DEFAULT_DATA_DIR: &str = "./data";
/// File name of the embedded SQLite database inside the data directory.
pub(crate) const SQLITE_FILE_NAME: &str = "sonzai-webhooks.db";
/// Default cap on request bodies: large enough for any reasonable event payload,
/// small enough that a misbehaving client cannot make the server buffer megabytes.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default budget of one page of attempts: a few dozen attempts with the largest
/// bodies, so one request (or a handful at once) cannot make the server hold hundreds
/// of megabytes.
pub(crate) const DEFAULT_MAX_ATTEMPTS_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Default cap on the webhooks of one project: far more event types than a project
/// subscribes to, while keeping its webhook list a bounded answer.
pub(crate) const DEFAULT_MAX_WEBHOOKS_PER_PROJECT: usize = 1_000;
/// Default cap on open HTTP connections: far more than any load balancer or client
/// pool needs, yet within the open-file limit of a typical service.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Where the store lives. Shared by `serve` and the admin subcommands so that both
/// open the same database with the same flags.
#[derive(Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// Database URL. `postgres://user:pass@host/db` runs on PostgreSQL (several servers
    /// may share one database); `sqlite://path/to/file.db` picks an explicit SQLite
    /// file. Unset: the embedded SQLite database in --data-dir.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory of the embedded SQLite database (created if missing). Ignored when
    /// --database-url is set.
    #[arg(
        long,
        env = "SONZAI_DATA_DIR",
        value_name = "DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,
}

impl Default for DatabaseArgs {
    fn default() -> Self {
        flag_defaults()
    }
}

/// The values the flags of `T` take when none is given and the environment sets
/// nothing: the defaults are written once, in the flags' attributes, and read from
/// there.
fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every flag has a default or is optional");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

impl DatabaseArgs {
    /// The URL to open: `--database-url` when given, otherwise the embedded SQLite
    /// file `<data-dir>/sonzai-webhooks.db`.
    pub(crate) fn url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => sqlite_url(&self.sqlite_path()),
        }
    }

    /// True when the server runs on the embedded SQLite database in the data
    /// directory (not on an explicit URL). First-start conveniences such as printing
    /// development credentials are meant for this case only.
    pub(crate) fn is_embedded(&self) -> bool {
        self.database_url.is_none()
    }

    /// The SQLite file used when no URL is given.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join(SQLITE_FILE_NAME)
    }

    /// The URL with any password replaced by `***`, for logs and error messages.
    pub(crate) fn url_redacted(&self) -> String {
        redact_url_password(&self.url())
    }

    /// Creates the data directory (0700: the database holds secrets) when the
    /// embedded database is used. SQLite creates a missing file but not a missing
    /// directory, and a newcomer's first `sonzai-webhooks serve` should just work.
    pub(crate) fn prepare(&self) -> anyhow::Result<()> {
        if self.is_embedded() {
            crate::store::sqlite::create_private_dir(&self.data_dir).with_context(|| {
                format!("cannot create data directory {}", self.data_dir.display())
            })?;
        }
        Ok(())
    }

    /// Prepares the data directory and opens the store (running its migrations), with
    /// the API key cache in front of it ([`crate::auth::CachedKeys`]): a key revoked
    /// through the store this returns is refused at once.
    pub async fn connect(&self) -> anyhow::Result<std::sync::Arc<dyn WebhookStore>> {
        self.prepare()?;
        let opened: StoreResult<_> = crate::store::connect(&self.url()).await;
        let store =
            opened.with_context(|| format!("cannot open database {}", self.url_redacted()))?;
        Ok(std::sync::Arc::new(crate::auth::CachedKeys::new(store)))
    }
}

impl fmt::Debug for DatabaseArgs {
    /// Redacts the password of the database URL: configurations get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url_password),
            )
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Format of the log lines written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags. They are global: every subcommand accepts them, before or after the
/// subcommand name.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long,
        env = "SONZAI_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,

    /// Log filter in `RUST_LOG` syntax, e.g. `info` or
    /// `info,sonzai_webhooks_server=debug`.
    #[arg(
        long,
        env = "SONZAI_LOG",
        value_name = "FILTER",
        default_value = "info",
        global = true
    )]
    pub log: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        flag_defaults()
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Address the HTTP API listens on. Use `0.0.0.0:8080` to accept connections from
    /// other machines.
    #[arg(
        long,
        env = "SONZAI_LISTEN",
        value_name = "ADDR",
        default_value = DEFAULT_LISTEN,
        help_heading = "HTTP"
    )]
    pub listen: SocketAddr,

    /// The URL people reach this server at, such as `https://hooks.example.com`: portal
    /// links point there, and its cookies are `Secure` when it is https. Without it,
    /// links point at the host each request was sent to.
    #[arg(
        long,
        env = "SONZAI_PUBLIC_URL",
        value_name = "URL",
        value_parser = parse_public_url,
        help_heading = "HTTP"
    )]
    pub public_url: Option<String>,

    /// Largest request body accepted, in bytes; larger requests get 413.
    #[arg(
        long,
        env = "SONZAI_MAX_BODY_BYTES",
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_BODY_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        help_heading = "HTTP"
    )]
    pub max_body_bytes: usize,

    /// How long a published event's idempotency key is remembered: publishing again
    /// with the same key within this window answers the first event instead of
    /// creating a new one.
    #[arg(
        long,
        env = "SONZAI_IDEMPOTENCY_WINDOW",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = duration::parse_flag,
        help_heading = "HTTP"
    )]
    pub idempotency_window: Duration,

    /// How long to wait on shutdown (SIGINT/SIGTERM) for in-flight requests and
    /// deliveries; deliveries still running after it are handed back to the queue.
    #[arg(
        long,
        env = "SONZAI_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = duration::parse_flag,
        help_heading = "HTTP"
    )]
    pub shutdown_grace: Duration,

    /// Most bytes of JSON one page of delivery attempts may take. A page that would
    /// pass it ends early with `has_more` and a `next_cursor` to continue from; a page
    /// always holds at least one attempt.
    #[arg(
        long,
        env = "SONZAI_MAX_ATTEMPTS_PAGE_BYTES",
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_ATTEMPTS_PAGE_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        help_heading = "Limits"
    )]
    pub max_attempts_page_bytes: usize,

    /// Most webhooks one project may have. Creating one more answers 409; updating an
    /// existing one is always allowed.
    #[arg(
        long,
        env = "SONZAI_MAX_WEBHOOKS_PER_PROJECT",
        value_name = "N",
        default_value_t = DEFAULT_MAX_WEBHOOKS_PER_PROJECT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        help_heading = "Limits"
    )]
    pub max_webhooks_per_project: usize,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Largest number of deliveries in flight at once (per server process).
    #[arg(
        long,
        env = "SONZAI_WORKERS",
        value_name = "N",
        default_value_t = 256,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000),
        help_heading = "Delivery"
    )]
    pub workers: usize,

    /// Most deliveries in flight to one webhook at once (per server process); default
    /// three quarters of --workers. A receiver that hangs or crawls can then hold at most
    /// this many slots, and the rest keep delivering to everyone else.
    #[arg(
        long,
        env = "SONZAI_MAX_IN_FLIGHT_PER_WEBHOOK",
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000),
        help_heading = "Delivery"
    )]
    pub max_in_flight_per_webhook: Option<usize>,

    /// Time limit of one delivery attempt (connect, send, and read the response); a
    /// receiver slower than this counts as failed and is retried.
    #[arg(
        long,
        env = "SONZAI_DELIVERY_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = duration::parse_flag,
        help_heading = "Delivery"
    )]
    pub delivery_timeout: Duration,

    /// Waits before each retry of a failed delivery, comma-separated durations
    /// (`1h30m`, `1d` and the like). `5s,5m,30m` means three retries, then the delivery
    /// is given up.
    #[arg(
        long,
        env = "SONZAI_RETRY_SCHEDULE",
        value_name = "DELAYS",
        default_value = DEFAULT_RETRY_SCHEDULE,
        value_parser = clap::value_parser!(RetrySchedule),
        help_heading = "Delivery"
    )]
    pub retry_schedule: RetrySchedule,

    /// Longest wait a receiver's `Retry-After` (on a 429 or 503) can put before the
    /// next try; a longer one is cut to this. The retry schedule still sets the
    /// earliest time, and the try still counts against it.
    #[arg(
        long,
        env = "SONZAI_MAX_RETRY_AFTER",
        value_name = "DURATION",
        default_value = crate::delivery::answer::DEFAULT_MAX_RETRY_AFTER,
        value_parser = duration::parse_flag,
        help_heading = "Delivery"
    )]
    pub max_retry_after: Duration,

    /// A webhook is switched off (`is_active: false`) after this many consecutive
    /// failed attempts, if they also span at least --disable-after. Upserting the
    /// webhook switches it back on.
    #[arg(
        long,
        env = "SONZAI_DISABLE_AFTER_FAILURES",
        value_name = "N",
        default_value_t = 20,
        value_parser = clap::value_parser!(i64).range(1..),
        help_heading = "Delivery"
    )]
    pub disable_after_failures: i64,

    /// Minimum age of a failure streak before the webhook is switched off. A day means
    /// a receiver that is down for a short outage (or a burst of events failing
    /// within minutes) is never disabled, while one that has failed every attempt for
    /// a full day stops piling up retries.
    #[arg(
        long,
        env = "SONZAI_DISABLE_AFTER",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = duration::parse_flag,
        help_heading = "Delivery"
    )]
    pub disable_after: Duration,

    /// At most one `sonzai.delivery.exhausted` operator event per webhook per this
    /// long; deliveries that run out of tries in between are counted in the next
    /// one's `suppressed`.
    #[arg(
        long,
        env = "SONZAI_EXHAUSTED_NOTICE_EVERY",
        value_name = "DURATION",
        default_value = "1h",
        value_parser = duration::parse_flag,
        help_heading = "Delivery"
    )]
    pub exhausted_notice_every: Duration,

    /// Events, finished deliveries and attempts older than this are deleted (`0` or
    /// `off`: everything is kept). A pending delivery and its event are never
    /// deleted; resending an event already removed answers 410, and a recovery can
    /// reach back no further than this.
    #[arg(
        long,
        env = "SONZAI_RETENTION",
        value_name = "DURATION",
        default_value = "30d",
        value_parser = parse_retention,
        help_heading = "Database"
    )]
    pub retention: Retention,

    /// How often retention looks for rows past the horizon (one process at a time
    /// does the work).
    #[arg(
        long,
        env = "SONZAI_RETENTION_EVERY",
        value_name = "DURATION",
        default_value = "1m",
        value_parser = duration::parse_flag,
        help_heading = "Database"
    )]
    pub retention_every: Duration,

    /// How long a claimed delivery stays reserved for the process that claimed it. If
    /// that process dies, another one takes the delivery over after this. Must be
    /// longer than --delivery-timeout.
    #[arg(
        long,
        env = "SONZAI_LEASE",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = duration::parse_flag,
        help_heading = "Delivery"
    )]
    pub lease: Duration,

    /// Allow webhook URLs that resolve to loopback, private, link-local or cloud
    /// metadata addresses (those in --deny-targets stay refused). Off by default so
    /// that tenants cannot make the server probe its own network; turn it on for
    /// local development and tests.
    #[arg(
        long,
        env = "SONZAI_ALLOW_PRIVATE_TARGETS",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Delivery"
    )]
    pub allow_private_targets: bool,

    /// Address ranges webhooks may never reach, in CIDR notation and comma-separated
    /// (`10.20.0.0/16,fd12::/16`), refused even with --allow-private-targets. Checked,
    /// like the built-in ranges, on the address actually connected to.
    #[arg(
        long,
        env = "SONZAI_DENY_TARGETS",
        value_name = "CIDRS",
        value_delimiter = ',',
        help_heading = "Delivery"
    )]
    pub deny_targets: Vec<IpRange>,

    /// How long a client may take to send a request's headers, counted from their
    /// first byte (from the connection's start for its first request). Slower
    /// connections are closed.
    #[arg(
        long,
        env = "SONZAI_HTTP_HEADER_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = duration::parse_flag,
        help_heading = "HTTP"
    )]
    pub http_header_timeout: Duration,

    /// How long a client may take to send a request body once its headers have
    /// arrived; slower requests are answered 408 and the connection closed.
    #[arg(
        long,
        env = "SONZAI_HTTP_BODY_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = duration::parse_flag,
        help_heading = "HTTP"
    )]
    pub http_body_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request before it is
    /// closed. Longer than the idle timeout of common load balancers (60s), so that
    /// they close first and never send a request onto a connection being closed.
    #[arg(
        long,
        env = "SONZAI_HTTP_IDLE_TIMEOUT",
        value_name = "DURATION",
        default_value = "75s",
        value_parser = duration::parse_flag,
        help_heading = "HTTP"
    )]
    pub http_idle_timeout: Duration,

    /// Most HTTP connections open at once. A new connection at the limit replaces the
    /// one idle the longest (answered 503 only if every connection has a request in
    /// progress). Lowered at start to fit the process's open-file limit.
    #[arg(
        long,
        env = "SONZAI_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000),
        help_heading = "HTTP"
    )]
    pub max_connections: usize,

    /// Threads running the HTTP server, the delivery engine and SQLite's writes;
    /// default half the CPUs, at least one. The rest is the database's (SQLite's reads
    /// run on threads of their own, PostgreSQL in its own processes); more runtime
    /// threads than that only hand work back and forth between cores, which costs more
    /// CPU per event than the work itself at a moderate rate.
    #[arg(
        long,
        env = "SONZAI_RUNTIME_THREADS",
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024),
        help_heading = "Performance"
    )]
    pub runtime_threads: Option<usize>,
}

/// An http(s) URL with a host and no path beyond `/`, query or fragment.
fn parse_public_url(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("expected an http or https URL with a host".to_owned());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "expected only scheme, host and port, such as https://hooks.example.com".to_owned(),
        );
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

impl Default for Config {
    fn default() -> Self {
        flag_defaults()
    }
}

impl Config {
    /// A configuration for tests: the given database, an ephemeral loopback port,
    /// private targets allowed (test receivers listen on 127.0.0.1), and short
    /// timings so retries and shutdown happen within a test's patience.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: DatabaseArgs {
                database_url: Some(database_url.into()),
                data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            },
            delivery_timeout: Duration::from_secs(2),
            retry_schedule: RetrySchedule::new(
                [100, 200, 400].map(Duration::from_millis).to_vec(),
                crate::delivery::retry::DEFAULT_JITTER,
            )
            .expect("a valid schedule"),
            lease: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
            allow_private_targets: true,
            ..Self::default()
        }
    }

    /// The runtime threads in force: the flag, or half of `cpus` rounded up.
    pub fn runtime_threads_for(&self, cpus: usize) -> usize {
        self.runtime_threads.unwrap_or(cpus.div_ceil(2)).max(1)
    }

    /// The per-webhook in-flight limit in force: the flag, or three quarters of
    /// `workers` (a quarter stays free for the other webhooks).
    pub(crate) fn per_webhook_limit(&self) -> usize {
        self.max_in_flight_per_webhook
            .unwrap_or(self.workers * 3 / 4)
            .clamp(1, self.workers.max(1))
    }

    /// When the delivery engine switches a failing webhook off.
    pub(crate) fn disable_policy(&self) -> DisablePolicy {
        DisablePolicy {
            failures: self.disable_after_failures,
            min_age: self.disable_after,
            exhausted_window: self.exhausted_notice_every,
        }
    }

    /// Checks the settings that only make sense together. Called before serving, so
    /// an inconsistent deployment fails at start instead of misbehaving under load.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.delivery_timeout.is_zero() {
            return Err("--delivery-timeout must be longer than 0s".to_owned());
        }
        // A lease that can expire while its attempt is still running lets a second
        // process send the same delivery concurrently.
        if self.lease <= self.delivery_timeout {
            return Err(format!(
                "--lease ({}) must be longer than --delivery-timeout ({}), otherwise a slow \
                 delivery can be taken over and sent twice at the same time",
                duration::format(self.lease),
                duration::format(self.delivery_timeout)
            ));
        }
        for (flag, value) in [
            ("--http-header-timeout", self.http_header_timeout),
            ("--http-body-timeout", self.http_body_timeout),
            ("--http-idle-timeout", self.http_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be longer than 0s"));
            }
        }
        Ok(())
    }
}

/// Builds a `sqlite://` URL for a file path. The store's URL parser percent-decodes
/// the path and splits it at `?`, so `%`, `?` and `#` in directory names are encoded.
/// How long rows are kept (`--retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Everything is kept.
    Off,
    /// Rows older than this are deleted.
    For(Duration),
}

impl Retention {
    /// The horizon at `now`: rows created before it go. `None`: everything stays.
    pub fn horizon(
        self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Retention::Off => None,
            Retention::For(keep) => chrono::Duration::from_std(keep)
                .ok()
                .and_then(|keep| now.checked_sub_signed(keep)),
        }
    }
}

fn parse_retention(input: &str) -> Result<Retention, String> {
    if input.trim().eq_ignore_ascii_case("off") {
        return Ok(Retention::Off);
    }
    match duration::parse_flag(input)? {
        Duration::ZERO => Ok(Retention::Off),
        keep => Ok(Retention::For(keep)),
    }
}

fn sqlite_url(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut encoded = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            other => encoded.push(other),
        }
    }
    format!("sqlite://{encoded}")
}

/// Replaces the password in `scheme://user:password@host/...` with `***`.
pub(crate) fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_len = url[authority_start..]
        .find(['/', '?', '#'])
        .unwrap_or(url.len() - authority_start);
    let authority = &url[authority_start..authority_start + authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        config: Config,
        #[command(flatten)]
        log: LogArgs,
    }

    /// Parses as the binary would, but with every environment variable binding removed
    /// so that the developer's or CI's environment cannot change the outcome.
    fn parse(args: &[&str]) -> Result<Harness, clap::Error> {
        let command = Harness::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(args)?;
        Harness::from_arg_matches(&matches)
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        let parsed = parse(&["serve"]).unwrap();
        assert_eq!(parsed.config, Config::default());
        assert_eq!(parsed.log, LogArgs::default());
        assert_eq!(parsed.config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            parsed.config.retry_schedule.to_string(),
            DEFAULT_RETRY_SCHEDULE
        );
        assert_eq!(parsed.config.max_body_bytes, 262_144);
        assert_eq!(parsed.config.max_attempts_page_bytes, 8_388_608);
        assert_eq!(parsed.config.max_webhooks_per_project, 1_000);
        assert!(!parsed.config.allow_private_targets);
    }

    #[test]
    fn every_flag_is_read() {
        let parsed = parse(&[
            "serve",
            "--listen",
            "0.0.0.0:9000",
            "--database-url",
            "postgres://u:p@localhost/db",
            "--data-dir",
            "/var/lib/sonzai",
            "--workers",
            "8",
            "--delivery-timeout",
            "1500ms",
            "--retry-schedule",
            "1s,2s",
            "--disable-after-failures",
            "3",
            "--disable-after",
            "1h",
            "--lease",
            "1m",
            "--allow-private-targets",
            "--max-body-bytes",
            "1024",
            "--idempotency-window",
            "2h",
            "--log-format",
            "json",
            "--log",
            "debug",
            "--shutdown-grace",
            "3s",
            "--max-attempts-page-bytes",
            "65536",
            "--max-webhooks-per-project",
            "5",
            "--deny-targets",
            "10.20.0.0/16,fd12::/16",
            "--http-header-timeout",
            "5s",
            "--http-body-timeout",
            "20s",
            "--http-idle-timeout",
            "2m",
            "--max-connections",
            "500",
        ])
        .unwrap();
        let c = parsed.config;
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.database.url(), "postgres://u:p@localhost/db");
        assert_eq!(c.database.data_dir, PathBuf::from("/var/lib/sonzai"));
        assert_eq!(c.workers, 8);
        assert_eq!(c.delivery_timeout, Duration::from_millis(1500));
        assert_eq!(c.retry_schedule.to_string(), "1s,2s");
        assert_eq!(
            c.disable_policy(),
            DisablePolicy {
                failures: 3,
                min_age: Duration::from_secs(3600),
                exhausted_window: Duration::from_secs(3600),
            }
        );
        assert_eq!(c.lease, Duration::from_secs(60));
        assert!(c.allow_private_targets);
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.idempotency_window, Duration::from_secs(7200));
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.max_attempts_page_bytes, 65_536);
        assert_eq!(c.max_webhooks_per_project, 5);
        assert_eq!(
            c.deny_targets,
            vec![
                "10.20.0.0/16".parse::<IpRange>().unwrap(),
                "fd12::/16".parse().unwrap()
            ]
        );
        assert_eq!(c.http_header_timeout, Duration::from_secs(5));
        assert_eq!(c.http_body_timeout, Duration::from_secs(20));
        assert_eq!(c.http_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.max_connections, 500);
        assert_eq!(parsed.log.log_format, LogFormat::Json);
        assert_eq!(parsed.log.log, "debug");
    }

    #[test]
    fn retention_is_a_duration_or_off() {
        let default = parse(&["serve"]).unwrap().config;
        assert_eq!(
            default.retention,
            Retention::For(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(default.retention_every, Duration::from_secs(60));
        for off in ["off", "OFF", "0", "0s"] {
            let parsed = parse(&["serve", "--retention", off]).unwrap().config;
            assert_eq!(parsed.retention, Retention::Off, "{off}");
            assert_eq!(parsed.retention.horizon(chrono::Utc::now()), None);
        }
        let week = parse(&["serve", "--retention", "7d"])
            .unwrap()
            .config
            .retention;
        let now = chrono::Utc::now();
        assert_eq!(week.horizon(now), Some(now - chrono::Duration::days(7)));
        assert!(parse(&["serve", "--retention", "forever"]).is_err());
    }

    #[test]
    fn boolean_flag_accepts_explicit_values() {
        let on = parse(&["serve", "--allow-private-targets=yes"]).unwrap();
        assert!(on.config.allow_private_targets);
        let off = parse(&["serve", "--allow-private-targets=false"]).unwrap();
        assert!(!off.config.allow_private_targets);
        assert!(parse(&["serve", "--allow-private-targets=maybe"]).is_err());
    }

    #[test]
    fn environment_variables_are_bound() {
        let command = Harness::command();
        let mut expected = vec![
            ("listen", "SONZAI_LISTEN"),
            ("public_url", "SONZAI_PUBLIC_URL"),
            ("database_url", "DATABASE_URL"),
            ("data_dir", "SONZAI_DATA_DIR"),
            ("workers", "SONZAI_WORKERS"),
            (
                "max_in_flight_per_webhook",
                "SONZAI_MAX_IN_FLIGHT_PER_WEBHOOK",
            ),
            ("delivery_timeout", "SONZAI_DELIVERY_TIMEOUT"),
            ("retry_schedule", "SONZAI_RETRY_SCHEDULE"),
            ("max_retry_after", "SONZAI_MAX_RETRY_AFTER"),
            ("disable_after_failures", "SONZAI_DISABLE_AFTER_FAILURES"),
            ("disable_after", "SONZAI_DISABLE_AFTER"),
            ("exhausted_notice_every", "SONZAI_EXHAUSTED_NOTICE_EVERY"),
            ("retention", "SONZAI_RETENTION"),
            ("retention_every", "SONZAI_RETENTION_EVERY"),
            ("lease", "SONZAI_LEASE"),
            ("allow_private_targets", "SONZAI_ALLOW_PRIVATE_TARGETS"),
            ("max_body_bytes", "SONZAI_MAX_BODY_BYTES"),
            ("idempotency_window", "SONZAI_IDEMPOTENCY_WINDOW"),
            ("log_format", "SONZAI_LOG_FORMAT"),
            ("log", "SONZAI_LOG"),
            ("shutdown_grace", "SONZAI_SHUTDOWN_GRACE"),
            ("max_attempts_page_bytes", "SONZAI_MAX_ATTEMPTS_PAGE_BYTES"),
            (
                "max_webhooks_per_project",
                "SONZAI_MAX_WEBHOOKS_PER_PROJECT",
            ),
            ("deny_targets", "SONZAI_DENY_TARGETS"),
            ("http_header_timeout", "SONZAI_HTTP_HEADER_TIMEOUT"),
            ("http_body_timeout", "SONZAI_HTTP_BODY_TIMEOUT"),
            ("http_idle_timeout", "SONZAI_HTTP_IDLE_TIMEOUT"),
            ("max_connections", "SONZAI_MAX_CONNECTIONS"),
            ("runtime_threads", "SONZAI_RUNTIME_THREADS"),
        ];
        for arg in command.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{} has no environment variable", arg.get_id()));
            let position = expected
                .iter()
                .position(|(id, _)| *id == arg.get_id().as_str())
                .unwrap_or_else(|| panic!("unexpected argument {}", arg.get_id()));
            let (_, name) = expected.remove(position);
            assert_eq!(env, name, "environment variable of --{}", arg.get_id());
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
        assert!(expected.is_empty(), "not bound: {expected:?}");
    }

    #[test]
    fn runtime_threads_default_to_half_the_cpus() {
        let mut config = Config::default();
        assert_eq!(config.runtime_threads_for(1), 1);
        assert_eq!(config.runtime_threads_for(2), 1);
        assert_eq!(config.runtime_threads_for(3), 2);
        assert_eq!(config.runtime_threads_for(16), 8);
        config.runtime_threads = Some(6);
        assert_eq!(config.runtime_threads_for(2), 6);
        assert!(parse(&["serve", "--runtime-threads", "0"]).is_err());
    }

    #[test]
    fn per_webhook_limit_defaults_to_three_quarters_of_the_workers() {
        let mut config = Config::default();
        assert_eq!(config.per_webhook_limit(), 192);
        config.workers = 1;
        assert_eq!(config.per_webhook_limit(), 1);
        config.max_in_flight_per_webhook = Some(1000);
        assert_eq!(config.per_webhook_limit(), 1, "never above --workers");
        config.workers = 64;
        config.max_in_flight_per_webhook = Some(8);
        assert_eq!(config.per_webhook_limit(), 8);
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        assert!(parse(&["serve", "--workers", "0"]).is_err());
        assert!(parse(&["serve", "--max-body-bytes", "0"]).is_err());
        assert!(parse(&["serve", "--max-attempts-page-bytes", "0"]).is_err());
        assert!(parse(&["serve", "--max-webhooks-per-project", "0"]).is_err());
        assert!(parse(&["serve", "--disable-after-failures", "0"]).is_err());
        assert!(parse(&["serve", "--listen", "localhost"]).is_err());
        assert!(parse(&["serve", "--lease", "30"]).is_err());
        assert!(parse(&["serve", "--max-connections", "0"]).is_err());
        assert!(parse(&["serve", "--deny-targets", "10.0.0.0/33"]).is_err());
        assert!(parse(&["serve", "--deny-targets", "intranet.example"]).is_err());
        assert!(parse(&["serve", "--http-idle-timeout", "60"]).is_err());
    }

    #[test]
    fn http_timeouts_must_be_positive() {
        for flag in [
            "--http-header-timeout",
            "--http-body-timeout",
            "--http-idle-timeout",
        ] {
            let config = parse(&["serve", flag, "0s"]).unwrap().config;
            let err = config.validate().unwrap_err();
            assert!(err.starts_with(flag), "{err}");
        }
    }

    #[test]
    fn embedded_database_url_is_under_the_data_dir() {
        let db = DatabaseArgs {
            database_url: None,
            data_dir: PathBuf::from("/srv/hooks"),
        };
        assert!(db.is_embedded());
        assert_eq!(db.url(), "sqlite:///srv/hooks/sonzai-webhooks.db");
        assert_eq!(
            Config::default().database.url(),
            "sqlite://./data/sonzai-webhooks.db"
        );
        let odd = DatabaseArgs {
            database_url: None,
            data_dir: PathBuf::from("/tmp/a?b#c%d"),
        };
        assert_eq!(odd.url(), "sqlite:///tmp/a%3Fb%23c%25d/sonzai-webhooks.db");
        let explicit = DatabaseArgs {
            database_url: Some("sqlite:///elsewhere.db".to_owned()),
            data_dir: PathBuf::from("/srv/hooks"),
        };
        assert!(!explicit.is_embedded());
        assert_eq!(explicit.url(), "sqlite:///elsewhere.db");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url_password("postgres://app:s3cr%40t@db.internal:5432/hooks?sslmode=require"),
            "postgres://app:***@db.internal:5432/hooks?sslmode=require"
        );
        assert_eq!(
            redact_url_password("postgres://app@db/hooks"),
            "postgres://app@db/hooks"
        );
        assert_eq!(
            redact_url_password("sqlite://./data/x.db"),
            "sqlite://./data/x.db"
        );
        assert_eq!(redact_url_password("not a url"), "not a url");
        let db = DatabaseArgs {
            database_url: Some("postgres://app:hunter2@db/hooks".to_owned()),
            data_dir: PathBuf::from("."),
        };
        let debug = format!(
            "{:?}",
            Config {
                database: db.clone(),
                ..Config::default()
            }
        );
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("app:***@db"), "{debug}");
        assert!(!db.url_redacted().contains("hunter2"));
    }

    #[test]
    fn validation_catches_inconsistent_timings() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(Config::for_tests("sqlite::memory:").validate(), Ok(()));
        let short_lease = Config {
            lease: Duration::from_secs(10),
            ..Config::default()
        };
        let err = short_lease.validate().unwrap_err();
        assert!(err.contains("--lease (10s)"), "{err}");
        let zero_timeout = Config {
            delivery_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero_timeout.validate().is_err());
        // A schedule is checked as it is read, before the server starts.
        assert!(parse(&["serve", "--retry-schedule", " "]).is_err());
        let err = parse(&["serve", "--retry-schedule", "5s,5x"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--retry-schedule") && err.contains("entry 2"),
            "{err}"
        );
    }

    #[test]
    fn prepare_creates_the_data_dir_only_for_the_embedded_database() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let embedded = DatabaseArgs {
            database_url: None,
            data_dir: nested.clone(),
        };
        embedded.prepare().unwrap();
        assert!(nested.is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&nested).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        }

        let other = dir.path().join("c");
        let explicit = DatabaseArgs {
            database_url: Some("postgres://localhost/x".to_owned()),
            data_dir: other.clone(),
        };
        explicit.prepare().unwrap();
        assert!(!other.exists());
    }
}
