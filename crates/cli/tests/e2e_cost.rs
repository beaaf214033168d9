//! Usage and cost end to end: a known workload on a priced pool, the figures on each job,
//! in `hodei report cost` (table, JSON, CSV) and in the metrics, and the same totals after
//! the server restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::*;
use hodei_core::{JobId, JobSpec, JobState, TenantName};
use hodei_server::Server;
use hodei_testkit::metrics::sum_samples;
use hodei_testkit::wait_for;

/// 36 per hour: one worker-second costs 0.01.
const PRICE: f64 = 36.0;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn hodei(server: &Server, args: &[&str]) -> Output {
    Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", server.url())
        .env("HODEI_TOKEN", server.token())
        .output()
        .unwrap()
}

fn report(server: &Server, by: &str) -> serde_json::Value {
    let output = hodei(server, &["report", "cost", "--by", by, "-o", "json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sum_samples(&text, name, labels)
}

async fn job_view(server: &Server, id: &JobId) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/jobs/{id}", server.url()))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_is_worker_seconds_times_price_on_jobs_reports_and_metrics_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.pools[0].cost_per_hour = PRICE;
    let server = start_anywhere(config.clone()).await;
    let workers = wait_for_registered_workers(&server, 1).await;
    wait_for_connected(&server, &workers[0]).await;

    let mut ids = Vec::new();
    for tenant in ["acme", "acme", "beta"] {
        let mut spec = JobSpec::new(hodei_core::Command::Script("sleep 0.2".into()));
        spec.tenant = TenantName::new(tenant).unwrap();
        ids.push(server.jobs().submit(spec).await.unwrap().id);
    }
    let mut job_costs = Vec::new();
    for id in &ids {
        let job = wait_for("job to end", LIMIT, || async {
            server
                .jobs()
                .get(id)
                .await
                .unwrap()
                .filter(|j| j.state.is_terminal())
        })
        .await;
        assert_eq!(job.state, JobState::Succeeded);
        // The attempt's usage is written right after its result.
        let view = wait_for("the job's cost", LIMIT, || async {
            let view = job_view(&server, id).await;
            (view["worker_seconds"].as_f64()? > 0.0).then_some(view)
        })
        .await;
        let seconds = view["worker_seconds"].as_f64().unwrap();
        let cost = view["cost"].as_f64().unwrap();
        assert!(
            seconds >= 0.2,
            "the job slept 0.2 s but held its worker {seconds} s"
        );
        assert!(
            close(cost, seconds * PRICE / 3600.0),
            "{cost} for {seconds} s"
        );
        job_costs.push((view["tenant"].as_str().unwrap().to_owned(), seconds, cost));
    }
    let total: f64 = job_costs.iter().map(|(_, _, c)| c).sum();
    let acme: f64 = job_costs
        .iter()
        .filter(|(t, _, _)| t == "acme")
        .map(|(_, _, c)| c)
        .sum();

    // By tenant: the jobs' costs, summed.
    let by_tenant = report(&server, "tenant");
    assert!(
        close(by_tenant["job_cost"].as_f64().unwrap(), total),
        "{by_tenant}"
    );
    let rows = by_tenant["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{by_tenant}");
    let acme_row = rows.iter().find(|r| r["name"] == "acme").unwrap();
    assert_eq!(acme_row["attempts"], 2);
    assert!(close(acme_row["job_cost"].as_f64().unwrap(), acme));
    assert!(acme_row["held_cost"].is_null());
    assert!(close(
        metric(&server, "hodei_tenant_cost_total", &[("tenant", "acme")])
            .await
            .unwrap(),
        acme
    ));

    // By pool: held time priced the same, and at least the jobs' time.
    let by_pool = wait_for("pool usage recorded", LIMIT, || async {
        let by_pool = report(&server, "pool");
        let row = by_pool["rows"][0].clone();
        (row["held_worker_seconds"].as_f64()? > row["job_worker_seconds"].as_f64()?)
            .then_some(by_pool)
    })
    .await;
    let pool_row = &by_pool["rows"][0];
    assert_eq!(pool_row["name"], "default");
    assert_eq!(pool_row["attempts"], 3);
    let held = pool_row["held_worker_seconds"].as_f64().unwrap();
    assert!(close(
        pool_row["held_cost"].as_f64().unwrap(),
        held * PRICE / 3600.0
    ));

    // The other formats: a table with the figures, CSV with one line per row.
    let table = hodei(&server, &["report", "cost", "--by", "tenant"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("TENANT") && table.contains("acme") && table.contains("beta"),
        "{table}"
    );
    let csv = hodei(&server, &["report", "cost", "--by", "queue", "-o", "csv"]);
    assert!(csv.status.success());
    let csv = String::from_utf8(csv.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "queue,attempts,job_worker_seconds,job_cost,held_worker_seconds,held_cost,idle_share"
    );
    assert!(lines[1].starts_with("default,3,"), "{csv}");
    // Bad input names the field.
    let bad = hodei(&server, &["report", "cost", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since"),
        "{bad:?}"
    );
    let bad = reqwest::Client::new()
        .get(format!("{}/api/v1/reports/cost?by=team", server.url()))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("by"));

    // The heartbeat's usage is kept per worker.
    let worker = wait_for("a heartbeat with usage", LIMIT, || async {
        let worker: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/workers/{}", server.url(), workers[0]))
            .bearer_auth(server.token())
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        worker["memory_used_mb"].as_u64().map(|_| worker)
    })
    .await;
    assert!(worker["load_average"].as_f64().unwrap() >= 0.0);
    assert!(
        metric(
            &server,
            "hodei_worker_memory_used_bytes",
            &[("worker", workers[0].as_str())]
        )
        .await
        .unwrap()
            > 0.0
    );
    let get = hodei(&server, &["worker", "get", workers[0].as_str()]);
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("last heartbeat: load"),
        "{get:?}"
    );

    let pool_cost_before = metric(&server, "hodei_pool_cost_total", &[("pool", "default")])
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    // After a restart: the same job figures, and counters that go on from the totals.
    let server = start_anywhere(config).await;
    let after = report(&server, "tenant");
    assert!(close(after["job_cost"].as_f64().unwrap(), total), "{after}");
    assert!(close(
        metric(&server, "hodei_tenant_cost_total", &[("tenant", "acme")])
            .await
            .unwrap(),
        acme
    ));
    let pool_cost_after = metric(&server, "hodei_pool_cost_total", &[("pool", "default")])
        .await
        .unwrap();
    assert!(
        pool_cost_after >= pool_cost_before * (1.0 - 1e-9),
        "pool cost went from {pool_cost_before} to {pool_cost_after}"
    );
    let view = job_view(&server, &ids[0]).await;
    assert!(close(view["cost"].as_f64().unwrap(), job_costs[0].2));
    server.shutdown().await.unwrap();
}

/// What tenant `tenant` spent today, as its `hodei_tenant_usage{resource="daily_cost"}`
/// gauge says (what its daily_cost quota is checked against).
async fn spent_today(server: &Server, tenant: &str) -> Option<f64> {
    metric(
        server,
        "hodei_tenant_usage",
        &[("tenant", tenant), ("resource", "daily_cost")],
    )
    .await
}

/// The report's "tenant near its daily budget" advice for `tenant`, if any.
fn budget_advice(report: &serde_json::Value, tenant: &str) -> Option<serde_json::Value> {
    report["recommendations"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "tenant_near_budget" && r["tenant"] == tenant)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_daily_cost_and_budget_advice_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.pools[0].cost_per_hour = PRICE;
    // A budget one job of 0.3 s (0.003 at 0.01 per second) passes 80% of.
    const BUDGET: f64 = 0.003;
    config.tenant_list = vec![
        hodei_server::TenantSettings {
            name: "acme".into(),
            max_daily_cost: Some(BUDGET),
            ..hodei_server::TenantSettings::default()
        },
        hodei_server::TenantSettings {
            name: "beta".into(),
            max_daily_cost: Some(1000.0),
            ..hodei_server::TenantSettings::default()
        },
    ];
    let server = start_anywhere(config.clone()).await;
    let workers = wait_for_registered_workers(&server, 1).await;
    wait_for_connected(&server, &workers[0]).await;
    assert_eq!(spent_today(&server, "acme").await, Some(0.0));
    assert!(budget_advice(&report(&server, "tenant"), "acme").is_none());

    let mut costs = Vec::new();
    for tenant in ["acme", "beta"] {
        let mut spec = JobSpec::new(hodei_core::Command::Script("sleep 0.3".into()));
        spec.tenant = TenantName::new(tenant).unwrap();
        let id = server.jobs().submit(spec).await.unwrap().id;
        let view = wait_for("the job's cost", LIMIT, || async {
            let view = job_view(&server, &id).await;
            (view["state"] == "succeeded" && view["cost"].as_f64()? > 0.0).then_some(view)
        })
        .await;
        costs.push(view["cost"].as_f64().unwrap());
    }
    let acme = costs[0];
    assert!(acme >= 0.8 * BUDGET, "{acme}");
    // Charged when the attempt's end is applied; the gauges follow on the next tick.
    let before = wait_for("acme's cost today", LIMIT, || async {
        spent_today(&server, "acme")
            .await
            .filter(|spent| *spent > 0.0)
    })
    .await;
    assert!(
        close(before, acme),
        "acme spent {before} today, its job cost {acme}"
    );
    let advice = budget_advice(&report(&server, "tenant"), "acme").unwrap();
    assert!(
        close(advice["spent_today"].as_f64().unwrap(), acme),
        "{advice}"
    );
    assert_eq!(advice["daily_budget"].as_f64().unwrap(), BUDGET);
    // beta spent a tiny share of its budget: no advice.
    assert!(budget_advice(&report(&server, "tenant"), "beta").is_none());
    let table = hodei(&server, &["report", "cost"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("tenant acme spent") && table.contains("of its daily budget 0.003 today"),
        "{table}"
    );
    server.shutdown().await.unwrap();

    // After a restart: the day's cost is what the store holds, not zero, so the quota and
    // the advice still apply.
    let server = start_anywhere(config).await;
    let after = spent_today(&server, "acme").await.unwrap();
    assert!(
        close(after, before),
        "{before} before the restart, {after} after"
    );
    assert!(close(spent_today(&server, "beta").await.unwrap(), costs[1]));
    let advice = budget_advice(&report(&server, "tenant"), "acme").unwrap();
    assert!(
        close(advice["spent_today"].as_f64().unwrap(), acme),
        "{advice}"
    );
    server.shutdown().await.unwrap();
}
