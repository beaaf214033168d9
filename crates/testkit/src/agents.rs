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

impl FakeAgents {
    /// Messages to `worker` reach it again (its agent reconnected).
    pub fn make_reachable(&self, worker: &WorkerId) {
        self.inner().unreachable.remove(worker);
    }
}

/// What an agent was told, as [`agent_link_contract`] compares it across links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// Run this job, this attempt.
    Assign { job: JobId, attempt: u32 },
    /// Stop this job (a cancel or a preemption).
    Stop { job: JobId },
}

/// How [`agent_link_contract`] plays the agents behind a link under test.
#[async_trait]
pub trait AgentLinkProbe: Send + Sync {
    /// Opens a session for `worker`: messages to it are delivered from now on.
    async fn connect(&self, worker: &WorkerId);
    /// Closes `worker`'s session.
    async fn disconnect(&self, worker: &WorkerId);
    /// What `worker`'s agent received since the last call, in order.
    async fn received(&self, worker: &WorkerId) -> Vec<Told>;
}

/// The contract every [`AgentLink`] passes (the server's session hub, [`FakeAgents`]):
/// what is sent to a connected worker reaches that worker's agent alone, in order; a worker
/// whose session closed gets [`LinkError::NotConnected`] and nothing; a new session gets
/// what is sent after it opened. Uses workers `{prefix}-1` and `{prefix}-2`.
pub async fn agent_link_contract(link: &dyn AgentLink, probe: &dyn AgentLinkProbe, prefix: &str) {
    use hodei_core::{Command, JobSpec};
    let worker = |n: u8| WorkerId::new(format!("{prefix}-{n}")).expect("valid id");
    let (one, two) = (worker(1), worker(2));
    let job = |name: &str, attempts: u32| {
        let mut job = Job::new(
            JobId::new(format!("{prefix}-{name}")).expect("valid id"),
            JobSpec::new(Command::Script("true".to_owned())),
            0,
            std::time::SystemTime::UNIX_EPOCH,
        )
        .expect("valid job");
        job.attempts = attempts;
        job
    };
    probe.connect(&one).await;
    probe.connect(&two).await;

    let first = job("first", 1);
    let second = job("second", 3);
    link.assign(&one, &first)
        .await
        .expect("assign to a connected worker");
    link.assign(&two, &second)
        .await
        .expect("assign to a connected worker");
    link.cancel(&one, &first.id, "user asked")
        .await
        .expect("cancel to a connected worker");
    link.stop_with_grace(
        &two,
        &second.id,
        "preempted",
        std::time::Duration::from_secs(3),
    )
    .await
    .expect("stop with grace to a connected worker");
    assert_eq!(
        probe.received(&one).await,
        [
            Told::Assign {
                job: first.id.clone(),
                attempt: 1
            },
            Told::Stop {
                job: first.id.clone()
            }
        ],
        "worker 1 gets its own messages, in order"
    );
    assert_eq!(
        probe.received(&two).await,
        [
            Told::Assign {
                job: second.id.clone(),
                attempt: 3
            },
            Told::Stop {
                job: second.id.clone()
            }
        ],
        "worker 2 gets its own messages, the attempt number with the job"
    );

    probe.disconnect(&one).await;
    match link.assign(&one, &first).await {
        Err(LinkError::NotConnected(got)) => assert_eq!(got, one),
        other => panic!("assign to a disconnected worker: want NotConnected, got {other:?}"),
    }
    match link.cancel(&one, &first.id, "gone").await {
        Err(LinkError::NotConnected(got)) => assert_eq!(got, one),
        other => panic!("cancel to a disconnected worker: want NotConnected, got {other:?}"),
    }
    probe.connect(&one).await;
    assert_eq!(
        probe.received(&one).await,
        [],
        "nothing was delivered while disconnected"
    );
    link.assign(&one, &second)
        .await
        .expect("assign after a reconnect");
    assert_eq!(
        probe.received(&one).await,
        [Told::Assign {
            job: second.id.clone(),
            attempt: 3
        }]
    );
    assert_eq!(probe.received(&two).await, []);
}
