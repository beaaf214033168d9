//! Retention: how long finished jobs (with their output) and terminated workers are kept,
//! and which of them a pruning pass may delete now.

use std::time::Duration;

use crate::ValidationError;

/// What `[retention]` keeps. A zero duration keeps that kind forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished jobs (and their output) are deleted this long after they finished.
    pub jobs: Duration,
    /// Terminated workers are deleted this long after they were terminated.
    pub workers: Duration,
    /// Time between two pruning passes.
    pub interval: Duration,
    /// Rows deleted by one statement; a pass deletes batch after batch until none is left.
    pub batch: usize,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            jobs: Duration::from_secs(7 * 24 * 3600),
            workers: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(60),
            batch: 500,
        }
    }
}

/// Which kind of record a pass prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pruned {
    Jobs,
    Workers,
}

impl Pruned {
    pub const ALL: [Pruned; 2] = [Self::Jobs, Self::Workers];

    /// `jobs` or `workers`: the metric label and the config key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::Workers => "workers",
        }
    }
}

impl RetentionPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.interval.is_zero() {
            return Err(ValidationError::new(
                "retention.interval",
                "must be above zero",
            ));
        }
        if self.batch == 0 {
            return Err(ValidationError::new(
                "retention.batch",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// How long records of `kind` are kept; `None`: forever.
    pub fn keep(&self, kind: Pruned) -> Option<Duration> {
        let keep = match kind {
            Pruned::Jobs => self.jobs,
            Pruned::Workers => self.workers,
        };
        (!keep.is_zero()).then_some(keep)
    }

    /// Records of `kind` last changed before the returned instant (ms since the epoch) may
    /// be deleted at `now_ms`; `None` when that kind is kept forever.
    pub fn cutoff_ms(&self, kind: Pruned, now_ms: u64) -> Option<u64> {
        let keep = self.keep(kind)?;
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        Some(now_ms.saturating_sub(keep_ms))
    }

    /// Whether a pass that just deleted `deleted` rows with one batch should delete another.
    pub fn more_after(&self, deleted: usize) -> bool {
        deleted >= self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_now_less_the_retention_and_zero_keeps_forever() {
        let policy = RetentionPolicy {
            jobs: Duration::from_secs(10),
            workers: Duration::ZERO,
            ..RetentionPolicy::default()
        };
        assert_eq!(policy.cutoff_ms(Pruned::Jobs, 60_000), Some(50_000));
        // Early clocks do not wrap around.
        assert_eq!(policy.cutoff_ms(Pruned::Jobs, 3_000), Some(0));
        assert_eq!(policy.cutoff_ms(Pruned::Workers, 60_000), None);
    }

    #[test]
    fn defaults_keep_a_week_of_jobs_and_a_day_of_workers() {
        let policy = RetentionPolicy::default();
        assert_eq!(
            policy.keep(Pruned::Jobs),
            Some(Duration::from_secs(604_800))
        );
        assert_eq!(
            policy.keep(Pruned::Workers),
            Some(Duration::from_secs(86_400))
        );
        assert!(policy.validate().is_ok());
    }

    #[test]
    fn a_full_batch_asks_for_another() {
        let policy = RetentionPolicy {
            batch: 3,
            ..RetentionPolicy::default()
        };
        assert!(policy.more_after(3));
        assert!(!policy.more_after(2));
        assert!(!policy.more_after(0));
    }

    #[test]
    fn bad_settings_are_named() {
        let zero_batch = RetentionPolicy {
            batch: 0,
            ..RetentionPolicy::default()
        };
        assert_eq!(zero_batch.validate().unwrap_err().field, "retention.batch");
        let zero_interval = RetentionPolicy {
            interval: Duration::ZERO,
            ..RetentionPolicy::default()
        };
        assert_eq!(
            zero_interval.validate().unwrap_err().field,
            "retention.interval"
        );
    }
}
