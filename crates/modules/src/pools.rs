//! The pool manager: keeps every pool at the size `hodei_core::pool_pass::pass` asks for.
//!
//! One task runs a pass on a timer and whenever the dispatcher's state changes (at most
//! every `min_pass_interval`): it takes a [`JobSnapshot`] from the dispatcher, reads the
//! registry and its own list of workers being created, hands them to the pure pass in core
//! (which splits the queue over the pools, keeps the arrival window, the running-time
//! average and the arrival profile, decides and logs), and carries the outcome out.
//! Provisioning runs in background tasks, one per scale-up, at most
//! `max_concurrent_provisioning` creations per pool and `[provisioning]
//! max_concurrent_provisioning` across all pools (start-up pre-warm included); a
//! scale-up's workers are registered through the batch registration, those created while
//! a batch registers making up the next one;
//! a worker being created counts as starting from the moment its id is chosen, so no pass
//! provisions for the same demand twice. Scale-in asks the dispatcher to drain idle workers
//! first ([`JobService::drain`]); only those it confirms idle are terminated (asked of
//! [`Terminations`], the one owner), so a busy worker is never killed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::autoscale::{self, ScaleAction};
use hodei_core::cost::{self, PoolUsage};
use hodei_core::health::Liveness;
use hodei_core::matching::IdleWorker;
pub use hodei_core::pool_pass::PoolCounts;
use hodei_core::pool_pass::{
    self, ArrivalProfile, Member, MemberState, PassJobs, PassPool, PoolTrack,
};
use hodei_core::{PoolSpec, ProviderKind, ValidationError, Worker, WorkerId};
use hodei_ports::{Store, store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::{JobSnapshot, PoolSettings};
use crate::worker_management::Provisioning;
use crate::{
    JobService, SchedulerRegistry, Terminations, Why, WorkerManagementService, WorkerStatus,
};

/// How the pool manager runs.
#[derive(Debug, Clone)]
pub struct PoolManagerConfig {
    /// A pass at least this often.
    pub tick: Duration,
    /// At most one pass this often, however busy the dispatcher is.
    pub min_pass_interval: Duration,
    /// Decisions kept per pool for `hodei pool get`.
    pub decisions_kept: usize,
    /// How long a created worker counts as starting while the scheduler has not heard of it.
    pub start_timeout: Duration,
    /// Workers being created at once across all pools (`[provisioning]
    /// max_concurrent_provisioning`), on top of each pool's own `max_concurrent_provisioning`.
    pub max_concurrent_provisioning: usize,
    /// How often the pools' arrival profiles are written to the store (and at shutdown,
    /// [`PoolManager::flush`]), so that the predictive policy survives a restart.
    pub profile_save_interval: Duration,
}

impl Default for PoolManagerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            min_pass_interval: Duration::from_millis(20),
            decisions_kept: 20,
            start_timeout: Duration::from_secs(120),
            max_concurrent_provisioning: 5,
            profile_save_interval: Duration::from_secs(60),
        }
    }
}

/// Why a pool request failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("pool {0} already exists")]
    AlreadyExists(String),
    #[error("pool {0} not found")]
    NotFound(String),
    #[error("pool.provider: {0} is not configured on this server: {how}", how = .0.how_to_enable())]
    ProviderNotConfigured(ProviderKind),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub at: SystemTime,
    /// The same decision made again on later passes (holds only): the last time, and how
    /// many passes in all, the reason being the latest.
    pub last_at: SystemTime,
    pub repeats: u32,
    /// `up`, `down` or `hold`.
    pub action: &'static str,
    /// Workers added or drained.
    pub count: u32,
    pub desired: u32,
    pub supply: u32,
    pub reason: String,
}

/// A pool as `hodei pool get` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    pub spec: PoolSpec,
    pub counts: PoolCounts,
    pub desired: u32,
    /// Newest first.
    pub decisions: Vec<DecisionRecord>,
    /// Worker-seconds the pool has held, starting workers included, since it was first
    /// created (kept in the store across restarts).
    pub worker_seconds: f64,
    /// `worker_seconds` priced at `cost_per_hour`.
    pub cost: f64,
    /// Being removed: no new workers, idle ones drained.
    pub removing: bool,
}

struct PoolState {
    spec: PoolSpec,
    /// What the pass carries from one pass to the next (history, decision log, counts,
    /// arrival window and profile).
    track: PoolTrack,
    /// Workers the registry does not show yet: being created, or created without a
    /// registration (registration pending or disabled) until their agent connects; with when
    /// they count no more. A registered worker is the registry's to count, so it leaves this
    /// map as soon as its provisioning returns: it may run a job, retire and be gone before
    /// any pass sees it.
    starting: HashMap<WorkerId, Instant>,
    /// When each starting worker's provisioning began, for the cold-start histogram.
    started_at: HashMap<WorkerId, Instant>,
    provisioning: Arc<Semaphore>,
    removing: bool,
    worker_seconds: f64,
    cost: f64,
}

impl PoolState {
    fn new(spec: PoolSpec) -> Self {
        let permits = usize::try_from(spec.max_concurrent_provisioning).unwrap_or(1);
        Self {
            provisioning: Arc::new(Semaphore::new(permits.max(1))),
            spec,
            track: PoolTrack::default(),
            starting: HashMap::new(),
            started_at: HashMap::new(),
            removing: false,
            worker_seconds: 0.0,
            cost: 0.0,
        }
    }

    fn replace_spec(&mut self, spec: PoolSpec) {
        if spec.max_concurrent_provisioning != self.spec.max_concurrent_provisioning {
            let permits = usize::try_from(spec.max_concurrent_provisioning).unwrap_or(1);
            self.provisioning = Arc::new(Semaphore::new(permits.max(1)));
        }
        self.spec = spec;
        self.removing = false;
    }

    fn status(&self) -> PoolStatus {
        PoolStatus {
            spec: self.spec.clone(),
            counts: self.track.counts,
            desired: self.track.desired,
            decisions: self
                .track
                .decisions
                .iter()
                .rev()
                .map(|d| DecisionRecord {
                    at: UNIX_EPOCH + Duration::from_millis(d.at_ms),
                    last_at: UNIX_EPOCH + Duration::from_millis(d.last_at_ms),
                    repeats: d.repeats,
                    action: d.action,
                    count: d.count,
                    desired: d.desired,
                    supply: d.supply,
                    reason: d.reason.clone(),
                })
                .collect(),
            worker_seconds: self.worker_seconds,
            cost: self.cost,
            removing: self.removing,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Inner {
    management: Arc<WorkerManagementService>,
    /// Scale-in asks the one owner of termination.
    terminations: Terminations,
    jobs: JobService,
    registry: Arc<SchedulerRegistry>,
    store: Arc<dyn Store>,
    pools: Mutex<BTreeMap<String, PoolState>>,
    /// Names being created now: a second create of one of them is refused at once, so
    /// concurrent creates of one name have exactly one winner.
    creating: Mutex<BTreeSet<String>>,
    metrics: PoolMetrics,
    config: PoolManagerConfig,
    wake: Notify,
    last_pass: Mutex<Option<Instant>>,
    /// Cancelled by [`PoolManager::stop`]: no pass and no provisioning starts after it.
    stopping: CancellationToken,
    /// The background provisioning tasks, so that `stop` can wait for them.
    tasks: TaskTracker,
    /// Creations at once across all pools (each pool has its own bound too).
    provisioning: Arc<Semaphore>,
    /// Pool usage not yet in the store, and when it was last written.
    unsaved_usage: Mutex<(UnsavedUsage, Instant)>,
    /// When the arrival profiles were last written to the store.
    profiles_saved: Mutex<Instant>,
}

/// Holds a name in [`Inner::creating`] until dropped.
struct Reservation<'a> {
    creating: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(self.creating).remove(&self.name);
    }
}

/// Pool usage by (pool, hour start).
type UnsavedUsage = BTreeMap<(String, u64), PoolUsage>;

/// How often pool usage is written to the store: passes can come every
/// `min_pass_interval` under load, and each write is a commit.
const USAGE_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct PoolManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PoolManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolManager").finish_non_exhaustive()
    }
}

impl PoolManager {
    /// Loads the pools from the store, applies `configured` ones over them (the
    /// configuration file wins for the pools it names) and tells the dispatcher.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        management: Arc<WorkerManagementService>,
        terminations: Terminations,
        jobs: JobService,
        registry: Arc<SchedulerRegistry>,
        store: Arc<dyn Store>,
        configured: &[PoolSpec],
        config: PoolManagerConfig,
        metrics: PoolMetrics,
    ) -> Result<Self, PoolError> {
        let mut pools = BTreeMap::new();
        for spec in store.list_pools().await? {
            pools.insert(spec.name.clone(), PoolState::new(spec));
        }
        for spec in configured {
            spec.validate()?;
            store.put_pool(spec).await?;
            pools.insert(spec.name.clone(), PoolState::new(spec.clone()));
        }
        // What the pools learned of their arrivals before the restart.
        for (name, profile) in store.arrival_profiles().await? {
            if let Some(pool) = pools.get_mut(&name) {
                pool.track.profile = profile;
            }
        }
        // Totals survive restarts: the pools' and the counters' start where the store is.
        for usage in store.pool_usage(0).await? {
            if let Some(pool) = pools.get_mut(&usage.pool) {
                pool.worker_seconds = usage.worker_seconds;
                pool.cost = usage.cost;
            }
            metrics.restore(&usage);
        }
        for spec in pools.values().map(|p| &p.spec) {
            if !management.provider_kinds().contains(&spec.provider) {
                tracing::error!(pool = %spec.name, provider = %spec.provider, "pool's provider is not configured; it will not get workers");
            }
        }
        let provisioning = Arc::new(Semaphore::new(config.max_concurrent_provisioning.max(1)));
        let manager = Self {
            inner: Arc::new(Inner {
                management,
                terminations,
                jobs,
                registry,
                store,
                pools: Mutex::new(pools),
                creating: Mutex::new(BTreeSet::new()),
                metrics,
                config,
                wake: Notify::new(),
                last_pass: Mutex::new(None),
                stopping: CancellationToken::new(),
                tasks: TaskTracker::new(),
                provisioning,
                unsaved_usage: Mutex::new((BTreeMap::new(), Instant::now())),
                profiles_saved: Mutex::new(Instant::now()),
            }),
        };
        manager.publish_settings().await;
        Ok(manager)
    }

    /// Passes until `cancel`: on the timer, when woken, and when the dispatcher changes.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.inner.jobs.changes();
        let mut terminated = self.inner.terminations.done();
        let mut tick = tokio::time::interval(self.inner.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased: at shutdown the dispatcher changes too (sessions close), and a pass
            // chosen over the cancel would replace the workers being terminated.
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = self.inner.stopping.cancelled() => return,
                _ = tick.tick() => {}
                () = self.inner.wake.notified() => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // A worker is gone: replace it now, not at the next tick.
                _ = terminated.changed() => {}
            }
            // Coalesce bursts of changes into one pass.
            let since = lock(&self.inner.last_pass).map(|at| at.elapsed());
            if let Some(since) = since
                && since < self.inner.config.min_pass_interval
            {
                tokio::time::sleep(self.inner.config.min_pass_interval - since).await;
            }
            if cancel.is_cancelled() || self.inner.stopping.is_cancelled() {
                return;
            }
            self.pass().await;
        }
    }

    /// Provisions what the pools lack now and waits until those workers exist (or failed):
    /// the start-up pre-warm.
    pub async fn prewarm(&self) {
        self.pass().await;
        loop {
            let now = Instant::now();
            let creating = {
                let pools = lock(&self.inner.pools);
                pools.values().any(|pool| {
                    pool.starting
                        .iter()
                        .any(|(id, until)| *until > now && self.inner.registry.get(id).is_none())
                })
            };
            if !creating {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops for good: no pass or provisioning starts from now on, and this returns once
    /// the provisioning already under way has finished, so that a shutdown that then
    /// terminates every worker sees them all (scale-in's terminations are the owner's,
    /// which the shutdown waits for itself).
    pub async fn stop(&self) {
        self.inner.stopping.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Asks for a pass soon.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn list(&self) -> Vec<PoolStatus> {
        lock(&self.inner.pools)
            .values()
            .map(PoolState::status)
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<PoolStatus> {
        lock(&self.inner.pools).get(name).map(PoolState::status)
    }

    fn check_provider(&self, spec: &PoolSpec) -> Result<(), PoolError> {
        if self
            .inner
            .management
            .provider_kinds()
            .contains(&spec.provider)
        {
            Ok(())
        } else {
            Err(PoolError::ProviderNotConfigured(spec.provider))
        }
    }

    /// Creates a pool; its workers follow on the next pass.
    pub async fn create(&self, spec: PoolSpec) -> Result<PoolStatus, PoolError> {
        spec.validate()?;
        self.check_provider(&spec)?;
        let over_removed = {
            let pools = lock(&self.inner.pools);
            let existing = pools.get(&spec.name);
            if existing.is_some_and(|pool| !pool.removing)
                || !lock(&self.inner.creating).insert(spec.name.clone())
            {
                return Err(PoolError::AlreadyExists(spec.name));
            }
            existing.is_some()
        };
        let _reservation = Reservation {
            creating: &self.inner.creating,
            name: spec.name.clone(),
        };
        // A pool still being removed has its row in the store: the new spec replaces it.
        // Otherwise the store's unique name decides, for replicas sharing one store too.
        let stored = if over_removed {
            self.inner.store.put_pool(&spec).await
        } else {
            self.inner.store.insert_pool(&spec).await
        };
        match stored {
            Ok(()) => {}
            Err(hodei_ports::store::Error::PoolExists(name)) => {
                return Err(PoolError::AlreadyExists(name));
            }
            Err(error) => return Err(error.into()),
        }
        // A pool of this name that existed before finds what it learned of its arrivals.
        let learned = match self.inner.store.arrival_profiles().await {
            Ok(all) => all.into_iter().find(|(name, _)| *name == spec.name),
            Err(error) => {
                tracing::warn!(pool = %spec.name, %error, "could not read the pool's stored arrival profile; it starts empty");
                None
            }
        };
        let status = {
            let mut pools = lock(&self.inner.pools);
            let pool = pools
                .entry(spec.name.clone())
                .or_insert_with(|| PoolState::new(spec.clone()));
            pool.replace_spec(spec);
            if let Some((_, profile)) = learned
                && !over_removed
            {
                pool.track.profile = profile;
            }
            pool.status()
        };
        tracing::info!(pool = %status.spec.name, "pool created");
        self.publish_settings().await;
        self.wake();
        Ok(status)
    }

    /// Replaces a pool's spec. Workers running keep running: a smaller pool drains idle
    /// workers only, and a changed template applies to workers created from now on.
    pub async fn update(&self, spec: PoolSpec) -> Result<PoolStatus, PoolError> {
        spec.validate()?;
        self.check_provider(&spec)?;
        if lock(&self.inner.pools)
            .get(&spec.name)
            .is_none_or(|pool| pool.removing)
        {
            return Err(PoolError::NotFound(spec.name));
        }
        self.inner.store.put_pool(&spec).await?;
        let status = {
            let mut pools = lock(&self.inner.pools);
            let pool = pools
                .get_mut(&spec.name)
                .ok_or_else(|| PoolError::NotFound(spec.name.clone()))?;
            pool.replace_spec(spec);
            pool.status()
        };
        tracing::info!(pool = %status.spec.name, "pool changed");
        self.publish_settings().await;
        self.wake();
        Ok(status)
    }

    /// Sets a static pool's size, or a dynamic pool's minimum.
    pub async fn scale(&self, name: &str, workers: u32) -> Result<PoolStatus, PoolError> {
        let mut spec = self
            .get(name)
            .filter(|status| !status.removing)
            .ok_or_else(|| PoolError::NotFound(name.to_owned()))?
            .spec;
        match spec.kind {
            hodei_core::PoolKind::Static => spec.size = Some(workers),
            hodei_core::PoolKind::Dynamic => spec.min = workers,
        }
        self.update(spec).await
    }

    /// Removes a pool: no new workers; idle ones are drained now, busy ones when their job
    /// ends. The pool disappears from listings once its last worker is gone.
    pub async fn remove(&self, name: &str) -> Result<(), PoolError> {
        {
            let mut pools = lock(&self.inner.pools);
            let pool = pools
                .get_mut(name)
                .filter(|pool| !pool.removing)
                .ok_or_else(|| PoolError::NotFound(name.to_owned()))?;
            pool.removing = true;
        }
        self.inner.store.delete_pool(name).await?;
        tracing::info!(pool = %name, "pool removed, draining its workers");
        self.publish_settings().await;
        self.wake();
        Ok(())
    }

    async fn publish_settings(&self) {
        let settings = {
            let pools = lock(&self.inner.pools);
            let live = pools.values().filter(|pool| !pool.removing);
            let mut settings = PoolSettings::default();
            for pool in live {
                let spec = &pool.spec;
                if let Some(max_uses) = spec.max_uses {
                    settings.max_uses.insert(spec.name.clone(), max_uses);
                }
                if spec.max_workers() > 0 {
                    settings
                        .pool_shapes
                        .push(spec.template.capabilities.clone());
                }
                settings
                    .cost_per_hour
                    .insert(spec.name.clone(), spec.cost_per_hour);
            }
            // Workers of a removed pool still finish their jobs and are charged.
            for pool in pools.values().filter(|pool| pool.removing) {
                settings
                    .cost_per_hour
                    .entry(pool.spec.name.clone())
                    .or_insert(pool.spec.cost_per_hour);
            }
            settings
        };
        self.inner.jobs.set_pools(settings).await;
    }

    /// One pass over every pool: gathers the inputs, runs `pool_pass::pass`, carries out.
    pub async fn pass(&self) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let Ok(snapshot) = self.inner.jobs.snapshot().await else {
            return;
        };
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let elapsed = lock(&self.inner.last_pass)
            .replace(now)
            .map_or(Duration::ZERO, |last| now.duration_since(last));
        let members = self.members();

        let mut actions = Vec::new();
        let mut usage = Vec::new();
        {
            let mut pools = lock(&self.inner.pools);
            let gathered: Vec<(Vec<Member>, u32, u32)> = pools
                .values_mut()
                .map(|pool| {
                    let name = pool.spec.name.clone();
                    self.gather(pool, members.get(&name), &snapshot, now)
                })
                .collect();
            let mut entries: Vec<PassPool<'_>> = pools
                .values_mut()
                .zip(&gathered)
                .map(|(pool, (members, unregistered, pending))| PassPool {
                    spec: &pool.spec,
                    removing: pool.removing,
                    members,
                    counted: PoolCounts {
                        starting: *unregistered,
                        ..PoolCounts::default()
                    },
                    pending_creations: *pending,
                    track: &mut pool.track,
                })
                .collect();
            let queued: Vec<&hodei_core::Requirements> = snapshot.queued.iter().collect();
            let jobs = PassJobs {
                queued: &queued,
                arrived: &snapshot.arrived,
                ran: &snapshot.ran,
            };
            let outcomes =
                pool_pass::pass(&mut entries, jobs, now_ms, self.inner.config.decisions_kept);
            drop(entries);
            let mut gone = Vec::new();
            for outcome in outcomes {
                let Some(pool) = pools.get_mut(&outcome.pool) else {
                    continue;
                };
                let used = self.account(pool, &outcome.counts, elapsed, now_ms);
                if used.worker_seconds > 0.0 {
                    usage.push(used);
                }
                if outcome.gone {
                    gone.push(outcome.pool.clone());
                }
                if let Some(decision) = &outcome.decision {
                    self.inner.metrics.observe(
                        &pool.spec,
                        &outcome.counts,
                        decision.desired,
                        now_ms,
                    );
                    if outcome.logged && decision.action != ScaleAction::Hold {
                        let count = match &decision.action {
                            ScaleAction::Up(n) => *n,
                            ScaleAction::Down(w) => u32::try_from(w.len()).unwrap_or(u32::MAX),
                            ScaleAction::Hold => 0,
                        };
                        tracing::info!(pool = %pool.spec.name, action = decision.action.as_str(), count, desired = decision.desired, reason = %decision.reason, "autoscaler decision");
                        self.inner
                            .metrics
                            .decisions
                            .get_or_create(&DecisionLabels {
                                pool: pool.spec.name.clone(),
                                action: decision.action.as_str(),
                            })
                            .inc();
                    }
                }
                if outcome.action != ScaleAction::Hold {
                    actions.push((pool.spec.clone(), outcome.action));
                }
            }
            for name in gone {
                pools.remove(&name);
                self.inner.metrics.forget(&name);
                tracing::info!(pool = %name, "removed pool has no workers left");
            }
        }
        {
            let mut unsaved = lock(&self.inner.unsaved_usage);
            for used in usage {
                let key = (used.pool.clone(), cost::hour_start(used.hour_start_ms));
                unsaved.0.entry(key).or_default().merge(used);
            }
        }
        self.save_usage(false).await;
        self.save_profiles(false).await;
        for (spec, action) in actions {
            match action {
                ScaleAction::Up(count) => self.provision(&spec, count, now),
                ScaleAction::Down(workers) => self.drain(&spec, workers).await,
                ScaleAction::Hold => {}
            }
        }
        self.inner.jobs.set_coming(self.coming()).await;
    }

    /// The workers being created that the registry does not show yet, with their pool's
    /// shape: the dispatcher counts them as starting, so an urgent job one of them fits
    /// waits for it rather than preempt a running job.
    fn coming(&self) -> Vec<IdleWorker> {
        let now = SystemTime::now();
        let pools = lock(&self.inner.pools);
        pools
            .values()
            .filter(|pool| !pool.removing)
            .flat_map(|pool| {
                let spec = pool.spec.worker_spec();
                pool.starting
                    .keys()
                    .filter(|id| self.inner.registry.get(id).is_none())
                    .map(move |id| {
                        IdleWorker::from(&Worker::from_spec(
                            id.clone(),
                            &spec,
                            pool.spec.provider,
                            now,
                        ))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Registered workers by pool name.
    fn members(&self) -> HashMap<String, Vec<(WorkerId, Liveness, bool)>> {
        let mut members: HashMap<String, Vec<(WorkerId, Liveness, bool)>> = HashMap::new();
        for (pool, id, liveness, heard) in self.inner.registry.filter_map(|entry| {
            let pool = entry.worker.metadata.pool.clone()?;
            Some((
                pool,
                entry.worker.id.clone(),
                entry.liveness,
                entry.last_seen.is_some(),
            ))
        }) {
            members.entry(pool).or_default().push((id, liveness, heard));
        }
        members
    }

    /// The pool's registered workers by state, the workers being created that the
    /// registry does not show yet, and all creations pending; keeps the cold-start clocks.
    fn gather(
        &self,
        pool: &mut PoolState,
        members: Option<&Vec<(WorkerId, Liveness, bool)>>,
        snapshot: &JobSnapshot,
        now: Instant,
    ) -> (Vec<Member>, u32, u32) {
        let mut out = Vec::new();
        let mut registered = BTreeSet::new();
        for (id, liveness, heard) in members.into_iter().flatten() {
            registered.insert(id.clone());
            if *heard && let Some(began) = pool.started_at.remove(id) {
                self.inner
                    .metrics
                    .cold_start
                    .get_or_create(&PoolLabels {
                        pool: pool.spec.name.clone(),
                    })
                    .observe(now.duration_since(began).as_secs_f64());
            }
            if *heard {
                pool.starting.remove(id);
            }
            let state = if snapshot.leaving.contains(id) {
                MemberState::Leaving
            } else if *liveness != Liveness::Healthy {
                MemberState::Unhealthy
            } else if !heard {
                MemberState::Starting
            } else if snapshot.busy.contains(id) {
                MemberState::Busy
            } else {
                MemberState::Idle {
                    idle_for: snapshot.idle_since.get(id).map_or(Duration::ZERO, |since| {
                        now.saturating_duration_since(*since)
                    }),
                }
            };
            out.push(Member {
                id: id.clone(),
                state,
            });
        }
        // Not (yet) in the registry: starting, until the timeout.
        pool.starting.retain(|_, until| *until > now);
        // Cold-start clocks of workers that came and went between two passes.
        pool.started_at
            .retain(|id, _| pool.starting.contains_key(id) || registered.contains(id));
        let unregistered = pool
            .starting
            .keys()
            .filter(|id| !registered.contains(*id))
            .count();
        (
            out,
            u32::try_from(unregistered).unwrap_or(u32::MAX),
            u32::try_from(pool.starting.len()).unwrap_or(u32::MAX),
        )
    }

    /// Writes the pool usage not yet in the store and every pool's arrival profile; the
    /// server calls it when it stops.
    pub async fn flush(&self) {
        self.save_usage(true).await;
        self.save_profiles(true).await;
    }

    /// Writes every pool's arrival profile, at most every
    /// [`PoolManagerConfig::profile_save_interval`] unless `now`.
    async fn save_profiles(&self, now: bool) {
        {
            let mut saved = lock(&self.inner.profiles_saved);
            if !now && saved.elapsed() < self.inner.config.profile_save_interval {
                return;
            }
            *saved = Instant::now();
        }
        let profiles: Vec<(String, ArrivalProfile)> = lock(&self.inner.pools)
            .values()
            .filter(|pool| !pool.removing)
            .map(|pool| (pool.spec.name.clone(), pool.track.profile.clone()))
            .collect();
        for (pool, profile) in profiles {
            if let Err(error) = self.inner.store.put_arrival_profile(&pool, &profile).await {
                tracing::error!(%pool, %error, "could not record the pool's arrival profile");
            }
        }
    }

    /// Writes the pool usage gathered since the last write, at most every
    /// [`USAGE_SAVE_INTERVAL`] unless `now`.
    async fn save_usage(&self, now: bool) {
        let rows: Vec<PoolUsage> = {
            let mut unsaved = lock(&self.inner.unsaved_usage);
            if unsaved.0.is_empty() || (!now && unsaved.1.elapsed() < USAGE_SAVE_INTERVAL) {
                return;
            }
            unsaved.1 = Instant::now();
            std::mem::take(&mut unsaved.0).into_values().collect()
        };
        if let Err(error) = self.inner.store.add_pool_usage(&rows).await {
            tracing::error!(%error, "could not record pool usage");
        }
    }

    /// Charges the pool for the workers it held since the last pass; the usage to store.
    fn account(
        &self,
        pool: &mut PoolState,
        counts: &PoolCounts,
        elapsed: Duration,
        now_ms: u64,
    ) -> PoolUsage {
        let workers =
            counts.idle + counts.busy + counts.starting + counts.unhealthy + counts.leaving;
        let seconds = f64::from(workers) * elapsed.as_secs_f64();
        let cost = cost::cost_of(seconds, pool.spec.cost_per_hour);
        pool.worker_seconds += seconds;
        pool.cost += cost;
        // What the last pass decided held until now.
        let (_, max) = autoscale::bounds(&pool.spec, now_ms);
        let at_max_waiting = pool.track.queued > 0 && pool.track.desired >= max && !pool.removing;
        let usage = PoolUsage {
            pool: pool.spec.name.clone(),
            hour_start_ms: now_ms,
            worker_seconds: seconds,
            busy_seconds: f64::from(counts.busy) * elapsed.as_secs_f64(),
            cost,
            at_max_waiting_seconds: if at_max_waiting {
                elapsed.as_secs_f64()
            } else {
                0.0
            },
        };
        let labels = PoolLabels {
            pool: pool.spec.name.clone(),
        };
        self.inner
            .metrics
            .worker_seconds
            .get_or_create(&labels)
            .inc_by(seconds);
        self.inner.metrics.cost.get_or_create(&labels).inc_by(cost);
        usage
    }

    /// Starts `count` workers of `spec` in one background task, within the pool's and the
    /// server's concurrency: worker management creates each as soon as both bounds allow
    /// and registers them through the batch registration
    /// ([`WorkerManagementService::provision_many`]).
    fn provision(&self, spec: &PoolSpec, count: u32, now: Instant) {
        let worker_spec = spec.worker_spec();
        let until = now + self.inner.config.start_timeout;
        let (ids, semaphore) = {
            let mut pools = lock(&self.inner.pools);
            let Some(pool) = pools.get_mut(&spec.name) else {
                return;
            };
            let ids: Vec<WorkerId> = (0..count)
                .map(|_| WorkerManagementService::new_worker_id(&worker_spec))
                .collect();
            for id in &ids {
                pool.starting.insert(id.clone(), until);
                pool.started_at.insert(id.clone(), now);
            }
            (ids, pool.provisioning.clone())
        };
        if ids.is_empty() {
            return;
        }
        let manager = self.clone();
        let spec = spec.clone();
        // The pool's bound first, then the server's, so a pool waiting on its own bound
        // holds none of the server's.
        let bounds = [semaphore, self.inner.provisioning.clone()];
        self.inner.tasks.spawn(async move {
            let stopping = manager.inner.stopping.clone();
            let done = |id: &WorkerId, outcome: Provisioning| {
                manager.provisioned(&spec.name, id, outcome);
            };
            // A worker the scheduler refuses goes through the one owner of termination.
            let refused = |id: WorkerId| {
                manager.inner.terminations.request(id, Why::Refused);
            };
            manager
                .inner
                .management
                .provision_many(&spec, &ids, &bounds, &stopping, &done, Some(&refused))
                .await;
        });
    }

    /// Takes note of what became of one worker being created.
    fn provisioned(&self, pool_name: &str, id: &WorkerId, outcome: Provisioning) {
        let Some(result) = outcome else {
            // Never begun (stopping): nothing was created.
            if let Some(pool) = lock(&self.inner.pools).get_mut(pool_name) {
                pool.starting.remove(id);
                pool.started_at.remove(id);
            }
            return;
        };
        let registered = match &result {
            Ok(provisioned) => provisioned.status == WorkerStatus::Registered,
            Err(error) => {
                tracing::error!(pool = %pool_name, worker_id = %id, %error, "could not provision a worker");
                self.inner
                    .metrics
                    .provisioning_failures
                    .get_or_create(&PoolLabels {
                        pool: pool_name.to_owned(),
                    })
                    .inc();
                false
            }
        };
        if let Some(pool) = lock(&self.inner.pools).get_mut(pool_name) {
            if result.is_err() {
                pool.started_at.remove(id);
            }
            if result.is_err() || registered {
                pool.starting.remove(id);
            }
        }
        self.wake();
    }

    /// Drains the idle workers among `workers` and asks for their termination.
    async fn drain(&self, spec: &PoolSpec, workers: Vec<WorkerId>) {
        let drained = match self.inner.jobs.drain(workers).await {
            Ok(drained) => drained,
            Err(error) => {
                tracing::warn!(pool = %spec.name, %error, "could not drain workers");
                return;
            }
        };
        for id in drained {
            tracing::info!(pool = %spec.name, worker_id = %id, "terminating a drained worker");
            self.inner.terminations.request(id, Why::ScaleIn);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    pool: String,
    action: &'static str,
}

/// The pool metrics, all `hodei_pool_*` and `hodei_autoscaler_*`.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    workers: Family<PoolStateLabels, Gauge>,
    desired: Family<PoolLabels, Gauge>,
    min: Family<PoolLabels, Gauge>,
    max: Family<PoolLabels, Gauge>,
    healthy: Family<PoolLabels, Gauge>,
    decisions: Family<DecisionLabels, Counter>,
    provisioning_failures: Family<PoolLabels, Counter>,
    worker_seconds: Family<PoolLabels, Counter<f64, AtomicU64>>,
    cost: Family<PoolLabels, Counter<f64, AtomicU64>>,
    cold_start: Family<PoolLabels, Histogram>,
}

impl PoolMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            workers: Family::default(),
            desired: Family::default(),
            min: Family::default(),
            max: Family::default(),
            healthy: Family::default(),
            decisions: Family::default(),
            provisioning_failures: Family::default(),
            worker_seconds: Family::default(),
            cost: Family::default(),
            cold_start: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 14))
            }),
        };
        registry.register(
            "hodei_pool_workers",
            "Workers of a pool by state (idle, busy, starting, unhealthy, leaving)",
            metrics.workers.clone(),
        );
        registry.register(
            "hodei_pool_desired_workers",
            "Workers the autoscaler wants the pool to have",
            metrics.desired.clone(),
        );
        registry.register(
            "hodei_pool_min_workers",
            "The pool's minimum now (schedules included)",
            metrics.min.clone(),
        );
        registry.register(
            "hodei_pool_max_workers",
            "The pool's maximum",
            metrics.max.clone(),
        );
        registry.register(
            "hodei_pool_healthy",
            "1 when the pool has at least its minimum of healthy workers, else 0",
            metrics.healthy.clone(),
        );
        registry.register(
            "hodei_autoscaler_decisions",
            "Scaling decisions carried out, by pool and action (up, down)",
            metrics.decisions.clone(),
        );
        registry.register(
            "hodei_pool_provisioning_failures",
            "Workers the pool could not create",
            metrics.provisioning_failures.clone(),
        );
        registry.register(
            "hodei_pool_worker_seconds",
            "Seconds of workers the pool held, idle and starting ones included",
            metrics.worker_seconds.clone(),
        );
        registry.register(
            "hodei_pool_cost",
            "hodei_pool_worker_seconds priced at the pool's cost_per_hour",
            metrics.cost.clone(),
        );
        registry.register(
            "hodei_pool_cold_start_seconds",
            "Time from deciding to create a worker to its agent connecting",
            metrics.cold_start.clone(),
        );
        metrics
    }

    fn observe(&self, spec: &PoolSpec, counts: &PoolCounts, desired: u32, now_ms: u64) {
        let pool = &spec.name;
        for (state, value) in [
            ("idle", counts.idle),
            ("busy", counts.busy),
            ("starting", counts.starting),
            ("unhealthy", counts.unhealthy),
            ("leaving", counts.leaving),
        ] {
            self.workers
                .get_or_create(&PoolStateLabels {
                    pool: pool.clone(),
                    state,
                })
                .set(i64::from(value));
        }
        let labels = PoolLabels { pool: pool.clone() };
        // Counters present at zero from the pool's first pass, so that alerts can use them.
        let _ = self.provisioning_failures.get_or_create(&labels);
        let _ = self.worker_seconds.get_or_create(&labels);
        let _ = self.cost.get_or_create(&labels);
        let _ = self.cold_start.get_or_create(&labels);
        for action in ["up", "down"] {
            let _ = self.decisions.get_or_create(&DecisionLabels {
                pool: pool.clone(),
                action,
            });
        }
        self.desired.get_or_create(&labels).set(i64::from(desired));
        let (min, max) = autoscale::bounds(spec, now_ms);
        self.min.get_or_create(&labels).set(i64::from(min));
        self.max.get_or_create(&labels).set(i64::from(max));
        self.healthy
            .get_or_create(&labels)
            .set(i64::from(counts.idle + counts.busy >= min));
    }

    /// Starts a pool's counters at its stored totals.
    fn restore(&self, usage: &PoolUsage) {
        let labels = PoolLabels {
            pool: usage.pool.clone(),
        };
        self.worker_seconds
            .get_or_create(&labels)
            .inc_by(usage.worker_seconds);
        self.cost.get_or_create(&labels).inc_by(usage.cost);
    }

    fn forget(&self, pool: &str) {
        for state in ["idle", "busy", "starting", "unhealthy", "leaving"] {
            self.workers.remove(&PoolStateLabels {
                pool: pool.to_owned(),
                state,
            });
        }
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        self.desired.remove(&labels);
        self.min.remove(&labels);
        self.max.remove(&labels);
        self.healthy.remove(&labels);
    }
}
