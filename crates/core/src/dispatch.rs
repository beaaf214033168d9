//! The dispatcher as a sans-IO state machine: queues, jobs in flight, worker slots,
//! admission, fair and quota-checked starts, retirement after `max_uses`, lost-worker
//! deadlines, reconnects and cancels, driven by inputs stamped with `now_ms`.
//!
//! Every change goes through two steps so that nothing is told before it is recorded:
//! [`Dispatch::step`] looks at an input and *proposes* job writes (nothing changes yet) plus
//! the answers that need no write; the shell records the writes, then hands the outcome to
//! [`Dispatch::commit`], which applies the writes that were recorded and only then returns
//! what to tell (assignments to send, replies, retirements). A write the store refused
//! changes nothing and tells nobody. Every write is a legal job state transition.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::job::{AttemptOutcome, Job, JobId, JobState, TenantName, after_attempt};
use crate::matching::IdleWorker;
use crate::queue::{QueueEntry, QueueError, Queues};
use crate::tenancy::{
    self, AdmissionError, BurstState, DailyCost, FairShare, StartWindow, Tenants, Usage,
};
use crate::worker::WorkerId;

/// Timing of the machine's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    /// How long an assigned or running job waits for its worker's session to come back.
    pub lost_worker_grace_ms: u64,
    /// How long a reconnected agent has to deliver the result of a job it no longer runs.
    pub result_grace_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            lost_worker_grace_ms: 15_000,
            result_grace_ms: 2_000,
        }
    }
}

/// What the machine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// New jobs (state `queued`, ids chosen by the shell), answered in order.
    Submit(Vec<Job>),
    /// A worker registered (or changed): it may take jobs once connected.
    WorkerUp {
        worker: IdleWorker,
        pool_max_uses: Option<u32>,
    },
    /// A worker left the registry; a job it held becomes lost after the grace period.
    WorkerGone(WorkerId),
    /// An agent opened its session; `running` are the jobs it still runs.
    Connected {
        worker: WorkerId,
        running: Vec<JobId>,
    },
    /// An agent's session closed.
    Disconnected(WorkerId),
    Accepted {
        worker: WorkerId,
        job: JobId,
    },
    Result {
        worker: WorkerId,
        job: JobId,
        outcome: AttemptOutcome,
        healthy: bool,
    },
    /// An assignment could not be delivered to its worker.
    Undeliverable {
        worker: WorkerId,
        job: JobId,
    },
    Cancel(JobId),
    /// Take idle workers out of matching for good (scale-in).
    Drain(Vec<WorkerId>),
    /// Check deadlines and plan starts.
    Tick,
}

/// Why a submission was refused (nothing is recorded).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Tenant(#[from] AdmissionError),
}

/// What the shell does after a commit, or at once for answers that need no write.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The `index`th job of a [`Input::Submit`] is recorded and queued.
    Admitted {
        index: usize,
        job: Job,
    },
    Refused {
        index: usize,
        refusal: Refusal,
    },
    /// Send the job to its worker.
    Assign {
        worker: WorkerId,
        job: Job,
    },
    /// Tell the worker to stop the job.
    StopJob {
        worker: WorkerId,
        job: JobId,
    },
    /// The job is cancelled (it was queued) or its cancel was sent (it runs).
    CancelAnswered(Job),
    /// The job to cancel is unknown to the machine (ended or never existed).
    CancelUnknown(JobId),
    /// Terminate the worker; its pool replaces it.
    Retire {
        worker: WorkerId,
        reason: String,
    },
    /// Workers drained by [`Input::Drain`].
    Drained(Vec<WorkerId>),
}

/// A write the machine proposes: store `job` if the stored one is in `expected` (`None`:
/// insert a new job).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub job: Job,
    pub expected: Option<JobState>,
    change: Change,
}

#[derive(Debug, Clone, PartialEq)]
enum Change {
    Queue {
        index: usize,
    },
    Assign {
        worker: WorkerId,
    },
    Start,
    End {
        worker: Option<WorkerId>,
        lost: bool,
        healthy: bool,
    },
    CancelQueued,
    Withdraw {
        worker: WorkerId,
    },
}

/// What [`Dispatch::step`] proposes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// To record, in order, before [`Dispatch::commit`].
    pub writes: Vec<Write>,
    /// Answers that need no write; the shell may act on them at once.
    pub immediate: Vec<Effect>,
}

#[derive(Debug, Clone)]
struct Live {
    job: Job,
    lost_at_ms: Option<u64>,
    /// The worker reconnected without it: the deadline holds while it is connected.
    unconfirmed: bool,
    cancel_requested: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    worker: IdleWorker,
    max_uses: Option<u32>,
    registered: bool,
    connected: bool,
    job: Option<JobId>,
    uses: u32,
    retired: bool,
    unreachable: bool,
}

/// The dispatcher's whole state.
#[derive(Debug, Clone)]
pub struct Dispatch {
    config: DispatchConfig,
    queues: Queues,
    jobs: BTreeMap<JobId, Live>,
    workers: BTreeMap<WorkerId, Slot>,
    tenants: Tenants,
    fair: FairShare,
    bursts: BTreeMap<TenantName, BurstState>,
    daily_cost: DailyCost,
    starts: StartWindow,
}

fn at(now_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms)
}

impl Dispatch {
    pub fn new(config: DispatchConfig, queues: Queues, tenants: Tenants) -> Self {
        Self {
            config,
            queues,
            jobs: BTreeMap::new(),
            workers: BTreeMap::new(),
            tenants,
            fair: FairShare::default(),
            bursts: BTreeMap::new(),
            daily_cost: DailyCost::default(),
            starts: StartWindow::default(),
        }
    }

    pub fn set_tenants(&mut self, tenants: Tenants) {
        self.tenants = tenants;
    }

    /// Jobs queued, and jobs in flight (assigned or running).
    pub fn counts(&self) -> (usize, usize) {
        (self.queues.len(), self.jobs.len() - self.queues.len())
    }

    /// How many tenants have jobs queued.
    pub fn queued_tenants(&self) -> usize {
        self.queues.tenants().count()
    }

    /// The job held by a worker, if any.
    pub fn job_on(&self, worker: &WorkerId) -> Option<&JobId> {
        self.workers.get(worker).and_then(|slot| slot.job.as_ref())
    }

    /// A job the machine tracks (queued or in flight).
    pub fn job(&self, id: &JobId) -> Option<&Job> {
        self.jobs.get(id).map(|live| &live.job)
    }

    /// Adds the cost of an ended attempt to its tenant's day.
    pub fn charge(&mut self, tenant: &TenantName, amount: f64, now_ms: u64) {
        self.daily_cost.charge(tenant, amount, now_ms);
    }

    /// Looks at an input and proposes writes; no state changes until [`Dispatch::commit`]
    /// (worker presence and drains, which need no write, apply at once).
    pub fn step(&mut self, input: Input, now_ms: u64) -> Proposal {
        let mut proposal = Proposal::default();
        match input {
            Input::Submit(jobs) => self.admit(jobs, &mut proposal),
            Input::WorkerUp {
                worker,
                pool_max_uses,
            } => {
                let slot = self.workers.entry(worker.id.clone()).or_insert(Slot {
                    worker: worker.clone(),
                    max_uses: pool_max_uses,
                    registered: true,
                    connected: false,
                    job: None,
                    uses: 0,
                    retired: false,
                    unreachable: false,
                });
                slot.worker = worker;
                slot.max_uses = pool_max_uses;
                slot.registered = true;
            }
            Input::WorkerGone(id) => {
                if let Some(slot) = self.workers.get_mut(&id) {
                    slot.registered = false;
                    slot.connected = false;
                }
                self.workers
                    .retain(|_, slot| slot.registered || slot.job.is_some());
                self.check_deadlines(now_ms, &mut proposal);
            }
            Input::Connected { worker, running } => self.connected(&worker, &running, now_ms),
            Input::Disconnected(worker) => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.connected = false;
                }
                self.check_deadlines(now_ms, &mut proposal);
            }
            Input::Accepted { worker, job } => {
                if let Some(live) = self.in_flight_on(&worker, &job)
                    && live.job.state == JobState::Assigned
                {
                    let mut next = live.job.clone();
                    next.state = JobState::Running;
                    next.started_at = Some(at(now_ms));
                    proposal.writes.push(Write {
                        job: next,
                        expected: Some(JobState::Assigned),
                        change: Change::Start,
                    });
                }
            }
            Input::Result {
                worker,
                job,
                outcome,
                healthy,
            } => {
                if let Some(live) = self.in_flight_on(&worker, &job) {
                    let mut current = live.job.clone();
                    if current.state == JobState::Assigned {
                        // Its start was not heard of (or not recorded) yet: record it first,
                        // so the job walks its state machine (assigned, running, ended).
                        current.state = JobState::Running;
                        current.started_at = Some(at(now_ms));
                        proposal.writes.push(Write {
                            job: current.clone(),
                            expected: Some(JobState::Assigned),
                            change: Change::Start,
                        });
                    }
                    let cancel = live.cancel_requested;
                    proposal.writes.push(Self::attempt_end(
                        &current, cancel, outcome, healthy, now_ms,
                    ));
                }
            }
            Input::Undeliverable { worker, job } => {
                if let Some(live) = self.in_flight_on(&worker, &job)
                    && live.job.state == JobState::Assigned
                {
                    let mut next = live.job.clone();
                    next.state = JobState::Queued;
                    next.attempts = next.attempts.saturating_sub(1);
                    next.reason = Some(format!("worker {worker} was not reachable, requeued"));
                    proposal.writes.push(Write {
                        job: next,
                        expected: Some(JobState::Assigned),
                        change: Change::Withdraw { worker },
                    });
                }
            }
            Input::Cancel(id) => self.cancel(&id, now_ms, &mut proposal),
            Input::Drain(workers) => {
                let mut drained = Vec::new();
                for id in workers {
                    if let Some(slot) = self.workers.get_mut(&id)
                        && slot.job.is_none()
                        && !slot.retired
                    {
                        slot.retired = true;
                        drained.push(id);
                    }
                }
                proposal.immediate.push(Effect::Drained(drained));
            }
            Input::Tick => {
                self.check_deadlines(now_ms, &mut proposal);
                if proposal.writes.is_empty() {
                    self.plan(now_ms, &mut proposal);
                }
            }
        }
        proposal
    }

    /// Applies the writes of `proposal` whose entry in `recorded` is true (one per write,
    /// in order) and returns what to tell, in order. Writes not recorded change nothing.
    pub fn commit(&mut self, proposal: Proposal, recorded: &[bool], now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (index, write) in proposal.writes.into_iter().enumerate() {
            if !recorded.get(index).copied().unwrap_or(false) {
                continue;
            }
            self.apply(write, now_ms, &mut effects);
        }
        effects
    }

    fn apply(&mut self, write: Write, now_ms: u64, effects: &mut Vec<Effect>) {
        let Write {
            job,
            expected,
            change,
        } = write;
        // The machine's own copy must be in the expected state: anything else is a stale
        // proposal (the shell committed out of order) and is dropped.
        let current = self.jobs.get(&job.id).map(|live| live.job.state);
        if current != expected || expected.is_some_and(|from| !from.can_transition_to(job.state)) {
            return;
        }
        match change {
            Change::Queue { index } => {
                if self.queues.requeue(QueueEntry::from_job(&job)).is_err() {
                    return;
                }
                self.jobs.insert(
                    job.id.clone(),
                    Live {
                        job: job.clone(),
                        lost_at_ms: None,
                        unconfirmed: false,
                        cancel_requested: false,
                    },
                );
                effects.push(Effect::Admitted { index, job });
            }
            Change::Assign { worker } => {
                let Some(slot) = self.workers.get_mut(&worker) else {
                    return;
                };
                if slot.job.is_some() || slot.retired {
                    return;
                }
                slot.job = Some(job.id.clone());
                self.queues.remove(&job.id);
                let tenant = self.tenants.get(&job.spec.tenant).map(|t| t.weight);
                self.fair.charge(
                    &job.spec.tenant,
                    tenant.unwrap_or(1),
                    tenancy::job_cost(&job.spec.requirements),
                );
                self.starts.record(&job.spec.tenant, now_ms);
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job.clone();
                    live.lost_at_ms = None;
                    live.unconfirmed = false;
                }
                effects.push(Effect::Assign { worker, job });
            }
            Change::Start => {
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job;
                }
            }
            Change::CancelQueued => {
                self.queues.remove(&job.id);
                self.jobs.remove(&job.id);
                effects.push(Effect::CancelAnswered(job));
            }
            Change::Withdraw { worker } => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.job = None;
                    slot.unreachable = true;
                }
                let _ = self.queues.requeue(QueueEntry::from_job(&job));
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job;
                }
            }
            Change::End {
                worker,
                lost,
                healthy,
            } => {
                if job.state == JobState::Queued {
                    let _ = self.queues.requeue(QueueEntry::from_job(&job));
                    if let Some(live) = self.jobs.get_mut(&job.id) {
                        live.job = job;
                        live.lost_at_ms = None;
                        live.unconfirmed = false;
                    }
                } else {
                    self.jobs.remove(&job.id);
                }
                if let Some(worker) = worker {
                    self.release(&worker, lost, healthy, effects);
                }
            }
        }
    }

    fn admit(&self, jobs: Vec<Job>, proposal: &mut Proposal) {
        let mut queue_reserved: BTreeMap<_, usize> = BTreeMap::new();
        let mut tenant_reserved: BTreeMap<TenantName, usize> = BTreeMap::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let queue = &job.spec.queue;
            let refused = match (self.queues.depth(queue), self.queues.capacity(queue)) {
                (Some(depth), Some(capacity)) => {
                    let pending = queue_reserved.get(queue).copied().unwrap_or(0);
                    (depth + pending >= capacity).then(|| {
                        Refusal::from(QueueError::Full {
                            queue: queue.clone(),
                            capacity,
                        })
                    })
                }
                _ => Some(QueueError::UnknownQueue(queue.clone()).into()),
            }
            .or_else(|| {
                let pending = tenant_reserved.get(&job.spec.tenant).copied().unwrap_or(0);
                self.tenants
                    .admit(
                        &job.spec.tenant,
                        &job.spec.requirements,
                        self.queues.tenant_depth(&job.spec.tenant) + pending,
                    )
                    .err()
                    .map(Refusal::from)
            })
            .or_else(|| {
                self.jobs
                    .contains_key(&job.id)
                    .then(|| QueueError::Duplicate(job.id.clone()).into())
            });
            if let Some(refusal) = refused {
                proposal.immediate.push(Effect::Refused { index, refusal });
                continue;
            }
            *queue_reserved.entry(queue.clone()).or_default() += 1;
            *tenant_reserved.entry(job.spec.tenant.clone()).or_default() += 1;
            let mut job = job;
            job.state = JobState::Queued;
            proposal.writes.push(Write {
                job,
                expected: None,
                change: Change::Queue { index },
            });
        }
    }

    /// What each tenant holds now.
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
        let names: Vec<TenantName> = self.queues.tenants().cloned().collect();
        for name in names
            .iter()
            .chain(usage.keys().cloned().collect::<Vec<_>>().iter())
        {
            let spent = self.daily_cost.spent(name, now_ms);
            usage.entry(name.clone()).or_default().daily_cost = spent;
        }
        usage
    }

    fn plan(&mut self, now_ms: u64, proposal: &mut Proposal) {
        let mut usage = self.usage(now_ms);
        for (name, held) in &usage {
            let over = self
                .tenants
                .get(name)
                .is_some_and(|tenant| held.over_soft(&tenant.quotas));
            let state = self.bursts.get(name).copied().unwrap_or_default();
            match state.next(over, &self.tenants.burst, now_ms) {
                BurstState::Ready => self.bursts.remove(name),
                next => self.bursts.insert(name.clone(), next),
            };
        }
        if self.queues.is_empty() {
            return;
        }
        let idle: Vec<IdleWorker> = self
            .workers
            .values()
            .filter(|slot| {
                slot.registered
                    && slot.connected
                    && slot.job.is_none()
                    && !slot.retired
                    && !slot.unreachable
            })
            .map(|slot| slot.worker.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        // Tags are charged at commit, on a copy here, so an unrecorded plan costs nothing.
        let mut fair = self.fair.clone();
        let plan = tenancy::plan_fair_dispatch(
            &self.queues,
            &idle,
            &self.tenants,
            &mut usage,
            &self.bursts,
            &mut fair,
            now_ms,
        );
        for (job_id, worker) in plan.assignments {
            let Some(live) = self.jobs.get(&job_id) else {
                continue;
            };
            let mut job = live.job.clone();
            job.state = JobState::Assigned;
            job.attempts += 1;
            job.worker_id = Some(worker.clone());
            job.reason = None;
            proposal.writes.push(Write {
                job,
                expected: Some(JobState::Queued),
                change: Change::Assign { worker },
            });
        }
    }

    fn in_flight_on(&self, worker: &WorkerId, job: &JobId) -> Option<&Live> {
        self.jobs.get(job).filter(|live| {
            live.job.worker_id.as_ref() == Some(worker)
                && matches!(live.job.state, JobState::Assigned | JobState::Running)
        })
    }

    /// The write that ends the current attempt of `current` with `outcome`.
    fn attempt_end(
        current: &Job,
        cancel_requested: bool,
        outcome: AttemptOutcome,
        healthy: bool,
        now_ms: u64,
    ) -> Write {
        let lost = outcome == AttemptOutcome::WorkerLost;
        let outcome = if lost && cancel_requested {
            AttemptOutcome::Cancelled
        } else {
            outcome
        };
        let previous = current.state;
        let (next, reason) = after_attempt(current, outcome.clone());
        let mut job = current.clone();
        job.state = next;
        job.reason = reason;
        if let AttemptOutcome::Exited(code) = outcome {
            job.exit_code = Some(code);
        }
        if next.is_terminal() {
            job.finished_at = Some(at(now_ms));
        }
        Write {
            change: Change::End {
                worker: job.worker_id.clone(),
                lost,
                healthy,
            },
            job,
            expected: Some(previous),
        }
    }

    /// The worker finished an attempt: idle again, or retired.
    fn release(&mut self, worker: &WorkerId, lost: bool, healthy: bool, effects: &mut Vec<Effect>) {
        let Some(slot) = self.workers.get_mut(worker) else {
            return;
        };
        slot.job = None;
        if lost {
            return;
        }
        slot.uses += 1;
        let retire = if !healthy {
            Some("failed its health check after a job".to_owned())
        } else if slot.max_uses.is_some_and(|limit| slot.uses >= limit) {
            Some(format!("ran {} jobs, its pool's max_uses", slot.uses))
        } else {
            None
        };
        if let Some(reason) = retire {
            slot.retired = true;
            effects.push(Effect::Retire {
                worker: worker.clone(),
                reason,
            });
        }
    }

    fn connected(&mut self, worker: &WorkerId, running: &[JobId], now_ms: u64) {
        if let Some(slot) = self.workers.get_mut(worker) {
            slot.connected = true;
            slot.unreachable = false;
        }
        for live in self.jobs.values_mut() {
            if live.job.worker_id.as_ref() != Some(worker) || live.job.state == JobState::Queued {
                continue;
            }
            if running.contains(&live.job.id) {
                live.lost_at_ms = None;
                live.unconfirmed = false;
            } else {
                // Its result may still be on its way; if not, it is lost.
                live.lost_at_ms = Some(now_ms + self.config.result_grace_ms);
                live.unconfirmed = true;
            }
        }
    }

    fn check_deadlines(&mut self, now_ms: u64, proposal: &mut Proposal) {
        let mut lost = Vec::new();
        for live in self.jobs.values_mut() {
            if !matches!(live.job.state, JobState::Assigned | JobState::Running) {
                continue;
            }
            let present = live
                .job
                .worker_id
                .as_ref()
                .and_then(|worker| self.workers.get(worker))
                .is_some_and(|slot| slot.registered && slot.connected);
            match live.lost_at_ms {
                Some(deadline) if now_ms >= deadline && (!present || live.unconfirmed) => {
                    lost.push(live.job.id.clone());
                }
                Some(_) if present && !live.unconfirmed => live.lost_at_ms = None,
                Some(_) => {}
                None if !present => {
                    live.lost_at_ms = Some(now_ms + self.config.lost_worker_grace_ms);
                }
                None => {}
            }
        }
        for id in lost {
            if let Some(live) = self.jobs.get(&id) {
                proposal.writes.push(Self::attempt_end(
                    &live.job,
                    live.cancel_requested,
                    AttemptOutcome::WorkerLost,
                    true,
                    now_ms,
                ));
            }
        }
    }

    fn cancel(&mut self, id: &JobId, now_ms: u64, proposal: &mut Proposal) {
        let Some(live) = self.jobs.get_mut(id) else {
            proposal.immediate.push(Effect::CancelUnknown(id.clone()));
            return;
        };
        if live.job.state == JobState::Queued {
            let mut job = live.job.clone();
            job.state = JobState::Cancelled;
            job.reason = Some("cancelled while queued".into());
            job.finished_at = Some(at(now_ms));
            proposal.writes.push(Write {
                job,
                expected: Some(JobState::Queued),
                change: Change::CancelQueued,
            });
            return;
        }
        live.cancel_requested = true;
        if let Some(worker) = live.job.worker_id.clone() {
            proposal.immediate.push(Effect::StopJob {
                worker,
                job: id.clone(),
            });
        }
        proposal
            .immediate
            .push(Effect::CancelAnswered(live.job.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Command, JobSpec, QueueName, Requirements};
    use crate::matching::fits;
    use crate::tenancy::{Limit, Resource, Tenant};
    use crate::worker::{Labels, WorkerCapabilities};
    use proptest::prelude::*;

    fn tn(s: &str) -> TenantName {
        TenantName::new(s).unwrap()
    }

    fn job(id: u32, tenant: &str, cpu: u32) -> Job {
        let mut spec = JobSpec::new(Command::Script("true".into()));
        spec.tenant = tn(tenant);
        spec.requirements = Requirements {
            cpu_cores: cpu,
            ..Requirements::default()
        };
        let mut job = Job::new(JobId::new(format!("j{id}")).unwrap(), spec, 0, at(0)).unwrap();
        job.sequence = u64::from(id);
        job
    }

    fn worker(id: u32, cpu: u32) -> IdleWorker {
        IdleWorker {
            id: WorkerId::new(format!("w{id}")).unwrap(),
            capabilities: WorkerCapabilities {
                cpu_cores: cpu,
                memory_mb: 4096,
                ..WorkerCapabilities::default()
            },
            labels: Labels::new(),
            pool: None,
        }
    }

    fn machine(max_running: u32) -> Dispatch {
        let mut tenants = Tenants::default();
        let mut capped = Tenant::new(tn("capped"));
        capped
            .quotas
            .insert(Resource::RunningJobs, Limit::hard(f64::from(max_running)));
        tenants.configured.insert(capped.name.clone(), capped);
        let queues = Queues::new([crate::queue::QueueConfig {
            name: QueueName::default(),
            capacity: 8,
        }])
        .unwrap();
        Dispatch::new(DispatchConfig::default(), queues, tenants)
    }

    /// Steps and commits with every write recorded.
    fn run(m: &mut Dispatch, input: Input, now: u64) -> Vec<Effect> {
        let proposal = m.step(input, now);
        let mut effects = proposal.immediate.clone();
        let recorded = vec![true; proposal.writes.len()];
        effects.extend(m.commit(proposal, &recorded, now));
        effects
    }

    #[test]
    fn a_job_runs_through_submit_assign_start_and_result_and_the_worker_retires_at_max_uses() {
        let mut m = machine(4);
        let w = worker(1, 4);
        run(
            &mut m,
            Input::WorkerUp {
                worker: w.clone(),
                pool_max_uses: Some(1),
            },
            0,
        );
        run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![],
            },
            0,
        );
        let effects = run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 1);
        assert!(matches!(&effects[..], [Effect::Admitted { index: 0, .. }]));
        let effects = run(&mut m, Input::Tick, 2);
        let [
            Effect::Assign {
                worker,
                job: assigned,
            },
        ] = &effects[..]
        else {
            panic!("{effects:?}");
        };
        assert_eq!(
            (worker, assigned.state, assigned.attempts),
            (&w.id, JobState::Assigned, 1)
        );
        run(
            &mut m,
            Input::Accepted {
                worker: w.id.clone(),
                job: assigned.id.clone(),
            },
            3,
        );
        assert_eq!(m.job(&assigned.id).unwrap().state, JobState::Running);
        let effects = run(
            &mut m,
            Input::Result {
                worker: w.id.clone(),
                job: assigned.id.clone(),
                outcome: AttemptOutcome::Exited(0),
                healthy: true,
            },
            4,
        );
        assert_eq!(
            effects,
            [Effect::Retire {
                worker: w.id.clone(),
                reason: "ran 1 jobs, its pool's max_uses".into()
            }]
        );
        assert!(m.job(&assigned.id).is_none());
        // Retired: a new job waits.
        run(&mut m, Input::Submit(vec![job(2, "a", 1)]), 5);
        assert!(run(&mut m, Input::Tick, 6).is_empty());
    }

    #[test]
    fn an_unrecorded_write_changes_nothing_and_tells_nobody() {
        let mut m = machine(4);
        run(
            &mut m,
            Input::WorkerUp {
                worker: worker(1, 4),
                pool_max_uses: None,
            },
            0,
        );
        run(
            &mut m,
            Input::Connected {
                worker: worker(1, 4).id,
                running: vec![],
            },
            0,
        );
        let proposal = m.step(Input::Submit(vec![job(1, "a", 1)]), 0);
        assert!(m.commit(proposal, &[false], 0).is_empty());
        assert_eq!(m.counts(), (0, 0));
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        let proposal = m.step(Input::Tick, 1);
        assert_eq!(proposal.writes.len(), 1);
        assert!(m.commit(proposal, &[false], 1).is_empty());
        assert_eq!(m.counts(), (1, 0), "still queued");
        assert_eq!(m.job_on(&worker(1, 4).id), None);
    }

    #[test]
    fn a_vanished_worker_loses_its_job_after_the_grace_and_a_cancel_wins() {
        let mut m = machine(4);
        let w = worker(1, 4);
        run(
            &mut m,
            Input::WorkerUp {
                worker: w.clone(),
                pool_max_uses: None,
            },
            0,
        );
        run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![],
            },
            0,
        );
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        let id = JobId::new("j1").unwrap();
        let effects = run(&mut m, Input::Cancel(id.clone()), 1);
        assert!(matches!(&effects[0], Effect::StopJob { .. }));
        run(&mut m, Input::Disconnected(w.id.clone()), 1_000);
        assert!(run(&mut m, Input::Tick, 15_999).is_empty());
        let proposal = m.step(Input::Tick, 16_000);
        assert_eq!(proposal.writes[0].job.state, JobState::Cancelled);
        m.commit(proposal, &[true], 16_000);
        assert!(m.job(&id).is_none());
    }

    #[test]
    fn a_reconnect_without_the_job_gives_its_result_a_short_grace() {
        let mut m = machine(4);
        let w = worker(1, 4);
        run(
            &mut m,
            Input::WorkerUp {
                worker: w.clone(),
                pool_max_uses: None,
            },
            0,
        );
        run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![],
            },
            0,
        );
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![],
            },
            100,
        );
        assert!(m.step(Input::Tick, 2_099).writes.is_empty());
        let proposal = m.step(Input::Tick, 2_100);
        assert_eq!(
            proposal.writes[0].job.state,
            JobState::Queued,
            "lost: tried again"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit(Vec<(u8, u8)>),
        Up(u8),
        Gone(u8),
        Connect(u8),
        Disconnect(u8),
        Accept(u8),
        Finish(u8, bool),
        Undeliverable(u8),
        Cancel(u8),
        Drain(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec((0..3u8, 0..4u8), 1..4).prop_map(Op::Submit),
            2 => (0..5u8).prop_map(Op::Up),
            1 => (0..5u8).prop_map(Op::Gone),
            2 => (0..5u8).prop_map(Op::Connect),
            1 => (0..5u8).prop_map(Op::Disconnect),
            2 => (0..5u8).prop_map(Op::Accept),
            2 => ((0..5u8), any::<bool>()).prop_map(|(w, ok)| Op::Finish(w, ok)),
            1 => (0..5u8).prop_map(Op::Undeliverable),
            1 => (0..40u8).prop_map(Op::Cancel),
            1 => (0..5u8).prop_map(Op::Drain),
            4 => (0..20_000u16).prop_map(Op::Tick),
        ]
    }

    const TENANTS: [&str; 3] = ["capped", "b", "c"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn random_inputs_keep_every_invariant(
            ops in proptest::collection::vec((op(), proptest::collection::vec(any::<bool>(), 8)), 1..120)
        ) {
            let mut m = machine(2);
            let mut now = 0u64;
            let mut next_id = 0u32;
            // The store: what was recorded, per job.
            let mut stored: BTreeMap<JobId, Job> = BTreeMap::new();
            // Who holds what, from the Assign effects and the ends.
            let mut holder: BTreeMap<JobId, WorkerId> = BTreeMap::new();
            let workers: Vec<IdleWorker> = (0..5).map(|i| worker(i, 1 + i % 3)).collect();
            // Start with every worker up and connected; the ops take them away and back.
            for w in &workers {
                run(&mut m, Input::WorkerUp { worker: w.clone(), pool_max_uses: None }, 0);
                run(&mut m, Input::Connected { worker: w.id.clone(), running: vec![] }, 0);
            }
            for (op, store_ok) in ops {
                let input = match op {
                    Op::Submit(list) => Input::Submit(list.into_iter().map(|(t, cpu)| {
                        next_id += 1;
                        job(next_id, TENANTS[t as usize], u32::from(cpu))
                    }).collect()),
                    Op::Up(w) => Input::WorkerUp { worker: workers[w as usize].clone(), pool_max_uses: (w == 0).then_some(2) },
                    Op::Gone(w) => Input::WorkerGone(workers[w as usize].id.clone()),
                    Op::Connect(w) => {
                        let id = workers[w as usize].id.clone();
                        let running = m.job_on(&id).cloned().into_iter().collect();
                        Input::Connected { worker: id, running }
                    }
                    Op::Disconnect(w) => Input::Disconnected(workers[w as usize].id.clone()),
                    Op::Accept(w) | Op::Finish(w, _) | Op::Undeliverable(w) => {
                        let id = workers[w as usize].id.clone();
                        let Some(job) = m.job_on(&id).cloned() else { continue };
                        match op {
                            Op::Accept(_) => Input::Accepted { worker: id, job },
                            Op::Finish(_, ok) => Input::Result { worker: id, job, outcome: AttemptOutcome::Exited(if ok { 0 } else { 1 }), healthy: true },
                            _ => Input::Undeliverable { worker: id, job },
                        }
                    }
                    Op::Cancel(j) => Input::Cancel(JobId::new(format!("j{j}")).unwrap()),
                    Op::Drain(w) => Input::Drain(vec![workers[w as usize].id.clone()]),
                    Op::Tick(dt) => { now += u64::from(dt); Input::Tick }
                };
                let proposal = m.step(input, now);
                // Record: a write applies to the store only if the stored state matches.
                let mut recorded = Vec::new();
                for (i, write) in proposal.writes.iter().enumerate() {
                    let ok = store_ok[i % store_ok.len()] && match write.expected {
                        None => !stored.contains_key(&write.job.id),
                        Some(expected) => stored.get(&write.job.id).is_some_and(|s| s.state == expected),
                    };
                    if ok {
                        if let Some(from) = write.expected {
                            prop_assert!(from.can_transition_to(write.job.state), "illegal {} -> {}", from, write.job.state);
                        }
                        stored.insert(write.job.id.clone(), write.job.clone());
                    }
                    recorded.push(ok);
                }
                let effects = m.commit(proposal, &recorded, now);
                for effect in &effects {
                    match effect {
                        Effect::Admitted { job, .. } => {
                            prop_assert_eq!(stored.get(&job.id), Some(job), "replied before recorded");
                        }
                        Effect::Assign { worker, job } => {
                            prop_assert_eq!(stored.get(&job.id).map(|j| j.state), Some(JobState::Assigned), "sent before recorded");
                            prop_assert!(holder.insert(job.id.clone(), worker.clone()).is_none(), "job {} assigned twice", job.id);
                            let w = workers.iter().find(|w| &w.id == worker).unwrap();
                            prop_assert!(fits(&job.spec.requirements, &w.capabilities, &w.labels).is_ok());
                        }
                        _ => {}
                    }
                }
                // Jobs that left flight free their holder.
                holder.retain(|id, _| m.job(id).is_some_and(|j| matches!(j.state, JobState::Assigned | JobState::Running)));
                // One job per worker.
                let mut seen = std::collections::BTreeSet::new();
                for w in holder.values() {
                    prop_assert!(seen.insert(w.clone()), "worker {w} holds two jobs");
                }
                // Hard quota of `capped`: never more than 2 in flight.
                let capped = holder.keys().filter(|id| m.job(id).is_some_and(|j| j.spec.tenant.as_str() == "capped")).count();
                prop_assert!(capped <= 2, "capped holds {capped}");
                // The machine agrees with the store about every job it tracks.
                for (id, job) in &stored {
                    if let Some(mine) = m.job(id) {
                        prop_assert_eq!(mine.state, job.state);
                    }
                }
            }
        }
    }
}
