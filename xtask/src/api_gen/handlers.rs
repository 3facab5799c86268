//! The axum handler of each operation: authenticate, read and validate every input,
//! answer 4xx problems without calling the trait, otherwise call the trait method and
//! write its answer; with the `#[utoipa::path]` attribute describing the operation.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::validators::validator_name;
use super::{
    doc, ident, int_rules, json_tokens, string_param_rules, string_rules, unsuffixed, Patterns,
};
use crate::model::{Operation, Spec, Ty};

/// The `#[utoipa::path]` attribute of `op`: the operation as the OpenAPI document shows it.
pub fn utoipa_path_attr(spec: &Spec, op: &Operation) -> TokenStream {
    let method = format_ident!("{}", op.method);
    let (path, id, tag) = (&op.path, &op.id, &op.tag);
    let mut parts = vec![
        quote!(#method),
        quote!(path = #path),
        quote!(operation_id = #id),
        quote!(tag = #tag),
    ];
    if let Some(s) = &op.summary {
        parts.push(quote!(summary = #s));
    }
    if let Some(d) = &op.description {
        parts.push(quote!(description = #d));
    }
    let mut params = Vec::new();
    for p in &op.path_params {
        let (name, ty) = (&p.name, p.ty.tokens());
        let mut features = vec![quote!(#name = #ty), quote!(Path)];
        if let Some(d) = &p.description {
            features.push(quote!(description = #d));
        }
        if let Ty::String(r) = &p.ty {
            features.extend(string_param_rules(r));
        }
        params.push(quote!((#(#features),*)));
    }
    if !op.query_params.is_empty() {
        let query = ident(&op.query_struct());
        params.push(quote!(#query));
    }
    if !params.is_empty() {
        parts.push(quote!(params(#(#params),*)));
    }
    if let Some(body) = &op.body {
        let body = ident(body);
        parts.push(quote!(request_body(content = #body, content_type = "application/json")));
    }
    let successes = op.successes.iter().map(|(status, description)| {
        let status = unsuffixed((*status).into());
        match &op.success_body {
            Some(body) => {
                let body = ident(body);
                quote!((status = #status, description = #description, body = #body, content_type = "application/json"))
            }
            None => quote!((status = #status, description = #description)),
        }
    });
    let error = &op.error_description;
    parts.push(quote!(responses(#(#successes,)* (status = "default", description = #error, body = ErrorModel, content_type = "application/problem+json"))));
    let scheme = &spec.security_scheme.name;
    parts.push(quote!(security((#scheme = []))));
    quote!(#[utoipa::path(#(#parts),*)])
}

/// The handler of `op`.
pub fn handler(spec: &Spec, op: &Operation, patterns: &mut Patterns) -> TokenStream {
    let path_attr = utoipa_path_attr(spec, op);
    let tr = ident(&super::trait_name(spec));
    let docs = doc(&format!(
        "`{} {}`: validates the request, then calls [`{}::{}`].",
        op.method.to_uppercase(),
        op.path,
        tr,
        op.fn_name
    ));
    let name = ident(&op.fn_name);
    let parts_binding = if op.path_params.is_empty() {
        quote!(parts)
    } else {
        quote!(mut parts)
    };
    let body_binding = if op.body.is_some() {
        quote!(body)
    } else {
        quote!(_)
    };
    let mut statements = Vec::new();
    let mut call_args = vec![quote!(ctx)];
    if !op.path_params.is_empty() {
        statements.push(quote!(let path = v::path_params(&mut parts).await;));
    }
    for p in &op.path_params {
        let param = &p.name;
        let expr = match &p.ty {
            Ty::String(r) if r.format.as_deref() == Some("uuid") => {
                quote!(v::path_uuid(&path, #param, &mut errors))
            }
            Ty::String(r) => {
                let rules = string_rules(r, false, patterns);
                quote!(v::path_string(&path, #param, &#rules, &mut errors))
            }
            other => panic!("unsupported path parameter type {other:?}"),
        };
        let var = ident(&p.rust_name);
        statements.push(quote!(let #var = #expr;));
        call_args.push(quote!(#var));
    }
    // Every operation reads its query string, if only to refuse parameters it does not
    // declare and repeated ones, as bodies refuse unknown and duplicate fields.
    let query_names = op.query_params.iter().map(|p| &p.name);
    statements.push(quote! {
        let pairs = v::query_pairs(&parts);
        v::check_query_names(&pairs, &[#(#query_names),*], &mut errors);
    });
    if !op.query_params.is_empty() {
        let fields = op.query_params.iter().map(|p| {
            let param = &p.name;
            let read = match &p.ty {
                Ty::Integer(r) => {
                    let rules = int_rules(r);
                    quote!(v::query_integer(&pairs, #param, &#rules, &mut errors))
                }
                Ty::String(r) => {
                    let rules = string_rules(r, false, patterns);
                    quote!(v::query_string(&pairs, #param, &#rules, &mut errors))
                }
                other => panic!("unsupported query parameter type {other:?}"),
            };
            let expr = match (&p.default, p.required) {
                (Some(d), _) => {
                    let d = json_tokens(d);
                    quote!(#read.unwrap_or(#d))
                }
                (None, true) => quote!(#read.unwrap_or_default()),
                (None, false) => read,
            };
            let field = ident(&p.rust_name);
            quote!(#field: #expr)
        });
        // Collected so the patterns are numbered in parameter order.
        let fields: Vec<TokenStream> = fields.collect();
        let query = ident(&op.query_struct());
        statements.push(quote!(let query = #query { #(#fields),* };));
        call_args.push(quote!(query));
    }
    if let Some(body) = &op.body {
        let ty = ident(body);
        let validate = validator_name(body);
        let optional = op.body_optional;
        statements.push(quote! {
            let body: Option<#ty> = match v::json_body(&parts, body, api.max_body_bytes(), #optional, #validate, &mut errors).await {
                Ok(body) => body,
                Err(problem) => return problem.into_response()
            };
        });
    }
    statements.push(quote! {
        if !errors.is_empty() { return Problem::validation(errors).into_response(); }
    });
    if op.body.is_some() {
        statements.push(quote! {
            let Some(body) = body else { return Problem::validation(errors).into_response(); };
        });
        call_args.push(quote!(body));
    }
    let call = quote!(api.#name(#(#call_args),*).await);
    // With one success response its status is fixed here; with several, the trait
    // method answers which one along with the body.
    let (ok, status) = match op.successes.as_slice() {
        [(status, _)] => {
            let status = unsuffixed((*status).into());
            (
                quote!(out),
                quote!(StatusCode::from_u16(#status).unwrap_or(StatusCode::OK)),
            )
        }
        _ => (quote!((status, out)), quote!(status)),
    };
    let answer = match &op.success_body {
        // `respond` fills the `$schema` link of a body that has one.
        Some(body) => {
            let ty = ident(body);
            quote! {
                match #call {
                    Ok(#ok) => crate::reply::respond::<#ty>(#status, out),
                    Err(problem) => problem.into_response()
                }
            }
        }
        None => quote! {
            match #call {
                Ok(()) => #status.into_response(),
                Err(problem) => problem.into_response()
            }
        },
    };
    quote! {
        #path_attr
        #docs
        pub async fn #name<T: #tr>(State(api): State<Arc<T>>, request: Request) -> Response {
            let (#parts_binding, #body_binding) = request.into_parts();
            let ctx = match api.authenticate(&parts).await {
                Ok(ctx) => ctx,
                Err(problem) => return problem.into_response()
            };
            let mut errors = Vec::new();
            #(#statements)*
            #answer
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::{quote, ToTokens};
    use serde_json::json;

    use super::*;
    use crate::api_gen::test_support::*;

    /// A spec with one `GET /things/{thingId}` answering a `Thing` with a `$schema` link.
    fn get_spec() -> Spec {
        spec(
            json!({"Thing": {"type": "object",
                "properties": {"$schema": {"type": "string"}, "name": {"type": "string"}}}}),
            json!({"/things/{thingId}": {"get": {
                "operationId": "getThing", "tags": ["Things"],
                "description": "Gets one thing.",
                "parameters": [{"name": "thingId", "in": "path", "required": true,
                    "description": "The thing.", "schema": {"type": "string", "maxLength": 4}}],
                "responses": {
                    "200": {"description": "The thing", "content": {"application/json":
                        {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "default": problem()
                }
            }}}),
        )
    }

    #[test]
    fn utoipa_path_describes_the_operation() {
        let spec = tiny_spec();
        assert_eq!(
            pretty(
                utoipa_path_attr(&spec, &spec.operations[0])
                    .into_iter()
                    .chain(quote!(
                        fn f() {}
                    ))
                    .collect()
            ),
            pretty(quote! {
                #[utoipa::path(put, path = "/things/{thingId}/{kind}", operation_id = "putThing",
                    tag = "Things", summary = "Put a thing",
                    params(("thingId" = uuid::Uuid, Path), ("kind" = String, Path, pattern = "^[a-z]+$"), PutThingQuery),
                    request_body(content = Thing, content_type = "application/json"),
                    responses((status = 204, description = "Done"),
                        (status = "default", description = "Error", body = ErrorModel, content_type = "application/problem+json")),
                    security(("key" = [])))]
                fn f() {}
            })
        );
        let spec = get_spec();
        let attr = utoipa_path_attr(&spec, &spec.operations[0]).to_string();
        assert!(
            attr.contains(&quote!(description = "Gets one thing.").to_string()),
            "{attr}"
        );
        assert!(
            attr.contains(
                &quote!((
                    "thingId" = String,
                    Path,
                    description = "The thing.",
                    max_length = 4
                ))
                .to_string()
            ),
            "{attr}"
        );
        assert!(
            attr.contains(
                &quote!((
                    status = 200,
                    description = "The thing",
                    body = Thing,
                    content_type = "application/json"
                ))
                .to_string()
            ),
            "{attr}"
        );
    }

    #[test]
    fn handler_validates_everything_before_calling_the_trait() {
        let spec = tiny_spec();
        let mut patterns = Patterns::default();
        let f: syn::ItemFn =
            syn::parse2(handler(&spec, &spec.operations[0], &mut patterns)).unwrap();
        assert_eq!(f.sig.ident, "put_thing");
        assert!(f.sig.asyncness.is_some());
        assert_eq!(
            f.sig.generics.to_token_stream().to_string(),
            "< T : TinyApi >"
        );
        assert_eq!(
            f.sig.inputs.to_token_stream().to_string().replace(' ', ""),
            "State(api):State<Arc<T>>,request:Request"
        );
        assert_eq!(attrs_named(&f.attrs, "doc").len(), 1);
        assert_eq!(
            docs(&f.attrs),
            [" `PUT /things/{thingId}/{kind}`: validates the request, then calls [`TinyApi::put_thing`]."]
        );
        // Compared without whitespace: prettyplease breaks long lines.
        let body: String = pretty(quote!(#f)).split_whitespace().collect();
        let order = [
            "let (mut parts, body) = request.into_parts();",
            "api.authenticate(&parts).await",
            "let path = v::path_params(&mut parts).await;",
            "let thing_id = v::path_uuid(&path, \"thingId\", &mut errors);",
            "let kind = v::path_string(",
            "v::check_query_names(&pairs, &[\"cursor\"], &mut errors);",
            "let query = PutThingQuery {",
            "v::json_body(&parts, body, api.max_body_bytes(), false, validate_thing, &mut errors",
            "if !errors.is_empty() {",
            "let Some(body) = body else {",
            "match api.put_thing(ctx, thing_id, kind, query, body).await {",
            "Ok(()) => StatusCode::from_u16(204).unwrap_or(StatusCode::OK).into_response(),",
        ];
        let mut at = 0;
        for step in order {
            let step: String = step.split_whitespace().collect();
            let found = body[at..]
                .find(&step)
                .unwrap_or_else(|| panic!("{step:?} missing or out of order in\n{body}"));
            at += found + step.len();
        }
        assert_eq!(patterns.0, ["^[a-z]+$"]);
    }

    #[test]
    fn handler_without_inputs_answers_through_respond() {
        let spec = get_spec();
        let code = pretty(handler(
            &spec,
            &spec.operations[0],
            &mut Patterns::default(),
        ));
        assert!(
            code.contains("let (mut parts, _) = request.into_parts();"),
            "{code}"
        );
        assert!(
            code.contains("v::check_query_names(&pairs, &[], &mut errors);"),
            "{code}"
        );
        assert!(!code.contains("json_body"), "{code}");
        // The body's `ResponseBody` impl fills the link (see the models' tests).
        let flat: String = code.split_whitespace().collect();
        assert!(
            flat.contains(
                "Ok(out)=>{crate::reply::respond::<Thing,>(StatusCode::from_u16(200).unwrap_or(StatusCode::OK),out)}"
            ),
            "{code}"
        );
    }

    #[test]
    fn several_success_statuses_are_answered_as_the_trait_says() {
        let mut spec = get_spec();
        spec.operations[0]
            .successes
            .push((202, "Accepted".to_owned()));
        let op = &spec.operations[0];
        let code = pretty(handler(&spec, op, &mut Patterns::default()));
        let flat: String = code.split_whitespace().collect();
        assert!(
            flat.contains("Ok((status,out))=>crate::reply::respond::<Thing>(status,out)"),
            "{code}"
        );
        let attr = utoipa_path_attr(&spec, op).to_string().replace(' ', "");
        assert!(
            attr.contains("(status=200,description=\"Thething\",body=Thing")
                && attr.contains("(status=202,description=\"Accepted\",body=Thing"),
            "{attr}"
        );
        let method: syn::TraitItemFn = syn::parse2(crate::api_gen::trait_::method(op)).unwrap();
        assert_eq!(
            method
                .sig
                .output
                .to_token_stream()
                .to_string()
                .replace(' ', ""),
            "->implFuture<Output=Result<(StatusCode,crate::reply::Reply<Thing>),Problem>>+Send"
        );
    }
}
