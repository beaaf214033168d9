//! Retention end to end, with real agents and a short `[retention]`: a finished job (with
//! its output) and a terminated worker leave the store, the API and `hodei` in the
//! background, counted in `hodei_retention_pruned_total{kind}`; an unfinished job older
//! than them stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use hodei_core::{JobId, JobSpec, JobState};
use hodei_server::Server;
use hodei_testkit::metrics::sum_samples;
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

async fn wait_state(server: &Server, id: &JobId, state: JobState) {
    wait_for(&format!("job {id} to be {state:?}"), LIMIT, || async {
        server
            .jobs()
            .get(id)
            .await
            .unwrap()
            .filter(|job| job.state == state)
            .map(|_| ())
    })
    .await;
}

async fn pruned(server: &Server, kind: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sum_samples(&text, "hodei_retention_pruned_total", &[("kind", kind)])
        .expect("the retention counter is present from start-up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_and_terminated_workers_are_pruned_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    config.retention.jobs = Duration::from_millis(300);
    config.retention.workers = Duration::from_millis(300);
    config.retention.interval = Duration::from_millis(100);
    config.retention.batch = 1;
    let server = start_anywhere(config).await;
    let workers = wait_for_registered_workers(&server, 2).await;
    assert_eq!(pruned(&server, "jobs").await, 0.0);
    assert_eq!(pruned(&server, "workers").await, 0.0);

    // Older than the finished job, but unfinished: it must outlive it.
    let release = dir.path().join("release");
    let unfinished = server
        .jobs()
        .submit(script(&format!(
            "while [ ! -e {} ]; do sleep 0.05; done",
            release.display()
        )))
        .await
        .unwrap();
    wait_state(&server, &unfinished.id, JobState::Running).await;
    let done = server.jobs().submit(script("echo gone")).await.unwrap();
    wait_state(&server, &done.id, JobState::Succeeded).await;

    wait_for("the finished job to be pruned", LIMIT, || async {
        server
            .store()
            .get_job(&done.id)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let shown = hodei(&server, &["job", "get", done.id.as_str()]);
    assert!(!shown.status.success(), "a pruned job is not found");
    assert!(
        String::from_utf8_lossy(&shown.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(pruned(&server, "jobs").await >= 1.0);
    let still = server.store().get_job(&unfinished.id).await.unwrap();
    assert_eq!(
        still.map(|job| job.state),
        Some(JobState::Running),
        "an unfinished job is never pruned"
    );

    // A terminated worker goes too (its pool replaces it); live ones stay.
    let idle = workers
        .iter()
        .find(|id| server.jobs().worker_activity(id).is_none())
        .unwrap()
        .clone();
    let terminated = hodei(&server, &["worker", "terminate", idle.as_str()]);
    assert!(terminated.status.success());
    wait_for("the terminated worker to be pruned", LIMIT, || async {
        server
            .store()
            .get_worker(&idle)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(pruned(&server, "workers").await >= 1.0);
    let busy = workers.iter().find(|id| **id != idle).unwrap();
    assert!(
        server
            .store()
            .get_worker(busy)
            .await
            .unwrap()
            .unwrap()
            .state
            .is_live(),
        "a live worker is never pruned"
    );

    std::fs::write(&release, b"").unwrap();
    wait_state(&server, &unfinished.id, JobState::Succeeded).await;
    server.shutdown().await.unwrap();
}
