//! Signing and verification of the signature headers that the Sonzai webhooks service
//! attaches to every delivery.
//!
//! Receivers use [`Verifier`] to check that a request really comes from Sonzai, was not
//! modified in transit and is not a stale replay. The Sonzai server signs deliveries
//! with [`sonzai_signature_header`] and [`standard_signature_header`] from this same
//! crate, so there is exactly one implementation of the format and the two sides
//! cannot drift apart. The crate has no HTTP client or async runtime dependency.
//!
//! Two formats are produced and accepted, both HMAC-SHA256 with the endpoint secret
//! (`whsec_` followed by base64):
//!
//! * `Sonzai-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, signing `"<t>." + body`
//!   keyed with the secret text after `whsec_`.
//! * [Standard Webhooks](https://www.standardwebhooks.com): `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature: v1,<base64> [...]`, signing
//!   `"<id>.<timestamp>." + body` keyed with the base64-decoded secret.
//!
//! During a secret rotation deliveries carry one signature per active secret; a
//! delivery verifies if any of them matches. Signatures are compared in constant time
//! and timestamps further than the tolerance (default 5 minutes) from the receiver's
//! clock, in either direction, are rejected.
//!
//! Always verify the raw body bytes exactly as received, before parsing them.
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::{SystemTime, UNIX_EPOCH};
//! use sonzai_webhooks_verify::{sonzai_signature_header, Verifier, VerifyError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
//! let body = br#"{"type":"message.created"}"#;
//!
//! // Sender side (what the Sonzai server does for each delivery).
//! let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
//! let mut headers = HashMap::new();
//! headers.insert("sonzai-signature", sonzai_signature_header(&[secret], now, body));
//!
//! // Receiver side: build the verifier once, then check every request.
//! let verifier = Verifier::new(secret)?;
//! verifier.verify(|name| headers.get(name).map(String::as_str), body)?;
//!
//! // A modified body is refused.
//! let tampered = br#"{"type":"message.deleted"}"#;
//! assert_eq!(
//!     verifier.verify(|name| headers.get(name).map(String::as_str), tampered),
//!     Err(VerifyError::BadSignature),
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! * `http`: `Verifier::verify_headers` for an `http::HeaderMap` (hyper, axum, ...).
//! * `axum`: the `axum::VerifiedBody` extractor for axum 0.8 (implies `http`).

#![warn(missing_docs)]

mod error;
mod sign;
mod verifier;

#[cfg(feature = "axum")]
pub mod axum;

pub use error::VerifyError;
pub use sign::{sign_sonzai, sign_standard, sonzai_signature_header, standard_signature_header};
pub use verifier::{Verifier, DEFAULT_TOLERANCE};

/// Prefix of every Sonzai webhook secret. Optional wherever a secret is accepted.
pub const SECRET_PREFIX: &str = "whsec_";

/// Header carrying the Sonzai signature. Lower case, as HTTP/2 requires and as the
/// lookup passed to [`Verifier::verify`] receives it.
pub const SONZAI_SIGNATURE_HEADER: &str = "sonzai-signature";

/// Standard Webhooks message id header; the id is part of the signed content and
/// stays the same across retries, so receivers can use it for deduplication.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";

/// Standard Webhooks timestamp header (unix seconds).
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";

/// Standard Webhooks signature header (space-separated `v1,<base64>` entries).
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";
