//! Draining workers end to end, with real `hodei agent` processes: a drained worker takes
//! no new job, finishes the one it runs, then is terminated and its pool replaces it
//! (`hodei worker drain`), or stays drained until `hodei worker undrain` (here through
//! gRPC's `DrainWorker`, so both APIs are covered).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use hodei_core::{JobId, JobSpec, JobState, WorkerId, WorkerState};
use hodei_proto::v1;
use hodei_proto::v1::scheduler_service_client::SchedulerServiceClient;
use hodei_server::Server;
use hodei_testkit::wait_for;

fn script(text: &str) -> JobSpec {
    JobSpec::new(hodei_core::Command::Script(text.to_owned()))
}

fn hodei(server: &Server, args: &[&str]) -> Output {
    Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", server.url())
        .env("HODEI_TOKEN", server.token())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn job(server: &Server, id: &JobId) -> hodei_core::Job {
    server.jobs().get(id).await.unwrap().unwrap()
}

async fn wait_state(server: &Server, id: &JobId, state: JobState) -> hodei_core::Job {
    wait_for(&format!("job {id} to be {state:?}"), LIMIT, || async {
        server
            .jobs()
            .get(id)
            .await
            .unwrap()
            .filter(|job| job.state == state)
    })
    .await
}

async fn stored_state(server: &Server, id: &WorkerId) -> WorkerState {
    server.store().get_worker(id).await.unwrap().unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_finishes_its_job_then_goes_or_stays_until_undrained() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 1)).await;
    let first = wait_for_registered_workers(&server, 1).await.remove(0);
    let release = dir.path().join("release");

    // A job runs on the worker until the test lets it finish.
    let running = server
        .jobs()
        .submit(script(&format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo finished",
            release.display()
        )))
        .await
        .unwrap();
    wait_state(&server, &running.id, JobState::Running).await;

    let drained = hodei(&server, &["worker", "drain", first.as_str()]);
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    assert!(text(&drained.stdout).contains("draining"));
    assert_eq!(stored_state(&server, &first).await, WorkerState::Draining);
    let shown = hodei(&server, &["worker", "get", first.as_str(), "-o", "json"]);
    let view: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(view["state"], "draining", "{view}");

    // No new job goes to it; the one it runs finishes with its output.
    let next = server.jobs().submit(script("echo next")).await.unwrap();
    std::fs::write(&release, b"").unwrap();
    let finished = wait_state(&server, &running.id, JobState::Succeeded).await;
    assert_eq!(finished.worker_id.as_ref(), Some(&first));
    let output = server.jobs().logs(&running.id, 0, 100).await.unwrap();
    assert_eq!(output[0].data, b"finished\n");

    // Then it is terminated, its agent is gone, and the pool replaces it; the queued job
    // runs on the replacement.
    wait_for("the drained worker to be terminated", LIMIT, || async {
        (stored_state(&server, &first).await == WorkerState::Terminated).then_some(())
    })
    .await;
    wait_for("the drained worker's agent to exit", LIMIT, || async {
        agent_pid(dir.path(), &first).is_none().then_some(())
    })
    .await;
    let ran_next = wait_state(&server, &next.id, JobState::Succeeded).await;
    let second = ran_next.worker_id.clone().unwrap();
    assert_ne!(second, first, "a drained worker got a new job");

    // Drain and keep, through gRPC: the worker stays, a job waits for it.
    let channel = tonic::transport::Endpoint::from_shared(server.url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = hodei_proto::BearerToken::new(server.token()).unwrap();
    let mut scheduler = SchedulerServiceClient::with_interceptor(channel, token);
    let answer = scheduler
        .drain_worker(v1::DrainWorkerRequest {
            worker_id: second.to_string(),
            then: v1::DrainThen::Keep.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.worker.unwrap().status,
        i32::from(v1::WorkerStatus::Draining)
    );
    // One read model: REST (and so the CLI) and gRPC's listing agree.
    let listed = hodei(&server, &["worker", "ls", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rest_state = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == second.as_str())
        .map(|w| w["state"].clone());
    assert_eq!(rest_state, Some(serde_json::json!("draining")), "{list}");
    let grpc_list = scheduler
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let grpc_status = grpc_list
        .workers
        .iter()
        .find(|w| w.worker_id == second.as_str())
        .map(|w| w.status);
    assert_eq!(grpc_status, Some(i32::from(v1::WorkerStatus::Draining)));
    let held = server.jobs().submit(script("echo held")).await.unwrap();
    // Watching for something that must not happen: a fixed window, not a wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(job(&server, &held.id).await.state, JobState::Queued);
    assert_eq!(stored_state(&server, &second).await, WorkerState::Draining);
    assert!(
        agent_pid(dir.path(), &second).is_some(),
        "a kept worker stays"
    );

    let undrained = hodei(&server, &["worker", "undrain", second.as_str()]);
    assert!(undrained.status.success(), "{}", text(&undrained.stderr));
    let ran_held = wait_state(&server, &held.id, JobState::Succeeded).await;
    assert_eq!(ran_held.worker_id, Some(second.clone()));
    assert_eq!(stored_state(&server, &second).await, WorkerState::Idle);
    let info = scheduler
        .get_worker(v1::GetWorkerRequest {
            worker_id: second.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(info.status, i32::from(v1::WorkerStatus::Available));

    // Bad input: named, refused, nothing changed.
    let unknown = hodei(&server, &["worker", "drain", "w-nosuch"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("not found"),
        "{}",
        text(&unknown.stderr)
    );
    let bad = reqwest::Client::new()
        .post(format!("{}/api/v1/workers/{second}/drain", server.url()))
        .bearer_auth(server.token())
        .json(&serde_json::json!({ "then": "stay" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "then", "{body}");
    assert_eq!(stored_state(&server, &second).await, WorkerState::Idle);
    server.shutdown().await.unwrap();
}

/// A drain is recorded in the store, so a restarted server keeps a `--then keep` worker out
/// of matching and terminates a `--then terminate` one once the job it ran is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut keep_workers = config(dir.path(), 2);
    keep_workers.shutdown.terminate_workers = false;
    let first = start_anywhere(keep_workers.clone()).await;
    let workers = wait_for_registered_workers(&first, 2).await;
    let release = dir.path().join("release");
    let running = first
        .jobs()
        .submit(script(&format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo finished",
            release.display()
        )))
        .await
        .unwrap();
    let busy = wait_state(&first, &running.id, JobState::Running)
        .await
        .worker_id
        .unwrap();
    let kept = workers.iter().find(|id| **id != busy).unwrap().clone();
    let drained = hodei(&first, &["worker", "drain", busy.as_str()]);
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    let drained = hodei(
        &first,
        &["worker", "drain", kept.as_str(), "--then", "keep"],
    );
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    let address = first.addr();
    first.shutdown().await.unwrap();

    // The same address, so the agents come back to the new server.
    keep_workers.listen = address;
    let second = start(keep_workers).await;
    wait_for_connected(&second, &kept).await;
    wait_for_connected(&second, &busy).await;
    assert_eq!(stored_state(&second, &kept).await, WorkerState::Draining);
    assert_eq!(
        second.scheduler().get(&kept).unwrap().draining,
        Some(hodei_core::AfterDrain::Keep)
    );
    assert_eq!(
        second.scheduler().get(&busy).unwrap().draining,
        Some(hodei_core::AfterDrain::Terminate)
    );

    // A new job goes to neither: the busy worker is terminated once its job is done, and
    // the job runs on its replacement.
    let next = second.jobs().submit(script("echo next")).await.unwrap();
    std::fs::write(&release, b"").unwrap();
    let finished = wait_state(&second, &running.id, JobState::Succeeded).await;
    assert_eq!(finished.worker_id.as_ref(), Some(&busy));
    wait_for(
        "the drained busy worker to be terminated",
        LIMIT,
        || async { (stored_state(&second, &busy).await == WorkerState::Terminated).then_some(()) },
    )
    .await;
    let ran_next = wait_state(&second, &next.id, JobState::Succeeded).await;
    let ran_on = ran_next.worker_id.unwrap();
    assert_ne!(ran_on, busy, "a worker drained to terminate took a new job");
    assert_ne!(ran_on, kept, "a worker drained to keep took a new job");
    assert_eq!(stored_state(&second, &kept).await, WorkerState::Draining);
    assert!(
        agent_pid(dir.path(), &kept).is_some(),
        "a kept worker stays"
    );

    // Undrained, it takes jobs again.
    let undrained = hodei(&second, &["worker", "undrain", kept.as_str()]);
    assert!(undrained.status.success(), "{}", text(&undrained.stderr));
    assert_eq!(stored_state(&second, &kept).await, WorkerState::Idle);
    second.shutdown().await.unwrap();
}
