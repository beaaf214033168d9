//! The HTTP side of the one address: REST under `/api/v1` (credentials are checked before
//! routing, in `serve.rs` with `auth.rs`), `/metrics`, `/healthz` and `/readyz` (open, for
//! Prometheus and load balancers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hodei_core::cost::{self, CostReport, GroupBy};
use hodei_core::tenancy::Resource;
use hodei_core::trace;
use hodei_core::{AfterDrain, JobId, PoolSpec, WorkerId, WorkerState};
use hodei_modules::{
    Credentials, JobService, PoolManager, SchedulerRegistry, TenantService, WorkerDrains,
    WorkerManagementService,
};
use hodei_ports::{Store, WorkerFilter};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::api::{
    CreateToken, CreatedToken, JobList, JobView, LogChunkView, LogsView, PoolList, PoolView,
    RevokedTokens, ScalePool, SubmitJob, TenantList, TenantView, TokenList, TokenView, WorkerList,
    WorkerView, job_filter,
};
use crate::error::{ApiError, Code};
use crate::exposition;
use crate::scope::Scope;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub management: Arc<WorkerManagementService>,
    pub scheduler: Arc<SchedulerRegistry>,
    pub jobs: JobService,
    pub pools: PoolManager,
    pub tenants: TenantService,
    pub drains: WorkerDrains,
    /// `[jobs] allow_pending`: accept jobs nothing could run now.
    pub allow_pending: bool,
    pub metrics: Arc<Registry>,
    pub credentials: Credentials,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Set once start-up (first reconciliation, pool pre-warming) is done.
    pub ready: Arc<AtomicBool>,
    /// Served over TLS (`[tls]`): the console's cookie is `Secure`.
    pub tls: bool,
    /// Job state changes seen, for the console's job page.
    pub transitions: crate::transitions::TransitionLog,
    /// Pools' workers by state over the last hour, for the console's pool page.
    pub pool_history: crate::console::PoolHistory,
}

pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/workers", get(list_workers))
        .route("/workers/{id}", get(get_worker).delete(terminate_worker))
        .route("/workers/{id}/drain", post(drain_worker))
        .route("/workers/{id}/undrain", post(undrain_worker))
        .route("/pools", get(list_pools).post(create_pool))
        .route(
            "/pools/{name}",
            get(get_pool).put(update_pool).delete(remove_pool),
        )
        .route("/pools/{name}/scale", post(scale_pool))
        .route("/jobs", post(submit_job).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/logs", get(job_logs))
        .route("/tenants", get(list_tenants))
        .route(
            "/tenants/{name}",
            get(get_tenant).put(set_tenant).delete(remove_tenant),
        )
        .route("/tenants/{name}/tokens", post(create_tenant_token))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/reports/cost", get(cost_report))
        .fallback(|| async { ApiError::not_found("no such API path") });
    Router::new()
        .nest("/api/v1", api)
        .merge(crate::console::router(state.clone()))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub(crate) struct WorkerQuery {
    pub(crate) pool: Option<String>,
    pub(crate) state: Option<String>,
    /// Include terminated workers.
    #[serde(default)]
    pub(crate) all: bool,
}

pub(crate) async fn list_workers(
    State(state): State<AppState>,
    Query(query): Query<WorkerQuery>,
) -> Result<Json<WorkerList>, ApiError> {
    let wanted_state = query
        .state
        .as_deref()
        .map(str::parse::<WorkerState>)
        .transpose()?;
    let filter = WorkerFilter {
        pool: query.pool.clone(),
        live_only: !query.all && wanted_state != Some(WorkerState::Terminated),
    };
    let readings =
        crate::workers::list(state.store.as_ref(), &state.scheduler, &state.jobs, &filter).await?;
    let workers = readings
        .iter()
        .filter(|reading| wanted_state.is_none_or(|s| reading.state == s))
        .filter_map(worker_view)
        .collect();
    Ok(Json(WorkerList { workers }))
}

/// The REST shape of the one worker read model.
fn worker_view(reading: &crate::workers::WorkerReading) -> Option<WorkerView> {
    let mut view = match (&reading.record, &reading.registration) {
        (Some(record), registration) => WorkerView::new(record, registration.as_ref()),
        (None, Some(entry)) => WorkerView::registered_only(entry),
        (None, None) => return None,
    };
    view.state = reading.state.to_string();
    Some(view)
}

pub(crate) async fn get_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let id = WorkerId::new(id)?;
    crate::workers::get(state.store.as_ref(), &state.scheduler, &state.jobs, &id)
        .await?
        .as_ref()
        .and_then(worker_view)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("worker {id} not found")))
}

pub(crate) async fn terminate_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = WorkerId::new(id)?;
    state.management.terminate_worker(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The worker's state with what the dispatcher knows on top: a worker whose record says
/// idle may be busy with a job or cleaning after one (those states live in memory).
/// Body of `POST /api/v1/workers/{id}/drain`; empty means `{"then": "terminate"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrainWorker {
    /// `terminate` (the default) or `keep`.
    #[serde(default)]
    pub then: Option<String>,
}

/// `POST /api/v1/workers/{id}/drain`: no new job for the worker; once its job is done it is
/// terminated (and its pool replaces it) or, with `then: keep`, stays drained.
pub(crate) async fn drain_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<WorkerView>, ApiError> {
    let id = WorkerId::new(id)?;
    let body: DrainWorker = if body.iter().all(u8::is_ascii_whitespace) {
        DrainWorker::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| hodei_core::ValidationError::new("body", error.to_string()))?
    };
    let then = match body.then {
        Some(then) => then.parse::<AfterDrain>()?,
        None => AfterDrain::Terminate,
    };
    state.drains.drain(&id, then).await?;
    get_worker(State(state), Path(id.to_string())).await
}

/// `POST /api/v1/workers/{id}/undrain`: the drained worker takes jobs again.
pub(crate) async fn undrain_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let id = WorkerId::new(id)?;
    state.drains.undrain(&id).await?;
    get_worker(State(state), Path(id.to_string())).await
}

pub(crate) async fn list_pools(State(state): State<AppState>) -> Json<PoolList> {
    Json(PoolList {
        pools: state.pools.list().iter().map(PoolView::new).collect(),
    })
}

pub(crate) async fn get_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    state
        .pools
        .get(&name)
        .map(|status| Json(PoolView::new(&status)))
        .ok_or_else(|| ApiError::not_found(format!("pool {name} not found")))
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(Code::PayloadTooLarge, "the request body is too large");
        }
        ApiError::from(hodei_core::ValidationError::new(
            "body",
            rejection.body_text(),
        ))
    })
}

async fn list_tokens(State(state): State<AppState>) -> Json<TokenList> {
    Json(TokenList {
        tokens: state
            .credentials
            .list()
            .iter()
            .map(TokenView::new)
            .collect(),
    })
}

async fn create_token(
    State(state): State<AppState>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let new = json_body(body)?.into_new()?;
    let (record, token) = state.credentials.create(new).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            info: TokenView::new(&record),
            token: token.expose().to_owned(),
        }),
    ))
}

/// `POST /api/v1/tenants/{name}/tokens`: a tenant token for `name` (body: optional
/// `description`); the same as `POST /api/v1/tokens` with role `tenant`. The tenant needs
/// not be configured yet (jobs of an unknown tenant follow `tenants.auto_create`).
async fn create_tenant_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<crate::api::CreateTenantToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let request = json_body(body)?;
    create_token(
        State(state),
        Ok(Json(CreateToken {
            role: "tenant".into(),
            description: request.description,
            tenant: Some(name),
        })),
    )
    .await
}

async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RevokedTokens>, ApiError> {
    let revoked = state.credentials.revoke(&id).await?;
    Ok(Json(RevokedTokens { revoked }))
}

async fn create_pool(
    State(state): State<AppState>,
    body: Result<Json<PoolSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    let status = state.pools.create(json_body(body)?).await?;
    Ok((StatusCode::CREATED, Json(PoolView::new(&status))))
}

async fn update_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<PoolSpec>, JsonRejection>,
) -> Result<Json<PoolView>, ApiError> {
    let spec = json_body(body)?;
    if spec.name != name {
        return Err(hodei_core::ValidationError::new(
            "pool.name",
            format!("is {}, but the URL names pool {name}", spec.name),
        )
        .into());
    }
    Ok(Json(PoolView::new(&state.pools.update(spec).await?)))
}

async fn scale_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<ScalePool>, JsonRejection>,
) -> Result<Json<PoolView>, ApiError> {
    let request = json_body(body)?;
    Ok(Json(PoolView::new(
        &state.pools.scale(&name, request.workers).await?,
    )))
}

async fn remove_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.pools.remove(&name).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = exposition::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
        Ok(()) => {
            if format == exposition::Format::PrometheusText {
                text = exposition::openmetrics_to_prometheus_text(&text);
            }
            ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
        }
        Err(error) => {
            ApiError::new(Code::Internal, format!("cannot encode metrics: {error}")).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct CostQuery {
    /// How far back, as a duration (`24h`, `7d`); 24 hours when absent.
    since: Option<String>,
    /// `tenant`, `pool` (the default) or `queue`.
    by: Option<String>,
}

/// `GET /api/v1/reports/cost?since=24h&by=pool`: the cost report with its recommendations.
async fn cost_report(
    State(state): State<AppState>,
    Query(query): Query<CostQuery>,
) -> Result<Json<CostReport>, ApiError> {
    let by = match query.by.as_deref() {
        None => GroupBy::default(),
        Some(text) => text.parse::<GroupBy>()?,
    };
    let since = match query.since.as_deref() {
        None => std::time::Duration::from_secs(24 * 3600),
        Some(text) => humantime::parse_duration(text).map_err(|error| {
            ApiError::new(
                Code::InvalidArgument,
                format!("since: {text:?} is not a duration such as 24h or 7d: {error}"),
            )
        })?,
    };
    let now = std::time::SystemTime::now();
    let until_ms = unix_ms(now);
    let since_ms = until_ms.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let attempts = state.store.attempt_totals(since_ms).await?;
    let pools = state.store.pool_usage(since_ms).await?;
    let specs = state.store.list_pools().await?;
    let mut report = cost::report(by, since_ms, until_ms, &attempts, &pools, &specs);
    // Budgets: each tenant's daily_cost quota against what it spent today (the dispatcher's
    // figure, which the quota is checked against).
    let budgets: Vec<cost::TenantBudget> = state
        .tenants
        .list()
        .await?
        .into_iter()
        .filter_map(|view| {
            let budget = view.tenant.quotas.get(&Resource::DailyCost)?;
            Some(cost::TenantBudget {
                tenant: view.tenant.name.to_string(),
                spent_today: view.status.map_or(0.0, |status| status.usage.daily_cost),
                daily_budget: budget.value,
            })
        })
        .collect();
    report.recommendations.extend(cost::budget_advice(&budgets));
    Ok(Json(report))
}

fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response();
    }
    match state.store.list_pools().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {error}")).into_response(),
    }
}

/// A valid W3C `traceparent` header is given to the job as `TRACEPARENT` and returned; with
/// telemetry on, the job's trace continues it and the submission's span is returned instead.
async fn submit_job(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    body: Result<Json<SubmitJob>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut request = json_body(body)?;
    request.tenant = scope.tenant_named(request.tenant.as_deref())?;
    let allow_pending = request.allow_pending || state.allow_pending;
    let mut spec = request.into_spec()?;
    if !allow_pending {
        crate::runnable::refuse_never_runnable(&state.pools, &state.scheduler, &spec.requirements)?;
    }
    let (mut span, traceparent) = trace::submitted(
        &mut spec,
        headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
    );
    let job = state.jobs.submit(spec).await?;
    span.set("hodei.job_id", job.id.to_string());
    let mut response = (StatusCode::CREATED, Json(JobView::new(&job))).into_response();
    if let Some(value) = traceparent.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("traceparent", value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(crate) struct JobQuery {
    /// Comma-separated states.
    pub(crate) state: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) queue: Option<String>,
    pub(crate) limit: Option<usize>,
    /// An SLA class.
    pub(crate) sla: Option<String>,
}

pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<JobQuery>,
) -> Result<Json<JobList>, ApiError> {
    let mut filter = job_filter(
        query.state.as_deref().unwrap_or_default().split(','),
        scope.tenant_named(query.tenant.as_deref())?,
        query.queue,
        query.limit,
    )?;
    filter.sla_class = query
        .sla
        .filter(|class| !class.is_empty())
        .map(|class| class.parse())
        .transpose()?;
    let jobs = state.jobs.list(&filter).await?;
    Ok(Json(JobList {
        jobs: jobs.iter().map(JobView::new).collect(),
    }))
}

pub(crate) async fn get_job(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = JobId::new(id)?;
    scope.job(&state.jobs, &id).await?;
    let (job, waiting) = state.jobs.describe(&id).await?;
    let mut view = JobView::new(&job);
    view.waiting_reason = waiting;
    for attempt in state.store.job_usage(&job.id).await? {
        view.worker_seconds += attempt.worker_seconds;
        view.cost += attempt.cost;
    }
    Ok(Json(view))
}

pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = JobId::new(id)?;
    scope.job(&state.jobs, &id).await?;
    let job = state.jobs.cancel(id).await?;
    Ok(Json(JobView::new(&job)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    pub(crate) after: usize,
    #[serde(default)]
    pub(crate) follow: bool,
}

/// How long a followed log request waits for news before answering with nothing new.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most chunks one answer carries.
const LOG_PAGE: usize = 1000;

pub(crate) async fn job_logs(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<LogsView>, ApiError> {
    let id = JobId::new(id)?;
    scope.job(&state.jobs, &id).await?;
    let wait_until = query
        .follow
        .then(|| tokio::time::Instant::now() + FOLLOW_WAIT);
    let page = state
        .jobs
        .logs_page(&id, query.after, LOG_PAGE, wait_until)
        .await?;
    Ok(Json(LogsView {
        next: query.after + page.chunks.len(),
        chunks: page.chunks.into_iter().map(LogChunkView::from).collect(),
        state: page.job.state.to_string(),
        exit_code: page.job.exit_code,
        complete: page.complete,
    }))
}

pub(crate) async fn list_tenants(
    State(state): State<AppState>,
) -> Result<Json<TenantList>, ApiError> {
    Ok(Json(TenantList {
        tenants: state
            .tenants
            .list()
            .await?
            .iter()
            .map(TenantView::new)
            .collect(),
    }))
}

pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    scope.read_tenant(&name)?;
    let name = hodei_core::TenantName::new(name)?;
    Ok(Json(TenantView::new(&state.tenants.get(&name).await?)))
}

/// Creates or replaces a tenant with the settings in the body (the `[[tenant]]` fields;
/// `name` may be left out).
async fn set_tenant(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<crate::config::TenantSettings>, JsonRejection>,
) -> Result<Json<TenantView>, ApiError> {
    let mut settings = json_body(body)?;
    if settings.name.is_empty() {
        settings.name.clone_from(&name);
    }
    if settings.name != name {
        return Err(hodei_core::ValidationError::new(
            "name",
            format!("is {}, but the URL names tenant {name}", settings.name),
        )
        .into());
    }
    let tenant = state.tenants.set(settings.to_tenant()?).await?;
    Ok(Json(TenantView::new(
        &state.tenants.get(&tenant.name).await?,
    )))
}

async fn remove_tenant(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = hodei_core::TenantName::new(name)?;
    state.tenants.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
