//! The delivery-log portal: its links, session cookie and CSRF protections over plain
//! HTTP on both backends, and its pages in a real browser (Chromium driven through
//! chromedriver), which also takes the screenshots in `docs/`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use sqlx::Connection as _;

use crate::delivery::{publish, upsert, verifies_with, wait_attempts, webhook, WAIT};
use crate::support::{self, Answer, Backend, Receiver, TestDb, TestServer};

/// A portal link of the server's tenant, made through the generated client.
async fn link(server: &TestServer, ttl_seconds: Option<i64>) -> String {
    let mut body = sonzai_webhooks_client::types::CreatePortalSessionInputBody::builder();
    if let Some(ttl) = ttl_seconds {
        body = body.ttl_seconds(ttl);
    }
    let made = server
        .client
        .create_portal_session()
        .project_id(server.tenant.project_id)
        .body(body)
        .send()
        .await
        .expect("create portal session");
    assert_eq!(made.status(), StatusCode::CREATED);
    made.into_inner().url
}

fn token_of(link: &str) -> String {
    link.split_once("token=")
        .expect("token in link")
        .1
        .to_owned()
}

/// A client that follows no redirects and keeps no cookies: each test says exactly
/// what it sends.
fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Uses `link` over HTTP: the session cookie (`name=value`) and its attributes.
async fn enter(server: &TestServer, link: &str) -> (String, String) {
    let answer = plain()
        .post(format!("http://{}/portal/enter", server.addr))
        .form(&[("token", token_of(link))])
        .send()
        .await
        .expect("enter");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        answer.headers()[LOCATION],
        format!("/portal/p/{}/", server.tenant.project_id).as_str()
    );
    let set = answer.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let pair = set.split(';').next().unwrap().trim().to_owned();
    (pair, set)
}

async fn get(server: &TestServer, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut request = plain().get(format!("http://{}{path}", server.addr));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let answer = request.send().await.expect("get");
    let status = answer.status();
    (status, answer.text().await.expect("page"))
}

async fn post(
    server: &TestServer,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = plain()
        .post(format!("http://{}{path}", server.addr))
        .header(COOKIE, cookie)
        .form(form);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let answer = request.send().await.expect("post");
    let status = answer.status();
    (status, answer.text().await.expect("page"))
}

/// The CSRF token the page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 32].to_owned()
}

/// Runs one statement on the test database, in each backend's spelling.
async fn exec(db: &TestDb, sqlite: &str, postgres: &str) {
    match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query(postgres)
                .execute(&mut conn)
                .await
                .expect("exec");
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query(sqlite).execute(&mut conn).await.expect("exec");
        }
    }
}

#[tokio::test]
async fn links_open_once_into_a_project_scoped_cookie_and_then_say_why_not() {
    for db in support::backends().await {
        let server = TestServer::start(&db).await;
        let url = link(&server, None).await;
        assert!(
            url.starts_with(&format!("http://{}/portal/enter?token=spl_", server.addr)),
            "{url}"
        );
        // Fetching the link (as a chat app's preview does) does not use it.
        for _ in 0..2 {
            let (status, page) = get(
                &server,
                url.split_once(&server.addr.to_string()).unwrap().1,
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert!(page.contains("Open the delivery log"), "{page}");
        }
        let (cookie, set) = enter(&server, &url).await;
        let project = server.tenant.project_id;
        assert!(cookie.starts_with("sonzai_portal=sps_"), "{set}");
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            &format!("Path=/portal/p/{project}/"),
        ] {
            assert!(set.contains(attribute), "{attribute} missing: {set}");
        }
        assert!(!set.contains("Secure"), "plain HTTP: {set}");
        let (status, page) = get(&server, &format!("/portal/p/{project}/"), Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("<h1>Webhooks</h1>"), "{page}");
        assert!(page.contains("no webhooks yet"), "the empty state: {page}");

        // A second use, an unknown token, an expired link: clear pages, not errors.
        let again = plain()
            .post(format!("http://{}/portal/enter", server.addr))
            .form(&[("token", token_of(&url))])
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::GONE);
        assert!(again
            .text()
            .await
            .unwrap()
            .contains("This link was used already"));
        let (status, page) = get(&server, "/portal/enter?token=spl_nothing", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(page.contains("This link is not valid"), "{page}");
        let (status, page) = get(&server, "/portal/enter", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{page}");
        let old = link(&server, Some(60)).await;
        exec(
            &db,
            "UPDATE portal_sessions SET expires_at = expires_at - 3600000000 WHERE used_at IS NULL",
            "UPDATE portal_sessions SET expires_at = expires_at - interval '1 hour' WHERE used_at IS NULL",
        )
        .await;
        let (status, page) = get(
            &server,
            old.split_once(&server.addr.to_string()).unwrap().1,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::GONE);
        assert!(page.contains("This link has expired"), "{page}");
        // An expired session is no session.
        exec(
            &db,
            "UPDATE portal_sessions SET expires_at = expires_at - 7200000000",
            "UPDATE portal_sessions SET expires_at = expires_at - interval '2 hours'",
        )
        .await;
        let (status, page) = get(&server, &format!("/portal/p/{project}/"), Some(&cookie)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(page.contains("No session for this project"), "{page}");
        // Only hashes are stored: neither the link's token nor the session's.
        let token = token_of(&url);
        let session = cookie.split_once('=').unwrap().1.to_owned();
        let stored = stored_tokens(&db).await;
        assert!(!stored
            .iter()
            .any(|s| s.contains(&token) || s.contains(&session)));
        server.shutdown().await;
    }
}

/// Every stored token column of portal_sessions, as text.
async fn stored_tokens(db: &TestDb) -> Vec<String> {
    let sql = "SELECT token_hash, session_hash FROM portal_sessions";
    let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query_as(sql).fetch_all(&mut conn).await
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query_as(sql).fetch_all(&mut conn).await
        }
    }
    .expect("read portal sessions");
    assert!(!rows.is_empty());
    rows.into_iter()
        .flat_map(|(t, s)| [Some(t), s])
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

#[tokio::test]
async fn a_session_of_one_project_never_reaches_another() {
    for db in support::backends().await {
        let server = TestServer::start(&db).await;
        let receiver = Receiver::start().await;
        let other = support::create_tenant(server.store.as_ref(), "tenant-b").await;
        let b = server.client_for(&other.key);
        b.upsert_webhook_for_tenant()
            .event_type("invoice.sent")
            .body(
                sonzai_webhooks_client::types::UpsertWebhookForTenantInputBody::builder()
                    .webhook_url(receiver.url("/b")),
            )
            .send()
            .await
            .expect("B's webhook");
        upsert(&server, "order.paid", &receiver.url("/a"), None).await;
        let (cookie, _) = enter(&server, &link(&server, None).await).await;
        let a = server.tenant.project_id;
        let (_, page) = get(&server, &format!("/portal/p/{a}/"), Some(&cookie)).await;
        assert!(page.contains("order.paid") && !page.contains("invoice.sent"));
        let csrf = csrf_of(&page);

        // A's cookie on B's pages: refused like no session, B's names never shown.
        let bp = other.project_id;
        for path in [
            format!("/portal/p/{bp}/"),
            format!("/portal/p/{bp}/webhooks/invoice.sent"),
        ] {
            let (status, page) = get(&server, &path, Some(&cookie)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(!page.contains("invoice.sent"), "{page}");
            assert!(page.contains("No session for this project"), "{page}");
        }
        let (status, _) = post(
            &server,
            &format!("/portal/p/{bp}/webhooks/invoice.sent/delete"),
            &cookie,
            None,
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let listed = b
            .list_webhooks_for_tenant()
            .send()
            .await
            .unwrap()
            .into_inner()
            .webhooks
            .unwrap_or_default();
        assert_eq!(listed.len(), 1, "B's webhook is still there");
        // Nor can A's session name B's attempts by id.
        let published = b
            .publish_event_for_tenant()
            .body(
                sonzai_webhooks_client::types::PublishEventForTenantInputBody::builder()
                    .event_type("invoice.sent")
                    .data(serde_json::json!({"b": 1})),
            )
            .send()
            .await
            .unwrap();
        receiver.wait_for(1, WAIT).await;
        let b_attempt = support::poll_until(WAIT, Duration::from_millis(50), || async {
            b.list_delivery_attempts_for_tenant()
                .event_type("invoice.sent")
                .send()
                .await
                .ok()?
                .into_inner()
                .attempts?
                .into_iter()
                .next()
        })
        .await
        .expect("B's attempt");
        let (status, page) = get(
            &server,
            &format!("/portal/p/{a}/attempts/{}", b_attempt.attempt_id),
            Some(&cookie),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!page.contains(&published.event_id.to_string()));
        // Nor resend B's event through A's webhook of another type.
        let (status, _) = post(
            &server,
            &format!("/portal/p/{a}/webhooks/order.paid/resend"),
            &cookie,
            None,
            &[
                ("csrf", &csrf),
                ("event_id", &published.event_id.to_string()),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn changes_need_the_sessions_csrf_token_and_its_own_origin() {
    for db in support::backends().await {
        let server = TestServer::start(&db).await;
        let receiver = Receiver::start().await;
        upsert(&server, "order.paid", &receiver.url("/a"), None).await;
        let event = publish(&server, "order.paid", serde_json::json!({"n": 1})).await;
        wait_attempts(&server, "order.paid", 1).await;
        let (cookie, _) = enter(&server, &link(&server, None).await).await;
        let a = server.tenant.project_id;
        let (_, page) = get(
            &server,
            &format!("/portal/p/{a}/webhooks/order.paid"),
            Some(&cookie),
        )
        .await;
        let csrf = csrf_of(&page);
        let resend = format!("/portal/p/{a}/webhooks/order.paid/resend");
        let event_id = event.event_id.to_string();
        let wrong = "0".repeat(32);
        let own = format!("http://{}", server.addr);
        for (token, origin, why) in [
            (None, None, "no token"),
            (Some(wrong.as_str()), None, "another token"),
            (
                Some(csrf.as_str()),
                Some("http://evil.example"),
                "another origin",
            ),
        ] {
            let mut form = vec![("event_id", event_id.as_str())];
            if let Some(token) = token {
                form.push(("csrf", token));
            }
            let (status, page) = post(&server, &resend, &cookie, origin, &form).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{why}: {page}");
            assert!(page.contains("This form cannot be sent"), "{why}: {page}");
        }
        // Another session's token does not fit this session.
        let (other_cookie, _) = enter(&server, &link(&server, None).await).await;
        let (_, other_page) = get(&server, &format!("/portal/p/{a}/"), Some(&other_cookie)).await;
        let other_csrf = csrf_of(&other_page);
        assert_ne!(other_csrf, csrf);
        let (status, _) = post(
            &server,
            &resend,
            &cookie,
            None,
            &[("csrf", &other_csrf), ("event_id", &event_id)],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(receiver.count(), 1, "nothing refused was resent");

        let (status, _) = post(
            &server,
            &resend,
            &cookie,
            Some(&own),
            &[("csrf", &csrf), ("event_id", &event_id)],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(
            receiver.wait_for(2, WAIT).await,
            2,
            "the resend was delivered"
        );
        // Bad input is a page saying so, and changes nothing.
        let (status, page) = post(
            &server,
            &resend,
            &cookie,
            None,
            &[("csrf", &csrf), ("event_id", "not-an-id")],
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
        let (status, _) = post(
            &server,
            &format!("/portal/p/{a}/webhooks/order.paid/rotate"),
            &cookie,
            None,
            &[("csrf", &csrf), ("grace_seconds", "99999999")],
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn signing_out_ends_the_session_on_the_server_too() {
    for db in support::backends().await {
        let server = TestServer::start(&db).await;
        let a = server.tenant.project_id;
        let (cookie, _) = enter(&server, &link(&server, None).await).await;
        let (kept, _) = enter(&server, &link(&server, None).await).await;
        let (status, page) = get(&server, &format!("/portal/p/{a}/"), Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        let sign_out = format!("/portal/p/{a}/sign-out");
        // Without the session's CSRF token, signing out is refused like any change.
        let (status, _) = post(&server, &sign_out, &cookie, None, &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = get(&server, &format!("/portal/p/{a}/"), Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "a refused sign-out ends nothing");

        let answer = plain()
            .post(format!("http://{}{sign_out}", server.addr))
            .header(COOKIE, &cookie)
            .form(&[("csrf", csrf_of(&page))])
            .send()
            .await
            .expect("sign out");
        assert_eq!(answer.status(), StatusCode::OK);
        let cleared = answer.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        // A copy of the cookie kept elsewhere opens nothing any more.
        let (status, page) = get(&server, &format!("/portal/p/{a}/"), Some(&cookie)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(page.contains("No session for this project"), "{page}");
        // Another session of the same project goes on.
        let (status, _) = get(&server, &format!("/portal/p/{a}/"), Some(&kept)).await;
        assert_eq!(status, StatusCode::OK);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn cookies_are_secure_behind_tls_and_links_use_the_public_url() {
    let db = TestDb::sqlite();
    let mut config = support::test_config(&db);
    config.public_url = Some("https://hooks.example.com".to_owned());
    let server = TestServer::start_with(&db, config).await;
    let url = link(&server, None).await;
    assert!(
        url.starts_with("https://hooks.example.com/portal/enter?token=spl_"),
        "{url}"
    );
    let (_, set) = enter(&server, &url).await;
    assert!(set.contains("; Secure"), "{set}");
    server.shutdown().await;

    // Without a public URL, a proxy that ended TLS says so.
    let db = TestDb::sqlite();
    let server = TestServer::start(&db).await;
    let url = link(&server, None).await;
    let answer = plain()
        .post(format!("http://{}/portal/enter", server.addr))
        .header("x-forwarded-proto", "https")
        .form(&[("token", token_of(&url))])
        .send()
        .await
        .unwrap();
    let set = answer.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("; Secure"), "{set}");
    server.shutdown().await;
}

/// chromedriver on a loopback port, with one headless Chromium session; `None` when
/// this machine has neither (and `SONZAI_REQUIRE_BROWSER` is not set).
struct Chrome {
    driver: Child,
    browser: Option<Browser>,
}

impl Chrome {
    async fn start() -> Option<Chrome> {
        let required = std::env::var_os("SONZAI_REQUIRE_BROWSER").is_some();
        let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = support::free_port();
        let spawned = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let driver = match spawned {
            Ok(child) => child,
            Err(e) => {
                assert!(
                    !required,
                    "SONZAI_REQUIRE_BROWSER is set but {driver} cannot start: {e}"
                );
                eprintln!(
                    "skipping the portal's browser test: {driver} cannot start ({e}); \
                     install Debian's chromium and chromium-driver"
                );
                return None;
            }
        };
        let mut chrome = Chrome {
            driver,
            browser: None,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut options = serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,960", "--lang=en-GB"]
        });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            options["binary"] = binary.into();
        } else if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(browser) => {
                chrome.browser = Some(browser);
                Some(chrome)
            }
            Err(e) => {
                assert!(
                    !required,
                    "SONZAI_REQUIRE_BROWSER is set but Chromium did not start: {e}"
                );
                eprintln!("skipping the portal's browser test: Chromium did not start ({e})");
                None
            }
        }
    }

    fn browser(&self) -> &Browser {
        self.browser.as_ref().expect("browser")
    }

    async fn close(mut self) {
        if let Some(browser) = self.browser.take() {
            let _ = browser.close().await;
        }
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go: `SONZAI_PORTAL_SCREENSHOTS` (`cargo xtask screenshots` sets
/// it to `docs/`); none otherwise.
struct Shots(Option<std::path::PathBuf>);

impl Shots {
    async fn take(&self, browser: &Browser, name: &str) {
        if let Some(dir) = &self.0 {
            let png = browser.screenshot().await.expect("screenshot");
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(dir.join(format!("portal-{name}.png")), png).expect("write screenshot");
        }
    }
}

async fn text(browser: &Browser, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(found) => found.text().await.expect("text"),
        Err(e) => panic!("{css}: {e}\n{}", browser.source().await.unwrap_or_default()),
    }
}

async fn click(browser: &Browser, css: &str) {
    click_on(browser, Locator::Css(css)).await;
}

/// Clicks what `locator` finds and waits until the page it was on is gone: every
/// click here submits a form or follows a link, and a lookup made before the next
/// page is loaded would find the old one.
async fn click_on(browser: &Browser, locator: Locator<'_>) {
    let page = browser.find(Locator::Css("html")).await.expect("a page");
    let target = match browser.find(locator).await {
        Ok(found) => found,
        Err(e) => panic!(
            "{locator:?}: {e}\n{}",
            browser.source().await.unwrap_or_default()
        ),
    };
    target
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {locator:?}: {e}"));
    let started = Instant::now();
    while page.tag_name().await.is_ok() {
        assert!(
            started.elapsed() < WAIT,
            "{locator:?} led nowhere within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reloads until the page's source satisfies `ready` (bounded by [`WAIT`]).
async fn reload_until(browser: &Browser, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let source = browser.source().await.expect("source");
        if ready(&source) {
            return source;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what} did not show within {WAIT:?}:\n{source}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        browser.refresh().await.expect("refresh");
    }
}

/// How many rows the attempts table has (0 without a table).
async fn attempt_rows(browser: &Browser) -> usize {
    browser
        .find_all(Locator::Css("#attempts tbody tr"))
        .await
        .map(|rows| rows.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_portal_in_a_real_browser() {
    let Some(chrome) = Chrome::start().await else {
        return;
    };
    let shots = Shots(std::env::var_os("SONZAI_PORTAL_SCREENSHOTS").map(Into::into));
    let db = TestDb::sqlite();
    let server = TestServer::start(&db).await;
    let failing = Receiver::start().await;
    failing.set_default(Answer::status(500).body("{\"error\":\"database is down\"}"));
    let healthy = Receiver::start().await;
    let gone = Receiver::start().await;
    gone.set_default(Answer::status(410));
    let secret = upsert(
        &server,
        "order.paid",
        &failing.url("/hooks/orders"),
        Some("Bearer s3cr3t"),
    )
    .await
    .expect("secret");
    upsert(&server, "user.created", &healthy.url("/hooks/users"), None).await;
    upsert(&server, "invoice.sent", &gone.url("/hooks/invoices"), None).await;
    for n in 0..3 {
        publish(
            &server,
            "order.paid",
            serde_json::json!({"order": 1000 + n, "total": "12.50"}),
        )
        .await;
        publish(&server, "user.created", serde_json::json!({"user": n})).await;
    }
    publish(&server, "invoice.sent", serde_json::json!({"invoice": 7})).await;
    // Every try of the failing receiver's three events (four each).
    wait_attempts(&server, "order.paid", 12).await;
    wait_attempts(&server, "user.created", 3).await;
    support::poll_until(WAIT, Duration::from_millis(50), || async {
        webhook(&server, "invoice.sent")
            .await
            .filter(|w| !w.is_active)
    })
    .await
    .expect("the 410 disabled invoice.sent");
    let other = support::create_tenant(server.store.as_ref(), "tenant-b").await;
    let b_project = other.project_id;
    server
        .client_for(&other.key)
        .upsert_webhook_for_tenant()
        .event_type("secret.other")
        .body(
            sonzai_webhooks_client::types::UpsertWebhookForTenantInputBody::builder()
                .webhook_url(healthy.url("/b")),
        )
        .send()
        .await
        .expect("B's webhook");

    let browser = chrome.browser();
    let url = link(&server, None).await;
    browser.goto(&url).await.expect("open the link");
    shots.take(browser, "link").await;
    click(browser, "#open").await;
    assert_eq!(text(browser, "h1").await, "Webhooks");
    let list = browser.source().await.unwrap();
    for shown in ["order.paid", "user.created", "invoice.sent", "410 Gone"] {
        assert!(list.contains(shown), "{shown} missing from\n{list}");
    }
    assert!(!list.contains("secret.other"), "another project's webhook");
    shots.take(browser, "webhooks").await;

    // The failing webhook's attempts, newest first, with filters.
    click_on(browser, Locator::LinkText("order.paid")).await;
    assert_eq!(text(browser, "h1").await, "order.paid");
    assert_eq!(attempt_rows(browser).await, 12);
    let first_row = text(browser, "#attempts tbody tr").await;
    assert!(
        first_row.contains("failed") && first_row.contains("500"),
        "{first_row}"
    );
    shots.take(browser, "attempts").await;
    browser
        .find(Locator::Css("#status"))
        .await
        .unwrap()
        .select_by_value("success")
        .await
        .unwrap();
    click(browser, "form.filters button").await;
    assert_eq!(attempt_rows(browser).await, 0, "no successes yet");
    assert!(browser
        .source()
        .await
        .unwrap()
        .contains("No attempts match these filters"));

    // An attempt's detail, secrets masked.
    let webhook_page = format!(
        "http://{}/portal/p/{}/webhooks/order.paid",
        server.addr, server.tenant.project_id
    );
    browser.goto(&webhook_page).await.unwrap();
    click(browser, "#attempts tbody tr a").await;
    let headers = text(browser, "#request-headers").await;
    assert!(
        headers.contains("authorization: •••• (masked)"),
        "{headers}"
    );
    assert!(!headers.contains("s3cr3t") && !browser.source().await.unwrap().contains("s3cr3t"));
    assert!(text(browser, "#request-body").await.contains("\"order\""));
    assert!(text(browser, "#response-body")
        .await
        .contains("database is down"));
    shots.take(browser, "attempt").await;

    // Resend once the receiver is fixed: the new attempt appears, a success.
    failing.set_default(Answer::status(200));
    browser.goto(&webhook_page).await.unwrap();
    click(browser, "#attempts tbody tr button").await;
    assert!(text(browser, ".notice").await.contains("queued again"));
    let page = reload_until(browser, "the resent attempt", |s| {
        s.matches("<tr>").count() >= 14 && s.contains(">resend<")
    })
    .await;
    assert!(page.contains("badge ok"), "the resent attempt succeeded");
    assert_eq!(attempt_rows(browser).await, 13);
    let newest = text(browser, "#attempts tbody tr").await;
    assert!(
        newest.contains("success") && newest.contains("resend"),
        "{newest}"
    );

    // Recover: a dry run counts, then the recovery queues.
    click(browser, "#recover").await;
    let count = text(browser, "#recover-count").await;
    assert!(
        count.starts_with('2'),
        "the two events never delivered since: {count}"
    );
    shots.take(browser, "recover").await;
    click(browser, "#recover-start").await;
    assert!(text(browser, ".notice").await.contains("recovery started"));
    reload_until(browser, "the recovered attempts", |s| {
        s.matches(">recover<").count() >= 2
    })
    .await;

    // A test event.
    let before = failing.count();
    click(browser, "#test").await;
    assert!(text(browser, ".notice").await.contains("test event"));
    assert_eq!(failing.wait_for(before + 1, WAIT).await, before + 1);

    // Rotate with grace: the new secret signs the next delivery, the old one too.
    click(browser, "#rotate").await;
    let new_secret = text(browser, "#new-secret").await;
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    shots.take(browser, "rotate").await;
    let before = failing.count();
    publish(
        &server,
        "order.paid",
        serde_json::json!({"after": "rotation"}),
    )
    .await;
    failing.wait_for(before + 1, WAIT).await;
    let delivered = failing.received().pop().expect("a delivery");
    assert!(
        verifies_with(&delivered, &new_secret),
        "signed with the new secret"
    );
    assert!(
        verifies_with(&delivered, &secret),
        "and, within the grace, the old"
    );

    // The disabled webhook: why, and enabling it.
    browser
        .goto(&format!(
            "http://{}/portal/p/{}/webhooks/invoice.sent",
            server.addr, server.tenant.project_id
        ))
        .await
        .unwrap();
    assert!(browser.source().await.unwrap().contains("410 Gone"));
    gone.set_default(Answer::status(200));
    click(browser, "#enable").await;
    assert!(text(browser, ".notice").await.contains("active again"));
    assert!(webhook(&server, "invoice.sent").await.unwrap().is_active);

    // Delete, after a confirmation.
    browser
        .goto(&format!(
            "http://{}/portal/p/{}/webhooks/user.created",
            server.addr, server.tenant.project_id
        ))
        .await
        .unwrap();
    click(browser, "#delete").await;
    shots.take(browser, "delete").await;
    click(browser, "#confirm-delete").await;
    assert!(text(browser, ".notice").await.contains("deleted"));
    assert!(webhook(&server, "user.created").await.is_none());

    // Project B: this browser's session is A's, and B's pages say so.
    browser
        .goto(&format!("http://{}/portal/p/{b_project}/", server.addr))
        .await
        .unwrap();
    assert_eq!(text(browser, "h1").await, "No session for this project");
    assert!(!browser.source().await.unwrap().contains("secret.other"));
    // The link, once used, opens nothing.
    browser.goto(&url).await.unwrap();
    assert_eq!(text(browser, "h1").await, "This link was used already");
    shots.take(browser, "used").await;

    chrome.close().await;
    server.shutdown().await;
}

/// The attempt ids a webhook page lists, in order.
fn listed_attempts(page: &str) -> Vec<String> {
    page.split("/attempts/")
        .skip(1)
        .map(|rest| rest[..36].to_owned())
        .collect()
}

#[tokio::test]
async fn attempts_are_paged_and_filtered_and_receiver_text_stays_text() {
    for db in support::backends().await {
        let server = TestServer::start(&db).await;
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(500).body("<script>alert('x')</script>"));
        upsert(&server, "order.paid", &receiver.url("/a"), None).await;
        for n in 0..15 {
            publish(&server, "order.paid", serde_json::json!({"n": n})).await;
        }
        // Four tries of each.
        wait_attempts(&server, "order.paid", 60).await;
        let (cookie, _) = enter(&server, &link(&server, None).await).await;
        let page_path = format!("/portal/p/{}/webhooks/order.paid", server.tenant.project_id);
        let (status, first) = get(&server, &page_path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        let first_ids = listed_attempts(&first);
        assert_eq!(first_ids.len(), 50, "a page holds 50");
        let at = first
            .find("id=\"older\"")
            .expect("a link to older attempts");
        let href_at = first[..at].rfind("href=\"").unwrap() + 6;
        let older = first[href_at..at]
            .split('"')
            .next()
            .unwrap()
            .replace("&amp;", "&");
        let (_, second) = get(&server, &older, Some(&cookie)).await;
        let second_ids = listed_attempts(&second);
        assert_eq!(second_ids.len(), 10, "the rest");
        assert!(
            second_ids.iter().all(|id| !first_ids.contains(id)),
            "pages overlap"
        );
        assert!(!second.contains("id=\"older\""), "the last page");

        let (_, failed) = get(
            &server,
            &format!("{page_path}?status=failed"),
            Some(&cookie),
        )
        .await;
        assert_eq!(listed_attempts(&failed).len(), 50);
        let (_, none) = get(
            &server,
            &format!("{page_path}?status=success"),
            Some(&cookie),
        )
        .await;
        assert!(listed_attempts(&none).is_empty());
        assert!(none.contains("No attempts match these filters"), "{none}");
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M");
        let (_, future) = get(
            &server,
            &format!("{page_path}?since={later}&tz=0"),
            Some(&cookie),
        )
        .await;
        assert!(listed_attempts(&future).is_empty(), "nothing after now");
        let earlier = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M");
        let (_, window) = get(
            &server,
            &format!("{page_path}?since={earlier}&until={later}&tz=0&status=failed"),
            Some(&cookie),
        )
        .await;
        assert_eq!(listed_attempts(&window).len(), 50);

        // What a receiver answered is shown as text, never as markup.
        let (_, detail) = get(
            &server,
            &format!(
                "/portal/p/{}/attempts/{}",
                server.tenant.project_id, first_ids[0]
            ),
            Some(&cookie),
        )
        .await;
        assert!(
            detail.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
            "{detail}"
        );
        assert!(!detail.contains("<script>alert"), "{detail}");
        server.shutdown().await;
    }
}
