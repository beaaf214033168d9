//! `hodei bench schedule`: the dispatcher's decisions alone, in process, no IO: admission
//! of a backlog across many tenants, then weighted fair planning of starts as workers free
//! up, until the backlog has run.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use hodei_core::matching::IdleWorker;
use hodei_core::tenancy::{self, BurstState, FairShare, Limit, Resource, Tenant, Tenants, Tier};
use hodei_core::{
    JobId, Labels, Priority, QueueConfig, QueueEntry, QueueName, Queues, Requirements, TenantName,
    WorkerCapabilities, WorkerId,
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
    /// Admission decisions (quota and queue-cap checks, then the queue push).
    admissions: u64,
    /// Starts planned (a job given a worker), each a weighted fair, quota-checked choice.
    starts: u64,
    /// Planning passes run.
    passes: u64,
    /// Jobs ended (usage given back).
    ends: u64,
    seconds: f64,
    /// `(admissions + starts) / seconds`.
    decisions_per_sec: f64,
    admissions_per_sec: f64,
    starts_per_sec: f64,
    /// Largest difference, in percentage points, between a tenant's share of the starts
    /// made while every tenant still had jobs queued and its weight's share.
    max_share_error_pp: f64,
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
    let mut queues = Queues::new([QueueConfig {
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

    let started = Instant::now();
    let mut admissions = 0u64;
    for (sequence, (id, tenant, requirements)) in specs.into_iter().enumerate() {
        tenants
            .admit(&tenant, &requirements, queues.tenant_depth(&tenant))
            .context("admission")?;
        queues.push(QueueEntry {
            job_id: id,
            queue: QueueName::default(),
            tenant,
            priority: Priority::DEFAULT,
            sequence: sequence as u64,
            requirements,
        })?;
        admissions += 1;
    }
    let mut usage = BTreeMap::new();
    let bursts: BTreeMap<TenantName, BurstState> = BTreeMap::new();
    let mut fair = FairShare::default();
    let mut idle = workers;
    let mut running: VecDeque<(TenantName, Requirements, IdleWorker)> = VecDeque::new();
    let (mut starts, mut passes, mut ends) = (0u64, 0u64, 0u64);
    let mut contended: BTreeMap<TenantName, u64> = BTreeMap::new();
    let mut contended_total = 0u64;
    while !queues.is_empty() {
        let all_waiting = queues.tenants().count() == names.len();
        let plan = tenancy::plan_fair_dispatch(
            &queues, &idle, &tenants, &mut usage, &bursts, &mut fair, 0,
        );
        passes += 1;
        if plan.assignments.is_empty() && running.is_empty() {
            bail!("no progress: {} jobs queued, none can start", queues.len());
        }
        for (job, worker) in plan.assignments {
            let entry = queues.remove(&job).context("planned job not queued")?;
            let position = idle
                .iter()
                .position(|w| w.id == worker)
                .context("planned worker not idle")?;
            if all_waiting {
                *contended.entry(entry.tenant.clone()).or_default() += 1;
                contended_total += 1;
            }
            running.push_back((entry.tenant, entry.requirements, idle.swap_remove(position)));
            starts += 1;
        }
        for _ in 0..args.ends_per_pass {
            let Some((tenant, requirements, worker)) = running.pop_front() else {
                break;
            };
            if let Some(held) = usage.get_mut(&tenant) {
                held.remove_job(&requirements);
            }
            idle.push(worker);
            ends += 1;
        }
    }
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
        decisions_per_sec: round((admissions + starts) as f64 / seconds, 0),
        admissions_per_sec: round(admissions as f64 / seconds, 0),
        starts_per_sec: round(starts as f64 / seconds, 0),
        max_share_error_pp: round(max_share_error_pp, 3),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
