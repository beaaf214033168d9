//! Helpers shared by the end-to-end tests: a server on 127.0.0.1:0 with local agents.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use hodei_core::{PoolSpec, ProviderKind, WorkerId, WorkerState};
use hodei_ports::WorkerFilter;
use hodei_server::{Server, ServerConfig};
use hodei_testkit::wait_for;
use tokio::net::TcpListener;

pub const LIMIT: Duration = Duration::from_secs(30);
pub const HODEI: &str = env!("CARGO_BIN_EXE_hodei");

/// A server config with a `default` pool of `workers` local agents, fast loops.
pub fn config(data_dir: &Path, workers: u32) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        pools: vec![PoolSpec::fixed("default", ProviderKind::Local, workers)],
        ..ServerConfig::default()
    };
    config.local.agent_program = Some(HODEI.into());
    config.local.stop_grace = Duration::from_secs(5);
    config.reconcile.interval = Duration::from_millis(200);
    config
}

pub async fn start(config: ServerConfig) -> Server {
    let listener = TcpListener::bind(config.listen).await.unwrap();
    Server::start(config, listener).await.unwrap()
}

/// Starts on an ephemeral port.
pub async fn start_anywhere(mut config: ServerConfig) -> Server {
    config.listen = "127.0.0.1:0".parse().unwrap();
    start(config).await
}

/// A fresh agent enrollment token: what a hand-started agent presents (the admin token
/// cannot open a worker session).
pub async fn agent_token(server: &Server) -> String {
    let (_, token) = server
        .credentials()
        .create(hodei_modules::NewCredential {
            role: Some(hodei_core::credential::Role::Agent),
            description: "test agent".into(),
            ..hodei_modules::NewCredential::default()
        })
        .await
        .unwrap();
    token.expose().to_owned()
}

/// Whether `pid` is a live (not zombie) `hodei agent` for worker `id`.
pub fn process_is_agent(pid: i32, id: &WorkerId) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    !zombie && args.iter().any(|a| a == "agent") && args.iter().any(|a| a == id.as_str())
}

/// The agent pid recorded by the local provider, if it is alive.
pub fn agent_pid(data_dir: &Path, id: &WorkerId) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("local").join(format!("{id}.pid"))).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(record["pid"].as_i64()?).ok()?;
    process_is_agent(pid, id).then_some(pid)
}

/// Waits until `count` workers are idle and registered.
pub async fn wait_for_registered_workers(server: &Server, count: usize) -> Vec<WorkerId> {
    wait_for("workers to be registered and idle", LIMIT, || async {
        let records = server
            .store()
            .list_workers(&WorkerFilter::live())
            .await
            .ok()?;
        let ready: Vec<WorkerId> = records
            .iter()
            .filter(|r| r.state == WorkerState::Idle && r.registered)
            .map(|r| r.worker.id.clone())
            .collect();
        let registered = server.scheduler().len();
        (ready.len() == count && registered == count).then_some(ready)
    })
    .await
}

/// Waits until the worker's agent has its session open.
pub async fn wait_for_connected(server: &Server, id: &WorkerId) {
    wait_for("the agent's session", LIMIT, || async {
        server
            .scheduler()
            .get(id)
            .filter(|w| w.connected)
            .map(|_| ())
    })
    .await;
}

/// Kills a child process when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
