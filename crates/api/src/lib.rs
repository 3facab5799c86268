//! The server side of the Sonzai webhooks API, generated from `openapi.json` by
//! `cargo xtask codegen`: the models (serde, schemars and utoipa derives), the
//! [`WebhooksApi`] trait with one method per operation, and an axum [`router`] that
//! authenticates, validates every input against the spec (answering 400/413/415/422 as
//! `application/problem+json` without calling the trait) and writes the answer. Reads
//! answer a [`reply::Reply`]: the body, or the same body encoded already, so an
//! implementation can keep an unchanged answer encoded.
//!
//! Implementations live elsewhere: the reference server implements the trait on its
//! store; tests implement it in memory. This crate has no database code.
//!
//! ```no_run
//! # async fn run<T: sonzai_webhooks_api::WebhooksApi>(api: T) {
//! let app = sonzai_webhooks_api::router(std::sync::Arc::new(api));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

#![warn(missing_docs)]

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    pub mod models;
    pub mod server;
}

pub mod problem;
pub mod reply;
pub mod time;
pub mod validate;

pub use generated::models;
pub use generated::server::*;
pub use problem::Problem;

/// The OpenAPI document of the API as utoipa builds it from the generated handlers and
/// models (served at `/api/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}
