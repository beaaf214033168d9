//! [`SchedulerPortClient`]: the [`SchedulerPort`] over gRPC, so worker management can
//! register workers with a scheduler in another process exactly as with the in-process one.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hodei_core::{ValidationError, Worker, WorkerId};
use hodei_ports::{SchedulerError, SchedulerPort};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::BearerToken;
use crate::convert::{register_request, validation_error};
use crate::v1::scheduler_service_client::SchedulerServiceClient;
use crate::v1::{ListWorkersRequest, UnregisterWorkerRequest};

/// Where the scheduler is and how long calls may take.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` (or `https://`).
    pub url: String,
    pub token: String,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Deadline of every call, sent to the server as `grpc-timeout` and enforced here.
    pub call_timeout: Duration,
    /// PEM CA certificate(s) to trust for an `https://` URL instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            ca_cert: None,
        }
    }
}

/// The generated client with the bearer token attached.
pub type AuthenticatedClient = SchedulerServiceClient<InterceptedService<Channel, BearerToken>>;

/// See the module docs. Cheap to clone; clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct SchedulerPortClient {
    client: AuthenticatedClient,
    call_timeout: Duration,
}

impl SchedulerPortClient {
    /// Builds a client. It connects lazily, on the first call, and reconnects by itself:
    /// a scheduler that is not up yet is an `Unavailable` error (retryable), not a failure
    /// to build.
    pub fn new(config: &ClientConfig) -> Result<Self, ValidationError> {
        let endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|e| ValidationError::new("scheduler_url", e.to_string()))?;
        let endpoint = crate::tls::client_tls(endpoint, config.ca_cert.as_deref())?
            .connect_timeout(config.connect_timeout)
            .timeout(config.call_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        let client =
            SchedulerServiceClient::with_interceptor(channel, BearerToken::new(&config.token)?);
        Ok(Self {
            client,
            call_timeout: config.call_timeout,
        })
    }

    /// The generated client, for calls the port does not cover (`GetWorker`, sessions).
    pub fn raw(&self) -> AuthenticatedClient {
        self.client.clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }
}

/// Maps a gRPC status to the port's error: what may pass is retryable, what the scheduler
/// decided is not.
pub fn scheduler_error(status: &Status, worker_id: Option<&WorkerId>) -> SchedulerError {
    let message = format!("{}: {}", status.code(), status.message());
    match (status.code(), worker_id) {
        (Code::InvalidArgument, _) => SchedulerError::InvalidWorker(
            validation_error(status)
                .unwrap_or_else(|| ValidationError::new("request", status.message())),
        ),
        (Code::AlreadyExists, Some(id)) => SchedulerError::Conflict(id.clone()),
        (Code::NotFound, Some(id)) => SchedulerError::WorkerNotFound(id.clone()),
        (
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown,
            _,
        ) => SchedulerError::Unavailable(message),
        (Code::Internal, _) => SchedulerError::Internal(message),
        _ => SchedulerError::Rejected(message),
    }
}

#[async_trait]
impl SchedulerPort for SchedulerPortClient {
    async fn register_worker(&self, worker: Worker) -> Result<(), SchedulerError> {
        let request = self.request(register_request(&worker));
        self.client
            .clone()
            .register_worker(request)
            .await
            .map(|_| ())
            .map_err(|status| scheduler_error(&status, Some(&worker.id)))
    }

    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), SchedulerError> {
        let request = self.request(UnregisterWorkerRequest {
            worker_id: worker_id.to_string(),
        });
        self.client
            .clone()
            .unregister_worker(request)
            .await
            .map(|_| ())
            .map_err(|status| scheduler_error(&status, Some(worker_id)))
    }

    async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError> {
        let response = self
            .client
            .clone()
            .list_workers(self.request(ListWorkersRequest {}))
            .await
            .map_err(|status| scheduler_error(&status, None))?;
        response
            .into_inner()
            .workers
            .into_iter()
            .map(|info| WorkerId::new(info.worker_id).map_err(SchedulerError::InvalidWorker))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_retryable_and_permanent_errors() {
        let id = WorkerId::new("w").unwrap();
        let retryable = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Cancelled,
            Code::Unknown,
            Code::Internal,
        ];
        for code in retryable {
            assert!(
                scheduler_error(&Status::new(code, "x"), Some(&id)).is_retryable(),
                "{code:?}"
            );
        }
        let permanent = [
            (Code::InvalidArgument, "invalid_worker"),
            (Code::AlreadyExists, "conflict"),
            (Code::NotFound, "worker_not_found"),
            (Code::Unauthenticated, "rejected"),
            (Code::PermissionDenied, "rejected"),
            (Code::FailedPrecondition, "rejected"),
            (Code::Unimplemented, "rejected"),
        ];
        for (code, kind) in permanent {
            let error = scheduler_error(&Status::new(code, "x"), Some(&id));
            assert!(!error.is_retryable(), "{code:?}");
            assert_eq!(error.kind(), kind, "{code:?}");
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        let error = SchedulerPortClient::new(&ClientConfig::new("not a url", "t")).unwrap_err();
        assert_eq!(error.field, "scheduler_url");
    }
}
