//! The JSON Schemas the API serves at `/api/v1/schemas/{Name}.json` (derived by
//! schemars from the generated models), pinned by snapshots and checked against the
//! component schemas of `openapi.json`, the source of truth.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use sonzai_webhooks_api::models;

const SPEC: &str = include_str!("../../openapi.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).expect("openapi.json is valid JSON")
}

fn spec_components() -> Map<String, Value> {
    spec()["components"]["schemas"]
        .as_object()
        .cloned()
        .expect("openapi.json has components.schemas")
}

fn schema_of(name: &str) -> Value {
    models::json_schema(name).unwrap_or_else(|| panic!("no JSON Schema for model {name}"))
}

/// One named snapshot per model; a change to any served schema shows up as a reviewed
/// snapshot diff. Every mismatch is reported, not only the first.
#[test]
fn every_model_schema_matches_its_snapshot() {
    let mut failed = Vec::new();
    for &name in models::SCHEMA_NAMES {
        let schema = schema_of(name);
        let outcome = std::panic::catch_unwind(|| {
            insta::with_settings!({ sort_maps => true }, {
                insta::assert_json_snapshot!(name, schema);
            });
        });
        if outcome.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "snapshots differ for: {failed:?}");
}

#[test]
fn every_spec_component_has_a_model_and_no_more() {
    let spec_names: BTreeSet<String> = spec_components().keys().cloned().collect();
    let model_names: BTreeSet<String> =
        models::SCHEMA_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(model_names, spec_names);
    for name in &spec_names {
        assert!(
            models::json_schema(name).is_some(),
            "json_schema({name}) is None"
        );
    }
    assert!(models::json_schema("NoSuchModel").is_none());
}

fn key_set(value: Option<&Value>) -> BTreeSet<String> {
    match value {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

fn string_set(value: Option<&Value>) -> BTreeSet<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn property_names_required_and_closedness_match_the_spec() {
    let mut problems = Vec::new();
    for (name, component) in spec_components() {
        let schema = schema_of(&name);
        let spec_props = key_set(component.get("properties"));
        let model_props = key_set(schema.get("properties"));
        if spec_props != model_props {
            problems.push(format!(
                "{name}: properties differ: spec {spec_props:?}, model {model_props:?}"
            ));
        }
        let spec_required = string_set(component.get("required"));
        let model_required = string_set(schema.get("required"));
        if spec_required != model_required {
            problems.push(format!(
                "{name}: required differs: spec {spec_required:?}, model {model_required:?}"
            ));
        }
        if let Some(closed) = component.get("additionalProperties") {
            if schema.get("additionalProperties") != Some(closed) {
                problems.push(format!(
                    "{name}: additionalProperties: spec {closed}, model {:?}",
                    schema.get("additionalProperties")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A property schema reduced to what validates: prose (`description`, `title`,
/// `examples`, `example`) and `x-*` extensions dropped, `type` as a sorted list, and
/// `$ref` reduced to the referenced name, since schemars points into `#/$defs/` where
/// the spec points into `#/components/schemas/`. A `true` schema becomes `{}`.
fn validating_keywords(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return match schema {
            Value::Bool(true) => Value::Object(Map::new()),
            other => other.clone(),
        };
    };
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "description" | "title" | "examples" | "example" => {}
            k if k.starts_with("x-") => {}
            "type" => {
                let mut types: Vec<Value> = match value {
                    Value::Array(items) => items.clone(),
                    single => vec![single.clone()],
                };
                types.sort_by_key(|t| t.to_string());
                out.insert(key.clone(), Value::Array(types));
            }
            "$ref" => {
                let target = value.as_str().unwrap_or_default();
                let name = target.rsplit('/').next().unwrap_or(target);
                out.insert(key.clone(), Value::from(name));
            }
            "items" | "additionalProperties" => {
                out.insert(key.clone(), validating_keywords(value));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// Every property of every served schema carries the same validation keywords
/// (formats, lengths, patterns, bounds, defaults, readOnly, contentEncoding, item
/// references, nullability) as the spec's component.
#[test]
fn property_constraints_match_the_spec() {
    let mut problems = Vec::new();
    for (name, component) in spec_components() {
        let schema = schema_of(&name);
        let Some(spec_props) = component.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (prop, spec_prop) in spec_props {
            let Some(model_prop) = schema.pointer(&format!(
                "/properties/{}",
                prop.replace('~', "~0").replace('/', "~1")
            )) else {
                problems.push(format!("{name}.{prop}: missing from the model schema"));
                continue;
            };
            let expected = validating_keywords(spec_prop);
            let actual = validating_keywords(model_prop);
            if expected != actual {
                problems.push(format!(
                    "{name}.{prop}:\n  spec:  {expected}\n  model: {actual}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn validating_keywords_keeps_constraints_and_drops_prose() {
    let spec_prop = serde_json::json!({
        "type": ["null", "array"],
        "description": "d",
        "examples": [1],
        "x-sonzai-extension": true,
        "items": {"$ref": "#/components/schemas/Webhook", "description": "d"}
    });
    let model_prop = serde_json::json!({
        "type": ["array", "null"],
        "items": {"$ref": "#/$defs/Webhook"}
    });
    assert_eq!(
        validating_keywords(&spec_prop),
        validating_keywords(&model_prop)
    );
    let bounded = serde_json::json!({"type": "string", "maxLength": 128});
    let looser = serde_json::json!({"type": "string", "maxLength": 129});
    assert_ne!(validating_keywords(&bounded), validating_keywords(&looser));
    let other_ref =
        serde_json::json!({"type": ["array", "null"], "items": {"$ref": "#/$defs/Other"}});
    assert_ne!(
        validating_keywords(&spec_prop),
        validating_keywords(&other_ref)
    );
    assert_eq!(
        validating_keywords(&Value::Bool(true)),
        serde_json::json!({})
    );
}
