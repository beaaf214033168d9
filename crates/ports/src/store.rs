//! The store: durable memory of workers and pools, so a restart forgets nothing.
//!
//! Every state change goes through [`Store::transition_worker`], which checks the core
//! lifecycle state machine and writes atomically, so two writers cannot both move a worker.

use std::time::SystemTime;

use async_trait::async_trait;
use hodei_core::cost::{AttemptTotals, AttemptUsage, PoolUsage};
use hodei_core::credential::{Role, WorkerOrigin};
use hodei_core::lease::{Lease, Member};
use hodei_core::pool_pass::ArrivalProfile;
use hodei_core::tenancy::Tenant;
use hodei_core::{
    AfterDrain, Job, JobId, JobState, JobTransitionError, PoolSpec, QueueName, TenantName,
    TransitionError, Worker, WorkerId, WorkerState,
};

/// A worker and what we know of its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub worker: Worker,
    pub state: WorkerState,
    /// Whether the scheduler confirmed the registration the last time we tried.
    pub registered: bool,
    pub updated_at: SystemTime,
}

/// A stored credential. The store never sees a secret: only its SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Public id, part of the token (`hodei_<id>_<secret>`).
    pub id: String,
    pub role: Role,
    /// For worker credentials: the worker, and how its credential came to be.
    pub worker_id: Option<WorkerId>,
    pub origin: Option<WorkerOrigin>,
    /// For tenant credentials: the tenant.
    pub tenant: Option<TenantName>,
    /// What the operator wrote when creating it.
    pub description: String,
    /// The credential that minted this one (an agent token enrolling a worker); revoking
    /// it revokes this one too.
    pub issued_by: Option<String>,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    pub created_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
}

/// Which workers [`Store::list_workers`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerFilter {
    /// Only workers of this pool.
    pub pool: Option<String>,
    /// Leave out terminated workers.
    pub live_only: bool,
}

impl WorkerFilter {
    pub fn live() -> Self {
        Self {
            pool: None,
            live_only: true,
        }
    }
}

/// Which jobs [`Store::list_jobs`] returns. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in one of these states.
    pub states: Vec<JobState>,
    pub tenant: Option<TenantName>,
    pub queue: Option<QueueName>,
    /// Only jobs whose current or last attempt ran on this worker.
    pub worker_id: Option<WorkerId>,
    /// Only jobs of this SLA class.
    pub sla_class: Option<hodei_core::SlaClass>,
    /// At most this many, newest (highest sequence) first when set; all, oldest first, when
    /// `None`.
    pub limit: Option<usize>,
}

impl JobFilter {
    /// Jobs not yet finished: queued, assigned or running.
    pub fn unfinished() -> Self {
        Self {
            states: vec![JobState::Queued, JobState::Assigned, JobState::Running],
            ..Self::default()
        }
    }
}

/// Which output a log chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Standard output and standard error together, in the order the job wrote them (the
    /// job had one pipe for both).
    Output,
}

impl LogStream {
    /// `stdout`, `stderr` or `output`: the name the store and both APIs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Output => "output",
        }
    }

    /// The stream named by [`LogStream::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "output" => Some(Self::Output),
            _ => None,
        }
    }
}

/// A piece of a job's output. `sequence` increases by one per chunk of one attempt; chunks
/// are stored once per (job, attempt, sequence), so a chunk re-sent after a reconnect is
/// not duplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub job_id: JobId,
    pub attempt: u32,
    pub sequence: u64,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("worker {0} not found")]
    WorkerNotFound(WorkerId),
    #[error(transparent)]
    IllegalTransition(#[from] TransitionError),
    #[error("worker {0} already exists")]
    WorkerExists(WorkerId),
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("pool {0} already exists")]
    PoolExists(String),
    #[error("credential {0} already exists")]
    CredentialExists(String),
    #[error("job {0} already exists")]
    JobExists(JobId),
    #[error(transparent)]
    IllegalJobTransition(#[from] JobTransitionError),
    /// A compare-and-set update found the job in another state than expected: someone else
    /// moved it first (a result recorded twice, a cancel racing a dispatch).
    #[error("job {job_id} is {actual}, not {expected}")]
    JobStateConflict {
        job_id: JobId,
        expected: JobState,
        actual: JobState,
    },
    /// The database could not be reached or is busy. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row could not be decoded: a bug or a hand-edited database.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A job write fenced with a leader epoch that is no longer the lease's: another replica
    /// leads now, and this server must stop dispatching. Nothing was written.
    #[error("fenced: this server led with epoch {ours}, the leader lease is at epoch {current}")]
    Fenced { ours: u64, current: u64 },
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Durable state. Implemented by SQLite and PostgreSQL in `hodei-store` and in
/// memory by `hodei-testkit`; all pass `hodei_testkit::store_contract`.
#[async_trait]
pub trait Store: Send + Sync {
    /// Records a new worker in `state` (normally `Provisioning`). Fails with
    /// [`Error::WorkerExists`] when the id is taken, whatever the existing state.
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error>;

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error>;

    /// Workers matching `filter`, ordered by id.
    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error>;

    /// Moves a worker to `to` if the lifecycle allows it from its current state, atomically.
    /// Returns the updated record.
    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error>;

    /// Records whether the scheduler holds a registration for the worker.
    async fn set_registered(&self, id: &WorkerId, registered: bool) -> Result<(), Error>;

    /// Records what a drained worker does once its job is done (`None`: not drained any
    /// more). [`Error::WorkerNotFound`] for an unknown worker. Does not change its state.
    async fn set_worker_drain(&self, id: &WorkerId, after: Option<AfterDrain>)
    -> Result<(), Error>;

    /// Workers recorded as `draining`, ordered by id, with what each does once its job is
    /// done ([`AfterDrain::Terminate`] when nothing was recorded): the drains a restarted
    /// server resumes.
    async fn drained_workers(&self) -> Result<Vec<(WorkerId, AfterDrain)>, Error>;

    /// Deletes at most `limit` terminated workers last changed before `before_ms` (ms since
    /// the Unix epoch), oldest first. Returns how many went.
    async fn prune_workers(&self, before_ms: u64, limit: usize) -> Result<usize, Error>;

    /// Deletes at most `limit` finished jobs (in a terminal state) last changed before
    /// `before_ms`, oldest first, with their output. Their usage rows stay (the cost report
    /// keeps its history). Returns how many went.
    async fn prune_jobs(&self, before_ms: u64, limit: usize) -> Result<usize, Error>;

    /// Creates or replaces a pool definition.
    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error>;

    /// Records a new pool; [`Error::PoolExists`] when the name is taken, atomically, so
    /// of concurrent creates of one name exactly one wins.
    async fn insert_pool(&self, pool: &PoolSpec) -> Result<(), Error>;

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error>;

    /// Pools ordered by name.
    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error>;

    /// Removes a pool definition; returns whether it existed.
    async fn delete_pool(&self, name: &str) -> Result<bool, Error>;

    /// Creates or replaces the arrival profile learned for the pool named `pool` (the
    /// predictive policy's hour-of-week rates). Kept apart from the pool's definition: it
    /// stays when the pool is deleted, for a pool of that name that comes back.
    async fn put_arrival_profile(&self, pool: &str, profile: &ArrivalProfile) -> Result<(), Error>;

    /// Every stored arrival profile, ordered by pool name.
    async fn arrival_profiles(&self) -> Result<Vec<(String, ArrivalProfile)>, Error>;

    /// Creates or replaces a tenant.
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error>;

    /// Tenants ordered by name.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, Error>;

    /// Removes a tenant; returns whether it existed.
    async fn delete_tenant(&self, name: &TenantName) -> Result<bool, Error>;

    /// Records a newly submitted job durably and returns it with its `sequence` assigned
    /// (strictly increasing across the store's life, restarts included; the caller's value
    /// is ignored). Fails with [`Error::JobExists`] when the id is taken.
    async fn insert_job(&self, job: &Job) -> Result<Job, Error>;

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, Error>;

    /// Jobs matching `filter`; see [`JobFilter::limit`] for the order.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, Error>;

    /// Replaces the stored job with `job` if the stored state is still `expected` and the
    /// job state machine allows `expected -> job.state` (or they are equal), atomically.
    /// Otherwise [`Error::JobStateConflict`] (someone moved it first) or
    /// [`Error::IllegalJobTransition`]. This is what makes a result recorded at most once.
    async fn update_job(&self, job: &Job, expected: JobState) -> Result<(), Error>;

    /// Records several new jobs, each as [`Store::insert_job`] would, with one commit for
    /// all where the store can (SQLite: one transaction, one fsync). Each job gets its own
    /// result; `Err` for the whole call means none was recorded. The default records them
    /// one by one.
    async fn insert_jobs(&self, jobs: &[Job]) -> Result<Vec<Result<Job, Error>>, Error> {
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            results.push(self.insert_job(job).await);
        }
        Ok(results)
    }

    /// Applies several [`Store::update_job`]s, in order, with one commit for all where the
    /// store can. Each gets its own result (a conflict fails that one only); `Err` for the
    /// whole call means none was applied. The default applies them one by one.
    async fn update_jobs(
        &self,
        updates: &[(Job, JobState)],
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let mut results = Vec::with_capacity(updates.len());
        for (job, expected) in updates {
            results.push(self.update_job(job, *expected).await);
        }
        Ok(results)
    }

    /// Records a new credential; [`Error::CredentialExists`] when the id is taken.
    async fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), Error>;

    /// Every credential, revoked ones included, ordered by creation then id.
    async fn list_credentials(&self) -> Result<Vec<CredentialRecord>, Error>;

    /// Revokes the credential `id` and every live credential it issued, at `at`. Returns
    /// the ids revoked now (empty when `id` is unknown or already revoked).
    async fn revoke_credential(&self, id: &str, at: SystemTime) -> Result<Vec<String>, Error>;

    /// Appends output chunks; a chunk already stored (same job, attempt and sequence) is
    /// skipped. Unknown jobs are [`Error::JobNotFound`].
    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<(), Error>;

    /// A job's output in order (attempt, then sequence), starting after position `after`
    /// (the number of chunks already read), at most `limit` chunks.
    async fn read_logs(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
    ) -> Result<Vec<LogChunk>, Error>;

    /// Records ended attempts' worker time and cost. A row already recorded (same job,
    /// attempt number, worker and end) is skipped, so writing it twice charges it once.
    async fn record_attempt_usage(&self, usage: &[AttemptUsage]) -> Result<(), Error>;

    /// Adds pool usage to the rows of the same pool and hour.
    async fn add_pool_usage(&self, usage: &[PoolUsage]) -> Result<(), Error>;

    /// Attempts that ended at or after `since_ms`, summed by (tenant, queue, pool), in that
    /// order.
    async fn attempt_totals(&self, since_ms: u64) -> Result<Vec<AttemptTotals>, Error>;

    /// Pool usage of the hours from the one `since_ms` falls in, summed per pool (in name
    /// order, `hour_start_ms` the earliest hour).
    async fn pool_usage(&self, since_ms: u64) -> Result<Vec<PoolUsage>, Error>;

    /// One job's attempts' usage, in attempt order.
    async fn job_usage(&self, id: &JobId) -> Result<Vec<AttemptUsage>, Error>;

    /// Records that replica `id`, reached at `url`, is alive now (store clock), deletes the
    /// members unseen for `forget_ms`, and returns every member left with the store's clock
    /// now. Only a store that several servers share keeps members; the others answer
    /// [`Error::Unavailable`].
    async fn heartbeat_member(
        &self,
        id: &str,
        url: &str,
        forget_ms: u64,
    ) -> Result<(Vec<Member>, u64), Error> {
        let _ = (id, url, forget_ms);
        Err(Error::Unavailable(
            "this store keeps no members: replicas need PostgreSQL".into(),
        ))
    }

    /// The leader lease `name` (see [`hodei_core::lease`]) and the store's clock now, in
    /// milliseconds since the Unix epoch: replicas judge expiry on that one clock. Only a
    /// store that several servers share keeps leases; the others answer
    /// [`Error::Unavailable`].
    async fn read_lease(&self, name: &str) -> Result<(Option<Lease>, u64), Error> {
        let _ = name;
        Err(Error::Unavailable(
            "this store keeps no leader lease: replicas need PostgreSQL".into(),
        ))
    }

    /// Compare-and-set of the lease `name`: writes `lease` if the stored row is still
    /// `expected` (`None`: no row yet), atomically. `false` when another replica wrote first.
    async fn write_lease(
        &self,
        name: &str,
        expected: Option<&Lease>,
        lease: &Lease,
    ) -> Result<bool, Error> {
        let _ = (name, expected, lease);
        Err(Error::Unavailable(
            "this store keeps no leader lease: replicas need PostgreSQL".into(),
        ))
    }
}
