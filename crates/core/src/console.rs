//! What a web-console session may see and do. Sans IO: the server's console module asks
//! these questions and only moves data.
//!
//! | role   | sign in | pools, workers | jobs                | cancel a job, terminate a worker |
//! |--------|---------|----------------|---------------------|----------------------------------|
//! | admin  | yes     | yes            | all                 | yes                              |
//! | tenant | yes     | no             | its own tenant only | its own jobs; no worker          |
//! | agent  | no      | -              | -                   | -                                |
//! | worker | no      | -              | -                   | -                                |

use std::time::{Duration, SystemTime};

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
    /// Terminate a worker.
    TerminateWorker,
}

impl ConsoleAction {
    pub const ALL: [ConsoleAction; 4] = [
        ConsoleAction::ViewFleet,
        ConsoleAction::ViewJobs,
        ConsoleAction::CancelJob,
        ConsoleAction::TerminateWorker,
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
        Role::Tenant => matches!(action, ConsoleAction::ViewJobs | ConsoleAction::CancelJob),
        Role::Agent | Role::Worker => false,
    }
}

pub use crate::credential::{JobScope, job_scope};

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
        let table: [(Role, bool, [bool; 4]); 4] = [
            (Role::Admin, true, [true, true, true, true]),
            (Role::Tenant, true, [false, true, true, false]),
            (Role::Agent, false, [false, false, false, false]),
            (Role::Worker, false, [false, false, false, false]),
        ];
        for (role, sign_in, expected) in table {
            assert_eq!(may_sign_in(role), sign_in, "{role}");
            for (action, allowed) in [ViewFleet, ViewJobs, CancelJob, TerminateWorker]
                .into_iter()
                .zip(expected)
            {
                assert_eq!(console_permits(role, action), allowed, "{role} {action:?}");
            }
        }
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
                if matches!(action, ConsoleAction::TerminateWorker | ConsoleAction::ViewFleet) && console_permits(role, action) {
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
