//! A receiver on axum: the `VerifiedBody` extractor answers 401 to a request whose
//! signatures do not verify, so the handler only ever sees genuine deliveries.
//!
//! ```sh
//! SONZAI_WEBHOOK_SECRET=whsec_... \
//!     cargo run -p sonzai-webhooks-verify --features axum --example axum_receiver
//! ```

use axum::routing::post;
use axum::Router;
use sonzai_webhooks_verify::axum::VerifiedBody;
use sonzai_webhooks_verify::Verifier;

async fn order_paid(VerifiedBody(body): VerifiedBody) -> &'static str {
    // Genuine: parse it (e.g. with serde_json) and act on it. The event id in
    // `webhook-id` is stable across retries, so it also serves to drop duplicates.
    println!("{}", String::from_utf8_lossy(&body));
    "ok"
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("SONZAI_WEBHOOK_SECRET")
        .map_err(|_| "set SONZAI_WEBHOOK_SECRET to the webhook's signing secret")?;
    let verifier = Verifier::new(&secret)?;
    let app = Router::new()
        .route("/hooks/order-paid", post(order_paid))
        .with_state(verifier);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
