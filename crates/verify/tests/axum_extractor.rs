//! The `VerifiedBody` extractor, driven through a real axum `Router`.
#![cfg(feature = "axum")]

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use sonzai_webhooks_verify::axum::VerifiedBody;
use sonzai_webhooks_verify::{sonzai_signature_header, standard_signature_header, Verifier};
use tower::ServiceExt as _;

const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_SECRET: &str = "whsec_cxdY+yjp+kQ+BxZ8Yu9abFgDb5DGzs4Fg6hf0lXS4ic=";
const BODY: &str = r#"{"type":"message.created","text":"héllo ✓"}"#;

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Echoes the verified body so the test can see exactly what the handler received.
async fn echo(VerifiedBody(body): VerifiedBody) -> Vec<u8> {
    body.to_vec()
}

fn app() -> Router {
    Router::new()
        .route("/hook", post(echo))
        .with_state(Verifier::new(SECRET).unwrap())
}

fn request(headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut builder = Request::post("/hook");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, String) {
    let response: Response = app.oneshot(req).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
    }
    (status, body)
}

#[tokio::test]
async fn accepts_a_good_sonzai_signature() {
    let header = sonzai_signature_header(&[OTHER_SECRET, SECRET], now(), BODY.as_bytes());
    let (status, body) = send(app(), request(&[("Sonzai-Signature", &header)], BODY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, BODY);
}

#[tokio::test]
async fn accepts_good_standard_webhooks_headers() {
    let ts = now();
    let sig = standard_signature_header(&[SECRET], "msg_1", ts, BODY.as_bytes()).unwrap();
    let ts = ts.to_string();
    let req = request(
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        BODY,
    );
    let (status, body) = send(app(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, BODY);
}

#[tokio::test]
async fn rejects_a_bad_signature_with_401() {
    let header = sonzai_signature_header(&[OTHER_SECRET], now(), BODY.as_bytes());
    let (status, body) = send(app(), request(&[("sonzai-signature", &header)], BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        "webhook verification failed: no signature matches the payload"
    );
    assert!(!body.contains("AAECAw") && !body.contains("whsec_"));
}

#[tokio::test]
async fn rejects_a_tampered_body_with_401() {
    let header = sonzai_signature_header(&[SECRET], now(), BODY.as_bytes());
    let (status, body) = send(
        app(),
        request(&[("sonzai-signature", &header)], r#"{"type":"x"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("no signature matches"), "{body}");
}

#[tokio::test]
async fn rejects_unsigned_and_stale_requests_with_401() {
    let (status, body) = send(app(), request(&[], BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        "webhook verification failed: missing `sonzai-signature` header"
    );

    let stale = sonzai_signature_header(&[SECRET], now() - 3600, BODY.as_bytes());
    let (status, body) = send(app(), request(&[("sonzai-signature", &stale)], BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("more than the allowed 300s"), "{body}");

    let (status, body) = send(app(), request(&[("sonzai-signature", "t=1")], BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("malformed signature header"), "{body}");
}

#[tokio::test]
async fn verifier_can_live_inside_a_larger_state() {
    #[derive(Clone)]
    struct AppState {
        verifier: Verifier,
    }
    impl FromRef<AppState> for Verifier {
        fn from_ref(state: &AppState) -> Self {
            state.verifier.clone()
        }
    }
    let app = Router::new()
        .route("/hook", post(echo))
        .with_state(AppState {
            verifier: Verifier::new(SECRET).unwrap(),
        });
    let header = sonzai_signature_header(&[SECRET], now(), BODY.as_bytes());
    let (status, body) = send(app, request(&[("sonzai-signature", &header)], BODY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, BODY);
}

#[tokio::test]
async fn body_limit_rejections_keep_their_own_status() {
    let big = "x".repeat(4096);
    let header = sonzai_signature_header(&[SECRET], now(), big.as_bytes());
    let app = app().layer(DefaultBodyLimit::max(1024));
    let (status, _) = send(app, request(&[("sonzai-signature", &header)], &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
