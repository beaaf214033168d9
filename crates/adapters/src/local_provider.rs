//! The `local` provider: every worker is a `hodei agent` process on this machine.
//!
//! Each agent runs in its own process group (so Ctrl-C in the terminal reaches the server,
//! which stops agents in order, and stopping an agent also stops the jobs it started). A pid
//! file per worker, with the process start time to survive pid reuse, lets a restarted
//! server find the agents it started before, and the reconciler tell ours from strangers.
//!
//! Each agent's work root is `<state_dir>/work/<id>`, where the agent records its running
//! job groups (`.hodei-jobs/<job>.json`, pid and start time): when an agent dies, the
//! provider kills those groups before it confirms the worker dead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};
use hodei_ports::{AgentCredential, ProviderError, WorkerProvider};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// How local agents are started.
#[derive(Debug, Clone)]
pub struct LocalProviderConfig {
    /// The `hodei` binary (normally the server's own executable).
    pub program: PathBuf,
    /// Arguments placed before `agent ...`; empty for the `hodei` binary.
    pub args: Vec<String>,
    /// Where agents connect.
    pub server_url: String,
    /// The CA certificate agents trust for an `https://` server URL, passed as
    /// `HODEI_CA_CERT`; the system's roots when `None`.
    pub ca_cert: Option<PathBuf>,
    /// The OTLP collector agents export their spans to, passed as `HODEI_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Pid files and agent logs live here.
    pub state_dir: PathBuf,
    /// How long an agent gets to stop after SIGTERM before it is killed.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    /// Kernel start time of the process (Linux), to tell it from a later process that
    /// reuses the pid.
    start_time: Option<u64>,
}

/// See the module docs.
#[derive(Debug)]
pub struct LocalProvider {
    config: LocalProviderConfig,
    /// Agents this server process spawned; kept to reap them. Agents adopted after a
    /// restart are not our children and are watched through their pid only.
    children: Mutex<HashMap<WorkerId, Child>>,
}

impl LocalProvider {
    pub fn new(config: LocalProviderConfig) -> Result<Self, ProviderError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            ProviderError::Unavailable(format!("cannot create {}: {e}", config.state_dir.display()))
        })?;
        // Pid files, logs and credential files are the server's business only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| {
                ProviderError::Unavailable(format!(
                    "cannot protect {}: {e}",
                    config.state_dir.display()
                ))
            })?;
        Ok(Self {
            config,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Child>> {
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pid_path(&self, id: &WorkerId) -> PathBuf {
        self.config.state_dir.join(format!("{id}.pid"))
    }

    /// Where the agent finds its credential; it reads the file and removes it.
    fn credential_path(&self, id: &WorkerId) -> PathBuf {
        self.config.state_dir.join(format!("{id}.credential"))
    }

    /// The agent's work root: jobs' fresh directories and its records of running jobs.
    /// Outside the state directory, which is the server's alone (0700): a pool whose jobs
    /// run as another user (`template.user`) must reach its job directories. Worker ids are
    /// unique, so agents of several servers on one machine never share one.
    pub fn work_root(&self, id: &WorkerId) -> PathBuf {
        std::env::temp_dir().join("hodei-work").join(id.as_str())
    }

    /// The agent's log file: its stdout and stderr.
    pub fn log_path(&self, id: &WorkerId) -> PathBuf {
        self.config.state_dir.join(format!("{id}.log"))
    }

    /// The pid of a running worker's agent, if it runs.
    pub fn pid(&self, id: &WorkerId) -> Option<i32> {
        let record = read_pid_file(&self.pid_path(id))?;
        self.is_running(id, record).then_some(record.pid)
    }

    fn is_running(&self, id: &WorkerId, record: PidFile) -> bool {
        if let Some(child) = self.children().get_mut(id) {
            // Our own child: `try_wait` also reaps it if it exited, so no zombie lingers.
            return matches!(child.try_wait(), Ok(None));
        }
        process_alive(record)
    }

    async fn wait_for_exit(&self, id: &WorkerId, record: PidFile, limit: Duration) -> bool {
        let child = self.children().remove(id);
        if let Some(mut child) = child {
            return match tokio::time::timeout(limit, child.wait()).await {
                Ok(_) => true,
                Err(_) => {
                    self.children().insert(id.clone(), child);
                    false
                }
            };
        }
        let deadline = tokio::time::Instant::now() + limit;
        while process_alive(record) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// Writes `contents` to a new file only its owner can read (mode 0600 from the start).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A leftover of an earlier attempt for the same worker is replaced.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn read_pid_file(path: &Path) -> Option<PidFile> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Start time of `pid` in clock ticks since boot, from `/proc/<pid>/stat` (field 22).
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn process_alive(record: PidFile) -> bool {
    let exists = match kill(Pid::from_raw(record.pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    };
    if !exists {
        return false;
    }
    // A zombie has exited; only its parent's wait would remove it.
    let zombie = std::fs::read_to_string(format!("/proc/{}/stat", record.pid))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    if zombie {
        return false;
    }
    match (record.start_time, process_start_time(record.pid)) {
        (Some(recorded), Some(actual)) => recorded == actual,
        _ => true,
    }
}

/// Kills the job groups an agent recorded under `work_root` that still run (a dead
/// agent's jobs normally die with it; this catches what escaped). Returns them.
fn kill_job_groups(work_root: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(work_root.join(".hodei-jobs")) else {
        return Vec::new();
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(record) = read_pid_file(&path)
            && process_alive(record)
            && killpg(Pid::from_raw(record.pid), Signal::SIGKILL).is_ok()
        {
            killed.push(record.pid);
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

fn signal_group(pid: i32, signal: Signal) {
    // The agent leads its own process group: signal the group so its jobs stop too.
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => tracing::warn!(pid, ?signal, %errno, "could not signal agent process group"),
    }
}

#[async_trait]
impl WorkerProvider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    async fn create_worker(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        credential: &AgentCredential,
    ) -> Result<Worker, ProviderError> {
        use std::os::unix::fs::OpenOptionsExt;
        let credential_path = self.credential_path(id);
        write_private(&credential_path, credential.expose().as_bytes()).map_err(|e| {
            ProviderError::Unavailable(format!("cannot write {}: {e}", credential_path.display()))
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path(id))
            .map_err(|e| ProviderError::Unavailable(format!("cannot open agent log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| ProviderError::Unavailable(format!("cannot open agent log: {e}")))?;

        let mut command = Command::new(&self.config.program);
        command
            .args(&self.config.args)
            .arg("agent")
            .arg("--server")
            .arg(&self.config.server_url)
            .arg("--worker-id")
            .arg(id.as_str())
            .arg("--token-file")
            .arg(&credential_path)
            .env_remove("HODEI_TOKEN")
            .arg("--work-dir")
            .arg(self.work_root(id))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        for (key, value) in &spec.labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        if let Some(user) = &spec.user {
            command.arg("--job-user").arg(user);
        }
        if let Some(ca_cert) = &self.config.ca_cert {
            command.env("HODEI_CA_CERT", ca_cert);
        }
        if let Some(endpoint) = &self.config.otlp_endpoint {
            command.env("HODEI_OTLP_ENDPOINT", endpoint);
        }
        let child = command.spawn().map_err(|e| {
            let _ = std::fs::remove_file(&credential_path);
            ProviderError::Failed(format!(
                "cannot start agent {}: {e}",
                self.config.program.display()
            ))
        })?;
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| ProviderError::Failed("agent exited before it got a pid".into()))?;
        let record = PidFile {
            pid,
            start_time: process_start_time(pid),
        };
        self.children().insert(id.clone(), child);
        let text = serde_json::to_string(&record)
            .map_err(|e| ProviderError::Failed(format!("cannot encode pid file: {e}")))?;
        if let Err(e) = write_private(&self.pid_path(id), text.as_bytes()) {
            // Without a pid file the agent would be invisible after a restart: stop it now.
            signal_group(pid, Signal::SIGKILL);
            self.wait_for_exit(id, record, self.config.stop_grace).await;
            return Err(ProviderError::Unavailable(format!(
                "cannot write pid file: {e}"
            )));
        }
        tracing::info!(worker_id = %id, pid, "local agent started");
        Ok(Worker::from_spec(
            id.clone(),
            spec,
            ProviderKind::Local,
            SystemTime::now(),
        ))
    }

    async fn terminate_worker(&self, id: &WorkerId) -> Result<(), ProviderError> {
        let path = self.pid_path(id);
        let Some(record) = read_pid_file(&path) else {
            return Ok(());
        };
        if self.is_running(id, record) {
            signal_group(record.pid, Signal::SIGTERM);
            if !self.wait_for_exit(id, record, self.config.stop_grace).await {
                tracing::warn!(worker_id = %id, pid = record.pid, "agent ignored SIGTERM, killing it");
                signal_group(record.pid, Signal::SIGKILL);
                if !self.wait_for_exit(id, record, Duration::from_secs(5)).await {
                    return Err(ProviderError::Failed(format!(
                        "agent {id} (pid {}) survived SIGKILL",
                        record.pid
                    )));
                }
            }
        }
        self.children().remove(id);
        // An agent that died before reading its credential leaves it behind.
        let _ = std::fs::remove_file(self.credential_path(id));
        for pgid in kill_job_groups(&self.work_root(id)) {
            tracing::warn!(worker_id = %id, pgid, "killed a job group the agent left");
        }
        let _ = std::fs::remove_dir_all(self.work_root(id));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ProviderError::Failed(format!(
                    "cannot remove pid file: {e}"
                )));
            }
        }
        tracing::info!(worker_id = %id, pid = record.pid, "local agent stopped");
        Ok(())
    }

    async fn confirm_dead(&self, id: &WorkerId) -> Result<bool, ProviderError> {
        let Some(record) = read_pid_file(&self.pid_path(id)) else {
            // Not an agent of ours (or already cleaned up): cannot tell.
            return Ok(false);
        };
        if self.is_running(id, record) {
            return Ok(false);
        }
        for pgid in kill_job_groups(&self.work_root(id)) {
            tracing::warn!(worker_id = %id, pgid, "killed a job group of a dead agent");
        }
        Ok(true)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerId>, ProviderError> {
        let entries = std::fs::read_dir(&self.config.state_dir).map_err(|e| {
            ProviderError::Unavailable(format!(
                "cannot read {}: {e}",
                self.config.state_dir.display()
            ))
        })?;
        let mut running = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "pid") {
                continue;
            }
            let Some(id) = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| WorkerId::new(stem).ok())
            else {
                continue;
            };
            match read_pid_file(&path) {
                Some(record) if self.is_running(&id, record) => running.push(id),
                _ => {
                    // The agent is gone: forget it, so the next restart does not look again.
                    self.children().remove(&id);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        running.sort();
        Ok(running)
    }
}
