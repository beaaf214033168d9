//! Jobs in flight: submission with backpressure, the queues, matching idle workers, dispatch
//! over the agents' sessions, results, cancellation, and recovery after a restart.
//!
//! One task, the dispatcher, owns all of it and applies events one at a time, so no two
//! code paths can move the same job. It is a thin driver of `hodei_core::dispatch::Dispatch`,
//! the state machine that makes every decision (admission, fair and quota-checked starts,
//! retirement, fencing of attempts in flight, reconnects, cancels): the dispatcher gathers
//! inputs stamped with one [`Clock`], records the writes the machine proposes, commits them,
//! and only then applies the effects (sends to agents, replies, retirements, metrics).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use hodei_core::cost::{self, AttemptTotals, AttemptUsage};
use hodei_core::dispatch::{
    Dispatch, DispatchConfig, Effect, Fenced, Input, Proposal, Refusal, Seen, Times, WorkerView,
};
use hodei_core::fence::{FencePolicy, LostBecause, Report};
use hodei_core::job::AttemptOutcome;
use hodei_core::matching::IdleWorker;
use hodei_core::tenancy::{AdmissionError, BurstState, Resource, Tenants, Usage};
use hodei_core::trace;
use hodei_core::{
    Job, JobId, JobSpec, JobState, QueueConfig, QueueError, Queues, Requirements, SlaClass,
    TenantName, ValidationError, WorkerCapabilities, WorkerId, WorkerState,
};
use hodei_ports::store::{self, JobFilter, LogChunk};
use hodei_ports::{AgentLink, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::SchedulerRegistry;

mod sla_tracking;
pub use sla_tracking::SlaMetrics;

/// How the job service behaves.
#[derive(Debug, Clone)]
pub struct JobServiceConfig {
    /// Named queues and their capacities.
    pub queues: Vec<QueueConfig>,
    /// The deadlines of attempts in flight: the agents' lease and the server's margin on it,
    /// the assign timeout, the grace for results after a reconnect and past a job's timeout.
    pub fence: FencePolicy,
    /// How often deadlines are checked.
    pub tick: Duration,
    /// What the dispatcher knows of the pools; the pool manager replaces it whenever a
    /// pool is created, changed or removed ([`JobService::set_pools`]).
    pub pools: PoolSettings,
    /// Tenants, their weights and quotas, and the burst policy; replaced at runtime with
    /// [`JobService::set_tenants`].
    pub tenants: Tenants,
    /// `[sla]`: class deadlines and preemption.
    pub sla: hodei_core::sla::SlaSettings,
}

/// What the dispatcher needs to know of the pools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSettings {
    /// Jobs a worker of a pool runs before it is retired (1 = ephemeral workers); pools
    /// not listed reuse workers without limit.
    pub max_uses: BTreeMap<String, u32>,
    /// The shapes of workers the pools can provision, to reject jobs that none could hold.
    pub pool_shapes: Vec<WorkerCapabilities>,
    /// What a worker-hour of each pool costs, to attribute cost to tenants.
    pub cost_per_hour: BTreeMap<String, f64>,
}

/// Most queued jobs a [`JobSnapshot`] lists; beyond that, no pool could grow fast enough
/// for the difference to matter.
pub const MAX_SNAPSHOT_QUEUED: usize = 10_000;

/// What the autoscaler needs from the dispatcher, taken in one turn so it is consistent.
#[derive(Debug, Clone, Default)]
pub struct JobSnapshot {
    /// Requirements of queued jobs, in dispatch order (at most [`MAX_SNAPSHOT_QUEUED`]).
    pub queued: Vec<Requirements>,
    /// Workers with a job assigned or running.
    pub busy: HashSet<WorkerId>,
    /// When each other registered worker last became idle.
    pub idle_since: HashMap<WorkerId, Instant>,
    /// Workers retired or drained: going away, so not supply.
    pub leaving: HashSet<WorkerId>,
    /// Requirements of jobs submitted since the previous snapshot, for arrival rates.
    pub arrived: Vec<Requirements>,
    /// Attempts ended since the previous snapshot: the worker's pool and the seconds it ran.
    pub ran: Vec<(String, f64)>,
}

impl Default for JobServiceConfig {
    fn default() -> Self {
        Self {
            queues: vec![QueueConfig::default()],
            fence: FencePolicy::default(),
            tick: Duration::from_millis(250),
            pools: PoolSettings::default(),
            tenants: Tenants::default(),
            sla: hodei_core::sla::SlaSettings::default(),
        }
    }
}

/// Why a job request failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The queue is full (retry later) or unknown.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The tenant's quotas refuse the job: it can never start, the tenant is unknown, or
    /// its queued cap is reached.
    #[error(transparent)]
    Tenant(#[from] AdmissionError),
    /// No pool or worker could ever hold the job.
    #[error("no pool or worker can run this job: {0}")]
    Unsatisfiable(String),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {id} already ended ({state})")]
    AlreadyEnded { id: JobId, state: JobState },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the job service is stopped")]
    Stopped,
}

/// A worker retired by the dispatcher (it used up `max_uses` or failed its health check
/// after a job); the server terminates it and its pool replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub worker_id: WorkerId,
    pub reason: String,
}

/// Most events applied in one turn of the dispatcher (and so sharing store commits).
const MAX_BATCH: usize = 512;

/// What agents and users tell the dispatcher.
#[derive(Debug)]
enum Event {
    Submit {
        spec: Box<JobSpec>,
        /// The class asked for; `None`: the queue's or the tenant's default.
        class: Option<SlaClass>,
        reply: oneshot::Sender<Result<Job, JobError>>,
    },
    Cancel {
        id: JobId,
        reply: oneshot::Sender<Result<Job, JobError>>,
    },
    Explain {
        id: JobId,
        reply: oneshot::Sender<Option<String>>,
    },
    Connected {
        worker_id: WorkerId,
        running: Vec<String>,
    },
    Accepted {
        worker_id: WorkerId,
        job_id: String,
        attempt: u32,
    },
    Log {
        worker_id: WorkerId,
        chunk: LogChunk,
    },
    Result {
        worker_id: WorkerId,
        job_id: String,
        attempt: u32,
        outcome: AttemptOutcome,
        healthy: bool,
    },
    WorkerDead {
        worker_id: WorkerId,
    },
    Snapshot {
        reply: oneshot::Sender<JobSnapshot>,
    },
    Drain {
        workers: Vec<WorkerId>,
        reply: oneshot::Sender<Vec<WorkerId>>,
    },
    Pools(PoolSettings),
    Coming(Vec<IdleWorker>),
    Tenants(Box<Tenants>),
    TenantStatus {
        reply: oneshot::Sender<Vec<TenantStatus>>,
    },
    WorkerUses {
        workers: Vec<WorkerId>,
        reply: oneshot::Sender<Vec<u32>>,
    },
}

/// What a tenant holds and how it fares now, from [`JobService::tenant_status`].
#[derive(Debug, Clone, PartialEq)]
pub struct TenantStatus {
    pub tenant: TenantName,
    pub usage: Usage,
    pub queued: usize,
    pub burst: BurstState,
    /// Its share of the jobs started in the last hour (0 to 1), and how many it started.
    pub share_last_hour: f64,
    pub started_last_hour: u64,
}

/// The handle the API and the session layer use. Cheap to clone.
#[derive(Clone)]
pub struct JobService {
    events: mpsc::Sender<Event>,
    store: Arc<dyn Store>,
    changes: watch::Receiver<u64>,
    activity: Activity,
}

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService").finish_non_exhaustive()
    }
}

impl JobService {
    /// Loads unfinished jobs from the store and starts the dispatcher, which runs until
    /// `cancel`, on the server's clock ([`TokioClock`]). Retired workers are announced on
    /// the returned receiver.
    pub async fn start(
        config: JobServiceConfig,
        store: Arc<dyn Store>,
        registry: Arc<SchedulerRegistry>,
        link: Arc<dyn AgentLink>,
        metrics: JobMetrics,
        cancel: CancellationToken,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Retired>), JobError> {
        let clock = Arc::new(TokioClock::new());
        Self::start_with_clock(config, store, registry, link, metrics, clock, cancel).await
    }

    /// [`JobService::start`] with the clock every input of the dispatcher is stamped with.
    pub async fn start_with_clock(
        config: JobServiceConfig,
        store: Arc<dyn Store>,
        registry: Arc<SchedulerRegistry>,
        link: Arc<dyn AgentLink>,
        metrics: JobMetrics,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Retired>), JobError> {
        let queues = Queues::new(config.queues.clone())?;
        let (events, inbox) = mpsc::channel(4096);
        let (retired, retirements) = mpsc::unbounded_channel();
        let (changed, changes) = watch::channel(0);
        let activity = Activity::default();
        let (usage, usage_rows) = mpsc::unbounded_channel();
        tokio::spawn(write_usage(store.clone(), usage_rows));
        let machine = Dispatch::new(
            DispatchConfig {
                fence: config.fence,
                sla: config.sla.clone(),
            },
            queues,
            config.tenants.clone(),
        );
        let mut dispatcher = Dispatcher {
            activity: activity.clone(),
            changed,
            config,
            store: store.clone(),
            registry,
            link,
            metrics,
            machine,
            clock,
            logs: Vec::new(),
            retired,
            arrived: Vec::new(),
            ran: Vec::new(),
            usage,
            sla: sla_tracking::SlaState::default(),
            attempt_traces: HashMap::new(),
        };
        dispatcher.recover().await?;
        dispatcher.update_tenant_gauges();
        tokio::spawn(dispatcher.run(inbox, cancel));
        Ok((
            Self {
                events,
                store,
                changes,
                activity,
            },
            retirements,
        ))
    }

    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, JobError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(event(reply))
            .await
            .map_err(|_| JobError::Stopped)?;
        answer.await.map_err(|_| JobError::Stopped)
    }

    /// Validates, records durably and queues a job. Fails without recording anything when
    /// the spec is invalid, the queue is unknown or full, or no worker could ever hold it.
    /// The job's class is `spec.sla_class`, as given.
    pub async fn submit(&self, spec: JobSpec) -> Result<Job, JobError> {
        let class = spec.sla_class;
        self.submit_with_class(spec, Some(class)).await
    }

    /// [`JobService::submit`] with the SLA class asked for: `None` (no `--sla`) takes the
    /// default of the job's queue, else of its tenant, else `medium`
    /// ([`hodei_core::sla::SlaSettings::class_of`]); `spec.sla_class` is then ignored.
    pub async fn submit_with_class(
        &self,
        spec: JobSpec,
        class: Option<SlaClass>,
    ) -> Result<Job, JobError> {
        spec.validate()?;
        self.ask(|reply| Event::Submit {
            spec: Box::new(spec),
            class,
            reply,
        })
        .await?
    }

    /// The workers the pool manager is creating and that have not registered yet: for the
    /// preemption rule they are coming, so a job one of them fits waits for it instead of
    /// stopping a running job. Replaces the previous list.
    pub async fn set_coming(&self, workers: Vec<IdleWorker>) {
        self.tell(Event::Coming(workers)).await;
    }

    /// What the autoscaler needs: the queue's requirements, who is busy, who is idle since
    /// when, and the arrivals and run times since the previous snapshot.
    pub async fn snapshot(&self) -> Result<JobSnapshot, JobError> {
        self.ask(|reply| Event::Snapshot { reply }).await
    }

    /// Takes the idle ones among `workers` out of matching for good, so they can be
    /// terminated without killing a job; returns those. Busy workers are left alone.
    pub async fn drain(&self, workers: Vec<WorkerId>) -> Result<Vec<WorkerId>, JobError> {
        self.ask(|reply| Event::Drain { workers, reply }).await
    }

    /// Applies changed pool settings (max uses, worker shapes, prices).
    pub async fn set_pools(&self, settings: PoolSettings) {
        self.tell(Event::Pools(settings)).await;
    }

    /// Applies changed tenants (weights, quotas, burst policy, auto-creation) from the next
    /// planning pass on. Running jobs are never stopped by a lower quota.
    pub async fn set_tenants(&self, tenants: Tenants) {
        self.tell(Event::Tenants(Box::new(tenants))).await;
    }

    /// Every tenant with jobs in flight, queued or started in the last hour, and every
    /// configured one: usage, queue, burst state and share of starts over the last hour.
    pub async fn tenant_status(&self) -> Result<Vec<TenantStatus>, JobError> {
        self.ask(|reply| Event::TenantStatus { reply }).await
    }

    /// How many attempts each of `workers` ran to their end since this server started (or
    /// since the worker registered), in the order asked.
    pub async fn worker_uses(&self, workers: Vec<WorkerId>) -> Result<Vec<u32>, JobError> {
        self.ask(|reply| Event::WorkerUses { workers, reply }).await
    }

    /// Cancels a job: a queued one at once, a running one by telling its agent (the job
    /// ends when the agent reports it stopped).
    pub async fn cancel(&self, id: JobId) -> Result<Job, JobError> {
        self.ask(|reply| Event::Cancel { id, reply }).await?
    }

    /// Why a queued job is still waiting; `None` for jobs not queued.
    pub async fn why_waiting(&self, id: JobId) -> Result<Option<String>, JobError> {
        self.ask(|reply| Event::Explain { id, reply }).await
    }

    /// Changes whenever the dispatcher has recorded something (job states, output): a
    /// follower of a job's logs waits on it instead of polling the store.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// `Busy` or `Cleaning` for a worker running a job or cleaning up after one; `None`
    /// when it has no job (its stored lifecycle state then tells the rest).
    pub fn worker_activity(&self, worker_id: &WorkerId) -> Option<WorkerState> {
        lock(&self.activity).get(worker_id).copied()
    }

    pub async fn get(&self, id: &JobId) -> Result<Option<Job>, JobError> {
        Ok(self.store.get_job(id).await?)
    }

    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, JobError> {
        Ok(self.store.list_jobs(filter).await?)
    }

    pub async fn logs(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
    ) -> Result<Vec<LogChunk>, JobError> {
        Ok(self.store.read_logs(id, after, limit).await?)
    }

    /// A job and, when it is queued, why it still waits.
    pub async fn describe(&self, id: &JobId) -> Result<(Job, Option<String>), JobError> {
        let job = self
            .get(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.clone()))?;
        let waiting = if job.state == JobState::Queued {
            self.why_waiting(id.clone()).await?
        } else {
            None
        };
        Ok((job, waiting))
    }

    /// A job's output after the first `after` chunks, at most `limit` of them. When there is
    /// none yet and the job has not ended, waits (until `wait_until`, if given) for the
    /// dispatcher to record something, so followers never poll the store on a timer.
    pub async fn logs_page(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
        wait_until: Option<Instant>,
    ) -> Result<LogPage, JobError> {
        let mut changes = self.changes();
        loop {
            changes.borrow_and_update();
            // The state first: output recorded before the job ended is then in the read below.
            let job = self
                .get(id)
                .await?
                .ok_or_else(|| JobError::NotFound(id.clone()))?;
            let chunks = self.logs(id, after, limit).await?;
            let complete = job.state.is_terminal() && chunks.len() < limit;
            let Some(deadline) = wait_until.filter(|_| chunks.is_empty() && !complete) else {
                return Ok(LogPage {
                    job,
                    chunks,
                    complete,
                });
            };
            // Give up at the deadline, or when the service stops, with an empty page.
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return Ok(LogPage {
                    job,
                    chunks,
                    complete,
                });
            }
        }
    }

    async fn tell(&self, event: Event) {
        if self.events.send(event).await.is_err() {
            tracing::debug!("job service stopped, dropping an agent event");
        }
    }

    /// An agent opened its session; `running` are the jobs it still runs.
    pub async fn agent_connected(&self, worker_id: WorkerId, running: Vec<String>) {
        self.tell(Event::Connected { worker_id, running }).await;
    }

    /// The agent started attempt `attempt` of a job (0: it did not say which).
    pub async fn job_accepted(&self, worker_id: WorkerId, job_id: String, attempt: u32) {
        self.tell(Event::Accepted {
            worker_id,
            job_id,
            attempt,
        })
        .await;
    }

    /// The provider confirmed the worker's agent is dead (its session closed and its
    /// process is gone): its attempts are lost at once, without waiting for the lease.
    pub async fn worker_dead(&self, worker_id: WorkerId) {
        self.tell(Event::WorkerDead { worker_id }).await;
    }

    /// Output of a running job, for the attempt `chunk.attempt` (0: the agent did not say;
    /// the dispatcher fills in the attempt in flight). Output of another attempt is dropped.
    pub async fn job_log(&self, worker_id: WorkerId, chunk: LogChunk) {
        self.tell(Event::Log { worker_id, chunk }).await;
    }

    /// Attempt `attempt` ended on `worker_id` (0: the agent did not say which); `healthy`
    /// is the agent's health check after it. A result for an attempt the dispatcher already
    /// gave up on is counted as stale and otherwise ignored.
    pub async fn job_result(
        &self,
        worker_id: WorkerId,
        job_id: String,
        attempt: u32,
        outcome: AttemptOutcome,
        healthy: bool,
    ) {
        self.tell(Event::Result {
            worker_id,
            job_id,
            attempt,
            outcome,
            healthy,
        })
        .await;
    }
}

/// An agent's report that an attempt ended.
#[derive(Debug)]
struct ReportedEnd {
    worker_id: WorkerId,
    job_id: String,
    attempt: u32,
    outcome: AttemptOutcome,
    healthy: bool,
}

/// A page of a job's output, from [`JobService::logs_page`].
#[derive(Debug, Clone)]
pub struct LogPage {
    /// The job as it was when the page was read.
    pub job: Job,
    pub chunks: Vec<LogChunk>,
    /// The job has ended and this page holds the last of its output.
    pub complete: bool,
}

/// The one clock the dispatcher reads: every input to its state machine is stamped with it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The server's clock: the wall clock when it was made, advanced by tokio's monotonic clock
/// (so it never goes back, and follows tokio's paused time in tests).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_ms: u64,
    base: Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            base_ms: crate::pools::unix_ms(SystemTime::now()),
            base: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// Workers busy with a job or cleaning after one; absent means idle (as far as jobs go).
type Activity = Arc<std::sync::Mutex<HashMap<WorkerId, WorkerState>>>;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The async shell around [`Dispatch`]: it gathers inputs (events, the registry, the clock),
/// records the writes the machine proposes, commits them, and applies the effects (sends to
/// agents, replies, retirements, metrics). It decides nothing itself.
struct Dispatcher {
    activity: Activity,
    changed: watch::Sender<u64>,
    config: JobServiceConfig,
    store: Arc<dyn Store>,
    registry: Arc<SchedulerRegistry>,
    link: Arc<dyn AgentLink>,
    metrics: JobMetrics,
    machine: Dispatch,
    clock: Arc<dyn Clock>,
    logs: Vec<LogChunk>,
    retired: mpsc::UnboundedSender<Retired>,
    /// Since the previous snapshot: submitted jobs' requirements, and (pool, seconds run).
    arrived: Vec<Requirements>,
    ran: Vec<(String, f64)>,
    /// Ended attempts' usage, to [`write_usage`].
    usage: mpsc::UnboundedSender<AttemptUsage>,
    /// Missed deadlines counted while queued.
    sla: sla_tracking::SlaState,
    /// With telemetry on: each attempt in flight's `job.dispatched` span, the parent of its
    /// `job.recorded` (lost at a restart, when the job's own span is used instead).
    attempt_traces: HashMap<JobId, String>,
}

/// One submission waiting for its batch: the spec, the class asked for (`None`: the
/// defaults), and where to answer.
type Submission = (
    JobSpec,
    Option<SlaClass>,
    oneshot::Sender<Result<Job, JobError>>,
);

/// Submissions and agents' reports taken from the inbox together, each kind in arrival order.
#[derive(Default)]
struct Reports {
    submits: Vec<Submission>,
    accepted: Vec<(WorkerId, String, u32)>,
    logs: Vec<(WorkerId, LogChunk)>,
    results: Vec<ReportedEnd>,
}

impl Reports {
    /// Adds a submission or report to the run; any other event comes back.
    fn take(&mut self, event: Event) -> Option<Event> {
        match event {
            Event::Submit { spec, class, reply } => self.submits.push((*spec, class, reply)),
            Event::Accepted {
                worker_id,
                job_id,
                attempt,
            } => self.accepted.push((worker_id, job_id, attempt)),
            Event::Log { worker_id, chunk } => self.logs.push((worker_id, chunk)),
            Event::Result {
                worker_id,
                job_id,
                attempt,
                outcome,
                healthy,
            } => self.results.push(ReportedEnd {
                worker_id,
                job_id,
                attempt,
                outcome,
                healthy,
            }),
            other => return Some(other),
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.submits.is_empty()
            && self.accepted.is_empty()
            && self.logs.is_empty()
            && self.results.is_empty()
    }
}

/// A step of [`Dispatcher::handle_all`]: a run of submissions and reports, or another event.
enum Part {
    Reports(Reports),
    Other(Event),
}

/// Splits a batch of events into runs of submissions and agents' reports, which are recorded
/// kind by kind (acceptances, then output, then results: one commit per kind, not per change
/// of kind in the inbox), and the other events, each on its own in its place. An agent sends
/// a job's acceptance, output and result in that order, so handling the kinds in that order
/// keeps each job's order; any other event ends a run, so what it sees or changes comes
/// after everything that arrived before it.
fn batch_by_kind(events: Vec<Event>) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut run = Reports::default();
    for event in events {
        if let Some(other) = run.take(event) {
            if !run.is_empty() {
                parts.push(Part::Reports(std::mem::take(&mut run)));
            }
            parts.push(Part::Other(other));
        }
    }
    if !run.is_empty() {
        parts.push(Part::Reports(run));
    }
    parts
}

/// How long the usage writer gathers rows before one commit.
const USAGE_BATCH_WINDOW: Duration = Duration::from_millis(250);

/// Writes ended attempts' usage off the dispatch path: what arrives within
/// [`USAGE_BATCH_WINDOW`] of a first row goes in one commit, so the dispatcher never waits on
/// it and a busy server makes a few usage commits a second, not one per batch of results.
/// Ends, after writing what is left, when the dispatcher is gone.
async fn write_usage(store: Arc<dyn Store>, mut rows: mpsc::UnboundedReceiver<AttemptUsage>) {
    while let Some(first) = rows.recv().await {
        tokio::time::sleep(USAGE_BATCH_WINDOW).await;
        let mut batch = vec![first];
        while let Ok(row) = rows.try_recv() {
            batch.push(row);
        }
        if let Err(error) = store.record_attempt_usage(&batch).await {
            tracing::error!(%error, attempts = batch.len(), "could not record attempts' usage");
        }
    }
}

fn log_store_error<T>(what: &str, job_id: &JobId, result: Result<T, store::Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(%job_id, %error, "could not record {what}");
            None
        }
    }
}

/// What the store said about each write of each proposal, in order.
type Recorded = Vec<Vec<Result<Job, store::Error>>>;

impl Dispatcher {
    /// Rebuilds the machine from the unfinished jobs in the store.
    async fn recover(&mut self) -> Result<(), JobError> {
        let unfinished = self.store.list_jobs(&JobFilter::unfinished()).await?;
        let queues = Queues::new(self.config.queues.clone())?;
        let now_ms = self.clock.now_ms();
        let (mut machine, failed) = Dispatch::recover(
            DispatchConfig {
                fence: self.config.fence,
                sla: self.config.sla.clone(),
            },
            queues,
            self.config.tenants.clone(),
            unfinished,
            now_ms,
        );
        for (job_id, error) in failed {
            tracing::error!(%job_id, %error, "cannot queue a recovered job");
        }
        machine.set_pool_shapes(self.config.pools.pool_shapes.clone());
        let (queued, in_flight) = machine.counts();
        for job in machine.in_flight() {
            if let Some(worker) = &job.worker_id {
                lock(&self.activity).insert(worker.clone(), WorkerState::Busy);
            }
        }
        self.machine = machine;
        if queued + in_flight > 0 {
            tracing::info!(queued, in_flight, "recovered unfinished jobs");
        }
        // Each tenant's cost today, which its daily_cost quota is checked against, starts
        // from what its attempts that ended since 00:00 UTC cost, as stored.
        let today = self.store.attempt_totals(cost::day_start(now_ms)).await?;
        for (tenant, spent) in cost::cost_by_tenant(&today) {
            match TenantName::new(&tenant) {
                Ok(name) => self.machine.charge(&name, spent, now_ms),
                Err(error) => {
                    tracing::warn!(%tenant, %error, "stored usage of an invalid tenant name")
                }
            }
        }
        self.update_gauges();
        Ok(())
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Event>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Every turn plans after its events; a tick that changed nothing already did.
            let mut planned = false;
            let sla_wake = self.sla_wake();
            tokio::select! {
                () = cancel.cancelled() => break,
                event = inbox.recv() => {
                    let Some(event) = event else { break };
                    // Take what else is waiting before dispatching, so a burst is planned
                    // at once and its writes share a commit.
                    let mut events = vec![event];
                    while events.len() < MAX_BATCH {
                        match inbox.try_recv() {
                            Ok(event) => events.push(event),
                            Err(_) => break,
                        }
                    }
                    self.observe_registry();
                    self.handle_all(events).await;
                }
                _ = tick.tick() => {
                    self.observe_registry();
                    // Planned in the same step as the deadlines, so what they freed or
                    // requeued is planned again below.
                    planned = self.drive(Input::Tick).await.is_empty();
                    self.sla_tick().await;
                    // Per-tenant gauges once per tick, not per pass: they cost a walk over
                    // the tenants and the jobs in flight.
                    self.update_tenant_gauges();
                }
                // A job becomes boosted or at risk: order and preempt at once, not a tick late.
                () = tokio::time::sleep_until(sla_wake) => {
                    self.observe_registry();
                    self.sla_tick().await;
                }
            }
            self.flush_logs().await;
            if !planned && self.machine.counts().0 > 0 {
                self.drive(Input::Plan).await;
            }
            self.update_gauges();
            self.changed.send_modify(|generation| *generation += 1);
        }
        self.flush_logs().await;
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Tells the machine what the registry knows of every worker now.
    fn observe_registry(&mut self) {
        let now_ms = self.clock.now_ms();
        let now = Instant::now();
        let max_uses = &self.config.pools.max_uses;
        let seen = self.registry.filter_map(|entry| {
            let silent = now.saturating_duration_since(entry.last_seen_at);
            Some(Seen {
                worker: IdleWorker::from(&entry.worker),
                pool_max_uses: entry
                    .worker
                    .metadata
                    .pool
                    .as_ref()
                    .and_then(|pool| max_uses.get(pool).copied()),
                connected: entry.connected,
                last_heard_ms: now_ms
                    .saturating_sub(u64::try_from(silent.as_millis()).unwrap_or(u64::MAX)),
                healthy: entry.liveness == hodei_core::health::Liveness::Healthy,
                draining: entry.draining.is_some(),
            })
        });
        // Presence needs no write and proposes none.
        let _ = self.machine.step(Input::Presence(seen), now_ms);
    }

    /// Steps the machine with one input, then records, commits and applies.
    async fn drive(&mut self, input: Input) -> Vec<Effect> {
        let now_ms = self.clock.now_ms();
        let proposal = self.machine.step(input, now_ms);
        self.settle(vec![proposal], now_ms).await.0
    }

    /// Records the writes of `proposals` (one commit for the inserts, one for the updates),
    /// commits each proposal with what was recorded, and applies the effects, immediate ones
    /// first. A job already written by an earlier proposal of the batch is not written again
    /// (two reports of one result in one batch). Returns the effects and what the store said.
    async fn settle(&mut self, proposals: Vec<Proposal>, now_ms: u64) -> (Vec<Effect>, Recorded) {
        let mut effects: Vec<Effect> = proposals
            .iter()
            .flat_map(|proposal| proposal.immediate.iter().cloned())
            .collect();
        let recorded = self.record(&proposals).await;
        for (proposal, results) in proposals.into_iter().zip(&recorded) {
            let stored = results.iter().map(|r| r.as_ref().ok().cloned()).collect();
            effects.extend(self.machine.commit_stored(proposal, stored, now_ms));
        }
        let mut all = effects.clone();
        loop {
            let undelivered = self.apply(&effects).await;
            if undelivered.is_empty() {
                break;
            }
            let proposals: Vec<Proposal> = undelivered
                .into_iter()
                .map(|(worker, job)| {
                    self.machine
                        .step(Input::Undeliverable { worker, job }, now_ms)
                })
                .collect();
            let recorded = self.record(&proposals).await;
            effects = Vec::new();
            for (proposal, results) in proposals.into_iter().zip(&recorded) {
                let stored = results.iter().map(|r| r.as_ref().ok().cloned()).collect();
                effects.extend(self.machine.commit_stored(proposal, stored, now_ms));
            }
            all.extend(effects.iter().cloned());
        }
        (all, recorded)
    }

    /// Records the proposals' writes: new jobs with one commit, changes with another.
    async fn record(&self, proposals: &[Proposal]) -> Recorded {
        let mut results: Recorded = proposals
            .iter()
            .map(|p| {
                p.writes
                    .iter()
                    .map(|_| Err(store::Error::Unavailable("not recorded".into())))
                    .collect()
            })
            .collect();
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        let mut written: HashSet<&JobId> = HashSet::new();
        for (p, proposal) in proposals.iter().enumerate() {
            let mut mine: HashSet<&JobId> = HashSet::new();
            for (w, write) in proposal.writes.iter().enumerate() {
                if written.contains(&write.job.id) {
                    results[p][w] = Err(store::Error::Unavailable(
                        "already written in this batch".into(),
                    ));
                    continue;
                }
                mine.insert(&write.job.id);
                match write.expected {
                    None => inserts.push((p, w)),
                    Some(_) => updates.push((p, w)),
                }
            }
            written.extend(mine);
        }
        if !inserts.is_empty() {
            let jobs: Vec<Job> = inserts
                .iter()
                .map(|&(p, w)| proposals[p].writes[w].job.clone())
                .collect();
            match self.store.insert_jobs(&jobs).await {
                Ok(done) => {
                    for (&(p, w), result) in inserts.iter().zip(done) {
                        results[p][w] = result;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, jobs = jobs.len(), "could not record submissions");
                    for &(p, w) in &inserts {
                        results[p][w] = Err(store::Error::Unavailable(error.to_string()));
                    }
                }
            }
        }
        if !updates.is_empty() {
            let changes: Vec<(Job, JobState)> = updates
                .iter()
                .filter_map(|&(p, w)| {
                    let write = &proposals[p].writes[w];
                    write.expected.map(|expected| (write.job.clone(), expected))
                })
                .collect();
            match self.store.update_jobs(&changes).await {
                Ok(done) => {
                    for ((&(p, w), result), (job, _)) in updates.iter().zip(done).zip(&changes) {
                        results[p][w] = log_store_error("a job change", &job.id, result)
                            .map(|()| job.clone())
                            .ok_or_else(|| store::Error::Unavailable("refused".into()));
                    }
                }
                Err(error) => {
                    // Nothing changed in memory: results come again (a reconnecting agent
                    // resends them) or the deadline check comes back to the jobs.
                    tracing::error!(%error, jobs = changes.len(), "could not record job changes");
                    for &(p, w) in &updates {
                        results[p][w] = Err(store::Error::Unavailable(error.to_string()));
                    }
                }
            }
        }
        results
    }

    /// Applies recorded effects: sends, retirements, worker activity, metrics. Returns the
    /// assignments that could not be delivered.
    async fn apply(&mut self, effects: &[Effect]) -> Vec<(WorkerId, JobId)> {
        let mut undelivered = Vec::new();
        let mut usage = Vec::new();
        for effect in effects {
            match effect {
                Effect::Admitted { job, .. } => {
                    tracing::debug!(job_id = %job.id, queue = %job.spec.queue, priority = job.spec.priority.get(), "job queued");
                    if trace::enabled() {
                        drop(trace::Span::start(
                            "job.admitted",
                            trace::job_traceparent(&job.spec),
                            &[
                                ("hodei.job_id", job.id.to_string()),
                                ("hodei.queue", job.spec.queue.to_string()),
                                ("hodei.priority", job.spec.priority.get().to_string()),
                            ],
                        ));
                    }
                    self.metrics.submitted.inc();
                    if self.arrived.len() < MAX_SNAPSHOT_QUEUED {
                        self.arrived.push(job.spec.requirements.clone());
                    }
                }
                Effect::Refused { .. }
                | Effect::CancelUnknown(_)
                | Effect::Drained(_)
                | Effect::CancelAnswered(_) => {}
                Effect::Assign { worker, job } => {
                    let times = self.machine.times(&job.id).unwrap_or_default();
                    let waited = times
                        .assigned_at_ms
                        .unwrap_or(times.queued_at_ms)
                        .saturating_sub(times.queued_at_ms) as f64
                        / 1000.0;
                    self.metrics.queue_wait.observe(waited);
                    self.metrics
                        .tenant_queue_wait
                        .get_or_create(&TenantLabels {
                            tenant: job.spec.tenant.to_string(),
                        })
                        .observe(waited);
                    self.metrics.tenant_started(&job.spec.tenant);
                    self.metrics.dispatched.inc();
                    if times.assigned_at_ms.map(at) == job.first_started_at {
                        self.sla_first_start(job);
                    }
                    if self.machine.uses(worker) > 0 {
                        self.metrics.reused.inc();
                    }
                    self.worker_state(worker, WorkerState::Busy);
                    let traced = self.trace_dispatch(worker, job, &times);
                    let job = traced.as_ref().map_or(job, |(job, _)| job);
                    if let Err(error) = self.link.assign(worker, job).await {
                        tracing::info!(job_id = %job.id, worker_id = %worker, %error, "assignment not delivered, queueing the job again");
                        undelivered.push((worker.clone(), job.id.clone()));
                    }
                }
                Effect::Started(id) => {
                    if let Some(Times {
                        assigned_at_ms: Some(assigned),
                        started_at_ms: Some(started),
                        ..
                    }) = self.machine.times(id)
                    {
                        self.metrics
                            .dispatch_latency
                            .observe(started.saturating_sub(assigned) as f64 / 1000.0);
                    }
                }
                Effect::StopJob { worker, job } => {
                    if let Err(error) = self.link.cancel(worker, job, "cancelled by a user").await {
                        // The attempt ends as cancelled when the worker is found lost.
                        tracing::info!(job_id = %job, %error, "cancel will apply when the worker's attempt ends");
                    }
                }
                Effect::Retire { worker, reason } => {
                    self.metrics
                        .uses_at_retirement
                        .observe(f64::from(self.machine.uses(worker)));
                    tracing::info!(worker_id = %worker, %reason, "retiring worker");
                    let _ = self.retired.send(Retired {
                        worker_id: worker.clone(),
                        reason: reason.clone(),
                    });
                }
                Effect::StopAgain {
                    victim,
                    worker,
                    grace_ms,
                    reason,
                } => {
                    let grace = Duration::from_millis(*grace_ms);
                    if let Err(error) = self
                        .link
                        .stop_with_grace(worker, victim, reason, grace)
                        .await
                    {
                        tracing::info!(job_id = %victim, %error, "preemption will apply when the worker's attempt ends");
                    }
                }
                Effect::Missed(job) => self.sla_missed(job),
                Effect::Preempt {
                    victim,
                    worker,
                    grace_ms,
                    preemption,
                    ..
                } => {
                    self.preempting(preemption);
                    let grace = Duration::from_millis(*grace_ms);
                    if let Err(error) = self
                        .link
                        .stop_with_grace(worker, victim, &preemption.reason, grace)
                        .await
                    {
                        // Its attempt ends when the worker is found lost, and that end is a
                        // preemption.
                        tracing::info!(job_id = %victim, %error, "preemption will apply when the worker's attempt ends");
                    }
                }
                Effect::Ended {
                    job,
                    worker,
                    held_ms,
                    lost,
                    preempted,
                } => {
                    self.trace_ended(job, worker.as_ref(), *held_ms);
                    if let Some(row) = self.ended(job, worker.as_ref(), *held_ms, *lost, *preempted)
                    {
                        usage.push(row);
                    }
                }
                Effect::Fenced {
                    worker,
                    job,
                    why,
                    stop,
                } => self.fenced(worker.as_ref(), job, *why, *stop).await,
            }
        }
        for row in usage {
            // The writer lives as long as the service; a send fails only at shutdown.
            let _ = self.usage.send(row);
        }
        undelivered
    }

    /// With telemetry on and a job with a trace: spans `job.queued` (from its queueing to
    /// now) and `job.dispatched`, whose context goes to the agent as the job's `TRACEPARENT`
    /// (so the agent's spans are its children). Returns the job as sent, and the span, which
    /// ends once the assignment is handed over.
    fn trace_dispatch(
        &mut self,
        worker: &WorkerId,
        job: &Job,
        times: &Times,
    ) -> Option<(Job, trace::Span)> {
        if !trace::enabled() {
            return None;
        }
        let root = trace::job_traceparent(&job.spec)?;
        let queued = trace::Span::start_at(
            "job.queued",
            Some(root),
            at(times.queued_at_ms),
            &[
                ("hodei.job_id", job.id.to_string()),
                ("hodei.queue", job.spec.queue.to_string()),
            ],
        );
        queued.end_at(at(times.assigned_at_ms.unwrap_or(times.queued_at_ms)));
        let dispatched = trace::Span::start(
            "job.dispatched",
            Some(root),
            &[
                ("hodei.job_id", job.id.to_string()),
                ("hodei.worker_id", worker.to_string()),
                ("hodei.attempt", job.attempts.to_string()),
            ],
        );
        let context = dispatched.traceparent()?;
        self.attempt_traces.insert(job.id.clone(), context.clone());
        let mut sent = job.clone();
        sent.spec
            .env
            .insert(trace::TRACEPARENT_ENV.to_owned(), context);
        Some((sent, dispatched))
    }

    /// With telemetry on: span `job.recorded`, an attempt's end as stored, a child of its
    /// `job.dispatched` (or of the job's span when that is not known).
    fn trace_ended(&mut self, job: &Job, worker: Option<&WorkerId>, held_ms: u64) {
        let dispatched = self.attempt_traces.remove(&job.id);
        if !trace::enabled() {
            return;
        }
        let parent = dispatched
            .as_deref()
            .or_else(|| trace::job_traceparent(&job.spec));
        if parent.is_none() {
            return;
        }
        drop(trace::Span::start(
            "job.recorded",
            parent,
            &[
                ("hodei.job_id", job.id.to_string()),
                ("hodei.attempt", job.attempts.to_string()),
                ("hodei.state", job.state.to_string()),
                (
                    "hodei.worker_id",
                    worker.map(ToString::to_string).unwrap_or_default(),
                ),
                ("hodei.held_ms", held_ms.to_string()),
            ],
        ));
    }

    /// A recorded end of an attempt: cost, metrics and the worker's activity.
    fn ended(
        &mut self,
        job: &Job,
        worker: Option<&WorkerId>,
        held_ms: u64,
        lost: bool,
        preempted: bool,
    ) -> Option<AttemptUsage> {
        tracing::debug!(job_id = %job.id, worker_id = ?job.worker_id, state = %job.state, reason = ?job.reason, "attempt ended");
        if job.state == JobState::Queued {
            // A preemption is not a retry.
            if !preempted {
                self.metrics.retried.inc();
            }
        } else {
            self.metrics.finished(job.state);
        }
        let worker = worker?;
        if lost {
            // Nothing ran to the end there; what the worker does next is up to its agent.
            lock(&self.activity).remove(worker);
        } else {
            self.metrics.jobs_per_worker_total.inc();
            self.worker_state(worker, WorkerState::Cleaning);
            if !self.machine.is_leaving(worker) {
                self.worker_state(worker, WorkerState::Idle);
            }
        }
        let pool = self
            .registry
            .get(worker)
            .and_then(|entry| entry.worker.metadata.pool)?;
        let secs = held_ms as f64 / 1000.0;
        let rate = self
            .config
            .pools
            .cost_per_hour
            .get(&pool)
            .copied()
            .unwrap_or(0.0);
        self.metrics
            .charge(job.spec.tenant.as_str(), &pool, secs, rate);
        self.machine
            .charge(&job.spec.tenant, secs * rate / 3600.0, self.clock.now_ms());
        if self.ran.len() < MAX_SNAPSHOT_QUEUED {
            self.ran.push((pool.clone(), secs));
        }
        Some(AttemptUsage {
            job_id: job.id.to_string(),
            attempt: job.attempts,
            tenant: job.spec.tenant.to_string(),
            queue: job.spec.queue.to_string(),
            pool,
            worker_id: worker.to_string(),
            ended_at_ms: self.clock.now_ms(),
            worker_seconds: secs,
            cost: cost::cost_of(secs, rate),
        })
    }

    /// A recorded verdict of the fence: metrics, the worker's activity, and the stop.
    async fn fenced(&mut self, worker: Option<&WorkerId>, job: &JobId, why: Fenced, stop: bool) {
        let reason = match why {
            Fenced::Lost(because) => {
                tracing::warn!(job_id = %job, worker_id = ?worker, because = because.as_str(), "the attempt is lost");
                self.metrics.lost(because);
                "the server gave up on this attempt"
            }
            Fenced::TimedOut => {
                tracing::warn!(job_id = %job, worker_id = ?worker, "the job ran past its timeout and its agent never said so, ending it");
                self.metrics.server_timeouts.inc();
                "timed out (enforced by the server)"
            }
            Fenced::NotAccepted => {
                tracing::warn!(job_id = %job, worker_id = ?worker, "assignment not accepted in time, withdrawing it and marking the worker unhealthy");
                self.metrics.withdrawn.inc();
                if let Some(worker) = worker {
                    self.worker_state(worker, WorkerState::Unhealthy);
                }
                "assignment withdrawn: not accepted in time"
            }
            Fenced::Undelivered => {
                if let Some(worker) = worker {
                    lock(&self.activity).remove(worker);
                }
                "assignment not delivered"
            }
        };
        if stop && let Some(worker) = worker {
            let _ = self.link.cancel(worker, job, reason).await;
        }
    }

    /// Applies events in order. Runs of submissions, acceptances and results are applied
    /// together, each run with one store commit: with SQLite's fsync per commit, that is what
    /// lets a burst through at thousands of jobs per second.
    async fn handle_all(&mut self, events: Vec<Event>) {
        for part in batch_by_kind(events) {
            let event = match part {
                Part::Reports(reports) => {
                    self.handle_reports(reports).await;
                    continue;
                }
                Part::Other(event) => event,
            };
            match event {
                report @ (Event::Submit { .. }
                | Event::Accepted { .. }
                | Event::Result { .. }
                | Event::Log { .. }) => {
                    // `batch_by_kind` puts these in runs; handled the same way all the same.
                    let mut run = Reports::default();
                    let _ = run.take(report);
                    self.handle_reports(run).await;
                }
                Event::Cancel { id, reply } => {
                    let _ = reply.send(self.cancel(&id).await);
                }
                Event::Explain { id, reply } => {
                    let now_ms = self.clock.now_ms();
                    let _ = reply.send(self.machine.why_waiting(&id, now_ms));
                }
                Event::Connected { worker_id, running } => {
                    {
                        // Marked unhealthy for an assignment it never accepted: a new
                        // session, a new chance.
                        let mut activity = lock(&self.activity);
                        if activity.get(&worker_id) == Some(&WorkerState::Unhealthy) {
                            activity.remove(&worker_id);
                        }
                    }
                    let running = running
                        .iter()
                        .filter_map(|id| JobId::new(id.as_str()).ok())
                        .collect();
                    self.drive(Input::Connected {
                        worker: worker_id,
                        running,
                    })
                    .await;
                }
                Event::WorkerDead { worker_id } => {
                    tracing::info!(%worker_id, "worker confirmed dead, its attempts are lost now");
                    self.drive(Input::WorkerDead(worker_id)).await;
                }
                Event::Snapshot { reply } => {
                    let _ = reply.send(self.snapshot());
                }
                Event::Drain { workers, reply } => {
                    let drained = self
                        .drive(Input::Drain(workers))
                        .await
                        .into_iter()
                        .find_map(|effect| match effect {
                            Effect::Drained(workers) => Some(workers),
                            _ => None,
                        })
                        .unwrap_or_default();
                    let _ = reply.send(drained);
                }
                Event::Pools(settings) => {
                    self.machine.set_pool_shapes(settings.pool_shapes.clone());
                    self.config.pools = settings;
                }
                Event::Coming(workers) => self.sla.coming = workers,
                Event::Tenants(tenants) => {
                    self.machine.set_tenants(*tenants);
                    self.update_tenant_gauges();
                }
                Event::TenantStatus { reply } => {
                    let _ = reply.send(self.tenant_status());
                }
                Event::WorkerUses { workers, reply } => {
                    let _ = reply.send(workers.iter().map(|w| self.machine.uses(w)).collect());
                }
            }
        }
    }

    /// A run of submissions and agents' reports, by kind: one commit for the submissions,
    /// one for the acceptances, one for the results (after the output, so whoever sees a job
    /// ended finds all of it stored), however the kinds interleaved in the inbox.
    async fn handle_reports(&mut self, reports: Reports) {
        let Reports {
            submits,
            accepted,
            logs,
            results,
        } = reports;
        if !submits.is_empty() {
            self.submit_batch(submits).await;
        }
        if !accepted.is_empty() {
            self.accepted_batch(accepted).await;
        }
        for (worker_id, chunk) in logs {
            self.log(&worker_id, chunk);
        }
        if !results.is_empty() {
            self.flush_logs().await;
            self.result_batch(results).await;
        }
    }

    /// Makes the jobs, has the machine admit them, records the admitted ones (one commit)
    /// and answers each submitter.
    async fn submit_batch(&mut self, batch: Vec<Submission>) {
        let now_ms = self.clock.now_ms();
        let mut jobs = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (mut spec, class, reply) in batch {
            spec.sla_class = self.machine.sla().class_of(
                class,
                &spec.queue,
                self.machine.tenants().get(&spec.tenant).as_deref(),
            );
            let made = JobId::new(format!("j-{}", uuid::Uuid::new_v4().simple()))
                .and_then(|id| Job::new(id, spec, 0, at(now_ms)));
            match made {
                Ok(job) => {
                    jobs.push(job);
                    replies.push(Some(reply));
                }
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let tenants: Vec<TenantName> = jobs.iter().map(|job| job.spec.tenant.clone()).collect();
        let ids: HashMap<JobId, usize> = jobs
            .iter()
            .enumerate()
            .map(|(index, job)| (job.id.clone(), index))
            .collect();
        let proposal = self.machine.step(Input::Submit(jobs), now_ms);
        let writes: Vec<JobId> = proposal.writes.iter().map(|w| w.job.id.clone()).collect();
        let (effects, recorded) = self.settle(vec![proposal], now_ms).await;
        for effect in effects {
            match effect {
                Effect::Admitted { index, job } => {
                    if let Some(reply) = replies.get_mut(index).and_then(Option::take) {
                        let _ = reply.send(Ok(job));
                    }
                }
                Effect::Refused { index, refusal } => {
                    let error = match refusal {
                        Refusal::Queue(error) => {
                            if matches!(error, QueueError::Full { .. }) {
                                self.metrics.rejected.inc();
                            }
                            JobError::Queue(error)
                        }
                        Refusal::Tenant(error) => {
                            if let Some(tenant) = tenants.get(index) {
                                self.metrics.tenant_rejected(tenant, &error);
                            }
                            JobError::Tenant(error)
                        }
                        Refusal::Unsatisfiable(why) => JobError::Unsatisfiable(why),
                    };
                    if let Some(reply) = replies.get_mut(index).and_then(Option::take) {
                        let _ = reply.send(Err(error));
                    }
                }
                _ => {}
            }
        }
        // What the store refused: its error, to its submitter.
        for (id, result) in writes.iter().zip(recorded.into_iter().flatten()) {
            if let (Err(error), Some(&index)) = (result, ids.get(id))
                && let Some(reply) = replies.get_mut(index).and_then(Option::take)
            {
                let _ = reply.send(Err(error.into()));
            }
        }
    }

    fn snapshot(&mut self) -> JobSnapshot {
        let now = Instant::now();
        let now_ms = self.clock.now_ms();
        let mut snapshot = JobSnapshot {
            // At-risk jobs first, so pools grow for them before anything else.
            queued: hodei_core::sla::demand_order(
                self.machine.queues(),
                now_ms,
                MAX_SNAPSHOT_QUEUED,
            ),
            arrived: std::mem::take(&mut self.arrived),
            ran: std::mem::take(&mut self.ran),
            ..JobSnapshot::default()
        };
        for (id, view) in self.machine.worker_views() {
            match view {
                WorkerView::Leaving => {
                    snapshot.leaving.insert(id);
                }
                WorkerView::Busy => {
                    snapshot.busy.insert(id);
                }
                WorkerView::Idle { since_ms } => {
                    let ago = Duration::from_millis(now_ms.saturating_sub(since_ms));
                    let since = now.checked_sub(ago).unwrap_or(now);
                    snapshot.idle_since.insert(id, since);
                }
            }
        }
        snapshot
    }

    async fn cancel(&mut self, id: &JobId) -> Result<Job, JobError> {
        for effect in self.drive(Input::Cancel(id.clone())).await {
            match effect {
                Effect::CancelAnswered(job) if &job.id == id => {
                    if job.state == JobState::Cancelled {
                        self.metrics.finished(JobState::Cancelled);
                    }
                    return Ok(job);
                }
                Effect::CancelUnknown(_) => {
                    return match self.store.get_job(id).await? {
                        Some(job) => Err(JobError::AlreadyEnded {
                            id: id.clone(),
                            state: job.state,
                        }),
                        None => Err(JobError::NotFound(id.clone())),
                    };
                }
                _ => {}
            }
        }
        // The cancel was not recorded: the job stays queued.
        Err(store::Error::Unavailable(format!("could not record the cancel of job {id}")).into())
    }

    fn tenant_status(&mut self) -> Vec<TenantStatus> {
        let now_ms = self.clock.now_ms();
        let mut usage = self.machine.usage(now_ms);
        let (started, total) = self.machine.start_counts(now_ms);
        let names: std::collections::BTreeSet<TenantName> = usage
            .keys()
            .chain(started.keys())
            .chain(self.machine.tenants().configured.keys())
            .cloned()
            .collect();
        // Today's cost of every tenant shown, not only of those holding or queueing jobs.
        for name in &names {
            let spent = self.machine.spent_today(name, now_ms);
            usage.entry(name.clone()).or_default().daily_cost = spent;
        }
        names
            .into_iter()
            .map(|tenant| {
                let count = started.get(&tenant).copied().unwrap_or(0);
                TenantStatus {
                    usage: usage.remove(&tenant).unwrap_or_default(),
                    queued: self.machine.queues().tenant_depth(&tenant),
                    burst: self.machine.burst(&tenant),
                    share_last_hour: if total == 0 {
                        0.0
                    } else {
                        count as f64 / total as f64
                    },
                    started_last_hour: count,
                    tenant,
                }
            })
            .collect()
    }

    /// Agents started these jobs: each moves from assigned to running, with one commit.
    /// An agent that started a numbered attempt the machine gave up on is told to stop it.
    async fn accepted_batch(&mut self, batch: Vec<(WorkerId, String, u32)>) {
        let now_ms = self.clock.now_ms();
        let mut proposals = Vec::with_capacity(batch.len());
        for (worker, job_id, attempt) in batch {
            let id = JobId::new(job_id.as_str()).ok();
            let current = id.as_ref().is_some_and(|id| {
                self.machine.classify_report(&worker, id, attempt) == Report::Current
            });
            match id {
                Some(job) if current => {
                    proposals.push(self.machine.step(Input::Accepted { worker, job }, now_ms));
                }
                _ => {
                    self.metrics.stale("accepted");
                    // Attempt 0: not one of the dispatcher's assignments (or an agent that
                    // does not number them); nothing to stop on its behalf.
                    if attempt == 0 {
                        tracing::debug!(worker_id = %worker, job_id, "ignoring an acceptance of an unknown attempt");
                        continue;
                    }
                    tracing::warn!(worker_id = %worker, job_id, attempt, "stale job acceptance, telling the agent to stop it");
                    if let Some(id) = id {
                        let _ = self
                            .link
                            .cancel(&worker, &id, "this attempt was given up on")
                            .await;
                    }
                }
            }
        }
        if !proposals.is_empty() {
            self.settle(proposals, now_ms).await;
        }
    }

    fn log(&mut self, worker: &WorkerId, mut chunk: LogChunk) {
        let attempt = match self.machine.job(&chunk.job_id) {
            Some(job)
                if self
                    .machine
                    .classify_report(worker, &chunk.job_id, chunk.attempt)
                    == Report::Current =>
            {
                job.attempts
            }
            _ => {
                self.metrics.stale("log");
                return;
            }
        };
        chunk.attempt = attempt;
        self.logs.push(chunk);
    }

    async fn flush_logs(&mut self) {
        if self.logs.is_empty() {
            return;
        }
        let logs = std::mem::take(&mut self.logs);
        if let Err(error) = self.store.append_logs(&logs).await {
            tracing::error!(%error, chunks = logs.len(), "could not store job output");
        }
    }

    /// Attempts that agents report ended: the machine proposes each job's next state, they
    /// are recorded with one commit, then workers are freed or retired.
    async fn result_batch(&mut self, batch: Vec<ReportedEnd>) {
        let now_ms = self.clock.now_ms();
        let mut proposals = Vec::with_capacity(batch.len());
        for ReportedEnd {
            worker_id,
            job_id,
            attempt,
            outcome,
            healthy,
        } in batch
        {
            let id = JobId::new(job_id.as_str()).ok().filter(|id| {
                self.machine.classify_report(&worker_id, id, attempt) == Report::Current
            });
            let Some(job) = id else {
                // Never the job's result: the attempt was given up on (and maybe retried).
                tracing::warn!(%worker_id, job_id, attempt, ?outcome, "stale job result recorded, not applied");
                self.metrics.stale("result");
                continue;
            };
            proposals.push(self.machine.step(
                Input::Result {
                    worker: worker_id,
                    job,
                    outcome,
                    healthy,
                },
                now_ms,
            ));
        }
        if !proposals.is_empty() {
            self.settle(proposals, now_ms).await;
        }
    }

    /// Moves a worker between idle, busy and cleaning. These per-job states live in memory
    /// (the store keeps the lifecycle: provisioning, idle, draining, unhealthy, terminated),
    /// so a job costs no worker writes; the API overlays them on the stored state.
    fn worker_state(&self, worker_id: &WorkerId, to: WorkerState) {
        let mut activity = lock(&self.activity);
        let from = activity
            .get(worker_id)
            .copied()
            .unwrap_or(WorkerState::Idle);
        if let Err(error) = from.transition(to) {
            tracing::warn!(%worker_id, %error, "ignoring a worker state change");
            return;
        }
        if to == WorkerState::Idle {
            activity.remove(worker_id);
        } else {
            activity.insert(worker_id.clone(), to);
        }
    }

    fn update_gauges(&mut self) {
        let queues = self.machine.queues();
        self.metrics.queue_depth.clear();
        for ((queue, priority), depth) in queues.depth_by_priority() {
            self.metrics
                .queue_depth
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                    priority: priority.get().to_string(),
                })
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        for queue in queues.names() {
            let _ = self.metrics.queue_depth.get_or_create(&QueueLabels {
                queue: queue.to_string(),
                priority: "all".into(),
            });
        }
        let running = self.machine.counts().1;
        self.metrics
            .running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    fn update_tenant_gauges(&mut self) {
        let now_ms = self.clock.now_ms();
        let mut usage = self.machine.usage(now_ms);
        // `usage` has today's cost of the tenants holding or queueing jobs only; a tenant
        // idle now spent its day too.
        let configured: Vec<TenantName> =
            self.machine.tenants().configured.keys().cloned().collect();
        for name in configured {
            let spent = self.machine.spent_today(&name, now_ms);
            usage.entry(name).or_default().daily_cost = spent;
        }
        let metrics = &self.metrics;
        let machine = &self.machine;
        metrics.tenant_running.clear();
        metrics.tenant_queued.clear();
        metrics.tenant_usage.clear();
        metrics.tenant_quota.clear();
        metrics.tenant_burst.clear();
        // The default tenant (every job without one) always has its series, so the
        // families are there from the start, at zero.
        let default_tenant = TenantName::default();
        let names: std::collections::BTreeSet<&TenantName> = usage
            .keys()
            .chain(machine.tenants().configured.keys())
            .chain(machine.queues().tenants())
            .chain(std::iter::once(&default_tenant))
            .collect();
        for name in names {
            let labels = TenantLabels {
                tenant: name.to_string(),
            };
            let held = usage.get(name).copied().unwrap_or_default();
            metrics
                .tenant_running
                .get_or_create(&labels)
                .set(i64::from(held.running_jobs));
            metrics
                .tenant_queued
                .get_or_create(&labels)
                .set(i64::try_from(machine.queues().tenant_depth(name)).unwrap_or(i64::MAX));
            let bursting = matches!(machine.burst(name), BurstState::Active { .. });
            metrics
                .tenant_burst
                .get_or_create(&labels)
                .set(i64::from(bursting));
            let quotas = machine
                .tenants()
                .get(name)
                .map(|tenant| tenant.quotas.clone())
                .unwrap_or_default();
            for resource in Resource::ALL {
                let labels = TenantResourceLabels {
                    tenant: name.to_string(),
                    resource: resource.as_str(),
                };
                metrics
                    .tenant_usage
                    .get_or_create(&labels)
                    .set(held.get(resource));
                // +Inf when unlimited, so `usage / quota` reads 0 for those.
                let limit = quotas
                    .get(&resource)
                    .map_or(f64::INFINITY, |limit| limit.value);
                metrics.tenant_quota.get_or_create(&labels).set(limit);
            }
        }
    }
}

fn at(now_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantResourceLabels {
    tenant: String,
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantReasonLabels {
    tenant: String,
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn queue_wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The job metrics, all `hodei_*`.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    submitted: Counter,
    rejected: Counter,
    dispatched: Counter,
    reused: Counter,
    retried: Counter,
    finished: Family<StateLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    running: Gauge,
    queue_wait: Histogram,
    dispatch_latency: Histogram,
    jobs_per_worker_total: Counter,
    uses_at_retirement: Histogram,
    tenant_seconds: Family<TenantPoolLabels, Counter<f64, AtomicU64>>,
    tenant_cost: Family<TenantPoolLabels, Counter<f64, AtomicU64>>,
    tenant_running: Family<TenantLabels, Gauge>,
    tenant_queued: Family<TenantLabels, Gauge>,
    tenant_usage: Family<TenantResourceLabels, Gauge<f64, AtomicU64>>,
    tenant_quota: Family<TenantResourceLabels, Gauge<f64, AtomicU64>>,
    tenant_started: Family<TenantLabels, Counter>,
    tenant_rejections: Family<TenantReasonLabels, Counter>,
    tenant_burst: Family<TenantLabels, Gauge>,
    tenant_queue_wait: HistogramFamily<TenantLabels>,
    stale_reports: Family<KindLabels, Counter>,
    lost_attempts: Family<KindLabels, Counter>,
    withdrawn: Counter,
    server_timeouts: Counter,
    sla: SlaMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantPoolLabels {
    tenant: String,
    pool: String,
}

impl JobMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            submitted: Counter::default(),
            rejected: Counter::default(),
            dispatched: Counter::default(),
            reused: Counter::default(),
            retried: Counter::default(),
            finished: Family::default(),
            queue_depth: Family::default(),
            running: Gauge::default(),
            queue_wait: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            dispatch_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            jobs_per_worker_total: Counter::default(),
            uses_at_retirement: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            tenant_seconds: Family::default(),
            tenant_cost: Family::default(),
            tenant_running: Family::default(),
            tenant_queued: Family::default(),
            tenant_usage: Family::default(),
            tenant_quota: Family::default(),
            tenant_started: Family::default(),
            tenant_rejections: Family::default(),
            tenant_burst: Family::default(),
            tenant_queue_wait: Family::new_with_constructor(queue_wait_histogram),
            stale_reports: Family::default(),
            lost_attempts: Family::default(),
            withdrawn: Counter::default(),
            server_timeouts: Counter::default(),
            sla: SlaMetrics::new(registry),
        };
        registry.register(
            "hodei_tenant_jobs_running",
            "Jobs assigned or running, by tenant",
            metrics.tenant_running.clone(),
        );
        registry.register(
            "hodei_tenant_jobs_queued",
            "Jobs queued, by tenant",
            metrics.tenant_queued.clone(),
        );
        registry.register(
            "hodei_tenant_usage",
            "What a tenant holds now, by resource (running_jobs, cpu, memory_mb, workers, daily_cost)",
            metrics.tenant_usage.clone(),
        );
        registry.register(
            "hodei_tenant_quota",
            "A tenant's configured quota, by resource (+Inf: unlimited)",
            metrics.tenant_quota.clone(),
        );
        registry.register(
            "hodei_tenant_jobs_started",
            "Attempts started, by tenant: its share of started work",
            metrics.tenant_started.clone(),
        );
        for reason in ["never_fits", "queue_full", "unknown_tenant"] {
            let _ = metrics
                .tenant_rejections
                .get_or_create(&TenantReasonLabels {
                    tenant: TenantName::default().to_string(),
                    reason,
                });
        }
        registry.register(
            "hodei_tenant_quota_rejections",
            "Submissions refused by a tenant's quotas, by reason (never_fits, queue_full, unknown_tenant)",
            metrics.tenant_rejections.clone(),
        );
        registry.register(
            "hodei_tenant_burst_active",
            "1 while a tenant is past a soft quota (bursting)",
            metrics.tenant_burst.clone(),
        );
        registry.register(
            "hodei_tenant_queue_wait_seconds",
            "Time from entering a queue to being handed to a worker, by tenant",
            metrics.tenant_queue_wait.clone(),
        );
        registry.register(
            "hodei_job_stale_reports",
            "Reports (accepted, log, result) about attempts the server had already given up on: recorded, never applied",
            metrics.stale_reports.clone(),
        );
        registry.register(
            "hodei_job_lost_attempts",
            "Attempts given up on, by why: worker_dead (confirmed by its provider), silent (past lease and margin), not_running (agent came back without it)",
            metrics.lost_attempts.clone(),
        );
        registry.register(
            "hodei_job_assignments_withdrawn",
            "Assignments not accepted within jobs.assign_timeout, taken back without spending an attempt",
            metrics.withdrawn.clone(),
        );
        registry.register(
            "hodei_job_server_timeouts",
            "Attempts the server ended as timed out because their agent never reported the timeout",
            metrics.server_timeouts.clone(),
        );
        for kind in ["accepted", "log", "result"] {
            let _ = metrics.stale_reports.get_or_create(&KindLabels { kind });
        }
        for kind in ["worker_dead", "silent", "not_running"] {
            let _ = metrics.lost_attempts.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "hodei_tenant_worker_seconds",
            "Seconds tenants' jobs held a worker of a pool",
            metrics.tenant_seconds.clone(),
        );
        registry.register(
            "hodei_tenant_cost",
            "What tenants' jobs cost: worker-seconds priced at their pool's cost_per_hour",
            metrics.tenant_cost.clone(),
        );
        registry.register(
            "hodei_jobs_submitted",
            "Jobs accepted",
            metrics.submitted.clone(),
        );
        registry.register(
            "hodei_jobs_rejected",
            "Jobs refused because their queue was full",
            metrics.rejected.clone(),
        );
        registry.register(
            "hodei_jobs_dispatched",
            "Attempts handed to a worker",
            metrics.dispatched.clone(),
        );
        registry.register(
            "hodei_worker_reuses",
            "Attempts handed to a worker that had already run a job: provisioning avoided",
            metrics.reused.clone(),
        );
        registry.register(
            "hodei_job_retries",
            "Attempts that ended with the job queued again",
            metrics.retried.clone(),
        );
        registry.register(
            "hodei_jobs_finished",
            "Jobs by final state",
            metrics.finished.clone(),
        );
        registry.register(
            "hodei_queue_depth",
            "Queued jobs by queue and priority",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "hodei_jobs_running",
            "Jobs assigned or running",
            metrics.running.clone(),
        );
        registry.register(
            "hodei_queue_wait_seconds",
            "Time from entering a queue to being handed to a worker",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "hodei_job_dispatch_seconds",
            "Time from handing a job to a worker to its process running",
            metrics.dispatch_latency.clone(),
        );
        registry.register(
            "hodei_worker_jobs",
            "Attempts workers completed (with hodei_jobs_dispatched: jobs per worker)",
            metrics.jobs_per_worker_total.clone(),
        );
        registry.register(
            "hodei_worker_uses_at_retirement",
            "Jobs a worker ran before it was retired",
            metrics.uses_at_retirement.clone(),
        );
        for state in JobState::ALL.iter().filter(|s| s.is_terminal()) {
            let _ = metrics.finished.get_or_create(&StateLabels {
                state: state.as_str(),
            });
        }
        metrics
    }

    fn charge(&self, tenant: &str, pool: &str, secs: f64, cost_per_hour: f64) {
        self.add_tenant_usage(tenant, pool, secs, cost::cost_of(secs, cost_per_hour));
    }

    fn add_tenant_usage(&self, tenant: &str, pool: &str, secs: f64, cost: f64) {
        let labels = TenantPoolLabels {
            tenant: tenant.to_owned(),
            pool: pool.to_owned(),
        };
        self.tenant_seconds.get_or_create(&labels).inc_by(secs);
        self.tenant_cost.get_or_create(&labels).inc_by(cost);
    }

    /// Starts the tenant counters at the stored totals, so that they survive restarts.
    pub fn restore_tenant_totals(&self, totals: &[AttemptTotals]) {
        for row in totals {
            self.add_tenant_usage(&row.tenant, &row.pool, row.worker_seconds, row.cost);
        }
    }

    fn tenant_started(&self, tenant: &TenantName) {
        self.tenant_started
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .inc();
    }

    fn tenant_rejected(&self, tenant: &TenantName, refused: &AdmissionError) {
        let reason = match refused {
            AdmissionError::NeverFits { .. } => "never_fits",
            AdmissionError::QueueFull { .. } => "queue_full",
            AdmissionError::UnknownTenant(_) => "unknown_tenant",
        };
        self.tenant_rejections
            .get_or_create(&TenantReasonLabels {
                tenant: tenant.to_string(),
                reason,
            })
            .inc();
    }

    fn stale(&self, kind: &'static str) {
        self.stale_reports.get_or_create(&KindLabels { kind }).inc();
    }

    fn lost(&self, because: LostBecause) {
        let kind = match because {
            LostBecause::WorkerDead => "worker_dead",
            LostBecause::Silent => "silent",
            LostBecause::NotRunning => "not_running",
        };
        self.lost_attempts.get_or_create(&KindLabels { kind }).inc();
    }

    fn finished(&self, state: JobState) {
        self.finished
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str) -> WorkerId {
        WorkerId::new(name).unwrap()
    }

    fn accepted(job: &str) -> Event {
        Event::Accepted {
            worker_id: worker("w"),
            job_id: job.into(),
            attempt: 1,
        }
    }

    fn result(job: &str) -> Event {
        Event::Result {
            worker_id: worker("w"),
            job_id: job.into(),
            attempt: 1,
            outcome: AttemptOutcome::Exited(0),
            healthy: true,
        }
    }

    /// Each part as (accepted jobs, result jobs), or `None` for another event.
    fn shape(parts: &[Part]) -> Vec<Option<(Vec<&str>, Vec<&str>)>> {
        parts
            .iter()
            .map(|part| match part {
                Part::Reports(run) => Some((
                    run.accepted
                        .iter()
                        .map(|(_, job, _)| job.as_str())
                        .collect(),
                    run.results.iter().map(|end| end.job_id.as_str()).collect(),
                )),
                Part::Other(_) => None,
            })
            .collect()
    }

    #[test]
    fn interleaved_reports_are_gathered_by_kind_up_to_another_event() {
        let (reply, _answer) = oneshot::channel();
        let events = vec![
            accepted("a"),
            result("b"),
            accepted("c"),
            result("a"),
            Event::Cancel {
                id: JobId::new("j").unwrap(),
                reply,
            },
            result("c"),
        ];
        assert_eq!(
            shape(&batch_by_kind(events)),
            vec![
                Some((vec!["a", "c"], vec!["b", "a"])),
                None,
                Some((vec![], vec!["c"])),
            ]
        );
    }
}
