//! The one error type of the API boundary: RFC 9457 problem details, rendered as an
//! `ErrorModel` body with media type `application/problem+json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::models::{ErrorDetail, ErrorModel};

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer. Build one with the constructors; `detail` is shown to the caller, so
/// it must never carry secrets or internal error text.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The HTTP status answered.
    pub status: StatusCode,
    /// The explanation shown to the caller.
    pub detail: String,
    /// One entry per invalid input, for validation errors.
    pub errors: Option<Vec<ErrorDetail>>,
}

impl Problem {
    /// A problem with any status and detail, without error entries.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            errors: None,
        }
    }

    /// 400: the request could not be read (malformed JSON, for example).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 401: missing, malformed, unknown or revoked API key. The detail is deliberately
    /// the same whatever the reason, so callers cannot probe for valid keys.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "a valid API key is required: send `Authorization: Bearer sk_...`",
        )
    }

    /// 404: the resource does not exist (or belongs to another tenant).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 415: the body is not `application/json`.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail)
    }

    /// 422 with one entry per problem.
    pub fn validation(errors: Vec<ErrorDetail>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: "validation failed".to_owned(),
            errors: Some(errors),
        }
    }

    /// 422 for a single field, for checks made beyond the schema (by an implementation).
    pub fn invalid(location: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![ErrorDetail {
            location: Some(location.to_owned()),
            message: Some(message.into()),
            value: None,
        }])
    }

    /// 500 with nothing of the cause: log the cause where it happens.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    }

    /// 503: the service cannot answer now; the caller may retry.
    pub fn service_unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    /// The problem as the `ErrorModel` body it is answered with.
    pub fn to_model(&self) -> ErrorModel {
        ErrorModel {
            schema: Some(ErrorModel::SCHEMA_LINK.to_owned()),
            r#type: None,
            title: self.status.canonical_reason().map(str::to_owned),
            status: Some(i64::from(self.status.as_u16())),
            detail: Some(self.detail.clone()),
            instance: None,
            errors: self.errors.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl std::error::Error for Problem {}

/// Writes every non-ASCII character of a JSON string as a `\u` escape. Problems echo
/// the values they refuse, and `application/problem+json`, unlike `application/json`,
/// has no UTF-8 default in common clients (Python `requests` guesses its charset from
/// the bytes and can misread a backslash inside a multi-byte guess); ASCII reads the
/// same under any guess, and to a JSON parser it is the same document.
struct AsciiOnly;

impl serde_json::ser::Formatter for AsciiOnly {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if !c.is_ascii() {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                for unit in c.encode_utf16(&mut [0; 2]) {
                    write!(writer, "\\u{unit:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

fn to_ascii_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiOnly);
    match value.serialize(&mut serializer) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = to_ascii_json(&self.to_model());
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_are_ascii_and_parse_to_the_same_values() {
        let value = "Ä\t\u{19}\u{8f895}竈\\\u{92}\"";
        let problem = Problem::validation(vec![ErrorDetail {
            location: Some("body.event_type".into()),
            message: Some("é".into()),
            value: Some(serde_json::json!(value)),
        }]);
        let body = to_ascii_json(&problem.to_model());
        assert!(body.is_ascii(), "{}", String::from_utf8_lossy(&body));
        let parsed: ErrorModel = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, problem.to_model());
        // Read as Latin-1, as a charset-guessing client might, it is the same JSON.
        let latin1: String = body.iter().map(|&b| char::from(b)).collect();
        assert_eq!(
            serde_json::from_str::<ErrorModel>(&latin1).unwrap(),
            problem.to_model()
        );
    }

    #[test]
    fn renders_problem_json_with_schema_link() {
        let response = Problem::validation(vec![ErrorDetail {
            location: Some("query.limit".into()),
            message: Some("expected number <= 500".into()),
            value: Some(serde_json::json!(501)),
        }])
        .into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let model = Problem::unauthorized().to_model();
        assert_eq!(model.status, Some(401));
        assert_eq!(model.title.as_deref(), Some("Unauthorized"));
        assert_eq!(
            model.schema.as_deref(),
            Some("/api/v1/schemas/ErrorModel.json")
        );
    }
}
