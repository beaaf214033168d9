//! The `hodei` binary: parses the command line and hands over to the library crates.

mod bench;
mod client;
mod dev;
mod jobs;
mod tenants;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

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
    /// Tenants: weights, quotas, what they hold, their share of starts.
    #[command(subcommand)]
    Tenant(tenants::TenantCommand),
    /// Submit, list, follow and cancel jobs.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Measure a real server; each run prints one JSON object on stdout.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Configuration file (TOML). Every key is optional; see the README for the reference.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Listen on this address instead of the file's `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Server URL.
    #[arg(long, env = "HODEI_SERVER", value_name = "URL")]
    server: String,
    /// Bearer token; prefer the environment variable, which `ps` does not show.
    #[arg(
        long,
        env = "HODEI_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: String,
    /// PEM CA certificate(s) to trust for an https:// server instead of the system's roots.
    #[arg(long, env = "HODEI_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
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

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = hodei_server::ServerConfig::load(&args.config, |key| std::env::var(key).ok())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    hodei_server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut config =
        hodei_agent::AgentConfig::new(args.server, args.token, args.worker_id, args.labels)?;
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
    hodei_agent::run(config, shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => {
            init_logging("info");
            dev::run(args).await
        }
        Command::Server(args) => {
            init_logging("info");
            server(args).await
        }
        Command::Agent(args) => {
            init_logging("info");
            agent(args).await
        }
        Command::Worker(command) => {
            init_logging("warn");
            client::worker(command).await
        }
        Command::Pool(command) => {
            init_logging("warn");
            client::pool(command).await
        }
        Command::Tenant(command) => {
            init_logging("warn");
            tenants::tenant(command).await
        }
        Command::Bench(command) => {
            init_logging("warn");
            bench::run(command).await
        }
        Command::Job(command) => {
            init_logging("warn");
            match jobs::job(command).await {
                Ok(code) => return ExitCode::from(code),
                Err(error) => Err(error),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
