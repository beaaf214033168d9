//! The store: durable memory of workers and pools, so a restart forgets nothing.
//!
//! Every state change goes through [`Store::transition_worker`], which checks the core
//! lifecycle state machine and writes atomically, so two writers cannot both move a worker.

use std::time::SystemTime;

use async_trait::async_trait;
use hodei_core::{PoolSpec, TransitionError, Worker, WorkerId, WorkerState};

/// A worker and what we know of its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub worker: Worker,
    pub state: WorkerState,
    /// Whether the scheduler confirmed the registration the last time we tried.
    pub registered: bool,
    pub updated_at: SystemTime,
}

/// Which workers [`Store::list_workers`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerFilter {
    /// Only workers of this pool.
    pub pool: Option<String>,
    /// Leave out terminated workers.
    pub live_only: bool,
}

impl WorkerFilter {
    pub fn live() -> Self {
        Self {
            pool: None,
            live_only: true,
        }
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("worker {0} not found")]
    WorkerNotFound(WorkerId),
    #[error(transparent)]
    IllegalTransition(#[from] TransitionError),
    #[error("worker {0} already exists")]
    WorkerExists(WorkerId),
    /// The database could not be reached or is busy. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row could not be decoded: a bug or a hand-edited database.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Durable state. Implemented by SQLite (and later PostgreSQL) in `hodei-store` and in
/// memory by `hodei-testkit`; both pass `hodei_testkit::store_contract`.
#[async_trait]
pub trait Store: Send + Sync {
    /// Records a new worker in `state` (normally `Provisioning`). Fails with
    /// [`Error::WorkerExists`] when the id is taken, whatever the existing state.
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error>;

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error>;

    /// Workers matching `filter`, ordered by id.
    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error>;

    /// Moves a worker to `to` if the lifecycle allows it from its current state, atomically.
    /// Returns the updated record.
    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error>;

    /// Records whether the scheduler holds a registration for the worker.
    async fn set_registered(&self, id: &WorkerId, registered: bool) -> Result<(), Error>;

    /// Creates or replaces a pool definition.
    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error>;

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error>;

    /// Pools ordered by name.
    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error>;

    /// Removes a pool definition; returns whether it existed.
    async fn delete_pool(&self, name: &str) -> Result<bool, Error>;
}
