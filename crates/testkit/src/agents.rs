//! `FakeAgents`: an [`AgentLink`] that records what the dispatcher sends instead of
//! reaching real agents, and can play a worker that is not connected.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use hodei_core::{Job, JobId, WorkerId};
use hodei_ports::{AgentLink, LinkError};
use tokio::sync::mpsc;

/// What the dispatcher sent to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Assign { worker: WorkerId, job: Box<Job> },
    Cancel { worker: WorkerId, job_id: JobId },
}

#[derive(Debug, Default)]
struct Inner {
    sent: Vec<Sent>,
    unreachable: HashSet<WorkerId>,
}

/// Records assignments and cancels, in order, and announces each on a channel.
#[derive(Debug)]
pub struct FakeAgents {
    inner: Mutex<Inner>,
    announce: mpsc::UnboundedSender<Sent>,
}

impl FakeAgents {
    /// The fake and the receiving end of its announcements.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Sent>) {
        let (announce, announcements) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                inner: Mutex::new(Inner::default()),
                announce,
            }),
            announcements,
        )
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Messages to `worker` fail with [`LinkError::NotConnected`] from now on.
    pub fn make_unreachable(&self, worker: &WorkerId) {
        self.inner().unreachable.insert(worker.clone());
    }

    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.inner().sent.clone()
    }

    fn record(&self, worker: &WorkerId, message: Sent) -> Result<(), LinkError> {
        let mut inner = self.inner();
        if inner.unreachable.contains(worker) {
            return Err(LinkError::NotConnected(worker.clone()));
        }
        inner.sent.push(message.clone());
        let _ = self.announce.send(message);
        Ok(())
    }
}

#[async_trait]
impl AgentLink for FakeAgents {
    async fn assign(&self, worker: &WorkerId, job: &Job) -> Result<(), LinkError> {
        self.record(
            worker,
            Sent::Assign {
                worker: worker.clone(),
                job: Box::new(job.clone()),
            },
        )
    }

    async fn cancel(&self, worker: &WorkerId, job: &JobId, _reason: &str) -> Result<(), LinkError> {
        self.record(
            worker,
            Sent::Cancel {
                worker: worker.clone(),
                job_id: job.clone(),
            },
        )
    }
}
