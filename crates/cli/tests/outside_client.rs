//! A client the project did not write in Rust: `tests/outside/client.py`, with stubs that
//! grpcio-tools generates from `proto/` alone, registers a worker, reads an error's
//! `google.rpc.BadRequest`, enrolls a worker session and runs a job against a real server.
//! `scripts/test` installs grpcio and grpcio-tools into `target/python-grpc` (this test
//! does it itself when they are missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ADMIN: &str = "outside-client-admin-token-0123456789";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where grpcio and grpcio-tools are, installing them from PyPI if they are not there.
fn python_packages() -> PathBuf {
    let dir = std::env::var_os("HODEI_PYTHON_GRPC")
        .map_or_else(|| workspace().join("target/python-grpc"), PathBuf::from);
    if !dir.join("grpc_tools").is_dir() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .args(["grpcio", "grpcio-tools"])
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "cannot install grpcio-tools into {}",
            dir.display()
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_built_from_the_proto_files_alone_registers_and_runs_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0);
    config.token = Some(ADMIN.into());
    let server = start_anywhere(config).await;
    let address = server.url().trim_start_matches("http://").to_owned();
    let packages = python_packages();
    let out = dir.path().join("stubs");
    std::fs::create_dir_all(&out).unwrap();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/outside/client.py");
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(client)
            .arg(workspace().join("proto"))
            .arg(&out)
            .arg(address)
            .arg(ADMIN)
            .env("PYTHONPATH", &packages)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("outside client: ok"));
    server.shutdown().await.unwrap();
}
