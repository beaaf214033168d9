//! `hodei dev`: a server on embedded defaults, for trying Hodei on one machine.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hodei_core::{PoolSpec, ProviderKind};
use hodei_server::{DockerSection, Server, ServerConfig};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address serving gRPC and HTTP.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    listen: SocketAddr,
    /// Where the database, the token and agent logs go.
    #[arg(long, default_value = ".hodei", value_name = "DIR")]
    data_dir: PathBuf,
    /// Warm workers in the `default` pool.
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: u32,
    /// Where the `default` pool's workers run: `local` processes, or `docker` containers of
    /// the image `hodei-agent:latest` on the local engine (build it first with
    /// `scripts/build-agent-image`; nothing is pulled).
    #[arg(long, default_value = "local", value_name = "PROVIDER", value_parser = parse_dev_provider)]
    provider: ProviderKind,
}

fn parse_dev_provider(text: &str) -> Result<ProviderKind, String> {
    match text {
        "local" => Ok(ProviderKind::Local),
        "docker" => Ok(ProviderKind::Docker),
        other => Err(format!(
            "{other}: hodei dev runs `local` or `docker` workers (kubernetes needs a \
             configuration file: hodei server --config)"
        )),
    }
}

/// The configuration `hodei dev` runs with.
pub fn dev_config(args: &DevArgs) -> ServerConfig {
    ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        pools: vec![PoolSpec::fixed("default", args.provider, args.workers)],
        docker: (args.provider == ProviderKind::Docker).then(DockerSection::default),
        ..ServerConfig::default()
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Ctrl-C while the pool is still warming up stops everything cleanly too.
    let stop = crate::shutdown_signal();
    let mut config = dev_config(&args);
    config.apply_env(|key| std::env::var(key).ok())?;
    if let Some(docker) = &config.docker {
        // Say now, not in a log line per failed worker, that the image is missing.
        if let Err(error) = hodei_server::check_docker(docker).await {
            let (hodei_ports::ProviderError::InvalidSpec(why)
            | hodei_ports::ProviderError::Unavailable(why)
            | hodei_ports::ProviderError::Failed(why)) = error;
            anyhow::bail!("hodei dev --provider docker: {why}");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another hodei running? try --listen)",
                config.listen
            )
        })?;
    // HODEI_OTLP_ENDPOINT: the dev server's spans too, not only its local agents'.
    let telemetry =
        crate::start_telemetry(config.telemetry.otlp_endpoint.as_deref(), "hodei-server")?;
    let server = Server::start(config, listener).await?;
    let url = server.url().to_owned();
    println!("Hodei dev server");
    println!("  API (gRPC + HTTP)  {url}");
    println!("  metrics            {url}/metrics");
    println!("  data               {}", server.data_dir().display());
    println!("  token              {}", server.token());
    println!(
        "  pool default       {} {} workers, starting",
        args.workers, args.provider
    );
    println!();
    println!("In another terminal:");
    println!("  export HODEI_SERVER={url} HODEI_TOKEN={}", server.token());
    println!("  hodei worker ls");
    println!();
    println!("Ctrl-C stops the server and its workers.");
    stop.await;
    println!("stopping workers...");
    let stopped = server.shutdown().await;
    crate::stop_telemetry(telemetry).await;
    stopped?;
    Ok(())
}
