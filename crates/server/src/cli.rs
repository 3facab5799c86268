//! The `sonzai-webhooks` command line: `serve` runs the server; `tenants`, `projects`
//! and `keys` administer the database directly, so an operator can issue credentials
//! without any API call (and before the server first runs); `webhooks` and `events`
//! call any server through the generated client; `receive` is a local receiver.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Parser, Subcommand};
use serde_json::json;
use uuid::Uuid;

use crate::auth::{issue_api_key, KEY_PREFIX};
use crate::config::{Config, DatabaseArgs, LogArgs, LogFormat};
use crate::store::{ApiKeyRecord, Project, StoreError, Tenant};

const LONG_ABOUT: &str = "\
Self-hostable webhooks service implementing the Sonzai webhooks API.

Receivers register a URL per event type; events published to the API are delivered \
to them as signed POST requests, retried with backoff until they succeed, and every \
attempt is recorded.

It runs on an embedded SQLite database by default (nothing to install) and on \
PostgreSQL when --database-url / DATABASE_URL points at one; several server \
processes can share a PostgreSQL database.";

const MAIN_AFTER_HELP: &str = "\
Quick start:
  sonzai-webhooks serve
      Starts the API on http://127.0.0.1:8080 with its database in ./data. On the
      first start it creates a development tenant, project and API key, and prints
      the key with a curl line to try.

Issuing credentials by hand:
  sonzai-webhooks tenants create --name acme
  sonzai-webhooks projects create --tenant <TENANT_ID> --name production
  sonzai-webhooks keys create --project <PROJECT_ID>

Talking to a running server (the API key of `keys create`, or the banner's):
  export SONZAI_URL=http://127.0.0.1:8080 SONZAI_API_KEY=sk_...
  sonzai-webhooks webhooks upsert session.end --webhook-url http://127.0.0.1:9000/hook
  sonzai-webhooks receive --secret whsec_...        (in another terminal)
  sonzai-webhooks events publish session.end --data '{\"user_id\": \"u_1\"}'
  sonzai-webhooks webhooks attempts session.end

Running on PostgreSQL:
  DATABASE_URL=postgres://user:pass@db/webhooks sonzai-webhooks serve --listen 0.0.0.0:8080

Every flag can also be set with an environment variable; each command's --help lists
them.";

const SERVE_AFTER_HELP: &str = "\
Examples:
  sonzai-webhooks serve
  sonzai-webhooks serve --listen 0.0.0.0:8080 --data-dir /var/lib/sonzai-webhooks
  sonzai-webhooks serve --database-url postgres://user:pass@db/webhooks --workers 64
  SONZAI_LOG_FORMAT=json SONZAI_RETRY_SCHEDULE=10s,1m,10m sonzai-webhooks serve

Durations are written like 500ms, 10s, 2m, 1h30m or 7d.
Stop the server with Ctrl-C or SIGTERM: it finishes in-flight work for up to
--shutdown-grace, then hands the rest back to the queue.";

const TENANTS_AFTER_HELP: &str = "\
A tenant owns projects; API keys belong to one project and can reach every project
of their tenant.

Examples:
  sonzai-webhooks tenants create --name acme
  sonzai-webhooks tenants list --json";

const PROJECTS_AFTER_HELP: &str = "\
Examples:
  sonzai-webhooks projects create --tenant 0190f1a2-... --name production
  sonzai-webhooks projects list --tenant 0190f1a2-...";

const KEYS_AFTER_HELP: &str = "\
An API key is shown once, when it is created; only a hash of it is stored. Callers
send it as `Authorization: Bearer sk_...`.

Examples:
  sonzai-webhooks keys create --project 0190f1a3-...
  sonzai-webhooks keys list --project 0190f1a3-...
  sonzai-webhooks keys revoke 0190f1a4-...";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "sonzai-webhooks",
    version,
    about = "Self-hostable webhooks service: API, delivery workers and admin commands.",
    long_about = LONG_ABOUT,
    after_help = MAIN_AFTER_HELP,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhooks API and the delivery workers.
    #[command(
        long_about = "Run the webhooks API and the delivery workers.\n\n\
            With no flags it listens on 127.0.0.1:8080 and keeps its data in an embedded \
            SQLite database under ./data, created on first start.",
        after_help = SERVE_AFTER_HELP
    )]
    Serve(Box<Config>),

    /// Create and list tenants.
    #[command(subcommand, arg_required_else_help = true, after_help = TENANTS_AFTER_HELP)]
    Tenants(TenantsCommand),

    /// Create and list projects (each belongs to a tenant).
    #[command(subcommand, arg_required_else_help = true, after_help = PROJECTS_AFTER_HELP)]
    Projects(ProjectsCommand),

    /// Create, list and revoke API keys.
    #[command(subcommand, arg_required_else_help = true, after_help = KEYS_AFTER_HELP)]
    Keys(KeysCommand),

    /// Manage a running server's webhooks through the API (list, upsert, delete,
    /// rotate, attempts, recover).
    #[command(
        subcommand,
        arg_required_else_help = true,
        after_help = crate::remote::webhooks_after_help()
    )]
    Webhooks(crate::remote::WebhooksCommand),

    /// Publish and resend events through the API.
    #[command(
        subcommand,
        arg_required_else_help = true,
        after_help = crate::remote::events_after_help()
    )]
    Events(crate::remote::EventsCommand),

    /// Receive deliveries locally: print each one and whether its signatures verify.
    #[command(after_help = crate::receive::after_help())]
    Receive(crate::receive::ReceiveArgs),
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and print its id.
    Create {
        /// Display name of the tenant.
        #[arg(long, value_parser = parse_name)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List all tenants.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Create a project in a tenant and print its id.
    Create {
        /// Id of the tenant that owns the project (see `tenants list`).
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// Display name of the project.
        #[arg(long, value_parser = parse_name)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List projects, of every tenant or of one.
    List {
        /// Only the projects of this tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<Uuid>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a project and print it (once: it cannot be shown again).
    Create {
        /// Id of the project the key acts for (see `projects list`).
        #[arg(long, value_name = "PROJECT_ID")]
        project: Uuid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List API keys (their public prefix only, never the secret).
    List {
        /// Only the keys of this project.
        #[arg(long, value_name = "PROJECT_ID")]
        project: Option<Uuid>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke an API key: running servers refuse it within a second (they trust a
    /// key they have looked up for that long).
    Revoke {
        /// Id of the key (the ID column of `keys list`, not the key itself).
        #[arg(value_name = "KEY_ID")]
        key_id: Uuid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = match cli.command {
        Command::Serve(config) => {
            config.validate().map_err(anyhow::Error::msg)?;
            config.database.prepare()?;
            return crate::server::serve(*config).await;
        }
        Command::Tenants(command) => tenants(command).await?,
        Command::Projects(command) => projects(command).await?,
        Command::Keys(command) => keys(command).await?,
        Command::Webhooks(command) => crate::remote::webhooks(command).await?,
        Command::Events(command) => crate::remote::events(command).await?,
        Command::Receive(args) => return crate::receive::run(args).await,
    };
    crate::stdout::write_stdout(&output)
}

/// Installs the global tracing subscriber: logs go to stderr so that stdout carries
/// only command output (which scripts parse), in batches from the runtime's threads
/// ([`crate::log_buffer`]).
pub fn init_tracing(log: &LogArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log)
        .with_context(|| format!("invalid log filter {:?} (--log / SONZAI_LOG)", log.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::log_buffer::Stderr);
    let installed = match log.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}

async fn tenants(command: TenantsCommand) -> anyhow::Result<String> {
    match command {
        TenantsCommand::Create {
            name,
            json,
            database,
        } => {
            let store = database.connect().await?;
            let tenant = store
                .create_tenant(&name)
                .await
                .context("cannot create tenant")?;
            Ok(if json {
                to_json(&tenant_json(&tenant))?
            } else {
                format!(
                    "Created tenant {name:?} with id {id}.\n\
                     Next: sonzai-webhooks projects create --tenant {id} --name NAME\n",
                    name = tenant.name,
                    id = tenant.id
                )
            })
        }
        TenantsCommand::List { json, database } => {
            let store = database.connect().await?;
            let tenants = store.list_tenants().await.context("cannot list tenants")?;
            if json {
                return to_json(&tenants.iter().map(tenant_json).collect::<Vec<_>>());
            }
            if tenants.is_empty() {
                return Ok(
                    "No tenants yet. Create one with: sonzai-webhooks tenants create --name NAME\n"
                        .to_owned(),
                );
            }
            Ok(table(
                &["ID", "NAME", "CREATED"],
                tenants
                    .iter()
                    .map(|t| vec![t.id.to_string(), t.name.clone(), timestamp(&t.created_at)])
                    .collect(),
            ))
        }
    }
}

async fn projects(command: ProjectsCommand) -> anyhow::Result<String> {
    match command {
        ProjectsCommand::Create {
            tenant,
            name,
            json,
            database,
        } => {
            let store = database.connect().await?;
            let project = match store.create_project(tenant, &name).await {
                Err(StoreError::NotFound) => anyhow::bail!(
                    "tenant {tenant} does not exist (`sonzai-webhooks tenants list` shows \
                     the existing ones)"
                ),
                other => other.context("cannot create project")?,
            };
            Ok(if json {
                to_json(&project_json(&project))?
            } else {
                format!(
                    "Created project {name:?} with id {id} in tenant {tenant}.\n\
                     Next: sonzai-webhooks keys create --project {id}\n",
                    name = project.name,
                    id = project.id,
                    tenant = project.tenant_id
                )
            })
        }
        ProjectsCommand::List {
            tenant,
            json,
            database,
        } => {
            let store = database.connect().await?;
            let projects = store
                .list_projects(tenant)
                .await
                .context("cannot list projects")?;
            if json {
                return to_json(&projects.iter().map(project_json).collect::<Vec<_>>());
            }
            if projects.is_empty() {
                return Ok(
                    "No projects. Create one with: sonzai-webhooks projects create \
                           --tenant TENANT_ID --name NAME\n"
                        .to_owned(),
                );
            }
            Ok(table(
                &["ID", "TENANT", "NAME", "CREATED"],
                projects
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.to_string(),
                            p.tenant_id.to_string(),
                            p.name.clone(),
                            timestamp(&p.created_at),
                        ]
                    })
                    .collect(),
            ))
        }
    }
}

async fn keys(command: KeysCommand) -> anyhow::Result<String> {
    match command {
        KeysCommand::Create {
            project,
            json,
            database,
        } => {
            let store = database.connect().await?;
            let missing = || {
                anyhow::anyhow!(
                    "project {project} does not exist (`sonzai-webhooks projects list` shows \
                     the existing ones)"
                )
            };
            let owner = store
                .get_project(project)
                .await
                .context("cannot look up project")?
                .ok_or_else(missing)?;
            let (key, record) = match issue_api_key(store.as_ref(), project).await {
                Err(StoreError::NotFound) => return Err(missing()),
                other => other.context("cannot create API key")?,
            };
            Ok(if json {
                let mut value = key_json(&record);
                value["tenant_id"] = json!(owner.tenant_id);
                value["key"] = json!(key.expose());
                to_json(&value)?
            } else {
                format!(
                    "Created API key {id} for project {project} (tenant {tenant}):\n\n    \
                     {key}\n\n\
                     Copy it now: it cannot be shown again, only a hash of it is stored.\n\
                     Send it as: Authorization: Bearer {key}\n",
                    id = record.id,
                    tenant = owner.tenant_id,
                    key = key.expose()
                )
            })
        }
        KeysCommand::List {
            project,
            json,
            database,
        } => {
            let store = database.connect().await?;
            let keys = store
                .list_api_keys(project)
                .await
                .context("cannot list API keys")?;
            if json {
                return to_json(&keys.iter().map(key_json).collect::<Vec<_>>());
            }
            if keys.is_empty() {
                return Ok(
                    "No API keys. Create one with: sonzai-webhooks keys create --project PROJECT_ID\n"
                        .to_owned(),
                );
            }
            Ok(table(
                &["ID", "PROJECT", "KEY PREFIX", "CREATED", "REVOKED"],
                keys.iter()
                    .map(|k| {
                        vec![
                            k.id.to_string(),
                            k.project_id.to_string(),
                            key_prefix(k),
                            timestamp(&k.created_at),
                            k.revoked_at
                                .as_ref()
                                .map_or_else(|| "-".to_owned(), timestamp),
                        ]
                    })
                    .collect(),
            ))
        }
        KeysCommand::Revoke {
            key_id,
            json,
            database,
        } => {
            let store = database.connect().await?;
            match store.revoke_api_key(key_id).await {
                Err(StoreError::NotFound) => anyhow::bail!(
                    "API key {key_id} does not exist (`sonzai-webhooks keys list` shows key ids)"
                ),
                other => other.context("cannot revoke API key")?,
            }
            Ok(if json {
                to_json(&json!({ "id": key_id, "revoked": true }))?
            } else {
                format!(
                    "Revoked API key {key_id}; running servers refuse it within {}.\n",
                    crate::duration::format(crate::auth::KEY_CACHE_TTL)
                )
            })
        }
    }
}

/// Names are free text for humans, but a blank name or one with control characters
/// (which would garble the tables) is a mistake worth catching.
fn parse_name(input: &str) -> Result<String, String> {
    const MAX_CHARS: usize = 200;
    let name = input.trim();
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.chars().count() > MAX_CHARS {
        return Err(format!("must be at most {MAX_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

/// The public, recognisable start of a key: enough to match it against a key in a
/// config file, useless for authenticating.
fn key_prefix(record: &ApiKeyRecord) -> String {
    format!("{KEY_PREFIX}{}_", record.lookup_id)
}

fn tenant_json(tenant: &Tenant) -> serde_json::Value {
    json!({
        "id": tenant.id,
        "name": tenant.name,
        "created_at": tenant.created_at,
    })
}

fn project_json(project: &Project) -> serde_json::Value {
    json!({
        "id": project.id,
        "tenant_id": project.tenant_id,
        "name": project.name,
        "created_at": project.created_at,
    })
}

fn key_json(record: &ApiKeyRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "project_id": record.project_id,
        "lookup_id": record.lookup_id,
        "prefix": key_prefix(record),
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    })
}

fn to_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    Ok(text)
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A plain left-aligned table: columns padded to their widest cell, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells = headers.iter().map(|h| (*h).to_owned());
    for cells in std::iter::once(header_cells.collect::<Vec<_>>()).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let padding = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', padding));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use std::path::PathBuf;

    /// Removes every environment binding, recursively, so the test environment (CI
    /// may well set DATABASE_URL) cannot change what a command line means.
    fn without_env(command: clap::Command) -> clap::Command {
        let names: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        let mut command = command.mut_args(|arg| arg.env(None::<&'static str>));
        for name in names {
            command = command.mut_subcommand(name, without_env);
        }
        command
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = without_env(Cli::command()).try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_config_flags() {
        let cli = parse(&[
            "sonzai-webhooks",
            "serve",
            "--listen",
            "0.0.0.0:9999",
            "--data-dir",
            "/tmp/hooks",
            "--lease",
            "45s",
        ])
        .unwrap();
        let Command::Serve(config) = cli.command else {
            panic!("expected serve, got {:?}", cli.command)
        };
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.database.data_dir, PathBuf::from("/tmp/hooks"));
        assert_eq!(config.lease, std::time::Duration::from_secs(45));
        assert_eq!(
            config.database.url(),
            "sqlite:///tmp/hooks/sonzai-webhooks.db"
        );
    }

    #[test]
    fn log_flags_are_global() {
        let before =
            parse(&["sonzai-webhooks", "--log-format", "json", "tenants", "list"]).unwrap();
        assert_eq!(before.log.log_format, LogFormat::Json);
        let after = parse(&["sonzai-webhooks", "keys", "list", "--log", "debug"]).unwrap();
        assert_eq!(after.log.log, "debug");
        assert_eq!(after.log.log_format, LogFormat::Text);
    }

    #[test]
    fn admin_commands_parse() {
        let tenant = Uuid::new_v4();
        let cli = parse(&[
            "sonzai-webhooks",
            "projects",
            "create",
            "--tenant",
            &tenant.to_string(),
            "--name",
            "  production ",
            "--json",
            "--database-url",
            "postgres://localhost/x",
        ])
        .unwrap();
        match cli.command {
            Command::Projects(ProjectsCommand::Create {
                tenant: parsed,
                name,
                json,
                database,
            }) => {
                assert_eq!(parsed, tenant);
                assert_eq!(name, "production");
                assert!(json);
                assert_eq!(database.url(), "postgres://localhost/x");
            }
            other => panic!("unexpected {other:?}"),
        }

        let key = Uuid::new_v4();
        let cli = parse(&["sonzai-webhooks", "keys", "revoke", &key.to_string()]).unwrap();
        match cli.command {
            Command::Keys(KeysCommand::Revoke {
                key_id,
                json,
                database,
            }) => {
                assert_eq!(key_id, key);
                assert!(!json);
                assert!(database.is_embedded());
            }
            other => panic!("unexpected {other:?}"),
        }

        let cli = parse(&["sonzai-webhooks", "keys", "list"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Keys(KeysCommand::List { project: None, .. })
        ));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let cases: &[&[&str]] = &[
            &["sonzai-webhooks"],
            &["sonzai-webhooks", "tenants"],
            &["sonzai-webhooks", "tenants", "create"],
            &["sonzai-webhooks", "tenants", "create", "--name", "   "],
            &["sonzai-webhooks", "tenants", "create", "--name", "a\u{7}b"],
            &["sonzai-webhooks", "projects", "create", "--name", "p"],
            &[
                "sonzai-webhooks",
                "projects",
                "create",
                "--tenant",
                "nope",
                "--name",
                "p",
            ],
            &["sonzai-webhooks", "keys", "revoke"],
            &["sonzai-webhooks", "keys", "revoke", "sk_abc"],
            &["sonzai-webhooks", "serve", "--workers", "many"],
            &["sonzai-webhooks", "serve", "--log-format", "xml"],
            &["sonzai-webhooks", "frobnicate"],
        ];
        for args in cases {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn help_explains_with_examples() {
        let mut command = Cli::command();
        let help = command.render_long_help().to_string();
        assert!(help.contains("Quick start"), "{help}");
        for sub in ["serve", "tenants", "projects", "keys"] {
            assert!(help.contains(sub), "{sub} missing from help");
        }
        let serve = command
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(serve.contains("SONZAI_RETRY_SCHEDULE"), "{serve}");
        assert!(serve.contains("Examples:"), "{serve}");
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(parse_name("  acme "), Ok("acme".to_owned()));
        assert_eq!(parse_name("Ünïcødé ok"), Ok("Ünïcødé ok".to_owned()));
        assert!(parse_name("").is_err());
        assert!(parse_name("a\nb").is_err());
        assert!(parse_name(&"x".repeat(201)).is_err());
        assert!(parse_name(&"x".repeat(200)).is_ok());
    }

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["ID", "NAME"],
            vec![
                vec!["1".to_owned(), "short".to_owned()],
                vec!["22222".to_owned(), "é".to_owned()],
            ],
        );
        assert_eq!(out, "ID     NAME\n1      short\n22222  é\n");
    }
}
