//! The gRPC side of the one address: `hodei.v1.SchedulerService` over the scheduler
//! registry, the agents' sessions, and bearer-token authentication.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hodei_core::health::{HeartbeatPolicy, Liveness};
use hodei_core::job::AttemptOutcome;
use hodei_core::{Command, Job, JobId};
use hodei_core::{
    ProviderKind, ValidationError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata, WorkerType,
};
use hodei_modules::{JobService, RegisteredWorker, SchedulerRegistry};
use hodei_ports::{AgentLink, LinkError, LogChunk, LogStream};
use hodei_proto::convert::{invalid_argument, to_millis, worker_from_request};
use hodei_proto::v1::{self, agent_message, server_message};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt};
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

/// Open sessions by worker, and a broadcast of everything agents say.
#[derive(Debug)]
pub struct SessionHub {
    sessions: Mutex<HashMap<WorkerId, (u64, Outbound)>>,
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
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, (u64, Outbound)>> {
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
            .map(|(_, sender)| sender.clone())
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
        self.sessions().clear();
    }

    /// Attaches a session, replacing an older one of the same worker (a reconnect).
    fn attach(&self, worker_id: &WorkerId, sender: Outbound) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.sessions()
            .insert(worker_id.clone(), (generation, sender));
        generation
    }

    /// Detaches a session unless a newer one replaced it. Returns whether it was current.
    fn detach(&self, worker_id: &WorkerId, generation: u64) -> bool {
        let mut sessions = self.sessions();
        match sessions.get(worker_id) {
            Some((current, _)) if *current == generation => {
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
    }
}

/// What an agent's job result means for the job.
fn attempt_outcome(result: &v1::JobResult) -> AttemptOutcome {
    match v1::JobOutcome::try_from(result.outcome) {
        Ok(v1::JobOutcome::Exited) => AttemptOutcome::Exited(result.exit_code),
        Ok(v1::JobOutcome::TimedOut) => AttemptOutcome::TimedOut,
        Ok(v1::JobOutcome::Cancelled) => AttemptOutcome::Cancelled,
        Ok(v1::JobOutcome::FailedToStart) => AttemptOutcome::FailedToStart(result.message.clone()),
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
            jobs.job_accepted(worker_id.clone(), accepted.job_id.clone())
                .await;
        }
        AgentEvent::Log(chunk) => {
            let Ok(job_id) = JobId::new(chunk.job_id.clone()) else {
                return;
            };
            let stream = match v1::LogStream::try_from(chunk.stream) {
                Ok(v1::LogStream::Stderr) => LogStream::Stderr,
                _ => LogStream::Stdout,
            };
            let chunk = LogChunk {
                job_id,
                // The agent does not know the attempt; the dispatcher sets it from the job.
                attempt: 0,
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
                attempt_outcome(result),
                result.health_problem.is_empty(),
            )
            .await;
        }
        AgentEvent::Connected | AgentEvent::Heartbeat(_) | AgentEvent::Disconnected => {}
    }
}

/// `SchedulerService` over the in-process registry.
#[derive(Debug, Clone)]
pub struct SchedulerGrpc {
    pub registry: Arc<SchedulerRegistry>,
    pub hub: Arc<SessionHub>,
    pub heartbeat: HeartbeatPolicy,
    pub jobs: JobService,
}

fn worker_id(text: String) -> Result<WorkerId, Status> {
    WorkerId::new(text).map_err(|e| invalid_argument(&e))
}

fn worker_info(entry: &RegisteredWorker) -> v1::WorkerInfo {
    let status = match (entry.liveness, entry.last_seen) {
        (Liveness::Unhealthy | Liveness::Gone, _) => v1::WorkerStatus::Unhealthy,
        (Liveness::Healthy, None) => v1::WorkerStatus::Starting,
        (Liveness::Healthy, Some(_)) => v1::WorkerStatus::Available,
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
            worker_type: WorkerType::Static,
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
        let worker = worker_from_request(request.into_inner()).map_err(|e| invalid_argument(&e))?;
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
        let workers = self.registry.list().iter().map(worker_info).collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn get_worker(
        &self,
        request: Request<v1::GetWorkerRequest>,
    ) -> Result<Response<v1::GetWorkerResponse>, Status> {
        let id = worker_id(request.into_inner().worker_id)?;
        let entry = self
            .registry
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("worker {id} is not registered")))?;
        Ok(Response::new(v1::GetWorkerResponse {
            worker: Some(worker_info(&entry)),
        }))
    }

    type WorkerSessionStream = SessionStream;

    async fn worker_session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::WorkerSessionStream>, Status> {
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
        let before = self
            .registry
            .connect(worker, &hello.version)
            .map_err(ApiError::from)?;
        let (sender, receiver) = mpsc::channel(256);
        let generation = self.hub.attach(&id, sender.clone());
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
            })),
        };
        sender
            .send(Ok(ack))
            .await
            .map_err(|_| Status::internal("session closed during hello"))?;

        let registry = self.registry.clone();
        let hub = self.hub.clone();
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
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
                    agent_message::Body::LogChunk(chunk) => AgentEvent::Log(chunk),
                    agent_message::Body::JobResult(result) => AgentEvent::JobResult(result),
                    agent_message::Body::Hello(_) => {
                        tracing::warn!(worker_id = %id, "ignoring a second hello in one session");
                        continue;
                    }
                };
                forward_to_jobs(&jobs, &id, &event).await;
                hub.publish(&id, event);
            }
            if hub.detach(&id, generation) {
                registry.disconnect(&id);
                hub.publish(&id, AgentEvent::Disconnected);
                tracing::info!(worker_id = %id, "agent session closed");
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Checks `authorization: Bearer <token>` on every gRPC call, in constant time, and never
/// logs the token.
#[derive(Clone)]
pub struct Authenticate {
    pub token: Arc<str>,
}

impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticate")
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(token)
                if constant_time_eq::constant_time_eq(token.as_bytes(), self.token.as_bytes()) =>
            {
                Ok(request)
            }
            Some(_) => {
                tracing::warn!(remote = ?request.remote_addr(), "rejected gRPC call with a wrong token");
                Err(Status::unauthenticated("invalid bearer token"))
            }
            None => {
                tracing::warn!(remote = ?request.remote_addr(), "rejected gRPC call without a token");
                Err(Status::unauthenticated(
                    "missing bearer token (authorization: Bearer <token>)",
                ))
            }
        }
    }
}
