//! `hodei bench coldstart`: submit-to-start of one job on an empty dynamic pool (a worker
//! must be provisioned for it) and on the same pool keeping one warm worker.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hodei_proto::BearerToken;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_proto::v1::{self, JobSpec};
use hodei_server::api::{PoolView, WorkerList};
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{Latency, ServerProcess};

/// The one pool of the run.
const POOL: &str = "cold";

/// How long the pool may take to lose its last worker, or to get its warm one.
const POOL_SETTLE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// Agent processes on this machine.
    Local,
    /// Containers through the Docker Engine API, running `--image`.
    Docker,
}

impl Provider {
    fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Docker => "docker",
        }
    }
}

#[derive(Debug, Args)]
pub struct ColdstartArgs {
    /// Where workers come from.
    #[arg(long, value_enum, default_value_t = Provider::Local)]
    provider: Provider,
    /// The agent image of `--provider docker` (the server's `[docker] image`).
    #[arg(long, default_value = "hodei-agent:latest", value_name = "IMAGE")]
    image: String,
    /// Jobs on an empty pool: before each, the pool's last worker is gone.
    #[arg(long, default_value_t = 5, value_name = "N")]
    runs: u32,
    /// Jobs on the pool keeping one idle worker, one at a time.
    #[arg(long, default_value_t = 20, value_name = "M")]
    warm_runs: u32,
    /// Give up when the run takes longer than this.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    limit: Duration,
}

/// The result of `hodei bench coldstart`, printed as JSON.
#[derive(Debug, Serialize)]
struct ColdstartReport {
    bench: &'static str,
    version: &'static str,
    cpus: usize,
    provider: &'static str,
    /// Submitted to its process running (`started_at - submitted_at` as the server recorded
    /// them, millisecond resolution), the pool empty at submission: includes provisioning
    /// the worker, its agent starting and registering, dispatch and the process spawn.
    cold_ms: Latency,
    /// The same with one idle worker in the pool.
    warm_ms: Latency,
    runs: u32,
    warm_runs: u32,
}

type Client = JobServiceClient<InterceptedService<Channel, BearerToken>>;

pub(super) async fn coldstart(args: ColdstartArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.warm_runs == 0 {
        bail!("--warm-runs must be at least 1");
    }
    if args.provider == Provider::Docker && args.image.trim().is_empty() {
        bail!("--image must name an image");
    }
    let config = server_config(&args);
    eprintln!(
        "starting a server with an empty dynamic {} pool...",
        args.provider.as_str()
    );
    let server = ServerProcess::start_with(false, config)
        .await
        .with_context(|| match args.provider {
            Provider::Local => "cannot start the server".to_owned(),
            Provider::Docker => format!(
                "the server refused or failed a docker pool (provider = \"docker\", [docker] image = {:?}); \
                 a server built without the docker provider rejects it at configuration; \
                 `--provider local` measures local agent processes",
                args.image
            ),
        })?;
    let measured = tokio::time::timeout(args.limit, measure(&server, &args)).await;
    let stopped = server.stop().await;
    let report = measured.map_err(|_| anyhow::anyhow!("the run took longer than --limit"))??;
    stopped?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One dynamic pool of 0 to 1 workers that scales at once both ways: an idle worker is
/// drained as soon as no job needs it.
fn server_config(args: &ColdstartArgs) -> toml::Table {
    let mut scaling = toml::Table::new();
    scaling.insert("scale_up_cooldown".into(), 0.into());
    scaling.insert("scale_down_cooldown".into(), 0.into());
    scaling.insert("max_decisions_per_minute".into(), 10_000.into());
    let mut pool = toml::Table::new();
    pool.insert("name".into(), POOL.into());
    pool.insert("provider".into(), args.provider.as_str().into());
    pool.insert("kind".into(), "dynamic".into());
    pool.insert("min".into(), 0.into());
    pool.insert("max".into(), 1.into());
    pool.insert("idle_timeout".into(), 0.into());
    pool.insert("scaling".into(), scaling.into());
    let mut config = toml::Table::new();
    config.insert("pool".into(), toml::Value::Array(vec![pool.into()]));
    // Submissions trigger a pass at once; the interval only paces scale-in between runs.
    let mut autoscaler = toml::Table::new();
    autoscaler.insert("interval".into(), "250ms".into());
    config.insert("autoscaler".into(), autoscaler.into());
    if args.provider == Provider::Docker {
        let mut docker = toml::Table::new();
        docker.insert("image".into(), args.image.clone().into());
        config.insert("docker".into(), docker.into());
    }
    config
}

/// The REST side of the server: the pool and its workers.
struct Api<'a> {
    server: &'a ServerProcess,
    http: reqwest::Client,
}

impl Api<'_> {
    async fn pool(&self) -> anyhow::Result<PoolView> {
        let response = self
            .http
            .get(format!("{}/api/v1/pools/{POOL}", self.server.url))
            .bearer_auth(&self.server.token)
            .send()
            .await?;
        ok(response).await?.json().await.context("pool view")
    }

    /// Workers of the pool the server still holds as live (not yet terminated): a
    /// drained local worker stays here until its agent process has exited.
    async fn live_workers(&self) -> anyhow::Result<usize> {
        let response = self
            .http
            .get(format!("{}/api/v1/workers", self.server.url))
            .query(&[("pool", POOL)])
            .bearer_auth(&self.server.token)
            .send()
            .await?;
        let list: WorkerList = ok(response).await?.json().await.context("worker list")?;
        Ok(list.workers.len())
    }

    /// Keeps `min` workers in the pool from now on.
    async fn set_min(&self, min: u32) -> anyhow::Result<()> {
        let mut spec = self.pool().await?.spec;
        spec.min = min;
        let response = self
            .http
            .put(format!("{}/api/v1/pools/{POOL}", self.server.url))
            .bearer_auth(&self.server.token)
            .json(&spec)
            .send()
            .await?;
        ok(response).await?;
        Ok(())
    }

    /// Polls until the pool has no worker in any state and none is left to stop.
    async fn wait_empty(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + POOL_SETTLE_LIMIT;
        loop {
            let w = self.pool().await?.workers;
            let counted = w.idle + w.busy + w.starting + w.unhealthy + w.leaving;
            if counted == 0 && self.live_workers().await? == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pool {POOL} still had workers after {POOL_SETTLE_LIMIT:?}: {w:?}; the server's log:\n{}",
                    super::log_tail(&self.server.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the pool holds exactly one idle worker and nothing else.
    async fn wait_one_idle(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + POOL_SETTLE_LIMIT;
        loop {
            let w = self.pool().await?.workers;
            if w.idle == 1 && w.busy + w.starting + w.unhealthy + w.leaving == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pool {POOL} had no single idle worker after {POOL_SETTLE_LIMIT:?}: {w:?}; the server's log:\n{}",
                    super::log_tail(&self.server.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The response if it is a success, else its status and body as the error.
async fn ok(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().clone();
    let body = response.text().await.unwrap_or_default();
    bail!("{url}: {status}: {body}")
}

/// What one job showed.
struct Run {
    worker_id: String,
    submit_to_start_ms: u64,
}

/// Submits `true` to the pool and follows it to its end.
async fn run_one(client: &mut Client) -> anyhow::Result<Run> {
    let request = v1::SubmitJobRequest {
        allow_pending: false,
        spec: Some(JobSpec {
            argv: vec!["true".into()],
            labels: [("pool".to_owned(), POOL.to_owned())].into(),
            ..JobSpec::default()
        }),
    };
    let job = client
        .submit_job(request)
        .await
        .context("cannot submit a job")?
        .into_inner()
        .job
        .context("the server answered a submission without its job")?;
    let mut stream = client
        .stream_logs(v1::StreamLogsRequest {
            job_id: job.id.clone(),
            after: 0,
            follow: true,
        })
        .await
        .context("cannot follow the job")?
        .into_inner();
    while let Some(message) = stream.message().await? {
        let Some(end) = message.finished else {
            continue;
        };
        if end.state != "succeeded" {
            bail!(
                "job {} ended {} ({}) on worker {:?}",
                job.id,
                end.state,
                end.reason,
                end.worker_id
            );
        }
        let waited = end.started_at_ms.saturating_sub(end.submitted_at_ms);
        return Ok(Run {
            worker_id: end.worker_id,
            submit_to_start_ms: u64::try_from(waited).unwrap_or(0),
        });
    }
    bail!("the log stream of job {} ended before the job did", job.id)
}

fn latency(millis: &[u64]) -> Latency {
    let mut nanos: Vec<u64> = millis.iter().map(|ms| ms * 1_000_000).collect();
    nanos.sort_unstable();
    Latency::from_sorted(&nanos)
}

async fn measure(server: &ServerProcess, args: &ColdstartArgs) -> anyhow::Result<ColdstartReport> {
    let api = Api {
        server,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    };
    let channel = Endpoint::from_shared(server.url.clone())?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("cannot connect to the server")?;
    let mut client: Client =
        JobServiceClient::with_interceptor(channel, BearerToken::new(&server.token)?);

    let mut cold = Vec::new();
    let mut cold_workers = BTreeSet::new();
    for run in 1..=args.runs {
        api.wait_empty().await?;
        let result = run_one(&mut client).await?;
        // A worker seen before means the pool was not empty: the run would be warm.
        if !cold_workers.insert(result.worker_id.clone()) {
            bail!(
                "cold run {run} ran on worker {}, which an earlier run used: the pool was not empty",
                result.worker_id
            );
        }
        eprintln!(
            "cold {run}/{}: {} ms on new worker {}",
            args.runs, result.submit_to_start_ms, result.worker_id
        );
        cold.push(result.submit_to_start_ms);
    }

    api.wait_empty().await?;
    api.set_min(1).await?;
    api.wait_one_idle().await?;
    let mut warm = Vec::new();
    let mut warm_workers = BTreeSet::new();
    for run in 1..=args.warm_runs {
        let result = run_one(&mut client).await?;
        eprintln!(
            "warm {run}/{}: {} ms on worker {}",
            args.warm_runs, result.submit_to_start_ms, result.worker_id
        );
        warm_workers.insert(result.worker_id);
        warm.push(result.submit_to_start_ms);
    }
    if warm_workers.len() > 1 {
        eprintln!(
            "warm runs used {} workers, not one: the warm worker was replaced during the run",
            warm_workers.len()
        );
    }

    Ok(ColdstartReport {
        bench: "coldstart",
        version: env!("CARGO_PKG_VERSION"),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        provider: args.provider.as_str(),
        cold_ms: latency(&cold),
        warm_ms: latency(&warm),
        runs: args.runs,
        warm_runs: args.warm_runs,
    })
}
