//! The one owner of worker termination at runtime. Whoever decides a worker must go (the
//! dispatcher's retirements, the liveness monitor, the dead-agent watch, scale-in, drains)
//! asks [`Terminations::request`]; one task carries the requests out through
//! [`WorkerManagementService::terminate_worker`], a worker asked for twice is terminated
//! once, a termination that failed is tried again, and each one is counted by why
//! (`hodei_workers_terminations_total{reason}`). The reconciler, inside worker management,
//! only cleans up what no record owns (orphans, records of workers already gone) and
//! shutdown's `terminate_all` stops whatever is left after this task has stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hodei_core::WorkerId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

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
}

impl Why {
    pub const ALL: [Why; 5] = [
        Self::Retired,
        Self::Silent,
        Self::Dead,
        Self::Drained,
        Self::ScaleIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retired => "retired",
            Self::Silent => "silent",
            Self::Dead => "dead",
            Self::Drained => "drained",
            Self::ScaleIn => "scale_in",
        }
    }
}

/// How often failed terminations are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Terminations carried out at once.
const CONCURRENCY: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    reason: &'static str,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Terminations {
    inner: Arc<Inner>,
}

struct Inner {
    management: Arc<WorkerManagementService>,
    registry: Arc<SchedulerRegistry>,
    /// Asked for and not done yet, with the first reason given.
    pending: Mutex<BTreeMap<WorkerId, Why>>,
    wake: Notify,
    /// How many terminations are done: the pool manager watches it to replace them.
    done: watch::Sender<u64>,
    terminated: Family<WhyLabels, Counter>,
}

impl std::fmt::Debug for Terminations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminations").finish_non_exhaustive()
    }
}

impl Terminations {
    pub fn new(
        management: Arc<WorkerManagementService>,
        registry: Arc<SchedulerRegistry>,
        metrics: &mut Registry,
    ) -> Self {
        let terminated = Family::<WhyLabels, Counter>::default();
        metrics.register(
            "hodei_workers_terminations",
            "Workers terminated at runtime, by why (shutdown and the reconciler not included)",
            terminated.clone(),
        );
        for why in Why::ALL {
            let _ = terminated.get_or_create(&WhyLabels {
                reason: why.as_str(),
            });
        }
        Self {
            inner: Arc::new(Inner {
                management,
                registry,
                pending: Mutex::default(),
                wake: Notify::new(),
                done: watch::channel(0).0,
                terminated,
            }),
        }
    }

    /// Asks for `id` to be terminated. Returns `false` when it was asked for already (it is
    /// terminated once, counted under the first reason).
    pub fn request(&self, id: WorkerId, why: Why) -> bool {
        let added = {
            let mut pending = lock(&self.inner.pending);
            if pending.contains_key(&id) {
                false
            } else {
                pending.insert(id.clone(), why);
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

    /// Carries out requests until `cancel`; terminations under way when it comes are
    /// finished first.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
            self.step().await;
        }
    }

    /// One round over what is pending now. Returns how many were done.
    pub async fn step(&self) -> usize {
        let pending: Vec<(WorkerId, Why)> = lock(&self.inner.pending)
            .iter()
            .map(|(id, why)| (id.clone(), *why))
            .collect();
        if pending.is_empty() {
            return 0;
        }
        let attempts: Vec<_> = pending
            .into_iter()
            .map(|(id, why)| async move {
                let result = self.inner.management.terminate_worker(&id).await;
                (id, why, result)
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(attempts)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut done = 0;
        for (id, why, result) in results {
            match result {
                Ok(()) => {}
                Err(WorkerManagementError::WorkerNotFound(_)) => {
                    // Hand-started, never recorded: nothing to stop but its registration.
                    let _ = self.inner.registry.unregister(&id);
                }
                Err(error) => {
                    tracing::warn!(worker_id = %id, reason = why.as_str(), %error, "could not terminate a worker, retrying");
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
        done
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
