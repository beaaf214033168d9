//! `hodei.v1.JobService`: the job API over gRPC, the same operations and error codes as
//! REST (`/api/v1/jobs`). Requests become [`SubmitJob`] so both APIs validate one way.

use std::pin::Pin;
use std::time::SystemTime;

use hodei_core::sla::{self, SlaClock};
use hodei_core::{Job, JobId, Requirements};
use hodei_modules::JobService;
use hodei_proto::convert::to_millis;
use hodei_proto::v1;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{SubmitJob, job_filter};
use crate::error::ApiError;
use crate::scope::Scope;

/// `JobService` over the job dispatcher.
#[derive(Debug, Clone)]
pub struct JobGrpc {
    pub jobs: JobService,
    pub pools: hodei_modules::PoolManager,
    pub scheduler: std::sync::Arc<hodei_modules::SchedulerRegistry>,
    /// `[jobs] allow_pending`.
    pub allow_pending: bool,
}

fn status(error: impl Into<ApiError>) -> Status {
    error.into().into()
}

fn job_id(text: String) -> Result<JobId, Status> {
    JobId::new(text).map_err(status)
}

/// The wire spec as a REST request, so both APIs share one validation.
fn submit_request(spec: v1::JobSpec) -> SubmitJob {
    SubmitJob {
        command: spec.argv,
        script: (!spec.script.is_empty()).then_some(spec.script),
        tenant: Some(spec.tenant),
        queue: Some(spec.queue),
        env: spec.env,
        working_dir: Some(spec.working_dir),
        requirements: Requirements {
            cpu_cores: spec.cpu_cores,
            memory_mb: spec.memory_mb,
            labels: spec.labels,
            features: spec.features.into_iter().collect(),
        },
        priority: spec.priority,
        timeout_secs: (spec.timeout_secs > 0).then_some(i64::from(spec.timeout_secs)),
        max_retries: spec.max_retries,
        sla_class: Some(spec.sla_class),
        no_preempt: spec.no_preempt,
        allow_pending: false,
    }
}

fn wire_spec(job: &Job) -> v1::JobSpec {
    let request = SubmitJob::from_spec(&job.spec);
    v1::JobSpec {
        tenant: request.tenant.unwrap_or_default(),
        queue: request.queue.unwrap_or_default(),
        argv: request.command,
        script: request.script.unwrap_or_default(),
        env: request.env,
        working_dir: request.working_dir.unwrap_or_default(),
        cpu_cores: request.requirements.cpu_cores,
        memory_mb: request.requirements.memory_mb,
        labels: request.requirements.labels,
        features: request.requirements.features.into_iter().collect(),
        priority: request.priority,
        timeout_secs: request
            .timeout_secs
            .map_or(0, |secs| u32::try_from(secs).unwrap_or(u32::MAX)),
        max_retries: request.max_retries,
        sla_class: request.sla_class.unwrap_or_default(),
        no_preempt: request.no_preempt,
    }
}

fn millis(time: Option<SystemTime>) -> i64 {
    time.map_or(0, to_millis)
}

/// The wire form of a job.
pub fn job_info(job: &Job) -> v1::JobInfo {
    v1::JobInfo {
        id: job.id.to_string(),
        spec: Some(wire_spec(job)),
        state: job.state.to_string(),
        attempts: job.attempts,
        worker_id: job
            .worker_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        has_exit_code: job.exit_code.is_some(),
        exit_code: job.exit_code.unwrap_or_default(),
        reason: job.reason.clone().unwrap_or_default(),
        submitted_at_ms: to_millis(job.submitted_at),
        started_at_ms: millis(job.started_at),
        finished_at_ms: millis(job.finished_at),
        deadline_ms: i64::try_from(SlaClock::of_job(job).deadline_ms).unwrap_or(i64::MAX),
        sla_risk: sla_risk(job),
        deadline: match job.first_started_at {
            Some(start) if SlaClock::of_job(job).met_by(sla::unix_ms(start)) => "met".into(),
            Some(_) => "missed".into(),
            None => String::new(),
        },
        preemptions: job
            .preemptions
            .iter()
            .map(|record| v1::Preemption {
                at_ms: to_millis(record.at),
                victim: record.victim.to_string(),
                beneficiary: record.beneficiary.to_string(),
                worker_id: record.worker_id.to_string(),
                reason: record.reason.clone(),
            })
            .collect(),
    }
}

/// The risk of a job queued before its first start, empty otherwise.
fn sla_risk(job: &Job) -> String {
    if job.state != hodei_core::JobState::Queued || job.first_started_at.is_some() {
        return String::new();
    }
    SlaClock::of_job(job)
        .risk(sla::unix_ms(SystemTime::now()))
        .to_string()
}

type LogStreamResponse = Pin<Box<dyn Stream<Item = Result<v1::StreamLogsResponse, Status>> + Send>>;

/// Most chunks one streamed message carries.
const LOG_PAGE: usize = 1000;
/// How long one wait for news lasts before the stream looks again.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[tonic::async_trait]
impl v1::job_service_server::JobService for JobGrpc {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        // A valid W3C `traceparent` in the metadata goes to the job as `TRACEPARENT` and
        // comes back in the response's metadata (with telemetry on: the job's trace continues
        // it and the submission's span comes back).
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let scope = Scope::of_grpc(&request);
        let request = request.into_inner();
        let allow_pending = request.allow_pending || self.allow_pending;
        let spec = request
            .spec
            .ok_or_else(|| status(hodei_core::ValidationError::new("spec", "is missing")))?;
        let mut submit = submit_request(spec);
        submit.tenant = scope
            .tenant_named(submit.tenant.as_deref())
            .map_err(status)?;
        let mut spec = submit.into_spec().map_err(status)?;
        if !allow_pending {
            crate::runnable::refuse_never_runnable(
                &self.pools,
                &self.scheduler,
                &spec.requirements,
            )
            .map_err(status)?;
        }
        let (mut span, applied) = hodei_core::trace::submitted(&mut spec, traceparent.as_deref());
        let job = self.jobs.submit(spec).await.map_err(status)?;
        span.set("hodei.job_id", job.id.to_string());
        let mut response = Response::new(v1::SubmitJobResponse {
            job: Some(job_info(&job)),
        });
        if let Some(value) = applied.and_then(|v| v.parse().ok()) {
            response.metadata_mut().insert("traceparent", value);
        }
        Ok(response)
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobResponse>, Status> {
        let scope = Scope::of_grpc(&request);
        let id = job_id(request.into_inner().job_id)?;
        scope.job(&self.jobs, &id).await.map_err(status)?;
        let (job, waiting) = self.jobs.describe(&id).await.map_err(status)?;
        let mut info = job_info(&job);
        if let Some(why) = waiting {
            info.reason = why;
        }
        Ok(Response::new(v1::GetJobResponse { job: Some(info) }))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let scope = Scope::of_grpc(&request);
        let request = request.into_inner();
        let limit =
            (request.limit > 0).then(|| usize::try_from(request.limit).unwrap_or(usize::MAX));
        let mut filter = job_filter(
            request.states.iter().map(String::as_str),
            scope.tenant_named(Some(&request.tenant)).map_err(status)?,
            Some(request.queue),
            limit,
        )
        .map_err(status)?;
        if !request.sla_class.is_empty() {
            filter.sla_class = Some(request.sla_class.parse().map_err(status)?);
        }
        let jobs = self.jobs.list(&filter).await.map_err(status)?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.iter().map(job_info).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::CancelJobResponse>, Status> {
        let scope = Scope::of_grpc(&request);
        let id = job_id(request.into_inner().job_id)?;
        scope.job(&self.jobs, &id).await.map_err(status)?;
        let job = self.jobs.cancel(id).await.map_err(status)?;
        Ok(Response::new(v1::CancelJobResponse {
            job: Some(job_info(&job)),
        }))
    }

    type StreamLogsStream = LogStreamResponse;

    async fn stream_logs(
        &self,
        request: Request<v1::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let scope = Scope::of_grpc(&request);
        let request = request.into_inner();
        let id = job_id(request.job_id)?;
        scope.job(&self.jobs, &id).await.map_err(status)?;
        let jobs = self.jobs.clone();
        let mut after = usize::try_from(request.after).unwrap_or(usize::MAX);
        let follow = request.follow;
        let stream = async_stream::try_stream! {
            loop {
                let wait_until = follow.then(|| tokio::time::Instant::now() + FOLLOW_WAIT);
                let page = jobs
                    .logs_page(&id, after, LOG_PAGE, wait_until)
                    .await
                    .map_err(status)?;
                after += page.chunks.len();
                let done = !follow || page.complete;
                let message = v1::StreamLogsResponse {
                    chunks: page
                        .chunks
                        .into_iter()
                        .map(|chunk| v1::JobLogChunk {
                            attempt: chunk.attempt,
                            stream: chunk.stream.as_str().to_owned(),
                            data: chunk.data,
                        })
                        .collect(),
                    finished: (follow && page.complete).then(|| job_info(&page.job)),
                };
                if !message.chunks.is_empty() || done {
                    yield message;
                }
                if done {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
