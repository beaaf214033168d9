//! Hodei's control plane. [`Server::start`] wires the store, the scheduler registry, the
//! provider, the registration adapter and worker management, serves the API on one
//! listener and keeps pools warm; [`run`] is the whole life of a server for `main`.

pub mod api;
mod auth;
mod cluster;
pub mod config;
mod console;
pub mod error;
mod exposition;
pub mod grpc;
pub mod grpc_jobs;
pub mod grpc_tenants;
pub mod grpc_tokens;
mod http;
mod runnable;
mod scope;
mod serve;
mod tls;
mod transitions;
mod workers;

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
    Credentials, JobMetrics, JobService, PoolManager, PoolMetrics, Retention, RetentionMetrics,
    Retired, SchedulerRegistry, TenantService, Terminations, Why, WorkerDrains,
    WorkerManagementMetrics, WorkerManagementService, WorkerUsageMetrics,
};
use hodei_ports::{SchedulerPort, Store};
use hodei_proto::v1::job_service_server::JobServiceServer;
use hodei_proto::v1::scheduler_service_server::SchedulerServiceServer;
use hodei_proto::v1::tenant_service_server::TenantServiceServer;
use hodei_proto::v1::token_service_server::TokenServiceServer;
use hodei_proto::{ClientConfig, SchedulerPortClient};
use hodei_store::{PostgresStore, SqliteStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cluster::{FOLLOWER_HEADER, LEADER_HEADER};
pub use config::{
    ClusterSection, DockerSection, KubernetesSection, LogFormat, ServerConfig, TenantSettings,
};
use grpc::{SchedulerGrpc, SessionHub};
use grpc_jobs::JobGrpc;
use grpc_tokens::TokenGrpc;

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
    #[error("cannot start a provider: {0}")]
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

/// How long a replica stepping down waits for its loops to stop before aborting them.
const STEP_DOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for `task` until `deadline`, then aborts it.
async fn join_or_abort(mut task: JoinHandle<()>, deadline: tokio::time::Instant) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        tracing::warn!("a loop did not stop in time, aborting it");
        task.abort();
    }
}

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
    credentials: Credentials,
    sessions: Arc<SessionHub>,
    jobs: JobService,
    pools: PoolManager,
    tenants: TenantService,
    cancel: CancellationToken,
    http: JoinHandle<()>,
    background: JoinHandle<()>,
    monitor: JoinHandle<()>,
    retirements: JoinHandle<()>,
    dead_watch: JoinHandle<()>,
    terminator: JoinHandle<()>,
    terminations: Terminations,
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
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Writes a file only its owner can read: mode 0600 from its creation on.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("cannot write {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(what()))?;
    file.write_all(contents).map_err(io_error(what()))?;
    protect(path, 0o600)
}

/// Sets `path`'s permission bits.
fn protect(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error(format!("cannot protect {}", path.display())))
}

/// The data directory (0700) and the database file (0600, before SQLite opens it: its
/// WAL and shared-memory files take the database's permissions).
fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)
        .map_err(io_error(format!("cannot create {}", data_dir.display())))?;
    protect(data_dir, 0o700)?;
    let database = data_dir.join("hodei.db");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&database)
        .map_err(io_error(format!("cannot create {}", database.display())))?;
    protect(&database, 0o600)?;
    for suffix in ["-wal", "-shm"] {
        let path = data_dir.join(format!("hodei.db{suffix}"));
        if path.exists() {
            protect(&path, 0o600)?;
        }
    }
    Ok(database)
}

/// Raises the soft limit on open files to the hard limit, and returns the soft limit now
/// in force (so the connection cap can stay below it).
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(errno) => {
                tracing::warn!(%errno, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(errno) => {
            tracing::warn!(%errno, "cannot read the open-file limit");
            1024
        }
    }
}

/// File descriptors kept for the store, providers, agents' pipes and logs, beyond the
/// connections.
const RESERVED_FDS: u64 = 256;

/// The connection cap: the configured one, below the open-file limit.
fn connection_limit(configured: usize, open_file_limit: u64) -> usize {
    let available = open_file_limit.saturating_sub(RESERVED_FDS).max(16);
    configured.min(usize::try_from(available).unwrap_or(usize::MAX))
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

/// What a replica that took the leader lease hands the server it starts.
pub(crate) struct Leading {
    /// The store, fenced with the lease's epoch.
    pub store: Arc<dyn Store>,
    pub cluster: cluster::ClusterView,
}

/// How many connections, and how long each may idle, from the config.
fn limits(config: &ServerConfig, max_connections: usize) -> serve::Limits {
    serve::Limits {
        max_connections,
        header_read_timeout: config.connections.header_read_timeout,
        idle_timeout: config.connections.idle_timeout,
        keepalive_interval: config.connections.keepalive_interval,
        keepalive_timeout: config.connections.keepalive_timeout,
    }
}

impl Server {
    /// Opens the store, wires every component, starts serving on `listener` and starts
    /// the background work: a first reconciliation (adopting workers of an earlier run),
    /// pre-warming the configured pools, then reconciliation on an interval. The server
    /// leads alone: [`run`] is the way to run replicas on PostgreSQL.
    pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Self, Error> {
        Self::start_with(config, listener, None).await
    }

    /// The whole server for the replica holding the leader lease.
    pub(crate) async fn start_leading(
        config: ServerConfig,
        listener: TcpListener,
        leading: Leading,
    ) -> Result<Self, Error> {
        Self::start_with(config, listener, Some(leading)).await
    }

    async fn start_with(
        config: ServerConfig,
        listener: TcpListener,
        leading: Option<Leading>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let database = prepare_data_dir(&config.data_dir)?;
        let max_connections = connection_limit(config.connections.max, raise_open_file_limit());
        let addr = listener
            .local_addr()
            .map_err(io_error("cannot read the listen address"))?;
        let url = advertise_url(&config, addr);
        let tls = tls::acceptor(&config.tls)?;
        let token = load_or_create_token(&config)?;

        let (store, cluster): (Arc<dyn Store>, cluster::ClusterView) = match leading {
            Some(leading) => (leading.store, leading.cluster),
            None => (
                match config.store.postgres_url()? {
                    Some(url) => Arc::new(PostgresStore::connect(url).await?),
                    None => Arc::new(SqliteStore::open(&database).await?),
                },
                cluster::ClusterView::single(&url),
            ),
        };
        // Every job state change passes through the store: noted there for the console.
        let transitions = transitions::TransitionLog::default();
        let store: Arc<dyn Store> =
            Arc::new(transitions::RecordingStore::new(store, transitions.clone()));
        let credentials = Credentials::load(store.clone(), token.clone()).await?;
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
            otlp_endpoint: config.telemetry.otlp_endpoint.clone(),
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
                config.kubernetes.provider_config(&agent_url),
            )
            .await?;
            management = management.with_provider(Arc::new(provider));
        }
        if wants(ProviderKind::Docker) || config.docker.is_some() {
            let docker = config.docker.clone().unwrap_or_default();
            let provider = hodei_docker::DockerProvider::new(
                docker.provider_config(&agent_url, config.tls.ca_cert.as_deref()),
            )?;
            management = management.with_provider(Arc::new(provider));
        }
        let management = Arc::new(management.with_credentials(credentials.clone()));

        let sessions = Arc::new(SessionHub::default());
        let liveness = LivenessMetrics::new(&mut registry);
        let cancel = CancellationToken::new();
        // Unfinished jobs are loaded from the store before anything is served.
        let job_metrics = JobMetrics::new(&mut registry);
        // Tenant totals survive restarts: the counters start at what the store has.
        job_metrics.restore_tenant_totals(&store.attempt_totals(0).await?);
        registry.register_collector(Box::new(WorkerUsageMetrics::new(scheduler.clone())));
        let (jobs, retired) = JobService::start(
            hodei_modules::JobServiceConfig {
                tenants: config.tenant_config()?,
                sla: config.sla_settings()?,
                ..config.jobs.service_config(&config.agents)?
            },
            store.clone(),
            scheduler.clone(),
            sessions.clone(),
            job_metrics,
            cancel.clone(),
        )
        .await?;
        let tenants =
            TenantService::start(config.tenant_config()?, store.clone(), jobs.clone()).await?;
        // The one owner of termination at runtime; the others ask it.
        let terminations = Terminations::new(management.clone(), scheduler.clone(), &mut registry);
        let terminator = tokio::spawn(terminations.clone().run(cancel.clone()));
        let pools = PoolManager::new(
            management.clone(),
            terminations.clone(),
            jobs.clone(),
            scheduler.clone(),
            store.clone(),
            &config.pools,
            hodei_modules::PoolManagerConfig {
                max_concurrent_provisioning: config.provisioning.max_concurrent_provisioning,
                ..config.autoscaler.manager_config()
            },
            PoolMetrics::new(&mut registry),
        )
        .await?;
        let drains = WorkerDrains::new(
            scheduler.clone(),
            jobs.clone(),
            terminations.clone(),
            store.clone(),
            pools.clone(),
        );
        // Drains recorded before a restart hold again before any agent can take a job.
        drains.restore().await?;
        tokio::spawn(drains.clone().run(cancel.clone()));
        // Old finished jobs and terminated workers leave the store in the background.
        let retention = Retention::new(
            store.clone(),
            config.retention.policy()?,
            RetentionMetrics::new(&mut registry),
        );
        tokio::spawn(retention.run(cancel.clone()));
        let ready = Arc::new(AtomicBool::new(false));
        let grpc = SchedulerServiceServer::new(SchedulerGrpc {
            drains: drains.clone(),
            store: store.clone(),
            max_log_bytes: config.jobs.max_log_bytes,
            credentials: credentials.clone(),
            registry: scheduler.clone(),
            hub: sessions.clone(),
            heartbeat: config.agents.policy(),
            lease: config.agents.lease,
            jobs: jobs.clone(),
        });
        let job_grpc = JobServiceServer::new(JobGrpc {
            jobs: jobs.clone(),
            pools: pools.clone(),
            scheduler: scheduler.clone(),
            allow_pending: config.jobs.allow_pending,
        });
        let token_grpc = TokenServiceServer::new(TokenGrpc {
            credentials: credentials.clone(),
        });
        let tenant_grpc = TenantServiceServer::new(grpc_tenants::TenantGrpc {
            tenants: tenants.clone(),
        });
        let grpc = tonic::service::Routes::new(grpc)
            .add_service(job_grpc)
            .add_service(tenant_grpc)
            .add_service(token_grpc)
            .prepare();
        let pool_history = console::PoolHistory::default();
        tokio::spawn(console::sample_pools(
            pools.clone(),
            pool_history.clone(),
            cancel.clone(),
        ));
        let http = http::router(http::AppState {
            store: store.clone(),
            management: management.clone(),
            scheduler: scheduler.clone(),
            jobs: jobs.clone(),
            pools: pools.clone(),
            tenants: tenants.clone(),
            drains,
            allow_pending: config.jobs.allow_pending,
            metrics: Arc::new(registry),
            credentials: credentials.clone(),
            max_body_bytes: config.connections.max_body_bytes,
            ready: ready.clone(),
            tls: config.tls.enabled(),
            transitions,
            pool_history,
            cluster,
        });
        let limits = limits(&config, max_connections);
        let http = tokio::spawn(serve::serve(
            listener,
            serve::App {
                grpc,
                http,
                credentials: credentials.clone(),
                refuse_writes: None,
            },
            tls,
            limits,
            cancel.clone(),
        ));
        // A revoked credential's open sessions end at once.
        tokio::spawn(close_revoked_sessions(
            credentials.clone(),
            sessions.clone(),
            cancel.clone(),
        ));
        let background = tokio::spawn(background(
            terminations.clone(),
            pools.clone(),
            config.clone(),
            ready,
            cancel.clone(),
        ));
        let monitor = tokio::spawn(monitor_liveness(
            scheduler.clone(),
            terminations.clone(),
            store.clone(),
            config.agents.policy(),
            liveness,
            cancel.clone(),
        ));
        let dead_watch = tokio::spawn(confirm_dead_workers(
            sessions.clone(),
            management.clone(),
            terminations.clone(),
            jobs.clone(),
            pools.clone(),
            cancel.clone(),
        ));
        let retirements = tokio::spawn(terminate_retired(
            retired,
            terminations.clone(),
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
            credentials,
            cancel,
            sessions,
            http,
            background,
            monitor,
            retirements,
            dead_watch,
            terminator,
            terminations,
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

    /// The configured admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Credentials: mint, list, revoke.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
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

    /// Steps down from leading (the lease is lost): stops the dispatcher and the background
    /// work at once, closes agent sessions (agents reconnect to the new leader) and stops
    /// serving. Workers keep running: the new leader finds them in the store.
    pub(crate) async fn step_down(self) {
        self.cancel.cancel();
        // Bounded: a leader cut off from the database may have loops stuck in a statement
        // that never answers. They are aborted (their writes are fenced, and a transaction
        // left open is rolled back by the database), and the agents' sessions are closed so
        // that they go to the next leader now rather than when their lease runs out.
        let deadline = tokio::time::Instant::now() + STEP_DOWN_GRACE;
        for task in [
            self.background,
            self.monitor,
            self.retirements,
            self.dead_watch,
        ] {
            join_or_abort(task, deadline).await;
        }
        if tokio::time::timeout_at(deadline, self.pools.stop())
            .await
            .is_err()
        {
            tracing::warn!("the pool manager did not stop in time, leaving it");
        }
        self.sessions.close_all();
        // Requests still in flight (one waiting on a database out of reach) are cut short:
        // until this returns, the address answers nobody, and the follower that takes over
        // it points clients and agents at the next leader.
        let mut http = self.http;
        if tokio::time::timeout(STEP_DOWN_GRACE, &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
    }

    /// Stops background work, terminates every worker (unless configured otherwise), then
    /// stops serving once in-flight requests finish.
    pub async fn shutdown(self) -> Result<(), Error> {
        tracing::info!("shutting down");
        self.cancel.cancel();
        let _ = self.background.await;
        let _ = self.monitor.await;
        let _ = self.retirements.await;
        let _ = self.dead_watch.await;
        // Terminations under way finish; what is still asked for is stopped below.
        let _ = self.terminator.await;
        // Before terminating: a pass or a provisioning still under way would start
        // replacements for the workers being terminated.
        self.pools.stop().await;
        if self.config.shutdown.terminate_workers {
            // Through the one owner of termination, counted under `shutdown`.
            let failures = self.terminations.terminate_all().await;
            let still_running: std::collections::BTreeSet<WorkerId> =
                failures.iter().map(|(id, _)| id.clone()).collect();
            for (worker_id, error) in failures {
                tracing::error!(%worker_id, %error, "could not terminate worker at shutdown");
            }
            record_stopped_jobs(self.store.as_ref(), &still_running).await;
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

/// Ends the sessions of every credential revoked, as it is revoked.
async fn close_revoked_sessions(
    credentials: Credentials,
    sessions: Arc<SessionHub>,
    cancel: CancellationToken,
) {
    let mut revocations = credentials.revocations();
    loop {
        let revoked = tokio::select! {
            revoked = revocations.recv() => revoked,
            () = cancel.cancelled() => return,
        };
        match revoked {
            Ok(id) => {
                for worker_id in sessions.close_credential(&id) {
                    tracing::warn!(%worker_id, credential_id = %id, "credential revoked, session closed");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                // Missed some: close every session whose credential is no longer live.
                tracing::warn!(missed, "revocations lagged, checking every session");
                for id in sessions.credential_ids() {
                    if !credentials.is_live(Some(&id)) {
                        sessions.close_credential(&id);
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How often, and how long, a closed session's worker is checked for death: its process may
/// take a moment to finish exiting after its socket closed.
const DEATH_CHECKS: u32 = 10;
const DEATH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// When an agent's session closes, asks its provider whether the agent is dead. If so, its
/// jobs are lost at once (nothing of them runs any more: no lease to wait out), and the
/// worker is terminated so its pool starts a replacement now, not at the next reconcile.
async fn confirm_dead_workers(
    hub: Arc<SessionHub>,
    management: Arc<WorkerManagementService>,
    terminations: Terminations,
    jobs: JobService,
    pools: PoolManager,
    cancel: CancellationToken,
) {
    let mut events = hub.subscribe();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = cancel.cancelled() => return,
        };
        let id = match event {
            Ok(grpc::SessionEvent {
                worker_id,
                event: grpc::AgentEvent::Disconnected,
            }) => worker_id,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                // The lease still covers the workers whose close was missed.
                tracing::warn!(
                    missed,
                    "missed agent events; dead workers among them wait for the lease"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let (hub, management, terminations, jobs, pools, cancel) = (
            hub.clone(),
            management.clone(),
            terminations.clone(),
            jobs.clone(),
            pools.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..DEATH_CHECKS {
                if cancel.is_cancelled() || hub.is_connected(&id) {
                    return;
                }
                if management.confirm_dead(&id).await {
                    tracing::warn!(worker_id = %id, "agent died, its jobs are lost and it is replaced");
                    jobs.worker_dead(id.clone()).await;
                    terminations.request(id, Why::Dead);
                    pools.wake();
                    return;
                }
                tokio::time::sleep(DEATH_CHECK_INTERVAL).await;
            }
        });
    }
}

/// After a shutdown stopped its workers (the dispatcher is stopped already): the attempts
/// they ran end as lost now, in the store, so a restarted server requeues those jobs at once
/// (or fails them, per [`hodei_core::job::after_attempt`]) instead of waiting out the lease
/// for agents that will not come back. Jobs of workers that could not be stopped stay in
/// flight.
async fn record_stopped_jobs(
    store: &dyn Store,
    still_running: &std::collections::BTreeSet<WorkerId>,
) {
    use hodei_core::JobState;
    use hodei_core::job::{AttemptOutcome, after_attempt};
    let unfinished = match store.list_jobs(&hodei_ports::JobFilter::unfinished()).await {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::error!(%error, "cannot record the jobs the shutdown stopped; a restart waits out their lease");
            return;
        }
    };
    for job in unfinished {
        let stopped = matches!(job.state, JobState::Assigned | JobState::Running)
            && job
                .worker_id
                .as_ref()
                .is_some_and(|w| !still_running.contains(w));
        if !stopped {
            continue;
        }
        let previous = job.state;
        let (next, reason) = after_attempt(&job, AttemptOutcome::WorkerLost);
        let mut ended = job;
        ended.state = next;
        ended.reason = Some(format!(
            "{}: the server shut down and stopped its worker",
            reason.unwrap_or_else(|| "worker lost".to_owned())
        ));
        if next.is_terminal() {
            ended.finished_at = Some(std::time::SystemTime::now());
        }
        match store.update_job(&ended, previous).await {
            Ok(()) => {
                tracing::info!(job_id = %ended.id, state = %next, "recorded a job the shutdown stopped")
            }
            Err(error) => {
                tracing::warn!(job_id = %ended.id, %error, "cannot record a job the shutdown stopped")
            }
        }
    }
}

/// Terminates workers the dispatcher retired (max uses, failed health check); the pool
/// manager sees them leave and provisions their replacements.
async fn terminate_retired(
    mut retired: tokio::sync::mpsc::UnboundedReceiver<Retired>,
    terminations: Terminations,
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
        let id = retirement.worker_id;
        tracing::info!(worker_id = %id, reason = %retirement.reason, "terminating a retired worker");
        terminations.request(id, Why::Retired);
        pools.wake();
    }
}

async fn background(
    terminations: Terminations,
    pools: PoolManager,
    config: ServerConfig,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let startup = async {
        reconcile_once(&terminations).await;
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
            reconcile_once(&terminations).await;
        }
    };
    tokio::select! {
        () = startup => {}
        () = cancel.cancelled() => {}
    }
    // Held time since the last write, so that totals carry over a restart.
    pools.flush().await;
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
    terminations: Terminations,
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
                    if record.is_some() {
                        terminations.request(id.clone(), Why::Silent);
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

async fn reconcile_once(terminations: &Terminations) {
    match terminations.reconcile().await {
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

/// Checks that the Docker engine of `section` answers and has its agent image, so that
/// `hodei dev --provider docker` can refuse to start with a message that says what to do.
pub async fn check_docker(section: &DockerSection) -> Result<(), hodei_ports::ProviderError> {
    // The URL only matters to containers, and none is started here.
    let provider =
        hodei_docker::DockerProvider::new(section.provider_config("http://127.0.0.1", None))?;
    provider.check_image(None).await
}

/// The whole life of a server: start on `listener`, run until `shutdown` completes, stop.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if let Some(url) = config.store.postgres_url()? {
        let url = url.to_owned();
        return cluster::run_replica(config, listener, &url, shutdown).await;
    }
    let server = Server::start(config, listener).await?;
    shutdown.await;
    server.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::connection_limit;

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        assert_eq!(connection_limit(4096, 1_048_576), 4096);
        assert_eq!(connection_limit(4096, 1024), 1024 - 256);
        assert_eq!(connection_limit(100, 1024), 100);
        // A tiny limit still leaves a few connections rather than none.
        assert_eq!(connection_limit(4096, 100), 16);
    }
}
