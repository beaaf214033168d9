//! A scripted in-memory scheduler: a real registry with idempotent registration and
//! conflict detection, plus knobs to make calls fail, stall or be slow, and counters of
//! what was asked of it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hodei_core::{Worker, WorkerId};
use hodei_ports::{SchedulerError, SchedulerPort};

/// What the fake does with one `register_worker` call.
#[derive(Debug, Clone)]
pub enum Step {
    /// Register normally.
    Succeed,
    /// Fail with this error.
    Fail(SchedulerError),
    /// Wait this long, then register normally.
    Stall(Duration),
}

#[derive(Debug, Default)]
struct State {
    registered: BTreeMap<WorkerId, Worker>,
    script: VecDeque<Step>,
    rejected: BTreeSet<WorkerId>,
    latency: Duration,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FakeScheduler {
    state: Mutex<State>,
    register_calls: AtomicUsize,
    unregister_calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl FakeScheduler {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues steps consumed by the next `register_worker` calls, one each.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state().script.extend(steps);
    }

    /// Makes the next `n` registrations fail with `error`.
    pub fn fail_next(&self, n: usize, error: SchedulerError) {
        self.script(std::iter::repeat_n(Step::Fail(error), n));
    }

    /// Rejects every registration of `id` as invalid data, whatever the script says.
    pub fn reject(&self, id: &WorkerId) {
        self.state().rejected.insert(id.clone());
    }

    /// Makes every call take at least `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Registers a worker directly, bypassing the script.
    pub fn insert(&self, worker: Worker) {
        self.state().registered.insert(worker.id.clone(), worker);
    }

    pub fn registered_ids(&self) -> Vec<WorkerId> {
        self.state().registered.keys().cloned().collect()
    }

    pub fn register_calls(&self) -> usize {
        self.register_calls.load(Ordering::SeqCst)
    }

    pub fn unregister_calls(&self) -> usize {
        self.unregister_calls.load(Ordering::SeqCst)
    }

    /// The most `register_worker` calls that were in progress at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl SchedulerPort for FakeScheduler {
    async fn register_worker(&self, worker: Worker) -> Result<(), SchedulerError> {
        self.register_calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);

        let (step, latency, rejected) = {
            let mut state = self.state();
            let step = state.script.pop_front().unwrap_or(Step::Succeed);
            (step, state.latency, state.rejected.contains(&worker.id))
        };
        tokio::time::sleep(latency).await;
        match step {
            Step::Succeed => {}
            Step::Fail(error) => return Err(error),
            Step::Stall(duration) => tokio::time::sleep(duration).await,
        }
        if rejected {
            return Err(
                hodei_core::ValidationError::new("worker_id", "rejected by the fake").into(),
            );
        }
        worker.validate()?;
        let mut state = self.state();
        match state.registered.get(&worker.id) {
            Some(existing) if *existing != worker => Err(SchedulerError::Conflict(worker.id)),
            _ => {
                state.registered.insert(worker.id.clone(), worker);
                Ok(())
            }
        }
    }

    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), SchedulerError> {
        self.unregister_calls.fetch_add(1, Ordering::SeqCst);
        let latency = self.state().latency;
        tokio::time::sleep(latency).await;
        match self.state().registered.remove(worker_id) {
            Some(_) => Ok(()),
            None => Err(SchedulerError::WorkerNotFound(worker_id.clone())),
        }
    }

    async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError> {
        Ok(self.registered_ids())
    }
}
