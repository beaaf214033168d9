//! Hodei's domain: workers, their lifecycle and the pure decisions made about them.
//!
//! This crate does no IO and never fails for reasons outside its inputs. Everything here
//! is synchronous so it can be tested with tables and property tests and replayed in a
//! simulator; the async shell in `hodei-modules` and `hodei-server` only moves data in and out.

pub mod backoff;
pub mod health;
pub mod lifecycle;
pub mod pool;
pub mod reconcile;
pub mod worker;

pub use lifecycle::{LifecycleEvent, TransitionError, WorkerState};
pub use pool::PoolSpec;
pub use worker::{
    Labels, ProviderKind, ValidationError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata,
    WorkerSpec, WorkerType,
};
