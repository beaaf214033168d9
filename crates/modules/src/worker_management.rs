//! US-08.1.3: worker management. Provisions workers through a [`WorkerProvider`], records
//! them in the [`Store`], registers them with the scheduler through the
//! [`WorkerRegistrationPort`], terminates them, and reconciles the three when they drift.
//!
//! Order of operations, which the reconciler relies on:
//! - provisioning: record (`provisioning`) -> create at the provider -> `registering` ->
//!   register -> `idle`. The record exists before the worker does, so a running worker
//!   nobody recorded is a true orphan.
//! - termination: unregister -> stop at the provider -> `terminated`.
//! - while a worker is being provisioned or terminated its id is "in flight" and the
//!   reconciler leaves it alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hodei_core::credential::WorkerOrigin;
use hodei_core::reconcile::{self, Action, Views};
use hodei_core::{
    PoolSpec, ProviderKind, ValidationError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata,
    WorkerSpec, WorkerState, WorkerType,
};
use hodei_ports::store::{self, WorkerFilter};
use hodei_ports::{
    AgentCredential, ProviderError, RegistrationError, SchedulerError, Store, WorkerProvider,
    WorkerRegistrationPort,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How worker management behaves. Read from the config file, then `REGISTRATION_ENABLED`
/// from the environment. How a registration is retried and bounded (`[registration]
/// max_retries`, `timeout`, `REGISTRATION_MAX_RETRIES`) is the registration adapter's
/// (`hodei_adapters::worker_registration::RegistrationConfig`), the one that retries: the
/// seed's copies of those two here were never read, so they are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerManagementConfig {
    /// Register provisioned workers with the scheduler.
    pub registration_enabled: bool,
    /// Workers created at the provider at once by [`WorkerManagementService::create_pool`]
    /// (the pool manager passes its own bounds to
    /// [`WorkerManagementService::provision_many`]).
    pub provisioning_concurrency: usize,
    /// Terminations at once (`hodei_modules::Terminations`, shutdown included).
    pub termination_concurrency: usize,
}

impl Default for WorkerManagementConfig {
    fn default() -> Self {
        Self {
            registration_enabled: true,
            provisioning_concurrency: 5,
            termination_concurrency: 10,
        }
    }
}

impl WorkerManagementConfig {
    /// Applies `REGISTRATION_ENABLED` (`true`/`false`/`1`/`0`) from `lookup`; an
    /// unparsable value is an error naming the variable.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ValidationError> {
        if let Some(value) = lookup("REGISTRATION_ENABLED") {
            self.registration_enabled = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(ValidationError::new(
                        "REGISTRATION_ENABLED",
                        format!("is {value:?}, expected true or false"),
                    ));
                }
            };
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.provisioning_concurrency == 0 {
            return Err(ValidationError::new(
                "provisioning.max_concurrent_provisioning",
                "must be at least 1",
            ));
        }
        if self.termination_concurrency == 0 {
            return Err(ValidationError::new(
                "provisioning.termination_concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Where a newly provisioned worker stands with the scheduler. Honest by construction:
/// `Registered` only when the scheduler confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    /// Created and registered; the scheduler can give it work.
    Registered,
    /// Created, but registration failed for a reason that may pass; the reconciler keeps
    /// trying. The worker is not rolled back.
    RegistrationPending,
    /// Created; registration is disabled, so nothing was registered.
    Ready,
}

/// What a provisioning call returns.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerProvisioned {
    pub worker_id: WorkerId,
    pub status: WorkerStatus,
    pub capabilities: WorkerCapabilities,
    pub metadata: WorkerMetadata,
}

/// What became of one worker of [`WorkerManagementService::provision_many`]: `None` when
/// its creation never began.
pub type Provisioning = Option<Result<WorkerProvisioned, WorkerManagementError>>;

/// What pre-warming a pool did.
#[derive(Debug)]
pub struct PoolCreated {
    pub pool: String,
    /// Live workers the pool already had before this call.
    pub existing: usize,
    pub provisioned: Vec<WorkerProvisioned>,
    pub failures: Vec<WorkerManagementError>,
}

/// Worker management failures.
#[derive(Debug, thiserror::Error)]
pub enum WorkerManagementError {
    #[error(transparent)]
    InvalidSpec(#[from] ValidationError),
    #[error("provider {provider} failed: {source}")]
    Provider {
        provider: ProviderKind,
        #[source]
        source: ProviderError,
    },
    #[error("store failed: {0}")]
    Store(#[from] store::Error),
    /// The scheduler refused the worker for good; the worker was torn down (or, through
    /// [`WorkerManagementService::provision_many`] with a hand-over, its termination was
    /// asked for).
    #[error("scheduler refused worker {worker_id}, it is terminated: {source}")]
    RegistrationRejected {
        worker_id: WorkerId,
        #[source]
        source: RegistrationError,
    },
    /// Talking to the scheduler failed (reconciliation only; provisioning reports a
    /// failed registration as [`WorkerStatus::RegistrationPending`]).
    #[error("scheduler: {0}")]
    Registration(#[source] RegistrationError),
    #[error("worker {0} not found")]
    WorkerNotFound(WorkerId),
    /// A pool names a provider this server was not configured with.
    #[error("provider {0} is not configured on this server: {how}", how = .0.how_to_enable())]
    ProviderNotConfigured(ProviderKind),
    /// The worker's credential could not be minted.
    #[error("cannot mint the worker's credential: {0}")]
    Credential(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerTypeLabels {
    worker_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
    worker_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    action: &'static str,
    result: &'static str,
}

/// Worker management metrics: the seed's `worker_provisioning_registration_failed_total`
/// and Hodei's own `hodei_*` counters.
#[derive(Debug, Clone)]
pub struct WorkerManagementMetrics {
    registration_failed: Family<WorkerTypeLabels, Counter>,
    provisioned: Family<ProviderLabels, Counter>,
    provisioning_failed: Family<ProviderLabels, Counter>,
    terminated: Family<ProviderLabels, Counter>,
    reconcile_actions: Family<ReconcileLabels, Counter>,
}

impl WorkerManagementMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            registration_failed: Family::default(),
            provisioned: Family::default(),
            provisioning_failed: Family::default(),
            terminated: Family::default(),
            reconcile_actions: Family::default(),
        };
        registry.register(
            "worker_provisioning_registration_failed",
            "Workers provisioned whose registration with the scheduler failed",
            metrics.registration_failed.clone(),
        );
        registry.register(
            "hodei_workers_provisioned",
            "Workers created at a provider",
            metrics.provisioned.clone(),
        );
        registry.register(
            "hodei_worker_provisioning_failures",
            "Workers a provider failed to create",
            metrics.provisioning_failed.clone(),
        );
        registry.register(
            "hodei_workers_terminated",
            "Workers stopped at a provider by worker management",
            metrics.terminated.clone(),
        );
        registry.register(
            "hodei_reconciler_actions",
            "Drift fixed by the reconciler, by action and result",
            metrics.reconcile_actions.clone(),
        );
        for worker_type in [WorkerType::Static, WorkerType::Dynamic] {
            let _ = metrics
                .registration_failed
                .get_or_create(&WorkerTypeLabels {
                    worker_type: worker_type.as_str(),
                });
            // Present at zero from the start, so that alerts on them can be written.
            for provider in [
                ProviderKind::Local,
                ProviderKind::Docker,
                ProviderKind::Kubernetes,
            ] {
                let labels = ProviderLabels {
                    provider: provider.as_str(),
                    worker_type: worker_type.as_str(),
                };
                let _ = metrics.provisioned.get_or_create(&labels);
                let _ = metrics.provisioning_failed.get_or_create(&labels);
                let _ = metrics.terminated.get_or_create(&labels);
            }
        }
        for action in Action::KINDS {
            for result in ["success", "failure"] {
                let _ = metrics
                    .reconcile_actions
                    .get_or_create(&ReconcileLabels { action, result });
            }
        }
        metrics
    }
}

/// One reconciliation round: what was fixed and what could not be.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub applied: Vec<Action>,
    pub failed: Vec<(Action, String)>,
}

/// Removes a worker id from the in-flight set when the operation ends, however it ends.
struct InFlight<'a> {
    set: &'a Mutex<BTreeSet<WorkerId>>,
    id: WorkerId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// See the module docs.
pub struct WorkerManagementService {
    /// The provider of workers provisioned without a pool.
    default_provider: ProviderKind,
    providers: BTreeMap<ProviderKind, Arc<dyn WorkerProvider>>,
    registration: Option<Arc<dyn WorkerRegistrationPort>>,
    store: Arc<dyn Store>,
    config: WorkerManagementConfig,
    metrics: WorkerManagementMetrics,
    in_flight: Mutex<BTreeSet<WorkerId>>,
    /// Mints each provisioned worker's credential; without it (tests with fake
    /// providers) workers get a random credential no server accepts.
    credentials: Option<crate::Credentials>,
}

impl std::fmt::Debug for WorkerManagementService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerManagementService")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("registration", &self.registration.is_some())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkerManagementService {
    /// A service that does not register workers (registration disabled).
    pub fn new(
        provider: Arc<dyn WorkerProvider>,
        store: Arc<dyn Store>,
        config: WorkerManagementConfig,
        metrics: WorkerManagementMetrics,
    ) -> Self {
        Self {
            default_provider: provider.kind(),
            providers: [(provider.kind(), provider)].into(),
            registration: None,
            store,
            config,
            metrics,
            in_flight: Mutex::new(BTreeSet::new()),
            credentials: None,
        }
    }

    /// A service that registers every worker it provisions through `registration`, unless
    /// `config.registration_enabled` is false.
    pub fn new_with_registration(
        provider: Arc<dyn WorkerProvider>,
        registration: Arc<dyn WorkerRegistrationPort>,
        store: Arc<dyn Store>,
        config: WorkerManagementConfig,
        metrics: WorkerManagementMetrics,
    ) -> Self {
        let registration = config.registration_enabled.then_some(registration);
        Self {
            registration,
            ..Self::new(provider, store, config, metrics)
        }
    }

    /// Adds a provider for pools that name its kind (replacing one of the same kind).
    #[must_use]
    pub fn with_provider(mut self, provider: Arc<dyn WorkerProvider>) -> Self {
        self.providers.insert(provider.kind(), provider);
        self
    }

    /// Mints every provisioned worker's credential through `credentials`, and revokes it
    /// when the worker is terminated.
    #[must_use]
    pub fn with_credentials(mut self, credentials: crate::Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The credential the agent of worker `id` will present.
    async fn mint_credential(
        &self,
        id: &WorkerId,
    ) -> Result<AgentCredential, WorkerManagementError> {
        match &self.credentials {
            Some(credentials) => credentials
                .mint_worker(id, WorkerOrigin::Provisioned, None)
                .await
                .map(|token| AgentCredential::new(token.expose()))
                .map_err(|error| WorkerManagementError::Credential(error.to_string())),
            None => Ok(AgentCredential::new(format!(
                "unminted-{}",
                uuid::Uuid::new_v4().simple()
            ))),
        }
    }

    /// The provider of workers provisioned without a pool.
    pub fn provider_kind(&self) -> ProviderKind {
        self.default_provider
    }

    /// The providers this service can create workers with.
    pub fn provider_kinds(&self) -> Vec<ProviderKind> {
        self.providers.keys().copied().collect()
    }

    fn provider(
        &self,
        kind: ProviderKind,
    ) -> Result<&Arc<dyn WorkerProvider>, WorkerManagementError> {
        self.providers
            .get(&kind)
            .ok_or(WorkerManagementError::ProviderNotConfigured(kind))
    }

    fn begin(&self, id: &WorkerId) -> InFlight<'_> {
        lock(&self.in_flight).insert(id.clone());
        InFlight {
            set: &self.in_flight,
            id: id.clone(),
        }
    }

    /// A fresh id for a worker of `spec`: its pool's name and 8 random hex digits.
    pub fn new_worker_id(spec: &WorkerSpec) -> WorkerId {
        let prefix = spec.pool.as_deref().unwrap_or("worker");
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix: String = prefix
            .chars()
            .take(hodei_core::worker::MAX_WORKER_ID_LEN - 9)
            .collect();
        WorkerId::new(format!("{prefix}-{suffix}"))
            .or_else(|_| WorkerId::new(format!("worker-{suffix}")))
            .unwrap_or_else(|_| unreachable!("worker-<hex> is a valid id"))
    }

    /// Provisions one dynamic worker with the default spec.
    pub async fn provision_worker(&self) -> Result<WorkerProvisioned, WorkerManagementError> {
        self.provision_worker_with_config(&WorkerSpec::default())
            .await
    }

    /// Provisions one worker from `spec` and registers it before returning.
    ///
    /// A registration that fails for a reason that may pass does not roll the worker back:
    /// the result says [`WorkerStatus::RegistrationPending`] and the reconciler retries. A
    /// worker the scheduler refuses is terminated and the error returned.
    pub async fn provision_worker_with_config(
        &self,
        spec: &WorkerSpec,
    ) -> Result<WorkerProvisioned, WorkerManagementError> {
        let id = Self::new_worker_id(spec);
        self.provision_as(&id, spec, self.default_provider).await
    }

    /// Provisions one worker of `pool` under the id `id` (from [`Self::new_worker_id`], so
    /// the caller can count it as starting before it exists) and registers it.
    pub async fn provision_for_pool(
        &self,
        pool: &PoolSpec,
        id: &WorkerId,
    ) -> Result<WorkerProvisioned, WorkerManagementError> {
        self.provision_as(id, &pool.worker_spec(), pool.provider)
            .await
    }

    async fn provision_as(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        kind: ProviderKind,
    ) -> Result<WorkerProvisioned, WorkerManagementError> {
        let _guard = self.begin(id);
        let worker = self.create(id, spec, kind).await?;
        let outcome = match &self.registration {
            Some(registration) => Some(registration.register_worker(&worker).await),
            None => None,
        };
        self.finish_registration(worker, outcome, None).await
    }

    /// Saves `pool` and pre-warms it: provisions the workers it lacks (counting live ones
    /// from earlier runs) through [`Self::provision_many`], `provisioning_concurrency` at a
    /// time, registering them with the batch registration.
    pub async fn create_pool(&self, pool: &PoolSpec) -> Result<PoolCreated, WorkerManagementError> {
        pool.validate()?;
        self.store.put_pool(pool).await?;
        let filter = WorkerFilter {
            pool: Some(pool.name.clone()),
            live_only: true,
        };
        let existing = self.store.list_workers(&filter).await?.len();
        let size = pool.min_workers();
        let missing = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .saturating_sub(existing);
        let spec = pool.worker_spec();
        tracing::info!(pool = %pool.name, size, existing, missing, "pre-warming pool");

        let ids: Vec<WorkerId> = (0..missing).map(|_| Self::new_worker_id(&spec)).collect();
        let bound = Arc::new(Semaphore::new(self.config.provisioning_concurrency.max(1)));
        let outcomes = Mutex::new(Vec::new());
        self.provision_many(
            pool,
            &ids,
            &[bound],
            &CancellationToken::new(),
            &|_, outcome| lock(&outcomes).push(outcome),
            None,
        )
        .await;
        let mut provisioned = Vec::new();
        let mut failures = Vec::new();
        for outcome in outcomes.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match outcome {
                Some(Ok(done)) => provisioned.push(done),
                Some(Err(error)) => failures.push(error),
                None => {}
            }
        }
        tracing::info!(pool = %pool.name, provisioned = provisioned.len(), failed = failures.len(), "pool pre-warmed");
        Ok(PoolCreated {
            pool: pool.name.clone(),
            existing,
            provisioned,
            failures,
        })
    }

    /// Creates the workers `ids` of `pool` (ids from [`Self::new_worker_id`], so that the
    /// caller can count them as starting before they exist) and registers them through the
    /// batch registration ([`WorkerRegistrationPort::register_workers_batch`]).
    ///
    /// Each creation first takes a permit of every semaphore in `bounds`, in order, and
    /// gives them back once its worker exists at the provider. The workers created while a
    /// batch is being registered make up the next batch, so none waits for a sibling's
    /// creation; a failure is its worker's alone. `done` hears of each worker once, as
    /// soon as its outcome is known: `None` when its creation had not begun when `cancel`
    /// came (nothing was created), else what [`Self::provision_for_pool`] would have
    /// returned. A worker the scheduler refuses for good is handed to `refused` (the one
    /// owner of termination, in the server) when given, else stopped here at once.
    pub async fn provision_many(
        &self,
        pool: &PoolSpec,
        ids: &[WorkerId],
        bounds: &[Arc<Semaphore>],
        cancel: &CancellationToken,
        done: &(dyn Fn(&WorkerId, Provisioning) + Send + Sync),
        refused: Option<&(dyn Fn(WorkerId) + Send + Sync)>,
    ) {
        let spec = pool.worker_spec();
        let _guards: Vec<_> = ids.iter().map(|id| self.begin(id)).collect();
        let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel::<Worker>();
        // Futures are built first and then driven together: a closure inside a stream
        // would make the future not `Send` (rust-lang/rust#102211).
        let creations: Vec<_> = ids
            .iter()
            .map(|id| {
                let created_tx = created_tx.clone();
                let spec = &spec;
                async move {
                    let permits = async {
                        let mut held = Vec::with_capacity(bounds.len());
                        for bound in bounds {
                            held.push(bound.acquire().await.ok()?);
                        }
                        Some(held)
                    };
                    let permits = tokio::select! {
                        biased;
                        () = cancel.cancelled() => None,
                        permits = permits => permits,
                    };
                    let Some(_permits) = permits else {
                        done(id, None);
                        return;
                    };
                    match self.create(id, spec, pool.provider).await {
                        Ok(worker) => {
                            // The receiver lives until every creation has ended.
                            let _ = created_tx.send(worker);
                        }
                        Err(error) => done(id, Some(Err(error))),
                    }
                }
            })
            .collect();
        drop(created_tx);
        let registering = async {
            while let Some(first) = created_rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = created_rx.try_recv() {
                    batch.push(more);
                }
                self.register_batch(batch, done, refused).await;
            }
        };
        tokio::join!(futures::future::join_all(creations), registering);
    }

    /// Registers `workers` with one batch call and records each outcome.
    async fn register_batch(
        &self,
        workers: Vec<Worker>,
        done: &(dyn Fn(&WorkerId, Provisioning) + Send + Sync),
        refused: Option<&(dyn Fn(WorkerId) + Send + Sync)>,
    ) {
        let mut outcomes: Vec<Option<Result<(), RegistrationError>>> = match &self.registration {
            Some(registration) => registration
                .register_workers_batch(&workers)
                .await
                .into_iter()
                .map(Some)
                .collect(),
            None => workers.iter().map(|_| None).collect(),
        };
        // The port promises one result per worker; one missing is a retryable failure
        // (the reconciler registers the worker), never a worker forgotten.
        outcomes.resize_with(workers.len(), || {
            Some(Err(RegistrationError::Unexpected(
                "the batch registration returned no result for this worker".into(),
            )))
        });
        for (worker, outcome) in workers.into_iter().zip(outcomes) {
            let id = worker.id.clone();
            let result = self.finish_registration(worker, outcome, refused).await;
            done(&id, Some(result));
        }
    }

    /// Records the worker, creates it at the provider and moves it to `registering`.
    async fn create(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        kind: ProviderKind,
    ) -> Result<Worker, WorkerManagementError> {
        let backend = self.provider(kind)?;
        let provider = kind;
        let labels = ProviderLabels {
            provider: provider.as_str(),
            worker_type: spec.worker_type.as_str(),
        };
        let worker = Worker::from_spec(id.clone(), spec, provider, SystemTime::now());
        worker.validate()?;
        self.store
            .insert_worker(&worker, WorkerState::Provisioning)
            .await?;
        let credential = match self.mint_credential(id).await {
            Ok(credential) => credential,
            Err(error) => {
                self.store
                    .transition_worker(id, WorkerState::Terminated)
                    .await?;
                return Err(error);
            }
        };
        if let Err(source) = backend.create_worker(id, spec, &credential).await {
            self.metrics
                .provisioning_failed
                .get_or_create(&labels)
                .inc();
            tracing::error!(worker_id = %id, %provider, error = %source, "provisioning failed");
            self.store
                .transition_worker(id, WorkerState::Terminated)
                .await?;
            return Err(WorkerManagementError::Provider { provider, source });
        }
        self.metrics.provisioned.get_or_create(&labels).inc();
        self.store
            .transition_worker(id, WorkerState::Registering)
            .await?;
        Ok(worker)
    }

    /// Acts on a registration outcome (`None`: registration disabled).
    /// A worker the scheduler refuses for good is handed to `refused` when given, else
    /// stopped here.
    async fn finish_registration(
        &self,
        worker: Worker,
        outcome: Option<Result<(), RegistrationError>>,
        refused: Option<&(dyn Fn(WorkerId) + Send + Sync)>,
    ) -> Result<WorkerProvisioned, WorkerManagementError> {
        let status = match outcome {
            None => {
                self.store
                    .transition_worker(&worker.id, WorkerState::Idle)
                    .await?;
                WorkerStatus::Ready
            }
            Some(Ok(())) => {
                self.store.set_registered(&worker.id, true).await?;
                self.store
                    .transition_worker(&worker.id, WorkerState::Idle)
                    .await?;
                WorkerStatus::Registered
            }
            Some(Err(error)) => {
                self.metrics
                    .registration_failed
                    .get_or_create(&WorkerTypeLabels {
                        worker_type: worker.worker_type().as_str(),
                    })
                    .inc();
                if error.is_permanent_rejection() {
                    tracing::error!(worker_id = %worker.id, error_type = error.error_type(), %error, "scheduler refused the worker, terminating it");
                    match refused {
                        Some(hand_over) => hand_over(worker.id.clone()),
                        None => {
                            if let Err(stop) = self.stop(&worker.id, worker.metadata.provider).await
                            {
                                tracing::error!(worker_id = %worker.id, error = %stop, "could not terminate refused worker");
                            }
                        }
                    }
                    return Err(WorkerManagementError::RegistrationRejected {
                        worker_id: worker.id,
                        source: error,
                    });
                }
                tracing::warn!(worker_id = %worker.id, error_type = error.error_type(), %error, "worker provisioned but registration failed, the reconciler will retry");
                WorkerStatus::RegistrationPending
            }
        };
        Ok(WorkerProvisioned {
            worker_id: worker.id,
            status,
            capabilities: worker.capabilities,
            metadata: worker.metadata,
        })
    }

    /// Whether the worker's provider confirms its agent dead, with nothing of it left
    /// running ([`WorkerProvider::confirm_dead`]); `false` for unknown workers and providers
    /// that cannot tell.
    pub async fn confirm_dead(&self, id: &WorkerId) -> bool {
        let kind = match self.store.get_worker(id).await {
            Ok(Some(record)) if record.state.is_live() => record.worker.metadata.provider,
            _ => return false,
        };
        let Ok(provider) = self.provider(kind) else {
            return false;
        };
        match provider.confirm_dead(id).await {
            Ok(dead) => dead,
            Err(error) => {
                tracing::debug!(worker_id = %id, %error, "cannot tell whether the worker is dead");
                false
            }
        }
    }

    /// Terminates a worker: unregisters it, stops it at the provider, records it as
    /// terminated.
    pub async fn terminate_worker(&self, id: &WorkerId) -> Result<(), WorkerManagementError> {
        let _guard = self.begin(id);
        let kind = match self.store.get_worker(id).await? {
            Some(record) if record.state.is_live() => record.worker.metadata.provider,
            Some(_) => return Ok(()),
            None => return Err(WorkerManagementError::WorkerNotFound(id.clone())),
        };
        if let Some(registration) = &self.registration {
            match registration.unregister_worker(id).await {
                Ok(()) | Err(RegistrationError::Rejected(SchedulerError::WorkerNotFound(_))) => {}
                Err(error) => {
                    // The worker is going away regardless; the reconciler removes a
                    // registration whose worker is gone.
                    tracing::warn!(worker_id = %id, %error, "could not unregister worker, stopping it anyway");
                }
            }
        }
        self.stop(id, kind).await
    }

    /// Stops the worker at the provider and records it as terminated.
    async fn stop(&self, id: &WorkerId, kind: ProviderKind) -> Result<(), WorkerManagementError> {
        let provider = kind;
        self.stop_at_provider(id, kind).await?;
        // A terminated worker's credential opens nothing any more, open session included.
        if let Some(credentials) = &self.credentials
            && let Err(error) = credentials.revoke_worker(id).await
        {
            tracing::warn!(worker_id = %id, %error, "could not revoke a terminated worker's credential");
        }
        let record = match self
            .store
            .transition_worker(id, WorkerState::Terminated)
            .await
        {
            Ok(record) => record,
            // Terminated by someone else meanwhile (a user's terminate racing the dead-agent
            // watch that saw its agent go): termination is idempotent, they did the rest.
            Err(store::Error::IllegalTransition(_))
                if self
                    .store
                    .get_worker(id)
                    .await?
                    .is_some_and(|r| r.state == WorkerState::Terminated) =>
            {
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        self.store.set_registered(id, false).await?;
        self.metrics
            .terminated
            .get_or_create(&ProviderLabels {
                provider: provider.as_str(),
                worker_type: record.worker.worker_type().as_str(),
            })
            .inc();
        tracing::info!(worker_id = %id, %provider, "worker terminated");
        Ok(())
    }

    /// Stops a worker no live record owns (an orphan) at `kind`'s provider, after checking
    /// again that none does: it may have been recorded since the reconciler looked.
    /// `Ok(false)` when a live record owns it now (nothing was stopped).
    pub async fn terminate_orphan(
        &self,
        id: &WorkerId,
        kind: ProviderKind,
    ) -> Result<bool, WorkerManagementError> {
        let _guard = self.begin(id);
        if self
            .store
            .get_worker(id)
            .await?
            .is_some_and(|r| r.state.is_live())
        {
            return Ok(false);
        }
        self.stop_at_provider(id, kind).await?;
        Ok(true)
    }

    /// Stops a worker at `kind`'s provider only, whatever the store says (shutdown's last
    /// sweep, when the store may be gone).
    pub async fn stop_at_provider(
        &self,
        id: &WorkerId,
        kind: ProviderKind,
    ) -> Result<(), WorkerManagementError> {
        self.provider(kind)?
            .terminate_worker(id)
            .await
            .map_err(|source| WorkerManagementError::Provider {
                provider: kind,
                source,
            })
    }

    /// The ids of every live recorded worker.
    pub async fn live_worker_ids(&self) -> Result<Vec<WorkerId>, WorkerManagementError> {
        Ok(self
            .store
            .list_workers(&WorkerFilter::live())
            .await?
            .into_iter()
            .map(|r| r.worker.id)
            .collect())
    }

    /// What each provider runs now; a provider that cannot list is logged and skipped.
    pub async fn running_at_providers(&self) -> Vec<(ProviderKind, WorkerId)> {
        let mut running = Vec::new();
        for (kind, provider) in &self.providers {
            match provider.list_workers().await {
                Ok(ids) => running.extend(ids.into_iter().map(|id| (*kind, id))),
                Err(error) => {
                    tracing::error!(provider = %kind, %error, "cannot list the provider's workers");
                }
            }
        }
        running
    }

    /// Terminations carried out at once (`[provisioning] termination_concurrency`).
    pub fn termination_concurrency(&self) -> usize {
        self.config.termination_concurrency.max(1)
    }

    /// Compares provider, store and scheduler, and fixes each kind of drift (see
    /// [`hodei_core::reconcile`]).
    ///
    /// Orphans are stopped here, at once: this is the seed's stand-alone service. The
    /// server reconciles through `hodei_modules::Terminations::reconcile`, which hands
    /// them to the one owner of termination instead ([`Self::reconcile_with`]).
    pub async fn reconcile(&self) -> Result<ReconcileReport, WorkerManagementError> {
        self.reconcile_with(None).await
    }

    /// [`Self::reconcile`], handing each orphan (a worker a provider runs that no live
    /// record owns) to `orphans` instead of stopping it, when given: the fix then counts
    /// as applied once handed over.
    pub async fn reconcile_with(
        &self,
        orphans: Option<&(dyn Fn(WorkerId, ProviderKind) + Send + Sync)>,
    ) -> Result<ReconcileReport, WorkerManagementError> {
        let mut report = ReconcileReport::default();
        for (kind, provider) in &self.providers {
            let one = self
                .reconcile_provider(*kind, provider.as_ref(), orphans)
                .await?;
            report.applied.extend(one.applied);
            report.failed.extend(one.failed);
        }
        Ok(report)
    }

    async fn reconcile_provider(
        &self,
        provider: ProviderKind,
        backend: &dyn WorkerProvider,
        orphans: Option<&(dyn Fn(WorkerId, ProviderKind) + Send + Sync)>,
    ) -> Result<ReconcileReport, WorkerManagementError> {
        let in_flight_before = lock(&self.in_flight).clone();
        // Order matters: registered, then store, then provider. A worker is registered only
        // after it runs, so a registration seen first whose worker is not running a moment
        // later really lost its worker.
        let registered: BTreeSet<WorkerId> = match &self.registration {
            Some(registration) => registration
                .registered_workers()
                .await
                .map_err(WorkerManagementError::Registration)?
                .into_iter()
                .collect(),
            None => BTreeSet::new(),
        };
        // Only this provider's workers: agents that registered themselves, or workers of
        // other providers, are not ours to judge.
        let records: Vec<_> = self
            .store
            .list_workers(&WorkerFilter::live())
            .await?
            .into_iter()
            .filter(|r| r.worker.metadata.provider == provider)
            .collect();
        let running: BTreeSet<WorkerId> = backend
            .list_workers()
            .await
            .map_err(|source| WorkerManagementError::Provider { provider, source })?
            .into_iter()
            .collect();
        let mut in_flight = lock(&self.in_flight).clone();
        in_flight.extend(in_flight_before);

        let known: BTreeMap<WorkerId, WorkerState> = records
            .iter()
            .map(|r| (r.worker.id.clone(), r.state))
            .collect();
        // Registrations of workers we neither know nor run belong to someone else (an
        // agent started by hand, another server); heartbeat deadlines take care of those.
        // Without registration, every known worker counts as registered: nothing to fix.
        let registered = if self.registration.is_some() {
            registered
                .into_iter()
                .filter(|id| known.contains_key(id) || running.contains(id))
                .collect()
        } else {
            known
                .keys()
                .filter(|id| running.contains(*id))
                .cloned()
                .collect()
        };
        let views = Views {
            running,
            known,
            registered,
            in_flight,
        };
        let records: BTreeMap<WorkerId, Worker> = records
            .into_iter()
            .map(|r| (r.worker.id.clone(), r.worker))
            .collect();

        let mut report = ReconcileReport::default();
        for action in reconcile::plan(&views) {
            let result = self.apply(&action, &records, backend, orphans).await;
            let outcome = if result.is_ok() { "success" } else { "failure" };
            self.metrics
                .reconcile_actions
                .get_or_create(&ReconcileLabels {
                    action: action.kind(),
                    result: outcome,
                })
                .inc();
            match result {
                Ok(true) => {
                    tracing::info!(worker_id = %action.worker_id(), action = action.kind(), "reconciler fixed drift");
                    report.applied.push(action);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(worker_id = %action.worker_id(), action = action.kind(), %error, "reconciler could not fix drift");
                    report.failed.push((action, error.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Carries out one action. `Ok(false)` means it turned out unnecessary.
    async fn apply(
        &self,
        action: &Action,
        records: &BTreeMap<WorkerId, Worker>,
        backend: &dyn WorkerProvider,
        orphans: Option<&(dyn Fn(WorkerId, ProviderKind) + Send + Sync)>,
    ) -> Result<bool, WorkerManagementError> {
        match action {
            Action::Register(id) => {
                let (Some(registration), Some(worker)) = (&self.registration, records.get(id))
                else {
                    return Ok(false);
                };
                let _guard = self.begin(id);
                registration
                    .register_worker(worker)
                    .await
                    .map_err(WorkerManagementError::Registration)?;
                self.store.set_registered(id, true).await?;
                let record = self.store.get_worker(id).await?;
                if record.is_some_and(|r| r.state == WorkerState::Registering) {
                    self.store.transition_worker(id, WorkerState::Idle).await?;
                }
                Ok(true)
            }
            Action::Unregister(id) => {
                let Some(registration) = &self.registration else {
                    return Ok(false);
                };
                match registration.unregister_worker(id).await {
                    Ok(()) => Ok(true),
                    Err(RegistrationError::Rejected(SchedulerError::WorkerNotFound(_))) => {
                        Ok(false)
                    }
                    Err(source) => Err(WorkerManagementError::Registration(source)),
                }
            }
            Action::TerminateOrphan(id) => match orphans {
                Some(hand_over) => {
                    // Re-check: the worker may have been recorded since the store was read.
                    if self
                        .store
                        .get_worker(id)
                        .await?
                        .is_some_and(|r| r.state.is_live())
                    {
                        return Ok(false);
                    }
                    hand_over(id.clone(), backend.kind());
                    Ok(true)
                }
                None => self.terminate_orphan(id, backend.kind()).await,
            },
            Action::MarkTerminated(id) => {
                self.store
                    .transition_worker(id, WorkerState::Terminated)
                    .await?;
                self.store.set_registered(id, false).await?;
                Ok(true)
            }
        }
    }
}
