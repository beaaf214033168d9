//! What makes a job die with its agent, without `unsafe` (so without `pre_exec`): the agent
//! runs every job through two tiny re-executions of its own binary.
//!
//! - `hodei __job-supervise --lease-ms N -- CMD...` ([`supervise`]) leads the job's process
//!   group. Its stdin is a pipe from the agent, on which the agent writes, whenever it hears
//!   from the server, how much of its lease is left (milliseconds, one line). When the pipe
//!   closes (the agent died, however) or the lease runs out (the agent is frozen or cut off
//!   from the server), it kills the whole group, itself included, with SIGKILL: that is the
//!   job's half of self-fencing, and it works even while the agent itself is stopped.
//! - `hodei __job-exec --parent PID -- CMD...` ([`exec`]) asks the kernel for SIGKILL when its
//!   parent (the supervisor's main thread, which lives as long as the supervisor) dies, then
//!   becomes the command with `execvp`; the death signal survives the exec.
//!
//! The agent records each running job's group (pid and kernel start time) in its work root
//! ([`JobRecords`]), so an agent that starts again, or the local provider after an agent
//! died, kills what was left ([`kill_leftovers`]).

use std::ffi::{CString, OsString};
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp, getpid, getppid};
use serde::{Deserialize, Serialize};

/// The hidden subcommand that supervises a job.
pub const SUPERVISE: &str = "__job-supervise";
/// The hidden subcommand that becomes the job's command.
pub const EXEC: &str = "__job-exec";

/// Writes a line to stderr, ignoring failure: stderr is the job's output pipe to the agent,
/// which may be dead (`eprintln!` would panic, and a panicking supervisor would leave the
/// job's group alive).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// A shim's command line, as the agent writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimCall {
    /// `__job-supervise --lease-ms MS -- CMD...`
    Supervise {
        lease: Duration,
        command: Vec<OsString>,
    },
    /// `__job-exec --parent PID -- CMD...`
    Exec { parent: i32, command: Vec<OsString> },
}

/// Reads a shim's arguments (those after the program's name) in exactly the form the agent
/// writes them; `None` for anything else, which is left to the full command-line parser and
/// its errors. The shims start twice per job: building the parser of every `hodei` command
/// for them cost more than the rest of their start.
pub fn parse_shim_call(args: &[OsString]) -> Option<ShimCall> {
    let [name, flag, value, dashes, command @ ..] = args else {
        return None;
    };
    if dashes.to_str() != Some("--") || command.is_empty() {
        return None;
    }
    let value = value.to_str()?;
    match (name.to_str()?, flag.to_str()?) {
        (SUPERVISE, "--lease-ms") => Some(ShimCall::Supervise {
            lease: Duration::from_millis(value.parse().ok()?),
            command: command.to_vec(),
        }),
        (EXEC, "--parent") => Some(ShimCall::Exec {
            parent: value.parse().ok()?,
            command: command.to_vec(),
        }),
        _ => None,
    }
}

/// Exit code of the shims when they cannot do their work at all.
const SHIM_FAILED: i32 = 127;

enum Event {
    /// The agent renewed the lease: this much of it is left.
    Renewed(Duration),
    /// The agent's end of the pipe closed: the agent is gone.
    AgentGone,
    Exited(std::io::Result<ExitStatus>),
}

/// Parses one renewal line: milliseconds left on the lease.
pub fn parse_renewal(line: &str) -> Option<Duration> {
    line.trim().parse::<u64>().ok().map(Duration::from_millis)
}

fn kill_own_group(why: &str) -> ! {
    say!("hodei: {why}, killing the job");
    let _ = killpg(getpgrp(), Signal::SIGKILL);
    // Not reached: SIGKILL of our own group includes us.
    std::process::exit(SHIM_FAILED)
}

/// Runs `command` under a lease (see the module docs); returns the exit code to exit with.
/// A command killed by a signal makes the supervisor die of the same signal.
pub fn supervise(lease: Duration, command: Vec<OsString>) -> i32 {
    // Whatever goes wrong here, the job must not outlive its supervisor.
    std::panic::set_hook(Box::new(|_| {
        let _ = killpg(getpgrp(), Signal::SIGKILL);
    }));
    // A cancel or timeout signals the whole group with SIGTERM: the command gets its grace
    // to stop, so the supervisor must not die of it first (its death would SIGKILL the
    // command). Blocked before any thread exists, so in every thread; `exec` unblocks it.
    if let Err(errno) = graceful_signals().thread_block() {
        say!("hodei: cannot block SIGTERM: {errno}");
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            say!("hodei: cannot find its own executable: {error}");
            return SHIM_FAILED;
        }
    };
    let (events, inbox) = mpsc::channel();
    // Spawned from this (the main) thread, which lives until the supervisor exits, so the
    // child's parent-death signal fires only when the supervisor dies.
    let mut child = match std::process::Command::new(exe)
        .arg(EXEC)
        .arg("--parent")
        .arg(getpid().as_raw().to_string())
        .arg("--")
        .args(&command)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            say!("hodei: cannot start the job: {error}");
            return SHIM_FAILED;
        }
    };
    let renewals = events.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if let Some(left) = parse_renewal(&line)
                && renewals.send(Event::Renewed(left)).is_err()
            {
                return;
            }
        }
        let _ = renewals.send(Event::AgentGone);
    });
    let mut deadline = Instant::now() + lease;
    let (pid_tx, waiter) = (events, child.id());
    std::thread::spawn(move || {
        let _ = pid_tx.send(Event::Exited(child.wait()));
    });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.recv_timeout(left) {
            Ok(Event::Renewed(left)) => deadline = Instant::now() + left,
            Ok(Event::AgentGone) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                kill_own_group("the agent is gone")
            }
            Ok(Event::Exited(Ok(status))) => return exit_like(status),
            Ok(Event::Exited(Err(error))) => {
                say!("hodei: cannot wait for the job (pid {waiter}): {error}");
                kill_own_group("lost track of the job")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    kill_own_group("the agent has not heard from the server for its lease")
                }
            }
        }
    }
}

/// The exit code for `status`; a signal is passed on by dying of it.
fn exit_like(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    if let Some(signal) = status.signal().and_then(|s| Signal::try_from(s).ok()) {
        let _ = nix::sys::signal::raise(signal);
        return 128 + signal as i32;
    }
    SHIM_FAILED
}

/// The signals a job gets to handle itself, which its supervisor does not die of.
fn graceful_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

/// Becomes `command` with SIGKILL as its parent-death signal; returns only on failure.
pub fn exec(parent: i32, command: Vec<OsString>) -> i32 {
    // The supervisor blocked these; the command must get them.
    if let Err(errno) = graceful_signals().thread_unblock() {
        say!("hodei: cannot unblock SIGTERM: {errno}");
        return SHIM_FAILED;
    }
    if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        say!("hodei: cannot set the parent-death signal: {errno}");
        return SHIM_FAILED;
    }
    // The parent may have died before the signal was armed.
    if getppid().as_raw() != parent {
        return SHIM_FAILED;
    }
    let argv: Result<Vec<CString>, _> = command
        .into_iter()
        .map(|arg| CString::new(arg.into_vec()))
        .collect();
    let argv = match argv {
        Ok(argv) if !argv.is_empty() => argv,
        _ => {
            say!("hodei: empty command or a nul byte in it");
            return SHIM_FAILED;
        }
    };
    let error = match nix::unistd::execvp(&argv[0], &argv) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    say!("hodei: cannot run {:?}: {error}", argv[0]);
    if error == Errno::ENOENT { 127 } else { 126 }
}

/// A process recorded by pid and kernel start time, so a later process reusing the pid is
/// never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: i32,
    pub start_time: Option<u64>,
}

impl ProcessRecord {
    pub fn of(pid: i32) -> Self {
        Self {
            pid,
            start_time: process_start_time(pid),
        }
    }

    /// Whether that very process still exists (and is not a zombie).
    pub fn alive(&self) -> bool {
        match kill(Pid::from_raw(self.pid), None) {
            Ok(()) | Err(Errno::EPERM) => {}
            Err(_) => return false,
        }
        match (self.start_time, read_stat(self.pid)) {
            (_, None) => false,
            (_, Some(stat)) if stat.state == 'Z' => false,
            (Some(recorded), Some(stat)) => stat.start_time == Some(recorded),
            (None, Some(_)) => true,
        }
    }
}

struct Stat {
    state: char,
    ppid: Option<i32>,
    start_time: Option<u64>,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1).and_then(|p| p.parse().ok()),
        start_time: fields.get(19).and_then(|t| t.parse().ok()),
    })
}

/// Start time of `pid` in clock ticks since boot (Linux), `None` elsewhere.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid)?.start_time
}

/// The processes whose parent is `parent`: from the kernel's list of each of its threads'
/// children (`/proc/<pid>/task/<tid>/children`), or, where the kernel has no such list, by
/// reading every process's `/proc/<pid>/stat`. The agent asks after every job: the walk read a
/// few hundred files each time on a busy machine, the lists one per thread.
pub fn children_of(parent: i32) -> Vec<i32> {
    if let Some(children) = children_of_threads(parent) {
        return children;
    }
    children_by_walk(parent)
}

/// `None` when the kernel keeps no children lists (built without `CONFIG_PROC_CHILDREN`) or
/// `parent`'s main thread cannot be read.
fn children_of_threads(parent: i32) -> Option<Vec<i32>> {
    let task = PathBuf::from(format!("/proc/{parent}/task"));
    // The main thread's list: its absence says the kernel keeps none.
    let mut text = std::fs::read_to_string(task.join(parent.to_string()).join("children")).ok()?;
    for entry in std::fs::read_dir(&task).ok()?.flatten() {
        if entry.file_name().to_str() == Some(&parent.to_string()) {
            continue;
        }
        // A thread that ended meanwhile handed its children to another thread.
        if let Ok(more) = std::fs::read_to_string(entry.path().join("children")) {
            text.push(' ');
            text.push_str(&more);
        }
    }
    Some(parse_children(&text))
}

/// The pids of a `children` list (separated by spaces), each once.
fn parse_children(text: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = text
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn children_by_walk(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| read_stat(*pid).and_then(|stat| stat.ppid) == Some(parent))
        .collect()
}

/// The job groups an agent runs, one file per job under `<work root>/.hodei-jobs`.
#[derive(Debug, Clone)]
pub struct JobRecords {
    dir: PathBuf,
}

impl JobRecords {
    pub fn new(work_root: &Path) -> Self {
        Self {
            dir: work_root.join(".hodei-jobs"),
        }
    }

    fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    /// Records the group led by `pid` for `job_id`.
    pub fn write(&self, job_id: &str, pid: i32) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_string(&ProcessRecord::of(pid)).map_err(std::io::Error::other)?;
        std::fs::write(self.path(job_id), text)
    }

    pub fn remove(&self, job_id: &str) {
        let _ = std::fs::remove_file(self.path(job_id));
    }
}

/// Kills every job group recorded under `work_root` that still runs and forgets the
/// records; returns the groups killed. For an agent starting again and for a provider
/// whose agent died.
pub fn kill_leftovers(work_root: &Path) -> Vec<i32> {
    let records = JobRecords::new(work_root);
    let Ok(entries) = std::fs::read_dir(&records.dir) else {
        return Vec::new();
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let record = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<ProcessRecord>(&text).ok());
        if let Some(record) = record
            && record.alive()
            && killpg(Pid::from_raw(record.pid), Signal::SIGKILL).is_ok()
        {
            killed.push(record.pid);
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn shim_calls_parse_as_the_agent_writes_them() {
        assert_eq!(
            parse_shim_call(&args(&[
                SUPERVISE,
                "--lease-ms",
                "1500",
                "--",
                "make",
                "-j"
            ])),
            Some(ShimCall::Supervise {
                lease: Duration::from_millis(1500),
                command: args(&["make", "-j"]),
            })
        );
        assert_eq!(
            parse_shim_call(&args(&[EXEC, "--parent", "42", "--", "true"])),
            Some(ShimCall::Exec {
                parent: 42,
                command: args(&["true"]),
            })
        );
    }

    #[test]
    fn anything_else_is_left_to_the_full_parser() {
        for words in [
            &[SUPERVISE, "--lease-ms", "soon", "--", "true"][..],
            &[SUPERVISE, "--lease-ms", "10", "--"],
            &[SUPERVISE, "--lease-ms", "10", "true"],
            &[EXEC, "--lease-ms", "10", "--", "true"],
            &[EXEC, "--parent", "-", "--", "true"],
            &["job", "--parent", "1", "--", "true"],
            &["server", "--config", "x.toml"],
            &[],
        ] {
            assert_eq!(parse_shim_call(&args(words)), None, "{words:?}");
        }
    }

    #[test]
    fn children_lists_parse_to_distinct_pids() {
        assert_eq!(parse_children("12 7 \n 12 x 9"), vec![7, 9, 12]);
        assert_eq!(parse_children(""), Vec::<i32>::new());
    }

    #[test]
    fn children_are_found_the_same_way_with_or_without_the_walk() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let listed = children_of(me);
        let walked = children_by_walk(me);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(listed.contains(&pid), "{listed:?} lacks {pid}");
        assert!(walked.contains(&pid), "{walked:?} lacks {pid}");
    }

    #[test]
    fn renewals_parse() {
        assert_eq!(parse_renewal("1500\n"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_renewal("0"), Some(Duration::ZERO));
        assert_eq!(parse_renewal("soon"), None);
        assert_eq!(parse_renewal("-1"), None);
    }

    #[test]
    fn records_tell_a_live_process_from_a_gone_one() {
        let me = ProcessRecord::of(std::process::id() as i32);
        assert!(me.alive());
        let reused = ProcessRecord {
            start_time: me.start_time.map(|t| t + 1),
            ..me
        };
        assert!(!reused.alive(), "same pid, other start time");
        assert!(
            !ProcessRecord {
                pid: i32::MAX,
                start_time: None
            }
            .alive()
        );
    }

    #[test]
    fn leftovers_are_killed_and_forgotten() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let records = JobRecords::new(root.path());
        records.write("j-1", child.id() as i32).unwrap();
        records.write("j-gone", i32::MAX).unwrap();
        assert_eq!(kill_leftovers(root.path()), vec![child.id() as i32]);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9));
        assert!(kill_leftovers(root.path()).is_empty(), "records removed");
    }
}
