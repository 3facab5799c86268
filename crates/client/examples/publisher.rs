//! A publisher: registers a webhook for an event type, then publishes events to it.
//!
//! ```sh
//! SONZAI_URL=http://127.0.0.1:8080 SONZAI_API_KEY=sk_... \
//!     cargo run -p sonzai-webhooks-client --example publisher -- https://example.com/hook
//! ```

use sonzai_webhooks_client::{types, Client, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SONZAI_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key = std::env::var("SONZAI_API_KEY").map_err(|_| "set SONZAI_API_KEY to an API key")?;
    let webhook_url = std::env::args()
        .nth(1)
        .ok_or("usage: publisher <WEBHOOK_URL>")?;
    let client = Client::with_api_key(&format!("{url}/api/v1"), &key)?;

    // Creating answers the signing secret once; an update answers none.
    let upserted = client
        .upsert_webhook_for_tenant()
        .event_type("order.paid")
        .body(types::UpsertWebhookForTenantInputBody::builder().webhook_url(webhook_url))
        .send()
        .await?
        .into_inner();
    if let Some(secret) = upserted.signing_secret {
        println!("signing secret: {secret}");
    }

    for n in 1..=3 {
        let data = serde_json::json!({ "order": n, "amount_cents": 1250 * n });
        let published = client
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("order.paid")
                    .data(data.as_object().cloned().unwrap_or_default())
                    // Publishing again with the same key answers the same event.
                    .idempotency_key(Some(format!("order-{n}").try_into()?)),
            )
            .send()
            .await;
        match published {
            Ok(answer) => println!(
                "event {} ({} deliveries started)",
                answer.event_id, answer.deliveries_started
            ),
            // A problem the server answered: its detail and each invalid field.
            Err(Error::ErrorResponse(problem)) => {
                eprintln!("refused: {}", problem.detail.as_deref().unwrap_or("?"));
                for entry in problem.errors.iter().flatten() {
                    eprintln!("  {:?}: {:?}", entry.location, entry.message);
                }
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}
