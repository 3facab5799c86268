//! The OpenAPI document utoipa builds from the generated handlers and models (served at
//! `/api/v1/openapi.json`) must say exactly what `openapi.json`, the source of truth,
//! says: same paths, operations, parameters and their constraints, bodies, responses,
//! security and component schemas. Only prose and key order may differ; see
//! [`normalise`].

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sonzai_webhooks_api::models;
use sonzai_webhooks_tests::serve_memory;

const SPEC: &str = include_str!("../../openapi.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).expect("openapi.json is valid JSON")
}

fn generated() -> Value {
    serde_json::to_value(sonzai_webhooks_api::openapi()).expect("the utoipa document serializes")
}

/// Keys whose value is a map from names (paths, property names, media types, status
/// codes...) to objects: the names themselves are data, never prose to drop, even when a
/// property happens to be called `title` or `description`.
const NAME_MAPS: &[&str] = &[
    "paths",
    "properties",
    "patternProperties",
    "$defs",
    "schemas",
    "securitySchemes",
    "responses",
    "content",
    "headers",
    "callbacks",
    "links",
    "encoding",
    "parameters",
    "requestBodies",
    "examples",
];

/// Keys whose value is a single schema (so a boolean `true` there means "anything").
const SCHEMA_KEYS: &[&str] = &[
    "schema",
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "contentSchema",
];

/// Keys whose value is a list of schemas.
const SCHEMA_LIST_KEYS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];

/// Prose keys: they document, they do not constrain.
const PROSE_KEYS: &[&str] = &["description", "summary", "title", "examples", "example"];

/// Reduces an OpenAPI 3.1 document to its contract so that two documents can be
/// compared with `==` and [`diff`]. Exactly this, and nothing else, is changed:
///
/// 1. The top-level `info` object is dropped (title, version and prose).
/// 2. At every keyword position, the prose keys `description`, `summary`, `title`,
///    `examples` and `example` are dropped, and so is every key starting with `x-`
///    (extensions). This includes tag descriptions. Keys of maps from names to objects
///    (`paths`, `properties`, `responses`, `content`, `components.schemas`, ...) are
///    names, not keywords, and are kept: a property named `title` stays.
/// 3. `type` is written as a list (`"string"` becomes `["string"]`) sorted by name, so
///    `["null","array"]` equals `["array","null"]`.
/// 4. A boolean `true` in a schema position (`schema`, `items`, `additionalProperties`,
///    entries of `properties`/`components.schemas`, members of `allOf`...) becomes
///    `{}`: both accept any value. `false` is kept.
/// 5. An operation's `parameters` list becomes a map keyed by `"<in>:<name>"`, because
///    parameters are identified by location and name, not by position.
/// 6. A parameter without `required` gets `required: false`, the value OpenAPI defines
///    for an absent field (utoipa always writes it; openapi.json leaves it out on optional
///    query parameters). A parameter's explicit `required` is kept as is.
/// 7. A schema's `required` list is sorted, because it is a set.
/// 8. Every object is rebuilt with sorted keys, so key order never matters (and printed
///    documents line up).
///
/// Everything else (paths, methods, operationId, tags, security, parameter `required`
/// and schema constraints, request bodies, responses and their media types and `$ref`s,
/// component schemas with every validation keyword, security schemes, servers) is kept
/// verbatim and must match.
fn normalise(document: &Value) -> Value {
    let mut document = document.clone();
    if let Value::Object(root) = &mut document {
        root.remove("info");
    }
    normalise_keywords(&document)
}

/// Normalises an object whose keys are keywords (and arrays of such objects).
fn normalise_keywords(value: &Value) -> Value {
    let Value::Object(map) = value else {
        return match value {
            Value::Array(items) => Value::Array(items.iter().map(normalise_keywords).collect()),
            other => other.clone(),
        };
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        if PROSE_KEYS.contains(&key.as_str()) || key.starts_with("x-") {
            // `examples` under a media type is a name map, but prose either way.
            continue;
        }
        let normalised = match key.as_str() {
            "type" => normalise_type(value),
            "required" if value.is_array() => sorted_strings(value),
            "parameters" if value.is_array() => parameters_by_key(value),
            k if NAME_MAPS.contains(&k) => normalise_name_map(value, k),
            k if SCHEMA_KEYS.contains(&k) => normalise_schema(value),
            k if SCHEMA_LIST_KEYS.contains(&k) => match value {
                Value::Array(items) => Value::Array(items.iter().map(normalise_schema).collect()),
                other => normalise_keywords(other),
            },
            _ => normalise_keywords(value),
        };
        out.insert(key.clone(), normalised);
    }
    Value::Object(out.into_iter().collect())
}

/// A map from names to objects: names kept, each value normalised as keywords (or as a
/// schema, where the map holds schemas).
fn normalise_name_map(value: &Value, key: &str) -> Value {
    let Value::Object(map) = value else {
        return normalise_keywords(value);
    };
    let holds_schemas = matches!(
        key,
        "properties" | "patternProperties" | "$defs" | "schemas"
    );
    let out: BTreeMap<String, Value> = map
        .iter()
        .map(|(name, v)| {
            let v = if holds_schemas {
                normalise_schema(v)
            } else {
                normalise_keywords(v)
            };
            (name.clone(), v)
        })
        .collect();
    Value::Object(out.into_iter().collect())
}

fn normalise_schema(value: &Value) -> Value {
    match value {
        Value::Bool(true) => Value::Object(Map::new()),
        other => normalise_keywords(other),
    }
}

fn normalise_type(value: &Value) -> Value {
    let mut types: Vec<Value> = match value {
        Value::Array(items) => items.clone(),
        single => vec![single.clone()],
    };
    types.sort_by_key(|t| {
        t.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| t.to_string())
    });
    Value::Array(types)
}

fn sorted_strings(value: &Value) -> Value {
    let mut items: Vec<Value> = value.as_array().cloned().unwrap_or_default();
    items.sort_by_key(|t| {
        t.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| t.to_string())
    });
    Value::Array(items)
}

fn parameters_by_key(value: &Value) -> Value {
    let mut out = BTreeMap::new();
    for (index, parameter) in value.as_array().into_iter().flatten().enumerate() {
        let location = parameter.get("in").and_then(Value::as_str);
        let name = parameter.get("name").and_then(Value::as_str);
        let key = match (location, name) {
            (Some(location), Some(name)) => format!("{location}:{name}"),
            // A `$ref` parameter or a malformed one: keep it, by position.
            _ => format!("#{index}"),
        };
        let mut parameter = parameter.clone();
        if let Value::Object(fields) = &mut parameter {
            fields.entry("required").or_insert(Value::Bool(false));
        }
        out.insert(key, normalise_keywords(&parameter));
    }
    Value::Object(out.into_iter().collect())
}

/// One place where two documents differ: a JSON pointer and the value on each side
/// (`None` where the key or element is absent).
#[derive(Debug, Clone, PartialEq)]
struct Difference {
    pointer: String,
    expected: Option<Value>,
    actual: Option<Value>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            Some(v) => serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()),
            None => "(absent)".to_owned(),
        };
        writeln!(f, "{}", self.pointer)?;
        writeln!(
            f,
            "  openapi.json: {}",
            show(&self.expected).replace('\n', "\n    ")
        )?;
        write!(
            f,
            "  utoipa:       {}",
            show(&self.actual).replace('\n', "\n    ")
        )
    }
}

fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Walks two (normalised) documents together and lists the smallest sub-trees that
/// differ, by JSON pointer. Arrays of equal length are compared element by element;
/// arrays of different lengths are reported whole.
fn diff(expected: &Value, actual: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_at(String::new(), expected, actual, &mut out);
    out
}

fn diff_at(pointer: String, expected: &Value, actual: &Value, out: &mut Vec<Difference>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                let child = format!("{pointer}/{}", escape_pointer(key));
                match (e.get(key), a.get(key)) {
                    (Some(ev), Some(av)) => diff_at(child, ev, av, out),
                    (ev, av) => out.push(Difference {
                        pointer: child,
                        expected: ev.cloned(),
                        actual: av.cloned(),
                    }),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (index, (ev, av)) in e.iter().zip(a).enumerate() {
                diff_at(format!("{pointer}/{index}"), ev, av, out);
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(Difference {
            pointer,
            expected: Some(e.clone()),
            actual: Some(a.clone()),
        }),
    }
}

/// Panics with every difference, each with both sides, when the documents differ.
fn assert_same_contract(expected: &Value, actual: &Value) {
    let differences = diff(&normalise(expected), &normalise(actual));
    if !differences.is_empty() {
        let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
        panic!(
            "the utoipa document differs from openapi.json at {} place(s):\n\n{}",
            differences.len(),
            listed.join("\n\n")
        );
    }
}

#[test]
fn utoipa_document_equals_openapi_json() {
    assert_same_contract(&spec(), &generated());
}

/// The same comparison, cut by concern, so a failure names what broke first.
#[test]
fn same_paths_methods_and_operation_ids() {
    fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
        let mut out = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                out.insert((path.clone(), method.clone()), op["operationId"].clone());
            }
        }
        out
    }
    let expected = operations(&spec());
    assert_eq!(expected.len(), 22, "openapi.json declares 22 operations");
    assert_eq!(operations(&generated()), expected);
}

#[test]
fn same_security_scheme_servers_and_global_shape() {
    let (spec, generated) = (spec(), generated());
    let scheme = |doc: &Value| normalise(&doc["components"]["securitySchemes"]);
    assert_eq!(scheme(&generated), scheme(&spec));
    assert_eq!(
        spec["components"]["securitySchemes"]["apiKey"]["type"],
        "http"
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["apiKey"]["scheme"],
        "bearer"
    );
    assert_eq!(generated["servers"], spec["servers"]);
    assert_eq!(generated["servers"], json!([{ "url": "/api/v1" }]));
    assert_eq!(generated["openapi"], spec["openapi"]);
}

#[test]
fn same_component_schemas() {
    let (spec, generated) = (spec(), generated());
    let differences = diff(
        &normalise(&spec["components"]["schemas"]),
        &normalise(&generated["components"]["schemas"]),
    );
    let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert!(differences.is_empty(), "{}", listed.join("\n\n"));
}

mod comparison {
    //! The comparison itself must be able to fail: mutations of the spec that change
    //! the contract are found (at the right place), and prose-only changes are not.

    use super::*;

    const ATTEMPTS: &str = "/paths/~1projects~1{projectId}~1webhooks~1{eventType}~1attempts/get";

    fn pointers(expected: &Value, actual: &Value) -> Vec<String> {
        diff(&normalise(expected), &normalise(actual))
            .into_iter()
            .map(|d| d.pointer)
            .collect()
    }

    fn parameter_index(doc: &Value, op: &str, name: &str) -> usize {
        doc.pointer(&format!("{op}/parameters"))
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().position(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{op} has a parameter {name}"))
    }

    #[test]
    fn a_document_equals_itself() {
        assert!(pointers(&spec(), &spec()).is_empty());
        assert!(pointers(&generated(), &generated()).is_empty());
    }

    #[test]
    fn a_changed_maximum_is_found() {
        let original = spec();
        let mut mutated = original.clone();
        let index = parameter_index(&mutated, ATTEMPTS, "limit");
        let maximum = mutated
            .pointer_mut(&format!("{ATTEMPTS}/parameters/{index}/schema/maximum"))
            .expect("limit has a maximum");
        assert_eq!(*maximum, json!(500));
        *maximum = json!(5000);
        let found = diff(&normalise(&original), &normalise(&mutated));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].pointer,
            format!("{ATTEMPTS}/parameters/query:limit/schema/maximum")
        );
        assert_eq!(found[0].expected, Some(json!(500)));
        assert_eq!(found[0].actual, Some(json!(5000)));
    }

    #[test]
    fn a_removed_required_entry_is_found() {
        let original = spec();
        let mut mutated = original.clone();
        let required = mutated
            .pointer_mut("/components/schemas/PublishEventInputBody/required")
            .and_then(Value::as_array_mut)
            .expect("PublishEventInputBody has required");
        required.retain(|name| name != "event_type");
        assert_eq!(
            pointers(&original, &mutated),
            ["/components/schemas/PublishEventInputBody/required"]
        );
    }

    #[test]
    fn properties_named_like_prose_keys_are_compared() {
        let original = spec();
        let mut mutated = original.clone();
        mutated
            .pointer_mut("/components/schemas/ErrorModel/properties")
            .and_then(Value::as_object_mut)
            .expect("ErrorModel has properties")
            .remove("title");
        assert_eq!(
            pointers(&original, &mutated),
            ["/components/schemas/ErrorModel/properties/title"]
        );
    }

    #[test]
    fn other_contract_changes_are_found() {
        let original = spec();
        let cases: Vec<(&str, Value)> = vec![
            ("/paths/~1webhooks/get/operationId", json!("listHooks")),
            ("/paths/~1webhooks/get/security", json!([])),
            (
                "/components/schemas/Webhook/properties/webhook_url/format",
                json!("uri-reference"),
            ),
            (
                "/components/schemas/ListWebhooksOutputBody/properties/webhooks/type",
                json!("array"),
            ),
            (
                "/components/schemas/Webhook/additionalProperties",
                json!(true),
            ),
            ("/components/securitySchemes/apiKey/scheme", json!("basic")),
            ("/servers/0/url", json!("/api/v2")),
        ];
        for (pointer, replacement) in cases {
            let mut mutated = original.clone();
            *mutated
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{pointer} exists in openapi.json")) = replacement;
            let found = pointers(&original, &mutated);
            assert_eq!(found.len(), 1, "{pointer}: {found:?}");
            assert!(
                found[0].starts_with(pointer),
                "{pointer} reported as {found:?}"
            );
        }
    }

    #[test]
    fn parameter_required_defaults_to_false_and_nothing_else() {
        let original = spec();
        let limit = parameter_index(&original, ATTEMPTS, "limit");
        let mut explicit = original.clone();
        explicit
            .pointer_mut(&format!("{ATTEMPTS}/parameters/{limit}"))
            .and_then(Value::as_object_mut)
            .expect("limit parameter")
            .insert("required".into(), json!(false));
        assert!(pointers(&original, &explicit).is_empty());

        let mut required = original.clone();
        *required
            .pointer_mut(&format!("{ATTEMPTS}/parameters/{limit}"))
            .and_then(Value::as_object_mut)
            .expect("limit parameter")
            .entry("required")
            .or_insert(json!(false)) = json!(true);
        assert_eq!(
            pointers(&original, &required),
            [format!("{ATTEMPTS}/parameters/query:limit/required")]
        );

        let project = parameter_index(&original, ATTEMPTS, "projectId");
        let mut optional_path = original.clone();
        optional_path
            .pointer_mut(&format!("{ATTEMPTS}/parameters/{project}"))
            .and_then(Value::as_object_mut)
            .expect("projectId parameter")
            .remove("required");
        assert_eq!(
            pointers(&original, &optional_path),
            [format!("{ATTEMPTS}/parameters/path:projectId/required")]
        );
    }

    #[test]
    fn prose_order_and_spelling_are_ignored() {
        let original = spec();
        let mut mutated = original.clone();
        *mutated.pointer_mut("/info/title").expect("info.title") = json!("Renamed");
        *mutated
            .pointer_mut("/tags/0/description")
            .expect("tag description") = json!("x");
        *mutated
            .pointer_mut("/paths/~1webhooks/get/summary")
            .expect("summary") = json!("Other summary");
        mutated
            .pointer_mut("/components/schemas/Webhook")
            .and_then(Value::as_object_mut)
            .expect("Webhook")
            .insert("x-internal".into(), json!(true));
        *mutated
            .pointer_mut("/components/schemas/Webhook/properties/event_type/type")
            .expect("event_type.type") = json!(["string"]);
        *mutated
            .pointer_mut("/components/schemas/ListWebhooksOutputBody/properties/webhooks/type")
            .expect("webhooks.type") = json!(["null", "array"]);
        *mutated
            .pointer_mut("/components/schemas/ErrorDetail/properties/value")
            .expect("ErrorDetail.value") = json!(true);
        mutated
            .pointer_mut("/components/schemas/Webhook/required")
            .and_then(Value::as_array_mut)
            .expect("Webhook.required")
            .reverse();
        let index = parameter_index(&mutated, ATTEMPTS, "limit");
        mutated
            .pointer_mut(&format!("{ATTEMPTS}/parameters"))
            .and_then(Value::as_array_mut)
            .expect("attempts parameters")
            .swap(0, index);
        assert!(pointers(&original, &mutated).is_empty());
    }
}

mod served {
    //! What the running router serves: the same document and schemas, without
    //! credentials and without reaching the implementation.

    use super::*;

    #[tokio::test]
    async fn serves_the_utoipa_document_and_model_schemas() {
        let (api, server) = serve_memory().await.expect("server starts");
        let http = sonzai_webhooks_tests::http_client().expect("http client");

        let response = http
            .get(server.url("/api/v1/openapi.json"))
            .send()
            .await
            .expect("GET openapi.json");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let served: Value = response.json().await.expect("JSON body");
        assert_eq!(served, generated());
        assert_same_contract(&spec(), &served);

        for name in models::SCHEMA_NAMES {
            let response = http
                .get(server.url(&format!("/api/v1/schemas/{name}.json")))
                .send()
                .await
                .expect("GET schema");
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(
                response.headers()["content-type"],
                "application/schema+json",
                "{name}"
            );
            let served: Value = response.json().await.expect("JSON body");
            assert_eq!(Some(served), models::json_schema(name), "{name}");
        }

        let webhook: Value = http
            .get(server.url("/api/v1/schemas/Webhook.json"))
            .send()
            .await
            .expect("GET Webhook.json")
            .json()
            .await
            .expect("JSON body");
        assert_eq!(webhook["title"], "Webhook");
        assert_eq!(Some(webhook), models::json_schema("Webhook"));

        assert_eq!(api.calls(), 0, "documents never reach the implementation");
        server.stop().await.expect("server stops");
    }

    #[tokio::test]
    async fn unknown_schema_is_a_404_problem() {
        let (_api, server) = serve_memory().await.expect("server starts");
        let http = sonzai_webhooks_tests::http_client().expect("http client");
        for path in [
            "/api/v1/schemas/NoSuchModel.json",
            "/api/v1/schemas/Webhook",
            "/api/v1/schemas/webhook.json",
        ] {
            let response = http
                .get(server.url(path))
                .send()
                .await
                .expect("GET unknown schema");
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
            let problem: models::ErrorModel =
                serde_json::from_slice(&response.bytes().await.expect("body"))
                    .expect("an ErrorModel body");
            assert_eq!(problem.status, Some(404), "{path}");
        }
        server.stop().await.expect("server stops");
    }
}
