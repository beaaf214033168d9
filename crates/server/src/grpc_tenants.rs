//! `hodei.v1.TenantService`: the tenant API over gRPC, the same operations and error codes
//! as REST (`/api/v1/tenants`). Requests become [`TenantSettings`] so both APIs validate
//! one way.

use hodei_core::TenantName;
use hodei_core::ValidationError;
use hodei_modules::{TenantService, TenantView};
use hodei_proto::v1;
use tonic::{Request, Response, Status};

use crate::config::TenantSettings;
use crate::error::ApiError;

/// `TenantService` over the tenant registry.
#[derive(Debug, Clone)]
pub struct TenantGrpc {
    pub tenants: TenantService,
}

fn status(error: impl Into<ApiError>) -> Status {
    error.into().into()
}

fn tenant_name(text: String) -> Result<TenantName, Status> {
    TenantName::new(text).map_err(status)
}

/// The wire settings as the `[[tenant]]` fields.
pub fn settings_from_wire(wire: v1::TenantSettings) -> Result<TenantSettings, ValidationError> {
    let mut settings = TenantSettings {
        name: wire.name,
        tier: (!wire.tier.is_empty()).then_some(wire.tier),
        weight: (wire.weight > 0).then_some(wire.weight),
        max_queued: (wire.max_queued > 0).then_some(wire.max_queued),
        sla_class: (!wire.sla_class.is_empty()).then_some(wire.sla_class),
        preemptible: wire.non_preemptible.then_some(false),
        ..TenantSettings::default()
    };
    let whole = |limit: f64, field: &str| -> Result<u64, ValidationError> {
        if limit.is_finite() && limit >= 0.0 && limit.fract() == 0.0 && limit <= u32::MAX as f64 {
            Ok(limit as u64)
        } else {
            Err(ValidationError::new(
                format!("quotas.{field}"),
                format!("is {limit}, a whole number expected"),
            ))
        }
    };
    for quota in wire.quotas {
        let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        match quota.resource.as_str() {
            "running_jobs" => {
                settings.max_running_jobs = Some(small(whole(quota.limit, "running_jobs")?))
            }
            "cpu" => settings.max_cpu = Some(small(whole(quota.limit, "cpu")?)),
            "memory_mb" => settings.max_memory_mb = Some(whole(quota.limit, "memory_mb")?),
            "workers" => settings.max_workers = Some(small(whole(quota.limit, "workers")?)),
            "daily_cost" => settings.max_daily_cost = Some(quota.limit),
            other => {
                return Err(ValidationError::new(
                    "quotas.resource",
                    format!(
                        "is {other:?}, one of running_jobs, cpu, memory_mb, workers, daily_cost expected"
                    ),
                ));
            }
        }
        if quota.soft {
            settings.soft.push(quota.resource);
        }
    }
    Ok(settings)
}

/// The wire form of a tenant.
pub fn tenant_info(view: &TenantView) -> v1::TenantInfo {
    let tenant = &view.tenant;
    let usage = view.status.as_ref().map(|s| s.usage).unwrap_or_default();
    v1::TenantInfo {
        settings: Some(v1::TenantSettings {
            name: tenant.name.to_string(),
            tier: tenant
                .tier
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            weight: if tenant.tier.is_some() {
                0
            } else {
                tenant.weight
            },
            quotas: tenant
                .quotas
                .iter()
                .map(|(resource, limit)| v1::TenantQuota {
                    resource: resource.as_str().to_owned(),
                    limit: limit.value,
                    soft: limit.soft,
                })
                .collect(),
            max_queued: tenant.max_queued.unwrap_or(0),
            sla_class: tenant
                .sla_class
                .map(|class| class.as_str().to_owned())
                .unwrap_or_default(),
            non_preemptible: !tenant.preemptible,
        }),
        weight: tenant.weight,
        configured: view.configured,
        usage: hodei_core::tenancy::Resource::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), usage.get(*r)))
            .collect(),
        queued: view.status.as_ref().map_or(0, |s| s.queued as u64),
        burst: view
            .status
            .as_ref()
            .map_or("ready", |s| s.burst.as_str())
            .to_owned(),
        share_last_hour: view.status.as_ref().map_or(0.0, |s| s.share_last_hour),
        started_last_hour: view.status.as_ref().map_or(0, |s| s.started_last_hour),
    }
}

#[tonic::async_trait]
impl v1::tenant_service_server::TenantService for TenantGrpc {
    async fn list_tenants(
        &self,
        _request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        let tenants = self.tenants.list().await.map_err(status)?;
        Ok(Response::new(v1::ListTenantsResponse {
            tenants: tenants.iter().map(tenant_info).collect(),
        }))
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::GetTenantResponse>, Status> {
        let scope = crate::scope::Scope::of_grpc(&request);
        let request = request.into_inner();
        scope.read_tenant(&request.name).map_err(status)?;
        let name = tenant_name(request.name)?;
        let view = self.tenants.get(&name).await.map_err(status)?;
        Ok(Response::new(v1::GetTenantResponse {
            tenant: Some(tenant_info(&view)),
        }))
    }

    async fn set_tenant(
        &self,
        request: Request<v1::SetTenantRequest>,
    ) -> Result<Response<v1::SetTenantResponse>, Status> {
        let wire = request
            .into_inner()
            .settings
            .ok_or_else(|| status(ValidationError::new("settings", "is required")))?;
        let tenant = settings_from_wire(wire)
            .and_then(|settings| settings.to_tenant())
            .map_err(status)?;
        let tenant = self.tenants.set(tenant).await.map_err(status)?;
        let view = self.tenants.get(&tenant.name).await.map_err(status)?;
        Ok(Response::new(v1::SetTenantResponse {
            tenant: Some(tenant_info(&view)),
        }))
    }

    async fn delete_tenant(
        &self,
        request: Request<v1::DeleteTenantRequest>,
    ) -> Result<Response<v1::DeleteTenantResponse>, Status> {
        let name = tenant_name(request.into_inner().name)?;
        self.tenants.remove(&name).await.map_err(status)?;
        Ok(Response::new(v1::DeleteTenantResponse {}))
    }
}
