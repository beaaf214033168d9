//! Draining workers on request (`hodei worker drain ID [--then terminate|keep]`): a drained
//! worker gets no new job (the registry's `draining` mark, which the dispatcher reads),
//! finishes the job it runs, then is terminated (its pool replaces it) or stays drained
//! until it is undrained. The store records the worker as `draining` meanwhile.
//!
//! Which drained workers are done is [`hodei_core::lifecycle::drained_to_terminate`]; the
//! dispatcher's own [`JobService::drain`] takes each out of matching only if it is idle at
//! that very turn, so a job cannot slip onto a worker as it is terminated; the termination
//! itself is asked of [`Terminations`], the one owner.

use std::sync::Arc;
use std::time::Duration;

use hodei_core::lifecycle::drained_to_terminate;
use hodei_core::{AfterDrain, WorkerId, WorkerState};
use hodei_ports::{SchedulerError, Store, store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{JobError, JobService, PoolManager, SchedulerRegistry, Terminations, Why};

/// How often drained workers are looked at, besides right after a drain request.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why a drain or undrain was refused.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The scheduler holds no such worker.
    #[error("worker {0} not found")]
    NotFound(WorkerId),
    /// The worker's recorded state cannot become draining (still provisioning, or gone).
    #[error("worker {id} is {state}: it cannot be drained")]
    NotDrainable { id: WorkerId, state: WorkerState },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct WorkerDrains {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<SchedulerRegistry>,
    jobs: JobService,
    /// Drained workers done with their job go through the one owner of termination.
    terminations: Terminations,
    store: Arc<dyn Store>,
    pools: PoolManager,
    wake: Notify,
}

impl std::fmt::Debug for WorkerDrains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDrains").finish_non_exhaustive()
    }
}

impl WorkerDrains {
    pub fn new(
        registry: Arc<SchedulerRegistry>,
        jobs: JobService,
        terminations: Terminations,
        store: Arc<dyn Store>,
        pools: PoolManager,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                jobs,
                terminations,
                store,
                pools,
                wake: Notify::new(),
            }),
        }
    }

    /// Drains `id`: no new job from now on, then `then`. Draining again changes `then`.
    pub async fn drain(&self, id: &WorkerId, then: AfterDrain) -> Result<(), DrainError> {
        let inner = &self.inner;
        let before = inner
            .registry
            .set_draining(id, Some(then))
            .map_err(|error| not_found(id, error))?;
        if let Err(error) = record_drain(inner.store.as_ref(), id, Some(then)).await {
            // Nothing changed after all.
            let _ = inner.registry.set_draining(id, before);
            return Err(error);
        }
        tracing::info!(worker_id = %id, %then, "worker drained");
        inner.wake.notify_one();
        Ok(())
    }

    /// Undrains `id`: it takes jobs again. Refused once its termination has begun.
    pub async fn undrain(&self, id: &WorkerId) -> Result<(), DrainError> {
        let inner = &self.inner;
        if inner.terminations.is_pending(id) {
            return Err(DrainError::NotDrainable {
                id: id.clone(),
                state: WorkerState::Terminated,
            });
        }
        let before = inner
            .registry
            .set_draining(id, None)
            .map_err(|error| not_found(id, error))?;
        if let Err(error) = record_drain(inner.store.as_ref(), id, None).await {
            let _ = inner.registry.set_draining(id, before);
            return Err(error);
        }
        tracing::info!(worker_id = %id, "worker undrained");
        Ok(())
    }

    /// Resumes the drains recorded before a restart: each worker the store records as
    /// draining is marked in the registry now, or the moment it registers again, with what
    /// it was to do afterwards. Call before serving. Returns how many were resumed.
    pub async fn restore(&self) -> Result<usize, store::Error> {
        let drained = self.inner.store.drained_workers().await?;
        for (id, then) in &drained {
            self.inner.registry.restore_drain(id, *then);
            tracing::info!(worker_id = %id, %then, "drain resumed after a restart");
        }
        self.inner.wake.notify_one();
        Ok(drained.len())
    }

    /// Terminates drained workers as they finish their jobs, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if let Err(error) = self.step().await {
                tracing::warn!(%error, "could not finish drained workers");
            }
        }
    }

    /// One pass: takes the idle workers drained to terminate out of matching and asks for
    /// their termination.
    async fn step(&self) -> Result<(), JobError> {
        let inner = &self.inner;
        let draining: Vec<(WorkerId, AfterDrain)> = inner
            .registry
            .filter_map(|entry| entry.draining.map(|then| (entry.worker.id.clone(), then)));
        let done = drained_to_terminate(draining.iter().map(|(id, then)| (id, *then)), |id| {
            inner.jobs.worker_activity(id).is_some() || inner.terminations.is_pending(id)
        });
        if !done.is_empty() {
            // The dispatcher takes out only those still idle at its turn.
            let retired = inner.jobs.drain(done).await?;
            for id in retired {
                inner.terminations.request(id, Why::Drained);
            }
            // The pool manager sees them leave and provisions their replacements.
            inner.pools.wake();
        }
        Ok(())
    }
}

/// The registry's only refusal of a drain mark is an unknown worker.
fn not_found(id: &WorkerId, _: SchedulerError) -> DrainError {
    DrainError::NotFound(id.clone())
}

/// Records a drain (`Some`: state `draining` and what comes after) or an undrain (`None`:
/// state `idle`) for a worker the store knows (a hand-started agent may have no record).
/// What comes after is written first, so a restart in between never finds a drained worker
/// without it (an undrain's leftover mark is ignored: only draining workers are read back).
async fn record_drain(
    store: &dyn Store,
    id: &WorkerId,
    then: Option<AfterDrain>,
) -> Result<(), DrainError> {
    let to = match then {
        Some(_) => WorkerState::Draining,
        None => WorkerState::Idle,
    };
    let Some(record) = store.get_worker(id).await? else {
        return Ok(());
    };
    if record.state != to && !record.state.can_transition_to(to) {
        return Err(DrainError::NotDrainable {
            id: id.clone(),
            state: record.state,
        });
    }
    if then.is_some() {
        store.set_worker_drain(id, then).await?;
    }
    if record.state != to {
        store.transition_worker(id, to).await?;
    }
    if then.is_none() {
        store.set_worker_drain(id, None).await?;
    }
    Ok(())
}
