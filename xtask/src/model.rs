//! The part of the OpenAPI 3.1 document the server generator understands, read into
//! plain Rust values. Anything outside it is an error, so a spec change the generator
//! cannot express fails loudly instead of being dropped.

use anyhow::{anyhow, bail, Context, Result};
use heck::{ToSnakeCase, ToUpperCamelCase};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use serde_json::{Map, Value};

pub struct Spec {
    pub title: String,
    pub version: String,
    pub description: Option<String>,
    pub base_path: String,
    pub tags: Vec<(String, Option<String>)>,
    pub security_scheme: SecurityScheme,
    pub schemas: Vec<SchemaDef>,
    pub operations: Vec<Operation>,
}

pub struct SecurityScheme {
    pub name: String,
    pub description: Option<String>,
}

pub struct SchemaDef {
    pub name: String,
    pub description: Option<String>,
    pub properties: Vec<Property>,
    pub deny_unknown: bool,
}

impl SchemaDef {
    pub fn has_schema_link(&self) -> bool {
        self.properties.iter().any(|p| p.json_name == "$schema")
    }
}

pub struct Property {
    pub json_name: String,
    pub rust_name: String,
    pub description: Option<String>,
    pub ty: Ty,
    pub required: bool,
    pub nullable: bool,
    pub read_only: bool,
    pub sensitive: bool,
    pub default: Option<Value>,
    pub content_encoding: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    String(StringRules),
    Integer(IntRules),
    Boolean,
    Any,
    Ref(String),
    Array(Box<Ty>),
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct StringRules {
    pub format: Option<String>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct IntRules {
    pub format: Option<String>,
    pub minimum: Option<i64>,
    pub maximum: Option<i64>,
}

impl Ty {
    /// The Rust type that holds a value of this schema.
    pub fn tokens(&self) -> TokenStream {
        match self {
            Ty::String(r) => match r.format.as_deref() {
                Some("uuid") => quote!(uuid::Uuid),
                Some("date-time") => quote!(chrono::DateTime<chrono::Utc>),
                _ => quote!(String),
            },
            Ty::Integer(_) => quote!(i64),
            Ty::Boolean => quote!(bool),
            Ty::Any => quote!(serde_json::Value),
            Ty::Ref(name) => {
                let name = format_ident!("{name}");
                quote!(#name)
            }
            Ty::Array(item) => {
                let item = item.tokens();
                quote!(Vec<#item>)
            }
        }
    }

    /// [`Ty::tokens`] as text, as attributes such as `schemars(with = "...")` take it.
    /// No Rust type this model produces needs a space.
    pub fn rust(&self) -> String {
        self.tokens().to_string().replace(' ', "")
    }
}

pub struct Operation {
    pub id: String,
    pub fn_name: String,
    pub method: String,
    pub path: String,
    pub summary: Option<String>,
    pub description: Option<String>,
    pub tag: String,
    pub path_params: Vec<Param>,
    pub query_params: Vec<Param>,
    pub body: Option<String>,
    /// The body may be left out (`required: false`): an empty body reads as `{}`, so
    /// its schema must require no property.
    pub body_optional: bool,
    /// The success responses, in status order, each with its description. They share
    /// one body: several of them (such as 200 for a dry run, 202 otherwise) make the
    /// trait method answer the status along with the body.
    pub successes: Vec<(u16, String)>,
    pub success_body: Option<String>,
    pub error_description: String,
}

impl Operation {
    pub fn query_struct(&self) -> String {
        format!("{}Query", self.id.to_upper_camel_case())
    }

    /// A read answers a `reply::Reply` (its body, or the body encoded already), so an
    /// implementation can keep an unchanged answer encoded. Writes answer the body.
    pub fn answers_reply(&self) -> bool {
        self.method.eq_ignore_ascii_case("get") && self.success_body.is_some()
    }
}

pub struct Param {
    pub name: String,
    pub rust_name: String,
    pub description: Option<String>,
    pub ty: Ty,
    pub required: bool,
    pub default: Option<Value>,
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| anyhow!("{what} is not an object"))
}

fn ref_name(v: &Value) -> Option<String> {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .map(str::to_owned)
}

const KNOWN_SCHEMA_KEYS: [&str; 16] = [
    "type",
    "format",
    "description",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "items",
    "$ref",
    "readOnly",
    "examples",
    "contentEncoding",
    "x-sonzai-sensitive",
    "x-sonzai-extension",
];

/// Reads a property or parameter schema. Returns the type and whether null is allowed.
fn read_ty(schema: &Value, at: &str) -> Result<(Ty, bool)> {
    let obj = object(schema, at)?;
    for key in obj.keys() {
        if !KNOWN_SCHEMA_KEYS.contains(&key.as_str()) {
            bail!("{at}: schema keyword `{key}` is not supported by the generator");
        }
    }
    if let Some(name) = ref_name(schema) {
        return Ok((Ty::Ref(name), false));
    }
    let (ty, nullable) = match obj.get("type") {
        None => return Ok((Ty::Any, false)),
        Some(Value::String(t)) => (t.clone(), false),
        Some(Value::Array(types)) => {
            let non_null: Vec<&str> = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match non_null.as_slice() {
                [t] => (t.to_string(), non_null.len() != types.len()),
                _ => bail!("{at}: unsupported type list {types:?}"),
            }
        }
        Some(other) => bail!("{at}: unsupported type {other}"),
    };
    let int = |k: &str| obj.get(k).and_then(Value::as_i64);
    let uint = |k: &str| obj.get(k).and_then(Value::as_u64);
    let ty = match ty.as_str() {
        "string" => {
            let pattern = str_field(obj, "pattern");
            if let Some(p) = &pattern {
                regress::Regex::new(p).with_context(|| format!("{at}: bad pattern {p}"))?;
            }
            Ty::String(StringRules {
                format: str_field(obj, "format"),
                min_length: uint("minLength"),
                max_length: uint("maxLength"),
                pattern,
            })
        }
        "integer" => Ty::Integer(IntRules {
            format: str_field(obj, "format"),
            minimum: int("minimum"),
            maximum: int("maximum"),
        }),
        "boolean" => Ty::Boolean,
        "array" => {
            let items = obj
                .get("items")
                .ok_or_else(|| anyhow!("{at}: array without items"))?;
            let (item, item_nullable) = read_ty(items, &format!("{at}.items"))?;
            if item_nullable {
                bail!("{at}: nullable array items are not supported");
            }
            Ty::Array(Box::new(item))
        }
        other => bail!("{at}: unsupported type `{other}`"),
    };
    Ok((ty, nullable))
}

fn rust_ident(name: &str) -> String {
    let snake = name.trim_start_matches('$').to_snake_case();
    match snake.as_str() {
        "type" | "ref" | "self" | "match" | "use" | "mod" | "fn" | "impl" | "loop" => {
            format!("r#{snake}")
        }
        _ => snake,
    }
}

fn read_schema(name: &str, v: &Value) -> Result<SchemaDef> {
    let obj = object(v, name)?;
    if obj.get("type").and_then(Value::as_str) != Some("object") {
        bail!("component {name}: only object schemas are supported");
    }
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut properties = Vec::new();
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (pname, pschema) in props {
            let at = format!("{name}.{pname}");
            let (ty, nullable) = read_ty(pschema, &at)?;
            let pobj = object(pschema, &at)?;
            properties.push(Property {
                json_name: pname.clone(),
                rust_name: rust_ident(pname),
                description: str_field(pobj, "description"),
                ty,
                required: required.contains(&pname.as_str()),
                nullable,
                read_only: pobj.get("readOnly") == Some(&Value::Bool(true)),
                sensitive: pobj.get("x-sonzai-sensitive") == Some(&Value::Bool(true)),
                default: pobj.get("default").cloned(),
                content_encoding: str_field(pobj, "contentEncoding"),
            });
        }
    }
    for r in &required {
        if !properties.iter().any(|p| p.json_name == *r) {
            bail!("component {name}: required property {r} is not defined");
        }
    }
    Ok(SchemaDef {
        name: name.to_owned(),
        description: str_field(obj, "description"),
        properties,
        deny_unknown: obj.get("additionalProperties") == Some(&Value::Bool(false)),
    })
}

fn read_param(v: &Value, op: &str) -> Result<(String, Param)> {
    let obj = object(v, op)?;
    let name = str_field(obj, "name").ok_or_else(|| anyhow!("{op}: parameter without name"))?;
    let location = str_field(obj, "in").ok_or_else(|| anyhow!("{op}: parameter without in"))?;
    let at = format!("{op}.{location}.{name}");
    let schema = obj
        .get("schema")
        .ok_or_else(|| anyhow!("{at}: parameter without schema"))?;
    let (ty, nullable) = read_ty(schema, &at)?;
    if nullable {
        bail!("{at}: nullable parameters are not supported");
    }
    Ok((
        location,
        Param {
            rust_name: rust_ident(&name),
            description: str_field(obj, "description"),
            ty,
            required: obj.get("required") == Some(&Value::Bool(true)),
            default: schema.get("default").cloned(),
            name,
        },
    ))
}

fn json_content_ref(v: &Value, media: &str) -> Option<String> {
    v.get("content")
        .and_then(|c| c.get(media))
        .and_then(|m| m.get("schema"))
        .and_then(ref_name)
}

fn read_operation(path: &str, method: &str, v: &Value) -> Result<Operation> {
    let obj = object(v, path)?;
    let id = str_field(obj, "operationId")
        .ok_or_else(|| anyhow!("{method} {path}: operationId missing"))?;
    let mut path_params = Vec::new();
    let mut query_params = Vec::new();
    for p in obj
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match read_param(p, &id)? {
            (loc, param) if loc == "path" => path_params.push(param),
            (loc, param) if loc == "query" => query_params.push(param),
            (loc, _) => bail!("{id}: parameters in {loc} are not supported"),
        }
    }
    let body_optional = obj
        .get("requestBody")
        .is_some_and(|b| b.get("required") != Some(&Value::Bool(true)));
    let body = match obj.get("requestBody") {
        None => None,
        Some(b) => Some(
            json_content_ref(b, "application/json")
                .ok_or_else(|| anyhow!("{id}: request body must be an application/json $ref"))?,
        ),
    };
    let responses = obj
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{id}: responses missing"))?;
    let mut successes = Vec::new();
    let mut success_body = None;
    let mut error_description = None;
    for (code, response) in responses {
        let description = response
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if code == "default" {
            if json_content_ref(response, "application/problem+json").as_deref()
                != Some("ErrorModel")
            {
                bail!("{id}: the default response must be problem+json ErrorModel");
            }
            error_description = Some(description);
            continue;
        }
        let status: u16 = code
            .parse()
            .with_context(|| format!("{id}: unsupported response code {code}"))?;
        if !(200..300).contains(&status) {
            bail!("{id}: only success codes and `default` are supported, found {code}");
        }
        let body = json_content_ref(response, "application/json");
        if body.is_none() && response.get("content").is_some() {
            bail!("{id}: success body must be an application/json $ref");
        }
        if !successes.is_empty() && body != success_body {
            bail!("{id}: success responses with different bodies are not supported");
        }
        success_body = body;
        successes.push((status, description));
    }
    if successes.is_empty() {
        bail!("{id}: no success response");
    }
    successes.sort_by_key(|(status, _)| *status);
    let tag = obj
        .get("tags")
        .and_then(|t| t.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{id}: one tag required"))?
        .to_owned();
    Ok(Operation {
        fn_name: id.to_snake_case(),
        method: method.to_owned(),
        path: path.to_owned(),
        summary: str_field(obj, "summary"),
        description: str_field(obj, "description"),
        tag,
        path_params,
        query_params,
        body,
        body_optional,
        successes,
        success_body,
        error_description: error_description
            .ok_or_else(|| anyhow!("{id}: a `default` problem+json response is required"))?,
        id,
    })
}

impl Spec {
    pub fn from_json(doc: &Value) -> Result<Spec> {
        let info = doc.get("info").ok_or_else(|| anyhow!("info missing"))?;
        let info = object(info, "info")?;
        let base_path = doc
            .get("servers")
            .and_then(|s| s.get(0))
            .and_then(|s| s.get("url"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        let tags = doc
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let t = t.as_object()?;
                Some((str_field(t, "name")?, str_field(t, "description")))
            })
            .collect();
        let components = doc
            .get("components")
            .ok_or_else(|| anyhow!("components missing"))?;
        let (scheme_name, scheme) = components
            .get("securitySchemes")
            .and_then(Value::as_object)
            .and_then(|s| s.iter().next())
            .ok_or_else(|| anyhow!("one security scheme required"))?;
        if scheme.get("type").and_then(Value::as_str) != Some("http")
            || scheme.get("scheme").and_then(Value::as_str) != Some("bearer")
        {
            bail!("only an http bearer security scheme is supported");
        }
        let mut schemas = Vec::new();
        for (name, schema) in components
            .get("schemas")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("components.schemas missing"))?
        {
            schemas.push(read_schema(name, schema)?);
        }
        let mut operations = Vec::new();
        for (path, item) in doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("paths missing"))?
        {
            for (method, op) in object(item, path)? {
                match method.as_str() {
                    "get" | "put" | "post" | "delete" | "patch" => {
                        operations.push(read_operation(path, method, op)?)
                    }
                    other => bail!("{path}: `{other}` is not supported"),
                }
            }
        }
        Ok(Spec {
            title: str_field(info, "title").unwrap_or_default(),
            version: str_field(info, "version").unwrap_or_default(),
            description: str_field(info, "description"),
            base_path,
            tags,
            security_scheme: SecurityScheme {
                name: scheme_name.clone(),
                description: scheme
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            schemas,
            operations,
        })
        .and_then(Spec::check_optional_bodies)
    }

    /// An optional body reads as `{}` when left out, which only a schema that requires
    /// nothing accepts.
    fn check_optional_bodies(self) -> Result<Spec> {
        for op in self.operations.iter().filter(|op| op.body_optional) {
            let name = op.body.as_deref().unwrap_or_default();
            let schema = self
                .schema(name)
                .ok_or_else(|| anyhow!("{}: body schema {name} missing", op.id))?;
            if schema.properties.iter().any(|p| p.required) {
                bail!(
                    "{}: an optional request body's schema ({name}) must require no property",
                    op.id
                );
            }
        }
        Ok(self)
    }

    pub fn schema(&self, name: &str) -> Option<&SchemaDef> {
        self.schemas.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A small spec: one schema, one operation with path and query parameters, a body,
    /// a success body and the problem response.
    fn small() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "Small API", "version": "2", "description": "Small."},
            "servers": [{"url": "/v2/"}],
            "tags": [{"name": "Things", "description": "About things."}, {"name": "Bare"}],
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                    "description": "API key."}},
                "schemas": {
                    "ErrorModel": {"type": "object", "properties": {}},
                    "Thing": {"type": "object", "additionalProperties": false,
                        "description": "A thing.",
                        "required": ["name", "note"],
                        "properties": {
                            "$schema": {"type": "string", "format": "uri-reference", "readOnly": true},
                            "name": {"type": "string", "description": "Its name.",
                                "minLength": 1, "maxLength": 9, "pattern": "^[a-z]+$"},
                            "note": {"type": ["string", "null"]},
                            "size": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
                            "key": {"type": "string", "x-sonzai-sensitive": true,
                                "contentEncoding": "base64"},
                            "at": {"type": "string", "format": "date-time"},
                            "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                            "parent": {"$ref": "#/components/schemas/Thing"},
                            "data": {}
                        }}
                }
            },
            "paths": {"/things/{thingId}": {"post": {
                "operationId": "makeThing",
                "summary": "Make a thing",
                "description": "Makes it.",
                "tags": ["Things"],
                "parameters": [
                    {"name": "thingId", "in": "path", "required": true,
                        "schema": {"type": "string", "format": "uuid"}},
                    {"name": "dryRun", "in": "query", "description": "Only check.",
                        "schema": {"type": "boolean"}},
                    {"name": "limit", "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "default": 5}}
                ],
                "requestBody": {"required": true, "content": {"application/json":
                    {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                "responses": {
                    "201": {"description": "Made", "content": {"application/json":
                        {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "default": {"description": "Trouble", "content": {"application/problem+json":
                        {"schema": {"$ref": "#/components/schemas/ErrorModel"}}}}
                }
            }}}
        })
    }

    /// `small()` with `edit` applied, read back; the error text when it fails.
    fn read_edited(edit: impl FnOnce(&mut Value)) -> Result<Spec> {
        let mut doc = small();
        edit(&mut doc);
        Spec::from_json(&doc)
    }

    fn thing_schema(doc: &mut Value) -> &mut Value {
        &mut doc["components"]["schemas"]["Thing"]
    }

    #[test]
    fn reads_the_document_head() {
        let spec = Spec::from_json(&small()).unwrap();
        assert_eq!(spec.title, "Small API");
        assert_eq!(spec.version, "2");
        assert_eq!(spec.description.as_deref(), Some("Small."));
        assert_eq!(spec.base_path, "/v2");
        assert_eq!(
            spec.tags,
            [
                ("Things".to_owned(), Some("About things.".to_owned())),
                ("Bare".to_owned(), None)
            ]
        );
        assert_eq!(spec.security_scheme.name, "bearer");
        assert_eq!(
            spec.security_scheme.description.as_deref(),
            Some("API key.")
        );
        let names: Vec<&str> = spec.schemas.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ErrorModel", "Thing"]);
    }

    #[test]
    fn reads_properties_required_optional_and_rules() {
        let spec = Spec::from_json(&small()).unwrap();
        let thing = spec.schema("Thing").unwrap();
        assert!(thing.deny_unknown);
        assert!(thing.has_schema_link());
        assert!(!spec.schema("ErrorModel").unwrap().deny_unknown);
        assert_eq!(thing.description.as_deref(), Some("A thing."));
        let p = |name: &str| {
            thing
                .properties
                .iter()
                .find(|p| p.json_name == name)
                .unwrap()
        };

        let schema = p("$schema");
        assert_eq!(schema.rust_name, "schema");
        assert!(schema.read_only && !schema.required);

        let name = p("name");
        assert!(name.required && !name.nullable);
        assert_eq!(name.description.as_deref(), Some("Its name."));
        assert_eq!(
            name.ty,
            Ty::String(StringRules {
                format: None,
                min_length: Some(1),
                max_length: Some(9),
                pattern: Some("^[a-z]+$".into()),
            })
        );

        let note = p("note");
        assert!(note.required && note.nullable);

        let size = p("size");
        assert!(!size.required);
        assert_eq!(size.default, Some(json!(3)));
        assert_eq!(
            size.ty,
            Ty::Integer(IntRules {
                format: None,
                minimum: Some(0),
                maximum: Some(10)
            })
        );

        let key = p("key");
        assert!(key.sensitive);
        assert_eq!(key.content_encoding.as_deref(), Some("base64"));

        assert_eq!(p("at").ty.rust(), "chrono::DateTime<chrono::Utc>");
        assert_eq!(p("ids").ty.rust(), "Vec<uuid::Uuid>");
        assert_eq!(p("parent").ty, Ty::Ref("Thing".into()));
        assert_eq!(p("data").ty, Ty::Any);
        assert_eq!(p("data").ty.rust(), "serde_json::Value");
    }

    #[test]
    fn reads_parameters_body_and_responses() {
        let spec = Spec::from_json(&small()).unwrap();
        let [op] = spec.operations.as_slice() else {
            panic!("one operation expected");
        };
        assert_eq!(op.id, "makeThing");
        assert_eq!(op.fn_name, "make_thing");
        assert_eq!(op.method, "post");
        assert_eq!(op.path, "/things/{thingId}");
        assert_eq!(op.summary.as_deref(), Some("Make a thing"));
        assert_eq!(op.description.as_deref(), Some("Makes it."));
        assert_eq!(op.tag, "Things");
        assert_eq!(op.query_struct(), "MakeThingQuery");

        let [thing_id] = op.path_params.as_slice() else {
            panic!("one path parameter expected");
        };
        assert_eq!(thing_id.rust_name, "thing_id");
        assert!(thing_id.required);
        assert_eq!(thing_id.ty.rust(), "uuid::Uuid");

        let [dry_run, limit] = op.query_params.as_slice() else {
            panic!("two query parameters expected");
        };
        assert_eq!(
            (dry_run.name.as_str(), dry_run.rust_name.as_str()),
            ("dryRun", "dry_run")
        );
        assert_eq!(dry_run.description.as_deref(), Some("Only check."));
        assert!(!dry_run.required && dry_run.default.is_none());
        assert_eq!(dry_run.ty, Ty::Boolean);
        assert_eq!(limit.default, Some(json!(5)));

        assert_eq!(op.body.as_deref(), Some("Thing"));
        assert_eq!(op.successes, vec![(201, "Made".to_owned())]);
        assert_eq!(op.success_body.as_deref(), Some("Thing"));
        assert_eq!(op.error_description, "Trouble");
    }

    #[test]
    fn an_optional_body_whose_schema_requires_nothing_is_read() {
        let spec = read_edited(|d| {
            d["paths"]["/things/{thingId}"]["post"]["requestBody"]["required"] = json!(false);
            thing_schema(d).as_object_mut().unwrap().remove("required");
        })
        .expect("an optional body is supported");
        assert!(spec.operations[0].body_optional);
        assert_eq!(spec.operations[0].body.as_deref(), Some("Thing"));
    }

    #[test]
    fn refuses_what_it_cannot_express() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: [(&str, Edit); 7] = [
            (
                "schema keyword `oneOf` is not supported",
                Box::new(|d| thing_schema(d)["properties"]["name"]["oneOf"] = json!([])),
            ),
            (
                "bad pattern",
                Box::new(|d| thing_schema(d)["properties"]["name"]["pattern"] = json!("(")),
            ),
            (
                "required property ghost is not defined",
                Box::new(|d| thing_schema(d)["required"] = json!(["ghost"])),
            ),
            (
                "an optional request body's schema (Thing) must require no property",
                Box::new(|d| {
                    d["paths"]["/things/{thingId}"]["post"]["requestBody"]["required"] =
                        json!(false)
                }),
            ),
            (
                "only success codes and `default` are supported",
                Box::new(|d| {
                    d["paths"]["/things/{thingId}"]["post"]["responses"]["404"] =
                        json!({"description": "Missing"})
                }),
            ),
            (
                "success responses with different bodies are not supported",
                Box::new(|d| {
                    d["paths"]["/things/{thingId}"]["post"]["responses"]["200"] =
                        json!({"description": "Other"})
                }),
            ),
            (
                "parameters in header are not supported",
                Box::new(|d| {
                    d["paths"]["/things/{thingId}"]["post"]["parameters"][1]["in"] = json!("header")
                }),
            ),
        ];
        for (expected, edit) in cases {
            let err = read_edited(edit).err().expect(expected);
            assert!(format!("{err:#}").contains(expected), "{expected}: {err:#}");
        }
    }

    #[test]
    fn keywords_become_raw_identifiers() {
        assert_eq!(rust_ident("type"), "r#type");
        assert_eq!(rust_ident("$schema"), "schema");
        assert_eq!(rust_ident("webhookUrl"), "webhook_url");
    }
}
