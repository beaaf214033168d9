//! The docker provider against the real Docker engine of this machine, with the agent image
//! `scripts/build-agent-image` builds. Each test uses its own `instance` label and worker id
//! prefix, so tests running in parallel never see each other's containers, and a guard
//! removes every container of its instance when the test ends, even by a panic.
//! The last test runs a job end to end: a real `hodei server` process (the workspace's
//! `target/debug/hodei`, which `scripts/test` builds), a worker created by the provider,
//! and `hodei job submit --wait`.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{KillContainerOptions, LogsOptions};
use futures::StreamExt;
use hodei_core::{WorkerId, WorkerSpec};
use hodei_docker::{
    CONTAINER_CA_CERT, DEFAULT_IMAGE, DockerProvider, DockerProviderConfig, LABEL_INSTANCE,
    LABEL_MANAGED, LABEL_POOL, LABEL_WORKER_ID, container_name,
};
use hodei_ports::{ProviderError, WorkerProvider};
use hodei_testkit::{provider_contract, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The credential the containers are created with.
const TOKEN: &str = "test-credential";

/// One test's installation: a unique instance label whose containers are removed on drop.
struct Instance {
    name: String,
}

impl Instance {
    fn new() -> Self {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        Self {
            name: format!("test-{suffix}"),
        }
    }

    /// A worker id unique to this test.
    fn worker(&self, n: u32) -> WorkerId {
        WorkerId::new(format!("{}-{n}", self.name)).expect("valid id")
    }

    fn config(&self, server_url: &str) -> DockerProviderConfig {
        let mut config = DockerProviderConfig::new(server_url, &self.name);
        config.stop_grace = Duration::from_secs(2);
        config.default_image = agent_image();
        config
    }

    fn provider(&self) -> DockerProvider {
        DockerProvider::new(self.config("http://127.0.0.1:9")).expect("provider")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Synchronous on purpose: it must run while a failed test unwinds.
        let filter = format!("label={LABEL_INSTANCE}={}", self.name);
        let Ok(output) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

async fn engine() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("the docker engine answers")
}

/// The agent image the tests run: `HODEI_TEST_AGENT_IMAGE` (the engine may be shared with
/// other checkouts, each with its own tag), else [`DEFAULT_IMAGE`].
fn agent_image() -> String {
    std::env::var("HODEI_TEST_AGENT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned())
}

/// The tests need the agent image; there is no registry to pull it from.
async fn require_image() {
    let image = agent_image();
    if let Err(error) = engine().await.inspect_image(&image).await {
        panic!(
            "the agent image {image} is missing ({error}): build it with \
             scripts/build-agent-image (scripts/test does)"
        );
    }
}

async fn container_exists(docker: &Docker, id: &WorkerId) -> bool {
    docker
        .inspect_container(&container_name(id), None)
        .await
        .is_ok()
}

async fn logs(docker: &Docker, id: &WorkerId) -> String {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut stream = docker.logs(&container_name(id), Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}

#[tokio::test]
async fn passes_the_provider_contract() {
    require_image().await;
    let instance = Instance::new();
    provider_contract(&instance.provider(), &instance.name).await;
}

#[tokio::test]
async fn container_gets_the_intended_labels_env_limits_and_command() {
    require_image().await;
    let instance = Instance::new();
    let ca = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(ca.path(), "not really a certificate\n").expect("write");
    let mut config = instance.config("http://127.0.0.1:9");
    config.ca_cert = Some(ca.path().to_owned());
    let provider = DockerProvider::new(config).expect("provider");
    let id = instance.worker(1);
    let mut spec = WorkerSpec {
        pool: Some("builds".into()),
        ..WorkerSpec::default()
    };
    spec.capabilities.cpu_cores = 1;
    spec.capabilities.memory_mb = 256;
    spec.labels.insert("arch".into(), "amd64".into());
    spec.env.insert("FOO".into(), "bar".into());

    let worker = provider
        .create_worker(
            &id,
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    assert_eq!(worker.metadata.provider, hodei_core::ProviderKind::Docker);
    assert_eq!(worker.metadata.pool.as_deref(), Some("builds"));

    let docker = engine().await;
    let inspect = docker
        .inspect_container(&container_name(&id), None)
        .await
        .expect("inspect");
    let config = inspect.config.expect("config");
    let labels = config.labels.expect("labels");
    let expected_labels = HashMap::from([
        (LABEL_MANAGED, "true"),
        (LABEL_INSTANCE, instance.name.as_str()),
        (LABEL_WORKER_ID, id.as_str()),
        (LABEL_POOL, "builds"),
    ]);
    for (key, value) in expected_labels {
        assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
    }
    let env = config.env.expect("env");
    assert!(
        !env.iter()
            .any(|e| e.starts_with("HODEI_TOKEN") || e.contains(TOKEN)),
        "no credential in the container's configuration: {env:?}"
    );
    for expected in [
        format!("HODEI_CA_CERT={CONTAINER_CA_CERT}"),
        "FOO=bar".to_owned(),
    ] {
        assert!(env.contains(&expected), "{expected} in {env:?}");
    }
    assert_eq!(
        config.cmd.expect("cmd"),
        [
            "hodei",
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--worker-id",
            id.as_str(),
            "--work-dir",
            "/work",
            "--token-file",
            "/hodei-credential",
            "--cpu",
            "1",
            "--memory-mb",
            "256",
            "--label",
            "arch=amd64",
        ]
    );
    assert_eq!(config.image.as_deref(), Some(agent_image().as_str()));
    let host = inspect.host_config.expect("host config");
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.memory, Some(256 * 1024 * 1024));
    assert_eq!(host.network_mode.as_deref(), Some("host"));
    let mounts = inspect.mounts.expect("mounts");
    let ca_mount = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some(CONTAINER_CA_CERT))
        .expect("the ca certificate is mounted");
    assert_eq!(ca_mount.rw, Some(false));
    assert_eq!(
        inspect.state.and_then(|s| s.running),
        Some(true),
        "the container runs"
    );

    provider.terminate_worker(&id).await.expect("terminate");
}

#[tokio::test]
async fn a_new_provider_of_the_same_instance_adopts_containers_and_another_does_not() {
    require_image().await;
    let instance = Instance::new();
    let id = instance.worker(1);
    instance
        .provider()
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");

    // As after a server restart.
    let restarted = instance.provider();
    assert_eq!(
        restarted.list_workers().await.expect("list"),
        vec![id.clone()]
    );

    let other = Instance::new();
    let stranger = other.provider();
    assert!(
        !stranger.list_workers().await.expect("list").contains(&id),
        "another instance does not see our container"
    );
    stranger
        .terminate_worker(&id)
        .await
        .expect("terminating someone else's worker id is a no-op");
    let docker = engine().await;
    assert!(
        container_exists(&docker, &id).await,
        "another instance never removes our container"
    );
    let conflict = stranger
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("the name is taken by another instance");
    assert!(
        matches!(&conflict, ProviderError::Failed(m) if m.contains(&container_name(&id))),
        "{conflict:?}"
    );

    restarted.terminate_worker(&id).await.expect("terminate");
    assert!(restarted.list_workers().await.expect("list").is_empty());
}

#[tokio::test]
async fn terminate_removes_the_container_and_is_idempotent() {
    require_image().await;
    let instance = Instance::new();
    let provider = instance.provider();
    let docker = engine().await;
    let id = instance.worker(1);
    provider
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    assert!(container_exists(&docker, &id).await);

    provider.terminate_worker(&id).await.expect("terminate");
    assert!(!container_exists(&docker, &id).await, "container removed");
    provider.terminate_worker(&id).await.expect("again");
    provider
        .terminate_worker(&instance.worker(2))
        .await
        .expect("a worker that never existed");
}

#[tokio::test]
async fn creating_an_existing_worker_replaces_its_container() {
    require_image().await;
    let instance = Instance::new();
    let provider = instance.provider();
    let docker = engine().await;
    let id = instance.worker(1);
    let spec = WorkerSpec::default();
    provider
        .create_worker(
            &id,
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    let first = docker
        .inspect_container(&container_name(&id), None)
        .await
        .expect("inspect")
        .id;
    provider
        .create_worker(
            &id,
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("again");
    let second = docker
        .inspect_container(&container_name(&id), None)
        .await
        .expect("inspect")
        .id;
    assert_ne!(first, second, "a fresh container");
    assert_eq!(provider.list_workers().await.expect("list"), vec![id]);
}

#[tokio::test]
async fn an_exited_container_is_not_listed_and_is_removed() {
    require_image().await;
    let instance = Instance::new();
    let provider = instance.provider();
    let docker = engine().await;
    let (dies, lives) = (instance.worker(1), instance.worker(2));
    for id in [&dies, &lives] {
        provider
            .create_worker(
                id,
                &WorkerSpec::default(),
                &hodei_ports::AgentCredential::new("test-credential"),
            )
            .await
            .expect("create");
    }
    docker
        .kill_container(&container_name(&dies), None::<KillContainerOptions>)
        .await
        .expect("kill");
    wait_for(
        "the killed container to exit",
        Duration::from_secs(30),
        || {
            let docker = docker.clone();
            let name = container_name(&dies);
            async move {
                let state = docker.inspect_container(&name, None).await.ok()?.state?;
                (state.running == Some(false)).then_some(())
            }
        },
    )
    .await;

    // Its agent died with it, its jobs too: the provider says so, and not of the live one.
    assert!(provider.confirm_dead(&dies).await.expect("inspect"));
    assert!(!provider.confirm_dead(&lives).await.expect("inspect"));
    assert_eq!(
        provider.list_workers().await.expect("list"),
        vec![lives.clone()]
    );
    assert!(
        provider.confirm_dead(&dies).await.expect("inspect"),
        "a removed container is dead too"
    );
    assert!(
        !container_exists(&docker, &dies).await,
        "the exited container is removed, not leaked"
    );
}

#[tokio::test]
async fn a_missing_image_is_an_invalid_spec_naming_it() {
    require_image().await;
    let instance = Instance::new();
    let provider = instance.provider();
    let spec = WorkerSpec {
        image: Some("hodei-no-such-image:missing".into()),
        ..WorkerSpec::default()
    };
    let error = provider
        .create_worker(
            &instance.worker(1),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("no such image");
    match &error {
        ProviderError::InvalidSpec(message) => {
            assert!(message.contains("hodei-no-such-image:missing"), "{message}");
            assert!(message.contains("scripts/build-agent-image"), "{message}");
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(!error.is_retryable());
    assert!(provider.list_workers().await.expect("list").is_empty());
}

#[tokio::test]
async fn check_image_finds_the_agent_image_and_names_how_to_build_a_missing_one() {
    let provider = Instance::new().provider();
    provider
        .check_image(None)
        .await
        .expect("scripts/test builds the agent image before the tests");
    let error = provider
        .check_image(Some("hodei-no-such-image:never"))
        .await
        .expect_err("missing image");
    assert!(
        matches!(&error, ProviderError::InvalidSpec(m)
            if m.contains("hodei-no-such-image:never") && m.contains("scripts/build-agent-image")),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_engine_is_unavailable_naming_the_socket() {
    let instance = Instance::new();
    let mut config = instance.config("http://127.0.0.1:9");
    config.docker_host = Some("unix:///nonexistent/hodei-test/docker.sock".into());
    let provider = DockerProvider::new(config).expect("new contacts nothing");
    let errors = [
        provider.ping().await.expect_err("ping"),
        provider.list_workers().await.expect_err("list"),
        provider
            .create_worker(
                &instance.worker(1),
                &WorkerSpec::default(),
                &hodei_ports::AgentCredential::new("test-credential"),
            )
            .await
            .expect_err("create"),
        provider
            .terminate_worker(&instance.worker(1))
            .await
            .expect_err("terminate"),
    ];
    for error in errors {
        assert!(
            matches!(&error, ProviderError::Unavailable(m) if m.contains("/nonexistent/hodei-test/docker.sock")),
            "{error:?}"
        );
        assert!(error.is_retryable());
    }
}

#[tokio::test]
async fn the_agent_in_the_container_runs_and_reaches_the_host_loopback() {
    require_image().await;
    let instance = Instance::new();
    // Host networking: the agent reaches a listener on the host's 127.0.0.1. It speaks
    // gRPC to something that is not a server, so it keeps reconnecting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let provider = DockerProvider::new(instance.config(&url)).expect("provider");
    let id = instance.worker(1);
    let mut spec = WorkerSpec::default();
    // Connection failures are debug lines; the spec's environment reaches the agent.
    spec.env
        .insert("RUST_LOG".into(), "info,hodei_agent=debug".into());
    provider
        .create_worker(
            &id,
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");

    let accepted = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await;
    let docker = engine().await;
    let output = logs(&docker, &id).await;
    assert!(
        matches!(accepted, Ok(Ok(_))),
        "the agent never connected to {url}; its output:\n{output}"
    );
    // Hang up and stop listening: from now on every attempt fails.
    drop(accepted);
    drop(listener);

    let output = wait_for(
        "the agent to log its start and failed connection attempts",
        Duration::from_secs(30),
        || {
            let docker = docker.clone();
            let id = id.clone();
            async move {
                let output = logs(&docker, &id).await;
                (output.contains("agent started")
                    && output.contains("cannot connect to the server"))
                .then_some(output)
            }
        },
    )
    .await;
    for broken in ["exec format error", "error while loading shared libraries"] {
        assert!(!output.contains(broken), "{output}");
    }
    assert_eq!(
        provider.list_workers().await.expect("list"),
        vec![id.clone()]
    );
    provider.terminate_worker(&id).await.expect("terminate");
}

/// The `hodei` binary the agent image was built from; `scripts/test` builds both.
fn hodei_binary() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        std::path::PathBuf::from,
    );
    let binary = target.join("debug/hodei");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p hodei-cli --bin hodei` (scripts/test does)",
        binary.display()
    );
    binary
}

/// A `hodei server` process, killed when dropped.
struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_job_runs_in_a_docker_worker_of_a_real_server() {
    require_image().await;
    let instance = Instance::new();
    let hodei = hodei_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let token = "docker-e2e-token-0123456789";
    let config = dir.path().join("hodei.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ntoken = \"{token}\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let _server = ServerProcess(
        Command::new(&hodei)
            .args(["server", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hodei server"),
    );
    // A bare HTTP/1.1 request: no HTTP client dependency for one probe.
    wait_for(
        "the server to be ready",
        Duration::from_secs(60),
        || async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.ok()?;
            answer.starts_with("HTTP/1.1 200").then_some(())
        },
    )
    .await;

    // An agent enrollment token: the agent enrols its worker with it.
    let created = tokio::process::Command::new(&hodei)
        .args(["token", "create", "--role", "agent"])
        .env("HODEI_SERVER", &url)
        .env("HODEI_TOKEN", token)
        .output()
        .await
        .expect("hodei token create");
    assert!(created.status.success(), "{created:?}");
    let agent_token = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let mut provider_config = instance.config(&url);
    provider_config.stop_grace = Duration::from_secs(2);
    let provider = DockerProvider::new(provider_config).expect("provider");
    let id = instance.worker(1);
    provider
        .create_worker(
            &id,
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new(agent_token),
        )
        .await
        .expect("create");

    let submit = tokio::process::Command::new(&hodei)
        .args(["job", "submit", "--wait", "--timeout", "60", "--script"])
        .arg("test -f /.dockerenv && echo \"in a container, in $(pwd)\"")
        .env("HODEI_SERVER", &url)
        .env("HODEI_TOKEN", token)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), submit)
        .await
        .expect("the job finishes in time")
        .expect("run hodei job submit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let server_log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "job failed: {}\nstdout: {stdout}\nagent: {}\nserver: {server_log}",
        String::from_utf8_lossy(&output.stderr),
        logs(&engine().await, &id).await,
    );
    assert!(
        stdout.starts_with("in a container, in /work/"),
        "the job ran in the container's work dir: {stdout}"
    );
    provider.terminate_worker(&id).await.expect("terminate");
}
