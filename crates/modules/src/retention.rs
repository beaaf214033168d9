//! Retention (`[retention]`): finished jobs with their output, and terminated workers, are
//! deleted from the store once older than their retention, in the background, in batches.
//!
//! What may go is [`hodei_core::retention::RetentionPolicy`]'s decision; the store deletes
//! oldest first, at most a batch per statement, so a pass never holds the database for long.
//! Every deleted row is counted in `hodei_retention_pruned_total{kind}`, present at zero
//! from start-up.

use std::sync::Arc;
use std::time::SystemTime;

use hodei_core::retention::{Pruned, RetentionPolicy};
use hodei_ports::{Store, store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::pools::unix_ms;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// `hodei_retention_pruned_total{kind}` and `hodei_retention_failures_total{kind}`.
#[derive(Debug, Clone)]
pub struct RetentionMetrics {
    pruned: Family<KindLabels, Counter>,
    failures: Family<KindLabels, Counter>,
}

impl RetentionMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            pruned: Family::default(),
            failures: Family::default(),
        };
        registry.register(
            "hodei_retention_pruned",
            "Records deleted by retention: finished jobs (with their output) and terminated workers",
            metrics.pruned.clone(),
        );
        registry.register(
            "hodei_retention_failures",
            "Pruning passes that failed on the store",
            metrics.failures.clone(),
        );
        for kind in Pruned::ALL {
            let labels = KindLabels {
                kind: kind.as_str(),
            };
            let _ = metrics.pruned.get_or_create(&labels);
            let _ = metrics.failures.get_or_create(&labels);
        }
        metrics
    }
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Retention {
    store: Arc<dyn Store>,
    policy: RetentionPolicy,
    metrics: RetentionMetrics,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Retention {
    pub fn new(store: Arc<dyn Store>, policy: RetentionPolicy, metrics: RetentionMetrics) -> Self {
        Self {
            store,
            policy,
            metrics,
        }
    }

    /// A pass now, then one every `interval`, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(self.policy.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now_ms = unix_ms(SystemTime::now());
            for kind in Pruned::ALL {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = self.prune(kind, now_ms) => {}
                }
            }
        }
    }

    /// One pass over `kind` as of `now_ms`: batch after batch until none is full. Returns
    /// how many went; a store failure ends the pass (the next one tries again).
    pub async fn prune(&self, kind: Pruned, now_ms: u64) -> Result<usize, store::Error> {
        let Some(before_ms) = self.policy.cutoff_ms(kind, now_ms) else {
            return Ok(0);
        };
        let labels = KindLabels {
            kind: kind.as_str(),
        };
        let mut total = 0;
        loop {
            let deleted = match kind {
                Pruned::Jobs => self.store.prune_jobs(before_ms, self.policy.batch).await,
                Pruned::Workers => self.store.prune_workers(before_ms, self.policy.batch).await,
            };
            let deleted = match deleted {
                Ok(deleted) => deleted,
                Err(error) => {
                    self.metrics.failures.get_or_create(&labels).inc();
                    tracing::warn!(kind = kind.as_str(), %error, "retention could not prune; retrying next pass");
                    return Err(error);
                }
            };
            total += deleted;
            self.metrics
                .pruned
                .get_or_create(&labels)
                .inc_by(u64::try_from(deleted).unwrap_or(u64::MAX));
            if !self.policy.more_after(deleted) {
                break;
            }
            // Let the store's other users in between two batches.
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(
                kind = kind.as_str(),
                pruned = total,
                "retention pruned old records"
            );
        }
        Ok(total)
    }
}
