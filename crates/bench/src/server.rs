//! The server under test: a fresh database per scenario, the admin CLI to provision
//! it, and server child processes.
//!
//! The bench drives the real release binary rather than the library, so the figures
//! include everything an operator runs: process start-up, logging, the HTTP stack and
//! the runtime configuration of `main`. Every child is started with `kill_on_drop`, so
//! an error or panic anywhere in the bench still takes the servers down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use sonzai_webhooks_testkit::{process as kit_process, Spawn, TestDb};
use tokio::process::Command;

use crate::procfs::Usage;

/// Longest wait for one admin command (PostgreSQL migrations may queue behind another
/// process holding the migration lock).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a started server to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the scenarios keep their data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded SQLite database, in a temporary data directory.
    Sqlite,
    /// A PostgreSQL database (URL of an existing database); each scenario gets a
    /// schema of its own.
    Postgres(String),
}

/// A fresh database for one scenario (the test kit's), deleted when dropped: a
/// temporary directory holding the SQLite data directory and the server logs, and on
/// PostgreSQL a schema of its own, so runs never see each other's (or the test
/// suite's) rows in a shared database.
pub struct Database {
    db: TestDb,
}

impl Database {
    pub fn create(backend: &Backend) -> anyhow::Result<Self> {
        let db = match backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres(url) => TestDb::postgres_at(url, "sonzai_bench")
                .map_err(|e| anyhow!("creating a PostgreSQL schema: {e}"))?,
        };
        Ok(Self { db })
    }

    /// True on the embedded database, the only one where the server prints
    /// development credentials on first start.
    pub fn is_embedded(&self) -> bool {
        self.db.sqlite_data_dir().is_some()
    }

    /// The database's URL, for the scenarios that seed rows straight into it.
    pub fn url(&self) -> &str {
        &self.db.url
    }

    /// The `serve`/admin flags that select this database.
    fn args(&self) -> Vec<String> {
        match self.db.sqlite_data_dir() {
            Some(data_dir) => vec!["--data-dir".to_owned(), data_dir.display().to_string()],
            None => vec!["--database-url".to_owned(), self.db.url.clone()],
        }
    }

    fn workdir(&self) -> &Path {
        self.db.dir()
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
        let path = kit_process::locate_server_binary(path).map_err(|e| {
            anyhow!(
                "{e} (build it with `cargo build --release -p sonzai-webhooks-server`, or run \
                 `cargo xtask bench`)"
            )
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command for the server binary with an environment that cannot redirect it:
    /// a developer's `DATABASE_URL` or `SONZAI_*` must not point a run at their data.
    fn command(&self) -> Command {
        kit_process::command(&self.path)
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
    process: kit_process::ServerProcess,
    /// e.g. `http://127.0.0.1:40123`.
    pub base: String,
}

impl ServerProcess {
    /// Starts `serve` on a free loopback port (retried when another program takes the
    /// probed port first) and waits until it is ready. With `banner`, also waits for
    /// the first-start banner and returns its credentials.
    pub async fn start(
        bin: &ServerBinary,
        db: &Database,
        index: usize,
        options: &ServerOptions,
        banner: bool,
    ) -> anyhow::Result<(Self, Option<Credentials>)> {
        let mut spawn = Spawn::new(bin.path())
            .args(["--allow-private-targets", "true"])
            .args(["--log", &options.log])
            .args(db.args());
        if let Some(workers) = options.workers {
            spawn = spawn.args(["--workers".to_owned(), workers.to_string()]);
        }
        let mut process = spawn
            .args(&options.extra)
            .log_to(db.workdir().join(format!("server-{index}.log")))
            .capture_stdout()
            .ready_within(START_TIMEOUT)
            .start()
            .await
            .map_err(|e| anyhow!("starting the server: {e}"))?;
        let credentials = if banner {
            // The banner is printed before the server binds its port, so it is in
            // the pipe by now; the timeout only covers reading it.
            let mut text = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while parse_banner(&text).is_none() {
                let Some(line) = process.stdout_line(deadline).await else {
                    bail!("the server printed no development credentials; stdout was:\n{text}");
                };
                text.push_str(&line);
                text.push('\n');
            }
            parse_banner(&text)
        } else {
            None
        };
        let base = process.base_url();
        Ok((Self { process, base }, credentials))
    }

    /// Starts this executable's relay (see `relay.rs`) on a free loopback port, its
    /// log in `db`'s working directory, and waits until it is ready.
    pub async fn start_relay(db: &Database) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let process = Spawn::new(exe)
            .log_to(db.workdir().join("relay.log"))
            .ready_within(START_TIMEOUT)
            .start()
            .await
            .map_err(|e| anyhow!("starting the relay: {e}"))?;
        let base = process.base_url();
        Ok(Self { process, base })
    }

    /// Resource use so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&self.process.pid().to_string())
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the process and waits (bounded) for it to be gone, so its database
    /// sessions close before the database is dropped.
    pub async fn stop(self) {
        self.process.stop().await;
    }
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
    fn a_missing_server_binary_is_explained() {
        let err = ServerBinary::locate(Some(PathBuf::from("/nonexistent/sonzai-webhooks")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask bench"), "{err}");
    }
}
