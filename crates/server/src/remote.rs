//! The remote commands: `webhooks ...` and `events ...` call any server through the
//! generated client (`sonzai-webhooks-client`), the way a program using the API would.
//! Tables for people, `--json` for scripts (the API's JSON body, as answered); a
//! problem the server answers is shown as its title, detail and each error entry, and
//! the command exits non-zero.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::num::NonZeroU64;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use sonzai_webhooks_client::{types, Client, Error, ResponseValue};
use uuid::Uuid;

const WEBHOOKS_AFTER_HELP: &str = "\
Every command talks to a running server: --url (SONZAI_URL, default
http://127.0.0.1:8080) and --api-key (SONZAI_API_KEY). Without --project they act on
the API key's own project.

Examples:
  export SONZAI_API_KEY=sk_...
  sonzai-webhooks webhooks upsert session.end --webhook-url https://example.com/hook
  sonzai-webhooks webhooks list
  sonzai-webhooks webhooks attempts session.end --limit 20 --follow
  sonzai-webhooks webhooks rotate session.end --grace-seconds 3600
  sonzai-webhooks webhooks recover session.end --since 2026-12-01T00:00:00Z --dry-run
  sonzai-webhooks webhooks delete session.end";

const EVENTS_AFTER_HELP: &str = "\
Examples:
  sonzai-webhooks events publish session.end --data '{\"user_id\": \"u_1\"}'
  sonzai-webhooks events publish session.end --data '{}' --idempotency-key order-42
  sonzai-webhooks events resend session.end 0190f1a5-...";

/// Where the server is and who is calling.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The server's base URL (the API is under /api/v1).
    #[arg(
        long,
        env = "SONZAI_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The API key (`sk_...`).
    #[arg(
        long,
        env = "SONZAI_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: String,
    /// Act on this project of the key's tenant (the project-scoped routes) instead
    /// of the key's own project.
    #[arg(long, value_name = "PROJECT_ID")]
    pub project: Option<Uuid>,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

impl RemoteArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let base = format!("{}/api/v1", self.url.trim_end_matches('/'));
        Client::with_api_key(&base, &self.api_key).map_err(|e| anyhow!("{e}"))
    }
}

/// Calls an operation on the project route (`--project`) or on its tenant twin (the
/// key's own project), with the same builder calls after it, and reads the answer.
macro_rules! on_route {
    ($remote:expr, $client:expr, $project_op:ident, $tenant_op:ident $(, $call:ident($($arg:expr),*))*) => {
        match $remote.project {
            Some(project) => answered(
                $client.$project_op().project_id(project)$(.$call($($arg),*))*.send().await,
            ),
            None => answered($client.$tenant_op()$(.$call($($arg),*))*.send().await),
        }
    };
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List the project's webhooks.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Create or replace the webhook of an event type.
    Upsert {
        /// The event type it receives.
        event_type: String,
        /// Where deliveries go.
        #[arg(long, value_name = "URL")]
        webhook_url: String,
        /// Sent as the `Authorization` header of each delivery.
        #[arg(long, value_name = "VALUE")]
        auth_header: Option<String>,
        /// At most this many deliveries per second.
        #[arg(long, value_name = "N")]
        rate_limit: Option<NonZeroU64>,
        /// Deliver in publish order, one at a time.
        #[arg(long)]
        ordered: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete the webhook of an event type (its pending deliveries stop).
    Delete {
        event_type: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Rotate the webhook's signing secret and print the new one.
    Rotate {
        event_type: String,
        /// Keep signing with the old secret too for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        grace_seconds: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List the webhook's delivery attempts, newest first.
    Attempts {
        event_type: String,
        /// Attempts per page (the server's default when absent).
        #[arg(long, value_name = "N")]
        limit: Option<NonZeroU64>,
        /// Keep going: poll for new attempts and print them as they come (Ctrl-C
        /// stops).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Queue again the events of a window the webhook did not get.
    Recover {
        event_type: String,
        /// Start of the window (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: DateTime<Utc>,
        /// End of the window (RFC 3339; default now).
        #[arg(long, value_name = "TIME")]
        until: Option<DateTime<Utc>>,
        /// What to queue: failed, missed, or both (comma-separated).
        #[arg(
            long,
            value_name = "KINDS",
            value_delimiter = ',',
            default_value = "failed"
        )]
        include: Vec<String>,
        /// Only count what would be queued.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish an event.
    Publish {
        event_type: String,
        /// The event's data, a JSON object.
        #[arg(long, value_name = "JSON")]
        data: String,
        /// Publishing again with the same key answers the first event.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Queue one new delivery of a stored event to its webhook.
    Resend {
        event_type: String,
        event_id: Uuid,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

pub(crate) const fn webhooks_after_help() -> &'static str {
    WEBHOOKS_AFTER_HELP
}

pub(crate) const fn events_after_help() -> &'static str {
    EVENTS_AFTER_HELP
}

/// What a call answered: its JSON body, or the problem the server answered.
fn answered<T: Serialize>(
    result: Result<ResponseValue<T>, Error<types::ErrorModel>>,
) -> anyhow::Result<T> {
    match result {
        Ok(value) => Ok(value.into_inner()),
        Err(Error::ErrorResponse(problem)) => Err(anyhow!(describe(&problem))),
        Err(Error::UnexpectedResponse(response)) => Err(anyhow!(
            "the server answered {} without a problem body",
            response.status()
        )),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// A problem as people read it: status and title, detail, one line per error entry.
fn describe(problem: &types::ErrorModel) -> String {
    let mut text = format!(
        "{} {}",
        problem
            .status
            .map_or_else(|| "?".to_owned(), |s| s.to_string()),
        problem.title.as_deref().unwrap_or("error")
    );
    if let Some(detail) = &problem.detail {
        let _ = write!(text, ": {detail}");
    }
    for entry in problem.errors.iter().flatten() {
        let _ = write!(
            text,
            "\n  {}: {}",
            entry.location.as_deref().unwrap_or("request"),
            entry.message.as_deref().unwrap_or("invalid")
        );
    }
    text
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Aligned columns, a header line first.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

pub(crate) async fn webhooks(command: WebhooksCommand) -> anyhow::Result<String> {
    match command {
        WebhooksCommand::List { remote } => {
            let client = remote.client()?;
            let listed = on_route!(remote, client, list_webhooks, list_webhooks_for_tenant)?;
            if remote.json {
                return to_json(&listed);
            }
            let rows: Vec<Vec<String>> = listed
                .webhooks
                .iter()
                .flatten()
                .map(|w| {
                    let mut controls = Vec::new();
                    if let Some(rate) = w.rate_limit {
                        controls.push(format!("{rate}/s"));
                    }
                    if w.ordered == Some(true) {
                        controls.push("ordered".to_owned());
                    }
                    vec![
                        w.event_type.clone(),
                        if w.is_active { "active" } else { "disabled" }.to_owned(),
                        controls.join(" "),
                        w.webhook_url.clone(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                return Ok("no webhooks yet: add one with `webhooks upsert <EVENT_TYPE> --webhook-url URL`\n".to_owned());
            }
            Ok(table(&["EVENT TYPE", "STATE", "CONTROLS", "URL"], &rows))
        }
        WebhooksCommand::Upsert {
            event_type,
            webhook_url,
            auth_header,
            rate_limit,
            ordered,
            remote,
        } => {
            let client = remote.client()?;
            let upserted = match remote.project {
                Some(project) => {
                    let mut body = types::UpsertWebhookInputBody::builder()
                        .webhook_url(webhook_url)
                        .ordered(ordered)
                        .rate_limit(rate_limit);
                    if let Some(header) = auth_header {
                        body = body.auth_header(Some(
                            header
                                .try_into()
                                .map_err(|e| anyhow!("--auth-header: {e}"))?,
                        ));
                    }
                    answered(
                        client
                            .upsert_webhook()
                            .project_id(project)
                            .event_type(event_type.as_str())
                            .body(body)
                            .send()
                            .await,
                    )?
                }
                None => {
                    let mut body = types::UpsertWebhookForTenantInputBody::builder()
                        .webhook_url(webhook_url)
                        .ordered(ordered)
                        .rate_limit(rate_limit);
                    if let Some(header) = auth_header {
                        body = body.auth_header(Some(
                            header
                                .try_into()
                                .map_err(|e| anyhow!("--auth-header: {e}"))?,
                        ));
                    }
                    answered(
                        client
                            .upsert_webhook_for_tenant()
                            .event_type(event_type.as_str())
                            .body(body)
                            .send()
                            .await,
                    )?
                }
            };
            if remote.json {
                return to_json(&upserted);
            }
            Ok(match upserted.signing_secret {
                Some(secret) => {
                    format!("created webhook {event_type}\nsigning secret (shown once): {secret}\n")
                }
                None => format!("updated webhook {event_type}\n"),
            })
        }
        WebhooksCommand::Delete { event_type, remote } => {
            let client = remote.client()?;
            on_route!(
                remote,
                client,
                delete_webhook,
                delete_webhook_for_tenant,
                event_type(event_type.as_str())
            )?;
            if remote.json {
                // The API answers 204 without a body: nothing to print.
                return Ok(String::new());
            }
            Ok(format!("deleted webhook {event_type}\n"))
        }
        WebhooksCommand::Rotate {
            event_type,
            grace_seconds,
            remote,
        } => {
            let client = remote.client()?;
            let rotated = match remote.project {
                Some(project) => {
                    let mut call = client
                        .rotate_webhook_signing_secret()
                        .project_id(project)
                        .event_type(event_type.as_str());
                    if let Some(grace) = grace_seconds {
                        call = call.grace_seconds(grace as i64);
                    }
                    answered(call.send().await)?
                }
                None => {
                    let mut call = client
                        .rotate_webhook_signing_secret_for_tenant()
                        .event_type(event_type.as_str());
                    if let Some(grace) = grace_seconds {
                        call = call.grace_seconds(grace as i64);
                    }
                    answered(call.send().await)?
                }
            };
            if remote.json {
                return to_json(&rotated);
            }
            Ok(format!(
                "new signing secret of {event_type} (shown once): {}\n",
                rotated.signing_secret
            ))
        }
        WebhooksCommand::Attempts {
            event_type,
            limit,
            follow,
            remote,
        } => attempts(&remote, &event_type, limit, follow).await,
        WebhooksCommand::Recover {
            event_type,
            since,
            until,
            include,
            dry_run,
            remote,
        } => {
            let client = remote.client()?;
            let mut body = types::RecoverWebhookInputBody::builder()
                .since(since)
                .include(include)
                .dry_run(dry_run);
            if let Some(until) = until {
                body = body.until(Some(until));
            }
            let recovery = on_route!(
                remote,
                client,
                recover_webhook,
                recover_webhook_for_tenant,
                event_type(event_type.as_str()),
                body(body)
            )?;
            if remote.json {
                return to_json(&recovery);
            }
            Ok(if dry_run {
                format!("{} events would be queued again\n", recovery.matched)
            } else {
                format!(
                    "recovery {} {}: {} matched, {} queued so far\n",
                    recovery.recovery_id, recovery.status, recovery.matched, recovery.queued
                )
            })
        }
    }
}

/// One page of attempts, newest first, or with `follow`, the newest page and then
/// every new attempt as it is recorded.
async fn attempts(
    remote: &RemoteArgs,
    event_type: &str,
    limit: Option<NonZeroU64>,
    follow: bool,
) -> anyhow::Result<String> {
    let client = remote.client()?;
    let page = |cursor: Option<String>| {
        let client = &client;
        async move {
            match remote.project {
                Some(project) => {
                    let mut call = client
                        .list_delivery_attempts()
                        .project_id(project)
                        .event_type(event_type);
                    if let Some(limit) = limit {
                        call = call.limit(limit);
                    }
                    if let Some(cursor) = cursor {
                        call = call.cursor(cursor);
                    }
                    answered(call.send().await)
                }
                None => {
                    let mut call = client
                        .list_delivery_attempts_for_tenant()
                        .event_type(event_type);
                    if let Some(limit) = limit {
                        call = call.limit(limit);
                    }
                    if let Some(cursor) = cursor {
                        call = call.cursor(cursor);
                    }
                    answered(call.send().await)
                }
            }
        }
    };
    let first = page(None).await?;
    if !follow {
        if remote.json {
            return to_json(&first);
        }
        let attempts = first.attempts.unwrap_or_default();
        if attempts.is_empty() {
            return Ok(format!("no attempts for {event_type} yet\n"));
        }
        return Ok(attempt_table(&attempts, true));
    }
    // Following: print what there is, oldest first, then poll the newest page and
    // print the attempts not seen yet.
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut header = !remote.json;
    let mut batch = first.attempts.unwrap_or_default();
    loop {
        batch.retain(|a| seen.insert(a.attempt_id));
        batch.reverse();
        if !batch.is_empty() {
            let text = if remote.json {
                batch
                    .iter()
                    .map(|a| serde_json::to_string(a).map(|line| line + "\n"))
                    .collect::<Result<String, _>>()?
            } else {
                let text = attempt_table(&batch, header);
                header = false;
                text
            };
            crate::stdout::write_stdout(&text)?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        batch = page(None).await?.attempts.unwrap_or_default();
    }
}

/// The event an attempt delivered, read from the body it sent.
fn event_of(attempt: &types::WebhookDeliveryAttempt) -> String {
    use base64::Engine as _;
    // The body is sent as base64 (it is the exact bytes delivered).
    attempt
        .request_body
        .as_deref()
        .and_then(|body| base64::engine::general_purpose::STANDARD.decode(body).ok())
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .and_then(|body| body["event_id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn attempt_table(attempts: &[types::WebhookDeliveryAttempt], header: bool) -> String {
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            vec![
                time(&a.created_at),
                event_of(a),
                a.attempt_number.to_string(),
                a.status.clone(),
                a.response_code.to_string(),
                format!("{} ms", a.duration_ms),
                a.trigger.clone().unwrap_or_default(),
                a.error_message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let text = table(
        &[
            "TIME", "EVENT", "TRY", "STATUS", "CODE", "DURATION", "TRIGGER", "ERROR",
        ],
        &rows,
    );
    if header {
        text
    } else {
        text.split_once('\n')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default()
    }
}

pub(crate) async fn events(command: EventsCommand) -> anyhow::Result<String> {
    match command {
        EventsCommand::Publish {
            event_type,
            data,
            idempotency_key,
            remote,
        } => {
            let data: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&data).context("--data must be a JSON object")?;
            let client = remote.client()?;
            let published = match remote.project {
                Some(project) => {
                    let mut body = types::PublishEventInputBody::builder()
                        .event_type(event_type.clone())
                        .data(data);
                    if let Some(key) = idempotency_key {
                        body = body.idempotency_key(Some(
                            key.try_into()
                                .map_err(|e| anyhow!("--idempotency-key: {e}"))?,
                        ));
                    }
                    answered(
                        client
                            .publish_event()
                            .project_id(project)
                            .body(body)
                            .send()
                            .await,
                    )?
                }
                None => {
                    let mut body = types::PublishEventForTenantInputBody::builder()
                        .event_type(event_type.clone())
                        .data(data);
                    if let Some(key) = idempotency_key {
                        body = body.idempotency_key(Some(
                            key.try_into()
                                .map_err(|e| anyhow!("--idempotency-key: {e}"))?,
                        ));
                    }
                    answered(client.publish_event_for_tenant().body(body).send().await)?
                }
            };
            if remote.json {
                return to_json(&published);
            }
            Ok(format!(
                "published {event_type} event {} ({} deliveries started)\n",
                published.event_id, published.deliveries_started
            ))
        }
        EventsCommand::Resend {
            event_type,
            event_id,
            remote,
        } => {
            let client = remote.client()?;
            let resent = on_route!(
                remote,
                client,
                resend_event,
                resend_event_for_tenant,
                event_type(event_type.as_str()),
                event_id(event_id)
            )?;
            if remote.json {
                return to_json(&resent);
            }
            Ok(format!(
                "queued event {} again at {}\n",
                resent.event_id,
                time(&resent.queued_at)
            ))
        }
    }
}
