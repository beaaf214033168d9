//! The dispatcher's SLA bookkeeping in the shell: met and missed deadlines counted, at-risk
//! jobs gauged, and the inputs of `hodei_core::sla::choose_victims` gathered (waiting jobs,
//! running jobs, idle and starting workers) so that its choice goes to the machine as
//! `Input::Preempt`.
//!
//! The decisions are the machine's (`hodei_core::dispatch`): deadlines stamped at admission,
//! the first start set on assignment, a preemption recorded on both jobs before the victim is
//! told to stop (`Effect::Preempt`, with the `[sla]` grace), the victim's end requeued as
//! `Preempted` without spending a retry, the next boost or risk instant. The start order
//! (at-risk first, boosted within a tenant) is `hodei_core::tenancy::plan_fair_dispatch`.

use std::collections::{HashMap, HashSet};

use hodei_core::dispatch::Input;
use hodei_core::sla::{self, Risk, SlaClock};
use hodei_core::{Job, JobId, JobState, SlaClass};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::{Duration, Instant};

use super::{Dispatcher, IdleWorker};

/// A worker registered but never connected for at most this long counts as starting: a
/// job that fits it waits for it rather than preempt anyone.
const STARTING_WINDOW: Duration = Duration::from_secs(60);

/// What the shell keeps about SLAs beyond the machine's jobs.
#[derive(Debug, Default)]
pub(super) struct SlaState {
    /// Workers the pool manager is creating that have not registered yet
    /// ([`super::JobService::set_coming`]): starting, for the preemption rule.
    pub(super) coming: Vec<IdleWorker>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassTenantLabels {
    class: &'static str,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PreemptionLabels {
    /// The victim's class.
    class: &'static str,
    /// The class of the job it made room for.
    for_class: &'static str,
}

/// Seconds left before the deadline when a job first started; 0 for a miss.
fn time_to_deadline_histogram() -> Histogram {
    Histogram::new([
        0.0, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
    ])
}

/// The SLA metrics, all `hodei_sla_*`.
#[derive(Debug, Clone)]
pub struct SlaMetrics {
    met: Family<ClassTenantLabels, Counter>,
    missed: Family<ClassTenantLabels, Counter>,
    at_risk: Family<ClassLabels, Gauge>,
    preemptions: Family<PreemptionLabels, Counter>,
    time_to_deadline: Family<ClassLabels, Histogram, fn() -> Histogram>,
}

impl SlaMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            met: Family::default(),
            missed: Family::default(),
            at_risk: Family::default(),
            preemptions: Family::default(),
            time_to_deadline: Family::new_with_constructor(time_to_deadline_histogram),
        };
        // Every series an alert or panel may name is there at zero from the start: the
        // at-risk gauge and the histogram per class, met and missed per class for the
        // default tenant, and every preemption a policy allows.
        for class in SlaClass::ALL {
            let labels = ClassLabels {
                class: class.as_str(),
            };
            let _ = metrics.at_risk.get_or_create(&labels);
            let _ = metrics.time_to_deadline.get_or_create(&labels);
            let default = ClassTenantLabels {
                class: class.as_str(),
                tenant: hodei_core::job::DEFAULT_TENANT.to_owned(),
            };
            let _ = metrics.met.get_or_create(&default);
            let _ = metrics.missed.get_or_create(&default);
            for for_class in [SlaClass::Critical, SlaClass::High] {
                if class > for_class {
                    let _ = metrics.preemptions.get_or_create(&PreemptionLabels {
                        class: class.as_str(),
                        for_class: for_class.as_str(),
                    });
                }
            }
        }
        registry.register(
            "hodei_sla_jobs_met",
            "Jobs that first started within their deadline, by SLA class and tenant",
            metrics.met.clone(),
        );
        registry.register(
            "hodei_sla_jobs_missed",
            "Jobs that missed their deadline (still queued at it, or first started after it), by SLA class and tenant",
            metrics.missed.clone(),
        );
        registry.register(
            "hodei_sla_jobs_at_risk",
            "Queued jobs past 90% of their deadline now, by SLA class",
            metrics.at_risk.clone(),
        );
        registry.register(
            "hodei_sla_preemptions",
            "Running jobs preempted, by their SLA class and the class of the job they made room for",
            metrics.preemptions.clone(),
        );
        registry.register(
            "hodei_sla_time_to_deadline_at_start_seconds",
            "Seconds left before the deadline when a job first started (0 for a miss), by SLA class",
            metrics.time_to_deadline.clone(),
        );
        metrics
    }

    fn counted(&self, job: &Job, met: bool) {
        let labels = ClassTenantLabels {
            class: job.spec.sla_class.as_str(),
            tenant: job.spec.tenant.to_string(),
        };
        if met {
            self.met.get_or_create(&labels).inc();
        } else {
            self.missed.get_or_create(&labels).inc();
        }
    }
}

impl Dispatcher {
    /// A job's first start was recorded: met or missed, and how close.
    pub(super) fn sla_first_start(&mut self, job: &Job) {
        let Some(start) = job.first_started_at else {
            return;
        };
        let clock = SlaClock::of_job(job);
        let start_ms = sla::unix_ms(start);
        let met = clock.met_by(start_ms);
        // A miss counted while it was still queued (recorded on the job, so also before a
        // restart) is not counted again.
        if !job.miss_counted {
            self.metrics.sla.counted(job, met);
        }
        let left = (clock.time_left_ms(start_ms).max(0) as f64) / 1000.0;
        self.metrics
            .sla
            .time_to_deadline
            .get_or_create(&ClassLabels {
                class: job.spec.sla_class.as_str(),
            })
            .observe(left);
        if !met {
            tracing::warn!(job_id = %job.id, class = %job.spec.sla_class, late_ms = -clock.time_left_ms(start_ms), "job started after its deadline");
        }
    }

    /// A queued job's missed deadline, recorded as counted on the job: counted.
    pub(super) fn sla_missed(&self, job: &Job) {
        tracing::warn!(job_id = %job.id, class = %job.spec.sla_class, "job missed its deadline while queued");
        self.metrics.sla.counted(job, false);
    }

    /// A preemption the machine recorded: counted and logged (the stop is sent by the
    /// caller).
    pub(super) fn preempting(&self, preemption: &sla::Preemption) {
        tracing::info!(victim = %preemption.victim, beneficiary = %preemption.beneficiary, worker_id = %preemption.worker, reason = %preemption.reason, "preempting");
        self.metrics
            .sla
            .preemptions
            .get_or_create(&PreemptionLabels {
                class: preemption.victim_class.as_str(),
                for_class: preemption.beneficiary_class.as_str(),
            })
            .inc();
    }

    /// When the next queued job becomes boosted or at risk (an hour away when none will),
    /// as the machine says.
    pub(super) fn sla_wake(&self) -> Instant {
        let now_ms = self.clock.now_ms();
        let after =
            self.machine
                .next_sla_change_ms(now_ms)
                .map_or(Duration::from_secs(3600), |at| {
                    // One millisecond past the instant, so the job is past its threshold then.
                    Duration::from_millis(at.saturating_sub(now_ms).saturating_add(1))
                });
        Instant::now() + after
    }

    /// Counts deadlines missed by queued jobs, sets the at-risk gauge, and preempts for
    /// waiting critical and high jobs as `[sla] preemption` allows.
    pub(super) async fn sla_tick(&mut self) {
        let now_ms = self.clock.now_ms();
        let mut at_risk: HashMap<SlaClass, i64> = HashMap::new();
        let mut newly_missed = Vec::new();
        for entry in sla::at_risk_first(self.machine.queues(), now_ms) {
            *at_risk.entry(entry.sla_class).or_default() += 1;
            if entry.sla.time_left_ms(now_ms) < 0
                && self
                    .machine
                    .job(&entry.job_id)
                    .is_some_and(|job| !job.miss_counted)
            {
                newly_missed.push(entry.job_id.clone());
            }
        }
        for class in SlaClass::ALL {
            self.metrics
                .sla
                .at_risk
                .get_or_create(&ClassLabels {
                    class: class.as_str(),
                })
                .set(at_risk.get(&class).copied().unwrap_or(0));
        }
        if !newly_missed.is_empty() {
            // Recorded on the jobs first, counted on the machine's `Effect::Missed`.
            self.drive(Input::DeadlinePassed(newly_missed)).await;
        }
        for preemption in self.choose_preemptions(now_ms) {
            self.drive(Input::Preempt(preemption)).await;
        }
    }

    /// Gathers the waiting, the running and the available workers, and asks
    /// [`sla::choose_victims`] which running jobs to stop.
    fn choose_preemptions(&self, now_ms: u64) -> Vec<sla::Preemption> {
        let policy = self.config.sla.preemption;
        if policy == sla::PreemptionPolicy::Never {
            return Vec::new();
        }
        let queues = self.machine.queues();
        let candidates: Vec<&hodei_core::QueueEntry> = match policy {
            sla::PreemptionPolicy::Always => queues
                .iter_in_order()
                .filter(|e| matches!(e.sla_class, SlaClass::Critical | SlaClass::High))
                .collect(),
            _ => sla::at_risk_first(queues, now_ms)
                .into_iter()
                .filter(|e| e.sla.risk(now_ms) == Risk::AtRisk)
                .collect(),
        };
        let stopping: HashSet<&JobId> = self
            .machine
            .preempting()
            .map(|(victim, _)| victim)
            .collect();
        let making_room_for: HashSet<&JobId> = self
            .machine
            .preempting()
            .map(|(_, for_job)| for_job)
            .collect();
        let waiting: Vec<sla::Waiting<'_>> = candidates
            .iter()
            .filter(|e| !making_room_for.contains(&e.job_id))
            .map(|e| sla::Waiting {
                job_id: &e.job_id,
                class: e.sla_class,
                sla: e.sla,
                requirements: &e.requirements,
            })
            .collect();
        if waiting.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut available = self.machine.idle_workers(now_ms);
        available.extend(self.registry.filter_map(|entry| {
            let starting = !entry.connected
                && entry.last_seen.is_none()
                && now.saturating_duration_since(entry.last_seen_at) < STARTING_WINDOW;
            starting.then(|| IdleWorker::from(&entry.worker))
        }));
        // Workers still being created by the pool manager, not registered yet.
        available.extend(
            self.sla
                .coming
                .iter()
                .filter(|worker| self.registry.get(&worker.id).is_none())
                .cloned(),
        );
        let running_jobs: Vec<(&Job, IdleWorker, u64)> = self
            .machine
            .in_flight()
            .filter(|job| job.state == JobState::Running && !stopping.contains(&job.id))
            .filter_map(|job| {
                let worker = job.worker_id.as_ref()?;
                let entry = self.registry.get(worker)?;
                let times = self.machine.times(&job.id)?;
                let since = times
                    .started_at_ms
                    .or(times.assigned_at_ms)
                    .unwrap_or(now_ms);
                Some((
                    job,
                    IdleWorker::from(&entry.worker),
                    now_ms.saturating_sub(since),
                ))
            })
            .collect();
        let running: Vec<sla::Running<'_>> = running_jobs
            .iter()
            .map(|(job, worker, run_ms)| sla::Running {
                job_id: &job.id,
                class: job.spec.sla_class,
                worker,
                run_ms: *run_ms,
                preemptible: self.machine.sla().job_preemptible(
                    &job.spec.tenant,
                    self.machine.tenants().get(&job.spec.tenant).as_deref(),
                    job.spec.no_preempt,
                ),
            })
            .collect();
        sla::choose_victims(policy, &waiting, &running, &available, now_ms)
    }
}
