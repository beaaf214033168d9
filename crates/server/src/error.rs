//! The one place where domain errors become API errors. Both APIs use this table, so a
//! client sees the same code whichever protocol it speaks.
//!
//! | Domain error                                    | gRPC code            | HTTP |
//! |-------------------------------------------------|----------------------|------|
//! | `ValidationError` (names the field)             | `INVALID_ARGUMENT`   | 400  |
//! | missing or wrong token                          | `UNAUTHENTICATED`    | 401  |
//! | a credential whose role may not do this         | `PERMISSION_DENIED`  | 403  |
//! | two `authorization` headers, or not text        | `INVALID_ARGUMENT`   | 400  |
//! | undecodable or truncated protobuf               | `INVALID_ARGUMENT`   | -    |
//! | request body too large                          | `RESOURCE_EXHAUSTED` | 413  |
//! | unknown credential id                           | `NOT_FOUND`          | 404  |
//! | unknown queue, requirements nothing can satisfy | `INVALID_ARGUMENT`   | 400  |
//! | unknown worker, pool or job                     | `NOT_FOUND`          | 404  |
//! | conflicting registration, illegal transition, cancel of an ended job, drain of a worker still provisioning or gone | `ALREADY_EXISTS` / `FAILED_PRECONDITION` | 409 |
//! | job above its tenant's quota, unknown tenant    | `INVALID_ARGUMENT`   | 400  |
//! | queue full, tenant's queued cap (retry later)   | `RESOURCE_EXHAUSTED` | 429  |
//! | store, provider or scheduler unavailable        | `UNAVAILABLE`        | 503  |
//! | anything else                                   | `INTERNAL`           | 500  |

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hodei_core::QueueError;
use hodei_core::ValidationError;
use hodei_core::tenancy::{AdmissionError, Resource};
use hodei_modules::{
    CredentialError, DrainError, JobError, PoolError, TenantError, WorkerManagementError,
};
use hodei_ports::{ProviderError, SchedulerError, store};

use crate::api::{ErrorBody, ErrorDetail};

/// An API error: a code from the table above, a message, and the field when one is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub field: Option<String>,
}

/// The codes Hodei uses, named as in gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    PayloadTooLarge,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::PayloadTooLarge => "RESOURCE_EXHAUSTED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::FailedPrecondition => StatusCode::CONFLICT,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        Self {
            code: Code::InvalidArgument,
            message: error.to_string(),
            field: Some(error.field),
        }
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> Self {
        let code = match &error {
            store::Error::WorkerNotFound(_) | store::Error::JobNotFound(_) => Code::NotFound,
            store::Error::IllegalTransition(_)
            | store::Error::IllegalJobTransition(_)
            | store::Error::JobStateConflict { .. } => Code::FailedPrecondition,
            store::Error::WorkerExists(_)
            | store::Error::JobExists(_)
            | store::Error::PoolExists(_)
            | store::Error::CredentialExists(_) => Code::AlreadyExists,
            store::Error::Unavailable(_) | store::Error::Fenced { .. } => Code::Unavailable,
            store::Error::Corrupt(_) => Code::Internal,
        };
        Self::new(code, error.to_string())
    }
}

impl From<SchedulerError> for ApiError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::InvalidWorker(invalid) => invalid.into(),
            SchedulerError::WorkerNotFound(_) => Self::new(Code::NotFound, error.to_string()),
            SchedulerError::Conflict(_) => Self::new(Code::AlreadyExists, error.to_string()),
            SchedulerError::Unavailable(_) | SchedulerError::RegistrationFailed(_) => {
                Self::new(Code::Unavailable, error.to_string())
            }
            SchedulerError::Internal(_) => Self::new(Code::Internal, error.to_string()),
            SchedulerError::Rejected(_) => Self::new(Code::FailedPrecondition, error.to_string()),
        }
    }
}

impl From<WorkerManagementError> for ApiError {
    fn from(error: WorkerManagementError) -> Self {
        match error {
            WorkerManagementError::InvalidSpec(invalid) => invalid.into(),
            WorkerManagementError::Store(store) => store.into(),
            WorkerManagementError::WorkerNotFound(_) => {
                Self::new(Code::NotFound, error.to_string())
            }
            WorkerManagementError::Provider { ref source, .. } => {
                let code = match source {
                    ProviderError::InvalidSpec(_) => Code::InvalidArgument,
                    ProviderError::Unavailable(_) => Code::Unavailable,
                    ProviderError::Failed(_) => Code::Internal,
                };
                Self::new(code, error.to_string())
            }
            WorkerManagementError::RegistrationRejected { .. } => {
                Self::new(Code::FailedPrecondition, error.to_string())
            }
            WorkerManagementError::Registration(_) => {
                Self::new(Code::Unavailable, error.to_string())
            }
            WorkerManagementError::ProviderNotConfigured(_) => {
                Self::new(Code::FailedPrecondition, error.to_string())
            }
            WorkerManagementError::Credential(_) => Self::new(Code::Unavailable, error.to_string()),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Invalid(invalid) => invalid.into(),
            PoolError::Store(store) => store.into(),
            PoolError::AlreadyExists(_) => Self::new(Code::AlreadyExists, error.to_string()),
            PoolError::NotFound(_) => Self::new(Code::NotFound, error.to_string()),
            PoolError::ProviderNotConfigured(_) => Self {
                code: Code::InvalidArgument,
                message: error.to_string(),
                field: Some("pool.provider".into()),
            },
        }
    }
}

impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Invalid(invalid) => invalid.into(),
            JobError::Queue(QueueError::Full { .. }) => {
                Self::new(Code::ResourceExhausted, error.to_string())
            }
            JobError::Queue(QueueError::UnknownQueue(_)) => {
                ValidationError::new("queue", error.to_string()).into()
            }
            JobError::Queue(QueueError::Duplicate(_)) => {
                Self::new(Code::AlreadyExists, error.to_string())
            }
            JobError::Tenant(AdmissionError::QueueFull { .. }) => {
                Self::new(Code::ResourceExhausted, error.to_string())
            }
            JobError::Tenant(AdmissionError::NeverFits { resource, .. }) => {
                let field = match resource {
                    Resource::Cpu => "requirements.cpu_cores",
                    Resource::MemoryMb => "requirements.memory_mb",
                    _ => "tenant",
                };
                ValidationError::new(field, error.to_string()).into()
            }
            JobError::Tenant(AdmissionError::UnknownTenant(_)) => {
                ValidationError::new("tenant", error.to_string()).into()
            }
            JobError::Unsatisfiable(why) => ValidationError::new("requirements", why).into(),
            JobError::NotFound(_) => Self::new(Code::NotFound, error.to_string()),
            JobError::AlreadyEnded { .. } => Self::new(Code::FailedPrecondition, error.to_string()),
            JobError::Store(store) => store.into(),
            JobError::Stopped => Self::new(Code::Unavailable, error.to_string()),
        }
    }
}

impl From<DrainError> for ApiError {
    fn from(error: DrainError) -> Self {
        match error {
            DrainError::NotFound(_) => Self::new(Code::NotFound, error.to_string()),
            DrainError::NotDrainable { .. } => {
                Self::new(Code::FailedPrecondition, error.to_string())
            }
            DrainError::Store(store) => store.into(),
        }
    }
}

impl From<CredentialError> for ApiError {
    fn from(error: CredentialError) -> Self {
        match error {
            CredentialError::Invalid(invalid) => invalid.into(),
            CredentialError::NotFound(_) => Self::new(Code::NotFound, error.to_string()),
            CredentialError::Store(store) => store.into(),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(error: TenantError) -> Self {
        match error {
            TenantError::Invalid(invalid) => invalid.into(),
            TenantError::NotFound(_) => Self::new(Code::NotFound, error.to_string()),
            TenantError::InUse { .. } => Self::new(Code::FailedPrecondition, error.to_string()),
            TenantError::Store(store) => store.into(),
            TenantError::Jobs(jobs) => jobs.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.code.http_status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::WorkerId;

    #[test]
    fn the_table_holds() {
        let id = WorkerId::new("w").unwrap();
        let cases: Vec<(ApiError, &str, u16)> = vec![
            (
                ValidationError::new("worker_id", "bad").into(),
                "INVALID_ARGUMENT",
                400,
            ),
            (
                store::Error::WorkerNotFound(id.clone()).into(),
                "NOT_FOUND",
                404,
            ),
            (
                SchedulerError::Conflict(id.clone()).into(),
                "ALREADY_EXISTS",
                409,
            ),
            (
                SchedulerError::Unavailable("x".into()).into(),
                "UNAVAILABLE",
                503,
            ),
            (store::Error::Corrupt("x".into()).into(), "INTERNAL", 500),
            (
                JobError::Queue(QueueError::Full {
                    queue: hodei_core::QueueName::default(),
                    capacity: 1,
                })
                .into(),
                "RESOURCE_EXHAUSTED",
                429,
            ),
            (
                JobError::Queue(QueueError::UnknownQueue(
                    hodei_core::QueueName::new("nightly").unwrap(),
                ))
                .into(),
                "INVALID_ARGUMENT",
                400,
            ),
            (
                JobError::Unsatisfiable("needs 64 cores".into()).into(),
                "INVALID_ARGUMENT",
                400,
            ),
            (
                JobError::AlreadyEnded {
                    id: hodei_core::JobId::new("j-1").unwrap(),
                    state: hodei_core::JobState::Succeeded,
                }
                .into(),
                "FAILED_PRECONDITION",
                409,
            ),
            (
                JobError::NotFound(hodei_core::JobId::new("j-1").unwrap()).into(),
                "NOT_FOUND",
                404,
            ),
            (
                WorkerManagementError::WorkerNotFound(id).into(),
                "NOT_FOUND",
                404,
            ),
            (
                ApiError::new(Code::Unauthenticated, "no token"),
                "UNAUTHENTICATED",
                401,
            ),
            (
                ApiError::new(Code::PermissionDenied, "not yours"),
                "PERMISSION_DENIED",
                403,
            ),
            (
                ApiError::new(Code::PayloadTooLarge, "too big"),
                "RESOURCE_EXHAUSTED",
                413,
            ),
            (
                CredentialError::NotFound("c1".into()).into(),
                "NOT_FOUND",
                404,
            ),
            (
                store::Error::PoolExists("p".into()).into(),
                "ALREADY_EXISTS",
                409,
            ),
        ];
        for (error, code, status) in cases {
            assert_eq!(error.code.as_str(), code);
            assert_eq!(error.code.http_status().as_u16(), status, "{code}");
        }
        let invalid: ApiError = ValidationError::new("capabilities.cpu_cores", "zero").into();
        assert_eq!(invalid.field.as_deref(), Some("capabilities.cpu_cores"));
    }
}

impl Code {
    pub fn grpc(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::PayloadTooLarge => tonic::Code::ResourceExhausted,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        match (error.code, error.field) {
            (Code::InvalidArgument, Some(field)) => {
                let reason = error
                    .message
                    .strip_prefix(&format!("invalid {field}: "))
                    .unwrap_or(&error.message)
                    .to_owned();
                hodei_proto::convert::invalid_argument(&ValidationError::new(field, reason))
            }
            (code, _) => tonic::Status::new(code.grpc(), error.message),
        }
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn grpc_statuses_follow_the_same_table_and_keep_the_field() {
        let status: tonic::Status =
            ApiError::from(ValidationError::new("worker_id", "must not be empty")).into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "invalid worker_id: must not be empty");
        let field = hodei_proto::convert::validation_error(&status).unwrap();
        assert_eq!(
            (field.field.as_str(), field.reason.as_str()),
            ("worker_id", "must not be empty")
        );
        let status: tonic::Status = ApiError::not_found("gone").into();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
