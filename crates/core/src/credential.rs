//! Credentials and what each may do: roles, the permission decision for every API
//! operation, the worker-session decision, and the token format. Sans IO: minting random
//! secrets and hashing them happen in `hodei-modules`.
//!
//! A token is `hodei_<credential id>_<secret>`. The id is public (it names the credential
//! in `hodei token ls` and in logs); only the secret is secret, and the store keeps only
//! its SHA-256. The configured admin token (`HODEI_TOKEN`, `token` in the config) has no
//! such shape: it is compared as a whole.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{TenantName, ValidationError, WorkerId};

/// What a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The whole API, except opening a worker session.
    Admin,
    /// Agent enrollment: a hand-started agent registers and opens its session, nothing else.
    Agent,
    /// One worker's session; minted by the server for that worker id only.
    Worker,
    /// One tenant's jobs (the tenancy work grants its operations; today: nothing).
    Tenant,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Agent, Role::Worker, Role::Tenant];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Agent => "agent",
            Self::Worker => "worker",
            Self::Tenant => "tenant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                ValidationError::new(
                    "role",
                    format!("{text:?} is not admin, agent, worker or tenant"),
                )
            })
    }
}

/// Who a request comes from, once its credential is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The stored credential's id; `None` for the configured admin token.
    pub credential_id: Option<String>,
    pub role: Role,
    /// For [`Role::Worker`]: the only worker it speaks for.
    pub worker_id: Option<WorkerId>,
    /// For [`Role::Tenant`]: the only tenant it acts for.
    pub tenant: Option<TenantName>,
}

impl Principal {
    /// The configured admin token.
    pub fn configured_admin() -> Self {
        Self {
            credential_id: None,
            role: Role::Admin,
            worker_id: None,
            tenant: None,
        }
    }
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Read workers, pools, jobs and logs.
    Read,
    /// Change pools and workers, submit and cancel jobs.
    Write,
    /// Create, list and revoke credentials.
    ManageCredentials,
    /// `RegisterWorker`, `UnregisterWorker` on the scheduler (another Hodei's registration
    /// adapter).
    Register,
    /// Open a `WorkerSession` (which worker is decided by [`decide_session`]).
    WorkerSession,
}

/// Whether `role` may perform `operation`. The one table of who may call what.
///
/// | role   | read | write | credentials | register | worker session |
/// |--------|------|-------|-------------|----------|----------------|
/// | admin  | yes  | yes   | yes         | yes      | no             |
/// | agent  | no   | no    | no          | no       | yes (enrols)   |
/// | worker | no   | no    | no          | no       | yes (its own)  |
/// | tenant | no   | no    | no          | no       | no             |
pub fn permits(role: Role, operation: Operation) -> bool {
    use Operation::*;
    match role {
        Role::Admin => !matches!(operation, WorkerSession),
        Role::Agent | Role::Worker => matches!(operation, WorkerSession),
        Role::Tenant => false,
    }
}

/// How the worker credential currently bound to a worker id came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerOrigin {
    /// Minted when a provider created the worker.
    Provisioned,
    /// Minted when a hand-started agent enrolled with an agent token.
    Enrolled,
}

/// The newest worker credential bound to the id a hello names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundCredential {
    pub origin: WorkerOrigin,
    pub revoked: bool,
}

/// What to do with a session's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionDecision {
    /// The worker's own credential: open (replacing a live session of the same worker, the
    /// agent reconnecting).
    Open,
    /// An agent token for a worker that has no credential of its own (or an enrolled one
    /// whose agent is gone): mint a worker credential, hand it to this agent, open.
    Enroll,
    /// Refused (`PERMISSION_DENIED`), with why.
    Deny(String),
}

/// Decides a worker session. `bound` is the worker credential of `worker_id`, if one was
/// ever minted; `connected` says whether a session for `worker_id` is open now.
pub fn decide_session(
    principal: &Principal,
    worker_id: &WorkerId,
    bound: Option<BoundCredential>,
    connected: bool,
) -> SessionDecision {
    if !permits(principal.role, Operation::WorkerSession) {
        return SessionDecision::Deny(format!(
            "a {} credential cannot open a worker session; an agent presents its worker credential or an agent token",
            principal.role
        ));
    }
    match principal.role {
        Role::Worker => match &principal.worker_id {
            Some(own) if own == worker_id => SessionDecision::Open,
            _ => SessionDecision::Deny(format!(
                "this worker credential is not worker {worker_id}'s"
            )),
        },
        Role::Agent => match bound {
            None => SessionDecision::Enroll,
            Some(BoundCredential {
                origin: WorkerOrigin::Provisioned,
                ..
            }) => SessionDecision::Deny(format!(
                "worker {worker_id} was provisioned by the server; only its own credential opens its session"
            )),
            Some(BoundCredential {
                origin: WorkerOrigin::Enrolled,
                ..
            }) if connected => SessionDecision::Deny(format!(
                "worker {worker_id} has a live session; only its own credential replaces it"
            )),
            Some(BoundCredential {
                origin: WorkerOrigin::Enrolled,
                ..
            }) => SessionDecision::Enroll,
        },
        Role::Admin | Role::Tenant => SessionDecision::Deny("not permitted".into()),
    }
}

/// The prefix of every minted token.
pub const TOKEN_PREFIX: &str = "hodei_";

/// The `(credential id, secret)` of a minted token, or `None` for anything else (such as
/// the configured admin token).
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = !id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

/// The token for a credential id and its secret.
pub fn format_token(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{id}_{secret}")
}

/// The credential's token presented in an `Authorization` header value: the scheme
/// `Bearer`, case-insensitive (RFC 7235), then one space or more, then the token.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, rest) = header_value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty() && !token.contains(' ')).then_some(token)
}

/// Checks what a new credential names: a worker credential names its worker, a tenant
/// credential its tenant, and nothing else names either.
pub fn validate_new(
    role: Role,
    worker_id: Option<&WorkerId>,
    tenant: Option<&TenantName>,
) -> Result<(), ValidationError> {
    match (role, worker_id, tenant) {
        (Role::Worker, Some(_), None) | (Role::Tenant, None, Some(_)) => Ok(()),
        (Role::Admin | Role::Agent, None, None) => Ok(()),
        (Role::Worker, None, _) => Err(ValidationError::new(
            "worker_id",
            "a worker credential names its worker",
        )),
        (Role::Tenant, _, None) => Err(ValidationError::new(
            "tenant",
            "a tenant credential names its tenant",
        )),
        (_, Some(_), _) => Err(ValidationError::new(
            "worker_id",
            format!("only a worker credential names a worker, not a {role} one"),
        )),
        (_, _, Some(_)) => Err(ValidationError::new(
            "tenant",
            format!("only a tenant credential names a tenant, not a {role} one"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worker(id: &str) -> WorkerId {
        WorkerId::new(id).unwrap()
    }

    fn principal(role: Role, worker_id: Option<&str>) -> Principal {
        Principal {
            credential_id: Some("c1".into()),
            role,
            worker_id: worker_id.map(worker),
            tenant: None,
        }
    }

    #[test]
    fn the_permission_table() {
        use Operation::*;
        let all = [Read, Write, ManageCredentials, Register, WorkerSession];
        let table: [(Role, [bool; 5]); 4] = [
            (Role::Admin, [true, true, true, true, false]),
            (Role::Agent, [false, false, false, false, true]),
            (Role::Worker, [false, false, false, false, true]),
            (Role::Tenant, [false, false, false, false, false]),
        ];
        for (role, expected) in table {
            for (operation, allowed) in all.into_iter().zip(expected) {
                assert_eq!(permits(role, operation), allowed, "{role} {operation:?}");
            }
        }
    }

    #[test]
    fn session_decisions() {
        let w1 = worker("w-1");
        let provisioned = Some(BoundCredential {
            origin: WorkerOrigin::Provisioned,
            revoked: false,
        });
        let enrolled = Some(BoundCredential {
            origin: WorkerOrigin::Enrolled,
            revoked: false,
        });
        let deny = |d: SessionDecision| matches!(d, SessionDecision::Deny(_));
        let cases: Vec<(Principal, Option<BoundCredential>, bool, &str)> = vec![
            (
                principal(Role::Worker, Some("w-1")),
                provisioned,
                true,
                "open",
            ),
            (
                principal(Role::Worker, Some("w-1")),
                provisioned,
                false,
                "open",
            ),
            (
                principal(Role::Worker, Some("w-2")),
                provisioned,
                false,
                "deny",
            ),
            (principal(Role::Worker, None), None, false, "deny"),
            (Principal::configured_admin(), None, false, "deny"),
            (principal(Role::Admin, None), provisioned, true, "deny"),
            (principal(Role::Tenant, None), None, false, "deny"),
            (principal(Role::Agent, None), None, false, "enroll"),
            (principal(Role::Agent, None), provisioned, false, "deny"),
            (principal(Role::Agent, None), provisioned, true, "deny"),
            (principal(Role::Agent, None), enrolled, true, "deny"),
            (principal(Role::Agent, None), enrolled, false, "enroll"),
        ];
        for (who, bound, connected, expected) in cases {
            let decision = decide_session(&who, &w1, bound, connected);
            let ok = match expected {
                "open" => decision == SessionDecision::Open,
                "enroll" => decision == SessionDecision::Enroll,
                _ => deny(decision.clone()),
            };
            assert!(ok, "{who:?} {bound:?} connected={connected}: {decision:?}");
        }
    }

    #[test]
    fn tokens_parse() {
        assert_eq!(
            parse_token("hodei_c0ffee_s3cret"),
            Some(("c0ffee", "s3cret"))
        );
        assert_eq!(
            parse_token(&format_token("abc-1", "x_y")),
            Some(("abc-1", "x_y"))
        );
        for bad in [
            "",
            "hodei_",
            "hodei__x",
            "hodei_id_",
            "hodei_id",
            "other_a_b",
            "hodei_a.b_c",
        ] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for ok in ["Bearer t", "bearer t", "BEARER t", "bEaReR   t"] {
            assert_eq!(bearer_token(ok), Some("t"), "{ok:?}");
        }
        for bad in ["Bearer", "Bearer ", "Basic t", "Bearert", "Bearer a b", "t"] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_credentials_name_what_their_role_needs() {
        let w = worker("w");
        let t = TenantName::new("team").unwrap();
        assert!(validate_new(Role::Admin, None, None).is_ok());
        assert!(validate_new(Role::Agent, None, None).is_ok());
        assert!(validate_new(Role::Worker, Some(&w), None).is_ok());
        assert!(validate_new(Role::Tenant, None, Some(&t)).is_ok());
        assert_eq!(
            validate_new(Role::Worker, None, None).unwrap_err().field,
            "worker_id"
        );
        assert_eq!(
            validate_new(Role::Tenant, None, None).unwrap_err().field,
            "tenant"
        );
        assert_eq!(
            validate_new(Role::Admin, Some(&w), None).unwrap_err().field,
            "worker_id"
        );
        assert_eq!(
            validate_new(Role::Agent, None, Some(&t)).unwrap_err().field,
            "tenant"
        );
        assert_eq!("agent".parse::<Role>().unwrap(), Role::Agent);
        assert_eq!("root".parse::<Role>().unwrap_err().field, "role");
    }

    fn any_role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }

    proptest! {
        /// Nobody but a worker credential for that very id, or an agent token enrolling a
        /// worker nobody provisioned and nobody is connected as, opens a session.
        #[test]
        fn only_the_worker_or_a_fresh_enrollment_opens_a_session(
            role in any_role(),
            own in prop::option::of("[a-c]"),
            hello in "[a-c]",
            bound in prop::option::of((any::<bool>(), any::<bool>())),
            connected in any::<bool>(),
        ) {
            let who = Principal { credential_id: None, role, worker_id: own.as_deref().map(worker), tenant: None };
            let bound = bound.map(|(provisioned, revoked)| BoundCredential {
                origin: if provisioned { WorkerOrigin::Provisioned } else { WorkerOrigin::Enrolled },
                revoked,
            });
            let hello = worker(&hello);
            match decide_session(&who, &hello, bound, connected) {
                SessionDecision::Open => {
                    prop_assert_eq!(role, Role::Worker);
                    prop_assert_eq!(who.worker_id.as_ref(), Some(&hello));
                }
                SessionDecision::Enroll => {
                    prop_assert_eq!(role, Role::Agent);
                    prop_assert!(!connected || bound.is_none());
                    prop_assert!(bound.is_none_or(|b| b.origin == WorkerOrigin::Enrolled));
                }
                SessionDecision::Deny(_) => {}
            }
        }

        #[test]
        fn token_parsing_never_panics(text in ".*") {
            let _ = parse_token(&text);
            let _ = bearer_token(&text);
        }
    }
}
