//! The one owner of termination over worker management, the fake provider and the
//! in-memory store: a worker asked for by several deciders is terminated once, counted under
//! the first reason; a worker nobody recorded (hand-started) only leaves the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_adapters::worker_registration::{
    RegistrationConfig, RegistrationMetrics, WorkerRegistrationAdapter,
};
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec, WorkerState};
use hodei_modules::{
    SchedulerRegistry, Terminations, Why, WorkerManagementConfig, WorkerManagementMetrics,
    WorkerManagementService,
};
use hodei_ports::Store;
use hodei_testkit::{FakeProvider, MemoryStore, metric_value};
use prometheus_client::registry::Registry;

#[tokio::test]
async fn a_worker_asked_for_twice_is_terminated_once_and_counted_once() {
    let provider = Arc::new(FakeProvider::new());
    let store = Arc::new(MemoryStore::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let mut metrics = Registry::default();
    let registration = Arc::new(WorkerRegistrationAdapter::new(
        registry.clone(),
        RegistrationConfig::default(),
        RegistrationMetrics::new(&mut metrics),
    ));
    let management = Arc::new(WorkerManagementService::new_with_registration(
        provider.clone(),
        registration,
        store.clone(),
        WorkerManagementConfig::default(),
        WorkerManagementMetrics::new(&mut metrics),
    ));
    let terminations = Terminations::new(management.clone(), registry.clone(), &mut metrics);
    let count = |metrics: &Registry, why: &str| {
        metric_value(
            metrics,
            "hodei_workers_terminations_total",
            &[("reason", why)],
        )
        .unwrap()
    };
    assert_eq!(count(&metrics, "retired"), 0.0, "present from the start");

    let kept = management.provision_worker().await.unwrap().worker_id;
    let gone = management.provision_worker().await.unwrap().worker_id;
    let mut done = terminations.done();
    assert!(terminations.request(gone.clone(), Why::Retired));
    assert!(!terminations.request(gone.clone(), Why::ScaleIn));
    assert!(!terminations.request(gone.clone(), Why::Silent));
    assert!(terminations.is_pending(&gone));

    assert_eq!(terminations.step().await, 1);
    assert!(!terminations.is_pending(&gone));
    assert_eq!(provider.terminated(), std::slice::from_ref(&gone));
    assert_eq!(
        store.get_worker(&gone).await.unwrap().unwrap().state,
        WorkerState::Terminated
    );
    assert!(registry.get(&gone).is_none(), "unregistered");
    assert!(registry.get(&kept).is_some(), "nobody asked for the other");
    assert_eq!(count(&metrics, "retired"), 1.0);
    assert_eq!(count(&metrics, "scale_in"), 0.0);
    assert!(done.has_changed().unwrap(), "watchers hear of it");
    done.mark_unchanged();
    assert_eq!(terminations.step().await, 0, "nothing left");

    // A hand-started agent's worker: no record, so only its registration goes.
    let stranger = Worker::from_spec(
        WorkerId::new("stranger").unwrap(),
        &WorkerSpec::default(),
        ProviderKind::Local,
        std::time::SystemTime::now(),
    );
    registry.connect(stranger.clone(), "test").unwrap();
    terminations.request(stranger.id.clone(), Why::Drained);
    assert_eq!(terminations.step().await, 1);
    assert!(registry.get(&stranger.id).is_none());
    assert_eq!(count(&metrics, "drained"), 1.0);
}

struct Setup {
    provider: Arc<FakeProvider>,
    store: Arc<dyn Store>,
    management: Arc<WorkerManagementService>,
    terminations: Terminations,
    metrics: Registry,
}

fn setup_over(store: Arc<dyn Store>) -> Setup {
    let provider = Arc::new(FakeProvider::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let mut metrics = Registry::default();
    let registration = Arc::new(WorkerRegistrationAdapter::new(
        registry.clone(),
        RegistrationConfig::default(),
        RegistrationMetrics::new(&mut metrics),
    ));
    let management = Arc::new(WorkerManagementService::new_with_registration(
        provider.clone(),
        registration,
        store.clone(),
        WorkerManagementConfig::default(),
        WorkerManagementMetrics::new(&mut metrics),
    ));
    let terminations = Terminations::new(management.clone(), registry, &mut metrics);
    Setup {
        provider,
        store,
        management,
        terminations,
        metrics,
    }
}

fn setup() -> Setup {
    setup_over(Arc::new(MemoryStore::new()))
}

fn metric(metrics: &Registry, name: &str, why: &str) -> f64 {
    metric_value(metrics, name, &[("reason", why)]).unwrap()
}

fn terminated(s: &Setup, why: &str) -> f64 {
    metric(&s.metrics, "hodei_workers_terminations_total", why)
}

fn failed_attempts(s: &Setup, why: &str) -> f64 {
    metric(&s.metrics, "hodei_workers_termination_failures_total", why)
}

/// The reconciler's orphans go through the one owner: handed over once however many
/// rounds find them, stopped by it and counted under `orphan` (issue 19).
#[tokio::test]
async fn the_reconcilers_orphans_are_terminated_by_the_owner_once() {
    let s = setup();
    let orphan = WorkerId::new("orphan-1").unwrap();
    s.provider.run_stranger(&orphan);

    let report = s.terminations.reconcile().await.unwrap();
    let kinds: Vec<_> = report.applied.iter().map(|a| a.kind()).collect();
    assert_eq!(kinds, ["terminate_orphan"]);
    assert!(s.terminations.is_pending(&orphan), "handed over");
    assert_eq!(s.provider.running(), std::slice::from_ref(&orphan));
    // A second round before the owner acted asks for it again: still one termination.
    s.terminations.reconcile().await.unwrap();

    assert_eq!(s.terminations.step().await, 1);
    assert!(s.provider.running().is_empty());
    assert_eq!(s.provider.terminated(), std::slice::from_ref(&orphan));
    assert_eq!(terminated(&s, "orphan"), 1.0);
    assert_eq!(s.terminations.step().await, 0);
}

/// An orphan recorded between the reconciler's look and the owner's turn is left running.
#[tokio::test]
async fn an_orphan_recorded_meanwhile_is_left_running() {
    let s = setup();
    let orphan = WorkerId::new("late-1").unwrap();
    s.provider.run_stranger(&orphan);
    s.terminations.reconcile().await.unwrap();
    let worker = Worker::from_spec(
        orphan.clone(),
        &WorkerSpec::default(),
        ProviderKind::Local,
        std::time::SystemTime::now(),
    );
    s.store
        .insert_worker(&worker, WorkerState::Provisioning)
        .await
        .unwrap();

    s.terminations.step().await;

    assert_eq!(s.provider.running(), std::slice::from_ref(&orphan));
    assert!(!s.terminations.is_pending(&orphan));
}

/// Shutdown goes through the owner too: every live worker and whatever the provider runs
/// is stopped, each counted once (a pending one under its first reason).
#[tokio::test]
async fn terminate_all_stops_every_live_worker_and_counts_them_under_shutdown() {
    let s = setup();
    let created = s
        .management
        .create_pool(&hodei_core::PoolSpec::fixed("p", ProviderKind::Local, 3))
        .await
        .unwrap();
    let first = created.provisioned[0].worker_id.clone();
    s.terminations.request(first, Why::Retired);
    let stranger = WorkerId::new("stranger-1").unwrap();
    s.provider.run_stranger(&stranger);

    let failures = s.terminations.terminate_all().await;

    assert!(failures.is_empty(), "{failures:?}");
    assert!(s.provider.running().is_empty());
    assert_eq!(terminated(&s, "retired"), 1.0);
    assert_eq!(
        terminated(&s, "shutdown"),
        3.0,
        "two recorded, one stranger"
    );
    for p in &created.provisioned {
        assert_eq!(
            s.store
                .get_worker(&p.worker_id)
                .await
                .unwrap()
                .unwrap()
                .state,
            WorkerState::Terminated
        );
    }
}

/// A server that lost its store still stops its workers at shutdown: what the provider
/// runs is stopped there directly (issue 19).
#[tokio::test]
async fn terminate_all_stops_what_the_provider_runs_when_the_store_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        hodei_store::SqliteStore::open(&dir.path().join("hodei.db"))
            .await
            .unwrap(),
    );
    let s = setup_over(sqlite.clone());
    s.management
        .create_pool(&hodei_core::PoolSpec::fixed("p", ProviderKind::Local, 3))
        .await
        .unwrap();
    assert_eq!(s.provider.running().len(), 3);
    sqlite.close().await;

    let failures = s.terminations.terminate_all().await;

    assert!(failures.is_empty(), "{failures:?}");
    assert!(s.provider.running().is_empty());
}

/// A termination that keeps failing is retried with a growing, jittered delay (not every
/// 500 ms), each failure counted, and is not given up: once the provider recovers, the
/// worker is terminated. Time is paused, so the delays pass at once.
#[tokio::test(start_paused = true)]
async fn a_failing_termination_backs_off_and_is_never_given_up() {
    let s = setup();
    let id = s.management.provision_worker().await.unwrap().worker_id;
    s.provider.fail_next_terminations(12);
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(s.terminations.clone().run(cancel.clone()));
    s.terminations.request(id.clone(), Why::Silent);

    tokio::time::sleep(Duration::from_secs(10)).await;
    // Delays of at least 0.25, 0.5, 1, 2 and 4 s: at most 6 attempts in 10 s (retrying
    // every 500 ms made 20).
    let early = s.provider.terminate_attempts();
    assert!((2..=6).contains(&early), "{early} attempts in 10 s");
    assert_eq!(failed_attempts(&s, "silent"), early as f64);
    assert!(s.terminations.is_pending(&id));

    // Twelve failures take at most 0.5+1+2+4+8+16+6*30 s; the thirteenth attempt works.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!s.terminations.is_pending(&id), "not forgotten");
    assert_eq!(s.provider.terminate_attempts(), 13);
    assert_eq!(failed_attempts(&s, "silent"), 12.0);
    assert_eq!(terminated(&s, "silent"), 1.0);
    assert!(s.provider.running().is_empty());
    cancel.cancel();
    run.await.unwrap();
}

#[test]
fn the_retry_delay_doubles_from_half_a_second_to_the_cap() {
    use hodei_modules::terminations::{RETRY_CAP, retry_delay};
    let delays: Vec<_> = (1..=5).map(retry_delay).collect();
    assert_eq!(
        delays,
        [500, 1_000, 2_000, 4_000, 8_000].map(Duration::from_millis)
    );
    assert_eq!(retry_delay(7), RETRY_CAP);
    assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
}
