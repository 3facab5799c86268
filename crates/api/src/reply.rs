//! What a read operation answers: its body, or the same body already encoded as JSON.
//! An implementation that keeps an answer that has not changed (a long webhook list,
//! say) keeps it encoded, so serving it again costs a copy of bytes instead of a walk
//! over every value, every date formatted and every string escaped.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Problem;

/// A response body of the API. The generated models implement it; the method fills the
/// `$schema` link of the bodies that carry one.
pub trait ResponseBody: Serialize {
    /// Sets the body's `$schema` link, unless it has one already or none in the spec.
    fn fill_schema_link(&mut self) {}
}

/// The success answer of a read: the body as a value, or encoded once and shared.
#[derive(Debug, Clone)]
pub enum Reply<T> {
    /// Encoded (and its `$schema` link filled) when it is sent.
    Body(T),
    /// Sent as it is.
    Encoded(Encoded),
}

impl<T> From<T> for Reply<T> {
    fn from(body: T) -> Self {
        Reply::Body(body)
    }
}

/// A response body encoded as JSON, its `$schema` link filled; cloning it shares the
/// bytes.
#[derive(Debug, Clone)]
pub struct Encoded(Bytes);

impl Encoded {
    /// Encodes `body` as the generated handler would.
    pub fn new<T: ResponseBody>(mut body: T) -> Result<Self, Problem> {
        body.fill_schema_link();
        serde_json::to_vec(&body)
            .map(|bytes| Encoded(Bytes::from(bytes)))
            .map_err(|_| Problem::internal())
    }

    /// The encoded length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the encoding is empty (never, for a JSON value).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Writes `reply` with `status` as `application/json`.
pub fn respond<T: ResponseBody>(status: StatusCode, reply: impl Into<Reply<T>>) -> Response {
    let bytes = match reply.into() {
        Reply::Body(body) => match Encoded::new(body) {
            Ok(encoded) => encoded.0,
            Err(problem) => return problem.into_response(),
        },
        Reply::Encoded(encoded) => encoded.0,
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Linked {
        #[serde(rename = "$schema", skip_serializing_if = "Option::is_none")]
        schema: Option<String>,
        n: u32,
    }

    impl ResponseBody for Linked {
        fn fill_schema_link(&mut self) {
            self.schema
                .get_or_insert_with(|| "/s/Linked.json".to_owned());
        }
    }

    async fn text(response: Response) -> (StatusCode, String, String) {
        let status = response.status();
        let kind = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_encoded_reply_is_sent_as_the_body_would_be() {
        let body = || Linked { schema: None, n: 7 };
        let direct = text(respond(StatusCode::CREATED, body())).await;
        let encoded = Encoded::new(body()).unwrap();
        let kept = text(respond::<Linked>(
            StatusCode::CREATED,
            Reply::Encoded(encoded.clone()),
        ))
        .await;
        assert_eq!(direct, kept);
        assert_eq!(
            direct,
            (
                StatusCode::CREATED,
                "application/json".to_owned(),
                r#"{"$schema":"/s/Linked.json","n":7}"#.to_owned()
            )
        );
        assert_eq!(encoded.len(), direct.2.len());
    }
}
