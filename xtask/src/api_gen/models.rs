//! The data types: one struct per component schema with its derives, docs and schema
//! attributes, the query struct of each operation that has query parameters, and the
//! lookup of each schema's JSON Schema.

use proc_macro2::TokenStream;
use quote::quote;

use super::{doc, generated_doc, ident, json_tokens, signed, string_param_rules, unsuffixed};
use crate::model::{Operation, Param, Property, SchemaDef, Spec, StringRules, Ty};

/// The struct of component schema `s`, the `$schema` link it answers with if it has
/// one, and its `reply::ResponseBody` impl, which fills that link.
pub fn model(spec: &Spec, s: &SchemaDef) -> TokenStream {
    let (docs, no_description) = match &s.description {
        Some(text) => (doc(text), None),
        None => (
            generated_doc(&format!("The `{}` component schema.", s.name)),
            Some(quote!(#[schemars(description = "")])),
        ),
    };
    let name = ident(&s.name);
    let deny = s
        .deny_unknown
        .then(|| quote!(#[serde(deny_unknown_fields)]));
    let fields = s.properties.iter().map(field);
    let link = if s.has_schema_link() {
        let link = format!("{}/schemas/{}.json", spec.base_path, s.name);
        quote! {
            impl #name {
                /// The `$schema` link this body carries in responses.
                pub const SCHEMA_LINK: &'static str = #link;
            }
            impl crate::reply::ResponseBody for #name {
                fn fill_schema_link(&mut self) {
                    self.schema.get_or_insert_with(|| Self::SCHEMA_LINK.to_owned());
                }
            }
        }
    } else {
        quote!(impl crate::reply::ResponseBody for #name {})
    };
    quote! {
        #docs
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, utoipa::ToSchema)]
        #deny
        #no_description
        pub struct #name {
            #(#fields)*
        }
        #link
    }
}

/// The field type: optional properties and nullable ones are `Option`s.
fn field_ty(p: &Property) -> TokenStream {
    let base = p.ty.tokens();
    if p.required && !p.nullable {
        base
    } else {
        quote!(Option<#base>)
    }
}

/// The JSON type name of a value of `ty`, as a nullable property's schema lists it.
fn json_type_name(ty: &Ty) -> &'static str {
    match ty {
        Ty::String(_) => "string",
        Ty::Integer(_) => "integer",
        Ty::Boolean => "boolean",
        Ty::Array(_) => "array",
        Ty::Any | Ty::Ref(_) => "object",
    }
}

/// Whether the Rust type already gives schemars the string format.
fn string_format_is_from_type(r: &StringRules) -> bool {
    matches!(r.format.as_deref(), Some("uuid") | Some("date-time"))
}

/// What a property without a description in the spec is documented as.
fn property_doc(p: &Property) -> String {
    let presence = match (p.required, p.nullable) {
        (true, false) => "required",
        (true, true) => "required, may be null",
        (false, _) => "optional",
    };
    format!("The `{}` property ({presence}).", p.json_name)
}

/// One struct field with its serde, schemars (JSON Schema) and utoipa (OpenAPI)
/// attributes, so both documents describe the property as the spec does.
pub fn field(p: &Property) -> TokenStream {
    let json_name = &p.json_name;
    let mut schemars = Vec::new();
    let docs = match &p.description {
        Some(text) => doc(text),
        None => {
            schemars.push(quote!(description = ""));
            generated_doc(&property_doc(p))
        }
    };
    let mut serde = Vec::new();
    if p.rust_name.trim_start_matches("r#") != p.json_name {
        serde.push(quote!(rename = #json_name));
    }
    if !p.required {
        serde.push(quote!(default));
        serde.push(quote!(skip_serializing_if = "Option::is_none"));
    }
    if matches!(&p.ty, Ty::String(r) if r.format.as_deref() == Some("date-time")) {
        // Written as one string rather than chrono's pieces (see `crate::time`).
        let with = if p.required && !p.nullable {
            "crate::time::serialize"
        } else {
            "crate::time::serialize_option"
        };
        serde.push(quote!(serialize_with = #with));
    }

    let mut extend = Vec::new();
    let mut utoipa = Vec::new();
    if !p.required && !p.nullable {
        let with = p.ty.rust();
        schemars.push(quote!(with = #with));
        utoipa.push(quote!(nullable = false));
    }
    if p.required && p.nullable {
        let json_type = json_type_name(&p.ty);
        schemars.push(quote!(required));
        extend.push(quote!("type" = [#json_type, "null"]));
        utoipa.push(quote!(required = true));
    }
    match &p.ty {
        Ty::String(r) => {
            let mut length = Vec::new();
            if let Some(min) = r.min_length.map(unsuffixed) {
                length.push(quote!(min = #min));
                utoipa.push(quote!(min_length = #min));
            }
            if let Some(max) = r.max_length.map(unsuffixed) {
                length.push(quote!(max = #max));
                utoipa.push(quote!(max_length = #max));
            }
            if !length.is_empty() {
                schemars.push(quote!(length(#(#length),*)));
            }
            if let Some(pattern) = &r.pattern {
                schemars.push(quote!(regex(pattern = #pattern)));
                utoipa.push(quote!(pattern = #pattern));
            }
            if let (Some(format), false) = (&r.format, string_format_is_from_type(r)) {
                extend.push(quote!("format" = #format));
                utoipa.push(quote!(format = #format));
            }
        }
        Ty::Integer(r) => {
            let mut range = Vec::new();
            if let Some(min) = r.minimum.map(signed) {
                range.push(quote!(min = #min));
                utoipa.push(quote!(minimum = #min));
            }
            if let Some(max) = r.maximum.map(signed) {
                range.push(quote!(max = #max));
                utoipa.push(quote!(maximum = #max));
            }
            if !range.is_empty() {
                schemars.push(quote!(range(#(#range),*)));
            }
        }
        Ty::Any => utoipa.push(quote!(value_type = Value)),
        Ty::Boolean | Ty::Ref(_) | Ty::Array(_) => {}
    }
    if p.read_only {
        extend.push(quote!("readOnly" = true));
        utoipa.push(quote!(read_only));
    }
    if let Some(value) = p.default.as_ref() {
        let default = json_tokens(value);
        extend.push(quote!("default" = #default));
        // utoipa takes a literal, or `json!` for a list or an object.
        if value.is_array() || value.is_object() {
            utoipa.push(quote!(default = json!(#default)));
        } else {
            utoipa.push(quote!(default = #default));
        }
    }
    if let Some(encoding) = &p.content_encoding {
        extend.push(quote!("contentEncoding" = #encoding));
        utoipa.push(quote!(content_encoding = #encoding));
    }
    if !extend.is_empty() {
        schemars.push(quote!(extend(#(#extend),*)));
    }
    let serde = (!serde.is_empty()).then(|| quote!(#[serde(#(#serde),*)]));
    let schemars = (!schemars.is_empty()).then(|| quote!(#[schemars(#(#schemars),*)]));
    let utoipa = (!utoipa.is_empty()).then(|| quote!(#[schema(#(#utoipa),*)]));
    let name = ident(&p.rust_name);
    let ty = field_ty(p);
    quote! {
        #docs
        #serde
        #schemars
        #utoipa
        pub #name: #ty,
    }
}

/// The type of a query parameter's field: optional ones without a default are `Option`s.
fn param_ty(p: &Param) -> TokenStream {
    let base = p.ty.tokens();
    if p.required || p.default.is_some() {
        base
    } else {
        quote!(Option<#base>)
    }
}

/// The struct holding the query parameters of `op`, with the utoipa attributes that
/// describe them in the OpenAPI document.
pub fn query_struct(op: &Operation) -> TokenStream {
    let struct_doc = doc(&format!(
        "The query parameters of `{}`, validated, defaults applied.",
        op.id
    ));
    let name = ident(&op.query_struct());
    let fields = op.query_params.iter().map(|p| {
        let docs = match &p.description {
            Some(text) => doc(text),
            None => generated_doc(&format!("The `{}` query parameter.", p.name)),
        };
        let mut attrs = Vec::new();
        if p.rust_name != p.name {
            let rename = &p.name;
            attrs.push(quote!(rename = #rename));
        }
        if let Some(d) = p.default.as_ref().map(json_tokens) {
            attrs.push(quote!(default = #d));
        }
        if !p.required {
            attrs.push(quote!(required = false));
        }
        if !p.required && p.default.is_none() {
            attrs.push(quote!(nullable = false));
        }
        match &p.ty {
            Ty::Integer(r) => {
                if let Some(min) = r.minimum.map(signed) {
                    attrs.push(quote!(minimum = #min));
                }
                if let Some(max) = r.maximum.map(signed) {
                    attrs.push(quote!(maximum = #max));
                }
            }
            Ty::String(r) => attrs.extend(string_param_rules(r)),
            _ => {}
        }
        let attrs = (!attrs.is_empty()).then(|| quote!(#[param(#(#attrs),*)]));
        let field = ident(&p.rust_name);
        let ty = param_ty(p);
        quote! {
            #docs
            #attrs
            pub #field: #ty,
        }
    });
    quote! {
        #struct_doc
        #[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
        #[into_params(parameter_in = Query)]
        pub struct #name {
            #(#fields)*
        }
    }
}

/// The names of all schemas and the function answering the JSON Schema of each.
pub fn schema_lookup(spec: &Spec) -> TokenStream {
    let names: Vec<&str> = spec.schemas.iter().map(|s| s.name.as_str()).collect();
    let types = names.iter().map(|n| ident(n));
    quote! {
        /// The names of all component schemas.
        pub const SCHEMA_NAMES: &[&str] = &[#(#names),*];
        /// The JSON Schema (draft 2020-12, derived by schemars) of the component `name`.
        pub fn json_schema(name: &str) -> Option<serde_json::Value> {
            let schema = match name {
                #(#names => schemars::schema_for!(#types),)*
                _ => return None,
            };
            serde_json::to_value(schema).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;
    use serde_json::json;

    use super::*;
    use crate::api_gen::test_support::*;

    /// A spec with one schema `Widget` of the given properties and required list.
    fn widget(properties: serde_json::Value, required: serde_json::Value) -> Spec {
        spec(
            json!({"Widget": {"type": "object", "additionalProperties": false,
                "description": "A widget.\nTwo lines.",
                "required": required, "properties": properties}}),
            json!({}),
        )
    }

    /// The generated field of the only property of `Widget`, inside a struct to print it.
    fn one_field(property: serde_json::Value, required: bool) -> String {
        let required = if required { json!(["p"]) } else { json!([]) };
        let spec = widget(json!({ "p": property }), required);
        let f = field(&spec.schema("Widget").unwrap().properties[0]);
        pretty(quote!(struct S { #f }))
    }

    #[test]
    fn model_has_derives_docs_and_schema_link() {
        let spec = widget(
            json!({"$schema": {"type": "string", "readOnly": true},
                   "name": {"type": "string"}}),
            json!(["name"]),
        );
        let items = items(model(&spec, spec.schema("Widget").unwrap()));
        let [syn::Item::Struct(s), syn::Item::Impl(link), syn::Item::Impl(body)] = items.as_slice()
        else {
            panic!("a struct and two impls expected, got {} items", items.len());
        };
        assert_eq!(s.ident, "Widget");
        assert_eq!(docs(&s.attrs), [" A widget.", " Two lines."]);
        assert_eq!(
            attrs_named(&s.attrs, "derive"),
            ["derive (Debug , Clone , PartialEq , serde :: Serialize , serde :: Deserialize , schemars :: JsonSchema , utoipa :: ToSchema)"]
        );
        assert_eq!(
            attrs_named(&s.attrs, "serde"),
            ["serde (deny_unknown_fields)"]
        );
        let names: Vec<String> = s
            .fields
            .iter()
            .map(|f| f.ident.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(names, ["schema", "name"]);
        assert_eq!(
            pretty(quote!(#link)),
            pretty(quote! {
                impl Widget {
                    /// The `$schema` link this body carries in responses.
                    pub const SCHEMA_LINK: &'static str = "/api/schemas/Widget.json";
                }
            })
        );
        assert_eq!(
            pretty(quote!(#body)),
            pretty(quote! {
                impl crate::reply::ResponseBody for Widget {
                    fn fill_schema_link(&mut self) {
                        self.schema.get_or_insert_with(|| Self::SCHEMA_LINK.to_owned());
                    }
                }
            })
        );
    }

    #[test]
    fn model_without_schema_link_or_strictness() {
        let spec = spec(
            json!({"Loose": {"type": "object", "properties": {"n": {"type": "integer"}}}}),
            json!({}),
        );
        let items = items(model(&spec, spec.schema("Loose").unwrap()));
        let [syn::Item::Struct(s), syn::Item::Impl(body)] = items.as_slice() else {
            panic!("a struct and its impl expected, got {} items", items.len());
        };
        assert!(attrs_named(&s.attrs, "serde").is_empty());
        // A body without a link leaves the trait's default, which fills nothing.
        assert_eq!(
            pretty(quote!(#body)),
            pretty(quote!(impl crate::reply::ResponseBody for Loose {}))
        );
    }

    #[test]
    fn date_times_are_written_through_the_one_string_serializer() {
        assert_eq!(
            one_field(json!({"type": "string", "format": "date-time"}), false),
            pretty(quote! {
                struct S {
                    #[doc = concat!(" The `p` property (optional).")]
                    #[serde(
                        default,
                        skip_serializing_if = "Option::is_none",
                        serialize_with = "crate::time::serialize_option"
                    )]
                    #[schemars(description = "", with = "chrono::DateTime<chrono::Utc>")]
                    #[schema(nullable = false)]
                    pub p: Option<chrono::DateTime<chrono::Utc>>,
                }
            })
        );
    }

    #[test]
    fn optional_field_is_an_option_skipped_when_none() {
        assert_eq!(
            one_field(
                json!({"type": "string", "description": "Text.", "minLength": 1, "maxLength": 5,
                       "pattern": "^a+$", "format": "uri", "default": "a"}),
                false
            ),
            pretty(quote! {
                struct S {
                    /// Text.
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    #[schemars(with = "String", length(min = 1, max = 5), regex(pattern = "^a+$"), extend("format" = "uri", "default" = "a"))]
                    #[schema(nullable = false, min_length = 1, max_length = 5, pattern = "^a+$", format = "uri", default = "a")]
                    pub p: Option<String>,
                }
            })
        );
    }

    #[test]
    fn required_nullable_field_lists_null_in_its_type() {
        assert_eq!(
            one_field(
                json!({"type": ["array", "null"], "items": {"type": "string", "format": "uuid"}}),
                true
            ),
            pretty(quote! {
                struct S {
                    #[doc = concat!(" The `p` property (required, may be null).")]
                    #[schemars(description = "", required, extend("type" = ["array", "null"]))]
                    #[schema(required = true)]
                    pub p: Option<Vec<uuid::Uuid>>,
                }
            })
        );
    }

    #[test]
    fn required_fields_of_each_type() {
        assert_eq!(
            one_field(json!({"type": "integer", "minimum": 0, "maximum": 9}), true),
            pretty(quote! {
                struct S {
                    #[doc = concat!(" The `p` property (required).")]
                    #[schemars(description = "", range(min = 0, max = 9))]
                    #[schema(minimum = 0, maximum = 9)]
                    pub p: i64,
                }
            })
        );
        assert_eq!(
            one_field(
                json!({"type": "string", "format": "date-time", "readOnly": true}),
                true
            ),
            pretty(quote! {
                struct S {
                    #[doc = concat!(" The `p` property (required).")]
                    #[serde(serialize_with = "crate::time::serialize")]
                    #[schemars(description = "", extend("readOnly" = true))]
                    #[schema(read_only)]
                    pub p: chrono::DateTime<chrono::Utc>,
                }
            })
        );
        assert_eq!(
            one_field(json!({"description": "Anything."}), true),
            pretty(quote! {
                struct S {
                    /// Anything.
                    #[schema(value_type = Value)]
                    pub p: serde_json::Value,
                }
            })
        );
        assert_eq!(
            one_field(json!({"type": "string", "contentEncoding": "base64"}), true),
            pretty(quote! {
                struct S {
                    #[doc = concat!(" The `p` property (required).")]
                    #[schemars(description = "", extend("contentEncoding" = "base64"))]
                    #[schema(content_encoding = "base64")]
                    pub p: String,
                }
            })
        );
    }

    #[test]
    fn undescribed_items_get_docs_kept_out_of_the_schemas() {
        let spec = spec(
            json!({"Bare": {"type": "object", "required": ["a"],
                "properties": {"a": {"type": ["integer", "null"]}, "b": {"type": "boolean"}}}}),
            json!({}),
        );
        let bare = spec.schema("Bare").unwrap();
        assert_eq!(
            pretty(model(&spec, bare)),
            pretty(quote! {
                #[doc = concat!(" The `Bare` component schema.")]
                #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, utoipa::ToSchema)]
                #[schemars(description = "")]
                pub struct Bare {
                    #[doc = concat!(" The `a` property (required, may be null).")]
                    #[schemars(description = "", required, extend("type" = ["integer", "null"]))]
                    #[schema(required = true)]
                    pub a: Option<i64>,
                    #[doc = concat!(" The `b` property (optional).")]
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    #[schemars(description = "", with = "bool")]
                    #[schema(nullable = false)]
                    pub b: Option<bool>,
                }
                impl crate::reply::ResponseBody for Bare {}
            })
        );
    }

    #[test]
    fn renamed_and_raw_field_names() {
        let spec = widget(
            json!({"$schema": {"type": "string"}, "type": {"type": "boolean"},
                   "eventType": {"$ref": "#/components/schemas/ErrorModel"}}),
            json!(["$schema", "type", "eventType"]),
        );
        let fields = spec.schema("Widget").unwrap().properties.iter().map(field);
        assert_eq!(
            pretty(quote!(struct S { #(#fields)* })),
            pretty(quote! {
                struct S {
                    #[doc = concat!(" The `$schema` property (required).")]
                    #[serde(rename = "$schema")]
                    #[schemars(description = "")]
                    pub schema: String,
                    #[doc = concat!(" The `type` property (required).")]
                    #[schemars(description = "")]
                    pub r#type: bool,
                    #[doc = concat!(" The `eventType` property (required).")]
                    #[serde(rename = "eventType")]
                    #[schemars(description = "")]
                    pub event_type: ErrorModel,
                }
            })
        );
    }

    #[test]
    fn query_struct_describes_each_parameter() {
        let spec = spec(
            json!({}),
            json!({"/things": {"get": {
                "operationId": "listThings", "tags": ["Things"],
                "parameters": [
                    {"name": "limit", "in": "query", "description": "Max results",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10}},
                    {"name": "pageToken", "in": "query",
                        "schema": {"type": "string", "maxLength": 8, "pattern": "^[a-z]*$"}},
                    {"name": "mode", "in": "query", "required": true, "schema": {"type": "string"}}
                ],
                "responses": {"204": {"description": "Done"}, "default": problem()}
            }}}),
        );
        assert_eq!(
            pretty(query_struct(&spec.operations[0])),
            pretty(quote! {
                /// The query parameters of `listThings`, validated, defaults applied.
                #[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
                #[into_params(parameter_in = Query)]
                pub struct ListThingsQuery {
                    /// Max results
                    #[param(default = 10, required = false, minimum = 1, maximum = 50)]
                    pub limit: i64,
                    #[doc = concat!(" The `pageToken` query parameter.")]
                    #[param(rename = "pageToken", required = false, nullable = false, max_length = 8, pattern = "^[a-z]*$")]
                    pub page_token: Option<String>,
                    #[doc = concat!(" The `mode` query parameter.")]
                    pub mode: String,
                }
            })
        );
    }

    #[test]
    fn schema_lookup_names_every_schema() {
        let spec = tiny_spec();
        assert_eq!(
            pretty(schema_lookup(&spec)),
            pretty(quote! {
                /// The names of all component schemas.
                pub const SCHEMA_NAMES: &[&str] = &["ErrorModel", "Thing"];
                /// The JSON Schema (draft 2020-12, derived by schemars) of the component `name`.
                pub fn json_schema(name: &str) -> Option<serde_json::Value> {
                    let schema = match name {
                        "ErrorModel" => schemars::schema_for!(ErrorModel),
                        "Thing" => schemars::schema_for!(Thing),
                        _ => return None,
                    };
                    serde_json::to_value(schema).ok()
                }
            })
        );
    }
}
