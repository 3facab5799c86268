//! Test support for the Sonzai webhooks workspace, shared by the store suite, the
//! end-to-end tests in `tests/` and the bench:
//!
//! - [`db`]: a fresh database per test (a SQLite file in a temporary directory, or a
//!   fresh schema on the PostgreSQL named by `TEST_DATABASE_URL`, dropped afterwards)
//!   and the list of backends to run on;
//! - [`process`]: the `sonzai-webhooks` binary as a child process on a free loopback
//!   port (locate or build it, start it, wait until ready, stop it, read its log);
//! - [`receiver`]: an HTTP receiver that records what it gets and answers as scripted;
//! - [`net`]: a router served on loopback, a plain HTTP client, [`poll_until`];
//! - `spec` (feature `spec`): a checker of answers against `openapi.json`, and a proxy
//!   that checks every answer on its way to a client.
//!
//! It does not depend on the server crate, so the server's own tests can use it.
//! Everything binds to `127.0.0.1` only and every wait is bounded.

pub mod db;
pub mod net;
pub mod process;
pub mod receiver;
#[cfg(feature = "spec")]
pub mod spec;

pub use db::{backends, test_database_url, Backend, TestDb};
pub use net::{http_client, poll_until, Loopback};
pub use process::{free_port, server_binary, ServerProcess, Spawn};
pub use receiver::{Answer, Received, Receiver, RequestLog};

/// Errors of the fallible helpers (the bench reports them; tests unwrap them).
pub type Error = Box<dyn std::error::Error + Send + Sync>;
