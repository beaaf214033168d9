//! A configuration to simulate: the server's `[[pool]]`, `[[tenant]]` and `[[queue]]`
//! tables (the same keys, decoded by the same types) plus a `[sim]` table for what only a
//! simulation needs (latencies, pass timing).

use std::collections::BTreeMap;
use std::path::Path;

use hodei_core::queue::{DEFAULT_QUEUE_CAPACITY, QueueConfig};
use hodei_core::settings::{SlaSection, TenantSettings, TenantsSection};
use hodei_core::sla::SlaSettings;
use hodei_core::tenancy::Tenants;
use hodei_core::{PoolSpec, ProviderKind, QueueName, ValidationError};
use serde::Deserialize;

/// One configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Shown in reports; the file's name without `.toml` when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "pool", default)]
    pub pools: Vec<PoolSpec>,
    /// `[[tenant]]`: the server's tenant tables (tier or weight, quotas, `soft`).
    #[serde(rename = "tenant", default)]
    pub tenants: Vec<TenantSettings>,
    /// `[tenants]`: burst (`burst_factor`, `burst_max`, `burst_cooldown`) and `auto_create`,
    /// as in the server.
    #[serde(rename = "tenants", default)]
    pub tenant_policy: TenantsSection,
    /// `[sla]`: each class's deadline, as in the server (preemption is not simulated).
    #[serde(default)]
    pub sla: SlaSection,
    #[serde(rename = "queue", default)]
    pub queues: Vec<QueueEntry>,
    #[serde(default)]
    pub sim: SimSettings,
}

/// `[[queue]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEntry {
    pub name: String,
    pub capacity: Option<usize>,
}

/// `[sim]`: what only a simulation needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// From assigning a job to its agent starting it, milliseconds.
    pub dispatch_latency_ms: u64,
    /// From deciding to create a worker to its agent connecting, by provider
    /// (`local`, `docker`, `kubernetes`), milliseconds; defaults 20, 150 and 5000.
    pub start_latency_ms: BTreeMap<String, u64>,
    /// A pool pass at least this often (the server's `[autoscaler] tick`), milliseconds.
    pub pass_interval_ms: u64,
    /// At most one pass this often after a change (the server's minimum), milliseconds.
    pub min_pass_interval_ms: u64,
    /// Predictive pools start with the profile a week of this same load would have
    /// taught them (the trace replayed one week earlier), as a server running that load
    /// for a while would have; false starts them knowing nothing.
    pub profile_from_trace: bool,
    /// A sample for the plots every this many seconds.
    pub sample_interval_s: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            dispatch_latency_ms: 10,
            start_latency_ms: BTreeMap::new(),
            pass_interval_ms: 1000,
            min_pass_interval_ms: 20,
            profile_from_trace: true,
            sample_interval_s: 60,
        }
    }
}

impl SimSettings {
    pub fn start_latency(&self, provider: ProviderKind) -> u64 {
        self.start_latency_ms
            .get(provider.as_str())
            .copied()
            .unwrap_or_else(|| provider.default_start_latency_ms())
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
}

impl SimConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown.clone(),
            source,
        })?;
        if config.name.is_none() {
            config.name = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        }
        config.check().map_err(|e| ConfigError::Invalid {
            path: shown,
            field: e.field,
            reason: e.reason,
        })?;
        Ok(config)
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("config")
    }

    /// The checks the server makes, plus the simulation's own.
    pub fn check(&self) -> Result<(), ValidationError> {
        if self.pools.is_empty() {
            return Err(ValidationError::new(
                "pool",
                "at least one [[pool]] is needed",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for pool in &self.pools {
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
        for provider in self.sim.start_latency_ms.keys() {
            if !["local", "docker", "kubernetes"].contains(&provider.as_str()) {
                return Err(ValidationError::new(
                    format!("sim.start_latency_ms.{provider}"),
                    "is not a provider (local, docker, kubernetes)",
                ));
            }
        }
        if self.sim.pass_interval_ms == 0 || self.sim.sample_interval_s == 0 {
            return Err(ValidationError::new(
                "sim.pass_interval_ms",
                "pass_interval_ms and sample_interval_s must be at least 1",
            ));
        }
        self.tenants()?;
        self.sla_settings()?;
        self.queue_configs()?;
        Ok(())
    }

    /// The tenants as the dispatcher takes them, built as the server builds them: weights,
    /// quotas, burst; unknown tenants are auto-created bronze unless `[tenants]
    /// auto_create = false`.
    pub fn tenants(&self) -> Result<Tenants, ValidationError> {
        let mut tenants = Tenants {
            burst: self.tenant_policy.burst_policy()?,
            ..Tenants::default()
        };
        if !self.tenant_policy.auto_create {
            tenants.auto_create = None;
        }
        for entry in &self.tenants {
            let tenant = entry.to_tenant().map_err(|e| {
                ValidationError::new(format!("tenant[{}].{}", entry.name, e.field), e.reason)
            })?;
            if tenants
                .configured
                .insert(tenant.name.clone(), tenant)
                .is_some()
            {
                return Err(ValidationError::new(
                    "tenant.name",
                    format!("tenant {:?} is defined twice", entry.name),
                ));
            }
        }
        Ok(tenants)
    }

    /// The `[sla]` deadlines and settings.
    pub fn sla_settings(&self) -> Result<SlaSettings, ValidationError> {
        self.sla.settings()
    }

    /// The queues; `default` is always there. A simulation should not refuse jobs for a
    /// full queue unless asked to, so unconfigured queues hold a million jobs.
    pub fn queue_configs(&self) -> Result<Vec<QueueConfig>, ValidationError> {
        let mut queues: BTreeMap<QueueName, usize> = BTreeMap::new();
        queues.insert(QueueName::default(), 1_000_000);
        for entry in &self.queues {
            let name = QueueName::new(entry.name.clone())?;
            let capacity = entry.capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
            if capacity == 0 {
                return Err(ValidationError::new(
                    format!("queue[{}].capacity", entry.name),
                    "must be at least 1",
                ));
            }
            queues.insert(name, capacity);
        }
        Ok(queues
            .into_iter()
            .map(|(name, capacity)| QueueConfig { name, capacity })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(), String> {
        let config: SimConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config
            .check()
            .map_err(|e| format!("{}: {}", e.field, e.reason))
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let pool = "[[pool]]\nname = \"p\"\nprovider = \"local\"\nkind = \"dynamic\"\nmax = 4\n";
        assert_eq!(parse(pool), Ok(()));
        let err = parse(
            "[[pool]]\nname = \"p\"\nprovider = \"local\"\nkind = \"dynamic\"\nmin = 5\nmax = 4\n",
        )
        .unwrap_err();
        assert!(err.starts_with("pool[p].min"), "{err}");
        let err = parse(&format!(
            "{pool}[[tenant]]\nname = \"a\"\ntier = \"diamond\"\n"
        ))
        .unwrap_err();
        assert!(err.starts_with("tenant[a].tier"), "{err}");
        let err = parse(&format!("{pool}[sim.start_latency_ms]\nmars = 3\n")).unwrap_err();
        assert!(err.starts_with("sim.start_latency_ms.mars"), "{err}");
        assert!(parse("").unwrap_err().starts_with("pool"));
        assert!(parse(&format!("{pool}[sim]\nwarp = 9\n")).is_err());
    }
}
