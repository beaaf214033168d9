//! Scheduler Port
//!
//! The port (trait) through which worker management registers workers with the scheduler,
//! without depending on where the scheduler runs: in this process (the scheduler registry in
//! `hodei-modules`) or in another one over gRPC.

use async_trait::async_trait;
use hodei_core::{ValidationError, Worker, WorkerId};

/// Why the scheduler could not do what was asked.
///
/// Callers decide whether to try again with [`SchedulerError::is_retryable`]: a rejected
/// worker will be rejected again, an unreachable scheduler may answer next time.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SchedulerError {
    /// The scheduler accepted the request but could not complete the registration
    /// (for example its registry was briefly overloaded). Retryable.
    #[error("registration failed: {0}")]
    RegistrationFailed(String),

    /// The worker is not registered. Permanent.
    #[error("worker not found: {0}")]
    WorkerNotFound(WorkerId),

    /// The scheduler failed in a way it could not classify. Retryable.
    #[error("internal error: {0}")]
    Internal(String),

    /// The scheduler could not be reached, or did not answer in time. Retryable.
    #[error("scheduler unavailable: {0}")]
    Unavailable(String),

    /// The worker's data is invalid; the error names the field. Permanent.
    #[error("invalid worker: {0}")]
    InvalidWorker(#[from] ValidationError),

    /// A worker with this id is already registered with different capabilities or metadata.
    /// Permanent.
    #[error("worker {0} is already registered with different data")]
    Conflict(WorkerId),

    /// The scheduler refused the request for a reason retrying cannot fix (wrong token,
    /// unsupported call). Permanent.
    #[error("refused by the scheduler: {0}")]
    Rejected(String),
}

impl SchedulerError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RegistrationFailed(_) | Self::Internal(_) | Self::Unavailable(_) => true,
            Self::WorkerNotFound(_)
            | Self::InvalidWorker(_)
            | Self::Conflict(_)
            | Self::Rejected(_) => false,
        }
    }

    /// Short stable name for metric labels and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RegistrationFailed(_) => "registration_failed",
            Self::WorkerNotFound(_) => "worker_not_found",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
            Self::InvalidWorker(_) => "invalid_worker",
            Self::Conflict(_) => "conflict",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// The scheduler, as seen by whoever provisions workers.
///
/// Implementations are shared across tasks, so the trait is object safe and `Send + Sync`;
/// hold it as `Arc<dyn SchedulerPort>` (or `Box<dyn SchedulerPort>`).
///
/// # Example
///
/// A scheduler that remembers ids in memory, used through a trait object:
///
/// ```
/// use std::collections::BTreeSet;
/// use std::sync::{Arc, Mutex};
///
/// use async_trait::async_trait;
/// use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};
/// use hodei_ports::{SchedulerError, SchedulerPort};
///
/// #[derive(Default)]
/// struct InMemory(Mutex<BTreeSet<WorkerId>>);
///
/// #[async_trait]
/// impl SchedulerPort for InMemory {
///     async fn register_worker(&self, worker: Worker) -> Result<(), SchedulerError> {
///         worker.validate()?;
///         self.0.lock().unwrap().insert(worker.id);
///         Ok(())
///     }
///     async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), SchedulerError> {
///         if self.0.lock().unwrap().remove(worker_id) {
///             Ok(())
///         } else {
///             Err(SchedulerError::WorkerNotFound(worker_id.clone()))
///         }
///     }
///     async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError> {
///         Ok(self.0.lock().unwrap().iter().cloned().collect())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), SchedulerError> {
/// let scheduler: Arc<dyn SchedulerPort> = Arc::new(InMemory::default());
/// let id = WorkerId::new("worker-1")?;
/// let worker = Worker::from_spec(id.clone(), &WorkerSpec::default(), ProviderKind::Local,
///                                std::time::SystemTime::now());
///
/// scheduler.register_worker(worker).await?;
/// assert_eq!(scheduler.get_registered_workers().await?, vec![id.clone()]);
///
/// scheduler.unregister_worker(&id).await?;
/// let again = scheduler.unregister_worker(&id).await.unwrap_err();
/// assert!(!again.is_retryable());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait SchedulerPort: Send + Sync {
    /// Registers a provisioned worker so the scheduler can give it work.
    ///
    /// `worker` carries the id, capabilities and metadata. Registering the same worker twice
    /// with the same data succeeds; with different data it is [`SchedulerError::Conflict`].
    /// Invalid data is [`SchedulerError::InvalidWorker`] naming the field.
    async fn register_worker(&self, worker: Worker) -> Result<(), SchedulerError>;

    /// Removes a worker's registration, for example when it is stopped or deleted.
    ///
    /// Returns [`SchedulerError::WorkerNotFound`] when `worker_id` is not registered.
    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), SchedulerError>;

    /// Lists the ids of every registered worker.
    async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    struct Nothing;

    #[async_trait]
    impl SchedulerPort for Nothing {
        async fn register_worker(&self, _: Worker) -> Result<(), SchedulerError> {
            Err(SchedulerError::Unavailable("down".into()))
        }
        async fn unregister_worker(&self, id: &WorkerId) -> Result<(), SchedulerError> {
            Err(SchedulerError::WorkerNotFound(id.clone()))
        }
        async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError> {
            Ok(vec![])
        }
    }

    #[tokio::test]
    async fn port_is_object_safe_as_box_and_arc() {
        let boxed: Box<dyn SchedulerPort> = Box::new(Nothing);
        let shared: std::sync::Arc<dyn SchedulerPort> = std::sync::Arc::new(Nothing);
        assert!(boxed.get_registered_workers().await.unwrap().is_empty());
        let id = WorkerId::new("w").unwrap();
        assert!(matches!(
            shared.unregister_worker(&id).await,
            Err(SchedulerError::WorkerNotFound(_))
        ));
    }

    #[test]
    fn every_variant_is_an_error_with_a_message_and_a_retry_class() {
        let id = WorkerId::new("w-1").unwrap();
        let cases: Vec<(SchedulerError, &str, bool)> = vec![
            (
                SchedulerError::RegistrationFailed("busy".into()),
                "registration failed: busy",
                true,
            ),
            (
                SchedulerError::WorkerNotFound(id.clone()),
                "worker not found: w-1",
                false,
            ),
            (
                SchedulerError::Internal("boom".into()),
                "internal error: boom",
                true,
            ),
            (
                SchedulerError::Unavailable("refused".into()),
                "scheduler unavailable: refused",
                true,
            ),
            (
                ValidationError::new("worker_id", "must not be empty").into(),
                "invalid worker: invalid worker_id: must not be empty",
                false,
            ),
            (
                SchedulerError::Conflict(id),
                "worker w-1 is already registered with different data",
                false,
            ),
        ];
        for (error, message, retryable) in cases {
            let as_error: &dyn Error = &error;
            assert_eq!(as_error.to_string(), message);
            assert_eq!(error.is_retryable(), retryable, "{message}");
            assert!(!error.kind().is_empty());
        }
    }
}
