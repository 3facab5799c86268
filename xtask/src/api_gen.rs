//! Generates the server side of the API (the `sonzai-webhooks-api` crate's
//! `src/generated/`) from the [`Spec`] model: the models with serde, schemars and utoipa
//! derives, a validator per model, one trait with a method per operation, the axum
//! handlers that validate inputs before calling it, the router and the utoipa document.

use std::fmt::Write as _;

use serde_json::Value;

use crate::model::{IntRules, Operation, Param, Property, SchemaDef, Spec, StringRules, Ty};

/// A Rust string literal for `s`.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

fn doc_attr(out: &mut String, text: Option<&str>) {
    if let Some(text) = text {
        for line in text.lines() {
            let _ = writeln!(out, "#[doc = {}]", lit(&format!(" {line}")));
        }
    }
}

/// A JSON value as a Rust expression inside `schemars(extend(...))`.
fn json_tokens(v: &Value) -> String {
    v.to_string()
}

fn rust_ty(p: &Property) -> String {
    let base = p.ty.rust();
    if p.required && !p.nullable {
        base
    } else {
        format!("Option<{base}>")
    }
}

fn json_type_name(ty: &Ty) -> &'static str {
    match ty {
        Ty::String(_) => "string",
        Ty::Integer(_) => "integer",
        Ty::Boolean => "boolean",
        Ty::Array(_) => "array",
        Ty::Any | Ty::Ref(_) => "object",
    }
}

fn string_format_is_from_type(r: &StringRules) -> bool {
    matches!(r.format.as_deref(), Some("uuid") | Some("date-time"))
}

fn model_field(out: &mut String, p: &Property) {
    doc_attr(out, p.description.as_deref());
    let mut serde = Vec::new();
    let plain_name = p.rust_name.trim_start_matches("r#");
    if plain_name != p.json_name {
        serde.push(format!("rename = {}", lit(&p.json_name)));
    }
    if !p.required {
        serde.push("default".to_owned());
        serde.push("skip_serializing_if = \"Option::is_none\"".to_owned());
    }
    if !serde.is_empty() {
        let _ = writeln!(out, "#[serde({})]", serde.join(", "));
    }

    let mut schemars = Vec::new();
    let mut extend = Vec::new();
    let mut utoipa = Vec::new();
    if !p.required && !p.nullable {
        schemars.push(format!("with = {}", lit(&p.ty.rust())));
        utoipa.push("nullable = false".to_owned());
    }
    if p.required && p.nullable {
        schemars.push("required".to_owned());
        extend.push(format!(
            "\"type\" = [{}, \"null\"]",
            lit(json_type_name(&p.ty))
        ));
        utoipa.push("required = true".to_owned());
    }
    match &p.ty {
        Ty::String(r) => {
            let mut length = Vec::new();
            if let Some(min) = r.min_length {
                length.push(format!("min = {min}"));
                utoipa.push(format!("min_length = {min}"));
            }
            if let Some(max) = r.max_length {
                length.push(format!("max = {max}"));
                utoipa.push(format!("max_length = {max}"));
            }
            if !length.is_empty() {
                schemars.push(format!("length({})", length.join(", ")));
            }
            if let Some(pattern) = &r.pattern {
                schemars.push(format!("regex(pattern = {})", lit(pattern)));
                utoipa.push(format!("pattern = {}", lit(pattern)));
            }
            if let (Some(format), false) = (&r.format, string_format_is_from_type(r)) {
                extend.push(format!("\"format\" = {}", lit(format)));
                utoipa.push(format!("format = {}", lit(format)));
            }
        }
        Ty::Integer(r) => {
            let mut range = Vec::new();
            if let Some(min) = r.minimum {
                range.push(format!("min = {min}"));
                utoipa.push(format!("minimum = {min}"));
            }
            if let Some(max) = r.maximum {
                range.push(format!("max = {max}"));
                utoipa.push(format!("maximum = {max}"));
            }
            if !range.is_empty() {
                schemars.push(format!("range({})", range.join(", ")));
            }
        }
        Ty::Any => utoipa.push("value_type = Value".to_owned()),
        Ty::Boolean | Ty::Ref(_) | Ty::Array(_) => {}
    }
    if p.read_only {
        extend.push("\"readOnly\" = true".to_owned());
        utoipa.push("read_only".to_owned());
    }
    if let Some(default) = &p.default {
        extend.push(format!("\"default\" = {}", json_tokens(default)));
        utoipa.push(format!("default = {}", json_tokens(default)));
    }
    if let Some(encoding) = &p.content_encoding {
        extend.push(format!("\"contentEncoding\" = {}", lit(encoding)));
        utoipa.push(format!("content_encoding = {}", lit(encoding)));
    }
    if !extend.is_empty() {
        schemars.push(format!("extend({})", extend.join(", ")));
    }
    if !schemars.is_empty() {
        let _ = writeln!(out, "#[schemars({})]", schemars.join(", "));
    }
    if !utoipa.is_empty() {
        let _ = writeln!(out, "#[schema({})]", utoipa.join(", "));
    }
    let _ = writeln!(out, "pub {}: {},", p.rust_name, rust_ty(p));
}

fn pattern_static(pattern: &str, patterns: &mut Vec<String>) -> String {
    let index = match patterns.iter().position(|p| p == pattern) {
        Some(i) => i,
        None => {
            patterns.push(pattern.to_owned());
            patterns.len() - 1
        }
    };
    format!("PATTERN_{index}")
}

fn string_rules_expr(r: &StringRules, sensitive: bool, patterns: &mut Vec<String>) -> String {
    let opt = |v: Option<u64>| match v {
        Some(n) => format!("Some({n})"),
        None => "None".to_owned(),
    };
    let format = match r.format.as_deref() {
        Some("uuid") => "Some(v::Format::Uuid)",
        Some("date-time") => "Some(v::Format::DateTime)",
        Some("uri") => "Some(v::Format::Uri)",
        _ => "None",
    };
    let pattern = match &r.pattern {
        Some(p) => format!("Some(&{})", pattern_static(p, patterns)),
        None => "None".to_owned(),
    };
    // Every string of every input refuses U+0000: no field has a use for it and
    // PostgreSQL `text` cannot store it, so it must never reach the store.
    format!(
        "v::StringRules {{ format: {format}, min_length: {}, max_length: {}, pattern: {pattern}, sensitive: {sensitive}, forbid_nul: true }}",
        opt(r.min_length),
        opt(r.max_length)
    )
}

fn int_rules_expr(r: &IntRules) -> String {
    let opt = |v: Option<i64>| match v {
        Some(n) => format!("Some({n})"),
        None => "None".to_owned(),
    };
    format!(
        "v::IntRules {{ minimum: {}, maximum: {} }}",
        opt(r.minimum),
        opt(r.maximum)
    )
}

/// Statement(s) validating `value` (an expression of type `&serde_json::Value`) at `loc`.
fn validate_expr(
    ty: &Ty,
    value: &str,
    loc: &str,
    nullable: bool,
    sensitive: bool,
    patterns: &mut Vec<String>,
) -> String {
    match ty {
        Ty::String(r) => format!(
            "v::check_string({value}, {loc}, &{}, {nullable}, errors);",
            string_rules_expr(r, sensitive, patterns)
        ),
        Ty::Integer(r) => format!(
            "v::check_integer({value}, {loc}, &{}, {nullable}, errors);",
            int_rules_expr(r)
        ),
        Ty::Boolean => format!("v::check_boolean({value}, {loc}, {nullable}, errors);"),
        Ty::Any => String::new(),
        Ty::Ref(name) => {
            let f = validator_name(name);
            if nullable {
                format!("if !{value}.is_null() {{ {f}({value}, {loc}, errors); }}")
            } else {
                format!("{f}({value}, {loc}, errors);")
            }
        }
        Ty::Array(item) => {
            let inner = validate_expr(item, "item", "&item_loc", false, sensitive, patterns);
            format!(
                "v::check_array({value}, {loc}, {nullable}, errors, |item, item_loc, errors| {{ let item_loc = item_loc.to_owned(); {inner} }});"
            )
        }
    }
}

fn validator_name(schema: &str) -> String {
    format!("validate_{}", heck::ToSnakeCase::to_snake_case(schema))
}

fn model_validator(out: &mut String, s: &SchemaDef, patterns: &mut Vec<String>) {
    let allowed: Vec<String> = s.properties.iter().map(|p| lit(&p.json_name)).collect();
    let required: Vec<String> = s
        .properties
        .iter()
        .filter(|p| p.required)
        .map(|p| lit(&p.json_name))
        .collect();
    let _ = writeln!(
        out,
        "/// Checks a JSON value against the `{name}` schema, one entry per problem.",
        name = s.name
    );
    let _ = writeln!(
        out,
        "pub fn {f}(value: &serde_json::Value, loc: &str, errors: &mut Vec<ErrorDetail>) {{",
        f = validator_name(&s.name)
    );
    let _ = writeln!(
        out,
        "let Some(object) = v::check_object(value, loc, errors) else {{ return; }};"
    );
    let _ = writeln!(
        out,
        "v::check_properties(object, loc, &[{}], &[{}], {}, errors);",
        allowed.join(", "),
        required.join(", "),
        s.deny_unknown
    );
    for p in &s.properties {
        let check = validate_expr(
            &p.ty,
            "value",
            "&v::child(loc, NAME)",
            p.nullable,
            p.sensitive,
            patterns,
        );
        if check.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "{{ const NAME: &str = {}; if let Some(value) = object.get(NAME) {{ {check} }} }}",
            lit(&p.json_name)
        );
    }
    let _ = writeln!(out, "}}\n");
}

fn pattern_statics(out: &mut String, patterns: &[String]) {
    for (i, p) in patterns.iter().enumerate() {
        let _ = writeln!(
            out,
            "static PATTERN_{i}: v::Pattern = v::Pattern::new({});",
            lit(p)
        );
    }
}

pub const HEADER: &str =
    "// @generated by `cargo xtask codegen` from openapi.json. Do not edit by hand.\n";

pub fn models(spec: &Spec) -> String {
    let mut out = String::from(HEADER);
    out.push_str(
        "//! The models of the API: one type per component schema, with serde, schemars and\n\
         //! utoipa derives, and a validator per type that the router runs before deserializing.\n\n\
         use crate::validate as v;\n\n",
    );
    let mut patterns = Vec::new();
    for s in &spec.schemas {
        doc_attr(&mut out, s.description.as_deref());
        out.push_str("#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, utoipa::ToSchema)]\n");
        if s.deny_unknown {
            out.push_str("#[serde(deny_unknown_fields)]\n");
        }
        let _ = writeln!(out, "pub struct {} {{", s.name);
        for p in &s.properties {
            model_field(&mut out, p);
        }
        out.push_str("}\n\n");
        if s.has_schema_link() {
            let _ = writeln!(
                out,
                "impl {name} {{\n/// The `$schema` link this body carries in responses.\npub const SCHEMA_LINK: &'static str = {link};\n}}\n",
                name = s.name,
                link = lit(&format!("{}/schemas/{}.json", spec.base_path, s.name))
            );
        }
    }
    for s in &spec.schemas {
        model_validator(&mut out, s, &mut patterns);
    }
    pattern_statics(&mut out, &patterns);

    let names: Vec<String> = spec.schemas.iter().map(|s| lit(&s.name)).collect();
    let _ = writeln!(
        out,
        "\n/// The names of all component schemas.\npub const SCHEMA_NAMES: &[&str] = &[{}];\n",
        names.join(", ")
    );
    out.push_str(
        "/// The JSON Schema (draft 2020-12, derived by schemars) of the component `name`.\n\
         pub fn json_schema(name: &str) -> Option<serde_json::Value> {\nlet schema = match name {\n",
    );
    for s in &spec.schemas {
        let _ = writeln!(
            out,
            "{} => schemars::schema_for!({}),",
            lit(&s.name),
            s.name
        );
    }
    out.push_str("_ => return None,\n};\nserde_json::to_value(schema).ok()\n}\n");
    out
}

fn param_rust_ty(p: &Param) -> String {
    let base = p.ty.rust();
    if p.required || p.default.is_some() {
        base
    } else {
        format!("Option<{base}>")
    }
}

fn query_struct(out: &mut String, op: &Operation) {
    let _ = writeln!(
        out,
        "/// The query parameters of `{}`, validated, defaults applied.",
        op.id
    );
    out.push_str("#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]\n#[into_params(parameter_in = Query)]\n");
    let _ = writeln!(out, "pub struct {} {{", op.query_struct());
    for p in &op.query_params {
        doc_attr(out, p.description.as_deref());
        let mut attrs = Vec::new();
        if p.rust_name != p.name {
            attrs.push(format!("rename = {}", lit(&p.name)));
        }
        if let Some(d) = &p.default {
            attrs.push(format!("default = {}", json_tokens(d)));
        }
        if !p.required {
            attrs.push("required = false".to_owned());
        }
        if !p.required && p.default.is_none() {
            attrs.push("nullable = false".to_owned());
        }
        match &p.ty {
            Ty::Integer(r) => {
                if let Some(min) = r.minimum {
                    attrs.push(format!("minimum = {min}"));
                }
                if let Some(max) = r.maximum {
                    attrs.push(format!("maximum = {max}"));
                }
            }
            Ty::String(r) => {
                if let Some(min) = r.min_length {
                    attrs.push(format!("min_length = {min}"));
                }
                if let Some(max) = r.max_length {
                    attrs.push(format!("max_length = {max}"));
                }
                if let Some(pattern) = &r.pattern {
                    attrs.push(format!("pattern = {}", lit(pattern)));
                }
            }
            _ => {}
        }
        if !attrs.is_empty() {
            let _ = writeln!(out, "#[param({})]", attrs.join(", "));
        }
        let _ = writeln!(out, "pub {}: {},", p.rust_name, param_rust_ty(p));
    }
    out.push_str("}\n\n");
}

fn trait_method_sig(op: &Operation) -> String {
    let mut args = vec!["&self".to_owned(), "ctx: Self::Context".to_owned()];
    for p in &op.path_params {
        args.push(format!("{}: {}", p.rust_name, p.ty.rust()));
    }
    if !op.query_params.is_empty() {
        args.push(format!("query: {}", op.query_struct()));
    }
    if let Some(body) = &op.body {
        args.push(format!("body: {body}"));
    }
    let ok = op.success_body.clone().unwrap_or_else(|| "()".to_owned());
    format!(
        "fn {}({}) -> impl Future<Output = Result<{ok}, Problem>> + Send",
        op.fn_name,
        args.join(", ")
    )
}

fn utoipa_path_attr(spec: &Spec, op: &Operation) -> String {
    let mut parts = vec![op.method.clone(), format!("path = {}", lit(&op.path))];
    parts.push(format!("operation_id = {}", lit(&op.id)));
    parts.push(format!("tag = {}", lit(&op.tag)));
    if let Some(s) = &op.summary {
        parts.push(format!("summary = {}", lit(s)));
    }
    if let Some(d) = &op.description {
        parts.push(format!("description = {}", lit(d)));
    }
    let mut params = Vec::new();
    for p in &op.path_params {
        let mut features = vec![
            format!("{} = {}", lit(&p.name), p.ty.rust()),
            "Path".to_owned(),
        ];
        if let Some(d) = &p.description {
            features.push(format!("description = {}", lit(d)));
        }
        if let Ty::String(r) = &p.ty {
            if let Some(min) = r.min_length {
                features.push(format!("min_length = {min}"));
            }
            if let Some(max) = r.max_length {
                features.push(format!("max_length = {max}"));
            }
            if let Some(pattern) = &r.pattern {
                features.push(format!("pattern = {}", lit(pattern)));
            }
        }
        params.push(format!("({})", features.join(", ")));
    }
    if !op.query_params.is_empty() {
        params.push(op.query_struct());
    }
    if !params.is_empty() {
        parts.push(format!("params({})", params.join(", ")));
    }
    if let Some(body) = &op.body {
        parts.push(format!(
            "request_body(content = {body}, content_type = \"application/json\")"
        ));
    }
    let success = match &op.success_body {
        Some(body) => format!(
            "(status = {}, description = {}, body = {body}, content_type = \"application/json\")",
            op.success_status,
            lit(&op.success_description)
        ),
        None => format!(
            "(status = {}, description = {})",
            op.success_status,
            lit(&op.success_description)
        ),
    };
    parts.push(format!(
        "responses({success}, (status = \"default\", description = {}, body = ErrorModel, content_type = \"application/problem+json\"))",
        lit(&op.error_description)
    ));
    parts.push(format!(
        "security(({} = []))",
        lit(&spec.security_scheme.name)
    ));
    format!("#[utoipa::path({})]", parts.join(", "))
}

fn handler(out: &mut String, spec: &Spec, op: &Operation, patterns: &mut Vec<String>) {
    let _ = writeln!(out, "{}", utoipa_path_attr(spec, op));
    let _ = writeln!(
        out,
        "/// `{} {}`: validates the request, then calls [`{}::{}`].",
        op.method.to_uppercase(),
        op.path,
        trait_name(spec),
        op.fn_name
    );
    let _ = writeln!(
        out,
        "pub async fn {}<T: {}>(State(api): State<Arc<T>>, request: Request) -> Response {{",
        op.fn_name,
        trait_name(spec)
    );
    let _ = writeln!(
        out,
        "let ({}parts, {}) = request.into_parts();",
        if op.path_params.is_empty() {
            ""
        } else {
            "mut "
        },
        if op.body.is_some() { "body" } else { "_" }
    );
    out.push_str("let ctx = match api.authenticate(&parts).await { Ok(ctx) => ctx, Err(problem) => return problem.into_response() };\n");
    out.push_str("let mut errors = Vec::new();\n");
    if !op.path_params.is_empty() {
        out.push_str("let path = v::path_params(&mut parts).await;\n");
    }
    let mut call_args = vec!["ctx".to_owned()];
    for p in &op.path_params {
        let expr = match &p.ty {
            Ty::String(r) if r.format.as_deref() == Some("uuid") => {
                format!("v::path_uuid(&path, {}, &mut errors)", lit(&p.name))
            }
            Ty::String(r) => format!(
                "v::path_string(&path, {}, &{}, &mut errors)",
                lit(&p.name),
                string_rules_expr(r, false, patterns)
            ),
            other => panic!("unsupported path parameter type {other:?}"),
        };
        let _ = writeln!(out, "let {} = {expr};", p.rust_name);
        call_args.push(p.rust_name.clone());
    }
    // Every operation reads its query string, if only to refuse parameters it does not
    // declare and repeated ones, as bodies refuse unknown and duplicate fields.
    let query_names: Vec<String> = op.query_params.iter().map(|p| lit(&p.name)).collect();
    let _ = writeln!(
        out,
        "let pairs = v::query_pairs(&parts);\nv::check_query_names(&pairs, &[{}], &mut errors);",
        query_names.join(", ")
    );
    if !op.query_params.is_empty() {
        let mut fields = Vec::new();
        for p in &op.query_params {
            let read = match &p.ty {
                Ty::Integer(r) => format!(
                    "v::query_integer(&pairs, {}, &{}, &mut errors)",
                    lit(&p.name),
                    int_rules_expr(r)
                ),
                Ty::String(r) => format!(
                    "v::query_string(&pairs, {}, &{}, &mut errors)",
                    lit(&p.name),
                    string_rules_expr(r, false, patterns)
                ),
                other => panic!("unsupported query parameter type {other:?}"),
            };
            let expr = match (&p.default, p.required) {
                (Some(d), _) => format!("{read}.unwrap_or({})", json_tokens(d)),
                (None, true) => format!("{read}.unwrap_or_default()"),
                (None, false) => read,
            };
            fields.push(format!("{}: {expr}", p.rust_name));
        }
        let _ = writeln!(
            out,
            "let query = {} {{ {} }};",
            op.query_struct(),
            fields.join(", ")
        );
        call_args.push("query".to_owned());
    }
    if let Some(body) = &op.body {
        let _ = writeln!(
            out,
            "let body: Option<{body}> = match v::json_body(&parts, body, api.max_body_bytes(), {}, &mut errors).await {{ Ok(body) => body, Err(problem) => return problem.into_response() }};",
            validator_name(body)
        );
    }
    out.push_str("if !errors.is_empty() { return Problem::validation(errors).into_response(); }\n");
    if op.body.is_some() {
        out.push_str(
            "let Some(body) = body else { return Problem::validation(errors).into_response(); };\n",
        );
        call_args.push("body".to_owned());
    }
    let status = format!(
        "StatusCode::from_u16({}).unwrap_or(StatusCode::OK)",
        op.success_status
    );
    let call = format!("api.{}({}).await", op.fn_name, call_args.join(", "));
    match &op.success_body {
        Some(body) => {
            let has_link = spec.schema(body).is_some_and(SchemaDef::has_schema_link);
            let link = if has_link {
                format!("out.schema.get_or_insert_with(|| {body}::SCHEMA_LINK.to_owned());")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "match {call} {{ Ok(mut out) => {{ {link} v::json_response({status}, &out) }} Err(problem) => problem.into_response() }}"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "match {call} {{ Ok(()) => {status}.into_response(), Err(problem) => problem.into_response() }}"
            );
        }
    }
    out.push_str("}\n\n");
}

pub fn trait_name(spec: &Spec) -> String {
    let words: String = spec
        .title
        .split_whitespace()
        .filter(|w| !w.eq_ignore_ascii_case("sonzai") && !w.eq_ignore_ascii_case("api"))
        .collect();
    format!("{words}Api")
}

pub fn server(spec: &Spec) -> String {
    let tr = trait_name(spec);
    let mut out = String::from(HEADER);
    out.push_str(
        "//! The server side of every operation: the trait an implementation fills in, the\n\
         //! axum handlers that authenticate, validate and call it, the router and the\n\
         //! OpenAPI document utoipa builds from these handlers and the models.\n\n\
         use std::future::Future;\nuse std::sync::Arc;\n\n\
         use axum::extract::{Request, State};\nuse axum::http::StatusCode;\n\
         use axum::response::{IntoResponse, Response};\nuse axum::Router;\n\n\
         use super::models::*;\nuse crate::problem::Problem;\nuse crate::validate as v;\n\n",
    );
    let mut patterns = Vec::new();
    for op in spec
        .operations
        .iter()
        .filter(|o| !o.query_params.is_empty())
    {
        query_struct(&mut out, op);
    }

    let _ = writeln!(
        out,
        "/// The {title}: one method per operation. The router calls [`{tr}::authenticate`]\n\
         /// first, then validates every input, and calls the operation only when all of them\n\
         /// are valid.\npub trait {tr}: Send + Sync + 'static {{",
        title = spec.title
    );
    out.push_str(
        "/// What authentication yields (for example the caller's tenant and project); handed\n\
         /// to every operation.\ntype Context: Send;\n\n\
         /// Authenticates a request from its head. An error is answered as is.\n\
         fn authenticate(&self, parts: &axum::http::request::Parts) -> impl Future<Output = Result<Self::Context, Problem>> + Send;\n\n\
         /// Largest request body accepted, in bytes; larger ones are answered 413.\n\
         fn max_body_bytes(&self) -> usize { 256 * 1024 }\n\n",
    );
    for op in &spec.operations {
        let summary = op.summary.clone().unwrap_or_else(|| op.id.clone());
        let _ = writeln!(
            out,
            "/// {summary}\n///\n/// `{} {}` (operationId `{}`)",
            op.method.to_uppercase(),
            op.path,
            op.id
        );
        let _ = writeln!(out, "{};\n", trait_method_sig(op));
    }
    out.push_str("}\n\n");

    for op in &spec.operations {
        handler(&mut out, spec, op, &mut patterns);
    }

    out.push_str("/// Every operation: (method, route as matched by the router, operationId).\npub const OPERATIONS: &[(&str, &str, &str)] = &[\n");
    for op in &spec.operations {
        let _ = writeln!(
            out,
            "({}, {}, {}),",
            lit(&op.method.to_uppercase()),
            lit(&format!("{}{}", spec.base_path, op.path)),
            lit(&op.id)
        );
    }
    out.push_str("];\n\n");

    // Router: group methods by path, in spec order.
    let _ = writeln!(
        out,
        "/// The router serving every operation under `{base}`, plus\n\
         /// `{base}/schemas/{{Name}}.json` (the JSON Schema of each model) and\n\
         /// `{base}/openapi.json` (the OpenAPI document).\n\
         pub fn router<T: {tr}>(api: Arc<T>) -> Router {{\nRouter::new()",
        base = spec.base_path
    );
    let mut paths: Vec<&str> = Vec::new();
    for op in &spec.operations {
        if !paths.contains(&op.path.as_str()) {
            paths.push(&op.path);
        }
    }
    for path in paths {
        let methods: Vec<String> = spec
            .operations
            .iter()
            .filter(|o| o.path == path)
            .map(|o| format!("{}({}::<T>)", o.method, o.fn_name))
            .collect();
        let _ = writeln!(
            out,
            ".route({}, axum::routing::{})",
            lit(&format!("{}{}", spec.base_path, path)),
            methods.join(".")
        );
    }
    let _ = writeln!(
        out,
        ".route({}, axum::routing::get(v::schema_document))",
        lit(&format!("{}/schemas/{{file}}", spec.base_path))
    );
    let _ = writeln!(
        out,
        ".route({}, axum::routing::get(v::openapi_document))",
        lit(&format!("{}/openapi.json", spec.base_path))
    );
    out.push_str(".with_state(api)\n}\n\n");

    // utoipa document.
    let ops: Vec<&str> = spec.operations.iter().map(|o| o.fn_name.as_str()).collect();
    let schemas: Vec<&str> = spec.schemas.iter().map(|s| s.name.as_str()).collect();
    let tags: Vec<String> = spec
        .tags
        .iter()
        .map(|(name, d)| match d {
            Some(d) => format!("(name = {}, description = {})", lit(name), lit(d)),
            None => format!("(name = {})", lit(name)),
        })
        .collect();
    let mut info = vec![
        format!("title = {}", lit(&spec.title)),
        format!("version = {}", lit(&spec.version)),
    ];
    if let Some(d) = &spec.description {
        info.push(format!("description = {}", lit(d)));
    }
    let _ = writeln!(
        out,
        "/// The OpenAPI document of the API, built by utoipa from the handlers and models above.\n\
         #[derive(utoipa::OpenApi)]\n\
         #[openapi(info({}), servers((url = {})), paths({}), components(schemas({})), tags({}), modifiers(&SecurityScheme))]\n\
         pub struct ApiDoc;\n",
        info.join(", "),
        lit(&spec.base_path),
        ops.join(", "),
        schemas.join(", "),
        tags.join(", ")
    );
    let desc = match &spec.security_scheme.description {
        Some(d) => format!("Some({})", lit(d)),
        None => "None::<String>".to_owned(),
    };
    let _ = writeln!(
        out,
        "struct SecurityScheme;\n\n\
         impl utoipa::Modify for SecurityScheme {{\n\
         fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {{\n\
         use utoipa::openapi::security::{{HttpAuthScheme, HttpBuilder, SecurityScheme}};\n\
         let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description({desc}).build();\n\
         openapi.components.get_or_insert_with(Default::default).add_security_scheme({}, SecurityScheme::Http(scheme));\n\
         }}\n}}\n",
        lit(&spec.security_scheme.name)
    );
    pattern_statics(&mut out, &patterns);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A one-operation spec with a string in every place the router reads one: a body
    /// property, array items, a path parameter and a query parameter.
    fn tiny_spec() -> Spec {
        let problem = json!({"description": "Error", "content": {"application/problem+json":
            {"schema": {"$ref": "#/components/schemas/ErrorModel"}}}});
        Spec::from_json(&json!({
            "openapi": "3.1.0",
            "info": {"title": "Tiny API", "version": "1"},
            "servers": [{"url": "/api"}],
            "components": {
                "securitySchemes": {"key": {"type": "http", "scheme": "bearer"}},
                "schemas": {
                    "ErrorModel": {"type": "object", "properties": {"title": {"type": "string"}}},
                    "Thing": {"type": "object", "additionalProperties": false,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "maxLength": 10},
                            "secret": {"type": "string", "x-sonzai-sensitive": true},
                            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
                            "count": {"type": "integer"}
                        }}
                }
            },
            "paths": {"/things/{thingId}/{kind}": {"put": {
                "operationId": "putThing",
                "tags": ["Things"],
                "parameters": [
                    {"name": "thingId", "in": "path", "required": true,
                        "schema": {"type": "string", "format": "uuid"}},
                    {"name": "kind", "in": "path", "required": true,
                        "schema": {"type": "string", "pattern": "^[a-z]+$"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                ],
                "requestBody": {"required": true, "content": {"application/json":
                    {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                "responses": {"204": {"description": "Done"}, "default": problem}
            }}}
        }))
        .expect("tiny spec")
    }

    /// The lines of `code` that read a string under rules.
    fn string_rule_lines(code: &str) -> Vec<&str> {
        code.lines()
            .filter(|l| l.contains("v::StringRules {"))
            .collect()
    }

    #[test]
    fn every_string_input_refuses_nul() {
        let spec = tiny_spec();
        let models = models(&spec);
        let server = server(&spec);
        for (code, reads) in [
            (
                models.as_str(),
                ["\"name\"", "\"secret\"", "\"tags\""].as_slice(),
            ),
            (
                server.as_str(),
                ["v::path_string", "v::query_string"].as_slice(),
            ),
        ] {
            for read in reads {
                let line = string_rule_lines(code)
                    .into_iter()
                    .find(|l| l.contains(read))
                    .unwrap_or_else(|| panic!("no string rules for {read}:\n{code}"));
                assert!(line.contains("forbid_nul: true"), "{read}: {line}");
            }
            for line in string_rule_lines(code) {
                assert!(line.contains("forbid_nul: true"), "{line}");
            }
        }
        // The uuid path parameter is parsed as a UUID, which has no room for a NUL.
        assert!(server.contains("v::path_uuid(&path, \"thingId\""));
    }
}
