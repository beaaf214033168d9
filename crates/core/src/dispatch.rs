//! The dispatcher as a sans-IO state machine: queues, jobs in flight, worker slots,
//! admission, fair and quota-checked starts, retirement after `max_uses`, the fencing of
//! attempts in flight (lease, assign timeout, timeout grace, lost workers), reconnects and
//! cancels, driven by inputs stamped with `now_ms` from one clock the caller owns.
//!
//! Every change goes through two steps so that nothing is told before it is recorded:
//! [`Dispatch::step`] looks at an input and *proposes* job writes (nothing changes yet) plus
//! the answers that need no write; the shell records the writes, then hands the outcome to
//! [`Dispatch::commit`] (or [`Dispatch::commit_stored`]), which applies the writes that were
//! recorded and only then returns what to tell (assignments to send, replies, retirements,
//! attempts given up on). A write the store refused changes nothing and tells nobody. Every
//! write is a legal job state transition: the machine refuses any other ([`Dispatch::commit`]
//! drops it), whatever the store would have said.
//!
//! The server's job service (`hodei_modules::jobs`) is a thin driver of this machine;
//! `hodei bench schedule` and the property tests below drive it directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::time::{Duration, SystemTime};

use crate::fence::{self, FencePolicy, InFlight, LostBecause, Millis, Presence, Report, Verdict};
use crate::job::QueueName;
use crate::job::{
    AttemptOutcome, Job, JobId, JobState, PreemptionRecord, Requirements, StoppingFor, TenantName,
    after_attempt,
};
use crate::matching::{self, IdleWorker};
use crate::queue::{QueueEntry, QueueError, Queues};
use crate::sla::{self, Preemption, SlaSettings};
use crate::tenancy::{
    self, AdmissionError, BurstState, DailyCost, FairShare, StartWindow, Tenants, Usage,
};
use crate::worker::{WorkerCapabilities, WorkerId};

/// Timing of the machine's deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispatchConfig {
    /// The deadlines of attempts in flight: lease and margin (a silent or disconnected
    /// worker's attempt is lost after both), assign timeout, result grace after a reconnect,
    /// timeout grace.
    pub fence: FencePolicy,
    /// `[sla]`: each class's deadline (stamped at admission) and the preemption grace.
    pub sla: SlaSettings,
}

/// A registered worker as the registry sees it now (see [`Input::Presence`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub worker: IdleWorker,
    pub pool_max_uses: Option<u32>,
    /// Its agent's session is open.
    pub connected: bool,
    /// When its agent was last heard from (hello or heartbeat).
    pub last_heard_ms: u64,
    /// Its liveness is healthy (heartbeats on time).
    pub healthy: bool,
    /// Drained on request (`hodei worker drain`): it gets no new job while the mark stays
    /// (it may be undrained; [`Input::Drain`] takes a worker out for good).
    pub draining: bool,
}

/// Why a victim's attempt is stopped, in words (`for critical job j-2`).
fn stopping_reason(preemption: &Preemption) -> String {
    format!(
        "for {} job {}",
        preemption.beneficiary_class, preemption.beneficiary
    )
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
    /// A worker left the registry; a job it held becomes lost after the lease and margin.
    /// One without a job is forgotten (its uses, its retirement): pools never reuse an id.
    WorkerGone(WorkerId),
    /// An agent opened its session; `running` are the jobs it still runs. An assigned job
    /// it runs has been accepted (its acceptance was lost, a server restart).
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
    /// Check deadlines (fence every attempt in flight) and plan starts.
    Tick,
    /// The whole registry now: workers not listed are gone. Replaces `WorkerUp`,
    /// `WorkerGone` and `Disconnected` for a shell that polls its registry, and tells the
    /// machine when each agent was last heard from (the lease counts from there; without
    /// it, a connected worker counts as heard from continuously).
    Presence(Vec<Seen>),
    /// The provider confirmed the worker's agent dead: its attempts are lost at once, and it
    /// takes no work until it connects again (or, having left the registry, is forgotten).
    WorkerDead(WorkerId),
    /// Plan starts only (no deadline checks): after each batch of inputs.
    Plan,
    /// Stop a running job to make room for a waiting one ([`sla::choose_victims`]): the
    /// preemption is recorded on both jobs, then [`Effect::Preempt`] tells the shell to stop
    /// the victim with the `[sla]` grace. Its attempt's end (stopped, or its worker lost)
    /// requeues it as [`AttemptOutcome::Preempted`], without spending a retry, unless a
    /// user's cancel came first.
    Preempt(Preemption),
    /// Queued jobs whose deadline has passed (the shell finds them, [`sla::at_risk_first`]):
    /// that each one's miss is counted is recorded on the job, then [`Effect::Missed`]
    /// tells the shell to count it, once, across restarts too.
    DeadlinePassed(Vec<JobId>),
}

/// Why a submission was refused (nothing is recorded).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Tenant(#[from] AdmissionError),
    /// No pool's worker shape and no registered worker could ever hold the job.
    #[error("no pool or worker can run this job: {0}")]
    Unsatisfiable(String),
}

/// Why the machine gave up on (or took back) an attempt in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The attempt is lost ([`fence::judge`]): retried or failed as a worker loss.
    Lost(LostBecause),
    /// The job ran past its timeout and its agent never said so: ended as timed out, the
    /// worker gets no work until it reconnects.
    TimedOut,
    /// Not accepted within the assign timeout: requeued without spending an attempt, the
    /// worker is unhealthy until it reconnects.
    NotAccepted,
    /// The assignment could not be delivered: requeued without spending an attempt.
    Undelivered,
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
    /// Tell the worker to stop the job (a user's cancel).
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
    /// The job's start (assigned to running) is recorded.
    Started(JobId),
    /// A preemption is recorded on both jobs: stop `victim` on `worker`, giving it
    /// `grace_ms` between SIGTERM and SIGKILL.
    Preempt {
        victim: JobId,
        worker: WorkerId,
        grace_ms: u64,
        for_job: JobId,
        preemption: Preemption,
    },
    /// A job being stopped for a preemption is still running on its worker, whose agent
    /// connected again (a server restart, a lost session): tell it to stop again, with
    /// the grace. Stopping is idempotent on the agent.
    StopAgain {
        victim: JobId,
        worker: WorkerId,
        grace_ms: u64,
        reason: String,
    },
    /// The queued job's missed deadline is recorded as counted ([`Input::DeadlinePassed`]):
    /// count it now.
    Missed(Job),
    /// An attempt ended and the job's next state is recorded (`queued`: it is tried again).
    /// `held_ms`: how long the attempt held its worker, from the assignment.
    Ended {
        job: Job,
        worker: Option<WorkerId>,
        held_ms: u64,
        /// Lost, timed out by the server or otherwise not run to its end on the worker:
        /// it does not count as one of the worker's uses.
        lost: bool,
        /// The attempt was preempted: requeued without spending a retry.
        preempted: bool,
    },
    /// An attempt was given up on or taken back (recorded). `stop`: tell the agent, if it
    /// can hear it, to stop whatever it still runs of it.
    Fenced {
        worker: Option<WorkerId>,
        job: JobId,
        why: Fenced,
        stop: bool,
    },
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
        fenced: Option<Fenced>,
    },
    CancelQueued,
    /// The preemption recorded on the job (the victim's or the one it makes room for).
    Preempt {
        victim: bool,
        preemption: Preemption,
    },
    /// A queued job's missed deadline is counted.
    MissCounted,
    Withdraw {
        worker: WorkerId,
        why: Fenced,
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

/// When a job tracked by the machine entered its queue, was assigned and started, on the
/// machine's clock (see [`Dispatch::times`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Times {
    pub queued_at_ms: u64,
    pub assigned_at_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Live {
    job: Job,
    times: Times,
    /// The worker reconnected without it at this instant: its result may still come.
    unconfirmed_since_ms: Option<u64>,
    cancel_requested: bool,
    /// Told to stop for a preemption: why, in words, and for which job.
    preempting: Option<(String, JobId)>,
}

impl Live {
    /// What the end of an attempt means when the machine preempted it: a user's cancel
    /// still wins; otherwise its stop (or a loss while stopping) is a preemption.
    fn outcome(&self, outcome: AttemptOutcome) -> AttemptOutcome {
        match (&outcome, &self.preempting) {
            (AttemptOutcome::Cancelled | AttemptOutcome::WorkerLost, Some((reason, _)))
                if !self.cancel_requested =>
            {
                AttemptOutcome::Preempted(reason.clone())
            }
            _ => outcome,
        }
    }

    fn new(job: Job, now_ms: u64) -> Self {
        Self {
            job,
            times: Times {
                queued_at_ms: now_ms,
                ..Times::default()
            },
            unconfirmed_since_ms: None,
            cancel_requested: false,
            preempting: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    worker: IdleWorker,
    max_uses: Option<u32>,
    registered: bool,
    connected: bool,
    /// When its agent was last heard from; `None`: continuously while connected.
    last_heard_ms: Option<u64>,
    /// When its session closed (or it was first known without one).
    disconnected_since_ms: u64,
    healthy: bool,
    /// Marked draining in the registry: no new job while it is.
    draining: bool,
    dead: bool,
    job: Option<JobId>,
    uses: u32,
    retired: bool,
    unreachable: bool,
    idle_since_ms: u64,
}

impl Slot {
    fn new(worker: IdleWorker, now_ms: u64) -> Self {
        Self {
            worker,
            max_uses: None,
            registered: false,
            connected: false,
            last_heard_ms: None,
            disconnected_since_ms: now_ms,
            healthy: true,
            draining: false,
            dead: false,
            job: None,
            uses: 0,
            retired: false,
            unreachable: false,
            idle_since_ms: now_ms,
        }
    }
}

/// A worker as the machine sees it, for the autoscaler's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerView {
    /// Holds a job (assigned or running).
    Busy,
    /// Free since this instant.
    Idle { since_ms: u64 },
    /// Retired or drained: going away.
    Leaving,
}

/// The dispatcher's whole state.
#[derive(Debug, Clone)]
pub struct Dispatch {
    config: DispatchConfig,
    queues: Queues,
    /// Every job queued or in flight. Only looked up by id, never walked (walks go through
    /// `flying` or the queues, in their order), so a hash map: its order does not matter and
    /// its hasher has fixed keys. Boxed, so growing the table moves pointers, not jobs.
    jobs: HashMap<JobId, Box<Live>, BuildHasherDefault<DefaultHasher>>,
    /// The jobs of `jobs` in flight (assigned or running) with what they hold, kept by
    /// [`Dispatch::track`] after every change: the deadline checks walk these, not the backlog.
    flying: BTreeMap<JobId, (TenantName, Requirements)>,
    /// What each tenant's jobs in flight hold (`daily_cost` aside): the sum over `flying`,
    /// kept as jobs take off and land rather than summed at every planning pass.
    held: BTreeMap<TenantName, Usage>,
    /// No attempt in flight can need a verdict ([`fence::judge`]) before this instant: the
    /// earliest deadline the last full check saw, lowered by every change that could bring
    /// one closer (a job's write, a worker silent, gone, dead or reconnected without it).
    deadline_due_ms: u64,
    workers: BTreeMap<WorkerId, Slot>,
    tenants: Tenants,
    pool_shapes: Vec<WorkerCapabilities>,
    fair: FairShare,
    bursts: BTreeMap<TenantName, BurstState>,
    daily_cost: DailyCost,
    starts: StartWindow,
    /// When the machine was built: a worker not heard from since is silent from here.
    born_ms: u64,
}

fn at(now_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms)
}

fn in_flight(state: JobState) -> bool {
    matches!(state, JobState::Assigned | JobState::Running)
}

impl Dispatch {
    pub fn new(config: DispatchConfig, queues: Queues, tenants: Tenants) -> Self {
        Self {
            config,
            queues,
            jobs: HashMap::default(),
            flying: BTreeMap::new(),
            held: BTreeMap::new(),
            deadline_due_ms: 0,
            workers: BTreeMap::new(),
            tenants,
            pool_shapes: Vec::new(),
            fair: FairShare::default(),
            bursts: BTreeMap::new(),
            daily_cost: DailyCost::default(),
            starts: StartWindow::default(),
            born_ms: 0,
        }
    }

    /// Rebuilds the machine from the unfinished jobs of the store, at `now_ms`: queued jobs
    /// go back to their queues (to the default queue when theirs is no longer configured),
    /// jobs in flight wait for their agents, whose lease (plus margin) counts from now. Returns
    /// the jobs that could not be queued at all, with why.
    pub fn recover(
        config: DispatchConfig,
        queues: Queues,
        tenants: Tenants,
        unfinished: Vec<Job>,
        now_ms: u64,
    ) -> (Self, Vec<(JobId, QueueError)>) {
        let mut machine = Self::new(config, queues, tenants);
        machine.born_ms = now_ms;
        let mut failed = Vec::new();
        // A victim's stop is honoured when the job it makes room for has the preemption on
        // record too (or has ended): the victim's record alone means the other write was
        // lost, and the victim was never told to stop.
        let unfinished_ids: BTreeSet<&JobId> = unfinished.iter().map(|job| &job.id).collect();
        // The (victim, beneficiary) pairs on the beneficiaries' own records.
        let recorded: BTreeSet<(&JobId, &JobId)> = unfinished
            .iter()
            .flat_map(|job| {
                job.preemptions
                    .iter()
                    .filter(|record| record.beneficiary == job.id)
            })
            .map(|record| (&record.victim, &record.beneficiary))
            .collect();
        let honoured: BTreeSet<JobId> = unfinished
            .iter()
            .filter(|job| {
                job.stopping_for.as_ref().is_some_and(|stopping| {
                    !unfinished_ids.contains(&stopping.job)
                        || recorded.contains(&(&job.id, &stopping.job))
                })
            })
            .map(|job| job.id.clone())
            .collect();
        for job in unfinished {
            let mut live = Live::new(job, now_ms);
            match live.job.state {
                JobState::Queued => {
                    if machine
                        .queues
                        .requeue(QueueEntry::from_job(&live.job))
                        .is_err()
                    {
                        let mut entry = QueueEntry::from_job(&live.job);
                        entry.queue = QueueName::default();
                        if let Err(error) = machine.queues.requeue(entry) {
                            failed.push((live.job.id.clone(), error));
                            continue;
                        }
                    }
                }
                state if in_flight(state) => {
                    // A victim being stopped when the server stopped: its end is still a
                    // preemption.
                    live.preempting = live
                        .job
                        .stopping_for
                        .as_ref()
                        .filter(|_| honoured.contains(&live.job.id))
                        .map(|stopping| (stopping.reason.clone(), stopping.job.clone()));
                    live.times.assigned_at_ms = Some(now_ms);
                    if state == JobState::Running {
                        live.times.started_at_ms = Some(now_ms);
                    }
                    if let Some(worker) = &live.job.worker_id {
                        let slot = machine.workers.entry(worker.clone()).or_insert_with(|| {
                            Slot::new(
                                IdleWorker {
                                    id: worker.clone(),
                                    capabilities: WorkerCapabilities::default(),
                                    labels: Default::default(),
                                    pool: None,
                                },
                                now_ms,
                            )
                        });
                        slot.job = Some(live.job.id.clone());
                    }
                }
                _ => continue,
            }
            let id = live.job.id.clone();
            machine.jobs.insert(id.clone(), Box::new(live));
            machine.track(&id, now_ms);
        }
        (machine, failed)
    }

    pub fn set_tenants(&mut self, tenants: Tenants) {
        self.tenants = tenants;
    }

    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// The shapes of worker the pools can provision: with the registered workers', what a
    /// job must fit to be admitted at all (none known: anything is admitted).
    pub fn set_pool_shapes(&mut self, shapes: Vec<WorkerCapabilities>) {
        self.pool_shapes = shapes;
    }

    pub fn queues(&self) -> &Queues {
        &self.queues
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

    /// The jobs in flight (assigned or running).
    pub fn in_flight(&self) -> impl Iterator<Item = &Job> {
        self.flying_jobs().map(|live| &live.job)
    }

    fn flying_jobs(&self) -> impl Iterator<Item = &Live> {
        self.flying
            .keys()
            .filter_map(|id| self.jobs.get(id).map(|live| &**live))
    }

    /// Keeps `flying`, `held` and `deadline_due_ms` true for one job after its entry in
    /// `jobs` changed (the only way a job's state changes: [`Dispatch::apply`], recovery).
    fn track(&mut self, id: &JobId, now_ms: u64) {
        let Some(live) = self.jobs.get(id).filter(|live| in_flight(live.job.state)) else {
            if let Some((tenant, ask)) = self.flying.remove(id)
                && let Some(usage) = self.held.get_mut(&tenant)
            {
                usage.remove_job(&ask);
                if usage.running_jobs == 0 {
                    self.held.remove(&tenant);
                }
            }
            return;
        };
        if !self.flying.contains_key(id) {
            let (tenant, ask) = (&live.job.spec.tenant, &live.job.spec.requirements);
            self.held.entry(tenant.clone()).or_default().add_job(ask);
            self.flying
                .insert(id.clone(), (tenant.clone(), ask.clone()));
        }
        // Its deadlines may have moved closer (assigned, started, requeued...).
        let due = match self.verdict(live, now_ms) {
            Verdict::Wait { until } => until.map_or(u64::MAX, |until| until.0),
            _ => now_ms,
        };
        self.deadline_due_ms = self.deadline_due_ms.min(due);
    }

    /// `held` and `flying`'s jobs summed up from every job, in the order of their ids.
    #[cfg(test)]
    fn held_from_scratch(&self) -> (BTreeMap<TenantName, Usage>, Vec<JobId>) {
        let mut held: BTreeMap<TenantName, Usage> = BTreeMap::new();
        let mut flying: Vec<JobId> = Vec::new();
        for live in self.jobs.values().filter(|live| in_flight(live.job.state)) {
            let tenant = live.job.spec.tenant.clone();
            held.entry(tenant)
                .or_default()
                .add_job(&live.job.spec.requirements);
            flying.push(live.job.id.clone());
        }
        flying.sort();
        (held, flying)
    }

    /// A change to a worker that can bring its attempt's deadline closer: the next tick
    /// judges every attempt in flight again.
    fn deadlines_changed(&mut self) {
        self.deadline_due_ms = 0;
    }

    /// [`Self::deadlines_changed`] for a change to one worker: only an attempt on it can
    /// be judged differently, and a worker with an attempt in flight holds it in its slot,
    /// so a worker without one (an ephemeral worker coming and going) changes no deadline.
    fn worker_changed(&mut self, worker: &WorkerId) {
        if self
            .workers
            .get(worker)
            .is_some_and(|slot| slot.job.is_some())
        {
            self.deadlines_changed();
        }
    }

    /// When a tracked job was queued, assigned and started.
    pub fn times(&self, id: &JobId) -> Option<Times> {
        self.jobs.get(id).map(|live| live.times)
    }

    /// Attempts the worker ran to their end so far.
    pub fn uses(&self, worker: &WorkerId) -> u32 {
        self.workers.get(worker).map_or(0, |slot| slot.uses)
    }

    /// Whether the worker is retired or drained (never matched again).
    pub fn is_leaving(&self, worker: &WorkerId) -> bool {
        self.workers.get(worker).is_some_and(|slot| slot.retired)
    }

    /// Every registered worker: busy, idle since when, or leaving.
    pub fn worker_views(&self) -> Vec<(WorkerId, WorkerView)> {
        self.workers
            .iter()
            .filter(|(_, slot)| slot.registered)
            .map(|(id, slot)| {
                let view = if slot.retired {
                    WorkerView::Leaving
                } else if slot.job.is_some() {
                    WorkerView::Busy
                } else {
                    WorkerView::Idle {
                        since_ms: slot.idle_since_ms,
                    }
                };
                (id.clone(), view)
            })
            .collect()
    }

    /// Whether a report (acceptance, output, result) from `worker` about attempt `attempt`
    /// of `job` is about the attempt in flight ([`fence::classify_report`]).
    pub fn classify_report(&self, worker: &WorkerId, job: &JobId, attempt: u32) -> Report {
        let current = self.jobs.get(job).map(|live| fence::CurrentAttempt {
            state: live.job.state,
            worker: live.job.worker_id.as_ref(),
            attempt: live.job.attempts,
        });
        fence::classify_report(current, worker, attempt)
    }

    /// Adds the cost of an ended attempt to its tenant's day.
    pub fn charge(&mut self, tenant: &TenantName, amount: f64, now_ms: u64) {
        self.daily_cost.charge(tenant, amount, now_ms);
    }

    /// What a tenant's attempts cost today, whether or not it holds or queues anything now.
    pub fn spent_today(&mut self, tenant: &TenantName, now_ms: u64) -> f64 {
        self.daily_cost.spent(tenant, now_ms)
    }

    /// What each tenant holds now: jobs assigned or running, and today's cost.
    pub fn usage(&mut self, now_ms: u64) -> BTreeMap<TenantName, Usage> {
        let mut usage = self.held.clone();
        let names: Vec<TenantName> = self.queues.tenants().chain(usage.keys()).cloned().collect();
        for name in names {
            let spent = self.daily_cost.spent(&name, now_ms);
            usage.entry(name).or_default().daily_cost = spent;
        }
        usage
    }

    /// A tenant's burst state (absent: ready).
    pub fn burst(&self, tenant: &TenantName) -> BurstState {
        self.bursts.get(tenant).copied().unwrap_or_default()
    }

    /// Jobs started in the last hour, by tenant, and in all.
    pub fn start_counts(&mut self, now_ms: u64) -> (BTreeMap<TenantName, u64>, u64) {
        self.starts.counts(now_ms)
    }

    /// Why a queued job still waits, `None` for a job not queued: its tenant's quotas, or
    /// which workers could take it ([`matching::why_waiting`]).
    pub fn why_waiting(&mut self, id: &JobId, now_ms: u64) -> Option<String> {
        let job = self
            .jobs
            .get(id)
            .filter(|live| live.job.state == JobState::Queued)?
            .job
            .clone();
        if let Some(reason) = self.quota_reason(&job, now_ms) {
            return Some(reason);
        }
        let idle = self.idle(now_ms);
        let registered: Vec<&Slot> = self.workers.values().filter(|s| s.registered).collect();
        Some(matching::why_waiting(
            &job.spec.requirements,
            &idle,
            registered
                .iter()
                .map(|slot| (&slot.worker.capabilities, &slot.worker.labels)),
        ))
    }

    fn quota_reason(&mut self, job: &Job, now_ms: u64) -> Option<String> {
        let held = self
            .usage(now_ms)
            .remove(&job.spec.tenant)
            .unwrap_or_default();
        let Some(tenant) = self.tenants.get(&job.spec.tenant) else {
            return Some(format!(
                "tenant {} is not configured (tenants.auto_create is off)",
                job.spec.tenant
            ));
        };
        let factor = self
            .burst(&job.spec.tenant)
            .may_burst(&self.tenants.burst, now_ms)
            .then_some(self.tenants.burst.factor);
        // Held to its limits first; past a soft one only while others leave workers idle.
        match tenancy::check_start(&tenant, &held, &job.spec.requirements, None) {
            Ok(_) => None,
            Err(strict) => {
                match tenancy::check_start(&tenant, &held, &job.spec.requirements, factor) {
                    Ok(_) => Some(format!("{strict}; may burst when workers are idle")),
                    Err(at_quota) => Some(at_quota.to_string()),
                }
            }
        }
    }

    /// Looks at an input and proposes writes; no job changes until [`Dispatch::commit`]
    /// (worker presence, drains and cancel requests, which need no write, apply at once).
    pub fn step(&mut self, input: Input, now_ms: u64) -> Proposal {
        let mut proposal = Proposal::default();
        match input {
            Input::Submit(jobs) => self.admit(jobs, now_ms, &mut proposal),
            Input::WorkerUp {
                worker,
                pool_max_uses,
            } => {
                let slot = self
                    .workers
                    .entry(worker.id.clone())
                    .or_insert_with(|| Slot::new(worker.clone(), now_ms));
                slot.worker = worker;
                slot.max_uses = pool_max_uses;
                slot.registered = true;
            }
            Input::WorkerGone(id) => {
                self.worker_changed(&id);
                if let Some(slot) = self.workers.get_mut(&id) {
                    if slot.connected {
                        slot.disconnected_since_ms = now_ms;
                    }
                    slot.registered = false;
                    slot.connected = false;
                }
                self.workers
                    .retain(|_, slot| slot.registered || slot.job.is_some());
            }
            Input::Presence(seen) => self.presence(seen, now_ms),
            Input::WorkerDead(id) => {
                if let Some(slot) = self.workers.get_mut(&id) {
                    slot.dead = true;
                }
                self.worker_changed(&id);
                self.check_deadlines(now_ms, &mut proposal);
            }
            Input::Connected { worker, running } => {
                self.connected(&worker, &running, now_ms, &mut proposal);
            }
            Input::Disconnected(worker) => {
                self.worker_changed(&worker);
                if let Some(slot) = self.workers.get_mut(&worker) {
                    if slot.connected {
                        slot.disconnected_since_ms = now_ms;
                    }
                    slot.connected = false;
                }
            }
            Input::Accepted { worker, job } => {
                if let Some(live) = self.in_flight_on(&worker, &job)
                    && live.job.state == JobState::Assigned
                {
                    proposal.writes.push(Self::start(&live.job, now_ms));
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
                        let start = Self::start(&current, now_ms);
                        current = start.job.clone();
                        proposal.writes.push(start);
                    }
                    let outcome = live.outcome(outcome);
                    let cancel = live.cancel_requested;
                    proposal.writes.push(Self::attempt_end(
                        &current, cancel, outcome, healthy, None, now_ms,
                    ));
                }
            }
            Input::Undeliverable { worker, job } => {
                if let Some(live) = self.in_flight_on(&worker, &job)
                    && live.job.state == JobState::Assigned
                {
                    let reason = format!("worker {worker} was not reachable, requeued");
                    proposal.writes.push(Self::withdraw(
                        &live.job,
                        worker,
                        Fenced::Undelivered,
                        reason,
                    ));
                }
            }
            Input::Cancel(id) => self.cancel(&id, now_ms, &mut proposal),
            Input::Drain(workers) => {
                let mut drained = Vec::new();
                for id in workers {
                    let slot = self.workers.entry(id.clone()).or_insert_with(|| {
                        Slot::new(
                            IdleWorker {
                                id: id.clone(),
                                capabilities: WorkerCapabilities::default(),
                                labels: Default::default(),
                                pool: None,
                            },
                            now_ms,
                        )
                    });
                    if slot.job.is_none() && !slot.retired {
                        slot.retired = true;
                        drained.push(id);
                    }
                }
                proposal.immediate.push(Effect::Drained(drained));
            }
            Input::Tick => {
                self.check_deadlines(now_ms, &mut proposal);
                self.plan(now_ms, &mut proposal);
            }
            Input::Plan => self.plan(now_ms, &mut proposal),
            Input::Preempt(preemption) => self.preempt(preemption, now_ms, &mut proposal),
            Input::DeadlinePassed(ids) => {
                for id in ids {
                    let Some(live) = self.jobs.get(&id) else {
                        continue;
                    };
                    if live.job.state != JobState::Queued || live.job.miss_counted {
                        continue;
                    }
                    let mut job = live.job.clone();
                    job.miss_counted = true;
                    proposal.writes.push(Write {
                        expected: Some(job.state),
                        job,
                        change: Change::MissCounted,
                    });
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
            if recorded.get(index).copied().unwrap_or(false) {
                self.apply(write, now_ms, &mut effects);
            }
        }
        effects
    }

    /// [`Dispatch::commit`] with the jobs as the store recorded them (`None`: not recorded),
    /// one per write: a new job's sequence is the store's.
    pub fn commit_stored(
        &mut self,
        proposal: Proposal,
        stored: Vec<Option<Job>>,
        now_ms: u64,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (write, stored) in proposal.writes.into_iter().zip(stored) {
            let Some(job) = stored else { continue };
            if job.id != write.job.id || job.state != write.job.state {
                continue;
            }
            self.apply(
                Write {
                    job,
                    expected: write.expected,
                    change: write.change,
                },
                now_ms,
                &mut effects,
            );
        }
        effects
    }

    fn apply(&mut self, write: Write, now_ms: u64, effects: &mut Vec<Effect>) {
        let id = write.job.id.clone();
        self.apply_write(write, now_ms, effects);
        self.track(&id, now_ms);
    }

    fn apply_write(&mut self, write: Write, now_ms: u64, effects: &mut Vec<Effect>) {
        let Write {
            job,
            expected,
            change,
        } = write;
        // The machine's own copy must be in the expected state and the move legal: anything
        // else is a stale proposal (committed out of order) and is dropped.
        let current = self.jobs.get(&job.id).map(|live| live.job.state);
        let records_only = matches!(change, Change::Preempt { .. } | Change::MissCounted)
            && expected == Some(job.state);
        if current != expected
            || (!records_only && expected.is_some_and(|from| !from.can_transition_to(job.state)))
        {
            return;
        }
        match change {
            Change::Queue { index } => {
                if self.queues.requeue(QueueEntry::from_job(&job)).is_err() {
                    return;
                }
                self.jobs
                    .insert(job.id.clone(), Box::new(Live::new(job.clone(), now_ms)));
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
                let weight = self.tenants.get(&job.spec.tenant).map(|t| t.weight);
                self.fair.charge(
                    &job.spec.tenant,
                    weight.unwrap_or(1),
                    tenancy::job_cost(&job.spec.requirements),
                );
                self.starts.record(&job.spec.tenant, now_ms);
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job.clone();
                    live.times.assigned_at_ms = Some(now_ms);
                    live.times.started_at_ms = None;
                    live.unconfirmed_since_ms = None;
                }
                effects.push(Effect::Assign { worker, job });
            }
            Change::Start => {
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job;
                    live.times.started_at_ms = Some(now_ms);
                    effects.push(Effect::Started(live.job.id.clone()));
                }
            }
            Change::Preempt { victim, preemption } => {
                // The victim is told to stop only once the record is on both jobs (the one
                // it makes room for is written first).
                let on_both = victim
                    && self
                        .jobs
                        .get(&preemption.beneficiary)
                        .and_then(|live| live.job.preemptions.last())
                        == job.preemptions.last();
                let Some(live) = self.jobs.get_mut(&job.id) else {
                    return;
                };
                live.job = job;
                if on_both && live.preempting.is_none() {
                    live.preempting =
                        Some((stopping_reason(&preemption), preemption.beneficiary.clone()));
                    effects.push(Effect::Preempt {
                        victim: preemption.victim.clone(),
                        worker: preemption.worker.clone(),
                        grace_ms: u64::try_from(self.config.sla.preemption_grace.as_millis())
                            .unwrap_or(u64::MAX),
                        for_job: preemption.beneficiary.clone(),
                        preemption,
                    });
                }
            }
            Change::MissCounted => {
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job.clone();
                    effects.push(Effect::Missed(job));
                }
            }
            Change::CancelQueued => {
                self.queues.remove(&job.id);
                self.jobs.remove(&job.id);
                effects.push(Effect::CancelAnswered(job));
            }
            Change::Withdraw { worker, why } => {
                if let Some(slot) = self.workers.get_mut(&worker)
                    && slot.job.as_ref() == Some(&job.id)
                {
                    slot.job = None;
                    slot.unreachable = true;
                    slot.idle_since_ms = now_ms;
                }
                let _ = self.queues.requeue(QueueEntry::from_job(&job));
                if let Some(live) = self.jobs.get_mut(&job.id) {
                    live.job = job.clone();
                    live.times = Times {
                        queued_at_ms: now_ms,
                        ..Times::default()
                    };
                    live.unconfirmed_since_ms = None;
                    // Back in its queue, it is no longer being stopped for anyone.
                    live.preempting = None;
                }
                effects.push(Effect::Fenced {
                    worker: Some(worker),
                    job: job.id,
                    why,
                    stop: why == Fenced::NotAccepted,
                });
            }
            Change::End {
                worker,
                lost,
                healthy,
                fenced,
            } => {
                let held_ms = self
                    .jobs
                    .get(&job.id)
                    .and_then(|live| live.times.assigned_at_ms)
                    .map_or(0, |assigned| now_ms.saturating_sub(assigned));
                let preempted = self
                    .jobs
                    .get(&job.id)
                    .is_some_and(|live| job.preempted > live.job.preempted);
                if job.state == JobState::Queued {
                    let _ = self.queues.requeue(QueueEntry::from_job(&job));
                    if let Some(live) = self.jobs.get_mut(&job.id) {
                        live.job = job.clone();
                        live.times = Times {
                            queued_at_ms: now_ms,
                            ..Times::default()
                        };
                        live.unconfirmed_since_ms = None;
                        live.preempting = None;
                    }
                } else {
                    self.jobs.remove(&job.id);
                }
                if let Some(why) = fenced {
                    // Whoever might still run it must stop; a confirmed-dead agent runs nothing.
                    let stop = match why {
                        Fenced::Lost(LostBecause::WorkerDead) => false,
                        Fenced::Lost(_) => worker
                            .as_ref()
                            .and_then(|w| self.workers.get(w))
                            .is_some_and(|slot| slot.connected),
                        _ => true,
                    };
                    effects.push(Effect::Fenced {
                        worker: worker.clone(),
                        job: job.id.clone(),
                        why,
                        stop,
                    });
                }
                effects.push(Effect::Ended {
                    job,
                    worker: worker.clone(),
                    held_ms,
                    lost,
                    preempted,
                });
                if let Some(worker) = worker {
                    self.release(&worker, lost, healthy, fenced, now_ms, effects);
                }
            }
        }
    }

    fn admit(&self, jobs: Vec<Job>, now_ms: u64, proposal: &mut Proposal) {
        let mut queue_reserved: BTreeMap<_, usize> = BTreeMap::new();
        let mut tenant_reserved: BTreeMap<TenantName, usize> = BTreeMap::new();
        let shapes: Vec<&WorkerCapabilities> = self
            .pool_shapes
            .iter()
            .chain(
                self.workers
                    .values()
                    .filter(|slot| slot.registered)
                    .map(|slot| &slot.worker.capabilities),
            )
            .collect();
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
                matching::exceeds_every_shape(&job.spec.requirements, shapes.iter().copied())
                    .map(Refusal::Unsatisfiable)
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
            if job.submitted_at == SystemTime::UNIX_EPOCH {
                job.submitted_at = at(now_ms);
            }
            if job.deadline.is_none() {
                job.deadline = Some(
                    self.config
                        .sla
                        .deadline_of(job.spec.sla_class, job.submitted_at),
                );
            }
            proposal.writes.push(Write {
                job,
                expected: None,
                change: Change::Queue { index },
            });
        }
    }

    /// Registered, connected, heard from within the lease, healthy, and free.
    fn idle(&self, now_ms: u64) -> Vec<IdleWorker> {
        self.idle_refs(now_ms).into_iter().cloned().collect()
    }

    /// [`Self::idle`], borrowed: one per id, in id order.
    fn idle_refs(&self, now_ms: u64) -> Vec<&IdleWorker> {
        let lease = u64::try_from(self.config.fence.lease.as_millis()).unwrap_or(u64::MAX);
        self.workers
            .values()
            .filter(|slot| {
                slot.registered
                    && slot.connected
                    && slot
                        .last_heard_ms
                        .is_none_or(|heard| now_ms.saturating_sub(heard) < lease)
                    && slot.healthy
                    && !slot.draining
                    && !slot.dead
                    && slot.job.is_none()
                    && !slot.retired
                    && !slot.unreachable
            })
            .map(|slot| &slot.worker)
            .collect()
    }

    fn update_bursts(&mut self, usage: &BTreeMap<TenantName, Usage>, now_ms: u64) {
        let names: Vec<TenantName> = usage.keys().chain(self.bursts.keys()).cloned().collect();
        for name in names {
            let over = match (self.tenants.get(&name), usage.get(&name)) {
                (Some(tenant), Some(held)) => held.over_soft(&tenant.quotas),
                _ => false,
            };
            let state = self.burst(&name);
            match state.next(over, &self.tenants.burst, now_ms) {
                BurstState::Ready => self.bursts.remove(&name),
                next => self.bursts.insert(name, next),
            };
        }
    }

    fn plan(&mut self, now_ms: u64, proposal: &mut Proposal) {
        let mut usage = self.usage(now_ms);
        self.update_bursts(&usage, now_ms);
        if self.queues.is_empty() {
            return;
        }
        let idle = self.idle_refs(now_ms);
        if idle.is_empty() {
            return;
        }
        // Jobs this proposal already moves (a deadline's write) are not planned again.
        let moving: Vec<JobId> = proposal.writes.iter().map(|w| w.job.id.clone()).collect();
        // Tags are charged at commit, on a copy here, so an unrecorded plan costs nothing.
        let mut fair = self.fair.clone();
        let plan = tenancy::plan_fair_dispatch_among(
            &self.queues,
            idle,
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
            if live.job.state != JobState::Queued || moving.contains(&job_id) {
                continue;
            }
            let mut job = live.job.clone();
            job.state = JobState::Assigned;
            job.attempts += 1;
            job.worker_id = Some(worker.clone());
            job.started_at = None;
            job.first_started_at.get_or_insert(at(now_ms));
            proposal.writes.push(Write {
                job,
                expected: Some(JobState::Queued),
                change: Change::Assign { worker },
            });
        }
    }

    /// Proposes recording a preemption on both jobs: the victim must still run on the
    /// worker, not already be stopping (nor cancelled), and the job it makes room for must
    /// still wait and not have another victim stopping for it.
    fn preempt(&self, preemption: Preemption, now_ms: u64, proposal: &mut Proposal) {
        let (Some(victim), Some(beneficiary)) = (
            self.jobs.get(&preemption.victim),
            self.jobs.get(&preemption.beneficiary),
        ) else {
            return;
        };
        let stopping_for = |id: &JobId| {
            self.flying_jobs()
                .any(|live| live.preempting.as_ref().is_some_and(|(_, b)| b == id))
        };
        if victim.job.state != JobState::Running
            || victim.job.worker_id.as_ref() != Some(&preemption.worker)
            || victim.preempting.is_some()
            || victim.cancel_requested
            || beneficiary.job.state != JobState::Queued
            || stopping_for(&preemption.beneficiary)
        {
            return;
        }
        let record = PreemptionRecord {
            at: at(now_ms),
            victim: preemption.victim.clone(),
            beneficiary: preemption.beneficiary.clone(),
            worker_id: preemption.worker.clone(),
            reason: preemption.reason.clone(),
        };
        // The one it makes room for first: the victim's write tells the shell to stop it.
        for (live, is_victim) in [(beneficiary, false), (victim, true)] {
            let mut job = live.job.clone();
            job.record_preemption(record.clone());
            if is_victim {
                job.stopping_for = Some(StoppingFor {
                    job: preemption.beneficiary.clone(),
                    reason: stopping_reason(&preemption),
                });
            }
            proposal.writes.push(Write {
                expected: Some(job.state),
                job,
                change: Change::Preempt {
                    victim: is_victim,
                    preemption: preemption.clone(),
                },
            });
        }
    }

    /// The jobs being stopped for a preemption, with the job each makes room for.
    pub fn preempting(&self) -> impl Iterator<Item = (&JobId, &JobId)> {
        // A victim runs until it ends: it is in flight.
        self.flying.keys().filter_map(|id| {
            let live = self.jobs.get(id)?;
            live.preempting
                .as_ref()
                .map(|(_, beneficiary)| (id, beneficiary))
        })
    }

    /// When the next queued job becomes boosted or at risk ([`sla::next_change_ms`]): the
    /// shell wakes then to plan and preempt at once rather than a tick late.
    pub fn next_sla_change_ms(&self, now_ms: u64) -> Option<u64> {
        sla::next_change_ms(&self.queues, now_ms)
    }

    /// The workers that could take a job now (registered, connected, heard from within the
    /// lease, healthy, not draining, free).
    pub fn idle_workers(&self, now_ms: u64) -> Vec<IdleWorker> {
        self.idle(now_ms)
    }

    /// The SLA settings the machine stamps deadlines with.
    pub fn sla(&self) -> &SlaSettings {
        &self.config.sla
    }

    fn in_flight_on(&self, worker: &WorkerId, job: &JobId) -> Option<&Live> {
        self.jobs
            .get(job)
            .map(|live| &**live)
            .filter(|live| live.job.worker_id.as_ref() == Some(worker) && in_flight(live.job.state))
    }

    fn start(job: &Job, now_ms: u64) -> Write {
        let mut next = job.clone();
        next.state = JobState::Running;
        next.started_at = Some(at(now_ms));
        Write {
            job: next,
            expected: Some(JobState::Assigned),
            change: Change::Start,
        }
    }

    /// Takes an assignment back before it started: queued again, its attempt counted as
    /// withdrawn (the number is never reused, the retry is not spent).
    fn withdraw(job: &Job, worker: WorkerId, why: Fenced, reason: String) -> Write {
        let mut next = job.clone();
        next.state = JobState::Queued;
        next.withdrawn = next.withdrawn.saturating_add(1);
        next.reason = Some(reason);
        Write {
            job: next,
            expected: Some(JobState::Assigned),
            change: Change::Withdraw { worker, why },
        }
    }

    /// The write that ends the current attempt of `current` with `outcome`.
    fn attempt_end(
        current: &Job,
        cancel_requested: bool,
        outcome: AttemptOutcome,
        healthy: bool,
        fenced: Option<Fenced>,
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
        if matches!(outcome, AttemptOutcome::Preempted(_)) {
            job.preempted = job.preempted.saturating_add(1);
        }
        job.stopping_for = None;
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
                // A server-side timeout did not run to its end on the worker either.
                lost: lost || fenced == Some(Fenced::TimedOut),
                healthy,
                fenced,
            },
            job,
            expected: Some(previous),
        }
    }

    /// The worker finished an attempt: idle again, or retired.
    fn release(
        &mut self,
        worker: &WorkerId,
        lost: bool,
        healthy: bool,
        fenced: Option<Fenced>,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) {
        let Some(slot) = self.workers.get_mut(worker) else {
            return;
        };
        slot.job = None;
        slot.idle_since_ms = now_ms;
        if fenced == Some(Fenced::TimedOut) {
            // Its agent does not enforce timeouts: no more work until it reconnects.
            slot.unreachable = true;
        }
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

    fn presence(&mut self, seen: Vec<Seen>, now_ms: u64) {
        let mut listed = std::collections::BTreeSet::new();
        let mut degraded = false;
        for seen in seen {
            listed.insert(seen.worker.id.clone());
            let slot = self
                .workers
                .entry(seen.worker.id.clone())
                .or_insert_with(|| Slot::new(seen.worker.clone(), now_ms));
            if slot.worker != seen.worker {
                slot.worker = seen.worker;
            }
            slot.max_uses = seen.pool_max_uses;
            slot.registered = true;
            // Heard from earlier than the machine thought, or connected or disconnected
            // since (a connected worker's attempt is also held to its acceptance and
            // timeout deadlines): its attempt's deadlines may be closer now.
            let heard = if slot.connected {
                slot.last_heard_ms.unwrap_or(u64::MAX)
            } else {
                slot.disconnected_since_ms
            };
            if slot.connected != seen.connected || seen.last_heard_ms < heard {
                degraded = true;
            }
            if !seen.connected {
                slot.disconnected_since_ms = seen.last_heard_ms;
            }
            slot.connected = seen.connected;
            slot.last_heard_ms = Some(seen.last_heard_ms);
            slot.healthy = seen.healthy;
            slot.draining = seen.draining;
        }
        // A registered worker the registry no longer lists is gone (one whose session
        // opened before its registration is listed stays connected: it is not yet listed).
        for (id, slot) in &mut self.workers {
            if slot.registered && !listed.contains(id) {
                degraded = true;
                slot.registered = false;
                if slot.connected {
                    slot.disconnected_since_ms = slot.last_heard_ms.unwrap_or(now_ms);
                }
                slot.connected = false;
            }
        }
        self.workers
            .retain(|_, slot| slot.registered || slot.job.is_some());
        if degraded {
            self.deadlines_changed();
        }
    }

    fn connected(
        &mut self,
        worker: &WorkerId,
        running: &[JobId],
        now_ms: u64,
        proposal: &mut Proposal,
    ) {
        // Connected again, its attempt is held to its acceptance and timeout deadlines.
        if running.is_empty() {
            self.worker_changed(worker);
        } else {
            self.deadlines_changed();
        }
        if let Some(slot) = self.workers.get_mut(worker) {
            slot.connected = true;
            slot.unreachable = false;
            slot.dead = false;
            if slot.last_heard_ms.is_some() {
                slot.last_heard_ms = Some(now_ms);
            }
        }
        let grace_ms =
            u64::try_from(self.config.sla.preemption_grace.as_millis()).unwrap_or(u64::MAX);
        for id in self.flying.keys() {
            let Some(live) = self.jobs.get_mut(id) else {
                continue;
            };
            if live.job.worker_id.as_ref() != Some(worker) {
                continue;
            }
            if running.contains(&live.job.id) {
                live.unconfirmed_since_ms = None;
                if let Some((reason, _)) = &live.preempting {
                    proposal.immediate.push(Effect::StopAgain {
                        victim: live.job.id.clone(),
                        worker: worker.clone(),
                        grace_ms,
                        reason: reason.clone(),
                    });
                }
                if live.job.state == JobState::Assigned {
                    // Its acceptance was lost (a server restart): it runs the job.
                    proposal.writes.push(Self::start(&live.job, now_ms));
                }
            } else {
                // Its result may still be on its way; if not, it is lost.
                live.unconfirmed_since_ms = Some(now_ms);
            }
        }
    }

    /// What the machine knows of the worker of an attempt, for [`fence::judge`].
    fn presence_of(&self, worker: Option<&WorkerId>, now_ms: u64) -> Presence<Millis> {
        let Some(worker) = worker else {
            return Presence::Dead;
        };
        let Some(slot) = self.workers.get(worker) else {
            return Presence::Disconnected {
                since: Millis(self.born_ms),
            };
        };
        if slot.dead {
            Presence::Dead
        } else if slot.connected {
            Presence::Connected {
                last_heard: Millis(slot.last_heard_ms.unwrap_or(now_ms).max(self.born_ms)),
            }
        } else {
            Presence::Disconnected {
                since: Millis(slot.disconnected_since_ms.max(self.born_ms)),
            }
        }
    }

    /// Judges every attempt in flight ([`fence::judge`]) and proposes what the verdicts
    /// mean: lost attempts end as worker losses (a cancel asked for wins), late assignments
    /// are withdrawn, overdue jobs end as timed out.
    fn check_deadlines(&mut self, now_ms: u64, proposal: &mut Proposal) {
        if now_ms < self.deadline_due_ms {
            return;
        }
        let mut due = u64::MAX;
        for live in self.flying_jobs() {
            let verdict = self.verdict(live, now_ms);
            // A verdict acted on is judged again at the next tick, in case its write is not
            // recorded; once it is, the job's change is tracked like any other.
            due = due.min(match verdict {
                Verdict::Wait { until } => until.map_or(u64::MAX, |until| until.0),
                _ => now_ms,
            });
            let write = match verdict {
                Verdict::Wait { .. } => continue,
                Verdict::Lost(because) => Self::attempt_end(
                    &live.job,
                    live.cancel_requested,
                    live.outcome(AttemptOutcome::WorkerLost),
                    true,
                    Some(Fenced::Lost(because)),
                    now_ms,
                ),
                Verdict::TimedOut => Self::attempt_end(
                    &live.job,
                    live.cancel_requested,
                    AttemptOutcome::TimedOut,
                    true,
                    Some(Fenced::TimedOut),
                    now_ms,
                ),
                Verdict::Withdraw => {
                    let Some(worker) = live.job.worker_id.clone() else {
                        continue;
                    };
                    let reason = format!(
                        "not accepted by worker {worker} within {:?}, requeued",
                        self.config.fence.assign_timeout
                    );
                    Self::withdraw(&live.job, worker, Fenced::NotAccepted, reason)
                }
            };
            proposal.writes.push(write);
        }
        self.deadline_due_ms = due;
    }

    /// [`fence::judge`] on one attempt in flight, from what the machine knows.
    fn verdict(&self, live: &Live, now_ms: u64) -> Verdict<Millis> {
        let judged = InFlight {
            state: live.job.state,
            assigned_at: Millis(live.times.assigned_at_ms.unwrap_or(now_ms)),
            started_at: live.times.started_at_ms.map(Millis),
            timeout: live.job.spec.timeout,
            presence: self.presence_of(live.job.worker_id.as_ref(), now_ms),
            unconfirmed_since: live.unconfirmed_since_ms.map(Millis),
        };
        fence::judge(&judged, &self.config.fence, Millis(now_ms))
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

    /// The worker comes up (with `max_uses`) and its agent connects, running `running`, at
    /// `now`: the effects of the connection.
    fn come_up_connected(
        m: &mut Dispatch,
        worker: &IdleWorker,
        pool_max_uses: Option<u32>,
        running: Vec<JobId>,
        now: u64,
    ) -> Vec<Effect> {
        run(
            m,
            Input::WorkerUp {
                worker: worker.clone(),
                pool_max_uses,
            },
            now,
        );
        run(
            m,
            Input::Connected {
                worker: worker.id.clone(),
                running,
            },
            now,
        )
    }

    /// A connected worker and a best-effort job (no retries) running on it since 3.
    /// The victim's agent reports it stopped (a cancel) at `now`: the job that ended, which
    /// must be a preemption.
    fn stopped_as_preempted(m: &mut Dispatch, worker: &WorkerId, victim: &JobId, now: u64) -> Job {
        let effects = run(
            m,
            Input::Result {
                worker: worker.clone(),
                job: victim.clone(),
                outcome: AttemptOutcome::Cancelled,
                healthy: true,
            },
            now,
        );
        match effects.iter().find(|e| matches!(e, Effect::Ended { .. })) {
            Some(Effect::Ended {
                job,
                preempted: true,
                ..
            }) => job.clone(),
            _ => panic!("{effects:?}"),
        }
    }

    fn running_best_effort(m: &mut Dispatch) -> (IdleWorker, JobId) {
        let w = worker(1, 4);
        up_and_connected(m, &w, 0);
        let mut low = job(1, "a", 4);
        low.spec.sla_class = crate::job::SlaClass::BestEffort;
        low.spec.max_retries = 0;
        let effects = run(m, Input::Submit(vec![low]), 1);
        let [Effect::Admitted { job: admitted, .. }] = &effects[..] else {
            panic!("{effects:?}");
        };
        assert_eq!(
            admitted.deadline,
            Some(at(1) + SlaSettings::default().best_effort),
            "the machine stamps the deadline at admission"
        );
        let effects = run(m, Input::Tick, 2);
        let [Effect::Assign { job: assigned, .. }] = &effects[..] else {
            panic!("{effects:?}");
        };
        assert_eq!(assigned.first_started_at, Some(at(2)));
        run(
            m,
            Input::Accepted {
                worker: w.id.clone(),
                job: assigned.id.clone(),
            },
            3,
        );
        (w, assigned.id.clone())
    }

    /// A critical job queued at 10 and the preemption of `victim` for it at 11.
    fn preempt_for_critical(m: &mut Dispatch, w: &IdleWorker, victim: &JobId) -> Vec<Effect> {
        let mut urgent = job(2, "a", 4);
        urgent.spec.sla_class = crate::job::SlaClass::Critical;
        run(m, Input::Submit(vec![urgent]), 10);
        let preemption = Preemption {
            victim: victim.clone(),
            victim_class: crate::job::SlaClass::BestEffort,
            beneficiary: JobId::new("j2").unwrap(),
            beneficiary_class: crate::job::SlaClass::Critical,
            worker: w.id.clone(),
            reason: "critical job j2 at risk".into(),
        };
        run(m, Input::Preempt(preemption), 11)
    }

    #[test]
    fn a_preemption_is_recorded_on_both_jobs_then_told_and_requeues_without_spending_a_retry() {
        let mut m = machine(4);
        let (w, victim) = running_best_effort(&mut m);
        let effects = preempt_for_critical(&mut m, &w, &victim);
        let [
            Effect::Preempt {
                victim: stopped,
                worker,
                grace_ms: 10_000,
                for_job,
                ..
            },
        ] = &effects[..]
        else {
            panic!("{effects:?}");
        };
        assert_eq!((stopped, worker, for_job.as_str()), (&victim, &w.id, "j2"));
        for id in [&victim, for_job] {
            assert_eq!(m.job(id).unwrap().preemptions.len(), 1, "{id}");
        }
        assert_eq!(m.preempting().count(), 1);
        // A second preemption of the same victim, or for the same job, is not proposed.
        let again = m.step(
            Input::Preempt(Preemption {
                victim: victim.clone(),
                victim_class: crate::job::SlaClass::BestEffort,
                beneficiary: for_job.clone(),
                beneficiary_class: crate::job::SlaClass::Critical,
                worker: w.id.clone(),
                reason: "again".into(),
            }),
            12,
        );
        assert!(again.writes.is_empty());
        // The agent stops it: its end is a preemption, requeued with its retry unspent.
        let ended = stopped_as_preempted(&mut m, &w.id, &victim, 13);
        assert_eq!(
            (ended.state, ended.preempted, ended.attempts),
            (JobState::Queued, 1, 1)
        );
        assert!(
            ended
                .reason
                .as_deref()
                .unwrap_or("")
                .starts_with("preempted")
        );
        assert_eq!(ended.first_started_at, Some(at(2)), "the first start stays");
        assert_eq!(m.preempting().count(), 0);
    }

    /// The machine's unfinished jobs, as a restarted server reads them from the store.
    fn unfinished(m: &Dispatch) -> Vec<Job> {
        let mut jobs: Vec<Job> = m.jobs.values().map(|live| live.job.clone()).collect();
        jobs.sort_by_key(|job| job.sequence);
        jobs
    }

    #[test]
    fn a_victim_stopping_across_a_restart_is_still_requeued_as_preempted() {
        let mut m = machine(4);
        let (w, victim) = running_best_effort(&mut m);
        preempt_for_critical(&mut m, &w, &victim);
        let stopping = m.job(&victim).unwrap().stopping_for.clone().unwrap();
        assert_eq!(stopping.job.as_str(), "j2");
        assert_eq!(stopping.reason, "for critical job j2");

        // The server restarts from what it recorded.
        let (mut m, failed) = Dispatch::recover(
            DispatchConfig::default(),
            Queues::new([crate::queue::QueueConfig {
                name: QueueName::default(),
                capacity: 8,
            }])
            .unwrap(),
            Tenants::default(),
            unfinished(&m),
            20,
        );
        assert!(failed.is_empty());
        assert_eq!(
            m.preempting().collect::<Vec<_>>(),
            vec![(&victim, &JobId::new("j2").unwrap())]
        );
        // Its agent connects again, still running it: it is told to stop again.
        let effects = come_up_connected(&mut m, &w, None, vec![victim.clone()], 21);
        assert!(
            effects.iter().any(|e| matches!(e,
                Effect::StopAgain { victim: v, worker, grace_ms: 10_000, reason }
                    if v == &victim && worker == &w.id && reason == "for critical job j2")),
            "{effects:?}"
        );
        // Its stop comes in as a cancel: a preemption, no retry spent, mark cleared.
        let ended = stopped_as_preempted(&mut m, &w.id, &victim, 22);
        assert_eq!((ended.state, ended.preempted), (JobState::Queued, 1));
        assert_eq!(ended.stopping_for, None);
        assert_eq!(m.preempting().count(), 0);
    }

    #[test]
    fn a_victims_stop_recorded_without_its_beneficiarys_record_is_not_recovered() {
        let mut m = machine(4);
        let (_, victim) = running_best_effort(&mut m);
        preempt_for_critical(&mut m, &worker(1, 4), &victim);
        // As if the write on the job it makes room for had been lost.
        let mut jobs = unfinished(&m);
        for job in &mut jobs {
            if job.id.as_str() == "j2" {
                job.preemptions.clear();
            }
        }
        let (m, _) = Dispatch::recover(
            DispatchConfig::default(),
            Queues::default(),
            Tenants::default(),
            jobs,
            20,
        );
        assert_eq!(m.preempting().count(), 0);
    }

    #[test]
    fn a_job_running_normally_across_a_restart_is_not_told_to_stop() {
        let mut m = machine(4);
        let (w, victim) = running_best_effort(&mut m);
        let (mut m, _) = Dispatch::recover(
            DispatchConfig::default(),
            Queues::default(),
            Tenants::default(),
            unfinished(&m),
            20,
        );
        let effects = come_up_connected(&mut m, &w, None, vec![victim.clone()], 21);
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, Effect::StopAgain { .. })),
            "{effects:?}"
        );
        // Its stop by a user is a cancel, not a preemption.
        run(&mut m, Input::Cancel(victim.clone()), 22);
        let effects = run(
            &mut m,
            Input::Result {
                worker: w.id.clone(),
                job: victim.clone(),
                outcome: AttemptOutcome::Cancelled,
                healthy: true,
            },
            23,
        );
        assert!(
            effects.iter().any(|e| matches!(e,
                Effect::Ended { job, preempted: false, .. } if job.state == JobState::Cancelled)),
            "{effects:?}"
        );
    }

    #[test]
    fn a_missed_deadline_is_recorded_once_and_kept_across_a_restart() {
        let mut m = machine(4);
        let mut urgent = job(1, "a", 4);
        urgent.spec.sla_class = crate::job::SlaClass::Critical;
        run(&mut m, Input::Submit(vec![urgent]), 0);
        let id = JobId::new("j1").unwrap();
        let effects = run(&mut m, Input::DeadlinePassed(vec![id.clone()]), 400_000);
        let [Effect::Missed(missed)] = &effects[..] else {
            panic!("{effects:?}");
        };
        assert!(missed.miss_counted);
        assert!(m.job(&id).unwrap().miss_counted);
        // Told again (the next tick, or a restarted server): nothing to count.
        assert!(run(&mut m, Input::DeadlinePassed(vec![id.clone()]), 400_100).is_empty());
        let (mut m, _) = Dispatch::recover(
            DispatchConfig::default(),
            Queues::default(),
            Tenants::default(),
            unfinished(&m),
            500_000,
        );
        assert!(m.job(&id).unwrap().miss_counted);
        assert!(run(&mut m, Input::DeadlinePassed(vec![id.clone()]), 500_100).is_empty());
        // A job in flight, unknown or not yet late is never recorded by it.
        assert!(
            run(
                &mut m,
                Input::DeadlinePassed(vec![JobId::new("nope").unwrap()]),
                500_200
            )
            .is_empty()
        );
    }

    #[test]
    fn a_users_cancel_wins_over_a_preemption_and_a_loss_while_stopping_is_a_preemption() {
        let mut m = machine(4);
        let (w, victim) = running_best_effort(&mut m);
        preempt_for_critical(&mut m, &w, &victim);
        run(&mut m, Input::Cancel(victim.clone()), 12);
        let effects = run(
            &mut m,
            Input::Result {
                worker: w.id.clone(),
                job: victim.clone(),
                outcome: AttemptOutcome::Cancelled,
                healthy: true,
            },
            13,
        );
        assert!(
            effects.iter().any(|e| matches!(e, Effect::Ended { job, preempted: false, .. } if job.state == JobState::Cancelled)),
            "{effects:?}"
        );

        let mut m = machine(4);
        let (w, victim) = running_best_effort(&mut m);
        preempt_for_critical(&mut m, &w, &victim);
        let effects = run(&mut m, Input::WorkerDead(w.id.clone()), 12);
        assert!(
            effects.iter().any(|e| matches!(e, Effect::Ended { job, preempted: true, .. } if job.state == JobState::Queued && job.preempted == 1)),
            "{effects:?}"
        );
    }

    #[test]
    fn a_draining_worker_gets_no_job_until_its_mark_is_gone() {
        let mut m = machine(4);
        let w = worker(1, 4);
        let seen = |draining| Seen {
            worker: w.clone(),
            pool_max_uses: None,
            connected: true,
            last_heard_ms: 0,
            healthy: true,
            draining,
        };
        run(&mut m, Input::Presence(vec![seen(true)]), 0);
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 1);
        assert!(run(&mut m, Input::Tick, 2).is_empty());
        assert!(m.idle_workers(2).is_empty());
        run(&mut m, Input::Presence(vec![seen(false)]), 3);
        let effects = run(&mut m, Input::Tick, 4);
        assert!(
            matches!(&effects[..], [Effect::Assign { .. }]),
            "{effects:?}"
        );
    }

    #[test]
    fn a_job_runs_through_submit_assign_start_and_result_and_the_worker_retires_at_max_uses() {
        let mut m = machine(4);
        let w = worker(1, 4);
        come_up_connected(&mut m, &w, Some(1), vec![], 0);
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
        let [
            Effect::Ended {
                job: ended,
                held_ms: 2,
                lost: false,
                ..
            },
            retire,
        ] = &effects[..]
        else {
            panic!("{effects:?}");
        };
        assert_eq!(ended.state, JobState::Succeeded);
        assert_eq!(
            retire,
            &Effect::Retire {
                worker: w.id.clone(),
                reason: "ran 1 jobs, its pool's max_uses".into()
            }
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
        up_and_connected(&mut m, &w, 0);
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        let id = JobId::new("j1").unwrap();
        let effects = run(&mut m, Input::Cancel(id.clone()), 1);
        assert!(matches!(&effects[0], Effect::StopJob { .. }));
        run(&mut m, Input::Disconnected(w.id.clone()), 1_000);
        assert!(run(&mut m, Input::Tick, 12_999).is_empty());
        let proposal = m.step(Input::Tick, 13_000);
        assert_eq!(proposal.writes[0].job.state, JobState::Cancelled);
        m.commit(proposal, &[true], 13_000);
        assert!(m.job(&id).is_none());
    }

    #[test]
    fn a_reconnect_without_the_job_gives_its_result_a_short_grace() {
        let mut m = machine(4);
        let w = worker(1, 4);
        up_and_connected(&mut m, &w, 0);
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

    fn up_and_connected(m: &mut Dispatch, w: &IdleWorker, now: u64) {
        come_up_connected(m, w, None, vec![], now);
    }

    #[test]
    fn an_assignment_not_accepted_in_time_is_withdrawn_without_spending_an_attempt() {
        let mut m = machine(4);
        let (w1, w2) = (worker(1, 4), worker(2, 4));
        up_and_connected(&mut m, &w1, 0);
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        let id = JobId::new("j1").unwrap();
        assert!(m.step(Input::Tick, 9_999).writes.is_empty());
        let effects = run(&mut m, Input::Tick, 10_000);
        assert_eq!(
            effects,
            [Effect::Fenced {
                worker: Some(w1.id.clone()),
                job: id.clone(),
                why: Fenced::NotAccepted,
                stop: true
            }]
        );
        let job = m.job(&id).unwrap();
        assert_eq!(
            (job.state, job.attempts, job.withdrawn),
            (JobState::Queued, 1, 1)
        );
        // The worker that did not accept gets nothing until it reconnects; another does.
        assert!(run(&mut m, Input::Tick, 10_001).is_empty());
        up_and_connected(&mut m, &w2, 10_002);
        let effects = run(&mut m, Input::Tick, 10_003);
        assert!(
            matches!(&effects[..], [Effect::Assign { worker, job }] if worker == &w2.id && job.attempts == 2),
            "{effects:?}"
        );
    }

    #[test]
    fn the_machine_ends_a_job_past_its_timeout_and_the_worker_waits_for_a_reconnect() {
        let mut m = machine(4);
        let w = worker(1, 4);
        up_and_connected(&mut m, &w, 0);
        let mut timed = job(1, "a", 1);
        timed.spec.timeout = Some(Duration::from_secs(5));
        run(&mut m, Input::Submit(vec![timed, job(2, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        let id = JobId::new("j1").unwrap();
        run(
            &mut m,
            Input::Accepted {
                worker: w.id.clone(),
                job: id.clone(),
            },
            1_000,
        );
        // Started at 1 s: 5 s of timeout and 10 s of grace.
        assert!(m.step(Input::Tick, 15_999).writes.is_empty());
        let effects = run(&mut m, Input::Tick, 16_000);
        assert!(
            effects.contains(&Effect::Fenced {
                worker: Some(w.id.clone()),
                job: id.clone(),
                why: Fenced::TimedOut,
                stop: true
            }),
            "{effects:?}"
        );
        assert!(effects.iter().any(|e| matches!(e, Effect::Ended { job, lost: true, .. } if job.state == JobState::TimedOut)));
        assert_eq!(m.uses(&w.id), 0, "not one of its uses");
        assert!(
            run(&mut m, Input::Tick, 16_001).is_empty(),
            "no work until it reconnects"
        );
        run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![],
            },
            16_002,
        );
        assert!(matches!(
            &run(&mut m, Input::Tick, 16_003)[..],
            [Effect::Assign { .. }]
        ));
    }

    #[test]
    fn a_worker_confirmed_dead_loses_its_attempt_at_once_and_a_silent_one_after_its_lease() {
        let mut m = machine(4);
        let (w1, w2) = (worker(1, 4), worker(2, 4));
        let seen = |w: &IdleWorker, heard: u64| Seen {
            worker: w.clone(),
            pool_max_uses: None,
            connected: true,
            last_heard_ms: heard,
            healthy: true,
            draining: false,
        };
        run(&mut m, Input::Presence(vec![seen(&w1, 0), seen(&w2, 0)]), 0);
        for w in [&w1, &w2] {
            run(
                &mut m,
                Input::Connected {
                    worker: w.id.clone(),
                    running: vec![],
                },
                0,
            );
        }
        run(
            &mut m,
            Input::Submit(vec![job(1, "a", 1), job(2, "a", 1)]),
            0,
        );
        let assigned = run(&mut m, Input::Tick, 0);
        assert_eq!(assigned.len(), 2);
        for effect in assigned {
            let Effect::Assign { worker, job } = effect else {
                panic!()
            };
            run(
                &mut m,
                Input::Accepted {
                    worker,
                    job: job.id,
                },
                1,
            );
        }
        let on_w1 = m.job_on(&w1.id).cloned().unwrap();
        let effects = run(&mut m, Input::WorkerDead(w1.id.clone()), 2);
        assert!(effects.contains(&Effect::Fenced {
            worker: Some(w1.id.clone()),
            job: on_w1.clone(),
            why: Fenced::Lost(LostBecause::WorkerDead),
            stop: false
        }));
        assert_eq!(m.job(&on_w1).unwrap().state, JobState::Queued, "retried");
        // w2 is connected but silent since 0: not idle after its lease, lost after lease
        // and margin (10 s + 2 s).
        run(&mut m, Input::Presence(vec![seen(&w1, 2), seen(&w2, 0)]), 3);
        let on_w2 = m.job_on(&w2.id).cloned().unwrap();
        assert!(
            m.step(Input::Tick, 11_999)
                .writes
                .iter()
                .all(|w| w.job.id != on_w2)
        );
        let effects = run(&mut m, Input::Tick, 12_000);
        assert!(effects.contains(&Effect::Fenced {
            worker: Some(w2.id.clone()),
            job: on_w2.clone(),
            why: Fenced::Lost(LostBecause::Silent),
            stop: true
        }));
        // w1 is dead until it reconnects: nothing goes to it.
        assert!(m.job_on(&w1.id).is_none());
    }

    #[test]
    fn recovery_requeues_queued_jobs_and_fences_running_ones_from_the_restart() {
        let mut queued = job(1, "a", 1);
        queued.sequence = 7;
        let mut running = job(2, "a", 1);
        running.state = JobState::Running;
        running.attempts = 1;
        running.worker_id = Some(worker(1, 4).id);
        let queues = Queues::new([crate::queue::QueueConfig {
            name: QueueName::default(),
            capacity: 8,
        }])
        .unwrap();
        let (mut m, failed) = Dispatch::recover(
            DispatchConfig::default(),
            queues,
            Tenants::default(),
            vec![queued, running],
            100_000,
        );
        assert!(failed.is_empty());
        assert_eq!(m.counts(), (1, 1));
        // Its agent has lease and margin from the restart to come back.
        assert!(m.step(Input::Tick, 111_999).writes.is_empty());
        let proposal = m.step(Input::Tick, 112_000);
        assert_eq!(proposal.writes.len(), 1);
        assert_eq!(proposal.writes[0].job.state, JobState::Queued);
        // An agent that comes back still running it keeps it.
        let w = worker(1, 4);
        up_and_connected(&mut m, &w, 105_000);
        run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![JobId::new("j2").unwrap()],
            },
            105_000,
        );
        assert!(
            m.step(Input::Tick, 112_000)
                .writes
                .iter()
                .all(|w| w.job.id.as_str() != "j2")
        );
    }

    #[test]
    fn a_reconnecting_agent_running_an_assigned_job_has_accepted_it() {
        let mut m = machine(4);
        let w = worker(1, 4);
        up_and_connected(&mut m, &w, 0);
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        let id = JobId::new("j1").unwrap();
        let effects = run(
            &mut m,
            Input::Connected {
                worker: w.id.clone(),
                running: vec![id.clone()],
            },
            5,
        );
        assert_eq!(effects, [Effect::Started(id.clone())]);
        assert_eq!(m.job(&id).unwrap().state, JobState::Running);
    }

    #[test]
    fn the_machine_refuses_illegal_and_stale_moves_whatever_the_store_says() {
        let mut m = machine(4);
        let w = worker(1, 4);
        up_and_connected(&mut m, &w, 0);
        run(&mut m, Input::Submit(vec![job(1, "a", 1)]), 0);
        run(&mut m, Input::Tick, 0);
        let id = JobId::new("j1").unwrap();
        let accepted = Input::Accepted {
            worker: w.id.clone(),
            job: id.clone(),
        };
        // Two proposals from the same state: the second is stale once the first commits.
        let first = m.step(accepted.clone(), 1);
        let second = m.step(accepted, 1);
        assert_eq!(m.commit(first, &[true], 1), [Effect::Started(id.clone())]);
        assert!(m.commit(second, &[true], 1).is_empty());
        // A store that claims it recorded another state than proposed changes nothing.
        let result = Input::Result {
            worker: w.id.clone(),
            job: id.clone(),
            outcome: AttemptOutcome::Exited(0),
            healthy: true,
        };
        let proposal = m.step(result, 2);
        let mut wrong = proposal.writes[0].job.clone();
        wrong.state = JobState::Queued;
        assert!(m.commit_stored(proposal, vec![Some(wrong)], 2).is_empty());
        assert_eq!(m.job(&id).unwrap().state, JobState::Running);
        // Every write the machine proposes is a legal move from the state it expects.
        let proposal = m.step(Input::Cancel(id.clone()), 3);
        assert!(
            proposal.writes.is_empty(),
            "a running job is cancelled by its agent"
        );
    }

    #[test]
    fn a_job_no_worker_or_pool_could_hold_is_refused_at_submit() {
        let mut m = machine(4);
        m.set_pool_shapes(vec![WorkerCapabilities {
            cpu_cores: 2,
            memory_mb: 1024,
            ..WorkerCapabilities::default()
        }]);
        up_and_connected(&mut m, &worker(1, 4), 0);
        let effects = run(
            &mut m,
            Input::Submit(vec![job(1, "a", 3), job(2, "a", 8)]),
            0,
        );
        assert!(
            matches!(
                &effects[..],
                [
                    Effect::Refused {
                        index: 1,
                        refusal: Refusal::Unsatisfiable(_)
                    },
                    Effect::Admitted { index: 0, .. },
                ]
            ),
            "{effects:?}"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit(Vec<(u8, u8)>),
        Up(u8),
        Gone(u8),
        Connect(u8),
        Disconnect(u8),
        Dead(u8),
        Heard(Vec<(u8, bool, u16)>),
        Accept(u8),
        Finish(u8, bool, bool),
        Undeliverable(u8),
        Cancel(u8),
        Drain(u8),
        Tick(u16),
        Plan,
        /// Preempt the job on this worker for the n-th queued job.
        Preempt(u8, u8),
        /// The agent reports the job on this worker stopped (cancelled).
        Stopped(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec((0..3u8, 0..4u8), 1..4).prop_map(Op::Submit),
            2 => (0..5u8).prop_map(Op::Up),
            1 => (0..5u8).prop_map(Op::Gone),
            2 => (0..5u8).prop_map(Op::Connect),
            1 => (0..5u8).prop_map(Op::Disconnect),
            1 => (0..5u8).prop_map(Op::Dead),
            1 => proptest::collection::vec((0..5u8, any::<bool>(), 0..20_000u16), 0..5).prop_map(Op::Heard),
            2 => (0..5u8).prop_map(Op::Accept),
            2 => ((0..5u8), any::<bool>(), any::<bool>()).prop_map(|(w, ok, healthy)| Op::Finish(w, ok, healthy)),
            1 => (0..5u8).prop_map(Op::Undeliverable),
            1 => (0..40u8).prop_map(Op::Cancel),
            1 => (0..5u8).prop_map(Op::Drain),
            4 => (0..20_000u16).prop_map(Op::Tick),
            1 => Just(Op::Plan),
            2 => ((0..5u8), (0..8u8)).prop_map(|(w, j)| Op::Preempt(w, j)),
            1 => (0..5u8).prop_map(Op::Stopped),
        ]
    }

    const TENANTS: [&str; 3] = ["capped", "b", "c"];

    /// What the test knows of a worker from the inputs it gave and the effects it saw.
    #[derive(Debug, Clone, Default)]
    struct Model {
        registered: bool,
        connected: bool,
        dead: bool,
        leaving: bool,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_inputs_keep_every_invariant(
            ops in proptest::collection::vec((op(), proptest::collection::vec(any::<bool>(), 8)), 1..120)
        ) {
            let mut m = machine(2);
            // `b` may hold at most 3 cpu cores, hard.
            let mut tenants = m.tenants().clone();
            let mut b = crate::tenancy::Tenant::new(tn("b"));
            b.quotas.insert(Resource::Cpu, Limit::hard(3.0));
            tenants.configured.insert(b.name.clone(), b);
            m.set_tenants(tenants);
            let mut now = 0u64;
            let mut next_id = 0u32;
            // The store: what was recorded, per job.
            let mut stored: BTreeMap<JobId, Job> = BTreeMap::new();
            // Who holds what, from the Assign effects and the ends.
            let mut holder: BTreeMap<JobId, WorkerId> = BTreeMap::new();
            let workers: Vec<IdleWorker> = (0..5).map(|i| worker(i, 1 + i % 3)).collect();
            let mut model: Vec<Model> = vec![Model::default(); workers.len()];
            // Start with every worker up and connected; the ops take them away and back.
            for (w, model) in workers.iter().zip(&mut model) {
                run(&mut m, Input::WorkerUp { worker: w.clone(), pool_max_uses: None }, 0);
                run(&mut m, Input::Connected { worker: w.id.clone(), running: vec![] }, 0);
                model.registered = true;
                model.connected = true;
            }
            for (op, store_ok) in ops {
                let input = match op {
                    Op::Submit(list) => Input::Submit(list.into_iter().map(|(t, cpu)| {
                        next_id += 1;
                        job(next_id, TENANTS[t as usize], u32::from(cpu))
                    }).collect()),
                    Op::Up(w) => {
                        model[w as usize].registered = true;
                        Input::WorkerUp { worker: workers[w as usize].clone(), pool_max_uses: (w == 0).then_some(2) }
                    }
                    Op::Gone(w) => {
                        // Forgotten unless it still holds a job (pools never reuse an id).
                        let holds = m.job_on(&workers[w as usize].id).is_some();
                        model[w as usize] = Model { leaving: model[w as usize].leaving && holds, ..Model::default() };
                        Input::WorkerGone(workers[w as usize].id.clone())
                    }
                    Op::Connect(w) => {
                        let id = workers[w as usize].id.clone();
                        let running = m.job_on(&id).cloned().into_iter().collect();
                        model[w as usize].connected = true;
                        model[w as usize].dead = false;
                        Input::Connected { worker: id, running }
                    }
                    Op::Disconnect(w) => {
                        model[w as usize].connected = false;
                        Input::Disconnected(workers[w as usize].id.clone())
                    }
                    Op::Dead(w) => {
                        // A worker the machine no longer knows of is not remembered.
                        let known = model[w as usize].registered || m.job_on(&workers[w as usize].id).is_some();
                        model[w as usize].dead |= known;
                        Input::WorkerDead(workers[w as usize].id.clone())
                    }
                    Op::Heard(list) => {
                        // The registry as it is now: the workers listed, the others gone.
                        let mut seen: BTreeMap<u8, Seen> = BTreeMap::new();
                        for (w, connected, ago) in list {
                            seen.insert(w, Seen {
                                worker: workers[w as usize].clone(),
                                pool_max_uses: None,
                                connected,
                                last_heard_ms: now.saturating_sub(u64::from(ago)),
                                healthy: true,
                                draining: false,
                            });
                        }
                        for (i, model) in model.iter_mut().enumerate() {
                            let listed = seen.get(&(i as u8));
                            let was_registered = model.registered;
                            model.registered = listed.is_some();
                            // A session that opened while the worker was not registered
                            // stays open: the registry does not list it yet.
                            model.connected = match listed {
                                Some(s) => s.connected,
                                None => model.connected && !was_registered,
                            };
                            // A worker that left the registry without a job is forgotten:
                            // its deadness, and its retirement (pools never reuse an id).
                            let holds = m.job_on(&workers[i].id).is_some();
                            model.dead &= model.registered;
                            model.leaving &= model.registered || holds;
                        }
                        Input::Presence(seen.into_values().collect())
                    }
                    Op::Preempt(w, j) => {
                        let id = workers[w as usize].id.clone();
                        let Some(victim) = m.job_on(&id).cloned() else { continue };
                        let Some(for_job) = m.queues().iter_in_order().nth(usize::from(j)).map(|e| e.job_id.clone()) else { continue };
                        Input::Preempt(Preemption {
                            victim,
                            victim_class: crate::job::SlaClass::BestEffort,
                            beneficiary: for_job,
                            beneficiary_class: crate::job::SlaClass::Critical,
                            worker: id,
                            reason: "test".into(),
                        })
                    }
                    Op::Accept(w) | Op::Finish(w, _, _) | Op::Undeliverable(w) | Op::Stopped(w) => {
                        let id = workers[w as usize].id.clone();
                        let Some(job) = m.job_on(&id).cloned() else { continue };
                        match op {
                            Op::Accept(_) => Input::Accepted { worker: id, job },
                            Op::Stopped(_) => Input::Result { worker: id, job, outcome: AttemptOutcome::Cancelled, healthy: true },
                            Op::Finish(_, ok, healthy) => Input::Result { worker: id, job, outcome: AttemptOutcome::Exited(if ok { 0 } else { 1 }), healthy },
                            _ => Input::Undeliverable { worker: id, job },
                        }
                    }
                    Op::Cancel(j) => Input::Cancel(JobId::new(format!("j{j}")).unwrap()),
                    Op::Drain(w) => Input::Drain(vec![workers[w as usize].id.clone()]),
                    Op::Tick(dt) => { now += u64::from(dt); Input::Tick }
                    Op::Plan => Input::Plan,
                };
                // Who may take work now, as far as the test can tell.
                let eligible: Vec<bool> = model.iter().map(|w| w.registered && w.connected && !w.dead && !w.leaving).collect();
                // The deadline checks skip ticks where nothing can be due: a machine made to
                // judge every attempt proposes exactly the same.
                let mut judging_all = m.clone();
                judging_all.deadline_due_ms = 0;
                let expected = judging_all.step(input.clone(), now);
                let proposal = m.step(input, now);
                prop_assert_eq!(&proposal, &expected, "a skipped deadline check missed a verdict");
                // A stop told again repeats a preemption recorded before.
                for effect in &proposal.immediate {
                    prop_assert!(matches!(effect, Effect::Refused { .. } | Effect::StopJob { .. } | Effect::StopAgain { .. } | Effect::CancelAnswered(_) | Effect::CancelUnknown(_) | Effect::Drained(_)), "{effect:?} told before any write");
                }
                // Record: a write applies to the store only if the stored state matches.
                let mut recorded = Vec::new();
                let mut written: BTreeMap<JobId, Job> = BTreeMap::new();
                for (i, write) in proposal.writes.iter().enumerate() {
                    if let Some(from) = write.expected {
                        // A preemption's record changes no state.
                        let records_only = matches!(write.change, Change::Preempt { .. } | Change::MissCounted) && from == write.job.state;
                        prop_assert!(records_only || from.can_transition_to(write.job.state), "illegal {} -> {}", from, write.job.state);
                    }
                    let ok = store_ok[i % store_ok.len()] && match write.expected {
                        None => !stored.contains_key(&write.job.id),
                        Some(expected) => stored.get(&write.job.id).is_some_and(|s| s.state == expected),
                    };
                    if ok {
                        stored.insert(write.job.id.clone(), write.job.clone());
                        written.insert(write.job.id.clone(), write.job.clone());
                    }
                    recorded.push(ok);
                }
                let effects = m.commit(proposal, &recorded, now);
                // What tenants hold is kept as jobs take off and land: it is the sum over
                // the jobs in flight.
                let (held, flying) = m.held_from_scratch();
                prop_assert_eq!(&m.held, &held);
                prop_assert_eq!(m.flying.keys().cloned().collect::<Vec<_>>(), flying);
                for effect in &effects {
                    // Nothing is told unless its write was recorded in this very step.
                    let told = match effect {
                        Effect::Admitted { job, .. } | Effect::Assign { job, .. } | Effect::Ended { job, .. } | Effect::CancelAnswered(job) => Some(job.id.clone()),
                        Effect::Started(id) | Effect::Fenced { job: id, .. } | Effect::Preempt { victim: id, .. } => Some(id.clone()),
                        _ => None,
                    };
                    if let Some(id) = &told {
                        prop_assert!(written.contains_key(id), "{effect:?} told before (or without) its write");
                    }
                    match effect {
                        Effect::Admitted { job, .. } => {
                            prop_assert_eq!(stored.get(&job.id), Some(job), "replied before recorded");
                        }
                        Effect::Assign { worker, job } => {
                            prop_assert_eq!(stored.get(&job.id).map(|j| j.state), Some(JobState::Assigned), "sent before recorded");
                            prop_assert!(holder.insert(job.id.clone(), worker.clone()).is_none(), "job {} assigned twice", job.id);
                            let index = workers.iter().position(|w| &w.id == worker).unwrap();
                            let w = &workers[index];
                            prop_assert!(fits(&job.spec.requirements, &w.capabilities, &w.labels).is_ok(), "{} does not fit {}", job.id, worker);
                            prop_assert!(eligible[index], "assigned to {worker}, which may not take work: {:?}", model[index]);
                        }
                        Effect::Retire { worker, .. } => {
                            let index = workers.iter().position(|w| &w.id == worker).unwrap();
                            model[index].leaving = true;
                        }
                        Effect::Preempt { victim, worker, for_job, .. } => {
                            // Only a running job is stopped, on its own worker, for a job
                            // still queued; both carry the record.
                            let stopped = stored.get(victim);
                            prop_assert_eq!(stopped.map(|j| j.state), Some(JobState::Running));
                            prop_assert_eq!(stopped.and_then(|j| j.worker_id.as_ref()), Some(worker));
                            prop_assert_eq!(stored.get(for_job).map(|j| j.state), Some(JobState::Queued));
                            // The record may be on the job it makes room for since an
                            // earlier step (that step's write on the victim was lost).
                            let record = stopped.and_then(|j| j.preemptions.last());
                            prop_assert!(record.is_some() && stored.get(for_job).and_then(|j| j.preemptions.last()) == record, "told before the record on {for_job}");
                        }
                        Effect::Ended { job, preempted: true, .. } => {
                            // A preemption requeues and spends no retry.
                            prop_assert_eq!(job.state, JobState::Queued);
                            prop_assert!(job.preempted >= 1 && job.preempted + job.withdrawn <= job.attempts);
                        }
                        Effect::Drained(list) => {
                            for worker in list {
                                let index = workers.iter().position(|w| &w.id == worker).unwrap();
                                model[index].leaving = true;
                            }
                        }
                        _ => {}
                    }
                }
                // A worker out of the registry without a job may be forgotten by the machine
                // at any sweep (pools never reuse an id): its deadness and retirement too.
                for (w, model) in workers.iter().zip(&mut model) {
                    if !model.registered && m.job_on(&w.id).is_none() {
                        model.dead = false;
                        model.leaving = false;
                    }
                }
                // Jobs that left flight free their holder.
                holder.retain(|id, _| m.job(id).is_some_and(|j| matches!(j.state, JobState::Assigned | JobState::Running)));
                // One job per worker.
                let mut seen = std::collections::BTreeSet::new();
                for w in holder.values() {
                    prop_assert!(seen.insert(w.clone()), "worker {w} holds two jobs");
                }
                // Hard quotas: `capped` never more than 2 in flight, `b` never more than 3
                // cpu cores.
                let tenant_of = |id: &JobId| m.job(id).map(|j| (j.spec.tenant.to_string(), j.spec.requirements.cpu_cores));
                let capped = holder.keys().filter(|id| tenant_of(id).is_some_and(|(t, _)| t == "capped")).count();
                prop_assert!(capped <= 2, "capped holds {capped}");
                let b_cpu: u32 = holder.keys().filter_map(tenant_of).filter(|(t, _)| t == "b").map(|(_, cpu)| cpu).sum();
                prop_assert!(b_cpu <= 3, "b holds {b_cpu} cores");
                // The machine agrees with the store about every job it tracks.
                for (id, job) in &stored {
                    if let Some(mine) = m.job(id) {
                        prop_assert_eq!(mine.state, job.state);
                        prop_assert_eq!(mine.attempts, job.attempts);
                    }
                }
            }
        }
    }
}
