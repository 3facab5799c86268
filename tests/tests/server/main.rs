//! The reference server, end to end: the generated client and plain HTTP against a real
//! server on a loopback port, real receivers, a real SQLite file and (when
//! `TEST_DATABASE_URL` is set) the real PostgreSQL.

mod contract;
mod delivery;
mod durability;
mod hardening;
mod hostile;
mod scaleout;
mod support;
