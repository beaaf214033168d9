//! Pools end to end with real agents: a burst into a dynamic pool scales it up to its max
//! and back to zero (local processes, and Docker containers on the real engine), a static
//! pool refills after a worker is killed, overflow spills to the next pool, and pool changes
//! at runtime (through the CLI) never kill a busy worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use hodei_core::pool::ScalingPolicy;
use hodei_core::{JobId, JobSpec, JobState, PoolSpec, ProviderKind};
use hodei_server::{Server, ServerConfig};
use hodei_testkit::wait_for;

fn script(text: &str) -> JobSpec {
    JobSpec::new(hodei_core::Command::Script(text.to_owned()))
}

fn for_pool(mut spec: JobSpec, pool: &str) -> JobSpec {
    spec.requirements
        .labels
        .insert("pool".into(), pool.to_owned());
    spec
}

/// A dynamic pool that reacts at once: no cooldowns, idle workers go after 1 s.
fn dynamic(name: &str, provider: ProviderKind, max: u32, cost: f64) -> PoolSpec {
    PoolSpec {
        idle_timeout: 1,
        cost_per_hour: cost,
        scaling: ScalingPolicy {
            scale_up_cooldown: 0,
            scale_down_cooldown: 0,
            max_decisions_per_minute: 1000,
            ..ScalingPolicy::default()
        },
        ..PoolSpec::autoscaled(name, provider, 0, max)
    }
}

fn fast(config: &mut ServerConfig) {
    config.autoscaler.interval = Duration::from_millis(100);
    config.agents.heartbeat_interval = Duration::from_millis(200);
    config.agents.unhealthy_after = 3;
    config.agents.remove_after = 25;
}

/// Workers of `pool` the server has: idle, busy, starting, unhealthy or leaving.
fn workers_of(server: &Server, pool: &str) -> u32 {
    server.pools().get(pool).map_or(0, |status| {
        let c = status.counts;
        c.idle + c.busy + c.starting + c.unhealthy + c.leaving
    })
}

/// Polls the pool's size until dropped; returns the largest seen.
fn watch_peak(
    server: &Server,
    pool: &'static str,
) -> (Arc<AtomicU32>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU32::new(0));
    let pools = server.pools().clone();
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(status) = pools.get(pool) {
                let c = status.counts;
                seen.fetch_max(c.idle + c.busy + c.starting, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (peak, task)
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

/// A sample of the server's `/metrics`, read with the testkit's parser.
async fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    hodei_testkit::metrics::sum_samples(&text, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

/// 40 jobs into an empty dynamic pool of max 8: it grows to exactly 8, runs them all and
/// shrinks back to 0 after the idle timeout.
async fn burst(config: ServerConfig, provider: ProviderKind) {
    let mut config = config;
    fast(&mut config);
    config.pools = vec![dynamic("burst", provider, 8, 0.36)];
    let server = start_anywhere(config).await;
    assert_eq!(workers_of(&server, "burst"), 0, "min 0: nothing pre-warmed");
    let (peak, watcher) = watch_peak(&server, "burst");

    let mut ids = Vec::new();
    for i in 0..40 {
        let job = for_pool(script(&format!("sleep 0.3; echo job {i}")), "burst");
        ids.push(server.jobs().submit(job).await.unwrap().id);
    }
    let jobs = wait_all(&server, &ids, Duration::from_secs(120)).await;
    assert!(
        jobs.iter().all(|job| job.state == JobState::Succeeded),
        "{:?}",
        jobs.iter()
            .map(|j| (&j.id, j.state, &j.reason))
            .collect::<Vec<_>>()
    );
    let workers_used: std::collections::BTreeSet<_> =
        jobs.iter().filter_map(|j| j.worker_id.clone()).collect();
    assert_eq!(peak.load(Ordering::Relaxed), 8, "scaled to max, not above");
    assert!(workers_used.len() >= 8, "{workers_used:?}");

    wait_for(
        "the pool to scale back to 0",
        Duration::from_secs(60),
        || async {
            (workers_of(&server, "burst") == 0 && server.scheduler().is_empty()).then_some(())
        },
    )
    .await;
    watcher.abort();
    assert!(
        metric(
            &server,
            "hodei_autoscaler_decisions_total",
            &[("pool", "burst"), ("action", "up")]
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &server,
            "hodei_autoscaler_decisions_total",
            &[("pool", "burst"), ("action", "down")]
        )
        .await
            >= 1.0
    );
    // Tenants are charged for the seconds their jobs held workers: 40 jobs of >= 0.3 s.
    let seconds = metric(
        &server,
        "hodei_tenant_worker_seconds_total",
        &[("tenant", "default"), ("pool", "burst")],
    )
    .await;
    assert!(seconds >= 40.0 * 0.3, "{seconds}");
    let cost = metric(
        &server,
        "hodei_tenant_cost_total",
        &[("tenant", "default"), ("pool", "burst")],
    )
    .await;
    assert!(
        (cost - seconds * 0.36 / 3600.0).abs() < 1e-6,
        "{cost} for {seconds} s"
    );
    let status = server.pools().get("burst").unwrap();
    assert!(
        status.decisions.iter().any(|d| d.action == "up"),
        "{:?}",
        status.decisions
    );
    assert!(status.decisions.iter().any(|d| d.action == "down"));
    // Repeated holds are one row with a count: never two hold rows in a row.
    assert!(
        status
            .decisions
            .windows(2)
            .all(|pair| !(pair[0].action == "hold" && pair[1].action == "hold")),
        "{:?}",
        status.decisions
    );
    assert!(status.worker_seconds > 0.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_a_local_dynamic_pool_to_its_max_and_back_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    burst(config(dir.path(), 0), ProviderKind::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_a_docker_pool_to_its_max_and_back_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0);
    // This run's containers only, so parallel runs on one engine never adopt each other's.
    let instance = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    config.docker = Some(hodei_server::DockerSection {
        instance: instance.clone(),
        stop_grace: Duration::from_secs(2),
        // The engine is shared: a worktree's tests can ask for its own image.
        image: std::env::var("HODEI_TEST_AGENT_IMAGE")
            .unwrap_or_else(|_| hodei_server::DockerSection::default().image),
        ..hodei_server::DockerSection::default()
    });
    burst(config, ProviderKind::Docker).await;
    // Scaled in means removed: no container of this run is left, running or exited.
    wait_for("the containers to be removed", LIMIT, || async {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.hodei.instance={instance}"),
            ])
            .output()
            .unwrap();
        (out.status.success() && out.stdout.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pool_refills_after_a_worker_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    fast(&mut config);
    let server = start_anywhere(config).await;
    let before = wait_for_registered_workers(&server, 2).await;
    for id in &before {
        wait_for_connected(&server, id).await;
    }
    let victim = &before[0];
    let pid = agent_pid(dir.path(), victim).unwrap();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );

    let replacement = wait_for("a replacement worker", Duration::from_secs(30), || async {
        let connected: Vec<_> = server
            .scheduler()
            .list()
            .into_iter()
            .filter(|w| w.connected && !before.contains(&w.worker.id))
            .map(|w| w.worker.id)
            .collect();
        connected.into_iter().next()
    })
    .await;
    assert_eq!(replacement.as_str().split('-').next(), Some("default"));
    let status = server.pools().get("default").unwrap();
    assert!(
        status
            .decisions
            .iter()
            .any(|d| d.action == "up" && d.count == 1),
        "{:?}",
        status.decisions
    );
    // The pool is whole again, and a job runs on it.
    let job = server
        .jobs()
        .submit(script("echo still here"))
        .await
        .unwrap();
    let done = wait_all(&server, &[job.id], LIMIT).await;
    assert_eq!(done[0].state, JobState::Succeeded);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_spills_from_the_cheap_pool_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0);
    fast(&mut config);
    config.pools = vec![
        dynamic("cheap", ProviderKind::Local, 2, 0.1),
        dynamic("dear", ProviderKind::Local, 4, 1.0),
    ];
    let server = start_anywhere(config).await;
    let (cheap_peak, cheap_watch) = watch_peak(&server, "cheap");
    let (dear_peak, dear_watch) = watch_peak(&server, "dear");
    // Jobs that name no pool: the cheap pool takes what it can, the rest spills over.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(server.jobs().submit(script("sleep 1")).await.unwrap().id);
    }
    let jobs = wait_all(&server, &ids, Duration::from_secs(60)).await;
    assert!(jobs.iter().all(|job| job.state == JobState::Succeeded));
    cheap_watch.abort();
    dear_watch.abort();
    assert_eq!(
        cheap_peak.load(Ordering::Relaxed),
        2,
        "cheap capacity first, to its max"
    );
    let dear = dear_peak.load(Ordering::Relaxed);
    assert!(
        (1..=4).contains(&dear),
        "the overflow went to the next pool: {dear}"
    );
    let pools_used: std::collections::BTreeSet<String> = jobs
        .iter()
        .filter_map(|j| j.worker_id.as_ref())
        .filter_map(|w| w.as_str().split('-').next().map(str::to_owned))
        .collect();
    assert_eq!(pools_used, ["cheap".to_owned(), "dear".to_owned()].into());
    server.shutdown().await.unwrap();
}

fn hodei(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(HODEI)
        .args(args)
        .args(["--server", server.url(), "--token", server.token()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_change_at_runtime_and_a_busy_worker_is_never_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2);
    fast(&mut config);
    let server = start_anywhere(config).await;
    wait_for_registered_workers(&server, 2).await;

    // A job holds one worker while the pool is made empty.
    let long = server
        .jobs()
        .submit(script("sleep 2; echo finished"))
        .await
        .unwrap();
    wait_for("the job to run", LIMIT, || async {
        let job = server.jobs().get(&long.id).await.unwrap()?;
        (job.state == JobState::Running).then_some(())
    })
    .await;
    let out = hodei(&server, &["pool", "scale", "default", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the idle worker to go", LIMIT, || async {
        let c = server.pools().get("default")?.counts;
        (c.idle == 0 && c.busy == 1).then_some(())
    })
    .await;
    let done = wait_all(&server, &[long.id], LIMIT).await;
    assert_eq!(
        done[0].state,
        JobState::Succeeded,
        "the busy worker finished its job"
    );
    wait_for("the busy worker to go after its job", LIMIT, || async {
        (workers_of(&server, "default") == 0).then_some(())
    })
    .await;

    // A new pool from a file, changed, then removed, all through the CLI.
    let file = dir.path().join("gpu.toml");
    std::fs::write(
        &file,
        "name = \"gpu\"\nprovider = \"local\"\nsize = 1\n[template.labels]\naccel = \"yes\"\n",
    )
    .unwrap();
    let out = hodei(&server, &["pool", "apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pool gpu created"));
    wait_for("the new pool's worker", LIMIT, || async {
        (server.pools().get("gpu")?.counts.idle == 1).then_some(())
    })
    .await;
    // The `[[pool]]` form of hodei.toml applies as it is.
    std::fs::write(
        &file,
        "[[pool]]\nname = \"gpu\"\nprovider = \"local\"\nsize = 2\n[pool.template]\nlabels = { accel = \"yes\" }\n",
    )
    .unwrap();
    let out = hodei(&server, &["pool", "apply", "-f", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pool gpu changed"));
    wait_for("the changed pool's workers", LIMIT, || async {
        (server.pools().get("gpu")?.counts.idle == 2).then_some(())
    })
    .await;
    let out = hodei(&server, &["pool", "get", "gpu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Recent decisions") && text.contains("up"),
        "{text}"
    );

    // Bad input is refused naming the field, and nothing changes.
    std::fs::write(
        &file,
        "name = \"gpu\"\nprovider = \"local\"\nkind = \"dynamic\"\nmin = 3\nmax = 2\n",
    )
    .unwrap();
    let out = hodei(&server, &["pool", "apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pool.min"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.pools().get("gpu").unwrap().spec.size, Some(2));
    // A provider this server lacks is refused saying how to switch it on.
    std::fs::write(&file, "name = \"boxes\"\nprovider = \"docker\"\nsize = 1\n").unwrap();
    let out = hodei(&server, &["pool", "apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("add a [docker] section"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = hodei(&server, &["pool", "rm", "gpu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the removed pool to drain", LIMIT, || async {
        server.pools().get("gpu").is_none().then_some(())
    })
    .await;
    assert!(server.store().get_pool("gpu").await.unwrap().is_none());
    server.shutdown().await.unwrap();
}
