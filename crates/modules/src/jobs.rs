//! Jobs in flight: submission with backpressure, the queues, matching idle workers, dispatch
//! over the agents' sessions, results, cancellation, and recovery after a restart.
//!
//! One task, the dispatcher, owns all of it and applies events one at a time, so no two
//! code paths can move the same job; every change is written to the store before anyone
//! (a client, an agent) is told. The decisions come from `hodei_core`: queue order
//! (`queue`), who runs what (`matching::plan_dispatch`), what an attempt's end means
//! (`job::after_attempt`), when an attempt in flight is given up on and whether a report is
//! about the attempt in flight (`fence::judge`, `fence::classify_report`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use hodei_core::cost::{self, AttemptTotals, AttemptUsage};
use hodei_core::fence::{
    self, CurrentAttempt, FencePolicy, InFlight, LostBecause, Presence, Report, Verdict,
};
use hodei_core::job::{AttemptOutcome, after_attempt};
use hodei_core::matching::{self, IdleWorker};
use hodei_core::tenancy::{
    self, AdmissionError, BurstState, DailyCost, FairShare, Resource, StartWindow, Tenants, Usage,
};
use hodei_core::{
    Job, JobId, JobSpec, JobState, QueueConfig, QueueEntry, QueueError, Queues, Requirements,
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
    Tenants(Box<Tenants>),
    TenantStatus {
        reply: oneshot::Sender<Vec<TenantStatus>>,
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
    /// `cancel`. Retired workers are announced on the returned receiver.
    pub async fn start(
        config: JobServiceConfig,
        store: Arc<dyn Store>,
        registry: Arc<SchedulerRegistry>,
        link: Arc<dyn AgentLink>,
        metrics: JobMetrics,
        cancel: CancellationToken,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Retired>), JobError> {
        let queues = Queues::new(config.queues.clone())?;
        let (events, inbox) = mpsc::channel(4096);
        let (retired, retirements) = mpsc::unbounded_channel();
        let (changed, changes) = watch::channel(0);
        let activity = Activity::default();
        let (usage, usage_rows) = mpsc::unbounded_channel();
        tokio::spawn(write_usage(store.clone(), usage_rows));
        let mut dispatcher = Dispatcher {
            activity: activity.clone(),
            changed,
            config,
            store: store.clone(),
            registry,
            link,
            metrics,
            queues,
            jobs: HashMap::new(),
            slots: HashMap::new(),
            cancel_requested: HashSet::new(),
            logs: Vec::new(),
            retired,
            arrived: Vec::new(),
            ran: Vec::new(),
            fair: FairShare::default(),
            bursts: BTreeMap::new(),
            daily_cost: DailyCost::default(),
            starts: StartWindow::default(),
            dead: HashSet::new(),
            started: Instant::now(),
            usage,
            sla: sla_tracking::SlaState::default(),
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
    pub async fn submit(&self, spec: JobSpec) -> Result<Job, JobError> {
        spec.validate()?;
        self.ask(|reply| Event::Submit {
            spec: Box::new(spec),
            reply,
        })
        .await?
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

/// An attempt's end, decided but not yet recorded.
#[derive(Debug)]
struct AttemptEnd {
    /// The job in its next state.
    job: Job,
    /// The state it is recorded in now.
    previous: JobState,
    lost: bool,
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

/// What the dispatcher knows of one worker beyond the registry.
#[derive(Debug, Default)]
struct Slot {
    job: Option<JobId>,
    uses: u32,
    /// Retired (max uses, failed health check) or drained: never matched again.
    retired: bool,
    /// When it last became idle; `None` until the dispatcher first sees it.
    idle_since: Option<Instant>,
    /// An assignment could not be delivered, or was not accepted in time; cleared when the
    /// agent connects again.
    unreachable: bool,
}

/// A job not yet ended, and the bookkeeping the store does not need.
#[derive(Debug)]
struct Live {
    job: Job,
    /// When it (re-)entered its queue, for the wait-time histogram.
    queued_at: Instant,
    /// When it was handed to a worker, for the dispatch-latency histogram and the assign
    /// timeout.
    assigned_at: Option<Instant>,
    /// When its agent said it started, for the job's timeout.
    started_at: Option<Instant>,
    /// When its agent reconnected without listing it among its running jobs.
    unconfirmed_since: Option<Instant>,
}

impl Live {
    fn new(job: Job, queued_at: Instant) -> Self {
        Self {
            job,
            queued_at,
            assigned_at: None,
            started_at: None,
            unconfirmed_since: None,
        }
    }

    /// The attempt in flight, for [`fence::classify_report`].
    fn current(&self) -> CurrentAttempt<'_> {
        CurrentAttempt {
            state: self.job.state,
            worker: self.job.worker_id.as_ref(),
            attempt: self.job.attempts,
        }
    }
}

/// Workers busy with a job or cleaning after one; absent means idle (as far as jobs go).
type Activity = Arc<std::sync::Mutex<HashMap<WorkerId, WorkerState>>>;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Dispatcher {
    activity: Activity,
    changed: watch::Sender<u64>,
    config: JobServiceConfig,
    store: Arc<dyn Store>,
    registry: Arc<SchedulerRegistry>,
    link: Arc<dyn AgentLink>,
    metrics: JobMetrics,
    queues: Queues,
    jobs: HashMap<JobId, Live>,
    slots: HashMap<WorkerId, Slot>,
    cancel_requested: HashSet<JobId>,
    logs: Vec<LogChunk>,
    retired: mpsc::UnboundedSender<Retired>,
    /// Since the previous snapshot: submitted jobs' requirements, and (pool, seconds run).
    arrived: Vec<Requirements>,
    ran: Vec<(String, f64)>,
    /// Workers the provider confirmed dead, until they connect again.
    dead: HashSet<WorkerId>,
    /// When the dispatcher started: the silence of workers it has not seen since counts
    /// from here.
    started: Instant,
    /// Virtual time of weighted fair queuing across tenants.
    fair: FairShare,
    /// Tenants bursting or cooling down; absent means ready.
    bursts: BTreeMap<TenantName, BurstState>,
    daily_cost: DailyCost,
    starts: StartWindow,
    /// Ended attempts' usage, to [`write_usage`].
    usage: mpsc::UnboundedSender<AttemptUsage>,
    /// Preemptions under way and missed deadlines counted.
    sla: sla_tracking::SlaState,
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

/// Milliseconds since the Unix epoch: the clock the core's tenancy decisions are given.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

impl Dispatcher {
    /// Rebuilds the queues and the jobs in flight from the store.
    async fn recover(&mut self) -> Result<(), JobError> {
        let now = Instant::now();
        let unfinished = self.store.list_jobs(&JobFilter::unfinished()).await?;
        let (mut queued, mut in_flight) = (0usize, 0usize);
        for job in unfinished {
            let mut live = Live::new(job, now);
            if live.job.state == JobState::Queued {
                if let Err(error) = self.queues.requeue(QueueEntry::from_job(&live.job)) {
                    // A queue removed from the configuration: the job still runs, from the
                    // default queue, rather than being dropped.
                    tracing::warn!(job_id = %live.job.id, %error, "queue of a recovered job is gone, moving it to the default queue");
                    let mut entry = QueueEntry::from_job(&live.job);
                    entry.queue = hodei_core::QueueName::default();
                    if let Err(error) = self.queues.requeue(entry) {
                        tracing::error!(job_id = %live.job.id, %error, "cannot queue a recovered job");
                    }
                }
                queued += 1;
            } else {
                // Its agent has its lease (plus the margin) to reconnect and say it still
                // runs it; the timeouts count from now, as the instants before are unknown.
                live.assigned_at = Some(now);
                if live.job.state == JobState::Running {
                    live.started_at = Some(now);
                }
                if let Some(worker) = &live.job.worker_id {
                    self.slots.entry(worker.clone()).or_default().job = Some(live.job.id.clone());
                    lock(&self.activity).insert(worker.clone(), WorkerState::Busy);
                }
                in_flight += 1;
            }
            self.jobs.insert(live.job.id.clone(), live);
        }
        if queued + in_flight > 0 {
            tracing::info!(queued, in_flight, "recovered unfinished jobs");
        }
        self.update_gauges();
        Ok(())
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Event>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
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
                    self.handle_all(events).await;
                }
                _ = tick.tick() => self.check_deadlines().await,
                // A job becomes boosted or at risk: order and preempt at once, not a tick late.
                () = tokio::time::sleep_until(sla_wake) => self.sla_tick().await,
            }
            self.flush_logs().await;
            self.dispatch().await;
            self.changed.send_modify(|generation| *generation += 1);
        }
        self.flush_logs().await;
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Applies events in order. Runs of submissions, acceptances and results are applied
    /// together, each run with one store commit: with SQLite's fsync per commit, that is what
    /// lets a burst through at thousands of jobs per second.
    async fn handle_all(&mut self, events: Vec<Event>) {
        let mut events = events.into_iter().peekable();
        while let Some(event) = events.next() {
            match event {
                Event::Submit { spec, reply } => {
                    let mut batch = vec![(*spec, reply)];
                    while let Some(Event::Submit { .. }) = events.peek() {
                        if let Some(Event::Submit { spec, reply }) = events.next() {
                            batch.push((*spec, reply));
                        }
                    }
                    self.submit_batch(batch).await;
                }
                Event::Accepted {
                    worker_id,
                    job_id,
                    attempt,
                } => {
                    let mut batch = vec![(worker_id, job_id, attempt)];
                    while let Some(Event::Accepted { .. }) = events.peek() {
                        if let Some(Event::Accepted {
                            worker_id,
                            job_id,
                            attempt,
                        }) = events.next()
                        {
                            batch.push((worker_id, job_id, attempt));
                        }
                    }
                    self.accepted_batch(batch).await;
                }
                Event::Result {
                    worker_id,
                    job_id,
                    attempt,
                    outcome,
                    healthy,
                } => {
                    let mut batch = vec![ReportedEnd {
                        worker_id,
                        job_id,
                        attempt,
                        outcome,
                        healthy,
                    }];
                    while let Some(Event::Result { .. }) = events.peek() {
                        if let Some(Event::Result {
                            worker_id,
                            job_id,
                            attempt,
                            outcome,
                            healthy,
                        }) = events.next()
                        {
                            batch.push(ReportedEnd {
                                worker_id,
                                job_id,
                                attempt,
                                outcome,
                                healthy,
                            });
                        }
                    }
                    // Output first: whoever sees the job ended finds all of it stored.
                    self.flush_logs().await;
                    self.result_batch(batch).await;
                }
                Event::Cancel { id, reply } => {
                    let _ = reply.send(self.cancel(&id).await);
                }
                Event::Explain { id, reply } => {
                    let _ = reply.send(self.explain(&id));
                }
                Event::Connected { worker_id, running } => {
                    let started = self.connected(&worker_id, &running);
                    // Its acceptance of these was lost (a server restart): it runs them.
                    self.accepted_batch(started).await;
                }
                Event::WorkerDead { worker_id } => {
                    tracing::info!(%worker_id, "worker confirmed dead, its attempts are lost now");
                    self.dead.insert(worker_id);
                    self.check_deadlines().await;
                }
                Event::Snapshot { reply } => {
                    let _ = reply.send(self.snapshot());
                }
                Event::Drain { workers, reply } => {
                    let _ = reply.send(self.drain(&workers));
                }
                Event::Pools(settings) => self.config.pools = settings,
                Event::Tenants(tenants) => {
                    self.config.tenants = *tenants;
                    self.update_tenant_gauges();
                }
                Event::TenantStatus { reply } => {
                    let _ = reply.send(self.tenant_status());
                }
                Event::Log { worker_id, chunk } => self.log(&worker_id, chunk),
            }
        }
    }

    /// The shapes of worker that could ever exist: the pools' templates and every
    /// registered worker.
    fn shapes(&self) -> Vec<WorkerCapabilities> {
        self.config
            .pools
            .pool_shapes
            .iter()
            .cloned()
            .chain(
                self.registry
                    .filter_map(|entry| Some(entry.worker.capabilities.clone())),
            )
            .collect()
    }

    /// Checks a submission against its queue's capacity (counting `reserved`, the jobs of
    /// the same batch admitted before it) and the shapes of worker that could hold it, and
    /// makes the job.
    fn admit(
        &self,
        spec: JobSpec,
        shapes: &[WorkerCapabilities],
        reserved: &mut HashMap<hodei_core::QueueName, usize>,
        tenant_reserved: &mut HashMap<TenantName, usize>,
    ) -> Result<Job, JobError> {
        let queue = &spec.queue;
        let (depth, capacity) = match (self.queues.depth(queue), self.queues.capacity(queue)) {
            (Some(depth), Some(capacity)) => (depth, capacity),
            _ => return Err(QueueError::UnknownQueue(queue.clone()).into()),
        };
        let pending = reserved.entry(queue.clone()).or_default();
        if depth + *pending >= capacity {
            self.metrics.rejected.inc();
            return Err(QueueError::Full {
                queue: queue.clone(),
                capacity,
            }
            .into());
        }
        let tenant_pending = tenant_reserved.entry(spec.tenant.clone()).or_default();
        if let Err(refused) = self.config.tenants.admit(
            &spec.tenant,
            &spec.requirements,
            self.queues.tenant_depth(&spec.tenant) + *tenant_pending,
        ) {
            self.metrics.tenant_rejected(&spec.tenant, &refused);
            return Err(refused.into());
        }
        if let Some(why) = matching::exceeds_every_shape(&spec.requirements, shapes) {
            return Err(JobError::Unsatisfiable(why));
        }
        let id = JobId::new(format!("j-{}", uuid::Uuid::new_v4().simple()))?;
        let mut job = Job::new(id, spec, 0, SystemTime::now())?;
        self.stamp_deadline(&mut job);
        *pending += 1;
        *tenant_reserved.entry(job.spec.tenant.clone()).or_default() += 1;
        Ok(job)
    }

    fn snapshot(&mut self) -> JobSnapshot {
        let now = Instant::now();
        let registered: HashSet<WorkerId> = self
            .registry
            .filter_map(|entry| Some(entry.worker.id.clone()))
            .into_iter()
            .collect();
        // Slots of workers gone from the registry and without a job are forgotten.
        self.slots
            .retain(|id, slot| slot.job.is_some() || registered.contains(id));
        let mut snapshot = JobSnapshot {
            // At-risk jobs first, so pools grow for them before anything else.
            queued: hodei_core::sla::demand_order(&self.queues, now_ms(), MAX_SNAPSHOT_QUEUED),
            arrived: std::mem::take(&mut self.arrived),
            ran: std::mem::take(&mut self.ran),
            ..JobSnapshot::default()
        };
        for id in registered {
            let slot = self.slots.entry(id.clone()).or_default();
            if slot.retired {
                snapshot.leaving.insert(id);
            } else if slot.job.is_some() {
                snapshot.busy.insert(id);
            } else {
                snapshot
                    .idle_since
                    .insert(id, *slot.idle_since.get_or_insert(now));
            }
        }
        snapshot
    }

    /// Retires the idle workers among `workers` so nothing is assigned to them again.
    fn drain(&mut self, workers: &[WorkerId]) -> Vec<WorkerId> {
        let mut drained = Vec::new();
        for id in workers {
            let slot = self.slots.entry(id.clone()).or_default();
            if slot.job.is_none() && !slot.retired {
                slot.retired = true;
                drained.push(id.clone());
            }
        }
        drained
    }

    /// Admits, records (one commit) and queues submissions, then answers each.
    async fn submit_batch(
        &mut self,
        batch: Vec<(JobSpec, oneshot::Sender<Result<Job, JobError>>)>,
    ) {
        let shapes = self.shapes();
        let mut reserved = HashMap::new();
        let mut tenant_reserved = HashMap::new();
        let mut admitted = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (spec, reply) in batch {
            match self.admit(spec, &shapes, &mut reserved, &mut tenant_reserved) {
                Ok(job) => {
                    admitted.push(job);
                    replies.push(reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        if admitted.is_empty() {
            return;
        }
        let results = match self.store.insert_jobs(&admitted).await {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(%error, jobs = admitted.len(), "could not record submissions");
                for reply in replies {
                    let failed = store::Error::Unavailable(error.to_string());
                    let _ = reply.send(Err(failed.into()));
                }
                return;
            }
        };
        for (result, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(match result {
                Ok(job) => self.queue_new(job),
                Err(error) => Err(error.into()),
            });
        }
    }

    /// Queues a job just recorded.
    fn queue_new(&mut self, job: Job) -> Result<Job, JobError> {
        // Capacity was checked at admission; an accepted job is never dropped.
        self.queues.requeue(QueueEntry::from_job(&job))?;
        tracing::debug!(job_id = %job.id, queue = %job.spec.queue, priority = job.spec.priority.get(), "job queued");
        self.jobs
            .insert(job.id.clone(), Live::new(job.clone(), Instant::now()));
        self.metrics.submitted.inc();
        if self.arrived.len() < MAX_SNAPSHOT_QUEUED {
            self.arrived.push(job.spec.requirements.clone());
        }
        Ok(job)
    }

    async fn cancel(&mut self, id: &JobId) -> Result<Job, JobError> {
        let Some(live) = self.jobs.get_mut(id) else {
            return match self.store.get_job(id).await? {
                Some(job) => Err(JobError::AlreadyEnded {
                    id: id.clone(),
                    state: job.state,
                }),
                None => Err(JobError::NotFound(id.clone())),
            };
        };
        match live.job.state {
            JobState::Queued => {
                let mut job = live.job.clone();
                job.state = JobState::Cancelled;
                job.reason = Some("cancelled while queued".into());
                job.finished_at = Some(SystemTime::now());
                self.store.update_job(&job, JobState::Queued).await?;
                self.queues.remove(id);
                self.jobs.remove(id);
                self.metrics.finished(JobState::Cancelled);
                Ok(job)
            }
            _ => {
                let job = live.job.clone();
                self.cancel_requested.insert(id.clone());
                if let Some(worker) = &job.worker_id
                    && let Err(error) = self.link.cancel(worker, id, "cancelled by a user").await
                {
                    // The attempt ends as cancelled when the worker is found lost.
                    tracing::info!(job_id = %id, %error, "cancel will apply when the worker's attempt ends");
                }
                Ok(job)
            }
        }
    }

    fn idle_workers(&self) -> Vec<IdleWorker> {
        let now = Instant::now();
        self.registry.filter_map(|entry| {
            // Not heard from for a lease: its agent has fenced itself, and any job given to
            // it would only be lost again.
            let heard = now.saturating_duration_since(entry.last_seen_at) < self.config.fence.lease;
            let idle = entry.connected
                && heard
                && entry.liveness == hodei_core::health::Liveness::Healthy
                && entry.draining.is_none()
                && !self.dead.contains(&entry.worker.id)
                && self
                    .slots
                    .get(&entry.worker.id)
                    .is_none_or(|slot| slot.job.is_none() && !slot.retired && !slot.unreachable);
            idle.then(|| IdleWorker::from(&entry.worker))
        })
    }

    /// What each tenant holds now: jobs assigned or running, and today's cost.
    fn usage(&mut self, now_ms: u64) -> BTreeMap<TenantName, Usage> {
        let mut usage: BTreeMap<TenantName, Usage> = BTreeMap::new();
        for live in self.jobs.values() {
            if matches!(live.job.state, JobState::Assigned | JobState::Running) {
                usage
                    .entry(live.job.spec.tenant.clone())
                    .or_default()
                    .add_job(&live.job.spec.requirements);
            }
        }
        let tenants: Vec<TenantName> = self.queues.tenants().chain(usage.keys()).cloned().collect();
        for tenant in tenants {
            let spent = self.daily_cost.spent(&tenant, now_ms);
            usage.entry(tenant).or_default().daily_cost = spent;
        }
        usage
    }

    /// Moves each tenant's burst state on, given what it holds now.
    fn update_bursts(&mut self, usage: &BTreeMap<TenantName, Usage>, now_ms: u64) {
        let policy = self.config.tenants.burst;
        let names: std::collections::BTreeSet<TenantName> =
            usage.keys().chain(self.bursts.keys()).cloned().collect();
        for name in names {
            let over = match (self.config.tenants.get(&name), usage.get(&name)) {
                (Some(tenant), Some(held)) => held.over_soft(&tenant.quotas),
                _ => false,
            };
            let state = self.bursts.get(&name).copied().unwrap_or_default();
            match state.next(over, &policy, now_ms) {
                BurstState::Ready => {
                    self.bursts.remove(&name);
                }
                next => {
                    if next != state {
                        tracing::info!(tenant = %name, from = state.as_str(), to = next.as_str(), "tenant burst state changed");
                    }
                    self.bursts.insert(name, next);
                }
            }
        }
    }

    fn tenant_status(&mut self) -> Vec<TenantStatus> {
        let now_ms = now_ms();
        let mut usage = self.usage(now_ms);
        let (started, total) = self.starts.counts(now_ms);
        let names: std::collections::BTreeSet<TenantName> = usage
            .keys()
            .chain(started.keys())
            .chain(self.config.tenants.configured.keys())
            .cloned()
            .collect();
        names
            .into_iter()
            .map(|tenant| {
                let count = started.get(&tenant).copied().unwrap_or(0);
                TenantStatus {
                    usage: usage.remove(&tenant).unwrap_or_default(),
                    queued: self.queues.tenant_depth(&tenant),
                    burst: self.bursts.get(&tenant).copied().unwrap_or_default(),
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

    /// Why a queued job waits because of its tenant's quotas, if it does.
    fn quota_reason(&mut self, job: &Job) -> Option<String> {
        let now_ms = now_ms();
        let usage = self
            .usage(now_ms)
            .remove(&job.spec.tenant)
            .unwrap_or_default();
        let Some(tenant) = self.config.tenants.get(&job.spec.tenant) else {
            return Some(format!(
                "tenant {} is not configured (tenants.auto_create is off)",
                job.spec.tenant
            ));
        };
        let burst = self
            .bursts
            .get(&job.spec.tenant)
            .copied()
            .unwrap_or_default();
        let factor = burst
            .may_burst(&self.config.tenants.burst, now_ms)
            .then_some(self.config.tenants.burst.factor);
        // Held to its limits first; past a soft one only while others leave workers idle.
        match tenancy::check_start(&tenant, &usage, &job.spec.requirements, None) {
            Ok(_) => None,
            Err(strict) => {
                match tenancy::check_start(&tenant, &usage, &job.spec.requirements, factor) {
                    Ok(_) => Some(format!("{strict}; may burst when workers are idle")),
                    Err(at_quota) => Some(at_quota.to_string()),
                }
            }
        }
    }

    fn explain(&mut self, id: &JobId) -> Option<String> {
        let job = self
            .jobs
            .get(id)
            .filter(|live| live.job.state == JobState::Queued)?
            .job
            .clone();
        if let Some(reason) = self.quota_reason(&job) {
            return Some(reason);
        }
        let live = self.jobs.get(id)?;
        (live.job.state == JobState::Queued).then(|| {
            let idle = self.idle_workers();
            let all = self
                .registry
                .filter_map(|entry| Some(IdleWorker::from(&entry.worker)));
            matching::why_waiting(
                &live.job.spec.requirements,
                &idle,
                all.iter().map(|w| (&w.capabilities, &w.labels)),
            )
        })
    }

    async fn dispatch(&mut self) {
        if self.queues.is_empty() {
            return;
        }
        let idle = self.idle_workers();
        if idle.is_empty() {
            return;
        }
        let now_ms = now_ms();
        let mut usage = self.usage(now_ms);
        let plan = tenancy::plan_fair_dispatch(
            &self.queues,
            &idle,
            &self.config.tenants,
            &mut usage,
            &self.bursts,
            &mut self.fair,
            now_ms,
        );
        if !plan.bursts.is_empty() {
            tracing::debug!(jobs = plan.bursts.len(), "starts past soft quotas (burst)");
        }
        // Every assignment of the plan is recorded with one commit, then sent.
        let mut updates = Vec::with_capacity(plan.assignments.len());
        for (job_id, worker_id) in plan.assignments {
            let Some(live) = self.jobs.get(&job_id) else {
                self.queues.remove(&job_id);
                continue;
            };
            let mut job = live.job.clone();
            job.state = JobState::Assigned;
            job.attempts += 1;
            job.worker_id = Some(worker_id);
            job.first_started_at.get_or_insert_with(SystemTime::now);
            updates.push((job, JobState::Queued));
        }
        let results = match self.store.update_jobs(&updates).await {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(%error, jobs = updates.len(), "could not record assignments, will try again");
                return;
            }
        };
        for ((job, _), result) in updates.into_iter().zip(results) {
            if log_store_error("an assignment", &job.id, result).is_some() {
                if self
                    .jobs
                    .get(&job.id)
                    .is_some_and(|live| live.job.first_started_at.is_none())
                {
                    self.sla_first_start(&job);
                }
                self.starts.record(&job.spec.tenant, now_ms);
                self.metrics.tenant_started(&job.spec.tenant);
                self.assigned(job).await;
            }
        }
        // Burst states follow what tenants hold after this pass's starts (as planned; the
        // next tick corrects any start that could not be recorded).
        self.update_bursts(&usage, now_ms);
        self.update_gauges();
    }

    /// A recorded assignment: bookkeeping, then the message to the agent.
    async fn assigned(&mut self, job: Job) {
        let job_id = job.id.clone();
        let Some(worker_id) = job.worker_id.clone() else {
            return;
        };
        let Some(live) = self.jobs.get_mut(&job_id) else {
            return;
        };
        self.queues.remove(&job_id);
        let now = Instant::now();
        let waited = now.duration_since(live.queued_at).as_secs_f64();
        self.metrics.queue_wait.observe(waited);
        self.metrics
            .tenant_queue_wait
            .get_or_create(&TenantLabels {
                tenant: job.spec.tenant.to_string(),
            })
            .observe(waited);
        live.job = job;
        live.assigned_at = Some(now);
        live.started_at = None;
        live.unconfirmed_since = None;
        let slot = self.slots.entry(worker_id.clone()).or_default();
        slot.job = Some(job_id.clone());
        self.metrics.dispatched.inc();
        if slot.uses > 0 {
            self.metrics.reused.inc();
        }
        let job = live.job.clone();
        self.worker_state(&worker_id, WorkerState::Busy);
        if let Err(error) = self.link.assign(&worker_id, &job).await {
            tracing::info!(%job_id, %worker_id, %error, "assignment not delivered, queueing the job again");
            self.undeliverable(&job_id, &worker_id).await;
        }
    }

    /// The assignment never reached the worker: the job goes back to its queue without
    /// spending an attempt, and the worker gets no work until its agent connects again.
    async fn undeliverable(&mut self, job_id: &JobId, worker_id: &WorkerId) {
        let slot = self.slots.entry(worker_id.clone()).or_default();
        slot.job = None;
        slot.unreachable = true;
        lock(&self.activity).remove(worker_id);
        let reason = format!("worker {worker_id} was not reachable, requeued");
        self.withdraw(job_id, reason).await;
    }

    /// Takes an assignment back before it started: the job goes back to its queue with the
    /// attempt counted as withdrawn (its number is never reused, its retry is not spent).
    async fn withdraw(&mut self, job_id: &JobId, reason: String) -> bool {
        let Some(live) = self.jobs.get_mut(job_id) else {
            return false;
        };
        if live.job.state != JobState::Assigned {
            return false;
        }
        let mut job = live.job.clone();
        job.state = JobState::Queued;
        job.withdrawn = job.withdrawn.saturating_add(1);
        job.reason = Some(reason);
        if log_store_error(
            "a requeue",
            job_id,
            self.store.update_job(&job, JobState::Assigned).await,
        )
        .is_none()
        {
            // The attempt stands as recorded; the deadline check comes back to it.
            return false;
        }
        live.job = job;
        live.assigned_at = None;
        live.started_at = None;
        live.unconfirmed_since = None;
        if let Err(error) = self.queues.requeue(QueueEntry::from_job(&live.job)) {
            tracing::error!(%job_id, %error, "cannot queue a job again");
        }
        true
    }

    /// An agent (re)connected listing the jobs it runs. Returns those of its jobs still
    /// recorded as assigned, as acceptances to apply.
    fn connected(
        &mut self,
        worker_id: &WorkerId,
        running: &[String],
    ) -> Vec<(WorkerId, String, u32)> {
        let mut started = Vec::new();
        let now = Instant::now();
        self.dead.remove(worker_id);
        if let Some(slot) = self.slots.get_mut(worker_id) {
            slot.unreachable = false;
        }
        {
            // Marked unhealthy for an assignment it never accepted: a new session, a new chance.
            let mut activity = lock(&self.activity);
            if activity.get(worker_id) == Some(&WorkerState::Unhealthy) {
                activity.remove(worker_id);
            }
        }
        for live in self.jobs.values_mut() {
            if live.job.worker_id.as_ref() != Some(worker_id)
                || !matches!(live.job.state, JobState::Assigned | JobState::Running)
            {
                continue;
            }
            if running.iter().any(|id| id == live.job.id.as_str()) {
                live.unconfirmed_since = None;
                if live.job.state == JobState::Assigned {
                    started.push((
                        worker_id.clone(),
                        live.job.id.to_string(),
                        live.job.attempts,
                    ));
                }
            } else {
                // Its result may still be on its way; if not, it is lost.
                live.unconfirmed_since = Some(now);
            }
        }
        started
    }

    /// The job `job_id` if `attempt` of it is in flight on `worker_id`
    /// ([`fence::classify_report`]); `None` for a stale report.
    fn in_flight_on(
        &mut self,
        worker_id: &WorkerId,
        job_id: &str,
        attempt: u32,
    ) -> Option<&mut Live> {
        let id = JobId::new(job_id).ok()?;
        let live = self.jobs.get_mut(&id)?;
        match fence::classify_report(Some(live.current()), worker_id, attempt) {
            Report::Current => Some(live),
            Report::Stale => None,
        }
    }

    /// Agents started these jobs: each moves from assigned to running, with one commit.
    /// An agent that started a numbered attempt the dispatcher gave up on is told to stop it.
    async fn accepted_batch(&mut self, batch: Vec<(WorkerId, String, u32)>) {
        let mut updates: Vec<(Job, JobState)> = Vec::with_capacity(batch.len());
        for (worker_id, job_id, attempt) in batch {
            let Some(live) = self.in_flight_on(&worker_id, &job_id, attempt) else {
                self.metrics.stale("accepted");
                // Attempt 0: not one of the dispatcher's assignments (or an agent that does
                // not number them); nothing to stop on its behalf.
                if attempt == 0 {
                    tracing::debug!(%worker_id, job_id, "ignoring an acceptance of an unknown attempt");
                    continue;
                }
                tracing::warn!(%worker_id, job_id, attempt, "stale job acceptance, telling the agent to stop it");
                if let Ok(id) = JobId::new(job_id.clone()) {
                    let _ = self
                        .link
                        .cancel(&worker_id, &id, "this attempt was given up on")
                        .await;
                }
                continue;
            };
            if live.job.state != JobState::Assigned
                || updates.iter().any(|(job, _)| job.id == live.job.id)
            {
                continue;
            }
            let mut job = live.job.clone();
            job.state = JobState::Running;
            job.started_at = Some(SystemTime::now());
            if let Some(assigned_at) = live.assigned_at {
                self.metrics
                    .dispatch_latency
                    .observe(assigned_at.elapsed().as_secs_f64());
            }
            updates.push((job, JobState::Assigned));
        }
        if updates.is_empty() {
            return;
        }
        let results = match self.store.update_jobs(&updates).await {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(%error, jobs = updates.len(), "could not record job starts");
                return;
            }
        };
        for ((job, _), result) in updates.into_iter().zip(results) {
            if log_store_error("a job start", &job.id, result).is_some()
                && let Some(live) = self.jobs.get_mut(&job.id)
            {
                live.job = job;
                live.started_at = Some(Instant::now());
            }
        }
    }

    fn log(&mut self, worker_id: &WorkerId, mut chunk: LogChunk) {
        let Some(live) = self.in_flight_on(worker_id, chunk.job_id.as_str(), chunk.attempt) else {
            self.metrics.stale("log");
            return;
        };
        chunk.attempt = live.job.attempts;
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

    /// Attempts that agents report ended: each job's next state is recorded (one commit for
    /// all), then workers are freed or retired and jobs with attempts left requeued.
    async fn result_batch(&mut self, batch: Vec<ReportedEnd>) {
        let mut ends = Vec::with_capacity(batch.len());
        for ReportedEnd {
            worker_id,
            job_id,
            attempt,
            outcome,
            healthy,
        } in batch
        {
            let Some(live) = self.in_flight_on(&worker_id, &job_id, attempt) else {
                // Never the job's result: the attempt was given up on (and maybe retried).
                tracing::warn!(%worker_id, job_id, attempt, ?outcome, "stale job result recorded, not applied");
                self.metrics.stale("result");
                continue;
            };
            let id = live.job.id.clone();
            if ends.iter().any(|end: &AttemptEnd| end.job.id == id) {
                continue;
            }
            if let Some(end) = self.attempt_end(&id, outcome, healthy) {
                ends.push(end);
            }
        }
        self.record_ends(ends).await;
    }

    /// Ends the current attempt of `id` with `outcome` (a lost worker, an undelivered
    /// assignment): see [`Dispatcher::record_ends`].
    async fn end_attempt(&mut self, id: &JobId, outcome: AttemptOutcome, healthy: bool) {
        if let Some(end) = self.attempt_end(id, outcome, healthy) {
            self.record_ends(vec![end]).await;
        }
    }

    /// What the end of the current attempt of `id` means for the job.
    fn attempt_end(
        &self,
        id: &JobId,
        outcome: AttemptOutcome,
        healthy: bool,
    ) -> Option<AttemptEnd> {
        let live = self.jobs.get(id)?;
        let lost = outcome == AttemptOutcome::WorkerLost;
        let outcome = if lost && self.cancel_requested.contains(id) {
            AttemptOutcome::Cancelled
        } else {
            outcome
        };
        let outcome = self.preempted_outcome(id, outcome);
        let previous = live.job.state;
        let (next, reason) = after_attempt(&live.job, outcome.clone());
        let mut job = live.job.clone();
        if matches!(outcome, AttemptOutcome::Preempted(_)) {
            job.preempted = job.preempted.saturating_add(1);
        }
        job.state = next;
        job.reason = reason;
        if let AttemptOutcome::Exited(code) = outcome {
            job.exit_code = Some(code);
        }
        if next.is_terminal() {
            job.finished_at = Some(SystemTime::now());
        }
        Some(AttemptEnd {
            job,
            previous,
            lost,
            healthy,
        })
    }

    /// Records the jobs' next states with one commit, then frees (or retires) their workers
    /// and requeues the jobs that have attempts left.
    async fn record_ends(&mut self, ends: Vec<AttemptEnd>) {
        if ends.is_empty() {
            return;
        }
        let updates: Vec<(Job, JobState)> = ends
            .iter()
            .map(|end| (end.job.clone(), end.previous))
            .collect();
        let results = match self.store.update_jobs(&updates).await {
            Ok(results) => results,
            Err(error) => {
                // Nothing changed in memory: the results come again (a reconnecting agent
                // resends them) or the deadline check finds the attempts lost.
                tracing::error!(%error, jobs = ends.len(), "could not record job results");
                return;
            }
        };
        let mut usage = Vec::new();
        for (end, result) in ends.into_iter().zip(results) {
            let id = end.job.id.clone();
            if log_store_error("a job result", &id, result).is_none() {
                continue;
            }
            let Some(live) = self.jobs.get_mut(&id) else {
                continue;
            };
            let job = end.job;
            let next = job.state;
            self.sla.preempting.remove(&id);
            if let (Some(worker), Some(assigned_at)) = (&job.worker_id, live.assigned_at) {
                let secs = assigned_at.elapsed().as_secs_f64();
                if let Some(pool) = self
                    .registry
                    .get(worker)
                    .and_then(|entry| entry.worker.metadata.pool)
                {
                    let rate = self
                        .config
                        .pools
                        .cost_per_hour
                        .get(&pool)
                        .copied()
                        .unwrap_or(0.0);
                    self.metrics
                        .charge(job.spec.tenant.as_str(), &pool, secs, rate);
                    usage.push(AttemptUsage {
                        job_id: id.to_string(),
                        attempt: job.attempts,
                        tenant: job.spec.tenant.to_string(),
                        queue: job.spec.queue.to_string(),
                        pool: pool.clone(),
                        worker_id: worker.to_string(),
                        ended_at_ms: crate::pools::unix_ms(SystemTime::now()),
                        worker_seconds: secs,
                        cost: cost::cost_of(secs, rate),
                    });
                    self.daily_cost
                        .charge(&job.spec.tenant, secs * rate / 3600.0, now_ms());
                    if self.ran.len() < MAX_SNAPSHOT_QUEUED {
                        self.ran.push((pool, secs));
                    }
                }
            }
            tracing::debug!(job_id = %id, worker_id = ?job.worker_id, state = %next, reason = ?job.reason, "attempt ended");
            let worker = job.worker_id.clone();
            if next == JobState::Queued {
                // A preemption is not a retry.
                let retried = job.preempted == live.job.preempted;
                live.job = job;
                live.queued_at = Instant::now();
                live.assigned_at = None;
                live.started_at = None;
                live.unconfirmed_since = None;
                if let Err(error) = self.queues.requeue(QueueEntry::from_job(&live.job)) {
                    tracing::error!(job_id = %id, %error, "cannot queue a job again");
                }
                if retried {
                    self.metrics.retried.inc();
                }
            } else {
                self.jobs.remove(&id);
                self.cancel_requested.remove(&id);
                self.metrics.finished(next);
            }
            if let Some(worker) = worker {
                self.release(&worker, end.lost, end.healthy).await;
            }
        }
        for row in usage {
            // The writer lives as long as the service; a send fails only at shutdown.
            let _ = self.usage.send(row);
        }
    }

    /// The worker finished an attempt: clean and idle again, or retired.
    async fn release(&mut self, worker_id: &WorkerId, lost: bool, healthy: bool) {
        let slot = self.slots.entry(worker_id.clone()).or_default();
        slot.job = None;
        if lost {
            // Nothing ran to the end there; what the worker does next is up to its agent.
            lock(&self.activity).remove(worker_id);
            return;
        }
        slot.uses += 1;
        let uses = slot.uses;
        self.metrics.jobs_per_worker_total.inc();
        let pool = self
            .registry
            .get(worker_id)
            .and_then(|entry| entry.worker.metadata.pool);
        let limit = pool
            .as_ref()
            .and_then(|pool| self.config.pools.max_uses.get(pool).copied());
        let retire = if !healthy {
            Some("failed its health check after a job".to_owned())
        } else if limit.is_some_and(|limit| uses >= limit) {
            Some(format!("ran {uses} jobs, its pool's max_uses"))
        } else {
            None
        };
        self.worker_state(worker_id, WorkerState::Cleaning);
        match retire {
            None => {
                if let Some(slot) = self.slots.get_mut(worker_id) {
                    slot.idle_since = Some(Instant::now());
                }
                self.worker_state(worker_id, WorkerState::Idle);
            }
            Some(reason) => {
                if let Some(slot) = self.slots.get_mut(worker_id) {
                    slot.retired = true;
                }
                self.metrics.uses_at_retirement.observe(f64::from(uses));
                tracing::info!(%worker_id, %reason, "retiring worker");
                let _ = self.retired.send(Retired {
                    worker_id: worker_id.clone(),
                    reason,
                });
            }
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

    /// What the dispatcher knows of the worker of an attempt, for [`fence::judge`].
    fn presence(&self, worker: Option<&WorkerId>) -> Presence {
        let Some(worker) = worker else {
            return Presence::Dead;
        };
        if self.dead.contains(worker) {
            return Presence::Dead;
        }
        match self.registry.get(worker) {
            Some(entry) if entry.connected => Presence::Connected {
                last_heard: entry.last_seen_at.max(self.started).into_std(),
            },
            Some(entry) => Presence::Disconnected {
                since: entry.last_seen_at.max(self.started).into_std(),
            },
            None => Presence::Disconnected {
                since: self.started.into_std(),
            },
        }
    }

    /// Judges every attempt in flight ([`fence::judge`]) and applies the verdicts: lost
    /// attempts end as worker losses, late assignments are withdrawn, overdue jobs end as
    /// timed out; the agent is told to stop whatever it might still run of them.
    async fn check_deadlines(&mut self) {
        let now_ms = now_ms();
        let usage = self.usage(now_ms);
        self.update_bursts(&usage, now_ms);
        // Per-tenant gauges once per tick, not per dispatch pass: they cost a walk over
        // the tenants and the jobs in flight.
        self.update_tenant_gauges();
        let now = Instant::now();
        let mut verdicts = Vec::new();
        for live in self.jobs.values() {
            if !matches!(live.job.state, JobState::Assigned | JobState::Running) {
                continue;
            }
            let in_flight = InFlight {
                state: live.job.state,
                assigned_at: live.assigned_at.unwrap_or(now).into_std(),
                started_at: live.started_at.map(Instant::into_std),
                timeout: live.job.spec.timeout,
                presence: self.presence(live.job.worker_id.as_ref()),
                unconfirmed_since: live.unconfirmed_since.map(Instant::into_std),
            };
            let verdict = fence::judge(&in_flight, &self.config.fence, now.into_std());
            if !matches!(verdict, Verdict::Wait { .. }) {
                verdicts.push((live.job.id.clone(), live.job.worker_id.clone(), verdict));
            }
        }
        for (id, worker, verdict) in verdicts {
            self.apply_verdict(&id, worker, verdict).await;
        }
        self.sla_tick().await;
        self.update_gauges();
    }

    async fn apply_verdict(&mut self, id: &JobId, worker: Option<WorkerId>, verdict: Verdict) {
        // Whatever the verdict, the worker (if it is there at all) must not run the attempt
        // any more.
        let link = self.link.clone();
        let stop = |reason: &'static str| {
            let (link, worker, id) = (link.clone(), worker.clone(), id.clone());
            async move {
                if let Some(worker) = worker {
                    let _ = link.cancel(&worker, &id, reason).await;
                }
            }
        };
        match verdict {
            Verdict::Wait { .. } => {}
            Verdict::Lost(because) => {
                tracing::warn!(job_id = %id, worker_id = ?worker, because = because.as_str(), "the attempt is lost");
                self.metrics.lost(because);
                // A silent agent whose session is still open (frozen, or its network is
                // gone one way) hears it if it ever comes back; it will have fenced itself.
                let connected = worker
                    .as_ref()
                    .and_then(|w| self.registry.get(w))
                    .is_some_and(|entry| entry.connected);
                if because != LostBecause::WorkerDead && connected {
                    stop("the server gave up on this attempt").await;
                }
                self.end_attempt(id, AttemptOutcome::WorkerLost, true).await;
            }
            Verdict::TimedOut => {
                tracing::warn!(job_id = %id, worker_id = ?worker, "the job ran past its timeout and its agent never said so, ending it");
                stop("timed out (enforced by the server)").await;
                if let Some(end) = self.attempt_end(id, AttemptOutcome::TimedOut, true) {
                    // Its agent does not enforce timeouts: no more work for it until it
                    // reconnects.
                    let end = AttemptEnd { lost: true, ..end };
                    self.record_ends(vec![end]).await;
                }
                if let Some(worker) = &worker {
                    self.slots.entry(worker.clone()).or_default().unreachable = true;
                }
                self.metrics.server_timeouts.inc();
            }
            Verdict::Withdraw => {
                let Some(worker) = worker.clone() else {
                    return;
                };
                let reason = format!(
                    "not accepted by worker {worker} within {:?}, requeued",
                    self.config.fence.assign_timeout
                );
                tracing::warn!(job_id = %id, worker_id = %worker, "assignment not accepted in time, withdrawing it and marking the worker unhealthy");
                if self.withdraw(id, reason).await {
                    let slot = self.slots.entry(worker.clone()).or_default();
                    slot.job = None;
                    slot.unreachable = true;
                    self.worker_state(&worker, WorkerState::Unhealthy);
                    self.metrics.withdrawn.inc();
                    stop("assignment withdrawn: not accepted in time").await;
                }
            }
        }
    }

    fn update_gauges(&mut self) {
        self.metrics.queue_depth.clear();
        for ((queue, priority), depth) in self.queues.depth_by_priority() {
            self.metrics
                .queue_depth
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                    priority: priority.get().to_string(),
                })
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        for queue in self.queues.names() {
            let _ = self.metrics.queue_depth.get_or_create(&QueueLabels {
                queue: queue.to_string(),
                priority: "all".into(),
            });
        }
        let running = self
            .jobs
            .values()
            .filter(|live| matches!(live.job.state, JobState::Assigned | JobState::Running))
            .count();
        self.metrics
            .running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    fn update_tenant_gauges(&mut self) {
        let now_ms = now_ms();
        let usage = self.usage(now_ms);
        let metrics = &self.metrics;
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
            .chain(self.config.tenants.configured.keys())
            .chain(self.queues.tenants())
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
                .set(i64::try_from(self.queues.tenant_depth(name)).unwrap_or(i64::MAX));
            let bursting = matches!(self.bursts.get(name), Some(BurstState::Active { .. }));
            metrics
                .tenant_burst
                .get_or_create(&labels)
                .set(i64::from(bursting));
            let quotas = self
                .config
                .tenants
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
