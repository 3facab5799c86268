//! The reference implementation of the Sonzai webhooks API: API keys and tenancy,
//! storage on SQLite (embedded default) or PostgreSQL (scale-out), and the delivery
//! engine that signs, sends, retries and records every attempt. The binary
//! `sonzai-webhooks` wraps this library; Rust programs can embed it directly.

pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod server;
pub mod store;
