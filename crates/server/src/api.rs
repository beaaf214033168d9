//! JSON types of the REST API (`/api/v1`). The CLI decodes the same types. Conversions from
//! domain types live here, at the edge; `hodei-core` never sees these.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hodei_core::JobState;
use hodei_core::health::Liveness;
use hodei_core::sla::{self, SlaClock};
use hodei_core::{
    Command, Job, JobSpec, PoolSpec, Priority, QueueName, Requirements, TenantName,
    ValidationError, Worker, WorkerCapabilities,
};
use hodei_modules::{PoolStatus, RegisteredWorker};
use hodei_ports::{JobFilter, LogChunk, WorkerRecord};
use serde::{Deserialize, Serialize};

/// A worker as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: String,
    pub pool: Option<String>,
    pub provider: String,
    pub worker_type: String,
    pub state: String,
    /// Whether the scheduler holds a registration for the worker.
    pub registered: bool,
    /// Whether the worker's agent has its session with this server open.
    #[serde(default)]
    pub connected: bool,
    /// When the agent was last heard from (RFC 3339), if ever.
    #[serde(default)]
    pub last_seen: Option<String>,
    /// The one-minute load average of the worker's machine at its last heartbeat.
    #[serde(default)]
    pub load_average: Option<f64>,
    /// Memory used on the worker's machine at its last heartbeat, MiB.
    #[serde(default)]
    pub memory_used_mb: Option<u64>,
    pub capabilities: WorkerCapabilities,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// RFC 3339.
    pub provisioned_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

fn unix_ms_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl WorkerView {
    /// A recorded worker, with what the scheduler registry says of it (if it is in this
    /// server's registry).
    pub fn new(record: &WorkerRecord, registration: Option<&RegisteredWorker>) -> Self {
        let mut view = Self::from_worker(&record.worker, record.state.as_str(), record.updated_at);
        view.registered = record.registered || registration.is_some();
        view.apply(registration);
        view
    }

    /// A worker only the scheduler knows: an agent started by hand, or one registered by
    /// another server's worker management.
    pub fn registered_only(entry: &RegisteredWorker) -> Self {
        let state = match entry.liveness {
            Liveness::Healthy => "idle",
            Liveness::Unhealthy | Liveness::Gone => "unhealthy",
        };
        let mut view = Self::from_worker(&entry.worker, state, entry.registered_at);
        view.registered = true;
        view.apply(Some(entry));
        view
    }

    fn apply(&mut self, registration: Option<&RegisteredWorker>) {
        if let Some(entry) = registration {
            self.connected = entry.connected;
            self.last_seen = entry.last_seen.map(rfc3339);
            self.load_average = entry.usage.map(|u| u.load_average);
            self.memory_used_mb = entry.usage.map(|u| u.memory_used_mb);
        }
    }

    fn from_worker(worker: &Worker, state: &str, updated_at: SystemTime) -> Self {
        Self {
            id: worker.id.to_string(),
            pool: worker.metadata.pool.clone(),
            provider: worker.metadata.provider.to_string(),
            worker_type: worker.metadata.worker_type.to_string(),
            state: state.to_owned(),
            registered: false,
            connected: false,
            last_seen: None,
            load_average: None,
            memory_used_mb: None,
            capabilities: worker.capabilities.clone(),
            namespace: worker.metadata.namespace.clone(),
            labels: worker.metadata.labels.clone(),
            tags: worker.metadata.tags.clone(),
            provisioned_at: rfc3339(worker.metadata.provision_timestamp),
            updated_at: rfc3339(updated_at),
        }
    }
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

/// A pool as `GET /api/v1/pools` shows it: its definition, its workers by state, what the
/// autoscaler wants and why, and what it has cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub provider: String,
    pub kind: String,
    pub min: u32,
    pub max: u32,
    /// Workers the autoscaler wants now.
    pub desired: u32,
    pub workers: PoolWorkers,
    /// Worker-seconds held since the server started, and their price.
    pub worker_seconds: f64,
    pub cost: f64,
    /// Removed and draining its last workers.
    pub removing: bool,
    /// Recent decisions, newest first.
    pub decisions: Vec<DecisionView>,
    pub spec: PoolSpec,
}

/// A pool's workers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolWorkers {
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    pub unhealthy: u32,
    pub leaving: u32,
}

/// One autoscaler decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub at: String,
    /// A hold repeated over several passes is one decision: when it was last made, and
    /// how many times.
    #[serde(default)]
    pub last_at: String,
    #[serde(default = "one")]
    pub repeats: u32,
    /// `up`, `down` or `hold`.
    pub action: String,
    pub count: u32,
    pub desired: u32,
    pub supply: u32,
    pub reason: String,
}

fn one() -> u32 {
    1
}

impl PoolView {
    pub fn new(status: &PoolStatus) -> Self {
        let spec = &status.spec;
        let counts = status.counts;
        Self {
            name: spec.name.clone(),
            provider: spec.provider.to_string(),
            kind: spec.kind.to_string(),
            min: spec.min_workers(),
            max: spec.max_workers(),
            desired: status.desired,
            workers: PoolWorkers {
                idle: counts.idle,
                busy: counts.busy,
                starting: counts.starting,
                unhealthy: counts.unhealthy,
                leaving: counts.leaving,
            },
            worker_seconds: status.worker_seconds,
            cost: status.cost,
            removing: status.removing,
            decisions: status
                .decisions
                .iter()
                .map(|d| DecisionView {
                    at: rfc3339(d.at),
                    last_at: rfc3339(d.last_at),
                    repeats: d.repeats,
                    action: d.action.to_owned(),
                    count: d.count,
                    desired: d.desired,
                    supply: d.supply,
                    reason: d.reason.clone(),
                })
                .collect(),
            spec: spec.clone(),
        }
    }
}

/// `GET /api/v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// `POST /api/v1/pools/{name}/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalePool {
    /// A static pool's size, or a dynamic pool's minimum.
    pub workers: u32,
}

/// Every error response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The gRPC status code name, the same in both APIs: `INVALID_ARGUMENT`, `NOT_FOUND`...
    pub code: String,
    pub message: String,
    /// The offending field, for `INVALID_ARGUMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /api/v1/jobs`: what to run. Exactly one of `command` (argv, no shell) and `script`
/// (`/bin/sh -c`). Every other field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitJob {
    pub command: Vec<String>,
    pub script: Option<String>,
    pub tenant: Option<String>,
    pub queue: Option<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub requirements: Requirements,
    pub priority: i32,
    /// Seconds one attempt may run; absent means no limit.
    pub timeout_secs: Option<i64>,
    pub max_retries: u32,
    /// critical, high, medium (the default), low or best_effort.
    pub sla_class: Option<String>,
    /// Never preempt this job for a more urgent one.
    pub no_preempt: bool,
    /// Queue the job even if no pool and no connected worker could run it now (an unknown
    /// pool, labels nobody has), for a worker yet to come; refused otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_pending: bool,
}

impl SubmitJob {
    /// The domain spec, or the first invalid field.
    pub fn into_spec(self) -> Result<JobSpec, ValidationError> {
        let command = match (self.command.is_empty(), self.script) {
            (false, None) => Command::Argv(self.command),
            (true, Some(script)) => Command::Script(script),
            (true, None) => {
                return Err(ValidationError::new(
                    "command",
                    "is empty: give a command (argv) or a script",
                ));
            }
            (false, Some(_)) => {
                return Err(ValidationError::new(
                    "command",
                    "give either a command (argv) or a script, not both",
                ));
            }
        };
        let timeout = match self.timeout_secs {
            None => None,
            Some(secs) if secs <= 0 => {
                return Err(ValidationError::new(
                    "timeout",
                    format!("is {secs} seconds, must be more than zero"),
                ));
            }
            Some(secs) => Some(Duration::from_secs(secs.unsigned_abs())),
        };
        let spec = JobSpec {
            tenant: self
                .tenant
                .filter(|t| !t.is_empty())
                .map(TenantName::new)
                .transpose()?
                .unwrap_or_default(),
            queue: self
                .queue
                .filter(|q| !q.is_empty())
                .map(QueueName::new)
                .transpose()?
                .unwrap_or_default(),
            command,
            env: self.env,
            working_dir: self.working_dir.filter(|dir| !dir.is_empty()),
            requirements: self.requirements,
            priority: Priority::new(self.priority)?,
            timeout,
            max_retries: self.max_retries,
            sla_class: self
                .sla_class
                .filter(|class| !class.is_empty())
                .map(|class| class.parse())
                .transpose()?
                .unwrap_or_default(),
            no_preempt: self.no_preempt,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The request that submits `spec` (the inverse of [`SubmitJob::into_spec`]).
    pub fn from_spec(spec: &JobSpec) -> Self {
        let (command, script) = match &spec.command {
            Command::Argv(argv) => (argv.clone(), None),
            Command::Script(script) => (Vec::new(), Some(script.clone())),
        };
        Self {
            command,
            script,
            tenant: Some(spec.tenant.to_string()),
            queue: Some(spec.queue.to_string()),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            requirements: spec.requirements.clone(),
            priority: spec.priority.get(),
            timeout_secs: spec
                .timeout
                .map(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX)),
            max_retries: spec.max_retries,
            sla_class: Some(spec.sla_class.to_string()),
            no_preempt: spec.no_preempt,
            allow_pending: false,
        }
    }
}

/// A job as `GET /api/v1/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub state: String,
    pub tenant: String,
    pub queue: String,
    pub priority: i32,
    /// The command as one line, for tables.
    pub command_line: String,
    pub attempts: u32,
    pub worker_id: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the job is in its state, when that is not obvious.
    pub reason: Option<String>,
    /// Why a queued job still waits (no idle worker, no worker fits...).
    #[serde(default)]
    pub waiting_reason: Option<String>,
    /// RFC 3339.
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Whether the job has ended for good.
    pub finished: bool,
    /// Seconds its ended attempts held a worker (`GET /jobs/{id}` only).
    #[serde(default)]
    pub worker_seconds: f64,
    /// What those seconds cost at their pools' `cost_per_hour` (`GET /jobs/{id}` only).
    #[serde(default)]
    pub cost: f64,
    pub spec: SubmitJob,
    /// Its SLA: class, deadline, time left, risk, met or missed, preemptions.
    #[serde(default)]
    pub sla: SlaView,
}

/// A job's SLA as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlaView {
    pub class: String,
    /// When it must have started (RFC 3339): submission plus its class's deadline.
    pub deadline: String,
    /// Seconds from now to the deadline while it has not started; negative once missed.
    pub time_left_secs: Option<f64>,
    /// `none`, `boosted` (past 70% of its deadline) or `at_risk` (past 90%), while queued
    /// before its first start.
    pub risk: String,
    /// Whether its first start met the deadline, once it started.
    pub met: Option<bool>,
    pub no_preempt: bool,
    pub preemptions: Vec<PreemptionView>,
}

/// A preemption the job took part in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptionView {
    /// RFC 3339.
    pub at: String,
    /// `victim` (this job was stopped) or `beneficiary` (it was made room for).
    pub role: String,
    pub victim: String,
    pub beneficiary: String,
    pub worker_id: String,
    pub reason: String,
}

impl SlaView {
    pub fn new(job: &Job, now: SystemTime) -> Self {
        let clock = SlaClock::of_job(job);
        let now_ms = sla::unix_ms(now);
        let waiting = job.first_started_at.is_none() && !job.state.is_terminal();
        let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(clock.deadline_ms);
        Self {
            class: job.spec.sla_class.to_string(),
            deadline: rfc3339(deadline),
            time_left_secs: waiting.then(|| clock.time_left_ms(now_ms) as f64 / 1000.0),
            risk: if waiting && job.state == JobState::Queued {
                clock.risk(now_ms).to_string()
            } else {
                sla::Risk::None.to_string()
            },
            met: job
                .first_started_at
                .map(|start| clock.met_by(sla::unix_ms(start))),
            no_preempt: job.spec.no_preempt,
            preemptions: job
                .preemptions
                .iter()
                .map(|record| PreemptionView {
                    at: rfc3339(record.at),
                    role: if record.victim == job.id {
                        "victim".to_owned()
                    } else {
                        "beneficiary".to_owned()
                    },
                    victim: record.victim.to_string(),
                    beneficiary: record.beneficiary.to_string(),
                    worker_id: record.worker_id.to_string(),
                    reason: record.reason.clone(),
                })
                .collect(),
        }
    }
}

impl JobView {
    pub fn new(job: &Job) -> Self {
        let command_line = match &job.spec.command {
            Command::Argv(argv) => argv.join(" "),
            Command::Script(script) => script.lines().collect::<Vec<_>>().join("; "),
        };
        Self {
            id: job.id.to_string(),
            state: job.state.to_string(),
            tenant: job.spec.tenant.to_string(),
            queue: job.spec.queue.to_string(),
            priority: job.spec.priority.get(),
            command_line,
            attempts: job.attempts,
            worker_id: job.worker_id.as_ref().map(ToString::to_string),
            exit_code: job.exit_code,
            reason: job.reason.clone(),
            waiting_reason: None,
            submitted_at: rfc3339(job.submitted_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            finished: job.state.is_terminal(),
            worker_seconds: 0.0,
            cost: 0.0,
            spec: SubmitJob::from_spec(&job.spec),
            sla: SlaView::new(job, SystemTime::now()),
        }
    }
}

/// Jobs one list returns when the caller names no limit, and at most.
pub const DEFAULT_LIST: usize = 100;
pub const MAX_LIST: usize = 10_000;

/// The filter of a job list, the same for REST and gRPC: state names, tenant and queue
/// (empty means any), a limit clamped to [`MAX_LIST`] (`None` means [`DEFAULT_LIST`]).
pub fn job_filter<'a>(
    states: impl IntoIterator<Item = &'a str>,
    tenant: Option<String>,
    queue: Option<String>,
    limit: Option<usize>,
) -> Result<JobFilter, ValidationError> {
    let states = states
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::parse::<JobState>)
        .collect::<Result<Vec<_>, _>>()?;
    let name = |value: Option<String>| value.filter(|v| !v.is_empty());
    Ok(JobFilter {
        states,
        tenant: name(tenant).map(TenantName::new).transpose()?,
        queue: name(queue).map(QueueName::new).transpose()?,
        worker_id: None,
        sla_class: None,
        limit: Some(limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST)),
    })
}

/// `GET /api/v1/jobs`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// A piece of a job's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunkView {
    pub attempt: u32,
    /// `output` (stdout and stderr in the order written), or `stdout`/`stderr` from older agents.
    pub stream: String,
    /// The bytes, as UTF-8 with invalid sequences replaced.
    pub text: String,
}

impl From<LogChunk> for LogChunkView {
    fn from(chunk: LogChunk) -> Self {
        Self {
            attempt: chunk.attempt,
            stream: chunk.stream.as_str().to_owned(),
            text: String::from_utf8_lossy(&chunk.data).into_owned(),
        }
    }
}

/// `GET /api/v1/jobs/{id}/logs?after=N[&follow=true]`: chunks after the first `after`, and
/// the position to ask from next. With `follow`, the answer waits (up to a few seconds) for
/// new output or the job's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsView {
    pub chunks: Vec<LogChunkView>,
    /// `after` for the next request.
    pub next: usize,
    /// The job's state now.
    pub state: String,
    pub exit_code: Option<i32>,
    /// The job has ended and `chunks` holds the last of its output.
    pub complete: bool,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `admin`, `agent` or `tenant`; worker credentials are minted by the server only.
    pub role: String,
    #[serde(default)]
    pub description: String,
    /// For `tenant` tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl CreateToken {
    /// The credential to mint, checked: the role exists and may be asked for.
    pub fn into_new(self) -> Result<hodei_modules::NewCredential, hodei_core::ValidationError> {
        use hodei_core::credential::Role;
        let role: Role = self.role.parse()?;
        if role == Role::Worker {
            return Err(hodei_core::ValidationError::new(
                "role",
                "worker credentials are minted by the server for the worker they belong to",
            ));
        }
        let tenant = self.tenant.map(hodei_core::TenantName::new).transpose()?;
        Ok(hodei_modules::NewCredential {
            role: Some(role),
            tenant,
            description: self.description,
            ..hodei_modules::NewCredential::default()
        })
    }
}

/// `POST /api/v1/tenants/{name}/tokens`: a tenant token; the tenant is the URL's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateTenantToken {
    pub description: String,
}

/// A credential without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl TokenView {
    pub fn new(record: &hodei_ports::CredentialRecord) -> Self {
        Self {
            id: record.id.clone(),
            role: record.role.to_string(),
            worker_id: record.worker_id.as_ref().map(ToString::to_string),
            tenant: record.tenant.as_ref().map(|t| t.as_str().to_owned()),
            description: record.description.clone(),
            issued_by: record.issued_by.clone(),
            created_at_ms: millis(record.created_at),
            revoked_at_ms: record.revoked_at.map(millis),
        }
    }
}

/// `POST /api/v1/tokens` answers with the token, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenView,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// `DELETE /api/v1/tokens/{id}` answers with what was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedTokens {
    pub revoked: Vec<String>,
}

/// A tenant as `GET /api/v1/tenants` shows it: its settings (as in `[[tenant]]`), the
/// weight in force, and what it holds and has started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantView {
    pub name: String,
    pub settings: crate::config::TenantSettings,
    pub weight: u32,
    /// Configured (file or API), or let in by `tenants.auto_create` with the defaults.
    pub configured: bool,
    pub usage: TenantUsage,
    pub queued: usize,
    /// `ready`, `active` (past a soft quota) or `cooldown`.
    pub burst: String,
    /// When an active burst began (RFC 3339).
    #[serde(default)]
    pub burst_since: Option<String>,
    /// When a cooldown ends (RFC 3339).
    #[serde(default)]
    pub burst_until: Option<String>,
    /// Its share (0 to 1) of the jobs started over the last hour, and how many it started.
    pub share_last_hour: f64,
    pub started_last_hour: u64,
}

/// What a tenant holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantUsage {
    pub running_jobs: u32,
    pub cpu: u32,
    pub memory_mb: u64,
    pub workers: u32,
    pub daily_cost: f64,
}

impl TenantView {
    pub fn new(view: &hodei_modules::TenantView) -> Self {
        let status = view.status.as_ref();
        let usage = status.map(|s| s.usage).unwrap_or_default();
        Self {
            name: view.tenant.name.to_string(),
            settings: crate::config::TenantSettings::from_tenant(&view.tenant),
            weight: view.tenant.weight,
            configured: view.configured,
            usage: TenantUsage {
                running_jobs: usage.running_jobs,
                cpu: usage.cpu,
                memory_mb: usage.memory_mb,
                workers: usage.workers,
                daily_cost: usage.daily_cost,
            },
            queued: status.map_or(0, |s| s.queued),
            burst: status.map_or("ready", |s| s.burst.as_str()).to_owned(),
            burst_since: match status.map(|s| s.burst) {
                Some(hodei_core::tenancy::BurstState::Active { since_ms }) => {
                    Some(rfc3339(unix_ms_time(since_ms)))
                }
                _ => None,
            },
            burst_until: match status.map(|s| s.burst) {
                Some(hodei_core::tenancy::BurstState::Cooldown { until_ms }) => {
                    Some(rfc3339(unix_ms_time(until_ms)))
                }
                _ => None,
            },
            share_last_hour: status.map_or(0.0, |s| s.share_last_hour),
            started_last_hour: status.map_or(0, |s| s.started_last_hour),
        }
    }
}

/// `GET /api/v1/tenants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::TenantName;
    use hodei_core::tenancy::{BurstState, Tenant};

    fn view(burst: BurstState) -> TenantView {
        TenantView::new(&hodei_modules::TenantView {
            tenant: Tenant::new(TenantName::new("team").unwrap()),
            configured: true,
            status: Some(hodei_modules::TenantStatus {
                tenant: TenantName::new("team").unwrap(),
                usage: Default::default(),
                queued: 0,
                burst,
                share_last_hour: 0.0,
                started_last_hour: 0,
            }),
        })
    }

    #[test]
    fn a_tenant_shows_when_its_burst_began_or_its_cooldown_ends() {
        let ready = view(BurstState::Ready);
        assert_eq!(
            (ready.burst.as_str(), ready.burst_since, ready.burst_until),
            ("ready", None, None)
        );
        let active = view(BurstState::Active { since_ms: 1_000 });
        assert_eq!(active.burst, "active");
        assert_eq!(
            active.burst_since.as_deref(),
            Some("1970-01-01T00:00:01.000Z")
        );
        assert_eq!(active.burst_until, None);
        let cooling = view(BurstState::Cooldown { until_ms: 2_000 });
        assert_eq!(cooling.burst, "cooldown");
        assert_eq!(
            cooling.burst_until.as_deref(),
            Some("1970-01-01T00:00:02.000Z")
        );
    }
}
