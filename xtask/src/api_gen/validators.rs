//! The validators: one function per component schema that checks a JSON value against
//! it, collecting one `ErrorDetail` per problem, which the router runs before
//! deserializing a body.

use heck::ToSnakeCase;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

use super::{doc, int_rules, string_rules, Patterns};
use crate::model::{SchemaDef, Ty};

/// The name of the validator of schema `schema`.
pub fn validator_name(schema: &str) -> Ident {
    format_ident!("validate_{}", schema.to_snake_case())
}

/// The statement checking `value` (an expression of type `&serde_json::Value`) at `loc`
/// against `ty`; `None` when any value is valid.
fn check(
    ty: &Ty,
    value: TokenStream,
    loc: TokenStream,
    nullable: bool,
    sensitive: bool,
    patterns: &mut Patterns,
) -> Option<TokenStream> {
    Some(match ty {
        Ty::String(r) => {
            let rules = string_rules(r, sensitive, patterns);
            quote!(v::check_string(#value, #loc, &#rules, #nullable, errors);)
        }
        Ty::Integer(r) => {
            let rules = int_rules(r);
            quote!(v::check_integer(#value, #loc, &#rules, #nullable, errors);)
        }
        Ty::Boolean => quote!(v::check_boolean(#value, #loc, #nullable, errors);),
        Ty::Any => return None,
        Ty::Ref(name) => {
            let f = validator_name(name);
            if nullable {
                quote!(if !#value.is_null() { #f(#value, #loc, errors); })
            } else {
                quote!(#f(#value, #loc, errors);)
            }
        }
        Ty::Array(item) => {
            let inner = check(
                item,
                quote!(item),
                quote!(&item_loc),
                false,
                sensitive,
                patterns,
            );
            quote! {
                v::check_array(#value, #loc, #nullable, errors, |item, item_loc, errors| {
                    let item_loc = item_loc.to_owned();
                    #inner
                });
            }
        }
    })
}

/// The validator of schema `s`: the value must be an object with the required
/// properties, no unknown ones when the schema says so, and each property valid.
pub fn validator(s: &SchemaDef, patterns: &mut Patterns) -> TokenStream {
    let docs = doc(&format!(
        "Checks a JSON value against the `{}` schema, one entry per problem.",
        s.name
    ));
    let name = validator_name(&s.name);
    let allowed = s.properties.iter().map(|p| &p.json_name);
    let required = s
        .properties
        .iter()
        .filter(|p| p.required)
        .map(|p| &p.json_name);
    let deny = s.deny_unknown;
    let properties = s.properties.iter().filter_map(|p| {
        let check = check(
            &p.ty,
            quote!(value),
            quote!(&v::child(loc, NAME)),
            p.nullable,
            p.sensitive,
            patterns,
        )?;
        let json_name = &p.json_name;
        Some(quote! {
            {
                const NAME: &str = #json_name;
                if let Some(value) = object.get(NAME) {
                    #check
                }
            }
        })
    });
    // Collected before the quote so the patterns are numbered in property order.
    let properties: Vec<TokenStream> = properties.collect();
    quote! {
        #docs
        pub fn #name(value: &serde_json::Value, loc: &str, errors: &mut Vec<ErrorDetail>) {
            let Some(object) = v::check_object(value, loc, errors) else { return; };
            v::check_properties(object, loc, &[#(#allowed),*], &[#(#required),*], #deny, errors);
            #(#properties)*
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;
    use serde_json::json;

    use super::*;
    use crate::api_gen::test_support::*;

    #[test]
    fn validator_checks_each_property() {
        let spec = spec(
            json!({"Thing": {"type": "object", "additionalProperties": false,
            "required": ["name", "parent"],
            "properties": {
                "name": {"type": "string", "maxLength": 10, "pattern": "^[a-z]+$"},
                "secret": {"type": "string", "x-sonzai-sensitive": true},
                "count": {"type": ["integer", "null"], "minimum": 1},
                "on": {"type": "boolean"},
                "data": {},
                "parent": {"$ref": "#/components/schemas/ErrorModel"},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}}
            }}}),
            json!({}),
        );
        let mut patterns = Patterns::default();
        let code = validator(spec.schema("Thing").unwrap(), &mut patterns);
        assert_eq!(
            pretty(code),
            pretty(quote! {
                /// Checks a JSON value against the `Thing` schema, one entry per problem.
                pub fn validate_thing(value: &serde_json::Value, loc: &str, errors: &mut Vec<ErrorDetail>) {
                    let Some(object) = v::check_object(value, loc, errors) else { return; };
                    v::check_properties(object, loc, &["name", "secret", "count", "on", "data", "parent", "tags"], &["name", "parent"], true, errors);
                    {
                        const NAME: &str = "name";
                        if let Some(value) = object.get(NAME) {
                            v::check_string(value, &v::child(loc, NAME), &v::StringRules {
                                format: None, min_length: None, max_length: Some(10),
                                pattern: Some(&PATTERN_0), sensitive: false, forbid_nul: true
                            }, false, errors);
                        }
                    }
                    {
                        const NAME: &str = "secret";
                        if let Some(value) = object.get(NAME) {
                            v::check_string(value, &v::child(loc, NAME), &v::StringRules {
                                format: None, min_length: None, max_length: None,
                                pattern: None, sensitive: true, forbid_nul: true
                            }, false, errors);
                        }
                    }
                    {
                        const NAME: &str = "count";
                        if let Some(value) = object.get(NAME) {
                            v::check_integer(value, &v::child(loc, NAME), &v::IntRules { minimum: Some(1), maximum: None }, true, errors);
                        }
                    }
                    {
                        const NAME: &str = "on";
                        if let Some(value) = object.get(NAME) {
                            v::check_boolean(value, &v::child(loc, NAME), false, errors);
                        }
                    }
                    {
                        const NAME: &str = "parent";
                        if let Some(value) = object.get(NAME) {
                            validate_error_model(value, &v::child(loc, NAME), errors);
                        }
                    }
                    {
                        const NAME: &str = "tags";
                        if let Some(value) = object.get(NAME) {
                            v::check_array(value, &v::child(loc, NAME), false, errors, |item, item_loc, errors| {
                                let item_loc = item_loc.to_owned();
                                v::check_string(item, &item_loc, &v::StringRules {
                                    format: None, min_length: None, max_length: None,
                                    pattern: Some(&PATTERN_0), sensitive: false, forbid_nul: true
                                }, false, errors);
                            });
                        }
                    }
                }
            })
        );
        // The pattern both properties use is compiled once.
        assert_eq!(patterns.0, ["^[a-z]+$"]);
    }

    #[test]
    fn nullable_reference_is_checked_only_when_present() {
        let check = check(
            &Ty::Ref("Thing".into()),
            quote!(value),
            quote!(loc),
            true,
            false,
            &mut Patterns::default(),
        )
        .unwrap();
        assert_eq!(
            check.to_string(),
            quote!(if !value.is_null() {
                validate_thing(value, loc, errors);
            })
            .to_string()
        );
    }

    #[test]
    fn validator_names_are_snake_case() {
        assert_eq!(
            validator_name("UpsertWebhookInputBody"),
            "validate_upsert_webhook_input_body"
        );
    }
}
