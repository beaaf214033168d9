//! US-08.1.4, AC-1 to AC-4, over the network: worker management in this process registers
//! its workers with a real Hodei server on 127.0.0.1 through `SchedulerPortClient` and the
//! registration adapter, over real gRPC. The provider and the store are fakes; nothing on
//! the path between the adapter and the scheduler registry is.
//!
//! Failures are real too: a port nobody listens on, a listener that accepts connections and
//! never answers, a server process killed with SIGKILL in the middle of a batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hodei_adapters::{RegistrationConfig, RegistrationMetrics, WorkerRegistrationAdapter};
use hodei_core::reconcile::Action;
use hodei_core::{PoolSpec, ProviderKind, Worker, WorkerId, WorkerSpec, WorkerState, WorkerType};
use hodei_modules::{
    WorkerManagementConfig, WorkerManagementMetrics, WorkerManagementService, WorkerStatus,
};
use hodei_ports::{
    RegistrationError, SchedulerError, SchedulerPort, Store, WorkerFilter, WorkerRegistrationPort,
};
use hodei_proto::convert::{register_request, validation_error};
use hodei_proto::v1::scheduler_service_client::SchedulerServiceClient;
use hodei_proto::{ClientConfig, SchedulerPortClient, v1};
use hodei_server::{Server, ServerConfig};
use hodei_testkit::{FakeProvider, MemoryStore, metric_value, wait_for};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

const HODEI: &str = env!("CARGO_BIN_EXE_hodei");

/// Bounds a broken test; it measures nothing.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Servers

/// Starts a server with no pools on `listener`, its data in a fresh temporary directory
/// (returned: the server keeps using it until it is shut down). Without `token` the server
/// makes one up.
async fn start_server_on(
    listener: TcpListener,
    token: Option<&str>,
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        token: token.map(str::to_owned),
        ..ServerConfig::default()
    };
    config.listen = listener.local_addr().unwrap();
    config.local.agent_program = Some(HODEI.into());
    assert!(
        config.pools.is_empty(),
        "the scheduler under test has no pools"
    );
    let server = Server::start(config, listener).await.unwrap();
    (server, dir)
}

/// Starts a server with no pools on 127.0.0.1:0.
async fn start_server() -> (Server, tempfile::TempDir) {
    start_server_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), None).await
}

/// An address on 127.0.0.1 that nothing listens on (it was free a moment ago).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A scheduler that hangs: a TCP listener that accepts connections, holds them open and
/// never says a word. Returns its URL; the task stops with the test's runtime.
async fn stalling_scheduler() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

/// A `hodei server` process, killed (SIGKILL) when dropped so a failing test leaves
/// nothing behind.
struct ServerProcess(Child);

impl ServerProcess {
    /// Runs `hodei server --config <config> --listen <addr>`, its log appended to `log`.
    fn spawn(config: &Path, addr: SocketAddr, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(HODEI)
            .arg("server")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .env_remove("HODEI_TOKEN")
            .env_remove("REGISTRATION_ENABLED")
            .env_remove("REGISTRATION_MAX_RETRIES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(child)
    }

    /// SIGKILL, no chance to say goodbye, then reaps the process.
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Clients

fn client(url: &str, token: &str) -> SchedulerPortClient {
    SchedulerPortClient::new(&ClientConfig::new(url, token)).unwrap()
}

fn client_for(server: &Server) -> SchedulerPortClient {
    client(server.url(), server.token())
}

/// `GetWorker` through the generated client.
async fn get_worker(
    client: &SchedulerPortClient,
    id: &WorkerId,
) -> Result<v1::WorkerInfo, tonic::Status> {
    let response = client
        .raw()
        .get_worker(v1::GetWorkerRequest {
            worker_id: id.to_string(),
        })
        .await?;
    Ok(response
        .into_inner()
        .worker
        .expect("GetWorker carries the worker"))
}

/// The ids `ListWorkers` returns, in the order it returns them.
async fn list_worker_ids(client: &SchedulerPortClient) -> Result<Vec<String>, tonic::Status> {
    let response = client.raw().list_workers(v1::ListWorkersRequest {}).await?;
    Ok(response
        .into_inner()
        .workers
        .into_iter()
        .map(|w| w.worker_id)
        .collect())
}

/// The real client, with every `RegisterWorker` call and failure counted and, when asked,
/// each call held back for `delay` before it goes on the wire. Everything else passes
/// straight through.
struct ObservedScheduler {
    inner: SchedulerPortClient,
    register_calls: AtomicUsize,
    register_failures: AtomicUsize,
    delay: Duration,
}

impl ObservedScheduler {
    fn new(inner: SchedulerPortClient, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            register_calls: AtomicUsize::new(0),
            register_failures: AtomicUsize::new(0),
            delay,
        })
    }

    fn register_calls(&self) -> usize {
        self.register_calls.load(Ordering::SeqCst)
    }

    fn register_failures(&self) -> usize {
        self.register_failures.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SchedulerPort for ObservedScheduler {
    async fn register_worker(&self, worker: Worker) -> Result<(), SchedulerError> {
        self.register_calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let result = self.inner.register_worker(worker).await;
        if result.is_err() {
            self.register_failures.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), SchedulerError> {
        self.inner.unregister_worker(worker_id).await
    }

    async fn get_registered_workers(&self) -> Result<Vec<WorkerId>, SchedulerError> {
        self.inner.get_registered_workers().await
    }
}

// ---------------------------------------------------------------------------------------
// The side that registers

/// A registration adapter over `scheduler`, its metrics on the returned registry.
fn adapter(
    scheduler: Arc<dyn SchedulerPort>,
    config: RegistrationConfig,
) -> (WorkerRegistrationAdapter, Registry) {
    let mut metrics = Registry::default();
    let adapter =
        WorkerRegistrationAdapter::new(scheduler, config, RegistrationMetrics::new(&mut metrics));
    (adapter, metrics)
}

/// Worker management as a remote scheduler's client runs it: fake provider, memory store,
/// the real adapter over `scheduler`.
struct Management {
    service: Arc<WorkerManagementService>,
    provider: Arc<FakeProvider>,
    store: Arc<MemoryStore>,
    metrics: Registry,
}

fn management(scheduler: Arc<dyn SchedulerPort>, config: RegistrationConfig) -> Management {
    let mut metrics = Registry::default();
    let provider = Arc::new(FakeProvider::new());
    let store = Arc::new(MemoryStore::new());
    let registration = Arc::new(WorkerRegistrationAdapter::new(
        scheduler,
        config,
        RegistrationMetrics::new(&mut metrics),
    ));
    let service = WorkerManagementService::new_with_registration(
        provider.clone(),
        registration,
        store.clone(),
        WorkerManagementConfig::default(),
        WorkerManagementMetrics::new(&mut metrics),
    );
    Management {
        service: Arc::new(service),
        provider,
        store,
        metrics,
    }
}

fn worker_with(id: &str, spec: &WorkerSpec) -> Worker {
    Worker::from_spec(
        WorkerId::new(id).unwrap(),
        spec,
        ProviderKind::Local,
        SystemTime::now(),
    )
}

/// A default dynamic worker.
fn worker(id: &str) -> Worker {
    worker_with(id, &WorkerSpec::default())
}

fn workers(prefix: &str, count: usize) -> Vec<Worker> {
    (0..count)
        .map(|i| worker(&format!("{prefix}-{i:03}")))
        .collect()
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(registry, name, labels).unwrap_or_else(|| panic!("metric {name} {labels:?}"))
}

// ---------------------------------------------------------------------------------------
// AC-2: integration

/// The gRPC client passes the same `SchedulerPort` contract as the in-process registry it
/// reaches and the fake the unit tests use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_client_passes_the_scheduler_contract() {
    let (server, _dir) = start_server().await;
    hodei_testkit::scheduler_contract(&client_for(&server), "grpc").await;
    // What the client did is what the server's own registry holds.
    hodei_testkit::scheduler_contract(server.scheduler().as_ref(), "inproc").await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioned_worker_is_registered_with_a_remote_scheduler_and_listed() {
    let (server, _dir) = start_server().await;
    let scheduler = Arc::new(client_for(&server));
    let management = management(scheduler.clone(), RegistrationConfig::default());

    let provisioned = management.service.provision_worker().await.unwrap();
    assert_eq!(provisioned.status, WorkerStatus::Registered);
    let id = provisioned.worker_id.clone();

    let entry = server
        .scheduler()
        .get(&id)
        .expect("registered on the server");
    assert_eq!(entry.worker.capabilities, provisioned.capabilities);
    assert_eq!(entry.worker.metadata.worker_type, WorkerType::Dynamic);

    let info = get_worker(&scheduler, &id).await.unwrap();
    assert_eq!(info.worker_id, id.as_str());
    assert_eq!(
        info.status(),
        v1::WorkerStatus::Starting,
        "registered, no agent connected yet"
    );
    assert!(!info.connected);
    assert!(info.registered_at_ms > 0);
    assert_eq!(info.capabilities, Some((&provisioned.capabilities).into()));
    assert_eq!(
        list_worker_ids(&scheduler).await.unwrap(),
        vec![id.to_string()]
    );

    let record = management.store.get_worker(&id).await.unwrap().unwrap();
    assert_eq!((record.state, record.registered), (WorkerState::Idle, true));
    assert_eq!(management.provider.running(), vec![id]);
    assert_eq!(
        metric(
            &management.metrics,
            "worker_registration_operations_total",
            &[("operation", "register"), ("result", "success")]
        ),
        1.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_100_workers_registers_over_grpc() {
    let (server, _dir) = start_server().await;
    let (adapter, metrics) = adapter(Arc::new(client_for(&server)), RegistrationConfig::default());
    let batch = workers("batch", 100);

    let results = adapter.register_workers_batch(&batch).await;

    assert_eq!(results.len(), 100);
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(server.scheduler().len(), 100);
    for worker in &batch {
        let entry = server.scheduler().get(&worker.id).expect("registered");
        assert_eq!(entry.worker.capabilities, worker.capabilities);
    }
    assert_eq!(
        metric(
            &metrics,
            "worker_registration_operations_total",
            &[("result", "success")]
        ),
        100.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_and_dynamic_workers_keep_their_capabilities_and_labels_over_the_wire() {
    let (server, _dir) = start_server().await;
    let scheduler = Arc::new(client_for(&server));
    let management = management(scheduler.clone(), RegistrationConfig::default());

    let mut static_spec = WorkerSpec {
        worker_type: WorkerType::Static,
        pool: Some("linux-large".into()),
        namespace: "ci".into(),
        tags: vec!["fast-disk".into(), "eu-west".into()],
        ..WorkerSpec::default()
    };
    static_spec.capabilities.cpu_cores = 16;
    static_spec.capabilities.memory_mb = 65_536;
    static_spec.capabilities.docker_enabled = true;
    static_spec.capabilities.custom_resources = BTreeMap::from([("gpu".into(), 2)]);
    static_spec.labels = BTreeMap::from([
        ("os".into(), "linux".into()),
        ("arch".into(), "x86_64".into()),
    ]);
    let mut dynamic_spec = WorkerSpec::default();
    dynamic_spec.capabilities.cpu_cores = 1;
    dynamic_spec.capabilities.memory_mb = 512;
    dynamic_spec.labels = BTreeMap::from([("os".into(), "windows".into())]);

    for (spec, worker_type) in [
        (&static_spec, WorkerType::Static),
        (&dynamic_spec, WorkerType::Dynamic),
    ] {
        let provisioned = management
            .service
            .provision_worker_with_config(spec)
            .await
            .unwrap();
        assert_eq!(provisioned.status, WorkerStatus::Registered);
        let info = get_worker(&scheduler, &provisioned.worker_id)
            .await
            .unwrap();
        let capabilities = info.capabilities.expect("capabilities");
        let metadata = info.metadata.expect("metadata");

        assert_eq!(capabilities, (&spec.capabilities).into());
        assert_eq!(metadata.worker_type, worker_type.as_str());
        assert_eq!(metadata.provider, "local");
        assert_eq!(metadata.pool, spec.pool.clone().unwrap_or_default());
        assert_eq!(metadata.namespace, spec.namespace);
        assert_eq!(metadata.labels, spec.labels);
        assert_eq!(metadata.tags, spec.tags);
        // The whole message, timestamp (milliseconds) included.
        assert_eq!(metadata, (&provisioned.metadata).into());
        let registered = server.scheduler().get(&provisioned.worker_id).unwrap();
        assert_eq!(registered.worker.metadata.labels, spec.labels);
        assert_eq!(registered.worker.capabilities, spec.capabilities);
    }
    assert_eq!(server.scheduler().len(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_registrations_from_50_concurrent_clients_all_succeed() {
    const TASKS: usize = 50;
    const PER_TASK: usize = 4;
    let (server, _dir) = start_server().await;
    let mut metrics = Registry::default();
    let registration_metrics = RegistrationMetrics::new(&mut metrics);
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        // One client, hence one connection, per task.
        let adapter = WorkerRegistrationAdapter::new(
            Arc::new(client_for(&server)),
            RegistrationConfig::default(),
            registration_metrics.clone(),
        );
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            let mut results = Vec::new();
            for i in 0..PER_TASK {
                let worker = worker(&format!("concurrent-{task:02}-{i}"));
                results.push(adapter.register_worker(&worker).await);
            }
            results
        });
    }
    let mut errors = Vec::new();
    let mut registrations = 0;
    while let Some(results) = tasks.join_next().await {
        for result in results.unwrap() {
            registrations += 1;
            if let Err(error) = result {
                errors.push(error.to_string());
            }
        }
    }

    assert_eq!(registrations, TASKS * PER_TASK);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.scheduler().len(), TASKS * PER_TASK);
    let count = |result: &str| {
        metric(
            &metrics,
            "worker_registration_operations_total",
            &[("operation", "register"), ("result", result)],
        )
    };
    assert_eq!(count("success"), 200.0);
    assert_eq!(count("failure"), 0.0);
    assert_eq!(
        metric(&metrics, "worker_registration_retry_count_sum", &[]),
        0.0,
        "nobody needed a retry"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_worker_unregisters_it_remotely_then_stops_it() {
    let (server, _dir) = start_server().await;
    let scheduler = Arc::new(client_for(&server));
    let management = management(scheduler.clone(), RegistrationConfig::default());
    let keep = management
        .service
        .provision_worker()
        .await
        .unwrap()
        .worker_id;
    let provisioned = management.service.provision_worker().await.unwrap();
    assert_eq!(provisioned.status, WorkerStatus::Registered);
    let id = provisioned.worker_id;
    get_worker(&scheduler, &id).await.expect("registered");

    management.service.terminate_worker(&id).await.unwrap();

    let status = get_worker(&scheduler, &id).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(server.scheduler().get(&id).is_none());
    assert!(!management.provider.running().contains(&id), "stopped");
    assert_eq!(management.provider.terminated(), vec![id.clone()]);
    let record = management.store.get_worker(&id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.registered),
        (WorkerState::Terminated, false)
    );
    assert_eq!(
        list_worker_ids(&scheduler).await.unwrap(),
        vec![keep.to_string()],
        "the other worker is untouched"
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// AC-3: failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_waits_out_a_scheduler_that_is_not_started_yet() {
    let addr = free_addr();
    let token = "not-started-yet-token-0123";
    let scheduler =
        ObservedScheduler::new(client(&format!("http://{addr}"), token), Duration::ZERO);
    let config = RegistrationConfig {
        base_backoff: Duration::from_millis(100),
        max_retries: 6,
        ..RegistrationConfig::default()
    };
    let (adapter, metrics) = adapter(scheduler.clone(), config);
    let adapter = Arc::new(adapter);
    let target = worker("late-scheduler");
    let registering = {
        let adapter = adapter.clone();
        let target = target.clone();
        tokio::spawn(async move { adapter.register_worker(&target).await })
    };

    wait_for("a failed first attempt", LIMIT, || async {
        (scheduler.register_failures() >= 1).then_some(())
    })
    .await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let (server, _dir) = start_server_on(listener, Some(token)).await;

    let outcome = tokio::time::timeout(LIMIT, registering)
        .await
        .expect("registration ends within its retry budget")
        .unwrap();
    outcome.expect("registered once the scheduler is up");
    assert!(server.scheduler().get(&target.id).is_some());
    let retries = metric(&metrics, "worker_registration_retry_count_sum", &[]);
    assert!(retries >= 1.0, "needed at least one retry, made {retries}");
    assert!(retries <= 6.0, "within the retry budget, made {retries}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_against_a_stalled_scheduler_times_out() {
    let url = stalling_scheduler().await;
    let config = RegistrationConfig {
        registration_timeout: Duration::from_millis(300),
        max_retries: 1,
        ..RegistrationConfig::default()
    };
    let (adapter, metrics) = adapter(Arc::new(client(&url, "stalled-scheduler-token")), config);

    let error = tokio::time::timeout(LIMIT, adapter.register_worker(&worker("stalled")))
        .await
        .expect("the adapter gives up by itself")
        .unwrap_err();

    match error {
        RegistrationError::MaxRetriesExceeded {
            attempts,
            last_error,
        } => {
            assert_eq!(attempts, 2);
            assert!(
                matches!(*last_error, RegistrationError::Timeout(t) if t == Duration::from_millis(300)),
                "{last_error:?}"
            );
        }
        other => panic!("expected MaxRetriesExceeded, got {other:?}"),
    }
    assert_eq!(
        metric(
            &metrics,
            "worker_registration_operations_total",
            &[("result", "failure"), ("error_type", "max_retries")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_workers_fail_alone_in_a_batch_and_results_keep_input_order() {
    let (server, _dir) = start_server().await;
    let scheduler = Arc::new(client_for(&server));
    let batch = workers("mixed", 20);
    let conflicting = |i: usize| i % 4 == 1;
    let mut bigger = WorkerSpec::default();
    bigger.capabilities.cpu_cores = 16;
    for (_, w) in batch.iter().enumerate().filter(|(i, _)| conflicting(*i)) {
        let other = worker_with(w.id.as_str(), &bigger);
        scheduler.register_worker(other).await.unwrap();
    }
    let (adapter, metrics) = adapter(scheduler.clone(), RegistrationConfig::default());

    let results = adapter.register_workers_batch(&batch).await;

    assert_eq!(results.len(), batch.len());
    for (i, (worker, result)) in batch.iter().zip(&results).enumerate() {
        if conflicting(i) {
            match result {
                Err(RegistrationError::Rejected(SchedulerError::Conflict(id))) => {
                    assert_eq!(id, &worker.id, "result {i} is about worker {i}");
                }
                other => panic!("{}: expected a conflict, got {other:?}", worker.id),
            }
            let kept = server.scheduler().get(&worker.id).unwrap();
            assert_eq!(kept.worker.capabilities.cpu_cores, 16, "not overwritten");
        } else {
            assert!(result.is_ok(), "{}: {result:?}", worker.id);
            let registered = server.scheduler().get(&worker.id).unwrap();
            assert_eq!(registered.worker.capabilities, worker.capabilities);
        }
    }
    assert_eq!(server.scheduler().len(), 20);
    assert_eq!(
        metric(&metrics, "worker_registration_retry_count_sum", &[]),
        0.0,
        "conflicts are permanent, never retried"
    );
    assert_eq!(
        metric(
            &metrics,
            "worker_registration_operations_total",
            &[("result", "failure"), ("error_type", "rejected")]
        ),
        5.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_batch_and_restarted_ends_with_every_worker_registered_once() {
    const POOL_SIZE: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let token = "crash-test-token-0123456789";
    let config_path = dir.path().join("hodei.toml");
    std::fs::write(
        &config_path,
        format!(
            "token = {token:?}\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let addr = free_addr();
    let url = format!("http://{addr}");
    let observer = client(&url, token);

    let mut first = ServerProcess::spawn(&config_path, addr, &log);
    wait_for("the first server to answer", LIMIT, || async {
        list_worker_ids(&observer).await.ok().map(|_| ())
    })
    .await;

    let config = RegistrationConfig {
        base_backoff: Duration::from_millis(100),
        max_retries: 8,
        registration_timeout: Duration::from_secs(2),
        batch_concurrency: 5,
        ..RegistrationConfig::default()
    };
    // Registrations over loopback take about a millisecond: the whole batch would be over
    // before anyone could kill the scheduler. 25 ms of latency per call, added here on the
    // client side (the server has no latency knob), keeps the batch running for about
    // 300 ms, so the kill lands in the middle of it on any machine.
    let scheduler = ObservedScheduler::new(client(&url, token), Duration::from_millis(25));
    let management = management(scheduler.clone(), config);
    let pool = PoolSpec::fixed(
        "crash",
        ProviderKind::Local,
        u32::try_from(POOL_SIZE).unwrap(),
    );
    let creating = {
        let service = management.service.clone();
        let pool = pool.clone();
        tokio::spawn(async move { service.create_pool(&pool).await })
    };

    let before_kill = wait_for("some, not all, workers registered", LIMIT, || async {
        let registered = list_worker_ids(&observer).await.ok()?.len();
        assert!(
            registered < POOL_SIZE,
            "the whole batch registered before the scheduler could be killed"
        );
        (registered > 0).then_some(registered)
    })
    .await;
    first.kill();
    // Restart only once registrations have failed against the dead scheduler: a new
    // process binds its port within milliseconds, and the kernel would queue the next
    // connections for it, hiding the crash from the client.
    wait_for(
        "a registration to fail against the dead scheduler",
        LIMIT,
        || async { (scheduler.register_failures() > 0).then_some(()) },
    )
    .await;
    let mut second = ServerProcess::spawn(&config_path, addr, &log);
    wait_for("the restarted server to answer", LIMIT, || async {
        list_worker_ids(&observer).await.ok().map(|_| ())
    })
    .await;

    let created = tokio::time::timeout(Duration::from_secs(30), creating)
        .await
        .expect("create_pool ends within the retry budget")
        .unwrap()
        .unwrap();
    assert!(created.failures.is_empty(), "{:?}", created.failures);
    assert_eq!(created.provisioned.len(), POOL_SIZE);
    let pending: Vec<_> = created
        .provisioned
        .iter()
        .filter(|p| p.status != WorkerStatus::Registered)
        .collect();
    assert!(pending.is_empty(), "{pending:?}");
    let calls_during_batch = scheduler.register_calls();
    assert!(
        calls_during_batch > POOL_SIZE,
        "registrations failed against the dead scheduler and were retried: {calls_during_batch} calls"
    );

    // The new scheduler never heard of the workers registered before the crash; the
    // reconciler registers them again.
    let report = management.service.reconcile().await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(
        report.applied.len() >= before_kill
            && report
                .applied
                .iter()
                .all(|a| matches!(a, Action::Register(_))),
        "the {before_kill}+ workers registered before the crash are registered again: {:?}",
        report.applied
    );

    let mut expected: Vec<String> = management
        .store
        .list_workers(&WorkerFilter::live())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.worker.id.to_string())
        .collect();
    expected.sort();
    let mut provisioned: Vec<String> = created
        .provisioned
        .iter()
        .map(|p| p.worker_id.to_string())
        .collect();
    provisioned.sort();
    assert_eq!(provisioned, expected);
    assert_eq!(expected.len(), POOL_SIZE);
    // Ordered by id, so equal means: every worker of the pool, each exactly once.
    assert_eq!(list_worker_ids(&observer).await.unwrap(), expected);
    assert_eq!(
        management.provider.created(),
        POOL_SIZE,
        "none provisioned twice"
    );
    assert_eq!(management.provider.running().len(), POOL_SIZE);
    assert_eq!(
        scheduler.register_calls(),
        calls_during_batch + report.applied.len(),
        "the reconciler registered each lost worker once"
    );
    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_against_a_closed_port_are_exhausted() {
    let url = format!("http://{}", free_addr());
    let config = RegistrationConfig {
        max_retries: 2,
        base_backoff: Duration::from_millis(10),
        ..RegistrationConfig::default()
    };
    let (adapter, metrics) = adapter(Arc::new(client(&url, "closed-port-token-0123")), config);

    let error = tokio::time::timeout(LIMIT, adapter.register_worker(&worker("nobody-home")))
        .await
        .expect("the adapter gives up by itself")
        .unwrap_err();

    match error {
        RegistrationError::MaxRetriesExceeded {
            attempts,
            last_error,
        } => {
            assert_eq!(attempts, 3);
            assert!(
                matches!(
                    *last_error,
                    RegistrationError::SchedulerUnavailable(SchedulerError::Unavailable(_))
                ),
                "{last_error:?}"
            );
        }
        other => panic!("expected MaxRetriesExceeded, got {other:?}"),
    }
    assert_eq!(
        metric(&metrics, "worker_registration_retry_count_sum", &[]),
        2.0
    );
}

// ---------------------------------------------------------------------------------------
// AC-4: the gRPC contract

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_contract_rejects_invalid_data_naming_the_field() {
    let (server, _dir) = start_server().await;
    let client = client_for(&server);
    let raw = client.raw();
    let valid = register_request(&worker("contract-1"));

    let mut cases: Vec<(&str, v1::RegisterWorkerRequest)> = Vec::new();
    let mut request = valid.clone();
    request.worker_id = String::new();
    cases.push(("worker_id", request));
    let mut request = valid.clone();
    request.capabilities = None;
    cases.push(("capabilities", request));
    let mut request = valid.clone();
    request.capabilities.as_mut().unwrap().cpu_cores = 0;
    cases.push(("capabilities.cpu_cores", request));
    let mut request = valid.clone();
    request.metadata.as_mut().unwrap().labels =
        (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    cases.push(("metadata.labels", request));
    let mut request = valid.clone();
    request
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("key".into(), "v".repeat(1000));
    cases.push(("metadata.labels[key]", request));
    let mut request = valid.clone();
    request.metadata.as_mut().unwrap().worker_type = "ephemeral".into();
    cases.push(("metadata.worker_type", request));

    for (field, request) in cases {
        let status = raw.clone().register_worker(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        let violation = validation_error(&status).unwrap_or_else(|| panic!("{field}: {status:?}"));
        assert_eq!(violation.field, field, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    assert!(
        server.scheduler().is_empty(),
        "nothing invalid was registered"
    );

    // Registration is idempotent for the same data, a conflict for different data.
    let first = raw
        .clone()
        .register_worker(valid.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status(), v1::RegistrationStatus::Success);
    assert_eq!(first.worker_id, "contract-1");
    let again = raw
        .clone()
        .register_worker(valid.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.status(), v1::RegistrationStatus::AlreadyRegistered);
    let mut different = valid.clone();
    different.capabilities.as_mut().unwrap().cpu_cores = 8;
    let status = raw.clone().register_worker(different).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert_eq!(
        get_worker(&client, &WorkerId::new("contract-1").unwrap())
            .await
            .unwrap()
            .capabilities,
        valid.capabilities,
        "the first registration stands"
    );

    // Ids are checked on every call.
    let status = raw
        .clone()
        .get_worker(v1::GetWorkerRequest {
            worker_id: "bad id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(validation_error(&status).unwrap().field, "worker_id");
    let status = raw
        .clone()
        .unregister_worker(v1::UnregisterWorkerRequest {
            worker_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(validation_error(&status).unwrap().field, "worker_id");

    // Unregistration.
    let unknown = raw
        .clone()
        .unregister_worker(v1::UnregisterWorkerRequest {
            worker_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let gone = raw
        .clone()
        .unregister_worker(v1::UnregisterWorkerRequest {
            worker_id: "contract-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.status(), v1::UnregistrationStatus::Success);
    let status = get_worker(&client, &WorkerId::new("contract-1").unwrap())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Authentication: no token, a wrong token.
    let mut anonymous = SchedulerServiceClient::connect(server.url().to_owned())
        .await
        .unwrap();
    let status = anonymous
        .list_workers(v1::ListWorkersRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = anonymous.register_worker(valid.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let wrong = self::client(server.url(), "wrong-token-0123456789");
    let status = wrong
        .raw()
        .register_worker(valid.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        server.scheduler().is_empty(),
        "nothing registered without the token"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_codes_map_to_scheduler_and_registration_errors() {
    let (server, _dir) = start_server().await;
    let port = client_for(&server);
    let id = WorkerId::new("mapped").unwrap();

    // Local validation bypassed: the port client sends whatever it is given.
    let mut invalid = worker("mapped");
    invalid.capabilities.memory_mb = 0;
    match port.register_worker(invalid).await {
        Err(SchedulerError::InvalidWorker(error)) => {
            assert_eq!(error.field, "capabilities.memory_mb");
        }
        other => panic!("expected InvalidWorker, got {other:?}"),
    }
    let registered = worker("mapped");
    port.register_worker(registered.clone()).await.unwrap();
    port.register_worker(registered)
        .await
        .expect("registering the same worker again is fine");
    let mut other = worker("mapped");
    other.capabilities.cpu_cores = 3;
    assert_eq!(
        port.register_worker(other).await,
        Err(SchedulerError::Conflict(id.clone()))
    );
    assert_eq!(port.get_registered_workers().await, Ok(vec![id.clone()]));
    port.unregister_worker(&id).await.unwrap();
    assert_eq!(
        port.unregister_worker(&id).await,
        Err(SchedulerError::WorkerNotFound(id.clone()))
    );

    // A wrong token is permanent: the adapter does not retry it.
    let wrong = Arc::new(client(server.url(), "wrong-token-0123456789"));
    let error = wrong.register_worker(worker("mapped")).await.unwrap_err();
    assert!(matches!(error, SchedulerError::Rejected(_)), "{error:?}");
    assert!(!error.is_retryable());
    let (adapter, metrics) = adapter(wrong, RegistrationConfig::default());
    let error = adapter
        .register_worker(&worker("mapped"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RegistrationError::Rejected(SchedulerError::Rejected(_))
        ),
        "{error:?}"
    );
    assert_eq!(
        metric(&metrics, "worker_registration_retry_count_sum", &[]),
        0.0
    );
    assert!(server.scheduler().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_call_timeout_turns_a_hung_call_into_a_retryable_error() {
    let url = stalling_scheduler().await;
    let mut config = ClientConfig::new(url, "stalled-scheduler-token");
    config.call_timeout = Duration::from_millis(200);
    let client = SchedulerPortClient::new(&config).unwrap();

    let register = tokio::time::timeout(LIMIT, client.register_worker(worker("hung")))
        .await
        .expect("the client gives up by itself, it does not hang");
    let error = register.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");

    let list = tokio::time::timeout(LIMIT, client.get_registered_workers())
        .await
        .expect("the client gives up by itself, it does not hang");
    assert!(list.unwrap_err().is_retryable());
}
