//! `sonzai-webhooks receive`: a local receiver for development. It prints each
//! delivery (method, path, headers, the body as pretty JSON) and whether its
//! signatures verify with the secret given, using the verify crate as a receiver
//! would, and answers with the status asked for.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use clap::Args;
use sonzai_webhooks_verify::Verifier;

const RECEIVE_AFTER_HELP: &str = "\
Examples:
  sonzai-webhooks receive --secret whsec_...
  sonzai-webhooks webhooks upsert session.end --webhook-url http://127.0.0.1:9000/hook
  sonzai-webhooks receive --listen 127.0.0.1:9000 --secret whsec_... --status 503

The server refuses loopback webhook URLs unless it runs with
--allow-private-targets true (as in development).";

pub(crate) const fn after_help() -> &'static str {
    RECEIVE_AFTER_HELP
}

/// The receiver's settings.
#[derive(Debug, Clone, Args)]
pub struct ReceiveArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The webhook's signing secret (`whsec_...`), to verify each delivery with.
    #[arg(
        long,
        env = "SONZAI_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub secret: String,
    /// The status to answer every delivery with (2xx: success; anything else makes
    /// the server retry).
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub status: u16,
}

struct Receiver {
    verifier: Verifier,
    status: StatusCode,
}

/// Runs until the process is stopped.
pub(crate) async fn run(args: ReceiveArgs) -> anyhow::Result<()> {
    let verifier = Verifier::new(&args.secret)
        .map_err(|e| anyhow::anyhow!("--secret is not a signing secret: {e}"))?;
    let status = StatusCode::from_u16(args.status).context("--status")?;
    let state = Arc::new(Receiver { verifier, status });
    let app = Router::new().fallback(receive).with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    crate::stdout::write_stdout(&format!(
        "receiving on http://{addr}/ (answering {}); Ctrl-C stops\n",
        args.status
    ))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}

async fn receive(
    State(state): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verdict = match state.verifier.verify_headers(&headers, &body) {
        Ok(()) => "signature verified".to_owned(),
        Err(e) => format!("signature NOT verified: {e}"),
    };
    let _ = crate::stdout::write_stdout(&describe(&method, &uri, &headers, &body, &verdict));
    state.status
}

/// What one delivery prints.
fn describe(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8], verdict: &str) -> String {
    let mut out = format!("--- {method} {uri}\n");
    for (name, value) in headers {
        let value = if name == "authorization" {
            "(hidden)".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        let _ = writeln!(out, "{name}: {value}");
    }
    out.push('\n');
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
        Err(_) => {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(body));
        }
    }
    let _ = writeln!(out, "{verdict}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_prints_its_headers_body_and_verdict_without_the_authorization() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("authorization", "Bearer secret-token".parse().unwrap());
        let text = describe(
            &Method::POST,
            &"/hook".parse().unwrap(),
            &headers,
            br#"{"event_type":"a","data":{"n":1}}"#,
            "signature verified",
        );
        assert!(text.starts_with("--- POST /hook\n"), "{text}");
        assert!(text.contains("content-type: application/json"), "{text}");
        assert!(text.contains("authorization: (hidden)"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(text.contains("\"n\": 1"), "{text}");
        assert!(text.contains("signature verified"), "{text}");
    }
}
