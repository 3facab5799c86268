//! The reference implementation of the Sonzai webhooks API: API keys and tenancy,
//! storage on SQLite (embedded default) or PostgreSQL (scale-out), and the delivery
//! engine that signs, sends, retries and records every attempt. The binary
//! `sonzai-webhooks` wraps this library; Rust programs can embed it directly:
//! [`server::start_with_store`] runs the API and the workers, and
//! [`engine::Engine::publish`] publishes events without going through HTTP.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod engine;
mod listener;
pub mod metrics;
pub mod server;
pub mod store;
pub mod wake;
