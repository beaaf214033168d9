//! The worker lifecycle: one state machine that every component goes through to change a
//! worker's state, so that no code path can invent a transition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::worker::{ValidationError, Worker, WorkerId};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// The provider is creating it.
    Provisioning,
    /// It exists; registration with the scheduler is in progress or pending a retry.
    Registering,
    /// Registered and waiting for work.
    Idle,
    /// Running a job.
    Busy,
    /// Cleaning up after a job before it is idle again.
    Cleaning,
    /// Finishing what it has, then terminating; gets no new work.
    Draining,
    /// Failed a health check or missed heartbeats; gets no new work.
    Unhealthy,
    /// Gone. Terminal.
    Terminated,
}

impl WorkerState {
    pub const ALL: [WorkerState; 8] = [
        Self::Provisioning,
        Self::Registering,
        Self::Idle,
        Self::Busy,
        Self::Cleaning,
        Self::Draining,
        Self::Unhealthy,
        Self::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Registering => "registering",
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Cleaning => "cleaning",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
            Self::Terminated => "terminated",
        }
    }

    /// Whether `self -> to` is a legal transition. Any live state may end in `Terminated`
    /// (a worker can die at any moment); nothing leaves `Terminated`.
    pub fn can_transition_to(self, to: WorkerState) -> bool {
        use WorkerState::*;
        match (self, to) {
            (Terminated, _) => false,
            (_, Terminated) => true,
            (Provisioning, Registering) => true,
            (Registering, Idle | Unhealthy | Draining) => true,
            (Idle, Busy | Draining | Unhealthy) => true,
            (Busy, Cleaning | Draining | Unhealthy) => true,
            (Cleaning, Idle | Draining | Unhealthy) => true,
            (Draining, Idle) => true,
            (Unhealthy, Idle | Draining) => true,
            _ => false,
        }
    }

    /// The state after `self -> to`, or the reason it is refused.
    pub fn transition(self, to: WorkerState) -> Result<WorkerState, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// Whether the worker still exists at its provider.
    pub fn is_live(self) -> bool {
        self != Self::Terminated
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerState {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ValidationError::new("state", format!("unknown worker state {s:?}")))
    }
}

/// A refused lifecycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal worker state transition from {from} to {to}")]
pub struct TransitionError {
    pub from: WorkerState,
    pub to: WorkerState,
}

/// What becomes of a drained worker once its current job is done (`hodei worker drain
/// --then`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterDrain {
    /// It is terminated; its pool, if it has one, replaces it.
    Terminate,
    /// It stays, taking no new job, until it is undrained.
    Keep,
}

impl AfterDrain {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminate => "terminate",
            Self::Keep => "keep",
        }
    }
}

impl fmt::Display for AfterDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AfterDrain {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "terminate" => Ok(Self::Terminate),
            "keep" => Ok(Self::Keep),
            _ => Err(ValidationError::new(
                "then",
                format!("{s:?} is neither \"terminate\" nor \"keep\""),
            )),
        }
    }
}

/// The draining workers whose drain is complete and who are to go now: those to be
/// terminated that run no job. A busy one finishes its job first; a kept one stays.
pub fn drained_to_terminate<'a>(
    draining: impl IntoIterator<Item = (&'a WorkerId, AfterDrain)>,
    busy: impl Fn(&WorkerId) -> bool,
) -> Vec<WorkerId> {
    draining
        .into_iter()
        .filter(|(id, then)| *then == AfterDrain::Terminate && !busy(id))
        .map(|(id, _)| id.clone())
        .collect()
}

/// The state a worker is shown in (REST, gRPC, CLI, console), composed from what each part
/// knows: `stored` is the store's lifecycle (`None` for a worker only the scheduler knows, an
/// agent started by hand), `activity` the dispatcher's per-job state (busy, cleaning), and
/// from the registry whether its agent is `unhealthy` and whether it is `draining`.
pub fn shown_state(
    stored: Option<WorkerState>,
    activity: Option<WorkerState>,
    unhealthy: bool,
    draining: bool,
) -> WorkerState {
    use WorkerState::*;
    let base = stored.unwrap_or(if unhealthy { Unhealthy } else { Idle });
    match base {
        Provisioning | Registering | Terminated => base,
        _ if draining => Draining,
        Idle => activity
            .filter(|a| matches!(a, Busy | Cleaning))
            .unwrap_or(Idle),
        _ => base,
    }
}

/// What happened to a worker, as told to the registration side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The provider created it; it should be registered.
    Provisioned(Worker),
    /// It is registered and can take work.
    Ready(WorkerId),
    /// It is gone; it should be unregistered.
    Terminated { worker_id: WorkerId, reason: String },
}

#[cfg(test)]
mod tests {
    use super::WorkerState::*;
    use super::*;

    #[test]
    fn the_happy_path_is_legal() {
        let path = [
            Provisioning,
            Registering,
            Idle,
            Busy,
            Cleaning,
            Idle,
            Draining,
            Terminated,
        ];
        for pair in path.windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn illegal_transitions_are_refused() {
        for (from, to) in [
            (Provisioning, Idle),
            (Provisioning, Busy),
            (Idle, Cleaning),
            (Busy, Idle),
            (Draining, Busy),
            (Terminated, Idle),
            (Terminated, Terminated),
            (Idle, Idle),
        ] {
            assert_eq!(from.transition(to), Err(TransitionError { from, to }));
        }
    }

    #[test]
    fn every_live_state_can_terminate_and_nothing_leaves_terminated() {
        for state in WorkerState::ALL {
            assert_eq!(state.can_transition_to(Terminated), state != Terminated);
            assert!(!Terminated.can_transition_to(state));
        }
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in WorkerState::ALL {
            assert_eq!(state.as_str().parse::<WorkerState>().unwrap(), state);
        }
        assert!("asleep".parse::<WorkerState>().is_err());
    }

    #[test]
    fn after_drain_parses_and_names_the_field() {
        for then in [AfterDrain::Terminate, AfterDrain::Keep] {
            assert_eq!(then.as_str().parse::<AfterDrain>(), Ok(then));
        }
        assert_eq!("stay".parse::<AfterDrain>().unwrap_err().field, "then");
    }

    #[test]
    fn only_idle_workers_drained_to_terminate_go() {
        let ids: Vec<WorkerId> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| WorkerId::new(*id).unwrap())
            .collect();
        let draining = [
            (&ids[0], AfterDrain::Terminate),
            (&ids[1], AfterDrain::Terminate),
            (&ids[2], AfterDrain::Keep),
            (&ids[3], AfterDrain::Keep),
        ];
        let busy = |id: &WorkerId| id.as_str() == "b" || id.as_str() == "d";
        assert_eq!(drained_to_terminate(draining, busy), vec![ids[0].clone()]);
    }

    #[test]
    fn the_shown_state_composes_store_activity_and_registry() {
        // stored, activity, unhealthy, draining -> shown
        let table = [
            (Some(Idle), None, false, false, Idle),
            (Some(Idle), Some(Busy), false, false, Busy),
            (Some(Idle), Some(Cleaning), false, false, Cleaning),
            (Some(Idle), Some(Busy), false, true, Draining),
            (Some(Draining), Some(Busy), false, false, Draining),
            (Some(Unhealthy), Some(Busy), true, false, Unhealthy),
            (Some(Registering), None, false, true, Registering),
            (Some(Terminated), Some(Busy), false, true, Terminated),
            (None, None, false, false, Idle),
            (None, Some(Busy), false, false, Busy),
            (None, None, true, false, Unhealthy),
            (None, Some(Busy), false, true, Draining),
        ];
        for (stored, activity, unhealthy, draining, shown) in table {
            assert_eq!(
                shown_state(stored, activity, unhealthy, draining),
                shown,
                "{stored:?} {activity:?} unhealthy={unhealthy} draining={draining}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn a_busy_or_kept_worker_is_never_terminated(
            workers in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY), 0..20)
        ) {
            let ids: Vec<WorkerId> = (0..workers.len())
                .map(|i| WorkerId::new(format!("w-{i}")).unwrap())
                .collect();
            let draining: Vec<(&WorkerId, AfterDrain)> = ids
                .iter()
                .zip(&workers)
                .map(|(id, (keep, _))| (id, if *keep { AfterDrain::Keep } else { AfterDrain::Terminate }))
                .collect();
            let busy = |id: &WorkerId| ids.iter().position(|i| i == id).is_some_and(|i| workers[i].1);
            let gone = drained_to_terminate(draining, busy);
            for id in &gone {
                let i = ids.iter().position(|x| x == id).unwrap();
                proptest::prop_assert!(!workers[i].0 && !workers[i].1);
            }
            let expected = workers.iter().filter(|(keep, busy)| !keep && !busy).count();
            proptest::prop_assert_eq!(gone.len(), expected);
        }
    }
}
