//! The simulation: a trace replayed through the core's dispatcher ([`Dispatch`]), fair
//! share and the pool pass ([`pool_pass::pass`], which calls the autoscaler), on a virtual
//! clock. Nothing here decides anything: it only moves time, creates the workers the pass
//! asks for after the provider's start latency, runs each job for its traced time after the
//! dispatch latency, and counts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use hodei_core::autoscale::{self, PoolCandidate, ScaleAction};
use hodei_core::dispatch::{Dispatch, DispatchConfig, Effect, Input};
use hodei_core::pool_pass::{self, Member, MemberState, PassJobs, PassPool, PoolCounts, PoolTrack};
use hodei_core::queue::Queues;
use hodei_core::sla::SlaSettings;
use hodei_core::tenancy::{self, Tenants};
use hodei_core::{
    AttemptOutcome, Command, IdleWorker, Job, JobId, JobSpec, PoolSpec, Priority, Requirements,
    TenantName, WorkerId,
};

use crate::config::SimConfig;
use crate::report::{RunReport, Sample};
use crate::trace::Checked;

/// Where the virtual clock starts: Monday 2026-11-23 00:00 UTC, so that a trace's offsets
/// are times of a workday (schedules and the arrival profile see the right hours).
pub const START_MS: u64 = 1_795_392_000_000;
const WEEK_MS: u64 = 7 * 86_400_000;
/// A run stops this long after the last arrival even if jobs are still waiting.
const HORIZON_MS: u64 = 86_400_000;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl From<hodei_core::ValidationError> for SimError {
    fn from(e: hodei_core::ValidationError) -> Self {
        Self::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The worker's agent connects.
    Ready(usize),
    /// The agent starts the job it was sent.
    Accept(usize, usize),
    /// The job ends.
    Done(usize, usize),
    Pass,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WState {
    Starting,
    Idle { since_ms: u64 },
    Busy,
    Gone,
}

#[derive(Debug)]
struct SimWorker {
    id: WorkerId,
    pool: usize,
    state: WState,
}

#[derive(Debug)]
struct SimPool {
    spec: PoolSpec,
    track: PoolTrack,
    latency_ms: u64,
    /// When each provisioning slot is free again (`max_concurrent_provisioning` of them).
    slots: Vec<u64>,
    idle: u32,
    busy: u32,
    starting: u32,
    next_id: u64,
    idle_s: f64,
    busy_s: f64,
    starting_s: f64,
    peak: u32,
    ups: u32,
    downs: u32,
    candidate: PoolCandidate,
    /// Its idle workers by (idle since, worker): those idle longest first, which are the
    /// ones a pass may drain.
    idle_workers: BTreeSet<(u64, usize)>,
}

#[derive(Debug, Default, Clone)]
struct JobTrack {
    started_ms: Option<u64>,
    pool: Option<usize>,
}

/// Integer milliseconds to seconds for the report.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn job_id(index: usize) -> JobId {
    #[allow(clippy::unwrap_used)] // "j" and digits are always a valid id.
    JobId::new(format!("j{index}")).unwrap()
}

fn job_index(id: &JobId) -> Option<usize> {
    id.as_str().strip_prefix('j')?.parse().ok()
}

/// Runs one configuration over a trace (sorted by submission, as [`crate::trace::read`]
/// returns it).
pub fn simulate(config: &SimConfig, trace: &[Checked]) -> Result<RunReport, SimError> {
    let tenants: Tenants = config.tenants()?;
    let queues = Queues::new(config.queue_configs()?)?;
    let sla = config.sla_settings()?;
    let mut sim = Sim::new(config, tenants, sla, queues, trace);
    sim.run();
    Ok(sim.report())
}

struct Sim<'a> {
    config: &'a SimConfig,
    trace: &'a [Checked],
    tenants: Tenants,
    sla: SlaSettings,
    dispatch: Dispatch,
    pools: Vec<SimPool>,
    /// Every pool's shape, for [`autoscale::home_pool`] (fixed for the run).
    shapes: Vec<PoolCandidate>,
    workers: Vec<SimWorker>,
    worker_index: HashMap<WorkerId, usize>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    now: u64,
    next_arrival: usize,
    jobs: Vec<JobTrack>,
    admitted: Vec<bool>,
    /// Queued jobs in dispatch order: (priority descending, sequence).
    queued: BTreeMap<(Reverse<Priority>, u64), usize>,
    queued_by_tenant: BTreeMap<TenantName, u32>,
    in_flight: usize,
    refused: usize,
    refused_unfit: usize,
    arrived: Vec<Requirements>,
    ran: Vec<(String, f64)>,
    pass_at: Option<u64>,
    last_pass: u64,
    dispatch_due: bool,
    samples: Vec<Sample>,
    peak_workers: u32,
    /// Fair share under saturation: cost units started and due, by tenant.
    share_actual: BTreeMap<TenantName, f64>,
    share_expected: BTreeMap<TenantName, f64>,
    saturated_starts: u64,
    tenant_cost: BTreeMap<TenantName, f64>,
    decisions: Vec<(u64, String, &'static str, u32, String)>,
    start_order: Vec<usize>,
}

impl<'a> Sim<'a> {
    fn new(
        config: &'a SimConfig,
        tenants: Tenants,
        sla: SlaSettings,
        queues: Queues,
        trace: &'a [Checked],
    ) -> Self {
        let pools: Vec<SimPool> = config
            .pools
            .iter()
            .map(|spec| {
                let slots = usize::try_from(spec.max_concurrent_provisioning.max(1)).unwrap_or(1);
                SimPool {
                    spec: spec.clone(),
                    track: PoolTrack::default(),
                    latency_ms: config.sim.start_latency(spec.provider),
                    slots: vec![0; slots],
                    idle: 0,
                    busy: 0,
                    starting: 0,
                    next_id: 0,
                    idle_s: 0.0,
                    busy_s: 0.0,
                    starting_s: 0.0,
                    peak: 0,
                    ups: 0,
                    downs: 0,
                    candidate: PoolCandidate::from_spec(spec, 0, START_MS),
                    idle_workers: BTreeSet::new(),
                }
            })
            .collect();
        let mut sim = Self {
            config,
            trace,
            dispatch: Dispatch::new(DispatchConfig::default(), queues, tenants.clone()),
            tenants,
            sla,
            shapes: pools.iter().map(|p| p.candidate.clone()).collect(),
            pools,
            workers: Vec::new(),
            worker_index: HashMap::new(),
            events: BinaryHeap::new(),
            seq: 0,
            now: START_MS,
            next_arrival: 0,
            jobs: vec![JobTrack::default(); trace.len()],
            admitted: vec![false; trace.len()],
            queued: BTreeMap::new(),
            queued_by_tenant: BTreeMap::new(),
            in_flight: 0,
            refused: 0,
            refused_unfit: 0,
            arrived: Vec::new(),
            ran: Vec::new(),
            pass_at: None,
            last_pass: 0,
            dispatch_due: false,
            samples: Vec::new(),
            peak_workers: 0,
            share_actual: BTreeMap::new(),
            share_expected: BTreeMap::new(),
            saturated_starts: 0,
            tenant_cost: BTreeMap::new(),
            decisions: Vec::new(),
            start_order: Vec::new(),
        };
        sim.learn_profiles();
        sim
    }

    /// `profile_from_trace`: predictive pools see the trace's arrivals one week earlier.
    fn learn_profiles(&mut self) {
        if !self.config.sim.profile_from_trace {
            return;
        }
        let candidates = &self.shapes;
        for (i, pool) in self.pools.iter_mut().enumerate() {
            if pool.spec.scaling.policy != hodei_core::pool::PolicyKind::Predictive {
                continue;
            }
            let end = self.trace.last().map_or(0, |j| j.submit_ms) + 2 * 3_600_000;
            let mut jobs = self.trace.iter().peekable();
            let mut t = 0;
            while t <= end {
                let mut came = 0;
                while let Some(job) = jobs.next_if(|job| job.submit_ms < t + 60_000) {
                    if autoscale::home_pool(candidates, &job.requirements)
                        == Some(candidates[i].name.as_str())
                    {
                        came += 1;
                    }
                }
                pool.track.profile.observe(START_MS - WEEK_MS + t, came);
                t += 60_000;
            }
        }
    }

    fn at(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at_ms, self.seq, event)));
    }

    /// Moves the clock, charging every worker for the time it spent in its state.
    fn advance(&mut self, to: u64) {
        if to <= self.now {
            return;
        }
        let dt = secs(to - self.now);
        for pool in &mut self.pools {
            pool.idle_s += f64::from(pool.idle) * dt;
            pool.busy_s += f64::from(pool.busy) * dt;
            pool.starting_s += f64::from(pool.starting) * dt;
        }
        self.now = to;
    }

    fn wake(&mut self) {
        let at = self
            .now
            .max(self.last_pass + self.config.sim.min_pass_interval_ms);
        if self.pass_at.is_none_or(|due| at < due) {
            self.pass_at = Some(at);
            self.at(at, Event::Pass);
        }
    }

    fn done(&self) -> bool {
        self.next_arrival >= self.trace.len() && self.queued.is_empty() && self.in_flight == 0
    }

    fn run(&mut self) {
        let last_arrival = self.trace.last().map_or(0, |j| j.submit_ms);
        let stop_at = START_MS + last_arrival + HORIZON_MS;
        self.at(START_MS, Event::Pass);
        self.pass_at = Some(START_MS);
        self.at(START_MS, Event::Sample);
        loop {
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            let next_arrival = self
                .trace
                .get(self.next_arrival)
                .map(|job| START_MS + job.submit_ms);
            let t = match (next_event, next_arrival) {
                (Some(e), Some(a)) => e.min(a),
                (Some(e), None) => e,
                (None, Some(a)) => a,
                (None, None) => break,
            };
            if t > stop_at || (self.done() && self.next_arrival > 0) {
                break;
            }
            self.advance(t);
            // Everything due at `t`: arrivals first, as the server hears a submission at once.
            let mut batch = Vec::new();
            while self
                .trace
                .get(self.next_arrival)
                .is_some_and(|job| START_MS + job.submit_ms <= t)
            {
                batch.push(self.next_arrival);
                self.next_arrival += 1;
            }
            if !batch.is_empty() {
                self.submit(&batch);
            }
            while let Some(Reverse((at, _, event))) = self.events.peek().copied() {
                if at > t {
                    break;
                }
                self.events.pop();
                self.handle(event);
            }
            if self.dispatch_due {
                self.dispatch_due = false;
                self.tick();
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready(w) => {
                if self.workers[w].state != WState::Starting {
                    return;
                }
                let pool = self.workers[w].pool;
                let spec = &self.pools[pool].spec;
                let worker = IdleWorker {
                    id: self.workers[w].id.clone(),
                    capabilities: self.pools[pool].candidate.capabilities.clone(),
                    labels: self.pools[pool].candidate.labels.clone(),
                    pool: Some(spec.name.clone()),
                };
                let max_uses = spec.max_uses;
                let id = worker.id.clone();
                let now = self.now;
                self.dispatch.step(
                    Input::WorkerUp {
                        worker,
                        pool_max_uses: max_uses,
                    },
                    now,
                );
                self.dispatch.step(
                    Input::Connected {
                        worker: id,
                        running: Vec::new(),
                    },
                    now,
                );
                self.set_state(w, WState::Idle { since_ms: now });
                self.dispatch_due = true;
            }
            Event::Accept(w, j) => {
                let input = Input::Accepted {
                    worker: self.workers[w].id.clone(),
                    job: job_id(j),
                };
                self.step_all(input);
            }
            Event::Done(w, j) => {
                let started = self.jobs[j].started_ms.unwrap_or(self.now);
                let ran = secs(self.now.saturating_sub(started));
                let pool = self.workers[w].pool;
                let spec = &self.pools[pool].spec;
                self.ran.push((spec.name.clone(), ran));
                let cost = hodei_core::cost::cost_of(ran, spec.cost_per_hour);
                let tenant = &self.trace[j].tenant;
                *self.tenant_cost.entry(tenant.clone()).or_default() += cost;
                // Today's cost, for `max_daily_cost` quotas, as the server charges it.
                self.dispatch.charge(tenant, cost, self.now);
                let input = Input::Result {
                    worker: self.workers[w].id.clone(),
                    job: job_id(j),
                    outcome: AttemptOutcome::Exited(self.trace[j].exit_code),
                    healthy: true,
                };
                self.in_flight -= 1;
                let effects = self.step_all(input);
                let retired = effects.iter().any(
                    |e| matches!(e, Effect::Retire { worker, .. } if *worker == self.workers[w].id),
                );
                if retired {
                    self.terminate(w);
                } else {
                    let now = self.now;
                    self.set_state(w, WState::Idle { since_ms: now });
                }
                self.dispatch_due = true;
                self.wake();
            }
            Event::Pass => {
                if self.pass_at == Some(self.now) {
                    self.pass_at = None;
                }
                self.pass();
                let next = self.now + self.config.sim.pass_interval_ms;
                if self.pass_at.is_none_or(|due| next < due) {
                    self.pass_at = Some(next);
                    self.at(next, Event::Pass);
                }
            }
            Event::Sample => {
                let (mut idle, mut busy, mut starting) = (0, 0, 0);
                for pool in &self.pools {
                    idle += pool.idle;
                    busy += pool.busy;
                    starting += pool.starting;
                }
                self.samples.push(Sample {
                    t_s: secs(self.now - START_MS),
                    queued: u32::try_from(self.queued.len()).unwrap_or(u32::MAX),
                    idle,
                    busy,
                    starting,
                });
                let next = self.now + self.config.sim.sample_interval_s * 1000;
                if !self.done() {
                    self.at(next, Event::Sample);
                }
            }
        }
    }

    /// Steps the dispatcher and commits every write (the simulated store never refuses).
    fn step_all(&mut self, input: Input) -> Vec<Effect> {
        let now = self.now;
        let proposal = self.dispatch.step(input, now);
        let mut effects = proposal.immediate.clone();
        let recorded = vec![true; proposal.writes.len()];
        effects.extend(self.dispatch.commit(proposal, &recorded, now));
        effects
    }

    fn set_state(&mut self, w: usize, state: WState) {
        let pool = &mut self.pools[self.workers[w].pool];
        match self.workers[w].state {
            WState::Starting => pool.starting -= 1,
            WState::Idle { since_ms } => {
                pool.idle -= 1;
                pool.idle_workers.remove(&(since_ms, w));
            }
            WState::Busy => pool.busy -= 1,
            WState::Gone => {}
        }
        match state {
            WState::Starting => pool.starting += 1,
            WState::Idle { since_ms } => {
                pool.idle += 1;
                pool.idle_workers.insert((since_ms, w));
            }
            WState::Busy => pool.busy += 1,
            WState::Gone => {}
        }
        self.workers[w].state = state;
    }

    fn terminate(&mut self, w: usize) {
        self.set_state(w, WState::Gone);
        let id = self.workers[w].id.clone();
        self.step_all(Input::WorkerGone(id));
    }

    fn submit(&mut self, batch: &[usize]) {
        let now = self.now;
        // As the server: a job no pool could ever hold is refused at submission.
        let jobs: Vec<Job> = batch
            .iter()
            .filter(|&&i| {
                let fits =
                    autoscale::home_pool(&self.shapes, &self.trace[i].requirements).is_some();
                if !fits {
                    self.refused_unfit += 1;
                }
                fits
            })
            .map(|&i| {
                let traced = &self.trace[i];
                let spec = JobSpec {
                    tenant: traced.tenant.clone(),
                    queue: traced.queue.clone(),
                    requirements: traced.requirements.clone(),
                    priority: traced.priority,
                    sla_class: traced.sla_class,
                    ..JobSpec::new(Command::Argv(vec!["true".to_owned()]))
                };
                let submitted_at = UNIX_EPOCH + Duration::from_millis(now);
                Job {
                    id: job_id(i),
                    state: hodei_core::JobState::Queued,
                    attempts: 0,
                    withdrawn: 0,
                    worker_id: None,
                    exit_code: None,
                    reason: None,
                    submitted_at,
                    started_at: None,
                    finished_at: None,
                    sequence: i as u64,
                    // Stamped as the server stamps it ([sla]), so the at-risk boost orders
                    // the queue.
                    deadline: Some(self.sla.deadline_of(spec.sla_class, submitted_at)),
                    first_started_at: None,
                    preempted: 0,
                    preemptions: Vec::new(),
                    miss_counted: false,
                    stopping_for: None,
                    spec,
                }
            })
            .collect();
        let effects = self.step_all(Input::Submit(jobs));
        for effect in effects {
            match effect {
                Effect::Admitted { job, .. } => {
                    let Some(i) = job_index(&job.id) else {
                        continue;
                    };
                    self.admitted[i] = true;
                    self.queued
                        .insert((Reverse(job.spec.priority), i as u64), i);
                    *self
                        .queued_by_tenant
                        .entry(job.spec.tenant.clone())
                        .or_default() += 1;
                    self.arrived.push(job.spec.requirements);
                }
                Effect::Refused { .. } => self.refused += 1,
                _ => {}
            }
        }
        self.dispatch_due = true;
        self.wake();
    }

    /// Plans starts when a worker is idle and a job waits (otherwise a tick changes
    /// nothing without quotas).
    fn tick(&mut self) {
        if self.queued.is_empty() || self.pools.iter().all(|p| p.idle == 0) {
            return;
        }
        let effects = self.step_all(Input::Tick);
        let mut started: Vec<(TenantName, f64)> = Vec::new();
        for effect in effects {
            let Effect::Assign { worker, job } = effect else {
                continue;
            };
            let Some(j) = job_index(&job.id) else {
                continue;
            };
            let Some(&w) = self.worker_index.get(&worker) else {
                continue;
            };
            let traced = &self.trace[j];
            self.queued.remove(&(Reverse(traced.priority), j as u64));
            if let Some(n) = self.queued_by_tenant.get_mut(&traced.tenant) {
                *n -= 1;
                if *n == 0 {
                    self.queued_by_tenant.remove(&traced.tenant);
                }
            }
            let start = self.now + self.config.sim.dispatch_latency_ms;
            self.jobs[j].started_ms = Some(start);
            self.start_order.push(j);
            self.jobs[j].pool = Some(self.workers[w].pool);
            self.in_flight += 1;
            self.set_state(w, WState::Busy);
            self.at(start, Event::Accept(w, j));
            self.at(start + traced.run_ms, Event::Done(w, j));
            started.push((
                traced.tenant.clone(),
                tenancy::job_cost(&traced.requirements) as f64,
            ));
        }
        // Shares under saturation: the tenants still waiting after this round were owed
        // the round's starts in proportion to their weights.
        if !started.is_empty() && !self.queued_by_tenant.is_empty() {
            let backlogged: Vec<(TenantName, f64)> = self
                .queued_by_tenant
                .keys()
                .map(|t| {
                    let weight = self.tenants.get(t).map_or(1, |t| t.weight);
                    (t.clone(), f64::from(weight))
                })
                .collect();
            let total_weight: f64 = backlogged.iter().map(|(_, w)| w).sum();
            let mut round = 0.0;
            for (tenant, cost) in &started {
                if self.queued_by_tenant.contains_key(tenant) {
                    *self.share_actual.entry(tenant.clone()).or_default() += cost;
                    round += cost;
                    self.saturated_starts += 1;
                }
            }
            for (tenant, weight) in backlogged {
                *self.share_expected.entry(tenant).or_default() += round * weight / total_weight;
            }
        }
    }

    fn pass(&mut self) {
        self.last_pass = self.now;
        let now = self.now;
        // Idle workers by id (they may be drained); busy and starting ones by count.
        // Idle workers by id only where the pass could drain them (idle past the timeout,
        // or all above the maximum), the others by count: the same decisions, without
        // naming hundreds of idle workers on every pass.
        let workers = &self.workers;
        let members: Vec<Vec<Member>> = self
            .pools
            .iter()
            .map(|pool| {
                let supply = pool.idle + pool.busy + pool.starting;
                let Some(past) = autoscale::drainable_idle(&pool.spec, supply, now) else {
                    return Vec::new();
                };
                let past = u64::try_from(past.as_millis()).unwrap_or(u64::MAX);
                let since = now.saturating_sub(past);
                pool.idle_workers
                    .range(..=(since, usize::MAX))
                    .map(|&(since_ms, w)| Member {
                        id: workers[w].id.clone(),
                        state: MemberState::Idle {
                            idle_for: Duration::from_millis(now.saturating_sub(since_ms)),
                        },
                    })
                    .collect()
            })
            .collect();
        let trace = self.trace;
        let queued: Vec<&'a Requirements> = self
            .queued
            .values()
            .take(SNAPSHOT_QUEUED)
            .map(|&j| &trace[j].requirements)
            .collect();
        let arrived = std::mem::take(&mut self.arrived);
        let ran = std::mem::take(&mut self.ran);
        let mut entries: Vec<PassPool<'_>> = self
            .pools
            .iter_mut()
            .zip(&members)
            .map(|(pool, members)| PassPool {
                spec: &pool.spec,
                removing: false,
                members,
                counted: PoolCounts {
                    idle: pool.idle - u32::try_from(members.len()).unwrap_or(pool.idle),
                    busy: pool.busy,
                    starting: pool.starting,
                    ..PoolCounts::default()
                },
                pending_creations: 0,
                track: &mut pool.track,
            })
            .collect();
        let outcomes = pool_pass::pass(
            &mut entries,
            PassJobs {
                queued: &queued,
                arrived: &arrived,
                ran: &ran,
            },
            now,
            20,
        );
        drop(entries);
        for (p, outcome) in outcomes.into_iter().enumerate() {
            if outcome.logged
                && let Some(decision) = &outcome.decision
                && decision.action != ScaleAction::Hold
            {
                let count = match &decision.action {
                    ScaleAction::Up(n) => *n,
                    ScaleAction::Down(ids) => u32::try_from(ids.len()).unwrap_or(u32::MAX),
                    ScaleAction::Hold => 0,
                };
                self.decisions.push((
                    now,
                    self.pools[p].spec.name.clone(),
                    decision.action.as_str(),
                    count,
                    decision.reason.clone(),
                ));
            }
            match outcome.action {
                ScaleAction::Hold => {}
                ScaleAction::Up(n) => {
                    self.pools[p].ups += 1;
                    for _ in 0..n {
                        self.create(p);
                    }
                }
                ScaleAction::Down(ids) => {
                    self.pools[p].downs += 1;
                    let effects = self.step_all(Input::Drain(ids));
                    for effect in effects {
                        if let Effect::Drained(drained) = effect {
                            for id in drained {
                                if let Some(&w) = self.worker_index.get(&id) {
                                    self.terminate(w);
                                }
                            }
                        }
                    }
                }
            }
        }
        let total: u32 = self
            .pools
            .iter()
            .map(|p| p.idle + p.busy + p.starting)
            .sum();
        self.peak_workers = self.peak_workers.max(total);
        for pool in &mut self.pools {
            pool.peak = pool.peak.max(pool.idle + pool.busy + pool.starting);
        }
    }

    /// A worker of pool `p`: starting now, connecting after the provider's latency, at
    /// most `max_concurrent_provisioning` being created at once.
    fn create(&mut self, p: usize) {
        let now = self.now;
        let pool = &mut self.pools[p];
        pool.next_id += 1;
        #[allow(clippy::unwrap_used)] // A valid pool name and digits make a valid id.
        let id = WorkerId::new(format!("{}-{}", pool.spec.name, pool.next_id)).unwrap();
        let slot = pool.slots.iter_mut().min().map_or(now, |free| {
            let begin = (*free).max(now);
            *free = begin + pool.latency_ms;
            *free
        });
        let w = self.workers.len();
        self.workers.push(SimWorker {
            id: id.clone(),
            pool: p,
            state: WState::Gone,
        });
        self.worker_index.insert(id, w);
        self.set_state(w, WState::Starting);
        self.at(slot, Event::Ready(w));
    }

    fn report(&self) -> RunReport {
        let end = self.now;
        let mut report = RunReport::new(self.config.name());
        report.jobs = self.trace.len();
        report.refused = self.refused + self.refused_unfit;
        report.refused_no_pool_fits = self.refused_unfit;
        report.span_seconds = secs(end - START_MS);
        for (i, traced) in self.trace.iter().enumerate() {
            if !self.admitted[i] {
                continue;
            }
            let submitted = START_MS + traced.submit_ms;
            let (wait, started) = match self.jobs[i].started_ms {
                Some(start) => (secs(start.saturating_sub(submitted)), true),
                None => (secs(end.saturating_sub(submitted)), false),
            };
            report.add_wait(
                traced.tenant.as_str(),
                traced.sla_class,
                wait,
                started,
                self.sla.deadline(traced.sla_class).as_secs_f64(),
            );
        }
        for pool in &self.pools {
            report.add_pool(
                &pool.spec.name,
                pool.idle_s,
                pool.busy_s,
                pool.starting_s,
                pool.spec.cost_per_hour,
                pool.peak,
                pool.ups,
                pool.downs,
            );
        }
        for (tenant, cost) in &self.tenant_cost {
            report.cost_by_tenant.insert(tenant.to_string(), *cost);
        }
        let tenants: BTreeSet<&TenantName> = self.trace.iter().map(|j| &j.tenant).collect();
        let weights: BTreeMap<String, u32> = tenants
            .into_iter()
            .map(|t| (t.to_string(), self.tenants.get(t).map_or(1, |t| t.weight)))
            .collect();
        report.set_shares(
            &weights,
            &self
                .share_actual
                .iter()
                .map(|(t, v)| (t.to_string(), *v))
                .collect(),
            &self
                .share_expected
                .iter()
                .map(|(t, v)| (t.to_string(), *v))
                .collect(),
            self.saturated_starts,
        );
        report.peak_workers = self.peak_workers;
        report.samples.clone_from(&self.samples);
        report.start_order.clone_from(&self.start_order);
        report.decision_log = self
            .decisions
            .iter()
            .take(200)
            .map(
                |(t, pool, action, count, reason)| crate::report::LoggedScaling {
                    t_s: secs(t - START_MS),
                    pool: pool.clone(),
                    action: (*action).to_owned(),
                    count: *count,
                    reason: reason.clone(),
                },
            )
            .collect();
        report.finish();
        report
    }
}

/// The most queued jobs a pass looks at, as in the server's dispatcher snapshot.
const SNAPSHOT_QUEUED: usize = 10_000;
