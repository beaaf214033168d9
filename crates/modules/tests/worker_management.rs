//! US-08.1.3: worker management wired to the real registration adapter, over the fake
//! provider, fake scheduler and in-memory store. Time is paused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_adapters::worker_registration::{
    RegistrationConfig, RegistrationMetrics, WorkerRegistrationAdapter,
};
use hodei_core::{PoolSpec, ProviderKind, WorkerId, WorkerSpec, WorkerState, WorkerType};
use hodei_modules::worker_management::ReconcileReport;
use hodei_modules::{
    WorkerManagementConfig, WorkerManagementError, WorkerManagementMetrics,
    WorkerManagementService, WorkerStatus,
};
use hodei_ports::{ProviderError, SchedulerError, Store, WorkerProvider};
use hodei_testkit::{FakeProvider, FakeScheduler, MemoryStore, metric_value};
use prometheus_client::registry::Registry;

struct Setup {
    provider: Arc<FakeProvider>,
    scheduler: Arc<FakeScheduler>,
    store: Arc<MemoryStore>,
    service: WorkerManagementService,
    registry: Registry,
}

fn setup_with(config: WorkerManagementConfig, with_registration: bool) -> Setup {
    setup_full(config, RegistrationConfig::default(), with_registration)
}

fn setup_full(
    config: WorkerManagementConfig,
    registration: RegistrationConfig,
    with_registration: bool,
) -> Setup {
    let provider = Arc::new(FakeProvider::new());
    let scheduler = Arc::new(FakeScheduler::new());
    let store = Arc::new(MemoryStore::new());
    let mut registry = Registry::default();
    let registration = Arc::new(WorkerRegistrationAdapter::new(
        scheduler.clone(),
        registration,
        RegistrationMetrics::new(&mut registry),
    ));
    let metrics = WorkerManagementMetrics::new(&mut registry);
    let service = if with_registration {
        WorkerManagementService::new_with_registration(
            provider.clone(),
            registration,
            store.clone(),
            config,
            metrics,
        )
    } else {
        WorkerManagementService::new(provider.clone(), store.clone(), config, metrics)
    };
    Setup {
        provider,
        scheduler,
        store,
        service,
        registry,
    }
}

fn setup() -> Setup {
    setup_with(WorkerManagementConfig::default(), true)
}

async fn state_of(store: &MemoryStore, id: &WorkerId) -> (WorkerState, bool) {
    let record = store.get_worker(id).await.unwrap().expect("recorded");
    (record.state, record.registered)
}

#[tokio::test(start_paused = true)]
async fn test_provision_worker_with_registration() {
    let s = setup();

    let provisioned = s.service.provision_worker().await.unwrap();

    assert_eq!(provisioned.status, WorkerStatus::Registered);
    assert_eq!(
        s.scheduler.registered_ids(),
        vec![provisioned.worker_id.clone()]
    );
    assert_eq!(s.provider.running(), vec![provisioned.worker_id.clone()]);
    assert_eq!(
        state_of(&s.store, &provisioned.worker_id).await,
        (WorkerState::Idle, true)
    );
    assert_eq!(provisioned.metadata.provider, ProviderKind::Local);
}

#[tokio::test(start_paused = true)]
async fn test_provision_worker_registration_failure_not_rollback() {
    let s = setup();
    s.scheduler
        .fail_next(100, SchedulerError::Unavailable("down".into()));

    let provisioned = s.service.provision_worker().await.unwrap();

    // The seed's test expects `Registered` here; that would be a lie. The worker exists,
    // the caller has its id, and the status says registration is pending.
    assert_eq!(provisioned.status, WorkerStatus::RegistrationPending);
    assert_eq!(
        s.provider.running(),
        vec![provisioned.worker_id.clone()],
        "not rolled back"
    );
    assert!(s.scheduler.registered_ids().is_empty());
    assert_eq!(
        state_of(&s.store, &provisioned.worker_id).await,
        (WorkerState::Registering, false)
    );
    assert_eq!(
        metric_value(
            &s.registry,
            "worker_provisioning_registration_failed_total",
            &[("worker_type", "dynamic")]
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn test_provision_worker_without_registration() {
    let s = setup_with(WorkerManagementConfig::default(), false);

    let provisioned = s.service.provision_worker().await.unwrap();

    assert_eq!(provisioned.status, WorkerStatus::Ready);
    assert_eq!(s.scheduler.register_calls(), 0);
    assert_eq!(
        state_of(&s.store, &provisioned.worker_id).await,
        (WorkerState::Idle, false)
    );
}

#[tokio::test(start_paused = true)]
async fn registration_can_be_disabled_by_configuration() {
    let config = WorkerManagementConfig {
        registration_enabled: false,
        ..Default::default()
    };
    let s = setup_with(config, true);

    let provisioned = s.service.provision_worker().await.unwrap();

    assert_eq!(provisioned.status, WorkerStatus::Ready);
    assert_eq!(s.scheduler.register_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn provision_worker_with_config_registers_static_workers_with_their_spec() {
    let s = setup();
    let mut spec = WorkerSpec {
        worker_type: WorkerType::Static,
        pool: Some("linux".into()),
        ..Default::default()
    };
    spec.capabilities.cpu_cores = 8;
    spec.labels.insert("os".into(), "linux".into());

    let provisioned = s.service.provision_worker_with_config(&spec).await.unwrap();

    assert_eq!(provisioned.status, WorkerStatus::Registered);
    assert!(provisioned.worker_id.as_str().starts_with("linux-"));
    assert_eq!(provisioned.capabilities.cpu_cores, 8);
    assert_eq!(provisioned.metadata.worker_type, WorkerType::Static);
    assert_eq!(
        provisioned.metadata.labels.get("os").map(String::as_str),
        Some("linux")
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_the_scheduler_refuses_is_torn_down_and_the_error_returned() {
    let s = setup();
    s.scheduler
        .fail_next(1, SchedulerError::Conflict(WorkerId::new("x").unwrap()));

    let error = s.service.provision_worker().await.unwrap_err();

    let WorkerManagementError::RegistrationRejected { worker_id, source } = error else {
        panic!("expected RegistrationRejected, got {error:?}");
    };
    assert!(source.is_permanent_rejection());
    assert!(s.provider.running().is_empty(), "no orphan left behind");
    assert_eq!(s.provider.terminated(), vec![worker_id.clone()]);
    assert_eq!(
        state_of(&s.store, &worker_id).await.0,
        WorkerState::Terminated
    );
    assert_eq!(
        s.scheduler.register_calls(),
        1,
        "a permanent error is not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_failure_is_returned_and_recorded() {
    let s = setup();
    s.provider
        .fail_next_create(ProviderError::Unavailable("docker is down".into()));

    let error = s.service.provision_worker().await.unwrap_err();

    assert!(
        matches!(error, WorkerManagementError::Provider { .. }),
        "{error:?}"
    );
    assert_eq!(s.scheduler.register_calls(), 0);
    let records = s.store.list_workers(&Default::default()).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, WorkerState::Terminated);
}

#[tokio::test(start_paused = true)]
async fn invalid_specs_are_refused_before_anything_is_created() {
    let s = setup();
    let mut spec = WorkerSpec::default();
    spec.capabilities.cpu_cores = 0;

    let error = s
        .service
        .provision_worker_with_config(&spec)
        .await
        .unwrap_err();

    assert!(
        matches!(error, WorkerManagementError::InvalidSpec(ref e) if e.field == "capabilities.cpu_cores")
    );
    assert_eq!(s.provider.created(), 0);
}

fn pool(size: u32) -> PoolSpec {
    PoolSpec::fixed("warm", ProviderKind::Local, size)
}

#[tokio::test(start_paused = true)]
async fn create_pool_pre_warms_and_registers_every_worker_through_the_batch_registration() {
    let s = setup();
    s.scheduler.set_latency(Duration::from_millis(10));

    let created = s.service.create_pool(&pool(12)).await.unwrap();

    assert_eq!(created.provisioned.len(), 12);
    assert!(created.failures.is_empty());
    assert!(
        created
            .provisioned
            .iter()
            .all(|p| p.status == WorkerStatus::Registered)
    );
    assert!(
        created
            .provisioned
            .iter()
            .all(|p| p.metadata.worker_type == WorkerType::Static)
    );
    assert_eq!(s.scheduler.registered_ids().len(), 12);
    assert!(
        s.scheduler.max_in_flight() <= 10,
        "batch concurrency bounds the registrations"
    );
    assert_eq!(s.store.get_pool("warm").await.unwrap(), Some(pool(12)));

    // Pre-warming again counts the live workers and provisions nothing.
    let again = s.service.create_pool(&pool(12)).await.unwrap();
    assert_eq!(again.existing, 12);
    assert!(again.provisioned.is_empty());
    assert_eq!(s.provider.created(), 12);
}

#[tokio::test(start_paused = true)]
async fn create_pool_keeps_workers_whose_registration_failed() {
    let s = setup_full(
        WorkerManagementConfig::default(),
        RegistrationConfig {
            max_retries: 0,
            ..RegistrationConfig::default()
        },
        true,
    );
    s.scheduler
        .fail_next(2, SchedulerError::Unavailable("down".into()));

    let created = s.service.create_pool(&pool(4)).await.unwrap();

    let pending = created
        .provisioned
        .iter()
        .filter(|p| p.status == WorkerStatus::RegistrationPending)
        .count();
    assert_eq!(pending, 2);
    assert_eq!(created.provisioned.len(), 4);
    assert_eq!(s.provider.running().len(), 4);
    assert_eq!(s.scheduler.registered_ids().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn terminating_a_worker_unregisters_it() {
    let s = setup();
    let provisioned = s.service.provision_worker().await.unwrap();

    s.service
        .terminate_worker(&provisioned.worker_id)
        .await
        .unwrap();

    assert!(s.scheduler.registered_ids().is_empty());
    assert!(s.provider.running().is_empty());
    assert_eq!(
        state_of(&s.store, &provisioned.worker_id).await,
        (WorkerState::Terminated, false)
    );
    // Terminating again is a no-op; an unknown worker is an error.
    s.service
        .terminate_worker(&provisioned.worker_id)
        .await
        .unwrap();
    let unknown = WorkerId::new("nobody").unwrap();
    assert!(matches!(
        s.service.terminate_worker(&unknown).await,
        Err(WorkerManagementError::WorkerNotFound(_))
    ));
}

fn kinds(report: &ReconcileReport) -> Vec<&'static str> {
    report.applied.iter().map(|a| a.kind()).collect()
}

#[tokio::test(start_paused = true)]
async fn reconciler_registers_a_live_worker_that_is_not_registered() {
    let s = setup();
    s.scheduler
        .fail_next(4, SchedulerError::Unavailable("down".into()));
    let provisioned = s.service.provision_worker().await.unwrap();
    assert_eq!(provisioned.status, WorkerStatus::RegistrationPending);

    let report = s.service.reconcile().await.unwrap();

    assert_eq!(kinds(&report), vec!["register"]);
    assert_eq!(
        s.scheduler.registered_ids(),
        vec![provisioned.worker_id.clone()]
    );
    assert_eq!(
        state_of(&s.store, &provisioned.worker_id).await,
        (WorkerState::Idle, true)
    );
    assert!(
        s.service.reconcile().await.unwrap().applied.is_empty(),
        "converged"
    );
}

#[tokio::test(start_paused = true)]
async fn reconciler_removes_a_registration_whose_worker_is_gone() {
    let s = setup();
    let provisioned = s.service.provision_worker().await.unwrap();
    s.provider.kill(&provisioned.worker_id);

    let report = s.service.reconcile().await.unwrap();

    assert_eq!(kinds(&report), vec!["unregister", "mark_terminated"]);
    assert!(s.scheduler.registered_ids().is_empty());
    assert_eq!(
        state_of(&s.store, &provisioned.worker_id).await,
        (WorkerState::Terminated, false)
    );
}

#[tokio::test(start_paused = true)]
async fn reconciler_terminates_a_worker_nobody_owns() {
    let s = setup();
    let kept = s.service.provision_worker().await.unwrap();
    let stranger = WorkerId::new("stranger-1").unwrap();
    s.provider.run_stranger(&stranger);

    let report = s.service.reconcile().await.unwrap();

    assert_eq!(kinds(&report), vec!["terminate_orphan"]);
    assert_eq!(s.provider.running(), vec![kept.worker_id]);
    assert_eq!(
        metric_value(
            &s.registry,
            "hodei_reconciler_actions_total",
            &[("action", "terminate_orphan"), ("result", "success")]
        ),
        Some(1.0)
    );
}

#[test]
fn environment_overrides_the_config_and_bad_values_name_the_variable() {
    let mut config = WorkerManagementConfig::default();
    config
        .apply_env(|key: &str| (key == "REGISTRATION_ENABLED").then(|| "false".to_owned()))
        .unwrap();
    assert!(!config.registration_enabled);

    let error = WorkerManagementConfig::default()
        .apply_env(|key: &str| (key == "REGISTRATION_ENABLED").then(|| "maybe".to_owned()))
        .unwrap_err();
    assert_eq!(error.field, "REGISTRATION_ENABLED");
    // The retry budget is the registration adapter's (`RegistrationConfig::apply_env`).
    WorkerManagementConfig::default()
        .apply_env(|key: &str| (key == "REGISTRATION_MAX_RETRIES").then(|| "lots".to_owned()))
        .unwrap();
}

#[tokio::test]
async fn the_provider_is_used_through_the_trait() {
    // Guards the wiring: the service holds `Arc<dyn WorkerProvider>`.
    let provider: Arc<dyn WorkerProvider> = Arc::new(FakeProvider::new());
    assert_eq!(provider.kind(), ProviderKind::Local);
}
