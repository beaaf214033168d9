//! What a simulation reports for one configuration, and the side-by-side table of several.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hodei_core::SlaClass;
use serde::Serialize;

/// Wait percentiles, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Waits {
    pub jobs: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Waits {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Nearest rank.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1]
        };
        Self {
            jobs: values.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            max: values[values.len() - 1],
        }
    }
}

/// Jobs of an SLA class started within its deadline.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SlaMet {
    pub jobs: usize,
    pub met: usize,
    pub ratio: f64,
    pub deadline_seconds: f64,
}

/// A tenant's share of starts while workers were scarce, against its weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Share {
    pub weight: u32,
    /// Its due share of the starts made while it had jobs waiting (weights of the tenants
    /// waiting at each start).
    pub expected_share: f64,
    pub actual_share: f64,
    /// actual - expected, in percentage points.
    pub deviation_pp: f64,
}

/// A pool's worker-seconds by state, cost and scaling.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolFigures {
    pub busy_worker_seconds: f64,
    pub idle_worker_seconds: f64,
    pub starting_worker_seconds: f64,
    pub cost: f64,
    pub peak_workers: u32,
    pub scale_ups: u32,
    pub scale_downs: u32,
}

/// A point of the plots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub queued: u32,
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
}

/// A scaling decision carried out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedScaling {
    pub t_s: f64,
    pub pool: String,
    pub action: String,
    pub count: u32,
    pub reason: String,
}

/// Scaling decisions carried out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Decisions {
    pub up: u32,
    pub down: u32,
}

/// Everything reported for one configuration; `-o json` prints these, one per config.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunReport {
    pub config: String,
    pub jobs: usize,
    /// Refused at submission: a full queue, or no pool could ever hold the job. The
    /// figures below are over the jobs admitted.
    pub refused: usize,
    pub refused_no_pool_fits: usize,
    /// Admitted but not started when the run stopped (a day after the last arrival).
    pub unstarted: usize,
    /// Virtual time from the start to the last job's end.
    pub span_seconds: f64,
    pub wait_seconds: Waits,
    pub wait_seconds_by_tenant: BTreeMap<String, Waits>,
    pub wait_seconds_by_sla_class: BTreeMap<String, Waits>,
    /// Jobs started within their class's deadline, of all jobs.
    pub sla_met_ratio: f64,
    pub sla_met_by_class: BTreeMap<String, SlaMet>,
    pub tenant_shares: BTreeMap<String, Share>,
    /// Largest |deviation| of a tenant's share, percentage points.
    pub max_share_deviation_pp: f64,
    /// Starts made while jobs of other tenants waited (what the shares are computed over).
    pub saturated_starts: u64,
    pub busy_worker_seconds: f64,
    pub idle_worker_seconds: f64,
    pub starting_worker_seconds: f64,
    pub cost: f64,
    pub cost_by_pool: BTreeMap<String, f64>,
    /// Run time priced at the pool it ran on.
    pub cost_by_tenant: BTreeMap<String, f64>,
    pub scaling_decisions: Decisions,
    pub peak_workers: u32,
    pub pools: BTreeMap<String, PoolFigures>,
    /// The first scaling decisions, with their reasons.
    pub decision_log: Vec<LoggedScaling>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// The trace's jobs (their index, sorted by submission) in the order the dispatcher
    /// assigned them.
    #[serde(skip)]
    pub start_order: Vec<usize>,
    #[serde(skip)]
    waits: Vec<f64>,
    #[serde(skip)]
    by_tenant: BTreeMap<String, Vec<f64>>,
    #[serde(skip)]
    by_class: BTreeMap<String, Vec<f64>>,
}

impl RunReport {
    pub fn new(config: &str) -> Self {
        Self {
            config: config.to_owned(),
            ..Self::default()
        }
    }

    /// All waits, sorted (for the wait distribution plot).
    pub fn sorted_waits(&self) -> Vec<f64> {
        let mut waits = self.waits.clone();
        waits.sort_by(f64::total_cmp);
        waits
    }

    pub(crate) fn add_wait(
        &mut self,
        tenant: &str,
        class: SlaClass,
        wait: f64,
        started: bool,
        deadline: f64,
    ) {
        self.waits.push(wait);
        self.by_tenant
            .entry(tenant.to_owned())
            .or_default()
            .push(wait);
        self.by_class
            .entry(class.as_str().to_owned())
            .or_default()
            .push(wait);
        if !started {
            self.unstarted += 1;
        }
        let met = self
            .sla_met_by_class
            .entry(class.as_str().to_owned())
            .or_default();
        met.jobs += 1;
        met.deadline_seconds = deadline;
        if started && wait <= deadline {
            met.met += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_pool(
        &mut self,
        name: &str,
        idle: f64,
        busy: f64,
        starting: f64,
        cost_per_hour: f64,
        peak: u32,
        ups: u32,
        downs: u32,
    ) {
        let cost = hodei_core::cost::cost_of(idle + busy + starting, cost_per_hour);
        self.idle_worker_seconds += idle;
        self.busy_worker_seconds += busy;
        self.starting_worker_seconds += starting;
        self.cost += cost;
        self.cost_by_pool.insert(name.to_owned(), cost);
        self.scaling_decisions.up += ups;
        self.scaling_decisions.down += downs;
        self.pools.insert(
            name.to_owned(),
            PoolFigures {
                busy_worker_seconds: busy,
                idle_worker_seconds: idle,
                starting_worker_seconds: starting,
                cost,
                peak_workers: peak,
                scale_ups: ups,
                scale_downs: downs,
            },
        );
    }

    pub(crate) fn set_shares(
        &mut self,
        weights: &BTreeMap<String, u32>,
        actual: &BTreeMap<String, f64>,
        expected: &BTreeMap<String, f64>,
        saturated_starts: u64,
    ) {
        let total_actual: f64 = actual.values().sum();
        let total_expected: f64 = expected.values().sum();
        self.saturated_starts = saturated_starts;
        for (tenant, weight) in weights {
            let share = |map: &BTreeMap<String, f64>, total: f64| {
                if total > 0.0 {
                    map.get(tenant).copied().unwrap_or(0.0) / total
                } else {
                    0.0
                }
            };
            let actual_share = share(actual, total_actual);
            let expected_share = share(expected, total_expected);
            let deviation_pp = (actual_share - expected_share) * 100.0;
            self.max_share_deviation_pp = self.max_share_deviation_pp.max(deviation_pp.abs());
            self.tenant_shares.insert(
                tenant.clone(),
                Share {
                    weight: *weight,
                    expected_share,
                    actual_share,
                    deviation_pp,
                },
            );
        }
    }

    pub(crate) fn finish(&mut self) {
        self.wait_seconds = Waits::of(self.waits.clone());
        self.wait_seconds_by_tenant = std::mem::take(&mut self.by_tenant)
            .into_iter()
            .map(|(k, v)| (k, Waits::of(v)))
            .collect();
        self.wait_seconds_by_sla_class = std::mem::take(&mut self.by_class)
            .into_iter()
            .map(|(k, v)| (k, Waits::of(v)))
            .collect();
        let mut met = 0;
        for class in self.sla_met_by_class.values_mut() {
            class.ratio = if class.jobs == 0 {
                1.0
            } else {
                class.met as f64 / class.jobs as f64
            };
            met += class.met;
        }
        let admitted = self.waits.len();
        self.sla_met_ratio = if admitted == 0 {
            1.0
        } else {
            met as f64 / admitted as f64
        };
    }
}

fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2}")
    } else if s < 1000.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.0}")
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The figures of several configurations side by side, one column each.
pub fn table(reports: &[RunReport]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&RunReport) -> String| {
        rows.push((label.to_owned(), reports.iter().map(f).collect()));
    };
    row("config", &|r| r.config.clone());
    row("jobs", &|r| r.jobs.to_string());
    row("refused / unstarted", &|r| {
        format!("{} / {}", r.refused, r.unstarted)
    });
    row("wait p50 (s)", &|r| fmt_secs(r.wait_seconds.p50));
    row("wait p95 (s)", &|r| fmt_secs(r.wait_seconds.p95));
    row("wait p99 (s)", &|r| fmt_secs(r.wait_seconds.p99));
    row("SLA met", &|r| pct(r.sla_met_ratio));
    for class in SlaClass::ALL {
        let name = class.as_str();
        if reports
            .iter()
            .all(|r| !r.sla_met_by_class.contains_key(name))
        {
            continue;
        }
        row(&format!("  {name}: met / p95 (s)"), &|r| match (
            r.sla_met_by_class.get(name),
            r.wait_seconds_by_sla_class.get(name),
        ) {
            (Some(met), Some(w)) => format!("{} / {}", pct(met.ratio), fmt_secs(w.p95)),
            _ => "-".to_owned(),
        });
    }
    row("busy worker-s", &|r| {
        format!("{:.0}", r.busy_worker_seconds)
    });
    row("idle worker-s", &|r| {
        format!("{:.0}", r.idle_worker_seconds)
    });
    row("starting worker-s", &|r| {
        format!("{:.0}", r.starting_worker_seconds)
    });
    row("cost", &|r| format!("{:.2}", r.cost));
    row("scaling decisions (up/down)", &|r| {
        format!("{} / {}", r.scaling_decisions.up, r.scaling_decisions.down)
    });
    row("peak workers", &|r| r.peak_workers.to_string());
    row("max share deviation (pp), over", &|r| {
        format!(
            "{:.2}, {} saturated starts",
            r.max_share_deviation_pp, r.saturated_starts
        )
    });
    let tenants: std::collections::BTreeSet<&String> = reports
        .iter()
        .flat_map(|r| r.tenant_shares.keys())
        .collect();
    for tenant in tenants {
        row(&format!("  {tenant}: share / due, p95 (s)"), &|r| match (
            r.tenant_shares.get(tenant),
            r.wait_seconds_by_tenant.get(tenant),
        ) {
            (Some(s), Some(w)) => format!(
                "{:.1}% / {:.1}%, {}",
                s.actual_share * 100.0,
                s.expected_share * 100.0,
                fmt_secs(w.p95)
            ),
            _ => "-".to_owned(),
        });
    }
    let pools: std::collections::BTreeSet<&String> =
        reports.iter().flat_map(|r| r.pools.keys()).collect();
    for pool in pools {
        row(&format!("  pool {pool}: cost, peak"), &|r| {
            r.pools.get(pool).map_or("-".to_owned(), |p| {
                format!("{:.2}, {}", p.cost, p.peak_workers)
            })
        });
    }
    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| rows.iter().map(|(_, v)| v[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (label, values) in &rows {
        let _ = write!(out, "{label:<label_width$}");
        for (value, width) in values.iter().zip(&widths) {
            let _ = write!(out, "  {value:>width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let w = Waits::of((1..=100).map(f64::from).collect());
        assert_eq!((w.p50, w.p95, w.p99, w.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Waits::of(vec![3.0]).p99, 3.0);
        assert_eq!(Waits::of(Vec::new()).jobs, 0);
    }
}
