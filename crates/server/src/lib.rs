//! Hodei's control plane. [`Server::start`] wires the store, the scheduler registry, the
//! provider, the registration adapter and worker management, serves the API on one
//! listener and keeps pools warm; [`run`] is the whole life of a server for `main`.

pub mod api;
pub mod config;
pub mod error;
pub mod grpc;
pub mod grpc_jobs;
pub mod grpc_tenants;
mod http;
mod serve;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hodei_adapters::{
    LocalProvider, LocalProviderConfig, RegistrationMetrics, WorkerRegistrationAdapter,
};
use hodei_core::health::{HeartbeatPolicy, Liveness};
use hodei_core::{ProviderKind, WorkerId, WorkerState};
use hodei_modules::{
    JobMetrics, JobService, PoolManager, PoolMetrics, Retired, SchedulerRegistry, TenantService,
    WorkerManagementMetrics, WorkerManagementService,
};
use hodei_ports::{SchedulerPort, Store};
use hodei_proto::v1::job_service_server::JobServiceServer;
use hodei_proto::v1::scheduler_service_server::SchedulerServiceServer;
use hodei_proto::v1::tenant_service_server::TenantServiceServer;
use hodei_proto::{ClientConfig, SchedulerPortClient};
use hodei_store::SqliteStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{DockerSection, KubernetesSection, ServerConfig, TenantSettings};
use grpc::{Authenticate, SchedulerGrpc, SessionHub};
use grpc_jobs::JobGrpc;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] hodei_core::ValidationError),
    #[error("cannot open the store: {0}")]
    Store(#[from] hodei_ports::store::Error),
    #[error("cannot start the job service: {0}")]
    Jobs(#[from] hodei_modules::JobError),
    #[error("cannot load the tenants: {0}")]
    Tenants(#[from] hodei_modules::TenantError),
    #[error("cannot load the pools: {0}")]
    Pools(#[from] hodei_modules::PoolError),
    #[error("cannot start the local provider: {0}")]
    Provider(#[from] hodei_ports::ProviderError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long shutdown waits for in-flight requests before closing connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A running server. Dropping it does not stop it: call [`Server::shutdown`].
pub struct Server {
    addr: SocketAddr,
    url: String,
    token: String,
    config: ServerConfig,
    store: Arc<dyn Store>,
    scheduler: Arc<SchedulerRegistry>,
    management: Arc<WorkerManagementService>,
    sessions: Arc<SessionHub>,
    jobs: JobService,
    pools: PoolManager,
    tenants: TenantService,
    cancel: CancellationToken,
    http: JoinHandle<()>,
    background: JoinHandle<()>,
    monitor: JoinHandle<()>,
    retirements: JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The token from the config, or the one saved under `data_dir`, or a new one saved there
/// (mode 0600) so that clients on this machine can keep using it across restarts.
fn load_or_create_token(config: &ServerConfig) -> Result<String, Error> {
    if let Some(token) = &config.token {
        return Ok(token.clone());
    }
    let path = config.data_dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if token.len() >= 16 {
            return Ok(token);
        }
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(&path, format!("{token}\n"))
        .map_err(io_error(format!("cannot write {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(format!("cannot protect {}", path.display())))?;
    Ok(token)
}

fn advertise_url(config: &ServerConfig, addr: SocketAddr) -> String {
    if let Some(url) = &config.advertise_url {
        return url.clone();
    }
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let scheme = if config.tls.enabled() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

fn agent_program(config: &ServerConfig) -> Result<PathBuf, Error> {
    match &config.local.agent_program {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe().map_err(io_error("cannot find the hodei executable")),
    }
}

impl Server {
    /// Opens the store, wires every component, starts serving on `listener` and starts
    /// the background work: a first reconciliation (adopting workers of an earlier run),
    /// pre-warming the configured pools, then reconciliation on an interval.
    pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Self, Error> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(io_error(format!(
            "cannot create {}",
            config.data_dir.display()
        )))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("cannot read the listen address"))?;
        let url = advertise_url(&config, addr);
        let tls = tls::acceptor(&config.tls)?;
        let token = load_or_create_token(&config)?;

        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&config.data_dir.join("hodei.db")).await?);
        let mut registry = Registry::default();
        let scheduler = Arc::new(SchedulerRegistry::new());
        // Workers register with, and their agents connect to, this server's scheduler, or
        // the remote one when `scheduler_url` is set.
        let (scheduler_port, agent_url): (Arc<dyn SchedulerPort>, String) =
            match &config.scheduler_url {
                Some(remote) => {
                    let mut client_config = ClientConfig::new(remote.clone(), token.clone());
                    client_config.ca_cert = config.tls.ca_cert.clone();
                    let client = SchedulerPortClient::new(&client_config)?;
                    (Arc::new(client), remote.clone())
                }
                None => (scheduler.clone(), url.clone()),
            };
        let provider = Arc::new(LocalProvider::new(LocalProviderConfig {
            program: agent_program(&config)?,
            args: Vec::new(),
            server_url: agent_url.clone(),
            ca_cert: config.tls.ca_cert.clone(),
            token: token.clone(),
            state_dir: config.data_dir.join("local"),
            stop_grace: config.local.stop_grace,
        })?);
        let registration = Arc::new(WorkerRegistrationAdapter::new(
            scheduler_port,
            config.registration_config(),
            RegistrationMetrics::new(&mut registry),
        ));
        let mut management = WorkerManagementService::new_with_registration(
            provider,
            registration,
            store.clone(),
            config.worker_management(),
            WorkerManagementMetrics::new(&mut registry),
        );
        let wants = |kind: ProviderKind| config.pools.iter().any(|pool| pool.provider == kind);
        if wants(ProviderKind::Kubernetes) || config.kubernetes != KubernetesSection::default() {
            let provider = hodei_kubernetes::KubernetesProvider::new(
                config.kubernetes.provider_config(&agent_url, &token),
            )
            .await?;
            management = management.with_provider(Arc::new(provider));
        }
        if wants(ProviderKind::Docker) || config.docker != DockerSection::default() {
            let provider = hodei_docker::DockerProvider::new(config.docker.provider_config(
                &agent_url,
                &token,
                config.tls.ca_cert.as_deref(),
            ))?;
            management = management.with_provider(Arc::new(provider));
        }
        let management = Arc::new(management);

        let sessions = Arc::new(SessionHub::default());
        let liveness = LivenessMetrics::new(&mut registry);
        let cancel = CancellationToken::new();
        // Unfinished jobs are loaded from the store before anything is served.
        let (jobs, retired) = JobService::start(
            hodei_modules::JobServiceConfig {
                tenants: config.tenant_config()?,
                ..config.jobs.service_config()?
            },
            store.clone(),
            scheduler.clone(),
            sessions.clone(),
            JobMetrics::new(&mut registry),
            cancel.clone(),
        )
        .await?;
        let tenants =
            TenantService::start(config.tenant_config()?, store.clone(), jobs.clone()).await?;
        let pools = PoolManager::new(
            management.clone(),
            jobs.clone(),
            scheduler.clone(),
            store.clone(),
            &config.pools,
            config.autoscaler.manager_config(),
            PoolMetrics::new(&mut registry),
        )
        .await?;
        let ready = Arc::new(AtomicBool::new(false));
        let token_shared: Arc<str> = token.clone().into();
        let grpc = SchedulerServiceServer::with_interceptor(
            SchedulerGrpc {
                registry: scheduler.clone(),
                hub: sessions.clone(),
                heartbeat: config.agents.policy(),
                jobs: jobs.clone(),
            },
            Authenticate {
                token: token_shared.clone(),
            },
        );
        let job_grpc = JobServiceServer::with_interceptor(
            JobGrpc { jobs: jobs.clone() },
            Authenticate {
                token: token_shared.clone(),
            },
        );
        let tenant_grpc = TenantServiceServer::with_interceptor(
            grpc_tenants::TenantGrpc {
                tenants: tenants.clone(),
            },
            Authenticate {
                token: token_shared.clone(),
            },
        );
        let grpc = tonic::service::Routes::new(grpc)
            .add_service(job_grpc)
            .add_service(tenant_grpc)
            .prepare();
        let http = http::router(http::AppState {
            store: store.clone(),
            management: management.clone(),
            scheduler: scheduler.clone(),
            jobs: jobs.clone(),
            pools: pools.clone(),
            tenants: tenants.clone(),
            metrics: Arc::new(registry),
            token: token_shared,
            ready: ready.clone(),
        });
        let http = tokio::spawn(serve::serve(
            listener,
            serve::App { grpc, http },
            tls,
            cancel.clone(),
        ));
        let background = tokio::spawn(background(
            management.clone(),
            pools.clone(),
            config.clone(),
            ready,
            cancel.clone(),
        ));
        let monitor = tokio::spawn(monitor_liveness(
            scheduler.clone(),
            management.clone(),
            store.clone(),
            config.agents.policy(),
            liveness,
            cancel.clone(),
        ));
        let retirements = tokio::spawn(terminate_retired(
            retired,
            management.clone(),
            pools.clone(),
            cancel.clone(),
        ));
        tracing::info!(%addr, %url, tls = config.tls.enabled(), "hodei server listening");
        Ok(Self {
            addr,
            url,
            token,
            config,
            store,
            scheduler,
            management,
            cancel,
            sessions,
            http,
            background,
            monitor,
            retirements,
            jobs,
            pools,
            tenants,
        })
    }

    pub fn tenants(&self) -> &TenantService {
        &self.tenants
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients and agents use.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The in-process scheduler registry.
    pub fn scheduler(&self) -> &Arc<SchedulerRegistry> {
        &self.scheduler
    }

    /// Pools: create, change, remove, and their status and decisions.
    pub fn pools(&self) -> &PoolManager {
        &self.pools
    }

    /// Jobs: submit, inspect, cancel.
    pub fn jobs(&self) -> &JobService {
        &self.jobs
    }

    pub fn management(&self) -> &Arc<WorkerManagementService> {
        &self.management
    }

    /// The agents' open sessions: send them messages, hear what they say.
    pub fn sessions(&self) -> &Arc<SessionHub> {
        &self.sessions
    }

    /// Stops background work, terminates every worker (unless configured otherwise), then
    /// stops serving once in-flight requests finish.
    pub async fn shutdown(self) -> Result<(), Error> {
        tracing::info!("shutting down");
        self.cancel.cancel();
        let _ = self.background.await;
        let _ = self.monitor.await;
        let _ = self.retirements.await;
        if self.config.shutdown.terminate_workers {
            match self.management.terminate_all().await {
                Ok(failures) => {
                    for (worker_id, error) in failures {
                        tracing::error!(%worker_id, %error, "could not terminate worker at shutdown");
                    }
                }
                Err(error) => tracing::error!(%error, "could not list workers to terminate"),
            }
        }
        // Long-lived agent sessions would hold graceful shutdown open forever.
        self.sessions.close_all();
        let mut http = self.http;
        let joined = match tokio::time::timeout(SHUTDOWN_GRACE, &mut http).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period, closing them");
                http.abort();
                return Ok(());
            }
        };
        match joined {
            Ok(()) => Ok(()),
            Err(join) => Err(Error::Io {
                what: "http server task failed".into(),
                source: std::io::Error::other(join),
            }),
        }
    }
}

/// Terminates workers the dispatcher retired (max uses, failed health check); the pool
/// manager sees them leave and provisions their replacements.
async fn terminate_retired(
    mut retired: tokio::sync::mpsc::UnboundedReceiver<Retired>,
    management: Arc<WorkerManagementService>,
    pools: PoolManager,
    cancel: CancellationToken,
) {
    loop {
        let retirement = tokio::select! {
            retirement = retired.recv() => match retirement {
                Some(retirement) => retirement,
                None => return,
            },
            () = cancel.cancelled() => return,
        };
        let id = &retirement.worker_id;
        tracing::info!(worker_id = %id, reason = %retirement.reason, "terminating a retired worker");
        pools.wake();
        if let Err(error) = management.terminate_worker(id).await {
            tracing::warn!(worker_id = %id, %error, "could not terminate a retired worker");
        }
    }
}

async fn background(
    management: Arc<WorkerManagementService>,
    pools: PoolManager,
    config: ServerConfig,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let startup = async {
        reconcile_once(&management).await;
        // Pre-warm: every pool gets its minimum, in parallel, before the server says ready.
        pools.prewarm().await;
        for status in pools.list() {
            tracing::info!(
                pool = %status.spec.name,
                kind = %status.spec.kind,
                idle = status.counts.idle,
                starting = status.counts.starting,
                desired = status.desired,
                "pool ready"
            );
        }
        ready.store(true, Ordering::Release);
        tokio::spawn(pools.clone().run(cancel.clone()));
        let mut interval = tokio::time::interval(config.reconcile.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            reconcile_once(&management).await;
        }
    };
    tokio::select! {
        () = startup => {}
        () = cancel.cancelled() => {}
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LivenessLabels {
    outcome: &'static str,
}

/// `hodei_worker_heartbeat_deadlines_total{outcome}`: workers marked unhealthy, removed, or
/// healthy again.
#[derive(Debug, Clone)]
struct LivenessMetrics {
    deadlines: Family<LivenessLabels, Counter>,
}

impl LivenessMetrics {
    fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            deadlines: Family::default(),
        };
        registry.register(
            "hodei_worker_heartbeat_deadlines",
            "Workers whose heartbeats stopped (unhealthy, removed) or came back (recovered)",
            metrics.deadlines.clone(),
        );
        for outcome in ["unhealthy", "removed", "recovered"] {
            let _ = metrics.deadlines.get_or_create(&LivenessLabels { outcome });
        }
        metrics
    }
}

/// Every heartbeat interval, applies the heartbeat deadlines: an unhealthy worker gets no
/// work (and its record says so), a gone one is unregistered and, if a provider of ours
/// runs it, terminated.
async fn monitor_liveness(
    scheduler: Arc<SchedulerRegistry>,
    management: Arc<WorkerManagementService>,
    store: Arc<dyn Store>,
    policy: HeartbeatPolicy,
    metrics: LivenessMetrics,
    cancel: CancellationToken,
) {
    let mut interval = tokio::time::interval(policy.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = cancel.cancelled() => return,
        }
        for change in scheduler.sweep(&policy, tokio::time::Instant::now()) {
            let id = &change.worker_id;
            let record = store
                .get_worker(id)
                .await
                .ok()
                .flatten()
                .filter(|r| r.state.is_live());
            match change.to {
                Liveness::Unhealthy => {
                    tracing::warn!(worker_id = %id, "worker missed its heartbeat deadline, marked unhealthy");
                    metrics
                        .deadlines
                        .get_or_create(&LivenessLabels {
                            outcome: "unhealthy",
                        })
                        .inc();
                    if record.is_some_and(|r| r.state.can_transition_to(WorkerState::Unhealthy)) {
                        log_store_error(
                            id,
                            store.transition_worker(id, WorkerState::Unhealthy).await,
                        );
                    }
                }
                Liveness::Gone => {
                    tracing::warn!(worker_id = %id, "worker silent past the removal deadline, removing it");
                    metrics
                        .deadlines
                        .get_or_create(&LivenessLabels { outcome: "removed" })
                        .inc();
                    let _ = scheduler.unregister(id);
                    if record.is_some()
                        && let Err(error) = management.terminate_worker(id).await
                    {
                        tracing::warn!(worker_id = %id, %error, "could not terminate a silent worker");
                    }
                }
                Liveness::Healthy => {
                    tracing::info!(worker_id = %id, "worker heartbeats again, healthy");
                    metrics
                        .deadlines
                        .get_or_create(&LivenessLabels {
                            outcome: "recovered",
                        })
                        .inc();
                    if record.is_some_and(|r| r.state == WorkerState::Unhealthy) {
                        log_store_error(id, store.transition_worker(id, WorkerState::Idle).await);
                    }
                }
            }
        }
    }
}

fn log_store_error<T>(worker_id: &WorkerId, result: Result<T, hodei_ports::store::Error>) {
    if let Err(error) = result {
        tracing::warn!(%worker_id, %error, "could not record a liveness change");
    }
}

async fn reconcile_once(management: &WorkerManagementService) {
    match management.reconcile().await {
        Ok(report) => {
            if !report.applied.is_empty() || !report.failed.is_empty() {
                tracing::info!(
                    fixed = report.applied.len(),
                    failed = report.failed.len(),
                    "reconciled"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "reconciliation failed, will try again"),
    }
}

/// The whole life of a server: start on `listener`, run until `shutdown` completes, stop.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let server = Server::start(config, listener).await?;
    shutdown.await;
    server.shutdown().await
}
