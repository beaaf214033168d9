//! No job runs twice at once, end to end with a real server and real `hodei agent`
//! processes: `kill -9` of an agent during a job (its job dies with it, the job is requeued
//! at once and the worker replaced), SIGSTOP of an agent (its job is fenced after the lease,
//! retried elsewhere only after lease plus margin, and the late report is stale), a session
//! that heartbeats but never accepts (withdrawn, worker unhealthy, no attempt spent), and a
//! job whose agent never reports its timeout (ended by the server).
//!
//! Each job writes a marker per attempt (`attempt-<pid>`) and, while it runs, checks every
//! 100 ms that no other attempt's process is alive, writing `overlap` if one is.
//! The durations printed (`fence-timing ...`) are measurements for the README, not asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hodei_core::{JobId, JobSpec, JobState, WorkerId};
use hodei_proto::BearerToken;
use hodei_proto::v1::scheduler_service_client::SchedulerServiceClient;
use hodei_proto::v1::{self, agent_message, server_message};
use hodei_server::Server;
use hodei_testkit::metrics::sum_samples;
use hodei_testkit::wait_for;
use tokio::sync::mpsc;

/// A job that marks its attempt, starts a grandchild, and watches for other attempts for
/// about `tenths` tenths of a second. A zombie is not alive: a killed attempt stays one until
/// its (possibly frozen) reaper runs.
fn marker_job(dir: &Path, tenths: u32) -> JobSpec {
    let d = dir.display();
    let script = format!(
        r#"d={d}; me=$$; echo $me > $d/attempt-$me; sleep 1000 & echo $! > $d/child-$me
i=0; while [ $i -lt {tenths} ]; do
  for f in $d/attempt-*; do p=${{f##*-}}; [ "$p" = "$me" ] && continue
    s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ] && echo "$me saw $p alive ($s)" >> $d/overlap; done
  sleep 0.1; i=$((i+1)); done
kill $!; echo finished $me"#
    );
    JobSpec {
        max_retries: 1,
        ..JobSpec::new(hodei_core::Command::Script(script))
    }
}

/// The pids of the attempts that have started so far, in no order.
fn attempts(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("attempt-")?.parse().ok()
        })
        .collect()
}

fn child_of_attempt(dir: &Path, attempt: i32) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("child-{attempt}")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn signal(pid: i32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

async fn job(server: &Server, id: &JobId) -> hodei_core::Job {
    server.jobs().get(id).await.unwrap().unwrap()
}

async fn wait_job_ended(server: &Server, id: &JobId) -> hodei_core::Job {
    wait_for(&format!("job {id} to end"), LIMIT, || async {
        server
            .jobs()
            .get(id)
            .await
            .unwrap()
            .filter(|job| job.state.is_terminal())
    })
    .await
}

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn output_of(server: &Server, id: &JobId) -> String {
    let chunks = server.jobs().logs(id, 0, 10_000).await.unwrap();
    chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

/// What both real-agent tests check at the end: one result, from the second attempt, and
/// never two attempts alive at once.
async fn assert_one_result_never_overlapping(server: &Server, id: &JobId, markers: &Path) {
    let done = wait_job_ended(server, id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.reason);
    assert_eq!(done.attempts, 2);
    assert!(
        !markers.join("overlap").exists(),
        "two attempts alive at once: {}",
        std::fs::read_to_string(markers.join("overlap")).unwrap_or_default()
    );
    let output = output_of(server, id).await;
    assert_eq!(
        output.matches("finished").count(),
        1,
        "exactly one attempt's result is kept: {output:?}"
    );
    for attempt in attempts(markers) {
        assert!(!alive(attempt), "attempt {attempt} still runs");
        if let Some(child) = child_of_attempt(markers, attempt) {
            assert!(
                !alive(child),
                "a grandchild of attempt {attempt} still runs"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_agent_kills_its_job_which_is_requeued_at_once_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.agents.heartbeat_interval = Duration::from_millis(500);
    let server = start_anywhere(config).await;
    let first = wait_for_registered_workers(&server, 1).await.remove(0);
    wait_for_connected(&server, &first).await;

    let submitted = server
        .jobs()
        .submit(marker_job(markers.path(), 30))
        .await
        .unwrap();
    let attempt = wait_for("the first attempt to start", LIMIT, || async {
        attempts(markers.path()).first().copied()
    })
    .await;
    let grandchild = wait_for("the first attempt's grandchild", LIMIT, || async {
        child_of_attempt(markers.path(), attempt)
    })
    .await;
    let agent = agent_pid(dir.path(), &first).unwrap();

    let killed = Instant::now();
    signal(agent, "KILL");
    wait_for(
        "the first attempt and its grandchild to die",
        LIMIT,
        || async { (!alive(attempt) && !alive(grandchild)).then_some(()) },
    )
    .await;
    let job_dead = killed.elapsed();
    wait_for("the job to be requeued", LIMIT, || async {
        let job = job(&server, &submitted.id).await;
        (job.state == JobState::Queued || job.attempts >= 2).then_some(())
    })
    .await;
    let requeued = killed.elapsed();
    let replacement = wait_for("a replacement worker", LIMIT, || async {
        server
            .scheduler()
            .list()
            .into_iter()
            .find(|w| w.worker.id != first && w.connected)
            .map(|w| w.worker.id)
    })
    .await;
    let replaced = killed.elapsed();
    println!(
        "fence-timing kill9: job_processes_dead_ms={} requeued_ms={} replacement_connected_ms={}",
        job_dead.as_millis(),
        requeued.as_millis(),
        replaced.as_millis()
    );

    assert_one_result_never_overlapping(&server, &submitted.id, markers.path()).await;
    let done = job(&server, &submitted.id).await;
    assert_eq!(done.worker_id.as_ref(), Some(&replacement));
    let text = metrics(&server).await;
    assert_eq!(
        sum_samples(
            &text,
            "hodei_job_lost_attempts_total",
            &[("kind", "worker_dead")]
        ),
        Some(1.0),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_fences_its_job_before_it_runs_elsewhere_and_its_late_result_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    config.agents.heartbeat_interval = Duration::from_millis(200);
    config.agents.unhealthy_after = 3;
    // Not removed (and so not killed) while it is frozen: it must come back and report.
    config.agents.remove_after = 1000;
    config.agents.lease = Duration::from_secs(2);
    config.agents.lease_margin = Duration::from_secs(1);
    let server = start_anywhere(config).await;
    let workers = wait_for_registered_workers(&server, 2).await;
    for worker in &workers {
        wait_for_connected(&server, worker).await;
    }

    let submitted = server
        .jobs()
        .submit(marker_job(markers.path(), 40))
        .await
        .unwrap();
    let attempt = wait_for("the first attempt to start", LIMIT, || async {
        attempts(markers.path()).first().copied()
    })
    .await;
    let grandchild = wait_for("the first attempt's grandchild", LIMIT, || async {
        child_of_attempt(markers.path(), attempt)
    })
    .await;
    let frozen_worker: WorkerId = job(&server, &submitted.id).await.worker_id.unwrap();
    let agent = agent_pid(dir.path(), &frozen_worker).unwrap();

    let stopped = Instant::now();
    signal(agent, "STOP");
    wait_for("the frozen agent's job to fence itself", LIMIT, || async {
        (!alive(attempt) && !alive(grandchild)).then_some(())
    })
    .await;
    let fenced = stopped.elapsed();
    wait_for("the job to be given up on and requeued", LIMIT, || async {
        let job = job(&server, &submitted.id).await;
        (job.attempts >= 2).then_some(())
    })
    .await;
    let requeued = stopped.elapsed();
    println!(
        "fence-timing sigstop: fenced_ms={} requeued_ms={}",
        fenced.as_millis(),
        requeued.as_millis()
    );
    assert!(
        fenced < requeued,
        "the first attempt died before the second was handed out"
    );

    signal(agent, "CONT");
    assert_one_result_never_overlapping(&server, &submitted.id, markers.path()).await;
    let done = job(&server, &submitted.id).await;
    assert_ne!(done.worker_id.as_ref(), Some(&frozen_worker));
    // The thawed agent reports its attempt lost; the server keeps it out of the job.
    wait_for("the late report to be counted stale", LIMIT, || async {
        let text = metrics(&server).await;
        (sum_samples(
            &text,
            "hodei_job_stale_reports_total",
            &[("kind", "result")],
        )? >= 1.0)
            .then_some(())
    })
    .await;
    let text = metrics(&server).await;
    assert_eq!(
        sum_samples(
            &text,
            "hodei_job_lost_attempts_total",
            &[("kind", "silent")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        job(&server, &submitted.id).await,
        done,
        "the stale report changed nothing"
    );
    server.shutdown().await.unwrap();
}

/// A raw agent session: says hello, heartbeats, and hands everything the server sends to
/// the test. It never accepts or reports anything unless the test sends it.
struct RawSession {
    from_server: mpsc::Receiver<server_message::Body>,
    to_server: mpsc::Sender<v1::AgentMessage>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RawSession {
    /// Closes the session, so the server's shutdown does not wait for it.
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

async fn raw_session(server: &Server, worker_id: &str) -> RawSession {
    let channel = tonic::transport::Endpoint::from_shared(server.url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // An enrollment token: the admin token cannot open a worker session.
    let token = BearerToken::new(&agent_token(server).await).unwrap();
    let mut client = SchedulerServiceClient::with_interceptor(channel, token);
    let (to_server, outbound) = mpsc::channel(64);
    to_server
        .send(v1::AgentMessage {
            body: Some(agent_message::Body::Hello(v1::Hello {
                worker_id: worker_id.to_owned(),
                capabilities: Some(v1::WorkerCapabilities {
                    cpu_cores: 2,
                    memory_mb: 2048,
                    ..Default::default()
                }),
                version: "raw-test".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut inbound = client
        .worker_session(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    let (forward, from_server) = mpsc::channel(64);
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(body) = message.body
                && forward.send(body).await.is_err()
            {
                return;
            }
        }
    });
    let beats = to_server.clone();
    let heart = tokio::spawn(async move {
        for sequence in 1.. {
            let beat = v1::AgentMessage {
                body: Some(agent_message::Body::Heartbeat(v1::Heartbeat {
                    sequence,
                    usage: None,
                })),
            };
            if beats.send(beat).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    RawSession {
        from_server,
        to_server,
        tasks: vec![reader, heart],
    }
}

impl RawSession {
    /// The next message that `pick` accepts, skipping the rest (hello and heartbeat answers).
    async fn next<T>(&mut self, mut pick: impl FnMut(server_message::Body) -> Option<T>) -> T {
        tokio::time::timeout(LIMIT, async {
            loop {
                let body = self.from_server.recv().await.expect("session open");
                if let Some(value) = pick(body) {
                    return value;
                }
            }
        })
        .await
        .expect("the server said it in time")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_nobody_accepts_is_withdrawn_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0);
    config.jobs.assign_timeout = Duration::from_secs(1);
    let server = start_anywhere(config).await;
    let mut silent = raw_session(&server, "silent-1").await;
    let silent_id = WorkerId::new("silent-1").unwrap();
    wait_for_connected(&server, &silent_id).await;

    // max_retries 0: a spent attempt would fail the job.
    let spec = JobSpec::new(hodei_core::Command::Script("echo ran".into()));
    let submitted = server.jobs().submit(spec).await.unwrap();
    let assigned = silent
        .next(|body| match body {
            server_message::Body::AssignJob(assignment) => Some(assignment),
            _ => None,
        })
        .await;
    assert_eq!(assigned.job_id, submitted.id.as_str());
    assert_eq!(assigned.attempt, 1);
    let cancelled = silent
        .next(|body| match body {
            server_message::Body::CancelJob(cancel) => Some(cancel.job_id),
            _ => None,
        })
        .await;
    assert_eq!(
        cancelled,
        submitted.id.as_str(),
        "the agent is told to drop it"
    );
    let withdrawn = wait_for("the job to be queued again", LIMIT, || async {
        let job = job(&server, &submitted.id).await;
        (job.state == JobState::Queued).then_some(job)
    })
    .await;
    assert_eq!((withdrawn.attempts, withdrawn.withdrawn), (1, 1));
    assert!(
        withdrawn
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("not accepted"),
        "{:?}",
        withdrawn.reason
    );
    assert_eq!(
        server.jobs().worker_activity(&silent_id),
        Some(hodei_core::WorkerState::Unhealthy)
    );

    // Accepting now is too late: the server tells it to stop again.
    silent
        .to_server
        .send(v1::AgentMessage {
            body: Some(agent_message::Body::JobAccepted(v1::JobAccepted {
                job_id: submitted.id.to_string(),
                attempt: 1,
            })),
        })
        .await
        .unwrap();
    silent
        .next(|body| match body {
            server_message::Body::CancelJob(_) => Some(()),
            _ => None,
        })
        .await;
    assert_eq!(job(&server, &submitted.id).await.state, JobState::Queued);

    // A real agent then runs it: its first spent attempt, so it succeeds.
    server
        .pools()
        .scale("default", 1)
        .await
        .expect("scale the pool");
    let done = wait_job_ended(&server, &submitted.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.reason);
    assert_eq!((done.attempts, done.withdrawn), (2, 1));
    let text = metrics(&server).await;
    assert_eq!(
        sum_samples(&text, "hodei_job_assignments_withdrawn_total", &[]),
        Some(1.0)
    );
    assert!(
        sum_samples(
            &text,
            "hodei_job_stale_reports_total",
            &[("kind", "accepted")]
        ) >= Some(1.0)
    );
    drop(silent);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_job_past_its_timeout_when_its_agent_never_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0);
    config.jobs.timeout_grace = Duration::from_millis(500);
    let server = start_anywhere(config).await;
    let mut mute = raw_session(&server, "mute-1").await;
    wait_for_connected(&server, &WorkerId::new("mute-1").unwrap()).await;

    let spec = JobSpec {
        timeout: Some(Duration::from_secs(1)),
        ..JobSpec::new(hodei_core::Command::Script("sleep 100".into()))
    };
    let submitted = server.jobs().submit(spec).await.unwrap();
    let assignment = mute
        .next(|body| match body {
            server_message::Body::AssignJob(assignment) => Some(assignment),
            _ => None,
        })
        .await;
    mute.to_server
        .send(v1::AgentMessage {
            body: Some(agent_message::Body::JobAccepted(v1::JobAccepted {
                job_id: assignment.job_id.clone(),
                attempt: assignment.attempt,
            })),
        })
        .await
        .unwrap();
    let done = wait_job_ended(&server, &submitted.id).await;
    assert_eq!(done.state, JobState::TimedOut, "{:?}", done.reason);
    let cancelled = mute
        .next(|body| match body {
            server_message::Body::CancelJob(cancel) => Some(cancel.job_id),
            _ => None,
        })
        .await;
    assert_eq!(cancelled, assignment.job_id);
    // Its late report of the same attempt is stale, not a second result.
    mute.to_server
        .send(v1::AgentMessage {
            body: Some(agent_message::Body::JobResult(v1::JobResult {
                job_id: assignment.job_id.clone(),
                attempt: assignment.attempt,
                outcome: v1::JobOutcome::Exited.into(),
                exit_code: 0,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    wait_for("the late result to be counted stale", LIMIT, || async {
        let text = metrics(&server).await;
        (sum_samples(
            &text,
            "hodei_job_stale_reports_total",
            &[("kind", "result")],
        )? >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(job(&server, &submitted.id).await.state, JobState::TimedOut);
    let text = metrics(&server).await;
    assert_eq!(
        sum_samples(&text, "hodei_job_server_timeouts_total", &[]),
        Some(1.0)
    );
    drop(mute);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_still_gets_its_grace_to_stop_under_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 1)).await;
    let worker = wait_for_registered_workers(&server, 1).await.remove(0);
    wait_for_connected(&server, &worker).await;
    let script = r#"trap 'echo cleaning up; exit 3' TERM; echo ready; sleep 100 & wait"#;
    let spec = JobSpec::new(hodei_core::Command::Script(script.into()));
    let submitted = server.jobs().submit(spec).await.unwrap();
    wait_for("the job to say it is ready", LIMIT, || async {
        output_of(&server, &submitted.id)
            .await
            .contains("ready")
            .then_some(())
    })
    .await;
    server.jobs().cancel(submitted.id.clone()).await.unwrap();
    let done = wait_job_ended(&server, &submitted.id).await;
    assert_eq!(done.state, JobState::Cancelled);
    let output = output_of(&server, &submitted.id).await;
    assert!(output.contains("cleaning up"), "{output:?}");
    server.shutdown().await.unwrap();
}
