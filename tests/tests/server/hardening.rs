//! What a hostile client or tenant can do to the server itself: hold connections open
//! (header, body and idle timeouts, the connection cap), learn the server's internal
//! DNS from attempt errors, or read the secrets in its database files.

use std::time::{Duration, Instant};

use serde_json::json;
use sonzai_webhooks_client::{types, Error as ClientError};
use sonzai_webhooks_server::config::{Config, DatabaseArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Receiver, TestDb, TestServer};

/// Longest any single wait in these tests may take.
const PATIENCE: Duration = Duration::from_secs(5);

fn config_with(db: &TestDb, change: impl FnOnce(&mut Config)) -> Config {
    let mut config = support::test_config(db);
    change(&mut config);
    config
}

/// Reads until the peer closes the connection (or resets it), for at most
/// [`PATIENCE`]. Answers everything read and when the connection ended, or `None` if
/// it was still open.
async fn read_until_closed(stream: &mut TcpStream) -> Option<(Vec<u8>, Instant)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((seen, Instant::now())),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one `/healthz` answer (its body is `ok\n`) off a keep-alive connection.
async fn read_healthz_answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(seen).unwrap()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_cut_off_after_the_header_timeout() {
    let db = TestDb::sqlite();
    let server = TestServer::start_with(
        &db,
        config_with(&db, |c| c.http_header_timeout = Duration::from_millis(500)),
    )
    .await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    for (name, stream) in [("half a header", &mut slow), ("nothing", &mut silent)] {
        let (answer, closed_at) = read_until_closed(stream)
            .await
            .unwrap_or_else(|| panic!("a connection that sent {name} is still open"));
        let after = closed_at - started;
        assert!(
            after >= Duration::from_millis(400),
            "{name}: closed after {after:?}, before the header timeout"
        );
        assert!(answer.is_empty(), "{name}: {answer:?}");
    }

    // A client that finishes its header in time is answered.
    let mut prompt = TcpStream::connect(server.addr).await.unwrap();
    prompt.write_all(HEALTHZ).await.unwrap();
    let answer = read_healthz_answer(&mut prompt).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_beyond_64_kib_are_refused_with_431() {
    let db = TestDb::sqlite();
    let server = TestServer::start(&db).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let filler = "a".repeat(100 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nhost: test\r\nx-filler: {filler}\r\n\r\n");
    // The server may stop reading (and answer) before everything is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let (answer, _) = read_until_closed(&mut stream)
        .await
        .expect("the connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_answered_408_after_the_body_timeout() {
    let db = TestDb::sqlite();
    let server = TestServer::start_with(
        &db,
        config_with(&db, |c| c.http_body_timeout = Duration::from_millis(500)),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"event_type\":",
        server.tenant.key
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (answer, closed_at) = read_until_closed(&mut stream)
        .await
        .expect("the connection is closed after the body timeout");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    let after = closed_at - started;
    assert!(
        after >= Duration::from_millis(400),
        "answered after {after:?}"
    );

    // Nothing was published.
    let attempts = server
        .client
        .list_delivery_attempts_for_tenant()
        .event_type("anything")
        .send()
        .await
        .expect("list attempts")
        .into_inner();
    assert!(attempts.attempts.unwrap_or_default().is_empty());
    let metrics = server
        .http()
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sonzai_events_published_total 0"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let db = TestDb::sqlite();
    let server = TestServer::start_with(
        &db,
        config_with(&db, |c| {
            c.http_header_timeout = Duration::from_millis(300);
            c.http_idle_timeout = Duration::from_millis(1500);
        }),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    read_healthz_answer(&mut stream).await;

    // Waiting between requests longer than the header timeout is fine: that one
    // counts from a request's first byte.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(HEALTHZ).await.unwrap();
    let answer = read_healthz_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answered = Instant::now();

    let (rest, closed_at) = read_until_closed(&mut stream)
        .await
        .expect("the idle connection is closed");
    assert!(rest.is_empty(), "{rest:?}");
    let idle = closed_at - answered;
    assert!(
        idle >= Duration::from_millis(1200),
        "closed after {idle:?} idle, before the idle timeout"
    );
    server.shutdown().await;
}

/// Whether the server has closed `stream` (end of stream or reset), without waiting.
fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_beyond_the_cap_leave_room_for_api_calls() {
    const CAP: usize = 50;
    let db = TestDb::sqlite();
    let server = TestServer::start_with(
        &db,
        config_with(&db, |c| {
            c.max_connections = CAP;
            // Long enough that no connection times out during the test: the cap
            // alone must make room.
            c.http_header_timeout = Duration::from_secs(60);
            c.http_idle_timeout = Duration::from_secs(60);
        }),
    )
    .await;

    // Four times the cap: silent, half-sent headers, and idle keep-alive.
    let mut hogs = Vec::new();
    for i in 0..4 * CAP {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => stream
                .write_all(b"GET /healthz HTTP/1.1\r\nho")
                .await
                .unwrap(),
            _ => {
                stream.write_all(HEALTHZ).await.unwrap();
                // Answered unless a later connection has already taken its place.
                let mut buf = [0u8; 256];
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
            }
        }
        hogs.push(stream);
    }

    let started = Instant::now();
    let health = support::http_client()
        .get(format!("http://{}/healthz", server.addr))
        .timeout(PATIENCE)
        .send()
        .await
        .expect("/healthz answers with the cap full of idle connections");
    assert_eq!(health.status().as_u16(), 200);
    let webhooks = tokio::time::timeout(PATIENCE, server.client.list_webhooks_for_tenant().send())
        .await
        .expect("an authenticated call answers in time")
        .expect("an authenticated call succeeds");
    assert_eq!(webhooks.status().as_u16(), 200);
    assert!(started.elapsed() < PATIENCE);

    // Room was made by closing the idle connections, oldest first: at most the cap
    // is still open.
    let open = support::poll_until(PATIENCE, Duration::from_millis(50), || async {
        let open = hogs.iter().filter(|s| !is_closed(s)).count();
        (open <= CAP).then_some(open)
    })
    .await;
    let still_open = hogs.iter().filter(|s| !is_closed(s)).count();
    assert!(
        open.is_some(),
        "{still_open} of {} idle connections still open; the cap is {CAP}",
        hogs.len()
    );
    assert!(
        hogs.iter().rev().take(10).all(|s| !is_closed(s)),
        "the newest connections were closed instead of the oldest"
    );
    drop(hogs);
    server.shutdown().await;
}

/// The original report: more half-open connections than the process has file
/// descriptors. The server (the real binary, its open-file limit pinned at 256 and
/// `--max-connections` left at its default) fits its cap under the limit, so it keeps
/// accepting, and the newest connections are served.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_half_open_connections_than_file_descriptors_leave_healthz_answering() {
    let db = TestDb::sqlite();
    let data_dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 256 && exec "$0" "$@""#)
        .arg(support::server_binary())
        .arg("serve")
        .args(["--listen", &addr.to_string()])
        .args(["--database-url", &db.url])
        .args(["--data-dir", &data_dir.path().display().to_string()])
        .args(["--workers", "4"])
        .env("SONZAI_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let http = support::http_client();
    let healthz = format!("http://{addr}/healthz");
    let up = support::poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
        let request = http.get(&healthz).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    assert!(up.is_some(), "server did not start");

    let mut hogs = Vec::new();
    for _ in 0..350 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nho")
            .await
            .unwrap();
        hogs.push(stream);
    }
    for _ in 0..3 {
        // A new client each time: a new connection, not one pooled from before.
        let fresh = support::http_client();
        let answer = tokio::time::timeout(PATIENCE, fresh.get(&healthz).send())
            .await
            .expect("/healthz answers in time")
            .expect("/healthz answers");
        assert_eq!(answer.status().as_u16(), 200);
    }
    drop(hogs);
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_target_is_reported_without_what_it_resolves_to() {
    let db = TestDb::sqlite();
    // Private targets allowed (as on a development machine), loopback denied by the
    // operator: `localhost` then resolves, and every address it resolves to is refused
    // where the connection is made.
    let server = TestServer::start_with(
        &db,
        config_with(&db, |c| {
            c.deny_targets = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        }),
    )
    .await;
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();

    let refused = server
        .client
        .upsert_webhook_for_tenant()
        .event_type("session.end")
        .body(body(&format!("http://127.0.0.1:{port}/hook")))
        .send()
        .await;
    let Err(ClientError::ErrorResponse(problem)) = refused else {
        panic!("an upsert to a denied address was not refused: {refused:?}");
    };
    assert_eq!(problem.status().as_u16(), 422);
    let errors = problem.into_inner().errors.unwrap_or_default();
    assert_eq!(
        errors[0].message.as_deref(),
        Some("blocked target: 127.0.0.1")
    );

    server
        .client
        .upsert_webhook_for_tenant()
        .event_type("session.end")
        .body(body(&format!("http://localhost:{port}/hook")))
        .send()
        .await
        .expect("a host name is checked when it is resolved");
    server
        .client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type("session.end")
                .data(json!({})),
        )
        .send()
        .await
        .expect("publish");
    let attempt = support::poll_until(PATIENCE, Duration::from_millis(25), || async {
        server
            .client
            .list_delivery_attempts_for_tenant()
            .event_type("session.end")
            .send()
            .await
            .ok()?
            .into_inner()
            .attempts
            .unwrap_or_default()
            .into_iter()
            .next()
    })
    .await
    .expect("an attempt is recorded");
    assert_eq!(attempt.response_code, 0);
    assert_eq!(
        attempt.error_message.as_deref(),
        Some("blocked target: localhost")
    );
    assert_eq!(receiver.count(), 0, "the guard let a request through");
    server.shutdown().await;
}

fn body(url: &str) -> types::UpsertWebhookForTenantInputBody {
    types::UpsertWebhookForTenantInputBody {
        auth_header: None,
        schema: None,
        webhook_url: url.try_into().expect("webhook url"),
        rate_limit: None,
        ordered: false,
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_files_are_readable_only_by_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    // Octal text, so a failure reads `755` rather than `493`.
    let mode = |path: &std::path::Path| {
        let mode = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        format!("{:o}", mode & 0o777)
    };
    let root = tempfile::tempdir().unwrap();

    // The embedded database in a fresh --data-dir, as `serve` opens it.
    let data_dir = root.path().join("data");
    let embedded = DatabaseArgs {
        database_url: None,
        data_dir: data_dir.clone(),
    };
    let store = embedded
        .connect()
        .await
        .expect("open the embedded database");
    support::create_tenant(store.as_ref(), "tenant").await;
    assert_eq!(mode(&data_dir), "700", "data directory");
    let db = embedded.sqlite_path();
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&file), "600", "{}", file.display());
    }

    // An explicit sqlite:// path in a directory that does not exist yet.
    let explicit = root.path().join("elsewhere/hooks.db");
    let store = sonzai_webhooks_server::store::connect(&format!("sqlite://{}", explicit.display()))
        .await
        .expect("open an explicit SQLite file");
    support::create_tenant(store.as_ref(), "tenant").await;
    assert_eq!(mode(explicit.parent().unwrap()), "700");
    assert_eq!(mode(&explicit), "600");

    // A file left readable by others (an older version made it) is tightened.
    let old = root.path().join("old.db");
    std::fs::write(&old, b"").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    sonzai_webhooks_server::store::connect(&format!("sqlite://{}", old.display()))
        .await
        .expect("open an existing SQLite file");
    assert_eq!(mode(&old), "600");
}
