//! The portal's HTML: escaping, the page frame and its headers, and the embedded
//! stylesheet and script (served from the binary, so the strict content security
//! policy allows nothing from elsewhere and no inline code).

use std::fmt::Write as _;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

/// Text made safe for HTML element content and double-quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value, percent-encoded (everything but RFC 3986's
/// unreserved characters).
pub fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An instant shown in UTC, which the script turns into the viewer's locale.
pub fn time(at: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The hidden field the script fills with the viewer's UTC offset, so the times typed
/// into a form are read in the viewer's time zone (in UTC without the script).
pub const TZ_FIELD: &str = "<input type=\"hidden\" name=\"tz\" value=\"\" data-tz>";

/// What the page header says about the session.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The project's name and id, and the session's expiry, when signed in.
    pub project: Option<(&'a str, uuid::Uuid, DateTime<Utc>)>,
}

/// A whole page: the frame around `body`, with the portal's headers.
pub fn page(status: StatusCode, frame: Frame<'_>, body: &str) -> Response {
    let mut html = String::with_capacity(body.len() + 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Webhooks</title>\
         <link rel=\"stylesheet\" href=\"/portal/assets/portal.css\">\
         <script src=\"/portal/assets/portal.js\" defer></script></head><body>\
         <header><span class=\"brand\">Webhooks</span>",
        esc(frame.title)
    );
    if let Some((name, id, expires)) = frame.project {
        let _ = write!(
            html,
            "<a class=\"project\" href=\"/portal/p/{id}/\">{}</a>\
             <span class=\"expiry\">session ends {}</span>",
            esc(name),
            time(expires)
        );
    }
    html.push_str("</header><main>");
    html.push_str(body);
    html.push_str("</main></body></html>");
    (status, headers(), html).into_response()
}

/// The headers of every portal page: never cached (pages show secrets and live
/// state), never framed or sniffed, a referrer only to this server (a link's token
/// must not travel; `no-referrer` would also make browsers send `Origin: null`, which
/// the forms' origin check refuses), and nothing loaded from anywhere but this server.
pub fn headers() -> [(header::HeaderName, HeaderValue); 6] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

/// A page that explains why it cannot show what was asked, and what to do.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        Frame {
            title,
            project: None,
        },
        &format!(
            "<section class=\"message\"><h1>{}</h1><p>{}</p></section>",
            esc(title),
            esc(text)
        ),
    )
}

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

const STYLESHEET: &str = r#"
:root { --fg: #1d232b; --muted: #5d6673; --line: #dde1e6; --bg: #f6f7f9; --ok: #17703a;
  --bad: #b3261e; --warn: #8a5a00; --accent: #2450b2; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1rem; align-items: baseline; padding: .7rem 1.5rem;
  background: #fff; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; }
header .project { font-weight: 600; color: var(--accent); text-decoration: none; }
header .expiry { margin-left: auto; color: var(--muted); font-size: .85rem; }
main { max-width: 72rem; margin: 1.5rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.35rem; margin: 0 0 1rem; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 .6rem; }
a { color: var(--accent); }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); }
td.url, code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85rem; }
td.url { word-break: break-all; }
pre { background: #fff; border: 1px solid var(--line); padding: .7rem; overflow: auto;
  max-height: 28rem; white-space: pre-wrap; word-break: break-all; }
.badge { display: inline-block; padding: 0 .45rem; border-radius: .6rem; font-size: .8rem;
  font-weight: 600; }
.ok { color: var(--ok); background: #e3f4e8; }
.bad { color: var(--bad); background: #fbe6e4; }
.warn { color: var(--warn); background: #fbf0d9; }
.muted { color: var(--muted); }
.notice { padding: .6rem .9rem; background: #e8effc; border: 1px solid #c5d5f5; margin-bottom: 1rem; }
.error { padding: .6rem .9rem; background: #fbe6e4; border: 1px solid #f0c2bd; margin-bottom: 1rem; }
.secret { font-size: 1rem; padding: .6rem; background: #fff; border: 1px dashed var(--warn); }
.empty { padding: 1.2rem; background: #fff; border: 1px dashed var(--line); }
.actions { display: flex; flex-wrap: wrap; gap: .8rem; }
.actions form, form.card { background: #fff; border: 1px solid var(--line); padding: .7rem .8rem; }
form.inline { display: inline; margin: 0; }
form.filters { display: flex; flex-wrap: wrap; gap: .6rem; align-items: end; margin-bottom: .8rem; }
label { display: block; font-size: .8rem; color: var(--muted); }
input, select, button { font: inherit; padding: .25rem .45rem; }
button { cursor: pointer; border: 1px solid var(--accent); background: var(--accent); color: #fff;
  border-radius: .25rem; }
button.secondary { background: #fff; color: var(--accent); }
button.danger { border-color: var(--bad); background: var(--bad); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1.2rem; background: #fff;
  border: 1px solid var(--line); padding: .8rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; word-break: break-all; }
.pager { display: flex; gap: 1rem; margin-top: .8rem; }
.message { max-width: 36rem; margin: 4rem auto; background: #fff; border: 1px solid var(--line);
  padding: 1.5rem; }
"#;

/// Times in the viewer's locale, default times of forms in the viewer's zone, the
/// viewer's UTC offset in the forms that read times, and an optional live refresh of
/// an attempts list.
const SCRIPT: &str = r#"
document.querySelectorAll('time[datetime]').forEach(function (t) {
  var d = new Date(t.getAttribute('datetime'));
  if (!isNaN(d)) { t.title = t.textContent; t.textContent = d.toLocaleString(); }
});
document.querySelectorAll('input[data-utc]').forEach(function (i) {
  var d = new Date(i.getAttribute('data-utc'));
  if (!isNaN(d)) {
    i.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
});
document.querySelectorAll('input[data-tz]').forEach(function (i) {
  i.value = String(new Date().getTimezoneOffset());
});
document.querySelectorAll('[data-tz-note]').forEach(function (n) {
  n.textContent = 'in your time zone';
});
var live = document.querySelector('input[data-live]');
if (live) {
  live.checked = localStorage.getItem('portal-live') === '1';
  live.addEventListener('change', function () {
    localStorage.setItem('portal-live', live.checked ? '1' : '0');
  });
  setInterval(function () { if (live.checked) { location.reload(); } }, 5000);
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_urls_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(enc("order.paid"), "order.paid");
        assert_eq!(enc("a/b c?&"), "a%2Fb%20c%3F%26");
        assert_eq!(enc("é"), "%C3%A9");
    }
}
