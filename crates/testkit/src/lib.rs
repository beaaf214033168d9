//! Test support: in-memory fakes of every port and the contract suites that real adapters
//! and fakes must both pass. Only tests depend on this crate.

pub mod store;

pub use store::{MemoryStore, store_contract};
