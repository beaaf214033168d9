//! Replicas on one PostgreSQL database: the leader lease (decided by `hodei_core::lease`),
//! the follower's small server, and the replica's life (follow, lead, step down, follow).
//!
//! A replica starts as a follower: it serves `GET /api/v1/cluster`, job reads from the store,
//! `/healthz`, and refuses everything else (writes, agent sessions, gRPC) with `UNAVAILABLE`
//! naming the leader (HTTP 503 with the leader's URL in [`LEADER_HEADER`]), so clients and
//! agents that know several URLs go there. When the lease is free it takes it with the next
//! epoch and starts the whole server ([`crate::Server`]) on a store fenced with that epoch:
//! the dispatcher recovers from the store as after a restart, and runs the pool manager and
//! the reconciler. It renews every `renew_interval`; when it cannot (the database is gone, or
//! another epoch holds the lease) for `lease_ttl - step_down_margin` by its own clock, it
//! stops the dispatcher and everything else, and follows again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hodei_core::JobId;
use hodei_core::lease::{self, Decision, LeaderClock, Lease, Member as MemberRow};
use hodei_modules::{Credentials, JobError};
use hodei_ports::Store;
use hodei_store::PostgresStore;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{ClusterStatus, JobList, JobView, MemberView, job_filter};
use crate::config::ClusterSection;
use crate::error::{ApiError, Code};
use crate::scope::Scope;
use crate::{Error, ServerConfig, io_error};

/// Connections of the lease loop (a follower's reads and the leader's renewals).
const LEASE_CONNECTIONS: u32 = 2;

/// How long after a lease's expiry (database clock) a follower looks at it again.
const EXPIRY_SLACK: Duration = Duration::from_millis(20);

/// How long a stopping leader goes on refusing requests as a follower once it has handed
/// over: a follower looks at the released lease within `renew_interval` (1 s by default).
const LAME_DUCK: Duration = Duration::from_secs(2);

/// How long a stopping leader tries to give its lease up.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

/// Every `renew_interval` for the replica's whole life: heartbeats its row in the members
/// table and keeps the listing in `view` (each attempt bounded, so that a database out of
/// reach never stops the next).
async fn heartbeat(store: PostgresStore, view: ClusterView, me: Member, timing: ClusterSection) {
    let forget = millis(timing.lease_ttl).saturating_mul(lease::FORGET_LEASES);
    let mut interval = tokio::time::interval(timing.renew_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match tokio::time::timeout(
            timing.renew_interval,
            store.heartbeat_member(&me.id, &me.url, forget),
        )
        .await
        {
            Ok(Ok((members, now_ms))) => view.set_members(members, now_ms),
            Ok(Err(error)) => tracing::debug!(%error, "cannot heartbeat the members table"),
            Err(_) => tracing::debug!("the members table did not answer in time"),
        }
    }
}

/// The one lease replicas compete for.
pub(crate) const LEASE_NAME: &str = "leader";

/// The response header naming the leader's URL on a follower's refusal.
pub const LEADER_HEADER: &str = "x-hodei-leader";

/// The response header marking a follower's refusal (with or without a known leader).
pub const FOLLOWER_HEADER: &str = "x-hodei-follower";

/// What this replica knows of the cluster; shared by its API and its lease loop.
#[derive(Debug, Clone)]
pub(crate) struct ClusterView(Arc<Mutex<ViewState>>);

#[derive(Debug)]
struct ViewState {
    replicas: bool,
    id: String,
    url: String,
    leader: Option<Lease>,
    /// The members table as last read (replicas), with the store's clock then, and how long
    /// a member may go unseen and stay listed.
    members: Vec<MemberRow>,
    members_read_ms: u64,
    member_window_ms: u64,
}

impl ClusterView {
    /// The embedded store: this server leads alone, epoch 1.
    pub(crate) fn single(url: &str) -> Self {
        Self(Arc::new(Mutex::new(ViewState {
            replicas: false,
            id: "single".into(),
            url: url.to_owned(),
            leader: Some(Lease {
                holder: "single".into(),
                holder_url: url.to_owned(),
                epoch: 1,
                expires_ms: u64::MAX,
            }),
            members: Vec::new(),
            members_read_ms: 0,
            member_window_ms: 0,
        })))
    }

    fn replica(id: &str, url: &str, member_window: Duration) -> Self {
        Self(Arc::new(Mutex::new(ViewState {
            replicas: true,
            id: id.to_owned(),
            url: url.to_owned(),
            leader: None,
            members: Vec::new(),
            members_read_ms: 0,
            member_window_ms: millis(member_window),
        })))
    }

    fn set_members(&self, members: Vec<MemberRow>, now_ms: u64) {
        let mut state = self.lock();
        state.members = members;
        state.members_read_ms = now_ms;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_leader(&self, leader: Option<Lease>) {
        self.lock().leader = leader;
    }

    /// The leader's URL, if this replica knows one.
    pub(crate) fn leader_url(&self) -> Option<String> {
        self.lock().leader.as_ref().map(|l| l.holder_url.clone())
    }

    pub(crate) fn status(&self) -> ClusterStatus {
        let state = self.lock();
        let mut members = Vec::new();
        if let Some(leader) = &state.leader {
            members.push(MemberView {
                id: leader.holder.clone(),
                url: leader.holder_url.clone(),
                role: "leader".into(),
            });
        }
        if state.leader.as_ref().is_none_or(|l| l.holder != state.id) {
            members.push(MemberView {
                id: state.id.clone(),
                url: state.url.clone(),
                role: "follower".into(),
            });
        }
        // Every other replica that heartbeats (leader first, then by id).
        for member in lease::live_members(
            &state.members,
            state.members_read_ms,
            state.member_window_ms,
        ) {
            if members.iter().all(|listed| listed.id != member.id) {
                members.push(MemberView {
                    id: member.id,
                    url: member.url,
                    role: "follower".into(),
                });
            }
        }
        ClusterStatus {
            mode: if state.replicas { "replicas" } else { "single" }.into(),
            me: state.url.clone(),
            leader: state.leader.as_ref().map(|l| l.holder_url.clone()),
            epoch: state.leader.as_ref().map(|l| l.epoch),
            members,
        }
    }
}

/// `GET /api/v1/cluster`, on leaders and followers alike.
pub(crate) async fn cluster_status(State(view): State<ClusterView>) -> Json<ClusterStatus> {
    Json(view.status())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One look at the lease: what to do, and the row it was decided on.
async fn look(
    store: &PostgresStore,
    id: &str,
    leading: Option<u64>,
) -> Result<(Decision, Option<Lease>, u64), hodei_ports::store::Error> {
    let (row, now_ms) = store.read_lease(LEASE_NAME).await?;
    Ok((
        lease::decide(row.as_ref(), now_ms, id, leading),
        row,
        now_ms,
    ))
}

/// Follows until this replica takes the lease; returns its epoch and when the winning write
/// was sent (the start of its lease by its own clock).
async fn campaign(
    store: &PostgresStore,
    view: &ClusterView,
    me: &Member,
    timing: &ClusterSection,
) -> (u64, Instant) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = timing.renew_interval;
        let sent = Instant::now();
        // Bounded: a connection that went silent (the database unreachable, packets dropped)
        // must not keep this replica from looking again once it answers.
        let looked = match tokio::time::timeout(timing.lease_ttl, look(store, &me.id, None)).await {
            Ok(looked) => looked,
            Err(_) => {
                tracing::warn!("the leader lease could not be read in time");
                continue;
            }
        };
        match looked {
            Ok((Decision::Acquire { epoch }, row, now_ms)) => {
                let lease = Lease {
                    holder: me.id.clone(),
                    holder_url: me.url.clone(),
                    epoch,
                    expires_ms: now_ms.saturating_add(millis(timing.lease_ttl)),
                };
                let written = tokio::time::timeout(
                    timing.lease_ttl,
                    store.write_lease(LEASE_NAME, row.as_ref(), &lease),
                )
                .await;
                match written {
                    Ok(Ok(true)) => {
                        view.set_leader(Some(lease));
                        return (epoch, sent);
                    }
                    Ok(Ok(false)) => tracing::debug!("another replica took the lease first"),
                    Ok(Err(error)) => tracing::warn!(%error, "cannot write the leader lease"),
                    Err(_) => tracing::warn!("the leader lease could not be written in time"),
                }
            }
            Ok((Decision::Follow { leader }, _, now_ms)) => {
                // Look again just after the lease would run out, if that comes first: a
                // dead leader is replaced within its lease, not a renewal interval later.
                let left = Duration::from_millis(leader.expires_ms.saturating_sub(now_ms));
                wait = wait.min(left + EXPIRY_SLACK);
                if view.leader_url().as_deref() != Some(leader.holder_url.as_str()) {
                    tracing::info!(leader = %leader.holder_url, epoch = leader.epoch, "following");
                }
                view.set_leader(Some(leader));
            }
            Ok((decision, _, _)) => tracing::debug!(?decision, "not leading, nothing to do"),
            Err(error) => tracing::warn!(%error, "cannot read the leader lease"),
        }
    }
}

/// Renews the lease until it is lost; returns why. Each attempt is cut short at the moment
/// the leader must step down by its own clock.
async fn keep_lease(
    store: &PostgresStore,
    view: &ClusterView,
    me: &Member,
    epoch: u64,
    acquired_at: Instant,
    timing: &ClusterSection,
) -> String {
    let origin = acquired_at;
    let mut clock = LeaderClock {
        ttl_ms: millis(timing.lease_ttl),
        margin_ms: millis(timing.step_down_margin),
        renewed_at_ms: 0,
    };
    let step_down_at = |clock: &LeaderClock| {
        origin + Duration::from_millis(clock.renewed_at_ms + clock.ttl_ms - clock.margin_ms)
    };
    loop {
        let next = Instant::now() + timing.renew_interval;
        tokio::time::sleep_until(next.min(step_down_at(&clock))).await;
        if clock.must_step_down(millis(Instant::now() - origin)) {
            // Who leads next is not known yet: pointing clients at ourselves would send them
            // round in a circle.
            view.set_leader(None);
            return "could not renew the lease in time".into();
        }
        let sent = Instant::now();
        let attempt = async {
            let (decision, row, now_ms) = look(store, &me.id, Some(epoch)).await?;
            match decision {
                Decision::Renew { epoch } => {
                    let lease = Lease {
                        holder: me.id.clone(),
                        holder_url: me.url.clone(),
                        epoch,
                        expires_ms: now_ms.saturating_add(millis(timing.lease_ttl)),
                    };
                    let renewed = store.write_lease(LEASE_NAME, row.as_ref(), &lease).await?;
                    if renewed {
                        view.set_leader(Some(lease));
                    }
                    Ok(Ok(renewed))
                }
                Decision::StepDown { leader } => Ok(Err(leader)),
                other => Ok(Ok(matches!(other, Decision::Renew { .. }))),
            }
        };
        match tokio::time::timeout_at(step_down_at(&clock), attempt).await {
            Ok(Ok(Ok(true))) => clock.renewed_at_ms = millis(sent - origin),
            Ok(Ok(Ok(false))) => tracing::warn!("lease renewal lost a race, trying again"),
            Ok(Ok(Err(leader))) => {
                view.set_leader(leader.clone());
                return match leader {
                    Some(leader) => format!(
                        "{} took the lease with epoch {}",
                        leader.holder_url, leader.epoch
                    ),
                    None => "the lease ran out".into(),
                };
            }
            Ok(Err(error)) => {
                let error: hodei_ports::store::Error = error;
                tracing::warn!(%error, "cannot renew the leader lease");
            }
            Err(_) => tracing::warn!("lease renewal did not answer in time"),
        }
    }
}

/// Gives the lease up (a clean shutdown): a follower takes over at its next look instead of
/// waiting for the lease to run out.
async fn release(store: &PostgresStore, me: &Member, epoch: u64) {
    // Bounded: a database out of reach would hold the shutdown open, and the lease runs out
    // on its own anyway.
    if tokio::time::timeout(RELEASE_LIMIT, release_now(store, me, epoch))
        .await
        .is_err()
    {
        tracing::warn!("cannot release the leader lease in time; it runs out on its own");
    }
}

async fn release_now(store: &PostgresStore, me: &Member, epoch: u64) {
    let Ok((Some(row), _)) = store.read_lease(LEASE_NAME).await else {
        return;
    };
    if row.holder != me.id || row.epoch != epoch {
        return;
    }
    let released = Lease {
        expires_ms: 0,
        ..row.clone()
    };
    match store.write_lease(LEASE_NAME, Some(&row), &released).await {
        Ok(true) => tracing::info!(epoch, "released the leader lease"),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot release the leader lease; it runs out on its own")
        }
    }
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    url: String,
}

/// The follower's state.
#[derive(Clone)]
struct Follower {
    store: Arc<dyn Store>,
    view: ClusterView,
}

impl axum::extract::FromRef<Follower> for ClusterView {
    fn from_ref(follower: &Follower) -> Self {
        follower.view.clone()
    }
}

/// The refusal of a follower: `UNAVAILABLE` naming the leader.
fn not_leader(view: &ClusterView) -> (String, Option<String>) {
    let leader = view.leader_url();
    let message = match &leader {
        Some(url) => format!("this server is a follower; the leader is {url}"),
        None => "this server is a follower and no leader is known yet; try again".to_owned(),
    };
    (message, leader)
}

fn refuse_http(view: &ClusterView) -> Response {
    let (message, leader) = not_leader(view);
    let mut response = ApiError::new(Code::Unavailable, message).into_response();
    response
        .headers_mut()
        .insert(FOLLOWER_HEADER, HeaderValue::from_static("true"));
    if let Some(value) = leader.and_then(|url| HeaderValue::from_str(&url).ok()) {
        response.headers_mut().insert(LEADER_HEADER, value);
    }
    response
}

async fn follower_get_job(
    State(state): State<Follower>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = JobId::new(id)?;
    let job = match state.store.get_job(&id).await? {
        Some(job) if scope.0.covers(&job.spec.tenant) => job,
        _ => return Err(JobError::NotFound(id).into()),
    };
    let mut view = JobView::new(&job);
    for attempt in state.store.job_usage(&job.id).await? {
        view.worker_seconds += attempt.worker_seconds;
        view.cost += attempt.cost;
    }
    Ok(Json(view))
}

#[derive(Debug, serde::Deserialize)]
struct JobQuery {
    state: Option<String>,
    tenant: Option<String>,
    queue: Option<String>,
    limit: Option<usize>,
}

async fn follower_list_jobs(
    State(state): State<Follower>,
    scope: Scope,
    Query(query): Query<JobQuery>,
) -> Result<Json<JobList>, ApiError> {
    let filter = job_filter(
        query.state.as_deref().unwrap_or_default().split(','),
        scope.tenant_named(query.tenant.as_deref())?,
        query.queue,
        query.limit,
    )?;
    let jobs = state.store.list_jobs(&filter).await?;
    Ok(Json(JobList {
        jobs: jobs.iter().map(JobView::new).collect(),
    }))
}

fn follower_app(
    store: Arc<dyn Store>,
    view: ClusterView,
    credentials: Credentials,
) -> crate::serve::App {
    let state = Follower {
        store,
        view: view.clone(),
    };
    let refusing = view.clone();
    let api = Router::new()
        .route("/cluster", get(cluster_status))
        .route("/jobs", get(follower_list_jobs))
        .route("/jobs/{id}", get(follower_get_job))
        .fallback(move || {
            let view = refusing.clone();
            async move { refuse_http(&view) }
        });
    let not_ready = view.clone();
    let http = Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let view = not_ready.clone();
                async move {
                    let (message, _) = not_leader(&view);
                    (StatusCode::SERVICE_UNAVAILABLE, message)
                }
            }),
        )
        .fallback({
            let view = view.clone();
            move || {
                let view = view.clone();
                async move { refuse_http(&view) }
            }
        })
        .with_state(state);
    // Every gRPC call (agent sessions included) and every write is refused before any
    // credential check: the agent or client moves on to the leader.
    let refusing = view;
    let refuse: crate::serve::Refuse = Arc::new(move |grpc| {
        if grpc {
            let (message, _) = not_leader(&refusing);
            tonic::Status::unavailable(message).into_http::<axum::body::Body>()
        } else {
            refuse_http(&refusing)
        }
    });
    crate::serve::App {
        // Never reached: `refuse_writes` answers every gRPC call.
        grpc: tonic::service::Routes::from(Router::new()),
        http,
        credentials,
        refuse_writes: Some(refuse),
    }
}

/// The life of a replica on PostgreSQL: follow, lead when the lease is free, step down when
/// it is lost, until `shutdown`.
pub(crate) async fn run_replica(
    config: ServerConfig,
    listener: TcpListener,
    postgres_url: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    crate::prepare_data_dir(&config.data_dir)?;
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(io_error("cannot read the listen address"))?;
    let url = crate::advertise_url(&config, addr);
    let token = crate::load_or_create_token(&config)?;
    // The data, and (on connections of its own) the lease. A transaction left open and
    // silent longer than the leader may go without renewing is rolled back by the database:
    // the leader is stalled or cut off, and its share lock on the lease row must not hold
    // the next leader back.
    let stalled = config
        .cluster
        .lease_ttl
        .saturating_sub(config.cluster.step_down_margin);
    let base = PostgresStore::connect_replica(
        postgres_url,
        hodei_store::POSTGRES_MAX_CONNECTIONS,
        Some(stalled),
    )
    .await?;
    let leases =
        PostgresStore::connect_replica(postgres_url, LEASE_CONNECTIONS, Some(stalled)).await?;
    let me = Member {
        id: format!(
            "{}-{}",
            addr.port(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        url: url.clone(),
    };
    let view = ClusterView::replica(
        &me.id,
        &url,
        config
            .cluster
            .lease_ttl
            .saturating_mul(u32::try_from(lease::MEMBER_LEASES).unwrap_or(u32::MAX)),
    );
    // Aborted when this function returns, however it does.
    let _membership = AbortOnDrop(tokio::spawn(heartbeat(
        base.clone(),
        view.clone(),
        me.clone(),
        config.cluster.clone(),
    )));
    let listener = listener
        .into_std()
        .map_err(io_error("cannot take the listener"))?;
    let dup = || {
        listener
            .try_clone()
            .and_then(TcpListener::from_std)
            .map_err(io_error("cannot share the listener"))
    };
    tracing::info!(%addr, %url, member = %me.id, "hodei replica listening, following until it leads");
    tokio::pin!(shutdown);
    let mut known_credentials: Option<Credentials> = None;
    loop {
        // Follow. After a step-down the database may be out of reach (the very reason for
        // it): serve the credentials known so far rather than wait, so that clients and
        // agents are pointed on at once instead of hanging on an address that does not answer.
        let store: Arc<dyn Store> = Arc::new(base.clone());
        let credentials = match known_credentials.take() {
            None => Credentials::load(store.clone(), token.clone()).await?,
            Some(known) => match tokio::time::timeout(
                config.cluster.renew_interval,
                Credentials::load(store.clone(), token.clone()),
            )
            .await
            {
                Ok(Ok(loaded)) => loaded,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot reload the credentials, following with those known");
                    known
                }
                Err(_) => {
                    tracing::warn!(
                        "the credentials could not be reloaded in time, following with those known"
                    );
                    known
                }
            },
        };
        known_credentials = Some(credentials.clone());
        let cancel = CancellationToken::new();
        let max_connections =
            crate::connection_limit(config.connections.max, crate::raise_open_file_limit());
        let follower = tokio::spawn(crate::serve::serve(
            dup()?,
            follower_app(store, view.clone(), credentials),
            crate::tls::acceptor(&config.tls)?,
            crate::limits(&config, max_connections),
            cancel.clone(),
        ));
        let won = tokio::select! {
            won = campaign(&leases, &view, &me, &config.cluster) => Some(won),
            () = &mut shutdown => None,
        };
        cancel.cancel();
        let _ = follower.await;
        let Some((epoch, acquired_at)) = won else {
            return Ok(());
        };
        // Lead.
        tracing::info!(epoch, "took the leader lease, starting the dispatcher");
        let lost = CancellationToken::new();
        let keeper = {
            let (leases, view, me, timing, lost) = (
                leases.clone(),
                view.clone(),
                me.clone(),
                config.cluster.clone(),
                lost.clone(),
            );
            tokio::spawn(async move {
                let reason = keep_lease(&leases, &view, &me, epoch, acquired_at, &timing).await;
                lost.cancel();
                reason
            })
        };
        let leading = crate::Leading {
            store: Arc::new(base.fenced(LEASE_NAME, epoch)),
            cluster: view.clone(),
        };
        let started = tokio::select! {
            started = crate::Server::start_leading(config.clone(), dup()?, leading) => started,
            () = lost.cancelled() => {
                let reason = keeper.await.unwrap_or_default();
                tracing::error!(%reason, epoch, "lost the leader lease while starting, following again");
                continue;
            }
        };
        let server = match started {
            Ok(server) => server,
            Err(error) => {
                keeper.abort();
                release(&leases, &me, epoch).await;
                return Err(error);
            }
        };
        tokio::select! {
            () = lost.cancelled() => {
                let reason = keeper.await.unwrap_or_default();
                tracing::error!(%reason, epoch, "lost the leader lease, stepping down");
                server.step_down().await;
                tracing::info!(epoch, "stepped down, following again");
            }
            () = &mut shutdown => {
                // A replica that stops hands over: it stops dispatching, then gives the lease
                // up so that a follower leads at its next look. Workers are not terminated
                // (`[shutdown] terminate_workers` is for a single server): the next leader
                // goes on with them, and agents reconnect to it.
                tracing::info!(epoch, "shutting down, handing the lead over");
                server.step_down().await;
                keeper.abort();
                release(&leases, &me, epoch).await;
                view.set_leader(None);
                let Some(credentials) = known_credentials.clone() else {
                    return Ok(());
                };
                // Lame duck: while the next leader takes over, requests that reach this
                // address (queued while stepping down, or sent since) are refused as by a
                // follower, which clients retry elsewhere, rather than reset when the
                // process exits, which they cannot tell from a request lost mid-way.
                let cancel = CancellationToken::new();
                let lame_duck = tokio::spawn(crate::serve::serve(
                    dup()?,
                    follower_app(Arc::new(base.clone()), view.clone(), credentials),
                    crate::tls::acceptor(&config.tls)?,
                    crate::limits(&config, max_connections),
                    cancel.clone(),
                ));
                tokio::time::sleep(LAME_DUCK).await;
                cancel.cancel();
                let _ = lame_duck.await;
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
}
