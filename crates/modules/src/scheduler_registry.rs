//! The scheduler's worker registry, in process: the [`SchedulerPort`] that worker management
//! registers with when the scheduler runs in the same server, and the data the gRPC
//! `SchedulerService` serves when it runs elsewhere.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use hodei_core::health::{HeartbeatPolicy, Liveness};
use hodei_core::{AfterDrain, Worker, WorkerId};
use hodei_ports::{SchedulerError, SchedulerPort};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::time::Instant;

/// Who registered a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationSource {
    /// Worker management, after provisioning it. Authoritative.
    Provisioned,
    /// The agent itself, in its session's hello, because nobody had registered it. A later
    /// provisioned registration replaces it.
    Agent,
}

/// A worker as the scheduler holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredWorker {
    pub worker: Worker,
    pub source: RegistrationSource,
    pub registered_at: SystemTime,
    /// Whether the agent's session is open.
    pub connected: bool,
    /// When the agent was last heard from (hello or heartbeat), wall clock for display.
    pub last_seen: Option<SystemTime>,
    /// The same instant on the monotonic clock, for deadlines; the registration time until
    /// the agent connects.
    pub last_seen_at: Instant,
    pub liveness: Liveness,
    pub agent_version: Option<String>,
    /// What the agent's last heartbeat said about its machine.
    pub usage: Option<ResourceUsage>,
    /// Set while the worker is drained (`hodei worker drain`): the dispatcher gives it no
    /// new job, and what becomes of it once its job is done.
    pub draining: Option<AfterDrain>,
}

/// A worker's machine at one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceUsage {
    /// One-minute load average.
    pub load_average: f64,
    pub memory_used_mb: u64,
    pub running_jobs: u32,
}

/// A change of liveness found by [`SchedulerRegistry::sweep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessChange {
    pub worker_id: WorkerId,
    pub from: Liveness,
    pub to: Liveness,
}

/// See the module docs. Reads vastly outnumber writes, hence the `RwLock`; no lock is held
/// across an `await`.
#[derive(Debug, Default)]
pub struct SchedulerRegistry {
    workers: RwLock<BTreeMap<WorkerId, RegisteredWorker>>,
    /// Drains recorded before a restart for workers not registered again yet: each takes
    /// its mark the moment it is (see [`SchedulerRegistry::restore_drain`]). Locked only
    /// while `workers` is write-locked.
    restored_drains: std::sync::Mutex<BTreeMap<WorkerId, AfterDrain>>,
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

    /// A new entry, with the drain restored for it if there is one.
    fn new_entry(&self, worker: Worker, source: RegistrationSource) -> RegisteredWorker {
        let draining = self
            .restored_drains
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&worker.id);
        RegisteredWorker {
            draining,
            ..Self::entry(worker, source)
        }
    }

    fn entry(worker: Worker, source: RegistrationSource) -> RegisteredWorker {
        RegisteredWorker {
            worker,
            source,
            registered_at: SystemTime::now(),
            connected: false,
            last_seen: None,
            last_seen_at: Instant::now(),
            liveness: Liveness::Healthy,
            agent_version: None,
            usage: None,
            draining: None,
        }
    }

    /// Registers `worker` on behalf of worker management: idempotent for the same data,
    /// [`SchedulerError::Conflict`] for different data under the same id, except that it
    /// replaces a registration the agent made for itself. Returns whether anything changed.
    pub fn register(&self, worker: Worker) -> Result<bool, SchedulerError> {
        worker.validate()?;
        let mut workers = self.write();
        match workers.get_mut(&worker.id) {
            Some(existing) if existing.worker == worker => {
                let changed = existing.source == RegistrationSource::Agent;
                existing.source = RegistrationSource::Provisioned;
                Ok(changed)
            }
            Some(existing) if existing.source == RegistrationSource::Agent => {
                existing.worker = worker;
                existing.source = RegistrationSource::Provisioned;
                Ok(true)
            }
            Some(_) => Err(SchedulerError::Conflict(worker.id)),
            None => {
                let entry = self.new_entry(worker, RegistrationSource::Provisioned);
                workers.insert(entry.worker.id.clone(), entry);
                Ok(true)
            }
        }
    }

    /// Opens an agent's session: registers the worker from the agent's own description when
    /// nobody has, and marks it connected and healthy. Returns the liveness it had before.
    pub fn connect(&self, worker: Worker, agent_version: &str) -> Result<Liveness, SchedulerError> {
        worker.validate()?;
        let mut workers = self.write();
        let id = worker.id.clone();
        let entry = workers
            .entry(id)
            .or_insert_with(|| self.new_entry(worker, RegistrationSource::Agent));
        let before = entry.liveness;
        entry.connected = true;
        entry.last_seen = Some(SystemTime::now());
        entry.last_seen_at = Instant::now();
        entry.agent_version = Some(agent_version.to_owned());
        Ok(before)
    }

    /// Keeps what a heartbeat said about the worker's machine; unknown workers are ignored.
    pub fn record_usage(&self, worker_id: &WorkerId, usage: ResourceUsage) {
        if let Some(entry) = self.write().get_mut(worker_id) {
            entry.usage = Some(usage);
        }
    }

    /// Records a heartbeat. Returns the liveness before it, or `None` for an unknown worker.
    pub fn heartbeat(&self, worker_id: &WorkerId) -> Option<Liveness> {
        let mut workers = self.write();
        let entry = workers.get_mut(worker_id)?;
        let before = entry.liveness;
        entry.last_seen = Some(SystemTime::now());
        entry.last_seen_at = Instant::now();
        // Liveness changes only in `sweep`, so every recovery is reported exactly once.
        Some(before)
    }

    /// Marks the agent's session closed; the registration stays until the heartbeat
    /// deadlines say otherwise, so a reconnecting agent is the same worker.
    pub fn disconnect(&self, worker_id: &WorkerId) {
        if let Some(entry) = self.write().get_mut(worker_id) {
            entry.connected = false;
        }
    }

    /// Applies `policy` to every worker's silence at `now` and returns what changed.
    /// Workers that become [`Liveness::Gone`] stay registered: the caller decides whether
    /// to terminate or just unregister them.
    pub fn sweep(&self, policy: &HeartbeatPolicy, now: Instant) -> Vec<LivenessChange> {
        let mut changes = Vec::new();
        for (id, entry) in self.write().iter_mut() {
            let verdict = policy.assess(now.saturating_duration_since(entry.last_seen_at));
            if verdict != entry.liveness {
                changes.push(LivenessChange {
                    worker_id: id.clone(),
                    from: entry.liveness,
                    to: verdict,
                });
                entry.liveness = verdict;
            }
        }
        changes
    }

    /// Drains the worker (`Some`: no new job, then `AfterDrain`) or undrains it (`None`).
    /// Returns what it was before.
    pub fn set_draining(
        &self,
        worker_id: &WorkerId,
        draining: Option<AfterDrain>,
    ) -> Result<Option<AfterDrain>, SchedulerError> {
        let mut workers = self.write();
        let entry = workers
            .get_mut(worker_id)
            .ok_or_else(|| SchedulerError::WorkerNotFound(worker_id.clone()))?;
        Ok(std::mem::replace(&mut entry.draining, draining))
    }

    /// Drains `worker_id` as a drain recorded before a restart says: at once if it is
    /// registered, else the moment it registers (by worker management or its agent), so
    /// no job reaches it in between.
    pub fn restore_drain(&self, worker_id: &WorkerId, then: AfterDrain) {
        let mut workers = self.write();
        match workers.get_mut(worker_id) {
            Some(entry) => entry.draining = Some(then),
            None => {
                self.restored_drains
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(worker_id.clone(), then);
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

    /// What `f` makes of each registered worker it keeps, ordered by id, read in place: the
    /// dispatcher's hot path copies only the workers it wants, not the whole registry.
    pub fn filter_map<T>(&self, f: impl FnMut(&RegisteredWorker) -> Option<T>) -> Vec<T> {
        self.read().values().filter_map(f).collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// `hodei_worker_load_average`, `hodei_worker_memory_used_bytes` and
/// `hodei_worker_running_jobs` by worker and pool, read from the registry at each scrape so
/// that a worker's series leave with it.
#[derive(Debug)]
pub struct WorkerUsageMetrics {
    registry: Arc<SchedulerRegistry>,
}

impl WorkerUsageMetrics {
    pub fn new(registry: Arc<SchedulerRegistry>) -> Self {
        Self { registry }
    }
}

/// Reads one figure out of a heartbeat's usage.
type UsageValue = fn(&ResourceUsage) -> f64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    pool: String,
}

impl Collector for WorkerUsageMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.registry.filter_map(|entry| {
            entry.usage.map(|usage| {
                let labels = WorkerLabels {
                    worker: entry.worker.id.to_string(),
                    pool: entry.worker.metadata.pool.clone().unwrap_or_default(),
                };
                (labels, usage)
            })
        });
        let families: [(&str, &str, UsageValue); 3] = [
            (
                "hodei_worker_load_average",
                "One-minute load average of the worker's machine, from its last heartbeat",
                |u| u.load_average,
            ),
            (
                "hodei_worker_memory_used_bytes",
                "Memory used on the worker's machine, from its last heartbeat",
                |u| u.memory_used_mb as f64 * 1024.0 * 1024.0,
            ),
            (
                "hodei_worker_running_jobs",
                "Jobs the worker's agent runs, from its last heartbeat",
                |u| f64::from(u.running_jobs),
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, usage) in &usage {
                ConstGauge::new(value(usage)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
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

    #[test]
    fn a_restored_drain_marks_the_worker_when_it_registers_again() {
        let registry = SchedulerRegistry::new();
        let present = worker("present");
        registry.register(present.clone()).unwrap();
        registry.restore_drain(&present.id, AfterDrain::Keep);
        assert_eq!(
            registry.get(&present.id).unwrap().draining,
            Some(AfterDrain::Keep)
        );
        // Not registered yet: the mark waits for it, whoever registers it first.
        let by_management = worker("later");
        let by_agent = worker("agent");
        registry.restore_drain(&by_management.id, AfterDrain::Terminate);
        registry.restore_drain(&by_agent.id, AfterDrain::Keep);
        registry.register(by_management.clone()).unwrap();
        registry.connect(by_agent.clone(), "test").unwrap();
        assert_eq!(
            registry.get(&by_management.id).unwrap().draining,
            Some(AfterDrain::Terminate)
        );
        assert_eq!(
            registry.get(&by_agent.id).unwrap().draining,
            Some(AfterDrain::Keep)
        );
        // Taken once: a later registration after an unregister starts undrained.
        registry.unregister(&by_agent.id).unwrap();
        registry.connect(by_agent.clone(), "test").unwrap();
        assert_eq!(registry.get(&by_agent.id).unwrap().draining, None);
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
    async fn a_drain_outlasts_reconnects_and_re_registration_until_undrained() {
        let registry = SchedulerRegistry::new();
        let id = WorkerId::new("a").unwrap();
        assert!(matches!(
            registry.set_draining(&id, Some(AfterDrain::Keep)),
            Err(SchedulerError::WorkerNotFound(_))
        ));
        registry.register_worker(worker("a")).await.unwrap();
        assert_eq!(registry.set_draining(&id, Some(AfterDrain::Keep)), Ok(None));
        registry.disconnect(&id);
        registry.connect(worker("a"), "0.1.0").unwrap();
        registry.register_worker(worker("a")).await.unwrap();
        assert_eq!(registry.get(&id).unwrap().draining, Some(AfterDrain::Keep));
        assert_eq!(registry.set_draining(&id, None), Ok(Some(AfterDrain::Keep)));
        assert_eq!(registry.get(&id).unwrap().draining, None);
    }

    #[tokio::test]
    async fn a_provisioned_registration_replaces_the_agents_own() {
        let registry = SchedulerRegistry::new();
        let mut from_hello = worker("a");
        from_hello.metadata.provider = ProviderKind::External;
        registry.connect(from_hello, "0.1.0").unwrap();
        assert_eq!(
            registry.get(&from_hello_id()).unwrap().source,
            RegistrationSource::Agent
        );

        registry.register_worker(worker("a")).await.unwrap();
        let entry = registry.get(&from_hello_id()).unwrap();
        assert_eq!(entry.source, RegistrationSource::Provisioned);
        assert_eq!(entry.worker.metadata.provider, ProviderKind::Local);
        assert!(entry.connected, "the session survives");
    }

    fn from_hello_id() -> WorkerId {
        WorkerId::new("a").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn silence_makes_workers_unhealthy_then_gone_and_a_heartbeat_heals() {
        let registry = SchedulerRegistry::new();
        let policy = HeartbeatPolicy::default();
        registry.connect(worker("a"), "0.1.0").unwrap();
        let id = from_hello_id();

        tokio::time::advance(policy.interval * 3).await;
        let changes = registry.sweep(&policy, Instant::now());
        assert_eq!(
            changes,
            vec![LivenessChange {
                worker_id: id.clone(),
                from: Liveness::Healthy,
                to: Liveness::Unhealthy
            }]
        );
        assert!(
            registry.sweep(&policy, Instant::now()).is_empty(),
            "reported once"
        );

        assert_eq!(registry.heartbeat(&id), Some(Liveness::Unhealthy));
        let changes = registry.sweep(&policy, Instant::now());
        assert_eq!(
            changes,
            vec![LivenessChange {
                worker_id: id.clone(),
                from: Liveness::Unhealthy,
                to: Liveness::Healthy
            }],
            "the recovery is reported by the next sweep, once"
        );
        assert_eq!(registry.get(&id).unwrap().liveness, Liveness::Healthy);
        assert!(registry.sweep(&policy, Instant::now()).is_empty());

        tokio::time::advance(policy.interval * 12).await;
        let changes = registry.sweep(&policy, Instant::now());
        assert_eq!(changes[0].to, Liveness::Gone);
        assert!(
            registry.get(&id).is_some(),
            "the caller decides what gone means"
        );
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
