//! Retention over the in-memory store: old finished jobs (with their output) and old
//! terminated workers go in batches, counted in `hodei_retention_pruned_total{kind}`;
//! recent ones, unfinished jobs and live workers stay; a zero retention keeps forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::retention::{Pruned, RetentionPolicy};
use hodei_core::{
    Command, Job, JobId, JobSpec, JobState, ProviderKind, Worker, WorkerId, WorkerSpec, WorkerState,
};
use hodei_modules::{Retention, RetentionMetrics};
use hodei_ports::{LogChunk, LogStream, Store};
use hodei_testkit::{MemoryStore, metric_value};
use prometheus_client::registry::Registry;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn job(store: &MemoryStore, name: &str, end: Option<JobState>) -> JobId {
    let spec = JobSpec::new(Command::Script("true".into()));
    let job = Job::new(JobId::new(name).unwrap(), spec, 0, SystemTime::now()).unwrap();
    let mut job = store.insert_job(&job).await.unwrap();
    if let Some(end) = end {
        job.state = end;
        store.update_job(&job, JobState::Queued).await.unwrap();
    }
    store
        .append_logs(&[LogChunk {
            job_id: job.id.clone(),
            attempt: 1,
            sequence: 0,
            stream: LogStream::Output,
            data: b"out\n".to_vec(),
        }])
        .await
        .unwrap();
    job.id
}

async fn worker(store: &MemoryStore, name: &str, terminated: bool) -> WorkerId {
    let id = WorkerId::new(name).unwrap();
    let worker = Worker::from_spec(
        id.clone(),
        &WorkerSpec::default(),
        ProviderKind::Local,
        SystemTime::now(),
    );
    store
        .insert_worker(&worker, WorkerState::Idle)
        .await
        .unwrap();
    if terminated {
        store
            .transition_worker(&id, WorkerState::Terminated)
            .await
            .unwrap();
    }
    id
}

fn pruned(metrics: &Registry, kind: &str) -> f64 {
    metric_value(metrics, "hodei_retention_pruned_total", &[("kind", kind)]).unwrap()
}

#[tokio::test]
async fn old_finished_jobs_and_terminated_workers_go_in_batches_and_are_counted() {
    let store = Arc::new(MemoryStore::new());
    let mut finished = Vec::new();
    for (n, end) in [
        JobState::Cancelled,
        JobState::Cancelled,
        JobState::DeadLettered,
        JobState::Cancelled,
        JobState::DeadLettered,
    ]
    .into_iter()
    .enumerate()
    {
        finished.push(job(&store, &format!("done-{n}"), Some(end)).await);
    }
    let queued = job(&store, "waiting", None).await;
    let gone = worker(&store, "gone", true).await;
    let live = worker(&store, "live", false).await;

    let mut metrics = Registry::default();
    let policy = RetentionPolicy {
        jobs: Duration::from_secs(3600),
        workers: Duration::from_secs(60),
        interval: Duration::from_secs(1),
        batch: 2,
    };
    let retention = Retention::new(store.clone(), policy, RetentionMetrics::new(&mut metrics));
    // Present at zero before anything is pruned.
    assert_eq!(pruned(&metrics, "jobs"), 0.0);
    assert_eq!(pruned(&metrics, "workers"), 0.0);

    // Within their retention: everything stays.
    assert_eq!(retention.prune(Pruned::Jobs, now_ms()).await.unwrap(), 0);
    assert_eq!(retention.prune(Pruned::Workers, now_ms()).await.unwrap(), 0);
    assert_eq!(store.list_jobs(&Default::default()).await.unwrap().len(), 6);

    // Past it (the pass runs two hours on): all five finished jobs in three batches of at
    // most two, their output with them; the queued job stays.
    let later = now_ms() + 2 * 3600 * 1000;
    assert_eq!(retention.prune(Pruned::Jobs, later).await.unwrap(), 5);
    for id in &finished {
        assert_eq!(store.get_job(id).await.unwrap(), None);
        assert!(store.read_logs(id, 0, 10).await.is_err());
    }
    assert!(store.get_job(&queued).await.unwrap().is_some());
    assert_eq!(store.read_logs(&queued, 0, 10).await.unwrap().len(), 1);
    assert_eq!(pruned(&metrics, "jobs"), 5.0);

    assert_eq!(retention.prune(Pruned::Workers, later).await.unwrap(), 1);
    assert_eq!(store.get_worker(&gone).await.unwrap(), None);
    assert!(store.get_worker(&live).await.unwrap().is_some());
    assert_eq!(pruned(&metrics, "workers"), 1.0);
}

#[tokio::test]
async fn a_zero_retention_keeps_forever() {
    let store = Arc::new(MemoryStore::new());
    let done = job(&store, "done", Some(JobState::Cancelled)).await;
    let gone = worker(&store, "gone", true).await;
    let mut metrics = Registry::default();
    let policy = RetentionPolicy {
        jobs: Duration::ZERO,
        workers: Duration::ZERO,
        ..RetentionPolicy::default()
    };
    let retention = Retention::new(store.clone(), policy, RetentionMetrics::new(&mut metrics));
    let much_later = now_ms() + 10 * 365 * 24 * 3600 * 1000;
    assert_eq!(retention.prune(Pruned::Jobs, much_later).await.unwrap(), 0);
    assert_eq!(
        retention.prune(Pruned::Workers, much_later).await.unwrap(),
        0
    );
    assert!(store.get_job(&done).await.unwrap().is_some());
    assert!(store.get_worker(&gone).await.unwrap().is_some());
}
