//! The local provider with real processes. A shell that ignores the agent arguments and
//! sleeps stands in for `hodei agent`; the end-to-end test in `hodei-cli` uses the real one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hodei_adapters::{LocalProvider, LocalProviderConfig};
use hodei_core::{WorkerId, WorkerSpec};
use hodei_ports::WorkerProvider;
use hodei_testkit::provider_contract;

fn config(dir: &std::path::Path, script: &str) -> LocalProviderConfig {
    LocalProviderConfig {
        otlp_endpoint: None,
        program: "/bin/sh".into(),
        // `sh -c SCRIPT NAME ARGS...`: the agent arguments land in $1.. and are ignored.
        args: vec!["-c".into(), script.into(), "fake-agent".into()],
        server_url: "http://127.0.0.1:1".into(),
        ca_cert: None,
        state_dir: dir.to_path_buf(),
        stop_grace: Duration::from_secs(5),
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

#[tokio::test]
async fn local_provider_passes_the_provider_contract() {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(config(dir.path(), "exec sleep 600")).unwrap();
    provider_contract(&provider, "local").await;
}

#[tokio::test]
async fn a_restarted_provider_finds_running_agents_and_can_stop_them() {
    let dir = tempfile::tempdir().unwrap();
    let id = WorkerId::new("adopt-me").unwrap();
    let first = LocalProvider::new(config(dir.path(), "exec sleep 600")).unwrap();
    first
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .unwrap();
    let pid = first.pid(&id).unwrap();
    // The server "restarts": a new provider over the same state directory.
    drop(first);
    let second = LocalProvider::new(config(dir.path(), "exec sleep 600")).unwrap();

    assert_eq!(second.list_workers().await.unwrap(), vec![id.clone()]);
    second.terminate_worker(&id).await.unwrap();

    assert!(!alive(pid), "agent process {pid} is gone");
    assert!(second.list_workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dead_agent_is_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(config(dir.path(), "exit 3")).unwrap();
    let id = WorkerId::new("short-lived").unwrap();
    provider
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !provider.list_workers().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead agent still listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn terminate_stops_the_whole_process_group_and_kills_what_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The "agent" ignores SIGTERM and has a child of its own, like an agent running a job.
    let mut cfg = config(dir.path(), "trap '' TERM; sleep 600 & wait");
    cfg.stop_grace = Duration::from_millis(300);
    let provider = LocalProvider::new(cfg).unwrap();
    let id = WorkerId::new("stubborn").unwrap();
    provider
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .unwrap();
    let pid = provider.pid(&id).unwrap();
    // Wait until the job child exists, then find it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let children_file = format!("/proc/{pid}/task/{pid}/children");
    let child_pid: i32 = loop {
        let children = std::fs::read_to_string(&children_file).unwrap_or_default();
        if let Some(first) = children.split_whitespace().next() {
            break first.parse().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job child never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    provider.terminate_worker(&id).await.unwrap();

    assert!(!alive(pid), "agent is gone");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(child_pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job child {child_pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
