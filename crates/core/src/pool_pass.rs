//! The pool manager's pass as a pure state transition: everything it decides about every
//! pool at one moment, from the pools, their workers, the queue, what arrived and ran since
//! the last pass, and `now_ms`.
//!
//! [`pass`] builds each pool's view from its workers ([`Member`]), keeps the 60 s arrival
//! window, the running-time average and the hour-of-week [`ArrivalProfile`], splits the
//! queue over the pools (cheapest first, see [`autoscale::attribute_demand`]), asks
//! [`autoscale::decide`] for every live pool, drains pools being removed and says which of
//! them are gone, and logs the decisions (a hold after a hold is one row with a count). The
//! server's pool manager gathers the inputs and carries out the [`PassOutput`]; the
//! simulator (`hodei-sim`) calls the same function on a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::autoscale::{
    self, Decision, Demand, IdleSince, PoolCandidate, PoolView, ScaleAction, ScalingHistory,
};
use crate::job::Requirements;
use crate::pool::{PolicyKind, PoolSpec};
use crate::worker::WorkerId;

/// How far back the arrival rate looks.
pub const ARRIVAL_WINDOW_MS: u64 = 60_000;
/// Weight of the newest run time in the running-time average: small, since run times are
/// heavy-tailed and one three-hour job must not make the pool expect only such jobs.
const RUN_TIME_WEIGHT: f64 = 0.05;
const HOUR_MS: u64 = 3_600_000;
/// Hours in a week: the profile's slots.
pub const HOURS_PER_WEEK: usize = 168;

/// What one worker of a pool is doing, as the shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Created, its agent not connected yet.
    Starting,
    Busy,
    Idle {
        idle_for: Duration,
    },
    /// Registered but not healthy: not supply.
    Unhealthy,
    /// Drained or retired, on its way out: not supply.
    Leaving,
}

/// A worker of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: WorkerId,
    pub state: MemberState,
}

/// A pool's workers by state, as of the last pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    pub unhealthy: u32,
    /// Drained or retired, on their way out.
    pub leaving: u32,
}

impl PoolCounts {
    pub fn total(&self) -> u32 {
        self.idle + self.busy + self.starting + self.unhealthy + self.leaving
    }
}

/// One logged decision; times in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedDecision {
    pub at_ms: u64,
    /// Holds repeated on later passes: the last one, and how many in all.
    pub last_at_ms: u64,
    pub repeats: u32,
    /// `up`, `down` or `hold`.
    pub action: &'static str,
    /// Workers added or drained.
    pub count: u32,
    pub desired: u32,
    pub supply: u32,
    pub reason: String,
}

/// Jobs per second by hour of the week (Monday 00:00 UTC is slot 0), learned from the
/// arrivals the passes see: each hour that ends is folded into its slot as an average
/// over the weeks (the newest week weighing half). A slot not seen yet borrows the same
/// hour of the other days, so a burst that recurs every workday is known after one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrivalProfile {
    /// Jobs per second, per slot.
    pub rates: Vec<f64>,
    /// Hours folded into each slot.
    pub seen: Vec<u32>,
    /// The hour being counted (hours since the epoch), when it started being counted, and
    /// its jobs so far.
    #[serde(default)]
    pub current: Option<(u64, u64, u64)>,
}

impl Default for ArrivalProfile {
    fn default() -> Self {
        Self {
            rates: vec![0.0; HOURS_PER_WEEK],
            seen: vec![0; HOURS_PER_WEEK],
            current: None,
        }
    }
}

/// The slot of the week an instant falls in; 1970-01-01 was a Thursday (slot 72).
pub fn hour_of_week(unix_ms: u64) -> usize {
    let hours = unix_ms / HOUR_MS;
    usize::try_from((hours + 72) % 168).unwrap_or(0)
}

impl ArrivalProfile {
    /// Counts `arrived` jobs at `now_ms`, folding the hour before into its slot when a new
    /// hour starts.
    pub fn observe(&mut self, now_ms: u64, arrived: u64) {
        let hour = now_ms / HOUR_MS;
        match self.current {
            Some((current, _, _)) if current == hour => {}
            Some((current, since_ms, count)) => {
                self.fold(current, since_ms, count);
                self.current = Some((hour, hour * HOUR_MS, 0));
            }
            None => self.current = Some((hour, now_ms, 0)),
        }
        if let Some((_, _, count)) = &mut self.current {
            *count = count.saturating_add(arrived);
        }
    }

    fn fold(&mut self, hour: u64, since_ms: u64, count: u64) {
        let end = (hour + 1) * HOUR_MS;
        let span_secs = (end.saturating_sub(since_ms)) as f64 / 1000.0;
        // A sliver of an hour (the server started at 10:59) says little: skip it.
        if span_secs < 600.0 || self.rates.len() != HOURS_PER_WEEK {
            return;
        }
        let slot = usize::try_from((hour + 72) % 168).unwrap_or(0);
        let rate = count as f64 / span_secs;
        self.rates[slot] = if self.seen[slot] == 0 {
            rate
        } else {
            0.5 * self.rates[slot] + 0.5 * rate
        };
        self.seen[slot] = self.seen[slot].saturating_add(1);
    }

    /// Jobs per second expected at `at_ms`: its slot, or the mean of the same hour on the
    /// days seen; `None` when that hour was never seen.
    pub fn forecast(&self, at_ms: u64) -> Option<f64> {
        if self.rates.len() != HOURS_PER_WEEK || self.seen.len() != HOURS_PER_WEEK {
            return None;
        }
        let slot = hour_of_week(at_ms);
        if self.seen[slot] > 0 {
            return Some(self.rates[slot]);
        }
        let hour = slot % 24;
        let same_hour: Vec<f64> = (0..7)
            .map(|day| day * 24 + hour)
            .filter(|slot| self.seen[*slot] > 0)
            .map(|slot| self.rates[slot])
            .collect();
        (!same_hour.is_empty()).then(|| same_hour.iter().sum::<f64>() / same_hour.len() as f64)
    }
}

/// What the pass carries for a pool from one pass to the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolTrack {
    pub history: ScalingHistory,
    /// Jobs that arrived for this pool per pass, for the arrival rate.
    pub arrivals: VecDeque<(u64, u32)>,
    pub mean_run_secs: Option<f64>,
    /// Newest last.
    pub decisions: VecDeque<LoggedDecision>,
    pub counts: PoolCounts,
    pub desired: u32,
    /// Jobs the autoscaler attributed to this pool at the last pass.
    pub queued: u32,
    pub profile: ArrivalProfile,
}

impl PoolTrack {
    fn arrivals_per_sec(&mut self, now_ms: u64) -> f64 {
        while self
            .arrivals
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > ARRIVAL_WINDOW_MS)
        {
            self.arrivals.pop_front();
        }
        let Some((first, _)) = self.arrivals.front() else {
            return 0.0;
        };
        let span_ms = now_ms.saturating_sub(*first).max(1000);
        let total: u32 = self.arrivals.iter().map(|(_, n)| n).sum();
        f64::from(total) / (span_ms as f64 / 1000.0)
    }

    /// Logs a decision; a hold after a hold updates that row instead.
    fn log(&mut self, decision: &Decision, now_ms: u64, kept: usize) -> bool {
        let count = match &decision.action {
            ScaleAction::Hold => 0,
            ScaleAction::Up(n) => *n,
            ScaleAction::Down(workers) => u32::try_from(workers.len()).unwrap_or(u32::MAX),
        };
        if decision.action == ScaleAction::Hold
            && let Some(last) = self.decisions.back_mut()
            && last.action == "hold"
        {
            last.repeats = last.repeats.saturating_add(1);
            last.last_at_ms = now_ms;
            last.desired = decision.desired;
            last.supply = decision.supply;
            last.reason.clone_from(&decision.reason);
            return false;
        }
        self.history.record(&decision.action, now_ms);
        self.decisions.push_back(LoggedDecision {
            at_ms: now_ms,
            last_at_ms: now_ms,
            repeats: 1,
            action: decision.action.as_str(),
            count,
            desired: decision.desired,
            supply: decision.supply,
            reason: decision.reason.clone(),
        });
        while self.decisions.len() > kept.max(1) {
            self.decisions.pop_front();
        }
        true
    }
}

/// One pool as the pass sees it.
#[derive(Debug)]
pub struct PassPool<'a> {
    pub spec: &'a PoolSpec,
    /// Being removed: no new workers, idle ones drained, gone when empty.
    pub removing: bool,
    /// Its workers known by id (the idle ones must be, to be drained).
    pub members: &'a [Member],
    /// Workers known only by count, added to the members': the server's workers being
    /// created that the registry does not show yet (starting), the simulator's busy and
    /// starting ones, and its idle ones no decision could drain now (see
    /// [`autoscale::drainable_idle`]): idle workers counted are supply but never drained.
    pub counted: PoolCounts,
    /// Creations still pending of any kind (a removed pool waits for them before it goes).
    pub pending_creations: u32,
    pub track: &'a mut PoolTrack,
}

/// What the dispatcher says about jobs since the last pass.
#[derive(Debug, Clone, Copy)]
pub struct PassJobs<'a> {
    /// Requirements of queued jobs, in dispatch order.
    pub queued: &'a [&'a Requirements],
    /// Requirements of jobs submitted since the last pass.
    pub arrived: &'a [Requirements],
    /// Attempts ended since the last pass: the worker's pool and the seconds it ran.
    pub ran: &'a [(String, f64)],
}

/// What one pool's pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolOutcome {
    pub pool: String,
    pub counts: PoolCounts,
    /// `None` for a pool being removed.
    pub decision: Option<Decision>,
    /// To carry out: scale up, or drain these idle workers.
    pub action: ScaleAction,
    /// A new row in the decision log (not a repeated hold).
    pub logged: bool,
    /// A removed pool with nothing left: forget it.
    pub gone: bool,
}

/// The pool's view (supply) and counts from its members and the workers known by count.
pub fn view_of(members: &[Member], counted: PoolCounts) -> (PoolView, PoolCounts) {
    let mut view = PoolView::default();
    let mut counts = PoolCounts::default();
    for member in members {
        match member.state {
            MemberState::Starting => counts.starting += 1,
            MemberState::Busy => counts.busy += 1,
            MemberState::Unhealthy => counts.unhealthy += 1,
            MemberState::Leaving => counts.leaving += 1,
            MemberState::Idle { idle_for } => view.idle.push(IdleSince {
                id: member.id.clone(),
                idle_for,
            }),
        }
    }
    counts.starting = counts.starting.saturating_add(counted.starting);
    counts.busy = counts.busy.saturating_add(counted.busy);
    counts.unhealthy = counts.unhealthy.saturating_add(counted.unhealthy);
    counts.leaving = counts.leaving.saturating_add(counted.leaving);
    view.idle_counted = counted.idle;
    counts.idle = view.idle_count();
    view.busy = counts.busy;
    view.starting = counts.starting;
    view.unhealthy = counts.unhealthy;
    view.leaving = counts.leaving;
    (view, counts)
}

/// The lead a predictive pool reads its profile at, in milliseconds.
pub fn lead_ms(spec: &PoolSpec) -> u64 {
    match spec.scaling.lead_secs {
        // Bounded by validation to a day.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(secs) => (secs.max(0.0) * 1000.0) as u64,
        None => spec.provider.default_start_latency_ms(),
    }
}

/// One pass over every pool; see the module docs. `decisions_kept` bounds each log.
pub fn pass(
    pools: &mut [PassPool<'_>],
    jobs: PassJobs<'_>,
    now_ms: u64,
    decisions_kept: usize,
) -> Vec<PoolOutcome> {
    let views: Vec<(PoolView, PoolCounts)> = pools
        .iter()
        .map(|pool| view_of(pool.members, pool.counted))
        .collect();
    let live: Vec<usize> = (0..pools.len()).filter(|i| !pools[*i].removing).collect();
    let candidates: Vec<PoolCandidate> = live
        .iter()
        .map(|&i| PoolCandidate::from_spec(pools[i].spec, views[i].0.busy, now_ms))
        .collect();
    let shares = autoscale::attribute_demand(&candidates, jobs.queued.iter().copied());
    let fitting = autoscale::queued_that_fit(&candidates, jobs.queued.iter().copied());
    let mut arrived: BTreeMap<&str, u32> = BTreeMap::new();
    for job in jobs.arrived {
        if let Some(home) = autoscale::home_pool(&candidates, job) {
            *arrived.entry(home).or_default() += 1;
        }
    }
    let mut demand_of: BTreeMap<usize, (u32, u32, u32)> = BTreeMap::new();
    for (k, &i) in live.iter().enumerate() {
        let came = arrived
            .get(candidates[k].name.as_str())
            .copied()
            .unwrap_or(0);
        demand_of.insert(i, (shares[k], fitting[k], came));
    }

    let mut outcomes = Vec::with_capacity(pools.len());
    for (i, (pool, (view, counts))) in pools.iter_mut().zip(views).enumerate() {
        let name = pool.spec.name.clone();
        let track = &mut *pool.track;
        track.counts = counts;
        for (_, secs) in jobs.ran.iter().filter(|(p, _)| *p == name) {
            track.mean_run_secs = Some(match track.mean_run_secs {
                None => *secs,
                Some(mean) => (1.0 - RUN_TIME_WEIGHT) * mean + RUN_TIME_WEIGHT * secs,
            });
        }
        if pool.removing {
            let idle: Vec<WorkerId> = view.idle.iter().map(|w| w.id.clone()).collect();
            let remaining = view.supply() + counts.unhealthy + counts.leaving;
            let gone = idle.is_empty() && remaining == 0 && pool.pending_creations == 0;
            outcomes.push(PoolOutcome {
                pool: name,
                counts,
                decision: None,
                action: if idle.is_empty() {
                    ScaleAction::Hold
                } else {
                    ScaleAction::Down(idle)
                },
                logged: false,
                gone,
            });
            continue;
        }
        let (share, fits, came) = demand_of.get(&i).copied().unwrap_or((0, 0, 0));
        track.arrivals.push_back((now_ms, came));
        track.profile.observe(now_ms, u64::from(came));
        track.queued = share;
        let forecast = (pool.spec.scaling.policy == PolicyKind::Predictive)
            .then(|| track.profile.forecast(now_ms + lead_ms(pool.spec)))
            .flatten();
        let demand = Demand {
            queued: share,
            queued_fitting: fits,
            arrivals_per_sec: track.arrivals_per_sec(now_ms),
            mean_run_secs: track.mean_run_secs.unwrap_or(0.0),
            forecast_arrivals_per_sec: forecast,
        };
        let decision = autoscale::decide(pool.spec, &view, &demand, &track.history, now_ms);
        track.desired = decision.desired;
        let logged = track.log(&decision, now_ms, decisions_kept);
        outcomes.push(PoolOutcome {
            pool: name,
            counts,
            action: decision.action.clone(),
            decision: Some(decision),
            logged,
            gone: false,
        });
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{PoolKind, ScalingStep};
    use crate::worker::ProviderKind;
    use proptest::prelude::*;

    const MONDAY: u64 = 1_795_392_000_000; // a Monday, 00:00 UTC

    fn id(i: usize) -> WorkerId {
        WorkerId::new(format!("w-{i}")).unwrap()
    }

    fn members(idle: usize, idle_secs: u64, busy: usize, starting: usize) -> Vec<Member> {
        let mut out = Vec::new();
        for i in 0..idle {
            out.push(Member {
                id: id(i),
                state: MemberState::Idle {
                    idle_for: Duration::from_secs(idle_secs),
                },
            });
        }
        for i in 0..busy {
            out.push(Member {
                id: id(1000 + i),
                state: MemberState::Busy,
            });
        }
        for i in 0..starting {
            out.push(Member {
                id: id(2000 + i),
                state: MemberState::Starting,
            });
        }
        out
    }

    fn one_pass(
        spec: &PoolSpec,
        track: &mut PoolTrack,
        members: &[Member],
        queued: usize,
        arrived: usize,
        now_ms: u64,
    ) -> PoolOutcome {
        let one = Requirements::default();
        let queued = vec![&one; queued];
        let arrived = vec![Requirements::default(); arrived];
        let mut pools = [PassPool {
            spec,
            removing: false,
            members,
            counted: PoolCounts::default(),
            pending_creations: 0,
            track,
        }];
        let jobs = PassJobs {
            queued: &queued,
            arrived: &arrived,
            ran: &[],
        };
        pass(&mut pools, jobs, now_ms, 20).remove(0)
    }

    #[test]
    fn hour_of_week_starts_on_monday() {
        assert_eq!(hour_of_week(MONDAY), 0);
        assert_eq!(hour_of_week(MONDAY + 9 * HOUR_MS + 59_000), 9);
        assert_eq!(hour_of_week(MONDAY + 7 * 24 * HOUR_MS), 0);
        assert_eq!(hour_of_week(MONDAY - 1), 167);
    }

    #[test]
    fn repeated_holds_are_one_row_and_changes_are_new_rows() {
        let spec = PoolSpec::autoscaled("p", ProviderKind::Local, 0, 8);
        let mut track = PoolTrack::default();
        for k in 0..5 {
            let outcome = one_pass(&spec, &mut track, &[], 0, 0, MONDAY + k * 1000);
            assert_eq!(outcome.action, ScaleAction::Hold);
        }
        assert_eq!(track.decisions.len(), 1);
        assert_eq!(track.decisions[0].repeats, 5);
        assert_eq!(track.decisions[0].last_at_ms, MONDAY + 4000);
        let outcome = one_pass(&spec, &mut track, &[], 3, 3, MONDAY + 5000);
        assert_eq!(outcome.action, ScaleAction::Up(3));
        assert!(outcome.logged);
        assert_eq!(track.decisions.len(), 2);
        assert_eq!(track.history.last_scale_up_ms, Some(MONDAY + 5000));
    }

    #[test]
    fn the_arrival_window_forgets_after_a_minute() {
        let mut spec = PoolSpec::autoscaled("p", ProviderKind::Local, 0, 100);
        spec.scaling.policy = PolicyKind::ArrivalRate;
        let mut track = PoolTrack {
            mean_run_secs: Some(10.0),
            ..PoolTrack::default()
        };
        one_pass(&spec, &mut track, &[], 0, 60, MONDAY);
        one_pass(&spec, &mut track, &[], 0, 0, MONDAY + 30_000);
        assert!((track.arrivals_per_sec(MONDAY + 30_000) - 2.0).abs() < 1e-9);
        one_pass(&spec, &mut track, &[], 0, 0, MONDAY + 61_000);
        assert!(track.arrivals_per_sec(MONDAY + 61_000) < 1e-9);
    }

    #[test]
    fn a_removed_pool_drains_idle_and_goes_when_empty() {
        let spec = PoolSpec::autoscaled("p", ProviderKind::Local, 1, 4);
        let mut track = PoolTrack::default();
        let workers = members(2, 0, 1, 0);
        let mut pools = [PassPool {
            spec: &spec,
            removing: true,
            members: &workers,
            counted: PoolCounts::default(),
            pending_creations: 0,
            track: &mut track,
        }];
        let jobs = PassJobs {
            queued: &[],
            arrived: &[],
            ran: &[],
        };
        let outcome = pass(&mut pools, jobs, MONDAY, 20).remove(0);
        assert!(matches!(&outcome.action, ScaleAction::Down(w) if w.len() == 2));
        assert!(!outcome.gone);
        let mut track = PoolTrack::default();
        let mut pools = [PassPool {
            spec: &spec,
            removing: true,
            members: &[],
            counted: PoolCounts::default(),
            pending_creations: 0,
            track: &mut track,
        }];
        assert!(pass(&mut pools, jobs, MONDAY, 20)[0].gone);
    }

    #[test]
    fn running_time_is_a_moving_average_per_pool() {
        let spec = PoolSpec::autoscaled("p", ProviderKind::Local, 0, 4);
        let mut track = PoolTrack::default();
        let ran = vec![
            ("p".to_owned(), 10.0),
            ("q".to_owned(), 1000.0),
            ("p".to_owned(), 30.0),
        ];
        let mut pools = [PassPool {
            spec: &spec,
            removing: false,
            members: &[],
            counted: PoolCounts::default(),
            pending_creations: 0,
            track: &mut track,
        }];
        let jobs = PassJobs {
            queued: &[],
            arrived: &[],
            ran: &ran,
        };
        pass(&mut pools, jobs, MONDAY, 20);
        // 10, then 95% of 10 + 5% of 30; the other pool's job does not count.
        assert!((track.mean_run_secs.unwrap() - 11.0).abs() < 1e-9);
    }

    #[test]
    fn step_scaling_adds_the_step_reached() {
        let mut spec = PoolSpec::autoscaled("p", ProviderKind::Local, 0, 100);
        spec.scaling.policy = PolicyKind::Step;
        spec.scaling.steps = vec![
            ScalingStep { queued: 1, add: 1 },
            ScalingStep { queued: 10, add: 5 },
            ScalingStep {
                queued: 50,
                add: 20,
            },
        ];
        spec.scaling.max_decisions_per_minute = 100;
        spec.scaling.scale_up_cooldown = 0;
        spec.validate().unwrap();
        let cases = [
            (0, 0, 0, 0),
            (3, 0, 2, 1),
            (12, 0, 2, 5),
            (60, 0, 0, 20),
            (60, 4, 0, 16),
        ];
        for (queued, idle, busy, up) in cases {
            let mut track = PoolTrack::default();
            let outcome = one_pass(
                &spec,
                &mut track,
                &members(idle, 0, busy, 0),
                queued,
                0,
                MONDAY,
            );
            let want = if up == 0 {
                ScaleAction::Hold
            } else {
                ScaleAction::Up(up)
            };
            assert_eq!(
                outcome.action, want,
                "{queued} queued, {idle} idle, {busy} busy"
            );
        }
        // Starting workers are supply: a step already under way is not asked for twice.
        let mut track = PoolTrack::default();
        let outcome = one_pass(&spec, &mut track, &members(0, 0, 0, 5), 12, 0, MONDAY);
        assert_eq!(outcome.action, ScaleAction::Up(5), "5 starting + step 5");
        spec.scaling.steps.clear();
        assert_eq!(spec.validate().unwrap_err().field, "pool.scaling.steps");
    }

    /// A day of passes every 10 s with a burst of 40 jobs/min from 09:00 to 09:10, and one
    /// job a minute otherwise; each job runs 60 s.
    fn day_of_bursts(spec: &PoolSpec, track: &mut PoolTrack, day: u64) -> Vec<(u64, PoolOutcome)> {
        let mut out = Vec::new();
        let start = MONDAY + day * 24 * HOUR_MS;
        let mut t = start;
        while t < start + 24 * HOUR_MS {
            let minute_of_day = (t - start) / 60_000;
            let in_burst = (9 * 60..9 * 60 + 10).contains(&minute_of_day);
            let arrived = if in_burst {
                7
            } else {
                usize::from((t - start).is_multiple_of(60_000))
            };
            track.mean_run_secs = Some(60.0);
            let outcome = one_pass(
                spec,
                track,
                &[],
                if in_burst { arrived } else { 0 },
                arrived,
                t,
            );
            out.push((t, outcome));
            t += 10_000;
        }
        out
    }

    #[test]
    fn predictive_prewarms_before_a_recurring_burst_that_reactive_follows() {
        let mut predictive = PoolSpec::autoscaled("p", ProviderKind::Kubernetes, 0, 200);
        predictive.scaling.policy = PolicyKind::Predictive;
        predictive.validate().unwrap();
        let reactive = PoolSpec::autoscaled("p", ProviderKind::Kubernetes, 0, 200);
        let burst = MONDAY + 24 * HOUR_MS + 9 * HOUR_MS;
        let first_up = |spec: &PoolSpec| {
            let mut track = PoolTrack::default();
            day_of_bursts(spec, &mut track, 0);
            // The second day: the first scale-up after 08:00.
            day_of_bursts(spec, &mut track, 1)
                .into_iter()
                .find(|(t, o)| *t >= burst - HOUR_MS && matches!(o.action, ScaleAction::Up(_)))
        };
        let (reactive_at, _) = first_up(&reactive).unwrap();
        let (predictive_at, outcome) = first_up(&predictive).unwrap();
        assert!(
            reactive_at >= burst,
            "reactive follows the burst: {reactive_at}"
        );
        assert!(
            predictive_at < burst,
            "predictive pre-warms before {burst}: {predictive_at}, {outcome:?}"
        );
        assert!(outcome.decision.unwrap().reason.contains("forecast"));
    }

    #[test]
    fn the_profile_learns_hours_and_borrows_other_days() {
        let mut profile = ArrivalProfile::default();
        assert_eq!(profile.forecast(MONDAY), None);
        for minute in 0..60 {
            profile.observe(MONDAY + 9 * HOUR_MS + minute * 60_000, 36);
        }
        profile.observe(MONDAY + 10 * HOUR_MS, 0);
        let rate = profile.forecast(MONDAY + 9 * HOUR_MS).unwrap();
        assert!((rate - 0.6).abs() < 1e-9, "{rate}");
        // Tuesday 09:00 was never seen: Monday's 09:00 stands in.
        assert_eq!(profile.forecast(MONDAY + 33 * HOUR_MS), Some(rate));
        assert_eq!(profile.forecast(MONDAY + 12 * HOUR_MS), None);
        // Survives a round trip through its stored form.
        let text = serde_json::to_string(&profile).unwrap();
        assert_eq!(
            serde_json::from_str::<ArrivalProfile>(&text).unwrap(),
            profile
        );
    }

    #[test]
    fn step_and_predictive_read_from_a_pool_body_and_bad_values_name_the_field() {
        let spec: PoolSpec = serde_json::from_str(
            r#"{"name": "p", "provider": "kubernetes", "kind": "dynamic", "max": 9,
                "scaling": {"policy": "step", "steps": [{"queued": 1, "add": 2}]}}"#,
        )
        .unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.scaling.steps, [ScalingStep { queued: 1, add: 2 }]);
        let mut spec: PoolSpec = serde_json::from_str(
            r#"{"name": "p", "provider": "kubernetes", "kind": "dynamic", "max": 9,
                "scaling": {"policy": "predictive", "lead_secs": 30}}"#,
        )
        .unwrap();
        spec.validate().unwrap();
        assert_eq!(lead_ms(&spec), 30_000);
        spec.scaling.lead_secs = None;
        assert_eq!(lead_ms(&spec), 5_000, "the provider's start latency");
        spec.scaling.lead_secs = Some(-1.0);
        assert_eq!(spec.validate().unwrap_err().field, "pool.scaling.lead_secs");
    }

    fn arb_members() -> impl Strategy<Value = Vec<Member>> {
        proptest::collection::vec((0u8..5, 0u64..200), 0..20).prop_map(|states| {
            states
                .into_iter()
                .enumerate()
                .map(|(i, (state, secs))| Member {
                    id: id(i),
                    state: match state {
                        0 => MemberState::Starting,
                        1 => MemberState::Busy,
                        2 => MemberState::Idle {
                            idle_for: Duration::from_secs(secs),
                        },
                        3 => MemberState::Unhealthy,
                        _ => MemberState::Leaving,
                    },
                })
                .collect()
        })
    }

    proptest! {
        /// Bounds, starting workers as supply, and only idle workers drained, through the
        /// whole pass (views built from members, demand split over two pools).
        #[test]
        fn a_pass_keeps_bounds_and_counts_starting_as_supply(
            a in arb_members(),
            b in arb_members(),
            unregistered in 0u32..5,
            min in 0u32..4,
            extra in 1u32..10,
            queued in 0usize..40,
            policy in 0u8..5,
        ) {
            let policy = [PolicyKind::QueueDepth, PolicyKind::Utilisation, PolicyKind::ArrivalRate, PolicyKind::Step, PolicyKind::Predictive][usize::from(policy)];
            let mut cheap = PoolSpec::autoscaled("cheap", ProviderKind::Local, min, min + extra);
            cheap.scaling.policy = policy;
            cheap.scaling.steps = vec![ScalingStep { queued: 1, add: 2 }, ScalingStep { queued: 10, add: 6 }];
            cheap.idle_timeout = 30;
            let mut dear = cheap.clone();
            dear.name = "dear".into();
            dear.cost_per_hour = 1.0;
            let b: Vec<Member> = b.into_iter().map(|m| Member { id: WorkerId::new(format!("b-{}", m.id)).unwrap(), ..m }).collect();
            let one = Requirements::default();
            let arrived = vec![one.clone(); queued];
            let queued = vec![&one; queued];
            let (mut ta, mut tb) = (PoolTrack::default(), PoolTrack::default());
            let mut pools = [
                PassPool { spec: &cheap, removing: false, members: &a, counted: PoolCounts { starting: unregistered, ..PoolCounts::default() }, pending_creations: unregistered, track: &mut ta },
                PassPool { spec: &dear, removing: false, members: &b, counted: PoolCounts::default(), pending_creations: 0, track: &mut tb },
            ];
            let jobs = PassJobs { queued: &queued, arrived: &arrived, ran: &[] };
            let outcomes = pass(&mut pools, jobs, MONDAY, 20);
            for (outcome, members, unregistered) in [(&outcomes[0], &a, unregistered), (&outcomes[1], &b, 0)] {
                let (view, counts) = view_of(members, PoolCounts { starting: unregistered, ..PoolCounts::default() });
                prop_assert_eq!(counts.total() as usize, members.len() + unregistered as usize);
                let supply = view.supply();
                let decision = outcome.decision.as_ref().unwrap();
                prop_assert_eq!(decision.supply, supply);
                let (lo, hi) = (min, min + extra);
                prop_assert!(decision.desired >= lo && decision.desired <= hi);
                match &outcome.action {
                    ScaleAction::Up(n) => {
                        prop_assert!(supply + n <= hi);
                        prop_assert!(supply + n <= decision.desired);
                    }
                    ScaleAction::Down(ids) => {
                        prop_assert!(supply - u32::try_from(ids.len()).unwrap() >= lo);
                        for id in ids {
                            let idle = members.iter().any(|m| &m.id == id && matches!(m.state, MemberState::Idle { .. }));
                            prop_assert!(idle, "only idle workers are drained");
                        }
                    }
                    ScaleAction::Hold => {}
                }
            }
        }

        /// Over a run of passes, scale-ups keep their cooldown and no minute holds more
        /// decisions than the cap, except repairs below the minimum.
        #[test]
        fn passes_keep_cooldowns_and_the_decision_cap(
            demand in proptest::collection::vec((0usize..30, 0usize..6, 0usize..6), 5..60),
            step_ms in 1_000u64..20_000,
            cap in 1u32..4,
        ) {
            let mut spec = PoolSpec::autoscaled("p", ProviderKind::Local, 0, 50);
            spec.kind = PoolKind::Dynamic;
            spec.idle_timeout = 5;
            spec.scaling.max_decisions_per_minute = cap;
            spec.scaling.scale_up_cooldown = 30;
            spec.scaling.scale_down_cooldown = 40;
            let mut track = PoolTrack::default();
            let mut ups: Vec<u64> = Vec::new();
            let mut all: Vec<u64> = Vec::new();
            let mut now = MONDAY;
            for (queued, idle, busy) in demand {
                let workers = members(idle, 60, busy, 0);
                let outcome = one_pass(&spec, &mut track, &workers, queued, 0, now);
                match outcome.action {
                    ScaleAction::Up(_) => { ups.push(now); all.push(now); }
                    ScaleAction::Down(_) => all.push(now),
                    ScaleAction::Hold => {}
                }
                now += step_ms;
            }
            for pair in ups.windows(2) {
                prop_assert!(pair[1] - pair[0] >= 30_000, "scale-ups {pair:?}");
            }
            for (i, at) in all.iter().enumerate() {
                let in_minute = all[i..].iter().filter(|t| **t < at + 60_000).count();
                prop_assert!(in_minute <= cap as usize, "{in_minute} decisions from {at}");
            }
        }
    }
}
