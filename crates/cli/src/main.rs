//! The `hodei` binary: parses the command line and hands over to the library crates.

mod bench;
mod client;
mod dev;
mod jobs;
mod report;
mod simulate;
mod tenants;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hodei_server::LogFormat;

/// Hodei keeps pools of CI build workers warm and feeds them jobs.
#[derive(Debug, Parser)]
#[command(name = "hodei", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server with embedded defaults: SQLite under ./.hodei, the local provider and a
    /// static pool `default` of 2 warm workers. Ctrl-C stops everything, workers included.
    Dev(dev::DevArgs),
    /// Run the control plane from a configuration file.
    Server(ServerArgs),
    /// Run the worker agent (started by providers; rarely by hand).
    Agent(AgentArgs),
    /// Inspect and manage workers.
    #[command(subcommand)]
    Worker(client::WorkerCommand),
    /// Inspect pools.
    #[command(subcommand)]
    Pool(client::PoolCommand),
    /// Replicas: who leads (`hodei cluster status`).
    #[command(subcommand)]
    Cluster(client::ClusterCommand),
    /// Tenants: weights, quotas, what they hold, their share of starts.
    #[command(subcommand)]
    Tenant(tenants::TenantCommand),
    /// Submit, list, follow and cancel jobs.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Create, list and revoke credentials (admin tokens, agent enrollment tokens).
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Reports: what workers cost, by tenant, pool or queue, with recommendations.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Replay a job trace against configurations on a virtual clock (`generate` makes a
    /// trace); runs offline.
    Simulate(simulate::SimulateArgs),
    /// Measure a real server; each run prints one JSON object on stdout.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// (Internal) The agent runs every job under this supervisor: it leads the job's process
    /// group and kills it when the agent dies or its lease (renewed on stdin) runs out.
    #[command(name = "__job-supervise", hide = true)]
    JobSupervise(JobSuperviseArgs),
    /// (Internal) Becomes the job's command with SIGKILL as its parent-death signal.
    #[command(name = "__job-exec", hide = true)]
    JobExec(JobExecArgs),
}

#[derive(Debug, Args)]
struct JobSuperviseArgs {
    /// The lease left at start, milliseconds.
    #[arg(long, value_name = "MS")]
    lease_ms: u64,
    /// The job's command and arguments.
    #[arg(last = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct JobExecArgs {
    /// The supervisor's pid: if it is already gone, nothing runs.
    #[arg(long, value_name = "PID")]
    parent: i32,
    /// The job's command and arguments.
    #[arg(last = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Configuration file (TOML). Every key is optional; see the README for the reference.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Listen on this address instead of the file's `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Stop (as on SIGTERM) when the process that started this one exits; `hodei bench`
    /// uses it so that a killed bench leaves no server behind.
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Server URL, or several separated by commas (replicas): the agent keeps a session
    /// with the leader, moving to the next URL when a server is gone or refuses it.
    #[arg(long, env = "HODEI_SERVER", value_name = "URL[,URL...]")]
    server: String,
    /// A file holding this agent's credential (its worker credential, or an agent
    /// enrollment token from `hodei token create --role agent`). The agent reads it and
    /// removes it, so the jobs it runs cannot find it. The way providers start agents.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The credential itself. Jobs running as the agent's user could read it from the
    /// agent's environment or command line were the agent dumpable; prefer --token-file.
    #[arg(
        long,
        env = "HODEI_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// Run jobs as this user (`uid[:gid]` or a name) when the agent runs as root, so they
    /// cannot read the agent's credential or memory.
    #[arg(long, value_name = "USER")]
    job_user: Option<String>,
    /// PEM CA certificate(s) to trust for an https:// server instead of the system's roots.
    #[arg(long, env = "HODEI_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Export the job's spans (accepted, started, finished) to this OpenTelemetry
    /// collector (OTLP over gRPC, e.g. http://127.0.0.1:4317). Off when unset. Local agents
    /// get the server's `[telemetry] otlp_endpoint`.
    #[arg(long, env = "HODEI_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// This worker's id; made up when not given.
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
    /// A label, `key=value`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// CPU cores to announce; the machine's when not given.
    #[arg(long, value_name = "N")]
    cpu: Option<u32>,
    /// Memory to announce in MiB; the machine's when not given.
    #[arg(long, value_name = "MIB")]
    memory_mb: Option<u64>,
    /// Jobs without a working directory get a fresh one under this directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    hodei_agent::parse_label(text).map_err(|e| e.to_string())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a server gets SIGTERM during its start-up (pools
/// pre-warming) too, and must then stop cleanly, stopping the agents it started, instead of
/// dying by the signal's default action and leaving them behind.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (interrupt, terminate) => {
                for error in [interrupt.err(), terminate.err()].into_iter().flatten() {
                    tracing::error!(%error, "cannot listen for a stop signal; waiting for Ctrl-C");
                }
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Asks the kernel for SIGTERM when our parent exits, then checks that the parent has not
/// already gone (re-parented to init or a subreaper) before the request took effect.
fn exit_with_parent() -> anyhow::Result<()> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("cannot ask to be stopped with the parent process")?;
    if nix::unistd::getppid() != parent {
        anyhow::bail!("the process that started this server has already exited");
    }
    Ok(())
}

/// Log lines to stderr: coloured only when stderr is a terminal (local agents' logs go to
/// files), JSON when `format` says so.
fn init_logging(default: &str, format: LogFormat) {
    init_logging_with(default, format, None);
}

/// [`init_logging`], with `tracing` spans also exported when telemetry runs.
fn init_logging_with(
    default: &str,
    format: LogFormat,
    telemetry: Option<&hodei_telemetry::Telemetry>,
) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines.json().with_current_span(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(telemetry.map(|telemetry| telemetry.layer()))
        .with(filter)
        .init();
}

/// Starts OpenTelemetry export when an endpoint is set (see `hodei_telemetry`).
fn start_telemetry(
    endpoint: Option<&str>,
    service: &'static str,
) -> anyhow::Result<Option<hodei_telemetry::Telemetry>> {
    endpoint
        .map(|endpoint| hodei_telemetry::Telemetry::start(endpoint, service))
        .transpose()
        .context("cannot start OpenTelemetry export")
}

/// Sends the last spans; off the runtime's workers, as the export blocks.
async fn stop_telemetry(telemetry: Option<hodei_telemetry::Telemetry>) {
    if let Some(telemetry) = telemetry {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
}

/// `HODEI_LOG_FORMAT` for every command but `server` (which reads `[log] format` too).
fn log_format_from_env() -> anyhow::Result<LogFormat> {
    match std::env::var("HODEI_LOG_FORMAT") {
        Ok(text) if !text.is_empty() => Ok(text.parse::<LogFormat>()?),
        _ => Ok(LogFormat::Text),
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    if args.exit_with_parent {
        exit_with_parent()?;
    }
    // Before anything slow: a stop signal from now on means a clean shutdown.
    let stop = shutdown_signal();
    let mut config = hodei_server::ServerConfig::load(&args.config, |key| std::env::var(key).ok())?;
    let telemetry = start_telemetry(config.telemetry.otlp_endpoint.as_deref(), "hodei-server")?;
    init_logging_with("info", config.log.format, telemetry.as_ref());
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let result = hodei_server::run(config, listener, stop).await;
    stop_telemetry(telemetry).await;
    result?;
    Ok(())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    hodei_agent::protect_process_memory();
    let token = match (args.token_file, args.token) {
        (Some(path), _) => hodei_agent::take_token_file(&path)?,
        (None, Some(token)) => {
            tracing::warn!(
                "the credential came from --token or HODEI_TOKEN; --token-file keeps it out of the agent's command line and environment"
            );
            token
        }
        (None, None) => anyhow::bail!("pass --token-file FILE (or --token / HODEI_TOKEN)"),
    };
    let mut config =
        hodei_agent::AgentConfig::new(args.server, token, args.worker_id, args.labels)?;
    if let Some(user) = args.job_user {
        hodei_core::worker::validate_user("job_user", &user)?;
        hodei_agent::job::resolve_user(&user)
            .map_err(|reason| hodei_core::ValidationError::new("job_user", reason))?;
        config.job_user = Some(user);
    }
    if let Some(cpu) = args.cpu {
        config.capabilities.cpu_cores = cpu;
    }
    if let Some(memory_mb) = args.memory_mb {
        config.capabilities.memory_mb = memory_mb;
    }
    config
        .capabilities
        .validate()
        .context("invalid --cpu or --memory-mb")?;
    if let Some(work_dir) = args.work_dir {
        config.work_dir = work_dir;
    }
    config.ca_cert = args.ca_cert;
    config.job_shim =
        Some(std::env::current_exe().context("cannot find the hodei executable for jobs")?);
    hodei_agent::run(config, shutdown_signal()).await?;
    Ok(())
}

/// mimalloc instead of the C library's malloc: the dispatcher, the store's codecs and the
/// simulator allocate many small, short-lived values (job clones, ids, protobuf messages),
/// where glibc's malloc spent a fifth of `hodei bench schedule`'s time (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The job shims run before any runtime or thread exists: they are on every job's path.
    match cli.command {
        Command::JobSupervise(args) => {
            let lease = std::time::Duration::from_millis(args.lease_ms);
            exit_code(hodei_agent::exec::supervise(lease, args.command))
        }
        Command::JobExec(args) => exit_code(hodei_agent::exec::exec(args.parent, args.command)),
        command => match tokio::runtime::Runtime::new() {
            Ok(runtime) => {
                quiet_on_broken_pipe();
                runtime.block_on(run(command))
            }
            Err(error) => {
                eprintln!("error: cannot start the runtime: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// How a shell reports a process killed by SIGPIPE: what `hodei job ls | head` ends with
/// once `head` has read its lines, as other Unix tools do.
const BROKEN_PIPE: u8 = 141;

/// Whether a panic message is `println!` failing because the reader of stdout went away.
fn is_broken_pipe_panic(message: &str) -> bool {
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

/// A reader of our output that went away ends the command quietly instead of with a panic
/// from `println!` (Rust ignores SIGPIPE, so the write fails instead of killing us).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload_as_str().is_some_and(is_broken_pipe_panic) {
            std::process::exit(i32::from(BROKEN_PIPE));
        }
        default(info);
    }));
}

/// Whether `error` comes from writing to a reader that went away.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run(command: Command) -> ExitCode {
    let format = match log_format_from_env() {
        Ok(format) => format,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Dev(args) => {
            init_logging("info", format);
            hodei_agent::protect_process_memory();
            dev::run(args).await
        }
        // Logging starts once the configuration file is read.
        Command::Server(args) => {
            // Other processes of this user (a local job) cannot read our environment or
            // memory.
            hodei_agent::protect_process_memory();
            server(args).await
        }
        Command::Agent(args) => match start_telemetry(args.otlp_endpoint.as_deref(), "hodei-agent")
        {
            Ok(telemetry) => {
                init_logging_with("info", format, telemetry.as_ref());
                let result = agent(args).await;
                stop_telemetry(telemetry).await;
                result
            }
            Err(error) => Err(error),
        },
        Command::Worker(command) => {
            init_logging("warn", format);
            client::worker(command).await
        }
        Command::Pool(command) => {
            init_logging("warn", format);
            client::pool(command).await
        }
        Command::Cluster(command) => {
            init_logging("warn", format);
            client::cluster(command).await
        }
        Command::Tenant(command) => {
            init_logging("warn", format);
            tenants::tenant(command).await
        }
        Command::Token(command) => {
            init_logging("warn", format);
            tokens::token(command).await
        }
        Command::Report(command) => {
            init_logging("warn", format);
            report::report(command).await
        }
        Command::Bench(command) => {
            init_logging("warn", format);
            bench::run(command).await
        }
        Command::Simulate(args) => {
            init_logging("warn", format);
            simulate::run(args)
        }
        Command::Job(command) => {
            init_logging("warn", format);
            match jobs::job(command).await {
                Ok(code) => return ExitCode::from(code),
                Err(error) => Err(error),
            }
        }
        // Handled in `main`, before the runtime starts.
        Command::JobSupervise(_) | Command::JobExec(_) => {
            Err(anyhow::anyhow!("internal command run in the wrong place"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::from(BROKEN_PIPE),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gone_away_is_told_from_other_failures() {
        assert!(is_broken_pipe_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe_panic("index out of bounds"));
        let error = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("cannot print the logs");
        assert!(is_broken_pipe(&error));
        assert!(!is_broken_pipe(&anyhow::anyhow!("server said no")));
    }
}
