//! Running one assigned job: a real process in its own process group, its output streamed
//! in order, its timeout enforced, cancellation honoured, its exit reported.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hodei_proto::v1::{self, agent_message};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest log chunk sent in one message.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Time a job gets between SIGTERM and SIGKILL when it is cancelled or times out.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn message(body: agent_message::Body) -> v1::AgentMessage {
    v1::AgentMessage { body: Some(body) }
}

fn result(
    job_id: &str,
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
    }))
}

async fn pump(
    mut reader: impl AsyncRead + Unpin,
    job_id: String,
    stream: v1::LogStream,
    sequence: Arc<AtomicU64>,
    out: mpsc::Sender<v1::AgentMessage>,
) {
    let mut buffer = vec![0u8; MAX_CHUNK];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let chunk = v1::LogChunk {
            job_id: job_id.clone(),
            sequence: sequence.fetch_add(1, Ordering::SeqCst),
            stream: stream.into(),
            data: buffer[..read].to_vec(),
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

/// Runs `assignment` to its end and reports everything on `out`: `JobAccepted`, the log
/// chunks, then exactly one `JobResult`.
pub async fn run(
    assignment: v1::JobAssignment,
    work_root: PathBuf,
    context: Context,
    cancel: CancellationToken,
    out: mpsc::Sender<v1::AgentMessage>,
) {
    let job_id = assignment.job_id.clone();
    let mut command = if !assignment.argv.is_empty() {
        let mut command = Command::new(&assignment.argv[0]);
        command.args(&assignment.argv[1..]);
        command
    } else {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(&assignment.script);
        command
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
            .send(result(&job_id, v1::JobOutcome::FailedToStart, -1, text))
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
                    .send(result(&job_id, v1::JobOutcome::FailedToStart, -1, text))
                    .await;
                return;
            }
        }
    }
    command
        .env_clear()
        .envs(job_environment(
            &assignment.env,
            &job_id,
            &context.worker_id,
            &directory,
        ))
        .current_dir(&directory)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = out
                .send(result(
                    &job_id,
                    v1::JobOutcome::FailedToStart,
                    -1,
                    format!("cannot start: {error}"),
                ))
                .await;
            return;
        }
    };
    let pid = child.id();
    tracing::info!(%job_id, pid, "job started");
    let _ = out
        .send(message(agent_message::Body::JobAccepted(v1::JobAccepted {
            job_id: job_id.clone(),
        })))
        .await;

    let sequence = Arc::new(AtomicU64::new(0));
    let mut pumps = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(
            stdout,
            job_id.clone(),
            v1::LogStream::Stdout,
            sequence.clone(),
            out.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            stderr,
            job_id.clone(),
            v1::LogStream::Stderr,
            sequence.clone(),
            out.clone(),
        )));
    }

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
    let (outcome, exit_code, text) = match end {
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
            signal_group(pid, Signal::SIGTERM);
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
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
    // Whatever the job left running in its process group ends with it, so no stray process
    // outlives its job or holds its output open.
    signal_group(pid, Signal::SIGKILL);
    for pump in pumps {
        let _ = pump.await;
    }
    tracing::info!(%job_id, ?outcome, exit_code, "job ended");
    let fresh_directory = assignment
        .working_dir
        .is_empty()
        .then_some(directory.as_path());
    let health_problem = clean_and_check(fresh_directory, &work_root).await;
    if let Some(problem) = &health_problem {
        tracing::warn!(%job_id, %problem, "health check after the job failed");
    }
    let mut report = result(&job_id, outcome, exit_code, text);
    if let Some(agent_message::Body::JobResult(job_result)) = &mut report.body {
        job_result.health_problem = health_problem.unwrap_or_default();
    }
    let _ = out.send(report).await;
}

/// After a job: removes the job's fresh working directory, then checks the worker can take
/// another job (its work root is writable). Returns what failed, if anything.
pub async fn clean_and_check(
    fresh_directory: Option<&std::path::Path>,
    work_root: &std::path::Path,
) -> Option<String> {
    if let Some(directory) = fresh_directory
        && let Err(error) = tokio::fs::remove_dir_all(directory).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return Some(format!("cannot remove {}: {error}", directory.display()));
    }
    let probe = work_root.join(".hodei-health");
    let check = async {
        tokio::fs::create_dir_all(work_root).await?;
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await
    };
    check
        .await
        .err()
        .map(|error| format!("work root {} is not writable: {error}", work_root.display()))
}
