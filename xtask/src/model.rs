//! The part of the OpenAPI 3.1 document the server generator understands, read into
//! plain Rust values. Anything outside it is an error, so a spec change the generator
//! cannot express fails loudly instead of being dropped.

use anyhow::{anyhow, bail, Context, Result};
use heck::{ToSnakeCase, ToUpperCamelCase};
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
    pub fn rust(&self) -> String {
        match self {
            Ty::String(r) => match r.format.as_deref() {
                Some("uuid") => "uuid::Uuid".into(),
                Some("date-time") => "chrono::DateTime<chrono::Utc>".into(),
                _ => "String".into(),
            },
            Ty::Integer(_) => "i64".into(),
            Ty::Boolean => "bool".into(),
            Ty::Any => "serde_json::Value".into(),
            Ty::Ref(name) => name.clone(),
            Ty::Array(item) => format!("Vec<{}>", item.rust()),
        }
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
    pub success_status: u16,
    pub success_description: String,
    pub success_body: Option<String>,
    pub error_description: String,
}

impl Operation {
    pub fn query_struct(&self) -> String {
        format!("{}Query", self.id.to_upper_camel_case())
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
    let body =
        match obj.get("requestBody") {
            None => None,
            Some(b) => {
                if b.get("required") != Some(&Value::Bool(true)) {
                    bail!("{id}: optional request bodies are not supported");
                }
                Some(json_content_ref(b, "application/json").ok_or_else(|| {
                    anyhow!("{id}: request body must be an application/json $ref")
                })?)
            }
        };
    let responses = obj
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{id}: responses missing"))?;
    let mut success = None;
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
        if success.is_some() {
            bail!("{id}: several success responses are not supported");
        }
        let body = json_content_ref(response, "application/json");
        if body.is_none() && response.get("content").is_some() {
            bail!("{id}: success body must be an application/json $ref");
        }
        success = Some((status, description, body));
    }
    let (success_status, success_description, success_body) =
        success.ok_or_else(|| anyhow!("{id}: no success response"))?;
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
        success_status,
        success_description,
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
    }

    pub fn schema(&self, name: &str) -> Option<&SchemaDef> {
        self.schemas.iter().find(|s| s.name == name)
    }
}
