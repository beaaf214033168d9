//! The autoscaler's decisions: how many workers a pool should have, and what to do about it.
//!
//! [`decide`] is a pure function of the pool's spec, what the pool has now ([`PoolView`]),
//! the demand on it ([`Demand`]), its recent decisions ([`ScalingHistory`]) and the time.
//! [`attribute_demand`] splits queued jobs over pools, cheapest first, so that a pool at its
//! maximum spills over to the next one that fits. The pool manager in `hodei-modules` only
//! gathers the inputs and carries the decision out.
//!
//! Rules every decision keeps (property-tested below):
//! - starting workers count as supply, so a burst is never provisioned twice;
//! - a scale-up never takes the pool above its max, a scale-down never below its min;
//! - only idle workers are ever drained, never busy ones;
//! - the scale-up cooldown, the scale-down cooldown and the decisions-per-minute cap hold,
//!   except to repair a pool below its minimum or above its maximum.

use std::time::Duration;

use crate::job::Requirements;
use crate::matching;
use crate::pool::{PolicyKind, PoolKind, PoolSpec};
use crate::worker::{Labels, WorkerCapabilities, WorkerId};

/// An idle worker of the pool and how long it has been idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleSince {
    pub id: WorkerId,
    pub idle_for: Duration,
}

/// What a pool has now. Unhealthy and draining workers are not supply, but they still
/// exist: they count against the pool's maximum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    pub idle: Vec<IdleSince>,
    /// Idle workers known only by count: supply, never drained. The simulator names only
    /// the idle workers a decision could drain (see [`drainable_idle`]).
    pub idle_counted: u32,
    pub busy: u32,
    /// Being created, or created and not yet connected.
    pub starting: u32,
    /// Registered but not healthy (missed heartbeats): dead, or only slow.
    pub unhealthy: u32,
    /// Drained or retired, on their way out.
    pub leaving: u32,
}

impl PoolView {
    /// `5 workers (2 idle, 2 busy, 1 starting)`: what a reason calls supply, spelled out.
    fn supply_text(&self) -> String {
        format!(
            "{} workers ({} idle, {} busy, {} starting)",
            self.supply(),
            self.idle_count(),
            self.busy,
            self.starting
        )
    }

    pub fn supply(&self) -> u32 {
        self.idle_count()
            .saturating_add(self.busy)
            .saturating_add(self.starting)
    }

    /// Idle workers, named or counted.
    pub fn idle_count(&self) -> u32 {
        u32::try_from(self.idle.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.idle_counted)
    }
}

/// Which idle workers [`decide`] could drain at `now_ms`, given the pool's supply: none at or
/// below the minimum (it never wants fewer), every one above the maximum, else those idle
/// at least `idle_timeout`. A caller that names these and counts the others
/// ([`PoolView::idle_counted`]) gets the same decision as one naming them all.
pub fn drainable_idle(spec: &PoolSpec, supply: u32, now_ms: u64) -> Option<Duration> {
    let (min, max) = bounds(spec, now_ms);
    if supply <= min {
        None
    } else if supply > max {
        Some(Duration::ZERO)
    } else {
        Some(Duration::from_secs(spec.idle_timeout))
    }
}

/// The demand on a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Queued jobs this pool should take (see [`attribute_demand`]).
    pub queued: u32,
    /// Every queued job that fits this pool, its share and the rest (cheaper pools', or
    /// waiting for room): reasons show both, so a share is not read as the whole queue.
    pub queued_fitting: u32,
    /// Jobs for this pool arriving per second, recently.
    pub arrivals_per_sec: f64,
    /// Mean seconds a job runs on this pool, recently.
    pub mean_run_secs: f64,
    /// `predictive`: jobs per second the pool's arrival profile expects at the lead time,
    /// when it has seen that hour (see [`crate::pool_pass::ArrivalProfile`]).
    pub forecast_arrivals_per_sec: Option<f64>,
}

/// When the pool last scaled, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalingHistory {
    pub last_scale_up_ms: Option<u64>,
    pub last_scale_down_ms: Option<u64>,
    /// Times of the scaling decisions of the last minute (older ones may be present).
    pub recent_ms: Vec<u64>,
}

impl ScalingHistory {
    /// Remembers a decision that changed the pool.
    pub fn record(&mut self, action: &ScaleAction, now_ms: u64) {
        match action {
            ScaleAction::Hold => return,
            ScaleAction::Up(_) => self.last_scale_up_ms = Some(now_ms),
            ScaleAction::Down(_) => self.last_scale_down_ms = Some(now_ms),
        }
        self.recent_ms
            .retain(|at| now_ms.saturating_sub(*at) < 60_000);
        self.recent_ms.push(now_ms);
    }

    fn decisions_in_last_minute(&self, now_ms: u64) -> usize {
        self.recent_ms
            .iter()
            .filter(|at| now_ms.saturating_sub(**at) < 60_000)
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleAction {
    Hold,
    /// Provision this many workers.
    Up(u32),
    /// Drain and terminate these idle workers.
    Down(Vec<WorkerId>),
}

impl ScaleAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Up(_) => "up",
            Self::Down(_) => "down",
        }
    }
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: ScaleAction,
    /// Workers the pool should have.
    pub desired: u32,
    /// Workers it has, starting ones included.
    pub supply: u32,
    pub reason: String,
}

/// The pool's bounds at `now_ms`: schedules raise the minimum, never above the maximum.
pub fn bounds(spec: &PoolSpec, now_ms: u64) -> (u32, u32) {
    let max = spec.max_workers();
    let scheduled = spec
        .scaling
        .schedule
        .iter()
        .filter(|window| window.contains(now_ms))
        .map(|window| window.min)
        .max()
        .unwrap_or(0);
    (spec.min_workers().max(scheduled).min(max), max)
}

fn div_ceil_f(value: f64) -> u32 {
    if !value.is_finite() || value <= 0.0 {
        return 0;
    }
    // Saturating float-to-int conversion; the result is clamped to the pool's max anyway.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let workers = value.ceil().min(f64::from(u32::MAX)) as u32;
    workers
}

/// Workers the demand asks for, before bounds: busy ones plus what the policy wants for the
/// queue, plus the idle buffer.
fn wanted(spec: &PoolSpec, view: &PoolView, demand: &Demand) -> (u32, String) {
    let policy = &spec.scaling;
    let busy = view.busy;
    let queued = if demand.queued_fitting > demand.queued {
        format!(
            "{} queued here (this pool's share of {} queued jobs that fit it)",
            demand.queued, demand.queued_fitting
        )
    } else {
        format!("{} queued", demand.queued)
    };
    let (need, why) = match policy.policy {
        PolicyKind::QueueDepth => {
            let for_queue = demand.queued.div_ceil(policy.jobs_per_worker);
            (
                busy.saturating_add(for_queue),
                format!("{busy} busy + {queued}"),
            )
        }
        PolicyKind::Utilisation => {
            let load = f64::from(busy.saturating_add(demand.queued));
            (
                div_ceil_f(load / policy.target_utilisation),
                format!(
                    "{busy} busy + {queued} at {:.0}% target utilisation",
                    policy.target_utilisation * 100.0
                ),
            )
        }
        PolicyKind::ArrivalRate => {
            let expected = div_ceil_f(demand.arrivals_per_sec * demand.mean_run_secs);
            let queue = busy.saturating_add(demand.queued);
            (
                expected.max(queue),
                format!(
                    "{:.2} jobs/s x {:.1} s = {expected} expected, {queue} busy or queued",
                    demand.arrivals_per_sec, demand.mean_run_secs
                ),
            )
        }
        PolicyKind::Step => {
            let step = policy
                .steps
                .iter()
                .filter(|step| demand.queued >= step.queued)
                .max_by_key(|step| step.queued);
            match step {
                _ if demand.queued == 0 => (busy, format!("{busy} busy, nothing queued")),
                None => (
                    busy.saturating_add(view.starting),
                    format!(
                        "{busy} busy + {} starting, {queued}: below the first step",
                        view.starting
                    ),
                ),
                Some(step) => (
                    busy.saturating_add(view.starting).saturating_add(step.add),
                    format!(
                        "{busy} busy + {} starting + step of {} for {queued} (>= {})",
                        view.starting, step.add, step.queued
                    ),
                ),
            }
        }
        PolicyKind::Predictive => {
            let queue = busy.saturating_add(demand.queued.div_ceil(policy.jobs_per_worker));
            match demand.forecast_arrivals_per_sec {
                Some(rate) => {
                    let expected = div_ceil_f(rate * demand.mean_run_secs);
                    (
                        expected.max(queue),
                        format!(
                            "forecast {rate:.2} jobs/s x {:.1} s = {expected} expected, {busy} busy + {queued}",
                            demand.mean_run_secs
                        ),
                    )
                }
                None => (
                    queue,
                    format!("{busy} busy + {queued} (no forecast for this hour yet)"),
                ),
            }
        }
    };
    if spec.idle_buffer > 0 {
        (
            need.saturating_add(spec.idle_buffer),
            format!("{why} + idle buffer {}", spec.idle_buffer),
        )
    } else {
        (need, why)
    }
}

/// Seconds left of a cooldown that started at `since_ms`, if any.
fn cooldown_left(since_ms: Option<u64>, cooldown_secs: u64, now_ms: u64) -> Option<u64> {
    let since = since_ms?;
    let end = since.saturating_add(cooldown_secs.saturating_mul(1000));
    (now_ms < end).then(|| (end - now_ms).div_ceil(1000))
}

/// The decision for one pool. See the module docs for the rules it keeps.
pub fn decide(
    spec: &PoolSpec,
    view: &PoolView,
    demand: &Demand,
    history: &ScalingHistory,
    now_ms: u64,
) -> Decision {
    let (min, max) = bounds(spec, now_ms);
    let supply = view.supply();
    let have = view.supply_text();
    let (desired, why) = match spec.kind {
        PoolKind::Static => (min, format!("static pool of {min}")),
        PoolKind::Dynamic => {
            let (want, why) = wanted(spec, view, demand);
            (
                want.clamp(min, max),
                format!("{why} -> {want}, bounds [{min}, {max}]"),
            )
        }
    };
    let decision = |action, reason: String| Decision {
        action,
        desired,
        supply,
        reason,
    };
    let policy = &spec.scaling;
    let rate_capped = history.decisions_in_last_minute(now_ms)
        >= usize::try_from(policy.max_decisions_per_minute).unwrap_or(usize::MAX);

    if supply < desired {
        // The maximum bounds every worker that exists, not only supply: a slow worker that
        // recovers or one still leaving would otherwise take the pool past it. Below the
        // minimum an unhealthy worker is presumed dead and replaced; if it comes back, the
        // pool's excess idle workers above the maximum go at once.
        let room = max.saturating_sub(supply + view.unhealthy + view.leaving);
        let repair = min
            .saturating_sub(supply)
            .min(max.saturating_sub(supply + view.leaving));
        let add = (desired - supply).min(room.max(repair));
        if add == 0 {
            return decision(
                ScaleAction::Hold,
                format!(
                    "{have}, {desired} needed, waiting: {} unhealthy and {} leaving count \
                     against the maximum of {max}",
                    view.unhealthy, view.leaving
                ),
            );
        }
        let up_cooldown = cooldown_left(history.last_scale_up_ms, policy.scale_up_cooldown, now_ms);
        let blocked = match (up_cooldown, rate_capped) {
            (Some(left), _) => Some(format!("scale-up cooldown, {left} s left")),
            (None, true) => Some(format!(
                "{} decisions in the last minute, the most allowed",
                policy.max_decisions_per_minute
            )),
            (None, false) => None,
        };
        return match blocked {
            None => decision(ScaleAction::Up(add), {
                let held = view.unhealthy + view.leaving;
                if add < desired - supply {
                    format!(
                        "{have}, {desired} needed: {why}; {add} added, {held} unhealthy or \
                         leaving count against the maximum of {max}"
                    )
                } else {
                    format!("{have}, {desired} needed: {why}")
                }
            }),
            // Below the minimum is a repair (a worker died): no cooldown applies.
            Some(_) if repair > 0 => decision(
                ScaleAction::Up(repair),
                format!("{have}, below the minimum of {min}"),
            ),
            Some(blocked) => decision(
                ScaleAction::Hold,
                format!("{have}, {desired} needed, waiting: {blocked}"),
            ),
        };
    }
    if supply > desired {
        let excess = usize::try_from(supply - desired).unwrap_or(usize::MAX);
        let above_max = usize::try_from(supply.saturating_sub(max)).unwrap_or(usize::MAX);
        // Above the maximum (the pool was made smaller): idle workers go now.
        let now = above_max.min(view.idle.len());
        let timeout = Duration::from_secs(spec.idle_timeout);
        let down_cooldown = cooldown_left(
            history.last_scale_down_ms.max(history.last_scale_up_ms),
            policy.scale_down_cooldown,
            now_ms,
        );
        let (later, waiting) = match (down_cooldown, rate_capped) {
            (Some(left), _) => (0, Some(format!("scale-down cooldown, {left} s left"))),
            (None, true) => (0, Some("decision cap reached".to_owned())),
            (None, false) => {
                // Longest idle first, so the expired ones past the first `now` are those
                // beyond `now` among all the expired.
                let expired = view
                    .idle
                    .iter()
                    .filter(|worker| worker.idle_for >= timeout)
                    .count();
                (expired.saturating_sub(now).min(excess - now), None)
            }
        };
        let drained = longest_idle(&view.idle, now + later);
        if drained.is_empty() {
            let because = waiting.unwrap_or_else(|| {
                if view.idle_count() == 0 {
                    "no idle worker to drain (busy workers are never drained)".to_owned()
                } else {
                    format!("idle workers wait {} s (idle_timeout)", spec.idle_timeout)
                }
            });
            return decision(
                ScaleAction::Hold,
                format!("{have}, {desired} needed ({why}): {because}"),
            );
        }
        let count = drained.len();
        let reason = if now > 0 {
            format!("{have}, above the maximum of {max}: draining {count} idle")
        } else {
            format!(
                "{have}, {desired} needed ({why}): draining {count} idle past {} s",
                spec.idle_timeout
            )
        };
        return decision(ScaleAction::Down(drained), reason);
    }
    decision(ScaleAction::Hold, format!("{have} as needed: {why}"))
}

/// The `count` workers idle longest, longest first; the id breaks ties so the choice is
/// deterministic. Only those are ordered: a pass over hundreds of idle workers that drains
/// a few sorts a few.
fn longest_idle(idle: &[IdleSince], count: usize) -> Vec<WorkerId> {
    let order =
        |a: &&IdleSince, b: &&IdleSince| b.idle_for.cmp(&a.idle_for).then_with(|| a.id.cmp(&b.id));
    let count = count.min(idle.len());
    if count == 0 {
        return Vec::new();
    }
    let mut idle: Vec<&IdleSince> = idle.iter().collect();
    if count < idle.len() {
        idle.select_nth_unstable_by(count - 1, order);
        idle.truncate(count);
    }
    idle.sort_unstable_by(order);
    idle.into_iter().map(|worker| worker.id.clone()).collect()
}

/// A pool as a home for queued jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolCandidate {
    pub name: String,
    pub cost_per_hour: f64,
    /// What its workers offer (the template's capabilities).
    pub capabilities: WorkerCapabilities,
    /// The template's labels plus `pool=<name>`.
    pub labels: Labels,
    /// Jobs it can still take now: its max minus its busy workers.
    pub room: u32,
}

impl PoolCandidate {
    pub fn from_spec(spec: &PoolSpec, busy: u32, now_ms: u64) -> Self {
        let mut labels = spec.template.labels.clone();
        labels
            .entry(matching::POOL_LABEL.to_owned())
            .or_insert_with(|| spec.name.clone());
        Self {
            name: spec.name.clone(),
            cost_per_hour: spec.cost_per_hour,
            capabilities: spec.template.capabilities.clone(),
            labels,
            room: bounds(spec, now_ms).1.saturating_sub(busy),
        }
    }
}

/// Cheap capacity first: by price, then by name so the order is total.
fn cheapest_first(a: &PoolCandidate, b: &PoolCandidate) -> std::cmp::Ordering {
    a.cost_per_hour
        .total_cmp(&b.cost_per_hour)
        .then_with(|| a.name.cmp(&b.name))
}

/// Splits queued jobs over pools: each job goes to the cheapest pool that fits it and has
/// room (ties by name); when every fitting pool is full it is counted nowhere, since no pool
/// could add a worker for it. Returns the count per pool, in the order of `pools`.
pub fn attribute_demand<'a>(
    pools: &[PoolCandidate],
    jobs: impl IntoIterator<Item = &'a Requirements>,
) -> Vec<u32> {
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|a, b| cheapest_first(&pools[*a], &pools[*b]));
    let mut room: Vec<u32> = pools.iter().map(|pool| pool.room).collect();
    let mut counts = vec![0u32; pools.len()];
    for job in jobs {
        let home = order.iter().copied().find(|&i| {
            room[i] > 0 && matching::fits(job, &pools[i].capabilities, &pools[i].labels).is_ok()
        });
        if let Some(i) = home {
            room[i] -= 1;
            counts[i] += 1;
        }
    }
    counts
}

/// For each pool, how many of `jobs` fit it at all, whatever its room.
pub fn queued_that_fit<'a>(
    pools: &[PoolCandidate],
    jobs: impl IntoIterator<Item = &'a Requirements>,
) -> Vec<u32> {
    let mut counts = vec![0u32; pools.len()];
    for job in jobs {
        for (count, pool) in counts.iter_mut().zip(pools) {
            if matching::fits(job, &pool.capabilities, &pool.labels).is_ok() {
                *count = count.saturating_add(1);
            }
        }
    }
    counts
}

/// The cheapest pool that fits a job, whether or not it has room: where its arrival counts.
pub fn home_pool<'a>(pools: &'a [PoolCandidate], job: &Requirements) -> Option<&'a str> {
    pools
        .iter()
        .filter(|pool| matching::fits(job, &pool.capabilities, &pool.labels).is_ok())
        .min_by(|a, b| cheapest_first(a, b))
        .map(|pool| pool.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{ScalingPolicy, ScheduleWindow};
    use crate::worker::ProviderKind;
    use proptest::prelude::*;

    const NOW: u64 = 1_795_392_000_000 + 3 * 3_600_000; // a Monday, 03:00 UTC

    fn dynamic(min: u32, max: u32) -> PoolSpec {
        PoolSpec {
            idle_timeout: 30,
            ..PoolSpec::autoscaled("burst", ProviderKind::Local, min, max)
        }
    }

    fn idle(n: u32, secs: u64) -> Vec<IdleSince> {
        (0..n)
            .map(|i| IdleSince {
                id: WorkerId::new(format!("w-{i}")).unwrap(),
                idle_for: Duration::from_secs(secs),
            })
            .collect()
    }

    fn view(idle_n: u32, idle_secs: u64, busy: u32, starting: u32) -> PoolView {
        PoolView {
            idle: idle(idle_n, idle_secs),
            busy,
            starting,
            ..PoolView::default()
        }
    }

    fn queued(n: u32) -> Demand {
        Demand {
            queued: n,
            ..Demand::default()
        }
    }

    fn up(n: u32) -> ScaleAction {
        ScaleAction::Up(n)
    }

    #[test]
    fn unhealthy_and_leaving_workers_count_against_the_maximum() {
        let spec = dynamic(0, 8);
        let history = ScalingHistory::default();
        // 6 busy, 1 unhealthy (slow, or dead), 1 leaving, 20 queued: the pool is at 8.
        let full = PoolView {
            unhealthy: 1,
            leaving: 1,
            ..view(0, 0, 6, 0)
        };
        let decision = decide(&spec, &full, &queued(20), &history, NOW);
        assert_eq!(decision.action, ScaleAction::Hold, "{decision:?}");
        assert!(
            decision.reason.contains("1 unhealthy and 1 leaving"),
            "{}",
            decision.reason
        );
        // With one of them gone there is room for exactly one more.
        let room = PoolView { leaving: 0, ..full };
        let decision = decide(&spec, &room, &queued(20), &history, NOW);
        assert_eq!(decision.action, up(1), "{decision:?}");
        assert!(decision.reason.contains("1 added"), "{}", decision.reason);
        // Below the minimum an unhealthy worker is replaced (presumed dead), a leaving one
        // still counts.
        let spec = dynamic(4, 4);
        let decision = decide(
            &spec,
            &PoolView {
                unhealthy: 1,
                leaving: 1,
                ..view(2, 0, 0, 0)
            },
            &queued(0),
            &history,
            NOW,
        );
        assert_eq!(decision.action, up(1), "{decision:?}");
    }

    #[test]
    fn reasons_tell_the_pools_share_from_the_whole_queue_and_starting_from_busy() {
        let spec = dynamic(0, 10);
        let demand = Demand {
            queued: 2,
            queued_fitting: 20,
            ..Demand::default()
        };
        let decision = decide(
            &spec,
            &view(1, 0, 3, 2),
            &demand,
            &ScalingHistory::default(),
            NOW,
        );
        assert!(
            decision.reason.contains("2 queued here")
                && decision.reason.contains("20 queued jobs that fit"),
            "{}",
            decision.reason
        );
        assert!(
            decision.reason.contains("3 busy") && decision.reason.contains("2 starting"),
            "{}",
            decision.reason
        );
        // The whole queue is this pool's: no share to explain.
        let demand = Demand {
            queued: 20,
            queued_fitting: 20,
            ..Demand::default()
        };
        let decision = decide(
            &spec,
            &view(0, 0, 0, 0),
            &demand,
            &ScalingHistory::default(),
            NOW,
        );
        assert!(
            decision.reason.contains("0 busy + 20 queued"),
            "{}",
            decision.reason
        );
        assert!(!decision.reason.contains("share"), "{}", decision.reason);
    }

    #[test]
    fn queued_that_fit_counts_every_fitting_pool_whatever_its_room() {
        let mut small = dynamic(0, 1);
        small.name = "small".into();
        let mut big = dynamic(0, 1);
        big.name = "big".into();
        big.template.capabilities.cpu_cores = 8;
        let pools = vec![
            PoolCandidate::from_spec(&small, 1, NOW),
            PoolCandidate::from_spec(&big, 0, NOW),
        ];
        let light = Requirements::default();
        let heavy = Requirements {
            cpu_cores: 8,
            ..Requirements::default()
        };
        let jobs = [light.clone(), light, heavy];
        assert_eq!(queued_that_fit(&pools, &jobs), [2, 3]);
    }

    /// (name, spec, view, demand, history, expected action: Up(n) / Down(count) / Hold)
    #[test]
    fn decisions_table() {
        let fresh = ScalingHistory::default();
        let just_up = ScalingHistory {
            last_scale_up_ms: Some(NOW - 10_000),
            ..ScalingHistory::default()
        };
        let long_ago = ScalingHistory {
            last_scale_up_ms: Some(NOW - 3_600_000),
            last_scale_down_ms: Some(NOW - 3_600_000),
            ..ScalingHistory::default()
        };
        enum Want {
            Up(u32),
            Down(usize),
            Hold,
        }
        let cases: Vec<(&str, PoolSpec, PoolView, Demand, &ScalingHistory, Want)> = vec![
            (
                "empty pool, no demand",
                dynamic(0, 8),
                view(0, 0, 0, 0),
                queued(0),
                &fresh,
                Want::Hold,
            ),
            (
                "burst of 40 into max 8",
                dynamic(0, 8),
                view(0, 0, 0, 0),
                queued(40),
                &fresh,
                Want::Up(8),
            ),
            (
                "burst of 3",
                dynamic(0, 8),
                view(0, 0, 0, 0),
                queued(3),
                &fresh,
                Want::Up(3),
            ),
            (
                "starting workers cover the burst",
                dynamic(0, 8),
                view(0, 0, 0, 8),
                queued(40),
                &fresh,
                Want::Hold,
            ),
            (
                "starting cover part of it",
                dynamic(0, 8),
                view(0, 0, 0, 5),
                queued(40),
                &fresh,
                Want::Up(3),
            ),
            (
                "busy count towards need",
                dynamic(0, 8),
                view(0, 0, 4, 0),
                queued(2),
                &fresh,
                Want::Up(2),
            ),
            (
                "idle workers take the queue",
                dynamic(0, 8),
                view(2, 0, 0, 0),
                queued(2),
                &fresh,
                Want::Hold,
            ),
            (
                "scale-up cooldown holds",
                dynamic(0, 8),
                view(0, 0, 2, 0),
                queued(5),
                &just_up,
                Want::Hold,
            ),
            (
                "below min repairs through the cooldown",
                dynamic(2, 8),
                view(0, 0, 1, 0),
                queued(5),
                &just_up,
                Want::Up(1),
            ),
            (
                "minimum kept without demand",
                dynamic(2, 8),
                view(0, 0, 0, 0),
                queued(0),
                &fresh,
                Want::Up(2),
            ),
            (
                "idle past timeout drain",
                dynamic(0, 8),
                view(3, 60, 0, 0),
                queued(0),
                &long_ago,
                Want::Down(3),
            ),
            (
                "idle not yet past timeout",
                dynamic(0, 8),
                view(3, 10, 0, 0),
                queued(0),
                &long_ago,
                Want::Hold,
            ),
            (
                "drain keeps the minimum",
                dynamic(1, 8),
                view(3, 60, 0, 0),
                queued(0),
                &long_ago,
                Want::Down(2),
            ),
            (
                "busy are never drained",
                dynamic(0, 8),
                view(0, 0, 5, 0),
                queued(0),
                &long_ago,
                Want::Hold,
            ),
            (
                "scale-down cooldown after scale-up",
                dynamic(0, 8),
                view(3, 60, 0, 0),
                queued(0),
                &just_up,
                Want::Hold,
            ),
            (
                "above max goes now",
                dynamic(0, 2),
                view(4, 0, 0, 0),
                queued(0),
                &just_up,
                Want::Down(2),
            ),
            (
                "static pool refills",
                PoolSpec::fixed("s", ProviderKind::Local, 3),
                view(2, 0, 0, 0),
                queued(10),
                &fresh,
                Want::Up(1),
            ),
            (
                "static pool ignores the queue",
                PoolSpec::fixed("s", ProviderKind::Local, 3),
                view(0, 0, 3, 0),
                queued(10),
                &fresh,
                Want::Hold,
            ),
            (
                "static pool made smaller",
                PoolSpec::fixed("s", ProviderKind::Local, 1),
                view(2, 0, 1, 0),
                queued(0),
                &fresh,
                Want::Down(2),
            ),
        ];
        for (name, spec, view, demand, history, want) in cases {
            let decision = decide(&spec, &view, &demand, history, NOW);
            match (want, &decision.action) {
                (Want::Up(n), ScaleAction::Up(got)) => assert_eq!(*got, n, "{name}: {decision:?}"),
                (Want::Down(n), ScaleAction::Down(got)) => {
                    assert_eq!(got.len(), n, "{name}: {decision:?}");
                }
                (Want::Hold, ScaleAction::Hold) => {}
                (_, _) => panic!("{name}: unexpected {decision:?}"),
            }
            assert!(!decision.reason.is_empty(), "{name}");
        }
    }

    #[test]
    fn policies_compute_their_need() {
        let fresh = ScalingHistory::default();
        let mut spec = dynamic(0, 100);
        spec.scaling.jobs_per_worker = 4;
        let decision = decide(&spec, &view(0, 0, 0, 0), &queued(10), &fresh, NOW);
        assert_eq!(decision.action, up(3), "ceil(10 / 4)");

        spec.scaling = ScalingPolicy {
            policy: PolicyKind::Utilisation,
            target_utilisation: 0.5,
            ..ScalingPolicy::default()
        };
        let decision = decide(&spec, &view(0, 0, 4, 0), &queued(2), &fresh, NOW);
        assert_eq!(decision.desired, 12, "(4 + 2) / 0.5");

        spec.scaling.policy = PolicyKind::ArrivalRate;
        let demand = Demand {
            queued: 1,
            arrivals_per_sec: 2.0,
            mean_run_secs: 5.0,
            ..Demand::default()
        };
        let decision = decide(&spec, &view(0, 0, 3, 0), &demand, &fresh, NOW);
        assert_eq!(decision.desired, 10, "2/s x 5 s");

        spec.scaling.policy = PolicyKind::QueueDepth;
        spec.scaling.jobs_per_worker = 1;
        spec.idle_buffer = 2;
        let decision = decide(&spec, &view(0, 0, 3, 0), &queued(0), &fresh, NOW);
        assert_eq!(decision.desired, 5, "3 busy + buffer 2");
    }

    #[test]
    fn schedules_raise_the_minimum() {
        let mut spec = dynamic(0, 8);
        spec.scaling.schedule = vec![ScheduleWindow {
            days: Vec::new(),
            from: "02:00".parse().unwrap(),
            to: "04:00".parse().unwrap(),
            min: 5,
        }];
        assert_eq!(bounds(&spec, NOW), (5, 8));
        assert_eq!(bounds(&spec, NOW + 2 * 3_600_000), (0, 8));
        let decision = decide(
            &spec,
            &PoolView::default(),
            &queued(0),
            &ScalingHistory::default(),
            NOW,
        );
        assert_eq!(decision.action, up(5));
    }

    #[test]
    fn the_decision_cap_holds() {
        let spec = dynamic(0, 8);
        let busy = ScalingHistory {
            recent_ms: (0..6).map(|i| NOW - 50_000 + i * 1000).collect(),
            ..ScalingHistory::default()
        };
        let decision = decide(&spec, &view(0, 0, 1, 0), &queued(3), &busy, NOW);
        assert_eq!(decision.action, ScaleAction::Hold, "{decision:?}");
        assert!(decision.reason.contains("decisions in the last minute"));
        let later = decide(&spec, &view(0, 0, 1, 0), &queued(3), &busy, NOW + 60_000);
        assert_eq!(later.action, up(3));
    }

    #[test]
    fn demand_goes_to_the_cheapest_pool_then_spills_over() {
        let job = Requirements::default();
        let pool = |name: &str, cost: f64, room: u32| PoolCandidate {
            name: name.into(),
            cost_per_hour: cost,
            capabilities: WorkerCapabilities::default(),
            labels: [("pool".to_owned(), name.to_owned())].into(),
            room,
        };
        let pools = [pool("dear", 2.0, 10), pool("cheap", 0.5, 3)];
        let jobs = vec![job.clone(); 5];
        assert_eq!(attribute_demand(&pools, &jobs), vec![2, 3]);
        let pinned = Requirements {
            labels: [("pool".to_owned(), "dear".to_owned())].into(),
            ..Requirements::default()
        };
        assert_eq!(attribute_demand(&pools, [&pinned, &job]), vec![1, 1]);
        let too_big = Requirements {
            cpu_cores: 64,
            ..Requirements::default()
        };
        assert_eq!(attribute_demand(&pools, [&too_big]), vec![0, 0]);
        assert_eq!(home_pool(&pools, &job), Some("cheap"));
        let full = [pool("dear", 2.0, 0), pool("cheap", 0.5, 0)];
        assert_eq!(attribute_demand(&full, &jobs), vec![0, 0]);
    }

    fn arb_history() -> impl Strategy<Value = ScalingHistory> {
        (
            proptest::option::of(0u64..400_000),
            proptest::option::of(0u64..400_000),
            proptest::collection::vec(0u64..120_000, 0..10),
        )
            .prop_map(|(up, down, recent)| ScalingHistory {
                last_scale_up_ms: up.map(|ago| NOW - ago),
                last_scale_down_ms: down.map(|ago| NOW - ago),
                recent_ms: recent.into_iter().map(|ago| NOW - ago).collect(),
            })
    }

    fn arb_case() -> impl Strategy<Value = (PoolSpec, PoolView, Demand, ScalingHistory)> {
        (
            0u32..6,
            0u32..12,
            any::<bool>(),
            0u32..10,
            (0u32..15, 0u64..100),
            0u32..15,
            0u32..15,
            0u32..60,
            0u32..4,
            arb_history(),
            (0u32..4, 0u32..4),
        )
            .prop_map(
                |(
                    min,
                    extra,
                    is_static,
                    size,
                    (idle_n, idle_secs),
                    busy,
                    starting,
                    queued_n,
                    buffer,
                    history,
                    (unhealthy, leaving),
                )| {
                    let mut spec = if is_static {
                        PoolSpec::fixed("p", ProviderKind::Local, size)
                    } else {
                        dynamic(min, min + extra.max(1))
                    };
                    spec.idle_buffer = if is_static { 0 } else { buffer };
                    (
                        spec,
                        PoolView {
                            unhealthy,
                            leaving,
                            ..view(idle_n, idle_secs, busy, starting)
                        },
                        queued(queued_n),
                        history,
                    )
                },
            )
    }

    proptest! {
        /// Naming only the idle workers `drainable_idle` picks, and counting the others,
        /// decides exactly as naming them all (the simulator relies on it).
        #[test]
        fn counting_undrainable_idle_workers_decides_the_same(
            (mut spec, view, demand, history) in arb_case(),
            idle_secs in proptest::collection::vec(0u64..120, 0..12),
            timeout in 0u64..100,
        ) {
            spec.idle_timeout = timeout;
            let named = PoolView {
                idle: idle_secs
                    .iter()
                    .enumerate()
                    .map(|(i, secs)| IdleSince {
                        id: WorkerId::new(format!("w-{i}")).unwrap(),
                        idle_for: Duration::from_secs(*secs),
                    })
                    .collect(),
                ..view
            };
            let (drainable, counted): (Vec<IdleSince>, Vec<IdleSince>) =
                match drainable_idle(&spec, named.supply(), NOW) {
                    None => (Vec::new(), named.idle.clone()),
                    Some(past) => named.idle.iter().cloned().partition(|w| w.idle_for >= past),
                };
            let partly = PoolView {
                idle: drainable,
                idle_counted: u32::try_from(counted.len()).unwrap(),
                ..named.clone()
            };
            prop_assert_eq!(partly.supply(), named.supply());
            prop_assert_eq!(
                decide(&spec, &partly, &demand, &history, NOW),
                decide(&spec, &named, &demand, &history, NOW)
            );
        }

        #[test]
        fn the_longest_idle_are_those_a_full_sort_puts_first(
            idle_secs in proptest::collection::vec(0u64..20, 0..40),
            count in 0usize..45,
        ) {
            let idle: Vec<IdleSince> = idle_secs
                .iter()
                .enumerate()
                .map(|(i, secs)| IdleSince {
                    id: WorkerId::new(format!("w-{i:02}")).unwrap(),
                    idle_for: Duration::from_secs(*secs),
                })
                .collect();
            let mut sorted = idle.clone();
            sorted.sort_by(|a, b| b.idle_for.cmp(&a.idle_for).then_with(|| a.id.cmp(&b.id)));
            let expected: Vec<WorkerId> =
                sorted.into_iter().take(count).map(|w| w.id).collect();
            prop_assert_eq!(longest_idle(&idle, count), expected);
        }

        #[test]
        fn decisions_keep_their_rules((spec, view, demand, history) in arb_case()) {
            let (min, max) = bounds(&spec, NOW);
            let supply = view.supply();
            let decision = decide(&spec, &view, &demand, &history, NOW);
            prop_assert!(decision.desired >= min && decision.desired <= max);
            let up_cooling = history
                .last_scale_up_ms
                .is_some_and(|at| NOW - at < spec.scaling.scale_up_cooldown * 1000);
            let down_cooling = history
                .last_scale_up_ms
                .max(history.last_scale_down_ms)
                .is_some_and(|at| NOW - at < spec.scaling.scale_down_cooldown * 1000);
            match &decision.action {
                ScaleAction::Up(n) => {
                    prop_assert!(*n > 0);
                    // Never above max, counting workers that are leaving, nor (unless
                    // below the minimum) unhealthy ones; never while starting workers
                    // already cover the need.
                    prop_assert!(supply + n + view.leaving <= max);
                    prop_assert!(
                        supply + n + view.unhealthy + view.leaving <= max || supply + n <= min,
                        "only a repair replaces an unhealthy worker"
                    );
                    prop_assert!(supply + n <= decision.desired);
                    prop_assert!(supply < decision.desired);
                    if up_cooling {
                        prop_assert!(supply + n <= min, "only a repair passes the cooldown");
                    }
                }
                ScaleAction::Down(workers) => {
                    prop_assert!(!workers.is_empty());
                    let n = u32::try_from(workers.len()).unwrap();
                    // Only idle workers, each once, never below the minimum.
                    let idle: Vec<&WorkerId> = view.idle.iter().map(|w| &w.id).collect();
                    prop_assert!(workers.iter().all(|w| idle.contains(&w)));
                    let mut unique = workers.clone();
                    unique.sort();
                    unique.dedup();
                    prop_assert_eq!(unique.len(), workers.len());
                    prop_assert!(supply - n >= min);
                    prop_assert!(supply - n >= decision.desired);
                    if down_cooling {
                        prop_assert!(supply - n >= max, "only above-max workers pass the cooldown");
                    }
                }
                ScaleAction::Hold => {}
            }
        }

        #[test]
        fn spill_over_never_exceeds_room(
            rooms in proptest::collection::vec(0u32..10, 1..4),
            jobs in 0usize..40,
        ) {
            let pools: Vec<PoolCandidate> = rooms
                .iter()
                .enumerate()
                .map(|(i, room)| PoolCandidate {
                    name: format!("p{i}"),
                    cost_per_hour: f64::from(u32::try_from(i).unwrap()),
                    capabilities: WorkerCapabilities::default(),
                    labels: Labels::new(),
                    room: *room,
                })
                .collect();
            let reqs = vec![Requirements::default(); jobs];
            let counts = attribute_demand(&pools, &reqs);
            let total: u32 = counts.iter().sum();
            prop_assert_eq!(total, u32::try_from(jobs).unwrap().min(rooms.iter().sum()));
            for (count, room) in counts.iter().zip(&rooms) {
                prop_assert!(count <= room);
            }
            // Cheaper pools fill first.
            if let Some(first_not_full) = counts.iter().zip(&rooms).position(|(c, r)| c < r) {
                prop_assert!(counts[first_not_full + 1..].iter().all(|c| *c == 0));
            }
        }
    }
}
