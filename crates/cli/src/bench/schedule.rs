//! `hodei bench schedule`: the dispatcher's core state machine alone (`hodei_core::dispatch`),
//! in process, no IO: admission of a backlog across many tenants, then weighted fair,
//! quota-checked starts, acceptances and results as workers free up, until the backlog has
//! run. Every proposed write is committed as if recorded.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Instant, SystemTime};

use anyhow::bail;
use clap::Args;
use hodei_core::dispatch::{Dispatch, DispatchConfig, Effect, Input};
use hodei_core::matching::IdleWorker;
use hodei_core::tenancy::{self, Limit, Resource, Tenant, Tenants, Tier};
use hodei_core::{
    AttemptOutcome, Job, JobId, JobSpec, Labels, QueueConfig, QueueName, Queues, Requirements,
    TenantName, WorkerCapabilities, WorkerId,
};
use serde::Serialize;

use super::round;

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Jobs submitted (admitted and queued) before the first start.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    queued: u32,
    /// Idle workers, all of one shape (4 cores, 8 GB).
    #[arg(long, default_value_t = 1000, value_name = "W")]
    workers: u32,
    /// Tenants the jobs are spread over, round robin; weights cycle through the tiers
    /// bronze, silver, gold, platinum, and every fourth tenant has a soft running-jobs quota.
    #[arg(long, default_value_t = 100, value_name = "T")]
    tenants: u32,
    /// Jobs that end between two planning passes once every worker is busy (the workers
    /// they free are planned for in the next pass).
    #[arg(long, default_value_t = 64, value_name = "K")]
    ends_per_pass: u32,
}

/// The result of `hodei bench schedule`, printed as JSON.
#[derive(Debug, Serialize)]
struct ScheduleReport {
    bench: &'static str,
    version: &'static str,
    queued: u32,
    workers: u32,
    tenants: u32,
    ends_per_pass: u32,
    /// Every decision the machine made: job writes proposed and committed (admissions,
    /// assignments, starts, ends) and answers that needed none.
    decisions: u64,
    /// Jobs admitted (queue capacity and tenant quota checks passed).
    admissions: u64,
    /// Starts planned (a job given a worker), each a weighted fair, quota-checked choice.
    starts: u64,
    /// Ticks (deadline checks and planning passes) run.
    passes: u64,
    /// Jobs ended (usage given back).
    ends: u64,
    seconds: f64,
    /// `decisions / seconds`.
    decisions_per_sec: f64,
    admissions_per_sec: f64,
    starts_per_sec: f64,
    /// Largest difference, in percentage points, between a tenant's share of the work
    /// started (in cost units: cores or 2 GB asked) while every tenant still had jobs
    /// queued, and its weight's share.
    max_share_error_pp: f64,
}

#[derive(Debug, Default)]
struct Counts {
    decisions: u64,
    admissions: u64,
    starts: u64,
    passes: u64,
    ends: u64,
}

pub fn schedule(args: ScheduleArgs) -> anyhow::Result<()> {
    if args.tenants == 0 || args.workers == 0 || args.ends_per_pass == 0 {
        bail!("--tenants, --workers and --ends-per-pass must be at least 1");
    }
    let names: Vec<TenantName> = (0..args.tenants)
        .map(|i| TenantName::new(format!("tenant-{i:04}")))
        .collect::<Result<_, _>>()?;
    let mut configured = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let tier = Tier::ALL[i % Tier::ALL.len()];
        let mut tenant = Tenant::new(name.clone());
        tenant.tier = Some(tier);
        tenant.weight = tier.weight();
        if i % 4 == 3 {
            tenant
                .quotas
                .insert(Resource::RunningJobs, Limit::soft(f64::from(args.workers)));
        }
        configured.insert(name.clone(), tenant);
    }
    let tenants = Tenants {
        configured,
        auto_create: None,
        burst: tenancy::BurstPolicy::default(),
    };
    let queues = Queues::new([QueueConfig {
        name: QueueName::default(),
        capacity: args.queued.max(1) as usize,
    }])?;
    let specs: Vec<(JobId, TenantName, Requirements)> = (0..args.queued)
        .map(|i| {
            let requirements = Requirements {
                cpu_cores: 1 + i % 2,
                memory_mb: 512,
                ..Requirements::default()
            };
            let tenant = names[i as usize % names.len()].clone();
            Ok((JobId::new(format!("j-{i:08}"))?, tenant, requirements))
        })
        .collect::<Result<_, hodei_core::ValidationError>>()?;
    let workers: Vec<IdleWorker> = (0..args.workers)
        .map(|i| {
            Ok(IdleWorker {
                id: WorkerId::new(format!("w-{i:06}"))?,
                capabilities: WorkerCapabilities {
                    cpu_cores: 4,
                    memory_mb: 8192,
                    ..WorkerCapabilities::default()
                },
                labels: Labels::new(),
                pool: None,
            })
        })
        .collect::<Result<_, hodei_core::ValidationError>>()?;
    let weights: BTreeMap<&TenantName, u32> = names
        .iter()
        .map(|n| (n, tenants.configured[n].weight))
        .collect();
    let jobs: Vec<Job> = specs
        .into_iter()
        .enumerate()
        .map(|(sequence, (id, tenant, requirements))| {
            let mut spec = JobSpec::new(hodei_core::Command::Script("true".into()));
            spec.tenant = tenant;
            spec.requirements = requirements;
            let mut job = Job::new(id, spec, 0, SystemTime::UNIX_EPOCH)?;
            job.sequence = sequence as u64;
            Ok(job)
        })
        .collect::<Result<_, hodei_core::ValidationError>>()?;
    let mut machine = Dispatch::new(DispatchConfig::default(), queues, tenants);
    let mut now_ms = 1_000u64;
    // Every write is recorded: the bench measures the decisions, not a store.
    let feed = |machine: &mut Dispatch, input: Input, now_ms: u64, counts: &mut Counts| {
        let proposal = machine.step(input, now_ms);
        counts.decisions += proposal.writes.len() as u64 + proposal.immediate.len() as u64;
        let recorded = vec![true; proposal.writes.len()];
        machine.commit(proposal, &recorded, now_ms)
    };
    let mut counts = Counts::default();
    for worker in &workers {
        feed(
            &mut machine,
            Input::WorkerUp {
                worker: worker.clone(),
                pool_max_uses: None,
            },
            now_ms,
            &mut counts,
        );
        feed(
            &mut machine,
            Input::Connected {
                worker: worker.id.clone(),
                running: Vec::new(),
            },
            now_ms,
            &mut counts,
        );
    }
    counts.decisions = 0;

    let started = Instant::now();
    // Submissions arrive in batches, as the server's dispatcher takes them.
    let total = jobs.len();
    let mut jobs = jobs.into_iter();
    loop {
        let batch: Vec<Job> = jobs.by_ref().take(512).collect();
        if batch.is_empty() {
            break;
        }
        for effect in feed(&mut machine, Input::Submit(batch), now_ms, &mut counts) {
            if matches!(effect, Effect::Admitted { .. }) {
                counts.admissions += 1;
            }
        }
    }
    if counts.admissions != total as u64 {
        bail!("only {} of {total} jobs admitted", counts.admissions);
    }
    let mut running: VecDeque<(WorkerId, JobId)> = VecDeque::new();
    let mut contended: BTreeMap<TenantName, u64> = BTreeMap::new();
    let mut contended_total = 0u64;
    while machine.counts().0 > 0 || !running.is_empty() {
        now_ms += 10;
        let all_waiting = machine.queued_tenants() == names.len();
        counts.passes += 1;
        let effects = feed(&mut machine, Input::Tick, now_ms, &mut counts);
        for effect in effects {
            if let Effect::Assign { worker, job } = effect {
                counts.starts += 1;
                if all_waiting {
                    // Fair share divides resource asks (cost units), not job counts.
                    let cost = tenancy::job_cost(&job.spec.requirements);
                    *contended.entry(job.spec.tenant.clone()).or_default() += cost;
                    contended_total += cost;
                }
                feed(
                    &mut machine,
                    Input::Accepted {
                        worker: worker.clone(),
                        job: job.id.clone(),
                    },
                    now_ms,
                    &mut counts,
                );
                running.push_back((worker, job.id));
            }
        }
        if running.is_empty() && machine.counts().0 > 0 {
            bail!(
                "no progress: {} jobs queued, none can start",
                machine.counts().0
            );
        }
        for _ in 0..args.ends_per_pass {
            let Some((worker, job)) = running.pop_front() else {
                break;
            };
            feed(
                &mut machine,
                Input::Result {
                    worker,
                    job,
                    outcome: AttemptOutcome::Exited(0),
                    healthy: true,
                },
                now_ms,
                &mut counts,
            );
            counts.ends += 1;
        }
    }
    let Counts {
        decisions,
        admissions,
        starts,
        passes,
        ends,
    } = counts;
    let seconds = started.elapsed().as_secs_f64();
    let total_weight: u32 = weights.values().sum();
    let max_share_error_pp = if contended_total == 0 {
        0.0
    } else {
        weights
            .iter()
            .map(|(name, weight)| {
                let share =
                    contended.get(*name).copied().unwrap_or(0) as f64 / contended_total as f64;
                let expected = f64::from(*weight) / f64::from(total_weight);
                (share - expected).abs() * 100.0
            })
            .fold(0.0, f64::max)
    };
    let report = ScheduleReport {
        bench: "schedule",
        version: env!("CARGO_PKG_VERSION"),
        queued: args.queued,
        workers: args.workers,
        tenants: args.tenants,
        ends_per_pass: args.ends_per_pass,
        admissions,
        starts,
        passes,
        ends,
        seconds: round(seconds, 4),
        decisions,
        decisions_per_sec: round(decisions as f64 / seconds, 0),
        admissions_per_sec: round(admissions as f64 / seconds, 0),
        starts_per_sec: round(starts as f64 / seconds, 0),
        max_share_error_pp: round(max_share_error_pp, 3),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
