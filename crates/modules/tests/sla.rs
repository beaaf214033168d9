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
use hodei_core::{
    Command, JobId, JobSpec, JobState, ProviderKind, SlaClass, Worker, WorkerCapabilities,
    WorkerId, WorkerSpec,
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
