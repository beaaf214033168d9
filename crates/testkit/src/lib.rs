//! Test support: in-memory fakes of every port and the contract suites that real adapters
//! and fakes must both pass. Only tests depend on this crate.

pub mod agents;
pub mod metrics;
pub mod postgres;
pub mod provider;
pub mod scheduler;
pub mod store;
pub mod wait;

pub use metrics::metric_value;
pub use provider::{FakeProvider, provider_contract};
pub use scheduler::{FakeScheduler, Step, scheduler_contract};
pub use store::{MemoryStore, store_contract};
pub use wait::wait_for;
