//! US-08.1.2: the adapter that registers provisioned workers with the scheduler, retrying
//! transient failures with exponential backoff, bounding every attempt with a timeout and
//! batches with a concurrency limit, and counting everything in Prometheus metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hodei_core::{ValidationError, Worker, WorkerId, WorkerType, backoff};
use hodei_ports::SchedulerPort;
pub use hodei_ports::worker_registration::{RegistrationError, WorkerRegistrationPort};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Largest retry budget accepted; beyond it a dead scheduler stalls provisioning for hours.
pub const MAX_RETRIES_LIMIT: u32 = 20;

/// How registrations are retried and bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationConfig {
    /// Retries after the first attempt; at most `1 + max_retries` attempts are made.
    pub max_retries: u32,
    /// Delay before the first retry; doubles for each further retry.
    pub base_backoff: Duration,
    /// Longest delay between two attempts.
    pub max_backoff: Duration,
    /// Time one attempt may take before it is abandoned as [`RegistrationError::Timeout`].
    pub registration_timeout: Duration,
    /// Registrations in flight at once in [`WorkerRegistrationPort::register_workers_batch`].
    pub batch_concurrency: usize,
    /// Randomise each delay to between half and all of its nominal value, so that many
    /// workers failing together do not retry together. Off by default.
    pub jitter: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            registration_timeout: Duration::from_secs(30),
            batch_concurrency: 10,
            jitter: false,
        }
    }
}

impl RegistrationConfig {
    /// Applies `REGISTRATION_MAX_RETRIES` (0 to [`MAX_RETRIES_LIMIT`]) from `lookup`; a bad
    /// value is an error naming the variable.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ValidationError> {
        let Some(value) = lookup("REGISTRATION_MAX_RETRIES") else {
            return Ok(());
        };
        let retries: u32 = value.trim().parse().map_err(|_| {
            ValidationError::new(
                "REGISTRATION_MAX_RETRIES",
                format!("is {value:?}, expected a whole number from 0 to {MAX_RETRIES_LIMIT}"),
            )
        })?;
        if retries > MAX_RETRIES_LIMIT {
            return Err(ValidationError::new(
                "REGISTRATION_MAX_RETRIES",
                format!("is {value}, at most {MAX_RETRIES_LIMIT} allowed"),
            ));
        }
        self.max_retries = retries;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.max_retries > MAX_RETRIES_LIMIT {
            return Err(ValidationError::new(
                "registration.max_retries",
                format!(
                    "is {}, at most {MAX_RETRIES_LIMIT} allowed",
                    self.max_retries
                ),
            ));
        }
        if self.registration_timeout.is_zero() {
            return Err(ValidationError::new(
                "registration.timeout",
                "must be above zero",
            ));
        }
        if self.batch_concurrency == 0 {
            return Err(ValidationError::new(
                "registration.batch_concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The nominal delay after failed attempt `attempt` (0-based): 100, 200, 400, 800 ms
    /// with the defaults.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff::exponential(self.base_backoff, attempt, self.max_backoff)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    result: &'static str,
    worker_type: &'static str,
    error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerTypeLabels {
    worker_type: &'static str,
}

type HistogramFamily = Family<WorkerTypeLabels, Histogram, fn() -> Histogram>;

/// The seed's registration metrics, registered on a registry passed in:
/// `worker_registration_operations_total{operation,result,worker_type,error_type}`,
/// `worker_registration_duration_seconds{worker_type}` (whole operation, retries included)
/// and `worker_registration_retry_count{worker_type}` (retries per successful or failed
/// registration).
#[derive(Debug, Clone)]
pub struct RegistrationMetrics {
    operations_total: Family<OperationLabels, Counter>,
    duration_seconds: HistogramFamily,
    retry_count: HistogramFamily,
}

impl RegistrationMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            operations_total: Family::default(),
            duration_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
            }),
            retry_count: Family::new_with_constructor(|| {
                Histogram::new([0.0, 1.0, 2.0, 3.0, 5.0, 10.0])
            }),
        };
        registry.register(
            "worker_registration_operations",
            "Worker registration and unregistration operations by result and error type",
            metrics.operations_total.clone(),
        );
        registry.register(
            "worker_registration_duration_seconds",
            "Duration of worker registrations, retries included",
            metrics.duration_seconds.clone(),
        );
        registry.register(
            "worker_registration_retry_count",
            "Retries needed per worker registration",
            metrics.retry_count.clone(),
        );
        // Series exist from the start, at zero, so that rates and alerts work before the
        // first registration.
        for worker_type in [WorkerType::Static, WorkerType::Dynamic] {
            let worker_type = worker_type.as_str();
            for (result, error_type) in [("success", "none"), ("failure", "max_retries")] {
                let _ = metrics.operations_total.get_or_create(&OperationLabels {
                    operation: "register",
                    result,
                    worker_type,
                    error_type,
                });
            }
            let labels = WorkerTypeLabels { worker_type };
            let _ = metrics.duration_seconds.get_or_create(&labels);
            let _ = metrics.retry_count.get_or_create(&labels);
        }
        metrics
    }

    fn record(
        &self,
        operation: &'static str,
        worker_type: &'static str,
        outcome: &Result<(), RegistrationError>,
        retries: u32,
        elapsed: Duration,
    ) {
        let (result, error_type) = match outcome {
            Ok(()) => ("success", "none"),
            Err(error) => ("failure", error.error_type()),
        };
        self.operations_total
            .get_or_create(&OperationLabels {
                operation,
                result,
                worker_type,
                error_type,
            })
            .inc();
        if operation == "register" {
            let labels = WorkerTypeLabels { worker_type };
            self.duration_seconds
                .get_or_create(&labels)
                .observe(elapsed.as_secs_f64());
            self.retry_count
                .get_or_create(&labels)
                .observe(f64::from(retries));
        }
    }
}

/// Registers workers through a [`SchedulerPort`], with retries, timeouts and metrics.
pub struct WorkerRegistrationAdapter {
    scheduler: Arc<dyn SchedulerPort>,
    config: RegistrationConfig,
    metrics: RegistrationMetrics,
}

impl std::fmt::Debug for WorkerRegistrationAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRegistrationAdapter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkerRegistrationAdapter {
    pub fn new(
        scheduler: Arc<dyn SchedulerPort>,
        config: RegistrationConfig,
        metrics: RegistrationMetrics,
    ) -> Self {
        Self {
            scheduler,
            config,
            metrics,
        }
    }

    pub fn config(&self) -> &RegistrationConfig {
        &self.config
    }

    /// The delay after failed attempt `attempt`, jittered if configured.
    pub fn calculate_backoff(&self, attempt: u32) -> Duration {
        let nominal = self.config.backoff(attempt);
        if self.config.jitter {
            backoff::jittered(nominal, fastrand::f64())
        } else {
            nominal
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently or the retry budget is spent.
    /// Returns the outcome and the number of retries made.
    async fn with_retries<F, Fut>(
        &self,
        operation: &'static str,
        worker_id: &WorkerId,
        mut attempt: F,
    ) -> (Result<(), RegistrationError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), hodei_ports::SchedulerError>>,
    {
        let timeout = self.config.registration_timeout;
        let mut number = 0;
        loop {
            let started = Instant::now();
            let error = match tokio::time::timeout(timeout, attempt()).await {
                Ok(Ok(())) => return (Ok(()), number),
                Ok(Err(error)) => RegistrationError::from_scheduler(error),
                Err(_) => RegistrationError::Timeout(timeout),
            };
            let duration = started.elapsed();
            if !error.is_retryable() {
                tracing::error!(%worker_id, operation, error_type = error.error_type(), attempt = number + 1, ?duration, %error, "worker registration refused, not retrying");
                return (Err(error), number);
            }
            if number >= self.config.max_retries {
                tracing::error!(%worker_id, operation, error_type = error.error_type(), attempt = number + 1, ?duration, %error, "worker registration failed, retries exhausted");
                let exhausted = RegistrationError::MaxRetriesExceeded {
                    attempts: number + 1,
                    last_error: Box::new(error),
                };
                return (Err(exhausted), number);
            }
            let delay = self.calculate_backoff(number);
            tracing::warn!(%worker_id, operation, error_type = error.error_type(), attempt = number + 1, ?duration, ?delay, %error, "worker registration failed, retrying");
            tokio::time::sleep(delay).await;
            number += 1;
        }
    }
}

#[async_trait]
impl WorkerRegistrationPort for WorkerRegistrationAdapter {
    async fn register_worker(&self, worker: &Worker) -> Result<(), RegistrationError> {
        let started = Instant::now();
        let worker_type = worker.worker_type().as_str();
        let (outcome, retries) = match worker.validate() {
            Err(invalid) => (
                Err(RegistrationError::InvalidWorker(invalid.to_string())),
                0,
            ),
            Ok(()) => {
                self.with_retries("register", &worker.id, || {
                    self.scheduler.register_worker(worker.clone())
                })
                .await
            }
        };
        let duration = started.elapsed();
        self.metrics
            .record("register", worker_type, &outcome, retries, duration);
        match &outcome {
            Ok(()) => {
                tracing::info!(worker_id = %worker.id, worker_type, attempt = retries + 1, ?duration, "worker registered");
            }
            Err(error) => {
                tracing::warn!(worker_id = %worker.id, worker_type, error_type = error.error_type(), attempt = retries + 1, ?duration, %error, "worker not registered");
            }
        }
        outcome
    }

    async fn register_workers_batch(
        &self,
        workers: &[Worker],
    ) -> Vec<Result<(), RegistrationError>> {
        // `buffered` keeps at most `batch_concurrency` registrations in flight and yields
        // results in input order; each registration handles its own failure.
        let registrations: Vec<_> = workers.iter().map(|w| self.register_worker(w)).collect();
        futures::stream::iter(registrations)
            .buffered(self.config.batch_concurrency.max(1))
            .collect()
            .await
    }

    async fn registered_workers(&self) -> Result<Vec<WorkerId>, RegistrationError> {
        let timeout = self.config.registration_timeout;
        match tokio::time::timeout(timeout, self.scheduler.get_registered_workers()).await {
            Ok(result) => result.map_err(RegistrationError::from_scheduler),
            Err(_) => Err(RegistrationError::Timeout(timeout)),
        }
    }

    async fn unregister_worker(&self, worker_id: &WorkerId) -> Result<(), RegistrationError> {
        let started = Instant::now();
        let (outcome, retries) = self
            .with_retries("unregister", worker_id, || {
                self.scheduler.unregister_worker(worker_id)
            })
            .await;
        self.metrics.record(
            "unregister",
            "unknown",
            &outcome,
            retries,
            started.elapsed(),
        );
        if outcome.is_ok() {
            tracing::info!(%worker_id, attempt = retries + 1, "worker unregistered");
        }
        outcome
    }
}
