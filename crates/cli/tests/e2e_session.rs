//! The agent's session with the server, between real `hodei agent` processes and a real
//! server over gRPC: hello, heartbeats, job assignment, logs, results, cancel, drain,
//! reconnects, heartbeat deadlines and authentication.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hodei_core::health::Liveness;
use hodei_core::{WorkerId, WorkerState};
use hodei_proto::v1::{self, server_message};
use hodei_proto::{ClientConfig, SchedulerPortClient};
use hodei_server::grpc::{AgentEvent, SessionEvent};
use hodei_testkit::wait_for;
use tokio::sync::broadcast;

fn fast_heartbeats(config: &mut hodei_server::ServerConfig) {
    config.agents.heartbeat_interval = Duration::from_millis(100);
    config.agents.unhealthy_after = 3;
    config.agents.remove_after = 20;
}

/// The next event from `worker` that `pick` accepts.
async fn next_event<T>(
    events: &mut broadcast::Receiver<SessionEvent>,
    worker: &WorkerId,
    mut pick: impl FnMut(&AgentEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LIMIT, async {
        loop {
            let event = events.recv().await.expect("event stream open");
            if &event.worker_id == worker
                && let Some(value) = pick(&event.event)
            {
                return value;
            }
        }
    })
    .await
    .expect("event arrived in time")
}

fn assign(job_id: &str, script: &str) -> server_message::Body {
    server_message::Body::AssignJob(v1::JobAssignment {
        job_id: job_id.into(),
        script: script.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_says_hello_heartbeats_and_is_available() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    fast_heartbeats(&mut cfg);
    let server = start_anywhere(cfg).await;
    let mut events = server.sessions().subscribe();
    let id = wait_for_registered_workers(&server, 1).await.remove(0);
    wait_for_connected(&server, &id).await;

    let beats: Vec<u64> = {
        let mut beats = Vec::new();
        while beats.len() < 3 {
            beats.push(
                next_event(&mut events, &id, |e| match e {
                    AgentEvent::Heartbeat(h) => Some(h.sequence),
                    _ => None,
                })
                .await,
            );
        }
        beats
    };
    assert!(
        beats.windows(2).all(|w| w[1] > w[0]),
        "heartbeat sequence grows: {beats:?}"
    );

    let client =
        SchedulerPortClient::new(&ClientConfig::new(server.url(), server.token())).unwrap();
    let info = client
        .raw()
        .get_worker(v1::GetWorkerRequest {
            worker_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(info.status, i32::from(v1::WorkerStatus::Available));
    assert!(info.connected);
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(info.last_seen_ms > 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_jobs_run_and_stream_logs_and_results_and_cancels_stop_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 1)).await;
    let id = wait_for_registered_workers(&server, 1).await.remove(0);
    wait_for_connected(&server, &id).await;
    let mut events = server.sessions().subscribe();

    server
        .sessions()
        .send(&id, assign("job-1", "echo hello; echo oops >&2; exit 3"))
        .await
        .unwrap();
    next_event(&mut events, &id, |e| {
        matches!(e, AgentEvent::JobAccepted(a) if a.job_id == "job-1").then_some(())
    })
    .await;
    let mut output = String::new();
    let result = next_event(&mut events, &id, |e| match e {
        AgentEvent::Log(chunk) if chunk.job_id == "job-1" => {
            output.push_str(&String::from_utf8_lossy(&chunk.data));
            None
        }
        AgentEvent::JobResult(result) if result.job_id == "job-1" => Some(result.clone()),
        _ => None,
    })
    .await;
    assert!(
        output.contains("hello\n") && output.contains("oops\n"),
        "{output:?}"
    );
    assert_eq!(result.outcome, i32::from(v1::JobOutcome::Exited));
    assert_eq!(result.exit_code, 3);

    server
        .sessions()
        .send(&id, assign("job-2", "sleep 300"))
        .await
        .unwrap();
    next_event(&mut events, &id, |e| {
        matches!(e, AgentEvent::JobAccepted(a) if a.job_id == "job-2").then_some(())
    })
    .await;
    let cancel = server_message::Body::CancelJob(v1::CancelJob {
        job_id: "job-2".into(),
        reason: "test".into(),
        grace_ms: 0,
    });
    server.sessions().send(&id, cancel).await.unwrap();
    let result = next_event(&mut events, &id, |e| match e {
        AgentEvent::JobResult(result) if result.job_id == "job-2" => Some(result.clone()),
        _ => None,
    })
    .await;
    assert_eq!(result.outcome, i32::from(v1::JobOutcome::Cancelled));
    server.shutdown().await.unwrap();
}

fn hand_started_agent(url: &str, token: &str, id: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(HODEI)
            .args([
                "agent",
                "--server",
                url,
                "--worker-id",
                id,
                "--label",
                "kind=hand",
            ])
            .env("HODEI_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reconnects_to_a_restarted_server_as_the_same_worker() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_anywhere(config(dir.path(), 0)).await;
    let addr = first.addr();
    let url = first.url().to_owned();
    let token = agent_token(&first).await;
    let id = WorkerId::new("hand-1").unwrap();
    let _agent = hand_started_agent(&url, &token, "hand-1");
    wait_for_connected(&first, &id).await;
    let registered = first.scheduler().get(&id).unwrap();
    assert_eq!(registered.worker.metadata.provider.as_str(), "external");
    assert_eq!(
        registered
            .worker
            .metadata
            .labels
            .get("kind")
            .map(String::as_str),
        Some("hand")
    );
    first.shutdown().await.unwrap();

    // Same address, same data (so the same token), a new process state.
    let mut cfg = config(dir.path(), 0);
    cfg.listen = addr;
    let second = start(cfg).await;
    wait_for_connected(&second, &id).await;
    let workers = second.scheduler().list();
    assert_eq!(workers.len(), 1, "one worker, not a new one");
    assert_eq!(workers[0].worker.id, id);
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_turns_unhealthy_recovers_and_is_removed_after_the_long_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // A worker outside any pool, so no pool replaces it while it is silent.
    let mut cfg = config(dir.path(), 0);
    fast_heartbeats(&mut cfg);
    cfg.local.stop_grace = Duration::from_millis(300);
    let server = start_anywhere(cfg).await;
    server.management().provision_worker().await.unwrap();
    let id = wait_for_registered_workers(&server, 1).await.remove(0);
    wait_for_connected(&server, &id).await;
    let pid = agent_pid(dir.path(), &id).unwrap();
    let signal = |name: &str| {
        assert!(
            Command::new("kill")
                .args([name, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };

    signal("-STOP");
    wait_for("the worker to be unhealthy", LIMIT, || async {
        let unhealthy = server.scheduler().get(&id)?.liveness == Liveness::Unhealthy;
        let record = server.store().get_worker(&id).await.ok()??;
        (unhealthy && record.state == WorkerState::Unhealthy).then_some(())
    })
    .await;

    signal("-CONT");
    wait_for("the worker to recover", LIMIT, || async {
        let healthy = server.scheduler().get(&id)?.liveness == Liveness::Healthy;
        let record = server.store().get_worker(&id).await.ok()??;
        (healthy && record.state == WorkerState::Idle).then_some(())
    })
    .await;

    signal("-STOP");
    wait_for(
        "the silent worker to be removed and terminated",
        LIMIT,
        || async {
            let record = server.store().get_worker(&id).await.ok()??;
            (record.state == WorkerState::Terminated && server.scheduler().get(&id).is_none())
                .then_some(())
        },
    )
    .await;
    assert!(!process_is_agent(pid, &id), "the stopped agent was killed");

    let metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["unhealthy", "recovered", "removed"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "hodei_worker_heartbeat_deadlines_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("{outcome} counted: {metrics}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_agent_finishes_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 0)).await;
    let id = WorkerId::new("drain-me").unwrap();
    let mut agent = hand_started_agent(server.url(), &agent_token(&server).await, "drain-me");
    wait_for_connected(&server, &id).await;

    server
        .sessions()
        .send(
            &id,
            server_message::Body::Drain(v1::DrainRequest {
                reason: "test".into(),
            }),
        )
        .await
        .unwrap();

    let status = wait_for("the agent to exit", LIMIT, || {
        let status = agent.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_token_is_refused_and_exits_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 0)).await;
    let output = Command::new(HODEI)
        .args(["agent", "--server", server.url(), "--worker-id", "intruder"])
        .env("HODEI_TOKEN", "not-the-right-token")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("token"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-right-token"),
        "the token is never printed"
    );
    assert!(server.scheduler().is_empty());
    server.shutdown().await.unwrap();
}
