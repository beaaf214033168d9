//! The server on PostgreSQL (`[store] url`), end to end with real `hodei agent` processes:
//! jobs run and their output is kept, and a server started afresh on the same database (with
//! an empty data directory) finds every job, worker and pool there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use hodei_core::{JobSpec, JobState};
use hodei_ports::{JobFilter, WorkerFilter};
use hodei_testkit::postgres::scratch_database;
use hodei_testkit::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_a_postgres_store_and_a_fresh_server_finds_them_there() {
    let Some(url) = scratch_database("jobs_run_on_a_postgres_store").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first_config = config(&dir.path().join("first"), 3);
    first_config.store.url = Some(url.clone());
    let server = start_anywhere(first_config).await;
    let workers = wait_for_registered_workers(&server, 3).await;
    for id in &workers {
        wait_for_connected(&server, id).await;
    }
    let mut ids = Vec::new();
    for i in 0..60 {
        let spec = JobSpec::new(hodei_core::Command::Script(format!("echo pg-{i}")));
        ids.push(server.jobs().submit(spec).await.unwrap().id);
    }
    for (i, id) in ids.iter().enumerate() {
        let job = wait_for(
            &format!("job {i} to end"),
            Duration::from_secs(120),
            || async {
                server
                    .jobs()
                    .get(id)
                    .await
                    .unwrap()
                    .filter(|job| job.state.is_terminal())
            },
        )
        .await;
        assert_eq!(job.state, JobState::Succeeded, "job {i}: {:?}", job.reason);
        assert_eq!(job.attempts, 1);
        let output: Vec<u8> = server
            .jobs()
            .logs(id, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|chunk| chunk.data)
            .collect();
        assert_eq!(String::from_utf8(output).unwrap(), format!("pg-{i}\n"));
    }
    let before = server
        .store()
        .list_jobs(&JobFilter::default())
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    // Nothing of the first server's state is in the second's data directory: it all comes
    // from PostgreSQL.
    let mut second_config = config(&dir.path().join("second"), 0);
    second_config.pools.clear();
    second_config.store.url = Some(url);
    let second = start_anywhere(second_config).await;
    let after = second
        .store()
        .list_jobs(&JobFilter::default())
        .await
        .unwrap();
    assert_eq!(after, before, "every job, as the first server left it");
    assert_eq!(after.len(), 60);
    let pools = second.store().list_pools().await.unwrap();
    assert!(pools.iter().any(|pool| pool.name == "default"), "{pools:?}");
    let known = second
        .store()
        .list_workers(&WorkerFilter::default())
        .await
        .unwrap();
    for id in &workers {
        assert!(known.iter().any(|record| &record.worker.id == id), "{id}");
    }
    second.shutdown().await.unwrap();
}
