//! `hodei bench`: measurements of a real server that each print one JSON object on stdout,
//! so runs can be compared and tracked; progress goes to stderr.
//!
//! The server under test is a separate `hodei server` process with a fresh data directory,
//! so the resident memory reported is the server's alone, not the load generator's.

mod coldstart;
mod dispatch;
mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec, WorkerType};
use hodei_proto::BearerToken;
use hodei_proto::convert::register_request;
use hodei_proto::v1::scheduler_service_client::SchedulerServiceClient;
use hodei_proto::v1::{self, RegistrationStatus};
use serde::Serialize;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// How long the server may take to answer `/readyz`, and to stop after SIGTERM.
const SERVER_START_LIMIT: Duration = Duration::from_secs(30);
const SERVER_STOP_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Start a server on 127.0.0.1 with a fresh store, register `--workers` distinct workers
    /// over real gRPC (`SchedulerService.RegisterWorker`) from `--concurrency` concurrent
    /// clients, and print one JSON object: throughput, latency percentiles, errors and the
    /// server's resident memory before and after.
    Registration(RegistrationArgs),
    /// Start a server on 127.0.0.1 with a fresh store and a static pool of `--workers` warm
    /// local agents, push `--jobs` no-op jobs (`true`) through it over gRPC, then run
    /// `--latency-jobs` one at a time per client on the idle pool, and print one JSON object:
    /// end-to-end throughput (submit to durable result), submit latency, submit-to-start
    /// latency on a warm pool, the server's memory and CPU per job.
    Dispatch(dispatch::DispatchArgs),
    /// Start a server on 127.0.0.1 with a fresh store and a dynamic pool of 0 to 1 workers
    /// that drains idle workers at once; `--runs` times, wait until the pool has no worker,
    /// submit one no-op job and record its submit-to-start time (a worker is provisioned for
    /// it); then keep one warm worker and do the same `--warm-runs` times. Prints one JSON
    /// object with both latency distributions.
    Coldstart(coldstart::ColdstartArgs),
    /// The dispatcher's decisions alone, in this process, no server and no IO: admit
    /// `--queued` jobs spread over `--tenants` tenants (weights by tier, some with soft
    /// quotas), then plan weighted fair, quota-checked starts on `--workers` workers as jobs
    /// end, until all have started. Prints one JSON object with `decisions_per_sec`.
    Schedule(schedule::ScheduleArgs),
}

#[derive(Debug, Args)]
pub struct RegistrationArgs {
    /// Workers to register; each is a distinct, valid worker (`bench-000000`, ...).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    workers: u32,
    /// Registrations in flight at once: this many client tasks, each sending its next
    /// request as soon as its last one is answered (a closed loop).
    #[arg(long, default_value_t = 100, value_name = "C")]
    concurrency: u32,
    /// HTTP/2 connections the client tasks share, assigned round robin. Defaults to one per
    /// 100 concurrent tasks (at least 1); give `--connections` equal to `--concurrency` for
    /// one connection per client, as separate agents would have.
    #[arg(long, value_name = "K")]
    connections: Option<u32>,
    /// A call not answered within this long fails and counts as an error.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Send at this many registrations per second in total (an open loop) instead of as fast
    /// as the clients can. Request `i` is due `i / RATE` seconds after the start and its
    /// latency counts from then, so time spent waiting for a free client counts too.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Serve and connect over TLS (`[tls]`), with a CA and a server certificate for
    /// 127.0.0.1 made for this run. Connections, handshakes included, are opened before the
    /// clock starts.
    #[arg(long)]
    tls: bool,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    let bench = async move {
        match command {
            BenchCommand::Registration(args) => registration(args).await,
            BenchCommand::Dispatch(args) => dispatch::dispatch(args).await,
            BenchCommand::Coldstart(args) => coldstart::coldstart(args).await,
            BenchCommand::Schedule(args) => schedule::schedule(args),
        }
    };
    // Ctrl-C or SIGTERM drops the bench, and with it its `ServerProcess`, whose drop stops
    // the server cleanly (and the server its agents).
    tokio::select! {
        result = bench => result,
        () = crate::shutdown_signal() => bail!("interrupted; the bench's server and its workers were stopped"),
    }
}

/// The result of `hodei bench registration`, printed as JSON.
#[derive(Debug, Serialize)]
struct RegistrationReport {
    bench: &'static str,
    version: &'static str,
    /// Logical CPUs of the machine; client and server share them.
    cpus: usize,
    workers: u32,
    concurrency: u32,
    connections: u32,
    /// The offered load of `--rate`; `null` when every client sends as fast as it can.
    rate_per_sec: Option<f64>,
    tls: bool,
    /// Calls answered `SUCCESS`.
    registered: u64,
    /// Calls that failed or answered anything but `SUCCESS`.
    errors: u64,
    /// Workers the server lists afterwards (`ListWorkers`).
    server_registered: usize,
    /// From the first request sent to the last answer received.
    seconds: f64,
    /// `registered / seconds`.
    throughput_per_sec: f64,
    latency_ms: Latency,
    server_rss_mib: Rss,
    /// CPU time (user + system) spent during the measurement, per registration, in
    /// microseconds: by the server, and by this process generating the load.
    cpu_us_per_registration: Cpu,
}

#[derive(Debug, Serialize)]
struct Cpu {
    server: f64,
    client: f64,
}

/// Per-call latency, nearest-rank percentiles, in milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    /// Percentiles of latencies in nanoseconds, sorted ascending.
    fn from_sorted(nanos: &[u64]) -> Self {
        Self {
            p50: millis(percentile(nanos, 0.50)),
            p95: millis(percentile(nanos, 0.95)),
            p99: millis(percentile(nanos, 0.99)),
            max: millis(nanos.last().copied().unwrap_or(0)),
            mean: millis(nanos.iter().sum::<u64>() / (nanos.len().max(1) as u64)),
        }
    }
}

/// The server's resident set (`VmRSS`, `VmHWM` in `/proc/<pid>/status`), in MiB.
#[derive(Debug, Serialize)]
struct Rss {
    /// Once the server is ready and the clients are connected, before the first
    /// registration.
    before: f64,
    /// Right after the last registration was answered, connections still open.
    after: f64,
    /// The highest it has been up to `after`.
    peak: f64,
}

impl Rss {
    /// Rounded to 0.1 MiB, the peak as of `after`.
    fn new(before: Memory, after: Memory) -> Self {
        Self {
            before: round(before.rss_mib, 1),
            after: round(after.rss_mib, 1),
            peak: round(after.peak_mib, 1),
        }
    }
}

async fn registration(args: RegistrationArgs) -> anyhow::Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let connections = args
        .connections
        .unwrap_or_else(|| args.concurrency.div_ceil(100));
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        bail!("--rate must be a positive number");
    }
    if connections == 0 || connections > args.concurrency {
        bail!(
            "--connections must be between 1 and --concurrency ({})",
            args.concurrency
        );
    }
    eprintln!("starting a server...");
    let server = ServerProcess::start(args.tls).await?;
    let measured = measure(&server, &args, connections).await;
    let stopped = server.stop().await;
    let report = measured?;
    stopped?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A `RegisterWorkerRequest` per index, all alike but for the id.
#[derive(Debug, Clone)]
struct Requests {
    template: v1::RegisterWorkerRequest,
}

impl Requests {
    fn new() -> anyhow::Result<Self> {
        let mut spec = WorkerSpec {
            worker_type: WorkerType::Static,
            pool: Some("bench".into()),
            ..WorkerSpec::default()
        };
        spec.labels.insert("bench".into(), "registration".into());
        let worker = Worker::from_spec(
            WorkerId::new("bench-000000")?,
            &spec,
            ProviderKind::External,
            SystemTime::now(),
        );
        worker.validate()?;
        Ok(Self {
            template: register_request(&worker),
        })
    }

    fn get(&self, index: u64) -> v1::RegisterWorkerRequest {
        let mut request = self.template.clone();
        request.worker_id = format!("bench-{index:06}");
        request
    }
}

type Client = SchedulerServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, hodei_proto::BearerToken>,
>;

/// What one client task saw.
#[derive(Debug, Default)]
struct TaskResult {
    latencies_ns: Vec<u64>,
    registered: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn measure(
    server: &ServerProcess,
    args: &RegistrationArgs,
    connections: u32,
) -> anyhow::Result<RegistrationReport> {
    let endpoint = Endpoint::from_shared(server.url.clone())?;
    let endpoint = hodei_proto::tls::client_tls(endpoint, server.ca_cert.as_deref())?
        .tcp_nodelay(true)
        .timeout(args.timeout)
        .connect_timeout(Duration::from_secs(5));
    let token = BearerToken::new(&server.token)?;
    // Connections are opened before the clock starts: this measures registrations, not
    // TCP and HTTP/2 handshakes.
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", server.url))?;
        clients.push(SchedulerServiceClient::with_interceptor(
            channel,
            token.clone(),
        ));
    }
    let requests = Arc::new(Requests::new()?);
    let rss_before = server.memory()?;
    eprintln!(
        "server pid {} ready at {} ({:.1} MiB); registering {} workers from {} clients over {} connections",
        server.pid, server.url, rss_before.rss_mib, args.workers, args.concurrency, connections
    );

    let server_cpu_before = cpu_seconds(server.pid)?;
    let client_cpu_before = cpu_seconds(std::process::id())?;
    let total = u64::from(args.workers);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency {
        let mut client = clients[task as usize % clients.len()].clone();
        let requests = requests.clone();
        let rate = args.rate;
        let next = next.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut result = TaskResult::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let request = requests.get(index);
                let sent = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(index as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let answer = client.register_worker(request).await;
                let elapsed = sent.elapsed();
                result
                    .latencies_ns
                    .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                match answer {
                    Ok(response) if response.get_ref().status() == RegistrationStatus::Success => {
                        result.registered += 1;
                    }
                    Ok(response) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| {
                            format!("unexpected status {:?}", response.get_ref().status())
                        });
                    }
                    Err(status) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| {
                            format!("{}: {}", status.code(), status.message())
                        });
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            result
        });
    }
    let progress = tokio::spawn(report_progress(done.clone(), total));
    let mut latencies_ns = Vec::with_capacity(args.workers as usize);
    let (mut registered, mut errors) = (0, 0);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a client task panicked")?;
        latencies_ns.extend(result.latencies_ns);
        registered += result.registered;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    let server_cpu = cpu_seconds(server.pid)? - server_cpu_before;
    let client_cpu = cpu_seconds(std::process::id())? - client_cpu_before;
    let rss_after = server.memory()?;
    if let Some(error) = first_error {
        eprintln!("{errors} calls failed; the first: {error}");
    }

    // Outside the measurement: does the server hold what it acknowledged?
    let listed = clients[0]
        .clone()
        .max_decoding_message_size(usize::MAX)
        .list_workers(v1::ListWorkersRequest {})
        .await
        .context("cannot list the registered workers")?
        .into_inner()
        .workers
        .len();
    drop(clients);

    latencies_ns.sort_unstable();
    Ok(RegistrationReport {
        bench: "registration",
        version: env!("CARGO_PKG_VERSION"),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        workers: args.workers,
        concurrency: args.concurrency,
        connections,
        rate_per_sec: args.rate,
        tls: args.tls,
        registered,
        errors,
        server_registered: listed,
        seconds: round(seconds, 4),
        throughput_per_sec: round(registered as f64 / seconds, 1),
        latency_ms: Latency::from_sorted(&latencies_ns),
        server_rss_mib: Rss::new(rss_before, rss_after),
        cpu_us_per_registration: Cpu {
            server: round(server_cpu * 1e6 / total as f64, 1),
            client: round(client_cpu * 1e6 / total as f64, 1),
        },
    })
}

/// CPU time (user + system) a process has used so far, in seconds, from `/proc/<pid>/stat`
/// (fields 14 and 15, in clock ticks of 1/100 s: Linux's `USER_HZ` for that file).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .with_context(|| format!("unexpected contents of {path}"))
    };
    // `fields[0]` is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// A line on stderr every second while the run lasts.
async fn report_progress(done: Arc<AtomicU64>, total: u64) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    loop {
        interval.tick().await;
        eprintln!("registered {}/{total}", done.load(Ordering::Relaxed));
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(nanos: u64) -> f64 {
    round(nanos as f64 / 1e6, 3)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// A `hodei server` child process with its own temporary data directory.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    pid: u32,
    url: String,
    token: String,
    /// The CA that signed the server's certificate, with `--tls`.
    ca_cert: Option<PathBuf>,
    log: PathBuf,
    // Removed on drop, after the server has stopped.
    _dir: tempfile::TempDir,
}

/// Resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_mib: f64,
    peak_mib: f64,
}

impl ServerProcess {
    /// Writes a configuration (fresh data directory, no pools, a free port on 127.0.0.1, a
    /// token of our own, TLS if asked), starts this executable as `hodei server` and waits
    /// for `/readyz`.
    async fn start(tls: bool) -> anyhow::Result<Self> {
        Self::start_with(tls, toml::Table::new()).await
    }

    /// As [`ServerProcess::start`], with `extra` keys (pools, queues...) added to the
    /// configuration.
    async fn start_with(tls: bool, extra: toml::Table) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hodei-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free port on 127.0.0.1")?
            .port();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut config = toml::Table::new();
        config.insert("listen".into(), format!("127.0.0.1:{port}").into());
        config.insert(
            "data_dir".into(),
            dir.path().join("data").display().to_string().into(),
        );
        config.insert("token".into(), token.clone().into());
        config.extend(extra);
        let ca_cert = if tls {
            let files = make_certificates(dir.path())?;
            let mut section = toml::Table::new();
            section.insert("cert".into(), files.cert.display().to_string().into());
            section.insert("key".into(), files.key.display().to_string().into());
            config.insert("tls".into(), section.into());
            Some(files.ca)
        } else {
            None
        };
        let config_path = dir.path().join("hodei.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;

        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let program = std::env::current_exe().context("cannot find the hodei executable")?;
        // The server is ours alone: the caller's `HODEI_TOKEN` (the README exports one for
        // the CLI) would override the token written above, and the caller's CA file is not
        // the one of our certificates. `--exit-with-parent` stops the server if this process
        // is killed before it can stop the server itself.
        let child = Command::new(program)
            .arg("server")
            .arg("--exit-with-parent")
            .arg("--config")
            .arg(&config_path)
            .env_remove("HODEI_TOKEN")
            .env_remove("HODEI_CA_CERT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("cannot start hodei server")?;
        let pid = child
            .id()
            .context("the server exited as soon as it started")?;
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        // Owned from here, so that a bench interrupted while the server starts still stops
        // it (see `Drop`).
        let mut server = Self {
            child,
            pid,
            url,
            token,
            ca_cert,
            log,
            _dir: dir,
        };

        let readyz = format!("{}/readyz", server.url);
        let mut http = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca_cert) = &server.ca_cert {
            let pem = std::fs::read(ca_cert)?;
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let http = http.build()?;
        let deadline = Instant::now() + SERVER_START_LIMIT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before it was ready; its log:\n{}",
                    log_tail(&server.log)
                );
            }
            let ready = http
                .get(&readyz)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the server was not ready within {SERVER_START_LIMIT:?}; its log:\n{}",
                    log_tail(&server.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))?;
            Ok(kib / 1024.0)
        };
        Ok(Memory {
            rss_mib: field("VmRSS:")?,
            peak_mib: field("VmHWM:")?,
        })
    }

    /// SIGTERM, then SIGKILL if the server has not stopped within [`SERVER_STOP_LIMIT`].
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .context("cannot signal the server")?;
        match tokio::time::timeout(SERVER_STOP_LIMIT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the server exited with {status}; its log:\n{}",
                        log_tail(&self.log)
                    );
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within {SERVER_STOP_LIMIT:?} of SIGTERM; killed it")
            }
        }
    }
}

impl Drop for ServerProcess {
    /// A bench that fails or is interrupted still stops its server, and gently: SIGTERM lets
    /// the server stop the agents it started, which SIGKILL would leave running.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(raw);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        // Longer than `stop` waits: SIGKILL now would leave the server's agents running,
        // and a loaded machine can take a while to stop a hundred of them.
        let deadline = Instant::now() + SERVER_STOP_LIMIT * 4;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.start_kill();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// PEM files made for one `--tls` run.
#[derive(Debug)]
struct CertificateFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a CA and a server certificate it signs for 127.0.0.1, as PEM files in `dir`.
fn make_certificates(dir: &Path) -> anyhow::Result<CertificateFiles> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hodei bench ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    Ok(CertificateFiles {
        ca: write("ca.pem", ca.pem())?,
        cert: write("server.pem", cert.pem())?,
        key: write("server-key.pem", key.serialize_pem())?,
    })
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50);
        assert_eq!(percentile(&values, 0.95), 95);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn requests_are_distinct_valid_workers() -> anyhow::Result<()> {
        let requests = Requests::new()?;
        let first = hodei_proto::convert::worker_from_request(requests.get(0))?;
        let other = hodei_proto::convert::worker_from_request(requests.get(19_999))?;
        assert_eq!(first.id.as_str(), "bench-000000");
        assert_eq!(other.id.as_str(), "bench-019999");
        assert_eq!(first.capabilities, other.capabilities);
        Ok(())
    }
}
