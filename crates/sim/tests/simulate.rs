//! The simulator end to end on small traces: every job runs, latencies are modelled,
//! results are reproducible, fair share holds under saturation, and the shipped baselines
//! parse and run.

#![allow(clippy::unwrap_used)] // Helpers of tests.

use hodei_sim::generate::{Params, Profile, generate};
use hodei_sim::trace::{self, Checked, Format};
use hodei_sim::{SimConfig, simulate};

fn checked(jobs: &[hodei_sim::trace::TraceJob]) -> Vec<Checked> {
    let mut bytes = Vec::new();
    trace::write(jobs, Format::JsonLines, &mut bytes).unwrap();
    trace::read(bytes.as_slice(), Format::JsonLines).unwrap()
}

fn config(text: &str) -> SimConfig {
    let config: SimConfig = toml::from_str(text).unwrap();
    config.check().unwrap();
    config
}

const DYNAMIC: &str = r#"
name = "dyn"
[[pool]]
name = "p"
provider = "kubernetes"
kind = "dynamic"
max = 50
idle_timeout = 30
[pool.template.capabilities]
cpu_cores = 4
memory_mb = 8192
[pool.scaling]
scale_up_cooldown = 0
max_decisions_per_minute = 60
"#;

#[test]
fn every_job_runs_and_start_latency_shows_in_the_first_wait() {
    let jobs = checked(&generate(Params {
        profile: Profile::Steady,
        tenants: 3,
        jobs: 300,
        seed: 3,
    }));
    let report = simulate(&config(DYNAMIC), &jobs).unwrap();
    assert_eq!(report.jobs, 300);
    assert_eq!((report.refused, report.unstarted), (0, 0));
    // A pool at zero: the first job waits for a pod (5 s) at least.
    assert!(report.wait_seconds.max >= 5.0, "{:?}", report.wait_seconds);
    assert!(report.scaling_decisions.up > 0 && report.scaling_decisions.down > 0);
    assert!(report.peak_workers <= 50);
    // Busy from the assignment: the run plus the dispatch latency (10 ms).
    let busy: f64 = jobs.iter().map(|j| j.run_ms as f64 / 1000.0 + 0.01).sum();
    assert!(
        (report.busy_worker_seconds - busy).abs() < 1.0 + busy * 1e-6,
        "busy {} against {busy} of run time",
        report.busy_worker_seconds
    );
    assert!(report.idle_worker_seconds > 0.0 && report.starting_worker_seconds > 0.0);
    // The same inputs, the same figures.
    let again = simulate(&config(DYNAMIC), &jobs).unwrap();
    assert_eq!(format!("{report:?}"), format!("{again:?}"));
}

#[test]
fn a_job_no_pool_can_hold_is_refused_as_the_server_would() {
    let jobs = checked(&generate(Params {
        profile: Profile::Steady,
        tenants: 2,
        jobs: 200,
        seed: 4,
    }));
    let four_cores = jobs.iter().filter(|j| j.requirements.cpu_cores > 2).count();
    assert!(four_cores > 0);
    let small = DYNAMIC
        .replace("cpu_cores = 4", "cpu_cores = 2")
        .replace("8192", "4096");
    let report = simulate(&config(&small), &jobs).unwrap();
    assert_eq!(report.refused_no_pool_fits, four_cores);
    assert_eq!(report.wait_seconds.jobs, 200 - four_cores);
    assert_eq!(report.unstarted, 0);
}

#[test]
fn a_faster_provider_waits_less() {
    let jobs = checked(&generate(Params {
        profile: Profile::Bursty,
        tenants: 3,
        jobs: 500,
        seed: 5,
    }));
    let slow = simulate(&config(DYNAMIC), &jobs).unwrap();
    let fast = simulate(
        &config(&DYNAMIC.replace("\"kubernetes\"", "\"local\"")),
        &jobs,
    )
    .unwrap();
    assert!(
        fast.wait_seconds.p95 < slow.wait_seconds.p95,
        "local {} against kubernetes {}",
        fast.wait_seconds.p95,
        slow.wait_seconds.p95
    );
}

#[test]
fn shares_follow_weights_under_saturation() {
    // Three tenants, weights 5, 2 and 1, each with far more work than 4 workers can do.
    let mut traced = Vec::new();
    for (tenant, n) in [("gold", 400), ("silver", 400), ("bronze", 400)] {
        for i in 0..n {
            traced.push(hodei_sim::trace::TraceJob {
                submit_offset_s: f64::from(i) * 0.01,
                tenant: tenant.into(),
                queue: "default".into(),
                priority: 0,
                sla_class: "medium".into(),
                cpu: 1,
                memory_mb: 0,
                labels: Default::default(),
                run_s: 10.0,
                exit_code: 0,
            });
        }
    }
    let jobs = checked(&traced);
    let config = config(
        r#"
[[pool]]
name = "s"
provider = "local"
size = 4
[[tenant]]
name = "gold"
weight = 5
[[tenant]]
name = "silver"
weight = 2
[[tenant]]
name = "bronze"
weight = 1
"#,
    );
    let report = simulate(&config, &jobs).unwrap();
    assert!(report.saturated_starts > 500);
    for (tenant, share) in &report.tenant_shares {
        assert!(
            share.deviation_pp.abs() < 2.0,
            "{tenant}: {share:?} ({:?})",
            report.tenant_shares
        );
    }
    // Gold's five shares take its jobs through well before bronze's.
    let waits = &report.wait_seconds_by_tenant;
    assert!(
        waits["gold"].p95 < waits["bronze"].p50,
        "gold {:?}, bronze {:?}",
        waits["gold"],
        waits["bronze"]
    );
}

#[test]
fn the_shipped_baselines_load_and_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/simulate");
    let jobs = checked(&generate(Params {
        profile: Profile::CiDay,
        tenants: 10,
        jobs: 2000,
        seed: 1,
    }));
    for name in ["static", "idle-count", "arc", "hodei"] {
        let config = SimConfig::load(&dir.join(format!("{name}.toml"))).unwrap();
        assert_eq!(config.name(), name);
        let report = simulate(&config, &jobs).unwrap();
        assert_eq!(report.unstarted, 0, "{name}");
    }
}

#[test]
fn the_html_page_has_two_plots_per_configuration_and_their_names() {
    let jobs = checked(&generate(Params {
        profile: Profile::CiDay,
        tenants: 3,
        jobs: 500,
        seed: 5,
    }));
    let dynamic = simulate(&config(DYNAMIC), &jobs).unwrap();
    let fixed = simulate(
        &config(
            &DYNAMIC
                .replace("name = \"dyn\"", "name = \"fixed <&> pool\"")
                .replace(
                    "kind = \"dynamic\"\nmax = 50",
                    "kind = \"static\"\nsize = 20",
                ),
        ),
        &jobs,
    )
    .unwrap();
    assert!(dynamic.samples.len() > 10, "samples for the time plot");
    let page = hodei_sim::html::page(&[dynamic, fixed]).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.trim_end().ends_with("</html>"));
    // Two plots per configuration: over time, and the waits.
    assert_eq!(page.matches("<svg").count(), 4);
    assert_eq!(page.matches("</svg>").count(), 4);
    assert_eq!(page.matches("queue depth and workers by state").count(), 2);
    assert_eq!(page.matches("wait from submission to start").count(), 2);
    assert!(page.contains("<h2>dyn</h2>"));
    // Names are escaped, never markup.
    assert!(page.contains("<h2>fixed &lt;&amp;&gt; pool</h2>"));
    assert!(!page.contains("fixed <&> pool"));
    // Self-contained: no script, nothing fetched.
    assert!(!page.contains("<script"));
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    // A line per series: the time plot draws polylines.
    assert!(page.matches("<polyline").count() >= 8);
}

/// Twenty 10 s jobs of one tenant at once on 10 idle workers, under `tenant_extra` and
/// `rest` (a `[tenants]` or `[sla]` table).
fn quota_run(tenant_extra: &str, rest: &str) -> hodei_sim::RunReport {
    let jobs: Vec<hodei_sim::trace::TraceJob> = (0..20)
        .map(|_| hodei_sim::trace::TraceJob {
            submit_offset_s: 60.0,
            tenant: "capped".into(),
            queue: "default".into(),
            priority: 0,
            sla_class: "medium".into(),
            cpu: 1,
            memory_mb: 0,
            labels: Default::default(),
            run_s: 10.0,
            exit_code: 0,
        })
        .collect();
    let text = format!(
        "name = \"q\"\n[[pool]]\nname = \"p\"\nprovider = \"local\"\nkind = \"static\"\nsize = 10\n\
         [pool.template.capabilities]\ncpu_cores = 4\nmemory_mb = 8192\n\n\
         [[tenant]]\nname = \"capped\"\n{tenant_extra}\n{rest}\n"
    );
    simulate(&config(&text), &checked(&jobs)).unwrap()
}

#[test]
fn tenant_quotas_burst_and_sla_deadlines_are_the_servers() {
    // No quota: all ten workers at once, two rounds.
    let free = quota_run("", "");
    assert!(free.wait_seconds.max < 11.0, "{:?}", free.wait_seconds);
    // A hard quota of 2 running jobs: ten rounds, the last starts 90 s after submission.
    let hard = quota_run("max_running_jobs = 2", "");
    assert!(hard.wait_seconds.max >= 90.0, "{:?}", hard.wait_seconds);
    // Soft, with nobody else waiting: it bursts to 2 x 2 = 4 at once, five rounds.
    let soft = quota_run(
        "max_running_jobs = 2\nsoft = [\"running_jobs\"]",
        "[tenants]\nburst_factor = 2.0",
    );
    assert!(
        (40.0..50.0).contains(&soft.wait_seconds.max),
        "{:?}",
        soft.wait_seconds
    );
    // [sla]: a 30 s deadline for medium jobs, missed by the quota's later rounds.
    let late = quota_run("max_running_jobs = 2", "[sla]\nmedium = \"30s\"");
    let medium = &late.sla_met_by_class["medium"];
    assert_eq!(medium.deadline_seconds, 30.0);
    // Rounds start at 0, 10, 20, 30 s (+ dispatch latency): the first three meet it.
    assert_eq!((medium.jobs, medium.met), (20, 6));
    assert_eq!(hard.sla_met_by_class["medium"].met, 20, "the default hour");
    // Bad values name the key.
    let bad: SimConfig = toml::from_str(
        "[[pool]]\nname = \"p\"\nprovider = \"local\"\nkind = \"static\"\nsize = 1\n\
         [[tenant]]\nname = \"x\"\nsoft = [\"cpu\"]\n",
    )
    .unwrap();
    let err = bad.check().unwrap_err();
    assert_eq!(err.field, "tenant[x].soft", "{err:?}");
}
