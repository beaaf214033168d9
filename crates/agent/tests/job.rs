//! Jobs run as real processes: output in order, exit codes, timeouts, cancels that stop the
//! whole process tree, and programs that cannot start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hodei_agent::job;
use hodei_proto::v1::{self, agent_message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Ran {
    accepted: bool,
    /// Every chunk's text, in the order received.
    stdout: String,
    /// Chunks not marked as the combined output.
    other_streams: usize,
    sequences: Vec<u64>,
    result: v1::JobResult,
}

async fn collect(mut rx: mpsc::Receiver<v1::AgentMessage>) -> Ran {
    let mut ran = Ran {
        accepted: false,
        stdout: String::new(),
        other_streams: 0,
        sequences: vec![],
        result: v1::JobResult::default(),
    };
    while let Some(message) = rx.recv().await {
        match message.body.unwrap() {
            agent_message::Body::JobAccepted(_) => ran.accepted = true,
            agent_message::Body::LogChunk(chunk) => {
                ran.sequences.push(chunk.sequence);
                let text = String::from_utf8_lossy(&chunk.data).into_owned();
                if chunk.stream != i32::from(v1::LogStream::Output) {
                    ran.other_streams += 1;
                }
                ran.stdout.push_str(&text);
            }
            agent_message::Body::JobResult(result) => {
                ran.result = result;
                return ran;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("no result");
}

fn script(id: &str, script: &str, timeout_secs: u32) -> v1::JobAssignment {
    v1::JobAssignment {
        job_id: id.into(),
        script: script.into(),
        timeout_secs,
        ..Default::default()
    }
}

async fn run(assignment: v1::JobAssignment, cancel: CancellationToken) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let job = tokio::spawn(job::run(
        assignment,
        dir.path().to_path_buf(),
        job::Context::default(),
        cancel,
        tx,
    ));
    let ran = collect(rx).await;
    job.await.unwrap();
    ran
}

#[tokio::test]
async fn output_and_exit_code_are_reported_in_order() {
    let ran = run(
        script(
            "j1",
            "for i in 1 2 3; do echo out$i; done; echo err >&2; exit 7",
            0,
        ),
        CancellationToken::new(),
    )
    .await;
    assert!(ran.accepted);
    assert_eq!(ran.stdout, "out1\nout2\nout3\nerr\n");
    assert_eq!(ran.other_streams, 0);
    assert!(
        ran.sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "{:?}",
        ran.sequences
    );
    assert_eq!(ran.result.outcome, i32::from(v1::JobOutcome::Exited));
    assert_eq!(ran.result.exit_code, 7);
}

/// stdout and stderr written alternately come out exactly as written, numbered 0, 1, 2, ...
/// (read from two pipes, they were reordered: issue 19 item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_stdout_and_stderr_come_out_as_written() {
    let ran = run(
        script(
            "j-interleaved",
            "i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
            0,
        ),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.result.exit_code, 0);
    let expected: String = (0..300).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(ran.stdout, expected);
    let numbers: Vec<u64> = (0..ran.sequences.len() as u64).collect();
    assert_eq!(ran.sequences, numbers);
}

#[tokio::test]
async fn argv_runs_without_a_shell_in_its_own_directory_with_its_environment() {
    let mut assignment = v1::JobAssignment {
        job_id: "j2".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), "pwd; echo $GREETING".into()],
        ..Default::default()
    };
    assignment.env.insert("GREETING".into(), "hello".into());
    let ran = run(assignment, CancellationToken::new()).await;
    assert!(ran.stdout.ends_with("/j2\nhello\n"), "{}", ran.stdout);
    assert_eq!(ran.result.exit_code, 0);
}

#[tokio::test]
async fn a_job_past_its_timeout_is_killed() {
    let ran = run(
        script("j3", "echo started; sleep 60", 1),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.stdout, "started\n");
    assert_eq!(ran.result.outcome, i32::from(v1::JobOutcome::TimedOut));
}

#[tokio::test]
async fn cancel_stops_the_whole_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let cancel = CancellationToken::new();
    let assignment = script(
        "j4",
        &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
        0,
    );
    let (tx, rx) = mpsc::channel(1024);
    let job = tokio::spawn(job::run(
        assignment,
        dir.path().to_path_buf(),
        job::Context::default(),
        cancel.clone(),
        tx,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let grandchild: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never started its child"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    cancel.cancel();
    let ran = collect(rx).await;
    job.await.unwrap();

    assert_eq!(ran.result.outcome, i32::from(v1::JobOutcome::Cancelled));
    // A signal is delivered asynchronously: wait (bounded) for the grandchild to end rather
    // than read its state once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "grandchild {grandchild} still runs: {stat}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_program_that_does_not_exist_fails_to_start() {
    let assignment = v1::JobAssignment {
        job_id: "j5".into(),
        argv: vec!["/no/such/program".into()],
        ..Default::default()
    };
    let ran = run(assignment, CancellationToken::new()).await;
    assert!(!ran.accepted);
    assert_eq!(ran.result.outcome, i32::from(v1::JobOutcome::FailedToStart));
    assert!(
        ran.result.message.contains("cannot start"),
        "{}",
        ran.result.message
    );
}

/// A job sees its spec's variables and the documented ones, never the agent's own
/// environment (this test process has dozens of variables, `CARGO_*` among them).
#[tokio::test]
async fn a_job_sees_only_its_own_environment() {
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let mut assignment = script("j-env", "env", 0);
    assignment.env.insert("MINE".into(), "yes".into());
    assignment
        .env
        .insert("HODEI_JOB_ID".into(), "spoofed".into());
    let ran = run(assignment, CancellationToken::new()).await;
    let names: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|line| line.split_once('=').map(|(k, _)| k))
        .collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "HODEI_JOB_ID",
                "HODEI_WORKER_ID",
                "MINE",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(name),
            "unexpected variable {name} in {}",
            ran.stdout
        );
    }
    assert!(ran.stdout.contains("MINE=yes"));
    assert!(ran.stdout.contains("HODEI_JOB_ID=j-env"), "{}", ran.stdout);
}

#[test]
fn job_users_resolve() {
    assert_eq!(job::resolve_user("65534"), Ok((65534, 65534)));
    assert_eq!(job::resolve_user("1000:100"), Ok((1000, 100)));
    assert_eq!(job::resolve_user("root"), Ok((0, 0)));
    assert!(job::resolve_user("no-such-user-here").is_err());
    assert!(job::resolve_user("1:x").is_err());
}
