//! Application services: the async shell around `hodei-core`'s decisions. They move data
//! between the ports (provider, store, scheduler) and the pure functions, and own no IO of
//! their own.

pub mod credentials;
pub mod drain;
pub mod jobs;
pub mod pools;
pub mod retention;
pub mod scheduler_registry;
pub mod tenants;
pub mod terminations;
pub mod worker_management;

pub use credentials::{CredentialError, Credentials, NewCredential, Token};
pub use drain::{DrainError, WorkerDrains};
pub use jobs::{
    Clock, JobError, JobMetrics, JobService, JobServiceConfig, JobSnapshot, LogPage, PoolSettings,
    Retired, TenantStatus, TokioClock,
};
pub use pools::{
    DecisionRecord, PoolCounts, PoolError, PoolManager, PoolManagerConfig, PoolMetrics, PoolStatus,
};
pub use retention::{Retention, RetentionMetrics};
pub use scheduler_registry::{
    LivenessChange, RegisteredWorker, RegistrationSource, ResourceUsage, SchedulerRegistry,
    WorkerUsageMetrics,
};
pub use tenants::{TenantError, TenantService, TenantView};
pub use terminations::{Terminations, Why};
pub use worker_management::{
    PoolCreated, WorkerManagementConfig, WorkerManagementError, WorkerManagementMetrics,
    WorkerManagementService, WorkerProvisioned, WorkerStatus,
};
