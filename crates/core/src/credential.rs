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
    /// One tenant's jobs: submit, list, get, follow and cancel them, and read its own
    /// tenant; nothing else (see [`permits`] and [`JobScope`]).
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
    /// Read the fleet: workers, pools, the tenant list, reports.
    Read,
    /// Change the fleet: pools, workers, tenants.
    Write,
    /// List and get jobs, read and follow their logs (which jobs: [`JobScope`]).
    ReadJobs,
    /// Submit and cancel jobs (which jobs: [`JobScope`]).
    WriteJobs,
    /// Read one tenant (which: [`JobScope::may_read_tenant`]).
    ReadTenant,
    /// Create, list and revoke credentials.
    ManageCredentials,
    /// `RegisterWorker`, `UnregisterWorker` on the scheduler (another Hodei's registration
    /// adapter).
    Register,
    /// Open a `WorkerSession` (which worker is decided by [`decide_session`]).
    WorkerSession,
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Read,
        Operation::Write,
        Operation::ReadJobs,
        Operation::WriteJobs,
        Operation::ReadTenant,
        Operation::ManageCredentials,
        Operation::Register,
        Operation::WorkerSession,
    ];
}

/// Whether `role` may perform `operation`. The one table of who may call what; the job and
/// tenant operations are then narrowed by [`job_scope`].
///
/// | role   | read | write | jobs (read, write) | one tenant | credentials | register | worker session |
/// |--------|------|-------|--------------------|------------|-------------|----------|----------------|
/// | admin  | yes  | yes   | yes, every tenant  | any        | yes         | yes      | no             |
/// | agent  | no   | no    | no                 | no         | no          | no       | yes (enrols)   |
/// | worker | no   | no    | no                 | no         | no          | no       | yes (its own)  |
/// | tenant | no   | no    | yes, its own only  | its own    | no          | no       | no             |
pub fn permits(role: Role, operation: Operation) -> bool {
    use Operation::*;
    match role {
        Role::Admin => !matches!(operation, WorkerSession),
        Role::Agent | Role::Worker => matches!(operation, WorkerSession),
        Role::Tenant => matches!(operation, ReadJobs | WriteJobs | ReadTenant),
    }
}

/// Which jobs (and tenant) a principal's job operations reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobScope {
    All,
    /// Only this tenant's.
    Tenant(TenantName),
    /// None (a role without job operations, or a tenant credential without its tenant).
    Nothing,
}

/// Why a scoped request is refused (`PERMISSION_DENIED` / 403), naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ScopeDenied {
    pub field: &'static str,
    pub reason: String,
}

impl JobScope {
    /// Whether a job of `tenant` is in scope. One out of scope is answered as if it did not
    /// exist (`NOT_FOUND`, the same message as a missing job), so its existence is not
    /// revealed.
    pub fn covers(&self, tenant: &TenantName) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(own) => own == tenant,
            Self::Nothing => false,
        }
    }

    /// The tenant a submission or a job list names, once scoped: `asked` as it is for
    /// [`JobScope::All`]; a tenant's own whether it named it or named none; another
    /// tenant is refused rather than silently replaced, so a client that meant another
    /// tenant learns it at once.
    pub fn tenant_named(&self, asked: Option<&str>) -> Result<Option<String>, ScopeDenied> {
        let asked = asked.filter(|t| !t.is_empty());
        match self {
            Self::All => Ok(asked.map(str::to_owned)),
            Self::Tenant(own) => match asked {
                None => Ok(Some(own.to_string())),
                Some(name) if name == own.as_str() => Ok(Some(own.to_string())),
                Some(name) => Err(ScopeDenied {
                    field: "tenant",
                    reason: format!(
                        "a tenant token of {own} acts only for {own}, not for {name:?}"
                    ),
                }),
            },
            Self::Nothing => Err(ScopeDenied {
                field: "tenant",
                reason: "this credential acts for no tenant".into(),
            }),
        }
    }

    /// Whether one tenant's settings and usage may be read: all of them by an admin, its
    /// own by a tenant token (another one is refused, known or not).
    pub fn may_read_tenant(&self, name: &str) -> Result<(), ScopeDenied> {
        match self {
            Self::All => Ok(()),
            Self::Tenant(own) if own.as_str() == name => Ok(()),
            Self::Tenant(own) => Err(ScopeDenied {
                field: "name",
                reason: format!("a tenant token of {own} reads only tenant {own}"),
            }),
            Self::Nothing => Err(ScopeDenied {
                field: "name",
                reason: "this credential reads no tenant".into(),
            }),
        }
    }
}

/// The jobs `principal` reaches.
pub fn job_scope(principal: &Principal) -> JobScope {
    match (principal.role, &principal.tenant) {
        (Role::Admin, _) => JobScope::All,
        (Role::Tenant, Some(tenant)) => JobScope::Tenant(tenant.clone()),
        _ => JobScope::Nothing,
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
        let all = [
            Read,
            Write,
            ReadJobs,
            WriteJobs,
            ReadTenant,
            ManageCredentials,
            Register,
            WorkerSession,
        ];
        assert_eq!(all, Operation::ALL, "the table covers every operation");
        #[rustfmt::skip]
        let table: [(Role, [bool; 8]); 4] = [
            //            read   write  r-jobs w-jobs tenant creds  reg    session
            (Role::Admin,  [true,  true,  true,  true,  true,  true,  true,  false]),
            (Role::Agent,  [false, false, false, false, false, false, false, true]),
            (Role::Worker, [false, false, false, false, false, false, false, true]),
            (Role::Tenant, [false, false, true,  true,  true,  false, false, false]),
        ];
        for (role, expected) in table {
            for (operation, allowed) in all.into_iter().zip(expected) {
                assert_eq!(permits(role, operation), allowed, "{role} {operation:?}");
            }
        }
    }

    fn tenant_principal(tenant: Option<&str>) -> Principal {
        Principal {
            credential_id: Some("c1".into()),
            role: Role::Tenant,
            worker_id: None,
            tenant: tenant.map(|t| TenantName::new(t).unwrap()),
        }
    }

    #[test]
    fn job_scopes() {
        let team = TenantName::new("team").unwrap();
        let other = TenantName::new("other").unwrap();
        assert_eq!(job_scope(&principal(Role::Admin, None)), JobScope::All);
        assert_eq!(job_scope(&Principal::configured_admin()), JobScope::All);
        let scope = job_scope(&tenant_principal(Some("team")));
        assert_eq!(scope, JobScope::Tenant(team.clone()));
        assert!(scope.covers(&team));
        assert!(!scope.covers(&other));
        assert!(!scope.covers(&TenantName::default()));
        assert_eq!(job_scope(&tenant_principal(None)), JobScope::Nothing);
        for role in [Role::Agent, Role::Worker] {
            assert_eq!(job_scope(&principal(role, None)), JobScope::Nothing);
        }
        assert!(!JobScope::Nothing.covers(&team));
        assert!(JobScope::All.covers(&other));
    }

    #[test]
    fn a_tenant_names_only_itself() {
        let scope = JobScope::Tenant(TenantName::new("team").unwrap());
        /// What a scope answers: `None` refused, `Some(tenant named)` accepted.
        type Answer<'a> = Option<Option<&'a str>>;
        // (asked, admin's answer, tenant's answer)
        let cases: [(Option<&str>, Answer, Answer); 4] = [
            (None, Some(None), Some(Some("team"))),
            (Some(""), Some(None), Some(Some("team"))),
            (Some("team"), Some(Some("team")), Some(Some("team"))),
            (Some("other"), Some(Some("other")), None),
        ];
        for (asked, admin, tenant) in cases {
            let owned = |o: Option<Option<&str>>| o.map(|t| t.map(str::to_owned));
            assert_eq!(
                JobScope::All.tenant_named(asked).ok(),
                owned(admin),
                "{asked:?}"
            );
            assert_eq!(scope.tenant_named(asked).ok(), owned(tenant), "{asked:?}");
        }
        let refused = scope.tenant_named(Some("other")).unwrap_err();
        assert_eq!(refused.field, "tenant");
        assert!(refused.reason.contains("other"), "{refused}");
        assert_eq!(
            JobScope::Nothing.tenant_named(None).unwrap_err().field,
            "tenant"
        );
        assert!(scope.may_read_tenant("team").is_ok());
        assert_eq!(scope.may_read_tenant("other").unwrap_err().field, "name");
        assert!(JobScope::All.may_read_tenant("other").is_ok());
        assert!(JobScope::Nothing.may_read_tenant("team").is_err());
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

        /// A tenant token reaches its own tenant's jobs and nothing of anyone else: every
        /// job it can see, and every tenant a submission or list it makes can name, is its
        /// own; and it may do nothing outside the job and own-tenant operations.
        #[test]
        fn a_tenant_token_never_reaches_another_tenant(
            own in prop::option::of("[a-c]"),
            job_tenant in "[a-c]",
            asked in prop::option::of("[a-c]?"),
        ) {
            let who = tenant_principal(own.as_deref());
            let scope = job_scope(&who);
            let job_tenant = TenantName::new(job_tenant).unwrap();
            if scope.covers(&job_tenant) {
                prop_assert_eq!(who.tenant.as_ref(), Some(&job_tenant));
            }
            if let Ok(named) = scope.tenant_named(asked.as_deref()) {
                prop_assert_eq!(named.as_deref(), own.as_deref());
                prop_assert!(own.is_some());
            }
            if let Some(asked) = asked.as_deref().filter(|a| !a.is_empty()) {
                prop_assert_eq!(scope.may_read_tenant(asked).is_ok(), own.as_deref() == Some(asked));
            }
            for operation in Operation::ALL {
                if permits(Role::Tenant, operation) {
                    prop_assert!(matches!(operation, Operation::ReadJobs | Operation::WriteJobs | Operation::ReadTenant));
                }
            }
        }

        #[test]
        fn token_parsing_never_panics(text in ".*") {
            let _ = parse_token(&text);
            let _ = bearer_token(&text);
        }
    }
}
