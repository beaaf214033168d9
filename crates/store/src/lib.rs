//! Hodei's durable store: the [`Store`](hodei_ports::Store) port backed by SQLite, so that a
//! restarted server remembers every worker, its lifecycle state, every pool, and every job with
//! its output.
//!
//! The contract it must meet is `hodei_testkit::store_contract`, which the in-memory fake passes
//! too.

mod credentials;
mod jobs;
mod sqlite;

pub use sqlite::SqliteStore;
