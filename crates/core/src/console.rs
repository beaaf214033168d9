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
//! Sign-in is rate limited per client address ([`SignInFailures`]), and a job page shows
//! the history its record and its attempts' usage rows hold ([`job_history`]).

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
    /// `submitted`, `started`, `attempt ended` or the final state.
    pub what: String,
    /// Where and how long, for an attempt.
    pub detail: String,
}

/// A job's history from what is recorded: submission, first start, each ended attempt
/// (worker, pool, worker-seconds, from the usage rows) and the end, oldest first, the end
/// last. Only these moments are stored; states in between are not.
pub fn job_history(
    submitted_ms: u64,
    started_ms: Option<u64>,
    finished: Option<(u64, &str)>,
    attempts: &[AttemptUsage],
) -> Vec<HistoryEvent> {
    let mut events = vec![HistoryEvent {
        at_ms: submitted_ms,
        what: "submitted".into(),
        detail: String::new(),
    }];
    if let Some(at_ms) = started_ms {
        events.push(HistoryEvent {
            at_ms,
            what: "started".into(),
            detail: String::new(),
        });
    }
    for attempt in attempts {
        events.push(HistoryEvent {
            at_ms: attempt.ended_at_ms,
            what: format!("attempt {} ended", attempt.attempt),
            detail: format!(
                "on worker {} (pool {}), {:.1} worker-seconds",
                attempt.worker_id, attempt.pool, attempt.worker_seconds
            ),
        });
    }
    // Stable: equal times keep the order above.
    events.sort_by_key(|event| event.at_ms);
    // The end is last: the last attempt's usage row may be written a moment after it.
    if let Some((at_ms, state)) = finished {
        events.push(HistoryEvent {
            at_ms,
            what: state.to_owned(),
            detail: String::new(),
        });
    }
    events
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

    #[test]
    fn a_job_history_is_ordered_and_names_each_attempt() {
        let attempt = |n: u32, at: u64| AttemptUsage {
            job_id: "j".into(),
            attempt: n,
            tenant: "t".into(),
            queue: "q".into(),
            pool: "default".into(),
            worker_id: format!("w-{n}"),
            ended_at_ms: at,
            worker_seconds: 1.5,
            cost: 0.0,
        };
        let history = job_history(
            1_000,
            Some(1_100),
            Some((3_000, "succeeded")),
            &[attempt(2, 3_004), attempt(1, 2_000)],
        );
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
        assert_eq!(
            job_history(5, None, None, &[]).len(),
            1,
            "queued: submitted only"
        );
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
