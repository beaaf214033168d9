//! SLA in the job dispatcher over the in-memory store and fake agents: a preemption stops the
//! lowest-class running job, requeues it without spending a retry and records it on both
//! jobs; jobs that opted out are never stopped; deadlines are stamped at submission. The
//! deadlines are wall-clock seconds (the SLA clock is the wall clock), so these tests wait
//! about a second for a job to be at risk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hodei_core::job::AttemptOutcome;
use hodei_core::sla::{PreemptionPolicy, SlaSettings};
use hodei_core::tenancy::{Tenant, Tenants};
use hodei_core::{
    Command, JobId, JobSpec, JobState, ProviderKind, SlaClass, TenantName, Worker,
    WorkerCapabilities, WorkerId, WorkerSpec,
};
use hodei_modules::{JobMetrics, JobService, JobServiceConfig, SchedulerRegistry};
use hodei_testkit::MemoryStore;
use hodei_testkit::agents::{FakeAgents, Sent};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Harness {
    jobs: JobService,
    sent: mpsc::UnboundedReceiver<Sent>,
    registry: Arc<SchedulerRegistry>,
    _stop: tokio_util::sync::DropGuard,
}

async fn harness(sla: SlaSettings) -> Harness {
    let (agents, sent) = FakeAgents::new();
    let registry = Arc::new(SchedulerRegistry::new());
    let stop = CancellationToken::new();
    let (jobs, _retired) = JobService::start(
        JobServiceConfig {
            tick: Duration::from_millis(50),
            sla,
            ..JobServiceConfig::default()
        },
        Arc::new(MemoryStore::new()),
        registry.clone(),
        agents,
        JobMetrics::new(&mut Registry::default()),
        stop.clone(),
    )
    .await
    .unwrap();
    Harness {
        jobs,
        sent,
        registry,
        _stop: stop.drop_guard(),
    }
}

fn connect(h: &Harness, id: &str) -> WorkerId {
    let spec = WorkerSpec {
        capabilities: WorkerCapabilities {
            cpu_cores: 2,
            memory_mb: 4096,
            ..WorkerCapabilities::default()
        },
        ..WorkerSpec::default()
    };
    let worker = Worker::from_spec(
        WorkerId::new(id).unwrap(),
        &spec,
        ProviderKind::Local,
        SystemTime::now(),
    );
    h.registry.connect(worker, "test").unwrap();
    WorkerId::new(id).unwrap()
}

fn spec(class: SlaClass) -> JobSpec {
    JobSpec {
        sla_class: class,
        ..JobSpec::new(Command::Argv(vec!["true".into()]))
    }
}

async fn next_sent(h: &mut Harness) -> Sent {
    tokio::time::timeout(Duration::from_secs(10), h.sent.recv())
        .await
        .expect("the dispatcher sent something in time")
        .expect("the link is open")
}

async fn job(h: &Harness, id: &JobId) -> hodei_core::Job {
    h.jobs.get(id).await.unwrap().unwrap()
}

/// Submits `spec`, waits for its assignment and plays the agent accepting it.
async fn running(h: &mut Harness, spec: JobSpec) -> (JobId, WorkerId) {
    let id = h.jobs.submit(spec).await.unwrap().id;
    let Sent::Assign { worker, job } = next_sent(h).await else {
        panic!("expected an assignment");
    };
    assert_eq!(job.id, id);
    h.jobs.job_accepted(worker.clone(), id.to_string(), 0).await;
    hodei_testkit::wait_for("the job to run", Duration::from_secs(5), || async {
        (self::job(h, &id).await.state == JobState::Running).then_some(())
    })
    .await;
    (id, worker)
}

fn settings(policy: PreemptionPolicy) -> SlaSettings {
    SlaSettings {
        critical: Duration::from_secs(1),
        preemption: policy,
        ..SlaSettings::default()
    }
}

#[tokio::test]
async fn an_at_risk_critical_job_preempts_the_lowest_class_and_the_victim_keeps_its_retries() {
    let mut h = harness(settings(PreemptionPolicy::AtRisk)).await;
    connect(&h, "w1");
    let (low, _) = running(&mut h, spec(SlaClass::Low)).await;
    connect(&h, "w2");
    let (best_effort, be_worker) = running(&mut h, spec(SlaClass::BestEffort)).await;

    let submitted = h.jobs.submit(spec(SlaClass::Critical)).await.unwrap();
    assert_eq!(
        submitted.deadline,
        Some(submitted.submitted_at + Duration::from_secs(1))
    );
    // At 90% of its second it is at risk: the best-effort job is told to stop, not the low.
    let Sent::Cancel { worker, job_id } = next_sent(&mut h).await else {
        panic!("expected a cancel");
    };
    assert_eq!((&worker, &job_id), (&be_worker, &best_effort));
    let stopped = job(&h, &best_effort).await;
    assert_eq!(stopped.preemptions.len(), 1);
    assert_eq!(stopped.preemptions[0].beneficiary, submitted.id);
    assert!(
        stopped.preemptions[0].reason.contains("at risk"),
        "{}",
        stopped.preemptions[0].reason
    );
    assert_eq!(job(&h, &submitted.id).await.preemptions.len(), 1);

    // The agent reports the stop as a cancel: it is a preemption, requeued with no retry
    // spent, and the critical job gets the worker.
    h.jobs
        .job_result(
            be_worker.clone(),
            best_effort.to_string(),
            1,
            AttemptOutcome::Cancelled,
            true,
        )
        .await;
    let Sent::Assign { worker, job } = next_sent(&mut h).await else {
        panic!("expected an assignment");
    };
    assert_eq!((&worker, &job.id), (&be_worker, &submitted.id));
    assert!(job.first_started_at.is_some());
    let requeued = self::job(&h, &best_effort).await;
    assert_eq!(requeued.state, JobState::Queued);
    assert_eq!((requeued.attempts, requeued.preempted), (1, 1));
    assert!(requeued.reason.unwrap().contains("no retry spent"));
    assert_eq!(self::job(&h, &low).await.state, JobState::Running);

    // The critical job ends; the preempted one runs again and succeeds on its only try.
    h.jobs
        .job_accepted(be_worker.clone(), submitted.id.to_string(), 1)
        .await;
    h.jobs
        .job_result(
            be_worker.clone(),
            submitted.id.to_string(),
            1,
            AttemptOutcome::Exited(0),
            true,
        )
        .await;
    let Sent::Assign { worker, job } = next_sent(&mut h).await else {
        panic!("expected an assignment");
    };
    assert_eq!(job.id, best_effort);
    h.jobs
        .job_accepted(worker.clone(), best_effort.to_string(), 2)
        .await;
    h.jobs
        .job_result(
            worker,
            best_effort.to_string(),
            2,
            AttemptOutcome::Exited(0),
            true,
        )
        .await;
    hodei_testkit::wait_for(
        "the preempted job to succeed",
        Duration::from_secs(5),
        || async { (self::job(&h, &best_effort).await.state == JobState::Succeeded).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn opted_out_jobs_and_never_policies_are_not_preempted() {
    for (policy, no_preempt) in [
        (PreemptionPolicy::AtRisk, true),
        (PreemptionPolicy::Never, false),
    ] {
        let mut h = harness(settings(policy)).await;
        connect(&h, "w1");
        let mut victim = spec(SlaClass::BestEffort);
        victim.no_preempt = no_preempt;
        let (victim, _) = running(&mut h, victim).await;
        let critical = h.jobs.submit(spec(SlaClass::Critical)).await.unwrap().id;
        // Well past its deadline: nothing was sent, both jobs are where they were.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(h.sent.try_recv().is_err(), "{policy}: something was sent");
        assert_eq!(job(&h, &victim).await.state, JobState::Running);
        let waiting = job(&h, &critical).await;
        assert_eq!(waiting.state, JobState::Queued, "{policy}");
        assert!(waiting.preemptions.is_empty());
    }
}

/// A job service that can be stopped and started again on the same store and registry, as
/// a server restart does; its metrics start from zero each time, as a process's do.
struct Restartable {
    jobs: JobService,
    sent: mpsc::UnboundedReceiver<Sent>,
    metrics: Registry,
    stop: CancellationToken,
}

async fn start_on(
    sla: SlaSettings,
    tenants: Tenants,
    store: Arc<MemoryStore>,
    registry: Arc<SchedulerRegistry>,
) -> Restartable {
    let (agents, sent) = FakeAgents::new();
    let mut metrics = Registry::default();
    let stop = CancellationToken::new();
    let (jobs, _retired) = JobService::start(
        JobServiceConfig {
            tick: Duration::from_millis(50),
            sla,
            tenants,
            ..JobServiceConfig::default()
        },
        store,
        registry,
        agents,
        JobMetrics::new(&mut metrics),
        stop.clone(),
    )
    .await
    .unwrap();
    Restartable {
        jobs,
        sent,
        metrics,
        stop,
    }
}

fn worker_of(id: &str, cpu: u32) -> Worker {
    let spec = WorkerSpec {
        capabilities: WorkerCapabilities {
            cpu_cores: cpu,
            memory_mb: 4096,
            ..WorkerCapabilities::default()
        },
        ..WorkerSpec::default()
    };
    Worker::from_spec(
        WorkerId::new(id).unwrap(),
        &spec,
        ProviderKind::Local,
        SystemTime::now(),
    )
}

async fn sent_by(r: &mut Restartable) -> Sent {
    tokio::time::timeout(Duration::from_secs(10), r.sent.recv())
        .await
        .expect("the dispatcher sent something in time")
        .expect("the link is open")
}

/// Submits `spec`, waits for its assignment and plays the agent accepting it.
async fn run_on(r: &mut Restartable, spec: JobSpec) -> (JobId, WorkerId) {
    let id = r.jobs.submit(spec).await.unwrap().id;
    let Sent::Assign { worker, job } = sent_by(r).await else {
        panic!("expected an assignment");
    };
    assert_eq!(job.id, id);
    r.jobs.job_accepted(worker.clone(), id.to_string(), 0).await;
    let jobs = r.jobs.clone();
    hodei_testkit::wait_for("the job to run", Duration::from_secs(5), || async {
        (jobs.get(&id).await.unwrap().unwrap().state == JobState::Running).then_some(())
    })
    .await;
    (id, worker)
}

fn sla_metric(r: &Restartable, name: &str, class: &str) -> f64 {
    hodei_testkit::metrics::metric_value(&r.metrics, name, &[("class", class)]).unwrap_or(0.0)
}

async fn wait_metric(r: &Restartable, name: &str, class: &str, value: f64) {
    hodei_testkit::wait_for(
        &format!("{name}{{class={class}}} to be {value}"),
        Duration::from_secs(10),
        || async { (sla_metric(r, name, class) == value).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_miss_counted_while_queued_is_not_counted_again_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let sla = settings(PreemptionPolicy::Never);
    let first = start_on(
        sla.clone(),
        Tenants::default(),
        store.clone(),
        registry.clone(),
    )
    .await;
    // No worker: the critical job misses its one-second deadline while queued.
    let id = first
        .jobs
        .submit(spec(SlaClass::Critical))
        .await
        .unwrap()
        .id;
    wait_metric(&first, "hodei_sla_jobs_missed_total", "critical", 1.0).await;
    assert!(first.jobs.get(&id).await.unwrap().unwrap().miss_counted);
    first.stop.cancel();
    drop(first);

    let mut second = start_on(sla, Tenants::default(), store, registry.clone()).await;
    // The restarted dispatcher has looked at the late job (it gauges it at risk)...
    wait_metric(&second, "hodei_sla_jobs_at_risk", "critical", 1.0).await;
    // ...and when it starts, at last, its miss is not counted again, nor is it a hit.
    registry.connect(worker_of("w1", 2), "test").unwrap();
    let Sent::Assign { job, .. } = sent_by(&mut second).await else {
        panic!("expected an assignment");
    };
    assert_eq!(job.id, id);
    assert!(job.first_started_at.is_some() && job.miss_counted);
    wait_metric(&second, "hodei_sla_jobs_at_risk", "critical", 0.0).await;
    assert_eq!(
        sla_metric(&second, "hodei_sla_jobs_missed_total", "critical"),
        0.0
    );
    assert_eq!(
        sla_metric(&second, "hodei_sla_jobs_met_total", "critical"),
        0.0
    );
}

#[tokio::test]
async fn a_victim_stopping_across_a_restart_is_requeued_without_spending_a_retry() {
    let store = Arc::new(MemoryStore::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let sla = settings(PreemptionPolicy::AtRisk);
    let mut first = start_on(
        sla.clone(),
        Tenants::default(),
        store.clone(),
        registry.clone(),
    )
    .await;
    registry.connect(worker_of("w1", 2), "test").unwrap();
    let (victim, w1) = run_on(&mut first, spec(SlaClass::BestEffort)).await;
    let critical = first
        .jobs
        .submit(spec(SlaClass::Critical))
        .await
        .unwrap()
        .id;
    let Sent::Cancel { job_id, .. } = sent_by(&mut first).await else {
        panic!("expected the victim to be stopped");
    };
    assert_eq!(job_id, victim);
    let stopping = first.jobs.get(&victim).await.unwrap().unwrap();
    assert_eq!(
        stopping.stopping_for.as_ref().map(|s| &s.job),
        Some(&critical)
    );
    // The server stops while the victim is still stopping; its session goes with it.
    first.stop.cancel();
    registry.disconnect(&w1);
    drop(first);

    let mut second = start_on(sla, Tenants::default(), store, registry.clone()).await;
    // The agent reconnects, still running the victim: it is told to stop again.
    registry.connect(worker_of("w1", 2), "test").unwrap();
    second
        .jobs
        .agent_connected(w1.clone(), vec![victim.to_string()])
        .await;
    let Sent::Cancel { worker, job_id } = sent_by(&mut second).await else {
        panic!("expected the stop to be sent again");
    };
    assert_eq!((&worker, &job_id), (&w1, &victim));
    // Its stop reports as a cancel: a preemption, requeued with its retry unspent.
    second
        .jobs
        .job_result(
            w1.clone(),
            victim.to_string(),
            1,
            AttemptOutcome::Cancelled,
            true,
        )
        .await;
    let Sent::Assign { worker, job } = sent_by(&mut second).await else {
        panic!("expected an assignment");
    };
    assert_eq!((&worker, &job.id), (&w1, &critical));
    let requeued = second.jobs.get(&victim).await.unwrap().unwrap();
    assert_eq!(requeued.state, JobState::Queued, "{:?}", requeued.reason);
    assert_eq!((requeued.attempts, requeued.preempted), (1, 1));
    assert_eq!(requeued.stopping_for, None);
    assert!(requeued.reason.unwrap().contains("no retry spent"));
    // The preemption was counted once, by the server that decided it.
    assert_eq!(
        hodei_testkit::metrics::metric_value(&second.metrics, "hodei_sla_preemptions_total", &[])
            .unwrap_or(0.0),
        0.0
    );
    second.stop.cancel();
}

#[tokio::test]
async fn a_non_preemptible_tenant_keeps_its_job_and_a_lower_class_one_is_chosen() {
    let store = Arc::new(MemoryStore::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let mut tenants = Tenants::default();
    let mut payments = Tenant::new(TenantName::new("payments").unwrap());
    payments.preemptible = false;
    tenants.configured.insert(payments.name.clone(), payments);
    let mut r = start_on(
        settings(PreemptionPolicy::AtRisk),
        tenants,
        store,
        registry.clone(),
    )
    .await;
    registry.connect(worker_of("w1", 2), "test").unwrap();
    let mut kept = spec(SlaClass::BestEffort);
    kept.tenant = TenantName::new("payments").unwrap();
    let (kept, _) = run_on(&mut r, kept).await;
    registry.connect(worker_of("w2", 2), "test").unwrap();
    let (low, w2) = run_on(&mut r, spec(SlaClass::Low)).await;
    let critical = r.jobs.submit(spec(SlaClass::Critical)).await.unwrap().id;
    // The best-effort job is the lowest class, but its tenant is not preemptible.
    let Sent::Cancel { worker, job_id } = sent_by(&mut r).await else {
        panic!("expected a stop");
    };
    assert_eq!((&worker, &job_id), (&w2, &low));
    let record = &r.jobs.get(&critical).await.unwrap().unwrap().preemptions[0];
    assert_eq!(record.victim, low);
    assert!(
        r.jobs
            .get(&kept)
            .await
            .unwrap()
            .unwrap()
            .preemptions
            .is_empty()
    );
    r.stop.cancel();
}

#[tokio::test]
async fn a_worker_the_pool_manager_is_creating_holds_off_preemption() {
    let store = Arc::new(MemoryStore::new());
    let registry = Arc::new(SchedulerRegistry::new());
    let mut r = start_on(
        settings(PreemptionPolicy::AtRisk),
        Tenants::default(),
        store,
        registry.clone(),
    )
    .await;
    registry.connect(worker_of("w1", 2), "test").unwrap();
    let (victim, w1) = run_on(&mut r, spec(SlaClass::BestEffort)).await;
    // A worker that fits the critical job is being created (not registered yet).
    let coming = hodei_core::IdleWorker::from(&worker_of("w-coming", 2));
    r.jobs.set_coming(vec![coming]).await;
    r.jobs.submit(spec(SlaClass::Critical)).await.unwrap();
    // It was at risk from 90% of its deadline on and is now past it, counted missed:
    // all that time nobody was stopped, because a fitting worker was coming.
    wait_metric(&r, "hodei_sla_jobs_missed_total", "critical", 1.0).await;
    assert!(r.sent.try_recv().is_err(), "nothing was stopped");
    // The creation failed (the list is replaced): now the running job is preempted.
    r.jobs.set_coming(Vec::new()).await;
    let Sent::Cancel { worker, job_id } = sent_by(&mut r).await else {
        panic!("expected a stop");
    };
    assert_eq!((&worker, &job_id), (&w1, &victim));
    r.stop.cancel();
}
