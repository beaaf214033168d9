//! The job dispatcher over the in-memory store, the real in-process scheduler registry and
//! fake agents: submission and backpressure, matching, results, retries, cancellation,
//! worker loss, reuse and retirement, and recovery after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hodei_core::fence::FencePolicy;
use hodei_core::job::AttemptOutcome;
use hodei_core::{
    Command, JobId, JobSpec, JobState, Priority, ProviderKind, QueueConfig, QueueError, QueueName,
    Worker, WorkerCapabilities, WorkerId, WorkerSpec,
};
use hodei_modules::{
    Clock, JobError, JobMetrics, JobService, JobServiceConfig, Retired, SchedulerRegistry,
};
use hodei_ports::{JobFilter, LogChunk, LogStream, Store};
use hodei_testkit::agents::{FakeAgents, Sent};
use hodei_testkit::{MemoryStore, metric_value};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Harness {
    jobs: JobService,
    retired: mpsc::UnboundedReceiver<Retired>,
    agents: Arc<FakeAgents>,
    sent: mpsc::UnboundedReceiver<Sent>,
    registry: Arc<SchedulerRegistry>,
    store: Arc<MemoryStore>,
    metrics: Registry,
    stop: CancellationToken,
}

fn config() -> JobServiceConfig {
    JobServiceConfig {
        queues: vec![QueueConfig {
            name: QueueName::default(),
            capacity: 100,
        }],
        fence: FencePolicy {
            lease: Duration::from_secs(4),
            lease_margin: Duration::from_secs(1),
            result_grace: Duration::from_secs(1),
            ..FencePolicy::default()
        },
        tick: Duration::from_millis(50),
        ..JobServiceConfig::default()
    }
}

async fn start(
    config: JobServiceConfig,
    store: Arc<MemoryStore>,
    registry: Arc<SchedulerRegistry>,
) -> Harness {
    let (agents, sent) = FakeAgents::new();
    let mut metrics = Registry::default();
    let stop = CancellationToken::new();
    let (jobs, retired) = JobService::start(
        config,
        store.clone(),
        registry.clone(),
        agents.clone(),
        JobMetrics::new(&mut metrics),
        stop.clone(),
    )
    .await
    .unwrap();
    Harness {
        jobs,
        retired,
        agents,
        sent,
        registry,
        store,
        metrics,
        stop,
    }
}

async fn harness() -> Harness {
    start(
        config(),
        Arc::new(MemoryStore::new()),
        Arc::new(SchedulerRegistry::new()),
    )
    .await
}

fn worker(id: &str, cpu_cores: u32, labels: &[(&str, &str)]) -> Worker {
    let spec = WorkerSpec {
        capabilities: WorkerCapabilities {
            cpu_cores,
            memory_mb: 4096,
            ..WorkerCapabilities::default()
        },
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..WorkerSpec::default()
    };
    Worker::from_spec(
        WorkerId::new(id).unwrap(),
        &spec,
        ProviderKind::Local,
        SystemTime::now(),
    )
}

/// Registers a worker whose agent has its session open.
fn connect(registry: &SchedulerRegistry, worker: Worker) -> WorkerId {
    let id = worker.id.clone();
    registry.connect(worker, "test").unwrap();
    id
}

fn argv(args: &[&str]) -> JobSpec {
    JobSpec::new(Command::Argv(
        args.iter().map(|s| (*s).to_owned()).collect(),
    ))
}

async fn next_sent(h: &mut Harness) -> Sent {
    tokio::time::timeout(Duration::from_secs(5), h.sent.recv())
        .await
        .expect("the dispatcher sent something in time")
        .expect("the link is open")
}

async fn next_assignment(h: &mut Harness) -> (WorkerId, JobId) {
    match next_sent(h).await {
        Sent::Assign { worker, job } => (worker, job.id),
        other => panic!("expected an assignment, got {other:?}"),
    }
}

async fn job(h: &Harness, id: &JobId) -> hodei_core::Job {
    h.jobs.get(id).await.unwrap().expect("job exists")
}

/// Waits until the stored job reaches `state`.
async fn wait_state(h: &Harness, id: &JobId, state: JobState) -> hodei_core::Job {
    hodei_testkit::wait_for(
        &format!("job {id} to be {state}"),
        Duration::from_secs(10),
        || async {
            let job = job(h, id).await;
            (job.state == state).then_some(job)
        },
    )
    .await
}

/// Plays the agent: starts the job, writes output, exits with `code`.
async fn run_to_end(h: &Harness, worker: &WorkerId, id: &JobId, output: &str, code: i32) {
    h.jobs.job_accepted(worker.clone(), id.to_string(), 0).await;
    h.jobs
        .job_log(
            worker.clone(),
            LogChunk {
                job_id: id.clone(),
                attempt: 0,
                sequence: 0,
                stream: LogStream::Stdout,
                data: output.as_bytes().to_vec(),
            },
        )
        .await;
    h.jobs
        .job_result(
            worker.clone(),
            id.to_string(),
            0,
            AttemptOutcome::Exited(code),
            true,
        )
        .await;
}

#[tokio::test]
async fn a_job_runs_on_an_idle_worker_which_is_then_reused() {
    let mut h = harness().await;
    let w = connect(&h.registry, worker("w-1", 2, &[]));
    let first = h.jobs.submit(argv(&["echo", "one"])).await.unwrap();
    assert_eq!(first.state, JobState::Queued);
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((&to, &id), (&w, &first.id));
    assert_eq!(job(&h, &id).await.state, JobState::Assigned);
    run_to_end(&h, &w, &id, "one\n", 0).await;
    let done = wait_state(&h, &id, JobState::Succeeded).await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.attempts, 1);
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    let logs = h.jobs.logs(&id, 0, 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!((logs[0].attempt, &logs[0].data[..]), (1, &b"one\n"[..]));

    let second = h.jobs.submit(argv(&["echo", "two"])).await.unwrap();
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!(
        (&to, &id),
        (&w, &second.id),
        "the same warm worker is reused"
    );
    run_to_end(&h, &w, &id, "two\n", 0).await;
    wait_state(&h, &id, JobState::Succeeded).await;
    assert_eq!(
        metric_value(&h.metrics, "hodei_worker_reuses_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &h.metrics,
            "hodei_jobs_finished_total",
            &[("state", "succeeded")]
        ),
        Some(2.0)
    );
    h.stop.cancel();
}

#[tokio::test]
async fn a_full_queue_refuses_and_records_nothing() {
    let mut config = config();
    config.queues[0].capacity = 2;
    let h = start(
        config,
        Arc::new(MemoryStore::new()),
        Arc::new(SchedulerRegistry::new()),
    )
    .await;
    h.jobs.submit(argv(&["true"])).await.unwrap();
    h.jobs.submit(argv(&["true"])).await.unwrap();
    let refused = h.jobs.submit(argv(&["true"])).await.unwrap_err();
    assert!(
        matches!(
            refused,
            JobError::Queue(QueueError::Full { capacity: 2, .. })
        ),
        "{refused:?}"
    );
    let stored = h.store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(stored.len(), 2, "the refused job was not recorded");
    let mut unknown = argv(&["true"]);
    unknown.queue = QueueName::new("nightly").unwrap();
    assert!(matches!(
        h.jobs.submit(unknown).await.unwrap_err(),
        JobError::Queue(QueueError::UnknownQueue(_))
    ));
    assert!(matches!(
        h.jobs
            .submit(JobSpec::new(Command::Argv(Vec::new())))
            .await
            .unwrap_err(),
        JobError::Invalid(e) if e.field == "command"
    ));
    assert_eq!(
        metric_value(&h.metrics, "hodei_jobs_rejected_total", &[]),
        Some(1.0)
    );
    h.stop.cancel();
}

#[tokio::test]
async fn requirements_no_pool_can_meet_are_refused() {
    let mut config = config();
    config.pools.pool_shapes = vec![WorkerCapabilities {
        cpu_cores: 4,
        memory_mb: 8192,
        ..WorkerCapabilities::default()
    }];
    let h = start(
        config,
        Arc::new(MemoryStore::new()),
        Arc::new(SchedulerRegistry::new()),
    )
    .await;
    let mut big = argv(&["true"]);
    big.requirements.cpu_cores = 64;
    let error = h.jobs.submit(big).await.unwrap_err();
    assert!(
        matches!(&error, JobError::Unsatisfiable(why) if why.contains("64 cpu cores")),
        "{error:?}"
    );
    let mut fits = argv(&["true"]);
    fits.requirements.cpu_cores = 4;
    h.jobs.submit(fits).await.unwrap();
    h.stop.cancel();
}

#[tokio::test]
async fn a_job_that_fits_no_worker_waits_says_why_and_runs_when_one_arrives() {
    let mut h = harness().await;
    connect(&h.registry, worker("small", 1, &[]));
    let mut spec = argv(&["make"]);
    spec.requirements.labels = BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]);
    let waiting = h.jobs.submit(spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.agents.sent().is_empty(), "nothing fits yet");
    let why = h.jobs.why_waiting(waiting.id.clone()).await.unwrap();
    assert!(why.as_deref().unwrap_or("").contains("gpu"), "{why:?}");
    assert_eq!(job(&h, &waiting.id).await.state, JobState::Queued);

    let gpu = connect(&h.registry, worker("gpu-1", 8, &[("gpu", "yes")]));
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((to, id), (gpu, waiting.id));
    h.stop.cancel();
}

#[tokio::test]
async fn higher_priority_runs_first_and_fifo_within_a_priority() {
    let mut h = harness().await;
    let low = h.jobs.submit(argv(&["low"])).await.unwrap();
    let mut urgent = argv(&["urgent"]);
    urgent.priority = Priority::new(10).unwrap();
    let urgent = h.jobs.submit(urgent).await.unwrap();
    let low2 = h.jobs.submit(argv(&["low2"])).await.unwrap();
    let w = connect(&h.registry, worker("w-1", 2, &[]));
    let mut order = Vec::new();
    for _ in 0..3 {
        let (_, id) = next_assignment(&mut h).await;
        run_to_end(&h, &w, &id, "", 0).await;
        order.push(id);
    }
    assert_eq!(order, vec![urgent.id, low.id, low2.id]);
    h.stop.cancel();
}

#[tokio::test]
async fn a_failing_job_is_retried_then_dead_lettered_with_its_exit_code() {
    let mut h = harness().await;
    let w = connect(&h.registry, worker("w-1", 2, &[]));
    let mut spec = argv(&["false"]);
    spec.max_retries = 1;
    let submitted = h.jobs.submit(spec).await.unwrap();
    for attempt in 1..=2 {
        let (_, id) = next_assignment(&mut h).await;
        assert_eq!(job(&h, &id).await.attempts, attempt);
        run_to_end(&h, &w, &id, "", 3).await;
    }
    let done = wait_state(&h, &submitted.id, JobState::DeadLettered).await;
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.attempts, 2);

    let failing = h.jobs.submit(argv(&["false"])).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    run_to_end(&h, &w, &id, "", 2).await;
    let failed = wait_state(&h, &failing.id, JobState::Failed).await;
    assert_eq!(failed.exit_code, Some(2));
    assert_eq!(failed.reason.as_deref(), Some("exited with code 2"));
    h.stop.cancel();
}

#[tokio::test]
async fn cancel_a_queued_job_at_once_and_a_running_one_through_its_agent() {
    let mut h = harness().await;
    let queued = h.jobs.submit(argv(&["sleep", "60"])).await.unwrap();
    let cancelled = h.jobs.cancel(queued.id.clone()).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(job(&h, &queued.id).await.state, JobState::Cancelled);
    assert!(matches!(
        h.jobs.cancel(queued.id.clone()).await.unwrap_err(),
        JobError::AlreadyEnded { .. }
    ));

    let w = connect(&h.registry, worker("w-1", 2, &[]));
    let running = h.jobs.submit(argv(&["sleep", "60"])).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    h.jobs.job_accepted(w.clone(), id.to_string(), 0).await;
    wait_state(&h, &id, JobState::Running).await;
    h.jobs.cancel(running.id.clone()).await.unwrap();
    assert_eq!(
        next_sent(&mut h).await,
        Sent::Cancel {
            worker: w.clone(),
            job_id: running.id.clone()
        }
    );
    h.jobs
        .job_result(
            w.clone(),
            id.to_string(),
            0,
            AttemptOutcome::Cancelled,
            true,
        )
        .await;
    wait_state(&h, &running.id, JobState::Cancelled).await;
    assert!(matches!(
        h.jobs
            .cancel(JobId::new("j-none").unwrap())
            .await
            .unwrap_err(),
        JobError::NotFound(_)
    ));
    h.stop.cancel();
}

#[tokio::test]
async fn a_result_reported_twice_is_recorded_once() {
    let mut h = harness().await;
    let w = connect(&h.registry, worker("w-1", 2, &[]));
    let submitted = h.jobs.submit(argv(&["true"])).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    run_to_end(&h, &w, &id, "", 0).await;
    h.jobs
        .job_result(
            w.clone(),
            id.to_string(),
            0,
            AttemptOutcome::Exited(1),
            true,
        )
        .await;
    wait_state(&h, &submitted.id, JobState::Succeeded).await;
    // Let the duplicate through the dispatcher, then check nothing changed.
    let probe = h.jobs.submit(argv(&["true"])).await.unwrap();
    let (_, probe_id) = next_assignment(&mut h).await;
    assert_eq!(probe_id, probe.id);
    let done = job(&h, &id).await;
    assert_eq!((done.state, done.exit_code), (JobState::Succeeded, Some(0)));
    assert_eq!(
        metric_value(
            &h.metrics,
            "hodei_jobs_finished_total",
            &[("state", "succeeded")]
        ),
        Some(1.0)
    );
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_lost_worker_requeues_its_job_after_the_grace_period() {
    let mut h = harness().await;
    let gone = connect(&h.registry, worker("gone", 2, &[]));
    let submitted = h.jobs.submit(argv(&["true"])).await.unwrap();
    let (to, _) = next_assignment(&mut h).await;
    assert_eq!(to, gone);
    h.jobs
        .job_accepted(gone.clone(), submitted.id.to_string(), 0)
        .await;
    h.registry.disconnect(&gone);
    // Inside the grace period the job waits for its worker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(job(&h, &submitted.id).await.state, JobState::Running);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requeued = wait_state(&h, &submitted.id, JobState::Queued).await;
    assert!(requeued.reason.unwrap().contains("worker lost"));
    let other = connect(&h.registry, worker("other", 2, &[]));
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((to, &id), (other.clone(), &submitted.id));
    run_to_end(&h, &other, &id, "", 0).await;
    let done = wait_state(&h, &submitted.id, JobState::Succeeded).await;
    assert_eq!(done.attempts, 2);
    h.stop.cancel();
}

/// A clock the test moves by hand.
struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn the_dispatcher_stamps_everything_with_the_clock_it_is_given_and_fences_on_it() {
    let clock = Arc::new(ManualClock(1_000_000.into()));
    let (agents, mut sent) = FakeAgents::new();
    let registry = Arc::new(SchedulerRegistry::new());
    let stop = CancellationToken::new();
    let (jobs, _retired) = JobService::start_with_clock(
        config(),
        Arc::new(MemoryStore::new()),
        registry.clone(),
        agents,
        JobMetrics::new(&mut Registry::default()),
        clock.clone(),
        stop.clone(),
    )
    .await
    .unwrap();
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let w = connect(&registry, worker("w", 2, &[]));
    let submitted = jobs.submit(argv(&["true"])).await.unwrap();
    assert_eq!(submitted.submitted_at, at(1_000_000));
    let Some(Sent::Assign {
        worker,
        job: assigned,
    }) = sent.recv().await
    else {
        panic!("expected an assignment");
    };
    assert_eq!(worker, w);
    clock.set(1_000_500);
    jobs.job_accepted(w.clone(), assigned.id.to_string(), assigned.attempts)
        .await;
    let state = |jobs: JobService, id: JobId| async move { jobs.get(&id).await.unwrap().unwrap() };
    let running = hodei_testkit::wait_for("the start", Duration::from_secs(10), || async {
        let job = state(jobs.clone(), submitted.id.clone()).await;
        (job.state == JobState::Running).then_some(job)
    })
    .await;
    assert_eq!(running.started_at, Some(at(1_000_500)));
    // The worker leaves the registry: its attempt is lost after lease and margin (4 s + 1 s)
    // on the given clock, however much real time passes.
    registry.unregister(&w).unwrap();
    clock.set(1_004_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state(jobs.clone(), submitted.id.clone()).await.state,
        JobState::Running
    );
    clock.set(1_006_000);
    let requeued = hodei_testkit::wait_for("the loss", Duration::from_secs(10), || async {
        let job = state(jobs.clone(), submitted.id.clone()).await;
        (job.state == JobState::Queued).then_some(job)
    })
    .await;
    assert!(requeued.reason.unwrap().contains("worker lost"));
    stop.cancel();
}

async fn next_cancel(h: &mut Harness) -> (WorkerId, JobId) {
    match next_sent(h).await {
        Sent::Cancel { worker, job_id } => (worker, job_id),
        other => panic!("expected a cancel, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_assignment_not_accepted_in_time_is_withdrawn_without_spending_an_attempt() {
    let mut h = harness().await;
    let silent = connect(&h.registry, worker("a-silent", 2, &[]));
    // max_retries 0: a spent attempt would end the job at its first failure.
    let submitted = h.jobs.submit(argv(&["true"])).await.unwrap();
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!(to, silent);
    for _ in 0..19 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.registry.heartbeat(&silent);
    }
    assert_eq!(
        job(&h, &id).await.state,
        JobState::Assigned,
        "within the 10 s"
    );
    assert_eq!(next_cancel(&mut h).await, (silent.clone(), id.clone()));
    let withdrawn = wait_state(&h, &id, JobState::Queued).await;
    assert_eq!((withdrawn.attempts, withdrawn.withdrawn), (1, 1));
    assert_eq!(
        h.jobs.worker_activity(&silent),
        Some(hodei_core::WorkerState::Unhealthy)
    );
    // The unhealthy worker gets nothing more; a healthy one runs it, and fails it once.
    let other = connect(&h.registry, worker("b-other", 2, &[]));
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((to, &id), (other.clone(), &submitted.id));
    run_to_end(&h, &other, &id, "", 1).await;
    let done = wait_state(&h, &id, JobState::Failed).await;
    assert_eq!((done.attempts, done.withdrawn), (2, 1));
    assert_eq!(
        metric_value(&h.metrics, "hodei_job_assignments_withdrawn_total", &[]),
        Some(1.0)
    );
    h.stop.cancel();
}

#[tokio::test]
async fn an_agent_that_reconnects_running_an_assigned_job_has_accepted_it() {
    let mut h = harness().await;
    let w = connect(&h.registry, worker("w-1", 2, &[]));
    let submitted = h.jobs.submit(argv(&["true"])).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    // Its acceptance was lost with its session; it says it runs the job when it is back.
    h.registry.disconnect(&w);
    connect(&h.registry, worker("w-1", 2, &[]));
    h.jobs
        .agent_connected(w.clone(), vec![id.to_string()])
        .await;
    wait_state(&h, &id, JobState::Running).await;
    run_to_end(&h, &w, &id, "", 0).await;
    let done = wait_state(&h, &submitted.id, JobState::Succeeded).await;
    assert_eq!((done.attempts, done.withdrawn), (1, 0));
    h.stop.cancel();
}

#[tokio::test]
async fn a_result_for_an_attempt_given_up_on_is_stale_and_never_the_jobs_result() {
    let mut h = harness().await;
    let first = connect(&h.registry, worker("a-first", 2, &[]));
    let submitted = h.jobs.submit(argv(&["true"])).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    h.jobs.job_accepted(first.clone(), id.to_string(), 1).await;
    wait_state(&h, &id, JobState::Running).await;
    // Its provider confirms the worker dead: the attempt is lost at once.
    h.registry.disconnect(&first);
    h.jobs.worker_dead(first.clone()).await;
    wait_state(&h, &id, JobState::Queued).await;
    let second = connect(&h.registry, worker("b-second", 2, &[]));
    let (to, _) = next_assignment(&mut h).await;
    assert_eq!(to, second);
    h.jobs.job_accepted(second.clone(), id.to_string(), 2).await;
    wait_state(&h, &id, JobState::Running).await;
    // Attempt 1 reports late (its worker came back), and attempt 2 of the right worker
    // with a wrong number: both stale.
    h.jobs
        .job_result(
            first.clone(),
            id.to_string(),
            1,
            AttemptOutcome::Exited(0),
            true,
        )
        .await;
    h.jobs
        .job_result(
            second.clone(),
            id.to_string(),
            1,
            AttemptOutcome::Exited(0),
            true,
        )
        .await;
    h.jobs
        .job_result(
            second.clone(),
            id.to_string(),
            2,
            AttemptOutcome::Exited(7),
            true,
        )
        .await;
    let done = wait_state(&h, &submitted.id, JobState::Failed).await;
    assert_eq!((done.attempts, done.exit_code), (2, Some(7)));
    assert_eq!(
        metric_value(
            &h.metrics,
            "hodei_job_stale_reports_total",
            &[("kind", "result")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &h.metrics,
            "hodei_job_lost_attempts_total",
            &[("kind", "worker_dead")]
        ),
        Some(1.0)
    );
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_server_ends_a_job_past_its_timeout_when_its_agent_never_reports() {
    let mut h = harness().await;
    let mute = connect(&h.registry, worker("mute", 2, &[]));
    let spec = JobSpec {
        timeout: Some(Duration::from_secs(1)),
        ..argv(&["sleep", "100"])
    };
    let submitted = h.jobs.submit(spec).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    h.jobs.job_accepted(mute.clone(), id.to_string(), 1).await;
    wait_state(&h, &id, JobState::Running).await;
    // Default grace: 10 s past the job's own 1 s; the worker keeps heartbeating.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.registry.heartbeat(&mute);
    }
    assert_eq!(job(&h, &id).await.state, JobState::Running);
    assert_eq!(next_cancel(&mut h).await, (mute.clone(), id.clone()));
    let done = wait_state(&h, &submitted.id, JobState::TimedOut).await;
    assert_eq!(done.attempts, 1);
    h.stop.cancel();
}

#[tokio::test]
async fn an_assignment_that_cannot_be_delivered_goes_to_another_worker() {
    let mut h = harness().await;
    let unreachable = connect(&h.registry, worker("a-unreachable", 2, &[]));
    h.agents.make_unreachable(&unreachable);
    let submitted = h.jobs.submit(argv(&["true"])).await.unwrap();
    let other = connect(&h.registry, worker("b-other", 2, &[]));
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((to, id), (other, submitted.id));
    h.stop.cancel();
}

#[tokio::test]
async fn workers_are_retired_after_max_uses_or_a_failed_health_check() {
    let mut config = config();
    config.pools.max_uses = BTreeMap::from([("ephemeral".to_owned(), 1)]);
    let mut h = start(
        config,
        Arc::new(MemoryStore::new()),
        Arc::new(SchedulerRegistry::new()),
    )
    .await;
    let mut once = worker("once", 2, &[]);
    once.metadata.pool = Some("ephemeral".into());
    let once = connect(&h.registry, once);
    h.jobs.submit(argv(&["true"])).await.unwrap();
    let (_, id) = next_assignment(&mut h).await;
    run_to_end(&h, &once, &id, "", 0).await;
    let retired = tokio::time::timeout(Duration::from_secs(5), h.retired.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retired.worker_id, once);
    assert!(retired.reason.contains("max_uses"), "{}", retired.reason);
    // The retired worker gets no more jobs.
    let waiting = h.jobs.submit(argv(&["true"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(job(&h, &waiting.id).await.state, JobState::Queued);

    let sick = connect(&h.registry, worker("sick", 2, &[]));
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!(to, sick);
    h.jobs.job_accepted(sick.clone(), id.to_string(), 0).await;
    h.jobs
        .job_result(
            sick.clone(),
            id.to_string(),
            0,
            AttemptOutcome::Exited(0),
            false,
        )
        .await;
    let retired = tokio::time::timeout(Duration::from_secs(5), h.retired.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retired.worker_id, sick);
    assert!(retired.reason.contains("health check"));
    wait_state(&h, &id, JobState::Succeeded).await;
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_queued_jobs_wait_and_running_ones_finish_or_are_retried() {
    let store = Arc::new(MemoryStore::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let mut h = start(config(), store.clone(), registry.clone()).await;
    let stays = connect(&registry, worker("a-stays", 2, &[]));
    let dies = connect(&registry, worker("b-dies", 2, &[]));
    let first = h.jobs.submit(argv(&["one"])).await.unwrap();
    let second = h.jobs.submit(argv(&["two"])).await.unwrap();
    let mut on = BTreeMap::new();
    for _ in 0..2 {
        let (worker, id) = next_assignment(&mut h).await;
        h.jobs.job_accepted(worker.clone(), id.to_string(), 0).await;
        on.insert(worker, id);
    }
    let queued = h.jobs.submit(argv(&["three"])).await.unwrap();
    wait_state(&h, &on[&stays], JobState::Running).await;
    wait_state(&h, &on[&dies], JobState::Running).await;
    h.stop.cancel();
    // The server is gone: its sessions with it.
    registry.disconnect(&stays);
    registry.disconnect(&dies);
    drop(h);

    let mut h = start(config(), store.clone(), registry.clone()).await;
    assert_eq!(job(&h, &queued.id).await.state, JobState::Queued);
    // The surviving agent reconnects and says it still runs its job.
    registry.connect(worker("a-stays", 2, &[]), "test").unwrap();
    // It heartbeats (a worker silent for a lease gets no work).
    let beating = {
        let (registry, stays) = (registry.clone(), stays.clone());
        tokio::spawn(async move {
            loop {
                registry.heartbeat(&stays);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    h.jobs
        .agent_connected(stays.clone(), vec![on[&stays].to_string()])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        h.agents.sent().is_empty(),
        "a worker still running its job gets no second one"
    );
    // It finishes its job normally, then takes the queued one.
    h.jobs
        .job_result(
            stays.clone(),
            on[&stays].to_string(),
            0,
            AttemptOutcome::Exited(0),
            true,
        )
        .await;
    wait_state(&h, &on[&stays], JobState::Succeeded).await;
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((&to, &id), (&stays, &queued.id));
    run_to_end(&h, &stays, &id, "", 0).await;
    // The other agent never comes back: after the grace period its job runs again.
    let (to, id) = next_assignment(&mut h).await;
    assert_eq!((&to, &id), (&stays, &on[&dies]));
    assert_eq!(job(&h, &id).await.attempts, 2);
    run_to_end(&h, &stays, &id, "", 0).await;
    for id in [&first.id, &second.id, &queued.id] {
        let done = wait_state(&h, id, JobState::Succeeded).await;
        assert!(done.finished_at.is_some());
    }
    beating.abort();
    // Each result recorded once: three jobs, three successes since the restart.
    assert_eq!(
        metric_value(
            &h.metrics,
            "hodei_jobs_finished_total",
            &[("state", "succeeded")]
        ),
        Some(3.0)
    );
    h.stop.cancel();
}
