//! Synthetic traces: `hodei simulate generate --profile ci-day|bursty|steady`.
//!
//! The workday model (`ci-day`), over 24 hours from 00:00 UTC:
//! - arrivals follow the office day: a trickle at night (5% of the peak rate), a ramp from
//!   07:00 to 09:00, the peak from 09:00 to 17:00 with a lunch dip to 60% from 12:00 to
//!   13:00, an evening tail (40% until 20:00), then 8% until midnight;
//! - they come in pipelines, as merges do: each arrival starts 1 + a geometric number of
//!   jobs (mean 6) submitted within the next 60 s;
//! - run times are heavy-tailed: log-normal with a median of 70 s (sigma 1.0, so a mean of
//!   about 115 s and a long tail), at least 5 s and at most 3 h;
//! - tenants are not alike: their activity follows a Zipf law (exponent 0.8); their tiers
//!   cycle platinum, gold, silver, bronze (see [`tenant_tier`]);
//! - SLA classes: 3% critical (priority 100), 12% high (priority 50), 55% medium, 20% low,
//!   10% best effort; 70% of jobs ask 2 cores, 20% 4 and 10% 1, with 2 GiB per core; 5%
//!   exit with code 1.
//!
//! `bursty`: a steady trickle (20% of jobs) plus bursts of 50 to 300 jobs within 2 minutes,
//! at random times of the day. `steady`: Poisson arrivals at a constant rate over the day.
//! Everything else as `ci-day`. The same seed gives the same trace on every machine.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::trace::TraceJob;

const DAY_S: f64 = 86_400.0;

/// A workload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    CiDay,
    Bursty,
    Steady,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ci-day" => Ok(Self::CiDay),
            "bursty" => Ok(Self::Bursty),
            "steady" => Ok(Self::Steady),
            _ => Err(format!(
                "profile: {s:?} is not one of ci-day, bursty, steady"
            )),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub profile: Profile,
    pub tenants: u32,
    pub jobs: u32,
    pub seed: u64,
}

/// The name of the `i`th generated tenant (from 0): `t01`, `t02`, ...
pub fn tenant_name(i: u32) -> String {
    format!("t{:02}", i + 1)
}

/// The tier of the `i`th generated tenant: platinum, gold, silver, bronze, in turn.
pub fn tenant_tier(i: u32) -> &'static str {
    ["platinum", "gold", "silver", "bronze"][(i % 4) as usize]
}

/// The office-day arrival rate at `secs` after midnight, relative to the peak.
fn diurnal(secs: f64) -> f64 {
    let hour = secs / 3600.0;
    match hour {
        h if h < 7.0 => 0.05,
        h if h < 9.0 => 0.05 + 0.95 * (h - 7.0) / 2.0,
        h if h < 12.0 => 1.0,
        h if h < 13.0 => 0.6,
        h if h < 17.0 => 1.0,
        h if h < 20.0 => 0.4,
        _ => 0.08,
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn run_time(rng: &mut ChaCha8Rng) -> f64 {
    let secs = 70.0 * normal(rng).exp();
    (secs.clamp(5.0, 3.0 * 3600.0) * 1000.0).round() / 1000.0
}

fn geometric(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    let p = 1.0 / (1.0 + mean);
    let mut n = 0;
    while rng.r#gen::<f64>() > p && n < 200 {
        n += 1;
    }
    n
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -mean * rng.gen_range(f64::EPSILON..1.0f64).ln()
}

/// One job submitted at `at` seconds by `tenant`, the rest drawn.
fn job(rng: &mut ChaCha8Rng, at: f64, tenant: u32) -> TraceJob {
    let (sla, priority) = match rng.gen_range(0..100) {
        0..3 => ("critical", 100),
        3..15 => ("high", 50),
        15..70 => ("medium", 0),
        70..90 => ("low", 0),
        _ => ("best_effort", -10),
    };
    let cpu = match rng.gen_range(0..10) {
        0..7 => 2,
        7..9 => 4,
        _ => 1,
    };
    TraceJob {
        submit_offset_s: (at.min(DAY_S) * 1000.0).round() / 1000.0,
        tenant: tenant_name(tenant),
        queue: "default".to_owned(),
        priority,
        sla_class: sla.to_owned(),
        cpu,
        memory_mb: u64::from(cpu) * 2048,
        labels: BTreeMap::new(),
        run_s: run_time(rng),
        exit_code: i32::from(rng.gen_range(0..100) < 5),
    }
}

/// A tenant drawn by its Zipf weight.
fn tenant(rng: &mut ChaCha8Rng, cumulative: &[f64]) -> u32 {
    let total = cumulative.last().copied().unwrap_or(1.0);
    let x = rng.r#gen::<f64>() * total;
    let i = cumulative.partition_point(|c| *c < x);
    u32::try_from(i.min(cumulative.len() - 1)).unwrap_or(0)
}

/// Generates a trace, sorted by submission.
pub fn generate(params: Params) -> Vec<TraceJob> {
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let tenants = params.tenants.max(1);
    let mut cumulative = Vec::new();
    let mut sum = 0.0;
    for i in 0..tenants {
        sum += 1.0 / f64::from(i + 1).powf(0.8);
        cumulative.push(sum);
    }
    let wanted = params.jobs as usize;
    let mut jobs = Vec::with_capacity(wanted);
    match params.profile {
        Profile::CiDay => {
            while jobs.len() < wanted {
                // Rejection sampling of the pipeline's start from the office-day curve.
                let at = rng.gen_range(0.0..DAY_S);
                if rng.r#gen::<f64>() > diurnal(at) {
                    continue;
                }
                let who = tenant(&mut rng, &cumulative);
                let size = 1 + geometric(&mut rng, 5.0);
                for _ in 0..size {
                    if jobs.len() == wanted {
                        break;
                    }
                    let offset = rng.gen_range(0.0..60.0);
                    jobs.push(job(&mut rng, at + offset, who));
                }
            }
        }
        Profile::Bursty => {
            let trickle = wanted / 5;
            for _ in 0..trickle {
                let at = rng.gen_range(0.0..DAY_S);
                let who = tenant(&mut rng, &cumulative);
                jobs.push(job(&mut rng, at, who));
            }
            while jobs.len() < wanted {
                let at = rng.gen_range(0.0..DAY_S - 120.0);
                let size = rng.gen_range(50..=300);
                for _ in 0..size {
                    if jobs.len() == wanted {
                        break;
                    }
                    let who = tenant(&mut rng, &cumulative);
                    let offset = rng.gen_range(0.0..120.0);
                    jobs.push(job(&mut rng, at + offset, who));
                }
            }
        }
        Profile::Steady => {
            let mean_gap = DAY_S / wanted.max(1) as f64;
            let mut at = 0.0;
            while jobs.len() < wanted {
                at += exponential(&mut rng, mean_gap);
                let who = tenant(&mut rng, &cumulative);
                jobs.push(job(&mut rng, at.min(DAY_S), who));
            }
        }
    }
    jobs.sort_by(|a, b| a.submit_offset_s.total_cmp(&b.submit_offset_s));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_trace_and_the_count_asked() {
        for profile in [Profile::CiDay, Profile::Bursty, Profile::Steady] {
            let params = Params {
                profile,
                tenants: 10,
                jobs: 2000,
                seed: 7,
            };
            let a = generate(params);
            assert_eq!(a.len(), 2000);
            assert_eq!(a, generate(params));
            assert_ne!(a, generate(Params { seed: 8, ..params }));
            assert!(
                a.windows(2)
                    .all(|w| w[0].submit_offset_s <= w[1].submit_offset_s)
            );
            assert!(a.iter().all(|j| j.check().is_ok()));
        }
    }

    #[test]
    fn ci_day_follows_the_office_day_and_the_tail_is_heavy() {
        let jobs = generate(Params {
            profile: Profile::CiDay,
            tenants: 10,
            jobs: 20_000,
            seed: 1,
        });
        let in_hours = |from: f64, to: f64| {
            jobs.iter()
                .filter(|j| j.submit_offset_s >= from * 3600.0 && j.submit_offset_s < to * 3600.0)
                .count()
        };
        // 10:00-11:00 against 03:00-04:00: the peak is 20 times the night.
        assert!(in_hours(10.0, 11.0) > 10 * in_hours(3.0, 4.0));
        let mut runs: Vec<f64> = jobs.iter().map(|j| j.run_s).collect();
        runs.sort_by(f64::total_cmp);
        let median = runs[runs.len() / 2];
        let p99 = runs[runs.len() * 99 / 100];
        assert!((55.0..90.0).contains(&median), "{median}");
        assert!(p99 > 8.0 * median, "heavy tail: p99 {p99}, median {median}");
        let tenants: std::collections::BTreeSet<&str> =
            jobs.iter().map(|j| j.tenant.as_str()).collect();
        assert_eq!(tenants.len(), 10);
    }
}
