//! The registration port: registering provisioned workers with the scheduler, with retries.
//! The adapter that implements it is `hodei_adapters::worker_registration`.

use std::time::Duration;

use async_trait::async_trait;
use hodei_core::{LifecycleEvent, Worker, WorkerId};

use crate::scheduler_port::SchedulerError;

/// Why a registration (or unregistration) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The scheduler failed in a way that may pass: unreachable, overloaded, internal error.
    #[error("scheduler unavailable: {0}")]
    SchedulerUnavailable(#[source] SchedulerError),

    /// One attempt took longer than the per-attempt timeout.
    #[error("worker registration timeout after {0:?}")]
    Timeout(Duration),

    /// The worker's data is invalid; retrying cannot help.
    #[error("invalid worker configuration: {0}")]
    InvalidWorker(String),

    /// The scheduler refused for a reason other than invalid data (a conflicting
    /// registration, an unknown worker on unregister); retrying cannot help.
    #[error("rejected by the scheduler: {0}")]
    Rejected(#[source] SchedulerError),

    /// Every attempt failed with a retryable error.
    #[error("max retries exceeded: {attempts} attempts, last error: {last_error}")]
    MaxRetriesExceeded {
        attempts: u32,
        last_error: Box<RegistrationError>,
    },

    /// Anything else, such as a panicked task.
    #[error("unexpected error: {0}")]
    Unexpected(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl RegistrationError {
    /// Classifies a scheduler error: invalid data and refusals are permanent, the rest
    /// may pass.
    pub fn from_scheduler(error: SchedulerError) -> Self {
        match error {
            SchedulerError::InvalidWorker(invalid) => Self::InvalidWorker(invalid.to_string()),
            error if error.is_retryable() => Self::SchedulerUnavailable(error),
            error => Self::Rejected(error),
        }
    }

    /// Whether trying the same registration again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::SchedulerUnavailable(_) | Self::Timeout(_))
    }

    /// Whether the scheduler refused the worker itself (as opposed to failing to answer).
    /// A refused worker must not be left running: nobody would ever give it work.
    pub fn is_permanent_rejection(&self) -> bool {
        matches!(self, Self::InvalidWorker(_) | Self::Rejected(_))
    }

    /// Short stable name for the `error_type` metric label and log field.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::SchedulerUnavailable(_) => "scheduler_unavailable",
            Self::Timeout(_) => "timeout",
            Self::InvalidWorker(_) => "invalid_worker",
            Self::Rejected(_) => "rejected",
            Self::MaxRetriesExceeded { .. } => "max_retries",
            Self::Unexpected(_) => "unexpected",
        }
    }
}

/// Registers workers with the scheduler on behalf of worker management.
#[async_trait]
pub trait WorkerRegistrationPort: Send + Sync {
    /// Registers one worker, retrying transient failures.
    async fn register_worker(&self, worker: &Worker) -> Result<(), RegistrationError>;

    /// Registers many workers with bounded concurrency. Returns one result per worker, in
    /// the order given; one failure never stops the others.
    async fn register_workers_batch(
        &self,
        workers: &[Worker],
    ) -> Vec<Result<(), RegistrationError>>;

    /// Removes a worker's registration.
    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), RegistrationError>;

    /// The ids the scheduler has registered, for reconciliation.
    async fn registered_workers(&self) -> Result<Vec<WorkerId>, RegistrationError>;

    /// Reacts to a lifecycle event: `Provisioned` registers, `Terminated` unregisters
    /// (an already-unknown worker is fine), `Ready` needs nothing.
    async fn handle_lifecycle_event(
        &self,
        event: &LifecycleEvent,
    ) -> Result<(), RegistrationError> {
        match event {
            LifecycleEvent::Provisioned(worker) => self.register_worker(worker).await,
            LifecycleEvent::Ready(_) => Ok(()),
            LifecycleEvent::Terminated { worker_id, .. } => {
                match self.unregister_worker(worker_id).await {
                    Err(RegistrationError::Rejected(SchedulerError::WorkerNotFound(_))) => Ok(()),
                    other => other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::ValidationError;

    #[test]
    fn scheduler_errors_are_classified() {
        let id = WorkerId::new("w").unwrap();
        let invalid =
            RegistrationError::from_scheduler(ValidationError::new("worker_id", "bad").into());
        assert!(
            matches!(invalid, RegistrationError::InvalidWorker(ref m) if m.contains("worker_id"))
        );
        assert!(invalid.is_permanent_rejection() && !invalid.is_retryable());

        let down = RegistrationError::from_scheduler(SchedulerError::Unavailable("refused".into()));
        assert!(down.is_retryable() && !down.is_permanent_rejection());

        let conflict = RegistrationError::from_scheduler(SchedulerError::Conflict(id));
        assert!(matches!(conflict, RegistrationError::Rejected(_)));
        assert!(conflict.is_permanent_rejection());

        let timeout = RegistrationError::Timeout(Duration::from_secs(30));
        assert!(timeout.is_retryable());
        assert_eq!(timeout.to_string(), "worker registration timeout after 30s");
    }
}
