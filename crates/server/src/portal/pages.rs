//! The portal's pages and actions. Reads go to the store (the portal's own reads in
//! [`crate::store::portal`]); every change goes through the same [`crate::api::Api`]
//! operation the HTTP API runs, so the portal can do nothing the API cannot.

use std::fmt::Write as _;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use sonzai_webhooks_api::models::RecoverWebhookInputBody;
use sonzai_webhooks_api::Problem;
use uuid::Uuid;

use super::html::{self, enc, esc, time, TZ_FIELD};
use super::{internal, see_other, Portal, Session};
use crate::api::Controls;
use crate::store::portal::{AttemptFilter, PortalWebhook};
use crate::store::{Attempt, AttemptStatus, AttemptTrigger};

/// Attempts on one page of a webhook.
const PAGE: i64 = 50;

/// The fields of every portal form; each action reads the ones it needs.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    pub csrf: Option<String>,
    event_id: Option<String>,
    grace_seconds: Option<String>,
    since: Option<String>,
    tz: Option<String>,
    include_missed: Option<String>,
    /// `preview` (a dry run) or `start`, for recover.
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    tz: Option<String>,
    before: Option<String>,
    notice: Option<String>,
}

/// Fixed texts of the notices an action redirects with (never text from the URL).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "resent" => "The event was queued again; its new attempt appears below once it is sent.",
        "recovering" => "The recovery started: matched events are being queued, oldest first.",
        "enabled" => "The webhook is active again; new events are delivered to it.",
        "test" => "A test event was published; its attempt appears below once it is sent.",
        "deleted" => "The webhook was deleted; its attempts stay listed by the API.",
        _ => return None,
    })
}

fn notice(code: Option<&str>) -> String {
    code.and_then(notice_text)
        .map(|t| format!("<p class=\"notice\" role=\"status\">{}</p>", esc(t)))
        .unwrap_or_default()
}

fn status_badge(status: AttemptStatus, code: i64) -> String {
    let code = if code == 0 {
        "no response".to_owned()
    } else {
        code.to_string()
    };
    match status {
        AttemptStatus::Success => format!("<span class=\"badge ok\">success</span> {code}"),
        AttemptStatus::Failed => format!("<span class=\"badge bad\">failed</span> {code}"),
    }
}

/// Whether a disabled webhook was switched off for failing or because its receiver
/// answered 410 Gone (the last attempt says which).
fn state(w: &PortalWebhook) -> String {
    if w.webhook.is_active {
        return "<span class=\"badge ok\">active</span>".to_owned();
    }
    let why = match w.last_attempt {
        Some(last) if last.response_code == 410 => "the receiver answered 410 Gone".to_owned(),
        _ if w.consecutive_failures > 0 => format!(
            "{} failed attempts in a row{}",
            w.consecutive_failures,
            w.first_failure_at
                .map(|t| format!(" since {}", time(t)))
                .unwrap_or_default()
        ),
        _ => "switched off".to_owned(),
    };
    format!("<span class=\"badge bad\">disabled</span> <span class=\"muted\">{why}</span>")
}

fn controls(w: &PortalWebhook) -> String {
    let mut parts = Vec::new();
    if let Some(rate) = w.webhook.rate_limit {
        parts.push(format!("{rate}/s"));
    }
    if w.webhook.ordered {
        parts.push("ordered".to_owned());
    }
    if parts.is_empty() {
        "<span class=\"muted\">—</span>".to_owned()
    } else {
        parts.join(", ")
    }
}

fn last_attempt(w: &PortalWebhook) -> String {
    match w.last_attempt {
        Some(last) => format!(
            "{} {}",
            status_badge(last.status, last.response_code),
            time(last.at)
        ),
        None => "<span class=\"muted\">none yet</span>".to_owned(),
    }
}

fn webhook_href(session: &Session, event_type: &str) -> String {
    format!(
        "/portal/p/{}/webhooks/{}",
        session.project_id,
        enc(event_type)
    )
}

/// The project's webhooks.
pub(crate) async fn webhooks(
    State(portal): State<Portal>,
    Path(project): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let session = match Session::check(&portal, &project, &headers, None).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let list = match portal.store.portal().webhooks(session.project_id).await {
        Ok(list) => list,
        Err(e) => return internal(e),
    };
    let mut body = String::new();
    body.push_str(&notice(
        query.as_ref().ok().and_then(|q| q.notice.as_deref()),
    ));
    body.push_str("<h1>Webhooks</h1>");
    if list.is_empty() {
        body.push_str(
            "<div class=\"empty\"><p>This project has no webhooks yet.</p><p>Register one \
             with the API, for example <code>PUT /webhooks/order.paid</code> with \
             <code>{\"webhook_url\": \"https://example.com/hooks\"}</code>; it is listed \
             here with its deliveries.</p></div>",
        );
    } else {
        body.push_str(
            "<table><thead><tr><th>Event type</th><th>URL</th><th>State</th>\
             <th>Failures in a row</th><th>Last attempt</th><th>Controls</th></tr></thead><tbody>",
        );
        for w in &list {
            let _ = write!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td class=\"url\">{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                webhook_href(&session, &w.webhook.event_type),
                esc(&w.webhook.event_type),
                esc(&w.webhook.webhook_url),
                state(w),
                w.consecutive_failures,
                last_attempt(w),
                controls(w)
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(
        body,
        "<form class=\"inline\" method=\"post\" action=\"/portal/p/{}/sign-out\">{}\
         <p><button class=\"secondary\" type=\"submit\">Sign out</button></p></form>",
        session.project_id,
        session.csrf_field()
    );
    html::page(StatusCode::OK, session.frame("Webhooks"), &body)
}

/// A `datetime-local` value (or an RFC 3339 instant) read in the viewer's time zone:
/// `tz` is the browser's `getTimezoneOffset()` (minutes behind UTC), UTC without it.
fn parse_instant(value: &str, tz: Option<&str>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Some(at.with_timezone(&Utc));
    }
    let local = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M"))
        .ok()?;
    let offset: i64 = tz
        .and_then(|t| t.trim().parse().ok())
        .filter(|m: &i64| m.abs() <= 24 * 60)
        .unwrap_or(0);
    Some(local.and_utc() + chrono::Duration::minutes(offset))
}

fn datetime_local(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M").to_string()
}

/// Paging position: `<unix micros>.<attempt id>` of the last attempt shown.
fn parse_before(value: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = value.split_once('.')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

fn not_found(session: &Session, what: &str) -> Response {
    html::page(
        StatusCode::NOT_FOUND,
        session.frame("Not found"),
        &format!(
            "<section class=\"message\"><h1>Not found</h1><p>{}</p>\
             <p><a href=\"/portal/p/{}/\">Back to the webhooks</a></p></section>",
            esc(what),
            session.project_id
        ),
    )
}

/// A problem an operation answered, as a page that says what it was.
fn refused(session: &Session, problem: Problem, back: &str) -> Response {
    let mut text = esc(&problem.detail);
    for e in problem.errors.iter().flatten() {
        let _ = write!(
            text,
            "<br><code>{}</code> {}",
            esc(e.location.as_deref().unwrap_or_default()),
            esc(e.message.as_deref().unwrap_or_default())
        );
    }
    let status = if problem.status.is_server_error() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        problem.status
    };
    html::page(
        status,
        session.frame("Not done"),
        &format!(
            "<section class=\"message\"><h1>Not done</h1><p class=\"error\">{text}</p>\
             <p><a href=\"{}\">Back</a></p></section>",
            esc(back)
        ),
    )
}

/// One webhook: its state, actions, and its attempts, newest first, filtered and paged.
pub(crate) async fn webhook(
    State(portal): State<Portal>,
    Path((project, event_type)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let session = match Session::check(&portal, &project, &headers, None).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let query = query.map(|q| q.0).unwrap_or_default();
    let w = match portal
        .store
        .portal()
        .webhook(session.project_id, &event_type)
        .await
    {
        Ok(Some(w)) => w,
        Ok(None) => {
            return not_found(
                &session,
                &format!("This project has no webhook for {event_type}."),
            )
        }
        Err(e) => return internal(e),
    };
    let status = match query.status.as_deref() {
        Some("success") => Some(AttemptStatus::Success),
        Some("failed") => Some(AttemptStatus::Failed),
        _ => None,
    };
    let tz = query.tz.as_deref();
    let since = query
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| parse_instant(s, tz));
    let until = query
        .until
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| parse_instant(s, tz));
    let before = query.before.as_deref().and_then(parse_before);
    let filter = AttemptFilter {
        status,
        since,
        until,
        before,
        limit: PAGE + 1,
    };
    let mut attempts = match portal
        .store
        .portal()
        .attempts(session.project_id, &event_type, &filter)
        .await
    {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let has_more = attempts.len() as i64 > PAGE;
    attempts.truncate(PAGE as usize);

    let href = webhook_href(&session, &event_type);
    let mut body = String::new();
    body.push_str(&notice(query.notice.as_deref()));
    let _ = write!(
        body,
        "<h1>{}</h1><dl><dt>URL</dt><dd><code>{}</code></dd><dt>State</dt><dd>{}</dd>\
         <dt>Failures in a row</dt><dd>{}</dd><dt>Last attempt</dt><dd>{}</dd>\
         <dt>Controls</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd></dl>",
        esc(&event_type),
        esc(&w.webhook.webhook_url),
        state(&w),
        w.consecutive_failures,
        last_attempt(&w),
        controls(&w),
        time(w.webhook.created_at)
    );
    body.push_str(&actions(&session, &w, &href));
    body.push_str("<h2>Attempts</h2>");
    body.push_str(&filters_form(&href, &query));
    if attempts.is_empty() {
        let hint = if status.is_some() || since.is_some() || until.is_some() || before.is_some() {
            format!(
                "No attempts match these filters. <a href=\"{}\">Show all attempts</a>.",
                esc(&href)
            )
        } else {
            format!(
                "No attempts yet. Publish an event of type <code>{}</code> \
                 (<code>POST /events</code>) or send a test event above; its attempts \
                 appear here.",
                esc(&event_type)
            )
        };
        let _ = write!(body, "<div class=\"empty\"><p>{hint}</p></div>");
    } else {
        body.push_str(
            "<table id=\"attempts\"><thead><tr><th>Time</th><th>Result</th><th>Try</th>\
             <th>Why</th><th>Duration</th><th>Event</th><th></th></tr></thead><tbody>",
        );
        for a in &attempts {
            body.push_str(&attempt_row(&session, a, &href, w.webhook.is_active));
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<div class=\"pager\">");
    if before.is_some() {
        let _ = write!(body, "<a href=\"{}\">Newest</a>", esc(&href));
    }
    if let (true, Some(last)) = (has_more, attempts.last()) {
        let mut next = format!(
            "{href}?before={}.{}",
            last.created_at.timestamp_micros(),
            last.id
        );
        for (name, value) in [
            ("status", query.status.as_deref()),
            ("since", query.since.as_deref()),
            ("until", query.until.as_deref()),
            ("tz", query.tz.as_deref()),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                let _ = write!(next, "&{name}={}", enc(v));
            }
        }
        let _ = write!(
            body,
            "<a href=\"{}\" id=\"older\">Older attempts</a>",
            esc(&next)
        );
    }
    body.push_str("</div>");
    html::page(StatusCode::OK, session.frame(&event_type), &body)
}

fn trigger_text(t: Option<AttemptTrigger>) -> &'static str {
    t.map_or("—", AttemptTrigger::as_str)
}

fn resend_form(session: &Session, href: &str, event_id: Uuid, label: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}/resend\">{}\
         <input type=\"hidden\" name=\"event_id\" value=\"{event_id}\">\
         <button class=\"secondary\" type=\"submit\">{label}</button></form>",
        esc(href),
        session.csrf_field()
    )
}

fn attempt_row(session: &Session, a: &Attempt, href: &str, active: bool) -> String {
    let resend = if active {
        resend_form(session, href, a.event_id, "Resend")
    } else {
        String::new()
    };
    format!(
        "<tr><td><a href=\"/portal/p/{}/attempts/{}\">{}</a></td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{} ms</td><td><code>{}</code></td><td>{resend}</td></tr>",
        session.project_id,
        a.id,
        time(a.created_at),
        status_badge(a.status, a.response_code),
        a.attempt_number,
        trigger_text(a.trigger),
        a.duration_ms,
        a.event_id
    )
}

fn filters_form(href: &str, query: &ListQuery) -> String {
    let selected = |v: &str| {
        if query.status.as_deref() == Some(v) {
            " selected"
        } else {
            ""
        }
    };
    // The times are shown back as typed, in the viewer's time zone like the offset
    // sent with them.
    let value = |t: Option<&str>| esc(t.unwrap_or_default());
    format!(
        "<form class=\"filters\" method=\"get\" action=\"{}\">\
         <div><label for=\"status\">Result</label><select id=\"status\" name=\"status\">\
         <option value=\"\">any</option><option value=\"success\"{}>success</option>\
         <option value=\"failed\"{}>failed</option></select></div>\
         <div><label for=\"since\">From (<span data-tz-note>UTC</span>)</label>\
         <input id=\"since\" name=\"since\" type=\"datetime-local\" value=\"{}\"></div>\
         <div><label for=\"until\">Until (<span data-tz-note>UTC</span>)</label>\
         <input id=\"until\" name=\"until\" type=\"datetime-local\" value=\"{}\"></div>{TZ_FIELD}\
         <div><button type=\"submit\">Filter</button></div>\
         <div><label><input type=\"checkbox\" data-live> refresh every 5 s</label></div></form>",
        esc(href),
        selected("success"),
        selected("failed"),
        value(query.since.as_deref()),
        value(query.until.as_deref())
    )
}

fn actions(session: &Session, w: &PortalWebhook, href: &str) -> String {
    let csrf = session.csrf_field();
    let href = esc(href);
    let mut out = String::from("<h2>Actions</h2><div class=\"actions\">");
    if w.webhook.is_active {
        let day_ago = Utc::now() - chrono::Duration::hours(24);
        let default_since = datetime_local(day_ago);
        let day_ago = day_ago.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let _ = write!(
            out,
            "<form method=\"post\" action=\"{href}/recover\">{csrf}{TZ_FIELD}\
             <input type=\"hidden\" name=\"mode\" value=\"preview\">\
             <label for=\"recover-since\">Deliver again what failed since \
             (<span data-tz-note>UTC</span>)</label>\
             <input id=\"recover-since\" name=\"since\" type=\"datetime-local\" \
             value=\"{default_since}\" data-utc=\"{day_ago}\" required>\
             <label><input type=\"checkbox\" name=\"include_missed\" value=\"1\"> also events \
             it never got</label>\
             <button type=\"submit\" id=\"recover\">Count them</button></form>"
        );
        if !crate::store::operator::is_reserved(&w.webhook.event_type) {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"{href}/test\">{csrf}\
                 <label>Publish a test event of this type</label>\
                 <button type=\"submit\" id=\"test\">Send a test event</button></form>"
            );
        }
    } else {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"{href}/enable\">{csrf}\
             <label>Deliver new events again (fix the receiver first)</label>\
             <button type=\"submit\" id=\"enable\">Enable</button></form>"
        );
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"{href}/rotate\">{csrf}\
         <label for=\"grace\">Old secret keeps signing for</label>\
         <select id=\"grace\" name=\"grace_seconds\"><option value=\"0\">no time</option>\
         <option value=\"3600\">1 hour</option><option value=\"86400\" selected>24 hours</option>\
         </select> <button type=\"submit\" id=\"rotate\">Rotate the secret</button></form>\
         <form method=\"get\" action=\"{href}/delete\"><label>Remove this webhook</label>\
         <button class=\"danger\" type=\"submit\" id=\"delete\">Delete…</button></form></div>"
    );
    out
}

/// One attempt in full: what was sent (secrets masked), what came back.
pub(crate) async fn attempt(
    State(portal): State<Portal>,
    Path((project, attempt_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let session = match Session::check(&portal, &project, &headers, None).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let Ok(attempt_id) = Uuid::parse_str(&attempt_id) else {
        return not_found(&session, "There is no such attempt in this project.");
    };
    let a = match portal
        .store
        .portal()
        .attempt(session.project_id, attempt_id)
        .await
    {
        Ok(Some(a)) => a,
        Ok(None) => return not_found(&session, "There is no such attempt in this project."),
        Err(e) => return internal(e),
    };
    let webhook = portal
        .store
        .get_webhook(session.project_id, &a.event_type)
        .await
        .ok()
        .flatten();
    let href = webhook_href(&session, &a.event_type);
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"{}\">← {}</a></p><h1>Attempt {} of event <code>{}</code></h1>\
         <dl><dt>Time</dt><dd>{}</dd><dt>Result</dt><dd>{}</dd><dt>Why</dt><dd>{}</dd>\
         <dt>Duration</dt><dd>{} ms</dd><dt>URL</dt><dd><code>{}</code></dd>\
         <dt>Error</dt><dd>{}</dd></dl>",
        esc(&href),
        esc(&a.event_type),
        a.attempt_number,
        a.event_id,
        time(a.created_at),
        status_badge(a.status, a.response_code),
        trigger_text(a.trigger),
        a.duration_ms,
        esc(&a.webhook_url),
        a.error_message
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "<span class=\"muted\">none</span>".to_owned())
    );
    // The headers are not stored; these are the ones every delivery carries, with
    // the signatures and Authorization masked.
    let sent_at = a.created_at.timestamp() - a.duration_ms / 1000;
    let mut sent = format!(
        "content-type: application/json\nuser-agent: sonzai-webhooks/{}\nwebhook-id: {}\n\
         webhook-timestamp: {sent_at} (about)\nwebhook-signature: v1,•••• (masked)\n\
         sonzai-signature: t={sent_at},v1=•••• (masked)",
        env!("CARGO_PKG_VERSION"),
        a.event_id
    );
    if webhook.as_ref().is_some_and(|w| w.auth_header.is_some()) {
        sent.push_str("\nauthorization: •••• (masked)");
    }
    let _ = write!(
        body,
        "<h2>Request headers</h2><pre id=\"request-headers\">{}</pre>\
         <h2>Request body</h2><pre id=\"request-body\">{}</pre>\
         <h2>Response body</h2>{}",
        esc(&sent),
        esc(&pretty(&a.request_body)),
        match a.response_body.as_deref() {
            Some(b) if !b.is_empty() => format!("<pre id=\"response-body\">{}</pre>", esc(b)),
            _ => "<p class=\"muted\">none</p>".to_owned(),
        }
    );
    if webhook.as_ref().is_some_and(|w| w.is_active) {
        let _ = write!(
            body,
            "<p>{}</p>",
            resend_form(&session, &href, a.event_id, "Resend this event")
        );
    }
    html::page(StatusCode::OK, session.frame("Attempt"), &body)
}

/// JSON pretty-printed, anything else as text.
fn pretty(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Asks before deleting.
pub(crate) async fn confirm_delete(
    State(portal): State<Portal>,
    Path((project, event_type)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let session = match Session::check(&portal, &project, &headers, None).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let href = webhook_href(&session, &event_type);
    html::page(
        StatusCode::OK,
        session.frame("Delete webhook"),
        &format!(
            "<section class=\"message\"><h1>Delete the webhook for {}?</h1>\
             <p>Its pending deliveries are cancelled and new events of this type are no \
             longer delivered. Its attempts stay in the log. Registering it again makes a \
             new signing secret.</p><form method=\"post\" action=\"{}/delete\">{}\
             <button class=\"danger\" type=\"submit\" id=\"confirm-delete\">Delete</button> \
             <a href=\"{}\">Keep it</a></form></section>",
            esc(&event_type),
            esc(&href),
            session.csrf_field(),
            esc(&href)
        ),
    )
}

pub(crate) async fn delete(
    State(portal): State<Portal>,
    Path((project, event_type)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    let session = match Session::check(&portal, &project, &headers, Some(&form)).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    match portal.api.delete(session.project_id, &event_type).await {
        Ok(()) => see_other(
            &format!("/portal/p/{}/?notice=deleted", session.project_id),
            None,
        ),
        Err(problem) => refused(
            &session,
            problem,
            &format!("/portal/p/{}/", session.project_id),
        ),
    }
}

/// The actions on a webhook: resend, recover, rotate, enable, test.
pub(crate) async fn act(
    State(portal): State<Portal>,
    Path((project, event_type, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    let session = match Session::check(&portal, &project, &headers, Some(&form)).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let href = webhook_href(&session, &event_type);
    let api = &portal.api;
    let project_id = session.project_id;
    let done = |code: &str| see_other(&format!("{href}?notice={code}"), None);
    match action.as_str() {
        "resend" => {
            let Some(event_id) = form
                .event_id
                .as_deref()
                .and_then(|e| Uuid::parse_str(e).ok())
            else {
                return refused(
                    &session,
                    Problem::invalid("event_id", "expected an event id"),
                    &href,
                );
            };
            match api.resend(project_id, &event_type, event_id).await {
                Ok(_) => done("resent"),
                Err(p) => refused(&session, p, &href),
            }
        }
        "recover" => recover(&portal, &session, &event_type, &href, &form).await,
        "rotate" => {
            let grace = form
                .grace_seconds
                .as_deref()
                .and_then(|g| g.parse::<i64>().ok())
                .filter(|g| (0..=86_400).contains(g));
            let Some(grace) = grace else {
                return refused(
                    &session,
                    Problem::invalid("grace_seconds", "expected 0 to 86400 seconds"),
                    &href,
                );
            };
            match api.rotate(project_id, &event_type, grace).await {
                Ok(rotated) => html::page(
                    StatusCode::OK,
                    session.frame("New signing secret"),
                    &format!(
                        "<section class=\"message\"><h1>New signing secret</h1>\
                         <p>Give it to the receiver now: it is shown this once.</p>\
                         <p class=\"secret\"><code id=\"new-secret\">{}</code></p><p>{}</p>\
                         <p><a href=\"{}\">Back to {}</a></p></section>",
                        esc(&rotated.signing_secret),
                        if grace > 0 {
                            format!(
                                "The old secret keeps signing, as a second signature, for {} \
                                 more {}.",
                                if grace >= 3600 { grace / 3600 } else { grace },
                                if grace >= 3600 { "hours" } else { "seconds" }
                            )
                        } else {
                            "The old secret no longer signs.".to_owned()
                        },
                        esc(&href),
                        esc(&event_type)
                    ),
                ),
                Err(p) => refused(&session, p, &href),
            }
        }
        "enable" => {
            let webhook = match portal.store.get_webhook(project_id, &event_type).await {
                Ok(Some(w)) => w,
                Ok(None) => {
                    return not_found(
                        &session,
                        &format!("This project has no webhook for {event_type}."),
                    )
                }
                Err(e) => return internal(e),
            };
            // An upsert with what is stored turns the webhook back on, secret kept.
            match api
                .upsert(
                    project_id,
                    &event_type,
                    &webhook.webhook_url,
                    webhook.auth_header.as_deref(),
                    Controls {
                        rate_limit: webhook.rate_limit,
                        ordered: Some(webhook.ordered),
                    },
                )
                .await
            {
                Ok(_) => done("enabled"),
                Err(p) => refused(&session, p, &href),
            }
        }
        "test" => {
            let data = serde_json::json!({
                "test": true,
                "message": "A test event sent from the delivery-log portal.",
            });
            match api.publish(project_id, &event_type, &data, None).await {
                Ok(_) => done("test"),
                Err(p) => refused(&session, p, &href),
            }
        }
        _ => not_found(&session, "There is no such action."),
    }
}

/// Recover: a dry run first, which shows the count and asks; then the recovery.
async fn recover(
    portal: &Portal,
    session: &Session,
    event_type: &str,
    href: &str,
    form: &ActionForm,
) -> Response {
    let Some(since) = form
        .since
        .as_deref()
        .and_then(|s| parse_instant(s, form.tz.as_deref()))
    else {
        return refused(
            session,
            Problem::invalid("since", "expected a date and time to recover from"),
            href,
        );
    };
    let missed = form.include_missed.is_some();
    let mut include = vec!["failed".to_owned()];
    if missed {
        include.push("missed".to_owned());
    }
    let preview = form.mode.as_deref() != Some("start");
    let body = RecoverWebhookInputBody {
        schema: None,
        since,
        until: None,
        include: Some(include),
        dry_run: Some(preview),
    };
    match portal
        .api
        .recover(session.project_id, event_type, body)
        .await
    {
        Ok((_, recovery)) if preview => {
            let what = if missed {
                "failed or were never delivered"
            } else {
                "failed"
            };
            let confirm = if recovery.matched == 0 {
                format!("<p><a href=\"{}\">Back</a></p>", esc(href))
            } else {
                format!(
                    "<form method=\"post\" action=\"{}/recover\">{}\
                     <input type=\"hidden\" name=\"mode\" value=\"start\">\
                     <input type=\"hidden\" name=\"since\" value=\"{}\">{}\
                     <button type=\"submit\" id=\"recover-start\">Queue {} events</button> \
                     <a href=\"{}\">Cancel</a></form>",
                    esc(href),
                    session.csrf_field(),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    if missed {
                        "<input type=\"hidden\" name=\"include_missed\" value=\"1\">"
                    } else {
                        ""
                    },
                    recovery.matched,
                    esc(href)
                )
            };
            html::page(
                StatusCode::OK,
                session.frame("Recover"),
                &format!(
                    "<section class=\"message\"><h1>Recover {}</h1>\
                     <p id=\"recover-count\"><strong>{}</strong> events since {} {what}.</p>\
                     {confirm}</section>",
                    esc(event_type),
                    recovery.matched,
                    time(since)
                ),
            )
        }
        Ok(_) => see_other(&format!("{href}?notice=recovering"), None),
        Err(p) => refused(session, p, href),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_times_are_read_in_the_viewers_zone() {
        let utc = parse_instant("2026-12-02T10:30", None).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-12-02T10:30:00+00:00");
        // getTimezoneOffset() is -60 in UTC+1: 10:30 there is 09:30 UTC.
        let plus_one = parse_instant("2026-12-02T10:30", Some("-60")).unwrap();
        assert_eq!(plus_one.to_rfc3339(), "2026-12-02T09:30:00+00:00");
        let exact = parse_instant("2026-12-02T10:30:00.5Z", Some("-60")).unwrap();
        assert_eq!(exact.timestamp_millis() % 1000, 500);
        assert_eq!(parse_instant("yesterday", None), None);
        // An offset past a day is not a time zone: read as UTC.
        assert_eq!(parse_instant("2026-12-02T10:30", Some("100000")), Some(utc));
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert!(notice(Some("resent")).contains("queued again"));
        assert_eq!(notice(Some("<script>")), "");
        assert_eq!(notice(None), "");
    }

    #[test]
    fn paging_positions_round_trip() {
        let id = Uuid::now_v7();
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let text = format!("{}.{id}", at.timestamp_micros());
        assert_eq!(parse_before(&text), Some((at, id)));
        assert_eq!(parse_before("garbage"), None);
    }
}
