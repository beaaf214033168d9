//! Server configuration: `hodei.toml`, then the environment (`HODEI_TOKEN`,
//! `REGISTRATION_ENABLED`, `REGISTRATION_MAX_RETRIES`). Every value is checked at start-up;
//! a bad one stops the server with a message naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hodei_adapters::RegistrationConfig;
use hodei_core::fence::FencePolicy;
use hodei_core::health::HeartbeatPolicy;
pub use hodei_core::settings::{SlaSection, TenantSettings, TenantsSection};
use hodei_core::{PoolSpec, ValidationError};
use hodei_modules::WorkerManagementConfig;
use serde::{Deserialize, Serialize};

/// Configuration failures, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The whole server configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The one address serving gRPC and HTTP.
    pub listen: SocketAddr,
    /// The URL agents use to reach the server; derived from `listen` when unset.
    pub advertise_url: Option<String>,
    /// The admin token (the whole API; not a worker session). Generated and saved under
    /// `data_dir` (mode 0600) when unset. `HODEI_TOKEN` overrides it. Agents get their own
    /// credentials (see the README's security model).
    pub token: Option<String>,
    /// Where the SQLite database, the token and local agents' pid files and logs live.
    pub data_dir: PathBuf,
    /// `[store]`: where the durable state lives (SQLite in `data_dir` unless `url` is set).
    pub store: StoreSection,
    pub registration: RegistrationSection,
    pub provisioning: ProvisioningSection,
    pub reconcile: ReconcileSection,
    pub local: LocalSection,
    pub shutdown: ShutdownSection,
    pub log: LogSection,
    pub telemetry: TelemetrySection,
    pub agents: AgentsSection,
    pub jobs: JobsSection,
    pub autoscaler: AutoscalerSection,
    /// The `kubernetes` provider; used by pools with `provider = "kubernetes"` (defaults
    /// when absent).
    pub kubernetes: KubernetesSection,
    /// The `docker` provider, on when the section is present (an empty `[docker]` takes
    /// every default) or a pool has `provider = "docker"`.
    pub docker: Option<DockerSection>,
    /// Register workers with the scheduler of another Hodei server at this URL, over gRPC,
    /// instead of this server's own. Agents then connect to that server too.
    pub scheduler_url: Option<String>,
    pub tls: TlsSection,
    pub connections: ConnectionsSection,
    /// Pools kept warm from start-up: `[[pool]]` tables.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolSpec>,
    pub tenants: TenantsSection,
    /// Tenants with their weights and quotas: `[[tenant]]` tables. Stored at start-up;
    /// changes made at runtime (`hodei tenant set-quota`) last until the file is read again.
    #[serde(rename = "tenant")]
    pub tenant_list: Vec<TenantSettings>,
    /// `[sla]`: each class's deadline and the preemption policy.
    pub sla: SlaSection,
    /// `[retention]`: how long finished jobs and terminated workers are kept.
    pub retention: RetentionSection,
    /// `[cluster]`: the leader lease of replicas on PostgreSQL.
    pub cluster: ClusterSection,
}

/// `[cluster]`: how replicas on one PostgreSQL database elect their leader (see
/// `hodei_core::lease`). Unused on SQLite, where the one server leads alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// How long a lease lasts unrenewed: a follower takes over at most this long after the
    /// leader died.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the leader renews and followers look at the lease.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// How long before its lease runs out (by its own clock) a leader that could not renew
    /// stops dispatching.
    #[serde(with = "humantime_serde")]
    pub step_down_margin: Duration,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            // A dead leader is replaced about 4.2 s after its death at worst (the lease, the
            // follower's look at its expiry, the recovery): under 5 s. A healthy leader has
            // two tries to renew before it steps down, 3 s after its last renewal.
            lease_ttl: Duration::from_secs(4),
            renew_interval: Duration::from_secs(1),
            step_down_margin: Duration::from_secs(1),
        }
    }
}

impl ClusterSection {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        hodei_core::lease::validate_timing(
            ms(self.lease_ttl),
            ms(self.renew_interval),
            ms(self.step_down_margin),
        )
    }
}

/// `[retention]`: finished jobs (with their output) and terminated workers are deleted from
/// the store this long after they finished or were terminated; `"0s"` keeps them forever.
/// Pruning runs in the background every `interval`, `batch` rows per statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    #[serde(with = "humantime_serde")]
    pub jobs: Duration,
    #[serde(with = "humantime_serde")]
    pub workers: Duration,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub batch: usize,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let policy = hodei_core::retention::RetentionPolicy::default();
        Self {
            jobs: policy.jobs,
            workers: policy.workers,
            interval: policy.interval,
            batch: policy.batch,
        }
    }
}

impl RetentionSection {
    /// The core's policy; fails naming the key of a bad value.
    pub fn policy(&self) -> Result<hodei_core::retention::RetentionPolicy, ValidationError> {
        let policy = hodei_core::retention::RetentionPolicy {
            jobs: self.jobs,
            workers: self.workers,
            interval: self.interval,
            batch: self.batch,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            advertise_url: None,
            token: None,
            data_dir: PathBuf::from(".hodei"),
            store: StoreSection::default(),
            cluster: ClusterSection::default(),
            registration: RegistrationSection::default(),
            provisioning: ProvisioningSection::default(),
            reconcile: ReconcileSection::default(),
            local: LocalSection::default(),
            shutdown: ShutdownSection::default(),
            log: LogSection::default(),
            telemetry: TelemetrySection::default(),
            agents: AgentsSection::default(),
            jobs: JobsSection::default(),
            autoscaler: AutoscalerSection::default(),
            kubernetes: KubernetesSection::default(),
            docker: None,
            scheduler_url: None,
            tls: TlsSection::default(),
            connections: ConnectionsSection::default(),
            pools: Vec::new(),
            tenants: TenantsSection::default(),
            tenant_list: Vec::new(),
            sla: SlaSection::default(),
            retention: RetentionSection::default(),
        }
    }
}

/// `[connections]`: bounds on what clients may hold open, so that idle, slow or
/// abandoned connections cannot exhaust the server's file descriptors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// Most connections open at once; past it new ones are closed at once. Capped at
    /// start-up below the file-descriptor limit (which is raised to its hard limit).
    pub max: usize,
    /// Time a client has to send a request's headers (HTTP/1.1) or finish its TLS
    /// handshake.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 and
    /// HTTP/2 without streams). Agents' sessions are streams, so they are never idle.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive pings: the interval, and how long a ping may go unanswered before
    /// the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Largest request body accepted by the REST API; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        Self {
            max: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            max_body_bytes: 2 * 1024 * 1024,
        }
    }
}

/// `[store]`: the database. Without `url` the state lives in SQLite at `data_dir/hodei.db`
/// (the embedded default); with a `postgres://` URL it lives in that PostgreSQL database,
/// which must exist (the server creates its tables). `HODEI_STORE_URL` overrides it, so a
/// password need not be written in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `postgres://user:password@host:port/database`, with libpq's query parameters
    /// (`sslmode=require` ...). `postgresql://` is accepted too.
    pub url: Option<String>,
}

impl StoreSection {
    /// Whether `url` names PostgreSQL, after checking that it does if set.
    pub fn postgres_url(&self) -> Result<Option<&str>, ValidationError> {
        match self.url.as_deref() {
            None => Ok(None),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Some(url))
            }
            // The URL may hold a password: name the field and the scheme only.
            Some(url) => Err(ValidationError::new(
                "store.url",
                format!(
                    "must be a postgres:// URL (got scheme {:?}); leave it unset for SQLite in data_dir",
                    url.split("://").next().unwrap_or_default()
                ),
            )),
        }
    }
}

/// `[tls]`: TLS on the one address, and what this server trusts when it connects out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain the server presents, leaf first. With `key`, the address
    /// accepts TLS only (gRPC and HTTP alike) and the advertised URL is `https://`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) trusted instead of the system's roots for `https://` URLs: by
    /// the `scheduler_url` client and by the agents this server starts. `HODEI_CA_CERT`
    /// overrides it.
    pub ca_cert: Option<PathBuf>,
}

impl TlsSection {
    /// Whether the server serves TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[registration]`: how provisioned workers are registered with the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    /// `REGISTRATION_ENABLED` overrides it.
    pub enabled: bool,
    /// Retries after the first attempt. `REGISTRATION_MAX_RETRIES` overrides it.
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub base_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Time one attempt may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub batch_concurrency: usize,
    pub jitter: bool,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        let defaults = RegistrationConfig::default();
        Self {
            enabled: true,
            max_retries: defaults.max_retries,
            base_backoff: defaults.base_backoff,
            max_backoff: defaults.max_backoff,
            timeout: defaults.registration_timeout,
            batch_concurrency: defaults.batch_concurrency,
            jitter: defaults.jitter,
        }
    }
}

/// `[provisioning]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningSection {
    /// Workers created at once when a pool is pre-warmed.
    pub max_concurrent_provisioning: usize,
    /// Workers stopped at once at shutdown.
    pub termination_concurrency: usize,
}

impl Default for ProvisioningSection {
    fn default() -> Self {
        let defaults = WorkerManagementConfig::default();
        Self {
            max_concurrent_provisioning: defaults.provisioning_concurrency,
            termination_concurrency: defaults.termination_concurrency,
        }
    }
}

/// `[reconcile]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSection {
    /// Time between two reconciliation rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ReconcileSection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
        }
    }
}

/// `[autoscaler]`: how often pools are looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerSection {
    /// Time between two passes over the pools when nothing happens; job submissions and
    /// results trigger a pass at once.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a created worker counts as starting before its agent is heard from.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
}

impl Default for AutoscalerSection {
    fn default() -> Self {
        let defaults = hodei_modules::PoolManagerConfig::default();
        Self {
            interval: defaults.tick,
            start_timeout: defaults.start_timeout,
        }
    }
}

impl AutoscalerSection {
    pub fn manager_config(&self) -> hodei_modules::PoolManagerConfig {
        hodei_modules::PoolManagerConfig {
            tick: self.interval,
            start_timeout: self.start_timeout,
            ..hodei_modules::PoolManagerConfig::default()
        }
    }
}

/// `[docker]`: worker containers on a Docker engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSection {
    /// The engine: `unix:///path/to/docker.sock` or `tcp://host:port`; `DOCKER_HOST` or the
    /// local socket when unset.
    pub host: Option<String>,
    /// Agent image for pools whose template names none (`scripts/build-agent-image`
    /// builds `hodei-agent:latest` from this machine's `hodei`).
    pub image: String,
    /// Network of the containers; `host` lets agents reach a server on 127.0.0.1.
    pub network: String,
    /// The URL agents in containers use to reach this server; the advertised URL when unset.
    pub server_url: Option<String>,
    /// Label value that tells this installation's containers from another's on the engine.
    pub instance: String,
    /// Time a container gets to stop before it is killed.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            host: None,
            image: hodei_docker::DEFAULT_IMAGE.into(),
            network: "host".into(),
            server_url: None,
            instance: "hodei".into(),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl DockerSection {
    pub fn provider_config(
        &self,
        server_url: &str,
        ca_cert: Option<&Path>,
    ) -> hodei_docker::DockerProviderConfig {
        let mut config = hodei_docker::DockerProviderConfig::new(
            self.server_url
                .clone()
                .unwrap_or_else(|| server_url.to_owned()),
            self.instance.clone(),
        );
        config.docker_host = self.host.clone();
        config.default_image = self.image.clone();
        config.network_mode = self.network.clone();
        config.ca_cert = ca_cert.map(Path::to_path_buf);
        config.stop_grace = self.stop_grace;
        config
    }
}

/// `[kubernetes]`: worker pods. Not yet verified against a real cluster (see the README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    /// Namespace of the worker pods.
    pub namespace: String,
    /// Agent image for pools whose template names none; its entrypoint must be `hodei`.
    pub image: String,
    /// The URL agents in pods use to reach this server; the advertised URL when unset.
    pub server_url: Option<String>,
    /// No longer used: every pod gets its own worker credential, minted for it. Setting
    /// it is an error, so nobody believes a shared Secret is in use.
    pub token_secret: Option<String>,
    /// A Pod (YAML, or JSON by extension) whose `agent` container is filled in: node
    /// selectors, tolerations, volumes and sidecars are kept.
    pub pod_template: Option<PathBuf>,
    pub service_account: Option<String>,
    /// Label value that tells this installation's pods from another's in the namespace.
    pub instance: String,
    /// How to reach the API: a kubeconfig file (with `context`), the in-cluster service
    /// account (`in_cluster = true`), a plain URL such as `kubectl proxy`'s (`api_url`), or
    /// else what kubectl would use.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub in_cluster: bool,
    pub api_url: Option<String>,
    /// Grace period of a deleted pod.
    #[serde(with = "humantime_serde")]
    pub delete_grace: Duration,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            image: "hodei-agent:latest".into(),
            server_url: None,
            token_secret: None,
            pod_template: None,
            service_account: None,
            instance: "hodei".into(),
            kubeconfig: None,
            context: None,
            in_cluster: false,
            api_url: None,
            delete_grace: Duration::from_secs(30),
        }
    }
}

impl KubernetesSection {
    pub fn provider_config(&self, server_url: &str) -> hodei_kubernetes::KubernetesProviderConfig {
        use hodei_kubernetes::{KubernetesAccess, PodTemplate};
        let access = if let Some(url) = &self.api_url {
            KubernetesAccess::Url(url.clone())
        } else if let Some(path) = &self.kubeconfig {
            KubernetesAccess::Kubeconfig {
                path: path.clone(),
                context: self.context.clone(),
            }
        } else if self.in_cluster {
            KubernetesAccess::InCluster
        } else {
            KubernetesAccess::Infer
        };
        hodei_kubernetes::KubernetesProviderConfig {
            namespace: self.namespace.clone(),
            default_image: self.image.clone(),
            server_url: self
                .server_url
                .clone()
                .unwrap_or_else(|| server_url.to_owned()),
            pod_template: self.pod_template.clone().map(PodTemplate::File),
            service_account: self.service_account.clone(),
            instance: self.instance.clone(),
            delete_grace: self.delete_grace,
            access,
            ..hodei_kubernetes::KubernetesProviderConfig::default()
        }
    }
}

/// `[local]`: the local process provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSection {
    /// The `hodei` binary agents run; the server's own executable when unset.
    pub agent_program: Option<PathBuf>,
    /// Time an agent gets to stop after SIGTERM before it is killed.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
}

impl Default for LocalSection {
    fn default() -> Self {
        Self {
            agent_program: None,
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// `[telemetry]`: OpenTelemetry export of the job spans (see the README's Tracing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; spans are exported only when
    /// set. Local agents get it as `HODEI_OTLP_ENDPOINT`. `HODEI_OTLP_ENDPOINT` overrides it.
    pub otlp_endpoint: Option<String>,
}

/// `[log]`: how the server writes its log lines (to stderr).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (the default: human-readable, coloured only on a terminal) or `json` (one
    /// object per line, for log shippers). `HODEI_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(ValidationError::new(
                "log.format",
                format!("{other:?} is neither \"text\" nor \"json\""),
            )),
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Terminate every worker when the server stops. Turn off to keep workers through a
    /// server restart; the reconciler adopts them again at start-up.
    pub terminate_workers: bool,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            terminate_workers: true,
        }
    }
}

/// `[agents]`: the agents' sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// How often agents heartbeat; the server tells them in its hello answer.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a worker is marked unhealthy and gets no work.
    pub unhealthy_after: u32,
    /// Missed heartbeats before a worker is removed (terminated if a provider runs it).
    pub remove_after: u32,
    /// An agent that has not heard from the server for this long kills its running jobs and
    /// reports them lost when it reconnects. At least twice `heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// What the server adds to the lease before it gives up on a silent worker's jobs (a
    /// worker whose provider confirms it dead is given up on at once).
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
}

impl Default for AgentsSection {
    fn default() -> Self {
        let policy = HeartbeatPolicy::default();
        Self {
            heartbeat_interval: policy.interval,
            unhealthy_after: policy.unhealthy_after,
            remove_after: policy.remove_after,
            lease: FencePolicy::default().lease,
            lease_margin: FencePolicy::default().lease_margin,
        }
    }
}

/// `[jobs]`: queues and the deadlines of jobs in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Named queues, `[[jobs.queue]]` tables with `name` and `capacity`. Submissions to a
    /// full queue are refused (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    #[serde(rename = "queue")]
    pub queues: Vec<QueueSection>,
    /// An assignment not accepted by its agent within this is withdrawn, the job queued
    /// again without spending an attempt, and the worker marked unhealthy.
    #[serde(with = "humantime_serde")]
    pub assign_timeout: Duration,
    /// How long past a job's own timeout the server waits for the agent to report it before
    /// it ends the attempt as timed out itself.
    #[serde(with = "humantime_serde")]
    pub timeout_grace: Duration,
    /// Accept jobs nothing could run now (an unknown pool, labels no pool template and no
    /// connected worker has) and queue them for a worker yet to come, as every submission's
    /// `allow_pending` does for itself. Off: such jobs are refused, naming why.
    pub allow_pending: bool,
    /// Most bytes of output kept per attempt of a job; what comes after is dropped and the
    /// log ends with a marker saying so. 0: no cap.
    pub max_log_bytes: u64,
}

/// One `[[jobs.queue]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub name: String,
    pub capacity: usize,
    /// The SLA class of jobs submitted to this queue without `--sla` (before their
    /// tenant's default): critical, high, medium, low or best_effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_class: Option<String>,
}

impl Default for JobsSection {
    fn default() -> Self {
        Self {
            queues: vec![QueueSection {
                name: hodei_core::job::DEFAULT_QUEUE.to_owned(),
                capacity: hodei_core::queue::DEFAULT_QUEUE_CAPACITY,
                sla_class: None,
            }],
            assign_timeout: FencePolicy::default().assign_timeout,
            timeout_grace: FencePolicy::default().timeout_grace,
            allow_pending: false,
            max_log_bytes: hodei_core::job::DEFAULT_MAX_LOG_BYTES,
        }
    }
}

impl JobsSection {
    /// The job service's configuration (the lease comes from `[agents]`); fails naming the
    /// key of a bad queue or deadline.
    pub fn service_config(
        &self,
        agents: &AgentsSection,
    ) -> Result<hodei_modules::JobServiceConfig, ValidationError> {
        let queues = self
            .queues
            .iter()
            .map(|queue| {
                let name = hodei_core::QueueName::new(queue.name.clone())
                    .map_err(|e| ValidationError::new("jobs.queue.name", e.reason))?;
                Ok(hodei_core::QueueConfig {
                    name,
                    capacity: queue.capacity,
                })
            })
            .collect::<Result<Vec<_>, ValidationError>>()?;
        hodei_core::Queues::new(queues.clone())
            .map_err(|e| ValidationError::new(format!("jobs.{}", e.field), e.reason))?;
        let fence = FencePolicy {
            lease: agents.lease,
            lease_margin: agents.lease_margin,
            assign_timeout: self.assign_timeout,
            timeout_grace: self.timeout_grace,
            ..FencePolicy::default()
        };
        fence.validate()?;
        if agents.lease < agents.heartbeat_interval.saturating_mul(2) {
            return Err(ValidationError::new(
                "agents.lease",
                format!(
                    "is {:?}, must be at least twice agents.heartbeat_interval ({:?})",
                    agents.lease, agents.heartbeat_interval
                ),
            ));
        }
        Ok(hodei_modules::JobServiceConfig {
            queues,
            fence,
            // The pools are the pool manager's to tell (`JobService::set_pools`).
            ..hodei_modules::JobServiceConfig::default()
        })
    }
}

impl AgentsSection {
    pub fn policy(&self) -> HeartbeatPolicy {
        HeartbeatPolicy {
            interval: self.heartbeat_interval,
            unhealthy_after: self.unhealthy_after,
            remove_after: self.remove_after,
        }
    }
}

impl ServerConfig {
    /// Reads `path`, then applies the environment through `env`.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| Error::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// Applies `HODEI_TOKEN`, `HODEI_CA_CERT`, `HODEI_LOG_FORMAT`, `HODEI_OTLP_ENDPOINT`, `REGISTRATION_ENABLED`
    /// and `REGISTRATION_MAX_RETRIES`.
    pub fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ValidationError> {
        if let Some(token) = env("HODEI_TOKEN").filter(|t| !t.is_empty()) {
            self.token = Some(token);
        }
        if let Some(url) = env("HODEI_STORE_URL").filter(|u| !u.is_empty()) {
            self.store.url = Some(url);
        }
        if let Some(ca_cert) = env("HODEI_CA_CERT").filter(|p| !p.is_empty()) {
            self.tls.ca_cert = Some(PathBuf::from(ca_cert));
        }
        if let Some(format) = env("HODEI_LOG_FORMAT").filter(|f| !f.is_empty()) {
            self.log.format = format.parse()?;
        }
        if let Some(endpoint) = env("HODEI_OTLP_ENDPOINT").filter(|e| !e.is_empty()) {
            self.telemetry.otlp_endpoint = Some(endpoint);
        }
        let mut management = self.worker_management();
        management.apply_env(&env)?;
        self.registration.enabled = management.registration_enabled;
        let mut registration = self.registration_config();
        registration.apply_env(&env)?;
        self.registration.max_retries = registration.max_retries;
        Ok(())
    }

    /// The `[sla]` settings with the queues' default classes (`[[jobs.queue]] sla_class`);
    /// errors name the key.
    pub fn sla_settings(&self) -> Result<hodei_core::sla::SlaSettings, ValidationError> {
        let mut settings = self.sla.settings()?;
        for queue in &self.jobs.queues {
            if let Some(class) = &queue.sla_class {
                let name = hodei_core::QueueName::new(queue.name.clone())
                    .map_err(|e| ValidationError::new("jobs.queue.name", e.reason))?;
                let class = class.parse().map_err(|e: ValidationError| {
                    ValidationError::new("jobs.queue.sla_class", e.reason)
                })?;
                settings.queue_classes.insert(name, class);
            }
        }
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        self.registration_config().validate()?;
        self.worker_management().validate()?;
        self.agents.policy().validate()?;
        self.jobs.service_config(&self.agents)?;
        self.sla_settings()?;
        self.retention.policy()?;
        self.store.postgres_url()?;
        self.cluster.validate()?;
        let is_url = |url: &&String| url.starts_with("http://") || url.starts_with("https://");
        if let Some(url) = self.scheduler_url.as_ref().filter(|url| !is_url(url)) {
            return Err(ValidationError::new(
                "scheduler_url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if let Some(url) = self.telemetry.otlp_endpoint.as_ref().filter(|url| {
            !is_url(url)
                || url
                    .split_once("://")
                    .is_none_or(|(_, host)| host.is_empty())
        }) {
            return Err(ValidationError::new(
                "telemetry.otlp_endpoint",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(ValidationError::new(
                    "tls.key",
                    "is required when tls.cert is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ValidationError::new(
                    "tls.cert",
                    "is required when tls.key is set",
                ));
            }
            _ => {}
        }
        // The files must exist and parse: a TLS problem stops start-up, naming the key.
        crate::tls::acceptor(&self.tls)?;
        if let Some(path) = &self.tls.ca_cert {
            hodei_proto::tls::read_ca_certificates(path, "tls.ca_cert")?;
        }
        if self.reconcile.interval < Duration::from_millis(100) {
            return Err(ValidationError::new(
                "reconcile.interval",
                "must be at least 100ms",
            ));
        }
        if self.kubernetes.token_secret.is_some() {
            return Err(ValidationError::new(
                "kubernetes.token_secret",
                "is no longer used: every pod gets its own worker credential; remove it",
            ));
        }
        if self.connections.max == 0 {
            return Err(ValidationError::new(
                "connections.max",
                "must be at least 1",
            ));
        }
        if self.connections.max_body_bytes < 1024 {
            return Err(ValidationError::new(
                "connections.max_body_bytes",
                "must be at least 1024",
            ));
        }
        for (field, value) in [
            (
                "connections.header_read_timeout",
                self.connections.header_read_timeout,
            ),
            ("connections.idle_timeout", self.connections.idle_timeout),
            (
                "connections.keepalive_interval",
                self.connections.keepalive_interval,
            ),
            (
                "connections.keepalive_timeout",
                self.connections.keepalive_timeout,
            ),
        ] {
            if value < Duration::from_millis(100) {
                return Err(ValidationError::new(field, "must be at least 100ms"));
            }
        }
        if self.token.as_ref().is_some_and(|token| token.len() < 16) {
            return Err(ValidationError::new(
                "token",
                "must be at least 16 characters",
            ));
        }
        self.tenant_config()?;
        let mut names = std::collections::BTreeSet::new();
        for pool in &self.pools {
            // Name the pool in the field: `pool[burst].min`.
            pool.validate().map_err(|error| {
                let rest = error.field.strip_prefix("pool").unwrap_or(&error.field);
                ValidationError::new(format!("pool[{}]{rest}", pool.name), error.reason)
            })?;
            if !names.insert(&pool.name) {
                return Err(ValidationError::new(
                    "pool.name",
                    format!("pool {:?} is defined twice", pool.name),
                ));
            }
        }
        Ok(())
    }

    /// The tenants of `[[tenant]]` and `[tenants]`; errors name the tenant and field.
    pub fn tenant_config(&self) -> Result<hodei_core::tenancy::Tenants, ValidationError> {
        let burst = self.tenants.burst_policy()?;
        let mut configured = std::collections::BTreeMap::new();
        for settings in &self.tenant_list {
            let tenant = settings.to_tenant().map_err(|error| {
                ValidationError::new(
                    format!("tenant[{}].{}", settings.name, error.field),
                    error.reason,
                )
            })?;
            if configured.insert(tenant.name.clone(), tenant).is_some() {
                return Err(ValidationError::new(
                    "tenant.name",
                    format!("tenant {:?} is defined twice", settings.name),
                ));
            }
        }
        Ok(hodei_core::tenancy::Tenants {
            configured,
            auto_create: self
                .tenants
                .auto_create
                .then(|| hodei_core::tenancy::Tenant::new(hodei_core::TenantName::default())),
            burst,
        })
    }

    pub fn registration_config(&self) -> RegistrationConfig {
        RegistrationConfig {
            max_retries: self.registration.max_retries,
            base_backoff: self.registration.base_backoff,
            max_backoff: self.registration.max_backoff,
            registration_timeout: self.registration.timeout,
            batch_concurrency: self.registration.batch_concurrency,
            jitter: self.registration.jitter,
        }
    }

    pub fn worker_management(&self) -> WorkerManagementConfig {
        WorkerManagementConfig {
            registration_enabled: self.registration.enabled,
            provisioning_concurrency: self.provisioning.max_concurrent_provisioning,
            termination_concurrency: self.provisioning.termination_concurrency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let config = ServerConfig::parse("").unwrap();
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.registration.max_retries, 3);
        assert_eq!(config.registration.base_backoff, Duration::from_millis(100));
        assert_eq!(config.registration.timeout, Duration::from_secs(30));
        assert_eq!(config.registration.batch_concurrency, 10);
        assert_eq!(config.provisioning.max_concurrent_provisioning, 5);
    }

    #[test]
    fn a_docker_section_switches_docker_on_even_when_it_only_holds_defaults() {
        assert_eq!(ServerConfig::parse("").unwrap().docker, None);
        assert_eq!(
            ServerConfig::parse("[docker]").unwrap().docker,
            Some(DockerSection::default())
        );
        let config = ServerConfig::parse("[docker]\nnetwork = \"bridge\"").unwrap();
        assert_eq!(config.docker.unwrap().network, "bridge");
    }

    #[test]
    fn log_format_from_the_file_and_the_environment() {
        assert_eq!(ServerConfig::parse("").unwrap().log.format, LogFormat::Text);
        let mut config = ServerConfig::parse("[log]\nformat = \"json\"").unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        config
            .apply_env(|key| (key == "HODEI_LOG_FORMAT").then(|| "text".to_owned()))
            .unwrap();
        assert_eq!(config.log.format, LogFormat::Text);
        let error = config
            .apply_env(|key| (key == "HODEI_LOG_FORMAT").then(|| "xml".to_owned()))
            .unwrap_err();
        assert_eq!(error.field, "log.format");
        let error = ServerConfig::parse("[log]\nformat = \"xml\"").unwrap_err();
        assert!(error.contains("format"), "{error}");
    }

    #[test]
    fn a_full_file_parses() {
        let config = ServerConfig::parse(
            r#"
            listen = "0.0.0.0:6000"
            data_dir = "/var/lib/hodei"
            [registration]
            max_retries = 5
            timeout = "5s"
            [reconcile]
            interval = "10s"
            [[pool]]
            name = "linux"
            provider = "local"
            size = 3
            [pool.template]
            labels = { os = "linux" }
            [pool.template.capabilities]
            cpu_cores = 8
            "#,
        )
        .unwrap();
        assert_eq!(config.registration.max_retries, 5);
        assert_eq!(config.registration.timeout, Duration::from_secs(5));
        assert_eq!(config.pools[0].size, Some(3));
        assert_eq!(config.pools[0].template.capabilities.cpu_cores, 8);
        assert_eq!(config.pools[0].template.capabilities.memory_mb, 4096);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn queues_and_tenants_set_default_sla_classes_and_tenants_preemptibility() {
        use hodei_core::{QueueName, SlaClass, TenantName};
        let config = ServerConfig::parse(
            r#"
            [[jobs.queue]]
            name = "default"
            capacity = 100
            [[jobs.queue]]
            name = "release"
            capacity = 10
            sla_class = "high"
            [[tenant]]
            name = "nightly"
            sla_class = "best_effort"
            [[tenant]]
            name = "payments"
            preemptible = false
            "#,
        )
        .unwrap();
        assert!(config.validate().is_ok());
        let settings = config.sla_settings().unwrap();
        assert_eq!(
            settings
                .queue_classes
                .get(&QueueName::new("release").unwrap()),
            Some(&SlaClass::High)
        );
        assert_eq!(settings.queue_classes.len(), 1);
        let tenants = config.tenant_config().unwrap();
        let nightly = &tenants.configured[&TenantName::new("nightly").unwrap()];
        assert_eq!(
            (nightly.sla_class, nightly.preemptible),
            (Some(SlaClass::BestEffort), true)
        );
        let payments = &tenants.configured[&TenantName::new("payments").unwrap()];
        assert_eq!((payments.sla_class, payments.preemptible), (None, false));
        // Both survive the round trip through the API's settings.
        for tenant in [nightly, payments] {
            assert_eq!(
                &TenantSettings::from_tenant(tenant).to_tenant().unwrap(),
                tenant
            );
        }
        // Bad classes are named.
        let bad_queue = ServerConfig::parse(
            "[[jobs.queue]]\nname = \"default\"\ncapacity = 1\nsla_class = \"urgent\"\n",
        )
        .unwrap();
        let error = bad_queue.validate().unwrap_err();
        assert_eq!(error.field, "jobs.queue.sla_class");
        assert!(
            error.reason.contains("unknown sla class"),
            "{}",
            error.reason
        );
        let bad_tenant = TenantSettings {
            name: "t".into(),
            sla_class: Some("urgent".into()),
            ..TenantSettings::default()
        };
        assert_eq!(bad_tenant.to_tenant().unwrap_err().field, "sla_class");
    }

    #[test]
    fn the_sla_section_sets_deadlines_and_preemption() {
        let config = ServerConfig::parse(
            r#"
            [sla]
            critical = "5s"
            high = "3s"
            medium = "1h"
            low = "4h"
            best_effort = "24h"
            preemption = "never"
            preemption_grace = "2s"
            non_preemptible_tenants = ["release"]
            "#,
        )
        .unwrap();
        let settings = config.sla.settings().unwrap();
        assert_eq!(settings.critical, Duration::from_secs(5));
        assert_eq!(settings.high, Duration::from_secs(3));
        assert_eq!(
            settings.preemption,
            hodei_core::sla::PreemptionPolicy::Never
        );
        assert_eq!(settings.preemption_grace, Duration::from_secs(2));
        assert!(!settings.preemptible(&hodei_core::TenantName::new("release").unwrap(), false));
        assert_eq!(
            ServerConfig::default().sla.settings().unwrap(),
            hodei_core::sla::SlaSettings::default()
        );
        let error = ServerConfig::parse("[sla]\npreemption = \"sometimes\"\n").unwrap_err();
        assert!(error.contains("preemption"), "{error}");
        let error = ServerConfig::parse("[sla]\nurgent = \"1m\"\n").unwrap_err();
        assert!(error.contains("urgent"), "{error}");
        let config = ServerConfig::parse("[sla]\nlow = \"0s\"\n").unwrap();
        assert_eq!(config.validate().unwrap_err().field, "sla.low");
        let mut config = ServerConfig::default();
        config.sla.non_preemptible_tenants = vec!["no spaces".into()];
        assert_eq!(
            config.validate().unwrap_err().field,
            "sla.non_preemptible_tenants"
        );
    }

    #[test]
    fn the_retention_section_sets_what_is_kept_and_zero_keeps_forever() {
        let defaults = ServerConfig::default().retention.policy().unwrap();
        assert_eq!(defaults, hodei_core::retention::RetentionPolicy::default());
        assert_eq!(defaults.jobs, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(defaults.workers, Duration::from_secs(24 * 3600));
        let config = ServerConfig::parse(
            "[retention]\njobs = \"2h\"\nworkers = \"0s\"\ninterval = \"5s\"\nbatch = 10\n",
        )
        .unwrap();
        let policy = config.retention.policy().unwrap();
        assert_eq!(policy.jobs, Duration::from_secs(7200));
        assert_eq!(
            policy.keep(hodei_core::retention::Pruned::Workers),
            None,
            "0s keeps terminated workers forever"
        );
        assert_eq!(policy.batch, 10);
        let config = ServerConfig::parse("[retention]\nbatch = 0\n").unwrap();
        assert_eq!(config.validate().unwrap_err().field, "retention.batch");
        let error = ServerConfig::parse("[retention]\nlogs = \"1d\"\n").unwrap_err();
        assert!(error.contains("logs"), "{error}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let error = ServerConfig::parse("[registration]\nmax_retires = 3\n").unwrap_err();
        assert!(error.contains("max_retires"), "{error}");
        let error = ServerConfig::parse("[registration]\ntimeout = \"soon\"\n").unwrap_err();
        assert!(error.contains("timeout"), "{error}");

        let mut config = ServerConfig::default();
        config.registration.batch_concurrency = 0;
        assert_eq!(
            config.validate().unwrap_err().field,
            "registration.batch_concurrency"
        );

        let mut config = ServerConfig::default();
        config.provisioning.max_concurrent_provisioning = 0;
        assert_eq!(
            config.validate().unwrap_err().field,
            "provisioning.max_concurrent_provisioning"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = ServerConfig::default();
        let env = |key: &str| match key {
            "REGISTRATION_ENABLED" => Some("false".to_owned()),
            "REGISTRATION_MAX_RETRIES" => Some("7".to_owned()),
            "HODEI_TOKEN" => Some("0123456789abcdef0123".to_owned()),
            _ => None,
        };
        config.apply_env(env).unwrap();
        assert!(!config.registration.enabled);
        assert_eq!(config.registration.max_retries, 7);
        assert_eq!(config.token.as_deref(), Some("0123456789abcdef0123"));

        let bad = |key: &str| (key == "REGISTRATION_MAX_RETRIES").then(|| "lots".to_owned());
        let error = ServerConfig::default().apply_env(bad).unwrap_err();
        assert_eq!(error.field, "REGISTRATION_MAX_RETRIES");
        assert!(ServerConfig::default().apply_env(no_env).is_ok());
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given() {
        let config = ServerConfig::parse("").unwrap();
        assert_eq!(config.store.postgres_url().unwrap(), None);
        let config =
            ServerConfig::parse("[store]\nurl = \"postgres://hodei@db:5432/hodei\"\n").unwrap();
        assert_eq!(
            config.store.postgres_url().unwrap(),
            Some("postgres://hodei@db:5432/hodei")
        );
        assert!(config.validate().is_ok());

        let config = ServerConfig::parse("[store]\nurl = \"mysql://u:secret@db/h\"\n").unwrap();
        let error = config.validate().unwrap_err();
        assert_eq!(error.field, "store.url");
        assert!(!error.reason.contains("secret"), "{}", error.reason);

        let mut config = ServerConfig::default();
        let env = |key: &str| (key == "HODEI_STORE_URL").then(|| "postgres://e/h".to_owned());
        config.apply_env(env).unwrap();
        assert_eq!(config.store.url.as_deref(), Some("postgres://e/h"));
    }

    #[test]
    fn tenants_parse_and_bad_ones_are_named() {
        use hodei_core::tenancy::{Limit, Resource};
        let config = ServerConfig::parse(
            r#"
            [tenants]
            auto_create = false
            burst_factor = 2.0
            burst_max = "10m"
            [[tenant]]
            name = "ci-team"
            tier = "gold"
            max_running_jobs = 4
            max_cpu = 16
            soft = ["cpu"]
            [[tenant]]
            name = "nightly"
            weight = 7
            max_daily_cost = 12.5
            max_queued = 100
            "#,
        )
        .unwrap();
        let tenants = config.tenant_config().unwrap();
        assert!(tenants.auto_create.is_none());
        assert_eq!(tenants.burst.factor, 2.0);
        assert_eq!(tenants.burst.max_ms, 600_000);
        let ci = &tenants.configured[&hodei_core::TenantName::new("ci-team").unwrap()];
        assert_eq!(ci.weight, 3);
        assert_eq!(ci.quotas[&Resource::RunningJobs], Limit::hard(4.0));
        assert_eq!(ci.quotas[&Resource::Cpu], Limit::soft(16.0));
        let nightly = &tenants.configured[&hodei_core::TenantName::new("nightly").unwrap()];
        assert_eq!((nightly.weight, nightly.max_queued), (7, Some(100)));
        assert_eq!(
            TenantSettings::from_tenant(ci).to_tenant().unwrap(),
            ci.clone()
        );
        assert!(
            ServerConfig::default()
                .tenant_config()
                .unwrap()
                .auto_create
                .is_some()
        );

        let cases = [
            ("name = \"a\"\ntier = \"iron\"", "tenant[a].tier"),
            ("name = \"a\"\nweight = 0", "tenant[a].weight"),
            (
                "name = \"a\"\ntier = \"gold\"\nweight = 3",
                "tenant[a].weight",
            ),
            ("name = \"a\"\nsoft = [\"cpu\"]", "tenant[a].soft"),
            ("name = \"a\"\nsoft = [\"disk\"]", "tenant[a].soft"),
            ("name = \"a b\"", "tenant[a b].tenant"),
        ];
        for (table, field) in cases {
            let config = ServerConfig::parse(&format!("[[tenant]]\n{table}\n")).unwrap();
            assert_eq!(config.validate().unwrap_err().field, field, "{table}");
        }
        let twice =
            ServerConfig::parse("[[tenant]]\nname = \"a\"\n[[tenant]]\nname = \"a\"\n").unwrap();
        assert_eq!(twice.validate().unwrap_err().field, "tenant.name");
        let mut bad_burst = ServerConfig::default();
        bad_burst.tenants.burst_factor = 0.5;
        assert_eq!(
            bad_burst.validate().unwrap_err().field,
            "tenants.burst_factor"
        );
    }

    #[test]
    fn fencing_deadlines_parse_and_are_checked() {
        let config = ServerConfig::parse(
            "[agents]\nheartbeat_interval = \"1s\"\nlease = \"4s\"\nlease_margin = \"500ms\"\n[jobs]\nassign_timeout = \"3s\"\ntimeout_grace = \"1s\"\n",
        )
        .unwrap();
        let fence = config.jobs.service_config(&config.agents).unwrap().fence;
        assert_eq!(fence.lease, Duration::from_secs(4));
        assert_eq!(fence.lease_margin, Duration::from_millis(500));
        assert_eq!(fence.assign_timeout, Duration::from_secs(3));
        assert_eq!(fence.timeout_grace, Duration::from_secs(1));
        let defaults = ServerConfig::default();
        let fence = defaults
            .jobs
            .service_config(&defaults.agents)
            .unwrap()
            .fence;
        assert_eq!(fence, hodei_core::fence::FencePolicy::default());

        let mut config = ServerConfig::default();
        config.agents.lease = Duration::from_secs(9);
        // Heartbeats every 5 s: a 9 s lease would expire on one late answer.
        assert_eq!(config.validate().unwrap_err().field, "agents.lease");
        let mut config = ServerConfig::default();
        config.jobs.assign_timeout = Duration::ZERO;
        assert_eq!(config.validate().unwrap_err().field, "jobs.assign_timeout");
        let error = ServerConfig::parse("[jobs]\nlost_worker_grace = \"15s\"\n").unwrap_err();
        assert!(error.contains("lost_worker_grace"), "{error}");
    }

    #[test]
    fn duplicate_pools_are_refused() {
        let config = ServerConfig::parse(
            "[[pool]]\nname = \"a\"\nprovider = \"local\"\nsize = 1\n[[pool]]\nname = \"a\"\nprovider = \"local\"\nsize = 2\n",
        )
        .unwrap();
        assert_eq!(config.validate().unwrap_err().field, "pool.name");
    }
}
