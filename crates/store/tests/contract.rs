//! The SQLite store against the store contract, across restarts and under concurrent writers.

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::{
    Command, Job, JobId, JobSpec, JobState, PoolSpec, ProviderKind, Worker, WorkerId, WorkerSpec,
    WorkerState,
};
use hodei_ports::store::{Error, JobFilter, LogChunk, LogStream, Store, WorkerFilter};
use hodei_store::SqliteStore;
use hodei_testkit::store_contract;

fn worker(id: &str) -> Worker {
    let spec = WorkerSpec {
        pool: Some("default".to_owned()),
        labels: [("os".to_owned(), "linux".to_owned())].into(),
        ..WorkerSpec::default()
    };
    Worker::from_spec(
        WorkerId::new(id).unwrap(),
        &spec,
        ProviderKind::Local,
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_001),
    )
}

fn job(id: &str) -> Job {
    Job::new(
        JobId::new(id).unwrap(),
        JobSpec::new(Command::Script("make test".to_owned())),
        0,
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
    )
    .unwrap()
}

fn log(job: &Job, sequence: u64) -> LogChunk {
    LogChunk {
        job_id: job.id.clone(),
        attempt: 1,
        sequence,
        stream: LogStream::Stdout,
        data: format!("line {sequence}\n").into_bytes(),
    }
}

#[tokio::test]
async fn sqlite_file_store_passes_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hodei.db"))
        .await
        .unwrap();
    store_contract(&store).await;
}

#[tokio::test]
async fn sqlite_memory_store_passes_the_store_contract() {
    store_contract(&SqliteStore::in_memory().await.unwrap()).await;
}

#[tokio::test]
async fn the_contract_runs_on_several_fresh_files() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..2 {
        let store = SqliteStore::open(&dir.path().join(format!("hodei-{n}.db")))
            .await
            .unwrap();
        store_contract(&store).await;
    }
}

#[tokio::test]
async fn data_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/hodei.db");
    let pool = PoolSpec::fixed("default", ProviderKind::Local, 3);

    let store = SqliteStore::open(&path).await.unwrap();
    for id in ["w-1", "w-2"] {
        store
            .insert_worker(&worker(id), WorkerState::Provisioning)
            .await
            .unwrap();
    }
    store
        .transition_worker(&WorkerId::new("w-1").unwrap(), WorkerState::Registering)
        .await
        .unwrap();
    store
        .set_registered(&WorkerId::new("w-1").unwrap(), true)
        .await
        .unwrap();
    store
        .transition_worker(&WorkerId::new("w-2").unwrap(), WorkerState::Terminated)
        .await
        .unwrap();
    store.put_pool(&pool).await.unwrap();
    let before = store.list_workers(&WorkerFilter::default()).await.unwrap();
    store.close().await;
    assert!(matches!(
        store.list_pools().await,
        Err(Error::Unavailable(_))
    ));

    let reopened = SqliteStore::open(&path).await.unwrap();
    let after = reopened
        .list_workers(&WorkerFilter::default())
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].state, WorkerState::Registering);
    assert!(after[0].registered);
    assert_eq!(after[0].worker, worker("w-1"));
    assert_eq!(after[1].state, WorkerState::Terminated);
    assert_eq!(reopened.list_pools().await.unwrap(), [pool]);
    // Reopening runs the migrations again without harm, and the store still writes.
    reopened
        .transition_worker(&WorkerId::new("w-1").unwrap(), WorkerState::Idle)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transitions_of_one_worker_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("hodei.db"))
            .await
            .unwrap(),
    );
    let id = WorkerId::new("contended").unwrap();
    store
        .insert_worker(&worker(id.as_str()), WorkerState::Idle)
        .await
        .unwrap();

    let started = SystemTime::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            let id = id.clone();
            tokio::spawn(async move { store.transition_worker(&id, WorkerState::Busy).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(record) => {
                wins += 1;
                assert_eq!(record.state, WorkerState::Busy);
                assert!(record.updated_at >= started - Duration::from_millis(1));
            }
            Err(Error::IllegalTransition(err)) => {
                assert_eq!((err.from, err.to), (WorkerState::Busy, WorkerState::Busy));
            }
            Err(err) => panic!("unexpected error: {err}"),
        }
    }
    assert_eq!(wins, 1);
    let record = store.get_worker(&id).await.unwrap().unwrap();
    assert_eq!(record.state, WorkerState::Busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_walks_through_the_lifecycle_never_skip_a_state() {
    // Many tasks push one worker round idle -> busy -> cleaning -> idle, each taking whichever
    // step is legal next. Every success is one real step, so the steps taken add up exactly.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("hodei.db"))
            .await
            .unwrap(),
    );
    let id = WorkerId::new("cycling").unwrap();
    store
        .insert_worker(&worker(id.as_str()), WorkerState::Idle)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let id = id.clone();
            tokio::spawn(async move {
                let mut steps = 0;
                for _ in 0..15 {
                    for to in [WorkerState::Busy, WorkerState::Cleaning, WorkerState::Idle] {
                        match store.transition_worker(&id, to).await {
                            Ok(_) => steps += 1,
                            Err(Error::IllegalTransition(_)) => {}
                            Err(err) => panic!("unexpected error: {err}"),
                        }
                    }
                }
                steps
            })
        })
        .collect();
    let mut steps = 0;
    for task in tasks {
        steps += task.await.unwrap();
    }
    let state = store.get_worker(&id).await.unwrap().unwrap().state;
    let expected = match steps % 3 {
        0 => WorkerState::Idle,
        1 => WorkerState::Busy,
        _ => WorkerState::Cleaning,
    };
    assert!(steps > 0);
    assert_eq!(state, expected, "{steps} steps");
}

#[tokio::test]
async fn jobs_and_their_output_survive_reopening_and_sequences_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.db");

    let store = SqliteStore::open(&path).await.unwrap();
    let mut before = Vec::new();
    for n in 0..3 {
        before.push(store.insert_job(&job(&format!("j-{n}"))).await.unwrap());
    }
    let mut running = before[1].clone();
    running.state = JobState::Assigned;
    running.attempts = 1;
    running.worker_id = Some(WorkerId::new("w-1").unwrap());
    store.update_job(&running, JobState::Queued).await.unwrap();
    running.state = JobState::Running;
    store
        .update_job(&running, JobState::Assigned)
        .await
        .unwrap();
    before[1] = running.clone();
    let logs: Vec<LogChunk> = (0..5).map(|n| log(&running, n)).collect();
    store.append_logs(&logs).await.unwrap();
    let newest_before = before.iter().map(|job| job.sequence).max().unwrap();
    store.close().await;

    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        reopened.list_jobs(&JobFilter::default()).await.unwrap(),
        before,
        "every job comes back as it was, oldest first"
    );
    assert_eq!(reopened.read_logs(&running.id, 0, 100).await.unwrap(), logs);
    // A reconnecting agent re-sends what it sent before the restart: still stored once.
    reopened.append_logs(&logs[3..]).await.unwrap();
    assert_eq!(
        reopened.read_logs(&running.id, 0, 100).await.unwrap().len(),
        5
    );

    let after = reopened.insert_job(&job("j-after")).await.unwrap();
    assert!(
        after.sequence > newest_before,
        "sequence {} after reopening must exceed {newest_before}",
        after.sequence
    );
    // The compare-and-set still holds against what the first process wrote.
    let mut stale = before[1].clone();
    stale.state = JobState::Succeeded;
    match reopened.update_job(&stale, JobState::Assigned).await {
        Err(Error::JobStateConflict { actual, .. }) => assert_eq!(actual, JobState::Running),
        other => panic!("want JobStateConflict, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_job_updates_from_many_tasks_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("hodei.db"))
            .await
            .unwrap(),
    );
    for round in 0..5 {
        let queued = store
            .insert_job(&job(&format!("contended-{round}")))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|n| {
                let store = Arc::clone(&store);
                let mut assigned = queued.clone();
                assigned.state = JobState::Assigned;
                assigned.attempts = 1;
                assigned.worker_id = Some(WorkerId::new(format!("w-{n}")).unwrap());
                tokio::spawn(async move {
                    let result = store.update_job(&assigned, JobState::Queued).await;
                    (assigned, result)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (assigned, Ok(())) => winners.push(assigned),
                (_, Err(Error::JobStateConflict { actual, .. })) => {
                    assert_eq!(actual, JobState::Assigned)
                }
                (_, Err(err)) => panic!("unexpected error: {err}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        assert_eq!(
            store.get_job(&queued.id).await.unwrap().unwrap(),
            winners[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_log_appends_and_inserts_all_land() {
    // Writers on every connection at once: appends take the write lock up front, so none
    // fails with a busy error, and every chunk is stored once.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("hodei.db"))
            .await
            .unwrap(),
    );
    let target = store.insert_job(&job("logged")).await.unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|writer| {
            let store = Arc::clone(&store);
            let target = target.clone();
            tokio::spawn(async move {
                for batch in 0..5u64 {
                    let first = (writer * 5 + batch) * 10;
                    let chunks: Vec<LogChunk> =
                        (first..first + 10).map(|n| log(&target, n)).collect();
                    store.append_logs(&chunks).await.unwrap();
                    store
                        .insert_job(&job(&format!("other-{writer}-{batch}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let logs = store.read_logs(&target.id, 0, usize::MAX).await.unwrap();
    assert_eq!(
        logs.iter().map(|chunk| chunk.sequence).collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>()
    );
    assert_eq!(
        store.list_jobs(&JobFilter::default()).await.unwrap().len(),
        41
    );
}

mod postgres {
    //! The PostgreSQL store against the same contract and races, each test in a fresh
    //! database of the cluster `scripts/test` starts.

    use super::*;
    use hodei_store::PostgresStore;
    use hodei_testkit::postgres::scratch_database;

    async fn fresh(test: &str) -> Option<(String, PostgresStore)> {
        let url = scratch_database(test).await?;
        let store = PostgresStore::connect(&url).await.unwrap();
        Some((url, store))
    }

    #[tokio::test]
    async fn postgres_store_passes_the_store_contract() {
        let Some((_, store)) = fresh("postgres_store_passes_the_store_contract").await else {
            return;
        };
        store_contract(&store).await;
    }

    #[tokio::test]
    async fn postgres_data_survives_reconnecting_and_migrations_run_once() {
        let Some((url, store)) = fresh("postgres_data_survives_reconnecting").await else {
            return;
        };
        let pool = PoolSpec::fixed("default", ProviderKind::Local, 3);
        store
            .insert_worker(&worker("w-1"), WorkerState::Provisioning)
            .await
            .unwrap();
        store.put_pool(&pool).await.unwrap();
        let first = store.insert_job(&job("j-1")).await.unwrap();
        store.append_logs(&[log(&first, 0)]).await.unwrap();
        store.close().await;
        assert!(matches!(
            store.list_pools().await,
            Err(Error::Unavailable(_))
        ));

        let reopened = PostgresStore::connect(&url).await.unwrap();
        assert_eq!(reopened.list_pools().await.unwrap(), [pool]);
        assert_eq!(
            reopened
                .get_worker(&WorkerId::new("w-1").unwrap())
                .await
                .unwrap()
                .unwrap()
                .worker,
            worker("w-1")
        );
        assert_eq!(
            reopened.read_logs(&first.id, 0, 10).await.unwrap(),
            [log(&first, 0)]
        );
        let second = reopened.insert_job(&job("j-2")).await.unwrap();
        assert!(second.sequence > first.sequence);
    }

    fn lease(holder: &str, epoch: u64, expires_ms: u64) -> hodei_core::lease::Lease {
        hodei_core::lease::Lease {
            holder: holder.to_owned(),
            holder_url: format!("http://{holder}.example:50051"),
            epoch,
            expires_ms,
        }
    }

    #[tokio::test]
    async fn postgres_members_heartbeat_on_the_databases_clock_and_are_forgotten() {
        let Some((_, store)) = fresh("postgres_members").await else {
            return;
        };
        let (members, first) = store
            .heartbeat_member("a", "http://a:1", 60_000)
            .await
            .unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(
            (members[0].id.as_str(), members[0].url.as_str()),
            ("a", "http://a:1")
        );
        assert_eq!(members[0].seen_ms, first);
        // Another member, and a again at a new URL: one row each, in id order.
        store
            .heartbeat_member("b", "http://b:1", 60_000)
            .await
            .unwrap();
        let (members, now) = store
            .heartbeat_member("a", "http://a:2", 60_000)
            .await
            .unwrap();
        let listed: Vec<(&str, &str)> = members
            .iter()
            .map(|m| (m.id.as_str(), m.url.as_str()))
            .collect();
        assert_eq!(listed, [("a", "http://a:2"), ("b", "http://b:1")]);
        assert!(now >= first);
        // Forgetting everything not seen this very moment leaves the one that heartbeats.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (members, _) = store.heartbeat_member("c", "http://c:1", 1).await.unwrap();
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["c"]);
    }

    #[tokio::test]
    async fn postgres_leader_lease_is_a_compare_and_set_on_the_databases_clock() {
        let Some((_, store)) = fresh("postgres_leader_lease_cas").await else {
            return;
        };
        let (none, now) = store.read_lease("leader").await.unwrap();
        assert_eq!(none, None);
        let wall = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        // Same machine: the database's clock is this one's, give or take a minute.
        assert!(now.abs_diff(wall) < 60_000, "db {now} vs local {wall}");

        let a1 = lease("a", 1, now + 5_000);
        assert!(store.write_lease("leader", None, &a1).await.unwrap());
        // A second replica that also saw no row loses.
        assert!(
            !store
                .write_lease("leader", None, &lease("b", 1, now + 5_000))
                .await
                .unwrap()
        );
        assert_eq!(
            store.read_lease("leader").await.unwrap().0,
            Some(a1.clone())
        );
        // Renewal against what was read wins once; a write against the old row loses.
        let a1_renewed = lease("a", 1, now + 6_000);
        assert!(
            store
                .write_lease("leader", Some(&a1), &a1_renewed)
                .await
                .unwrap()
        );
        assert!(
            !store
                .write_lease("leader", Some(&a1), &lease("b", 2, now + 9_000))
                .await
                .unwrap()
        );
        // Leases are per name.
        assert_eq!(store.read_lease("other").await.unwrap().0, None);
    }

    #[tokio::test]
    async fn postgres_a_stale_epoch_cannot_write_jobs() {
        let Some((_, store)) = fresh("postgres_stale_epoch_fenced").await else {
            return;
        };
        let (_, now) = store.read_lease("leader").await.unwrap();
        let a = lease("a", 1, now + 5_000);
        assert!(store.write_lease("leader", None, &a).await.unwrap());
        let old_leader = store.fenced("leader", 1);
        let queued = old_leader.insert_job(&job("j-1")).await.unwrap();
        old_leader.insert_jobs(&[job("j-2")]).await.unwrap()[0]
            .as_ref()
            .unwrap();

        // The old leader pauses; its lease runs out and b takes it with epoch 2.
        let b = lease("b", 2, now + 10_000);
        assert!(store.write_lease("leader", Some(&a), &b).await.unwrap());

        let mut assigned = queued.clone();
        assigned.state = JobState::Assigned;
        assigned.worker_id = Some(WorkerId::new("w-old").unwrap());
        let fenced = |result: Result<_, Error>| {
            assert!(
                matches!(
                    result,
                    Err(Error::Fenced {
                        ours: 1,
                        current: 2
                    })
                ),
                "{result:?}"
            );
        };
        fenced(old_leader.update_job(&assigned, JobState::Queued).await);
        fenced(
            old_leader
                .update_jobs(&[(assigned.clone(), JobState::Queued)])
                .await
                .map(|_| ()),
        );
        fenced(old_leader.insert_job(&job("j-3")).await.map(|_| ()));
        fenced(old_leader.insert_jobs(&[job("j-4")]).await.map(|_| ()));
        // Nothing of it reached the store.
        let stored = store.get_job(&queued.id).await.unwrap().unwrap();
        assert_eq!(stored.state, JobState::Queued);
        assert_eq!(stored.worker_id, None);
        assert_eq!(
            store.get_job(&JobId::new("j-3").unwrap()).await.unwrap(),
            None
        );
        assert_eq!(
            store.get_job(&JobId::new("j-4").unwrap()).await.unwrap(),
            None
        );

        // The new leader writes with its epoch.
        let new_leader = store.fenced("leader", 2);
        assigned.worker_id = Some(WorkerId::new("w-new").unwrap());
        new_leader
            .update_job(&assigned, JobState::Queued)
            .await
            .unwrap();
        let stored = store.get_job(&queued.id).await.unwrap().unwrap();
        assert_eq!(stored.worker_id, Some(WorkerId::new("w-new").unwrap()));
        // A fence with no lease row at all (a store never led) refuses too.
        fenced_without_lease(&store).await;
    }

    async fn fenced_without_lease(store: &PostgresStore) {
        let nobody = store.fenced("no-such-lease", 1);
        assert!(matches!(
            nobody.insert_job(&job("j-9")).await,
            Err(Error::Fenced {
                ours: 1,
                current: 0
            })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_concurrent_job_updates_from_many_tasks_have_exactly_one_winner() {
        // Under READ COMMITTED a loser waits for the winner's commit, then finds the state
        // moved: exactly one of many racing compare-and-sets wins, on separate connections.
        let Some((_, store)) = fresh("postgres_concurrent_job_updates").await else {
            return;
        };
        let store = Arc::new(store);
        for round in 0..5 {
            let queued = store
                .insert_job(&job(&format!("contended-{round}")))
                .await
                .unwrap();
            let tasks: Vec<_> = (0..12)
                .map(|n| {
                    let store = Arc::clone(&store);
                    let mut assigned = queued.clone();
                    assigned.state = JobState::Assigned;
                    assigned.attempts = 1;
                    assigned.worker_id = Some(WorkerId::new(format!("w-{n}")).unwrap());
                    tokio::spawn(async move {
                        let result = store.update_job(&assigned, JobState::Queued).await;
                        (assigned, result)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for task in tasks {
                match task.await.unwrap() {
                    (assigned, Ok(())) => winners.push(assigned),
                    (_, Err(Error::JobStateConflict { actual, .. })) => {
                        assert_eq!(actual, JobState::Assigned)
                    }
                    (_, Err(err)) => panic!("unexpected error: {err}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}");
            assert_eq!(
                store.get_job(&queued.id).await.unwrap().unwrap(),
                winners[0]
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_concurrent_walks_through_the_lifecycle_never_skip_a_state() {
        let Some((_, store)) = fresh("postgres_concurrent_walks").await else {
            return;
        };
        let store = Arc::new(store);
        let id = WorkerId::new("cycling").unwrap();
        store
            .insert_worker(&worker(id.as_str()), WorkerState::Idle)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                let id = id.clone();
                tokio::spawn(async move {
                    let mut steps = 0;
                    for _ in 0..10 {
                        for to in [WorkerState::Busy, WorkerState::Cleaning, WorkerState::Idle] {
                            match store.transition_worker(&id, to).await {
                                Ok(_) => steps += 1,
                                Err(Error::IllegalTransition(_)) => {}
                                Err(err) => panic!("unexpected error: {err}"),
                            }
                        }
                    }
                    steps
                })
            })
            .collect();
        let mut steps = 0;
        for task in tasks {
            steps += task.await.unwrap();
        }
        let state = store.get_worker(&id).await.unwrap().unwrap().state;
        let expected = match steps % 3 {
            0 => WorkerState::Idle,
            1 => WorkerState::Busy,
            _ => WorkerState::Cleaning,
        };
        assert!(steps > 0);
        assert_eq!(state, expected, "{steps} steps");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_concurrent_batches_assign_each_job_exactly_once() {
        // Batched compare-and-sets racing on the same jobs from separate connections: each
        // job is assigned by exactly one batch, and every loser is told who won.
        let Some((_, store)) = fresh("postgres_concurrent_batches").await else {
            return;
        };
        let store = Arc::new(store);
        let mut queued = Vec::new();
        for n in 0..10 {
            queued.push(
                store
                    .insert_job(&job(&format!("batched-{n}")))
                    .await
                    .unwrap(),
            );
        }
        let tasks: Vec<_> = (0..8)
            .map(|writer| {
                let store = Arc::clone(&store);
                let updates: Vec<(Job, JobState)> = queued
                    .iter()
                    .map(|job| {
                        let mut assigned = job.clone();
                        assigned.state = JobState::Assigned;
                        assigned.attempts = 1;
                        assigned.worker_id = Some(WorkerId::new(format!("w-{writer}")).unwrap());
                        (assigned, JobState::Queued)
                    })
                    .collect();
                tokio::spawn(async move {
                    loop {
                        match store.update_jobs(&updates).await {
                            Ok(results) => return (updates, results),
                            // A deadlock between two batches is retryable by design.
                            Err(error) if error.is_retryable() => continue,
                            Err(error) => panic!("update_jobs failed: {error}"),
                        }
                    }
                })
            })
            .collect();
        let mut winners = vec![Vec::new(); queued.len()];
        for task in tasks {
            let (updates, results) = task.await.unwrap();
            for (n, ((assigned, _), result)) in updates.into_iter().zip(results).enumerate() {
                match result {
                    Ok(()) => winners[n].push(assigned),
                    Err(Error::JobStateConflict { actual, .. }) => {
                        assert_eq!(actual, JobState::Assigned)
                    }
                    Err(err) => panic!("unexpected error: {err}"),
                }
            }
        }
        for (job, won) in queued.iter().zip(&winners) {
            assert_eq!(won.len(), 1, "{}: {won:?}", job.id);
            assert_eq!(store.get_job(&job.id).await.unwrap().unwrap(), won[0]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_concurrent_usage_and_pool_creates_add_up_once() {
        // Pool-manager passes adding to the same hourly rows from separate connections (each
        // batch naming one row twice and two rows in opposite orders) all land; concurrent
        // inserts of one attempt charge it once; of concurrent creates of one pool one wins.
        use hodei_core::cost::{AttemptUsage, HOUR_MS, PoolUsage};
        let Some((_, store)) = fresh("postgres_concurrent_usage").await else {
            return;
        };
        let store = Arc::new(store);
        let hour = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;
        let row = |pool: &str, hour_start_ms: u64| PoolUsage {
            pool: pool.into(),
            hour_start_ms,
            worker_seconds: 2.0,
            busy_seconds: 1.0,
            cost: 0.5,
            at_max_waiting_seconds: 0.25,
        };
        let attempt = AttemptUsage {
            job_id: "j-usage".into(),
            attempt: 1,
            tenant: "t".into(),
            queue: "default".into(),
            pool: "p-a".into(),
            worker_id: "w-1".into(),
            ended_at_ms: hour + 1,
            worker_seconds: 30.0,
            cost: 1.0,
        };
        let tasks: Vec<_> = (0..8)
            .map(|writer| {
                let store = Arc::clone(&store);
                let mut batch = vec![row("p-a", hour), row("p-a", hour + 10), row("p-b", hour)];
                if writer % 2 == 1 {
                    batch.reverse();
                }
                let attempt = attempt.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        store.add_pool_usage(&batch).await.unwrap();
                    }
                    store
                        .record_attempt_usage(&[attempt.clone(), attempt])
                        .await
                        .unwrap();
                    store
                        .insert_pool(&PoolSpec::fixed("raced", ProviderKind::Local, writer))
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => created += 1,
                Err(Error::PoolExists(name)) => assert_eq!(name, "raced"),
                Err(err) => panic!("unexpected error: {err}"),
            }
        }
        assert_eq!(created, 1, "exactly one create of a pool name wins");
        let usage = store.pool_usage(0).await.unwrap();
        let totals: Vec<_> = usage
            .iter()
            .map(|u| (u.pool.as_str(), u.hour_start_ms, u.worker_seconds, u.cost))
            .collect();
        // 8 writers x 5 passes: p-a twice per pass, p-b once.
        assert_eq!(
            totals,
            [("p-a", hour, 160.0, 40.0), ("p-b", hour, 80.0, 20.0)]
        );
        let totals = store.attempt_totals(0).await.unwrap();
        assert_eq!(totals.len(), 1);
        assert_eq!((totals[0].attempts, totals[0].worker_seconds), (1, 30.0));
    }

    #[tokio::test]
    async fn postgres_keys_are_listed_in_byte_order_whatever_the_locale() {
        // COLLATE "C" on the key columns: "B" < "a" < "b", as in SQLite. (The test cluster's
        // locale is C, so here this pins the order; on a cluster with a linguistic default
        // collation, "a" < "B" < "b", the column's COLLATE is what keeps it.)
        use hodei_core::TenantName;
        use hodei_core::tenancy::Tenant;
        let Some((_, store)) = fresh("postgres_keys_in_byte_order").await else {
            return;
        };
        for name in ["b", "B", "a"] {
            store
                .put_tenant(&Tenant::new(TenantName::new(name).unwrap()))
                .await
                .unwrap();
        }
        let names: Vec<String> = store
            .list_tenants()
            .await
            .unwrap()
            .into_iter()
            .map(|tenant| tenant.name.as_str().to_owned())
            .collect();
        assert_eq!(names, ["B", "a", "b"]);
    }

    #[tokio::test]
    async fn a_bad_url_is_an_error_naming_the_setting() {
        match PostgresStore::connect("postgres://host:notaport/db").await {
            Err(Error::Unavailable(message)) => {
                assert!(message.contains("[store] url"), "{message}")
            }
            other => panic!("want Unavailable naming [store] url, got {other:?}"),
        }
    }
}
