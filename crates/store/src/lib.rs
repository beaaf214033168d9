//! Hodei's durable store: the [`Store`](hodei_ports::Store) port backed by SQLite (the
//! embedded default) or PostgreSQL, so that a restarted server remembers every worker, its
//! lifecycle state, every pool, and every job with its output.
//!
//! The contract both must meet is `hodei_testkit::store_contract`, which the in-memory fake
//! passes too.

mod credentials;
mod jobs;
mod postgres;
mod profiles;
mod retention;
mod sqlite;
mod tenants;
mod usage;

pub use postgres::{MAX_CONNECTIONS as POSTGRES_MAX_CONNECTIONS, PostgresStore};
pub use sqlite::SqliteStore;
