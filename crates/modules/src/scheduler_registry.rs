//! The scheduler's worker registry, in process: the [`SchedulerPort`] that worker management
//! registers with when the scheduler runs in the same server, and the data the gRPC
//! `SchedulerService` serves when it runs elsewhere.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::SystemTime;

use async_trait::async_trait;
use hodei_core::{Worker, WorkerId};
use hodei_ports::{SchedulerError, SchedulerPort};

/// A worker as the scheduler holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredWorker {
    pub worker: Worker,
    pub registered_at: SystemTime,
}

/// See the module docs. Reads vastly outnumber writes, hence the `RwLock`; no lock is held
/// across an `await`.
#[derive(Debug, Default)]
pub struct SchedulerRegistry {
    workers: RwLock<BTreeMap<WorkerId, RegisteredWorker>>,
}

impl SchedulerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<WorkerId, RegisteredWorker>> {
        self.workers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<WorkerId, RegisteredWorker>> {
        self.workers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `worker`: idempotent for the same data, [`SchedulerError::Conflict`] for
    /// different data under the same id. Returns whether the worker is new.
    pub fn register(&self, worker: Worker) -> Result<bool, SchedulerError> {
        worker.validate()?;
        let mut workers = self.write();
        match workers.get(&worker.id) {
            Some(existing) if existing.worker == worker => Ok(false),
            Some(_) => Err(SchedulerError::Conflict(worker.id)),
            None => {
                workers.insert(
                    worker.id.clone(),
                    RegisteredWorker {
                        worker,
                        registered_at: SystemTime::now(),
                    },
                );
                Ok(true)
            }
        }
    }

    pub fn unregister(&self, worker_id: &WorkerId) -> Result<RegisteredWorker, SchedulerError> {
        self.write()
            .remove(worker_id)
            .ok_or_else(|| SchedulerError::WorkerNotFound(worker_id.clone()))
    }

    pub fn get(&self, worker_id: &WorkerId) -> Option<RegisteredWorker> {
        self.read().get(worker_id).cloned()
    }

    /// Every registered worker, ordered by id.
    pub fn list(&self) -> Vec<RegisteredWorker> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

#[async_trait]
impl SchedulerPort for SchedulerRegistry {
    async fn register_worker(&self, worker: Worker) -> Result<(), SchedulerError> {
        let worker_id = worker.id.clone();
        if self.register(worker)? {
            tracing::debug!(%worker_id, "worker registered with the scheduler");
        }
        Ok(())
    }

    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), SchedulerError> {
        self.unregister(worker_id).map(|_| ())
    }

    async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError> {
        Ok(self.read().keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::{ProviderKind, WorkerSpec};

    fn worker(id: &str) -> Worker {
        Worker::from_spec(
            WorkerId::new(id).unwrap(),
            &WorkerSpec::default(),
            ProviderKind::Local,
            SystemTime::UNIX_EPOCH,
        )
    }

    #[tokio::test]
    async fn registration_is_idempotent_and_conflicts_are_refused() {
        let registry = SchedulerRegistry::new();
        registry.register_worker(worker("a")).await.unwrap();
        registry.register_worker(worker("a")).await.unwrap();
        assert_eq!(registry.len(), 1);

        let mut different = worker("a");
        different.capabilities.cpu_cores = 99;
        let error = registry.register_worker(different).await.unwrap_err();
        assert_eq!(error, SchedulerError::Conflict(WorkerId::new("a").unwrap()));
    }

    #[tokio::test]
    async fn invalid_workers_are_refused_naming_the_field() {
        let registry = SchedulerRegistry::new();
        let mut bad = worker("a");
        bad.capabilities.memory_mb = 0;
        match registry.register_worker(bad).await.unwrap_err() {
            SchedulerError::InvalidWorker(e) => assert_eq!(e.field, "capabilities.memory_mb"),
            other => panic!("{other:?}"),
        }
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn unregister_removes_and_unknown_is_not_found() {
        let registry = SchedulerRegistry::new();
        registry.register_worker(worker("b")).await.unwrap();
        registry.register_worker(worker("a")).await.unwrap();
        let ids = registry.get_registered_workers().await.unwrap();
        assert_eq!(
            ids,
            vec![WorkerId::new("a").unwrap(), WorkerId::new("b").unwrap()]
        );

        registry.unregister_worker(&ids[0]).await.unwrap();
        assert!(registry.get(&ids[0]).is_none());
        assert!(matches!(
            registry.unregister_worker(&ids[0]).await,
            Err(SchedulerError::WorkerNotFound(_))
        ));
    }
}
