//! US-08.1.2 behaviour of the registration adapter against the scripted fake scheduler.
//! Time is paused: every sleep and timeout advances a virtual clock, nothing really waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hodei_adapters::worker_registration::{
    RegistrationConfig, RegistrationError, RegistrationMetrics, WorkerRegistrationAdapter,
    WorkerRegistrationPort,
};
use hodei_core::{LifecycleEvent, ProviderKind, Worker, WorkerId, WorkerSpec, WorkerType};
use hodei_ports::SchedulerError;
use hodei_testkit::{FakeScheduler, Step, metric_value};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn worker(id: &str, worker_type: WorkerType) -> Worker {
    let spec = WorkerSpec {
        worker_type,
        ..WorkerSpec::default()
    };
    Worker::from_spec(
        WorkerId::new(id).unwrap(),
        &spec,
        ProviderKind::Docker,
        SystemTime::UNIX_EPOCH,
    )
}

fn create_test_worker() -> Worker {
    worker("test-worker", WorkerType::Dynamic)
}

struct Setup {
    scheduler: Arc<FakeScheduler>,
    adapter: WorkerRegistrationAdapter,
    registry: Registry,
}

fn setup(config: RegistrationConfig) -> Setup {
    let scheduler = Arc::new(FakeScheduler::new());
    let mut registry = Registry::default();
    let metrics = RegistrationMetrics::new(&mut registry);
    let adapter = WorkerRegistrationAdapter::new(scheduler.clone(), config, metrics);
    Setup {
        scheduler,
        adapter,
        registry,
    }
}

fn unavailable() -> SchedulerError {
    SchedulerError::Unavailable("connection refused".into())
}

#[tokio::test(start_paused = true)]
async fn test_register_worker_success() {
    let s = setup(RegistrationConfig::default());
    let worker = create_test_worker();

    s.adapter.register_worker(&worker).await.unwrap();

    assert_eq!(s.scheduler.register_calls(), 1);
    assert_eq!(s.scheduler.registered_ids(), vec![worker.id]);
}

#[tokio::test(start_paused = true)]
async fn test_register_worker_retry_on_failure() {
    let s = setup(RegistrationConfig::default());
    s.scheduler.fail_next(100, unavailable());

    let result = s.adapter.register_worker(&create_test_worker()).await;

    // The initial attempt plus 3 retries.
    assert_eq!(s.scheduler.register_calls(), 4);
    match result {
        Err(RegistrationError::MaxRetriesExceeded {
            attempts,
            last_error,
        }) => {
            assert_eq!(attempts, 4);
            assert!(matches!(
                *last_error,
                RegistrationError::SchedulerUnavailable(_)
            ));
        }
        other => panic!("expected MaxRetriesExceeded, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_sequence_is_100_200_400_800_ms() {
    let s = setup(RegistrationConfig::default());
    s.scheduler.fail_next(100, unavailable());
    let started = Instant::now();

    let _ = s.adapter.register_worker(&create_test_worker()).await;

    // Four attempts with a delay after each of the first three: 100 + 200 + 400 ms.
    // The fourth delay (800 ms) would only follow a fifth attempt, which is not made.
    assert_eq!(started.elapsed(), MS(700));
    let config = RegistrationConfig::default();
    let delays: Vec<_> = (0..4).map(|a| config.backoff(a)).collect();
    assert_eq!(delays, [MS(100), MS(200), MS(400), MS(800)]);
}

#[tokio::test(start_paused = true)]
async fn test_calculate_backoff() {
    let s = setup(RegistrationConfig::default());
    assert_eq!(s.adapter.calculate_backoff(0), MS(100));
    assert_eq!(s.adapter.calculate_backoff(1), MS(200));
    assert_eq!(s.adapter.calculate_backoff(2), MS(400));
    assert_eq!(s.adapter.calculate_backoff(3), MS(800));
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_delays_between_half_and_all_of_nominal() {
    let s = setup(RegistrationConfig {
        jitter: true,
        ..RegistrationConfig::default()
    });
    for attempt in 0..4 {
        for _ in 0..50 {
            let delay = s.adapter.calculate_backoff(attempt);
            let nominal = s.adapter.config().backoff(attempt);
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "{delay:?} vs {nominal:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn succeeds_when_the_scheduler_recovers_within_the_budget() {
    let s = setup(RegistrationConfig::default());
    s.scheduler.fail_next(2, unavailable());
    let started = Instant::now();

    s.adapter
        .register_worker(&create_test_worker())
        .await
        .unwrap();

    assert_eq!(s.scheduler.register_calls(), 3);
    assert_eq!(started.elapsed(), MS(300), "100 ms + 200 ms of backoff");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_configured_limit() {
    let s = setup(RegistrationConfig {
        max_retries: 1,
        ..RegistrationConfig::default()
    });
    s.scheduler
        .fail_next(100, SchedulerError::RegistrationFailed("busy".into()));

    let result = s.adapter.register_worker(&create_test_worker()).await;

    assert_eq!(s.scheduler.register_calls(), 2);
    assert!(matches!(
        result,
        Err(RegistrationError::MaxRetriesExceeded { attempts: 2, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_tried_once() {
    let s = setup(RegistrationConfig::default());
    let existing = create_test_worker();
    let mut conflicting = existing.clone();
    conflicting.capabilities.cpu_cores = 64;
    s.scheduler.insert(existing);
    let started = Instant::now();

    let result = s.adapter.register_worker(&conflicting).await;

    assert_eq!(s.scheduler.register_calls(), 1);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no backoff before giving up"
    );
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            RegistrationError::Rejected(SchedulerError::Conflict(_))
        ),
        "{error:?}"
    );
    assert!(error.is_permanent_rejection());
}

#[tokio::test(start_paused = true)]
async fn invalid_worker_data_is_rejected_without_calling_the_scheduler() {
    let s = setup(RegistrationConfig::default());
    let mut worker = create_test_worker();
    worker.capabilities.cpu_cores = 0;

    let error = s.adapter.register_worker(&worker).await.unwrap_err();

    assert_eq!(s.scheduler.register_calls(), 0);
    match error {
        RegistrationError::InvalidWorker(message) => {
            assert!(message.contains("capabilities.cpu_cores"))
        }
        other => panic!("expected InvalidWorker, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn test_register_worker_timeout() {
    // The first attempt stalls for a minute; the 30 s per-attempt timeout abandons it and
    // the retry, 100 ms later, succeeds.
    let s = setup(RegistrationConfig::default());
    s.scheduler.script([Step::Stall(Duration::from_secs(60))]);
    let started = Instant::now();

    s.adapter
        .register_worker(&create_test_worker())
        .await
        .unwrap();

    assert_eq!(s.scheduler.register_calls(), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(30) + MS(100));
}

#[tokio::test(start_paused = true)]
async fn a_scheduler_that_always_stalls_ends_in_timeouts() {
    let s = setup(RegistrationConfig {
        max_retries: 0,
        registration_timeout: Duration::from_secs(5),
        ..RegistrationConfig::default()
    });
    s.scheduler.script([Step::Stall(Duration::from_secs(3600))]);

    let error = s
        .adapter
        .register_worker(&create_test_worker())
        .await
        .unwrap_err();

    match error {
        RegistrationError::MaxRetriesExceeded {
            attempts: 1,
            last_error,
        } => {
            assert!(
                matches!(*last_error, RegistrationError::Timeout(d) if d == Duration::from_secs(5))
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(s.scheduler.registered_ids().is_empty());
}

#[tokio::test(start_paused = true)]
async fn test_batch_registration_concurrency() {
    let s = setup(RegistrationConfig {
        batch_concurrency: 5,
        ..RegistrationConfig::default()
    });
    s.scheduler.set_latency(MS(10));
    let workers: Vec<_> = (0..10)
        .map(|i| worker(&format!("w-{i}"), WorkerType::Dynamic))
        .collect();

    let results = s.adapter.register_workers_batch(&workers).await;

    assert_eq!(results.len(), 10);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        s.scheduler.max_in_flight(),
        5,
        "never more than batch_concurrency in flight"
    );
    assert_eq!(s.scheduler.registered_ids().len(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_batch_never_exceeds_its_concurrency_even_with_retries() {
    let s = setup(RegistrationConfig::default());
    s.scheduler.set_latency(MS(5));
    s.scheduler.fail_next(30, unavailable());
    let workers: Vec<_> = (0..100)
        .map(|i| worker(&format!("w-{i}"), WorkerType::Static))
        .collect();

    let results = s.adapter.register_workers_batch(&workers).await;

    assert!(results.iter().all(Result::is_ok));
    assert_eq!(s.scheduler.max_in_flight(), 10);
    assert_eq!(s.scheduler.register_calls(), 130);
}

#[tokio::test(start_paused = true)]
async fn a_batch_with_some_failures_returns_the_right_result_per_worker() {
    let s = setup(RegistrationConfig {
        batch_concurrency: 3,
        ..RegistrationConfig::default()
    });
    let workers: Vec<_> = (0..8)
        .map(|i| worker(&format!("w-{i}"), WorkerType::Dynamic))
        .collect();
    s.scheduler.reject(&workers[1].id);
    s.scheduler.reject(&workers[6].id);
    let mut invalid = workers.clone();
    invalid[4].capabilities.memory_mb = 0;

    let results = s.adapter.register_workers_batch(&invalid).await;

    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, vec![1, 4, 6]);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(RegistrationError::is_permanent_rejection)
    );
    let expected: Vec<_> = [0, 2, 3, 5, 7]
        .iter()
        .map(|&i| workers[i].id.clone())
        .collect();
    assert_eq!(s.scheduler.registered_ids(), expected);
}

#[tokio::test(start_paused = true)]
async fn static_and_dynamic_workers_are_registered_with_their_capabilities_and_metadata() {
    let s = setup(RegistrationConfig::default());
    let mut static_worker = worker("static-1", WorkerType::Static);
    static_worker.capabilities.docker_enabled = true;
    static_worker
        .capabilities
        .custom_resources
        .insert("gpu".into(), 2);
    static_worker
        .metadata
        .labels
        .insert("os".into(), "linux".into());
    static_worker.metadata.tags.push("fast".into());
    let dynamic_worker = worker("dynamic-1", WorkerType::Dynamic);

    s.adapter.register_worker(&static_worker).await.unwrap();
    s.adapter.register_worker(&dynamic_worker).await.unwrap();

    // Registering the same data again is idempotent.
    s.adapter.register_worker(&static_worker).await.unwrap();
    assert_eq!(
        s.scheduler.registered_ids(),
        vec![dynamic_worker.id.clone(), static_worker.id.clone()]
    );
    assert_eq!(
        metric_value(
            &s.registry,
            "worker_registration_operations_total",
            &[("worker_type", "static"), ("result", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &s.registry,
            "worker_registration_operations_total",
            &[("worker_type", "dynamic"), ("result", "success")]
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_count_success_failure_and_retries() {
    let s = setup(RegistrationConfig {
        max_retries: 2,
        ..RegistrationConfig::default()
    });
    let ops = "worker_registration_operations_total";

    // Success at once.
    s.adapter
        .register_worker(&worker("a", WorkerType::Dynamic))
        .await
        .unwrap();
    // Success after two retries.
    s.scheduler.fail_next(2, unavailable());
    s.adapter
        .register_worker(&worker("b", WorkerType::Dynamic))
        .await
        .unwrap();
    // Failure: retries exhausted.
    s.scheduler.fail_next(3, unavailable());
    s.adapter
        .register_worker(&worker("c", WorkerType::Dynamic))
        .await
        .unwrap_err();
    // Failure: invalid worker.
    let mut bad = worker("d", WorkerType::Static);
    bad.capabilities.cpu_cores = 0;
    s.adapter.register_worker(&bad).await.unwrap_err();

    let r = &s.registry;
    assert_eq!(
        metric_value(r, ops, &[("operation", "register"), ("result", "success")]),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            r,
            ops,
            &[("result", "failure"), ("error_type", "max_retries")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            r,
            ops,
            &[
                ("result", "failure"),
                ("error_type", "invalid_worker"),
                ("worker_type", "static")
            ]
        ),
        Some(1.0)
    );
    // Retries per registration: 0 + 2 + 2 (dynamic) and 0 (static).
    assert_eq!(
        metric_value(
            r,
            "worker_registration_retry_count_sum",
            &[("worker_type", "dynamic")]
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(
            r,
            "worker_registration_retry_count_count",
            &[("worker_type", "dynamic")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(r, "worker_registration_duration_seconds_count", &[]),
        Some(4.0)
    );
    // b waited 100 + 200 ms, c waited 100 + 200 ms: 0.6 s of virtual time in all.
    let total = metric_value(
        r,
        "worker_registration_duration_seconds_sum",
        &[("worker_type", "dynamic")],
    )
    .unwrap();
    assert!((total - 0.6).abs() < 1e-9, "{total}");
}

#[tokio::test(start_paused = true)]
async fn test_unregister_worker() {
    let s = setup(RegistrationConfig::default());
    let worker = create_test_worker();
    s.scheduler.insert(worker.clone());

    s.adapter.unregister_worker(&worker.id).await.unwrap();
    assert!(s.scheduler.registered_ids().is_empty());

    let again = s.adapter.unregister_worker(&worker.id).await.unwrap_err();
    assert!(
        matches!(
            again,
            RegistrationError::Rejected(SchedulerError::WorkerNotFound(_))
        ),
        "{again:?}"
    );
    assert_eq!(
        s.scheduler.unregister_calls(),
        2,
        "not found is permanent, not retried"
    );
    assert_eq!(
        metric_value(
            &s.registry,
            "worker_registration_operations_total",
            &[("operation", "unregister"), ("result", "failure")]
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn lifecycle_events_register_and_unregister() {
    let s = setup(RegistrationConfig::default());
    let worker = create_test_worker();

    s.adapter
        .handle_lifecycle_event(&LifecycleEvent::Provisioned(worker.clone()))
        .await
        .unwrap();
    s.adapter
        .handle_lifecycle_event(&LifecycleEvent::Ready(worker.id.clone()))
        .await
        .unwrap();
    assert_eq!(s.scheduler.registered_ids(), vec![worker.id.clone()]);

    let terminated = LifecycleEvent::Terminated {
        worker_id: worker.id.clone(),
        reason: "test".into(),
    };
    s.adapter.handle_lifecycle_event(&terminated).await.unwrap();
    assert!(s.scheduler.registered_ids().is_empty());
    // Terminating a worker that is not registered is not an error.
    s.adapter.handle_lifecycle_event(&terminated).await.unwrap();
}

#[test]
fn config_validation_names_the_field() {
    assert!(RegistrationConfig::default().validate().is_ok());
    let zero = RegistrationConfig {
        batch_concurrency: 0,
        ..RegistrationConfig::default()
    };
    assert_eq!(
        zero.validate().unwrap_err().field,
        "registration.batch_concurrency"
    );
    let huge = RegistrationConfig {
        max_retries: 1000,
        ..RegistrationConfig::default()
    };
    assert_eq!(
        huge.validate().unwrap_err().field,
        "registration.max_retries"
    );
    let instant = RegistrationConfig {
        registration_timeout: Duration::ZERO,
        ..RegistrationConfig::default()
    };
    assert_eq!(
        instant.validate().unwrap_err().field,
        "registration.timeout"
    );
}

/// `REGISTRATION_MAX_RETRIES` sets the retry budget of the adapter, the one that retries
/// (worker management keeps no copy of it any more).
#[test]
fn the_environment_sets_the_retry_budget_and_bad_values_name_the_variable() {
    let env = |value: &'static str| {
        move |key: &str| (key == "REGISTRATION_MAX_RETRIES").then(|| value.to_owned())
    };
    let mut config = RegistrationConfig::default();
    config.apply_env(env("5")).unwrap();
    assert_eq!(config.max_retries, 5);
    config.apply_env(|_| None).unwrap();
    assert_eq!(config.max_retries, 5, "unset leaves it alone");
    for bad in ["-1", "999", "many"] {
        let error = RegistrationConfig::default()
            .apply_env(env(bad))
            .unwrap_err();
        assert_eq!(error.field, "REGISTRATION_MAX_RETRIES");
    }
}
