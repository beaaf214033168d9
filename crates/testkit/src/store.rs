//! An in-memory [`Store`] and the contract suite that it and every real store must pass.
//!
//! The contract is the definition of a correct store: if SQLite, PostgreSQL and
//! [`MemoryStore`] all pass [`store_contract`], tests written against the fake say something
//! true about the product.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hodei_core::cost::{AttemptTotals, AttemptUsage, HOUR_MS, PoolUsage, hour_start};
use hodei_core::credential::{Role, WorkerOrigin};
use hodei_core::pool_pass::ArrivalProfile;
use hodei_core::tenancy::Tenant;
use hodei_core::{
    AfterDrain, Command, Job, JobId, JobSpec, JobState, PoolSpec, Priority, ProviderKind,
    QueueName, Requirements, SlaClass, TenantName, TransitionError, Worker, WorkerCapabilities,
    WorkerId, WorkerMetadata, WorkerSpec, WorkerState, WorkerType,
};
use hodei_ports::store::{
    CredentialRecord, Error, JobFilter, LogChunk, LogStream, Store, WorkerFilter, WorkerRecord,
};

/// A real, working store that keeps everything in memory; it forgets all on drop.
///
/// It follows the same rules as the durable stores, including millisecond timestamps, so a
/// record read back from it compares equal to one read back from SQLite.
#[derive(Debug, Default)]
pub struct MemoryStore {
    contents: Mutex<Contents>,
}

#[derive(Debug, Default)]
struct Contents {
    workers: BTreeMap<WorkerId, WorkerRecord>,
    pools: BTreeMap<String, PoolSpec>,
    profiles: BTreeMap<String, ArrivalProfile>,
    tenants: BTreeMap<TenantName, Tenant>,
    credentials: Vec<CredentialRecord>,
    jobs: BTreeMap<JobId, Job>,
    /// The sequence of the newest job ever inserted; the next one gets one more.
    last_job_sequence: u64,
    /// Output per job, ordered by (attempt, sequence) as the stores read it back.
    logs: BTreeMap<JobId, BTreeMap<(u32, u64), LogChunk>>,
    /// Ended attempts by (job, attempt, end, worker), as the stores order them.
    attempt_usage: BTreeMap<(String, u32, u64, String), AttemptUsage>,
    /// Pool usage by (pool, hour).
    pool_usage: BTreeMap<(String, u64), PoolUsage>,
    /// When each job was last written (ms since the epoch), which retention goes by.
    job_updated_ms: BTreeMap<JobId, u64>,
    /// What each drained worker does once its job is done.
    drains: BTreeMap<WorkerId, AfterDrain>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn contents(&self) -> MutexGuard<'_, Contents> {
        // Every write below checks first and then changes the maps without anything that can
        // panic in between, so a panic elsewhere cannot leave them half-updated and the poison
        // flag carries no information.
        self.contents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `time` rounded down to the millisecond, the precision every store keeps.
fn truncate_to_millis(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => {
            let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
            UNIX_EPOCH + Duration::from_millis(millis)
        }
        Err(_) => UNIX_EPOCH,
    }
}

fn now_millis() -> SystemTime {
    truncate_to_millis(SystemTime::now())
}

/// Milliseconds since the epoch.
fn ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error> {
        let mut contents = self.contents();
        if contents.workers.contains_key(&worker.id) {
            return Err(Error::WorkerExists(worker.id.clone()));
        }
        contents.workers.insert(
            worker.id.clone(),
            WorkerRecord {
                worker: worker.clone(),
                state,
                registered: false,
                updated_at: now_millis(),
            },
        );
        Ok(())
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error> {
        Ok(self.contents().workers.get(id).cloned())
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error> {
        Ok(self
            .contents()
            .workers
            .values()
            .filter(|record| {
                filter
                    .pool
                    .as_ref()
                    .is_none_or(|pool| record.worker.metadata.pool.as_ref() == Some(pool))
            })
            .filter(|record| !filter.live_only || record.state.is_live())
            .cloned()
            .collect())
    }

    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error> {
        let mut contents = self.contents();
        let record = contents
            .workers
            .get_mut(id)
            .ok_or_else(|| Error::WorkerNotFound(id.clone()))?;
        record.state = record.state.transition(to)?;
        record.updated_at = now_millis();
        Ok(record.clone())
    }

    async fn set_registered(&self, id: &WorkerId, registered: bool) -> Result<(), Error> {
        let mut contents = self.contents();
        let record = contents
            .workers
            .get_mut(id)
            .ok_or_else(|| Error::WorkerNotFound(id.clone()))?;
        record.registered = registered;
        record.updated_at = now_millis();
        Ok(())
    }

    async fn set_worker_drain(
        &self,
        id: &WorkerId,
        after: Option<AfterDrain>,
    ) -> Result<(), Error> {
        let mut contents = self.contents();
        if !contents.workers.contains_key(id) {
            return Err(Error::WorkerNotFound(id.clone()));
        }
        match after {
            Some(after) => contents.drains.insert(id.clone(), after),
            None => contents.drains.remove(id),
        };
        Ok(())
    }

    async fn drained_workers(&self) -> Result<Vec<(WorkerId, AfterDrain)>, Error> {
        let contents = self.contents();
        Ok(contents
            .workers
            .values()
            .filter(|record| record.state == WorkerState::Draining)
            .map(|record| {
                let id = record.worker.id.clone();
                let after = contents
                    .drains
                    .get(&id)
                    .copied()
                    .unwrap_or(AfterDrain::Terminate);
                (id, after)
            })
            .collect())
    }

    async fn prune_workers(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        let mut contents = self.contents();
        let mut old: Vec<(u64, WorkerId)> = contents
            .workers
            .values()
            .filter(|record| record.state == WorkerState::Terminated)
            .map(|record| (ms(record.updated_at), record.worker.id.clone()))
            .filter(|(at, _)| *at < before_ms)
            .collect();
        old.sort();
        old.truncate(limit);
        for (_, id) in &old {
            contents.workers.remove(id);
            contents.drains.remove(id);
        }
        Ok(old.len())
    }

    async fn prune_jobs(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        let mut contents = self.contents();
        let mut old: Vec<(u64, JobId)> = contents
            .jobs
            .values()
            .filter(|job| job.state.is_terminal())
            .map(|job| {
                let at = contents.job_updated_ms.get(&job.id).copied().unwrap_or(0);
                (at, job.id.clone())
            })
            .filter(|(at, _)| *at < before_ms)
            .collect();
        old.sort();
        old.truncate(limit);
        for (_, id) in &old {
            contents.jobs.remove(id);
            contents.logs.remove(id);
            contents.job_updated_ms.remove(id);
        }
        Ok(old.len())
    }

    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        self.contents()
            .pools
            .insert(pool.name.clone(), pool.clone());
        Ok(())
    }

    async fn insert_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        let mut contents = self.contents();
        if contents.pools.contains_key(&pool.name) {
            return Err(Error::PoolExists(pool.name.clone()));
        }
        contents.pools.insert(pool.name.clone(), pool.clone());
        Ok(())
    }

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error> {
        Ok(self.contents().pools.get(name).cloned())
    }

    async fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), Error> {
        let mut contents = self.contents();
        if contents.credentials.iter().any(|c| c.id == credential.id) {
            return Err(Error::CredentialExists(credential.id.clone()));
        }
        let mut stored = credential.clone();
        stored.created_at = truncate_to_millis(stored.created_at);
        stored.revoked_at = stored.revoked_at.map(truncate_to_millis);
        contents.credentials.push(stored);
        Ok(())
    }

    async fn list_credentials(&self) -> Result<Vec<CredentialRecord>, Error> {
        let mut all = self.contents().credentials.clone();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn revoke_credential(&self, id: &str, at: SystemTime) -> Result<Vec<String>, Error> {
        let mut revoked = Vec::new();
        for credential in &mut self.contents().credentials {
            let hit = credential.id == id || credential.issued_by.as_deref() == Some(id);
            if hit && credential.revoked_at.is_none() {
                credential.revoked_at = Some(truncate_to_millis(at));
                revoked.push(credential.id.clone());
            }
        }
        revoked.sort();
        Ok(revoked)
    }

    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error> {
        Ok(self.contents().pools.values().cloned().collect())
    }

    async fn delete_pool(&self, name: &str) -> Result<bool, Error> {
        Ok(self.contents().pools.remove(name).is_some())
    }

    async fn put_arrival_profile(&self, pool: &str, profile: &ArrivalProfile) -> Result<(), Error> {
        self.contents()
            .profiles
            .insert(pool.to_owned(), profile.clone());
        Ok(())
    }

    async fn arrival_profiles(&self) -> Result<Vec<(String, ArrivalProfile)>, Error> {
        Ok(self
            .contents()
            .profiles
            .iter()
            .map(|(pool, profile)| (pool.clone(), profile.clone()))
            .collect())
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        self.contents()
            .tenants
            .insert(tenant.name.clone(), tenant.clone());
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        Ok(self.contents().tenants.values().cloned().collect())
    }

    async fn delete_tenant(&self, name: &TenantName) -> Result<bool, Error> {
        Ok(self.contents().tenants.remove(name).is_some())
    }

    async fn insert_job(&self, job: &Job) -> Result<Job, Error> {
        let mut contents = self.contents();
        if contents.jobs.contains_key(&job.id) {
            return Err(Error::JobExists(job.id.clone()));
        }
        contents.last_job_sequence += 1;
        let stored = Job {
            sequence: contents.last_job_sequence,
            ..job.clone()
        };
        contents.jobs.insert(job.id.clone(), stored.clone());
        contents
            .job_updated_ms
            .insert(job.id.clone(), ms(now_millis()));
        Ok(stored)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        Ok(self.contents().jobs.get(id).cloned())
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, Error> {
        let mut jobs: Vec<Job> = self
            .contents()
            .jobs
            .values()
            .filter(|job| filter.states.is_empty() || filter.states.contains(&job.state))
            .filter(|job| filter.tenant.as_ref().is_none_or(|t| *t == job.spec.tenant))
            .filter(|job| filter.queue.as_ref().is_none_or(|q| *q == job.spec.queue))
            .filter(|job| filter.sla_class.is_none_or(|c| c == job.spec.sla_class))
            .filter(|job| {
                filter
                    .worker_id
                    .as_ref()
                    .is_none_or(|w| job.worker_id.as_ref() == Some(w))
            })
            .cloned()
            .collect();
        jobs.sort_by_key(|job| job.sequence);
        if let Some(limit) = filter.limit {
            jobs.reverse();
            jobs.truncate(limit);
        }
        Ok(jobs)
    }

    async fn update_job(&self, job: &Job, expected: JobState) -> Result<(), Error> {
        let mut contents = self.contents();
        let stored = contents
            .jobs
            .get_mut(&job.id)
            .ok_or_else(|| Error::JobNotFound(job.id.clone()))?;
        if stored.state != expected {
            return Err(Error::JobStateConflict {
                job_id: job.id.clone(),
                expected,
                actual: stored.state,
            });
        }
        if job.state != expected {
            expected.transition(job.state)?;
        }
        // The sequence is the store's, like the submission order it records.
        *stored = Job {
            sequence: stored.sequence,
            ..job.clone()
        };
        contents
            .job_updated_ms
            .insert(job.id.clone(), ms(now_millis()));
        Ok(())
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<(), Error> {
        let mut contents = self.contents();
        // All jobs are checked before anything is written: a batch is stored whole or not at all.
        if let Some(unknown) = chunks
            .iter()
            .find(|chunk| !contents.jobs.contains_key(&chunk.job_id))
        {
            return Err(Error::JobNotFound(unknown.job_id.clone()));
        }
        for chunk in chunks {
            contents
                .logs
                .entry(chunk.job_id.clone())
                .or_default()
                .entry((chunk.attempt, chunk.sequence))
                .or_insert_with(|| chunk.clone());
        }
        Ok(())
    }

    async fn read_logs(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
    ) -> Result<Vec<LogChunk>, Error> {
        let contents = self.contents();
        if !contents.jobs.contains_key(id) {
            return Err(Error::JobNotFound(id.clone()));
        }
        Ok(contents
            .logs
            .get(id)
            .into_iter()
            .flat_map(BTreeMap::values)
            .skip(after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn record_attempt_usage(&self, usage: &[AttemptUsage]) -> Result<(), Error> {
        let mut contents = self.contents();
        for row in usage {
            contents
                .attempt_usage
                .entry((
                    row.job_id.clone(),
                    row.attempt,
                    row.ended_at_ms,
                    row.worker_id.clone(),
                ))
                .or_insert_with(|| row.clone());
        }
        Ok(())
    }

    async fn add_pool_usage(&self, usage: &[PoolUsage]) -> Result<(), Error> {
        let mut contents = self.contents();
        for row in usage {
            let hour = hour_start(row.hour_start_ms);
            contents
                .pool_usage
                .entry((row.pool.clone(), hour))
                .or_insert_with(|| PoolUsage {
                    pool: row.pool.clone(),
                    hour_start_ms: hour,
                    ..PoolUsage::default()
                })
                .add(row);
        }
        Ok(())
    }

    async fn attempt_totals(&self, since_ms: u64) -> Result<Vec<AttemptTotals>, Error> {
        let contents = self.contents();
        let mut totals: BTreeMap<(String, String, String), AttemptTotals> = BTreeMap::new();
        for row in contents
            .attempt_usage
            .values()
            .filter(|row| row.ended_at_ms >= since_ms)
        {
            let key = (row.tenant.clone(), row.queue.clone(), row.pool.clone());
            let entry = totals.entry(key).or_insert_with(|| AttemptTotals {
                tenant: row.tenant.clone(),
                queue: row.queue.clone(),
                pool: row.pool.clone(),
                attempts: 0,
                worker_seconds: 0.0,
                cost: 0.0,
            });
            entry.attempts += 1;
            entry.worker_seconds += row.worker_seconds;
            entry.cost += row.cost;
        }
        Ok(totals.into_values().collect())
    }

    async fn pool_usage(&self, since_ms: u64) -> Result<Vec<PoolUsage>, Error> {
        let contents = self.contents();
        let since = hour_start(since_ms);
        let mut totals: BTreeMap<String, PoolUsage> = BTreeMap::new();
        for row in contents
            .pool_usage
            .values()
            .filter(|row| row.hour_start_ms >= since)
        {
            totals
                .entry(row.pool.clone())
                .or_insert_with(|| PoolUsage {
                    pool: row.pool.clone(),
                    hour_start_ms: row.hour_start_ms,
                    ..PoolUsage::default()
                })
                .add(row);
        }
        Ok(totals.into_values().collect())
    }

    async fn job_usage(&self, id: &JobId) -> Result<Vec<AttemptUsage>, Error> {
        let contents = self.contents();
        Ok(contents
            .attempt_usage
            .values()
            .filter(|row| row.job_id == id.as_str())
            .cloned()
            .collect())
    }
}

/// Prefix of every worker id and pool name the contract creates, so that it can run against a
/// store that already holds other data and tell its own rows apart.
const PREFIX: &str = "contract-";

/// Runs the contract every [`Store`] must pass. Panics, naming the broken rule, on the first
/// violation.
///
/// Call it on a fresh store; it may be called on several stores in one process. It creates
/// workers, pools and jobs whose names start with `contract-` and leaves them behind.
pub async fn store_contract(store: &dyn Store) {
    insert_then_get(store).await;
    duplicate_insert_is_refused(store).await;
    unknown_worker_is_none(store).await;
    worker_fields_round_trip_exactly(store).await;
    list_is_ordered_and_filtered(store).await;
    transitions_walk_the_lifecycle(store).await;
    transitions_follow_the_state_machine(store).await;
    illegal_transition_leaves_the_record_alone(store).await;
    transition_of_unknown_worker_is_not_found(store).await;
    concurrent_transitions_have_one_winner(store).await;
    registration_round_trips(store).await;
    pools_round_trip(store).await;
    arrival_profiles_round_trip(store).await;
    tenants_round_trip(store).await;
    pool_insert_is_unique(store).await;
    credentials_round_trip_and_revoke(store).await;
    job_fields_round_trip_exactly(store).await;
    duplicate_job_insert_is_refused(store).await;
    job_sequences_strictly_increase(store).await;
    list_jobs_filters_and_orders(store).await;
    job_updates_replace_the_job(store).await;
    stale_job_update_is_a_conflict(store).await;
    job_updates_follow_the_state_machine(store).await;
    concurrent_job_updates_have_one_winner(store).await;
    logs_are_ordered_and_stored_once(store).await;
    many_logs_in_one_call(store).await;
    logs_of_unknown_jobs_are_not_found(store).await;
    batched_job_writes_have_one_result_each(store).await;
    batches_naming_a_job_twice_apply_in_order(store).await;
    usage_adds_up_and_counts_an_attempt_once(store).await;
    drains_are_recorded(store).await;
    retention_prunes_old_finished_jobs_and_terminated_workers(store).await;
}

fn id(name: &str) -> WorkerId {
    match WorkerId::new(format!("{PREFIX}{name}")) {
        Ok(id) => id,
        Err(err) => panic!("contract bug: bad worker id {name:?}: {err}"),
    }
}

/// A millisecond-precise instant well after the epoch, with a non-zero millisecond part.
fn provisioned_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_123_456)
}

/// A worker with every field set to something that would show if a store lost or reordered it.
fn rich_worker(id: WorkerId, pool: Option<&str>) -> Worker {
    Worker {
        id,
        capabilities: WorkerCapabilities {
            cpu_cores: 16,
            memory_mb: 65_536,
            docker_enabled: true,
            custom_resources: [("gpu".to_owned(), 2), ("fpga.example.com/xl".to_owned(), 1)].into(),
        },
        metadata: WorkerMetadata {
            worker_type: WorkerType::Dynamic,
            provider: ProviderKind::Docker,
            pool: pool.map(|pool| format!("{PREFIX}{pool}")),
            namespace: "builds".to_owned(),
            labels: [
                ("os".to_owned(), "linux".to_owned()),
                (
                    "team.example.com/owner".to_owned(),
                    "équipe ☃ \"ci\"".to_owned(),
                ),
            ]
            .into(),
            // Not sorted: tags are a list and their order must survive.
            tags: vec!["zeta".to_owned(), "alpha".to_owned(), "mid".to_owned()],
            provision_timestamp: provisioned_at(),
        },
    }
}

fn plain_worker(id: WorkerId, pool: Option<&str>) -> Worker {
    let spec = WorkerSpec {
        pool: pool.map(|pool| format!("{PREFIX}{pool}")),
        ..WorkerSpec::default()
    };
    Worker::from_spec(id, &spec, ProviderKind::Local, provisioned_at())
}

async fn insert(store: &dyn Store, worker: &Worker, state: WorkerState) {
    if let Err(err) = store.insert_worker(worker, state).await {
        panic!("insert_worker({}, {state}) failed: {err}", worker.id);
    }
}

async fn get(store: &dyn Store, id: &WorkerId) -> Option<WorkerRecord> {
    match store.get_worker(id).await {
        Ok(record) => record,
        Err(err) => panic!("get_worker({id}) failed: {err}"),
    }
}

async fn get_existing(store: &dyn Store, id: &WorkerId) -> WorkerRecord {
    match get(store, id).await {
        Some(record) => record,
        None => panic!("get_worker({id}) returned none for a worker that was inserted"),
    }
}

async fn list(store: &dyn Store, filter: &WorkerFilter) -> Vec<WorkerRecord> {
    match store.list_workers(filter).await {
        Ok(records) => records,
        Err(err) => panic!("list_workers({filter:?}) failed: {err}"),
    }
}

async fn transition(store: &dyn Store, id: &WorkerId, to: WorkerState) -> WorkerRecord {
    match store.transition_worker(id, to).await {
        Ok(record) => record,
        Err(err) => panic!("transition_worker({id}, {to}) failed: {err}"),
    }
}

/// Asserts that `updated_at` was stamped by the call that started at `started`.
fn assert_stamped_during_call(what: &str, updated_at: SystemTime, started: SystemTime) {
    assert_eq!(
        updated_at,
        truncate_to_millis(updated_at),
        "{what}: updated_at must have millisecond precision"
    );
    assert!(
        updated_at >= truncate_to_millis(started) && updated_at <= SystemTime::now(),
        "{what}: updated_at {updated_at:?} is not the time of the call (started {started:?})"
    );
}

/// Returns once the wall clock reads a later millisecond than `time`, so that a write made now
/// gets a visibly newer `updated_at` than one made at `time`.
async fn wait_for_clock_past(time: SystemTime) {
    let deadline = SystemTime::now() + Duration::from_secs(5);
    while truncate_to_millis(SystemTime::now()) <= time {
        assert!(
            SystemTime::now() < deadline,
            "the wall clock did not pass {time:?}"
        );
        tokio::task::yield_now().await;
    }
}

async fn insert_then_get(store: &dyn Store) {
    let worker = plain_worker(id("insert-1"), Some("insert-pool"));
    let started = SystemTime::now();
    insert(store, &worker, WorkerState::Provisioning).await;
    let record = get_existing(store, &worker.id).await;
    assert_eq!(
        record.worker, worker,
        "inserted worker must read back unchanged"
    );
    assert_eq!(record.state, WorkerState::Provisioning);
    assert!(!record.registered, "a new worker is not registered");
    assert_stamped_during_call("insert_worker", record.updated_at, started);
}

async fn duplicate_insert_is_refused(store: &dyn Store) {
    for (name, state) in [
        ("duplicate-live", WorkerState::Idle),
        ("duplicate-terminated", WorkerState::Terminated),
    ] {
        let worker = plain_worker(id(name), None);
        insert(store, &worker, state).await;
        let before = get_existing(store, &worker.id).await;

        let other = rich_worker(worker.id.clone(), Some("elsewhere"));
        match store.insert_worker(&other, WorkerState::Provisioning).await {
            Err(Error::WorkerExists(existing)) => assert_eq!(existing, worker.id),
            other => panic!(
                "second insert of {} over {state}: want WorkerExists, got {other:?}",
                worker.id
            ),
        }
        assert_eq!(
            get_existing(store, &worker.id).await,
            before,
            "a refused insert must not touch the existing record"
        );
    }
}

async fn unknown_worker_is_none(store: &dyn Store) {
    assert_eq!(get(store, &id("never-inserted")).await, None);
}

async fn worker_fields_round_trip_exactly(store: &dyn Store) {
    let worker = rich_worker(id("round-trip"), Some("round-trip-pool"));
    insert(store, &worker, WorkerState::Registering).await;
    let record = get_existing(store, &worker.id).await;
    assert_eq!(record.worker, worker, "every worker field must round-trip");
    assert_eq!(record.worker.metadata.tags, ["zeta", "alpha", "mid"]);
    assert_eq!(record.worker.metadata.provision_timestamp, provisioned_at());
    assert_eq!(
        record.worker.capabilities.custom_resources.get("gpu"),
        Some(&2)
    );

    let no_pool = rich_worker(id("round-trip-no-pool"), None);
    insert(store, &no_pool, WorkerState::Provisioning).await;
    assert_eq!(get_existing(store, &no_pool.id).await.worker, no_pool);
}

async fn list_is_ordered_and_filtered(store: &dyn Store) {
    // Inserted out of order; byte order puts "list-10" before "list-9" and "list-B" before
    // "list-a", as `WorkerId`'s `Ord` does.
    let inserted = [
        ("list-9", Some("list-a"), WorkerState::Idle),
        ("list-a", Some("list-a"), WorkerState::Terminated),
        ("list-10", Some("list-b"), WorkerState::Busy),
        ("list-B", Some("list-a"), WorkerState::Provisioning),
        ("list-0", None, WorkerState::Draining),
        ("list-5", Some("list-b"), WorkerState::Registering),
    ];
    for (name, pool, state) in inserted {
        insert(store, &plain_worker(id(name), pool), state).await;
    }
    // One worker terminates through the lifecycle rather than being inserted terminated.
    transition(store, &id("list-5"), WorkerState::Terminated).await;

    let ids = |records: &[WorkerRecord]| -> Vec<String> {
        records
            .iter()
            .map(|record| record.worker.id.as_str().to_owned())
            .filter(|id| id.starts_with(&format!("{PREFIX}list-")))
            .map(|id| id[PREFIX.len()..].to_owned())
            .collect()
    };
    let assert_sorted = |what: &str, records: &[WorkerRecord]| {
        assert!(
            records
                .windows(2)
                .all(|pair| pair[0].worker.id < pair[1].worker.id),
            "{what}: workers must be ordered by id, got {:?}",
            records
                .iter()
                .map(|r| r.worker.id.as_str())
                .collect::<Vec<_>>()
        );
    };

    let all = list(store, &WorkerFilter::default()).await;
    assert_sorted("list all", &all);
    assert_eq!(
        ids(&all),
        ["list-0", "list-10", "list-5", "list-9", "list-B", "list-a"],
        "list all"
    );
    for record in &all {
        assert_eq!(
            Some(record),
            get(store, &record.worker.id).await.as_ref(),
            "listed record must equal the one get_worker returns"
        );
    }

    let live = list(store, &WorkerFilter::live()).await;
    assert_sorted("list live", &live);
    assert!(
        live.iter()
            .all(|record| record.state != WorkerState::Terminated),
        "live_only must leave out terminated workers"
    );
    assert_eq!(
        ids(&live),
        ["list-0", "list-10", "list-9", "list-B"],
        "list live"
    );

    let pool_a = WorkerFilter {
        pool: Some(format!("{PREFIX}list-a")),
        live_only: false,
    };
    let in_pool_a = list(store, &pool_a).await;
    assert_sorted("list pool", &in_pool_a);
    assert_eq!(in_pool_a.len(), 3, "pool filter must leave out other pools");
    assert_eq!(ids(&in_pool_a), ["list-9", "list-B", "list-a"], "list pool");

    let live_in_pool_b = WorkerFilter {
        pool: Some(format!("{PREFIX}list-b")),
        live_only: true,
    };
    assert_eq!(
        ids(&list(store, &live_in_pool_b).await),
        ["list-10"],
        "list live pool"
    );

    let unknown_pool = WorkerFilter {
        pool: Some(format!("{PREFIX}list-none")),
        live_only: false,
    };
    assert_eq!(list(store, &unknown_pool).await, [], "list unknown pool");
}

async fn transitions_walk_the_lifecycle(store: &dyn Store) {
    use WorkerState::*;
    let worker = rich_worker(id("lifecycle"), Some("lifecycle-pool"));
    insert(store, &worker, Provisioning).await;
    let mut registered = false;
    for to in [
        Registering,
        Idle,
        Busy,
        Cleaning,
        Idle,
        Unhealthy,
        Draining,
        Idle,
        Terminated,
    ] {
        if to == Idle && !registered {
            // The registered flag must survive transitions.
            registered = true;
            if let Err(err) = store.set_registered(&worker.id, true).await {
                panic!("set_registered({}) failed: {err}", worker.id);
            }
        }
        let previous = get_existing(store, &worker.id).await;
        wait_for_clock_past(previous.updated_at).await;
        let started = SystemTime::now();
        let record = transition(store, &worker.id, to).await;
        assert!(
            record.updated_at > previous.updated_at,
            "transition to {to} must move updated_at forward"
        );
        assert_eq!(
            record.state, to,
            "transition_worker must return the new state"
        );
        assert_eq!(
            record.worker, worker,
            "a transition must not change the worker"
        );
        assert_eq!(
            record.registered, registered,
            "a transition must keep the registered flag"
        );
        assert_stamped_during_call(&format!("transition to {to}"), record.updated_at, started);
        assert_eq!(
            get_existing(store, &worker.id).await,
            record,
            "transition_worker must return what it stored"
        );
    }
}

async fn transitions_follow_the_state_machine(store: &dyn Store) {
    for from in WorkerState::ALL {
        for to in WorkerState::ALL {
            let worker = plain_worker(id(&format!("machine-{from}-{to}")), None);
            insert(store, &worker, from).await;
            let result = store.transition_worker(&worker.id, to).await;
            let stored = get_existing(store, &worker.id).await;
            match (from.transition(to), result) {
                (Ok(_), Ok(record)) => {
                    assert_eq!(record.state, to, "{from} -> {to}");
                    assert_eq!(stored, record, "{from} -> {to}: stored record");
                }
                (Err(want), Err(Error::IllegalTransition(got))) => {
                    assert_eq!(got, want, "{from} -> {to}");
                    assert_eq!(
                        stored.state, from,
                        "{from} -> {to}: refused, state unchanged"
                    );
                }
                (want, got) => panic!("{from} -> {to}: core says {want:?}, store says {got:?}"),
            }
        }
    }
}

async fn illegal_transition_leaves_the_record_alone(store: &dyn Store) {
    let worker = rich_worker(id("illegal"), None);
    insert(store, &worker, WorkerState::Provisioning).await;
    if let Err(err) = store.set_registered(&worker.id, true).await {
        panic!("set_registered({}) failed: {err}", worker.id);
    }
    let before = get_existing(store, &worker.id).await;
    for to in [
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Provisioning,
    ] {
        match store.transition_worker(&worker.id, to).await {
            Err(Error::IllegalTransition(err)) => assert_eq!(
                err,
                TransitionError {
                    from: WorkerState::Provisioning,
                    to
                }
            ),
            other => panic!("provisioning -> {to}: want IllegalTransition, got {other:?}"),
        }
        assert_eq!(
            get_existing(store, &worker.id).await,
            before,
            "a refused transition must leave the record exactly as it was"
        );
    }
}

async fn transition_of_unknown_worker_is_not_found(store: &dyn Store) {
    let unknown = id("transition-unknown");
    match store
        .transition_worker(&unknown, WorkerState::Terminated)
        .await
    {
        Err(Error::WorkerNotFound(got)) => assert_eq!(got, unknown),
        other => panic!("transition of unknown worker: want WorkerNotFound, got {other:?}"),
    }
    assert_eq!(
        get(store, &unknown).await,
        None,
        "a failed transition must not create"
    );
}

async fn concurrent_transitions_have_one_winner(store: &dyn Store) {
    let worker = plain_worker(id("race"), None);
    insert(store, &worker, WorkerState::Idle).await;
    let attempts = (0..16).map(|_| store.transition_worker(&worker.id, WorkerState::Busy));
    let results = futures::future::join_all(attempts).await;
    let mut wins = 0;
    for result in results {
        match result {
            Ok(record) => {
                wins += 1;
                assert_eq!(record.state, WorkerState::Busy);
            }
            Err(Error::IllegalTransition(err)) => assert_eq!(
                err,
                TransitionError {
                    from: WorkerState::Busy,
                    to: WorkerState::Busy
                }
            ),
            Err(err) => panic!("concurrent idle -> busy: unexpected error {err}"),
        }
    }
    assert_eq!(
        wins, 1,
        "exactly one of many concurrent idle -> busy may win"
    );
    assert_eq!(
        get_existing(store, &worker.id).await.state,
        WorkerState::Busy
    );
}

async fn registration_round_trips(store: &dyn Store) {
    let worker = plain_worker(id("registered"), None);
    insert(store, &worker, WorkerState::Registering).await;
    for registered in [true, true, false, true] {
        let previous = get_existing(store, &worker.id).await;
        wait_for_clock_past(previous.updated_at).await;
        let started = SystemTime::now();
        if let Err(err) = store.set_registered(&worker.id, registered).await {
            panic!("set_registered({}, {registered}) failed: {err}", worker.id);
        }
        let record = get_existing(store, &worker.id).await;
        assert_eq!(record.registered, registered, "set_registered must stick");
        assert_eq!(
            record.state,
            WorkerState::Registering,
            "set_registered keeps the state"
        );
        assert_eq!(record.worker, worker, "set_registered keeps the worker");
        assert_stamped_during_call("set_registered", record.updated_at, started);
        assert!(
            record.updated_at > previous.updated_at,
            "set_registered must move updated_at forward"
        );
    }

    let unknown = id("registered-unknown");
    match store.set_registered(&unknown, true).await {
        Err(Error::WorkerNotFound(got)) => assert_eq!(got, unknown),
        other => panic!("set_registered of unknown worker: want WorkerNotFound, got {other:?}"),
    }
    assert_eq!(
        get(store, &unknown).await,
        None,
        "set_registered must not create"
    );
}

fn pool(name: &str, size: u32) -> PoolSpec {
    let name = format!("{PREFIX}{name}");
    PoolSpec {
        template: WorkerSpec {
            worker_type: WorkerType::Static,
            pool: Some(name.clone()),
            namespace: "pools".to_owned(),
            capabilities: WorkerCapabilities {
                cpu_cores: 8,
                memory_mb: 16_384,
                docker_enabled: true,
                custom_resources: [("gpu".to_owned(), 1)].into(),
            },
            labels: [("arch".to_owned(), "arm64".to_owned())].into(),
            tags: vec!["b".to_owned(), "a".to_owned()],
            image: Some("registry.example/agent:1".to_owned()),
            env: [("RUST_LOG".to_owned(), "debug".to_owned())].into(),
            user: Some("65534:65534".to_owned()),
        },
        max_uses: Some(3),
        cost_per_hour: 0.25,
        ..PoolSpec::fixed(name, ProviderKind::Kubernetes, size)
    }
}

async fn contract_pools(store: &dyn Store) -> Vec<PoolSpec> {
    match store.list_pools().await {
        Ok(pools) => {
            let names: Vec<&str> = pools.iter().map(|pool| pool.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted, "list_pools must order pools by name");
            let unique: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "list_pools must not repeat a pool"
            );
            pools
                .into_iter()
                .filter(|pool| pool.name.starts_with(&format!("{PREFIX}pool-")))
                .collect()
        }
        Err(err) => panic!("list_pools failed: {err}"),
    }
}

async fn put_pool(store: &dyn Store, spec: &PoolSpec) {
    if let Err(err) = store.put_pool(spec).await {
        panic!("put_pool({}) failed: {err}", spec.name);
    }
}

async fn get_pool(store: &dyn Store, name: &str) -> Option<PoolSpec> {
    match store.get_pool(name).await {
        Ok(pool) => pool,
        Err(err) => panic!("get_pool({name}) failed: {err}"),
    }
}

async fn delete_pool(store: &dyn Store, name: &str) -> bool {
    match store.delete_pool(name).await {
        Ok(existed) => existed,
        Err(err) => panic!("delete_pool({name}) failed: {err}"),
    }
}

async fn pool_insert_is_unique(store: &dyn Store) {
    let first = pool("pool-unique", 1);
    let second = pool("pool-unique", 2);
    let results = futures_join(store, &first, &second).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one of two concurrent inserts of one pool name wins: {results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(Error::PoolExists(name)) if name == &first.name)),
        "the loser is told the pool exists: {results:?}"
    );
    assert!(matches!(
        store.insert_pool(&first).await,
        Err(Error::PoolExists(_))
    ));
    assert!(delete_pool(store, &first.name).await);
}

async fn futures_join(
    store: &dyn Store,
    first: &PoolSpec,
    second: &PoolSpec,
) -> Vec<Result<(), Error>> {
    let (a, b) = tokio::join!(store.insert_pool(first), store.insert_pool(second));
    vec![a, b]
}

async fn credentials_round_trip_and_revoke(store: &dyn Store) {
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms);
    let agent = CredentialRecord {
        id: "c-agent".into(),
        role: Role::Agent,
        worker_id: None,
        origin: None,
        tenant: None,
        description: "rack 4".into(),
        issued_by: None,
        secret_sha256: "aa".repeat(32),
        created_at: at(1),
        revoked_at: None,
    };
    let enrolled = CredentialRecord {
        id: "c-worker".into(),
        role: Role::Worker,
        worker_id: Some(id("enrolled")),
        origin: Some(WorkerOrigin::Enrolled),
        issued_by: Some("c-agent".into()),
        description: String::new(),
        secret_sha256: "bb".repeat(32),
        created_at: at(2),
        ..agent.clone()
    };
    let tenant = CredentialRecord {
        id: "c-tenant".into(),
        role: Role::Tenant,
        tenant: Some(TenantName::new("team-a").unwrap_or_default()),
        secret_sha256: "cc".repeat(32),
        created_at: at(3),
        ..agent.clone()
    };
    for credential in [&tenant, &agent, &enrolled] {
        if let Err(err) = store.insert_credential(credential).await {
            panic!("insert_credential({}) failed: {err}", credential.id);
        }
    }
    assert!(matches!(
        store.insert_credential(&agent).await,
        Err(Error::CredentialExists(_))
    ));
    let listed = store.list_credentials().await.unwrap_or_default();
    assert_eq!(
        listed,
        vec![agent.clone(), enrolled.clone(), tenant.clone()],
        "credentials round trip, ordered by creation"
    );
    let revoked = store.revoke_credential("c-agent", at(10)).await;
    assert_eq!(
        revoked.ok(),
        Some(vec!["c-agent".to_owned(), "c-worker".to_owned()]),
        "revoking an agent token revokes the worker credentials it issued"
    );
    let again = store.revoke_credential("c-agent", at(11)).await;
    assert_eq!(
        again.ok(),
        Some(Vec::new()),
        "revoking twice changes nothing"
    );
    assert_eq!(
        store.revoke_credential("nobody", at(11)).await.ok(),
        Some(Vec::new())
    );
    let listed = store.list_credentials().await.unwrap_or_default();
    let revoked_at: Vec<Option<SystemTime>> = listed.iter().map(|c| c.revoked_at).collect();
    assert_eq!(revoked_at, vec![Some(at(10)), Some(at(10)), None]);
}

async fn arrival_profiles_round_trip(store: &dyn Store) {
    let (a, b) = (format!("{PREFIX}profile-a"), format!("{PREFIX}profile-b"));
    let mut learned = ArrivalProfile::default();
    // Rates that only survive exactly (no rounding through text), an hour being counted.
    learned.rates[0] = 0.1;
    learned.rates[9] = 1.0 / 3.0;
    learned.rates[167] = 12_345.678_9e-7;
    learned.seen[9] = 4;
    learned.current = Some((493_720, 1_777_392_000_123, 17));
    let empty = ArrivalProfile::default();
    for (pool, profile) in [(&b, &empty), (&a, &learned)] {
        if let Err(err) = store.put_arrival_profile(pool, profile).await {
            panic!("put_arrival_profile({pool}) failed: {err}");
        }
    }
    let stored = contract_profiles(store).await;
    assert_eq!(
        stored,
        [(a.clone(), learned.clone()), (b.clone(), empty.clone())],
        "arrival profiles round trip exactly, ordered by pool"
    );
    let mut newer = learned.clone();
    newer.rates[9] = 0.5;
    newer.seen[9] = 5;
    newer.current = None;
    if let Err(err) = store.put_arrival_profile(&a, &newer).await {
        panic!("put_arrival_profile({a}) again failed: {err}");
    }
    assert_eq!(
        contract_profiles(store).await,
        [(a, newer), (b, empty)],
        "put_arrival_profile replaces the pool's profile"
    );
}

async fn contract_profiles(store: &dyn Store) -> Vec<(String, ArrivalProfile)> {
    match store.arrival_profiles().await {
        Ok(all) => all
            .into_iter()
            .filter(|(pool, _)| pool.starts_with(PREFIX))
            .collect(),
        Err(err) => panic!("arrival_profiles failed: {err}"),
    }
}

async fn pools_round_trip(store: &dyn Store) {
    let (b, a, c) = (pool("pool-b", 3), pool("pool-a", 1), pool("pool-C", 0));
    for spec in [&b, &a, &c] {
        put_pool(store, spec).await;
    }
    assert_eq!(
        get_pool(store, &a.name).await.as_ref(),
        Some(&a),
        "pool round trip"
    );
    assert_eq!(get_pool(store, &format!("{PREFIX}pool-none")).await, None);
    assert_eq!(
        contract_pools(store).await,
        [c.clone(), a.clone(), b.clone()],
        "pools ordered by name"
    );

    let mut replaced = a.clone();
    replaced.size = Some(7);
    replaced.provider = ProviderKind::Docker;
    replaced
        .template
        .labels
        .insert("replaced".to_owned(), "yes".to_owned());
    replaced.template.capabilities.custom_resources.clear();
    put_pool(store, &replaced).await;
    assert_eq!(
        get_pool(store, &a.name).await.as_ref(),
        Some(&replaced),
        "put_pool must replace"
    );
    assert_eq!(
        contract_pools(store).await,
        [c.clone(), replaced.clone(), b.clone()],
        "a replaced pool is listed once"
    );

    assert!(
        delete_pool(store, &a.name).await,
        "deleting an existing pool returns true"
    );
    assert_eq!(
        get_pool(store, &a.name).await,
        None,
        "a deleted pool is gone"
    );
    assert!(
        !delete_pool(store, &a.name).await,
        "deleting it again returns false"
    );
    assert!(
        !delete_pool(store, &format!("{PREFIX}pool-none")).await,
        "deleting an unknown pool returns false"
    );
    assert_eq!(contract_pools(store).await, [c, b], "the others remain");
}

fn job_id(name: &str) -> JobId {
    match JobId::new(format!("{PREFIX}{name}")) {
        Ok(id) => id,
        Err(err) => panic!("contract bug: bad job id {name:?}: {err}"),
    }
}

fn tenant(name: &str) -> TenantName {
    match TenantName::new(format!("{PREFIX}{name}")) {
        Ok(tenant) => tenant,
        Err(err) => panic!("contract bug: bad tenant {name:?}: {err}"),
    }
}

fn queue(name: &str) -> QueueName {
    match QueueName::new(format!("{PREFIX}{name}")) {
        Ok(queue) => queue,
        Err(err) => panic!("contract bug: bad queue {name:?}: {err}"),
    }
}

fn priority(value: i32) -> Priority {
    match Priority::new(value) {
        Ok(priority) => priority,
        Err(err) => panic!("contract bug: bad priority {value}: {err}"),
    }
}

/// An instant with a non-zero nanosecond part: a job must come back exactly as it went in, so
/// a store that rounds its timestamps fails here.
fn job_time(offset_ms: u64) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_millis(1_700_000_200_000 + offset_ms)
        + Duration::from_nanos(123_457)
}

/// A queued job with default fields, in tenant `contract-default-tenant`.
fn plain_job(name: &str) -> Job {
    let spec = JobSpec {
        tenant: tenant("default-tenant"),
        ..JobSpec::new(Command::Argv(vec!["true".to_owned()]))
    };
    match Job::new(job_id(name), spec, 0, job_time(0)) {
        Ok(job) => job,
        Err(err) => panic!("contract bug: invalid job {name}: {err}"),
    }
}

/// A job with every field set to something that would show if a store lost, rounded or
/// reordered it.
fn rich_job(name: &str, command: Command) -> Job {
    Job {
        id: job_id(name),
        spec: JobSpec {
            tenant: tenant("rich-tenant"),
            queue: queue("rich-queue"),
            command,
            env: [
                ("PATH".to_owned(), "/usr/local/bin:/usr/bin".to_owned()),
                ("EMPTY".to_owned(), String::new()),
                (
                    "QUOTED".to_owned(),
                    "équipe ☃ \"ci\" 'x' \\n $HOME".to_owned(),
                ),
            ]
            .into(),
            working_dir: Some("build/out dir".to_owned()),
            requirements: Requirements {
                cpu_cores: 12,
                memory_mb: 24_576,
                labels: [
                    ("os".to_owned(), "linux".to_owned()),
                    ("team.example.com/owner".to_owned(), "ci ☃".to_owned()),
                ]
                .into(),
                features: ["docker".to_owned(), "gpu".to_owned()].into(),
            },
            priority: priority(-17),
            timeout: Some(Duration::new(5_400, 250_000_001)),
            max_retries: 3,
            sla_class: SlaClass::BestEffort,
            no_preempt: true,
        },
        state: JobState::Running,
        attempts: 2,
        withdrawn: 0,
        worker_id: Some(id("rich-worker")),
        exit_code: Some(-9),
        reason: Some("exited with code 137 on attempt 1, retry 1 of 3".to_owned()),
        submitted_at: job_time(1),
        started_at: Some(job_time(2)),
        finished_at: Some(job_time(3)),
        // The store assigns the sequence; this one must be ignored.
        sequence: u64::MAX,
        deadline: Some(job_time(4)),
        first_started_at: Some(job_time(2)),
        preempted: 1,
        preemptions: vec![hodei_core::job::PreemptionRecord {
            at: job_time(5),
            victim: job_id(name),
            beneficiary: job_id("rich-beneficiary"),
            worker_id: id("rich-worker"),
            reason: "critical job rich-beneficiary at risk ☃".to_owned(),
        }],
        miss_counted: true,
        stopping_for: Some(hodei_core::job::StoppingFor {
            job: job_id("rich-beneficiary"),
            reason: "for critical job rich-beneficiary ☃".to_owned(),
        }),
    }
}

async fn insert_job(store: &dyn Store, job: &Job) -> Job {
    match store.insert_job(job).await {
        Ok(stored) => {
            assert_eq!(
                Job {
                    sequence: job.sequence,
                    ..stored.clone()
                },
                *job,
                "insert_job must return the job it was given, but for the sequence"
            );
            stored
        }
        Err(err) => panic!("insert_job({}) failed: {err}", job.id),
    }
}

async fn get_job(store: &dyn Store, id: &JobId) -> Option<Job> {
    match store.get_job(id).await {
        Ok(job) => job,
        Err(err) => panic!("get_job({id}) failed: {err}"),
    }
}

async fn get_existing_job(store: &dyn Store, id: &JobId) -> Job {
    match get_job(store, id).await {
        Some(job) => job,
        None => panic!("get_job({id}) returned none for a job that was inserted"),
    }
}

async fn list_jobs(store: &dyn Store, filter: &JobFilter) -> Vec<Job> {
    match store.list_jobs(filter).await {
        Ok(jobs) => jobs,
        Err(err) => panic!("list_jobs({filter:?}) failed: {err}"),
    }
}

async fn update_job(store: &dyn Store, job: &Job, expected: JobState) {
    if let Err(err) = store.update_job(job, expected).await {
        panic!(
            "update_job({}, {expected} -> {}) failed: {err}",
            job.id, job.state
        );
    }
}

/// Inserts a job and moves it to `state` through legal updates, so that the contract does not
/// depend on inserting jobs in arbitrary states.
async fn job_in_state(store: &dyn Store, job: Job, state: JobState) -> Job {
    let mut job = insert_job(
        store,
        &Job {
            state: JobState::Queued,
            ..job
        },
    )
    .await;
    let path: &[JobState] = match state {
        JobState::Queued => &[],
        JobState::Assigned => &[JobState::Assigned],
        JobState::Running => &[JobState::Assigned, JobState::Running],
        JobState::Succeeded | JobState::TimedOut => &[JobState::Assigned, JobState::Running, state],
        JobState::Failed => &[JobState::Assigned, JobState::Failed],
        JobState::Cancelled | JobState::DeadLettered => &[state],
    };
    for &to in path {
        let from = job.state;
        job.state = to;
        update_job(store, &job, from).await;
    }
    job
}

fn job_ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .map(|job| job.id.as_str().to_owned())
        .filter(|id| id.starts_with(PREFIX))
        .map(|id| id[PREFIX.len()..].to_owned())
        .collect()
}

async fn job_fields_round_trip_exactly(store: &dyn Store) {
    let argv = rich_job(
        "job-argv",
        Command::Argv(vec![
            "/usr/bin/env".to_owned(),
            "--flag=with spaces".to_owned(),
            String::new(),
            "ünïcødé ☃".to_owned(),
        ]),
    );
    let script = Job {
        worker_id: None,
        exit_code: None,
        reason: None,
        started_at: None,
        finished_at: None,
        state: JobState::Queued,
        attempts: 0,
        withdrawn: 0,
        sequence: 0,
        spec: JobSpec {
            timeout: None,
            working_dir: None,
            priority: Priority::MAX,
            sla_class: SlaClass::Critical,
            ..rich_job(
                "job-script",
                Command::Script("set -eu\nmake test\n".to_owned()),
            )
            .spec
        },
        ..rich_job("job-script", Command::Script(String::new()))
    };
    for job in [argv, script] {
        let inserted = insert_job(store, &job).await;
        assert_ne!(
            inserted.sequence, job.sequence,
            "insert_job must assign the sequence, not keep the caller's"
        );
        let read = get_existing_job(store, &job.id).await;
        assert_eq!(read, inserted, "every job field must round-trip");
        assert_eq!(read.spec, job.spec, "the spec must round-trip");
        assert_eq!(read.submitted_at, job.submitted_at, "timestamps are exact");
    }
    assert_eq!(get_job(store, &job_id("job-never-inserted")).await, None);
}

async fn duplicate_job_insert_is_refused(store: &dyn Store) {
    let job = plain_job("job-duplicate");
    let first = insert_job(store, &job).await;
    let other = rich_job("job-duplicate", Command::Script("echo other".to_owned()));
    match store.insert_job(&other).await {
        Err(Error::JobExists(existing)) => assert_eq!(existing, job.id),
        other => panic!("second insert of {}: want JobExists, got {other:?}", job.id),
    }
    // Also when the job has moved on since.
    let mut moved = first.clone();
    moved.state = JobState::Cancelled;
    update_job(store, &moved, JobState::Queued).await;
    match store.insert_job(&job).await {
        Err(Error::JobExists(existing)) => assert_eq!(existing, job.id),
        other => panic!(
            "insert over a cancelled {}: want JobExists, got {other:?}",
            job.id
        ),
    }
    assert_eq!(
        get_existing_job(store, &job.id).await,
        moved,
        "a refused insert must not touch the existing job"
    );
}

async fn job_sequences_strictly_increase(store: &dyn Store) {
    let mut previous = 0;
    for n in 0..10 {
        // Caller sequences that go down: they must not matter.
        let job = Job {
            sequence: 1_000 - n,
            ..plain_job(&format!("job-seq-{n}"))
        };
        let stored = insert_job(store, &job).await;
        assert!(
            stored.sequence > previous,
            "sequence must strictly increase: {} after {previous}",
            stored.sequence
        );
        assert_eq!(
            get_existing_job(store, &job.id).await.sequence,
            stored.sequence
        );
        previous = stored.sequence;
    }
    let concurrent: Vec<Job> = (0..16)
        .map(|n| plain_job(&format!("job-seq-concurrent-{n}")))
        .collect();
    let results =
        futures::future::join_all(concurrent.iter().map(|job| store.insert_job(job))).await;
    let mut sequences = BTreeSet::new();
    for result in results {
        match result {
            Ok(job) => {
                assert!(
                    job.sequence > previous,
                    "concurrent insert got sequence {} after {previous}",
                    job.sequence
                );
                sequences.insert(job.sequence);
            }
            Err(err) => panic!("concurrent insert_job failed: {err}"),
        }
    }
    assert_eq!(
        sequences.len(),
        16,
        "concurrent inserts must get distinct sequences"
    );
}

async fn list_jobs_filters_and_orders(store: &dyn Store) {
    use JobState::*;
    let (t1, t2) = (tenant("list-t1"), tenant("list-t2"));
    let (q1, q2) = (queue("list-q1"), queue("list-q2"));
    let (w1, w2) = (id("list-w1"), id("list-w2"));
    // (name, tenant, queue, state, worker), in insertion (so sequence) order.
    let jobs = [
        ("list-a", &t1, &q1, Queued, None),
        ("list-b", &t1, &q2, Running, Some(&w1)),
        ("list-c", &t2, &q1, Assigned, Some(&w2)),
        ("list-d", &t1, &q1, Succeeded, Some(&w1)),
        ("list-e", &t2, &q2, Queued, None),
        ("list-f", &t1, &q1, Cancelled, None),
        ("list-g", &t1, &q2, Assigned, Some(&w1)),
    ];
    let mut sequences = Vec::new();
    for (name, tenant, queue, state, worker) in jobs {
        let mut job = plain_job(name);
        job.spec.tenant = tenant.clone();
        job.spec.queue = queue.clone();
        if name == "list-c" || name == "list-f" {
            job.spec.sla_class = SlaClass::Critical;
        }
        let mut job = job_in_state(store, job, Queued).await;
        if let Some(worker) = worker {
            // Set on assignment, as the scheduler does: the filter must follow updates.
            job.worker_id = Some(worker.clone());
            job.attempts = 1;
            job.state = Assigned;
            update_job(store, &job, Queued).await;
        }
        if state != job.state {
            let from = job.state;
            if from == Assigned && state == Succeeded {
                job.state = Running;
                update_job(store, &job, Assigned).await;
                job.state = Succeeded;
                update_job(store, &job, Running).await;
            } else {
                job.state = state;
                update_job(store, &job, from).await;
            }
        }
        assert_eq!(get_existing_job(store, &job.id).await, job);
        sequences.push(job.sequence);
    }
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]));

    let filter = |tenant: Option<&TenantName>, states: &[JobState]| JobFilter {
        states: states.to_vec(),
        tenant: tenant.cloned(),
        ..JobFilter::default()
    };
    let assert_ascending = |what: &str, jobs: &[Job]| {
        assert!(
            jobs.windows(2)
                .all(|pair| pair[0].sequence < pair[1].sequence),
            "{what}: without a limit jobs come oldest first, got {:?}",
            job_ids(jobs)
        );
    };

    let cases: Vec<(&str, JobFilter, Vec<&str>)> = vec![
        (
            "tenant t1",
            filter(Some(&t1), &[]),
            vec!["list-a", "list-b", "list-d", "list-f", "list-g"],
        ),
        (
            "tenant t2",
            filter(Some(&t2), &[]),
            vec!["list-c", "list-e"],
        ),
        (
            "tenant t1, unfinished",
            JobFilter {
                tenant: Some(t1.clone()),
                ..JobFilter::unfinished()
            },
            vec!["list-a", "list-b", "list-g"],
        ),
        (
            "tenant t1, one state",
            filter(Some(&t1), &[Assigned]),
            vec!["list-g"],
        ),
        (
            "tenant t1, states repeated",
            filter(Some(&t1), &[Succeeded, Queued, Succeeded]),
            vec!["list-a", "list-d"],
        ),
        (
            "queue q1",
            JobFilter {
                queue: Some(q1.clone()),
                ..JobFilter::default()
            },
            vec!["list-a", "list-c", "list-d", "list-f"],
        ),
        (
            "worker w1",
            JobFilter {
                worker_id: Some(w1.clone()),
                ..JobFilter::default()
            },
            vec!["list-b", "list-d", "list-g"],
        ),
        (
            "worker w1, running or assigned",
            JobFilter {
                worker_id: Some(w1.clone()),
                states: vec![Running, Assigned],
                ..JobFilter::default()
            },
            vec!["list-b", "list-g"],
        ),
        (
            "tenant t1, queue q2, worker w1",
            JobFilter {
                tenant: Some(t1.clone()),
                queue: Some(q2.clone()),
                worker_id: Some(w1.clone()),
                ..JobFilter::default()
            },
            vec!["list-b", "list-g"],
        ),
        (
            "tenant t2, queue q1, queued",
            JobFilter {
                tenant: Some(t2.clone()),
                queue: Some(q1.clone()),
                states: vec![Queued],
                ..JobFilter::default()
            },
            vec![],
        ),
        (
            "unknown tenant",
            filter(Some(&tenant("list-none")), &[]),
            vec![],
        ),
        (
            "tenant t2, critical",
            JobFilter {
                sla_class: Some(SlaClass::Critical),
                ..filter(Some(&t2), &[])
            },
            vec!["list-c"],
        ),
        (
            "tenant t1, critical",
            JobFilter {
                sla_class: Some(SlaClass::Critical),
                ..filter(Some(&t1), &[])
            },
            vec!["list-f"],
        ),
        (
            "tenant t1, best effort",
            JobFilter {
                sla_class: Some(SlaClass::BestEffort),
                ..filter(Some(&t1), &[])
            },
            vec![],
        ),
        (
            "unknown worker",
            JobFilter {
                worker_id: Some(id("list-none")),
                ..JobFilter::default()
            },
            vec![],
        ),
        (
            "tenant t1, newest 2",
            JobFilter {
                limit: Some(2),
                ..filter(Some(&t1), &[])
            },
            vec!["list-g", "list-f"],
        ),
        (
            "tenant t1, queued or succeeded, newest 1",
            JobFilter {
                limit: Some(1),
                ..filter(Some(&t1), &[Queued, Succeeded])
            },
            vec!["list-d"],
        ),
        (
            "tenant t1, more than there are",
            JobFilter {
                limit: Some(100),
                ..filter(Some(&t1), &[])
            },
            vec!["list-g", "list-f", "list-d", "list-b", "list-a"],
        ),
        (
            "tenant t1, limit 0",
            JobFilter {
                limit: Some(0),
                ..filter(Some(&t1), &[])
            },
            vec![],
        ),
    ];
    for (what, filter, want) in cases {
        let listed = list_jobs(store, &filter).await;
        assert_eq!(job_ids(&listed), want, "list_jobs: {what}");
        assert_eq!(
            listed.len(),
            want.len(),
            "list_jobs: {what}: other jobs listed"
        );
        if filter.limit.is_none() {
            assert_ascending(what, &listed);
        }
        for job in &listed {
            assert_eq!(
                Some(job),
                get_job(store, &job.id).await.as_ref(),
                "{what}: a listed job must equal the one get_job returns"
            );
        }
    }

    // Without tenant or queue the filters still apply to whatever else the store holds.
    let all = list_jobs(store, &JobFilter::default()).await;
    assert_ascending("all", &all);
    let unfinished = list_jobs(store, &JobFilter::unfinished()).await;
    assert_ascending("unfinished", &unfinished);
    assert!(
        unfinished.iter().all(|job| !job.state.is_terminal()),
        "unfinished must leave out finished jobs"
    );
    assert_eq!(
        unfinished.len(),
        all.iter().filter(|job| !job.state.is_terminal()).count(),
        "unfinished must list every unfinished job"
    );
    let newest = list_jobs(
        store,
        &JobFilter {
            limit: Some(3),
            ..JobFilter::default()
        },
    )
    .await;
    let want: Vec<Job> = all.iter().rev().take(3).cloned().collect();
    assert_eq!(
        newest, want,
        "limit 3 lists the three newest jobs, newest first"
    );
}

async fn job_updates_replace_the_job(store: &dyn Store) {
    let mut job = insert_job(store, &plain_job("job-update")).await;
    let sequence = job.sequence;
    type Change = fn(&mut Job);
    let steps: [(JobState, Change); 4] = [
        (JobState::Assigned, |job| {
            job.attempts = 1;
            job.worker_id = Some(id("update-worker"));
        }),
        (JobState::Running, |job| {
            job.started_at = Some(job_time(10));
        }),
        // Equal states are allowed: a running job may be updated in place.
        (JobState::Running, |job| {
            job.reason = Some("still running".to_owned());
            job.spec.env.insert("ADDED".to_owned(), "late".to_owned());
        }),
        (JobState::Succeeded, |job| {
            job.exit_code = Some(0);
            job.reason = None;
            job.finished_at = Some(job_time(20));
        }),
    ];
    for (to, change) in steps {
        let from = job.state;
        job.state = to;
        change(&mut job);
        update_job(store, &job, from).await;
        assert_eq!(
            get_existing_job(store, &job.id).await,
            job,
            "{from} -> {to}: update_job must store the job it was given"
        );
    }

    // The sequence is the store's: an update carrying another one does not move the job.
    let mut renumbered = job.clone();
    renumbered.sequence = sequence + 1_000_000;
    renumbered.reason = Some("renumbered".to_owned());
    update_job(store, &renumbered, JobState::Succeeded).await;
    let stored = get_existing_job(store, &job.id).await;
    assert_eq!(
        stored.sequence, sequence,
        "update_job must keep the stored sequence"
    );
    assert_eq!(stored.reason.as_deref(), Some("renumbered"));

    let unknown = plain_job("job-update-unknown");
    match store.update_job(&unknown, JobState::Queued).await {
        Err(Error::JobNotFound(got)) => assert_eq!(got, unknown.id),
        other => panic!("update of unknown job: want JobNotFound, got {other:?}"),
    }
    assert_eq!(
        get_job(store, &unknown.id).await,
        None,
        "update_job must not create"
    );
}

async fn batched_job_writes_have_one_result_each(store: &dyn Store) {
    let taken = plain_job("batch-taken");
    let stored = match store.insert_job(&taken).await {
        Ok(job) => job,
        Err(err) => panic!("insert failed: {err}"),
    };
    let batch = [plain_job("batch-a"), taken.clone(), plain_job("batch-b")];
    let inserted = match store.insert_jobs(&batch).await {
        Ok(results) => results,
        Err(err) => panic!("insert_jobs failed as a whole: {err}"),
    };
    assert_eq!(inserted.len(), 3, "one result per job");
    assert!(
        matches!(&inserted[1], Err(Error::JobExists(id)) if *id == taken.id),
        "a taken id fails alone: {:?}",
        inserted[1]
    );
    let (a, b) = match (&inserted[0], &inserted[2]) {
        (Ok(a), Ok(b)) => (a.clone(), b.clone()),
        other => panic!("the other inserts succeed: {other:?}"),
    };
    assert!(
        stored.sequence < a.sequence && a.sequence < b.sequence,
        "sequences follow the batch order"
    );
    assert_eq!(get_existing_job(store, &b.id).await, b);

    let assigned = |job: &Job| Job {
        state: JobState::Assigned,
        attempts: 1,
        withdrawn: 0,
        ..job.clone()
    };
    let updates = [
        (assigned(&a), JobState::Queued),
        (assigned(&b), JobState::Running),
        (assigned(&stored), JobState::Queued),
    ];
    let updated = match store.update_jobs(&updates).await {
        Ok(results) => results,
        Err(err) => panic!("update_jobs failed as a whole: {err}"),
    };
    assert_eq!(updated.len(), 3);
    assert!(updated[0].is_ok() && updated[2].is_ok(), "{updated:?}");
    assert!(
        matches!(
            updated[1],
            Err(Error::JobStateConflict {
                actual: JobState::Queued,
                ..
            })
        ),
        "a stale update fails alone: {:?}",
        updated[1]
    );
    assert_eq!(
        get_existing_job(store, &a.id).await.state,
        JobState::Assigned
    );
    assert_eq!(get_existing_job(store, &b.id).await, b, "untouched");
    assert_eq!(
        get_existing_job(store, &stored.id).await.state,
        JobState::Assigned
    );
}

async fn stale_job_update_is_a_conflict(store: &dyn Store) {
    let job = job_in_state(store, plain_job("job-stale"), JobState::Assigned).await;
    let before = get_existing_job(store, &job.id).await;
    // (expected, new state): the first is legal from `expected`, the second is not, and the
    // conflict is reported either way.
    for (expected, to) in [
        (JobState::Queued, JobState::Assigned),
        (JobState::Queued, JobState::Succeeded),
        (JobState::Running, JobState::Succeeded),
        (JobState::Succeeded, JobState::Succeeded),
    ] {
        let stale = Job {
            state: to,
            reason: Some("stale write".to_owned()),
            ..job.clone()
        };
        match store.update_job(&stale, expected).await {
            Err(Error::JobStateConflict {
                job_id,
                expected: got_expected,
                actual,
            }) => {
                assert_eq!(job_id, job.id);
                assert_eq!(got_expected, expected);
                assert_eq!(
                    actual,
                    JobState::Assigned,
                    "the conflict names the stored state"
                );
            }
            other => panic!(
                "update expecting {expected} of an assigned job: want JobStateConflict, got {other:?}"
            ),
        }
        assert_eq!(
            get_existing_job(store, &job.id).await,
            before,
            "a refused update must leave the job exactly as it was"
        );
    }
}

async fn job_updates_follow_the_state_machine(store: &dyn Store) {
    for from in JobState::ALL {
        for to in JobState::ALL {
            let name = format!("job-machine-{from}-{to}");
            let current = job_in_state(store, plain_job(&name), from).await;
            let wanted = Job {
                state: to,
                reason: Some(format!("{from} -> {to}")),
                ..current.clone()
            };
            let result = store.update_job(&wanted, from).await;
            let stored = get_existing_job(store, &current.id).await;
            match (from == to || from.can_transition_to(to), result) {
                (true, Ok(())) => assert_eq!(stored, wanted, "{from} -> {to}: stored job"),
                (false, Err(Error::IllegalJobTransition(err))) => {
                    assert_eq!((err.from, err.to), (from, to), "{from} -> {to}");
                    assert_eq!(stored, current, "{from} -> {to}: refused, job unchanged");
                }
                (legal, got) => {
                    panic!("{from} -> {to}: core says legal = {legal}, store says {got:?}")
                }
            }
        }
    }
}

async fn concurrent_job_updates_have_one_winner(store: &dyn Store) {
    let job = insert_job(store, &plain_job("job-race")).await;
    // Sixteen dispatchers read the job as queued and each assign it to its own worker.
    let attempts: Vec<Job> = (0..16)
        .map(|n| Job {
            state: JobState::Assigned,
            attempts: 1,
            worker_id: Some(id(&format!("race-worker-{n}"))),
            ..job.clone()
        })
        .collect();
    let results = futures::future::join_all(
        attempts
            .iter()
            .map(|attempt| store.update_job(attempt, JobState::Queued)),
    )
    .await;
    let mut winners = Vec::new();
    for (attempt, result) in attempts.iter().zip(results) {
        match result {
            Ok(()) => winners.push(attempt),
            Err(Error::JobStateConflict {
                expected, actual, ..
            }) => assert_eq!(
                (expected, actual),
                (JobState::Queued, JobState::Assigned),
                "a loser must see the winner's state"
            ),
            Err(err) => panic!("concurrent queued -> assigned: unexpected error {err}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of many concurrent queued -> assigned may win"
    );
    assert_eq!(
        get_existing_job(store, &job.id).await,
        *winners[0],
        "the stored job is the winner's"
    );
}

fn chunk(job: &Job, attempt: u32, sequence: u64, stream: LogStream, data: &[u8]) -> LogChunk {
    LogChunk {
        job_id: job.id.clone(),
        attempt,
        sequence,
        stream,
        data: data.to_vec(),
    }
}

async fn append_logs(store: &dyn Store, chunks: &[LogChunk]) {
    if let Err(err) = store.append_logs(chunks).await {
        panic!("append_logs({} chunks) failed: {err}", chunks.len());
    }
}

async fn read_logs(store: &dyn Store, id: &JobId, after: usize, limit: usize) -> Vec<LogChunk> {
    match store.read_logs(id, after, limit).await {
        Ok(chunks) => chunks,
        Err(err) => panic!("read_logs({id}, {after}, {limit}) failed: {err}"),
    }
}

fn keys(chunks: &[LogChunk]) -> Vec<(u32, u64)> {
    chunks
        .iter()
        .map(|chunk| (chunk.attempt, chunk.sequence))
        .collect()
}

async fn logs_are_ordered_and_stored_once(store: &dyn Store) {
    use LogStream::{Output, Stderr, Stdout};
    let job = insert_job(store, &plain_job("logs")).await;
    let other = insert_job(store, &plain_job("logs-other")).await;
    assert_eq!(
        read_logs(store, &job.id, 0, 100).await,
        [],
        "a job without output has no logs"
    );
    append_logs(store, &[]).await;

    // Out of order, across attempts, with bytes that are not text, and interleaved with
    // another job's output in the same call.
    let first = [
        // Current agents send stdout and stderr as one stream, `output`.
        chunk(&job, 2, 0, Output, b"second attempt\n"),
        chunk(&job, 1, 1, Stderr, b"\xff\xfe not utf-8 \0 nul\n"),
        chunk(&other, 1, 0, Stdout, b"other job\n"),
        chunk(&job, 1, 0, Stdout, b"first line\n"),
        chunk(&job, 1, 3, Stdout, b""),
        // A duplicate inside one call: the first one is kept.
        chunk(&job, 1, 0, Stdout, b"duplicate in the same call\n"),
    ];
    append_logs(store, &first).await;
    // Re-sent after a reconnect, with a chunk that changed in transit and a new one.
    let resent = [
        chunk(&job, 1, 1, Stdout, b"changed when resent\n"),
        chunk(&job, 1, 2, Stdout, b"third line\n"),
        chunk(&job, 2, 0, Output, b"second attempt\n"),
    ];
    append_logs(store, &resent).await;

    let want = vec![
        first[3].clone(),
        first[1].clone(),
        resent[1].clone(),
        first[4].clone(),
        first[0].clone(),
    ];
    let all = read_logs(store, &job.id, 0, 100).await;
    assert_eq!(
        keys(&all),
        [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0)],
        "logs are read in (attempt, sequence) order, each chunk once"
    );
    assert_eq!(all, want, "the first copy of a chunk is the one kept");
    assert_eq!(
        read_logs(store, &other.id, 0, 100).await,
        [first[2].clone()],
        "a job reads only its own output"
    );

    // Paging: `after` counts chunks already read, `limit` bounds the page.
    for (after, limit, want_keys) in [
        (0, 2, vec![(1, 0), (1, 1)]),
        (2, 2, vec![(1, 2), (1, 3)]),
        (4, 2, vec![(2, 0)]),
        (5, 2, vec![]),
        (500, 2, vec![]),
        (1, 0, vec![]),
        (3, usize::MAX, vec![(1, 3), (2, 0)]),
        (0, usize::MAX, keys(&want)),
    ] {
        assert_eq!(
            keys(&read_logs(store, &job.id, after, limit).await),
            want_keys,
            "read_logs(after {after}, limit {limit})"
        );
    }
    let mut paged = Vec::new();
    loop {
        let page = read_logs(store, &job.id, paged.len(), 2).await;
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, want, "reading page by page gives the whole output");
}

async fn many_logs_in_one_call(store: &dyn Store) {
    let job = insert_job(store, &plain_job("logs-many")).await;
    // Enough chunks that a store writing in batches has full batches and a remainder, each
    // sent twice in the same call, newest first.
    let chunks: Vec<LogChunk> = (0..203u64)
        .rev()
        .map(|n| {
            let stream = if n % 3 == 0 {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            chunk(&job, 1, n, stream, format!("line {n}\n").as_bytes())
        })
        .collect();
    let twice: Vec<LogChunk> = chunks.iter().chain(&chunks).cloned().collect();
    append_logs(store, &twice).await;
    append_logs(store, &chunks[..50]).await;
    let all = read_logs(store, &job.id, 0, usize::MAX).await;
    let mut want = chunks;
    want.reverse();
    assert_eq!(all, want, "every chunk once, in sequence order");
    assert_eq!(
        read_logs(store, &job.id, 200, 10).await,
        want[200..],
        "the tail of many chunks"
    );
}

async fn logs_of_unknown_jobs_are_not_found(store: &dyn Store) {
    let known = insert_job(store, &plain_job("logs-known")).await;
    let unknown = plain_job("logs-unknown");
    match store
        .append_logs(&[chunk(&unknown, 1, 0, LogStream::Stdout, b"lost\n")])
        .await
    {
        Err(Error::JobNotFound(got)) => assert_eq!(got, unknown.id),
        other => panic!("append_logs of an unknown job: want JobNotFound, got {other:?}"),
    }
    // A call naming an unknown job stores nothing, not even the known job's chunks.
    match store
        .append_logs(&[
            chunk(&known, 1, 0, LogStream::Stdout, b"known\n"),
            chunk(&unknown, 1, 0, LogStream::Stdout, b"lost\n"),
        ])
        .await
    {
        Err(Error::JobNotFound(got)) => assert_eq!(got, unknown.id),
        other => panic!("append_logs naming an unknown job: want JobNotFound, got {other:?}"),
    }
    assert_eq!(
        read_logs(store, &known.id, 0, 100).await,
        [],
        "a refused append_logs must store nothing"
    );
    match store.read_logs(&unknown.id, 0, 100).await {
        Err(Error::JobNotFound(got)) => assert_eq!(got, unknown.id),
        other => panic!("read_logs of an unknown job: want JobNotFound, got {other:?}"),
    }
    assert_eq!(
        get_job(store, &unknown.id).await,
        None,
        "append_logs must not create a job"
    );
}

async fn batches_naming_a_job_twice_apply_in_order(store: &dyn Store) {
    // A batch is the calls one after the other: an id inserted twice is taken the second time,
    // and a job updated twice is compared against the first update's state.
    let first = plain_job("batch-twice");
    let results = match store.insert_jobs(&[first.clone(), first.clone()]).await {
        Ok(results) => results,
        Err(err) => panic!("insert_jobs failed as a whole: {err}"),
    };
    let stored = match &results[..] {
        [Ok(stored), Err(Error::JobExists(id))] if *id == first.id => stored.clone(),
        other => panic!("an id twice in one batch: want Ok then JobExists, got {other:?}"),
    };
    let assigned = Job {
        state: JobState::Assigned,
        attempts: 1,
        worker_id: Some(id("twice-worker")),
        ..stored.clone()
    };
    let running = Job {
        state: JobState::Running,
        started_at: Some(job_time(5)),
        ..assigned.clone()
    };
    let unknown = plain_job("batch-twice-unknown");
    let updates = [
        (assigned.clone(), JobState::Queued),
        (running.clone(), JobState::Assigned),
        // Stale: the job is running by now.
        (assigned.clone(), JobState::Queued),
        (unknown.clone(), JobState::Queued),
    ];
    let results = match store.update_jobs(&updates).await {
        Ok(results) => results,
        Err(err) => panic!("update_jobs failed as a whole: {err}"),
    };
    assert!(
        matches!(&results[..], [Ok(()), Ok(()), Err(Error::JobStateConflict { actual: JobState::Running, .. }), Err(Error::JobNotFound(missing))] if *missing == unknown.id),
        "a job twice in one batch: {results:?}"
    );
    assert_eq!(get_existing_job(store, &stored.id).await, running);

    // Distinct jobs, each failing its own way beside one that applies.
    let done = job_in_state(store, plain_job("batch-done"), JobState::Succeeded).await;
    let queued = insert_job(store, &plain_job("batch-queued")).await;
    let ghost = plain_job("batch-ghost");
    let updates = [
        (
            Job {
                state: JobState::Running,
                ..done.clone()
            },
            JobState::Succeeded,
        ),
        (
            Job {
                state: JobState::Assigned,
                attempts: 1,
                ..ghost.clone()
            },
            JobState::Queued,
        ),
        (
            Job {
                state: JobState::Assigned,
                attempts: 1,
                ..queued.clone()
            },
            JobState::Queued,
        ),
    ];
    let results = match store.update_jobs(&updates).await {
        Ok(results) => results,
        Err(err) => panic!("update_jobs failed as a whole: {err}"),
    };
    assert!(
        matches!(&results[..], [Err(Error::IllegalJobTransition(_)), Err(Error::JobNotFound(missing)), Ok(())] if *missing == ghost.id),
        "illegal, unknown and legal in one batch: {results:?}"
    );
    assert_eq!(
        get_existing_job(store, &done.id).await,
        done,
        "refused, unchanged"
    );
    assert_eq!(get_existing_job(store, &queued.id).await, updates[2].0);
    assert_eq!(
        get_job(store, &ghost.id).await,
        None,
        "update_jobs must not create"
    );
}

async fn usage_adds_up_and_counts_an_attempt_once(store: &dyn Store) {
    let hour = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;
    let attempt =
        |job: &str, attempt: u32, tenant: &str, ended_at_ms: u64, secs: f64| AttemptUsage {
            job_id: format!("{PREFIX}usage-{job}"),
            attempt,
            tenant: format!("{PREFIX}{tenant}"),
            queue: "default".into(),
            pool: format!("{PREFIX}pool"),
            worker_id: format!("{PREFIX}w1"),
            ended_at_ms,
            worker_seconds: secs,
            cost: secs / 3600.0,
        };
    let first = [
        attempt("a", 1, "t1", hour + 10, 30.0),
        attempt("a", 2, "t1", hour + 20, 60.0),
        attempt("b", 1, "t2", hour + HOUR_MS, 90.0),
    ];
    if let Err(err) = store.record_attempt_usage(&first).await {
        panic!("record_attempt_usage failed: {err}");
    }
    // The same row again changes nothing; an attempt that shares its number with an earlier
    // one (on another worker, ending later) is kept.
    let mut shared_number = attempt("a", 2, "t1", hour + 40, 5.0);
    shared_number.worker_id = format!("{PREFIX}w2");
    let again = [
        attempt("a", 1, "t1", hour + 10, 30.0),
        shared_number.clone(),
    ];
    if let Err(err) = store.record_attempt_usage(&again).await {
        panic!("record_attempt_usage failed: {err}");
    }
    let ours = |totals: Vec<AttemptTotals>| -> Vec<(String, u64, f64)> {
        totals
            .into_iter()
            .filter(|t| t.pool.starts_with(PREFIX))
            .map(|t| (t.tenant, t.attempts, t.worker_seconds))
            .collect()
    };
    let all = ours(store.attempt_totals(0).await.unwrap_or_default());
    assert_eq!(
        all,
        [
            (format!("{PREFIX}t1"), 3, 95.0),
            (format!("{PREFIX}t2"), 1, 90.0)
        ],
        "attempt totals by tenant"
    );
    let later = ours(
        store
            .attempt_totals(hour + HOUR_MS)
            .await
            .unwrap_or_default(),
    );
    assert_eq!(
        later,
        [(format!("{PREFIX}t2"), 1, 90.0)],
        "attempt totals since"
    );
    let Ok(job_id) = JobId::new(format!("{PREFIX}usage-a")) else {
        panic!("contract bug: bad job id");
    };
    let usage = match store.job_usage(&job_id).await {
        Ok(usage) => usage,
        Err(err) => panic!("job_usage failed: {err}"),
    };
    let mut expected = first[..2].to_vec();
    expected.push(shared_number);
    assert_eq!(usage, expected, "one job's attempts in order");

    let pool = |hour_start_ms: u64, secs: f64| PoolUsage {
        pool: format!("{PREFIX}pool"),
        hour_start_ms,
        worker_seconds: secs,
        busy_seconds: secs / 2.0,
        cost: secs / 3600.0,
        at_max_waiting_seconds: 1.0,
    };
    // Two passes in one hour (the second not at the hour's start) and one an hour later.
    let passes = [
        pool(hour, 60.0),
        pool(hour + 5_000, 40.0),
        pool(hour + HOUR_MS, 10.0),
    ];
    if let Err(err) = store.add_pool_usage(&passes).await {
        panic!("add_pool_usage failed: {err}");
    }
    let find = |rows: Vec<PoolUsage>| {
        rows.into_iter()
            .find(|row| row.pool == format!("{PREFIX}pool"))
    };
    let total = find(store.pool_usage(0).await.unwrap_or_default());
    assert_eq!(
        total.map(|t| (t.worker_seconds, t.busy_seconds, t.at_max_waiting_seconds)),
        Some((110.0, 55.0, 3.0)),
        "pool usage totals"
    );
    // A window starting inside the second hour includes that whole hour only.
    let since = find(
        store
            .pool_usage(hour + HOUR_MS + 10)
            .await
            .unwrap_or_default(),
    );
    assert_eq!(
        since.map(|t| (t.hour_start_ms, t.worker_seconds)),
        Some((hour + HOUR_MS, 10.0)),
        "pool usage since"
    );
}

async fn tenants_round_trip(store: &dyn Store) {
    use hodei_core::tenancy::{Limit, Resource, Tier};
    let name = |s: &str| TenantName::new(format!("{PREFIX}{s}")).expect("valid tenant name");
    let mut gold = Tenant::new(name("gold"));
    gold.tier = Some(Tier::Gold);
    gold.weight = 3;
    gold.quotas.insert(Resource::RunningJobs, Limit::hard(4.0));
    gold.quotas.insert(Resource::DailyCost, Limit::soft(12.5));
    gold.max_queued = Some(100);
    let plain = Tenant::new(name("a-plain"));
    store.put_tenant(&gold).await.expect("put tenant");
    store.put_tenant(&plain).await.expect("put tenant");
    let mine = |all: Vec<Tenant>| -> Vec<Tenant> {
        all.into_iter()
            .filter(|t| t.name.as_str().starts_with(PREFIX))
            .collect()
    };
    let listed = mine(store.list_tenants().await.expect("list tenants"));
    assert_eq!(
        listed,
        vec![plain.clone(), gold.clone()],
        "ordered by name, fields exact"
    );
    gold.weight = 5;
    gold.tier = Some(Tier::Platinum);
    gold.quotas.remove(&Resource::DailyCost);
    store.put_tenant(&gold).await.expect("replace tenant");
    let listed = mine(store.list_tenants().await.expect("list tenants"));
    assert_eq!(listed, vec![plain.clone(), gold.clone()], "put replaces");
    assert!(store.delete_tenant(&gold.name).await.expect("delete"));
    assert!(!store.delete_tenant(&gold.name).await.expect("delete again"));
    assert!(store.delete_tenant(&plain.name).await.expect("delete"));
    assert!(mine(store.list_tenants().await.expect("list")).is_empty());
}

async fn drains_are_recorded(store: &dyn Store) {
    let keep = id("drain-keep");
    let plain = id("drain-plain");
    for worker in [&keep, &plain] {
        insert(
            store,
            &plain_worker(worker.clone(), None),
            WorkerState::Idle,
        )
        .await;
    }
    let drained = |list: Vec<(WorkerId, AfterDrain)>| -> Vec<(WorkerId, AfterDrain)> {
        list.into_iter()
            .filter(|(worker, _)| *worker == keep || *worker == plain)
            .collect()
    };
    let read = || async {
        match store.drained_workers().await {
            Ok(list) => list,
            Err(err) => panic!("drained_workers failed: {err}"),
        }
    };
    assert_eq!(drained(read().await), [], "idle workers are not drained");
    if let Err(err) = store.set_worker_drain(&keep, Some(AfterDrain::Keep)).await {
        panic!("set_worker_drain({keep}) failed: {err}");
    }
    assert_eq!(
        drained(read().await),
        [],
        "a drain mark alone does not make a worker draining: its state does"
    );
    transition(store, &keep, WorkerState::Draining).await;
    transition(store, &plain, WorkerState::Draining).await;
    assert_eq!(
        drained(read().await),
        [
            (keep.clone(), AfterDrain::Keep),
            (plain.clone(), AfterDrain::Terminate)
        ],
        "draining workers in id order, terminate when nothing was recorded"
    );
    if let Err(err) = store.set_worker_drain(&keep, None).await {
        panic!("set_worker_drain({keep}, None) failed: {err}");
    }
    transition(store, &plain, WorkerState::Idle).await;
    assert_eq!(
        drained(read().await),
        [(keep.clone(), AfterDrain::Terminate)]
    );
    match store
        .set_worker_drain(&id("drain-unknown"), Some(AfterDrain::Keep))
        .await
    {
        Err(Error::WorkerNotFound(got)) => assert_eq!(got, id("drain-unknown")),
        other => {
            panic!("set_worker_drain of an unknown worker: want WorkerNotFound, got {other:?}")
        }
    }
}

async fn retention_prunes_old_finished_jobs_and_terminated_workers(store: &dyn Store) {
    let before_all = now_millis();
    wait_for_clock_past(before_all).await;
    let finished = job_in_state(store, plain_job("retention-done"), JobState::Succeeded).await;
    append_logs(
        store,
        &[chunk(&finished, 1, 0, LogStream::Output, b"old output\n")],
    )
    .await;
    let cancelled =
        job_in_state(store, plain_job("retention-cancelled"), JobState::Cancelled).await;
    let queued = job_in_state(store, plain_job("retention-queued"), JobState::Queued).await;
    let running = job_in_state(store, plain_job("retention-running"), JobState::Running).await;
    let gone = id("retention-gone");
    let live = id("retention-live");
    insert(store, &plain_worker(gone.clone(), None), WorkerState::Idle).await;
    transition(store, &gone, WorkerState::Terminated).await;
    insert(store, &plain_worker(live.clone(), None), WorkerState::Idle).await;
    let last_write = now_millis();
    wait_for_clock_past(last_write).await;
    // Everything above was written strictly before this instant.
    let written = now_millis();

    // Nothing written after the cut-off goes (leftovers of earlier checks may).
    let prune_jobs = |before: SystemTime, limit: usize| async move {
        match store.prune_jobs(ms(before), limit).await {
            Ok(count) => count,
            Err(err) => panic!("prune_jobs failed: {err}"),
        }
    };
    let prune_workers = |before: SystemTime, limit: usize| async move {
        match store.prune_workers(ms(before), limit).await {
            Ok(count) => count,
            Err(err) => panic!("prune_workers failed: {err}"),
        }
    };
    prune_jobs(before_all, 10_000).await;
    prune_workers(before_all, 10_000).await;
    for job in [&finished, &cancelled, &queued, &running] {
        assert!(
            get_job(store, &job.id).await.is_some(),
            "{} was written after the cut-off and must stay",
            job.id
        );
    }
    assert!(get(store, &gone).await.is_some());

    // Past the cut-off: batches of at most `limit`, until none is left.
    let mut batches = 0;
    loop {
        let count = prune_jobs(written, 1).await;
        assert!(
            count <= 1,
            "prune_jobs deleted {count} jobs with a limit of 1"
        );
        if count == 0 {
            break;
        }
        batches += 1;
    }
    assert!(batches >= 2, "two finished jobs take two batches of one");
    assert_eq!(get_job(store, &finished.id).await, None);
    assert_eq!(get_job(store, &cancelled.id).await, None);
    match store.read_logs(&finished.id, 0, 100).await {
        Err(Error::JobNotFound(_)) => {}
        other => panic!("a pruned job's output must go with it, got {other:?}"),
    }
    for job in [&queued, &running] {
        assert!(
            get_job(store, &job.id).await.is_some(),
            "{} is not finished and must stay",
            job.id
        );
    }
    assert!(prune_workers(written, 10_000).await >= 1);
    assert_eq!(
        get(store, &gone).await,
        None,
        "a terminated worker is pruned"
    );
    assert!(get(store, &live).await.is_some(), "a live worker stays");
    assert_eq!(prune_workers(written, 10_000).await, 0);
}
