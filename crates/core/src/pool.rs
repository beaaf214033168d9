//! Pools: named groups of workers provisioned from one template.

use serde::{Deserialize, Serialize};

use crate::worker::{ProviderKind, ValidationError, WorkerSpec, WorkerType};

/// Most workers one pool may hold; protects the machine from a typo in a config file.
pub const MAX_POOL_SIZE: u32 = 10_000;

/// A pool as configured: which provider creates its workers, from which template, how many.
///
/// Only static pools exist so far: `size` workers are kept provisioned and registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub provider: ProviderKind,
    pub size: u32,
    /// What every worker of the pool looks like; its `pool` and `worker_type` are set from
    /// the pool.
    #[serde(default)]
    pub template: WorkerSpec,
    /// Jobs a worker of this pool runs before it is retired and replaced: 1 makes every
    /// worker ephemeral (a fresh one per job); absent means workers are reused without limit.
    #[serde(default)]
    pub max_uses: Option<u32>,
}

impl PoolSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::worker::validate_key("pool.name", &self.name)?;
        if self.name.contains('/') {
            return Err(ValidationError::new("pool.name", "must not contain '/'"));
        }
        if self.size > MAX_POOL_SIZE {
            return Err(ValidationError::new(
                "pool.size",
                format!("is {}, at most {MAX_POOL_SIZE} allowed", self.size),
            ));
        }
        if self.max_uses == Some(0) {
            return Err(ValidationError::new(
                "pool.max_uses",
                "must be at least 1 (1 = a fresh worker per job), or absent for no limit",
            ));
        }
        self.template.capabilities.validate()?;
        crate::worker::validate_labels("pool.template.labels", &self.template.labels)
    }

    /// The spec of one worker of this pool.
    pub fn worker_spec(&self) -> WorkerSpec {
        WorkerSpec {
            worker_type: WorkerType::Static,
            pool: Some(self.name.clone()),
            ..self.template.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolSpec {
        PoolSpec {
            name: "default".into(),
            provider: ProviderKind::Local,
            size: 2,
            template: WorkerSpec::default(),
            max_uses: None,
        }
    }

    #[test]
    fn pools_are_validated() {
        assert!(pool().validate().is_ok());
        let bad = PoolSpec {
            name: "no spaces".into(),
            ..pool()
        };
        assert_eq!(bad.validate().unwrap_err().field, "pool.name");
        let bad = PoolSpec {
            size: MAX_POOL_SIZE + 1,
            ..pool()
        };
        assert_eq!(bad.validate().unwrap_err().field, "pool.size");
        let bad = PoolSpec {
            max_uses: Some(0),
            ..pool()
        };
        assert_eq!(bad.validate().unwrap_err().field, "pool.max_uses");
        assert!(
            PoolSpec {
                max_uses: Some(1),
                ..pool()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn worker_spec_belongs_to_the_pool() {
        let spec = pool().worker_spec();
        assert_eq!(spec.pool.as_deref(), Some("default"));
        assert_eq!(spec.worker_type, WorkerType::Static);
    }
}
