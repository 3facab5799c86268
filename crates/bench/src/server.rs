//! The server under test: a fresh database per scenario, the admin CLI to provision
//! it, and server child processes.
//!
//! The bench drives the real release binary rather than the library, so the figures
//! include everything an operator runs: process start-up, logging, the HTTP stack and
//! the runtime configuration of `main`. Every child is started with `kill_on_drop`, so
//! an error or panic anywhere in the bench still takes the servers down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::procfs::Usage;

/// Name of the server binary, expected next to the bench binary.
const SERVER_BIN: &str = "sonzai-webhooks";
/// Longest wait for one admin command (PostgreSQL migrations may queue behind another
/// process holding the migration lock).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a started server to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for one `psql` call.
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the scenarios keep their data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded SQLite database, in a temporary data directory.
    Sqlite,
    /// A PostgreSQL database (URL of an existing database); each scenario gets a
    /// schema of its own.
    Postgres(String),
}

/// A fresh database for one scenario, deleted when dropped.
pub struct Database {
    /// Server logs, and the SQLite data directory.
    workdir: TempDir,
    schema: Option<Schema>,
}

impl Database {
    pub fn create(backend: &Backend) -> anyhow::Result<Self> {
        let workdir = tempfile::Builder::new()
            .prefix("sonzai-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres(url) => Some(Schema::create(url)?),
        };
        Ok(Self { workdir, schema })
    }

    /// True on the embedded database, the only one where the server prints
    /// development credentials on first start.
    pub fn is_embedded(&self) -> bool {
        self.schema.is_none()
    }

    /// The `serve`/admin flags that select this database.
    fn args(&self) -> Vec<String> {
        match &self.schema {
            Some(schema) => vec!["--database-url".to_owned(), schema.url.clone()],
            None => vec![
                "--data-dir".to_owned(),
                self.workdir.path().join("data").display().to_string(),
            ],
        }
    }

    fn workdir(&self) -> &Path {
        self.workdir.path()
    }
}

/// A PostgreSQL schema created for one scenario and dropped afterwards. Servers see
/// only it through `search_path`, so runs never see each other's (or the test
/// suite's) rows in a shared database.
struct Schema {
    admin_url: String,
    name: String,
    /// `admin_url` with this schema as the search path.
    url: String,
}

impl Schema {
    fn create(admin_url: &str) -> anyhow::Result<Self> {
        let simple = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("sonzai_bench_{}", &simple[..12]);
        psql(admin_url, &format!("CREATE SCHEMA {name}"))
            .with_context(|| format!("creating schema {name}"))?;
        Ok(Self {
            url: with_search_path(admin_url, &name),
            admin_url: admin_url.to_owned(),
            name,
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Servers have been killed by now, but their sessions may take a moment to
        // end; the lock timeout keeps a lingering one from hanging the bench.
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        if let Err(e) = psql(&self.admin_url, &sql) {
            eprintln!("warning: could not drop schema {}: {e:#}", self.name);
        }
    }
}

/// `url` with a libpq `options` parameter that sets the session's `search_path`.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// Runs one SQL command with `psql`, bounded in time. (Blocking on purpose: it also
/// runs from `Drop`, where there is no runtime to await on.)
fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql (is the PostgreSQL client installed?)")?;
    let deadline = Instant::now() + PSQL_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read as _;
                let _ = pipe.read_to_string(&mut stderr);
            }
            bail!("psql failed ({status}): {}", stderr.trim());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("psql did not finish within {PSQL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A project the bench publishes to, with a key of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub project_id: String,
    pub key: String,
}

/// Reads the project and key from the server's first-start banner.
pub fn parse_banner(text: &str) -> Option<Credentials> {
    let mut project_id = None;
    let mut key = None;
    for line in text.lines().map(str::trim_start) {
        if let Some(rest) = line.strip_prefix("project ") {
            project_id = rest.split_whitespace().next();
        } else if let Some(rest) = line.strip_prefix("API key ") {
            key = rest
                .split_whitespace()
                .next()
                .filter(|k| k.starts_with("sk_"));
        }
    }
    Some(Credentials {
        project_id: project_id?.to_owned(),
        key: key?.to_owned(),
    })
}

/// Who owns the provisioned projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenancy {
    /// One tenant owns them all.
    Shared,
    /// Each project has a tenant of its own.
    OnePerProject,
}

/// How to start each server process.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `--workers`; `None` keeps the server's default.
    pub workers: Option<usize>,
    /// `--log` filter.
    pub log: String,
    /// Further `serve` flags, passed as given.
    pub extra: Vec<String>,
}

/// The server binary.
#[derive(Debug, Clone)]
pub struct ServerBinary {
    path: PathBuf,
}

impl ServerBinary {
    /// `path`, or the server next to this executable (both land in `target/release`).
    pub fn locate(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = match path {
            Some(path) => path,
            None => std::env::current_exe()
                .context("locating the bench executable")?
                .parent()
                .ok_or_else(|| anyhow!("the bench executable has no directory"))?
                .join(SERVER_BIN),
        };
        if !path.is_file() {
            bail!(
                "server binary {} not found (build it with `cargo build --release -p \
                 sonzai-webhooks-server`, or run `cargo xtask bench`)",
                path.display()
            );
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command for the server binary with an environment that cannot redirect it:
    /// a developer's `DATABASE_URL` or `SONZAI_*` must not point a run at their data.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text == "DATABASE_URL" || text.starts_with("SONZAI_") {
                command.env_remove(&name);
            }
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// Runs an admin command with `--json` against `db` and returns its output.
    async fn admin(&self, db: &Database, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut command = self.command();
        command
            .args(args)
            .arg("--json")
            .args(db.args())
            .args(["--log", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().context("starting the server binary")?;
        let output = tokio::time::timeout(ADMIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("`{}` took over {ADMIN_TIMEOUT:?}", args.join(" ")))??;
        if !output.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("`{}` printed no JSON", args.join(" ")))
    }

    /// Creates `projects` projects and a key for each, through the admin CLI (on
    /// SQLite this must happen before a server opens the database).
    pub async fn provision(
        &self,
        db: &Database,
        projects: usize,
        tenancy: Tenancy,
    ) -> anyhow::Result<Vec<Credentials>> {
        let mut tenant_id = String::new();
        let mut out = Vec::with_capacity(projects);
        for index in 0..projects {
            if index == 0 || tenancy == Tenancy::OnePerProject {
                let name = match tenancy {
                    Tenancy::Shared => "bench".to_owned(),
                    Tenancy::OnePerProject => format!("bench-{index}"),
                };
                let tenant = self
                    .admin(db, &["tenants", "create", "--name", &name])
                    .await?;
                tenant_id = json_str(&tenant, "id")?;
            }
            let name = format!("bench-{index}");
            let project = self
                .admin(
                    db,
                    &[
                        "projects", "create", "--tenant", &tenant_id, "--name", &name,
                    ],
                )
                .await?;
            let project_id = json_str(&project, "id")?;
            let key = self
                .admin(db, &["keys", "create", "--project", &project_id])
                .await?;
            out.push(Credentials {
                project_id,
                key: json_str(&key, "key")?,
            });
        }
        Ok(out)
    }
}

fn json_str(value: &serde_json::Value, field: &str) -> anyhow::Result<String> {
    value
        .get(field)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("admin output has no {field:?}: {value}"))
}

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    /// e.g. `http://127.0.0.1:40123`.
    pub base: String,
    /// Keeps reading stdout so the server never blocks on a full pipe.
    stdout: JoinHandle<()>,
}

impl ServerProcess {
    /// Starts `serve` on a free loopback port and waits until it is ready. With
    /// `banner`, also waits for the first-start banner and returns its credentials.
    pub async fn start(
        bin: &ServerBinary,
        db: &Database,
        index: usize,
        options: &ServerOptions,
        banner: bool,
    ) -> anyhow::Result<(Self, Option<Credentials>)> {
        // Another program can take the probed port before the server binds it; that
        // is rare and shows as an early exit, so a couple of retries cover it.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(bin, db, index, options, banner).await {
                Ok(started) => return Ok(started),
                Err(StartError::PortTaken(e)) => last_error = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("could not start the server")))
    }

    async fn try_start(
        bin: &ServerBinary,
        db: &Database,
        index: usize,
        options: &ServerOptions,
        banner: bool,
    ) -> Result<(Self, Option<Credentials>), StartError> {
        let port = free_port().map_err(StartError::Other)?;
        let listen = format!("127.0.0.1:{port}");
        let log_path = db.workdir().join(format!("server-{index}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))
            .map_err(StartError::Other)?;
        let mut command = bin.command();
        command
            .arg("serve")
            .args(["--listen", &listen, "--allow-private-targets", "true"])
            .args(["--log", &options.log])
            .args(db.args());
        if let Some(workers) = options.workers {
            command.args(["--workers", &workers.to_string()]);
        }
        command
            .args(&options.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command
            .spawn()
            .context("starting the server")
            .map_err(StartError::Other)?;
        let pid = child
            .id()
            .ok_or_else(|| StartError::Other(anyhow!("the server exited at once")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| StartError::Other(anyhow!("no server stdout")))?;
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let stdout = tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                // Once start-up is over nobody listens; keep draining regardless.
                let _ = lines_tx.send(line);
            }
        });
        let mut process = Self {
            child,
            pid,
            base: format!("http://{listen}"),
            stdout,
        };

        if let Err(e) = process.wait_ready().await {
            let tail = log_tail(&log_path);
            return Err(if tail.contains("Address already in use") {
                StartError::PortTaken(e)
            } else {
                StartError::Other(e.context(format!("server log ends with:\n{tail}")))
            });
        }
        let credentials = if banner {
            // The banner is printed before the server binds its port, so it is in
            // the pipe by now; the timeout only covers reading it.
            let mut text = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while parse_banner(&text).is_none() {
                match tokio::time::timeout_at(deadline, lines.recv()).await {
                    Ok(Some(line)) => {
                        text.push_str(&line);
                        text.push('\n');
                    }
                    _ => {
                        return Err(StartError::Other(anyhow!(
                            "the server printed no development credentials; stdout was:\n{text}"
                        )))
                    }
                }
            }
            parse_banner(&text)
        } else {
            None
        };
        Ok((process, credentials))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/readyz", self.base);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited during start-up ({status})");
            }
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the server was not ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resource use so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&self.pid.to_string())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the process and waits (bounded) for it to be gone, so its database
    /// sessions close before the database is dropped.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        self.stdout.abort();
    }
}

enum StartError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("probing a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    const LINES: usize = 20;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_yields_project_and_key() {
        let banner = "\
==============================================================================
First start on an empty database: created development credentials.

  tenant   0190f1a2-0000-7000-8000-000000000001  (development)
  project  0190f1a3-0000-7000-8000-000000000002  (default)
  API key  sk_abcdefghijkl_0123456789012345678901234567890123456789

The key is shown only this once; only a hash of it is stored.
Try it:

  curl -s -H \"Authorization: Bearer sk_abcdefghijkl_0123456789012345678901234567890123456789\" http://127.0.0.1:8080/api/v1/webhooks

More keys: sonzai-webhooks keys create --project 0190f1a3-0000-7000-8000-000000000002
==============================================================================
";
        assert_eq!(
            parse_banner(banner),
            Some(Credentials {
                project_id: "0190f1a3-0000-7000-8000-000000000002".to_owned(),
                key: "sk_abcdefghijkl_0123456789012345678901234567890123456789".to_owned(),
            })
        );
        // Half a banner is not enough.
        let partial = banner.split("  API key").next().unwrap();
        assert_eq!(parse_banner(partial), None);
        assert_eq!(parse_banner("  API key  not-a-key\n  project  p\n"), None);
    }

    #[test]
    fn search_path_is_added_as_a_libpq_option() {
        assert_eq!(
            with_search_path("postgres://u@127.0.0.1:5432/test", "s1"),
            "postgres://u@127.0.0.1:5432/test?options=-c%20search_path%3Ds1"
        );
        assert_eq!(
            with_search_path("postgres://u@h/db?sslmode=disable", "s2"),
            "postgres://u@h/db?sslmode=disable&options=-c%20search_path%3Ds2"
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path);
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"), "{tail}");
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }

    #[test]
    fn a_missing_server_binary_is_explained() {
        let err = ServerBinary::locate(Some(PathBuf::from("/nonexistent/sonzai-webhooks")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask bench"), "{err}");
    }
}
