//! The `docker` worker provider: every worker is a container running `hodei agent`,
//! created through the Docker Engine API (bollard).
//!
//! Ownership is carried by labels, never by names alone: `io.hodei.managed=true`,
//! `io.hodei.instance=<instance>` (one Hodei installation, so two servers sharing an engine
//! never adopt or stop each other's containers) and `io.hodei.worker-id=<id>`. A restarted
//! server finds its containers again through these labels.
//!
//! Choices a platform engineer may ask about:
//! - **Name conflicts.** The container is named `hodei-<worker id>`. If that name is taken
//!   by a container of this instance for the same worker (a create retried after a timeout,
//!   or the leftover of a crash), that container is removed and created anew, so the worker
//!   always runs the spec it was asked for. A container of another instance, or one without
//!   our labels, is never touched: the create fails naming it.
//! - **Exited containers.** `list_workers` reports running (and paused or restarting)
//!   containers only. Containers of ours that exited or died are removed on the spot, after
//!   logging their status and the last lines of their output, so a dead agent never leaks a
//!   container; containers stuck in `created` for longer than [`STALE_CREATED`] (a create
//!   interrupted before its start) are removed too.
//! - **The engine's version.** The API version is negotiated on first use, so an older
//!   engine (API 1.41, Docker 20.10) and newer ones both work.
//! - **Connection.** Nothing is contacted in [`DockerProvider::new`]; the first operation
//!   connects and negotiates, and an unreachable engine is `Unavailable` (retryable), naming
//!   the socket. [`DockerProvider::ping`] checks the engine eagerly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use futures::StreamExt;
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};
use hodei_ports::{AgentCredential, ProviderError, WorkerProvider};
use tokio::sync::OnceCell;

/// The image a worker runs when its spec names none; built by `scripts/build-agent-image`.
pub const DEFAULT_IMAGE: &str = "hodei-agent:latest";
/// Marks a container as created by Hodei.
pub const LABEL_MANAGED: &str = "io.hodei.managed";
/// The installation that owns the container ([`DockerProviderConfig::instance`]).
pub const LABEL_INSTANCE: &str = "io.hodei.instance";
/// The worker the container runs.
pub const LABEL_WORKER_ID: &str = "io.hodei.worker-id";
/// The worker's pool, when it has one; informative only.
pub const LABEL_POOL: &str = "io.hodei.pool";
/// Where the CA certificate is mounted inside the container.
pub const CONTAINER_CA_CERT: &str = "/etc/hodei/ca.pem";
/// The agent's work root inside the container; the image makes it writable.
pub const CONTAINER_WORK_DIR: &str = "/work";
/// Where the agent finds its credential in the container: uploaded (mode 0600) between
/// create and start, read and removed by the agent before it connects.
pub const CONTAINER_CREDENTIAL: &str = "/hodei-credential";
/// A container of ours still in `created` after this long is the leftover of a create that
/// never started it, and `list_workers` removes it.
pub const STALE_CREATED: Duration = Duration::from_secs(120);

/// How the docker provider reaches the engine and starts agents.
#[derive(Debug, Clone)]
pub struct DockerProviderConfig {
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://host:2375`); `None` means
    /// `DOCKER_HOST` when set, else the local default socket.
    pub docker_host: Option<String>,
    /// The image for workers whose spec names none. Default [`DEFAULT_IMAGE`].
    pub default_image: String,
    /// The containers' network mode. Default `host`, so an agent reaches a server that
    /// listens on 127.0.0.1.
    pub network_mode: String,
    /// Where agents connect.
    pub server_url: String,
    /// The CA certificate agents trust for an `https://` server URL: mounted read-only at
    /// [`CONTAINER_CA_CERT`] and passed as `HODEI_CA_CERT`. The image has no system roots,
    /// so an `https://` server needs it.
    pub ca_cert: Option<PathBuf>,
    /// How long an agent gets to stop after SIGTERM before the engine kills it. Default 10 s.
    pub stop_grace: Duration,
    /// Names this Hodei installation; containers carry it as the `io.hodei.instance` label
    /// and only containers with this value are listed, adopted or replaced.
    pub instance: String,
}

impl DockerProviderConfig {
    /// A configuration with the defaults: the local engine, [`DEFAULT_IMAGE`], host
    /// networking, no CA certificate, a 10 s stop grace.
    pub fn new(server_url: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            docker_host: None,
            default_image: DEFAULT_IMAGE.to_owned(),
            network_mode: "host".to_owned(),
            server_url: server_url.into(),
            ca_cert: None,
            stop_grace: Duration::from_secs(10),
            instance: instance.into(),
        }
    }
}

/// See the module docs.
pub struct DockerProvider {
    config: DockerProviderConfig,
    /// The engine address actually used, for messages.
    host: String,
    /// Connected and version-negotiated on first use; a failed attempt is retried by the
    /// next call.
    docker: OnceCell<Docker>,
}

impl fmt::Debug for DockerProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerProvider")
            .field("host", &self.host)
            .field("instance", &self.config.instance)
            .field("default_image", &self.config.default_image)
            .finish_non_exhaustive()
    }
}

/// Container name of a worker.
pub fn container_name(id: &WorkerId) -> String {
    format!("hodei-{id}")
}

impl DockerProvider {
    /// Checks the configuration; contacts nothing (see the module docs).
    pub fn new(mut config: DockerProviderConfig) -> Result<Self, ProviderError> {
        let host = config
            .docker_host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        if !["unix://", "tcp://", "http://"]
            .iter()
            .any(|scheme| host.starts_with(scheme))
        {
            return Err(ProviderError::Failed(format!(
                "docker host {host} is not supported: use unix://, tcp:// or http://"
            )));
        }
        if config.instance.is_empty() {
            return Err(ProviderError::Failed(
                "docker instance must not be empty".into(),
            ));
        }
        if config.default_image.is_empty() {
            return Err(ProviderError::Failed(
                "docker default image must not be empty".into(),
            ));
        }
        if let Some(ca_cert) = &config.ca_cert {
            // The engine resolves bind sources itself: it needs an absolute path.
            let absolute = std::path::absolute(ca_cert).map_err(|e| {
                ProviderError::Failed(format!("ca certificate {}: {e}", ca_cert.display()))
            })?;
            config.ca_cert = Some(absolute);
        }
        Ok(Self {
            config,
            host,
            docker: OnceCell::new(),
        })
    }

    pub fn config(&self) -> &DockerProviderConfig {
        &self.config
    }

    /// Connects to the engine now (if not yet) and checks that it answers.
    pub async fn ping(&self) -> Result<(), ProviderError> {
        let docker = self.docker().await?;
        docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| self.error("cannot ping the docker engine", e))
    }

    /// Checks that the engine answers and holds `image` (the default image when `None`):
    /// nothing can be pulled, so a missing image is an error naming how to build it.
    pub async fn check_image(&self, image: Option<&str>) -> Result<(), ProviderError> {
        let image = image.unwrap_or(&self.config.default_image);
        let docker = self.docker().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ProviderError::InvalidSpec(format!(
                "image {image} is not on the docker engine at {}; nothing is pulled: build it \
                 with scripts/build-agent-image (from this machine's hodei), or load {image} \
                 into the engine",
                self.host
            ))),
            Err(e) => Err(self.error(&format!("cannot inspect image {image}"), e)),
        }
    }

    async fn docker(&self) -> Result<&Docker, ProviderError> {
        self.docker
            .get_or_try_init(|| async {
                // The stop request waits for the grace period: the client must wait longer.
                let timeout = Duration::from_secs(120).max(self.config.stop_grace * 2);
                let docker = Docker::connect_with_host(&self.host)
                    .map_err(|e| self.error("cannot connect", e))?
                    .with_timeout(timeout);
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| self.error("cannot negotiate the api version", e))
            })
            .await
    }

    /// Maps an engine error to what a caller can act on. `context` says what was tried.
    fn error(&self, context: &str, error: DockerError) -> ProviderError {
        match error {
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => {
                let text = format!("{context}: docker engine answered {status_code}: {message}");
                match status_code {
                    400 => ProviderError::InvalidSpec(text),
                    500.. => ProviderError::Unavailable(text),
                    _ => ProviderError::Failed(text),
                }
            }
            DockerError::RequestTimeoutError
            | DockerError::IOError { .. }
            | DockerError::SocketNotFoundError(_)
            | DockerError::HyperResponseError { .. }
            | DockerError::HyperLegacyError { .. } => ProviderError::Unavailable(format!(
                "{context}: docker engine at {} is unreachable: {error}",
                self.host
            )),
            other => ProviderError::Failed(format!(
                "{context}: docker engine at {}: {other}",
                self.host
            )),
        }
    }

    fn owns(&self, labels: &HashMap<String, String>, id: Option<&WorkerId>) -> bool {
        labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
            && labels.get(LABEL_INSTANCE) == Some(&self.config.instance)
            && id.is_none_or(|id| {
                labels.get(LABEL_WORKER_ID).map(String::as_str) == Some(id.as_str())
            })
    }

    fn container_body(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
    ) -> Result<ContainerCreateBody, ProviderError> {
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.config.default_image.clone());

        let mut cmd = vec![
            "hodei".to_owned(),
            "agent".to_owned(),
            "--server".to_owned(),
            self.config.server_url.clone(),
            "--worker-id".to_owned(),
            id.as_str().to_owned(),
            "--work-dir".to_owned(),
            CONTAINER_WORK_DIR.to_owned(),
            "--token-file".to_owned(),
            CONTAINER_CREDENTIAL.to_owned(),
        ];
        if let Some(user) = &spec.user {
            cmd.extend(["--job-user".to_owned(), user.clone()]);
        }
        // The agent would announce the host's cpu and memory; announce the limits instead.
        let capabilities = &spec.capabilities;
        if capabilities.cpu_cores > 0 {
            cmd.extend(["--cpu".to_owned(), capabilities.cpu_cores.to_string()]);
        }
        if capabilities.memory_mb > 0 {
            cmd.extend(["--memory-mb".to_owned(), capabilities.memory_mb.to_string()]);
        }
        for (key, value) in &spec.labels {
            cmd.extend(["--label".to_owned(), format!("{key}={value}")]);
        }

        let mut env: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, value) in &spec.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(ProviderError::InvalidSpec(format!(
                    "environment variable {key:?} is not a valid name=value pair"
                )));
            }
            env.insert(key, value);
        }
        // The credential travels in a file (see `create_worker`), never in the
        // container's configuration, which anyone who can inspect the container reads.
        env.remove("HODEI_TOKEN");
        let mut mounts = Vec::new();
        if let Some(ca_cert) = &self.config.ca_cert {
            env.insert("HODEI_CA_CERT", CONTAINER_CA_CERT);
            mounts.push(Mount {
                target: Some(CONTAINER_CA_CERT.to_owned()),
                source: Some(ca_cert.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_INSTANCE.to_owned(), self.config.instance.clone()),
            (LABEL_WORKER_ID.to_owned(), id.as_str().to_owned()),
        ]);
        if let Some(pool) = &spec.pool {
            labels.insert(LABEL_POOL.to_owned(), pool.clone());
        }

        let nano_cpus = i64::from(capabilities.cpu_cores) * 1_000_000_000;
        let memory = i64::try_from(capabilities.memory_mb)
            .ok()
            .and_then(|mb| mb.checked_mul(1024 * 1024))
            .ok_or_else(|| {
                ProviderError::InvalidSpec(format!(
                    "memory_mb {} is too large",
                    capabilities.memory_mb
                ))
            })?;

        Ok(ContainerCreateBody {
            image: Some(image),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(self.config.network_mode.clone()),
                // 0 means no limit, for the engine as for us.
                nano_cpus: (nano_cpus > 0).then_some(nano_cpus),
                memory: (memory > 0).then_some(memory),
                mounts: (!mounts.is_empty()).then_some(mounts),
                // A tiny init as pid 1 reaps the orphans of jobs and forwards SIGTERM.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Creates the container, replacing a container of ours left for the same worker.
    async fn create_container(
        &self,
        docker: &Docker,
        id: &WorkerId,
        body: ContainerCreateBody,
    ) -> Result<(), ProviderError> {
        let name = container_name(id);
        let image = body.image.clone().unwrap_or_default();
        let options = || CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let first = docker.create_container(Some(options()), body.clone()).await;
        let result = match first {
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                let existing = docker
                    .inspect_container(&name, None)
                    .await
                    .map_err(|e| self.error(&format!("cannot inspect container {name}"), e))?;
                let labels = existing
                    .config
                    .and_then(|config| config.labels)
                    .unwrap_or_default();
                if !self.owns(&labels, Some(id)) {
                    return Err(ProviderError::Failed(format!(
                        "container name {name} is taken by a container this installation \
                         (instance {}) does not own; remove it or use another worker id",
                        self.config.instance
                    )));
                }
                tracing::warn!(worker_id = %id, container = %name, "replacing a leftover container of this worker");
                self.remove(docker, &name).await?;
                docker.create_container(Some(options()), body).await
            }
            other => other,
        };
        match result {
            Ok(_) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) => Err(ProviderError::InvalidSpec(format!(
                "image {image} is not on the docker engine ({message}); nothing is pulled: \
                 build the agent image with scripts/build-agent-image, or load {image} into \
                 the engine"
            ))),
            Err(e) => Err(self.error(&format!("cannot create container {name}"), e)),
        }
    }

    /// Removes a container with its anonymous volumes, stopping it hard if it runs.
    /// Already gone is fine.
    async fn remove(&self, docker: &Docker, name: &str) -> Result<(), ProviderError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match docker.remove_container(name, Some(options)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // 409: a removal is already in progress, which is what we want.
            Err(DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(self.error(&format!("cannot remove container {name}"), e)),
        }
    }

    /// The last lines a container printed, for the log line that records its removal.
    async fn output_tail(&self, docker: &Docker, name: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".to_owned(),
            ..Default::default()
        };
        let mut stream = docker.logs(name, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => text.push_str(&output.to_string()),
                Err(_) => break,
            }
        }
        text
    }

    /// Removes a container of ours that no longer runs an agent.
    async fn remove_dead(&self, docker: &Docker, summary: &ContainerSummary) {
        let Some(name) = summary
            .id
            .clone()
            .or_else(|| summary.names.as_ref()?.first().cloned())
        else {
            return;
        };
        let worker_id = summary
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_WORKER_ID))
            .cloned()
            .unwrap_or_default();
        let status = summary.status.clone().unwrap_or_default();
        let output = self.output_tail(docker, &name).await;
        tracing::warn!(
            worker_id = %worker_id,
            container = %name,
            status = %status,
            last_output = %output.trim_end(),
            "removing a worker container that no longer runs"
        );
        if let Err(error) = self.remove(docker, &name).await {
            tracing::warn!(worker_id = %worker_id, container = %name, %error, "cannot remove dead worker container");
        }
    }
}

/// A tar archive (ustar) of one regular file `name`, mode 0600, owned by root: what the
/// engine's archive upload takes.
fn single_file_tar(name: &str, contents: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        // Zero-padded octal, then a NUL, filling the field.
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
        field[digits] = 0;
    }
    let mut header = [0u8; 512];
    let name = &name.as_bytes()[..name.len().min(99)];
    header[..name.len()].copy_from_slice(name);
    octal(&mut header[100..108], 0o600);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], contents.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    let mut archive = header.to_vec();
    archive.extend_from_slice(contents);
    let padding = (512 - contents.len() % 512) % 512;
    archive.extend(std::iter::repeat_n(0u8, padding + 1024));
    archive
}

fn is_stale_created(summary: &ContainerSummary, now: SystemTime) -> bool {
    let Some(created) = summary.created.and_then(|s| u64::try_from(s).ok()) else {
        return false;
    };
    let age = now
        .duration_since(UNIX_EPOCH + Duration::from_secs(created))
        .unwrap_or_default();
    age > STALE_CREATED
}

#[async_trait]
impl WorkerProvider for DockerProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Docker
    }

    async fn create_worker(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        credential: &AgentCredential,
    ) -> Result<Worker, ProviderError> {
        let body = self.container_body(id, spec)?;
        let image = body.image.clone().unwrap_or_default();
        let docker = self.docker().await?;
        let name = container_name(id);
        self.create_container(docker, id, body).await?;
        let archive = single_file_tar(
            CONTAINER_CREDENTIAL.trim_start_matches('/'),
            credential.expose().as_bytes(),
        );
        let upload = UploadToContainerOptions {
            path: "/".to_owned(),
            ..Default::default()
        };
        if let Err(e) = docker
            .upload_to_container(&name, Some(upload), bollard::body_full(archive.into()))
            .await
        {
            let error = self.error(&format!("cannot hand container {name} its credential"), e);
            if let Err(cleanup) = self.remove(docker, &name).await {
                tracing::warn!(worker_id = %id, container = %name, error = %cleanup, "cannot remove container that did not get its credential");
            }
            return Err(error);
        }
        if let Err(e) = docker.start_container(&name, None).await {
            // A 400 here is mostly an image that cannot run `hodei agent`.
            let error = self.error(&format!("cannot start container {name} (image {image})"), e);
            // A created but never started container would only be clutter.
            if let Err(cleanup) = self.remove(docker, &name).await {
                tracing::warn!(worker_id = %id, container = %name, error = %cleanup, "cannot remove container that failed to start");
            }
            return Err(error);
        }
        tracing::info!(worker_id = %id, container = %name, "docker agent started");
        Ok(Worker::from_spec(
            id.clone(),
            spec,
            ProviderKind::Docker,
            SystemTime::now(),
        ))
    }

    async fn terminate_worker(&self, id: &WorkerId) -> Result<(), ProviderError> {
        let docker = self.docker().await?;
        let name = container_name(id);
        let existing = match docker.inspect_container(&name, None).await {
            Ok(existing) => existing,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(()),
            Err(e) => return Err(self.error(&format!("cannot inspect container {name}"), e)),
        };
        let labels = existing
            .config
            .and_then(|config| config.labels)
            .unwrap_or_default();
        if !self.owns(&labels, Some(id)) {
            // Not ours (another installation's worker of the same id): ours is gone.
            tracing::warn!(worker_id = %id, container = %name, "container with this worker's name belongs to someone else; leaving it");
            return Ok(());
        }
        // Address it by id from here on, so a new container of the same name is never hit.
        let target = existing.id.unwrap_or(name);
        let grace =
            i32::try_from(self.config.stop_grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let stop = StopContainerOptions {
            t: Some(grace),
            signal: None,
        };
        match docker.stop_container(&target, Some(stop)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404 | 304,
                ..
            }) => {}
            Err(e) => {
                tracing::warn!(worker_id = %id, error = %e, "stopping the container failed; removing it by force");
            }
        }
        self.remove(docker, &target).await?;
        tracing::info!(worker_id = %id, container = %target, "docker agent removed");
        Ok(())
    }

    /// Dead when its container is gone or has stopped: the container's processes (the
    /// agent and its jobs) went with it.
    async fn confirm_dead(&self, id: &WorkerId) -> Result<bool, ProviderError> {
        let docker = self.docker().await?;
        let name = container_name(id);
        let existing = match docker.inspect_container(&name, None).await {
            Ok(existing) => existing,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(true),
            Err(e) => return Err(self.error(&format!("cannot inspect container {name}"), e)),
        };
        let labels = existing
            .config
            .and_then(|config| config.labels)
            .unwrap_or_default();
        let running = existing.state.and_then(|state| state.running);
        Ok(self.owns(&labels, Some(id)) && running == Some(false))
    }

    async fn list_workers(&self) -> Result<Vec<WorkerId>, ProviderError> {
        let docker = self.docker().await?;
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_INSTANCE}={}", self.config.instance),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("cannot list containers", e))?;
        let now = SystemTime::now();
        let mut workers = BTreeSet::new();
        for summary in &containers {
            let labels = summary.labels.clone().unwrap_or_default();
            if !self.owns(&labels, None) {
                continue;
            }
            match summary.state {
                Some(
                    ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::PAUSED
                    | ContainerSummaryStateEnum::RESTARTING,
                ) => {}
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    self.remove_dead(docker, summary).await;
                    continue;
                }
                Some(ContainerSummaryStateEnum::CREATED) if is_stale_created(summary, now) => {
                    self.remove_dead(docker, summary).await;
                    continue;
                }
                _ => continue,
            }
            let Some(raw) = labels.get(LABEL_WORKER_ID) else {
                continue;
            };
            match WorkerId::new(raw.as_str()) {
                Ok(id) => {
                    workers.insert(id);
                }
                Err(error) => {
                    tracing::warn!(worker_id = %raw, %error, "container of ours with an invalid worker id label");
                }
            }
        }
        Ok(workers.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(config: DockerProviderConfig) -> DockerProvider {
        DockerProvider::new(config).expect("valid config")
    }

    #[test]
    fn body_has_command_env_labels_and_limits() {
        let mut config = DockerProviderConfig::new("http://127.0.0.1:50051", "test");
        config.ca_cert = Some(PathBuf::from("/etc/ssl/ca.pem"));
        let provider = provider(config);
        let id = WorkerId::new("w-1").expect("valid id");
        let mut spec = WorkerSpec {
            pool: Some("builds".into()),
            ..WorkerSpec::default()
        };
        spec.labels.insert("arch".into(), "x86".into());
        spec.env.insert("HODEI_TOKEN".into(), "spoofed".into());
        spec.env.insert("FOO".into(), "bar".into());
        let body = provider.container_body(&id, &spec).expect("body");

        assert_eq!(body.image.as_deref(), Some(DEFAULT_IMAGE));
        let cmd = body.cmd.expect("cmd").join(" ");
        assert_eq!(
            cmd,
            "hodei agent --server http://127.0.0.1:50051 --worker-id w-1 --work-dir /work \
             --token-file /hodei-credential --cpu 2 --memory-mb 4096 --label arch=x86"
        );
        let env = body.env.expect("env");
        assert!(
            !env.iter().any(|e| e.starts_with("HODEI_TOKEN")),
            "no token in the container's configuration: {env:?}"
        );
        assert!(env.contains(&"FOO=bar".to_owned()));
        assert!(env.contains(&format!("HODEI_CA_CERT={CONTAINER_CA_CERT}")));
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_INSTANCE], "test");
        assert_eq!(labels[LABEL_WORKER_ID], "w-1");
        assert_eq!(labels[LABEL_POOL], "builds");
        let host = body.host_config.expect("host config");
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.memory, Some(4096 * 1024 * 1024));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        let mounts = host.mounts.expect("ca mount");
        assert_eq!(mounts[0].source.as_deref(), Some("/etc/ssl/ca.pem"));
        assert_eq!(mounts[0].read_only, Some(true));
    }

    #[test]
    fn the_credential_archive_is_a_valid_tar() {
        let archive = single_file_tar("hodei-credential", b"hodei_abc_secret");
        assert_eq!(archive.len() % 512, 0);
        assert_eq!(&archive[..16], b"hodei-credential");
        assert_eq!(&archive[257..262], b"ustar");
        let mut header = archive[..512].to_vec();
        let stored = std::str::from_utf8(&header[148..154]).expect("octal");
        let stored = u64::from_str_radix(stored, 8).expect("octal");
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|b| u64::from(*b)).sum::<u64>());
        assert_eq!(&archive[124..135], b"00000000020");
        assert_eq!(&archive[512..528], b"hodei_abc_secret");
    }

    #[test]
    fn zero_means_no_limit_and_no_announcement() {
        let provider = provider(DockerProviderConfig::new("http://x", "i"));
        let id = WorkerId::new("w").expect("valid id");
        let mut spec = WorkerSpec::default();
        spec.capabilities.cpu_cores = 0;
        spec.capabilities.memory_mb = 0;
        let body = provider.container_body(&id, &spec).expect("body");
        let host = body.host_config.expect("host config");
        assert_eq!((host.nano_cpus, host.memory), (None, None));
        let cmd = body.cmd.expect("cmd");
        assert!(!cmd.contains(&"--cpu".to_owned()) && !cmd.contains(&"--memory-mb".to_owned()));
    }

    #[test]
    fn bad_env_name_is_invalid_spec() {
        let provider = provider(DockerProviderConfig::new("http://x", "i"));
        let id = WorkerId::new("w").expect("valid id");
        let mut spec = WorkerSpec::default();
        spec.env.insert("A=B".into(), "c".into());
        assert!(matches!(
            provider.container_body(&id, &spec),
            Err(ProviderError::InvalidSpec(_))
        ));
    }

    #[test]
    fn unsupported_host_is_rejected() {
        let mut config = DockerProviderConfig::new("http://x", "i");
        config.docker_host = Some("ssh://somewhere".into());
        assert!(DockerProvider::new(config).is_err());
    }
}
