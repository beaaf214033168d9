//! End to end on the local provider: a real server on 127.0.0.1:0, real `hodei agent`
//! processes, the real SQLite store, the REST API and the CLI binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use hodei_core::WorkerState;
use hodei_ports::WorkerFilter;
use hodei_testkit::wait_for;

mod common;

use common::*;

#[tokio::test]
async fn two_real_agents_register_then_terminate_and_unregister() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 2)).await;

    let ids = wait_for_registered_workers(&server, 2).await;
    let pids: Vec<i32> = ids
        .iter()
        .map(|id| {
            agent_pid(dir.path(), id).unwrap_or_else(|| panic!("agent process for {id} runs"))
        })
        .collect();
    for id in &ids {
        assert!(
            server.scheduler().get(id).is_some(),
            "{id} registered with the scheduler"
        );
    }

    // Terminate one through the REST API.
    let client = reqwest::Client::new();
    let response = client
        .delete(format!("{}/api/v1/workers/{}", server.url(), ids[0]))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(server.scheduler().get(&ids[0]).is_none(), "unregistered");
    assert!(!process_is_agent(pids[0], &ids[0]), "process gone");
    let record = server.store().get_worker(&ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.registered),
        (WorkerState::Terminated, false)
    );

    // Shutting down terminates the rest.
    let scheduler = server.scheduler().clone();
    server.shutdown().await.unwrap();
    assert!(scheduler.is_empty(), "every worker unregistered");
    assert!(
        !process_is_agent(pids[1], &ids[1]),
        "no agent process left behind"
    );
}

#[tokio::test]
async fn a_restarted_server_adopts_running_agents_instead_of_provisioning_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut keep = config(dir.path(), 2);
    keep.shutdown.terminate_workers = false;
    let first = start_anywhere(keep.clone()).await;
    let mut ids = wait_for_registered_workers(&first, 2).await;
    first.shutdown().await.unwrap();
    for id in &ids {
        assert!(
            agent_pid(dir.path(), id).is_some(),
            "{id} survives the restart"
        );
    }

    let second = start_anywhere(config(dir.path(), 2)).await;
    let mut adopted = wait_for_registered_workers(&second, 2).await;
    ids.sort();
    adopted.sort();
    assert_eq!(adopted, ids, "the same two workers, registered again");
    let all = second
        .store()
        .list_workers(&WorkerFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "nothing new was provisioned");
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_reconciler_cleans_up_a_killed_agent_and_the_pool_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 1)).await;
    let ids = wait_for_registered_workers(&server, 1).await;
    let pid = agent_pid(dir.path(), &ids[0]).unwrap();

    Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();

    wait_for(
        "the killed worker to be unregistered and marked terminated",
        LIMIT,
        || async {
            let record = server.store().get_worker(&ids[0]).await.ok()??;
            (record.state == WorkerState::Terminated && server.scheduler().get(&ids[0]).is_none())
                .then_some(())
        },
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_rest_api_checks_tokens_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 0)).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url());

    let missing = client.get(url("/api/v1/workers")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = client
        .get(url("/api/v1/workers"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");

    let bad_id = client
        .get(url("/api/v1/workers/bad%20id"))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    let body: serde_json::Value = bad_id.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(body["error"]["field"], "worker_id");

    let bad_state = client
        .get(url("/api/v1/workers?state=asleep"))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_state.status(), 400);

    let unknown = client
        .get(url("/api/v1/workers/nobody"))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let unknown_pool = client
        .get(url("/api/v1/pools/nope"))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_pool.status(), 404);

    assert_eq!(
        client.get(url("/healthz")).send().await.unwrap().status(),
        200
    );
    wait_for("readiness", LIMIT, || async {
        let status = client.get(url("/readyz")).send().await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Without an Accept header: the classic text format, counters' families named with _total.
    assert!(
        metrics.contains("# TYPE worker_registration_operations_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE worker_registration_duration_seconds histogram"));
    assert!(metrics.contains("# TYPE worker_provisioning_registration_failed_total counter"));
    server.shutdown().await.unwrap();
}

// Multi-threaded: the CLI runs as a blocking child process while the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_workers_in_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 2)).await;
    let ids = wait_for_registered_workers(&server, 2).await;

    let output = Command::new(HODEI)
        .args([
            "worker",
            "ls",
            "--server",
            server.url(),
            "--token",
            server.token(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("STATE"), "{table}");
    for id in &ids {
        let row = table
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} in {table}"));
        assert!(
            row.contains("idle") && row.contains("yes") && row.contains("default"),
            "{row}"
        );
    }

    let pools = Command::new(HODEI)
        .args([
            "pool",
            "ls",
            "--server",
            server.url(),
            "--token",
            server.token(),
        ])
        .output()
        .unwrap();
    let pools = String::from_utf8(pools.stdout).unwrap();
    let row: Vec<&str> = pools
        .lines()
        .find(|line| line.trim_start().starts_with("default"))
        .unwrap_or_else(|| panic!("{pools}"))
        .split_whitespace()
        .collect();
    // NAME PROVIDER KIND MIN MAX DESIRED IDLE BUSY STARTING UNHEALTHY COST
    assert_eq!(
        row[..10],
        [
            "default", "local", "static", "2", "2", "2", "2", "0", "0", "0"
        ],
        "{pools}"
    );

    let wrong = Command::new(HODEI)
        .args([
            "worker",
            "ls",
            "--server",
            server.url(),
            "--token",
            "wrong-token-123456",
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("UNAUTHENTICATED"));
    server.shutdown().await.unwrap();
}

#[test]
fn the_server_refuses_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.toml");
    std::fs::write(
        &path,
        "[registration]\nmax_retries = 3\nbatch_concurrency = 0\n",
    )
    .unwrap();
    let output = Command::new(HODEI)
        .args(["server", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("registration.batch_concurrency"),
        "{stderr}"
    );

    let output = Command::new(HODEI)
        .args(["server", "--config"])
        .arg(&path)
        .env("REGISTRATION_MAX_RETRIES", "many")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("REGISTRATION_MAX_RETRIES"));
}
