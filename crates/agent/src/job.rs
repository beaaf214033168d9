//! Running one assigned job: a real process in its own process group, its output streamed
//! in order, its timeout enforced, cancellation honoured, its exit reported. Through the
//! shims of [`crate::exec`] the job's group also dies with the agent and when the agent's
//! lease runs out.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hodei_core::trace;
use hodei_proto::v1::{self, agent_message};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exec::{self, JobRecords};

/// The agent's lease: when it last heard from the server (the send time of the heartbeat
/// the server answered), and for how long that lets its jobs run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lease {
    heard: Arc<watch::Sender<Instant>>,
    length_ms: Arc<AtomicU64>,
}

impl Lease {
    pub fn new(length: Duration) -> Self {
        Self {
            heard: Arc::new(watch::channel(Instant::now()).0),
            length_ms: Arc::new(AtomicU64::new(millis(length))),
        }
    }

    pub fn length(&self) -> Duration {
        Duration::from_millis(self.length_ms.load(Ordering::Relaxed))
    }

    /// Takes the server's lease length (from its hello answer).
    pub fn set_length(&self, length: Duration) {
        self.length_ms.store(millis(length), Ordering::Relaxed);
        self.heard.send_modify(|_| {});
    }

    /// The server was reached at `at`; never moves the lease back.
    pub fn renew(&self, at: Instant) {
        self.heard.send_if_modified(|heard| {
            let later = at > *heard;
            if later {
                *heard = at;
            }
            later
        });
    }

    pub fn last_heard(&self) -> Instant {
        *self.heard.borrow()
    }

    /// What is left of the lease now.
    pub fn left(&self) -> Duration {
        (self.last_heard() + self.length()).saturating_duration_since(Instant::now())
    }

    /// Whether the agent must kill its jobs ([`hodei_core::fence::agent_must_fence`]).
    pub fn expired(&self) -> bool {
        hodei_core::fence::agent_must_fence(
            self.last_heard().into_std(),
            self.length(),
            Instant::now().into_std(),
        )
    }

    fn subscribe(&self) -> watch::Receiver<Instant> {
        self.heard.subscribe()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How the agent runs jobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The `hodei` binary, to run every job through its supervisor ([`crate::exec`]); `None`
    /// runs commands directly, without the lease or the death signal (this crate's tests).
    pub shim: Option<PathBuf>,
    pub lease: Lease,
    /// Leaders of the job groups running now. Held while spawning, so a sweep for stray
    /// processes never mistakes a job just started for one.
    active: Arc<Mutex<HashSet<i32>>>,
}

impl Runner {
    pub fn new(shim: Option<PathBuf>, lease: Lease) -> Self {
        Self {
            shim,
            lease,
            active: Arc::default(),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Kills the agent's children that are no job's supervisor: processes a job left behind
    /// that were re-parented to the agent (it is a child subreaper). Returns them; the
    /// caller reaps them ([`reap`]).
    pub fn kill_strays(&self) -> Vec<i32> {
        let active = self.active();
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let strays: Vec<i32> = exec::children_of(me)
            .into_iter()
            .filter(|pid| !active.contains(pid))
            .collect();
        for pid in &strays {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        strays
    }
}

/// Waits for the killed strays so no zombie stays behind.
pub async fn reap(strays: Vec<i32>) {
    if strays.is_empty() {
        return;
    }
    tracing::info!(?strays, "killed processes left behind by jobs");
    let _ = tokio::task::spawn_blocking(move || {
        for pid in strays {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
    })
    .await;
}

/// Tells the job's supervisor what is left of the lease whenever it changes.
async fn renew_supervisor(mut stdin: ChildStdin, lease: Lease) {
    let mut heard = lease.subscribe();
    loop {
        let line = format!("{}\n", millis(lease.left()));
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
        if heard.changed().await.is_err() {
            // The agent is going away; keep the pipe open until the job task ends.
            std::future::pending::<()>().await;
        }
    }
}

/// Largest log chunk sent in one message.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Time a job gets between SIGTERM and SIGKILL when it is cancelled or times out.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn message(body: agent_message::Body) -> v1::AgentMessage {
    v1::AgentMessage { body: Some(body) }
}

fn result(
    job_id: &str,
    attempt: u32,
    outcome: v1::JobOutcome,
    exit_code: i32,
    text: impl Into<String>,
) -> v1::AgentMessage {
    message(agent_message::Body::JobResult(v1::JobResult {
        job_id: job_id.to_owned(),
        outcome: outcome.into(),
        exit_code,
        message: text.into(),
        health_problem: String::new(),
        attempt,
    }))
}

/// Reads the job's output into log chunks numbered from 0. The job's stdout and stderr are
/// one pipe (see [`run_with`]), so the chunks hold the output in the order it was written.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    job_id: String,
    attempt: u32,
    out: mpsc::Sender<v1::AgentMessage>,
) {
    let mut buffer = vec![0u8; MAX_CHUNK];
    for sequence in 0u64.. {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let chunk = v1::LogChunk {
            job_id: job_id.clone(),
            sequence,
            stream: v1::LogStream::Output.into(),
            data: buffer[..read].to_vec(),
            attempt,
        };
        if out
            .send(message(agent_message::Body::LogChunk(chunk)))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One pipe for the job's stdout and stderr both, as CI runners do (GitLab's runner, and
/// Buildkite's agent through a pty): the kernel keeps the writes to one pipe in order,
/// while no reader can tell the order of writes to two pipes. Which stream a write went to
/// is not kept. Returns the read end and the two write ends.
fn output_pipe() -> std::io::Result<(tokio::net::unix::pipe::Receiver, Stdio, Stdio)> {
    let (reader, writer) = std::io::pipe()?;
    let stderr = Stdio::from(writer.try_clone()?);
    let reader =
        tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))?;
    Ok((reader, Stdio::from(writer), stderr))
}

fn signal_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// What a job gets from its agent besides the assignment.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Set as `HODEI_WORKER_ID`.
    pub worker_id: String,
    /// Run the job as this user (`uid[:gid]` or a name) instead of the agent's.
    pub user: Option<String>,
    /// Milliseconds between SIGTERM and SIGKILL when the job is cancelled, as the cancel
    /// asked (a preemption's grace); 0 means [`STOP_GRACE`].
    pub stop_grace_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The `PATH` jobs get when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A job's whole environment: `PATH` (the agent's, which holds no secret), `HOME` (the
/// job's directory), `HODEI_JOB_ID`, `HODEI_WORKER_ID`, then the spec's own variables.
/// Nothing else of the agent's environment reaches a job.
pub fn job_environment(
    spec_env: &std::collections::BTreeMap<String, String>,
    job_id: &str,
    worker_id: &str,
    directory: &std::path::Path,
) -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned());
    let mut env: std::collections::BTreeMap<String, String> = [
        ("PATH".to_owned(), path),
        ("HOME".to_owned(), directory.display().to_string()),
    ]
    .into();
    env.extend(spec_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Ours last: a spec cannot pretend to be another job.
    env.insert("HODEI_JOB_ID".to_owned(), job_id.to_owned());
    env.insert("HODEI_WORKER_ID".to_owned(), worker_id.to_owned());
    env.into_iter().collect()
}

/// `uid[:gid]`, or a user name looked up in the user database (its primary group).
/// A bare uid runs with the group of the same number.
pub fn resolve_user(user: &str) -> Result<(u32, u32), String> {
    let number = |text: &str| {
        text.parse::<u32>()
            .map_err(|_| format!("{text:?} is not a number"))
    };
    match user.split_once(':') {
        Some((uid, gid)) => Ok((number(uid)?, number(gid)?)),
        None if user.bytes().all(|b| b.is_ascii_digit()) => {
            let uid = number(user)?;
            Ok((uid, uid))
        }
        None => match nix::unistd::User::from_name(user) {
            Ok(Some(found)) => Ok((found.uid.as_raw(), found.gid.as_raw())),
            Ok(None) => Err(format!("no user named {user:?}")),
            Err(errno) => Err(format!("cannot look up user {user:?}: {errno}")),
        },
    }
}

enum End {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Runs `assignment` directly, without the supervisor: see [`run_with`].
pub async fn run(
    assignment: v1::JobAssignment,
    work_root: PathBuf,
    context: Context,
    cancel: CancellationToken,
    out: mpsc::Sender<v1::AgentMessage>,
) {
    let runner = Runner::new(None, Lease::new(Duration::from_secs(10)));
    run_with(assignment, &runner, work_root, context, cancel, out).await;
}

/// Runs `assignment` to its end and reports everything on `out`: `JobAccepted`, the log
/// chunks, then exactly one `JobResult`, each quoting the assignment's attempt. A job
/// cancelled or killed after the lease ran out is reported lost.
pub async fn run_with(
    assignment: v1::JobAssignment,
    runner: &Runner,
    work_root: PathBuf,
    context: Context,
    cancel: CancellationToken,
    out: mpsc::Sender<v1::AgentMessage>,
) {
    let job_id = assignment.job_id.clone();
    let attempt = assignment.attempt;
    // With telemetry on: `job.accepted` (this attempt on this agent, a child of the server's
    // `job.dispatched`, which arrives as the job's TRACEPARENT), `job.started` (the process,
    // whose context the job gets as its TRACEPARENT) and `job.finished` (clean-up and the
    // report).
    let ids = || {
        [
            ("hodei.job_id", job_id.clone()),
            ("hodei.attempt", attempt.to_string()),
            ("hodei.worker_id", context.worker_id.clone()),
        ]
    };
    let accepted = trace::Span::start(
        "job.accepted",
        assignment
            .env
            .get(trace::TRACEPARENT_ENV)
            .map(String::as_str),
        &ids(),
    );
    let program: Vec<&str> = if !assignment.argv.is_empty() {
        assignment.argv.iter().map(String::as_str).collect()
    } else {
        vec!["/bin/sh", "-c", &assignment.script]
    };
    let mut command = match &runner.shim {
        Some(shim) => {
            let mut command = Command::new(shim);
            command
                .arg(exec::SUPERVISE)
                .arg("--lease-ms")
                .arg(millis(runner.lease.left()).to_string())
                .arg("--")
                .args(&program)
                .stdin(Stdio::piped());
            command
        }
        None => {
            let mut command = Command::new(program[0]);
            command.args(&program[1..]).stdin(Stdio::null());
            command
        }
    };
    let directory = if assignment.working_dir.is_empty() {
        work_root.join(&job_id)
    } else {
        PathBuf::from(&assignment.working_dir)
    };
    if let Err(error) = tokio::fs::create_dir_all(&directory).await {
        let text = format!(
            "cannot create working directory {}: {error}",
            directory.display()
        );
        let _ = out
            .send(result(
                &job_id,
                attempt,
                v1::JobOutcome::FailedToStart,
                -1,
                text,
            ))
            .await;
        return;
    }
    if let Some(user) = &context.user {
        let owner = resolve_user(user).and_then(|(uid, gid)| {
            std::os::unix::fs::chown(&directory, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to {user}: {e}", directory.display()))?;
            Ok((uid, gid))
        });
        match owner {
            Ok((uid, gid)) => {
                command.uid(uid).gid(gid);
            }
            Err(text) => {
                let _ = out
                    .send(result(
                        &job_id,
                        attempt,
                        v1::JobOutcome::FailedToStart,
                        -1,
                        text,
                    ))
                    .await;
                return;
            }
        }
    }
    let (output, stdout, stderr) = match output_pipe() {
        Ok(pipe) => pipe,
        Err(error) => {
            let _ = out
                .send(result(
                    &job_id,
                    attempt,
                    v1::JobOutcome::FailedToStart,
                    -1,
                    format!("cannot make the output pipe: {error}"),
                ))
                .await;
            return;
        }
    };
    command
        .env_clear()
        .envs(job_environment(
            &assignment.env,
            &job_id,
            &context.worker_id,
            &directory,
        ))
        .current_dir(&directory)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let mut started = trace::Span::start("job.started", accepted.traceparent().as_deref(), &ids());
    if let Some(parent) = started.traceparent() {
        command.env(trace::TRACEPARENT_ENV, parent);
    }
    let spawned = {
        let mut active = runner.active();
        let spawned = command.spawn();
        if let Some(pid) = spawned.as_ref().ok().and_then(|child| child.id()) {
            active.insert(i32::try_from(pid).unwrap_or(0));
        }
        spawned
    };
    // The command holds the pipe's write ends: closed now, the output ends when the job's
    // group is gone.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let _ = out
                .send(result(
                    &job_id,
                    attempt,
                    v1::JobOutcome::FailedToStart,
                    -1,
                    format!("cannot start: {error}"),
                ))
                .await;
            return;
        }
    };
    let pid = child.id();
    started.set(
        "process.pid",
        pid.map(|pid| pid.to_string()).unwrap_or_default(),
    );
    let records = JobRecords::new(&work_root);
    if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok())
        && let Err(error) = records.write(&job_id, pid)
    {
        tracing::warn!(%job_id, %error, "cannot record the job's process group");
    }
    let renewals = child
        .stdin
        .take()
        .map(|stdin| tokio::spawn(renew_supervisor(stdin, runner.lease.clone())));
    tracing::info!(%job_id, attempt, pid, "job started");
    let _ = out
        .send(message(agent_message::Body::JobAccepted(v1::JobAccepted {
            job_id: job_id.clone(),
            attempt,
        })))
        .await;

    let pumps = vec![tokio::spawn(pump(
        output,
        job_id.clone(),
        attempt,
        out.clone(),
    ))];

    let limit = (assignment.timeout_secs > 0)
        .then(|| Duration::from_secs(u64::from(assignment.timeout_secs)));
    let deadline = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        status = child.wait() => End::Exited(status),
        () = deadline => End::TimedOut,
        () = cancel.cancelled() => End::Cancelled,
    };
    let lost = || {
        (
            v1::JobOutcome::Lost,
            -1,
            "killed: the agent had not heard from the server for its lease".to_owned(),
        )
    };
    let (outcome, exit_code, text) = match end {
        End::Cancelled if runner.lease.expired() => {
            // Fencing: no grace, the server will give the job to another worker.
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            lost()
        }
        End::Exited(Ok(status))
            if status.signal() == Some(Signal::SIGKILL as i32) && runner.lease.expired() =>
        {
            // The supervisor fenced the job itself (the agent may have been stopped).
            lost()
        }
        End::Exited(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => (v1::JobOutcome::Exited, code, String::new()),
            (None, Some(signal)) => (
                v1::JobOutcome::Exited,
                -1,
                format!("killed by signal {signal}"),
            ),
            (None, None) => (
                v1::JobOutcome::Exited,
                -1,
                "ended without a status".to_owned(),
            ),
        },
        End::Exited(Err(error)) => (
            v1::JobOutcome::Exited,
            -1,
            format!("cannot wait for the job: {error}"),
        ),
        End::TimedOut | End::Cancelled => {
            let asked = context
                .stop_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            let grace = if matches!(end, End::Cancelled) && asked > 0 {
                Duration::from_millis(asked)
            } else {
                STOP_GRACE
            };
            signal_group(pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                signal_group(pid, Signal::SIGKILL);
                let _ = child.wait().await;
            }
            if matches!(end, End::TimedOut) {
                (
                    v1::JobOutcome::TimedOut,
                    -1,
                    format!("timed out after {}s", assignment.timeout_secs),
                )
            } else {
                (v1::JobOutcome::Cancelled, -1, "cancelled".to_owned())
            }
        }
    };
    drop(started);
    let mut finished =
        trace::Span::start("job.finished", accepted.traceparent().as_deref(), &ids());
    finished.set("hodei.outcome", format!("{outcome:?}"));
    finished.set("process.exit_code", exit_code.to_string());
    // Whatever the job left running in its process group ends with it, so no stray process
    // outlives its job or holds its output open.
    signal_group(pid, Signal::SIGKILL);
    for pump in pumps {
        let _ = pump.await;
    }
    if let Some(renewals) = renewals {
        renewals.abort();
    }
    records.remove(&job_id);
    let strays = {
        let mut active = runner.active();
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            active.remove(&pid);
        }
        drop(active);
        // Only the agent proper (it runs jobs through the shim, and is a subreaper) owns all
        // of its process's children.
        if runner.shim.is_some() {
            runner.kill_strays()
        } else {
            Vec::new()
        }
    };
    reap(strays).await;
    tracing::info!(%job_id, ?outcome, exit_code, "job ended");
    let fresh_directory = assignment
        .working_dir
        .is_empty()
        .then_some(directory.as_path());
    let health_problem = clean_and_check(fresh_directory, &work_root).await;
    if let Some(problem) = &health_problem {
        tracing::warn!(%job_id, %problem, "health check after the job failed");
    }
    let mut report = result(&job_id, attempt, outcome, exit_code, text);
    if let Some(agent_message::Body::JobResult(job_result)) = &mut report.body {
        job_result.health_problem = health_problem.unwrap_or_default();
    }
    let _ = out.send(report).await;
}

/// After a job: removes the job's fresh working directory, then checks the worker can take
/// another job (its work root is writable). Returns what failed, if anything. The file system
/// calls run together on one blocking thread (one hand-off per job, not one per call).
pub async fn clean_and_check(
    fresh_directory: Option<&std::path::Path>,
    work_root: &std::path::Path,
) -> Option<String> {
    let fresh_directory = fresh_directory.map(std::path::Path::to_path_buf);
    let work_root = work_root.to_path_buf();
    tokio::task::spawn_blocking(move || clean_and_check_now(fresh_directory.as_deref(), &work_root))
        .await
        .unwrap_or_else(|error| Some(format!("the clean-up after the job failed: {error}")))
}

fn clean_and_check_now(
    fresh_directory: Option<&std::path::Path>,
    work_root: &std::path::Path,
) -> Option<String> {
    if let Some(directory) = fresh_directory
        && let Err(error) = std::fs::remove_dir_all(directory)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return Some(format!("cannot remove {}: {error}", directory.display()));
    }
    let probe = work_root.join(".hodei-health");
    let check = || {
        std::fs::create_dir_all(work_root)?;
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)
    };
    check()
        .err()
        .map(|error| format!("work root {} is not writable: {error}", work_root.display()))
}
