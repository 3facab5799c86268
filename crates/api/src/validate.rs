//! The checks the generated router runs on every input before an operation is called.
//! Each check records one [`ErrorDetail`] per problem (with a `location` such as
//! `query.limit` or `body.webhook_url`) and carries on, so a caller learns about every
//! problem of a request at once.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::{header, request::Parts, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::models::ErrorDetail;
use crate::problem::Problem;

/// A string `format` the validator checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `uuid`: an RFC 4122 UUID.
    Uuid,
    /// `date-time`: an RFC 3339 timestamp.
    DateTime,
    /// `uri`: an absolute URI.
    Uri,
}

/// An ECMA-262 pattern (the dialect JSON Schema uses), compiled on first use.
pub struct Pattern {
    source: &'static str,
    regex: OnceLock<regress::Regex>,
}

impl Pattern {
    /// A pattern for `source`, compiled on its first use.
    pub const fn new(source: &'static str) -> Self {
        Self {
            source,
            regex: OnceLock::new(),
        }
    }

    /// The pattern as written in the spec.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Whether the pattern matches somewhere in `text` (JSON Schema patterns are not anchored).
    pub fn is_match(&self, text: &str) -> bool {
        self.regex
            .get_or_init(|| {
                // Patterns are compiled once by the generator too, so this cannot fail.
                regress::Regex::new(self.source).expect("pattern checked at generation")
            })
            .find(text)
            .is_some()
    }
}

/// The constraints the spec puts on a string input.
pub struct StringRules {
    /// The `format` to check, if any.
    pub format: Option<Format>,
    /// Fewest characters allowed (`minLength`).
    pub min_length: Option<u64>,
    /// Most characters allowed (`maxLength`).
    pub max_length: Option<u64>,
    /// The `pattern` the string must match.
    pub pattern: Option<&'static Pattern>,
    /// Never echo the value back in an error (it may be a credential).
    pub sensitive: bool,
    /// Refuse U+0000. PostgreSQL `text` cannot store it, so a NUL reaching the store
    /// would be a 500 there while SQLite kept it; refusing it up front answers the
    /// same 422 on every backend.
    pub forbid_nul: bool,
}

/// The constraints the spec puts on an integer input.
pub struct IntRules {
    /// Smallest value allowed (`minimum`).
    pub minimum: Option<i64>,
    /// Largest value allowed (`maximum`).
    pub maximum: Option<i64>,
}

fn push(
    errors: &mut Vec<ErrorDetail>,
    loc: &str,
    message: impl Into<String>,
    value: Option<Value>,
) {
    errors.push(ErrorDetail {
        location: Some(loc.to_owned()),
        message: Some(message.into()),
        value,
    });
}

/// `loc.name`, the location of a property.
pub fn child(loc: &str, name: &str) -> String {
    format!("{loc}.{name}")
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value as a JSON object, or `None` with an error recorded at `loc`.
pub fn check_object<'a>(
    value: &'a Value,
    loc: &str,
    errors: &mut Vec<ErrorDetail>,
) -> Option<&'a Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        other => {
            push(
                errors,
                loc,
                format!("expected object, got {}", json_type(other)),
                None,
            );
            None
        }
    }
}

/// Required properties present; with `deny_unknown`, no property outside `allowed`.
pub fn check_properties(
    object: &Map<String, Value>,
    loc: &str,
    allowed: &[&str],
    required: &[&str],
    deny_unknown: bool,
    errors: &mut Vec<ErrorDetail>,
) {
    for name in required {
        if !object.contains_key(*name) {
            push(
                errors,
                &child(loc, name),
                format!("expected required property {name} to be present"),
                None,
            );
        }
    }
    if deny_unknown {
        for name in object.keys() {
            if !allowed.contains(&name.as_str()) {
                push(errors, &child(loc, name), "unexpected property", None);
            }
        }
    }
}

/// The checks of a string value, shared by bodies, path and query parameters.
fn string_problems(text: &str, rules: &StringRules) -> Vec<String> {
    let mut problems = Vec::new();
    if rules.forbid_nul && text.contains('\0') {
        problems.push("expected string without U+0000 (NUL) characters".to_owned());
    }
    let len = text.chars().count() as u64;
    if let Some(min) = rules.min_length {
        if len < min {
            problems.push(format!("expected length >= {min}"));
        }
    }
    if let Some(max) = rules.max_length {
        if len > max {
            problems.push(format!("expected length <= {max}"));
        }
    }
    if let Some(pattern) = rules.pattern {
        if !pattern.is_match(text) {
            problems.push(format!(
                "expected string to match pattern {}",
                pattern.source()
            ));
        }
    }
    match rules.format {
        Some(Format::Uuid) if uuid::Uuid::parse_str(text).is_err() => {
            problems.push("expected string to be RFC 4122 uuid".to_owned())
        }
        Some(Format::DateTime) if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
            problems.push("expected string to be RFC 3339 date-time".to_owned())
        }
        Some(Format::Uri) if url::Url::parse(text).is_err() => {
            problems.push("expected string to be an absolute RFC 3986 URI".to_owned())
        }
        _ => {}
    }
    problems
}

fn shown(value: &Value, rules: &StringRules) -> Option<Value> {
    (!rules.sensitive).then(|| value.clone())
}

/// Checks that `value` is a string (or null, when `nullable`) within `rules`, recording
/// an error at `loc` per problem.
pub fn check_string(
    value: &Value,
    loc: &str,
    rules: &StringRules,
    nullable: bool,
    errors: &mut Vec<ErrorDetail>,
) {
    match value {
        Value::Null if nullable => {}
        Value::String(text) => {
            for problem in string_problems(text, rules) {
                push(errors, loc, problem, shown(value, rules));
            }
        }
        other => push(
            errors,
            loc,
            format!("expected string, got {}", json_type(other)),
            shown(value, rules),
        ),
    }
}

fn int_problems(n: i64, rules: &IntRules) -> Option<String> {
    match (rules.minimum, rules.maximum) {
        (Some(min), _) if n < min => Some(format!("expected number >= {min}")),
        (_, Some(max)) if n > max => Some(format!("expected number <= {max}")),
        _ => None,
    }
}

/// Checks that `value` is an integer (or null, when `nullable`) within `rules`, recording
/// an error at `loc` per problem.
pub fn check_integer(
    value: &Value,
    loc: &str,
    rules: &IntRules,
    nullable: bool,
    errors: &mut Vec<ErrorDetail>,
) {
    match value {
        Value::Null if nullable => {}
        Value::Number(n) => match n.as_i64() {
            Some(n) => {
                if let Some(problem) = int_problems(n, rules) {
                    push(errors, loc, problem, Some(value.clone()));
                }
            }
            None => push(
                errors,
                loc,
                "expected a 64-bit integer",
                Some(value.clone()),
            ),
        },
        other => push(
            errors,
            loc,
            format!("expected integer, got {}", json_type(other)),
            Some(value.clone()),
        ),
    }
}

/// Checks that `value` is a boolean (or null, when `nullable`), recording an error at
/// `loc` if not.
pub fn check_boolean(value: &Value, loc: &str, nullable: bool, errors: &mut Vec<ErrorDetail>) {
    match value {
        Value::Null if nullable => {}
        Value::Bool(_) => {}
        other => push(
            errors,
            loc,
            format!("expected boolean, got {}", json_type(other)),
            Some(value.clone()),
        ),
    }
}

/// Checks that `value` is an array (or null, when `nullable`) and each item with
/// `item`, which gets the item's location.
pub fn check_array(
    value: &Value,
    loc: &str,
    nullable: bool,
    errors: &mut Vec<ErrorDetail>,
    mut item: impl FnMut(&Value, &str, &mut Vec<ErrorDetail>),
) {
    match value {
        Value::Null if nullable => {}
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                item(v, &format!("{loc}[{i}]"), errors);
            }
        }
        other => push(
            errors,
            loc,
            format!("expected array, got {}", json_type(other)),
            None,
        ),
    }
}

/// The raw path parameters of the matched route, by name.
pub async fn path_params(parts: &mut Parts) -> HashMap<String, String> {
    match RawPathParams::from_request_parts(parts, &()).await {
        Ok(params) => params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// The path parameter `name`, with an error recorded per rule it breaks.
pub fn path_string(
    params: &HashMap<String, String>,
    name: &str,
    rules: &StringRules,
    errors: &mut Vec<ErrorDetail>,
) -> String {
    let text = params.get(name).cloned().unwrap_or_default();
    let loc = format!("path.{name}");
    let problems = string_problems(&text, rules);
    for problem in &problems {
        push(
            errors,
            &loc,
            problem.clone(),
            Some(Value::from(text.clone())),
        );
    }
    text
}

/// The path parameter `name` as a UUID; the nil UUID with an error recorded when it is
/// not one.
pub fn path_uuid(
    params: &HashMap<String, String>,
    name: &str,
    errors: &mut Vec<ErrorDetail>,
) -> uuid::Uuid {
    let text = params.get(name).map(String::as_str).unwrap_or_default();
    match uuid::Uuid::parse_str(text) {
        Ok(id) => id,
        Err(_) => {
            push(
                errors,
                &format!("path.{name}"),
                "expected string to be RFC 4122 uuid",
                Some(Value::from(text)),
            );
            uuid::Uuid::nil()
        }
    }
}

/// The decoded query string pairs, in order.
pub fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// Every query parameter is one the operation declares, given once: a misspelt name
/// would otherwise be ignored silently, and of a repeated one only the first counted.
pub fn check_query_names(
    pairs: &[(String, String)],
    declared: &[&str],
    errors: &mut Vec<ErrorDetail>,
) {
    for (i, (name, _)) in pairs.iter().enumerate() {
        let loc = format!("query.{name}");
        if !declared.contains(&name.as_str()) {
            if !pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                push(errors, &loc, "unexpected query parameter", None);
            }
        } else if pairs[..i]
            .iter()
            .filter(|(earlier, _)| earlier == name)
            .count()
            == 1
        {
            push(
                errors,
                &loc,
                "expected the parameter once, got it repeated",
                None,
            );
        }
    }
}

fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `None` when the parameter is absent (or invalid, with an error recorded).
pub fn query_integer(
    pairs: &[(String, String)],
    name: &str,
    rules: &IntRules,
    errors: &mut Vec<ErrorDetail>,
) -> Option<i64> {
    let text = query_value(pairs, name)?;
    let loc = format!("query.{name}");
    match text.trim().parse::<i64>() {
        Ok(n) => match int_problems(n, rules) {
            Some(problem) => {
                push(errors, &loc, problem, Some(Value::from(n)));
                None
            }
            None => Some(n),
        },
        Err(_) => {
            push(errors, &loc, "expected integer", Some(Value::from(text)));
            None
        }
    }
}

/// The query parameter `name`: `None` when absent (or invalid, with an error recorded).
pub fn query_string(
    pairs: &[(String, String)],
    name: &str,
    rules: &StringRules,
    errors: &mut Vec<ErrorDetail>,
) -> Option<String> {
    let text = query_value(pairs, name)?;
    let loc = format!("query.{name}");
    let problems = string_problems(text, rules);
    if problems.is_empty() {
        return Some(text.to_owned());
    }
    for problem in problems {
        push(errors, &loc, problem, shown(&Value::from(text), rules));
    }
    None
}

fn is_json_media_type(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads, parses and validates a JSON body. `Err` is answered at once (415, 413, 400);
/// schema problems go to `errors` and give `Ok(None)`. An `optional` body may be
/// empty, and then reads as `{}`.
pub async fn json_body<T: DeserializeOwned>(
    parts: &Parts,
    body: Body,
    limit: usize,
    optional: bool,
    validate: fn(&Value, &str, &mut Vec<ErrorDetail>),
    errors: &mut Vec<ErrorDetail>,
) -> Result<Option<T>, Problem> {
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        if !is_json_media_type(content_type) {
            return Err(Problem::unsupported_media_type(
                "request body must be JSON: send `Content-Type: application/json`",
            ));
        }
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Problem::payload_too_large(limit))?;
    let value: Value = if bytes.is_empty() {
        // A body the operation lets callers leave out reads as `{}`: its schema
        // requires nothing, so the defaults apply.
        if !optional {
            return Err(Problem::bad_request("request body is required"));
        }
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Problem::bad_request(format!("malformed JSON: {e}")))?
    };
    let before = errors.len();
    validate(&value, "body", errors);
    if errors.len() != before {
        return Ok(None);
    }
    match serde_json::from_value(value) {
        Ok(body) => Ok(Some(body)),
        Err(e) => {
            push(errors, "body", e.to_string(), None);
            Ok(None)
        }
    }
}

/// `GET {base}/schemas/{Name}.json`.
pub async fn schema_document(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let schema = file
        .strip_suffix(".json")
        .and_then(crate::models::json_schema);
    match schema {
        Some(schema) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/schema+json"),
            )],
            serde_json::to_vec(&schema).unwrap_or_default(),
        )
            .into_response(),
        None => Problem::not_found(format!("no schema named {file}")).into_response(),
    }
}

/// `GET {base}/openapi.json`: the document utoipa builds from the generated code.
pub async fn openapi_document() -> Response {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = DOC.get_or_init(|| serde_json::to_vec(&crate::openapi()).unwrap_or_default());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    static EVENT: Pattern = Pattern::new("^[A-Za-z0-9._:-]{1,128}$");

    fn rules() -> StringRules {
        StringRules {
            format: None,
            min_length: Some(1),
            max_length: Some(128),
            pattern: Some(&EVENT),
            sensitive: false,
            forbid_nul: true,
        }
    }

    #[test]
    fn strings_report_every_problem() {
        let mut errors = Vec::new();
        check_string(
            &Value::from("bad type!"),
            "path.eventType",
            &rules(),
            false,
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location.as_deref(), Some("path.eventType"));
        let long = "a".repeat(129);
        let mut errors = Vec::new();
        check_string(&Value::from(long), "x", &rules(), false, &mut errors);
        assert_eq!(errors.len(), 2, "length and pattern: {errors:?}");
        let mut errors = Vec::new();
        check_string(
            &Value::from("session.end"),
            "x",
            &rules(),
            false,
            &mut errors,
        );
        assert!(errors.is_empty());
    }

    #[test]
    fn sensitive_values_are_not_echoed() {
        let mut errors = Vec::new();
        let rules = StringRules {
            sensitive: true,
            ..rules()
        };
        check_string(
            &Value::from(17),
            "body.auth_header",
            &rules,
            false,
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].value.is_none());
    }

    #[test]
    fn nul_is_refused_wherever_a_string_is_read() {
        let free = StringRules {
            format: None,
            min_length: None,
            max_length: None,
            pattern: None,
            sensitive: true,
            forbid_nul: true,
        };
        let mut errors = Vec::new();
        check_string(
            &Value::from("Bearer a\0b"),
            "body.auth_header",
            &free,
            true,
            &mut errors,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].location.as_deref(), Some("body.auth_header"));
        assert!(errors[0].message.as_deref().unwrap().contains("U+0000"));
        assert!(errors[0].value.is_none(), "a sensitive value is not echoed");

        let pairs = vec![("cursor".to_owned(), "ab\0".to_owned())];
        let mut errors = Vec::new();
        assert_eq!(query_string(&pairs, "cursor", &free, &mut errors), None);
        assert_eq!(errors[0].location.as_deref(), Some("query.cursor"));

        let params = HashMap::from([("eventType".to_owned(), "a\0b".to_owned())]);
        let mut errors = Vec::new();
        path_string(&params, "eventType", &free, &mut errors);
        assert_eq!(errors[0].location.as_deref(), Some("path.eventType"));

        // Without the rule a NUL is just another character.
        let lenient = StringRules {
            forbid_nul: false,
            ..free
        };
        assert!(string_problems("a\0b", &lenient).is_empty());
    }

    #[test]
    fn query_names_must_be_declared_and_given_once() {
        let pairs: Vec<(String, String)> = [
            ("limit", "1"),
            ("limt", "2"),
            ("limit", "3"),
            ("limit", "4"),
            ("limt", "5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut errors = Vec::new();
        check_query_names(&pairs, &["limit", "offset"], &mut errors);
        let found: Vec<_> = errors
            .iter()
            .map(|e| {
                (
                    e.location.as_deref().unwrap(),
                    e.message.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("query.limt", "unexpected query parameter"),
                (
                    "query.limit",
                    "expected the parameter once, got it repeated"
                ),
            ]
        );
        let mut errors = Vec::new();
        check_query_names(&pairs[..1], &["limit"], &mut errors);
        assert!(errors.is_empty());
    }

    #[test]
    fn query_integers_respect_bounds() {
        let rules = IntRules {
            minimum: Some(1),
            maximum: Some(500),
        };
        let pairs = vec![("limit".to_owned(), "501".to_owned())];
        let mut errors = Vec::new();
        assert_eq!(query_integer(&pairs, "limit", &rules, &mut errors), None);
        assert_eq!(errors[0].location.as_deref(), Some("query.limit"));
        let pairs = vec![("limit".to_owned(), "abc".to_owned())];
        let mut errors = Vec::new();
        assert_eq!(query_integer(&pairs, "limit", &rules, &mut errors), None);
        assert_eq!(errors.len(), 1);
        let mut errors = Vec::new();
        assert_eq!(query_integer(&[], "limit", &rules, &mut errors), None);
        assert!(errors.is_empty());
    }

    #[test]
    fn uri_format_requires_an_absolute_uri() {
        let rules = StringRules {
            format: Some(Format::Uri),
            min_length: None,
            max_length: None,
            pattern: None,
            sensitive: false,
            forbid_nul: true,
        };
        assert!(string_problems("https://example.com/hook", &rules).is_empty());
        assert_eq!(string_problems("/relative", &rules).len(), 1);
    }
}
