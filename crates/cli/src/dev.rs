//! `hodei dev`: a server on embedded defaults, for trying Hodei on one machine.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hodei_core::{PoolSpec, ProviderKind};
use hodei_server::{Server, ServerConfig};

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
}

/// The configuration `hodei dev` runs with.
pub fn dev_config(args: &DevArgs) -> ServerConfig {
    ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        pools: vec![PoolSpec::fixed(
            "default",
            ProviderKind::Local,
            args.workers,
        )],
        ..ServerConfig::default()
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut config = dev_config(&args);
    config.apply_env(|key| std::env::var(key).ok())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another hodei running? try --listen)",
                config.listen
            )
        })?;
    let server = Server::start(config, listener).await?;
    let url = server.url().to_owned();
    println!("Hodei dev server");
    println!("  API (gRPC + HTTP)  {url}");
    println!("  metrics            {url}/metrics");
    println!("  data               {}", server.data_dir().display());
    println!("  token              {}", server.token());
    println!(
        "  pool default       {} local workers, starting",
        args.workers
    );
    println!();
    println!("In another terminal:");
    println!("  export HODEI_SERVER={url} HODEI_TOKEN={}", server.token());
    println!("  hodei worker ls");
    println!();
    println!("Ctrl-C stops the server and its workers.");
    crate::shutdown_signal().await;
    println!("stopping workers...");
    server.shutdown().await?;
    Ok(())
}
