//! The delivery-log portal: server-rendered pages where a project owner sees the
//! project's webhooks and attempts and acts on them, over the same store and the same
//! operations as the API ([`Api`]); there is no second API.
//!
//! Access. `createPortalSession` hands out a link with a single-use token (stored as
//! its SHA-256 hash). Opening it shows a button; pressing it exchanges the token for a
//! session (the link previewers of chat apps fetch links, and a fetch must not use
//! up the link). The session is a random token in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` when the portal is reached over TLS) whose path is the project's
//! pages, `/portal/p/{project}/`, so a browser holding sessions of two projects sends
//! each only to its own pages; the server checks the session's project on every
//! request anyway. Every form that changes anything carries a CSRF token derived from
//! the session, and a request from another origin is refused.

mod html;
mod pages;

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::api::Api;
use crate::store::portal::{new_token, token_hash, PortalEntry};
use crate::store::WebhookStore;

use html::esc;

/// The session cookie's name.
const COOKIE: &str = "sonzai_portal";

/// The CSRF token of a session: derived from the session's secret, so it needs no
/// storage, and useless without the cookie it belongs to.
fn csrf_token(session_token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"sonzai-portal-csrf\0");
    hasher.update(session_token.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

#[derive(Clone)]
pub(crate) struct Portal {
    api: Arc<Api>,
    store: Arc<dyn WebhookStore>,
    /// The public URL is https: cookies are `Secure` whatever the request says.
    tls: bool,
}

/// The portal's routes, all under `/portal`.
pub(crate) fn router(
    api: Arc<Api>,
    store: Arc<dyn WebhookStore>,
    public_url: Option<&str>,
) -> Router {
    let portal = Portal {
        api,
        store,
        tls: public_url.is_some_and(|u| u.starts_with("https://")),
    };
    Router::new()
        .route("/portal/assets/portal.css", get(html::stylesheet))
        .route("/portal/assets/portal.js", get(html::script))
        .route("/portal/enter", get(enter_page).post(enter))
        .route("/portal/p/{project}/", get(pages::webhooks))
        .route(
            "/portal/p/{project}/webhooks/{event_type}",
            get(pages::webhook),
        )
        .route(
            "/portal/p/{project}/attempts/{attempt}",
            get(pages::attempt),
        )
        .route(
            "/portal/p/{project}/webhooks/{event_type}/delete",
            get(pages::confirm_delete).post(pages::delete),
        )
        .route(
            "/portal/p/{project}/webhooks/{event_type}/{action}",
            axum::routing::post(pages::act),
        )
        .route(
            "/portal/p/{project}/sign-out",
            axum::routing::post(sign_out),
        )
        .with_state(portal)
}

#[derive(Deserialize)]
struct EnterQuery {
    token: Option<String>,
}

/// What a link that opens nothing says, by reason.
fn link_refused(entry: PortalEntry) -> Response {
    match entry {
        PortalEntry::Used => html::message(
            StatusCode::GONE,
            "This link was used already",
            "A portal link opens the portal once, in the browser that used it first. \
             Ask for a new link.",
        ),
        PortalEntry::Expired => html::message(
            StatusCode::GONE,
            "This link has expired",
            "Portal links work for a limited time. Ask for a new link.",
        ),
        _ => html::message(
            StatusCode::NOT_FOUND,
            "This link is not valid",
            "Check that the whole link was copied, or ask for a new one.",
        ),
    }
}

/// The page a link opens: a button that uses the link (fetching the page does not).
async fn enter_page(
    State(portal): State<Portal>,
    query: Result<Query<EnterQuery>, QueryRejection>,
) -> Response {
    let Some(token) = query.ok().and_then(|q| q.0.token).filter(|t| !t.is_empty()) else {
        return link_refused(PortalEntry::Unknown);
    };
    match portal.store.portal().peek_link(token_hash(&token)).await {
        Ok(PortalEntry::Open {
            project_id,
            expires_at,
        }) => {
            let name = project_name(&portal, project_id).await;
            html::page(
                StatusCode::OK,
                html::Frame {
                    title: "Open the delivery log",
                    project: None,
                },
                &format!(
                    "<section class=\"message\"><h1>Delivery log of {}</h1>\
                     <p>This link opens the webhooks and deliveries of this project in this \
                     browser, until {}. It works once.</p>\
                     <form method=\"post\" action=\"/portal/enter\">\
                     <input type=\"hidden\" name=\"token\" value=\"{}\">\
                     <button type=\"submit\" id=\"open\">Open the delivery log</button></form>\
                     </section>",
                    esc(&name),
                    html::time(expires_at),
                    esc(&token)
                ),
            )
        }
        Ok(other) => link_refused(other),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct EnterForm {
    token: Option<String>,
}

/// Uses the link: a session cookie scoped to the project, then its webhooks.
async fn enter(
    State(portal): State<Portal>,
    headers: HeaderMap,
    form: Result<Form<EnterForm>, FormRejection>,
) -> Response {
    let Some(token) = form.ok().and_then(|f| f.0.token).filter(|t| !t.is_empty()) else {
        return link_refused(PortalEntry::Unknown);
    };
    let (session, session_hash) = new_token("sps_");
    match portal
        .store
        .portal()
        .enter(token_hash(&token), session_hash)
        .await
    {
        Ok(PortalEntry::Open {
            project_id,
            expires_at,
        }) => {
            let max_age = (expires_at - Utc::now()).num_seconds().max(1);
            let secure = if portal.tls || forwarded_tls(&headers) {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{COOKIE}={session}; Path=/portal/p/{project_id}/; Max-Age={max_age}; \
                 HttpOnly; SameSite=Strict{secure}"
            );
            see_other(&format!("/portal/p/{project_id}/"), Some(cookie))
        }
        Ok(other) => link_refused(other),
        Err(e) => internal(e),
    }
}

/// Ends the session: on the server, and in this browser by dropping the cookie.
async fn sign_out(
    State(portal): State<Portal>,
    Path(project): Path<String>,
    headers: HeaderMap,
    form: Result<Form<pages::ActionForm>, FormRejection>,
) -> Response {
    let session = match Session::check(
        &portal,
        &project,
        &headers,
        form.as_ref().ok().map(|f| &f.0),
    )
    .await
    {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    if let Some(token) = cookie(&headers) {
        if let Err(e) = portal.store.portal().end_session(token_hash(token)).await {
            return internal(e);
        }
    }
    let cookie = format!(
        "{COOKIE}=; Path=/portal/p/{}/; Max-Age=0; HttpOnly; SameSite=Strict",
        session.project_id
    );
    let mut response = html::message(
        StatusCode::OK,
        "Signed out",
        "This browser no longer has a session for the project. Open a new link to come back.",
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `X-Forwarded-Proto: https` from a proxy that ends TLS in front of the server.
fn forwarded_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A signed-in request: the session's project, which the path names.
pub(crate) struct Session {
    pub project_id: Uuid,
    pub project_name: String,
    pub expires_at: DateTime<Utc>,
    pub csrf: String,
}

impl Session {
    /// The session of a page of `project` (the path segment), or the page that says
    /// why there is none. With `form`, the request changes something: its CSRF token
    /// must match and it must come from the portal's own pages.
    async fn check(
        portal: &Portal,
        project: &str,
        headers: &HeaderMap,
        form: Option<&pages::ActionForm>,
    ) -> Result<Session, Response> {
        let not_signed_in = || {
            html::message(
                StatusCode::UNAUTHORIZED,
                "No session for this project",
                "This browser has no open session for this project, or it has ended. \
                 Open a new portal link for the project.",
            )
        };
        let Ok(project_id) = Uuid::parse_str(project) else {
            return Err(not_signed_in());
        };
        let Some(token) = cookie(headers) else {
            return Err(not_signed_in());
        };
        let (session_project, expires_at) =
            match portal.store.portal().session(token_hash(token)).await {
                Ok(Some(found)) => found,
                Ok(None) => return Err(not_signed_in()),
                Err(e) => return Err(internal(e)),
            };
        // A session is for one project: another project's path is refused like no
        // session at all.
        if session_project != project_id {
            return Err(not_signed_in());
        }
        let csrf = csrf_token(token);
        if let Some(form) = form {
            let sent = form.csrf.as_deref().unwrap_or_default();
            let same =
                sent.len() == csrf.len() && bool::from(sent.as_bytes().ct_eq(csrf.as_bytes()));
            if !same || cross_site(headers) {
                tracing::info!(
                    csrf_matches = same,
                    "portal form refused: not from this session's pages"
                );
                return Err(html::message(
                    StatusCode::FORBIDDEN,
                    "This form cannot be sent",
                    "The form did not come from this session's pages. Reload the page and \
                     try again.",
                ));
            }
        }
        Ok(Session {
            project_id,
            project_name: project_name(portal, project_id).await,
            expires_at,
            csrf,
        })
    }

    pub fn frame<'a>(&'a self, title: &'a str) -> html::Frame<'a> {
        html::Frame {
            title,
            project: Some((&self.project_name, self.project_id, self.expires_at)),
        }
    }

    /// The hidden CSRF field of a form.
    pub fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            self.csrf
        )
    }
}

/// A request a browser says came from another site, or whose `Origin` is not the
/// host it was sent to.
fn cross_site(headers: &HeaderMap) -> bool {
    let value = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return true;
    }
    match (value(header::ORIGIN), value(header::HOST)) {
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            origin_host != Some(host)
        }
        // Browsers send Origin with every POST; a request without one is not a
        // browser's cross-site form.
        _ => false,
    }
}

/// The session token of the portal cookie, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

async fn project_name(portal: &Portal, project_id: Uuid) -> String {
    match portal.store.get_project(project_id).await {
        Ok(Some(p)) => p.name,
        _ => project_id.to_string(),
    }
}

/// A 303 to `location`, setting `cookie` if given.
pub(crate) fn see_other(location: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A store failure: logged, and a page without its text.
pub(crate) fn internal(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "portal store error");
    html::message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The server could not read its database. Try again in a moment.",
    )
}
