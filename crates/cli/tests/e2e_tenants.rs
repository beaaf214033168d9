//! Tenants end to end with real `hodei agent` processes: weighted fair share of scarce
//! workers, a hard running-jobs quota that holds with idle workers, and a soft one that
//! bursts only while nobody else waits. Shares and concurrency are counted from the jobs'
//! recorded start and end times, never timed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::*;
use hodei_core::{Job, JobSpec, JobState, TenantName};
use hodei_server::{Server, ServerConfig, TenantSettings};
use hodei_testkit::wait_for;

fn job(tenant: &str, text: &str) -> JobSpec {
    let mut spec = JobSpec::new(hodei_core::Command::Script(text.to_owned()));
    spec.tenant = TenantName::new(tenant).unwrap();
    spec
}

fn tenant(name: &str, weight: u32) -> TenantSettings {
    TenantSettings {
        name: name.into(),
        weight: Some(weight),
        ..TenantSettings::default()
    }
}

async fn ready(config: ServerConfig, workers: usize) -> Server {
    let server = start_anywhere(config).await;
    for id in wait_for_registered_workers(&server, workers).await {
        wait_for_connected(&server, &id).await;
    }
    server
}

/// Submits `specs` concurrently (so the dispatcher sees them as one burst), returns the ids
/// in submission order.
async fn submit_all(server: &Server, specs: Vec<JobSpec>) -> Vec<hodei_core::JobId> {
    let submissions = specs.into_iter().map(|spec| {
        let jobs = server.jobs().clone();
        tokio::spawn(async move { jobs.submit(spec).await.unwrap().id })
    });
    let mut ids = Vec::new();
    for handle in submissions.collect::<Vec<_>>() {
        ids.push(handle.await.unwrap());
    }
    ids
}

async fn wait_all(server: &Server, ids: &[hodei_core::JobId], limit: Duration) -> Vec<Job> {
    let mut jobs = Vec::new();
    for id in ids {
        let job = wait_for(&format!("job {id} to end"), limit, || async {
            server
                .jobs()
                .get(id)
                .await
                .unwrap()
                .filter(|job| job.state.is_terminal())
        })
        .await;
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.reason);
        jobs.push(job);
    }
    jobs
}

/// The most of `jobs` whose run intervals `[started_at, finished_at)` overlap, counted at
/// each start (a job only starts after its worker's previous job was recorded ended).
fn max_overlap(jobs: &[&Job]) -> usize {
    jobs.iter()
        .map(|job| {
            let at = job.started_at.unwrap();
            jobs.iter()
                .filter(|other| other.started_at.unwrap() <= at && at < other.finished_at.unwrap())
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_1_2_3_5_share_the_first_440_starts_within_two_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 4);
    let weights = [
        ("bronze-team", 1),
        ("silver-team", 2),
        ("gold-team", 3),
        ("platinum-team", 5),
    ];
    config.tenant_list = weights.iter().map(|(n, w)| tenant(n, *w)).collect();
    config.tenants.auto_create = false;
    let server = ready(config, 4).await;

    // 300 jobs each, interleaved, all at once.
    let specs: Vec<JobSpec> = (0..300)
        .flat_map(|_| weights.iter().map(|(name, _)| job(name, "sleep 0.05")))
        .collect();
    let ids = submit_all(&server, specs).await;
    let mut jobs = wait_all(&server, &ids, Duration::from_secs(300)).await;
    jobs.sort_by_key(|job| (job.started_at.unwrap(), job.sequence));
    let mut starts: BTreeMap<&str, usize> = BTreeMap::new();
    for job in &jobs[..440] {
        *starts.entry(job.spec.tenant.as_str()).or_default() += 1;
    }
    eprintln!("starts among the first 440: {starts:?}");
    for (name, weight) in weights {
        let share = starts.get(name).copied().unwrap_or(0) as f64 / 440.0 * 100.0;
        let expected = f64::from(weight) / 11.0 * 100.0;
        assert!(
            (share - expected).abs() <= 2.0,
            "{name}: {share:.1}% of the first 440 starts, expected {expected:.1}% ± 2: {starts:?}"
        );
    }
    // A tenant nobody configured is refused, naming the setting.
    let refused = server
        .jobs()
        .submit(job("stranger", "true"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("auto_create"), "{refused}");

    let metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hodei_tenant_jobs_started_total{tenant=\"platinum-team\"} 300"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "hodei_tenant_quota_rejections_total{tenant=\"stranger\",reason=\"unknown_tenant\"} 1"
        ),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_quota_holds_with_idle_workers_and_a_soft_one_bursts_only_when_nobody_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 4);
    config.tenant_list = vec![
        TenantSettings {
            max_running_jobs: Some(2),
            max_cpu: Some(4),
            ..tenant("capped", 1)
        },
        TenantSettings {
            max_running_jobs: Some(2),
            soft: vec!["running_jobs".into()],
            ..tenant("bursty", 5)
        },
        tenant("other", 1),
    ];
    let server = ready(config, 4).await;

    // Hard: 2 at most although 4 workers are idle, and `job get` says why the rest wait.
    let capped = submit_all(
        &server,
        (0..10).map(|_| job("capped", "sleep 0.3")).collect(),
    )
    .await;
    let last = capped.last().unwrap().clone();
    let reason = wait_for("the quota to be given as the reason", LIMIT, || async {
        let (job, why) = server.jobs().describe(&last).await.unwrap();
        (job.state == JobState::Queued).then_some(why).flatten()
    })
    .await;
    assert_eq!(reason, "tenant capped at quota running_jobs=2");
    // Admission: a job above the hard cpu quota can never start.
    let mut big = job("capped", "true");
    big.requirements.cpu_cores = 5;
    let refused = server.jobs().submit(big).await.unwrap_err();
    assert!(refused.to_string().contains("quota cpu=4"), "{refused}");
    let capped = wait_all(&server, &capped, Duration::from_secs(60)).await;
    assert_eq!(max_overlap(&capped.iter().collect::<Vec<_>>()), 2);

    // Soft with burst, while another tenant waits: bursty (weight 5) would take most
    // workers by weight, but is held to 2 while `other` has jobs queued.
    let mut specs: Vec<JobSpec> = (0..12).map(|_| job("bursty", "sleep 0.3")).collect();
    specs.extend((0..12).map(|_| job("other", "sleep 0.3")));
    let ids = submit_all(&server, specs).await;
    let jobs = wait_all(&server, &ids, Duration::from_secs(60)).await;
    let (bursty, other): (Vec<&Job>, Vec<&Job>) = jobs
        .iter()
        .partition(|job| job.spec.tenant.as_str() == "bursty");
    let other_last_start: SystemTime = other
        .iter()
        .map(|job| job.started_at.unwrap())
        .max()
        .unwrap();
    let while_others_wait: Vec<&Job> = bursty
        .iter()
        .copied()
        .filter(|job| job.started_at.unwrap() < other_last_start)
        .collect();
    assert!(!while_others_wait.is_empty());
    for job in &while_others_wait {
        let at = job.started_at.unwrap();
        let running = bursty
            .iter()
            .filter(|o| o.started_at.unwrap() <= at && at < o.finished_at.unwrap())
            .count();
        assert!(running <= 2, "bursty ran {running} jobs while other waited");
    }

    // Alone, bursty goes to 3 = 2 x 1.5 on 4 idle workers, never 4.
    let ids = submit_all(
        &server,
        (0..12).map(|_| job("bursty", "sleep 0.3")).collect(),
    )
    .await;
    let alone = wait_all(&server, &ids, Duration::from_secs(60)).await;
    assert_eq!(max_overlap(&alone.iter().collect::<Vec<_>>()), 3);
    server.shutdown().await.unwrap();
}

fn hodei(server: &Server, args: &[&str]) -> std::process::Output {
    std::process::Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", server.url())
        .env("HODEI_TOKEN", server.token())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_set_shown_stored_and_removed_through_the_cli_and_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.pools.clear();
    let server = start_anywhere(config.clone()).await;

    let out = hodei(
        &server,
        &[
            "tenant",
            "set-quota",
            "ci-team",
            "--tier",
            "gold",
            "--max-running-jobs",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("weight 3 (gold)"),
        "{}",
        text(&out.stdout)
    );
    let out = hodei(
        &server,
        &["tenant", "set-quota", "ci-team", "--max-cpu", "8", "--soft"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = hodei(&server, &["tenant", "get", "ci-team", "-o", "json"]);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["weight"], 3);
    assert_eq!(view["settings"]["max_running_jobs"], 4);
    assert_eq!(view["settings"]["max_cpu"], 8);
    assert_eq!(view["settings"]["soft"], serde_json::json!(["cpu"]));

    // A job of the tenant waits (no worker); the tenant shows it queued.
    let queued = server.jobs().submit(job("ci-team", "true")).await.unwrap();
    let out = hodei(&server, &["tenant", "ls"]);
    let table = text(&out.stdout);
    assert!(
        table.contains("ci-team") && table.contains("3 (gold)"),
        "{table}"
    );
    let out = hodei(&server, &["tenant", "get", "ci-team"]);
    assert!(
        text(&out.stdout).contains("1 queued"),
        "{}",
        text(&out.stdout)
    );
    server.jobs().cancel(queued.id).await.unwrap();

    // Bad input names the field, with a non-zero exit or a 400.
    let out = hodei(
        &server,
        &["tenant", "set-quota", "ci-team", "--tier", "iron"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("tier"), "{}", text(&out.stderr));
    let http = reqwest::Client::new();
    let response = http
        .put(format!("{}/api/v1/tenants/ci-team", server.url()))
        .bearer_auth(server.token())
        .json(&serde_json::json!({ "weight": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "weight", "{body}");
    let response = http
        .get(format!("{}/api/v1/tenants/nobody", server.url()))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Stored: a restart without [[tenant]] tables still knows it.
    server.shutdown().await.unwrap();
    let server = start_anywhere(config).await;
    let out = hodei(&server, &["tenant", "get", "ci-team", "-o", "json"]);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["settings"]["max_running_jobs"], 4);
    let out = hodei(&server, &["tenant", "rm", "ci-team"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = hodei(&server, &["tenant", "get", "ci-team"]);
    assert!(!out.status.success());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_tenant_service_sets_gets_lists_and_deletes() {
    use hodei_proto::v1::tenant_service_client::TenantServiceClient;
    use hodei_proto::v1::{self, TenantQuota, TenantSettings as WireSettings};

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.pools.clear();
    let server = start_anywhere(config).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = hodei_proto::BearerToken::new(server.token()).unwrap();
    let mut client = TenantServiceClient::with_interceptor(channel, token);
    let set = |settings: WireSettings| v1::SetTenantRequest {
        settings: Some(settings),
    };

    let info = client
        .set_tenant(set(WireSettings {
            name: "ci-team".into(),
            tier: "platinum".into(),
            quotas: vec![TenantQuota {
                resource: "running_jobs".into(),
                limit: 4.0,
                soft: true,
            }],
            max_queued: 50,
            ..WireSettings::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(info.weight, 5);
    assert!(info.configured);
    assert_eq!(info.usage["running_jobs"], 0.0);
    let got = client
        .get_tenant(v1::GetTenantRequest {
            name: "ci-team".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let settings = got.settings.unwrap();
    assert_eq!(settings.quotas[0].resource, "running_jobs");
    assert!(settings.quotas[0].soft);
    assert_eq!(settings.max_queued, 50);
    let list = client
        .list_tenants(v1::ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tenants.len(), 1);

    for (bad, field) in [
        (
            WireSettings {
                name: "x".into(),
                weight: 5000,
                ..WireSettings::default()
            },
            "weight",
        ),
        (
            WireSettings {
                name: "x".into(),
                quotas: vec![TenantQuota {
                    resource: "disk".into(),
                    limit: 1.0,
                    soft: false,
                }],
                ..WireSettings::default()
            },
            "quotas.resource",
        ),
    ] {
        let error = client.set_tenant(set(bad)).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(field), "{error:?}");
    }
    client
        .delete_tenant(v1::DeleteTenantRequest {
            name: "ci-team".into(),
        })
        .await
        .unwrap();
    let gone = client
        .get_tenant(v1::GetTenantRequest {
            name: "ci-team".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    server.shutdown().await.unwrap();
}
