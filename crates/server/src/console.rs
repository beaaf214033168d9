//! The web console: a sign-in page and a small single-page app at `/`, served from assets
//! embedded in the binary (`console/`), over a session-authorised JSON API under
//! `/console/api` that reuses the REST handlers.
//!
//! Why a static page polling JSON instead of server-rendered pages: the data already has a
//! JSON API, the live parts (job log, worker states) need a script anyway, and a page that
//! polls every 1.5 s needs no new dependency (no template engine, no SSE plumbing).
//!
//! Sessions live in memory (a restart signs everyone out): a random 256-bit id in an
//! `HttpOnly; SameSite=Strict` cookie, a lifetime of [`SESSION_LIFETIME`], and a per-session
//! CSRF token that every state-changing request carries (`x-csrf-token` header, or the
//! `csrf` form field for signing out). What a session may see and do is decided by
//! `hodei_core::console`. These paths are outside `/api/v1`, so the bearer-token check in
//! `serve.rs` lets them through and this module does its own; the job and tenant handlers
//! it calls narrow what they answer to the session's scope themselves (`scope.rs`), as they
//! do for a tenant token. The cookie is `Secure` when the server speaks TLS, and failed
//! sign-ins are limited per client address (`hodei_core::console::SignInFailures`: 429
//! with `Retry-After`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hodei_core::console::{
    self, CHART_WINDOW, ConsoleAction, JobRecord, JobScope, PoolSample, PreemptionEvent,
    SAMPLE_EVERY, SESSION_LIFETIME, SignInFailures, WorkerCounts, WorkersChart,
};
use hodei_core::credential::Principal;
use hodei_core::{JobId, TenantName};
use serde::{Deserialize, Serialize};

use crate::api::{JobList, JobView, PoolList, PoolView, PoolWorkers, TenantList, WorkerView};
use crate::error::{ApiError, Code};
use crate::http::{self, AppState, JobQuery, LogsQuery, WorkerQuery};
use crate::scope::Scope;
use crate::serve::RemoteAddr;
use hodei_modules::PoolManager;
use tokio_util::sync::CancellationToken;

const COOKIE: &str = "hodei_session";
const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions held at most; past it the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;

const APP_HTML: &str = include_str!("console/app.html");
const SIGN_IN_HTML: &str = include_str!("console/sign_in.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

#[derive(Debug, Clone)]
struct Session {
    principal: Principal,
    csrf: String,
    created: SystemTime,
}

/// Open sessions by id.
#[derive(Debug, Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a session for `principal`; returns its id.
    fn open(&self, principal: Principal, now: SystemTime) -> String {
        let id = random_id();
        let mut sessions = self.lock();
        sessions.retain(|_, s| !console::session_expired(s.created, now, SESSION_LIFETIME));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                principal,
                csrf: random_id(),
                created: now,
            },
        );
        id
    }

    /// The live session `id` names, if any (an expired one is closed).
    fn get(&self, id: &str, now: SystemTime) -> Option<Session> {
        let mut sessions = self.lock();
        let session = sessions.get(id)?;
        if console::session_expired(session.created, now, SESSION_LIFETIME) {
            sessions.remove(id);
            return None;
        }
        Some(session.clone())
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// 256 random bits from the OS (two v4 UUIDs' random parts), hex.
fn random_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn counts(workers: &PoolWorkers) -> WorkerCounts {
    WorkerCounts {
        idle: workers.idle,
        busy: workers.busy,
        starting: workers.starting,
        unhealthy: workers.unhealthy,
        leaving: workers.leaving,
    }
}

/// Each pool's workers by state over the last [`CHART_WINDOW`], sampled every
/// [`SAMPLE_EVERY`] by [`sample_pools`]. In memory: a restart starts it empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolHistory(Arc<Mutex<HashMap<String, VecDeque<PoolSample>>>>);

impl PoolHistory {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<PoolSample>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a sample of every pool in `pools`; forgets pools no longer there.
    fn record(&self, pools: &[PoolView], at_ms: u64) {
        let mut history = self.lock();
        history.retain(|name, _| pools.iter().any(|p| &p.name == name));
        for pool in pools {
            let sample = PoolSample {
                at_ms,
                counts: counts(&pool.workers),
            };
            console::record_sample(
                history.entry(pool.name.clone()).or_default(),
                sample,
                CHART_WINDOW,
            );
        }
    }

    /// The chart of `pool`: its samples, and `now` as the latest.
    fn chart(&self, pool: &PoolView, now_ms: u64) -> WorkersChart {
        let mut samples: Vec<PoolSample> = self
            .lock()
            .get(&pool.name)
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default();
        samples.push(PoolSample {
            at_ms: now_ms,
            counts: counts(&pool.workers),
        });
        console::workers_chart(&pool.name, &samples, now_ms, CHART_WINDOW)
    }
}

/// Samples every pool's workers by state until `cancel`.
pub(crate) async fn sample_pools(
    pools: PoolManager,
    history: PoolHistory,
    cancel: CancellationToken,
) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let views: Vec<PoolView> = pools.list().iter().map(PoolView::new).collect();
        history.record(&views, unix_ms(SystemTime::now()));
    }
}

/// Failed sign-ins by client address.
#[derive(Debug, Clone, Default)]
struct SignInLimits(Arc<Mutex<HashMap<IpAddr, SignInFailures>>>);

/// Addresses remembered at most; past it the expired ones are forgotten first, then all.
const MAX_LIMITED_ADDRESSES: usize = 100_000;

impl SignInLimits {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, SignInFailures>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long `address` must wait before it may try again, if it must.
    fn retry_after(&self, address: IpAddr, now: SystemTime) -> Option<std::time::Duration> {
        self.lock().get(&address)?.retry_after(now)
    }

    fn failed(&self, address: IpAddr, now: SystemTime) {
        let mut limits = self.lock();
        if limits.len() >= MAX_LIMITED_ADDRESSES {
            limits.retain(|_, record| !record.expired(now));
            if limits.len() >= MAX_LIMITED_ADDRESSES {
                limits.clear();
            }
        }
        let previous = limits.get(&address).copied();
        limits.insert(address, SignInFailures::failed(previous, now));
    }
}

#[derive(Clone)]
struct ConsoleState {
    app: AppState,
    sessions: Sessions,
    limits: SignInLimits,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState").finish_non_exhaustive()
    }
}

pub(crate) fn router<S>(app: AppState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let state = ConsoleState {
        app,
        sessions: Sessions::default(),
        limits: SignInLimits::default(),
    };
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(asset_js))
        .route("/console/app.css", get(asset_css))
        .route("/console/sign-in", post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/api/session", get(session_info))
        .route("/console/api/pools", get(pools))
        .route("/console/api/workers", get(workers))
        .route(
            "/console/api/workers/{id}/terminate",
            post(terminate_worker),
        )
        .route("/console/api/workers/{id}/drain", post(drain_worker))
        .route("/console/api/workers/{id}/undrain", post(undrain_worker))
        .route("/console/api/jobs", get(jobs))
        .route("/console/api/jobs/{id}", get(job))
        .route("/console/api/jobs/{id}/logs", get(job_logs))
        .route("/console/api/jobs/{id}/cancel", post(cancel_job))
        .route("/console/api/tenants", get(tenants))
        .with_state(state)
}

/// The value of cookie `name` among the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn current(state: &ConsoleState, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie_value(headers, COOKIE)?;
    let session = state.sessions.get(id, SystemTime::now())?;
    Some((id.to_owned(), session))
}

fn csrf_matches(session: &Session, presented: Option<&str>) -> bool {
    presented.is_some_and(|token| {
        constant_time_eq::constant_time_eq(token.as_bytes(), session.csrf.as_bytes())
    })
}

/// The session of a console API request, if it may do `action`; state-changing actions
/// also need the session's CSRF token in `x-csrf-token`.
fn authorize(
    state: &ConsoleState,
    headers: &HeaderMap,
    action: ConsoleAction,
) -> Result<Session, ApiError> {
    let (_, session) = current(state, headers).ok_or_else(|| {
        ApiError::new(
            Code::Unauthenticated,
            "no console session: sign in at / first",
        )
    })?;
    if !console::console_permits(session.principal.role, action) {
        tracing::warn!(role = %session.principal.role, ?action, "console refused an action");
        return Err(ApiError::new(
            Code::PermissionDenied,
            format!(
                "a {} session may not do this ({action:?})",
                session.principal.role
            ),
        ));
    }
    let changes = matches!(
        action,
        ConsoleAction::CancelJob | ConsoleAction::ManageWorker
    );
    if changes {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok());
        if !csrf_matches(&session, presented) {
            return Err(ApiError::new(
                Code::PermissionDenied,
                "missing or wrong CSRF token (x-csrf-token)",
            ));
        }
    }
    Ok(session)
}

/// Text safe inside HTML element content and attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Headers of every console page: no framing, no inline script, no referrer, no caching.
fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

fn sign_in_page(status: StatusCode, error: &str) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(
            r#"<p class="error" role="alert">{}</p>"#,
            escape_html(error)
        )
    };
    page(status, SIGN_IN_HTML.replace("{{error}}", &error))
}

async fn index(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    match current(&state, &headers) {
        None => sign_in_page(StatusCode::OK, ""),
        Some((_, session)) => {
            let principal = &session.principal;
            let tenant = principal
                .tenant
                .as_ref()
                .map(TenantName::as_str)
                .unwrap_or_default();
            let html = APP_HTML
                .replace("{{csrf}}", &escape_html(&session.csrf))
                .replace("{{role}}", &escape_html(principal.role.as_str()))
                .replace("{{tenant}}", &escape_html(tenant));
            page(StatusCode::OK, html)
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn asset_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn asset_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Debug, Default, Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

#[derive(Debug, Default, Deserialize)]
struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

fn session_cookie(id: &str, max_age_secs: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .ok()
}

fn see_other(cookie: Option<HeaderValue>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn sign_in(
    State(state): State<ConsoleState>,
    remote: Option<Extension<RemoteAddr>>,
    body: Bytes,
) -> Response {
    let address = remote.map(|Extension(RemoteAddr(addr))| addr.ip());
    let now = SystemTime::now();
    if let Some(wait) = address.and_then(|a| state.limits.retry_after(a, now)) {
        tracing::warn!(address = ?address, "console sign-in refused: too many failed attempts");
        let mut response = sign_in_page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "token: too many failed sign-ins from this address; try again in {} s",
                wait.as_secs()
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let failed = |response: Response| {
        if let Some(address) = address {
            state.limits.failed(address, now);
        }
        response
    };
    let Ok(form) = serde_urlencoded::from_bytes::<SignInForm>(&body) else {
        return failed(sign_in_page(
            StatusCode::BAD_REQUEST,
            "token: the form could not be read",
        ));
    };
    let token = form.token.trim();
    if token.is_empty() {
        return failed(sign_in_page(
            StatusCode::BAD_REQUEST,
            "token: enter a token",
        ));
    }
    let Some(principal) = state.app.credentials.authenticate(token) else {
        tracing::warn!("console sign-in with an invalid token");
        return failed(sign_in_page(
            StatusCode::UNAUTHORIZED,
            "token: not a valid token",
        ));
    };
    if !console::may_sign_in(principal.role) {
        return failed(sign_in_page(
            StatusCode::FORBIDDEN,
            &format!(
                "token: a {} credential cannot sign in to the console (admin or tenant only)",
                principal.role
            ),
        ));
    }
    tracing::info!(role = %principal.role, credential = ?principal.credential_id, "console sign-in");
    let id = state.sessions.open(principal, now);
    see_other(session_cookie(
        &id,
        SESSION_LIFETIME.as_secs(),
        state.app.tls,
    ))
}

async fn sign_out(State(state): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = serde_urlencoded::from_bytes::<SignOutForm>(&body).unwrap_or_default();
    if let Some((id, session)) = current(&state, &headers) {
        if !csrf_matches(&session, Some(&form.csrf)) {
            return ApiError::new(Code::PermissionDenied, "missing or wrong CSRF token (csrf)")
                .into_response();
        }
        state.sessions.close(&id);
    }
    see_other(session_cookie("", 0, state.app.tls))
}

#[derive(Debug, Serialize)]
struct SessionView {
    role: String,
    tenant: Option<String>,
    csrf: String,
}

async fn session_info(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let (_, session) = current(&state, &headers).ok_or_else(|| {
        ApiError::new(
            Code::Unauthenticated,
            "no console session: sign in at / first",
        )
    })?;
    Ok(Json(SessionView {
        role: session.principal.role.to_string(),
        tenant: session.principal.tenant.map(String::from),
        csrf: session.csrf,
    }))
}

/// `GET /console/api/pools[?chart=NAME]`: the API's pools, and the named pool's workers
/// over the last hour.
#[derive(Debug, Deserialize)]
struct PoolsQuery {
    chart: Option<String>,
}

#[derive(Debug, Serialize)]
struct ConsolePools {
    #[serde(flatten)]
    list: PoolList,
    chart: Option<WorkersChart>,
}

async fn pools(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<PoolsQuery>,
) -> Result<Json<ConsolePools>, ApiError> {
    authorize(&state, &headers, ConsoleAction::ViewFleet)?;
    let history = state.app.pool_history.clone();
    let Json(list) = http::list_pools(State(state.app)).await;
    let chart = query.chart.and_then(|name| {
        list.pools
            .iter()
            .find(|pool| pool.name == name)
            .map(|pool| history.chart(pool, unix_ms(SystemTime::now())))
    });
    Ok(Json(ConsolePools { list, chart }))
}

/// A worker as the API shows it, and how many jobs it ran.
#[derive(Debug, Serialize)]
struct ConsoleWorker {
    #[serde(flatten)]
    worker: WorkerView,
    /// Attempts it ran to their end since this server started.
    uses: u32,
}

#[derive(Debug, Serialize)]
struct ConsoleWorkers {
    workers: Vec<ConsoleWorker>,
}

async fn workers(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<WorkerQuery>,
) -> Result<Json<ConsoleWorkers>, ApiError> {
    authorize(&state, &headers, ConsoleAction::ViewFleet)?;
    let Json(list) = http::list_workers(State(state.app.clone()), Query(query)).await?;
    let ids = list
        .workers
        .iter()
        .map(|w| hodei_core::WorkerId::new(w.id.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let uses = state.app.jobs.worker_uses(ids).await?;
    Ok(Json(ConsoleWorkers {
        workers: list
            .workers
            .into_iter()
            .zip(uses)
            .map(|(worker, uses)| ConsoleWorker { worker, uses })
            .collect(),
    }))
}

async fn terminate_worker(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ConsoleAction::ManageWorker)?;
    Ok(http::terminate_worker(State(state.app), Path(id))
        .await?
        .into_response())
}

/// `POST /console/api/workers/{id}/drain`: the API's drain with its body (`{"then": "keep"}`
/// or empty for terminate afterwards).
async fn drain_worker(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ConsoleAction::ManageWorker)?;
    Ok(http::drain_worker(State(state.app), Path(id), body)
        .await?
        .into_response())
}

async fn undrain_worker(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ConsoleAction::ManageWorker)?;
    Ok(http::undrain_worker(State(state.app), Path(id))
        .await?
        .into_response())
}

/// `GET /console/api/jobs`: `GET /api/v1/jobs`'s filters plus `pool` (jobs that ran or run
/// on the pool's workers), within the session's scope.
#[derive(Debug, Deserialize)]
struct ConsoleJobQuery {
    state: Option<String>,
    tenant: Option<String>,
    queue: Option<String>,
    pool: Option<String>,
    limit: Option<usize>,
}

/// The tenant a list is narrowed to: a tenant session's own, whatever it asked for.
fn scoped_tenant(scope: &JobScope, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match scope {
        JobScope::All => Ok(asked.filter(|t| !t.is_empty())),
        JobScope::Tenant(own) => Ok(Some(own.to_string())),
        JobScope::Nothing => Err(ApiError::new(
            Code::PermissionDenied,
            "this session sees no jobs",
        )),
    }
}

async fn jobs(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleJobQuery>,
) -> Result<Json<JobList>, ApiError> {
    let session = authorize(&state, &headers, ConsoleAction::ViewJobs)?;
    let scope = console::job_scope(&session.principal);
    let tenant = scoped_tenant(&scope, query.tenant)?;
    let pool = query.pool.filter(|p| !p.is_empty());
    let Json(mut list) = http::list_jobs(
        State(state.app.clone()),
        Scope(scope.clone()),
        Query(JobQuery {
            state: query.state,
            tenant,
            queue: query.queue,
            limit: query.limit,
            sla: None,
        }),
    )
    .await?;
    if let Some(pool) = pool {
        let Json(workers) = http::list_workers(
            State(state.app),
            Query(WorkerQuery {
                pool: Some(pool),
                state: None,
                all: true,
            }),
        )
        .await?;
        let ids: std::collections::BTreeSet<String> =
            workers.workers.into_iter().map(|w| w.id).collect();
        list.jobs
            .retain(|job| job.worker_id.as_ref().is_some_and(|id| ids.contains(id)));
    }
    list.jobs.retain(|job| in_scope(&scope, &job.tenant));
    Ok(Json(list))
}

fn in_scope(scope: &JobScope, tenant: &str) -> bool {
    TenantName::new(tenant).is_ok_and(|tenant| scope.covers(&tenant))
}

/// A console job page: the job as `GET /api/v1/jobs/{id}` shows it, and its history.
#[derive(Debug, Serialize)]
struct ConsoleJob {
    #[serde(flatten)]
    job: JobView,
    history: Vec<console::HistoryEvent>,
}

async fn job(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ConsoleJob>, ApiError> {
    let session = authorize(&state, &headers, ConsoleAction::ViewJobs)?;
    let scope = Scope(console::job_scope(&session.principal));
    let Json(view) = http::get_job(State(state.app.clone()), scope, Path(id.clone())).await?;
    let job = state
        .app
        .jobs
        .get(&JobId::new(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {} not found", view.id)))?;
    let attempts = state.app.store.job_usage(&job.id).await?;
    let (transitions, transitions_dropped) = state.app.transitions.of(&job.id);
    let preemptions: Vec<PreemptionEvent> = job
        .preemptions
        .iter()
        .map(|p| {
            let victim = p.victim == job.id;
            PreemptionEvent {
                at_ms: unix_ms(p.at),
                victim,
                other: if victim { &p.beneficiary } else { &p.victim }.to_string(),
                worker: p.worker_id.to_string(),
                reason: p.reason.clone(),
            }
        })
        .collect();
    let state_name = job.state.to_string();
    let history = console::job_history(JobRecord {
        submitted_ms: unix_ms(job.submitted_at),
        started_ms: job.started_at.map(unix_ms),
        finished: job
            .finished_at
            .filter(|_| job.state.is_terminal())
            .map(|t| (unix_ms(t), state_name.as_str())),
        attempts: &attempts,
        transitions: &transitions,
        transitions_dropped,
        preemptions: &preemptions,
    });
    Ok(Json(ConsoleJob { job: view, history }))
}

#[derive(Debug, Deserialize)]
struct ConsoleLogsQuery {
    #[serde(default)]
    after: usize,
}

async fn job_logs(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ConsoleLogsQuery>,
) -> Result<Response, ApiError> {
    let session = authorize(&state, &headers, ConsoleAction::ViewJobs)?;
    let scope = Scope(console::job_scope(&session.principal));
    // The page polls; a held request would only delay the next poll.
    let query = LogsQuery {
        after: query.after,
        follow: false,
    };
    Ok(
        http::job_logs(State(state.app), scope, Path(id), Query(query))
            .await?
            .into_response(),
    )
}

/// Cancels a job in the session's scope (a tenant's own; another tenant's is not found).
async fn cancel_job(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let session = authorize(&state, &headers, ConsoleAction::CancelJob)?;
    let scope = Scope(console::job_scope(&session.principal));
    Ok(http::cancel_job(State(state.app), scope, Path(id))
        .await?
        .into_response())
}

/// `GET /console/api/tenants`: every tenant for an admin, its own for a tenant session.
async fn tenants(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
) -> Result<Json<TenantList>, ApiError> {
    let session = authorize(&state, &headers, ConsoleAction::ViewTenants)?;
    match console::job_scope(&session.principal) {
        JobScope::All => http::list_tenants(State(state.app)).await,
        JobScope::Tenant(own) => {
            let scope = Scope(JobScope::Tenant(own.clone()));
            let Json(view) =
                http::get_tenant(State(state.app), scope, Path(own.to_string())).await?;
            Ok(Json(TenantList {
                tenants: vec![view],
            }))
        }
        JobScope::Nothing => Err(ApiError::new(
            Code::PermissionDenied,
            "this session sees no tenant",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::credential::Role;
    use std::time::Duration;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie_value(&headers, COOKIE), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; hodei_session_x=no; hodei_session=abc"),
        );
        assert_eq!(cookie_value(&headers, COOKIE), Some("abc"));
        let mut two = HeaderMap::new();
        two.append(header::COOKIE, HeaderValue::from_static("x=1"));
        two.append(
            header::COOKIE,
            HeaderValue::from_static("hodei_session=def"),
        );
        assert_eq!(cookie_value(&two, COOKIE), Some("def"));
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let sessions = Sessions::default();
        let t0 = SystemTime::now();
        let principal = Principal::configured_admin();
        let a = sessions.open(principal.clone(), t0);
        let b = sessions.open(principal, t0);
        assert_ne!(a, b, "ids are random");
        assert_eq!(a.len(), 64);
        let session = sessions.get(&a, t0).unwrap();
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(session.csrf, a);
        assert!(sessions.get("nope", t0).is_none());
        assert!(sessions.get(&a, t0 + SESSION_LIFETIME).is_none(), "expired");
        assert!(sessions.get(&a, t0).is_none(), "an expired session is gone");
        sessions.close(&b);
        assert!(sessions.get(&b, t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let session = Session {
            principal: Principal::configured_admin(),
            csrf: "abc".into(),
            created: SystemTime::now(),
        };
        assert!(csrf_matches(&session, Some("abc")));
        assert!(!csrf_matches(&session, Some("abd")));
        assert!(!csrf_matches(&session, Some("")));
        assert!(!csrf_matches(&session, None));
    }

    #[test]
    fn a_tenant_list_is_its_own_whatever_it_asks() {
        let team = TenantName::new("team").unwrap();
        let scope = JobScope::Tenant(team);
        assert_eq!(
            scoped_tenant(&scope, Some("other".into())).unwrap(),
            Some("team".into())
        );
        assert_eq!(scoped_tenant(&scope, None).unwrap(), Some("team".into()));
        assert_eq!(
            scoped_tenant(&JobScope::All, Some("other".into())).unwrap(),
            Some("other".into())
        );
        assert_eq!(
            scoped_tenant(&JobScope::All, Some(String::new())).unwrap(),
            None
        );
        assert!(scoped_tenant(&JobScope::Nothing, None).is_err());
        assert!(in_scope(&scope_of(Role::Admin), "anyone"));
    }

    fn scope_of(role: Role) -> JobScope {
        console::job_scope(&Principal {
            credential_id: None,
            role,
            worker_id: None,
            tenant: None,
        })
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
