//! The gRPC side of the one address: `hodei.v1.SchedulerService` over the scheduler
//! registry, and the agents' sessions, each bound to the worker credential that opened it
//! (credentials are checked before routing, in `serve.rs` with `auth.rs`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hodei_core::credential::{self, Principal, SessionDecision, WorkerOrigin};
use hodei_core::health::{HeartbeatPolicy, Liveness};
use hodei_core::job::{AttemptOutcome, LogCap, cap_log, truncation_marker};
use hodei_core::{AfterDrain, Command, Job, JobId, WorkerState};
use hodei_core::{
    ProviderKind, ValidationError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata, WorkerType,
};
use hodei_modules::{Credentials, JobService, RegisteredWorker, SchedulerRegistry};
use hodei_ports::{AgentLink, LinkError, LogChunk, LogStream};
use hodei_proto::convert::{invalid_argument, to_millis, worker_from_request};
use hodei_proto::v1::{self, agent_message, server_message};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ApiError;

/// The server's version, sent to agents.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long an agent has to say hello after opening its session.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Something an agent said, for whoever listens (the job dispatcher, tests).
#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub worker_id: WorkerId,
    pub event: AgentEvent,
}

#[derive(Debug, Clone)]
pub enum AgentEvent {
    Connected,
    Heartbeat(v1::Heartbeat),
    JobAccepted(v1::JobAccepted),
    Log(v1::LogChunk),
    JobResult(v1::JobResult),
    Disconnected,
}

/// Why a message could not be delivered to an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("worker {0} has no open session")]
    NotConnected(WorkerId),
}

type Outbound = mpsc::Sender<Result<v1::ServerMessage, Status>>;

/// One open session: its generation, where to send, the credential that opened it, and
/// what ends it.
#[derive(Debug)]
struct Session {
    generation: u64,
    sender: Outbound,
    credential_id: Option<String>,
    closed: CancellationToken,
}

/// Open sessions by worker, and a broadcast of everything agents say.
#[derive(Debug)]
pub struct SessionHub {
    sessions: Mutex<HashMap<WorkerId, Session>>,
    next_generation: AtomicU64,
    events: broadcast::Sender<SessionEvent>,
}

impl Default for SessionHub {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            events: broadcast::channel(4096).0,
        }
    }
}

impl SessionHub {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `message` to the worker's agent.
    pub async fn send(
        &self,
        worker_id: &WorkerId,
        message: server_message::Body,
    ) -> Result<(), SendError> {
        let sender = self
            .sessions()
            .get(worker_id)
            .map(|session| session.sender.clone())
            .ok_or_else(|| SendError::NotConnected(worker_id.clone()))?;
        sender
            .send(Ok(v1::ServerMessage {
                body: Some(message),
            }))
            .await
            .map_err(|_| SendError::NotConnected(worker_id.clone()))
    }

    /// Everything agents say from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    pub fn is_connected(&self, worker_id: &WorkerId) -> bool {
        self.sessions().contains_key(worker_id)
    }

    fn publish(&self, worker_id: &WorkerId, event: AgentEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(SessionEvent {
            worker_id: worker_id.clone(),
            event,
        });
    }

    /// Ends every open session (at shutdown): the server's half of each stream closes, so
    /// agents see the server go away and reconnect to its successor.
    pub fn close_all(&self) {
        for (_, session) in self.sessions().drain() {
            session.closed.cancel();
        }
    }

    /// Ends the sessions opened with credential `credential_id` (it was revoked). Returns
    /// the workers whose session ended.
    pub fn close_credential(&self, credential_id: &str) -> Vec<WorkerId> {
        let mut sessions = self.sessions();
        let ended: Vec<WorkerId> = sessions
            .iter()
            .filter(|(_, s)| s.credential_id.as_deref() == Some(credential_id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ended {
            if let Some(session) = sessions.remove(id) {
                session.closed.cancel();
            }
        }
        ended
    }

    /// The credentials behind the open sessions.
    pub fn credential_ids(&self) -> Vec<String> {
        self.sessions()
            .values()
            .filter_map(|s| s.credential_id.clone())
            .collect()
    }

    /// Attaches a session, replacing an older one of the same worker (a reconnect, with
    /// the same worker credential: the session decision made sure of it).
    fn attach(
        &self,
        worker_id: &WorkerId,
        sender: Outbound,
        credential_id: Option<String>,
        closed: CancellationToken,
    ) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            generation,
            sender,
            credential_id,
            closed,
        };
        if let Some(older) = self.sessions().insert(worker_id.clone(), session) {
            older.closed.cancel();
        }
        generation
    }

    /// Detaches a session unless a newer one replaced it. Returns whether it was current.
    fn detach(&self, worker_id: &WorkerId, generation: u64) -> bool {
        let mut sessions = self.sessions();
        match sessions.get(worker_id) {
            Some(current) if current.generation == generation => {
                sessions.remove(worker_id);
                true
            }
            _ => false,
        }
    }
}

/// Assignments and cancels travel over the worker's open session.
#[async_trait::async_trait]
impl AgentLink for SessionHub {
    async fn assign(&self, worker: &WorkerId, job: &Job) -> Result<(), LinkError> {
        self.send(worker, server_message::Body::AssignJob(assignment(job)))
            .await
            .map_err(|_| LinkError::NotConnected(worker.clone()))
    }

    async fn cancel(&self, worker: &WorkerId, job: &JobId, reason: &str) -> Result<(), LinkError> {
        let cancel = v1::CancelJob {
            job_id: job.to_string(),
            reason: reason.to_owned(),
            grace_ms: 0,
        };
        self.send(worker, server_message::Body::CancelJob(cancel))
            .await
            .map_err(|_| LinkError::NotConnected(worker.clone()))
    }

    async fn stop_with_grace(
        &self,
        worker: &WorkerId,
        job: &JobId,
        reason: &str,
        grace: std::time::Duration,
    ) -> Result<(), LinkError> {
        let cancel = v1::CancelJob {
            job_id: job.to_string(),
            reason: reason.to_owned(),
            grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX).max(1),
        };
        self.send(worker, server_message::Body::CancelJob(cancel))
            .await
            .map_err(|_| LinkError::NotConnected(worker.clone()))
    }
}

/// The wire form of a job for its agent.
fn assignment(job: &Job) -> v1::JobAssignment {
    let (argv, script) = match &job.spec.command {
        Command::Argv(argv) => (argv.clone(), String::new()),
        Command::Script(script) => (Vec::new(), script.clone()),
    };
    v1::JobAssignment {
        job_id: job.id.to_string(),
        argv,
        script,
        env: job.spec.env.clone().into_iter().collect(),
        working_dir: job.spec.working_dir.clone().unwrap_or_default(),
        timeout_secs: job
            .spec
            .timeout
            .map(|t| u32::try_from(t.as_secs().max(1)).unwrap_or(u32::MAX))
            .unwrap_or(0),
        attempt: job.attempts,
    }
}

/// What an agent's job result means for the job.
fn attempt_outcome(result: &v1::JobResult) -> AttemptOutcome {
    match v1::JobOutcome::try_from(result.outcome) {
        Ok(v1::JobOutcome::Exited) => AttemptOutcome::Exited(result.exit_code),
        Ok(v1::JobOutcome::TimedOut) => AttemptOutcome::TimedOut,
        Ok(v1::JobOutcome::Cancelled) => AttemptOutcome::Cancelled,
        Ok(v1::JobOutcome::FailedToStart) => AttemptOutcome::FailedToStart(result.message.clone()),
        // The agent fenced itself: it killed the job after losing the server for its lease.
        Ok(v1::JobOutcome::Lost) => AttemptOutcome::WorkerLost,
        Ok(v1::JobOutcome::Unspecified) | Err(_) => AttemptOutcome::FailedToStart(format!(
            "the agent reported an unknown outcome {}",
            result.outcome
        )),
    }
}

/// Hands what an agent says about its jobs to the job service, in the order it was said.
async fn forward_to_jobs(jobs: &JobService, worker_id: &WorkerId, event: &AgentEvent) {
    match event {
        AgentEvent::JobAccepted(accepted) => {
            jobs.job_accepted(worker_id.clone(), accepted.job_id.clone(), accepted.attempt)
                .await;
        }
        AgentEvent::Log(chunk) => {
            let Ok(job_id) = JobId::new(chunk.job_id.clone()) else {
                return;
            };
            let stream = match v1::LogStream::try_from(chunk.stream) {
                Ok(v1::LogStream::Stderr) => LogStream::Stderr,
                Ok(v1::LogStream::Output) => LogStream::Output,
                _ => LogStream::Stdout,
            };
            let chunk = LogChunk {
                job_id,
                // Checked against the attempt in flight by the dispatcher (0: not given).
                attempt: chunk.attempt,
                sequence: chunk.sequence,
                stream,
                data: chunk.data.clone(),
            };
            jobs.job_log(worker_id.clone(), chunk).await;
        }
        AgentEvent::JobResult(result) => {
            jobs.job_result(
                worker_id.clone(),
                result.job_id.clone(),
                result.attempt,
                attempt_outcome(result),
                result.health_problem.is_empty(),
            )
            .await;
        }
        AgentEvent::Connected | AgentEvent::Heartbeat(_) | AgentEvent::Disconnected => {}
    }
}

/// `SchedulerService` over the in-process registry.
#[derive(Clone)]
pub struct SchedulerGrpc {
    pub credentials: Credentials,
    pub registry: Arc<SchedulerRegistry>,
    pub hub: Arc<SessionHub>,
    pub heartbeat: HeartbeatPolicy,
    /// `agents.lease`, told to agents in the hello answer.
    pub lease: Duration,
    pub jobs: JobService,
    pub drains: hodei_modules::WorkerDrains,
    pub store: Arc<dyn hodei_ports::Store>,
    /// `[jobs] max_log_bytes`: output kept per attempt, 0 for no cap.
    pub max_log_bytes: u64,
}

fn worker_id(text: String) -> Result<WorkerId, Status> {
    WorkerId::new(text).map_err(|e| invalid_argument(&e))
}

impl std::fmt::Debug for SchedulerGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerGrpc")
            .field("registry", &self.registry)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// The gRPC shape of the one worker read model ([`crate::workers`]): a registered worker
/// and the state every API shows it in.
fn worker_info(entry: &RegisteredWorker, state: WorkerState) -> v1::WorkerInfo {
    let status = match state {
        WorkerState::Draining => v1::WorkerStatus::Draining,
        WorkerState::Unhealthy | WorkerState::Terminated => v1::WorkerStatus::Unhealthy,
        WorkerState::Provisioning | WorkerState::Registering => v1::WorkerStatus::Starting,
        _ if entry.last_seen.is_none() => v1::WorkerStatus::Starting,
        WorkerState::Idle | WorkerState::Busy | WorkerState::Cleaning => {
            v1::WorkerStatus::Available
        }
    };
    v1::WorkerInfo {
        worker_id: entry.worker.id.to_string(),
        capabilities: Some((&entry.worker.capabilities).into()),
        metadata: Some((&entry.worker.metadata).into()),
        status: status.into(),
        connected: entry.connected,
        registered_at_ms: to_millis(entry.registered_at),
        last_seen_ms: entry.last_seen.map(to_millis).unwrap_or(0),
        agent_version: entry.agent_version.clone().unwrap_or_default(),
    }
}

impl SchedulerGrpc {
    /// A registered worker as [`worker_info`] shows it, `NOT_FOUND` if it is not registered.
    async fn registered_info(&self, id: &WorkerId) -> Result<v1::WorkerInfo, Status> {
        let reading = crate::workers::get(self.store.as_ref(), &self.registry, &self.jobs, id)
            .await
            .map_err(ApiError::from)?;
        reading
            .as_ref()
            .and_then(|r| {
                r.registration
                    .as_ref()
                    .map(|entry| worker_info(entry, r.state))
            })
            .ok_or_else(|| Status::not_found(format!("worker {id} is not registered")))
    }
}

/// The worker an agent describes in its hello, for when nobody registered it.
fn worker_from_hello(hello: &v1::Hello) -> Result<Worker, ValidationError> {
    let id = WorkerId::new(hello.worker_id.clone())?;
    let capabilities: WorkerCapabilities = hello
        .capabilities
        .clone()
        .ok_or_else(|| ValidationError::new("hello.capabilities", "is required"))?
        .into();
    let worker = Worker {
        id,
        capabilities,
        metadata: WorkerMetadata {
            // Started by hand (or by an outside program), not kept warm by a pool.
            worker_type: WorkerType::Dynamic,
            provider: ProviderKind::External,
            pool: None,
            namespace: "default".into(),
            labels: hello.labels.clone(),
            tags: Vec::new(),
            provision_timestamp: SystemTime::now(),
        },
    };
    worker.validate()?;
    if hello.version.len() > 64 {
        return Err(ValidationError::new(
            "hello.version",
            "at most 64 characters allowed",
        ));
    }
    Ok(worker)
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::scheduler_service_server::SchedulerService for SchedulerGrpc {
    async fn register_worker(
        &self,
        request: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let request = request.into_inner();
        let stamped = request
            .metadata
            .as_ref()
            .is_some_and(|m| m.provision_timestamp_ms > 0);
        let mut worker = worker_from_request(request).map_err(|e| invalid_argument(&e))?;
        // Unset, the time defaults to now; registering the same worker again is still the
        // same data (ALREADY_REGISTERED), so it keeps the time it was first given.
        if !stamped && let Some(existing) = self.registry.get(&worker.id) {
            worker.metadata.provision_timestamp = existing.worker.metadata.provision_timestamp;
        }
        let worker_id = worker.id.to_string();
        let changed = self.registry.register(worker).map_err(ApiError::from)?;
        let status = if changed {
            v1::RegistrationStatus::Success
        } else {
            v1::RegistrationStatus::AlreadyRegistered
        };
        Ok(Response::new(v1::RegisterWorkerResponse {
            status: status.into(),
            worker_id,
        }))
    }

    async fn unregister_worker(
        &self,
        request: Request<v1::UnregisterWorkerRequest>,
    ) -> Result<Response<v1::UnregisterWorkerResponse>, Status> {
        let id = worker_id(request.into_inner().worker_id)?;
        self.registry.unregister(&id).map_err(ApiError::from)?;
        Ok(Response::new(v1::UnregisterWorkerResponse {
            status: v1::UnregistrationStatus::Success.into(),
        }))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let readings = crate::workers::list(
            self.store.as_ref(),
            &self.registry,
            &self.jobs,
            &hodei_ports::WorkerFilter::live(),
        )
        .await
        .map_err(ApiError::from)?;
        let workers = readings
            .iter()
            .filter_map(|r| {
                r.registration
                    .as_ref()
                    .map(|entry| worker_info(entry, r.state))
            })
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn get_worker(
        &self,
        request: Request<v1::GetWorkerRequest>,
    ) -> Result<Response<v1::GetWorkerResponse>, Status> {
        let id = worker_id(request.into_inner().worker_id)?;
        Ok(Response::new(v1::GetWorkerResponse {
            worker: Some(self.registered_info(&id).await?),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        let request = request.into_inner();
        let id = worker_id(request.worker_id)?;
        let then = match v1::DrainThen::try_from(request.then) {
            Ok(v1::DrainThen::Unspecified | v1::DrainThen::Terminate) => AfterDrain::Terminate,
            Ok(v1::DrainThen::Keep) => AfterDrain::Keep,
            Err(_) => {
                return Err(invalid_argument(&ValidationError::new(
                    "then",
                    format!("unknown value {}", request.then),
                )));
            }
        };
        self.drains.drain(&id, then).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::DrainWorkerResponse {
            worker: Some(self.registered_info(&id).await?),
        }))
    }

    async fn undrain_worker(
        &self,
        request: Request<v1::UndrainWorkerRequest>,
    ) -> Result<Response<v1::UndrainWorkerResponse>, Status> {
        let id = worker_id(request.into_inner().worker_id)?;
        self.drains.undrain(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::UndrainWorkerResponse {
            worker: Some(self.registered_info(&id).await?),
        }))
    }

    type WorkerSessionStream = SessionStream;

    async fn worker_session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::WorkerSessionStream>, Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no credential"))?;
        let remote = request
            .extensions()
            .get::<crate::serve::RemoteAddr>()
            .map(|remote| remote.0);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))?;
        let hello = match first {
            Some(Ok(v1::AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })) => hello,
            Some(Ok(_)) => {
                return Err(invalid_argument(&ValidationError::new(
                    "hello",
                    "the first message of a session must be a hello",
                )));
            }
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("session closed before hello")),
        };
        let worker = worker_from_hello(&hello).map_err(|e| invalid_argument(&e))?;
        let id = worker.id.clone();
        let decision = credential::decide_session(
            &principal,
            &id,
            self.credentials.bound(&id),
            self.hub.is_connected(&id),
        );
        let (credential_id, worker_credential) = match decision {
            SessionDecision::Open => (principal.credential_id.clone(), String::new()),
            SessionDecision::Enroll => {
                let token = self
                    .credentials
                    .mint_worker(&id, WorkerOrigin::Enrolled, principal.credential_id.clone())
                    .await
                    .map_err(ApiError::from)?;
                let minted = credential::parse_token(token.expose()).map(|(id, _)| id.to_owned());
                tracing::info!(worker_id = %id, agent_token = ?principal.credential_id, "agent enrolled, worker credential minted");
                (minted, token.expose().to_owned())
            }
            SessionDecision::Deny(reason) => {
                tracing::warn!(worker_id = %id, ?remote, credential_id = ?principal.credential_id, role = %principal.role, %reason, "refused a worker session");
                return Err(Status::permission_denied(reason));
            }
        };
        let before = self
            .registry
            .connect(worker, &hello.version)
            .map_err(ApiError::from)?;
        let (sender, receiver) = mpsc::channel(256);
        let closed = CancellationToken::new();
        let generation = self
            .hub
            .attach(&id, sender.clone(), credential_id, closed.clone());
        tracing::info!(worker_id = %id, agent_version = %hello.version, running_jobs = hello.running_job_ids.len(), recovered = (before != Liveness::Healthy), "agent session opened");
        self.hub.publish(&id, AgentEvent::Connected);
        self.jobs
            .agent_connected(id.clone(), hello.running_job_ids.clone())
            .await;
        let interval_ms = u32::try_from(self.heartbeat.interval.as_millis()).unwrap_or(u32::MAX);
        let ack = v1::ServerMessage {
            body: Some(server_message::Body::HelloAck(v1::HelloAck {
                worker_id: id.to_string(),
                heartbeat_interval_ms: interval_ms,
                server_version: SERVER_VERSION.to_owned(),
                worker_credential,
                lease_ms: u32::try_from(self.lease.as_millis()).unwrap_or(u32::MAX),
            })),
        };
        sender
            .send(Ok(ack))
            .await
            .map_err(|_| Status::internal("session closed during hello"))?;
        // Weak, so that closing the session (at shutdown, on revocation) is not held up by
        // this task: the hub holds the only strong sender.
        let acks = sender.downgrade();
        drop(sender);

        let registry = self.registry.clone();
        let hub = self.hub.clone();
        let jobs = self.jobs.clone();
        let max_log_bytes = self.max_log_bytes;
        tokio::spawn(async move {
            // Output kept so far per (job, attempt) of this session, for the log cap.
            let mut logged: std::collections::HashMap<(String, u32), u64> =
                std::collections::HashMap::new();
            loop {
                let message = tokio::select! {
                    message = inbound.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    // Revoked, replaced, or the server is stopping.
                    () = closed.cancelled() => break,
                };
                let body = match message {
                    Ok(v1::AgentMessage { body: Some(body) }) => body,
                    Ok(_) => continue,
                    Err(status) => {
                        tracing::debug!(worker_id = %id, %status, "agent session broke");
                        break;
                    }
                };
                let event = match body {
                    agent_message::Body::Heartbeat(heartbeat) => {
                        registry.heartbeat(&id);
                        // The answer renews the agent's lease. Never wait for room: an agent
                        // that does not read its session goes without, and fences itself.
                        let ack = v1::HeartbeatAck {
                            sequence: heartbeat.sequence,
                        };
                        if let Some(sender) = acks.upgrade() {
                            let _ = sender.try_send(Ok(v1::ServerMessage {
                                body: Some(server_message::Body::HeartbeatAck(ack)),
                            }));
                        }
                        if let Some(usage) = &heartbeat.usage {
                            registry.record_usage(
                                &id,
                                hodei_modules::ResourceUsage {
                                    load_average: usage.load_average,
                                    memory_used_mb: usage.memory_used_mb,
                                    running_jobs: usage.running_jobs,
                                },
                            );
                        }
                        AgentEvent::Heartbeat(heartbeat)
                    }
                    agent_message::Body::JobAccepted(accepted) => AgentEvent::JobAccepted(accepted),
                    agent_message::Body::LogChunk(mut chunk) => {
                        let key = (chunk.job_id.clone(), chunk.attempt);
                        let stored = logged.get(&key).copied().unwrap_or(0);
                        match cap_log(stored, chunk.data.len(), max_log_bytes) {
                            LogCap::Keep => {}
                            LogCap::Truncate(keep) => {
                                tracing::warn!(worker_id = %id, job_id = %chunk.job_id, max_log_bytes, "job output truncated at the log cap");
                                chunk.data.truncate(keep);
                                chunk
                                    .data
                                    .extend_from_slice(truncation_marker(max_log_bytes).as_bytes());
                            }
                            LogCap::Drop => continue,
                        }
                        let len = u64::try_from(chunk.data.len()).unwrap_or(u64::MAX);
                        logged.insert(key, stored.saturating_add(len));
                        AgentEvent::Log(chunk)
                    }
                    agent_message::Body::JobResult(result) => {
                        logged.remove(&(result.job_id.clone(), result.attempt));
                        AgentEvent::JobResult(result)
                    }
                    agent_message::Body::Hello(_) => {
                        tracing::warn!(worker_id = %id, "ignoring a second hello in one session");
                        continue;
                    }
                };
                forward_to_jobs(&jobs, &id, &event).await;
                hub.publish(&id, event);
            }
            // Ended by its agent or by a revocation (then the hub already forgot it); a
            // session replaced by a newer one of the same worker leaves the worker connected.
            let current = hub.detach(&id, generation);
            if current || !hub.is_connected(&id) {
                registry.disconnect(&id);
                hub.publish(&id, AgentEvent::Disconnected);
                tracing::info!(worker_id = %id, "agent session closed");
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::Mutex;

    use hodei_testkit::agents::{AgentLinkProbe, Told, agent_link_contract};

    use super::*;

    /// An open session: its generation and the agent's end of it.
    type OpenSession = (u64, mpsc::Receiver<Result<v1::ServerMessage, Status>>);

    /// Plays agents over the hub as the session handler does: a channel per session.
    struct HubProbe<'a> {
        hub: &'a SessionHub,
        open: Mutex<HashMap<WorkerId, OpenSession>>,
    }

    #[async_trait::async_trait]
    impl AgentLinkProbe for HubProbe<'_> {
        async fn connect(&self, worker: &WorkerId) {
            let (sender, receiver) = mpsc::channel(16);
            let generation = self
                .hub
                .attach(worker, sender, None, CancellationToken::new());
            self.open
                .lock()
                .unwrap()
                .insert(worker.clone(), (generation, receiver));
        }

        async fn disconnect(&self, worker: &WorkerId) {
            let (generation, _) = self.open.lock().unwrap().remove(worker).unwrap();
            assert!(self.hub.detach(worker, generation));
        }

        async fn received(&self, worker: &WorkerId) -> Vec<Told> {
            let mut open = self.open.lock().unwrap();
            let Some((_, receiver)) = open.get_mut(worker) else {
                return Vec::new();
            };
            let mut told = Vec::new();
            while let Ok(message) = receiver.try_recv() {
                match message.unwrap().body {
                    Some(server_message::Body::AssignJob(assignment)) => told.push(Told::Assign {
                        job: JobId::new(assignment.job_id).unwrap(),
                        attempt: assignment.attempt,
                    }),
                    Some(server_message::Body::CancelJob(cancel)) => told.push(Told::Stop {
                        job: JobId::new(cancel.job_id).unwrap(),
                    }),
                    other => panic!("unexpected message to an agent: {other:?}"),
                }
            }
            told
        }
    }

    #[tokio::test]
    async fn the_session_hub_passes_the_agent_link_contract() {
        let hub = SessionHub::default();
        let probe = HubProbe {
            hub: &hub,
            open: Mutex::default(),
        };
        agent_link_contract(&hub, &probe, "hub").await;
    }
}
