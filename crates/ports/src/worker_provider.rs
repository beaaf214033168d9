//! Worker providers: how workers come to exist (local processes, containers, pods).

use async_trait::async_trait;
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};

/// The credential a worker's agent presents to the server: minted for that one worker id
/// and handed to its provider, which must deliver it to the agent without putting it in the
/// agent's environment or command line (a file the agent reads and removes). Its `Debug`
/// hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentCredential(String);

impl AgentCredential {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AgentCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCredential(..)")
    }
}

/// Provider failures.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The spec cannot be satisfied by this provider. Permanent.
    #[error("invalid worker spec: {0}")]
    InvalidSpec(String),
    /// The provider's backend (Docker, Kubernetes, the OS) is unreachable or refused for
    /// now. Retryable.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// Creating or stopping the worker failed.
    #[error("provider operation failed: {0}")]
    Failed(String),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Creates, stops and lists workers at one backend.
///
/// Every worker a provider creates is marked as ours (a label, a pid file) so that
/// [`WorkerProvider::list_workers`] finds it again after a server restart and the
/// reconciler can tell our workers from strangers.
#[async_trait]
pub trait WorkerProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Creates the worker `id` from `spec` and returns it once it exists. The worker runs
    /// `hodei agent`, which connects back to the server on its own, presenting `credential`.
    async fn create_worker(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        credential: &AgentCredential,
    ) -> Result<Worker, ProviderError>;

    /// Stops and removes the worker. A worker that is already gone is not an error.
    async fn terminate_worker(&self, id: &WorkerId) -> Result<(), ProviderError>;

    /// The workers this provider runs now, ours only, ordered by id.
    async fn list_workers(&self) -> Result<Vec<WorkerId>, ProviderError>;

    /// Whether the worker's agent is certainly dead, with nothing it started still running
    /// (the provider kills what is left first). `false` when it may be alive or the provider
    /// cannot tell; the server then waits out the agent's lease before it runs the worker's
    /// jobs elsewhere.
    async fn confirm_dead(&self, _id: &WorkerId) -> Result<bool, ProviderError> {
        Ok(false)
    }
}
