//! Hodei's durable store: the [`Store`](hodei_ports::Store) port backed by SQLite, so that a
//! restarted server remembers every worker, its lifecycle state and every pool.
//!
//! The contract it must meet is `hodei_testkit::store_contract`, which the in-memory fake passes
//! too.

mod sqlite;

pub use sqlite::SqliteStore;
