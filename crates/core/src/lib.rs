//! Hodei's domain: workers, their lifecycle and the pure decisions made about them.
//!
//! This crate does no IO and never fails for reasons outside its inputs. Everything here
//! is synchronous so it can be tested with tables and property tests and replayed in a
//! simulator; the async shell in `hodei-modules` and `hodei-server` only moves data in and out.

pub mod autoscale;
pub mod backoff;
pub mod console;
pub mod cost;
pub mod credential;
pub mod dispatch;
pub mod fence;
pub mod health;
pub mod job;
pub mod lease;
pub mod lifecycle;
pub mod matching;
pub mod pool;
pub mod pool_pass;
pub mod queue;
pub mod reconcile;
pub mod retention;
pub mod settings;
pub mod sla;
pub mod tenancy;
pub mod trace;
pub mod worker;

pub use credential::{Operation, Principal, Role};
pub use job::{
    AttemptOutcome, Command, Job, JobId, JobSpec, JobState, JobTransitionError, Priority,
    QueueName, Requirements, SlaClass, TenantName,
};
pub use lifecycle::{AfterDrain, LifecycleEvent, TransitionError, WorkerState};
pub use matching::{IdleWorker, Mismatch};
pub use pool::{PoolKind, PoolSpec};
pub use queue::{QueueConfig, QueueEntry, QueueError, Queues};
pub use worker::{
    Labels, ProviderKind, ValidationError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata,
    WorkerSpec, WorkerType,
};
