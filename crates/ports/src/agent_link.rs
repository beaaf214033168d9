//! The link from the scheduler to the agents: how a job assignment or a cancel reaches the
//! worker that must act on it. The server implements it over the agents' gRPC sessions;
//! tests use `hodei_testkit::FakeAgents`.

use async_trait::async_trait;
use hodei_core::{Job, JobId, WorkerId};

/// Why a message did not reach an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The worker has no open session now; it may come back.
    #[error("worker {0} is not connected")]
    NotConnected(WorkerId),
}

#[async_trait]
pub trait AgentLink: Send + Sync {
    /// Sends `job` to `worker` to run. `Ok` means it was handed to the session, not that
    /// the agent started it: the agent reports that itself.
    async fn assign(&self, worker: &WorkerId, job: &Job) -> Result<(), LinkError>;

    /// Asks `worker` to stop `job`.
    async fn cancel(&self, worker: &WorkerId, job: &JobId, reason: &str) -> Result<(), LinkError>;

    /// Asks `worker` to stop `job` giving it `grace` between SIGTERM and SIGKILL (a
    /// preemption). Links that cannot say so cancel as [`AgentLink::cancel`] does.
    async fn stop_with_grace(
        &self,
        worker: &WorkerId,
        job: &JobId,
        reason: &str,
        grace: std::time::Duration,
    ) -> Result<(), LinkError> {
        let _ = grace;
        self.cancel(worker, job, reason).await
    }
}
