//! The one read model of a worker, used by REST, gRPC and (through REST) the CLI and the
//! console: the store's record, the scheduler registry's entry and the dispatcher's
//! activity, with the state composed by [`hodei_core::lifecycle::shown_state`].

use std::collections::BTreeMap;

use hodei_core::health::Liveness;
use hodei_core::lifecycle::shown_state;
use hodei_core::{Worker, WorkerId, WorkerState};
use hodei_modules::{JobService, RegisteredWorker, SchedulerRegistry};
use hodei_ports::{Store, WorkerFilter, WorkerRecord, store};

/// A worker as every API shows it. At least one of `record` and `registration` is set.
#[derive(Debug, Clone)]
pub(crate) struct WorkerReading {
    /// What the store keeps; `None` for a worker only the scheduler knows (an agent
    /// started by hand, or one another server's worker management registered).
    pub record: Option<WorkerRecord>,
    /// What this server's scheduler registry holds; `None` when not registered here.
    pub registration: Option<RegisteredWorker>,
    pub state: WorkerState,
}

impl WorkerReading {
    fn compose(
        record: Option<WorkerRecord>,
        registration: Option<RegisteredWorker>,
        jobs: &JobService,
    ) -> Option<Self> {
        let id = record
            .as_ref()
            .map(|r| r.worker.id.clone())
            .or_else(|| registration.as_ref().map(|e| e.worker.id.clone()))?;
        let state = shown_state(
            record.as_ref().map(|r| r.state),
            jobs.worker_activity(&id),
            registration
                .as_ref()
                .is_some_and(|e| e.liveness != Liveness::Healthy),
            registration.as_ref().is_some_and(|e| e.draining.is_some()),
        );
        Some(Self {
            record,
            registration,
            state,
        })
    }

    pub fn worker(&self) -> Option<&Worker> {
        self.record
            .as_ref()
            .map(|r| &r.worker)
            .or_else(|| self.registration.as_ref().map(|e| &e.worker))
    }
}

/// Every worker the store records under `filter`, then every registered worker the store
/// does not know (of `filter.pool`, if set), ordered by id.
pub(crate) async fn list(
    store: &dyn Store,
    registry: &SchedulerRegistry,
    jobs: &JobService,
    filter: &WorkerFilter,
) -> Result<Vec<WorkerReading>, store::Error> {
    let records = store.list_workers(filter).await?;
    let mut registered: BTreeMap<WorkerId, RegisteredWorker> = registry
        .list()
        .into_iter()
        .map(|entry| (entry.worker.id.clone(), entry))
        .collect();
    let mut readings: Vec<WorkerReading> = records
        .into_iter()
        .filter_map(|record| {
            let registration = registered.remove(&record.worker.id);
            WorkerReading::compose(Some(record), registration, jobs)
        })
        .collect();
    readings.extend(
        registered
            .into_values()
            .filter(|entry| filter.pool.is_none() || entry.worker.metadata.pool == filter.pool)
            .filter_map(|entry| WorkerReading::compose(None, Some(entry), jobs)),
    );
    readings.sort_by(|a, b| {
        let id = |r: &WorkerReading| r.worker().map(|w| w.id.clone());
        id(a).cmp(&id(b))
    });
    Ok(readings)
}

/// One worker, if the store or the registry knows it.
pub(crate) async fn get(
    store: &dyn Store,
    registry: &SchedulerRegistry,
    jobs: &JobService,
    id: &WorkerId,
) -> Result<Option<WorkerReading>, store::Error> {
    let record = store.get_worker(id).await?;
    Ok(WorkerReading::compose(record, registry.get(id), jobs))
}
