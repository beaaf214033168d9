//! Usage and cost: what an attempt costs, the cost report's arithmetic and the
//! recommendations drawn from it. Pure: the store supplies the sums, the clock is passed in.
//!
//! Two kinds of worker time are counted. *Held* time is what a pool's workers existed for
//! (idle, starting, busy, leaving): it is what the provider bills. *Job* time is what an
//! attempt held its worker, from assignment to result: it is what a tenant, queue or job is
//! charged. Held minus busy is the idle time a pool's settings pay for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{PoolKind, PoolSpec};

/// Milliseconds in an hour: pool usage is kept in hourly buckets.
pub const HOUR_MS: u64 = 3_600_000;

/// A pool must hold at least this much worker time before its idle share means anything.
pub const MIN_HELD_SECONDS_FOR_ADVICE: f64 = 60.0;

/// Share of a pool's held time that, idle, earns a recommendation.
pub const IDLE_SHARE_ADVICE: f64 = 0.5;

/// Share of the report's window a pool may spend at its max with jobs waiting before a
/// recommendation to raise it.
pub const AT_MAX_SHARE_ADVICE: f64 = 0.05;

/// Share of its daily budget (its `daily_cost` quota) a tenant may spend before a
/// recommendation, and the alert `HodeiTenantNearDailyBudget`, say it is near.
pub const BUDGET_SHARE_ADVICE: f64 = 0.8;

/// Milliseconds in a day; a tenant's day starts at 00:00 UTC.
pub const DAY_MS: u64 = 86_400_000;

/// The start (00:00 UTC) of the day `unix_ms` falls in.
pub fn day_start(unix_ms: u64) -> u64 {
    unix_ms - unix_ms % DAY_MS
}

/// What each tenant's attempts cost, from the store's totals (of a day, for the daily cost
/// a restarted server starts from).
pub fn cost_by_tenant(attempts: &[AttemptTotals]) -> BTreeMap<String, f64> {
    let mut spent: BTreeMap<String, f64> = BTreeMap::new();
    for totals in attempts {
        *spent.entry(totals.tenant.clone()).or_default() += totals.cost;
    }
    spent
}

/// A tenant's spending today against its daily budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantBudget {
    pub tenant: String,
    /// Its attempts' cost since 00:00 UTC.
    pub spent_today: f64,
    /// Its `daily_cost` quota.
    pub daily_budget: f64,
}

/// A recommendation for each tenant that spent at least [`BUDGET_SHARE_ADVICE`] of its
/// daily budget today, by name. A budget of zero or less is not a budget to be near.
pub fn budget_advice(budgets: &[TenantBudget]) -> Vec<Recommendation> {
    let mut advice: Vec<Recommendation> = budgets
        .iter()
        .filter(|b| b.daily_budget > 0.0 && b.spent_today >= BUDGET_SHARE_ADVICE * b.daily_budget)
        .map(|b| Recommendation::TenantNearBudget {
            tenant: b.tenant.clone(),
            spent_today: b.spent_today,
            daily_budget: b.daily_budget,
            share: b.spent_today / b.daily_budget,
        })
        .collect();
    advice.sort_by(|a, b| match (a, b) {
        (
            Recommendation::TenantNearBudget { tenant: x, .. },
            Recommendation::TenantNearBudget { tenant: y, .. },
        ) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    advice
}

/// What `worker_seconds` of a worker cost at `cost_per_hour`.
pub fn cost_of(worker_seconds: f64, cost_per_hour: f64) -> f64 {
    worker_seconds * cost_per_hour / 3600.0
}

/// The start of the hour `unix_ms` falls in.
pub fn hour_start(unix_ms: u64) -> u64 {
    unix_ms - unix_ms % HOUR_MS
}

/// One job attempt's use of a worker, from assignment to its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptUsage {
    pub job_id: String,
    pub attempt: u32,
    pub tenant: String,
    pub queue: String,
    pub pool: String,
    pub worker_id: String,
    pub ended_at_ms: u64,
    pub worker_seconds: f64,
    pub cost: f64,
}

/// Attempts summed by (tenant, queue, pool), as the store aggregates them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptTotals {
    pub tenant: String,
    pub queue: String,
    pub pool: String,
    pub attempts: u64,
    pub worker_seconds: f64,
    pub cost: f64,
}

/// Worker time a pool held in one hour (rows with the same pool and hour add up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PoolUsage {
    pub pool: String,
    pub hour_start_ms: u64,
    /// Workers existing (any state but gone) times seconds.
    pub worker_seconds: f64,
    /// Of those, seconds busy with a job.
    pub busy_seconds: f64,
    /// `worker_seconds` priced at the pool's `cost_per_hour` at the time.
    pub cost: f64,
    /// Seconds the pool wanted its max or more while jobs it could run were queued.
    pub at_max_waiting_seconds: f64,
}

impl PoolUsage {
    /// Takes `other` (same pool, same hour) into this one, which may be a default.
    pub fn merge(&mut self, other: PoolUsage) {
        self.pool = other.pool.clone();
        self.hour_start_ms = hour_start(other.hour_start_ms);
        self.add(&other);
    }

    /// Adds `other`'s figures (same pool) to this one's.
    pub fn add(&mut self, other: &PoolUsage) {
        self.worker_seconds += other.worker_seconds;
        self.busy_seconds += other.busy_seconds;
        self.cost += other.cost;
        self.at_max_waiting_seconds += other.at_max_waiting_seconds;
    }
}

/// What a cost report groups job time by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Tenant,
    #[default]
    Pool,
    Queue,
}

impl std::str::FromStr for GroupBy {
    type Err = crate::ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tenant" => Ok(Self::Tenant),
            "pool" => Ok(Self::Pool),
            "queue" => Ok(Self::Queue),
            other => Err(crate::ValidationError::new(
                "by",
                format!("{other:?} is not one of tenant, pool, queue"),
            )),
        }
    }
}

/// One line of a cost report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The tenant, pool or queue.
    pub name: String,
    /// Attempts that ended in the window.
    pub attempts: u64,
    /// Seconds those attempts held a worker.
    pub job_worker_seconds: f64,
    /// What those attempts cost.
    pub job_cost: f64,
    /// By pool only: worker time the pool held in the window, idle included.
    pub held_worker_seconds: Option<f64>,
    /// By pool only: what the held time cost (what the provider bills).
    pub held_cost: Option<f64>,
    /// By pool only: the share of held time no job used.
    pub idle_share: Option<f64>,
}

/// A change that would save money or time, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Recommendation {
    /// The pool held workers but ran nothing.
    UnusedPool {
        pool: String,
        held_worker_seconds: f64,
        held_cost: f64,
    },
    /// More than half of the pool's held time was idle: lower `idle_buffer`, `min` or
    /// `idle_timeout` (a static pool: its `size`).
    MostlyIdle {
        pool: String,
        pool_kind: PoolKind,
        held_worker_seconds: f64,
        busy_worker_seconds: f64,
        idle_share: f64,
        idle_cost: f64,
        min: u32,
        idle_buffer: u32,
        idle_timeout_secs: u64,
    },
    /// The pool sat at its max while jobs waited: raise `max` (a static pool: its `size`).
    RaiseMax {
        pool: String,
        pool_kind: PoolKind,
        max: u32,
        at_max_waiting_seconds: f64,
        window_seconds: f64,
    },
    /// A cheaper pool's workers can run every job this pool's can.
    CheaperPoolFits {
        pool: String,
        cheaper_pool: String,
        cost_per_hour: f64,
        cheaper_cost_per_hour: f64,
        job_worker_seconds: f64,
        saving: f64,
    },
    /// The tenant spent most of its daily budget (`daily_cost` quota) today: at the budget,
    /// its jobs wait until 00:00 UTC.
    TenantNearBudget {
        tenant: String,
        spent_today: f64,
        daily_budget: f64,
        share: f64,
    },
}

impl Recommendation {
    /// One sentence with the figures, for tables and logs.
    pub fn message(&self) -> String {
        match self {
            Self::UnusedPool {
                pool,
                held_worker_seconds,
                held_cost,
            } => format!(
                "pool {pool} ran no job but held {:.3} worker-hours costing {held_cost:.4}: remove it or lower its min (or size) to 0",
                held_worker_seconds / 3600.0
            ),
            Self::MostlyIdle {
                pool,
                pool_kind,
                held_worker_seconds,
                busy_worker_seconds,
                idle_share,
                idle_cost,
                min,
                idle_buffer,
                idle_timeout_secs,
            } => {
                let change = match pool_kind {
                    PoolKind::Static => format!("lower its size ({min})"),
                    PoolKind::Dynamic => format!(
                        "lower idle_buffer ({idle_buffer}), min ({min}) or idle_timeout ({idle_timeout_secs}s)"
                    ),
                };
                format!(
                    "pool {pool} was idle {:.0}% of its {:.3} worker-hours ({:.3} busy), {idle_cost:.4} spent idle: {change}",
                    idle_share * 100.0,
                    held_worker_seconds / 3600.0,
                    busy_worker_seconds / 3600.0
                )
            }
            Self::RaiseMax {
                pool,
                pool_kind,
                max,
                at_max_waiting_seconds,
                window_seconds,
            } => format!(
                "pool {pool} was at its max ({max}) with jobs waiting for {:.0}s of {:.0}s ({:.0}%): raise its {}",
                at_max_waiting_seconds,
                window_seconds,
                at_max_waiting_seconds / window_seconds * 100.0,
                match pool_kind {
                    PoolKind::Static => "size",
                    PoolKind::Dynamic => "max",
                }
            ),
            Self::CheaperPoolFits {
                pool,
                cheaper_pool,
                cost_per_hour,
                cheaper_cost_per_hour,
                job_worker_seconds,
                saving,
            } => format!(
                "pool {cheaper_pool} ({cheaper_cost_per_hour}/h) can run every job of pool {pool} ({cost_per_hour}/h): its {:.3} job worker-hours would have cost {saving:.4} less",
                job_worker_seconds / 3600.0
            ),
            Self::TenantNearBudget {
                tenant,
                spent_today,
                daily_budget,
                share,
            } => format!(
                "tenant {tenant} spent {spent_today:.4} of its daily budget {daily_budget} today ({:.0}%): at the budget its jobs wait until 00:00 UTC; raise its daily_cost quota (`hodei tenant set-quota`) or move its jobs to cheaper pools",
                share * 100.0
            ),
        }
    }
}

/// A whole cost report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub since_ms: u64,
    pub until_ms: u64,
    pub by: GroupBy,
    /// Sorted by job cost, then held cost, highest first; ties by name.
    pub rows: Vec<ReportRow>,
    /// Every attempt's cost in the window.
    pub job_cost: f64,
    /// Every pool's held cost in the window (what providers bill).
    pub held_cost: f64,
    pub recommendations: Vec<Recommendation>,
}

/// The report for the window `[since_ms, until_ms]`: `attempts` are the attempts that ended
/// in it, `pools` the pool usage of the hours it touches, `specs` the pools as configured now.
pub fn report(
    by: GroupBy,
    since_ms: u64,
    until_ms: u64,
    attempts: &[AttemptTotals],
    pools: &[PoolUsage],
    specs: &[PoolSpec],
) -> CostReport {
    let mut job_rows: BTreeMap<&str, (u64, f64, f64)> = BTreeMap::new();
    for totals in attempts {
        let key = match by {
            GroupBy::Tenant => totals.tenant.as_str(),
            GroupBy::Pool => totals.pool.as_str(),
            GroupBy::Queue => totals.queue.as_str(),
        };
        let row = job_rows.entry(key).or_default();
        row.0 += totals.attempts;
        row.1 += totals.worker_seconds;
        row.2 += totals.cost;
    }
    let held = held_by_pool(pools);
    let mut names: Vec<&str> = job_rows.keys().copied().collect();
    if by == GroupBy::Pool {
        names.extend(held.keys().map(String::as_str));
        names.extend(specs.iter().map(|s| s.name.as_str()));
        names.sort_unstable();
        names.dedup();
    }
    let mut rows: Vec<ReportRow> = names
        .into_iter()
        .map(|name| {
            let (attempts, job_worker_seconds, job_cost) =
                job_rows.get(name).copied().unwrap_or_default();
            let pool = (by == GroupBy::Pool).then(|| held.get(name).cloned().unwrap_or_default());
            ReportRow {
                name: name.to_owned(),
                attempts,
                job_worker_seconds,
                job_cost,
                held_worker_seconds: pool.as_ref().map(|p| p.worker_seconds),
                held_cost: pool.as_ref().map(|p| p.cost),
                idle_share: pool.as_ref().and_then(idle_share),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.job_cost
            .total_cmp(&a.job_cost)
            .then(
                b.held_cost
                    .unwrap_or(0.0)
                    .total_cmp(&a.held_cost.unwrap_or(0.0)),
            )
            .then_with(|| a.name.cmp(&b.name))
    });
    let window_seconds = until_ms.saturating_sub(since_ms) as f64 / 1000.0;
    CostReport {
        since_ms,
        until_ms,
        by,
        job_cost: attempts.iter().map(|a| a.cost).sum(),
        held_cost: held.values().map(|p| p.cost).sum(),
        recommendations: recommend(attempts, &held, specs, window_seconds),
        rows,
    }
}

/// Pool usage rows summed per pool.
pub fn held_by_pool(pools: &[PoolUsage]) -> BTreeMap<String, PoolUsage> {
    let mut held: BTreeMap<String, PoolUsage> = BTreeMap::new();
    for usage in pools {
        held.entry(usage.pool.clone())
            .or_insert_with(|| PoolUsage {
                pool: usage.pool.clone(),
                ..PoolUsage::default()
            })
            .add(usage);
    }
    held
}

/// The share of held time no job used; `None` when nothing was held.
pub fn idle_share(usage: &PoolUsage) -> Option<f64> {
    (usage.worker_seconds > 0.0)
        .then(|| (1.0 - usage.busy_seconds / usage.worker_seconds).clamp(0.0, 1.0))
}

/// Whether a worker of `cheaper`'s template can run every job a worker of `pool`'s can:
/// at least its cores and memory, every label with the same value, every feature.
pub fn template_covers(cheaper: &PoolSpec, pool: &PoolSpec) -> bool {
    let (big, small) = (&cheaper.template, &pool.template);
    big.capabilities.cpu_cores >= small.capabilities.cpu_cores
        && big.capabilities.memory_mb >= small.capabilities.memory_mb
        && (big.capabilities.docker_enabled || !small.capabilities.docker_enabled)
        && small
            .capabilities
            .custom_resources
            .iter()
            .all(|(name, count)| big.capabilities.custom_resources.get(name) >= Some(count))
        && small
            .labels
            .iter()
            .all(|(key, value)| big.labels.get(key) == Some(value))
}

/// The recommendations, each with its figures: an unused pool; a pool idle more than half
/// its held time; a pool at its max while jobs waited; a cheaper pool that runs every job
/// of a pool. Pools are in name order, one kind of advice per pool at most for idleness.
pub fn recommend(
    attempts: &[AttemptTotals],
    held: &BTreeMap<String, PoolUsage>,
    specs: &[PoolSpec],
    window_seconds: f64,
) -> Vec<Recommendation> {
    let mut jobs_by_pool: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for totals in attempts {
        let entry = jobs_by_pool.entry(totals.pool.as_str()).or_default();
        entry.0 += totals.attempts;
        entry.1 += totals.worker_seconds;
    }
    let mut specs: Vec<&PoolSpec> = specs.iter().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut advice = Vec::new();
    for spec in &specs {
        let (attempts, job_seconds) = jobs_by_pool
            .get(spec.name.as_str())
            .copied()
            .unwrap_or_default();
        if let Some(usage) = held.get(&spec.name) {
            if attempts == 0 && usage.worker_seconds >= MIN_HELD_SECONDS_FOR_ADVICE {
                advice.push(Recommendation::UnusedPool {
                    pool: spec.name.clone(),
                    held_worker_seconds: usage.worker_seconds,
                    held_cost: usage.cost,
                });
            } else if let Some(share) = idle_share(usage).filter(|share| {
                *share > IDLE_SHARE_ADVICE && usage.worker_seconds >= MIN_HELD_SECONDS_FOR_ADVICE
            }) {
                advice.push(Recommendation::MostlyIdle {
                    pool: spec.name.clone(),
                    pool_kind: spec.kind,
                    held_worker_seconds: usage.worker_seconds,
                    busy_worker_seconds: usage.busy_seconds,
                    idle_share: share,
                    idle_cost: usage.cost * share,
                    min: spec.min_workers(),
                    idle_buffer: spec.idle_buffer,
                    idle_timeout_secs: spec.idle_timeout,
                });
            }
            if window_seconds > 0.0
                && usage.at_max_waiting_seconds > AT_MAX_SHARE_ADVICE * window_seconds
            {
                advice.push(Recommendation::RaiseMax {
                    pool: spec.name.clone(),
                    pool_kind: spec.kind,
                    max: spec.max_workers(),
                    at_max_waiting_seconds: usage.at_max_waiting_seconds,
                    window_seconds,
                });
            }
        }
        if job_seconds > 0.0 {
            let cheapest = specs
                .iter()
                .filter(|other| {
                    other.name != spec.name
                        && other.cost_per_hour < spec.cost_per_hour
                        && other.max_workers() > 0
                        && template_covers(other, spec)
                })
                .min_by(|a, b| {
                    a.cost_per_hour
                        .total_cmp(&b.cost_per_hour)
                        .then_with(|| a.name.cmp(&b.name))
                });
            if let Some(cheaper) = cheapest {
                advice.push(Recommendation::CheaperPoolFits {
                    pool: spec.name.clone(),
                    cheaper_pool: cheaper.name.clone(),
                    cost_per_hour: spec.cost_per_hour,
                    cheaper_cost_per_hour: cheaper.cost_per_hour,
                    job_worker_seconds: job_seconds,
                    saving: cost_of(job_seconds, spec.cost_per_hour - cheaper.cost_per_hour),
                });
            }
        }
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProviderKind;
    use proptest::prelude::*;

    #[test]
    fn days_start_at_midnight_utc_and_costs_add_up_by_tenant() {
        assert_eq!(day_start(0), 0);
        assert_eq!(day_start(DAY_MS - 1), 0);
        assert_eq!(day_start(3 * DAY_MS + 5), 3 * DAY_MS);
        let totals = [
            attempts("acme", "default", "default", 2, 3600.0, 0.5),
            attempts("acme", "default", "large", 1, 1800.0, 0.5),
            attempts("beta", "default", "default", 1, 900.0, 0.5),
        ];
        let spent = cost_by_tenant(&totals);
        assert_eq!(spent.len(), 2);
        assert!((spent["acme"] - 0.75).abs() < 1e-12);
        assert!((spent["beta"] - 0.125).abs() < 1e-12);
    }

    #[test]
    fn tenants_at_80_percent_of_their_budget_are_told_with_the_figures() {
        let budget = |tenant: &str, spent_today: f64, daily_budget: f64| TenantBudget {
            tenant: tenant.into(),
            spent_today,
            daily_budget,
        };
        let advice = budget_advice(&[
            budget("zeta", 9.5, 10.0),
            budget("under", 7.99, 10.0),
            budget("at", 8.0, 10.0),
            budget("none", 5.0, 0.0),
            budget("over", 12.0, 10.0),
        ]);
        let names: Vec<&str> = advice
            .iter()
            .map(|a| match a {
                Recommendation::TenantNearBudget { tenant, .. } => tenant.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["at", "over", "zeta"]);
        assert_eq!(
            advice[0],
            Recommendation::TenantNearBudget {
                tenant: "at".into(),
                spent_today: 8.0,
                daily_budget: 10.0,
                share: 0.8,
            }
        );
        let message = advice[2].message();
        assert!(
            message.contains("tenant zeta spent 9.5000 of its daily budget 10 today (95%)"),
            "{message}"
        );
    }

    fn pool(name: &str, price: f64) -> PoolSpec {
        let mut spec = PoolSpec::fixed(name, ProviderKind::Local, 2);
        spec.cost_per_hour = price;
        spec
    }

    fn attempts(
        tenant: &str,
        queue: &str,
        pool: &str,
        n: u64,
        secs: f64,
        price: f64,
    ) -> AttemptTotals {
        AttemptTotals {
            tenant: tenant.into(),
            queue: queue.into(),
            pool: pool.into(),
            attempts: n,
            worker_seconds: secs,
            cost: cost_of(secs, price),
        }
    }

    fn held(pool: &str, secs: f64, busy: f64, price: f64) -> PoolUsage {
        PoolUsage {
            pool: pool.into(),
            hour_start_ms: 0,
            worker_seconds: secs,
            busy_seconds: busy,
            cost: cost_of(secs, price),
            at_max_waiting_seconds: 0.0,
        }
    }

    #[test]
    fn cost_is_worker_seconds_times_the_hourly_price() {
        for (secs, price, cost) in [
            (3600.0, 2.0, 2.0),
            (1800.0, 2.0, 1.0),
            (90.0, 0.4, 0.01),
            (0.0, 5.0, 0.0),
            (100.0, 0.0, 0.0),
        ] {
            assert!(
                (cost_of(secs, price) - cost).abs() < 1e-12,
                "{secs} s at {price}/h"
            );
        }
        assert_eq!(hour_start(HOUR_MS * 5 + 17), HOUR_MS * 5);
        assert_eq!(hour_start(HOUR_MS * 5), HOUR_MS * 5);
    }

    #[test]
    fn a_report_groups_job_time_and_adds_held_time_by_pool() {
        let rows = [
            attempts("acme", "default", "small", 3, 600.0, 1.0),
            attempts("acme", "nightly", "big", 1, 3600.0, 4.0),
            attempts("beta", "default", "small", 2, 1200.0, 1.0),
        ];
        let usage = [
            held("small", 3600.0, 1800.0, 1.0),
            held("small", 3600.0, 0.0, 1.0),
            held("big", 3600.0, 3600.0, 4.0),
        ];
        let specs = [pool("small", 1.0), pool("big", 4.0), pool("spare", 0.5)];

        let by_tenant = report(GroupBy::Tenant, 0, HOUR_MS * 2, &rows, &usage, &specs);
        let names: Vec<_> = by_tenant.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["acme", "beta"]);
        assert_eq!(by_tenant.rows[0].attempts, 4);
        assert!((by_tenant.rows[0].job_cost - (600.0 / 3600.0 + 4.0)).abs() < 1e-9);
        assert_eq!(by_tenant.rows[0].held_cost, None);
        assert!((by_tenant.job_cost - (1800.0 / 3600.0 + 4.0)).abs() < 1e-9);
        assert!((by_tenant.held_cost - 6.0).abs() < 1e-9);

        let by_pool = report(GroupBy::Pool, 0, HOUR_MS * 2, &rows, &usage, &specs);
        let names: Vec<_> = by_pool.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["big", "small", "spare"]);
        let small = &by_pool.rows[1];
        assert_eq!(small.attempts, 5);
        assert_eq!(small.held_worker_seconds, Some(7200.0));
        assert_eq!(small.held_cost, Some(2.0));
        assert_eq!(small.idle_share, Some(0.75));
        assert_eq!(by_pool.rows[2].held_worker_seconds, Some(0.0));
        assert_eq!(by_pool.rows[2].idle_share, None);

        let by_queue = report(GroupBy::Queue, 0, HOUR_MS, &rows, &usage, &specs);
        let names: Vec<_> = by_queue.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["nightly", "default"]);
    }

    #[test]
    fn recommendation_table() {
        let mut at_max = held("busy", 3600.0, 3500.0, 1.0);
        at_max.at_max_waiting_seconds = 600.0;
        let mut big = pool("big", 4.0);
        big.template.capabilities.cpu_cores = 8;
        // Cheapest of all, but too small to run anyone's jobs.
        let mut tiny = pool("tiny", 0.1);
        tiny.template.capabilities.cpu_cores = 1;
        let specs = [
            pool("idle", 1.0),
            pool("unused", 1.0),
            pool("busy", 1.0),
            big,
            tiny,
            pool("small", 2.0),
        ];
        let usage = [
            held("idle", 3600.0, 1000.0, 1.0),
            held("unused", 7200.0, 0.0, 1.0),
            at_max,
            held("big", 3600.0, 3600.0, 4.0),
            held("small", 30.0, 0.0, 2.0),
        ];
        let rows = [
            attempts("t", "q", "idle", 4, 1000.0, 1.0),
            attempts("t", "q", "busy", 40, 3500.0, 1.0),
            attempts("t", "q", "small", 1, 10.0, 2.0),
            attempts("t", "q", "big", 10, 3600.0, 4.0),
        ];
        let advice = recommend(&rows, &held_by_pool(&usage), &specs, 3600.0);
        let kinds: Vec<String> = advice
            .iter()
            .map(|a| match a {
                Recommendation::UnusedPool { pool, .. } => format!("unused {pool}"),
                Recommendation::MostlyIdle { pool, .. } => format!("idle {pool}"),
                Recommendation::RaiseMax { pool, .. } => format!("max {pool}"),
                Recommendation::CheaperPoolFits {
                    pool, cheaper_pool, ..
                } => format!("{pool} -> {cheaper_pool}"),
                Recommendation::TenantNearBudget { tenant, .. } => format!("budget {tenant}"),
            })
            .collect();
        // "small" held too little for idle advice; its jobs fit the cheaper pools of the
        // same template (1.0/h: "busy" wins the tie by name), not "tiny" (1 core).
        assert_eq!(
            kinds,
            ["max busy", "idle idle", "small -> busy", "unused unused"]
        );
        let Recommendation::MostlyIdle {
            idle_share,
            idle_cost,
            ..
        } = &advice[1]
        else {
            panic!("{advice:?}")
        };
        assert!((idle_share - 2600.0 / 3600.0).abs() < 1e-9);
        assert!((idle_cost - 2600.0 / 3600.0).abs() < 1e-9);
        let Recommendation::CheaperPoolFits { saving, .. } = &advice[2] else {
            panic!("{advice:?}")
        };
        assert!((saving - cost_of(10.0, 1.0)).abs() < 1e-12);
        assert_eq!(
            advice[1].message(),
            "pool idle was idle 72% of its 1.000 worker-hours (0.278 busy), 0.7222 spent idle: lower its size (2)"
        );
        assert_eq!(
            advice[0].message(),
            "pool busy was at its max (2) with jobs waiting for 600s of 3600s (17%): raise its size"
        );
        let mut dynamic = pool("auto", 1.0);
        dynamic.kind = PoolKind::Dynamic;
        dynamic.min = 1;
        dynamic.idle_buffer = 2;
        let advice = recommend(
            &[],
            &held_by_pool(&[held("auto", 3600.0, 0.0, 1.0)]),
            &[dynamic],
            3600.0,
        );
        assert_eq!(
            advice[0].message(),
            "pool auto ran no job but held 1.000 worker-hours costing 1.0000: remove it or lower its min (or size) to 0"
        );
        let advice = recommend(
            &[attempts("t", "q", "auto", 1, 600.0, 1.0)],
            &held_by_pool(&[held("auto", 3600.0, 600.0, 1.0)]),
            &[{
                let mut dynamic = pool("auto", 1.0);
                dynamic.kind = PoolKind::Dynamic;
                dynamic.idle_buffer = 2;
                dynamic
            }],
            3600.0,
        );
        assert!(
            advice[0]
                .message()
                .ends_with("lower idle_buffer (2), min (0) or idle_timeout (300s)"),
            "{}",
            advice[0].message()
        );
    }

    #[test]
    fn a_template_without_a_label_or_resource_does_not_cover() {
        let mut labelled = pool("linux", 2.0);
        labelled.template.labels.insert("os".into(), "linux".into());
        let plain = pool("plain", 1.0);
        assert!(!template_covers(&plain, &labelled));
        assert!(template_covers(&labelled, &plain));
        let mut docker = pool("docker", 2.0);
        docker.template.capabilities.docker_enabled = true;
        assert!(!template_covers(&plain, &docker));
    }

    #[test]
    fn group_by_parses_and_names_the_field() {
        assert_eq!("tenant".parse::<GroupBy>().unwrap(), GroupBy::Tenant);
        assert_eq!("queue".parse::<GroupBy>().unwrap(), GroupBy::Queue);
        assert_eq!("pool".parse::<GroupBy>().unwrap(), GroupBy::Pool);
        assert_eq!("team".parse::<GroupBy>().unwrap_err().field, "by");
    }

    proptest! {
        /// However the attempts are grouped, the rows add up to the report's job cost, and
        /// the idle share is always within [0, 1].
        #[test]
        fn rows_add_up_to_the_total(
            rows in prop::collection::vec(
                (0..3usize, 0..3usize, 0..3usize, 1..50u64, 0.0..10_000.0f64, 0.0..10.0f64),
                0..30,
            ),
            usage in prop::collection::vec((0..3usize, 0.0..10_000.0f64, 0.0..1.5f64), 0..10),
        ) {
            let names = ["a", "b", "c"];
            let rows: Vec<AttemptTotals> = rows
                .into_iter()
                .map(|(t, q, p, n, secs, price)| attempts(names[t], names[q], names[p], n, secs, price))
                .collect();
            let usage: Vec<PoolUsage> = usage
                .into_iter()
                .map(|(p, secs, busy)| held(names[p], secs, secs * busy, 1.0))
                .collect();
            for by in [GroupBy::Tenant, GroupBy::Pool, GroupBy::Queue] {
                let report = report(by, 0, HOUR_MS, &rows, &usage, &[]);
                let sum: f64 = report.rows.iter().map(|r| r.job_cost).sum();
                prop_assert!((sum - report.job_cost).abs() < 1e-6);
                let attempts: u64 = report.rows.iter().map(|r| r.attempts).sum();
                prop_assert_eq!(attempts, rows.iter().map(|r| r.attempts).sum::<u64>());
                for row in &report.rows {
                    if let Some(share) = row.idle_share {
                        prop_assert!((0.0..=1.0).contains(&share));
                    }
                }
            }
        }
    }
}
