//! SLA classes and deadlines: when a queued job is boosted or at risk, the start order that
//! follows from it, which running job is preempted for an urgent one, and the order in which
//! queued jobs count as demand for the autoscaler.
//!
//! A job's deadline bounds the time from its submission to its start, the part the scheduler
//! controls. At [`BOOST_PERCENT`] of that window a queued job is *boosted*: it goes ahead of
//! its own tenant's other jobs, and the tenant's turn still comes from fair share. At
//! [`AT_RISK_PERCENT`] it is *at risk*: it starts before every job that is not at risk,
//! across tenants, earliest deadline first. Its tenant is charged in fair share for it as for
//! any start, so what the jump costs other tenants is paid back by that tenant's later turns.
//! Quotas still hold for at-risk jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobId, QueueName, Requirements, SlaClass, TenantName};
use crate::matching::{IdleWorker, fits};
use crate::queue::{QueueEntry, Queues};
use crate::tenancy::Tenant;
use crate::worker::{ValidationError, WorkerId};

/// Share of its deadline a queued job waits before it is boosted within its tenant.
pub const BOOST_PERCENT: u64 = 70;
/// Share of its deadline a queued job waits before it is at risk and starts first.
pub const AT_RISK_PERCENT: u64 = 90;
/// The default time a preempted job gets between SIGTERM and SIGKILL.
pub const DEFAULT_PREEMPTION_GRACE: Duration = Duration::from_secs(10);
/// Longest accepted class deadline.
pub const MAX_DEADLINE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Longest accepted preemption grace.
pub const MAX_PREEMPTION_GRACE: Duration = Duration::from_secs(60 * 60);

/// When running jobs may be stopped to make room for critical or high ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptionPolicy {
    /// Never: urgent jobs wait like the others (and may miss their deadline).
    Never,
    /// When a critical or high job is at risk and nothing fitting is idle or starting.
    #[default]
    AtRisk,
    /// As soon as a critical or high job waits and nothing fitting is idle or starting.
    Always,
}

impl PreemptionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::AtRisk => "at_risk",
            Self::Always => "always",
        }
    }
}

impl fmt::Display for PreemptionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PreemptionPolicy {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Never, Self::AtRisk, Self::Always]
            .into_iter()
            .find(|policy| policy.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "sla.preemption",
                    format!("unknown preemption policy {s:?}, expected never, at_risk or always"),
                )
            })
    }
}

/// The `[sla]` settings: each class's deadline and the preemption policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaSettings {
    pub critical: Duration,
    pub high: Duration,
    pub medium: Duration,
    pub low: Duration,
    pub best_effort: Duration,
    pub preemption: PreemptionPolicy,
    /// Time a preempted job gets between SIGTERM and SIGKILL.
    pub preemption_grace: Duration,
    /// Tenants whose jobs are never preempted.
    pub non_preemptible_tenants: BTreeSet<TenantName>,
    /// The class of jobs submitted to a queue without one (`[[jobs.queue]] sla_class`).
    pub queue_classes: BTreeMap<QueueName, SlaClass>,
}

impl Default for SlaSettings {
    /// The product's deadlines (5 min, 15 min, 1 h, 4 h, 24 h), preemption when at risk,
    /// a 10 s grace.
    fn default() -> Self {
        Self {
            critical: SlaClass::Critical.deadline(),
            high: SlaClass::High.deadline(),
            medium: SlaClass::Medium.deadline(),
            low: SlaClass::Low.deadline(),
            best_effort: SlaClass::BestEffort.deadline(),
            preemption: PreemptionPolicy::default(),
            preemption_grace: DEFAULT_PREEMPTION_GRACE,
            non_preemptible_tenants: BTreeSet::new(),
            queue_classes: BTreeMap::new(),
        }
    }
}

impl SlaSettings {
    /// The deadline of a class: how long after submission its jobs must have started.
    pub fn deadline(&self, class: SlaClass) -> Duration {
        match class {
            SlaClass::Critical => self.critical,
            SlaClass::High => self.high,
            SlaClass::Medium => self.medium,
            SlaClass::Low => self.low,
            SlaClass::BestEffort => self.best_effort,
        }
    }

    /// Every deadline more than zero and at most [`MAX_DEADLINE`], the grace at most
    /// [`MAX_PREEMPTION_GRACE`]; the field is named as in the configuration.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for class in SlaClass::ALL {
            let deadline = self.deadline(class);
            if deadline.is_zero() || deadline > MAX_DEADLINE {
                return Err(ValidationError::new(
                    format!("sla.{class}"),
                    format!("is {deadline:?}, must be more than zero and at most {MAX_DEADLINE:?}"),
                ));
            }
        }
        if self.preemption_grace > MAX_PREEMPTION_GRACE {
            return Err(ValidationError::new(
                "sla.preemption_grace",
                format!(
                    "is {:?}, at most {MAX_PREEMPTION_GRACE:?} allowed",
                    self.preemption_grace
                ),
            ));
        }
        Ok(())
    }

    /// The deadline of a job of `class` submitted at `submitted_at`.
    pub fn deadline_of(&self, class: SlaClass, submitted_at: SystemTime) -> SystemTime {
        submitted_at + self.deadline(class)
    }

    /// Whether jobs of this tenant, with this opt-out, may be preempted.
    pub fn preemptible(&self, tenant: &TenantName, no_preempt: bool) -> bool {
        !no_preempt && !self.non_preemptible_tenants.contains(tenant)
    }

    /// Whether a job of `tenant` may be preempted: it did not opt out (`--no-preempt`), its
    /// tenant is not in `[sla] non_preemptible_tenants`, and the tenant's own settings
    /// (`settings`, when it has any) do not say `preemptible = false`.
    pub fn job_preemptible(
        &self,
        tenant: &TenantName,
        settings: Option<&Tenant>,
        no_preempt: bool,
    ) -> bool {
        self.preemptible(tenant, no_preempt) && settings.is_none_or(|t| t.preemptible)
    }

    /// The class of a job: the one it was submitted with (`explicit`), else its queue's
    /// default (`[[jobs.queue]] sla_class`), else its tenant's (`settings`, the tenant's
    /// `sla_class`), else `medium`. The queue comes before the tenant because it is the
    /// narrower choice: a tenant's `release` queue can be `high` while the tenant's other
    /// jobs keep its default.
    pub fn class_of(
        &self,
        explicit: Option<SlaClass>,
        queue: &QueueName,
        settings: Option<&Tenant>,
    ) -> SlaClass {
        explicit
            .or_else(|| self.queue_classes.get(queue).copied())
            .or_else(|| settings.and_then(|t| t.sla_class))
            .unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How close a queued job is to missing its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Less than [`BOOST_PERCENT`] of its deadline has passed.
    None,
    /// Past [`BOOST_PERCENT`]: ahead of its tenant's other jobs.
    Boosted,
    /// Past [`AT_RISK_PERCENT`] (or past the deadline): ahead of every job not at risk.
    AtRisk,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Boosted => "boosted",
            Self::AtRisk => "at_risk",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's SLA window in Unix milliseconds: from submission to the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlaClock {
    pub submitted_ms: u64,
    pub deadline_ms: u64,
}

impl SlaClock {
    /// A window that never ends: never boosted, never at risk.
    pub const NEVER: SlaClock = SlaClock {
        submitted_ms: 0,
        deadline_ms: u64::MAX,
    };

    /// The window of a job: its recorded deadline, or (jobs from before SLA tracking) its
    /// class's product default from submission.
    pub fn of_job(job: &Job) -> Self {
        let submitted_ms = unix_ms(job.submitted_at);
        let deadline_ms = match job.deadline {
            Some(deadline) => unix_ms(deadline),
            None => submitted_ms.saturating_add(
                u64::try_from(job.spec.sla_class.deadline().as_millis()).unwrap_or(u64::MAX),
            ),
        };
        Self {
            submitted_ms,
            deadline_ms: deadline_ms.max(submitted_ms),
        }
    }

    /// The window a queued job is ordered by: its own until it first starts, then
    /// [`SlaClock::NEVER`]. The deadline bounds the wait for the first start only, so a job
    /// requeued after it started (a retry, a preemption) is not boosted again.
    pub fn for_queue(job: &Job) -> Self {
        if job.first_started_at.is_some() {
            Self::NEVER
        } else {
            Self::of_job(job)
        }
    }

    /// The instant `percent` of the window has passed.
    fn point(self, percent: u64) -> u64 {
        let window = self.deadline_ms.saturating_sub(self.submitted_ms);
        // window * percent / 100 without overflow for any u64 window.
        let part = (u128::from(window) * u128::from(percent) / 100) as u64;
        self.submitted_ms.saturating_add(part)
    }

    /// When the job is boosted within its tenant.
    pub fn boost_at_ms(self) -> u64 {
        self.point(BOOST_PERCENT)
    }

    /// When the job is at risk.
    pub fn at_risk_at_ms(self) -> u64 {
        self.point(AT_RISK_PERCENT)
    }

    /// How close a job still queued at `now_ms` is to missing its deadline.
    pub fn risk(self, now_ms: u64) -> Risk {
        if now_ms >= self.at_risk_at_ms() {
            Risk::AtRisk
        } else if now_ms >= self.boost_at_ms() {
            Risk::Boosted
        } else {
            Risk::None
        }
    }

    /// Milliseconds until the deadline; negative once it has passed.
    pub fn time_left_ms(self, now_ms: u64) -> i64 {
        let left = i128::from(self.deadline_ms) - i128::from(now_ms);
        left.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Whether a start at `start_ms` meets the deadline.
    pub fn met_by(self, start_ms: u64) -> bool {
        start_ms <= self.deadline_ms
    }
}

/// Earliest deadline first, then submission order, then id: a total order.
fn by_deadline(a: &&QueueEntry, b: &&QueueEntry) -> std::cmp::Ordering {
    (a.sla.deadline_ms, a.sequence, &a.job_id).cmp(&(b.sla.deadline_ms, b.sequence, &b.job_id))
}

/// Queued jobs at risk at `now_ms`, earliest deadline first: the jobs that start before all
/// others, across tenants.
pub fn at_risk_first(queues: &Queues, now_ms: u64) -> Vec<&QueueEntry> {
    let mut urgent: Vec<&QueueEntry> = queues
        .boosted(now_ms)
        .filter(|entry| entry.sla.risk(now_ms) == Risk::AtRisk)
        .collect();
    urgent.sort_by(by_deadline);
    urgent
}

/// Queued jobs boosted (or at risk) at `now_ms`, per tenant, earliest deadline first: each
/// tenant's jobs that go ahead of its others when fair share gives it a turn.
pub fn boosted_by_tenant(queues: &Queues, now_ms: u64) -> BTreeMap<&TenantName, Vec<&QueueEntry>> {
    let mut boosted: BTreeMap<&TenantName, Vec<&QueueEntry>> = BTreeMap::new();
    for entry in queues.boosted(now_ms) {
        boosted.entry(&entry.tenant).or_default().push(entry);
    }
    for entries in boosted.values_mut() {
        entries.sort_by(by_deadline);
    }
    boosted
}

/// The next instant after `now_ms` at which a queued job becomes boosted or at risk, if any:
/// when the dispatcher should look again rather than wait for its next tick. Costs the jobs
/// boosted already, not the whole queue.
pub fn next_change_ms(queues: &Queues, now_ms: u64) -> Option<u64> {
    let mut next = queues.first_boost_after(now_ms);
    for entry in queues.boosted(now_ms) {
        let at_risk = entry.sla.at_risk_at_ms();
        if at_risk > now_ms {
            next = Some(next.map_or(at_risk, |n| n.min(at_risk)));
        }
    }
    next
}

/// Queued jobs at risk now, by class, for the gauge.
pub fn at_risk_by_class(queues: &Queues, now_ms: u64) -> BTreeMap<SlaClass, usize> {
    let mut counts = BTreeMap::new();
    for entry in at_risk_first(queues, now_ms) {
        *counts.entry(entry.sla_class).or_default() += 1;
    }
    counts
}

/// Queued jobs' requirements as demand for the autoscaler, at most `limit`: at-risk jobs
/// first (earliest deadline first), then the others in dispatch order. The autoscaler fills
/// pools' room in this order, so a pool grows for at-risk jobs before anything else.
pub fn demand_order(queues: &Queues, now_ms: u64, limit: usize) -> Vec<Requirements> {
    let urgent = at_risk_first(queues, now_ms);
    let first: BTreeSet<&JobId> = urgent.iter().map(|entry| &entry.job_id).collect();
    urgent
        .iter()
        .copied()
        .chain(
            queues
                .iter_in_order()
                .filter(|entry| !first.contains(&entry.job_id)),
        )
        .take(limit)
        .map(|entry| entry.requirements.clone())
        .collect()
}

/// A queued job that might be given a running job's worker.
#[derive(Debug, Clone)]
pub struct Waiting<'a> {
    pub job_id: &'a JobId,
    pub class: SlaClass,
    pub sla: SlaClock,
    pub requirements: &'a Requirements,
}

/// A job running (or assigned) on a worker, as a possible victim.
#[derive(Debug, Clone)]
pub struct Running<'a> {
    pub job_id: &'a JobId,
    pub class: SlaClass,
    /// The worker it runs on, with its shape.
    pub worker: &'a IdleWorker,
    /// How long it has run, in milliseconds.
    pub run_ms: u64,
    /// False for jobs submitted with `--no-preempt` or of a non-preemptible tenant.
    pub preemptible: bool,
}

/// One decided preemption: stop `victim` on `worker` so `beneficiary` can start there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub victim: JobId,
    pub victim_class: SlaClass,
    pub beneficiary: JobId,
    pub beneficiary_class: SlaClass,
    pub worker: WorkerId,
    /// Why, in words, recorded on both jobs.
    pub reason: String,
}

/// Whether a waiting job may preempt under `policy` at `now_ms`: critical or high, and at
/// risk unless the policy is `always`.
pub fn may_preempt(policy: PreemptionPolicy, waiting: &Waiting<'_>, now_ms: u64) -> bool {
    let urgent_class = matches!(waiting.class, SlaClass::Critical | SlaClass::High);
    urgent_class
        && match policy {
            PreemptionPolicy::Never => false,
            PreemptionPolicy::AtRisk => waiting.sla.risk(now_ms) == Risk::AtRisk,
            PreemptionPolicy::Always => true,
        }
}

/// Chooses victims for waiting critical and high jobs.
///
/// A waiting job gets a victim only if [`may_preempt`] says so and no worker in `available`
/// (idle, or starting and so coming soon) fits it. The victim is a preemptible running job
/// of a strictly lower class on a worker that fits the waiting job: lowest class first, then
/// least run time (the least work lost), then id. Waiting jobs are served most urgent
/// first (at risk before not, earliest deadline first); each running job is chosen at most
/// once. Callers leave out waiting jobs that already have a preemption under way and running
/// jobs already being preempted.
pub fn choose_victims(
    policy: PreemptionPolicy,
    waiting: &[Waiting<'_>],
    running: &[Running<'_>],
    available: &[IdleWorker],
    now_ms: u64,
) -> Vec<Preemption> {
    if policy == PreemptionPolicy::Never {
        return Vec::new();
    }
    let mut order: Vec<&Waiting<'_>> = waiting
        .iter()
        .filter(|w| may_preempt(policy, w, now_ms))
        .collect();
    order.sort_by(|a, b| {
        (
            std::cmp::Reverse(a.sla.risk(now_ms)),
            a.sla.deadline_ms,
            a.job_id,
        )
            .cmp(&(
                std::cmp::Reverse(b.sla.risk(now_ms)),
                b.sla.deadline_ms,
                b.job_id,
            ))
    });
    let mut chosen: Vec<Preemption> = Vec::new();
    for urgent in order {
        let coming = available
            .iter()
            .any(|worker| fits(urgent.requirements, &worker.capabilities, &worker.labels).is_ok());
        if coming {
            continue;
        }
        let victim = running
            .iter()
            .filter(|run| {
                run.preemptible
                    && run.class > urgent.class
                    && !chosen.iter().any(|p| &p.victim == run.job_id)
                    && fits(
                        urgent.requirements,
                        &run.worker.capabilities,
                        &run.worker.labels,
                    )
                    .is_ok()
            })
            .min_by(|a, b| {
                (std::cmp::Reverse(a.class), a.run_ms, a.job_id).cmp(&(
                    std::cmp::Reverse(b.class),
                    b.run_ms,
                    b.job_id,
                ))
            });
        if let Some(victim) = victim {
            let risk = urgent.sla.risk(now_ms);
            let reason = format!(
                "{} job {} ({}) needed worker {}; {} job {} preempted",
                urgent.class,
                urgent.job_id,
                if risk == Risk::AtRisk {
                    "at risk of missing its deadline"
                } else {
                    "waiting, preemption = always"
                },
                victim.worker.id,
                victim.class,
                victim.job_id,
            );
            chosen.push(Preemption {
                victim: victim.job_id.clone(),
                victim_class: victim.class,
                beneficiary: urgent.job_id.clone(),
                beneficiary_class: urgent.class,
                worker: victim.worker.id.clone(),
                reason,
            });
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{Labels, WorkerCapabilities};
    use proptest::prelude::*;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    fn worker(name: &str, cpu: u32) -> IdleWorker {
        IdleWorker {
            id: WorkerId::new(name).unwrap(),
            capabilities: WorkerCapabilities {
                cpu_cores: cpu,
                memory_mb: 4096,
                ..WorkerCapabilities::default()
            },
            labels: Labels::new(),
            pool: None,
        }
    }

    fn ask(cpu: u32) -> Requirements {
        Requirements {
            cpu_cores: cpu,
            ..Requirements::default()
        }
    }

    #[test]
    fn risk_follows_the_thresholds() {
        let clock = SlaClock {
            submitted_ms: 1_000,
            deadline_ms: 11_000,
        };
        assert_eq!(clock.boost_at_ms(), 8_000);
        assert_eq!(clock.at_risk_at_ms(), 10_000);
        for (now, risk) in [
            (0, Risk::None),
            (1_000, Risk::None),
            (7_999, Risk::None),
            (8_000, Risk::Boosted),
            (9_999, Risk::Boosted),
            (10_000, Risk::AtRisk),
            (11_000, Risk::AtRisk),
            (u64::MAX, Risk::AtRisk),
        ] {
            assert_eq!(clock.risk(now), risk, "at {now}");
        }
        assert_eq!(clock.time_left_ms(10_500), 500);
        assert_eq!(clock.time_left_ms(12_000), -1_000);
        assert!(clock.met_by(11_000));
        assert!(!clock.met_by(11_001));
        assert_eq!(SlaClock::NEVER.risk(u64::MAX / 2), Risk::None);
    }

    #[test]
    fn a_jobs_clock_uses_its_deadline_or_its_class_default() {
        let mut job = Job::new(
            id("j"),
            crate::job::JobSpec {
                sla_class: SlaClass::High,
                ..crate::job::JobSpec::new(crate::job::Command::Script("x".into()))
            },
            1,
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        )
        .unwrap();
        let clock = SlaClock::of_job(&job);
        assert_eq!(clock.submitted_ms, 100_000);
        assert_eq!(clock.deadline_ms, 100_000 + 15 * 60_000);
        let settings = SlaSettings {
            high: Duration::from_secs(3),
            ..SlaSettings::default()
        };
        job.deadline = Some(settings.deadline_of(job.spec.sla_class, job.submitted_at));
        assert_eq!(SlaClock::of_job(&job).deadline_ms, 103_000);
        assert_eq!(SlaClock::for_queue(&job), SlaClock::of_job(&job));
        job.first_started_at = Some(job.submitted_at);
        assert_eq!(SlaClock::for_queue(&job), SlaClock::NEVER);
    }

    #[test]
    fn settings_are_validated_and_name_the_key() {
        assert!(SlaSettings::default().validate().is_ok());
        let zero = SlaSettings {
            low: Duration::ZERO,
            ..SlaSettings::default()
        };
        assert_eq!(zero.validate().unwrap_err().field, "sla.low");
        let long = SlaSettings {
            best_effort: MAX_DEADLINE + Duration::from_secs(1),
            ..SlaSettings::default()
        };
        assert_eq!(long.validate().unwrap_err().field, "sla.best_effort");
        let grace = SlaSettings {
            preemption_grace: MAX_PREEMPTION_GRACE * 2,
            ..SlaSettings::default()
        };
        assert_eq!(grace.validate().unwrap_err().field, "sla.preemption_grace");
        for policy in ["never", "at_risk", "always"] {
            assert_eq!(policy.parse::<PreemptionPolicy>().unwrap().as_str(), policy);
        }
        assert_eq!(
            "sometimes".parse::<PreemptionPolicy>().unwrap_err().field,
            "sla.preemption"
        );
        let mut s = SlaSettings::default();
        s.non_preemptible_tenants
            .insert(TenantName::new("release").unwrap());
        assert!(!s.preemptible(&TenantName::new("release").unwrap(), false));
        assert!(s.preemptible(&TenantName::new("nightly").unwrap(), false));
        assert!(!s.preemptible(&TenantName::new("nightly").unwrap(), true));
    }

    #[test]
    fn a_jobs_class_is_its_own_then_its_queues_then_its_tenants_then_medium() {
        let release = QueueName::new("release").unwrap();
        let nightly = QueueName::new("nightly").unwrap();
        let mut s = SlaSettings::default();
        s.queue_classes.insert(release.clone(), SlaClass::High);
        let mut tenant = Tenant::new(TenantName::new("ci").unwrap());
        // Nothing set anywhere: medium.
        assert_eq!(s.class_of(None, &nightly, None), SlaClass::Medium);
        assert_eq!(s.class_of(None, &nightly, Some(&tenant)), SlaClass::Medium);
        // The tenant's default when its queue has none.
        tenant.sla_class = Some(SlaClass::Low);
        assert_eq!(s.class_of(None, &nightly, Some(&tenant)), SlaClass::Low);
        // The queue's default before the tenant's.
        assert_eq!(s.class_of(None, &release, Some(&tenant)), SlaClass::High);
        assert_eq!(s.class_of(None, &release, None), SlaClass::High);
        // The job's own class before both, even when it is the default one.
        for class in SlaClass::ALL {
            assert_eq!(s.class_of(Some(class), &release, Some(&tenant)), class);
            assert_eq!(s.class_of(Some(class), &nightly, Some(&tenant)), class);
        }
    }

    #[test]
    fn a_tenant_is_non_preemptible_by_its_settings_or_by_the_sla_list() {
        let name = TenantName::new("release").unwrap();
        let mut tenant = Tenant::new(name.clone());
        let mut s = SlaSettings::default();
        assert!(s.job_preemptible(&name, None, false));
        assert!(s.job_preemptible(&name, Some(&tenant), false));
        assert!(!s.job_preemptible(&name, Some(&tenant), true));
        tenant.preemptible = false;
        assert!(!s.job_preemptible(&name, Some(&tenant), false));
        tenant.preemptible = true;
        s.non_preemptible_tenants.insert(name.clone());
        assert!(!s.job_preemptible(&name, Some(&tenant), false));
        assert!(!s.job_preemptible(&name, None, false));
        // Stored tenants from before the setting are preemptible.
        let old: Tenant = serde_json::from_str(
            r#"{"name":"old","tier":"bronze","weight":1,"quotas":{},"max_queued":null}"#,
        )
        .unwrap();
        assert!(old.preemptible);
        assert_eq!(old.sla_class, None);
    }

    fn waiting<'a>(
        job: &'a JobId,
        class: SlaClass,
        sla: SlaClock,
        ask: &'a Requirements,
    ) -> Waiting<'a> {
        Waiting {
            job_id: job,
            class,
            sla,
            requirements: ask,
        }
    }

    const AT_RISK: SlaClock = SlaClock {
        submitted_ms: 0,
        deadline_ms: 1_000,
    };
    const NOW: u64 = 950;

    #[test]
    fn the_victim_is_the_lowest_class_then_the_least_run() {
        let (w1, w2, w3, w4) = (
            worker("w1", 2),
            worker("w2", 2),
            worker("w3", 2),
            worker("w4", 1),
        );
        let (a, b, c, d) = (id("a"), id("b"), id("c"), id("d"));
        let running = [
            Running {
                job_id: &a,
                class: SlaClass::Low,
                worker: &w1,
                run_ms: 10,
                preemptible: true,
            },
            Running {
                job_id: &b,
                class: SlaClass::BestEffort,
                worker: &w2,
                run_ms: 500,
                preemptible: true,
            },
            Running {
                job_id: &c,
                class: SlaClass::BestEffort,
                worker: &w3,
                run_ms: 100,
                preemptible: true,
            },
            // Least class and run of all, but too small for the urgent job.
            Running {
                job_id: &d,
                class: SlaClass::BestEffort,
                worker: &w4,
                run_ms: 1,
                preemptible: true,
            },
        ];
        let (u, two) = (id("urgent"), ask(2));
        let chosen = choose_victims(
            PreemptionPolicy::AtRisk,
            &[waiting(&u, SlaClass::Critical, AT_RISK, &two)],
            &running,
            &[],
            NOW,
        );
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].victim, c);
        assert_eq!(chosen[0].worker.as_str(), "w3");
        assert!(chosen[0].reason.contains("at risk"), "{}", chosen[0].reason);
        // Not at risk yet: nothing under at_risk, a victim under always.
        let early = waiting(&u, SlaClass::Critical, AT_RISK, &two);
        assert!(
            choose_victims(
                PreemptionPolicy::AtRisk,
                std::slice::from_ref(&early),
                &running,
                &[],
                100
            )
            .is_empty()
        );
        assert_eq!(
            choose_victims(PreemptionPolicy::Always, &[early], &running, &[], 100).len(),
            1
        );
        // Medium jobs never preempt; never means never.
        let medium = waiting(&u, SlaClass::Medium, AT_RISK, &two);
        assert!(choose_victims(PreemptionPolicy::Always, &[medium], &running, &[], NOW).is_empty());
        let critical = waiting(&u, SlaClass::Critical, AT_RISK, &two);
        assert!(
            choose_victims(
                PreemptionPolicy::Never,
                std::slice::from_ref(&critical),
                &running,
                &[],
                NOW
            )
            .is_empty()
        );
        // An idle (or starting) worker that fits: no preemption.
        assert!(
            choose_victims(
                PreemptionPolicy::AtRisk,
                &[critical],
                &running,
                &[worker("idle", 4)],
                NOW
            )
            .is_empty()
        );
    }

    #[test]
    fn two_urgent_jobs_get_two_different_victims() {
        let (w1, w2) = (worker("w1", 1), worker("w2", 1));
        let (a, b) = (id("a"), id("b"));
        let running = [
            Running {
                job_id: &a,
                class: SlaClass::Low,
                worker: &w1,
                run_ms: 10,
                preemptible: true,
            },
            Running {
                job_id: &b,
                class: SlaClass::Low,
                worker: &w2,
                run_ms: 20,
                preemptible: true,
            },
        ];
        let (u1, u2, one) = (id("u1"), id("u2"), ask(1));
        let later = SlaClock {
            submitted_ms: 0,
            deadline_ms: 1_050,
        };
        let chosen = choose_victims(
            PreemptionPolicy::AtRisk,
            &[
                waiting(&u2, SlaClass::High, later, &one),
                waiting(&u1, SlaClass::High, AT_RISK, &one),
            ],
            &running,
            &[],
            NOW,
        );
        let pairs: Vec<(&str, &str)> = chosen
            .iter()
            .map(|p| (p.beneficiary.as_str(), p.victim.as_str()))
            .collect();
        assert_eq!(pairs, [("u1", "a"), ("u2", "b")]);
    }

    fn queue_entry(
        name: &str,
        tenant: &str,
        sequence: u64,
        class: SlaClass,
        sla: SlaClock,
        cpu: u32,
    ) -> QueueEntry {
        QueueEntry {
            job_id: id(name),
            queue: crate::job::QueueName::default(),
            tenant: TenantName::new(tenant).unwrap(),
            priority: crate::job::Priority::DEFAULT,
            sequence,
            requirements: ask(cpu),
            sla_class: class,
            sla,
        }
    }

    #[test]
    fn demand_counts_at_risk_jobs_first() {
        let mut queues = Queues::default();
        for entry in [
            queue_entry(
                "old-low",
                "t",
                1,
                SlaClass::Low,
                SlaClock {
                    submitted_ms: 0,
                    deadline_ms: 100_000,
                },
                1,
            ),
            queue_entry(
                "boosted",
                "t",
                2,
                SlaClass::Medium,
                SlaClock {
                    submitted_ms: 0,
                    deadline_ms: 1_300,
                },
                2,
            ),
            queue_entry(
                "risky-late",
                "t",
                3,
                SlaClass::High,
                SlaClock {
                    submitted_ms: 0,
                    deadline_ms: 1_050,
                },
                3,
            ),
            queue_entry(
                "risky",
                "u",
                4,
                SlaClass::Critical,
                SlaClock {
                    submitted_ms: 0,
                    deadline_ms: 1_000,
                },
                4,
            ),
        ] {
            queues.push(entry).unwrap();
        }
        // Next: "boosted" at risk at 1_170; "old-low" boosted at 70_000.
        assert_eq!(next_change_ms(&queues, NOW), Some(1_170));
        assert_eq!(next_change_ms(&queues, 1_170), Some(70_000));
        assert_eq!(next_change_ms(&queues, 90_000), None);
        let cpus: Vec<u32> = demand_order(&queues, NOW, 10)
            .iter()
            .map(|r| r.cpu_cores)
            .collect();
        assert_eq!(cpus, [4, 3, 1, 2]);
        assert_eq!(demand_order(&queues, NOW, 1).len(), 1);
        let boosted = boosted_by_tenant(&queues, NOW);
        let names: Vec<&str> = boosted[&TenantName::new("t").unwrap()]
            .iter()
            .map(|e| e.job_id.as_str())
            .collect();
        assert_eq!(names, ["risky-late", "boosted"]);
        let at_risk = at_risk_by_class(&queues, NOW);
        assert_eq!(at_risk.get(&SlaClass::Critical), Some(&1));
        assert_eq!(at_risk.get(&SlaClass::High), Some(&1));
        assert_eq!(at_risk.get(&SlaClass::Medium), None);
    }

    fn class_strategy() -> impl Strategy<Value = SlaClass> {
        prop::sample::select(SlaClass::ALL.to_vec())
    }

    proptest! {
        /// Preemption never picks a victim of an equal or higher class, nor a
        /// non-preemptible one, nor one too small for the urgent job, nor any when a fitting
        /// worker is idle or starting; each victim is picked once.
        #[test]
        fn victims_are_always_legal(
            urgent in prop::collection::vec((class_strategy(), 0u64..2_000, 1u32..4), 1..5),
            running in prop::collection::vec((class_strategy(), 0u64..10_000, 1u32..5, any::<bool>()), 0..8),
            available in prop::collection::vec(1u32..5, 0..3),
            policy in prop::sample::select(vec![PreemptionPolicy::Never, PreemptionPolicy::AtRisk, PreemptionPolicy::Always]),
        ) {
            let urgent_ids: Vec<JobId> = (0..urgent.len()).map(|i| id(&format!("u{i}"))).collect();
            let asks: Vec<Requirements> = urgent.iter().map(|(_, _, cpu)| ask(*cpu)).collect();
            let waiting: Vec<Waiting<'_>> = urgent.iter().enumerate().map(|(i, (class, deadline, _))| Waiting {
                job_id: &urgent_ids[i],
                class: *class,
                sla: SlaClock { submitted_ms: 0, deadline_ms: *deadline },
                requirements: &asks[i],
            }).collect();
            let run_ids: Vec<JobId> = (0..running.len()).map(|i| id(&format!("r{i}"))).collect();
            let workers: Vec<IdleWorker> = running.iter().enumerate().map(|(i, (_, _, cpu, _))| worker(&format!("w{i}"), *cpu)).collect();
            let runs: Vec<Running<'_>> = running.iter().enumerate().map(|(i, (class, run_ms, _, preemptible))| Running {
                job_id: &run_ids[i],
                class: *class,
                worker: &workers[i],
                run_ms: *run_ms,
                preemptible: *preemptible,
            }).collect();
            let idle: Vec<IdleWorker> = available.iter().enumerate().map(|(i, cpu)| worker(&format!("idle{i}"), *cpu)).collect();
            let chosen = choose_victims(policy, &waiting, &runs, &idle, NOW);
            let mut victims = BTreeSet::new();
            for p in &chosen {
                prop_assert!(policy != PreemptionPolicy::Never);
                prop_assert!(victims.insert(p.victim.clone()), "victim chosen twice");
                let w = waiting.iter().find(|w| *w.job_id == p.beneficiary).unwrap();
                let r = runs.iter().find(|r| *r.job_id == p.victim).unwrap();
                prop_assert!(r.class > w.class, "victim class {} not lower than {}", r.class, w.class);
                prop_assert!(r.preemptible);
                prop_assert!(matches!(w.class, SlaClass::Critical | SlaClass::High));
                prop_assert!(policy == PreemptionPolicy::Always || w.sla.risk(NOW) == Risk::AtRisk);
                prop_assert!(fits(w.requirements, &r.worker.capabilities, &r.worker.labels).is_ok());
                prop_assert!(!idle.iter().any(|i| fits(w.requirements, &i.capabilities, &i.labels).is_ok()),
                    "preempted although a fitting worker is idle or starting");
                // Lowest class first, then least run time, among the legal candidates not
                // taken by a more urgent job.
                for other in &runs {
                    let legal = other.preemptible && other.class > w.class
                        && fits(w.requirements, &other.worker.capabilities, &other.worker.labels).is_ok()
                        && !chosen.iter().any(|q| &q.victim == other.job_id);
                    if legal {
                        prop_assert!((std::cmp::Reverse(r.class), r.run_ms) <= (std::cmp::Reverse(other.class), other.run_ms));
                    }
                }
            }
        }
    }
}
