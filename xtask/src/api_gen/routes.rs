//! Route registration and the documents: the operation table, the router that serves
//! each operation's handler and the two documents, and the utoipa `ApiDoc`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{ident, trait_name};
use crate::model::Spec;

/// The table of every operation: (method, route as matched by the router, operationId).
pub fn operations(spec: &Spec) -> TokenStream {
    let rows = spec.operations.iter().map(|op| {
        let method = op.method.to_uppercase();
        let route = format!("{}{}", spec.base_path, op.path);
        let id = &op.id;
        quote!((#method, #route, #id))
    });
    quote! {
        /// Every operation: (method, route as matched by the router, operationId).
        pub const OPERATIONS: &[(&str, &str, &str)] = &[#(#rows),*];
    }
}

/// One `.route(...)` per path, in spec order, with the handler of each of its methods.
fn route(spec: &Spec, path: &str) -> TokenStream {
    let route = format!("{}{}", spec.base_path, path);
    let mut methods = spec.operations.iter().filter(|o| o.path == path).map(|o| {
        let method = format_ident!("{}", o.method);
        let handler = ident(&o.fn_name);
        (method, handler)
    });
    let (first, first_handler) = methods.next().expect("a path has an operation");
    let (rest, rest_handlers): (Vec<_>, Vec<_>) = methods.unzip();
    quote! {
        .route(#route, axum::routing::#first(#first_handler::<T>)#(.#rest(#rest_handlers::<T>))*)
    }
}

/// The router serving every operation, the JSON Schema of each model and the OpenAPI
/// document.
pub fn router(spec: &Spec) -> TokenStream {
    let base = &spec.base_path;
    let docs = super::doc(&format!(
        "The router serving every operation under `{base}`, plus\n\
         `{base}/schemas/{{Name}}.json` (the JSON Schema of each model) and\n\
         `{base}/openapi.json` (the OpenAPI document)."
    ));
    let tr = ident(&trait_name(spec));
    let mut paths: Vec<&str> = Vec::new();
    for op in &spec.operations {
        if !paths.contains(&op.path.as_str()) {
            paths.push(&op.path);
        }
    }
    let routes = paths.into_iter().map(|path| route(spec, path));
    let schemas = format!("{base}/schemas/{{file}}");
    let openapi = format!("{base}/openapi.json");
    quote! {
        #docs
        pub fn router<T: #tr>(api: Arc<T>) -> Router {
            Router::new()
                #(#routes)*
                .route(#schemas, axum::routing::get(v::schema_document))
                .route(#openapi, axum::routing::get(v::openapi_document))
                .with_state(api)
        }
    }
}

/// The utoipa `ApiDoc` that builds the OpenAPI document from the handlers' and models'
/// attributes, and the modifier adding the bearer security scheme.
pub fn api_doc(spec: &Spec) -> TokenStream {
    let ops = spec.operations.iter().map(|o| ident(&o.fn_name));
    let schemas = spec.schemas.iter().map(|s| ident(&s.name));
    let tags = spec.tags.iter().map(|(name, d)| match d {
        Some(d) => quote!((name = #name, description = #d)),
        None => quote!((name = #name)),
    });
    let (title, version) = (&spec.title, &spec.version);
    let mut info = vec![quote!(title = #title), quote!(version = #version)];
    if let Some(d) = &spec.description {
        info.push(quote!(description = #d));
    }
    let base = &spec.base_path;
    let desc = match &spec.security_scheme.description {
        Some(d) => quote!(Some(#d)),
        None => quote!(None::<String>),
    };
    let scheme = &spec.security_scheme.name;
    // utoipa marks every request body required; the optional ones are set back here.
    let optional_bodies = spec.operations.iter().filter(|o| o.body_optional).map(|o| {
        let (path, method) = (&o.path, ident(&o.method));
        quote! {
            if let Some(body) = openapi.paths.paths.get_mut(#path)
                .and_then(|item| item.#method.as_mut())
                .and_then(|op| op.request_body.as_mut())
            {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
    });
    quote! {
        /// The OpenAPI document of the API, built by utoipa from the handlers and models above.
        #[derive(utoipa::OpenApi)]
        #[openapi(info(#(#info),*), servers((url = #base)), paths(#(#ops),*), components(schemas(#(#schemas),*)), tags(#(#tags),*), modifiers(&SecurityScheme))]
        pub struct ApiDoc;

        struct SecurityScheme;

        impl utoipa::Modify for SecurityScheme {
            fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
                use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
                let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(#desc).build();
                openapi.components.get_or_insert_with(Default::default).add_security_scheme(#scheme, SecurityScheme::Http(scheme));
                #(#optional_bodies)*
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;
    use serde_json::json;

    use super::*;
    use crate::api_gen::test_support::*;

    /// Two operations on one path and one on another.
    fn three_ops() -> Spec {
        let op = |id: &str| {
            json!({"operationId": id, "tags": ["Things"],
                   "responses": {"204": {"description": "Done"}, "default": problem()}})
        };
        spec(
            json!({}),
            json!({
                "/things": {"get": op("listThings"), "delete": op("clearThings")},
                "/other": {"post": op("doOther")}
            }),
        )
    }

    #[test]
    fn router_groups_methods_by_path_in_spec_order() {
        assert_eq!(
            pretty(router(&three_ops())),
            pretty(quote! {
                /// The router serving every operation under `/api`, plus
                /// `/api/schemas/{Name}.json` (the JSON Schema of each model) and
                /// `/api/openapi.json` (the OpenAPI document).
                pub fn router<T: TinyApi>(api: Arc<T>) -> Router {
                    Router::new()
                        .route("/api/things", axum::routing::get(list_things::<T>).delete(clear_things::<T>))
                        .route("/api/other", axum::routing::post(do_other::<T>))
                        .route("/api/schemas/{file}", axum::routing::get(v::schema_document))
                        .route("/api/openapi.json", axum::routing::get(v::openapi_document))
                        .with_state(api)
                }
            })
        );
    }

    #[test]
    fn operation_table_lists_full_routes() {
        assert_eq!(
            pretty(operations(&three_ops())),
            pretty(quote! {
                /// Every operation: (method, route as matched by the router, operationId).
                pub const OPERATIONS: &[(&str, &str, &str)] = &[
                    ("GET", "/api/things", "listThings"),
                    ("DELETE", "/api/things", "clearThings"),
                    ("POST", "/api/other", "doOther"),
                ];
            })
        );
    }

    #[test]
    fn api_doc_lists_paths_schemas_tags_and_the_security_scheme() {
        assert_eq!(
            pretty(api_doc(&three_ops())),
            pretty(quote! {
                /// The OpenAPI document of the API, built by utoipa from the handlers and models above.
                #[derive(utoipa::OpenApi)]
                #[openapi(info(title = "Tiny API", version = "1", description = "A tiny API."),
                    servers((url = "/api")), paths(list_things, clear_things, do_other),
                    components(schemas(ErrorModel)),
                    tags((name = "Things", description = "Things and more things.")),
                    modifiers(&SecurityScheme))]
                pub struct ApiDoc;
                struct SecurityScheme;
                impl utoipa::Modify for SecurityScheme {
                    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
                        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
                        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(None::<String>).build();
                        openapi.components.get_or_insert_with(Default::default).add_security_scheme("key", SecurityScheme::Http(scheme));
                    }
                }
            })
        );
    }
}
