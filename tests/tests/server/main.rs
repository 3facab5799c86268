//! The reference server, end to end: the generated client and plain HTTP against a real
//! server on a loopback port, real receivers, a real SQLite file and (when
//! `TEST_DATABASE_URL` is set) the real PostgreSQL; and the `sonzai-webhooks` binary's
//! admin commands (`cli`). The one integration-test binary of the server.

mod cli;
mod contract;
mod controls;
mod delivery;
mod durability;
mod hardening;
mod hostile;
mod operator_events;
mod portal;
mod receiver_answers;
mod recovery;
mod remote_cli;
mod retention;
mod scaleout;
mod support;
