//! What a web-console session may see and do. Sans IO: the server's console module asks
//! these questions and only moves data.
//!
//! | role   | sign in | pools, workers | jobs, tenants       | cancel a job, terminate a worker |
//! |--------|---------|----------------|---------------------|----------------------------------|
//! | admin  | yes     | yes            | all                 | yes                              |
//! | tenant | yes     | no             | its own tenant only | its own jobs; no worker          |
//! | agent  | no      | -              | -                   | -                                |
//! | worker | no      | -              | -                   | -                                |
//!
//! Sign-in is rate limited per client address ([`SignInFailures`]); a job page shows the
//! history its record, its attempts' usage rows and the state changes the server saw hold
//! ([`job_history`]); a pool page draws its workers over the last hour ([`workers_chart`]).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cost::AttemptUsage;
use crate::credential::Role;

/// How long a console session lives after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);

/// What a console request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleAction {
    /// Pools, their decisions, and workers.
    ViewFleet,
    /// Jobs and their logs (which ones: [`job_scope`]).
    ViewJobs,
    /// Cancel a job (which ones: [`job_scope`]).
    CancelJob,
    /// Drain, undrain or terminate a worker.
    ManageWorker,
    /// Tenants: quotas, usage, share, burst (which ones: [`job_scope`]; a tenant its own).
    ViewTenants,
}

impl ConsoleAction {
    pub const ALL: [ConsoleAction; 5] = [
        ConsoleAction::ViewFleet,
        ConsoleAction::ViewJobs,
        ConsoleAction::CancelJob,
        ConsoleAction::ManageWorker,
        ConsoleAction::ViewTenants,
    ];
}

/// Whether a credential of `role` may open a console session at all.
pub fn may_sign_in(role: Role) -> bool {
    matches!(role, Role::Admin | Role::Tenant)
}

/// Whether a session of `role` may do `action`. The one table of the console.
pub fn console_permits(role: Role, action: ConsoleAction) -> bool {
    match role {
        Role::Admin => true,
        Role::Tenant => matches!(
            action,
            ConsoleAction::ViewJobs | ConsoleAction::CancelJob | ConsoleAction::ViewTenants
        ),
        Role::Agent | Role::Worker => false,
    }
}

pub use crate::credential::{JobScope, job_scope};

/// Failed sign-ins allowed per client address per [`SIGN_IN_WINDOW`]; past them every
/// sign-in from that address is refused (429) until the window ends.
pub const SIGN_IN_FAILURES: u32 = 10;
/// The window failed sign-ins are counted in.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);

/// Failed sign-ins of one client address in its current window (a fixed window that starts
/// at the first failure after the previous one ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInFailures {
    pub window_start: SystemTime,
    pub count: u32,
}

impl SignInFailures {
    fn current(&self, now: SystemTime) -> bool {
        // A clock that stepped back keeps the window.
        now.duration_since(self.window_start)
            .is_ok_and(|age| age < SIGN_IN_WINDOW)
            || now < self.window_start
    }

    /// `None` if an attempt at `now` may go on; otherwise how long until it may (429 with
    /// `Retry-After`).
    pub fn retry_after(&self, now: SystemTime) -> Option<Duration> {
        if !self.current(now) || self.count < SIGN_IN_FAILURES {
            return None;
        }
        let age = now.duration_since(self.window_start).unwrap_or_default();
        Some(
            SIGN_IN_WINDOW
                .saturating_sub(age)
                .max(Duration::from_secs(1)),
        )
    }

    /// The record after a failure at `now`.
    pub fn failed(previous: Option<Self>, now: SystemTime) -> Self {
        match previous {
            Some(record) if record.current(now) => Self {
                count: record.count.saturating_add(1),
                ..record
            },
            _ => Self {
                window_start: now,
                count: 1,
            },
        }
    }

    /// Whether the record can be forgotten (its window is over).
    pub fn expired(&self, now: SystemTime) -> bool {
        !self.current(now)
    }
}

/// One line of a job's history on its page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Milliseconds after the job's submission (the page's relative time).
    pub after_submit_ms: u64,
    /// `state`, `attempt`, `preemption` or `note`.
    pub kind: &'static str,
    /// `submitted`, `queued → assigned`, `attempt 1 ended`, `preempted`, or the final state.
    pub what: String,
    /// Where, which attempt, how long, why.
    pub detail: String,
}

/// One state change of a job, as the server saw it written to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobTransition {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The state before; `None` for the submission itself.
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// The attempt in flight (or last) after the change: the job's `attempts`.
    pub attempt: u32,
    /// The worker of that attempt, if any.
    pub worker: Option<String>,
    /// Why, when the job's reason changed with this transition.
    pub reason: Option<String>,
}

/// A preemption the job took part in, as its record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreemptionEvent {
    pub at_ms: u64,
    /// This job was the one stopped (else it was the one made room for).
    pub victim: bool,
    /// The other job.
    pub other: String,
    pub worker: String,
    pub reason: String,
}

/// What a job page's history is made of.
#[derive(Debug, Clone, Copy)]
pub struct JobRecord<'a> {
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    /// When and in which state it ended, if it has.
    pub finished: Option<(u64, &'a str)>,
    /// Ended attempts (usage rows, durable).
    pub attempts: &'a [AttemptUsage],
    /// State changes seen by this server since it started (kept in memory).
    pub transitions: &'a [JobTransition],
    /// State changes of this job the server saw but no longer keeps (the oldest).
    pub transitions_dropped: u32,
    pub preemptions: &'a [PreemptionEvent],
}

/// A job's history, oldest first, the end last: every state change the server saw (with
/// its attempt, worker and reason), every ended attempt (worker, pool, worker-seconds) and
/// every preemption with its reason. The state changes are kept in the server's memory; for
/// a job whose changes it did not see (submitted before a restart) the durable moments
/// stand in: submission, first start and the end.
pub fn job_history(record: JobRecord<'_>) -> Vec<HistoryEvent> {
    let event = |at_ms: u64, kind: &'static str, what: String, detail: String| HistoryEvent {
        at_ms,
        after_submit_ms: at_ms.saturating_sub(record.submitted_ms),
        kind,
        what,
        detail,
    };
    let mut events = Vec::new();
    let saw_submission = record.transitions.first().is_some_and(|t| t.from.is_none());
    if !saw_submission {
        events.push(event(
            record.submitted_ms,
            "state",
            "submitted".into(),
            String::new(),
        ));
    }
    let mut end = None;
    if record.transitions.is_empty() {
        if let Some(at_ms) = record.started_ms {
            events.push(event(at_ms, "state", "started".into(), String::new()));
        }
        end = record
            .finished
            .map(|(at_ms, state)| event(at_ms, "state", state.to_owned(), String::new()));
    } else {
        let unseen = !saw_submission || record.transitions_dropped > 0;
        if unseen {
            let first = record.transitions[0].at_ms;
            let why = if record.transitions_dropped > 0 {
                format!(
                    "{} earlier state changes are no longer kept",
                    record.transitions_dropped
                )
            } else {
                "state changes before this were not seen by this server (it restarted since)"
                    .to_owned()
            };
            events.push(event(
                first,
                "note",
                "earlier changes not shown".into(),
                why,
            ));
        }
        let last = record.transitions.len() - 1;
        for (index, transition) in record.transitions.iter().enumerate() {
            let what = match &transition.from {
                None => "submitted".to_owned(),
                Some(from) => format!("{from} → {}", transition.to),
            };
            let mut detail = Vec::new();
            if transition.from.is_some() && transition.attempt > 0 {
                match &transition.worker {
                    Some(worker) => {
                        detail.push(format!("attempt {} on worker {worker}", transition.attempt))
                    }
                    None => detail.push(format!("attempt {}", transition.attempt)),
                }
            }
            if let Some(reason) = &transition.reason {
                detail.push(reason.clone());
            }
            let line = event(transition.at_ms, "state", what, detail.join("; "));
            // The end is last: the last attempt's usage row may be written a moment after.
            if index == last && record.finished.is_some_and(|(_, s)| s == transition.to) {
                end = Some(line);
            } else {
                events.push(line);
            }
        }
        if end.is_none()
            && let Some((at_ms, state)) = record.finished
        {
            end = Some(event(at_ms, "state", state.to_owned(), String::new()));
        }
    }
    for attempt in record.attempts {
        events.push(event(
            attempt.ended_at_ms,
            "attempt",
            format!("attempt {} ended", attempt.attempt),
            format!(
                "on worker {} (pool {}), {:.1} worker-seconds",
                attempt.worker_id, attempt.pool, attempt.worker_seconds
            ),
        ));
    }
    for preemption in record.preemptions {
        let (what, detail) = if preemption.victim {
            (
                "preempted",
                format!(
                    "stopped on worker {} for job {}: {}",
                    preemption.worker, preemption.other, preemption.reason
                ),
            )
        } else {
            (
                "preempted another job",
                format!(
                    "job {} stopped on worker {} for this one: {}",
                    preemption.other, preemption.worker, preemption.reason
                ),
            )
        };
        events.push(event(
            preemption.at_ms,
            "preemption",
            what.to_owned(),
            detail,
        ));
    }
    // Stable: equal times keep the order above (state changes before attempts).
    events.sort_by_key(|event| event.at_ms);
    events.extend(end);
    events
}

/// A pool's workers by state at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerCounts {
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    pub unhealthy: u32,
    pub leaving: u32,
}

impl WorkerCounts {
    /// The series a chart draws, in legend order, with their stroke patterns (so a line is
    /// told apart without colour).
    pub const SERIES: [(&'static str, &'static str); 5] = [
        ("busy", ""),
        ("idle", "6 4"),
        ("starting", "2 3"),
        ("unhealthy", "9 3 2 3"),
        ("leaving", "14 5"),
    ];

    fn get(&self, series: &str) -> u32 {
        match series {
            "busy" => self.busy,
            "idle" => self.idle,
            "starting" => self.starting,
            "unhealthy" => self.unhealthy,
            _ => self.leaving,
        }
    }

    pub fn total(&self) -> u32 {
        self.idle + self.busy + self.starting + self.unhealthy + self.leaving
    }

    fn max(self, other: Self) -> Self {
        Self {
            idle: self.idle.max(other.idle),
            busy: self.busy.max(other.busy),
            starting: self.starting.max(other.starting),
            unhealthy: self.unhealthy.max(other.unhealthy),
            leaving: self.leaving.max(other.leaving),
        }
    }
}

/// A pool's workers by state, sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolSample {
    pub at_ms: u64,
    pub counts: WorkerCounts,
}

/// How far back a pool's chart goes.
pub const CHART_WINDOW: Duration = Duration::from_secs(60 * 60);
/// How often the server samples its pools for the chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Columns a chart has at most: samples are merged into this many (the largest count of
/// each state in a column), so a short spike still shows.
pub const CHART_COLUMNS: u64 = 120;

const CHART_WIDTH: f64 = 600.0;
const CHART_HEIGHT: f64 = 150.0;
const CHART_PAD: f64 = 6.0;

/// Adds `sample` and forgets what is older than `window` before it.
pub fn record_sample(samples: &mut VecDeque<PoolSample>, sample: PoolSample, window: Duration) {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let oldest = sample.at_ms.saturating_sub(window_ms);
    while samples.front().is_some_and(|s| s.at_ms < oldest) {
        samples.pop_front();
    }
    samples.push_back(sample);
}

/// One line of a chart's legend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChartSeries {
    pub state: &'static str,
    /// Its `stroke-dasharray` (empty: solid).
    pub dash: &'static str,
    pub now: u32,
    pub peak: u32,
}

/// A pool's workers over time: an SVG drawing (no script, no external reference) and what
/// it shows in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkersChart {
    pub svg: String,
    /// The largest number of workers at once in the window (the top of the chart).
    pub peak: u32,
    /// The window's start and end, milliseconds since the Unix epoch.
    pub from_ms: u64,
    pub to_ms: u64,
    pub samples: usize,
    pub series: Vec<ChartSeries>,
}

/// Draws `samples` (oldest first) over the `window` ending at `now_ms` as step lines, one
/// per state, each with its own stroke pattern; states that never had a worker in the
/// window are left out, except busy and idle.
pub fn workers_chart(
    pool: &str,
    samples: &[PoolSample],
    now_ms: u64,
    window: Duration,
) -> WorkersChart {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    let from_ms = now_ms.saturating_sub(window_ms);
    let column_ms = window_ms.div_ceil(CHART_COLUMNS).max(1);
    // Merge into columns: (column, largest counts).
    let mut columns: Vec<(u64, WorkerCounts)> = Vec::new();
    for sample in samples
        .iter()
        .filter(|s| s.at_ms >= from_ms && s.at_ms <= now_ms)
    {
        let column = (sample.at_ms - from_ms) / column_ms;
        match columns.last_mut() {
            Some((last, counts)) if *last == column => *counts = counts.max(sample.counts),
            _ => columns.push((column, sample.counts)),
        }
    }
    // The most workers at once: from the samples themselves, as a column's largest counts of
    // each state may come from different moments.
    let peak = samples
        .iter()
        .filter(|s| s.at_ms >= from_ms && s.at_ms <= now_ms)
        .map(|s| s.counts.total())
        .max()
        .unwrap_or(0);
    let top = f64::from(peak.max(1));
    let x = |column: u64| {
        let at = (column * column_ms).min(window_ms);
        CHART_WIDTH * at as f64 / window_ms as f64
    };
    let y = |value: u32| {
        CHART_HEIGHT - CHART_PAD - (CHART_HEIGHT - 2.0 * CHART_PAD) * f64::from(value) / top
    };
    let latest = samples
        .iter()
        .rev()
        .find(|s| s.at_ms >= from_ms && s.at_ms <= now_ms)
        .map(|s| s.counts)
        .unwrap_or_default();
    let mut series = Vec::new();
    let mut paths = String::new();
    for (state, dash) in WorkerCounts::SERIES {
        let series_peak = columns.iter().map(|(_, c)| c.get(state)).max().unwrap_or(0);
        if series_peak == 0 && !matches!(state, "busy" | "idle") {
            continue;
        }
        series.push(ChartSeries {
            state,
            dash,
            now: latest.get(state),
            peak: series_peak,
        });
        if columns.is_empty() {
            continue;
        }
        let mut d = String::new();
        let mut previous = None;
        for (column, counts) in &columns {
            let value = counts.get(state);
            if previous.is_none() {
                d.push_str(&format!("M{:.1} {:.1}", x(*column), y(value)));
            } else if previous != Some(value) {
                d.push_str(&format!("H{:.1}V{:.1}", x(*column), y(value)));
            }
            previous = Some(value);
        }
        // To the right edge: the last value holds until now.
        d.push_str(&format!("H{CHART_WIDTH:.1}"));
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        paths.push_str(&format!(
            r#"<path class="series series-{state}" d="{d}" fill="none" stroke-width="2.5"{dash_attr} vector-effect="non-scaling-stroke"/>"#
        ));
    }
    let summary = format!(
        "Workers of pool {} over the last {} minutes: at most {peak} at once; now {}",
        escape_xml(pool),
        window_ms / 60_000,
        series
            .iter()
            .map(|s| format!("{} {}", s.state, s.now))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let grid = [peak, peak / 2, 0]
        .iter()
        .map(|v| {
            format!(
                r#"<line class="grid" x1="0" x2="{CHART_WIDTH:.0}" y1="{0:.1}" y2="{0:.1}" vector-effect="non-scaling-stroke"/>"#,
                y(*v)
            )
        })
        .collect::<String>();
    let svg = format!(
        r#"<svg class="chart" viewBox="0 0 {CHART_WIDTH:.0} {CHART_HEIGHT:.0}" preserveAspectRatio="none" role="img" aria-label="{summary}"><title>{summary}</title>{grid}{paths}</svg>"#
    );
    WorkersChart {
        svg,
        peak,
        from_ms,
        to_ms: now_ms,
        samples: samples.len(),
        series,
    }
}

/// Text safe inside XML content and attribute values.
fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether a session made at `created` has expired at `now`. A clock that went backwards
/// does not extend a session beyond its lifetime from `now`'s point of view.
pub fn session_expired(created: SystemTime, now: SystemTime, lifetime: Duration) -> bool {
    match now.duration_since(created) {
        Ok(age) => age >= lifetime,
        // `now` before `created`: the clock stepped back; keep the session.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantName;
    use crate::credential::Principal;
    use proptest::prelude::*;

    fn principal(role: Role, tenant: Option<&str>) -> Principal {
        Principal {
            credential_id: Some("c".into()),
            role,
            worker_id: None,
            tenant: tenant.map(|t| TenantName::new(t).unwrap()),
        }
    }

    #[test]
    fn the_console_table() {
        use ConsoleAction::*;
        let table: [(Role, bool, [bool; 5]); 4] = [
            (Role::Admin, true, [true, true, true, true, true]),
            (Role::Tenant, true, [false, true, true, false, true]),
            (Role::Agent, false, [false, false, false, false, false]),
            (Role::Worker, false, [false, false, false, false, false]),
        ];
        for (role, sign_in, expected) in table {
            assert_eq!(may_sign_in(role), sign_in, "{role}");
            for (action, allowed) in [ViewFleet, ViewJobs, CancelJob, ManageWorker, ViewTenants]
                .into_iter()
                .zip(expected)
            {
                assert_eq!(console_permits(role, action), allowed, "{role} {action:?}");
            }
        }
    }

    #[test]
    fn ten_failed_sign_ins_a_minute_then_429_until_the_window_ends() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut record: Option<SignInFailures> = None;
        for i in 0..SIGN_IN_FAILURES {
            assert_eq!(record.and_then(|r| r.retry_after(t0)), None, "attempt {i}");
            record = Some(SignInFailures::failed(
                record,
                t0 + Duration::from_secs(u64::from(i)),
            ));
        }
        let record = record.unwrap();
        assert_eq!(record.count, SIGN_IN_FAILURES);
        let at = t0 + Duration::from_secs(20);
        assert_eq!(record.retry_after(at), Some(Duration::from_secs(40)));
        assert!(!record.expired(at));
        let later = t0 + SIGN_IN_WINDOW;
        assert_eq!(record.retry_after(later), None, "a new window");
        assert!(record.expired(later));
        assert_eq!(SignInFailures::failed(Some(record), later).count, 1);
        // A clock that stepped back keeps the address refused.
        assert!(record.retry_after(t0 - Duration::from_secs(5)).is_some());
    }

    fn attempt(n: u32, at: u64) -> AttemptUsage {
        AttemptUsage {
            job_id: "j".into(),
            attempt: n,
            tenant: "t".into(),
            queue: "q".into(),
            pool: "default".into(),
            worker_id: format!("w-{n}"),
            ended_at_ms: at,
            worker_seconds: 1.5,
            cost: 0.0,
        }
    }

    fn record<'a>(
        finished: Option<(u64, &'a str)>,
        attempts: &'a [AttemptUsage],
        transitions: &'a [JobTransition],
        preemptions: &'a [PreemptionEvent],
    ) -> JobRecord<'a> {
        JobRecord {
            submitted_ms: 1_000,
            started_ms: Some(1_100),
            finished,
            attempts,
            transitions,
            transitions_dropped: 0,
            preemptions,
        }
    }

    fn transition(
        at_ms: u64,
        from: Option<&'static str>,
        to: &'static str,
        attempt: u32,
    ) -> JobTransition {
        JobTransition {
            at_ms,
            from,
            to,
            attempt,
            worker: (attempt > 0).then(|| format!("w-{attempt}")),
            reason: None,
        }
    }

    #[test]
    fn without_state_changes_a_history_has_the_recorded_moments() {
        let attempts = [attempt(2, 3_004), attempt(1, 2_000)];
        let history = job_history(record(Some((3_000, "succeeded")), &attempts, &[], &[]));
        let what: Vec<&str> = history.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "submitted",
                "started",
                "attempt 1 ended",
                "attempt 2 ended",
                "succeeded"
            ]
        );
        assert!(history[2].detail.contains("w-1"), "{:?}", history[2]);
        assert_eq!(history[2].after_submit_ms, 1_000);
        let queued = JobRecord {
            started_ms: None,
            ..record(None, &[], &[], &[])
        };
        assert_eq!(job_history(queued).len(), 1, "queued: submitted only");
    }

    #[test]
    fn a_history_shows_every_state_change_attempt_and_preemption_the_end_last() {
        let mut requeued = transition(2_500, Some("running"), "queued", 1);
        requeued.reason = Some("preempted: critical job j-2 at risk".into());
        let transitions = [
            transition(1_000, None, "queued", 0),
            transition(1_050, Some("queued"), "assigned", 1),
            transition(1_100, Some("assigned"), "running", 1),
            requeued,
            transition(2_600, Some("queued"), "assigned", 2),
            transition(2_700, Some("assigned"), "running", 2),
            transition(3_000, Some("running"), "succeeded", 2),
        ];
        let attempts = [attempt(1, 2_510), attempt(2, 3_004)];
        let preemptions = [PreemptionEvent {
            at_ms: 2_400,
            victim: true,
            other: "j-2".into(),
            worker: "w-1".into(),
            reason: "critical job j-2 at risk".into(),
        }];
        let history = job_history(record(
            Some((3_000, "succeeded")),
            &attempts,
            &transitions,
            &preemptions,
        ));
        let what: Vec<&str> = history.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "submitted",
                "queued → assigned",
                "assigned → running",
                "preempted",
                "running → queued",
                "attempt 1 ended",
                "queued → assigned",
                "assigned → running",
                "attempt 2 ended",
                "running → succeeded",
            ]
        );
        assert_eq!(history[1].detail, "attempt 1 on worker w-1");
        assert!(
            history[3].detail.contains("for job j-2"),
            "{:?}",
            history[3]
        );
        assert_eq!(history[3].kind, "preemption");
        assert!(
            history[4].detail.contains("preempted: critical"),
            "{:?}",
            history[4]
        );
        assert_eq!(history[9].after_submit_ms, 2_000);
        assert!(
            history
                .iter()
                .all(|e| e.what != "earlier changes not shown"),
            "every change was seen"
        );
    }

    #[test]
    fn changes_not_seen_are_said_so() {
        let transitions = [transition(5_000, Some("queued"), "assigned", 1)];
        let history = job_history(record(None, &[], &transitions, &[]));
        let what: Vec<&str> = history.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "submitted",
                "earlier changes not shown",
                "queued → assigned"
            ]
        );
        let dropped = JobRecord {
            transitions_dropped: 3,
            ..record(None, &[], &transitions, &[])
        };
        assert!(job_history(dropped)[1].detail.starts_with("3 earlier"));
        // Ended, but the end was not among the changes seen: it still comes last.
        let ended = job_history(record(Some((9_000, "failed")), &[], &transitions, &[]));
        assert_eq!(ended.last().unwrap().what, "failed");
    }

    fn counts(idle: u32, busy: u32, starting: u32) -> WorkerCounts {
        WorkerCounts {
            idle,
            busy,
            starting,
            ..WorkerCounts::default()
        }
    }

    #[test]
    fn samples_older_than_the_window_are_forgotten() {
        let mut samples = VecDeque::new();
        let window = Duration::from_secs(10);
        for at in [0, 4_000, 8_000, 12_000, 16_000] {
            record_sample(
                &mut samples,
                PoolSample {
                    at_ms: at,
                    counts: counts(1, 0, 0),
                },
                window,
            );
        }
        let kept: Vec<u64> = samples.iter().map(|s| s.at_ms).collect();
        assert_eq!(kept, [8_000, 12_000, 16_000]);
    }

    #[test]
    fn a_chart_draws_each_state_with_its_own_pattern_and_says_what_it_shows() {
        let now = 3_600_000 * 10;
        let window = CHART_WINDOW;
        let samples = [
            PoolSample {
                at_ms: now - 3_000_000,
                counts: counts(2, 0, 0),
            },
            PoolSample {
                at_ms: now - 1_000_000,
                counts: counts(0, 2, 1),
            },
            PoolSample {
                at_ms: now - 1_000,
                counts: counts(1, 1, 0),
            },
            // Too old: outside the window.
            PoolSample {
                at_ms: now - 4_000_000,
                counts: counts(9, 9, 9),
            },
        ];
        let chart = workers_chart("default", &samples, now, window);
        assert_eq!(chart.peak, 3, "2 busy + 1 starting at once");
        let states: Vec<&str> = chart.series.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            ["busy", "idle", "starting"],
            "no unhealthy, leaving"
        );
        assert_eq!(
            chart.series[0].now, 1,
            "now: the latest sample in the window"
        );
        assert_eq!(chart.series[2].peak, 1);
        assert_eq!(chart.svg.matches("<path").count(), 3);
        assert!(
            chart.svg.contains(r#"stroke-dasharray="6 4""#),
            "idle dashed"
        );
        assert!(chart.svg.contains("at most 3 at once"), "{}", chart.svg);
        assert!(!chart.svg.contains("<script"));
        // Columns merge samples: many samples, few path steps.
        let many: Vec<PoolSample> = (0..720)
            .map(|i| PoolSample {
                at_ms: now - 3_600_000 + i * 5_000,
                counts: counts((i % 2) as u32, 1, 0),
            })
            .collect();
        let merged = workers_chart("default", &many, now, window);
        assert!(
            merged.svg.len() < 4_000,
            "merged into columns: {}",
            merged.svg.len()
        );
        // One worker idle, then busy, within one column: one worker at once, not two.
        let moved = [
            PoolSample {
                at_ms: now - 2_000,
                counts: counts(1, 0, 0),
            },
            PoolSample {
                at_ms: now - 1_000,
                counts: counts(0, 1, 0),
            },
        ];
        assert_eq!(workers_chart("default", &moved, now, window).peak, 1);
        let empty = workers_chart("<x>", &[], now, window);
        assert_eq!(empty.peak, 0);
        assert!(empty.svg.contains("&lt;x&gt;"), "escaped: {}", empty.svg);
    }

    #[test]
    fn sessions_expire_after_their_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert!(!session_expired(t0, t0, hour));
        assert!(!session_expired(
            t0,
            t0 + hour - Duration::from_secs(1),
            hour
        ));
        assert!(session_expired(t0, t0 + hour, hour));
        assert!(!session_expired(t0, t0 - hour, hour), "clock stepped back");
    }

    fn any_role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }

    proptest! {
        /// Only admin sessions see the fleet and terminate workers; a role that cannot sign in can do nothing; a session
        /// that sees jobs of a tenant other than its own is an admin's.
        #[test]
        fn only_admins_act_and_tenants_see_their_own(
            role in any_role(),
            own in prop::option::of("[a-c]"),
            job_tenant in "[a-c]",
        ) {
            let who = principal(role, own.as_deref());
            for action in ConsoleAction::ALL {
                if console_permits(role, action) {
                    prop_assert!(may_sign_in(role));
                }
                if matches!(action, ConsoleAction::ManageWorker | ConsoleAction::ViewFleet) && console_permits(role, action) {
                    prop_assert_eq!(role, Role::Admin);
                }
            }
            let job_tenant = TenantName::new(job_tenant).unwrap();
            if job_scope(&who).covers(&job_tenant) && who.tenant.as_ref() != Some(&job_tenant) {
                prop_assert_eq!(role, Role::Admin);
            }
        }
    }
}
