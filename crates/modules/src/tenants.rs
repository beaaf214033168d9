//! Tenants at runtime: the configured ones (from `[[tenant]]` and from the API) kept in the
//! store and handed to the dispatcher whenever they change, and what each holds now.

use std::sync::Arc;

use hodei_core::tenancy::{Tenant, Tenants};
use hodei_core::{TenantName, ValidationError};
use hodei_ports::Store;
use hodei_ports::store;
use tokio::sync::Mutex;

use crate::jobs::{JobError, JobService, TenantStatus};

/// Why a tenant request failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("tenant {0} not found")]
    NotFound(TenantName),
    /// Removing it would strand its jobs: tenants are not created automatically.
    #[error(
        "tenant {tenant} has {jobs} jobs queued or running and tenants.auto_create is off; cancel them first"
    )]
    InUse { tenant: TenantName, jobs: usize },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Jobs(#[from] JobError),
}

/// A tenant as the API shows it: its settings, whether someone configured it (or it exists
/// because `tenants.auto_create` let its jobs in), and what it holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantView {
    pub tenant: Tenant,
    pub configured: bool,
    pub status: Option<TenantStatus>,
}

/// The handle the API uses. Cheap to clone.
#[derive(Clone)]
pub struct TenantService {
    store: Arc<dyn Store>,
    jobs: JobService,
    tenants: Arc<Mutex<Tenants>>,
}

impl std::fmt::Debug for TenantService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantService").finish_non_exhaustive()
    }
}

impl TenantService {
    /// Stores the configured tenants (the file wins over what the store holds for the same
    /// name), adds the stored ones the file does not name (made through the API), and hands
    /// the result to the dispatcher.
    pub async fn start(
        config: Tenants,
        store: Arc<dyn Store>,
        jobs: JobService,
    ) -> Result<Self, TenantError> {
        let mut tenants = config;
        for tenant in tenants.configured.values() {
            store.put_tenant(tenant).await?;
        }
        for tenant in store.list_tenants().await? {
            tenants
                .configured
                .entry(tenant.name.clone())
                .or_insert(tenant);
        }
        jobs.set_tenants(tenants.clone()).await;
        Ok(Self {
            store,
            jobs,
            tenants: Arc::new(Mutex::new(tenants)),
        })
    }

    /// Every configured tenant and every tenant with jobs queued, in flight or started in
    /// the last hour, by name.
    pub async fn list(&self) -> Result<Vec<TenantView>, TenantError> {
        let tenants = self.tenants.lock().await.clone();
        let mut status: std::collections::BTreeMap<TenantName, TenantStatus> = self
            .jobs
            .tenant_status()
            .await?
            .into_iter()
            .map(|s| (s.tenant.clone(), s))
            .collect();
        let mut names: Vec<TenantName> = tenants
            .configured
            .keys()
            .chain(status.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let configured = tenants.configured.contains_key(&name);
                let tenant = tenants.get(&name)?.into_owned();
                Some(TenantView {
                    tenant,
                    configured,
                    status: status.remove(&name),
                })
            })
            .collect())
    }

    /// One tenant; NOT_FOUND unless configured or holding or having run jobs lately.
    pub async fn get(&self, name: &TenantName) -> Result<TenantView, TenantError> {
        self.list()
            .await?
            .into_iter()
            .find(|view| &view.tenant.name == name)
            .ok_or_else(|| TenantError::NotFound(name.clone()))
    }

    /// Creates or replaces a tenant; the dispatcher applies it from its next pass (jobs
    /// already running are never stopped by a lower quota).
    pub async fn set(&self, tenant: Tenant) -> Result<Tenant, TenantError> {
        tenant.validate()?;
        let mut tenants = self.tenants.lock().await;
        self.store.put_tenant(&tenant).await?;
        tenants
            .configured
            .insert(tenant.name.clone(), tenant.clone());
        self.jobs.set_tenants(tenants.clone()).await;
        tracing::info!(tenant = %tenant.name, weight = tenant.weight, "tenant set");
        Ok(tenant)
    }

    /// Removes a configured tenant. With `tenants.auto_create` on, its jobs carry on with
    /// the defaults; with it off, a tenant with jobs queued or running cannot be removed.
    pub async fn remove(&self, name: &TenantName) -> Result<(), TenantError> {
        let mut tenants = self.tenants.lock().await;
        if !tenants.configured.contains_key(name) {
            return Err(TenantError::NotFound(name.clone()));
        }
        if tenants.auto_create.is_none() {
            let held = self
                .jobs
                .tenant_status()
                .await?
                .into_iter()
                .find(|s| &s.tenant == name)
                .map_or(0, |s| s.queued + s.usage.running_jobs as usize);
            if held > 0 {
                return Err(TenantError::InUse {
                    tenant: name.clone(),
                    jobs: held,
                });
            }
        }
        self.store.delete_tenant(name).await?;
        tenants.configured.remove(name);
        self.jobs.set_tenants(tenants.clone()).await;
        tracing::info!(tenant = %name, "tenant removed");
        Ok(())
    }
}
