//! The simulator against reality, with real `hodei agent` processes:
//! - `hodei job export` writes a trace of the jobs a real server ran, and `hodei simulate
//!   --trace` replays it;
//! - fidelity: one small trace, two tenants of weights 3 and 1, a dynamic local pool, both
//!   simulated and submitted for real at the trace's offsets; the job count, the tenants'
//!   shares of the first starts, the start order and the peak workers agree within the
//!   tolerances the README states. Nothing here asserts wall-clock speed: the real waits
//!   are printed next to the simulated ones, not compared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use hodei_core::{JobId, JobSpec, JobState, Priority, SlaClass, TenantName};
use hodei_server::{Server, TenantSettings};
use hodei_sim::trace::{self, Format, TraceJob};
use hodei_testkit::wait_for;

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

fn tenant(name: &str, weight: u32) -> TenantSettings {
    TenantSettings {
        name: name.to_owned(),
        weight: Some(weight),
        ..TenantSettings::default()
    }
}

/// The job a trace record stands for: sleeps its run time, exits with its code.
fn spec_of(job: &TraceJob) -> JobSpec {
    let mut spec = JobSpec::new(hodei_core::Command::Script(format!(
        "sleep {:.3}; exit {}",
        job.run_s, job.exit_code
    )));
    spec.tenant = TenantName::new(job.tenant.as_str()).unwrap();
    spec.priority = Priority::new(job.priority).unwrap();
    spec.sla_class = job.sla_class.parse::<SlaClass>().unwrap();
    spec.requirements.labels = job.labels.clone();
    spec
}

async fn wait_all(server: &Server, ids: &[JobId], limit: Duration) -> Vec<hodei_core::Job> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(
            wait_for(&format!("job {id} to end"), limit, || async {
                server
                    .jobs()
                    .get(id)
                    .await
                    .unwrap()
                    .filter(|job| job.state.is_terminal())
            })
            .await,
        );
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_for_real_export_as_a_trace_that_the_simulator_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 3);
    config.tenant_list = vec![tenant("web", 3), tenant("data", 1)];
    let server = start_anywhere(config).await;

    // Twelve jobs of two tenants: priorities, SLA classes, a label, one failing.
    let mut ids = Vec::new();
    for i in 0..12u32 {
        let record = TraceJob {
            submit_offset_s: 0.0,
            tenant: if i % 3 == 0 { "data" } else { "web" }.to_owned(),
            queue: "default".to_owned(),
            priority: if i == 5 { 50 } else { 0 },
            sla_class: if i == 5 { "high" } else { "medium" }.to_owned(),
            cpu: 1,
            memory_mb: 0,
            labels: if i == 7 {
                BTreeMap::from([("pool".to_owned(), "default".to_owned())])
            } else {
                BTreeMap::new()
            },
            run_s: 0.3,
            exit_code: i32::from(i == 4) * 3,
        };
        ids.push(server.jobs().submit(spec_of(&record)).await.unwrap().id);
    }
    // One that never starts: its pool does not exist (allowed pending), then cancelled.
    let out = hodei(
        &server,
        &[
            "job",
            "submit",
            "--tenant",
            "web",
            "--pool",
            "gpu",
            "--allow-pending",
            "--",
            "true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pending = text(&out.stdout).trim().to_owned();
    let jobs = wait_all(&server, &ids, Duration::from_secs(120)).await;
    assert_eq!(
        jobs.iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        11,
        "{:?}",
        jobs.iter().map(|j| (&j.id, j.state)).collect::<Vec<_>>()
    );
    let out = hodei(&server, &["job", "cancel", &pending]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // CSV to a file.
    let csv = dir.path().join("history.csv");
    let out = hodei(
        &server,
        &[
            "job",
            "export",
            "--since",
            "1h",
            "--file",
            csv.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("12 jobs exported")
            && text(&out.stderr).contains("1 ended without starting"),
        "{}",
        text(&out.stderr)
    );
    let records = trace::read_file(&csv).unwrap();
    assert_eq!(records.len(), 12);
    let by_tenant = |name: &str| records.iter().filter(|r| r.tenant.as_str() == name).count();
    assert_eq!((by_tenant("web"), by_tenant("data")), (8, 4));
    // Run times are the server's start and end records: on a loaded machine an agent's
    // start report can reach the server late, so only the longest must show the sleep.
    assert!(
        records.iter().any(|r| r.run_ms >= 300),
        "run times: the sleep at least, {:?}",
        records.iter().map(|r| r.run_ms).collect::<Vec<_>>()
    );
    assert_eq!(records.iter().filter(|r| r.exit_code == 3).count(), 1);
    assert!(
        records
            .iter()
            .any(|r| r.priority.get() == 50 && r.sla_class == SlaClass::High)
    );
    assert!(
        records
            .iter()
            .any(|r| r.requirements.labels.get("pool").map(String::as_str) == Some("default"))
    );
    // Offsets are times of day (from 00:00 UTC), within a second of each other here.
    let first = records[0].submit_ms;
    assert!(records.iter().all(|r| r.submit_ms - first < 60_000));

    // JSON Lines on stdout, one tenant.
    let out = hodei(
        &server,
        &["job", "export", "--tenant", "data", "-o", "jsonl"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert_eq!(lines.lines().count(), 4, "{lines}");
    for line in lines.lines() {
        let record: TraceJob = serde_json::from_str(line).unwrap();
        assert_eq!(record.tenant, "data");
    }
    // Bad input: a clear message, a non-zero exit.
    let out = hodei(&server, &["job", "export", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--since"),
        "{}",
        text(&out.stderr)
    );
    let out = hodei(&server, &["job", "export", "-o", "json"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("jsonl"), "{}", text(&out.stderr));

    // The export replays in the simulator against the same pool.
    let sim_config = dir.path().join("same.toml");
    std::fs::write(
        &sim_config,
        "name = \"same\"\n[[pool]]\nname = \"default\"\nprovider = \"local\"\nkind = \"static\"\n\
         size = 3\n\n[[tenant]]\nname = \"web\"\nweight = 3\n\n[[tenant]]\nname = \"data\"\nweight = 1\n",
    )
    .unwrap();
    let out = Command::new(HODEI)
        .args([
            "simulate",
            "--trace",
            csv.to_str().unwrap(),
            "--config",
            sim_config.to_str().unwrap(),
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &reports[0];
    assert_eq!(report["jobs"], 12);
    assert_eq!(
        (report["refused"].as_u64(), report["unstarted"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(report["busy_worker_seconds"].as_f64().unwrap() >= 12.0 * 0.3);
    assert_eq!(report["peak_workers"], 3);
    server.shutdown().await.unwrap();
}

/// The fidelity trace: a saturating burst of both tenants (weights 3 and 1), then a
/// trickle; 0.3 to 0.5 s jobs.
fn fidelity_trace() -> Vec<TraceJob> {
    let mut jobs = Vec::new();
    let record = |offset: f64, tenant: &str, run_s: f64| TraceJob {
        submit_offset_s: offset,
        tenant: tenant.to_owned(),
        queue: "default".to_owned(),
        priority: 0,
        sla_class: "medium".to_owned(),
        cpu: 1,
        memory_mb: 0,
        labels: BTreeMap::new(),
        run_s,
        exit_code: 0,
    };
    // 120 jobs in 3 s, alternating tenants.
    for i in 0..120u32 {
        let tenant = if i % 2 == 0 { "alpha" } else { "beta" };
        jobs.push(record(
            f64::from(i) * 0.025,
            tenant,
            0.3 + f64::from(i % 3) * 0.1,
        ));
    }
    // Then 80 jobs from 10 s to 30 s, one every 0.25 s.
    for i in 0..80u32 {
        let tenant = if i % 4 == 0 { "beta" } else { "alpha" };
        jobs.push(record(10.0 + f64::from(i) * 0.25, tenant, 0.3));
    }
    jobs
}

/// Fraction of the pairs of jobs both lists start in the same order (1: the same order).
fn concordance(sim: &[usize], real: &[usize]) -> f64 {
    let rank_of = |order: &[usize]| {
        let mut rank = vec![usize::MAX; order.len()];
        for (r, &j) in order.iter().enumerate() {
            rank[j] = r;
        }
        rank
    };
    let (a, b) = (rank_of(sim), rank_of(real));
    let (mut same, mut pairs) = (0u64, 0u64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            pairs += 1;
            if (a[i] < a[j]) == (b[i] < b[j]) {
                same += 1;
            }
        }
    }
    same as f64 / pairs as f64
}

fn share_of(order: &[usize], jobs: &[TraceJob], tenant: &str, first: usize) -> f64 {
    order[..first]
        .iter()
        .filter(|&&j| jobs[j].tenant == tenant)
        .count() as f64
        / first as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_agrees_with_real_agents_on_a_small_trace() {
    let dir = tempfile::tempdir().unwrap();
    let records = fidelity_trace();
    let trace_path = dir.path().join("fidelity.csv");
    trace::write(
        &records,
        Format::Csv,
        std::fs::File::create(&trace_path).unwrap(),
    )
    .unwrap();
    // The same pool and tenants, in the simulator's TOML and then in the server.
    let sim_config: hodei_sim::SimConfig = toml::from_str(
        r#"
name = "fidelity"
[[pool]]
name = "local"
provider = "local"
kind = "dynamic"
max = 4
idle_timeout = 1
[pool.scaling]
scale_up_cooldown = 0
scale_down_cooldown = 0
max_decisions_per_minute = 1000

[[tenant]]
name = "alpha"
weight = 3

[[tenant]]
name = "beta"
weight = 1

[sim]
pass_interval_ms = 100
sample_interval_s = 1
"#,
    )
    .unwrap();
    sim_config.check().unwrap();
    let checked = trace::read_file(&trace_path).unwrap();
    let sim = hodei_sim::simulate(&sim_config, &checked).unwrap();

    let mut config = config(dir.path(), 0);
    config.pools = sim_config.pools.clone();
    config.tenant_list = vec![tenant("alpha", 3), tenant("beta", 1)];
    config.tenants.auto_create = false;
    config.autoscaler.interval = Duration::from_millis(100);
    config.agents.heartbeat_interval = Duration::from_millis(200);
    let server = start_anywhere(config).await;
    let peak = Arc::new(AtomicU32::new(0));
    let watcher = {
        let pools = server.pools().clone();
        let seen = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(status) = pools.get("local") {
                    let c = status.counts;
                    seen.fetch_max(c.idle + c.busy + c.starting, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Submitted at the trace's offsets.
    let begin = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for record in &records {
        tokio::time::sleep_until(begin + Duration::from_secs_f64(record.submit_offset_s)).await;
        ids.push(server.jobs().submit(spec_of(record)).await.unwrap().id);
    }
    let jobs = wait_all(&server, &ids, Duration::from_secs(300)).await;
    watcher.abort();
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
    let mut real_order: Vec<usize> = (0..jobs.len()).collect();
    real_order.sort_by_key(|&i| (jobs[i].first_started_at.unwrap(), jobs[i].sequence));
    let real_waits: Vec<f64> = {
        let mut w: Vec<f64> = jobs
            .iter()
            .map(|j| {
                j.first_started_at
                    .unwrap()
                    .duration_since(j.submitted_at)
                    .unwrap_or_default()
                    .as_secs_f64()
            })
            .collect();
        w.sort_by(f64::total_cmp);
        w
    };
    let at = |w: &[f64], q: f64| w[((q * w.len() as f64).ceil() as usize).clamp(1, w.len()) - 1];

    let first = 60;
    let (sim_alpha, real_alpha) = (
        share_of(&sim.start_order, &records, "alpha", first),
        share_of(&real_order, &records, "alpha", first),
    );
    let order = concordance(&sim.start_order, &real_order);
    let real_peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "fidelity: jobs {} / {}; alpha's share of the first {first} starts {:.1}% / {:.1}%; \
         start order concordance {:.3}; peak workers {} / {}; wait p50 {:.2} / {:.2} s, \
         p95 {:.2} / {:.2} s (simulated / real)",
        sim.jobs,
        jobs.len(),
        sim_alpha * 100.0,
        real_alpha * 100.0,
        order,
        sim.peak_workers,
        real_peak,
        sim.wait_seconds.p50,
        at(&real_waits, 0.5),
        sim.wait_seconds.p95,
        at(&real_waits, 0.95),
    );
    assert_eq!(sim.jobs, jobs.len());
    assert_eq!(
        sim.start_order.len(),
        jobs.len(),
        "every job started in both"
    );
    // Shares of the first 60 starts (both tenants backlogged): within 10 points.
    assert!(
        (sim_alpha - real_alpha).abs() <= 0.10,
        "alpha: {sim_alpha} simulated, {real_alpha} real"
    );
    // Start order: at least 90% of the pairs of jobs start in the same order.
    assert!(order >= 0.90, "concordance {order}");
    // Peak workers: the burst fills the pool to its max in both.
    assert_eq!((sim.peak_workers, real_peak), (4, 4));
    assert!(sim.scaling_decisions.up >= 1 && sim.scaling_decisions.down >= 1);
    server.shutdown().await.unwrap();
}
