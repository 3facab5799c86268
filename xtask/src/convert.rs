//! From the OpenAPI 3.1 source of truth to the OpenAPI 3.0 document progenitor reads.
//!
//! Two steps, both pure functions on JSON values so they are easy to test:
//!
//! 1. [`downgrade_to_30`]: the 3.1 (JSON Schema 2020-12) constructs the spec uses, written
//!    the 3.0 way. `type: [X, "null"]` becomes `type: X, nullable: true`; `examples: [..]`
//!    becomes `example` (the first one); `const` becomes a one-value `enum`; numeric
//!    `exclusiveMinimum`/`exclusiveMaximum` become `minimum`/`maximum` plus the 3.0 boolean
//!    flag; `contentEncoding` (no 3.0 equivalent for a JSON string) is dropped; a `true`
//!    schema becomes `{}`; `jsonSchemaDialect` and `webhooks` (3.1-only fields) are dropped.
//! 2. [`adapt_for_client`]: what progenitor needs to produce a good client. It accepts one
//!    success type and types only `application/json` bodies, so each `default` response
//!    becomes `4XX` and `5XX` responses (the problem details are then typed as
//!    `ErrorModel`), and `application/problem+json` is read as JSON. `additionalProperties:
//!    false` is dropped so the client tolerates fields a newer server adds.
//!
//! `openapi.json` itself is never edited.

use serde_json::{Map, Value};

/// Rewrites a 3.1 document as 3.0.3. Fails on a 3.1 construct it cannot express.
pub fn downgrade_to_30(doc: &Value) -> anyhow::Result<Value> {
    let mut out = doc.clone();
    let root = out
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("document is not an object"))?;
    match root.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.1") => {}
        other => anyhow::bail!("expected an OpenAPI 3.1 document, found version {other:?}"),
    }
    root.insert("openapi".into(), Value::from("3.0.3"));
    root.remove("jsonSchemaDialect");
    root.remove("webhooks");
    if let Some(schemas) = root
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            downgrade_schema(schema)?;
        }
    }
    if let Some(paths) = root.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            for_each_operation(item, |op| {
                for param in array_items(op.get_mut("parameters")) {
                    if let Some(schema) = param.get_mut("schema") {
                        downgrade_schema(schema)?;
                    }
                }
                for media in media_types(op.get_mut("requestBody")) {
                    downgrade_schema(media)?;
                }
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    for response in responses.values_mut() {
                        for media in media_types(Some(response)) {
                            downgrade_schema(media)?;
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
    Ok(out)
}

/// Adjusts a 3.0 document so progenitor generates a typed, tolerant client.
pub fn adapt_for_client(doc: &mut Value) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let _ = for_each_operation(item, |op| {
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    for response in responses.values_mut() {
                        rename_problem_json(response);
                    }
                    if let Some(default) = responses.remove("default") {
                        for range in ["4XX", "5XX"] {
                            responses.entry(range).or_insert_with(|| default.clone());
                        }
                    }
                }
                Ok(())
            });
        }
    }
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            visit_schemas(schema, &mut |s| {
                if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                    s.remove("additionalProperties");
                }
                Ok(())
            })
            .expect("infallible visitor");
        }
    }
}

fn rename_problem_json(response: &mut Value) {
    let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(media) = content.remove("application/problem+json") {
        content.entry("application/json").or_insert(media);
    }
}

fn for_each_operation(
    item: &mut Value,
    mut f: impl FnMut(&mut Map<String, Value>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let Some(item) = item.as_object_mut() else {
        return Ok(());
    };
    for (method, op) in item.iter_mut() {
        if METHODS.contains(&method.as_str()) {
            if let Some(op) = op.as_object_mut() {
                f(op)?;
            }
        }
    }
    Ok(())
}

fn array_items(v: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    v.and_then(Value::as_array_mut).into_iter().flatten()
}

/// The `schema` of every media type under `content` of a request body or response.
fn media_types(v: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    v.and_then(|v| v.get_mut("content"))
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|c| c.values_mut())
        .filter_map(|m| m.get_mut("schema"))
}

/// Calls `f` on `schema` and every schema nested in it, parents first.
fn visit_schemas(
    schema: &mut Value,
    f: &mut impl FnMut(&mut Map<String, Value>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Value::Bool(true) = schema {
        *schema = Value::Object(Map::new());
    }
    let Some(obj) = schema.as_object_mut() else {
        anyhow::bail!("unsupported schema: {schema}");
    };
    f(obj)?;
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub @ Value::Object(_)) = obj.get_mut(key) {
            visit_schemas(sub, f)?;
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for sub in array_items(obj.get_mut(key)) {
            visit_schemas(sub, f)?;
        }
    }
    if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
        for sub in props.values_mut() {
            visit_schemas(sub, f)?;
        }
    }
    Ok(())
}

fn downgrade_schema(schema: &mut Value) -> anyhow::Result<()> {
    visit_schemas(schema, &mut |s| {
        if let Some(Value::Array(types)) = s.get("type") {
            let non_null: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
            let nullable = non_null.len() != types.len();
            match non_null.as_slice() {
                [single] => {
                    let single = (*single).clone();
                    s.insert("type".into(), single);
                }
                [] => anyhow::bail!("a schema whose only type is null has no 3.0 form"),
                _ => {
                    anyhow::bail!("a schema with several non-null types has no 3.0 form: {types:?}")
                }
            }
            if nullable {
                s.insert("nullable".into(), Value::Bool(true));
            }
        }
        if let Some(examples) = s.remove("examples") {
            if let Some(first) = examples.as_array().and_then(|a| a.first()) {
                s.insert("example".into(), first.clone());
            }
        }
        if let Some(value) = s.remove("const") {
            s.insert("enum".into(), Value::Array(vec![value]));
        }
        for (exclusive, bound) in [
            ("exclusiveMinimum", "minimum"),
            ("exclusiveMaximum", "maximum"),
        ] {
            if let Some(n @ Value::Number(_)) = s.get(exclusive).cloned() {
                s.insert(bound.into(), n);
                s.insert(exclusive.into(), Value::Bool(true));
            }
        }
        s.remove("contentEncoding");
        s.remove("contentMediaType");
        s.remove("$schema");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc_with_schema(schema: Value) -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {},
            "components": {"schemas": {"S": schema}}
        })
    }

    fn converted(schema: Value) -> Value {
        downgrade_to_30(&doc_with_schema(schema)).unwrap()["components"]["schemas"]["S"].clone()
    }

    #[test]
    fn version_is_rewritten_and_31_only_fields_dropped() {
        let mut doc = doc_with_schema(json!({"type": "string"}));
        doc["webhooks"] = json!({});
        doc["jsonSchemaDialect"] = json!("https://json-schema.org/draft/2020-12/schema");
        let out = downgrade_to_30(&doc).unwrap();
        assert_eq!(out["openapi"], "3.0.3");
        assert!(out.get("webhooks").is_none());
        assert!(out.get("jsonSchemaDialect").is_none());
    }

    #[test]
    fn refuses_a_document_that_is_not_31() {
        let mut doc = doc_with_schema(json!({}));
        doc["openapi"] = json!("3.0.3");
        assert!(downgrade_to_30(&doc).is_err());
    }

    #[test]
    fn nullable_type_arrays_become_nullable() {
        let out = converted(json!({
            "type": "object",
            "properties": {
                "list": {"type": ["array", "null"], "items": {"type": ["string", "null"]}},
                "plain": {"type": ["integer"]}
            }
        }));
        assert_eq!(
            out["properties"]["list"],
            json!({"type": "array", "items": {"type": "string", "nullable": true}, "nullable": true})
        );
        assert_eq!(out["properties"]["plain"], json!({"type": "integer"}));
    }

    #[test]
    fn several_non_null_types_are_refused() {
        let doc = doc_with_schema(json!({"type": ["string", "integer"]}));
        assert!(downgrade_to_30(&doc).is_err());
    }

    #[test]
    fn examples_const_exclusive_bounds_and_content_encoding() {
        let out = converted(json!({
            "type": "object",
            "properties": {
                "a": {"type": "string", "examples": ["x", "y"]},
                "b": {"const": "fixed"},
                "c": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
                "d": {"type": "string", "contentEncoding": "base64"},
                "e": true
            }
        }));
        let p = &out["properties"];
        assert_eq!(p["a"], json!({"type": "string", "example": "x"}));
        assert_eq!(p["b"], json!({"enum": ["fixed"]}));
        assert_eq!(
            p["c"],
            json!({"type": "integer", "exclusiveMinimum": true, "exclusiveMaximum": true, "minimum": 0, "maximum": 10})
        );
        assert_eq!(p["d"], json!({"type": "string"}));
        assert_eq!(p["e"], json!({}));
    }

    #[test]
    fn parameter_and_body_schemas_are_converted() {
        let doc = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/x": {"post": {
                "parameters": [{"name": "q", "in": "query", "schema": {"type": ["integer", "null"], "examples": [1]}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": ["string", "null"]}}}},
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "string", "examples": ["a"]}}}}}
            }}}
        });
        let out = downgrade_to_30(&doc).unwrap();
        let op = &out["paths"]["/x"]["post"];
        assert_eq!(
            op["parameters"][0]["schema"],
            json!({"type": "integer", "nullable": true, "example": 1})
        );
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"],
            json!({"type": "string", "nullable": true})
        );
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "string", "example": "a"})
        );
    }

    #[test]
    fn client_adaptation_types_problem_responses() {
        let mut doc = json!({
            "openapi": "3.0.3",
            "paths": {"/x": {"get": {"responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/S"}}}},
                "default": {"description": "err", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/E"}}}}
            }}}},
            "components": {"schemas": {"S": {"type": "object", "additionalProperties": false,
                "properties": {"inner": {"type": "object", "additionalProperties": false}}}}}
        });
        adapt_for_client(&mut doc);
        let responses = &doc["paths"]["/x"]["get"]["responses"];
        assert!(responses.get("default").is_none());
        for range in ["4XX", "5XX"] {
            assert_eq!(
                responses[range]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/E"
            );
        }
        assert_eq!(responses["200"]["description"], "ok");
        let s = &doc["components"]["schemas"]["S"];
        assert!(s.get("additionalProperties").is_none());
        assert!(s["properties"]["inner"]
            .get("additionalProperties")
            .is_none());
    }

    #[test]
    fn the_real_spec_converts_and_parses_as_30() {
        let text = std::fs::read_to_string(crate::workspace_root().join("openapi.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut out = downgrade_to_30(&doc).unwrap();
        adapt_for_client(&mut out);
        let text = out.to_string();
        assert!(!text.contains("\"examples\""));
        assert!(!text.contains("contentEncoding"));
        assert!(!text.contains("problem+json"));
        let parsed: openapiv3::OpenAPI = serde_json::from_value(out).unwrap();
        assert_eq!(parsed.openapi, "3.0.3");
    }
}
