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

/// The contract every [`SchedulerPort`] passes (the in-process registry, the gRPC client
/// against a server, [`FakeScheduler`]): registration is idempotent for the same data, a
/// different worker under a taken id is a [`SchedulerError::Conflict`], an invalid worker is
/// [`SchedulerError::InvalidWorker`], unregistering an unknown worker is
/// [`SchedulerError::WorkerNotFound`], and the listing shows exactly what is registered. It
/// uses ids `{prefix}-1` and `{prefix}-2` and leaves nothing registered under them.
pub async fn scheduler_contract(port: &dyn SchedulerPort, prefix: &str) {
    use hodei_core::{ProviderKind, WorkerSpec};
    let id = |n: u8| WorkerId::new(format!("{prefix}-{n}")).expect("valid id");
    // Millisecond-precise, as every wire and store keeps it.
    let at = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_123_456);
    let worker = |n: u8, cpu_cores: u32| {
        let mut spec = WorkerSpec::default();
        spec.capabilities.cpu_cores = cpu_cores;
        Worker::from_spec(id(n), &spec, ProviderKind::Local, at)
    };
    let listed = || async {
        let all = port
            .get_registered_workers()
            .await
            .unwrap_or_else(|error| panic!("get_registered_workers failed: {error}"));
        all.into_iter()
            .filter(|w| *w == id(1) || *w == id(2))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed().await, [], "ids {prefix}-* are already registered");

    let one = worker(1, 2);
    port.register_worker(one.clone())
        .await
        .unwrap_or_else(|error| panic!("register {}: {error}", one.id));
    port.register_worker(one.clone())
        .await
        .unwrap_or_else(|error| panic!("registering the same worker again is a no-op: {error}"));
    port.register_worker(worker(2, 4))
        .await
        .unwrap_or_else(|error| panic!("register {}: {error}", id(2)));
    let mut both = listed().await;
    both.sort();
    assert_eq!(both, [id(1), id(2)], "each registered worker listed once");

    match port.register_worker(worker(1, 8)).await {
        Err(SchedulerError::Conflict(got)) => assert_eq!(got, id(1)),
        other => panic!("a different worker under a taken id: want Conflict, got {other:?}"),
    }
    let invalid = worker(3, 0);
    match port.register_worker(invalid).await {
        Err(error @ SchedulerError::InvalidWorker(_)) => {
            assert!(!error.is_retryable(), "an invalid worker is permanent");
        }
        other => panic!("a worker with no cpu: want InvalidWorker, got {other:?}"),
    }

    port.unregister_worker(&id(1))
        .await
        .unwrap_or_else(|error| panic!("unregister {}: {error}", id(1)));
    assert_eq!(
        listed().await,
        [id(2)],
        "an unregistered worker is not listed"
    );
    match port.unregister_worker(&id(1)).await {
        Err(SchedulerError::WorkerNotFound(got)) => assert_eq!(got, id(1)),
        other => panic!("unregistering twice: want WorkerNotFound, got {other:?}"),
    }
    // Gone, the id is free for other data.
    port.register_worker(worker(1, 8))
        .await
        .unwrap_or_else(|error| panic!("re-register {} after unregistering: {error}", id(1)));
    for n in [1, 2] {
        port.unregister_worker(&id(n))
            .await
            .unwrap_or_else(|error| panic!("unregister {}: {error}", id(n)));
    }
    assert_eq!(listed().await, []);
}
