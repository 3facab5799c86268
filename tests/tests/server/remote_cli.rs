//! The remote commands (`webhooks`, `events`) and the local receiver (`receive`) of
//! the real binary, against a real server and real deliveries.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use sonzai_webhooks_testkit::process;

use crate::cli::{run, Run};
use crate::delivery::WAIT;
use crate::support::{self, Receiver, TestServer};

/// Runs a remote command against `server` with its tenant's key, off the runtime's
/// threads (the server runs on them).
async fn remote(server: &TestServer, args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let url = format!("http://{}", server.addr);
    let key = server.tenant.key.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[("SONZAI_URL", &url), ("SONZAI_API_KEY", &key)])
    })
    .await
    .unwrap()
}

/// A remote command with `--json` that must succeed; its parsed output.
async fn remote_json(server: &TestServer, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let done = remote(server, &full).await;
    assert_eq!(
        done.code,
        Some(0),
        "{full:?}\n{}\n{}",
        done.stdout,
        done.stderr
    );
    serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("{full:?} printed invalid JSON ({e}): {}", done.stdout))
}

/// A remote command without `--json` that must succeed; its text.
async fn remote_text(server: &TestServer, args: &[&str]) -> String {
    let done = remote(server, args).await;
    assert_eq!(
        done.code,
        Some(0),
        "{args:?}\n{}\n{}",
        done.stdout,
        done.stderr
    );
    done.stdout
}

/// A long-running command of the binary whose stdout lines arrive on a channel.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: String,
}

impl Streaming {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Streaming {
        let mut child = process::std_command(&support::server_binary())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sonzai-webhooks");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Waits (off the runtime) until the output so far contains `text`.
    async fn wait_for(&mut self, text: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        while !self.seen.contains(text) {
            match self.lines.try_recv() {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => return false,
            }
        }
        true
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_commands_drive_a_real_server() {
    let db = support::backends().await.remove(0);
    let server = TestServer::start(&db).await;
    let receiver = Receiver::start().await;
    let url = receiver.url("/paid");

    let created = remote_json(
        &server,
        &["webhooks", "upsert", "order.paid", "--webhook-url", &url],
    )
    .await;
    assert_eq!(created["success"], true);
    let secret = created["signing_secret"]
        .as_str()
        .expect("a created webhook's secret");
    assert!(secret.starts_with("whsec_"), "{created}");
    let updated = remote_text(
        &server,
        &[
            "webhooks",
            "upsert",
            "order.paid",
            "--webhook-url",
            &url,
            "--rate-limit",
            "50",
        ],
    )
    .await;
    assert_eq!(updated, "updated webhook order.paid\n");

    let listed = remote_json(&server, &["webhooks", "list"]).await;
    assert_eq!(
        listed["webhooks"][0]["event_type"], "order.paid",
        "{listed}"
    );
    assert_eq!(listed["webhooks"][0]["rate_limit"], 50, "{listed}");
    let project = server.tenant.project_id.to_string();
    let scoped = remote_json(&server, &["webhooks", "list", "--project", &project]).await;
    assert_eq!(scoped, listed, "the project route lists the same");
    let table = remote_text(&server, &["webhooks", "list"]).await;
    assert!(table.starts_with("EVENT TYPE"), "{table}");
    assert!(
        table.contains("order.paid") && table.contains("active") && table.contains("50/s"),
        "{table}"
    );

    let published = remote_json(
        &server,
        &[
            "events",
            "publish",
            "order.paid",
            "--data",
            r#"{"order": 1}"#,
            "--idempotency-key",
            "o-1",
        ],
    )
    .await;
    assert_eq!(published["deliveries_started"], 1, "{published}");
    let event_id = published["event_id"].as_str().unwrap().to_owned();
    assert_eq!(receiver.wait_for(1, WAIT).await, 1);
    let again = remote_json(
        &server,
        &[
            "events",
            "publish",
            "order.paid",
            "--data",
            r#"{"order": 1}"#,
            "--idempotency-key",
            "o-1",
        ],
    )
    .await;
    assert_eq!(
        again["event_id"], published["event_id"],
        "the key answers the first event"
    );

    let attempts = support::poll_until(WAIT, Duration::from_millis(50), || async {
        let page = remote_json(
            &server,
            &["webhooks", "attempts", "order.paid", "--limit", "10"],
        )
        .await;
        (page["attempts"].as_array().is_some_and(|a| !a.is_empty())).then_some(page)
    })
    .await
    .expect("the attempt is listed");
    let sent = attempts["attempts"][0]["request_body"]
        .as_str()
        .unwrap_or_default();
    let sent = base64::engine::general_purpose::STANDARD
        .decode(sent)
        .expect("base64 body");
    assert!(
        String::from_utf8_lossy(&sent).contains(&event_id),
        "{attempts}"
    );
    let attempt_table = remote_text(&server, &["webhooks", "attempts", "order.paid"]).await;
    assert!(
        attempt_table.contains(&event_id) && attempt_table.contains("success"),
        "{attempt_table}"
    );

    let resent = remote_json(&server, &["events", "resend", "order.paid", &event_id]).await;
    assert_eq!(resent["event_id"], event_id.as_str());
    assert_eq!(receiver.wait_for(2, WAIT).await, 2);

    let rotated = remote_json(
        &server,
        &["webhooks", "rotate", "order.paid", "--grace-seconds", "60"],
    )
    .await;
    let new_secret = rotated["signing_secret"].as_str().unwrap();
    assert!(
        new_secret.starts_with("whsec_") && new_secret != secret,
        "{rotated}"
    );

    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let counted = remote_json(
        &server,
        &[
            "webhooks",
            "recover",
            "order.paid",
            "--since",
            &since,
            "--include",
            "failed,missed",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(counted["status"], "dry_run", "{counted}");
    assert_eq!(counted["matched"], 0, "every event was delivered");

    // Following prints attempts as they are recorded.
    let url_env = format!("http://{}", server.addr);
    let mut follow = Streaming::start(
        &["webhooks", "attempts", "order.paid", "--follow"],
        &[
            ("SONZAI_URL", &url_env),
            ("SONZAI_API_KEY", &server.tenant.key),
        ],
    );
    assert!(
        follow.wait_for(&event_id).await,
        "the existing attempts: {}",
        follow.seen
    );
    let later = remote_json(
        &server,
        &["events", "publish", "order.paid", "--data", "{}"],
    )
    .await;
    let later_id = later["event_id"].as_str().unwrap();
    assert!(
        follow.wait_for(later_id).await,
        "the new attempt: {}",
        follow.seen
    );
    drop(follow);

    // Problems: the server's title, detail and each error entry, and a non-zero exit.
    let refused = remote(
        &server,
        &[
            "events",
            "publish",
            "sonzai.webhook.disabled",
            "--data",
            "{}",
        ],
    )
    .await;
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("422"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("body.event_type"),
        "{}",
        refused.stderr
    );
    let missing = remote(&server, &["webhooks", "delete", "no.such.type"]).await;
    assert_ne!(missing.code, Some(0));
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
    let bad_data = remote(
        &server,
        &["events", "publish", "order.paid", "--data", "[1, 2]"],
    )
    .await;
    assert_ne!(bad_data.code, Some(0));
    assert!(
        bad_data.stderr.contains("--data must be a JSON object"),
        "{}",
        bad_data.stderr
    );
    let bad_key = tokio::task::spawn_blocking({
        let url = url_env.clone();
        move || {
            run(
                &["webhooks", "list"],
                &[("SONZAI_URL", &url), ("SONZAI_API_KEY", "sk_nope")],
            )
        }
    })
    .await
    .unwrap();
    assert_ne!(bad_key.code, Some(0));
    assert!(bad_key.stderr.contains("401"), "{}", bad_key.stderr);

    let deleted = remote_text(&server, &["webhooks", "delete", "order.paid"]).await;
    assert_eq!(deleted, "deleted webhook order.paid\n");
    let empty = remote_text(&server, &["webhooks", "list"]).await;
    assert!(empty.starts_with("no webhooks yet"), "{empty}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_verifies_real_deliveries_and_flags_tampered_ones() {
    let db = support::backends().await.remove(0);
    let server = TestServer::start(&db).await;
    let port = process::free_port();
    let listen = format!("127.0.0.1:{port}");
    let created = remote_json(
        &server,
        &[
            "webhooks",
            "upsert",
            "user.signup",
            "--webhook-url",
            &format!("http://{listen}/hook"),
        ],
    )
    .await;
    let secret = created["signing_secret"].as_str().unwrap().to_owned();
    let mut receive = Streaming::start(&["receive", "--listen", &listen, "--secret", &secret], &[]);
    assert!(receive.wait_for("receiving on").await, "{}", receive.seen);

    let published = remote_json(
        &server,
        &[
            "events",
            "publish",
            "user.signup",
            "--data",
            r#"{"user_id": "u_1"}"#,
        ],
    )
    .await;
    let event_id = published["event_id"].as_str().unwrap();
    assert!(
        receive.wait_for("signature verified").await,
        "{}",
        receive.seen
    );
    assert!(receive.seen.contains(event_id), "{}", receive.seen);
    assert!(
        receive.seen.contains("\"user_id\": \"u_1\""),
        "pretty JSON body: {}",
        receive.seen
    );
    assert!(
        receive.seen.contains("webhook-signature:"),
        "headers: {}",
        receive.seen
    );

    // The same kind of request with a signature that does not match is flagged.
    let tampered = reqwest::Client::new()
        .post(format!("http://{listen}/hook"))
        .header("content-type", "application/json")
        .header(
            "sonzai-signature",
            format!("t={},v1={}", chrono::Utc::now().timestamp(), "0".repeat(64)),
        )
        .body(r#"{"user_id": "u_2"}"#)
        .send()
        .await
        .expect("the receiver answers");
    assert_eq!(
        tampered.status(),
        200,
        "it answers --status whatever the signature"
    );
    assert!(
        receive.wait_for("signature NOT verified").await,
        "{}",
        receive.seen
    );
    server.shutdown().await;
}
