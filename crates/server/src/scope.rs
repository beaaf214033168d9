//! Tenant isolation applied: the one place the job and tenant handlers of both APIs (and
//! the console) ask what the caller's credential reaches. The decision is
//! `hodei_core::credential::JobScope`; this module only finds the caller's scope and turns
//! a refusal into an API error.
//!
//! - A job outside the scope is `NOT_FOUND` with the very message of a missing job, so a
//!   tenant token cannot learn that another tenant's job exists.
//! - A submission, list or tenant read naming another tenant is `PERMISSION_DENIED` / 403
//!   naming the field (`tenant`, `name`): refused, never silently replaced.
//!
//! `serve.rs` has already refused every operation the role may not do at all
//! (`credential::permits`), so this only narrows what is left.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hodei_core::credential::{JobScope, Principal, ScopeDenied, job_scope};
use hodei_core::{Job, JobId};
use hodei_modules::{JobError, JobService};

use crate::error::{ApiError, Code};

/// What the caller's job and tenant operations reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope(pub JobScope);

impl Scope {
    /// The scope of `principal`; a request without one (never under `/api/v1`, where
    /// `serve.rs` authenticates first) reaches nothing.
    pub(crate) fn of(principal: Option<&Principal>) -> Self {
        Self(principal.map_or(JobScope::Nothing, job_scope))
    }

    /// The scope of a gRPC request (`serve.rs` put its principal in the extensions).
    pub(crate) fn of_grpc<T>(request: &tonic::Request<T>) -> Self {
        Self::of(request.extensions().get::<Principal>())
    }

    /// The tenant a submission or a job list names, once scoped.
    pub(crate) fn tenant_named(&self, asked: Option<&str>) -> Result<Option<String>, ApiError> {
        Ok(self.0.tenant_named(asked)?)
    }

    /// Whether one tenant may be read.
    pub(crate) fn read_tenant(&self, name: &str) -> Result<(), ApiError> {
        Ok(self.0.may_read_tenant(name)?)
    }

    /// Job `id`, if it exists and is in scope; otherwise the same `NOT_FOUND` either way.
    pub(crate) async fn job(&self, jobs: &JobService, id: &JobId) -> Result<Job, ApiError> {
        match jobs.get(id).await? {
            Some(job) if self.0.covers(&job.spec.tenant) => Ok(job),
            _ => Err(JobError::NotFound(id.clone()).into()),
        }
    }
}

impl From<ScopeDenied> for ApiError {
    fn from(denied: ScopeDenied) -> Self {
        let mut error = ApiError::new(Code::PermissionDenied, denied.to_string());
        error.field = Some(denied.field.to_owned());
        error
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts.extensions.get::<Principal>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::TenantName;
    use hodei_core::credential::Role;

    #[test]
    fn refusals_name_their_field_and_are_permission_denied() {
        let scope = Scope::of(Some(&Principal {
            credential_id: Some("c".into()),
            role: Role::Tenant,
            worker_id: None,
            tenant: Some(TenantName::new("team").unwrap()),
        }));
        let error = scope.tenant_named(Some("other")).unwrap_err();
        assert_eq!(error.code, Code::PermissionDenied);
        assert_eq!(error.field.as_deref(), Some("tenant"));
        assert_eq!(
            scope.read_tenant("other").unwrap_err().field.as_deref(),
            Some("name")
        );
        assert_eq!(Scope::of(None).0, JobScope::Nothing);
        assert_eq!(
            Scope::of(Some(&Principal::configured_admin())).0,
            JobScope::All
        );
    }
}
