//! Refusing submissions nothing could ever run (issue 19): a pool that does not exist, or
//! requirements that no pool's template and no connected worker meets. The decision is
//! [`hodei_core::matching::never_runnable`]; this gathers its inputs. A submitter who
//! expects such a worker to come asks to queue the job anyway (`allow_pending`, `hodei job
//! submit --allow-pending`), and `[jobs] allow_pending = true` does so for every job.

use hodei_core::matching::{PoolOffer, effective_labels, never_runnable};
use hodei_core::worker::Labels;
use hodei_core::{Requirements, ValidationError, WorkerCapabilities};
use hodei_modules::{PoolManager, SchedulerRegistry};

use crate::error::ApiError;

/// `Err` naming the field and why, when nothing could ever run a job of `requirements`.
pub(crate) fn refuse_never_runnable(
    pools: &PoolManager,
    scheduler: &SchedulerRegistry,
    requirements: &Requirements,
) -> Result<(), ApiError> {
    let statuses = pools.list();
    let offers: Vec<PoolOffer<'_>> = statuses
        .iter()
        .filter(|status| !status.removing)
        .map(|status| PoolOffer {
            name: &status.spec.name,
            capabilities: &status.spec.template.capabilities,
            labels: &status.spec.template.labels,
        })
        .collect();
    let workers: Vec<(WorkerCapabilities, Labels)> = scheduler.filter_map(|entry| {
        entry.connected.then(|| {
            (
                entry.worker.capabilities.clone(),
                effective_labels(&entry.worker),
            )
        })
    });
    let connected: Vec<(&WorkerCapabilities, &Labels)> = workers
        .iter()
        .map(|(capabilities, labels)| (capabilities, labels))
        .collect();
    match never_runnable(requirements, &offers, &connected) {
        None => Ok(()),
        Some(refusal) => Err(ValidationError::new(
            refusal.field,
            format!(
                "{}; to queue it anyway for a worker yet to come, submit with allow_pending (hodei job submit --allow-pending)",
                refusal.reason
            ),
        )
        .into()),
    }
}
