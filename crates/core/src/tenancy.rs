//! Tenants: who shares the fleet, with which weight and quotas, whether a job may start
//! now (quotas and burst), whether a job may be queued at all (admission), and the order in
//! which tenants' jobs start when workers are scarce (weighted fair queuing).
//!
//! Everything here is pure: time comes in as milliseconds since the Unix epoch (`now_ms`),
//! usage comes in as numbers the dispatcher counted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::job::{JobId, Requirements, TenantName};
use crate::matching::{IdleWorker, best_fit};
use crate::queue::Queues;
use crate::worker::{ValidationError, WorkerId};

/// The largest explicit weight; a weight is a share, not a priority, so a big range buys nothing.
pub const MAX_WEIGHT: u32 = 1000;

/// A named weight: bronze 1, silver 2, gold 3, platinum 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Bronze,
    Silver,
    Gold,
    Platinum,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Bronze, Tier::Silver, Tier::Gold, Tier::Platinum];

    pub fn weight(self) -> u32 {
        match self {
            Self::Bronze => 1,
            Self::Silver => 2,
            Self::Gold => 3,
            Self::Platinum => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bronze => "bronze",
            Self::Silver => "silver",
            Self::Gold => "gold",
            Self::Platinum => "platinum",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|tier| tier.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "tier",
                    format!("is {s}, one of bronze, silver, gold, platinum expected"),
                )
            })
    }
}

/// A resource a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Jobs assigned or running.
    RunningJobs,
    /// Cpu cores asked by running jobs.
    Cpu,
    /// Memory (MB) asked by running jobs.
    MemoryMb,
    /// Distinct workers holding the tenant's jobs.
    Workers,
    /// What the tenant's attempts cost since 00:00 UTC.
    DailyCost,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::RunningJobs,
        Resource::Cpu,
        Resource::MemoryMb,
        Resource::Workers,
        Resource::DailyCost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunningJobs => "running_jobs",
            Self::Cpu => "cpu",
            Self::MemoryMb => "memory_mb",
            Self::Workers => "workers",
            Self::DailyCost => "daily_cost",
        }
    }

    /// Whether a quota on this resource blocks every job of the tenant alike (so the
    /// planner skips the tenant), rather than only the jobs that ask too much of it.
    fn blocks_every_job(self) -> bool {
        matches!(self, Self::RunningJobs | Self::Workers | Self::DailyCost)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resource {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "quota",
                    format!(
                        "is {s}, one of running_jobs, cpu, memory_mb, workers, daily_cost expected"
                    ),
                )
            })
    }
}

/// One quota: a limit, hard (never passed) or soft (passed while bursting).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub value: f64,
    #[serde(default)]
    pub soft: bool,
}

impl Limit {
    pub fn hard(value: f64) -> Self {
        Self { value, soft: false }
    }

    pub fn soft(value: f64) -> Self {
        Self { value, soft: true }
    }
}

/// A tenant's quotas, by resource; a resource not listed is unlimited.
pub type Quotas = BTreeMap<Resource, Limit>;

/// A tenant as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: TenantName,
    /// The tier its weight comes from, if it was given as a tier.
    pub tier: Option<Tier>,
    /// Its share of scarce workers relative to other tenants: 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    pub quotas: Quotas,
    /// Most jobs it may have queued; a submission beyond is refused as exhausted.
    pub max_queued: Option<u32>,
    /// The SLA class of its jobs submitted without one, unless their queue has a default
    /// (see [`crate::sla::SlaSettings::class_of`]); `None`: `medium`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_class: Option<crate::job::SlaClass>,
    /// Its running jobs may be stopped to make room for more urgent ones (see
    /// [`crate::sla`]); `false` keeps them running whatever waits.
    #[serde(default = "preemptible_by_default")]
    pub preemptible: bool,
}

fn preemptible_by_default() -> bool {
    true
}

impl Tenant {
    /// A tenant with weight 1 (bronze) and no quotas.
    pub fn new(name: TenantName) -> Self {
        Self {
            name,
            tier: Some(Tier::Bronze),
            weight: Tier::Bronze.weight(),
            quotas: Quotas::new(),
            max_queued: None,
            sla_class: None,
            preemptible: true,
        }
    }

    /// Checks the weight and the quota values.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(ValidationError::new(
                "weight",
                format!("is {}, 1 to {MAX_WEIGHT} allowed", self.weight),
            ));
        }
        if let Some(tier) = self.tier
            && tier.weight() != self.weight
        {
            return Err(ValidationError::new(
                "weight",
                format!(
                    "is {}, but tier {tier} means weight {}",
                    self.weight,
                    tier.weight()
                ),
            ));
        }
        for (resource, limit) in &self.quotas {
            if !limit.value.is_finite() || limit.value < 0.0 {
                return Err(ValidationError::new(
                    format!("quotas.{resource}"),
                    format!("is {}, a number of at least 0 expected", limit.value),
                ));
            }
            if *resource != Resource::DailyCost && limit.value.fract() != 0.0 {
                return Err(ValidationError::new(
                    format!("quotas.{resource}"),
                    format!("is {}, a whole number expected", limit.value),
                ));
            }
        }
        Ok(())
    }
}

/// How far and how long a tenant may go past its soft quotas while capacity is idle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstPolicy {
    /// Soft limits are multiplied by this while bursting (1.0 disables burst).
    pub factor: f64,
    /// Longest a burst lasts before it cools down.
    pub max_ms: u64,
    /// Longest a cooldown lasts; a burst that ended early cools down as long as it lasted.
    pub cooldown_ms: u64,
}

impl Default for BurstPolicy {
    /// PRODUCT.md's defaults: 1.5x for at most one hour, then an hour of cooldown.
    fn default() -> Self {
        Self {
            factor: 1.5,
            max_ms: 3_600_000,
            cooldown_ms: 3_600_000,
        }
    }
}

impl BurstPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !self.factor.is_finite() || !(1.0..=10.0).contains(&self.factor) {
            return Err(ValidationError::new(
                "tenants.burst_factor",
                format!("is {}, 1.0 to 10.0 allowed", self.factor),
            ));
        }
        Ok(())
    }
}

/// Where a tenant is in its burst cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BurstState {
    /// Within its soft quotas; may burst when capacity is idle.
    #[default]
    Ready,
    /// Past a soft quota since `since_ms`.
    Active { since_ms: u64 },
    /// May not burst again before `until_ms`; its running jobs are not touched.
    Cooldown { until_ms: u64 },
}

impl BurstState {
    /// Whether new starts may go past soft quotas at `now_ms`.
    pub fn may_burst(self, policy: &BurstPolicy, now_ms: u64) -> bool {
        if policy.factor <= 1.0 {
            return false;
        }
        match self {
            Self::Ready => true,
            Self::Active { since_ms } => now_ms.saturating_sub(since_ms) < policy.max_ms,
            Self::Cooldown { until_ms } => now_ms >= until_ms,
        }
    }

    /// The state after a planning pass at `now_ms`; `over_soft` says whether the tenant's
    /// usage is past one of its soft quotas now.
    pub fn next(self, over_soft: bool, policy: &BurstPolicy, now_ms: u64) -> Self {
        match (self, over_soft) {
            (Self::Ready, false) => Self::Ready,
            (Self::Ready, true) => Self::Active { since_ms: now_ms },
            (Self::Active { since_ms }, over) => {
                let lasted = now_ms.saturating_sub(since_ms);
                if lasted >= policy.max_ms {
                    Self::Cooldown {
                        until_ms: now_ms.saturating_add(policy.cooldown_ms),
                    }
                } else if over {
                    self
                } else {
                    // An early end cools down as long as the burst lasted, so bursts cut
                    // just short of the maximum cannot follow each other back to back.
                    Self::Cooldown {
                        until_ms: now_ms.saturating_add(lasted.min(policy.cooldown_ms)),
                    }
                }
            }
            (Self::Cooldown { until_ms }, over) if now_ms >= until_ms => {
                if over {
                    // Still above soft quota from before (jobs are never killed): keep
                    // cooling until the tenant comes back under.
                    self
                } else {
                    Self::Ready
                }
            }
            (cooldown @ Self::Cooldown { .. }, _) => cooldown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Active { .. } => "active",
            Self::Cooldown { .. } => "cooldown",
        }
    }
}

/// What a tenant holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub running_jobs: u32,
    pub cpu: u32,
    pub memory_mb: u64,
    pub workers: u32,
    /// What its attempts cost since 00:00 UTC.
    pub daily_cost: f64,
}

impl Usage {
    pub fn get(&self, resource: Resource) -> f64 {
        match resource {
            Resource::RunningJobs => f64::from(self.running_jobs),
            Resource::Cpu => f64::from(self.cpu),
            Resource::MemoryMb => self.memory_mb as f64,
            Resource::Workers => f64::from(self.workers),
            Resource::DailyCost => self.daily_cost,
        }
    }

    /// Counts one more job holding its own worker (a worker runs one job at a time).
    pub fn add_job(&mut self, ask: &Requirements) {
        self.running_jobs = self.running_jobs.saturating_add(1);
        self.workers = self.workers.saturating_add(1);
        self.cpu = self.cpu.saturating_add(ask.cpu_cores);
        self.memory_mb = self.memory_mb.saturating_add(ask.memory_mb);
    }

    /// Counts a job that no longer holds its worker.
    pub fn remove_job(&mut self, ask: &Requirements) {
        self.running_jobs = self.running_jobs.saturating_sub(1);
        self.workers = self.workers.saturating_sub(1);
        self.cpu = self.cpu.saturating_sub(ask.cpu_cores);
        self.memory_mb = self.memory_mb.saturating_sub(ask.memory_mb);
    }

    /// Whether any soft quota is exceeded.
    pub fn over_soft(&self, quotas: &Quotas) -> bool {
        quotas
            .iter()
            .any(|(resource, limit)| limit.soft && self.get(*resource) > limit.value)
    }
}

/// How much a job adds to a resource when it starts.
fn ask_of(ask: &Requirements, resource: Resource) -> f64 {
    match resource {
        Resource::RunningJobs | Resource::Workers => 1.0,
        Resource::Cpu => f64::from(ask.cpu_cores),
        Resource::MemoryMb => ask.memory_mb as f64,
        // Cost is known only once an attempt ends: a tenant at its daily budget starts
        // nothing more, whatever the job.
        Resource::DailyCost => 0.0,
    }
}

/// Why a tenant's job may not start now.
#[derive(Debug, Clone, PartialEq)]
pub struct AtQuota {
    pub tenant: TenantName,
    pub resource: Resource,
    /// The limit in force (soft limits times the burst factor while bursting).
    pub limit: f64,
    pub soft: bool,
    /// Whether a soft limit holds because burst is not allowed now.
    pub burst_denied: bool,
}

impl fmt::Display for AtQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {} at quota {}={}",
            self.tenant,
            self.resource,
            format_amount(self.limit)
        )?;
        if self.soft {
            f.write_str(" (soft")?;
            if self.burst_denied {
                f.write_str(", no burst now: others wait or burst is cooling down")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

fn format_amount(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.2}")
    }
}

/// Whether a start is within quota, or past a soft quota thanks to burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    Within,
    Burst,
}

/// Whether a job asking `ask` may start for `tenant`, which holds `usage`. With `burst`
/// (the burst factor, when bursting is allowed now) soft limits stretch by that factor.
pub fn check_start(
    tenant: &Tenant,
    usage: &Usage,
    ask: &Requirements,
    burst: Option<f64>,
) -> Result<StartKind, AtQuota> {
    let mut kind = StartKind::Within;
    for (resource, limit) in &tenant.quotas {
        let after = usage.get(*resource) + ask_of(ask, *resource);
        let at_limit = |bound: f64| {
            if *resource == Resource::DailyCost {
                usage.daily_cost >= bound
            } else {
                after > bound
            }
        };
        if !at_limit(limit.value) {
            continue;
        }
        let stretched = burst.filter(|_| limit.soft).map(|factor| {
            let stretched = limit.value * factor;
            if *resource == Resource::DailyCost {
                stretched
            } else {
                stretched.floor()
            }
        });
        match stretched {
            Some(bound) if !at_limit(bound) => kind = StartKind::Burst,
            Some(bound) => {
                return Err(AtQuota {
                    tenant: tenant.name.clone(),
                    resource: *resource,
                    limit: bound,
                    soft: true,
                    burst_denied: false,
                });
            }
            None => {
                return Err(AtQuota {
                    tenant: tenant.name.clone(),
                    resource: *resource,
                    limit: limit.value,
                    soft: limit.soft,
                    burst_denied: limit.soft,
                });
            }
        }
    }
    Ok(kind)
}

/// A submission refused by its tenant's quotas.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionError {
    /// The job asks more than the quota allows even with nothing else running: invalid.
    #[error(
        "job can never start: tenant {tenant} quota {resource}={limit} is below what the job asks ({asked})"
    )]
    NeverFits {
        tenant: TenantName,
        resource: Resource,
        limit: String,
        asked: String,
    },
    /// The tenant has its queued cap of jobs waiting: try again later.
    #[error("tenant {tenant} has {cap} jobs queued, its max_queued")]
    QueueFull { tenant: TenantName, cap: u32 },
    /// The tenant is not configured and tenants are not created automatically.
    #[error("unknown tenant {0} (tenants.auto_create is off)")]
    UnknownTenant(TenantName),
}

impl AdmissionError {
    /// Whether the same submission may succeed later without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::QueueFull { .. })
    }
}

/// Whether a tenant may queue one more job asking `ask`, with `queued` of its jobs queued.
pub fn admit(
    tenant: &Tenant,
    ask: &Requirements,
    queued: usize,
    burst: &BurstPolicy,
) -> Result<(), AdmissionError> {
    for (resource, limit) in &tenant.quotas {
        let asked = ask_of(ask, *resource);
        // The most the tenant could ever hold of it: soft limits stretch while bursting.
        let ceiling = if limit.soft {
            (limit.value * burst.factor.max(1.0)).floor()
        } else {
            limit.value
        };
        let never = if *resource == Resource::DailyCost {
            false
        } else {
            asked > ceiling
        };
        if never {
            return Err(AdmissionError::NeverFits {
                tenant: tenant.name.clone(),
                resource: *resource,
                limit: format_amount(limit.value),
                asked: format_amount(asked),
            });
        }
    }
    if let Some(cap) = tenant.max_queued
        && queued >= cap as usize
    {
        return Err(AdmissionError::QueueFull {
            tenant: tenant.name.clone(),
            cap,
        });
    }
    Ok(())
}

/// The tenants known to the dispatcher, and what an unknown tenant becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenants {
    pub configured: BTreeMap<TenantName, Tenant>,
    /// Jobs of an unconfigured tenant are accepted as if it had these settings (its
    /// name substituted); `None` refuses them.
    pub auto_create: Option<Tenant>,
    pub burst: BurstPolicy,
}

impl Default for Tenants {
    /// No tenant configured; unknown tenants are created as bronze without quotas.
    fn default() -> Self {
        Self {
            configured: BTreeMap::new(),
            auto_create: Some(Tenant::new(TenantName::default())),
            burst: BurstPolicy::default(),
        }
    }
}

impl Tenants {
    /// The tenant's settings, or the auto-created defaults for an unknown tenant.
    pub fn get(&self, name: &TenantName) -> Option<std::borrow::Cow<'_, Tenant>> {
        if let Some(tenant) = self.configured.get(name) {
            return Some(std::borrow::Cow::Borrowed(tenant));
        }
        self.auto_create.as_ref().map(|template| {
            let mut tenant = template.clone();
            tenant.name = name.clone();
            std::borrow::Cow::Owned(tenant)
        })
    }

    /// [`admit`] for a tenant looked up by name.
    pub fn admit(
        &self,
        name: &TenantName,
        ask: &Requirements,
        queued: usize,
    ) -> Result<(), AdmissionError> {
        let tenant = self
            .get(name)
            .ok_or_else(|| AdmissionError::UnknownTenant(name.clone()))?;
        admit(&tenant, ask, queued, &self.burst)
    }
}

/// Fixed-point scale of virtual time: a weight-1 tenant's job of cost 1 advances its tag
/// by this much. Divisible by every weight from 1 to 10 so common weights divide exactly.
const TAG_SCALE: u64 = 2_520 * 1_000;

/// What a job costs in fair-share units: one unit per cpu core or per 2 GB of memory asked,
/// whichever is larger, and at least one (a job holds a whole worker).
pub fn job_cost(ask: &Requirements) -> u64 {
    u64::from(ask.cpu_cores)
        .max(ask.memory_mb.div_ceil(2048))
        .max(1)
}

/// Weighted fair queuing across tenants, by start-time fair queuing: each start gives the
/// tenant a virtual start tag `max(V, last finish)` and a finish tag `start + cost / weight`;
/// the tenant with the smallest start tag goes next. A tenant that was idle re-enters at the
/// current virtual time `V`, so it gets its share from now on, not credit for the past.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FairShare {
    virtual_time: u64,
    finish: BTreeMap<TenantName, u64>,
}

impl FairShare {
    /// The start tag the tenant's next job would get.
    pub fn start_tag(&self, tenant: &TenantName) -> u64 {
        self.finish
            .get(tenant)
            .copied()
            .unwrap_or(0)
            .max(self.virtual_time)
    }

    /// Records a start of a job costing `cost` for a tenant of `weight`.
    pub fn charge(&mut self, tenant: &TenantName, weight: u32, cost: u64) {
        let start = self.start_tag(tenant);
        let step = cost.saturating_mul(TAG_SCALE) / u64::from(weight.max(1));
        self.virtual_time = start;
        self.finish
            .insert(tenant.clone(), start.saturating_add(step.max(1)));
    }

    /// Forgets tenants whose finish tag is behind virtual time: they would restart at `V`
    /// anyway, so this bounds memory without changing any decision.
    pub fn compact(&mut self) {
        let now = self.virtual_time;
        self.finish.retain(|_, finish| *finish > now);
    }
}

/// The outcome of one planning pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FairPlan {
    /// Who runs what, in start order.
    pub assignments: Vec<(JobId, WorkerId)>,
    /// Assignments that went past a soft quota.
    pub bursts: Vec<JobId>,
    /// Tenants with queued jobs that got no (further) start because of a quota.
    pub at_quota: BTreeMap<TenantName, AtQuota>,
}

/// Plans starts: which idle worker gets which queued job, in weighted fair order across
/// tenants and priority-then-FIFO order inside a tenant.
///
/// Deadlines come first, in the bounded way [`crate::sla`] describes: jobs at risk start
/// before every other job (earliest deadline first, across tenants, quotas still holding),
/// and within a tenant its boosted jobs go ahead of its others.
///
/// First every tenant is held to its limits (soft ones too); then, if workers are still
/// idle, tenants that may burst get soft limits times the burst factor. So burst only uses
/// capacity nobody within quota could use, and a bursting tenant is not refilled while
/// others wait. A tenant at a hard quota, or whose jobs fit no idle worker, is skipped
/// without blocking the others. `usage` is updated with the planned starts, `fair` charged.
pub fn plan_fair_dispatch(
    queues: &Queues,
    idle: &[IdleWorker],
    tenants: &Tenants,
    usage: &mut BTreeMap<TenantName, Usage>,
    bursts: &BTreeMap<TenantName, BurstState>,
    fair: &mut FairShare,
    now_ms: u64,
) -> FairPlan {
    let free: Vec<&IdleWorker> = {
        let mut seen = std::collections::BTreeSet::new();
        idle.iter().filter(|w| seen.insert(&w.id)).collect()
    };
    plan_fair_dispatch_among(queues, free, tenants, usage, bursts, fair, now_ms)
}

/// [`plan_fair_dispatch`] over idle workers already known to be distinct (the dispatcher's,
/// one per id), borrowed rather than copied: a tick with hundreds of idle workers copies
/// none of them.
pub fn plan_fair_dispatch_among(
    queues: &Queues,
    mut free: Vec<&IdleWorker>,
    tenants: &Tenants,
    usage: &mut BTreeMap<TenantName, Usage>,
    bursts: &BTreeMap<TenantName, BurstState>,
    fair: &mut FairShare,
    now_ms: u64,
) -> FairPlan {
    let mut plan = FairPlan::default();
    let mut taken = std::collections::HashSet::new();
    // Jobs at risk of missing their deadline first, across tenants, earliest deadline
    // first; their tenants' quotas still hold, and fair share charges them as usual.
    for entry in crate::sla::at_risk_first(queues, now_ms) {
        if free.is_empty() {
            break;
        }
        let Some(tenant) = tenants.get(&entry.tenant) else {
            continue;
        };
        let state = bursts.get(&entry.tenant).copied().unwrap_or_default();
        let factor = state
            .may_burst(&tenants.burst, now_ms)
            .then_some(tenants.burst.factor);
        let held = usage.entry(entry.tenant.clone()).or_default();
        let kind = match check_start(&tenant, held, &entry.requirements, None) {
            Ok(kind) => kind,
            Err(strict) => match check_start(&tenant, held, &entry.requirements, factor) {
                Ok(kind) => kind,
                Err(_) => {
                    plan.at_quota.insert(entry.tenant.clone(), strict);
                    continue;
                }
            },
        };
        let Some(index) = best_fit_index(&entry.requirements, &free) else {
            continue;
        };
        let worker = free.swap_remove(index);
        held.add_job(&entry.requirements);
        fair.charge(&entry.tenant, tenant.weight, job_cost(&entry.requirements));
        taken.insert(entry.job_id.clone());
        plan.at_quota.remove(&entry.tenant);
        if kind == StartKind::Burst {
            plan.bursts.push(entry.job_id.clone());
        }
        plan.assignments
            .push((entry.job_id.clone(), worker.id.clone()));
    }
    // Within a tenant, its boosted jobs (past 70% of their deadline) go first.
    let boosted = crate::sla::boosted_by_tenant(queues, now_ms);
    for bursting in [false, true] {
        if free.is_empty() {
            break;
        }
        let mut heap: BinaryHeap<(Reverse<u64>, Reverse<&TenantName>)> = queues
            .tenants()
            .map(|name| (Reverse(fair.start_tag(name)), Reverse(name)))
            .collect();
        while !free.is_empty() {
            let Some((_, Reverse(name))) = heap.pop() else {
                break;
            };
            let Some(tenant) = tenants.get(name) else {
                // Unknown and not auto-created: admission refuses those, so these are jobs
                // recovered from before a configuration change; they wait for the tenant.
                continue;
            };
            let burst = if bursting {
                let state = bursts.get(name).copied().unwrap_or_default();
                if !state.may_burst(&tenants.burst, now_ms) {
                    continue;
                }
                Some(tenants.burst.factor)
            } else {
                None
            };
            let held = usage.entry(name.clone()).or_default();
            let mut chosen = None;
            let mut unfit: Vec<&Requirements> = Vec::new();
            let ahead = boosted.get(name).into_iter().flatten().copied();
            for entry in ahead.chain(queues.iter_tenant(name)) {
                if taken.contains(&entry.job_id) || unfit.contains(&&entry.requirements) {
                    continue;
                }
                match check_start(&tenant, held, &entry.requirements, burst) {
                    Ok(kind) => {
                        if let Some(index) = best_fit_index(&entry.requirements, &free) {
                            chosen = Some((entry, index, kind));
                            break;
                        }
                        unfit.push(&entry.requirements);
                    }
                    Err(at_quota) => {
                        let every = at_quota.resource.blocks_every_job();
                        plan.at_quota.insert(name.clone(), at_quota);
                        if every {
                            break;
                        }
                        unfit.push(&entry.requirements);
                    }
                }
                if unfit.len() > MAX_UNFIT_SHAPES {
                    break;
                }
            }
            let Some((entry, index, kind)) = chosen else {
                continue;
            };
            let worker = free.swap_remove(index);
            held.add_job(&entry.requirements);
            fair.charge(name, tenant.weight, job_cost(&entry.requirements));
            taken.insert(entry.job_id.clone());
            plan.at_quota.remove(name);
            if kind == StartKind::Burst {
                plan.bursts.push(entry.job_id.clone());
            }
            plan.assignments
                .push((entry.job_id.clone(), worker.id.clone()));
            heap.push((Reverse(fair.start_tag(name)), Reverse(name)));
        }
    }
    fair.compact();
    plan
}

/// Milliseconds in a day; days start at 00:00 UTC (Unix time has no leap seconds).
const DAY_MS: u64 = 86_400_000;

/// What each tenant's attempts cost since 00:00 UTC; a new day starts from zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyCost {
    day: u64,
    spent: BTreeMap<TenantName, f64>,
}

impl DailyCost {
    fn roll(&mut self, now_ms: u64) {
        let day = now_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.spent.clear();
        }
    }

    /// Adds the cost of an attempt that ended at `now_ms`.
    pub fn charge(&mut self, tenant: &TenantName, amount: f64, now_ms: u64) {
        self.roll(now_ms);
        if amount.is_finite() && amount > 0.0 {
            *self.spent.entry(tenant.clone()).or_default() += amount;
        }
    }

    /// What the tenant spent today as of `now_ms`.
    pub fn spent(&mut self, tenant: &TenantName, now_ms: u64) -> f64 {
        self.roll(now_ms);
        self.spent.get(tenant).copied().unwrap_or(0.0)
    }
}

/// Starts per tenant over the last hour, in one-minute buckets, for "share over the last
/// hour". Memory is bounded by 60 buckets of the tenants that started something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartWindow {
    minutes: std::collections::VecDeque<(u64, BTreeMap<TenantName, u64>)>,
}

impl StartWindow {
    const MINUTES: u64 = 60;

    fn prune(&mut self, now_ms: u64) {
        let minute = now_ms / 60_000;
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| m + Self::MINUTES <= minute)
        {
            self.minutes.pop_front();
        }
    }

    pub fn record(&mut self, tenant: &TenantName, now_ms: u64) {
        self.prune(now_ms);
        let minute = now_ms / 60_000;
        if self.minutes.back().is_none_or(|(m, _)| *m != minute) {
            self.minutes.push_back((minute, BTreeMap::new()));
        }
        if let Some((_, counts)) = self.minutes.back_mut() {
            *counts.entry(tenant.clone()).or_default() += 1;
        }
    }

    /// Starts per tenant in the last hour, and their total.
    pub fn counts(&mut self, now_ms: u64) -> (BTreeMap<TenantName, u64>, u64) {
        self.prune(now_ms);
        let mut counts: BTreeMap<TenantName, u64> = BTreeMap::new();
        for (_, minute) in &self.minutes {
            for (tenant, n) in minute {
                *counts.entry(tenant.clone()).or_default() += n;
            }
        }
        let total = counts.values().sum();
        (counts, total)
    }
}

/// How many distinct job shapes a pass tries per tenant before giving up on it: beyond that
/// the tenant's jobs are all shapes no idle worker has, and walking further costs time only.
const MAX_UNFIT_SHAPES: usize = 16;

fn best_fit_index(requirements: &Requirements, free: &[&IdleWorker]) -> Option<usize> {
    let best = best_fit(requirements, free.iter().copied())?;
    free.iter().position(|w| w.id == best.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Priority, QueueName};
    use crate::queue::QueueEntry;
    use crate::worker::{Labels, WorkerCapabilities};
    use proptest::prelude::*;

    fn tn(s: &str) -> TenantName {
        TenantName::new(s).unwrap()
    }

    fn tenant(name: &str, weight: u32, quotas: &[(Resource, Limit)]) -> Tenant {
        Tenant {
            name: tn(name),
            tier: None,
            weight,
            quotas: quotas.iter().copied().collect(),
            max_queued: None,
            sla_class: None,
            preemptible: true,
        }
    }

    fn ask(cpu: u32, memory_mb: u64) -> Requirements {
        Requirements {
            cpu_cores: cpu,
            memory_mb,
            ..Requirements::default()
        }
    }

    fn worker(id: &str, cpu: u32) -> IdleWorker {
        IdleWorker {
            id: WorkerId::new(id).unwrap(),
            capabilities: WorkerCapabilities {
                cpu_cores: cpu,
                memory_mb: 8192,
                ..WorkerCapabilities::default()
            },
            labels: Labels::new(),
            pool: None,
        }
    }

    fn entry(id: &str, tenant: &str, priority: i32, sequence: u64, cpu: u32) -> QueueEntry {
        QueueEntry {
            job_id: JobId::new(id).unwrap(),
            queue: QueueName::default(),
            tenant: tn(tenant),
            priority: Priority::new(priority).unwrap(),
            sequence,
            requirements: ask(cpu, 0),
            sla_class: crate::job::SlaClass::default(),
            sla: crate::sla::SlaClock::NEVER,
        }
    }

    fn tenants(list: Vec<Tenant>, auto: bool, burst: BurstPolicy) -> Tenants {
        Tenants {
            configured: list.into_iter().map(|t| (t.name.clone(), t)).collect(),
            auto_create: auto.then(|| Tenant::new(TenantName::default())),
            burst,
        }
    }

    #[test]
    fn tiers_and_validation() {
        let weights: Vec<u32> = Tier::ALL.iter().map(|t| t.weight()).collect();
        assert_eq!(weights, [1, 2, 3, 5]);
        assert_eq!("gold".parse::<Tier>().unwrap(), Tier::Gold);
        assert_eq!("iron".parse::<Tier>().unwrap_err().field, "tier");
        assert_eq!("cpu".parse::<Resource>().unwrap(), Resource::Cpu);
        assert_eq!("disk".parse::<Resource>().unwrap_err().field, "quota");
        let cases: [(Tenant, Option<&str>); 5] = [
            (tenant("a", 3, &[]), None),
            (tenant("a", 0, &[]), Some("weight")),
            (tenant("a", 1001, &[]), Some("weight")),
            (
                tenant("a", 1, &[(Resource::Cpu, Limit::hard(1.5))]),
                Some("quotas.cpu"),
            ),
            (
                tenant("a", 1, &[(Resource::DailyCost, Limit::hard(-1.0))]),
                Some("quotas.daily_cost"),
            ),
        ];
        for (t, field) in cases {
            assert_eq!(t.validate().err().map(|e| e.field).as_deref(), field);
        }
        let mut t = tenant("a", 2, &[]);
        t.tier = Some(Tier::Gold);
        assert_eq!(t.validate().unwrap_err().field, "weight");
    }

    type StartCase<'a> = (
        &'a Tenant,
        Usage,
        Requirements,
        Option<f64>,
        Result<StartKind, &'a str>,
    );

    #[test]
    fn start_checks_hard_soft_and_burst() {
        use Resource::*;
        let usage = |jobs, cpu| Usage {
            running_jobs: jobs,
            workers: jobs,
            cpu,
            ..Usage::default()
        };
        let hard = tenant("ci-team", 1, &[(RunningJobs, Limit::hard(4.0))]);
        let soft = tenant("ci-team", 1, &[(RunningJobs, Limit::soft(2.0))]);
        let cpu = tenant("ci-team", 1, &[(Cpu, Limit::hard(4.0))]);
        let cost = tenant("ci-team", 1, &[(DailyCost, Limit::hard(10.0))]);
        let spent = Usage {
            daily_cost: 10.0,
            ..Usage::default()
        };
        let table: Vec<StartCase> = vec![
            (&hard, usage(3, 0), ask(0, 0), None, Ok(StartKind::Within)),
            (
                &hard,
                usage(4, 0),
                ask(0, 0),
                Some(1.5),
                Err("tenant ci-team at quota running_jobs=4"),
            ),
            (&soft, usage(1, 0), ask(0, 0), None, Ok(StartKind::Within)),
            (
                &soft,
                usage(2, 0),
                ask(0, 0),
                None,
                Err(
                    "tenant ci-team at quota running_jobs=2 (soft, no burst now: others wait or burst is cooling down)",
                ),
            ),
            (
                &soft,
                usage(2, 0),
                ask(0, 0),
                Some(1.5),
                Ok(StartKind::Burst),
            ),
            (
                &soft,
                usage(3, 0),
                ask(0, 0),
                Some(1.5),
                Err("tenant ci-team at quota running_jobs=3 (soft)"),
            ),
            (&cpu, usage(1, 2), ask(2, 0), None, Ok(StartKind::Within)),
            (
                &cpu,
                usage(1, 2),
                ask(3, 0),
                None,
                Err("tenant ci-team at quota cpu=4"),
            ),
            (
                &cost,
                Usage::default(),
                ask(0, 0),
                None,
                Ok(StartKind::Within),
            ),
            (
                &cost,
                spent,
                ask(0, 0),
                None,
                Err("tenant ci-team at quota daily_cost=10"),
            ),
        ];
        for (i, (t, u, a, burst, expected)) in table.into_iter().enumerate() {
            let got = check_start(t, &u, &a, burst).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "case {i}");
        }
    }

    #[test]
    fn admission_refuses_never_fitting_jobs_and_caps_the_queue() {
        use Resource::*;
        let burst = BurstPolicy::default();
        let mut t = tenant(
            "ci-team",
            1,
            &[(Cpu, Limit::hard(4.0)), (MemoryMb, Limit::soft(4096.0))],
        );
        t.max_queued = Some(2);
        assert_eq!(admit(&t, &ask(4, 6144), 0, &burst), Ok(()));
        let err = admit(&t, &ask(5, 0), 0, &burst).unwrap_err();
        assert_eq!(
            err.to_string(),
            "job can never start: tenant ci-team quota cpu=4 is below what the job asks (5)"
        );
        assert!(!err.is_retryable());
        assert!(matches!(
            admit(&t, &ask(1, 6145), 0, &burst),
            Err(AdmissionError::NeverFits {
                resource: MemoryMb,
                ..
            })
        ));
        let full = admit(&t, &ask(1, 0), 2, &burst).unwrap_err();
        assert!(full.is_retryable());
        assert_eq!(
            full.to_string(),
            "tenant ci-team has 2 jobs queued, its max_queued"
        );
        let zero = tenant("z", 1, &[(RunningJobs, Limit::hard(0.0))]);
        assert!(admit(&zero, &ask(0, 0), 0, &burst).is_err());

        let strict = tenants(vec![], false, burst);
        assert_eq!(
            strict.admit(&tn("nobody"), &ask(0, 0), 0),
            Err(AdmissionError::UnknownTenant(tn("nobody")))
        );
        let open = tenants(vec![], true, burst);
        assert_eq!(open.admit(&tn("nobody"), &ask(64, 0), 0), Ok(()));
        assert_eq!(open.get(&tn("nobody")).unwrap().name, tn("nobody"));
    }

    #[test]
    fn burst_cycle() {
        let policy = BurstPolicy {
            factor: 1.5,
            max_ms: 100,
            cooldown_ms: 50,
        };
        use BurstState::*;
        let table = [
            (Ready, false, 0, Ready),
            (Ready, true, 10, Active { since_ms: 10 }),
            (Active { since_ms: 10 }, true, 50, Active { since_ms: 10 }),
            (
                Active { since_ms: 10 },
                true,
                110,
                Cooldown { until_ms: 160 },
            ),
            // An early end cools down as long as the burst lasted.
            (
                Active { since_ms: 10 },
                false,
                30,
                Cooldown { until_ms: 50 },
            ),
            (
                Active { since_ms: 10 },
                false,
                100,
                Cooldown { until_ms: 150 },
            ),
            (
                Cooldown { until_ms: 50 },
                false,
                40,
                Cooldown { until_ms: 50 },
            ),
            (Cooldown { until_ms: 50 }, false, 50, Ready),
            (
                Cooldown { until_ms: 50 },
                true,
                60,
                Cooldown { until_ms: 50 },
            ),
        ];
        for (i, (from, over, now, to)) in table.into_iter().enumerate() {
            assert_eq!(from.next(over, &policy, now), to, "case {i}");
        }
        assert!(Ready.may_burst(&policy, 0));
        assert!(Active { since_ms: 0 }.may_burst(&policy, 99));
        assert!(!Active { since_ms: 0 }.may_burst(&policy, 100));
        assert!(!Cooldown { until_ms: 50 }.may_burst(&policy, 49));
        assert!(Cooldown { until_ms: 50 }.may_burst(&policy, 50));
        let off = BurstPolicy {
            factor: 1.0,
            ..policy
        };
        assert!(!Ready.may_burst(&off, 0));
    }

    fn queues_of(entries: &[QueueEntry]) -> Queues {
        let mut q = Queues::default();
        for e in entries {
            q.push(e.clone()).unwrap();
        }
        q
    }

    #[test]
    fn priority_then_fifo_inside_a_tenant_and_fair_across() {
        let q = queues_of(&[
            entry("a1", "a", 0, 1, 0),
            entry("a2", "a", 5, 2, 0),
            entry("a3", "a", 0, 3, 0),
            entry("b1", "b", 0, 4, 0),
            entry("b2", "b", 0, 5, 0),
        ]);
        let ts = tenants(
            vec![tenant("a", 1, &[]), tenant("b", 1, &[])],
            false,
            BurstPolicy::default(),
        );
        let idle: Vec<IdleWorker> = (0..4).map(|i| worker(&format!("w{i}"), 4)).collect();
        let plan = plan_fair_dispatch(
            &q,
            &idle,
            &ts,
            &mut BTreeMap::new(),
            &BTreeMap::new(),
            &mut FairShare::default(),
            0,
        );
        let jobs: Vec<&str> = plan.assignments.iter().map(|(j, _)| j.as_str()).collect();
        assert_eq!(jobs, ["a2", "b1", "a1", "b2"]);
    }

    #[test]
    fn hard_quota_skips_the_tenant_without_blocking_others_and_burst_fills_idle_capacity() {
        use Resource::*;
        let q = queues_of(&[
            entry("a1", "a", 0, 1, 0),
            entry("a2", "a", 0, 2, 0),
            entry("a3", "a", 0, 3, 0),
            entry("a4", "a", 0, 4, 0),
            entry("s1", "s", 0, 5, 0),
            entry("s2", "s", 0, 6, 0),
            entry("s3", "s", 0, 7, 0),
            entry("s4", "s", 0, 8, 0),
        ]);
        let ts = tenants(
            vec![
                tenant("a", 1, &[(RunningJobs, Limit::hard(2.0))]),
                tenant("s", 1, &[(RunningJobs, Limit::soft(2.0))]),
            ],
            false,
            BurstPolicy::default(),
        );
        let idle: Vec<IdleWorker> = (0..8).map(|i| worker(&format!("w{i}"), 4)).collect();
        let mut usage = BTreeMap::new();
        let plan = plan_fair_dispatch(
            &q,
            &idle,
            &ts,
            &mut usage,
            &BTreeMap::new(),
            &mut FairShare::default(),
            0,
        );
        // a stops at 2 (hard), s bursts to 3 = floor(2 x 1.5).
        assert_eq!(plan.assignments.len(), 5);
        assert_eq!(usage[&tn("a")].running_jobs, 2);
        assert_eq!(usage[&tn("s")].running_jobs, 3);
        assert_eq!(plan.bursts.len(), 1);
        assert_eq!(
            plan.at_quota[&tn("a")].to_string(),
            "tenant a at quota running_jobs=2"
        );

        // In cooldown, s stays at its soft limit.
        let cooling = [(tn("s"), BurstState::Cooldown { until_ms: 10 })].into();
        let mut usage = BTreeMap::new();
        let plan = plan_fair_dispatch(
            &q,
            &idle,
            &ts,
            &mut usage,
            &cooling,
            &mut FairShare::default(),
            0,
        );
        assert_eq!(plan.assignments.len(), 4);
        assert!(plan.bursts.is_empty());
    }

    #[test]
    fn burst_only_takes_what_others_within_quota_leave() {
        use Resource::*;
        // s (soft 1) and b (no quota) both queued, one worker free: b gets it, s does not
        // burst while b waits.
        let q = queues_of(&[
            entry("s1", "s", 0, 1, 0),
            entry("b1", "b", 0, 2, 0),
            entry("b2", "b", 0, 3, 0),
        ]);
        let ts = tenants(
            vec![
                tenant("s", 1, &[(RunningJobs, Limit::soft(1.0))]),
                tenant("b", 1, &[]),
            ],
            false,
            BurstPolicy {
                factor: 2.0,
                ..BurstPolicy::default()
            },
        );
        let mut usage: BTreeMap<TenantName, Usage> = [(
            tn("s"),
            Usage {
                running_jobs: 1,
                workers: 1,
                ..Usage::default()
            },
        )]
        .into();
        let plan = plan_fair_dispatch(
            &q,
            &[worker("w0", 1)],
            &ts,
            &mut usage,
            &BTreeMap::new(),
            &mut FairShare::default(),
            0,
        );
        assert_eq!(
            plan.assignments,
            [(JobId::new("b1").unwrap(), WorkerId::new("w0").unwrap())]
        );
    }

    #[test]
    fn jobs_that_fit_no_idle_worker_do_not_block_the_tenant() {
        let q = queues_of(&[entry("big", "a", 9, 1, 8), entry("small", "a", 0, 2, 1)]);
        let ts = Tenants::default();
        let plan = plan_fair_dispatch(
            &q,
            &[worker("w0", 2)],
            &ts,
            &mut BTreeMap::new(),
            &BTreeMap::new(),
            &mut FairShare::default(),
            0,
        );
        assert_eq!(plan.assignments.len(), 1);
        assert_eq!(plan.assignments[0].0.as_str(), "small");
    }

    /// Starts `starts` jobs one worker at a time with every tenant backlogged; returns the
    /// starts per tenant.
    fn simulate_shares(weights: &[u32], starts: usize, cost: u32) -> Vec<usize> {
        let mut q = Queues::default();
        let mut sequence = 0;
        let names: Vec<String> = (0..weights.len()).map(|i| format!("t{i}")).collect();
        for round in 0..starts {
            for name in &names {
                sequence += 1;
                q.push(entry(&format!("{name}-{round}"), name, 0, sequence, cost))
                    .unwrap();
            }
        }
        let ts = tenants(
            names
                .iter()
                .zip(weights)
                .map(|(n, w)| tenant(n, *w, &[]))
                .collect(),
            false,
            BurstPolicy::default(),
        );
        let mut fair = FairShare::default();
        let mut counts = vec![0; weights.len()];
        let idle = [worker("w0", 16)];
        for _ in 0..starts {
            let plan = plan_fair_dispatch(
                &q,
                &idle,
                &ts,
                &mut BTreeMap::new(),
                &BTreeMap::new(),
                &mut fair,
                0,
            );
            let (job, _) = &plan.assignments[0];
            let tenant = q.remove(job).unwrap().tenant;
            counts[names.iter().position(|n| n == tenant.as_str()).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn weights_1_2_3_5_share_440_starts_as_1_2_3_5_elevenths() {
        let counts = simulate_shares(&[1, 2, 3, 5], 440, 1);
        assert_eq!(counts, [40, 80, 120, 200]);
    }

    #[test]
    fn daily_cost_resets_at_midnight_utc_and_the_window_keeps_an_hour() {
        let day = 86_400_000;
        let mut cost = DailyCost::default();
        cost.charge(&tn("a"), 2.5, day + 1);
        cost.charge(&tn("a"), 1.0, 2 * day - 1);
        cost.charge(&tn("a"), f64::NAN, 2 * day - 1);
        assert_eq!(cost.spent(&tn("a"), 2 * day - 1), 3.5);
        assert_eq!(cost.spent(&tn("a"), 2 * day), 0.0);

        let mut window = StartWindow::default();
        window.record(&tn("a"), 0);
        window.record(&tn("a"), 59_000);
        window.record(&tn("b"), 61_000);
        let (counts, total) = window.counts(61_000);
        assert_eq!((counts[&tn("a")], counts[&tn("b")], total), (2, 1, 3));
        // The first minute's bucket leaves an hour after it.
        let (counts, total) = window.counts(3_600_000);
        assert_eq!((counts.get(&tn("a")).copied(), total), (None, 1));
    }

    proptest! {
        #[test]
        fn shares_follow_weights(weights in proptest::collection::vec(1u32..=10, 2..6), cost in 0u32..4) {
            let total: u32 = weights.iter().sum();
            let starts = total as usize * 20;
            let counts = simulate_shares(&weights, starts, cost);
            for (count, weight) in counts.iter().zip(&weights) {
                let expected = starts as f64 * f64::from(*weight) / f64::from(total);
                prop_assert!((*count as f64 - expected).abs() <= 1.0 + f64::EPSILON, "{counts:?} for {weights:?}");
            }
        }

        /// A job not at risk never passes one at risk: at-risk starts come first in the plan,
        /// and an at-risk job left waiting fits no worker given to a job not at risk. Within
        /// a tenant, a boosted job is likewise never passed by one of its tenant's others.
        #[test]
        fn a_job_not_at_risk_never_passes_one_at_risk(
            jobs in proptest::collection::vec((0..3usize, 0..3u32, -1..=1i32, 0u64..2_000), 0..30),
            workers in proptest::collection::vec(1..4u32, 0..10),
            weights in proptest::collection::vec(1u32..=5, 3),
        ) {
            let names = ["t0", "t1", "t2"];
            let now = 1_000;
            let mut q = Queues::default();
            for (i, (t, cpu, priority, deadline)) in jobs.iter().enumerate() {
                let mut e = entry(&format!("j{i}"), names[*t], *priority, i as u64, *cpu);
                e.sla = crate::sla::SlaClock { submitted_ms: 0, deadline_ms: *deadline };
                q.push(e).unwrap();
            }
            let ts = tenants(
                names.iter().zip(&weights).map(|(n, w)| tenant(n, *w, &[])).collect(),
                false,
                BurstPolicy::default(),
            );
            let idle: Vec<IdleWorker> = workers.iter().enumerate().map(|(i, cpu)| worker(&format!("w{i}"), *cpu)).collect();
            let plan = plan_fair_dispatch(&q, &idle, &ts, &mut BTreeMap::new(), &BTreeMap::new(), &mut FairShare::default(), now);
            use crate::sla::Risk;
            let risk = |job: &JobId| q.get(job).unwrap().sla.risk(now);
            let assigned: std::collections::HashSet<&JobId> = plan.assignments.iter().map(|(j, _)| j).collect();
            let mut seen_calm = false;
            for (job, _) in &plan.assignments {
                if risk(job) == Risk::AtRisk {
                    prop_assert!(!seen_calm, "at-risk job {job} started after one not at risk");
                } else {
                    seen_calm = true;
                }
            }
            for (job, w) in &plan.assignments {
                let given = q.get(job).unwrap();
                let w = idle.iter().find(|x| &x.id == w).unwrap();
                for waiting in q.iter_in_order().filter(|e| !assigned.contains(&e.job_id)) {
                    let fits = crate::matching::fits(&waiting.requirements, &w.capabilities, &w.labels).is_ok();
                    if !fits {
                        continue;
                    }
                    prop_assert!(
                        !(waiting.sla.risk(now) == Risk::AtRisk && given.sla.risk(now) != Risk::AtRisk),
                        "{} (at risk) waits while {} took a worker it fits", waiting.job_id, job
                    );
                    prop_assert!(
                        !(waiting.tenant == given.tenant && waiting.sla.risk(now) > Risk::None && given.sla.risk(now) == Risk::None),
                        "{} (boosted) waits while {} of its tenant took a worker it fits", waiting.job_id, job
                    );
                }
            }
        }

        #[test]
        fn plans_never_double_assign_overfit_or_pass_quotas(
            jobs in proptest::collection::vec((0..4usize, 0..3u32, -1..=1i32), 0..40),
            workers in proptest::collection::vec(1..4u32, 0..12),
            limits in proptest::collection::vec((0..4u32, any::<bool>()), 4),
            held in proptest::collection::vec(0..3u32, 4),
            cooling in proptest::collection::vec(any::<bool>(), 4),
        ) {
            let names = ["t0", "t1", "t2", "t3"];
            let mut q = Queues::default();
            for (i, (t, cpu, priority)) in jobs.iter().enumerate() {
                q.push(entry(&format!("j{i}"), names[*t], *priority, i as u64, *cpu)).unwrap();
            }
            let ts = tenants(
                names.iter().zip(&limits).map(|(n, (limit, soft))| {
                    let limit = if *soft { Limit::soft(f64::from(*limit)) } else { Limit::hard(f64::from(*limit)) };
                    tenant(n, 1, &[(Resource::RunningJobs, limit)])
                }).collect(),
                false,
                BurstPolicy::default(),
            );
            let idle: Vec<IdleWorker> = workers.iter().enumerate().map(|(i, cpu)| worker(&format!("w{i}"), *cpu)).collect();
            let mut usage: BTreeMap<TenantName, Usage> = names.iter().zip(&held)
                .map(|(n, h)| (tn(n), Usage { running_jobs: *h, workers: *h, ..Usage::default() })).collect();
            let before = usage.clone();
            let bursts: BTreeMap<TenantName, BurstState> = names.iter().zip(&cooling)
                .filter(|(_, c)| **c).map(|(n, _)| (tn(n), BurstState::Cooldown { until_ms: u64::MAX })).collect();
            let plan = plan_fair_dispatch(&q, &idle, &ts, &mut usage, &bursts, &mut FairShare::default(), 0);

            let mut jobs_seen = std::collections::HashSet::new();
            let mut workers_seen = std::collections::HashSet::new();
            let mut started: BTreeMap<&str, u32> = BTreeMap::new();
            for (job, w) in &plan.assignments {
                prop_assert!(jobs_seen.insert(job.clone()), "job {job} assigned twice");
                prop_assert!(workers_seen.insert(w.clone()), "worker {w} given twice");
                let e = q.get(job).unwrap();
                let w = idle.iter().find(|x| &x.id == w).unwrap();
                prop_assert!(crate::matching::fits(&e.requirements, &w.capabilities, &w.labels).is_ok());
                *started.entry(names.iter().find(|n| **n == e.tenant.as_str()).unwrap()).or_default() += 1;
            }
            for (i, name) in names.iter().enumerate() {
                let (limit, soft) = limits[i];
                let now = before[&tn(name)].running_jobs + started.get(name).copied().unwrap_or(0);
                prop_assert_eq!(now, usage[&tn(name)].running_jobs);
                let started_here = started.get(name).copied().unwrap_or(0);
                if started_here > 0 {
                    let ceiling = if soft && !cooling[i] { (f64::from(limit) * 1.5).floor() as u32 } else { limit };
                    prop_assert!(now <= ceiling, "{name} holds {now}, ceiling {ceiling}");
                }
            }
            // Work conserving: a job left queued fits no worker left free, unless its tenant
            // is at quota.
            let free: Vec<&IdleWorker> = idle.iter().filter(|w| !workers_seen.contains(&w.id)).collect();
            for e in q.iter_in_order().filter(|e| !jobs_seen.contains(&e.job_id)) {
                if plan.at_quota.contains_key(&e.tenant) {
                    continue;
                }
                let fits_some = free.iter().any(|w| crate::matching::fits(&e.requirements, &w.capabilities, &w.labels).is_ok());
                prop_assert!(!fits_some, "job {} left waiting next to a free worker that fits", e.job_id);
            }
        }
    }
}
