//! Every job state change this server writes, kept in memory for the console's job page.
//!
//! Every change of a job's state is a compare-and-set in the store, so the store is where
//! they can all be seen: [`RecordingStore`] wraps the real store, passes every call
//! through, and notes each insert and each successful update that changed a state (from
//! the expected state to the new one, the attempt, the worker, and the reason when it
//! changed). Nothing is written to the store for it and nothing waits on it: a mutex held
//! for a few map operations per batch. What is kept is bounded ([`MAX_JOBS`] jobs,
//! [`MAX_PER_JOB`] changes each) and gone after a restart; the page then falls back to
//! what the store holds (see `hodei_core::console::job_history`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use hodei_core::console::JobTransition;
use hodei_core::cost::{AttemptTotals, AttemptUsage, PoolUsage};
use hodei_core::tenancy::Tenant;
use hodei_core::{Job, JobId, JobState, PoolSpec, TenantName, Worker, WorkerId, WorkerState};
use hodei_ports::store::Error;
use hodei_ports::{CredentialRecord, JobFilter, LogChunk, Store, WorkerFilter, WorkerRecord};

/// Jobs whose changes are kept; past it the job seen first is forgotten.
pub(crate) const MAX_JOBS: usize = 20_000;
/// Changes kept per job; past it the oldest go (and are counted).
pub(crate) const MAX_PER_JOB: usize = 100;

#[derive(Debug, Default)]
struct JobLog {
    changes: VecDeque<JobTransition>,
    dropped: u32,
    last_reason: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<JobId, JobLog>,
    /// Jobs in the order first seen, for forgetting the oldest.
    order: VecDeque<JobId>,
}

/// The state changes seen, by job.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransitionLog(Arc<Mutex<Inner>>);

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TransitionLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A job's changes, oldest first, and how many older ones were dropped.
    pub(crate) fn of(&self, id: &JobId) -> (Vec<JobTransition>, u32) {
        self.lock().jobs.get(id).map_or((Vec::new(), 0), |log| {
            (log.changes.iter().cloned().collect(), log.dropped)
        })
    }

    /// Notes `job` written in its state, coming from `from` (`None`: submitted).
    fn note(&self, inner: &mut Inner, job: &Job, from: Option<JobState>, at_ms: u64) {
        if from == Some(job.state) {
            return;
        }
        if !inner.jobs.contains_key(&job.id) {
            if inner.order.len() >= MAX_JOBS
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.jobs.remove(&oldest);
            }
            inner.order.push_back(job.id.clone());
        }
        let log = inner.jobs.entry(job.id.clone()).or_default();
        // A reason is news when it changed since the last change seen.
        let reason = (job.reason != log.last_reason)
            .then(|| job.reason.clone())
            .flatten();
        log.last_reason.clone_from(&job.reason);
        log.changes.push_back(JobTransition {
            at_ms,
            from: from.map(JobState::as_str),
            to: job.state.as_str(),
            attempt: job.attempts,
            worker: job.worker_id.as_ref().map(ToString::to_string),
            reason,
        });
        if log.changes.len() > MAX_PER_JOB {
            log.changes.pop_front();
            log.dropped = log.dropped.saturating_add(1);
        }
    }

    fn inserted<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) {
        let at_ms = unix_ms(SystemTime::now());
        let mut inner = self.lock();
        for job in jobs {
            self.note(&mut inner, job, None, at_ms);
        }
    }

    fn updated<'a>(&self, updates: impl IntoIterator<Item = (&'a Job, JobState)>) {
        let at_ms = unix_ms(SystemTime::now());
        let mut inner = self.lock();
        for (job, expected) in updates {
            self.note(&mut inner, job, Some(expected), at_ms);
        }
    }
}

/// The store, with every job state change noted in a [`TransitionLog`].
pub(crate) struct RecordingStore {
    inner: Arc<dyn Store>,
    log: TransitionLog,
}

impl RecordingStore {
    pub(crate) fn new(inner: Arc<dyn Store>, log: TransitionLog) -> Self {
        Self { inner, log }
    }
}

#[async_trait]
impl Store for RecordingStore {
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error> {
        self.inner.insert_worker(worker, state).await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error> {
        self.inner.get_worker(id).await
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error> {
        self.inner.list_workers(filter).await
    }

    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error> {
        self.inner.transition_worker(id, to).await
    }

    async fn set_registered(&self, id: &WorkerId, registered: bool) -> Result<(), Error> {
        self.inner.set_registered(id, registered).await
    }

    async fn set_worker_drain(
        &self,
        id: &WorkerId,
        after: Option<hodei_core::AfterDrain>,
    ) -> Result<(), Error> {
        self.inner.set_worker_drain(id, after).await
    }

    async fn drained_workers(&self) -> Result<Vec<(WorkerId, hodei_core::AfterDrain)>, Error> {
        self.inner.drained_workers().await
    }

    async fn prune_workers(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        self.inner.prune_workers(before_ms, limit).await
    }

    async fn prune_jobs(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        self.inner.prune_jobs(before_ms, limit).await
    }

    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        self.inner.put_pool(pool).await
    }

    async fn insert_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        self.inner.insert_pool(pool).await
    }

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error> {
        self.inner.get_pool(name).await
    }

    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error> {
        self.inner.list_pools().await
    }

    async fn delete_pool(&self, name: &str) -> Result<bool, Error> {
        self.inner.delete_pool(name).await
    }

    async fn put_arrival_profile(
        &self,
        pool: &str,
        profile: &hodei_core::pool_pass::ArrivalProfile,
    ) -> Result<(), Error> {
        self.inner.put_arrival_profile(pool, profile).await
    }

    async fn arrival_profiles(
        &self,
    ) -> Result<Vec<(String, hodei_core::pool_pass::ArrivalProfile)>, Error> {
        self.inner.arrival_profiles().await
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        self.inner.put_tenant(tenant).await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        self.inner.list_tenants().await
    }

    async fn delete_tenant(&self, name: &TenantName) -> Result<bool, Error> {
        self.inner.delete_tenant(name).await
    }

    async fn insert_job(&self, job: &Job) -> Result<Job, Error> {
        let stored = self.inner.insert_job(job).await?;
        self.log.inserted([&stored]);
        Ok(stored)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        self.inner.get_job(id).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, Error> {
        self.inner.list_jobs(filter).await
    }

    async fn update_job(&self, job: &Job, expected: JobState) -> Result<(), Error> {
        self.inner.update_job(job, expected).await?;
        self.log.updated([(job, expected)]);
        Ok(())
    }

    async fn insert_jobs(&self, jobs: &[Job]) -> Result<Vec<Result<Job, Error>>, Error> {
        let results = self.inner.insert_jobs(jobs).await?;
        self.log
            .inserted(results.iter().filter_map(|result| result.as_ref().ok()));
        Ok(results)
    }

    async fn update_jobs(
        &self,
        updates: &[(Job, JobState)],
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let results = self.inner.update_jobs(updates).await?;
        self.log.updated(
            updates
                .iter()
                .zip(&results)
                .filter(|(_, result)| result.is_ok())
                .map(|((job, expected), _)| (job, *expected)),
        );
        Ok(results)
    }

    async fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), Error> {
        self.inner.insert_credential(credential).await
    }

    async fn list_credentials(&self) -> Result<Vec<CredentialRecord>, Error> {
        self.inner.list_credentials().await
    }

    async fn revoke_credential(&self, id: &str, at: SystemTime) -> Result<Vec<String>, Error> {
        self.inner.revoke_credential(id, at).await
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<(), Error> {
        self.inner.append_logs(chunks).await
    }

    async fn read_logs(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
    ) -> Result<Vec<LogChunk>, Error> {
        self.inner.read_logs(id, after, limit).await
    }

    async fn record_attempt_usage(&self, usage: &[AttemptUsage]) -> Result<(), Error> {
        self.inner.record_attempt_usage(usage).await
    }

    async fn add_pool_usage(&self, usage: &[PoolUsage]) -> Result<(), Error> {
        self.inner.add_pool_usage(usage).await
    }

    async fn attempt_totals(&self, since_ms: u64) -> Result<Vec<AttemptTotals>, Error> {
        self.inner.attempt_totals(since_ms).await
    }

    async fn pool_usage(&self, since_ms: u64) -> Result<Vec<PoolUsage>, Error> {
        self.inner.pool_usage(since_ms).await
    }

    async fn job_usage(&self, id: &JobId) -> Result<Vec<AttemptUsage>, Error> {
        self.inner.job_usage(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::{Command, JobSpec};

    fn job(id: &str) -> Job {
        let spec = JobSpec::new(Command::Argv(vec!["true".into()]));
        Job::new(JobId::new(id).unwrap(), spec, 0, SystemTime::now()).unwrap()
    }

    #[test]
    fn changes_are_noted_in_order_without_repeats_and_bounded() {
        let log = TransitionLog::default();
        let mut j = job("j-1");
        log.inserted([&j]);
        j.state = JobState::Assigned;
        j.attempts = 1;
        j.worker_id = Some(WorkerId::new("w-1").unwrap());
        log.updated([(&j, JobState::Queued)]);
        // The same state written again (a field changed) is no state change.
        log.updated([(&j, JobState::Assigned)]);
        j.state = JobState::Queued;
        j.reason = Some("preempted: x".into());
        log.updated([(&j, JobState::Assigned)]);
        j.state = JobState::Assigned;
        j.attempts = 2;
        log.updated([(&j, JobState::Queued)]);
        let (changes, dropped) = log.of(&j.id);
        assert_eq!(dropped, 0);
        let seen: Vec<(Option<&str>, &str, u32)> =
            changes.iter().map(|c| (c.from, c.to, c.attempt)).collect();
        assert_eq!(
            seen,
            [
                (None, "queued", 0),
                (Some("queued"), "assigned", 1),
                (Some("assigned"), "queued", 1),
                (Some("queued"), "assigned", 2),
            ]
        );
        assert_eq!(changes[1].worker.as_deref(), Some("w-1"));
        assert_eq!(changes[2].reason.as_deref(), Some("preempted: x"));
        assert_eq!(changes[3].reason, None, "the same reason is not repeated");

        for i in 0..(MAX_PER_JOB + 5) {
            j.state = if i % 2 == 0 {
                JobState::Queued
            } else {
                JobState::Assigned
            };
            let from = if i % 2 == 0 {
                JobState::Assigned
            } else {
                JobState::Queued
            };
            log.updated([(&j, from)]);
        }
        let (changes, dropped) = log.of(&j.id);
        assert_eq!(changes.len(), MAX_PER_JOB);
        assert_eq!(usize::try_from(dropped).unwrap(), 4 + 5);
        assert!(log.of(&JobId::new("other").unwrap()).0.is_empty());
    }
}
