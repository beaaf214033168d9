//! The SQLite store against the store contract, across restarts and under concurrent writers.

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::{PoolSpec, ProviderKind, Worker, WorkerId, WorkerSpec, WorkerState};
use hodei_ports::store::{Error, Store, WorkerFilter};
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
    let pool = PoolSpec {
        name: "default".to_owned(),
        provider: ProviderKind::Local,
        size: 3,
        template: WorkerSpec::default(),
    };

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
