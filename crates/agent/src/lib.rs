//! The worker agent. It opens one bidirectional gRPC session with the server, says hello,
//! heartbeats on the interval the server chooses, runs the jobs it is assigned (streaming
//! their output and reporting their results), honours cancels and drain requests, and
//! reconnects with capped exponential backoff when the server goes away, as the same worker.
//!
//! It also fences itself: every answer of the server renews a lease (`agents.lease`, told in
//! the hello answer); when the lease runs out the agent kills its running jobs and reports
//! them lost, so the server can run them elsewhere without two attempts alive at once. The
//! agent is a child subreaper, runs each job under a supervisor that dies with it
//! ([`exec`]), and kills what an earlier agent left in its work root when it starts.

pub mod exec;
pub mod job;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hodei_core::{
    Labels, ValidationError, WorkerCapabilities, WorkerId, backoff, worker::validate_labels,
};
use hodei_proto::BearerToken;
use hodei_proto::v1::scheduler_service_client::SchedulerServiceClient;
use hodei_proto::v1::{self, agent_message, server_message};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::{Lease, Runner};
use tonic::Code;
use tonic::transport::Endpoint;

/// The agent's version, sent in its hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server URL, such as `http://127.0.0.1:50051`, or `https://` for TLS; or several
    /// separated by commas (replicas): the agent moves to the next when a server is gone or
    /// refuses its session (a follower does).
    pub server: String,
    /// PEM CA certificate(s) to trust for an `https://` server instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// The credential presented first: this worker's own, or an agent enrollment token
    /// (then the server hands back the worker's credential, used from then on). Never
    /// logged.
    pub token: String,
    /// The user jobs run as (`uid[:gid]` or a name), when the agent runs as root.
    pub job_user: Option<String>,
    pub worker_id: WorkerId,
    pub labels: Labels,
    /// What this machine offers; detected unless given.
    pub capabilities: WorkerCapabilities,
    /// Jobs without a working directory run in a fresh directory under this one.
    pub work_dir: PathBuf,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// The lease until the server tells its own (see the module docs).
    pub lease: Duration,
    /// The `hodei` binary, to run jobs through its supervisor (`hodei __job-supervise`);
    /// `None` runs them directly, without the lease or the death signal.
    pub job_shim: Option<PathBuf>,
}

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the agent in a way retrying cannot fix: a wrong token, an invalid
    /// hello.
    #[error("the server refused this agent: {0}")]
    Refused(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

fn detect_capabilities() -> WorkerCapabilities {
    let cpu_cores = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1);
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024)
        })
        .filter(|mb| *mb > 0)
        .unwrap_or(1024);
    WorkerCapabilities {
        cpu_cores,
        memory_mb,
        ..WorkerCapabilities::default()
    }
}

impl AgentConfig {
    /// Builds and checks a configuration. Without an id the agent makes one up; without
    /// capabilities it reads the machine's.
    pub fn new(
        server: String,
        token: String,
        worker_id: Option<String>,
        labels: Vec<(String, String)>,
    ) -> Result<Self, ValidationError> {
        let urls = server_urls(&server);
        if urls.is_empty() {
            return Err(ValidationError::new("server", "no URL given"));
        }
        if let Some(bad) = urls
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(ValidationError::new(
                "server",
                format!("{bad:?} is not an http:// or https:// URL"),
            ));
        }
        if token.is_empty() {
            return Err(ValidationError::new("token", "must not be empty"));
        }
        let worker_id = match worker_id {
            Some(id) => WorkerId::new(id)?,
            None => WorkerId::new(format!(
                "agent-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))?,
        };
        let labels: Labels = labels.into_iter().collect();
        validate_labels("label", &labels)?;
        let work_dir = std::env::temp_dir()
            .join("hodei-agent")
            .join(worker_id.as_str());
        Ok(Self {
            server,
            ca_cert: None,
            token,
            job_user: None,
            worker_id,
            labels,
            capabilities: detect_capabilities(),
            work_dir,
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            lease: Duration::from_secs(10),
            job_shim: None,
        })
    }
}

/// The URLs of a comma-separated server list.
fn server_urls(servers: &str) -> Vec<&str> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Reads the credential from `path` and removes the file, so nothing that runs later
/// (a job) can read it there. The file must be removable: a credential left behind is
/// an error, not a warning.
pub fn take_token_file(path: &std::path::Path) -> Result<String, ValidationError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ValidationError::new("token_file", format!("cannot read {}: {e}", path.display()))
    })?;
    std::fs::remove_file(path).map_err(|e| {
        ValidationError::new(
            "token_file",
            format!("cannot remove {} after reading it: {e}", path.display()),
        )
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(ValidationError::new("token_file", "is empty"));
    }
    Ok(token)
}

/// Makes this process's `/proc/<pid>/environ`, `mem` and friends unreadable to other
/// processes of the same user (such as the jobs it starts), and keeps it from being
/// ptraced by them. Exec resets it, so jobs are ordinary processes.
pub fn protect_process_memory() {
    if let Err(errno) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%errno, "cannot make the process non-dumpable");
    }
}

/// Parses `key=value`.
pub fn parse_label(text: &str) -> Result<(String, String), ValidationError> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(ValidationError::new(
            "label",
            format!("{text:?} is not key=value"),
        )),
    }
}

/// Jobs running now, by id, with the token that cancels each and the grace it gets between
/// SIGTERM and SIGKILL when it is (0: the default).
#[derive(Debug, Default, Clone)]
struct Jobs(Arc<Mutex<HashMap<String, RunningJob>>>);

/// A running job's cancel token and its stop grace in milliseconds (0: the default).
type RunningJob = (CancellationToken, Arc<AtomicU64>);

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningJob>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    /// Records a newly assigned job; false (and nothing changed) when the job already runs
    /// here, so a duplicate assignment cannot take the running job's cancel token away.
    fn claim(&self, job_id: &str, job: RunningJob) -> bool {
        match self.lock().entry(job_id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(job);
                true
            }
        }
    }
    fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
    fn len(&self) -> usize {
        self.lock().len()
    }
    fn cancel(&self, job_id: &str, grace_ms: u32) -> bool {
        self.lock()
            .get(job_id)
            .map(|(token, grace)| {
                if grace_ms > 0 {
                    grace.store(u64::from(grace_ms), Ordering::Relaxed);
                }
                token.cancel();
            })
            .is_some()
    }
    fn cancel_all(&self) {
        self.lock().values().for_each(|(token, _)| token.cancel());
    }
}

/// How one session ended.
enum SessionEnd {
    /// The server went away or the stream broke: reconnect.
    Lost(String),
    /// Told to stop (shutdown, or a drain that finished).
    Stopped,
    /// Refused as `UNAVAILABLE` by a server that is up (a replica that does not lead).
    NotLeader(String),
}

/// How often an agent tries its servers while a replica says it does not lead: a takeover
/// is under way, and the new leader is found within this of taking over.
const TAKEOVER_POLL: Duration = Duration::from_millis(250);

fn message(body: agent_message::Body) -> v1::AgentMessage {
    v1::AgentMessage { body: Some(body) }
}

/// Runs the agent until `shutdown` completes or a drain finishes. Returns an error only
/// when the server refuses the agent for good.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut token = BearerToken::new(&config.token)?;
    let mut endpoints = Vec::new();
    for url in server_urls(&config.server) {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ValidationError::new("server", e.to_string()))?;
        endpoints.push(
            hodei_proto::tls::client_tls(endpoint, config.ca_cert.as_deref())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10)),
        );
    }
    if endpoints.is_empty() {
        return Err(ValidationError::new("server", "no URL given").into());
    }
    let stop = CancellationToken::new();
    let jobs = Jobs::default();
    // Orphans of jobs (a daemonised grandchild) come to this agent rather than to init, so
    // they are found and killed after each job.
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%errno, "cannot become a child subreaper; a job's daemons may outlive it");
    }
    for pgid in exec::kill_leftovers(&config.work_dir) {
        tracing::warn!(pgid, "killed a job group left by an earlier agent");
    }
    let runner = Runner::new(config.job_shim.clone(), Lease::new(config.lease));
    // Everything jobs report goes through this queue, which outlives sessions: what is
    // produced while disconnected is sent after the reconnect.
    let (report, mut reports) = mpsc::channel::<v1::AgentMessage>(4096);
    tracing::info!(worker_id = %config.worker_id, server = %config.server, labels = ?config.labels, "agent started");

    let watchdog = fence_watchdog(&runner.lease, &jobs);
    let session_loop = async {
        let mut sent_results = SentResults::default();
        let mut failures = 0u32;
        // Attempts since a server answered that it does not lead (none yet: never).
        let mut since_follower = u32::MAX;
        let mut current = 0usize;
        loop {
            match session(
                &config,
                &endpoints[current],
                &mut token,
                &jobs,
                &runner,
                &report,
                &mut reports,
                &mut sent_results,
                &stop,
            )
            .await
            {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Ok(SessionEnd::Lost(reason)) => {
                    failures = 0;
                    since_follower = u32::MAX;
                    tracing::warn!(worker_id = %config.worker_id, %reason, "session lost, reconnecting");
                }
                Ok(SessionEnd::NotLeader(reason)) => {
                    since_follower = 0;
                    tracing::debug!(worker_id = %config.worker_id, %reason, "not the leader, trying the next server");
                }
                Err(Some(refused)) => return Err(refused),
                Err(None) => {
                    failures = failures.saturating_add(1);
                    since_follower = since_follower.saturating_add(1);
                }
            }
            // The next server (replicas: the leader may be another now); the delay grows
            // only once every server was tried, and stays short during a takeover.
            current = (current + 1) % endpoints.len();
            let answered_lately =
                usize::try_from(since_follower).is_ok_and(|n| n < endpoints.len());
            let delay = backoff::next_server(
                config.reconnect_base,
                config.reconnect_max,
                failures,
                endpoints.len(),
                answered_lately,
                TAKEOVER_POLL,
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
    };
    tokio::pin!(session_loop);
    let outcome = tokio::select! {
        outcome = &mut session_loop => outcome,
        never = watchdog => match never {},
        () = shutdown => {
            stop.cancel();
            // Let the session say goodbye by closing its stream.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut session_loop).await;
            Ok(())
        }
    };
    jobs.cancel_all();
    tracing::info!(worker_id = %config.worker_id, "agent stopped");
    outcome
}

/// Kills the running jobs whenever the lease runs out; they report themselves lost.
async fn fence_watchdog(lease: &Lease, jobs: &Jobs) -> std::convert::Infallible {
    loop {
        let left = lease.left();
        if !left.is_zero() {
            tokio::time::sleep(left).await;
            continue;
        }
        if lease.expired() && jobs.len() > 0 {
            tracing::warn!(running = jobs.len(), lease = ?lease.length(), "no word from the server for the lease, killing running jobs");
            jobs.cancel_all();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Results sent in recent sessions. The server does not acknowledge a result, and one sent
/// just before its server died (or before a leader replica stepped down) may never have been
/// recorded; each new session sends them again first. A result the server already recorded
/// is stale to it and ignored, so sending one twice is harmless, while losing one would make
/// the server give the attempt up and run the job again.
#[derive(Debug, Default)]
struct SentResults(VecDeque<(Instant, v1::AgentMessage)>);

impl SentResults {
    /// How long a sent result is kept: past it, the server has long given up on an attempt
    /// it did not hear the end of.
    const WINDOW: Duration = Duration::from_secs(60);
    const KEEP: usize = 1024;

    fn sent(&mut self, message: &v1::AgentMessage, at: Instant) {
        if matches!(message.body, Some(agent_message::Body::JobResult(_))) {
            if self.0.len() == Self::KEEP {
                self.0.pop_front();
            }
            self.0.push_back((at, message.clone()));
        }
    }

    /// The results to send again at the start of a session, oldest first.
    fn again(&mut self, now: Instant) -> Vec<v1::AgentMessage> {
        self.0
            .retain(|(at, _)| now.saturating_duration_since(*at) < Self::WINDOW);
        self.0.iter().map(|(_, message)| message.clone()).collect()
    }
}

/// Heartbeats sent and not yet answered: their sequence and when they left.
#[derive(Debug, Default)]
struct Unanswered(VecDeque<(u64, Instant)>);

impl Unanswered {
    const KEEP: usize = 64;

    fn sent(&mut self, sequence: u64, at: Instant) {
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back((sequence, at));
    }

    /// When the answered heartbeat left: the server was certainly reachable then.
    fn answered(&mut self, sequence: u64) -> Option<Instant> {
        let position = self.0.iter().position(|(s, _)| *s == sequence)?;
        let (_, at) = self.0[position];
        self.0.drain(..=position);
        Some(at)
    }
}

/// One session. `Err(None)`: could not connect (try again); `Err(Some(_))`: refused.
#[allow(clippy::too_many_arguments)]
async fn session(
    config: &AgentConfig,
    endpoint: &Endpoint,
    token: &mut BearerToken,
    jobs: &Jobs,
    runner: &Runner,
    report: &mpsc::Sender<v1::AgentMessage>,
    reports: &mut mpsc::Receiver<v1::AgentMessage>,
    sent_results: &mut SentResults,
    stop: &CancellationToken,
) -> Result<SessionEnd, Option<Error>> {
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => {
            tracing::debug!(%error, "cannot connect to the server");
            return Err(None);
        }
    };
    let mut client = SchedulerServiceClient::with_interceptor(channel, token.clone());
    let (outbound, outbound_stream) = mpsc::channel::<v1::AgentMessage>(256);
    let hello = v1::Hello {
        worker_id: config.worker_id.to_string(),
        capabilities: Some((&config.capabilities).into()),
        labels: config.labels.clone(),
        version: VERSION.to_owned(),
        running_job_ids: jobs.ids(),
    };
    let hello_sent = Instant::now();
    outbound
        .send(message(agent_message::Body::Hello(hello)))
        .await
        .map_err(|_| None)?;
    let response = client
        .worker_session(tokio_stream::wrappers::ReceiverStream::new(outbound_stream))
        .await;
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return match status.code() {
                Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied => {
                    Err(Some(Error::Refused(status.message().to_owned())))
                }
                Code::Unavailable => Ok(SessionEnd::NotLeader(status.message().to_owned())),
                _ => {
                    tracing::debug!(%status, "session refused, retrying");
                    Err(None)
                }
            };
        }
    };
    let interval = match inbound.message().await {
        Ok(Some(v1::ServerMessage {
            body: Some(server_message::Body::HelloAck(ack)),
        })) => {
            if !ack.worker_credential.is_empty() {
                // Enrolled: from now on this worker speaks with its own credential.
                match BearerToken::new(&ack.worker_credential) {
                    Ok(own) => {
                        *token = own;
                        tracing::info!(worker_id = %config.worker_id, "enrolled, using this worker's own credential from now on");
                    }
                    Err(error) => {
                        return Err(Some(Error::Refused(format!(
                            "the server sent an unusable worker credential: {error}"
                        ))));
                    }
                }
            }
            if ack.lease_ms > 0 {
                runner
                    .lease
                    .set_length(Duration::from_millis(u64::from(ack.lease_ms)));
            }
            runner.lease.renew(hello_sent);
            Duration::from_millis(u64::from(ack.heartbeat_interval_ms.max(10)))
        }
        Ok(_) => return Ok(SessionEnd::Lost("no hello answer".into())),
        Err(status) => return Ok(SessionEnd::Lost(status.to_string())),
    };
    tracing::info!(worker_id = %config.worker_id, heartbeat = ?interval, "session open");
    for again in sent_results.again(Instant::now()) {
        if outbound.send(again).await.is_err() {
            return Ok(SessionEnd::Lost("outbound closed".into()));
        }
    }
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    let mut unanswered = Unanswered::default();
    let mut draining = false;
    loop {
        if draining && jobs.len() == 0 {
            tracing::info!(worker_id = %config.worker_id, "drained, stopping");
            return Ok(SessionEnd::Stopped);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(SessionEnd::Stopped),
            _ = heartbeat.tick() => {
                sequence += 1;
                let beat = v1::Heartbeat {
                    sequence,
                    usage: Some(usage(jobs.len())),
                };
                unanswered.sent(sequence, Instant::now());
                if outbound.send(message(agent_message::Body::Heartbeat(beat))).await.is_err() {
                    return Ok(SessionEnd::Lost("outbound closed".into()));
                }
            }
            Some(reported) = reports.recv() => {
                sent_results.sent(&reported, Instant::now());
                if let Err(lost) = outbound.send(reported).await {
                    // Keep it for the next session.
                    let _ = report.try_send(lost.0);
                    return Ok(SessionEnd::Lost("outbound closed".into()));
                }
            }
            received = inbound.message() => match received {
                Ok(Some(v1::ServerMessage { body: Some(body) })) => match body {
                    server_message::Body::AssignJob(assignment) => {
                        if draining {
                            tracing::warn!(job_id = %assignment.job_id, "assigned a job while draining, refusing");
                            let refused = v1::JobResult {
                                job_id: assignment.job_id,
                                outcome: v1::JobOutcome::FailedToStart.into(),
                                exit_code: -1,
                                message: "worker is draining".into(),
                                health_problem: String::new(),
                                attempt: assignment.attempt,
                            };
                            let _ = report.send(message(agent_message::Body::JobResult(refused))).await;
                        } else {
                            start_job(assignment, config, runner, jobs, report);
                        }
                    }
                    server_message::Body::CancelJob(cancel) => {
                        let found = jobs.cancel(&cancel.job_id, cancel.grace_ms);
                        tracing::info!(job_id = %cancel.job_id, reason = %cancel.reason, grace_ms = cancel.grace_ms, found, "cancel requested");
                    }
                    server_message::Body::Drain(drain) => {
                        tracing::info!(reason = %drain.reason, running = jobs.len(), "drain requested");
                        draining = true;
                    }
                    server_message::Body::HeartbeatAck(ack) => {
                        if let Some(sent) = unanswered.answered(ack.sequence) {
                            runner.lease.renew(sent);
                        }
                    }
                    server_message::Body::HelloAck(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => return Ok(SessionEnd::Lost("server closed the session".into())),
                Err(status) => return Ok(SessionEnd::Lost(status.to_string())),
            },
        }
    }
}

fn start_job(
    assignment: v1::JobAssignment,
    config: &AgentConfig,
    runner: &Runner,
    jobs: &Jobs,
    report: &mpsc::Sender<v1::AgentMessage>,
) {
    let job_id = assignment.job_id.clone();
    let cancel = CancellationToken::new();
    let stop_grace_ms = Arc::new(AtomicU64::new(0));
    if !jobs.claim(&job_id, (cancel.clone(), stop_grace_ms.clone())) {
        tracing::warn!(%job_id, "job assigned twice, keeping the running one");
        return;
    }
    let jobs = jobs.clone();
    let report = report.clone();
    let work_root = config.work_dir.clone();
    let context = job::Context {
        worker_id: config.worker_id.to_string(),
        user: config.job_user.clone(),
        stop_grace_ms,
    };
    let runner = runner.clone();
    tokio::spawn(async move {
        job::run_with(assignment, &runner, work_root, context, cancel, report).await;
        jobs.lock().remove(&job_id);
    });
}

fn usage(running_jobs: usize) -> v1::ResourceUsage {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let memory_used_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let field = |name: &str| -> Option<u64> {
                info.lines()
                    .find(|l| l.starts_with(name))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            };
            Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) / 1024)
        })
        .unwrap_or(0);
    v1::ResourceUsage {
        load_average,
        memory_used_mb,
        running_jobs: u32::try_from(running_jobs).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_sent_again_in_the_next_sessions_for_a_while_and_nothing_else_is() {
        let result = |id: &str| {
            message(agent_message::Body::JobResult(v1::JobResult {
                job_id: id.into(),
                attempt: 1,
                ..v1::JobResult::default()
            }))
        };
        let heartbeat = message(agent_message::Body::Heartbeat(v1::Heartbeat::default()));
        let start = Instant::now();
        let mut sent = SentResults::default();
        sent.sent(&result("j-1"), start);
        sent.sent(&heartbeat, start);
        sent.sent(&result("j-2"), start + Duration::from_secs(30));
        assert_eq!(
            sent.again(start + Duration::from_secs(1)),
            [result("j-1"), result("j-2")]
        );
        // Twice is fine: the server ignores a result it recorded.
        assert_eq!(sent.again(start + Duration::from_secs(2)).len(), 2);
        assert_eq!(
            sent.again(start + SentResults::WINDOW + Duration::from_secs(1)),
            [result("j-2")]
        );
    }

    #[test]
    fn a_duplicate_assignment_keeps_the_running_jobs_cancel_token() {
        let jobs = Jobs::default();
        let running = CancellationToken::new();
        assert!(jobs.claim("j-1", (running.clone(), Arc::new(AtomicU64::new(0)))));
        let duplicate = CancellationToken::new();
        assert!(!jobs.claim("j-1", (duplicate.clone(), Arc::new(AtomicU64::new(0)))));
        assert!(jobs.cancel("j-1", 0));
        assert!(running.is_cancelled(), "the cancel reaches the running job");
        assert!(!duplicate.is_cancelled());
    }

    #[test]
    fn configuration_is_checked() {
        let ok = AgentConfig::new(
            "http://127.0.0.1:50051".into(),
            "t".into(),
            Some("w-1".into()),
            vec![("os".into(), "linux".into())],
        )
        .unwrap();
        assert_eq!(ok.worker_id.as_str(), "w-1");
        assert!(
            ok.capabilities.validate().is_ok(),
            "detected capabilities are valid"
        );
        assert!(
            AgentConfig::new("http://x".into(), "t".into(), None, vec![])
                .unwrap()
                .worker_id
                .as_str()
                .starts_with("agent-")
        );
        let bad = AgentConfig::new("127.0.0.1:50051".into(), "t".into(), None, vec![]).unwrap_err();
        assert_eq!(bad.field, "server");
        let bad = AgentConfig::new("http://x".into(), "t".into(), Some("bad id".into()), vec![])
            .unwrap_err();
        assert_eq!(bad.field, "worker_id");
        let bad = AgentConfig::new("http://x".into(), String::new(), None, vec![]).unwrap_err();
        assert_eq!(bad.field, "token");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("os=linux").unwrap(),
            ("os".into(), "linux".into())
        );
        assert_eq!(
            parse_label("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        assert_eq!(parse_label("novalue").unwrap_err().field, "label");
        assert_eq!(parse_label("=x").unwrap_err().field, "label");
    }
}
