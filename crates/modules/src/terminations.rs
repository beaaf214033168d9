//! The one owner of worker termination. Whoever decides a worker must go (the dispatcher's
//! retirements, the liveness monitor, the dead-agent watch, scale-in, drains, the
//! reconciler's orphans, the pool manager's workers the scheduler refused, shutdown) asks
//! [`Terminations`]; it carries the requests out
//! through worker management ([`WorkerManagementService::terminate_worker`] for recorded
//! workers, [`WorkerManagementService::terminate_orphan`] for workers no record owns,
//! [`WorkerManagementService::stop_at_provider`] for shutdown's last sweep), at most
//! `[provisioning] termination_concurrency` at once. A worker asked for twice is
//! terminated once and counted once, under the first reason
//! (`hodei_workers_terminations_total{reason}`). A termination that failed is tried again
//! after an exponential, jittered delay (`hodei_core::backoff`: 0.5 s doubling up to
//! [`RETRY_CAP`], each delay 50-100% of nominal) and keeps being tried at the cap for as
//! long as the server runs: a worker that may still cost money is never forgotten. Each
//! failed attempt is counted (`hodei_workers_termination_failures_total{reason}`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hodei_core::{ProviderKind, WorkerId, backoff};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::worker_management::ReconcileReport;
use crate::{SchedulerRegistry, WorkerManagementError, WorkerManagementService};

/// Why a worker is terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Why {
    /// The dispatcher retired it (`max_uses`, a failed health check).
    Retired,
    /// Silent past the removal deadline.
    Silent,
    /// Its provider confirmed its agent dead.
    Dead,
    /// Drained with `--then terminate`, its job done.
    Drained,
    /// Scale-in: an idle worker the pool does not need.
    ScaleIn,
    /// The reconciler found a provider running it with no record owning it.
    Orphan,
    /// The scheduler refused its registration for good while it was being provisioned.
    Refused,
    /// The server is shutting down with `shutdown.terminate_workers`.
    Shutdown,
}

impl Why {
    pub const ALL: [Why; 8] = [
        Self::Retired,
        Self::Silent,
        Self::Dead,
        Self::Drained,
        Self::ScaleIn,
        Self::Orphan,
        Self::Refused,
        Self::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retired => "retired",
            Self::Silent => "silent",
            Self::Dead => "dead",
            Self::Drained => "drained",
            Self::ScaleIn => "scale_in",
            Self::Orphan => "orphan",
            Self::Refused => "refused",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The delay before the first retry of a failed termination; it doubles with each failure.
pub const RETRY_BASE: Duration = Duration::from_millis(500);

/// The longest nominal delay between two attempts; a termination that keeps failing is
/// tried this often (jittered to 50-100% of it) for as long as the server runs.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// The nominal delay after `failures` failed attempts (at least 1): 0.5, 1, 2, 4 s ... up
/// to [`RETRY_CAP`]. Jittered by the caller.
pub fn retry_delay(failures: u32) -> Duration {
    backoff::exponential(RETRY_BASE, failures.saturating_sub(1), RETRY_CAP)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    reason: &'static str,
}

/// How a pending termination is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A recorded worker: unregister, stop at its provider, record it terminated.
    Recorded,
    /// No live record owns it: stop it at this provider unless one does by then.
    Orphan(ProviderKind),
    /// Shutdown's last sweep: stop it at this provider, whatever the store says.
    AtProvider(ProviderKind),
}

#[derive(Debug)]
struct Pending {
    why: Why,
    target: Target,
    failures: u32,
    /// Not tried again before this.
    next_try: Instant,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Terminations {
    inner: Arc<Inner>,
}

struct Inner {
    management: Arc<WorkerManagementService>,
    registry: Arc<SchedulerRegistry>,
    /// Asked for and not done yet.
    pending: Mutex<BTreeMap<WorkerId, Pending>>,
    wake: Notify,
    /// How many terminations are done: the pool manager watches it to replace them.
    done: watch::Sender<u64>,
    terminated: Family<WhyLabels, Counter>,
    failed_attempts: Family<WhyLabels, Counter>,
}

impl std::fmt::Debug for Terminations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminations").finish_non_exhaustive()
    }
}

/// What one round did: how many were terminated, and the attempts that failed.
type Round = (usize, Vec<(WorkerId, WorkerManagementError)>);

impl Terminations {
    pub fn new(
        management: Arc<WorkerManagementService>,
        registry: Arc<SchedulerRegistry>,
        metrics: &mut Registry,
    ) -> Self {
        let terminated = Family::<WhyLabels, Counter>::default();
        let failed_attempts = Family::<WhyLabels, Counter>::default();
        metrics.register(
            "hodei_workers_terminations",
            "Workers terminated, by why (each once, under the first reason asked)",
            terminated.clone(),
        );
        metrics.register(
            "hodei_workers_termination_failures",
            "Termination attempts that failed (each is tried again), by why",
            failed_attempts.clone(),
        );
        for why in Why::ALL {
            let labels = WhyLabels {
                reason: why.as_str(),
            };
            let _ = terminated.get_or_create(&labels);
            let _ = failed_attempts.get_or_create(&labels);
        }
        Self {
            inner: Arc::new(Inner {
                management,
                registry,
                pending: Mutex::default(),
                wake: Notify::new(),
                done: watch::channel(0).0,
                terminated,
                failed_attempts,
            }),
        }
    }

    /// Asks for the recorded worker `id` to be terminated. Returns `false` when it was
    /// asked for already (it is terminated once, counted under the first reason).
    pub fn request(&self, id: WorkerId, why: Why) -> bool {
        self.add(id, why, Target::Recorded)
    }

    /// Asks for a worker `kind`'s provider runs with no live record owning it (the
    /// reconciler's orphan) to be stopped there. `false` when asked for already.
    pub fn request_orphan(&self, id: WorkerId, kind: ProviderKind) -> bool {
        self.add(id, Why::Orphan, Target::Orphan(kind))
    }

    fn add(&self, id: WorkerId, why: Why, target: Target) -> bool {
        let added = {
            let mut pending = lock(&self.inner.pending);
            if pending.contains_key(&id) {
                false
            } else {
                pending.insert(
                    id.clone(),
                    Pending {
                        why,
                        target,
                        failures: 0,
                        next_try: Instant::now(),
                    },
                );
                true
            }
        };
        if added {
            tracing::info!(worker_id = %id, reason = why.as_str(), "termination requested");
            self.inner.wake.notify_one();
        }
        added
    }

    /// Whether `id`'s termination was asked for and is not done yet.
    pub fn is_pending(&self, id: &WorkerId) -> bool {
        lock(&self.inner.pending).contains_key(id)
    }

    /// Changes each time terminations are done.
    pub fn done(&self) -> watch::Receiver<u64> {
        self.inner.done.subscribe()
    }

    /// Reconciles worker management's three views
    /// ([`WorkerManagementService::reconcile_with`]), handing the orphans it finds to this
    /// owner rather than stopping them itself.
    pub async fn reconcile(&self) -> Result<ReconcileReport, WorkerManagementError> {
        let hand_over = |id: WorkerId, kind: ProviderKind| {
            self.request_orphan(id, kind);
        };
        self.inner.management.reconcile_with(Some(&hand_over)).await
    }

    /// Carries out requests until `cancel`, each when its retry delay has passed;
    /// terminations under way when it comes are finished first.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let next = lock(&self.inner.pending).values().map(|p| p.next_try).min();
            // Nothing pending: sleep until asked (an hour is only a bound).
            let until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
            self.step().await;
        }
    }

    /// One round over the requests whose retry delay has passed. Returns how many were
    /// terminated.
    pub async fn step(&self) -> usize {
        self.round(false).await.0
    }

    /// Terminates every worker left, at shutdown (after [`Self::run`] has returned): every
    /// live recorded worker is asked for (`shutdown`, unless asked for already), then
    /// whatever the providers still run is stopped there directly (all of it when the
    /// store cannot be read), so no agent outlives its server. One try each, retry delays
    /// ignored. Returns the workers that could not be terminated, with the last error.
    pub async fn terminate_all(&self) -> Vec<(WorkerId, WorkerManagementError)> {
        match self.inner.management.live_worker_ids().await {
            Ok(ids) => {
                for id in ids {
                    self.add(id, Why::Shutdown, Target::Recorded);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the workers from the store, stopping what the providers run");
            }
        }
        let (_, mut failed) = self.round(true).await;
        let running = self.inner.management.running_at_providers().await;
        if !running.is_empty() {
            {
                let mut pending = lock(&self.inner.pending);
                for (kind, id) in running {
                    let now = Instant::now();
                    pending
                        .entry(id)
                        .and_modify(|p| p.target = Target::AtProvider(kind))
                        .or_insert(Pending {
                            why: Why::Shutdown,
                            target: Target::AtProvider(kind),
                            failures: 0,
                            next_try: now,
                        });
                }
            }
            let (_, again) = self.round(true).await;
            // A worker that failed first and was stopped at its provider after is done.
            failed.retain(|(id, _)| !again.iter().any(|(other, _)| other == id));
            failed.extend(again);
        }
        let pending = lock(&self.inner.pending);
        failed.retain(|(id, _)| pending.contains_key(id));
        failed
    }

    /// Tries the requests due now (all of them when `all`), `termination_concurrency` at a
    /// time.
    async fn round(&self, all: bool) -> Round {
        let now = Instant::now();
        let due: Vec<(WorkerId, Why, Target)> = lock(&self.inner.pending)
            .iter()
            .filter(|(_, p)| all || p.next_try <= now)
            .map(|(id, p)| (id.clone(), p.why, p.target))
            .collect();
        if due.is_empty() {
            return (0, Vec::new());
        }
        let management = &self.inner.management;
        let attempts: Vec<_> = due
            .into_iter()
            .map(|(id, why, target)| async move {
                let result = match target {
                    Target::Recorded => management.terminate_worker(&id).await,
                    Target::Orphan(kind) => management.terminate_orphan(&id, kind).await.map(
                        |stopped| {
                            if !stopped {
                                tracing::info!(worker_id = %id, "not an orphan any more, left running");
                            }
                        },
                    ),
                    Target::AtProvider(kind) => management.stop_at_provider(&id, kind).await,
                };
                (id, why, result)
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(attempts)
            .buffer_unordered(management.termination_concurrency())
            .collect()
            .await;
        let mut done = 0;
        let mut failed = Vec::new();
        for (id, why, result) in results {
            match result {
                Ok(()) => {}
                Err(WorkerManagementError::WorkerNotFound(_)) => {
                    // Hand-started, never recorded: nothing to stop but its registration.
                    let _ = self.inner.registry.unregister(&id);
                }
                Err(error) => {
                    let failures = {
                        let mut pending = lock(&self.inner.pending);
                        pending.get_mut(&id).map(|p| {
                            p.failures = p.failures.saturating_add(1);
                            let delay = backoff::jittered(retry_delay(p.failures), fastrand::f64());
                            p.next_try = Instant::now() + delay;
                            (p.failures, delay)
                        })
                    };
                    let (attempt, delay) = failures.unwrap_or((1, RETRY_BASE));
                    tracing::warn!(worker_id = %id, reason = why.as_str(), attempt, retry_in = ?delay, %error, "could not terminate a worker, retrying");
                    self.inner
                        .failed_attempts
                        .get_or_create(&WhyLabels {
                            reason: why.as_str(),
                        })
                        .inc();
                    failed.push((id, error));
                    continue;
                }
            }
            tracing::info!(worker_id = %id, reason = why.as_str(), "worker terminated");
            lock(&self.inner.pending).remove(&id);
            self.inner
                .terminated
                .get_or_create(&WhyLabels {
                    reason: why.as_str(),
                })
                .inc();
            done += 1;
        }
        if done > 0 {
            self.inner.done.send_modify(|count| *count += done as u64);
        }
        (done, failed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
