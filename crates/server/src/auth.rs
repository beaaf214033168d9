//! Authentication and authorization for both APIs, in one place, before any routing: the
//! credential comes from the one `Authorization` header, [`Credentials`] says who it is,
//! and `hodei_core::credential::permits` says whether that role may do what the request
//! asks. Unknown `/api/v1` paths are authenticated before they can answer 404, so the API's
//! shape is not visible without a credential.

use axum::http::{HeaderMap, Method, header};
use hodei_core::credential::{self, Operation, Principal};
use hodei_modules::Credentials;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 401 / `UNAUTHENTICATED`.
    Unauthenticated(&'static str),
    /// 403 / `PERMISSION_DENIED`.
    PermissionDenied(String),
    /// 400 / `INVALID_ARGUMENT`: the `authorization` header is malformed.
    BadHeader(&'static str),
}

/// What a REST request asks to do; `None` for what is open to everyone (`/healthz`,
/// `/readyz`, `/metrics`) or not under `/api/v1`. Jobs are [`Operation::ReadJobs`] and
/// [`Operation::WriteJobs`] and one tenant is [`Operation::ReadTenant`], so that tenant
/// tokens reach them (narrowed to their tenant by the handlers, `scope.rs`); everything
/// else is the fleet's or the credentials'.
pub(crate) fn http_operation(method: &Method, path: &str) -> Option<Operation> {
    let rest = path.strip_prefix("/api/v1")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let read = method == Method::GET || method == Method::HEAD;
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["tokens", ..] | ["tenants", _, "tokens", ..] => Operation::ManageCredentials,
        ["jobs", ..] if read => Operation::ReadJobs,
        ["jobs", ..] => Operation::WriteJobs,
        ["tenants", name] if read && !name.is_empty() => Operation::ReadTenant,
        _ if read => Operation::Read,
        _ => Operation::Write,
    })
}

/// What a gRPC call asks to do, by its path (`/package.Service/Method`). Unknown methods
/// count as reads: they answer `UNIMPLEMENTED`, but only to someone authenticated.
pub(crate) fn grpc_operation(path: &str) -> Operation {
    match path {
        "/hodei.v1.SchedulerService/WorkerSession" => Operation::WorkerSession,
        "/hodei.v1.SchedulerService/RegisterWorker"
        | "/hodei.v1.SchedulerService/UnregisterWorker" => Operation::Register,
        "/hodei.v1.JobService/SubmitJob" | "/hodei.v1.JobService/CancelJob" => Operation::WriteJobs,
        "/hodei.v1.JobService/GetJob"
        | "/hodei.v1.JobService/ListJobs"
        | "/hodei.v1.JobService/StreamLogs" => Operation::ReadJobs,
        "/hodei.v1.TenantService/GetTenant" => Operation::ReadTenant,
        "/hodei.v1.SchedulerService/DrainWorker"
        | "/hodei.v1.SchedulerService/UndrainWorker"
        | "/hodei.v1.TenantService/SetTenant"
        | "/hodei.v1.TenantService/DeleteTenant" => Operation::Write,
        _ if path.starts_with("/hodei.v1.TokenService/") => Operation::ManageCredentials,
        _ => Operation::Read,
    }
}

/// The token of the request's only `Authorization` header.
fn presented(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next().ok_or(Refusal::Unauthenticated(
        "missing bearer token (authorization: Bearer <token>)",
    ))?;
    if values.next().is_some() {
        return Err(Refusal::BadHeader("more than one authorization header"));
    }
    let text = first
        .to_str()
        .map_err(|_| Refusal::BadHeader("the authorization header is not text"))?;
    credential::bearer_token(text).ok_or(Refusal::Unauthenticated(
        "the authorization header is not `Bearer <token>`",
    ))
}

/// Who sends `headers`, if they may perform `operation`.
pub(crate) fn authorize(
    credentials: &Credentials,
    headers: &HeaderMap,
    operation: Operation,
) -> Result<Principal, Refusal> {
    let token = presented(headers)?;
    let principal = credentials
        .authenticate(token)
        .ok_or(Refusal::Unauthenticated("invalid bearer token"))?;
    if !credential::permits(principal.role, operation) {
        return Err(Refusal::PermissionDenied(format!(
            "a {} credential may not do this ({operation:?})",
            principal.role
        )));
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_path() {
        use Operation::*;
        let cases = [
            (Method::GET, "/api/v1/pools", Some(Read)),
            (Method::POST, "/api/v1/pools", Some(Write)),
            (Method::DELETE, "/api/v1/workers/w", Some(Write)),
            (Method::GET, "/api/v1/no-such-thing", Some(Read)),
            (Method::GET, "/api/v1", Some(Read)),
            (Method::GET, "/api/v1/jobs", Some(ReadJobs)),
            (Method::POST, "/api/v1/jobs", Some(WriteJobs)),
            (Method::GET, "/api/v1/jobs/j/logs", Some(ReadJobs)),
            (Method::POST, "/api/v1/jobs/j/cancel", Some(WriteJobs)),
            (Method::GET, "/api/v1/tenants", Some(Read)),
            (Method::GET, "/api/v1/tenants/", Some(Read)),
            (Method::GET, "/api/v1/tenants/t", Some(ReadTenant)),
            (Method::PUT, "/api/v1/tenants/t", Some(Write)),
            (Method::DELETE, "/api/v1/tenants/t", Some(Write)),
            (
                Method::POST,
                "/api/v1/tenants/t/tokens",
                Some(ManageCredentials),
            ),
            (Method::GET, "/api/v1/reports/cost", Some(Read)),
            (Method::GET, "/api/v1/tokens", Some(ManageCredentials)),
            (
                Method::DELETE,
                "/api/v1/tokens/abc",
                Some(ManageCredentials),
            ),
            (Method::GET, "/api/v10/pools", None),
            (Method::GET, "/healthz", None),
            (Method::GET, "/metrics", None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(http_operation(&method, path), expected, "{method} {path}");
        }
        assert_eq!(
            grpc_operation("/hodei.v1.JobService/StreamLogs"),
            Operation::ReadJobs
        );
        assert_eq!(
            grpc_operation("/hodei.v1.TenantService/GetTenant"),
            Operation::ReadTenant
        );
        assert_eq!(
            grpc_operation("/hodei.v1.TenantService/ListTenants"),
            Operation::Read
        );
        assert_eq!(
            grpc_operation("/hodei.v1.SchedulerService/WorkerSession"),
            Operation::WorkerSession
        );
        assert_eq!(
            grpc_operation("/hodei.v1.TokenService/RevokeToken"),
            Operation::ManageCredentials
        );
        assert_eq!(grpc_operation("/x.Y/Z"), Operation::Read);
    }

    #[test]
    fn one_bearer_header_only() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            presented(&headers),
            Err(Refusal::Unauthenticated(_))
        ));
        headers.append(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(presented(&headers), Ok("abc"));
        headers.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert!(matches!(presented(&headers), Err(Refusal::BadHeader(_))));
        let mut basic = HeaderMap::new();
        basic.append(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(
            presented(&basic),
            Err(Refusal::Unauthenticated(_))
        ));
    }
}
