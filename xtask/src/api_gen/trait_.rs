//! The trait an implementation of the API fills in: authentication, the body size
//! limit and one method per operation.

use proc_macro2::TokenStream;
use quote::quote;

use super::{doc, ident};
use crate::model::{Operation, Spec};

/// The name of the trait, from the spec's title without "Sonzai" and "API":
/// "Sonzai Webhooks API" gives `WebhooksApi`.
pub fn trait_name(spec: &Spec) -> String {
    let words: String = spec
        .title
        .split_whitespace()
        .filter(|w| !w.eq_ignore_ascii_case("sonzai") && !w.eq_ignore_ascii_case("api"))
        .collect();
    format!("{words}Api")
}

/// The trait method of operation `op`: its path parameters, query struct and body in
/// that order, answering the success body (or `()`) or a problem.
pub fn method(op: &Operation) -> TokenStream {
    let summary = op.summary.clone().unwrap_or_else(|| op.id.clone());
    let description = op
        .description
        .as_deref()
        .map(|d| format!("{d}\n\n"))
        .unwrap_or_default();
    let docs = doc(&format!(
        "{summary}\n\n{description}`{} {}` (operationId `{}`)",
        op.method.to_uppercase(),
        op.path,
        op.id
    ));
    let name = ident(&op.fn_name);
    let path_params = op.path_params.iter().map(|p| {
        let name = ident(&p.rust_name);
        let ty = p.ty.tokens();
        quote!(#name: #ty)
    });
    let query = (!op.query_params.is_empty()).then(|| {
        let ty = ident(&op.query_struct());
        quote!(query: #ty,)
    });
    let body = op.body.as_deref().map(|b| {
        let ty = ident(b);
        quote!(body: #ty)
    });
    let ok = match &op.success_body {
        Some(b) if op.answers_reply() => {
            let ty = ident(b);
            quote!(crate::reply::Reply<#ty>)
        }
        Some(b) => {
            let ty = ident(b);
            quote!(#ty)
        }
        None => quote!(()),
    };
    // Several success responses: the method says which status it answers.
    let ok = if op.successes.len() > 1 {
        quote!((StatusCode, #ok))
    } else {
        ok
    };
    quote! {
        #docs
        fn #name(&self, ctx: Self::Context, #(#path_params,)* #query #body)
            -> impl Future<Output = Result<#ok, Problem>> + Send;
    }
}

/// The trait with every operation of the spec.
pub fn api_trait(spec: &Spec) -> TokenStream {
    let tr = trait_name(spec);
    let docs = doc(&format!(
        "The {title}: one method per operation. The router calls [`{tr}::authenticate`]\n\
         first, then validates every input, and calls the operation only when all of them\n\
         are valid.",
        title = spec.title
    ));
    let name = ident(&tr);
    let methods = spec.operations.iter().map(method);
    quote! {
        #docs
        pub trait #name: Send + Sync + 'static {
            /// What authentication yields (for example the caller's tenant and project); handed
            /// to every operation.
            type Context: Send;

            /// Authenticates a request from its head. An error is answered as is.
            fn authenticate(&self, parts: &axum::http::request::Parts)
                -> impl Future<Output = Result<Self::Context, Problem>> + Send;

            /// Largest request body accepted, in bytes; larger ones are answered 413.
            fn max_body_bytes(&self) -> usize { 256 * 1024 }

            #(#methods)*
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;

    use super::*;
    use crate::api_gen::test_support::*;

    #[test]
    fn method_takes_path_query_and_body_in_order() {
        let spec = tiny_spec();
        let method: syn::TraitItemFn = syn::parse2(method(&spec.operations[0])).unwrap();
        assert_eq!(method.sig.ident, "put_thing");
        assert_eq!(
            docs(&method.attrs),
            [
                " Put a thing",
                "",
                " `PUT /things/{thingId}/{kind}` (operationId `putThing`)"
            ]
        );
        let inputs: Vec<String> = method
            .sig
            .inputs
            .iter()
            .map(|i| i.to_token_stream().to_string())
            .collect();
        assert_eq!(
            inputs,
            [
                "& self",
                "ctx : Self :: Context",
                "thing_id : uuid :: Uuid",
                "kind : String",
                "query : PutThingQuery",
                "body : Thing"
            ]
        );
        assert_eq!(
            method
                .sig
                .output
                .to_token_stream()
                .to_string()
                .replace(' ', ""),
            "->implFuture<Output=Result<(),Problem>>+Send"
        );
        assert!(method.default.is_none(), "operations have no default body");
    }

    #[test]
    fn reads_answer_a_reply_and_writes_their_body() {
        let output = |method: &str| {
            let mut spec = tiny_spec();
            let op = &mut spec.operations[0];
            op.method = method.to_owned();
            op.success_body = Some("Thing".to_owned());
            let method: syn::TraitItemFn = syn::parse2(super::method(op)).unwrap();
            method
                .sig
                .output
                .to_token_stream()
                .to_string()
                .replace(' ', "")
        };
        assert_eq!(
            output("get"),
            "->implFuture<Output=Result<crate::reply::Reply<Thing>,Problem>>+Send"
        );
        assert_eq!(
            output("put"),
            "->implFuture<Output=Result<Thing,Problem>>+Send"
        );
    }

    #[test]
    fn method_docs_carry_the_operation_description() {
        let mut spec = tiny_spec();
        spec.operations[0].description = Some("Puts it.".into());
        let method: syn::TraitItemFn = syn::parse2(method(&spec.operations[0])).unwrap();
        assert_eq!(
            docs(&method.attrs),
            [
                " Put a thing",
                "",
                " Puts it.",
                "",
                " `PUT /things/{thingId}/{kind}` (operationId `putThing`)"
            ]
        );
    }

    #[test]
    fn trait_is_named_from_the_title_and_declares_every_operation() {
        let spec = tiny_spec();
        assert_eq!(trait_name(&spec), "TinyApi");
        let tr: syn::ItemTrait = syn::parse2(api_trait(&spec)).unwrap();
        assert_eq!(tr.ident, "TinyApi");
        assert_eq!(
            tr.supertraits.to_token_stream().to_string(),
            "Send + Sync + 'static"
        );
        let names: Vec<String> = tr
            .items
            .iter()
            .map(|item| match item {
                syn::TraitItem::Type(t) => t.ident.to_string(),
                syn::TraitItem::Fn(f) => f.sig.ident.to_string(),
                _ => panic!("unexpected trait item"),
            })
            .collect();
        assert_eq!(
            names,
            ["Context", "authenticate", "max_body_bytes", "put_thing"]
        );
        assert_eq!(
            docs(&tr.attrs)[0],
            " The Tiny API: one method per operation. The router calls [`TinyApi::authenticate`]"
        );
    }
}
