//! SLA classes end to end with real `hodei agent` processes and deadlines shortened through
//! `[sla]`: an at-risk job passes the jobs queued before it and starts within its deadline;
//! a critical job preempts a best-effort one, which is requeued without spending a retry and
//! later succeeds exactly once; with `preemption = "never"` the critical job waits and its
//! miss is counted. Start times are the jobs' recorded ones; nothing is timed by sleeping.
//!
//! The scenarios run one at a time (each starts its own server and two agents): their
//! deadlines are seconds long, and two servers' agents competing for the same cores would
//! only measure the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::*;
use hodei_core::sla::PreemptionPolicy;
use hodei_core::{Job, JobId, JobSpec, JobState, SlaClass};
use hodei_server::{Server, ServerConfig};
use hodei_testkit::wait_for;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hodei(server: &Server, args: &[&str]) -> Output {
    Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", server.url())
        .env("HODEI_TOKEN", server.token())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn script(class: SlaClass, text: &str) -> JobSpec {
    let mut spec = JobSpec::new(hodei_core::Command::Script(text.to_owned()));
    spec.sla_class = class;
    spec
}

async fn ready(config: ServerConfig) -> Server {
    let server = start_anywhere(config).await;
    for id in wait_for_registered_workers(&server, 2).await {
        wait_for_connected(&server, &id).await;
    }
    server
}

async fn job(server: &Server, id: &JobId) -> Job {
    server.jobs().get(id).await.unwrap().unwrap()
}

async fn wait_state(server: &Server, id: &JobId, what: &str, ok: fn(&Job) -> bool) -> Job {
    wait_for(what, Duration::from_secs(120), || async {
        server.jobs().get(id).await.unwrap().filter(ok)
    })
    .await
}

/// The value of one sample of `/metrics`, 0 when absent.
async fn metric(server: &Server, sample: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Both workers busy: starts `jobs` and waits until two of them run.
async fn occupy(server: &Server, jobs: Vec<JobSpec>) -> Vec<JobId> {
    let mut ids = Vec::new();
    for spec in jobs {
        ids.push(server.jobs().submit(spec).await.unwrap().id);
    }
    wait_for("both workers busy", LIMIT, || async {
        let mut running = 0;
        for id in &ids {
            if job(server, id).await.state == JobState::Running {
                running += 1;
            }
        }
        (running == 2).then_some(())
    })
    .await;
    ids
}

fn waited(job: &Job) -> Duration {
    job.first_started_at
        .unwrap()
        .duration_since(job.submitted_at)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_risk_job_passes_the_queue_and_starts_within_its_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    config.sla.high = Duration::from_secs(3);
    // Order alone, no preemption: the high job waits for a worker to free.
    config.sla.preemption = PreemptionPolicy::Never;
    let server = ready(config).await;

    // Two low jobs hold both workers, twenty more queue behind them: half a second each,
    // about five seconds of queue for two workers.
    let lows: Vec<JobSpec> = (0..22)
        .map(|_| script(SlaClass::Low, "sleep 0.5"))
        .collect();
    let low_ids = occupy(&server, lows).await;

    let submitted = hodei(
        &server,
        &["job", "submit", "--sla", "high", "--script", "echo urgent"],
    );
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let high_id = JobId::new(text(&submitted.stdout).trim()).unwrap();
    let high = wait_state(&server, &high_id, "the high job to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;

    eprintln!("the high job waited {:?} for its start", waited(&high));
    // It started within its deadline although twenty jobs were queued before it...
    assert_eq!(
        high.deadline,
        Some(high.submitted_at + Duration::from_secs(3))
    );
    assert!(
        waited(&high) <= Duration::from_secs(3),
        "the high job waited {:?}",
        waited(&high)
    );
    // ...and passed most of them: without the SLA it would have started after all twenty.
    let mut passed = 0;
    for id in &low_ids {
        let low = wait_state(&server, id, "a low job to end", |j| j.state.is_terminal()).await;
        assert_eq!(low.state, JobState::Succeeded, "{:?}", low.reason);
        if low.first_started_at.unwrap() > high.first_started_at.unwrap() {
            passed += 1;
        }
    }
    eprintln!("the high job passed {passed} of the 20 queued low jobs");
    assert!(passed >= 10, "the high job passed only {passed} low jobs");
    assert_eq!(
        metric(
            &server,
            "hodei_sla_jobs_met_total{class=\"high\",tenant=\"default\"}"
        )
        .await,
        1.0
    );

    // The CLI shows the deadline and that it was met, and lists jobs by class.
    let get = hodei(&server, &["job", "get", high_id.as_str()]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    let shown = text(&get.stdout);
    assert!(shown.contains("sla: high, deadline "), "{shown}");
    assert!(shown.contains("(met)"), "{shown}");
    let listed = hodei(&server, &["job", "ls", "--sla", "high"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    assert!(listed.contains(high_id.as_str()), "{listed}");
    assert!(!listed.contains(low_ids[0].as_str()), "{listed}");
    let bad = hodei(&server, &["job", "ls", "--sla", "urgent"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("unknown sla class"),
        "{}",
        text(&bad.stderr)
    );
    server.shutdown().await.unwrap();
}

/// A best-effort job that sleeps a minute on its first run and succeeds at once on any
/// later one, counting its runs in `dir`.
fn victim(dir: &Path, name: &str) -> JobSpec {
    let runs = dir.join(format!("{name}.runs"));
    let runs = runs.display();
    script(
        SlaClass::BestEffort,
        &format!(
            "echo run >> {runs}; if [ $(wc -l < {runs}) -ge 2 ]; then echo done; exit 0; fi; sleep 60"
        ),
    )
}

fn runs(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{name}.runs")))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_job_preempts_a_best_effort_one_which_later_succeeds_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    config.sla.critical = Duration::from_secs(5);
    config.sla.preemption = PreemptionPolicy::AtRisk;
    config.sla.preemption_grace = Duration::from_secs(1);
    let server = ready(config).await;

    let victims = occupy(
        &server,
        vec![victim(dir.path(), "first"), victim(dir.path(), "second")],
    )
    .await;
    let critical = script(SlaClass::Critical, "echo critical");
    let critical_id = server.jobs().submit(critical).await.unwrap().id;
    let critical = wait_state(&server, &critical_id, "the critical job to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    eprintln!(
        "the critical job waited {:?} for its start",
        waited(&critical)
    );
    assert!(
        waited(&critical) <= Duration::from_secs(5),
        "the critical job waited {:?}",
        waited(&critical)
    );
    assert_eq!(critical.preemptions.len(), 1, "{:?}", critical.preemptions);
    let record = &critical.preemptions[0];
    assert_eq!(record.beneficiary, critical_id);
    assert!(record.reason.contains("at risk"), "{}", record.reason);

    // Exactly one of the two was preempted: it was requeued without spending a retry (it
    // has none), ran again and succeeded, two runs in all.
    let victim_id = record.victim.clone();
    assert!(victims.contains(&victim_id));
    let preempted = wait_state(&server, &victim_id, "the preempted job to end", |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(
        preempted.state,
        JobState::Succeeded,
        "{:?}",
        preempted.reason
    );
    assert_eq!(preempted.spec.max_retries, 0);
    assert_eq!(preempted.attempts, 2);
    assert_eq!(preempted.preempted, 1);
    assert_eq!(preempted.preemptions.len(), 1);
    assert_eq!(preempted.preemptions[0].beneficiary, critical_id);
    let name = if victim_id == victims[0] {
        "first"
    } else {
        "second"
    };
    let other = if name == "first" { "second" } else { "first" };
    assert_eq!(runs(dir.path(), name), 2);
    let other_id = victims.iter().find(|id| **id != victim_id).unwrap();
    let untouched = job(&server, other_id).await;
    assert_eq!(untouched.state, JobState::Running);
    assert_eq!((untouched.attempts, untouched.preempted), (1, 0));
    assert_eq!(runs(dir.path(), other), 1);
    assert_eq!(
        metric(
            &server,
            "hodei_sla_preemptions_total{class=\"best_effort\",for_class=\"critical\"}"
        )
        .await,
        1.0
    );

    // `job get` shows the preemption on both jobs.
    let shown = text(&hodei(&server, &["job", "get", victim_id.as_str()]).stdout);
    assert!(shown.contains("preempted at "), "{shown}");
    assert!(shown.contains(critical_id.as_str()), "{shown}");
    let shown = text(&hodei(&server, &["job", "get", critical_id.as_str()]).stdout);
    assert!(shown.contains(&format!("preempted {victim_id}")), "{shown}");
    server.jobs().cancel(other_id.clone()).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preemption_the_critical_job_waits_and_the_miss_is_counted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    config.sla.critical = Duration::from_secs(5);
    config.sla.preemption = PreemptionPolicy::Never;
    let server = ready(config).await;

    let sleepers = occupy(
        &server,
        vec![
            script(SlaClass::BestEffort, "sleep 60"),
            script(SlaClass::BestEffort, "sleep 60"),
        ],
    )
    .await;
    let critical_id = server
        .jobs()
        .submit(script(SlaClass::Critical, "echo critical"))
        .await
        .unwrap()
        .id;
    let missed = "hodei_sla_jobs_missed_total{class=\"critical\",tenant=\"default\"}";
    wait_for("the miss to be counted", LIMIT, || async {
        (metric(&server, missed).await == 1.0).then_some(())
    })
    .await;
    let waiting = job(&server, &critical_id).await;
    assert_eq!(waiting.state, JobState::Queued);
    assert!(waiting.preemptions.is_empty());
    assert!(SystemTime::now() > waiting.deadline.unwrap());
    for id in &sleepers {
        let sleeper = job(&server, id).await;
        assert_eq!((sleeper.state, sleeper.attempts), (JobState::Running, 1));
    }
    let shown = text(&hodei(&server, &["job", "get", critical_id.as_str()]).stdout);
    assert!(shown.contains("missed by"), "{shown}");
    assert!(shown.contains("AT RISK"), "{shown}");

    // It starts when a worker frees, and the miss is counted once.
    server.jobs().cancel(sleepers[0].clone()).await.unwrap();
    let started = wait_state(&server, &critical_id, "the critical job to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    assert!(waited(&started) > Duration::from_secs(5));
    assert_eq!(metric(&server, missed).await, 1.0);
    assert_eq!(
        metric(
            &server,
            "hodei_sla_jobs_met_total{class=\"critical\",tenant=\"default\"}"
        )
        .await,
        0.0
    );
    server.jobs().cancel(sleepers[1].clone()).await.unwrap();
    server.shutdown().await.unwrap();
}

/// The class `hodei job get` shows, from its `sla: CLASS, deadline ...` line.
fn shown_class(server: &Server, id: &JobId) -> String {
    let get = hodei(server, &["job", "get", id.as_str()]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    let shown = text(&get.stdout);
    shown
        .lines()
        .find_map(|line| line.strip_prefix("sla: ")?.split(',').next())
        .unwrap_or_else(|| panic!("no sla line in {shown}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_class_takes_its_queues_then_its_tenants_default() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    config.jobs.queues.push(hodei_server::config::QueueSection {
        name: "release".into(),
        capacity: 100,
        sla_class: Some("high".into()),
    });
    let server = ready(config).await;

    // A tenant's default class and preemptibility, set at runtime through the CLI.
    let set = hodei(
        &server,
        &[
            "tenant",
            "set",
            "nightly",
            "--sla-class",
            "best-effort",
            "--preemptible",
            "false",
        ],
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let shown = text(&hodei(&server, &["tenant", "get", "nightly"]).stdout);
    assert!(
        shown.contains("sla: default class best_effort, never preempted"),
        "{shown}"
    );
    let bad = hodei(
        &server,
        &["tenant", "set", "nightly", "--sla-class", "urgent"],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("unknown sla class"),
        "{}",
        text(&bad.stderr)
    );

    // (submit arguments, the class the job gets)
    let cases: [(&[&str], &str); 5] = [
        (&[], "medium"),
        (&["--queue", "release"], "high"),
        (&["--tenant", "nightly"], "best_effort"),
        // The queue's default before the tenant's.
        (&["--tenant", "nightly", "--queue", "release"], "high"),
        // The job's own class before both.
        (
            &["--tenant", "nightly", "--queue", "release", "--sla", "low"],
            "low",
        ),
    ];
    let mut submitted = Vec::new();
    for (args, class) in cases {
        let mut argv = vec!["job", "submit"];
        argv.extend_from_slice(args);
        argv.extend(["--script", "echo classed"]);
        let out = hodei(&server, &argv);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let id = JobId::new(text(&out.stdout).trim()).unwrap();
        submitted.push((id, args, class));
    }
    for (id, args, class) in &submitted {
        let done = wait_state(&server, id, "a classed job to end", |j| {
            j.state.is_terminal()
        })
        .await;
        assert_eq!(
            done.state,
            JobState::Succeeded,
            "{args:?}: {:?}",
            done.reason
        );
        assert_eq!(done.spec.sla_class.as_str(), *class, "{args:?}");
        assert_eq!(shown_class(&server, id), *class, "{args:?}");
        // Its deadline is its class's.
        assert_eq!(
            done.deadline,
            Some(done.submitted_at + server_deadline(done.spec.sla_class)),
            "{args:?}"
        );
    }
    // The REST API takes the same defaults when `sla_class` is absent.
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{}/api/v1/jobs", server.url()))
        .bearer_auth(server.token())
        .json(&serde_json::json!({"script": "echo rest", "tenant": "nightly"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["sla"]["class"], "best_effort", "{created}");
    let rest_id = JobId::new(created["id"].as_str().unwrap()).unwrap();
    wait_state(&server, &rest_id, "the REST job to end", |j| {
        j.state.is_terminal()
    })
    .await;
    server.shutdown().await.unwrap();
}

/// The default `[sla]` deadline of a class (the test leaves `[sla]` at its defaults).
fn server_deadline(class: SlaClass) -> Duration {
    hodei_core::sla::SlaSettings::default().deadline(class)
}
