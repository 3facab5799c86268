//! An axum extractor that only yields bodies whose signature verified.

use std::fmt;

use ::axum::extract::rejection::BytesRejection;
use ::axum::extract::{FromRef, FromRequest, Request};
use ::axum::http::StatusCode;
use ::axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::verifier::{header_str, now_unix, SignatureHeaders};
use crate::{Verifier, VerifyError};

/// The raw request body, available only if the delivery's signature verified.
///
/// The [`Verifier`] comes from the router state (`Verifier: FromRef<S>`), so either use
/// the verifier itself as state or implement [`FromRef`] for it on your state type.
/// `Sonzai-Signature` is checked when present, otherwise the Standard Webhooks headers.
/// Requests without any signature header are rejected before their body is read.
///
/// Being a body extractor it must be the handler's last argument. Parse the JSON from
/// the returned bytes yourself (e.g. `serde_json::from_slice`): a `Json` extractor would
/// consume the body before it could be verified.
///
/// ```
/// use axum::{routing::post, Router};
/// use sonzai_webhooks_verify::{axum::VerifiedBody, Verifier};
///
/// async fn receive(VerifiedBody(body): VerifiedBody) -> &'static str {
///     // `body` is authentic here.
///     # let _ = body;
///     "ok"
/// }
///
/// # fn main() -> Result<(), sonzai_webhooks_verify::VerifyError> {
/// let verifier = Verifier::new("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
/// let app: Router = Router::new().route("/webhooks", post(receive)).with_state(verifier);
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedBody(pub Bytes);

/// Why [`VerifiedBody`] refused a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifiedBodyRejection {
    /// The signature did not verify; responds `401 Unauthorized` with the error as a
    /// plain-text body.
    Verification(VerifyError),
    /// The body could not be read (e.g. it exceeds the body limit); responds with
    /// axum's own status for that failure.
    Body(BytesRejection),
}

impl fmt::Display for VerifiedBodyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verification(err) => write!(f, "webhook verification failed: {err}"),
            Self::Body(err) => write!(f, "failed to read webhook body: {err}"),
        }
    }
}

impl std::error::Error for VerifiedBodyRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Verification(err) => Some(err),
            Self::Body(err) => Some(err),
        }
    }
}

impl IntoResponse for VerifiedBodyRejection {
    fn into_response(self) -> Response {
        match self {
            // `VerifyError`'s text never contains header contents or secret material,
            // so it is safe (and useful to the sender) to return verbatim.
            Self::Verification(_) => (StatusCode::UNAUTHORIZED, self.to_string()).into_response(),
            Self::Body(err) => err.into_response(),
        }
    }
}

impl<S> FromRequest<S> for VerifiedBody
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = VerifiedBodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        // Keep the headers while the body extractor consumes the request; it only needs
        // the body and the extensions (which carry the configured body limit).
        let (mut parts, body) = req.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let located = SignatureHeaders::locate(|name| header_str(&headers, name))
            .map_err(VerifiedBodyRejection::Verification)?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(VerifiedBodyRejection::Body)?;
        verifier
            .verify_located(located, &body, now_unix())
            .map_err(VerifiedBodyRejection::Verification)?;
        Ok(Self(body))
    }
}
