//! `hodei dev` as a user runs it: the real binary, its printed token, a job through the CLI,
//! and Ctrl-C (SIGINT) stopping everything. On Docker too (`--provider docker`), against the
//! real engine and the agent image `scripts/test` builds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HODEI: &str = env!("CARGO_BIN_EXE_hodei");
const LIMIT: Duration = Duration::from_secs(60);

struct Dev {
    child: Child,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `hodei dev` with `args` and reads its address and token from what it prints.
fn start_dev(args: &[&str]) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(HODEI)
        .arg("dev")
        .args(["--listen", &listen, "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .env_remove("HODEI_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut token = None;
    for line in stdout.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("token") {
            token = Some(rest.trim().to_owned());
        }
        if line.contains("Ctrl-C stops") {
            break;
        }
    }
    let token = token.expect("hodei dev prints its token");
    // Keep reading: dev prints as it stops, and a closed pipe would fail it.
    std::thread::spawn(move || stdout.for_each(drop));
    Dev {
        child,
        url: format!("http://{listen}"),
        token,
        _dir: dir,
    }
}

fn hodei(dev: &Dev, args: &[&str]) -> std::process::Output {
    Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", &dev.url)
        .env("HODEI_TOKEN", &dev.token)
        .output()
        .unwrap()
}

/// SIGINT, as Ctrl-C, and the exit status.
fn interrupt(mut dev: Dev) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(dev.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "hodei dev did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_a_job(dev: &Dev) {
    let out = hodei(
        dev,
        &["job", "submit", "--wait", "--", "echo", "hello from dev"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from dev"));
}

#[test]
fn hodei_dev_runs_a_job_on_local_workers_and_stops_on_ctrl_c() {
    let dev = start_dev(&["--workers", "1"]);
    run_a_job(&dev);
    assert!(interrupt(dev).success());
}

fn containers_of(pool_worker_prefix: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|name| name.starts_with(pool_worker_prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn hodei_dev_runs_docker_workers_with_provider_docker() {
    let dev = start_dev(&["--provider", "docker", "--workers", "1"]);
    let deadline = Instant::now() + LIMIT;
    let list = loop {
        let out = hodei(&dev, &["worker", "ls", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if list["workers"][0]["id"].is_string() {
            break list;
        }
        assert!(Instant::now() < deadline, "no worker: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let worker = list["workers"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list["workers"][0]["provider"], "docker", "{list}");
    run_a_job(&dev);
    assert!(interrupt(dev).success());
    // Ctrl-C stops everything: the worker's container is removed.
    assert!(containers_of(&format!("hodei-{worker}")).is_empty());
}

#[test]
fn hodei_dev_refuses_a_provider_it_cannot_run() {
    let out = Command::new(HODEI)
        .args(["dev", "--provider", "kubernetes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("local` or `docker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
