//! The `[sla]`, `[tenants]` and `[[tenant]]` tables as the server's configuration file and
//! the tenant API write them, with their conversion to the core's types. Here so that the
//! server and the policy simulator decode them with the same types and the same checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// `[sla]`: how long after submission each class's jobs must have started, and when running
/// jobs are preempted for at-risk critical and high ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaSection {
    #[serde(with = "humantime_serde")]
    pub critical: Duration,
    #[serde(with = "humantime_serde")]
    pub high: Duration,
    #[serde(with = "humantime_serde")]
    pub medium: Duration,
    #[serde(with = "humantime_serde")]
    pub low: Duration,
    #[serde(with = "humantime_serde")]
    pub best_effort: Duration,
    /// `never`, `at_risk` (the default) or `always`.
    pub preemption: crate::sla::PreemptionPolicy,
    /// Time a preempted job gets between SIGTERM and SIGKILL.
    #[serde(with = "humantime_serde")]
    pub preemption_grace: Duration,
    /// Tenants whose jobs are never preempted.
    pub non_preemptible_tenants: Vec<String>,
}

impl Default for SlaSection {
    fn default() -> Self {
        let sla = crate::sla::SlaSettings::default();
        Self {
            critical: sla.critical,
            high: sla.high,
            medium: sla.medium,
            low: sla.low,
            best_effort: sla.best_effort,
            preemption: sla.preemption,
            preemption_grace: sla.preemption_grace,
            non_preemptible_tenants: Vec::new(),
        }
    }
}

impl SlaSection {
    /// The core's settings; fails naming the key of a bad value.
    pub fn settings(&self) -> Result<crate::sla::SlaSettings, ValidationError> {
        let non_preemptible_tenants = self
            .non_preemptible_tenants
            .iter()
            .map(|name| {
                crate::TenantName::new(name.clone())
                    .map_err(|e| ValidationError::new("sla.non_preemptible_tenants", e.reason))
            })
            .collect::<Result<_, _>>()?;
        let settings = crate::sla::SlaSettings {
            critical: self.critical,
            high: self.high,
            medium: self.medium,
            low: self.low,
            best_effort: self.best_effort,
            preemption: self.preemption,
            preemption_grace: self.preemption_grace,
            non_preemptible_tenants,
            // The queues' defaults are `[[jobs.queue]]`'s, see `ServerConfig::sla_settings`.
            queue_classes: Default::default(),
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// `[tenants]`: what happens to jobs of unconfigured tenants, and burst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsSection {
    /// Accept jobs of a tenant nobody configured, as a bronze tenant (weight 1) without
    /// quotas. On by default: every job has a tenant (`default` unless given), and an
    /// installation without `[[tenant]]` tables must keep running its jobs; fair share
    /// still applies among such tenants. Turn off to accept only configured tenants.
    pub auto_create: bool,
    /// Soft quotas are multiplied by this while a tenant bursts on idle capacity.
    pub burst_factor: f64,
    /// Longest a burst lasts before it cools down.
    #[serde(with = "humantime_serde")]
    pub burst_max: Duration,
    /// Longest cooldown after a burst (an early end cools down as long as the burst lasted).
    #[serde(with = "humantime_serde")]
    pub burst_cooldown: Duration,
}

impl Default for TenantsSection {
    fn default() -> Self {
        let policy = crate::tenancy::BurstPolicy::default();
        Self {
            auto_create: true,
            burst_factor: policy.factor,
            burst_max: Duration::from_millis(policy.max_ms),
            burst_cooldown: Duration::from_millis(policy.cooldown_ms),
        }
    }
}

impl TenantsSection {
    pub fn burst_policy(&self) -> Result<crate::tenancy::BurstPolicy, ValidationError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let policy = crate::tenancy::BurstPolicy {
            factor: self.burst_factor,
            max_ms: millis(self.burst_max),
            cooldown_ms: millis(self.burst_cooldown),
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// One tenant as written in `[[tenant]]` and sent to `PUT /api/v1/tenants/{name}`:
/// a tier or an explicit weight, and quotas; quotas named in `soft` are soft.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    pub name: String,
    /// bronze (1), silver (2), gold (3) or platinum (5).
    pub tier: Option<String>,
    /// An explicit weight, 1 to 1000, instead of a tier.
    pub weight: Option<u32>,
    pub max_running_jobs: Option<u32>,
    pub max_cpu: Option<u32>,
    pub max_memory_mb: Option<u64>,
    pub max_workers: Option<u32>,
    pub max_daily_cost: Option<f64>,
    /// Most jobs queued at once; more are refused (HTTP 429, RESOURCE_EXHAUSTED).
    pub max_queued: Option<u32>,
    /// Quotas that are soft: `running_jobs`, `cpu`, `memory_mb`, `workers`, `daily_cost`.
    pub soft: Vec<String>,
    /// The SLA class of its jobs submitted without `--sla` to a queue without a default:
    /// critical, high, medium, low or best_effort (absent: medium).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sla_class: Option<String>,
    /// `false`: its running jobs are never preempted (as if listed in
    /// `[sla] non_preemptible_tenants`). Absent: preemptible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
}

impl TenantSettings {
    /// The tenant these settings describe; errors name the field.
    pub fn to_tenant(&self) -> Result<crate::tenancy::Tenant, ValidationError> {
        use crate::tenancy::{Limit, Resource, Tenant, Tier};
        let name = crate::TenantName::new(self.name.clone())?;
        let mut tenant = Tenant::new(name);
        match (&self.tier, self.weight) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "weight",
                    "give a tier or a weight, not both",
                ));
            }
            (Some(tier), None) => {
                let tier: Tier = tier.parse()?;
                tenant.tier = Some(tier);
                tenant.weight = tier.weight();
            }
            (None, Some(weight)) => {
                tenant.tier = None;
                tenant.weight = weight;
            }
            (None, None) => {}
        }
        let soft: Vec<Resource> = self
            .soft
            .iter()
            .map(|name| {
                name.parse()
                    .map_err(|e: ValidationError| ValidationError::new("soft", e.reason))
            })
            .collect::<Result<_, _>>()?;
        let quotas = [
            (Resource::RunningJobs, self.max_running_jobs.map(f64::from)),
            (Resource::Cpu, self.max_cpu.map(f64::from)),
            (Resource::MemoryMb, self.max_memory_mb.map(|v| v as f64)),
            (Resource::Workers, self.max_workers.map(f64::from)),
            (Resource::DailyCost, self.max_daily_cost),
        ];
        for (resource, value) in quotas {
            if let Some(value) = value {
                let soft = soft.contains(&resource);
                tenant.quotas.insert(resource, Limit { value, soft });
            } else if soft.contains(&resource) {
                return Err(ValidationError::new(
                    "soft",
                    format!("names {resource}, which has no quota"),
                ));
            }
        }
        tenant.max_queued = self.max_queued;
        tenant.sla_class = self
            .sla_class
            .as_deref()
            .filter(|class| !class.is_empty())
            .map(str::parse)
            .transpose()?;
        tenant.preemptible = self.preemptible.unwrap_or(true);
        tenant.validate()?;
        Ok(tenant)
    }

    /// The settings that describe `tenant`.
    pub fn from_tenant(tenant: &crate::tenancy::Tenant) -> Self {
        use crate::tenancy::Resource;
        let value = |resource| tenant.quotas.get(&resource).map(|limit| limit.value);
        Self {
            name: tenant.name.to_string(),
            tier: tenant.tier.map(|tier| tier.as_str().to_owned()),
            weight: tenant.tier.is_none().then_some(tenant.weight),
            max_running_jobs: value(Resource::RunningJobs).map(|v| v as u32),
            max_cpu: value(Resource::Cpu).map(|v| v as u32),
            max_memory_mb: value(Resource::MemoryMb).map(|v| v as u64),
            max_workers: value(Resource::Workers).map(|v| v as u32),
            max_daily_cost: value(Resource::DailyCost),
            max_queued: tenant.max_queued,
            soft: tenant
                .quotas
                .iter()
                .filter(|(_, limit)| limit.soft)
                .map(|(resource, _)| resource.as_str().to_owned())
                .collect(),
            sla_class: tenant.sla_class.map(|class| class.as_str().to_owned()),
            preemptible: (!tenant.preemptible).then_some(false),
        }
    }
}
