//! `hodei bench dispatch`: no-op jobs through warm local workers of a real server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hodei_proto::BearerToken;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_proto::v1::{self, JobSpec};
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{Latency, Rss, ServerProcess, cpu_seconds, round};

#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// No-op jobs (`true`) to push through the pool in the throughput phase.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    jobs: u32,
    /// Warm local workers in the pool; all are connected before the clock starts.
    #[arg(long, default_value_t = 10, value_name = "W")]
    workers: u32,
    /// Concurrent submitters in the throughput phase.
    #[arg(long, default_value_t = 32, value_name = "C")]
    concurrency: u32,
    /// Jobs in the latency phase: submitted one at a time by each of `--workers / 2`
    /// clients, each waiting for its job to end, so workers are idle when a job arrives.
    #[arg(long, default_value_t = 200, value_name = "L")]
    latency_jobs: u32,
    /// Keep the server's state in this PostgreSQL database (`[store] url`, for example
    /// `postgres://hodei@127.0.0.1:5432/bench`) instead of SQLite in a fresh data directory.
    /// The database must exist and should be empty: jobs of an earlier run are recovered.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// Give up when the run takes longer than this.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    limit: Duration,
}

/// The result of `hodei bench dispatch`, printed as JSON.
#[derive(Debug, Serialize)]
struct DispatchReport {
    bench: &'static str,
    version: &'static str,
    cpus: usize,
    jobs: u32,
    workers: u32,
    concurrency: u32,
    /// `sqlite`, or `postgres` with `--store-url`.
    store: &'static str,
    /// Jobs that ended `succeeded` in the throughput phase.
    succeeded: u64,
    /// Jobs that ended otherwise, or submissions that failed.
    errors: u64,
    /// From the first submission to the moment the server had recorded every result.
    seconds: f64,
    /// Jobs per second, submit to durable result, end to end.
    throughput_per_sec: f64,
    /// How long `SubmitJob` took to answer (the job recorded durably), throughput phase.
    submit_ms: Latency,
    /// Submitted to its process running (`started_at - submitted_at` as the server recorded
    /// them, millisecond resolution) on an idle warm pool, latency phase.
    submit_to_start_ms: Latency,
    latency_jobs: u32,
    server_rss_mib: Rss,
    /// CPU time of the server per job in the throughput phase, microseconds.
    server_cpu_us_per_job: f64,
}

type Client = JobServiceClient<InterceptedService<Channel, BearerToken>>;

fn no_op() -> v1::SubmitJobRequest {
    v1::SubmitJobRequest {
        allow_pending: false,
        spec: Some(JobSpec {
            argv: vec!["true".into()],
            ..JobSpec::default()
        }),
    }
}

pub(super) async fn dispatch(args: DispatchArgs) -> anyhow::Result<()> {
    if args.jobs == 0 || args.workers == 0 || args.concurrency == 0 {
        bail!("--jobs, --workers and --concurrency must be at least 1");
    }
    let mut config = toml::Table::new();
    let mut pool = toml::Table::new();
    pool.insert("name".into(), "bench".into());
    pool.insert("provider".into(), "local".into());
    pool.insert("size".into(), i64::from(args.workers).into());
    config.insert("pool".into(), toml::Value::Array(vec![pool.into()]));
    let mut queue = toml::Table::new();
    queue.insert("name".into(), "default".into());
    queue.insert(
        "capacity".into(),
        i64::from(args.jobs.max(args.latency_jobs).max(10_000)).into(),
    );
    let mut jobs = toml::Table::new();
    jobs.insert("queue".into(), toml::Value::Array(vec![queue.into()]));
    config.insert("jobs".into(), jobs.into());
    if let Some(url) = &args.store_url {
        let mut store = toml::Table::new();
        store.insert("url".into(), url.clone().into());
        config.insert("store".into(), store.into());
    }

    eprintln!(
        "starting a server with {} warm local workers...",
        args.workers
    );
    let server = ServerProcess::start_with(false, config).await?;
    let measured = tokio::time::timeout(args.limit, measure(&server, &args)).await;
    let stopped = server.stop().await;
    let report = measured.map_err(|_| anyhow::anyhow!("the run took longer than --limit"))??;
    stopped?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn connected_workers(server: &ServerProcess) -> anyhow::Result<usize> {
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/workers", server.url))
        .bearer_auth(&server.token)
        .send()
        .await?
        .json()
        .await?;
    Ok(list["workers"]
        .as_array()
        .map(|workers| workers.iter().filter(|w| w["connected"] == true).count())
        .unwrap_or(0))
}

/// Jobs the server counts as ended, from `hodei_jobs_finished_total{state}` on `/metrics`:
/// in any state, and `succeeded`.
async fn finished(server: &ServerProcess) -> anyhow::Result<(u64, u64)> {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    let (mut all, mut succeeded) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("hodei_jobs_finished_total{") else {
            continue;
        };
        let Some(value) = rest
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
        else {
            continue;
        };
        all += value;
        if rest.starts_with("state=\"succeeded\"}") {
            succeeded += value;
        }
    }
    Ok((all as u64, succeeded as u64))
}

fn latency(mut nanos: Vec<u64>) -> Latency {
    nanos.sort_unstable();
    Latency::from_sorted(&nanos)
}

async fn measure(server: &ServerProcess, args: &DispatchArgs) -> anyhow::Result<DispatchReport> {
    let wanted = usize::try_from(args.workers)?;
    loop {
        let connected = connected_workers(server).await.unwrap_or(0);
        if connected >= wanted {
            break;
        }
        eprintln!("{connected}/{wanted} workers connected");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let channel = Endpoint::from_shared(server.url.clone())?
        .connect()
        .await
        .context("cannot connect to the server")?;
    let token = BearerToken::new(&server.token)?;
    let client: Client = JobServiceClient::with_interceptor(channel, token);

    // Throughput: N jobs from C submitters, as fast as the server takes them.
    let before = server.memory()?;
    let cpu_before = cpu_seconds(server.pid)?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let total = u64::from(args.jobs);
    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..args.concurrency {
        let (mut client, next, errors) = (client.clone(), next.clone(), errors.clone());
        submitters.push(tokio::spawn(async move {
            let mut nanos = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                match client.submit_job(no_op()).await {
                    Ok(_) => {
                        nanos.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX))
                    }
                    Err(status) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("submit failed: {status}");
                        }
                    }
                }
            }
            nanos
        }));
    }
    let mut submit_nanos = Vec::new();
    for submitter in submitters {
        submit_nanos.extend(submitter.await?);
    }
    let accepted = submit_nanos.len() as u64;
    eprintln!(
        "{accepted} jobs submitted in {:.2}s, waiting for results",
        started.elapsed().as_secs_f64()
    );
    let mut last_report = Instant::now();
    let succeeded = loop {
        let (done, succeeded) = finished(server).await?;
        if done >= accepted {
            break succeeded;
        }
        if last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("{done}/{accepted} jobs finished");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu_used = cpu_seconds(server.pid)? - cpu_before;

    // Latency: jobs arrive one at a time per client on an idle warm pool.
    eprintln!("latency phase: {} jobs", args.latency_jobs);
    let clients = (args.workers / 2).max(1);
    let next = Arc::new(AtomicU64::new(0));
    let mut runners = Vec::new();
    for _ in 0..clients {
        let (mut client, next) = (client.clone(), next.clone());
        let count = u64::from(args.latency_jobs);
        runners.push(tokio::spawn(async move {
            let mut nanos = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let job = client.submit_job(no_op()).await?.into_inner().job;
                let id = job.map(|job| job.id).unwrap_or_default();
                let mut stream = client
                    .stream_logs(v1::StreamLogsRequest {
                        job_id: id,
                        after: 0,
                        follow: true,
                    })
                    .await?
                    .into_inner();
                while let Some(message) = stream.message().await? {
                    if let Some(end) = message.finished {
                        let waited = end.started_at_ms.saturating_sub(end.submitted_at_ms);
                        nanos.push(u64::try_from(waited).unwrap_or(0) * 1_000_000);
                    }
                }
            }
            Ok::<_, tonic::Status>(nanos)
        }));
    }
    let mut start_nanos = Vec::new();
    for runner in runners {
        start_nanos.extend(runner.await??);
    }
    let after = server.memory()?;
    Ok(DispatchReport {
        bench: "dispatch",
        version: env!("CARGO_PKG_VERSION"),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        jobs: args.jobs,
        workers: args.workers,
        concurrency: args.concurrency,
        store: if args.store_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        succeeded,
        errors: errors.load(Ordering::Relaxed) + accepted.saturating_sub(succeeded),
        seconds: round(seconds, 3),
        throughput_per_sec: round(accepted as f64 / seconds, 1),
        submit_ms: latency(submit_nanos),
        submit_to_start_ms: latency(start_nanos),
        latency_jobs: args.latency_jobs,
        server_rss_mib: Rss::new(before, after),
        server_cpu_us_per_job: round(cpu_used * 1e6 / accepted.max(1) as f64, 1),
    })
}
