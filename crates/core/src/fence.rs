//! Fencing: when the server gives up on an attempt in flight, and when an agent gives up on
//! its own jobs, so that no job ever runs twice at once.
//!
//! The two sides share one number, the *lease*. An agent that has not heard from the server
//! for `lease` kills its running jobs (it fences itself). The server treats a silent worker's
//! attempt as lost only after `lease + lease_margin`, by which time the agent has killed it;
//! when the provider confirms the agent is dead (its session closed and its process is gone),
//! there is nothing left to fence and the attempt is lost at once. Every attempt carries its
//! number, so whatever an agent says about an attempt the server already gave up on is
//! *stale*: recorded as such, never as the job's result.
//!
//! Everything here is a pure function of its inputs and a clock reading passed in, so that
//! the dispatcher's state machine (`dispatch::Dispatch`) judges every attempt in flight on
//! each tick, on its own clock ([`Millis`]), and the server only applies what it decides.

use std::ops::Add;
use std::time::{Duration, Instant};

use crate::job::JobState;
use crate::worker::{ValidationError, WorkerId};

/// The deadlines of jobs in flight. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FencePolicy {
    /// `agents.lease`: how long an agent may go without hearing from the server before it
    /// kills its running jobs.
    pub lease: Duration,
    /// `agents.lease_margin`: what the server adds to the lease before it gives up on a
    /// silent worker's attempt, to cover the agent's kill and the time a message takes.
    pub lease_margin: Duration,
    /// `jobs.assign_timeout`: how long an assignment may wait for the agent to accept it.
    pub assign_timeout: Duration,
    /// How long an agent that reconnected without listing a job has to deliver its result.
    pub result_grace: Duration,
    /// `jobs.timeout_grace`: how long past a job's own timeout the server waits for the
    /// agent to report it before it ends the attempt as timed out itself.
    pub timeout_grace: Duration,
}

impl Default for FencePolicy {
    /// Lease 10 s, margin 2 s, assignments accepted within 10 s, results after a reconnect
    /// within 2 s, a job's timeout enforced by the server 10 s after the agent should have.
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            lease_margin: Duration::from_secs(2),
            assign_timeout: Duration::from_secs(10),
            result_grace: Duration::from_secs(2),
            timeout_grace: Duration::from_secs(10),
        }
    }
}

impl FencePolicy {
    /// Checks the numbers, naming the configuration key of a bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let at_least = |field: &str, value: Duration, min: Duration| {
            if value < min {
                Err(ValidationError::new(
                    field,
                    format!("is {value:?}, must be at least {min:?}"),
                ))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        at_least("agents.lease", self.lease, ms(100))?;
        at_least("agents.lease_margin", self.lease_margin, ms(100))?;
        at_least("jobs.assign_timeout", self.assign_timeout, ms(100))?;
        at_least("jobs.result_grace", self.result_grace, ms(10))?;
        at_least("jobs.timeout_grace", self.timeout_grace, ms(100))?;
        Ok(())
    }

    /// How long the server waits on a silent worker: lease plus margin.
    pub fn silence_limit(&self) -> Duration {
        self.lease.saturating_add(self.lease_margin)
    }
}

/// A reading of a clock [`judge`] can compute deadlines on: [`Instant`], or [`Millis`] (what
/// the dispatcher's state machine is driven by).
pub trait Moment: Copy + Ord + Add<Duration, Output = Self> {}

impl<T: Copy + Ord + Add<Duration, Output = T>> Moment for T {}

/// Milliseconds on the dispatcher's clock (since the Unix epoch in the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Add<Duration> for Millis {
    type Output = Self;

    fn add(self, rhs: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// What the server knows of the worker running an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence<T = Instant> {
    /// Its session is open and it was last heard from (hello or heartbeat) at this instant.
    Connected { last_heard: T },
    /// Its session closed (or has not reopened since the server started) at this instant.
    Disconnected { since: T },
    /// The provider confirmed its agent is dead: nothing of it can still run.
    Dead,
}

/// One attempt in flight, as [`judge`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight<T = Instant> {
    /// `Assigned` or `Running`; anything else is never judged.
    pub state: JobState,
    /// When the assignment was recorded.
    pub assigned_at: T,
    /// When the agent said it started the job.
    pub started_at: Option<T>,
    /// The job's own timeout per attempt.
    pub timeout: Option<Duration>,
    pub presence: Presence<T>,
    /// The agent reconnected at this instant without listing the job among its running
    /// ones: its result may still be on the way, otherwise the attempt is gone.
    pub unconfirmed_since: Option<T>,
}

/// Why an attempt counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostBecause {
    /// The provider confirmed the worker dead.
    WorkerDead,
    /// Nothing heard from the worker for lease plus margin; it has fenced itself by now.
    Silent,
    /// The agent came back without the job and no result followed.
    NotRunning,
}

impl LostBecause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkerDead => "worker dead",
            Self::Silent => "worker silent past its lease",
            Self::NotRunning => "worker no longer runs it",
        }
    }
}

/// What to do with an attempt in flight now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<T = Instant> {
    /// Nothing yet; judge again at `until` at the latest (`None`: no deadline pending).
    Wait { until: Option<T> },
    /// The assignment was not accepted in time: take it back and queue the job again
    /// without spending an attempt, tell the agent to drop it, and mark the worker unhealthy.
    Withdraw,
    /// The attempt is lost (the job is retried or failed as a worker loss).
    Lost(LostBecause),
    /// The job ran past its timeout and the agent never said so: the server ends the
    /// attempt as timed out and tells the agent to stop it.
    TimedOut,
}

/// The one decision about an attempt in flight at `now`. Rules, first match wins:
///
/// | condition                                                        | verdict            |
/// |------------------------------------------------------------------|--------------------|
/// | worker `Dead`                                                    | `Lost(WorkerDead)` |
/// | not heard from for `lease + lease_margin` (connected or not)     | `Lost(Silent)`     |
/// | reconnected without the job for `result_grace`                   | `Lost(NotRunning)` |
/// | `Running`, connected, past `timeout + timeout_grace`             | `TimedOut`         |
/// | `Assigned`, connected, not accepted within `assign_timeout`      | `Withdraw`         |
/// | otherwise                                                        | `Wait` (next deadline) |
///
/// A silent worker's attempt is never withdrawn: its agent may have started the job, so only
/// the lease (after which it has killed it) makes a second attempt safe.
pub fn judge<T: Moment>(job: &InFlight<T>, policy: &FencePolicy, now: T) -> Verdict<T> {
    if !matches!(job.state, JobState::Assigned | JobState::Running) {
        return Verdict::Wait { until: None };
    }
    let mut next: Option<T> = None;
    let mut pending = |deadline: T| {
        next = Some(next.map_or(deadline, |n| n.min(deadline)));
    };
    let heard = match job.presence {
        Presence::Dead => return Verdict::Lost(LostBecause::WorkerDead),
        Presence::Connected { last_heard } => Some(last_heard),
        Presence::Disconnected { since } => {
            let silent_until = since + policy.silence_limit();
            if now >= silent_until {
                return Verdict::Lost(LostBecause::Silent);
            }
            pending(silent_until);
            None
        }
    };
    if let Some(last_heard) = heard {
        let silent_until = last_heard + policy.silence_limit();
        if now >= silent_until {
            return Verdict::Lost(LostBecause::Silent);
        }
        pending(silent_until);
    }
    if let Some(since) = job.unconfirmed_since {
        let until = since + policy.result_grace;
        if now >= until {
            return Verdict::Lost(LostBecause::NotRunning);
        }
        pending(until);
    }
    if heard.is_some() {
        match (job.state, job.started_at, job.timeout) {
            (JobState::Running, Some(started), Some(timeout)) => {
                let until = started + timeout.saturating_add(policy.timeout_grace);
                if now >= until {
                    return Verdict::TimedOut;
                }
                pending(until);
            }
            (JobState::Assigned, _, _) => {
                let until = job.assigned_at + policy.assign_timeout;
                if now >= until {
                    return Verdict::Withdraw;
                }
                pending(until);
            }
            _ => {}
        }
    }
    Verdict::Wait { until: next }
}

/// Whose attempt a message from an agent is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentAttempt<'a> {
    pub state: JobState,
    pub worker: Option<&'a WorkerId>,
    /// The job's attempt counter, which is the number of the attempt in flight.
    pub attempt: u32,
}

/// Whether a report (acceptance, output, result) is about the attempt in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Current,
    /// About an attempt the server already gave up on (or a job it does not run): recorded
    /// as stale, never applied to the job.
    Stale,
}

/// Classifies a report from `from` about attempt `attempt` of a job whose attempt in
/// flight is `current` (`None`: the job is not in flight). The attempt must match exactly;
/// `0` means the agent did not say (an agent older than attempt numbers) and then only the
/// worker is compared.
pub fn classify_report(
    current: Option<CurrentAttempt<'_>>,
    from: &WorkerId,
    attempt: u32,
) -> Report {
    match current {
        Some(current)
            if matches!(current.state, JobState::Assigned | JobState::Running)
                && current.worker == Some(from)
                && (attempt == 0 || attempt == current.attempt) =>
        {
            Report::Current
        }
        _ => Report::Stale,
    }
}

/// The agent's side of the lease: whether it must kill its jobs now, having last heard from
/// the server at `last_heard`.
pub fn agent_must_fence(last_heard: Instant, lease: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_heard) >= lease
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy() -> FencePolicy {
        FencePolicy::default()
    }

    fn running(t0: Instant, presence: Presence, timeout: Option<u64>) -> InFlight {
        InFlight {
            state: JobState::Running,
            assigned_at: t0,
            started_at: Some(t0),
            timeout: timeout.map(secs),
            presence,
            unconfirmed_since: None,
        }
    }

    #[test]
    fn judge_follows_the_table() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + secs(s);
        let connected = |s: u64| Presence::Connected { last_heard: at(s) };
        let gone = |s: u64| Presence::Disconnected { since: at(s) };
        let assigned = |presence| InFlight {
            state: JobState::Assigned,
            started_at: None,
            ..running(t0, presence, None)
        };
        let unconfirmed = |s: u64| InFlight {
            unconfirmed_since: Some(at(s)),
            ..running(t0, connected(s), None)
        };
        use LostBecause::*;
        use Verdict::*;
        // (case, job, now in seconds, verdict)
        let cases = [
            (
                "dead at once",
                running(t0, Presence::Dead, None),
                0,
                Lost(WorkerDead),
            ),
            (
                "dead assigned",
                assigned(Presence::Dead),
                0,
                Lost(WorkerDead),
            ),
            (
                "fresh running",
                running(t0, connected(0), None),
                1,
                Wait {
                    until: Some(at(12)),
                },
            ),
            (
                "silent 11s",
                running(t0, connected(0), None),
                11,
                Wait {
                    until: Some(at(12)),
                },
            ),
            (
                "silent 12s",
                running(t0, connected(0), None),
                12,
                Lost(Silent),
            ),
            (
                "disconnected 11s",
                running(t0, gone(0), None),
                11,
                Wait {
                    until: Some(at(12)),
                },
            ),
            (
                "disconnected 12s",
                running(t0, gone(0), None),
                12,
                Lost(Silent),
            ),
            (
                "assigned 9s",
                assigned(connected(9)),
                9,
                Wait {
                    until: Some(at(10)),
                },
            ),
            ("assigned 10s", assigned(connected(9)), 10, Withdraw),
            // A disconnected assignment is never withdrawn: it may have started.
            (
                "assigned, gone",
                assigned(gone(5)),
                16,
                Wait {
                    until: Some(at(17)),
                },
            ),
            ("assigned, gone long", assigned(gone(5)), 17, Lost(Silent)),
            (
                "timeout not yet",
                running(t0, connected(20), Some(5)),
                14,
                Wait {
                    until: Some(at(15)),
                },
            ),
            (
                "timeout + grace",
                running(t0, connected(20), Some(5)),
                15,
                TimedOut,
            ),
            (
                "timeout, but silent",
                running(t0, gone(14), Some(5)),
                20,
                Wait {
                    until: Some(at(26)),
                },
            ),
            (
                "unconfirmed 1s",
                unconfirmed(3),
                4,
                Wait { until: Some(at(5)) },
            ),
            ("unconfirmed 2s", unconfirmed(3), 5, Lost(NotRunning)),
            (
                "queued never judged",
                InFlight {
                    state: JobState::Queued,
                    ..running(t0, Presence::Dead, None)
                },
                100,
                Wait { until: None },
            ),
        ];
        for (case, job, now, verdict) in cases {
            assert_eq!(judge(&job, &policy(), at(now)), verdict, "{case}");
        }
    }

    #[test]
    fn reports_are_current_only_for_the_attempt_in_flight() {
        let w1 = WorkerId::new("w-1").unwrap();
        let w2 = WorkerId::new("w-2").unwrap();
        let current = |state, worker, attempt| {
            Some(CurrentAttempt {
                state,
                worker,
                attempt,
            })
        };
        use JobState::*;
        use Report::*;
        let cases = [
            (current(Running, Some(&w1), 2), &w1, 2, Current),
            (current(Assigned, Some(&w1), 2), &w1, 2, Current),
            (current(Running, Some(&w1), 2), &w1, 0, Current),
            (current(Running, Some(&w1), 2), &w1, 1, Stale),
            (current(Running, Some(&w1), 2), &w1, 3, Stale),
            (current(Running, Some(&w1), 2), &w2, 2, Stale),
            (current(Queued, Some(&w1), 2), &w1, 2, Stale),
            (current(Succeeded, Some(&w1), 2), &w1, 2, Stale),
            (None, &w1, 1, Stale),
        ];
        for (current, from, attempt, report) in cases {
            assert_eq!(
                classify_report(current, from, attempt),
                report,
                "{current:?} {from} {attempt}"
            );
        }
    }

    #[test]
    fn the_agent_fences_at_its_lease() {
        let t0 = Instant::now();
        assert!(!agent_must_fence(
            t0,
            secs(10),
            t0 + Duration::from_millis(9_999)
        ));
        assert!(agent_must_fence(t0, secs(10), t0 + secs(10)));
        // A clock reading before the last contact is no silence at all.
        assert!(!agent_must_fence(t0 + secs(5), secs(10), t0));
    }

    #[test]
    fn policies_are_checked_naming_the_key() {
        assert!(policy().validate().is_ok());
        let bad = FencePolicy {
            lease: Duration::ZERO,
            ..policy()
        };
        assert_eq!(bad.validate().unwrap_err().field, "agents.lease");
        let bad = FencePolicy {
            assign_timeout: Duration::from_millis(1),
            ..policy()
        };
        assert_eq!(bad.validate().unwrap_err().field, "jobs.assign_timeout");
    }

    fn presence(t0: Instant) -> impl Strategy<Value = Presence> {
        prop_oneof![
            Just(Presence::Dead),
            (0u64..60_000).prop_map(move |ms| Presence::Connected {
                last_heard: t0 + Duration::from_millis(ms)
            }),
            (0u64..60_000).prop_map(move |ms| Presence::Disconnected {
                since: t0 + Duration::from_millis(ms)
            }),
        ]
    }

    proptest! {
        /// The fencing invariant: the server never gives up on a silent worker's attempt
        /// (nor withdraws it) before the agent's own lease has run out, unless the worker is
        /// confirmed dead; so the agent has killed the attempt before a second one starts.
        #[test]
        fn a_silent_workers_attempt_outlives_its_lease(
            lease_ms in 100u64..20_000,
            margin_ms in 100u64..5_000,
            assign_ms in 100u64..20_000,
            assigned in any::<bool>(),
            timeout in proptest::option::of(1u64..100),
            presence in presence(Instant::now()),
            now_ms in 0u64..120_000,
        ) {
            let t0 = Instant::now();
            let policy = FencePolicy {
                lease: Duration::from_millis(lease_ms),
                lease_margin: Duration::from_millis(margin_ms),
                assign_timeout: Duration::from_millis(assign_ms),
                ..FencePolicy::default()
            };
            let job = InFlight {
                state: if assigned { JobState::Assigned } else { JobState::Running },
                assigned_at: t0,
                started_at: (!assigned).then_some(t0),
                timeout: timeout.map(secs),
                presence,
                unconfirmed_since: None,
            };
            let now = t0 + Duration::from_millis(now_ms);
            let verdict = judge(&job, &policy, now);
            let heard = match presence {
                Presence::Connected { last_heard } => Some(last_heard),
                Presence::Disconnected { since } => Some(since),
                Presence::Dead => None,
            };
            if let Some(heard) = heard {
                let silence = now.saturating_duration_since(heard);
                match verdict {
                    Verdict::Lost(LostBecause::Silent) => {
                        prop_assert!(silence >= policy.lease + policy.lease_margin);
                    }
                    Verdict::Withdraw | Verdict::TimedOut => {
                        // Only while the agent is connected and within its lease.
                        let connected = matches!(presence, Presence::Connected { .. });
                        prop_assert!(connected);
                        prop_assert!(silence < policy.lease + policy.lease_margin);
                    }
                    Verdict::Lost(other) => prop_assert!(false, "unexpected {other:?}"),
                    Verdict::Wait { until } => {
                        // Something is always pending for a live attempt, and in the future.
                        let until = until.expect("a deadline is pending");
                        prop_assert!(until > now);
                    }
                }
            } else {
                prop_assert_eq!(verdict, Verdict::Lost(LostBecause::WorkerDead));
            }
        }

        /// A report is current for at most one attempt number of a job.
        #[test]
        fn at_most_one_attempt_is_current(attempt in 1u32..50, reported in 1u32..50) {
            let w = WorkerId::new("w").unwrap();
            let current = Some(CurrentAttempt { state: JobState::Running, worker: Some(&w), attempt });
            let report = classify_report(current, &w, reported);
            prop_assert_eq!(report == Report::Current, reported == attempt);
        }
    }
}
