//! Reconciliation: compare what the provider runs, what the store knows and what the
//! scheduler has registered, and decide the fixes. The async reconciler in
//! `hodei-modules` gathers the three views and carries the actions out.

use std::collections::{BTreeMap, BTreeSet};

use crate::lifecycle::WorkerState;
use crate::worker::WorkerId;

/// The three views of the world, plus the workers whose provisioning or termination is in
/// progress right now; those are skipped because the views may catch them half way.
#[derive(Debug, Clone, Default)]
pub struct Views {
    /// Workers the provider runs that carry our ownership marks.
    pub running: BTreeSet<WorkerId>,
    /// Workers the store knows and believes alive, with their state.
    pub known: BTreeMap<WorkerId, WorkerState>,
    /// Workers the scheduler has registered.
    pub registered: BTreeSet<WorkerId>,
    /// Workers with an operation in flight.
    pub in_flight: BTreeSet<WorkerId>,
}

/// One fix. Each kind of drift maps to one variant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Alive and known but not registered: register it.
    Register(WorkerId),
    /// Registered but its worker is gone: remove the registration.
    Unregister(WorkerId),
    /// Running at the provider but nobody owns it: terminate it.
    TerminateOrphan(WorkerId),
    /// Known to the store as alive but the provider no longer runs it: record it as terminated.
    MarkTerminated(WorkerId),
}

impl Action {
    pub fn worker_id(&self) -> &WorkerId {
        match self {
            Self::Register(id)
            | Self::Unregister(id)
            | Self::TerminateOrphan(id)
            | Self::MarkTerminated(id) => id,
        }
    }

    /// Stable name for logs and the `action` metric label.
    /// Every value [`Action::kind`] can return, for metrics present before the first fix.
    pub const KINDS: [&'static str; 4] = [
        "register",
        "unregister",
        "terminate_orphan",
        "mark_terminated",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Register(_) => "register",
            Self::Unregister(_) => "unregister",
            Self::TerminateOrphan(_) => "terminate_orphan",
            Self::MarkTerminated(_) => "mark_terminated",
        }
    }
}

/// The fixes that bring the three views into agreement, sorted and without duplicates.
pub fn plan(views: &Views) -> Vec<Action> {
    let settled = |id: &WorkerId| !views.in_flight.contains(id);
    let mut actions = BTreeSet::new();

    for id in views.running.iter().filter(|id| settled(id)) {
        match views.known.get(id) {
            None => {
                actions.insert(Action::TerminateOrphan(id.clone()));
            }
            Some(state) => {
                let wants_registration = *state != WorkerState::Draining;
                if wants_registration && !views.registered.contains(id) {
                    actions.insert(Action::Register(id.clone()));
                }
            }
        }
    }
    for id in views.registered.iter().filter(|id| settled(id)) {
        let alive_and_owned = views.running.contains(id) && views.known.contains_key(id);
        if !alive_and_owned {
            actions.insert(Action::Unregister(id.clone()));
        }
    }
    for id in views.known.keys().filter(|id| settled(id)) {
        if !views.running.contains(id) {
            actions.insert(Action::MarkTerminated(id.clone()));
        }
    }
    actions.into_iter().collect()
}

/// The views after `actions` succeed; used by tests and the simulator.
pub fn apply(views: &Views, actions: &[Action]) -> Views {
    let mut next = views.clone();
    for action in actions {
        match action {
            Action::Register(id) => {
                next.registered.insert(id.clone());
            }
            Action::Unregister(id) => {
                next.registered.remove(id);
            }
            Action::TerminateOrphan(id) => {
                next.running.remove(id);
            }
            Action::MarkTerminated(id) => {
                next.known.remove(id);
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }

    fn set(ids: &[&str]) -> BTreeSet<WorkerId> {
        ids.iter().map(|s| id(s)).collect()
    }

    fn known(ids: &[&str]) -> BTreeMap<WorkerId, WorkerState> {
        ids.iter().map(|s| (id(s), WorkerState::Idle)).collect()
    }

    #[test]
    fn each_kind_of_drift_has_its_fix() {
        let views = Views {
            running: set(&["ok", "unregistered", "orphan"]),
            known: known(&["ok", "unregistered", "vanished"]),
            registered: set(&["ok", "gone"]),
            in_flight: BTreeSet::new(),
        };
        assert_eq!(
            plan(&views),
            vec![
                Action::Register(id("unregistered")),
                Action::Unregister(id("gone")),
                Action::TerminateOrphan(id("orphan")),
                Action::MarkTerminated(id("vanished")),
            ]
        );
    }

    #[test]
    fn a_registered_orphan_is_terminated_and_unregistered() {
        let views = Views {
            running: set(&["orphan"]),
            registered: set(&["orphan"]),
            ..Views::default()
        };
        assert_eq!(
            plan(&views),
            vec![
                Action::Unregister(id("orphan")),
                Action::TerminateOrphan(id("orphan"))
            ]
        );
    }

    #[test]
    fn workers_with_an_operation_in_flight_are_left_alone() {
        let views = Views {
            running: set(&["new"]),
            known: BTreeMap::new(),
            registered: set(&["leaving"]),
            in_flight: set(&["new", "leaving"]),
        };
        assert!(plan(&views).is_empty());
    }

    #[test]
    fn a_draining_worker_is_not_registered_again() {
        let views = Views {
            running: set(&["d"]),
            known: [(id("d"), WorkerState::Draining)].into(),
            ..Views::default()
        };
        assert!(plan(&views).is_empty());
    }

    fn arb_views() -> impl Strategy<Value = Views> {
        let ids = prop::collection::btree_set("[a-f]", 0..6);
        (ids.clone(), ids.clone(), ids.clone(), ids, any::<bool>()).prop_map(
            |(running, known, registered, in_flight, draining)| {
                let to_ids = |s: BTreeSet<String>| s.into_iter().map(|s| id(&s)).collect();
                let state = if draining {
                    WorkerState::Draining
                } else {
                    WorkerState::Idle
                };
                Views {
                    running: to_ids(running),
                    known: known.into_iter().map(|s| (id(&s), state)).collect(),
                    registered: to_ids(registered),
                    in_flight: to_ids(in_flight),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn one_round_converges_and_leaves_in_flight_workers_alone(views in arb_views()) {
            let actions = plan(&views);
            for action in &actions {
                prop_assert!(!views.in_flight.contains(action.worker_id()));
            }
            let after = apply(&views, &actions);
            prop_assert!(plan(&after).is_empty(), "not converged: {:?}", plan(&after));
            for id in after.registered.iter().filter(|id| !after.in_flight.contains(*id)) {
                prop_assert!(after.running.contains(id) && after.known.contains_key(id));
            }
            for id in after.running.iter().filter(|id| !after.in_flight.contains(*id)) {
                prop_assert!(after.known.contains_key(id));
            }
        }
    }
}
