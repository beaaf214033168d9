//! The one owner of termination over worker management, the fake provider and the
//! in-memory store: a worker asked for by several deciders is terminated once, counted under
//! the first reason; a worker nobody recorded (hand-started) only leaves the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

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
