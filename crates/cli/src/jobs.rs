//! `hodei job ...`: submit, list, inspect, follow and cancel jobs over the REST API.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use hodei_server::api::{JobList, JobView, LogsView, SubmitJob};

use crate::client::{Client, Connection, Output, Shown, age, print_json, table};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job and print its id. With --wait, stream its output and exit with its exit
    /// code.
    ///
    /// The command after `--` runs without a shell; use --script for shell syntax.
    /// Example: hodei job submit --wait -- make test
    Submit {
        /// Run only on workers of this pool (the worker label pool=P).
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// The tenant the job belongs to.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// The queue to wait in (configured under [[jobs.queue]]).
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// Higher runs first, -1000 to 1000.
        #[arg(
            long,
            default_value_t = 0,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        priority: i32,
        /// Seconds one attempt may run before it is killed; no limit when absent.
        #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
        timeout: Option<i64>,
        /// Retries after a failed or timed-out attempt.
        #[arg(long, default_value_t = 0, value_name = "N")]
        retries: u32,
        /// SLA class: critical, high, medium, low or best_effort. Not given: the queue's
        /// default ([[jobs.queue]] sla_class), else the tenant's (`hodei tenant set-quota
        /// T --sla-class C`), else medium. The class's deadline ([sla] in the server's
        /// configuration) bounds the wait for a start.
        #[arg(long, value_name = "CLASS", value_parser = parse_sla)]
        sla: Option<String>,
        /// Never preempt this job to make room for a more urgent one.
        #[arg(long)]
        no_preempt: bool,
        /// A label the worker must carry, `key=value`; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::parse_label)]
        labels: Vec<(String, String)>,
        /// CPU cores the worker must have.
        #[arg(long, value_name = "N")]
        cpu: Option<u32>,
        /// Memory the worker must have, MiB.
        #[arg(long, value_name = "MIB")]
        memory_mb: Option<u64>,
        /// An environment variable for the job, `KEY=VALUE`; repeat for more.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Working directory on the worker; a fresh one per attempt when absent.
        #[arg(long, value_name = "DIR")]
        workdir: Option<String>,
        /// Run this shell script (`/bin/sh -c`) instead of a command.
        #[arg(long, value_name = "SCRIPT", conflicts_with = "command")]
        script: Option<String>,
        /// Stream the job's output until it ends and exit with its exit code.
        #[arg(long)]
        wait: bool,
        /// Queue the job even if no pool and no connected worker could run it now (an
        /// unknown pool, a label nobody has), for a worker yet to come.
        #[arg(long)]
        allow_pending: bool,
        /// The program and its arguments.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// List jobs, newest first.
    Ls {
        /// Only jobs in these states, comma-separated (queued, assigned, running, succeeded,
        /// failed, timed_out, cancelled, dead_lettered).
        #[arg(long)]
        state: Option<String>,
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this queue's jobs.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs of this SLA class.
        #[arg(long, value_name = "CLASS", value_parser = parse_sla)]
        sla: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        connection: Connection,
    },
    /// Write the jobs that ran and ended as a trace for `hodei simulate --trace` (CSV, or
    /// JSON Lines with -o jsonl or a --file ending in .jsonl), oldest first.
    ///
    /// Offsets count from 00:00 UTC of the first job's day. At most the newest 10,000 jobs
    /// are read.
    Export {
        /// Only jobs submitted this recently (a duration such as 30m, 24h or 7d).
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        since: String,
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// Where to write it; stdout when absent.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one job, and why it still waits if it is queued.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a job's output; with -f, follow it until the job ends.
    Logs {
        id: String,
        /// Keep printing new output until the job ends, then exit with its exit code.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a job: a queued one at once, a running one by killing its processes.
    Cancel {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Milliseconds since the Unix epoch of an RFC 3339 time the API wrote.
fn epoch_ms(field: &str, rfc3339: &str) -> anyhow::Result<u64> {
    let at = humantime::parse_rfc3339_weak(rfc3339)
        .with_context(|| format!("{field}: {rfc3339:?} is not an RFC 3339 time"))?;
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// A listed job as the history `hodei_sim::export` turns into a trace record.
fn history_job(job: &JobView) -> anyhow::Result<hodei_sim::export::HistoryJob> {
    let named = |field: &str| format!("job {}: {field}", job.id);
    let time =
        |field: &str, value: Option<&String>| value.map(|v| epoch_ms(&named(field), v)).transpose();
    Ok(hodei_sim::export::HistoryJob {
        submitted_ms: epoch_ms(&named("submitted_at"), &job.submitted_at)?,
        started_ms: time("started_at", job.started_at.as_ref())?,
        finished_ms: if job.finished {
            time("finished_at", job.finished_at.as_ref())?
        } else {
            None
        },
        tenant: job.tenant.clone(),
        queue: job.queue.clone(),
        priority: job.priority,
        sla_class: if job.sla.class.is_empty() {
            job.spec
                .sla_class
                .clone()
                .unwrap_or_else(|| "medium".to_owned())
        } else {
            job.sla.class.clone()
        },
        cpu: job.spec.requirements.cpu_cores,
        memory_mb: job.spec.requirements.memory_mb,
        labels: job.spec.requirements.labels.clone(),
        exit_code: job.exit_code,
    })
}

/// `hodei job export`: the job listing (newest 10,000 at most) as a simulator trace.
async fn export(
    since: &str,
    tenant: Option<String>,
    file: Option<&std::path::Path>,
    connection: &Connection,
) -> anyhow::Result<u8> {
    use hodei_sim::trace::Format;
    let window = humantime::parse_duration(since).map_err(|error| {
        anyhow::anyhow!("--since: {since:?} is not a duration such as 24h or 7d: {error}")
    })?;
    let format = match connection.output {
        Output::Jsonl => Format::JsonLines,
        Output::Csv => Format::Csv,
        Output::Table => file.map_or(Format::Csv, Format::of),
        Output::Json => anyhow::bail!(
            "-o json: a trace is csv or jsonl (one JSON object per line); use -o jsonl"
        ),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let since_ms = now_ms.saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    let client = Client::new(connection)?;
    let mut query = vec![("limit", hodei_server::api::MAX_LIST.to_string())];
    query.extend(tenant.map(|t| ("tenant", t)));
    let list: JobList = client.get("/jobs", &query).await?;
    let history = list
        .jobs
        .iter()
        .map(history_job)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if history.len() >= hodei_server::api::MAX_LIST
        && history.iter().all(|job| job.submitted_ms >= since_ms)
    {
        eprintln!(
            "warning: the server lists at most the newest {} jobs; older jobs of the last {since} are not in the trace",
            hodei_server::api::MAX_LIST
        );
    }
    let (trace, skipped) = hodei_sim::export::trace_of(&history, since_ms);
    match file {
        Some(path) => {
            let out = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            hodei_sim::trace::write(&trace, format, out)?;
        }
        None => hodei_sim::trace::write(&trace, format, std::io::stdout().lock())?,
    }
    eprintln!(
        "{} jobs exported; left out: {} not ended yet, {} ended without starting",
        trace.len(),
        skipped.unfinished,
        skipped.never_ran
    );
    Ok(0)
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// An SLA class as the API names it; `best-effort` is taken for `best_effort`.
pub(crate) fn parse_sla(text: &str) -> Result<String, String> {
    let class: hodei_core::SlaClass = text
        .replace('-', "_")
        .parse()
        .map_err(|e: hodei_core::ValidationError| e.reason)?;
    Ok(class.to_string())
}

/// `1h 2m`, `3m 4s`, `5s`: a short human duration.
fn short_duration(secs: f64) -> String {
    let total = secs.abs().round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

/// The SLA lines of `hodei job get`.
fn sla_lines(job: &JobView) -> Vec<String> {
    let sla = &job.sla;
    let mut deadline = format!("sla: {}, deadline {}", sla.class, sla.deadline);
    match (sla.met, sla.time_left_secs) {
        (Some(true), _) => deadline.push_str(" (met)"),
        (Some(false), _) => deadline.push_str(" (missed)"),
        (None, Some(left)) if left >= 0.0 => {
            deadline.push_str(&format!(" ({} left)", short_duration(left)));
        }
        (None, Some(left)) => {
            deadline.push_str(&format!(" (missed by {})", short_duration(left)));
        }
        (None, None) => {}
    }
    match sla.risk.as_str() {
        "at_risk" => deadline.push_str(", AT RISK: starts before every job not at risk"),
        "boosted" => deadline.push_str(", boosted: ahead of its tenant's other jobs"),
        _ => {}
    }
    if sla.no_preempt {
        deadline.push_str(", not preemptible");
    }
    let mut lines = vec![deadline];
    for p in &sla.preemptions {
        lines.push(if p.role == "victim" {
            format!(
                "preempted at {} for {} on {}: {}",
                p.at, p.beneficiary, p.worker_id, p.reason
            )
        } else {
            format!(
                "preempted {} at {} on {} to start: {}",
                p.victim, p.at, p.worker_id, p.reason
            )
        });
    }
    lines
}

fn print_jobs(jobs: &[JobView]) {
    let mut t = table(&[
        "ID", "STATE", "EXIT", "TENANT", "QUEUE", "PRIO", "WORKER", "ATTEMPTS", "AGE", "COMMAND",
    ]);
    for job in jobs {
        let mut command = job.command_line.clone();
        if command.chars().count() > 40 {
            command = command.chars().take(39).chain(['…']).collect();
        }
        t.add_row(vec![
            job.id.clone(),
            job.state.clone(),
            job.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            job.tenant.clone(),
            job.queue.clone(),
            job.priority.to_string(),
            job.worker_id.clone().unwrap_or_else(|| "-".into()),
            job.attempts.to_string(),
            age(&job.submitted_at),
            command,
        ]);
    }
    println!("{t}");
}

fn print_job(job: &JobView) {
    print_jobs(std::slice::from_ref(job));
    if let Some(reason) = &job.reason {
        println!("\nreason: {reason}");
    }
    if let Some(waiting) = &job.waiting_reason {
        println!("\nwaiting: {waiting}");
    }
    println!();
    for line in sla_lines(job) {
        println!("{line}");
    }
    if job.worker_seconds > 0.0 {
        println!(
            "\nworker time {:.1}s, cost {:.6}",
            job.worker_seconds, job.cost
        );
    }
}

/// The exit status `hodei job ... --wait` ends with: the job's exit code when it exited,
/// 1 when it failed otherwise (timed out, cancelled, lost its worker for good).
fn exit_status(view: &LogsView) -> u8 {
    match view.exit_code {
        Some(code) if view.state == "succeeded" => u8::try_from(code).unwrap_or(0),
        Some(code) => u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
        None if view.state == "succeeded" => 0,
        None => 1,
    }
}

/// Prints a job's output; with `follow`, until the job ends. Returns the final view.
async fn stream_logs(client: &Client, id: &str, follow: bool) -> anyhow::Result<LogsView> {
    let mut after = 0;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let query = [("after", after.to_string()), ("follow", follow.to_string())];
        let view: LogsView = client.get(&format!("/jobs/{id}/logs"), &query).await?;
        for chunk in &view.chunks {
            if chunk.stream == "stderr" {
                stderr.write_all(chunk.text.as_bytes())?;
                stderr.flush()?;
            } else {
                stdout.write_all(chunk.text.as_bytes())?;
                stdout.flush()?;
            }
        }
        after = view.next;
        if view.complete || !follow {
            return Ok(view);
        }
    }
}

/// Exit status of `--wait` stopped by Ctrl-C, as a shell reports SIGINT.
const INTERRUPTED: u8 = 130;

/// How often `--wait` looks at a queued job, and says why it still waits.
const QUEUED_POLL: std::time::Duration = std::time::Duration::from_secs(1);
const SAY_WHY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What `--wait` prints on stderr besides the job's output: why the job still waits (every
/// [`SAY_WHY_EVERY`] while queued), a line where a new attempt starts, and at the end the
/// state with the exit code and the reason. Returns the last log page.
async fn wait_for_end(client: &Client, submitted: &JobView) -> anyhow::Result<LogsView> {
    let id = &submitted.id;
    let mut state = submitted.state.clone();
    let (mut after, mut attempt) = (0, 0);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut queued_since = std::time::Instant::now();
    let mut said = None::<std::time::Instant>;
    loop {
        if state == "queued" {
            let job: JobView = client.get(&format!("/jobs/{id}"), &[]).await?;
            state = job.state.clone();
            if state == "queued" {
                let due = said.map_or(queued_since.elapsed() >= SAY_WHY_EVERY / 2, |at| {
                    at.elapsed() >= SAY_WHY_EVERY
                });
                if due {
                    let why = job
                        .waiting_reason
                        .as_deref()
                        .unwrap_or("waiting for dispatch");
                    let waited = queued_since.elapsed().as_secs();
                    eprintln!("job {id} waits ({waited}s): {why}");
                    said = Some(std::time::Instant::now());
                }
                tokio::time::sleep(QUEUED_POLL).await;
                continue;
            }
        }
        let query = [("after", after.to_string()), ("follow", "true".to_owned())];
        let view: LogsView = client.get(&format!("/jobs/{id}/logs"), &query).await?;
        for chunk in &view.chunks {
            if chunk.attempt > attempt {
                if attempt > 0 || chunk.attempt > 1 {
                    stdout.flush()?;
                    eprintln!("--- job {id}, attempt {} ---", chunk.attempt);
                }
                attempt = chunk.attempt;
            }
            let out: &mut dyn Write = if chunk.stream == "stderr" {
                &mut stderr
            } else {
                &mut stdout
            };
            out.write_all(chunk.text.as_bytes())?;
            out.flush()?;
        }
        after = view.next;
        if view.complete {
            let job: JobView = client.get(&format!("/jobs/{id}"), &[]).await?;
            let exit = view
                .exit_code
                .map(|c| format!(" (exit code {c})"))
                .unwrap_or_default();
            let attempts = if job.attempts > 1 {
                format!(" after {} attempts", job.attempts)
            } else {
                String::new()
            };
            // "exited with code N" would only repeat the exit code.
            let said_by_exit = |reason: &String| {
                view.exit_code
                    .is_some_and(|c| *reason == format!("exited with code {c}"))
            };
            match job
                .reason
                .filter(|reason| view.state != "succeeded" && !said_by_exit(reason))
            {
                Some(reason) => eprintln!("job {id} {}{exit}{attempts}: {reason}", view.state),
                None => eprintln!("job {id} {}{exit}{attempts}", view.state),
            }
            return Ok(view);
        }
        if view.state == "queued" {
            // Back in the queue: the attempt ended and the job is retried.
            let job: JobView = client.get(&format!("/jobs/{id}"), &[]).await?;
            let why = job.reason.as_deref().unwrap_or("it ended");
            eprintln!(
                "--- job {id}, attempt {} ended: {why}; queued to retry ---",
                job.attempts
            );
            queued_since = std::time::Instant::now();
            said = None;
        }
        state = view.state;
    }
}

pub async fn job(command: JobCommand) -> anyhow::Result<u8> {
    match command {
        JobCommand::Submit {
            pool,
            tenant,
            queue,
            priority,
            timeout,
            retries,
            sla,
            no_preempt,
            labels,
            cpu,
            memory_mb,
            env,
            workdir,
            script,
            wait,
            allow_pending,
            command,
            connection,
        } => {
            if command.is_empty() && script.is_none() {
                anyhow::bail!(
                    "nothing to run: give a command after `--` (hodei job submit -- make test) or --script"
                );
            }
            let mut request = SubmitJob {
                command,
                script,
                tenant,
                queue,
                env: env.into_iter().collect(),
                working_dir: workdir,
                priority,
                timeout_secs: timeout,
                max_retries: retries,
                sla_class: sla,
                no_preempt,
                allow_pending,
                ..SubmitJob::default()
            };
            request.requirements.labels = labels.into_iter().collect::<BTreeMap<_, _>>();
            if let Some(pool) = pool {
                request
                    .requirements
                    .labels
                    .insert(hodei_core::matching::POOL_LABEL.to_owned(), pool);
            }
            request.requirements.cpu_cores = cpu.unwrap_or(0);
            request.requirements.memory_mb = memory_mb.unwrap_or(0);
            let client = Client::new(&connection)?;
            let job: JobView = client.post("/jobs", &request).await?;
            if !wait {
                match connection.output.shown()? {
                    Shown::Json => print_json(&job)?,
                    Shown::Table => println!("{}", job.id),
                }
                return Ok(0);
            }
            eprintln!("job {} queued", job.id);
            tokio::select! {
                end = wait_for_end(&client, &job) => {
                    let end = end?;
                    Ok(exit_status(&end))
                }
                _ = tokio::signal::ctrl_c() => {
                    let state = client
                        .get::<JobView>(&format!("/jobs/{}", job.id), &[])
                        .await
                        .map_or_else(|_| "not finished".to_owned(), |now| now.state);
                    eprintln!(
                        "\nstopped waiting; job {id} is still {state} and will run without you: \
                         follow it with `hodei job logs -f {id}`, cancel it with `hodei job cancel {id}`",
                        id = job.id
                    );
                    Ok(INTERRUPTED)
                }
            }
        }
        JobCommand::Ls {
            state,
            tenant,
            queue,
            sla,
            limit,
            connection,
        } => {
            let client = Client::new(&connection)?;
            let mut query = vec![("limit", limit.to_string())];
            query.extend(state.map(|s| ("state", s)));
            query.extend(tenant.map(|t| ("tenant", t)));
            query.extend(queue.map(|q| ("queue", q)));
            query.extend(sla.map(|class| ("sla", class)));
            let list: JobList = client.get("/jobs", &query).await?;
            match connection.output.shown()? {
                Shown::Json => print_json(&list)?,
                Shown::Table if list.jobs.is_empty() => println!("No jobs."),
                Shown::Table => print_jobs(&list.jobs),
            }
            Ok(0)
        }
        JobCommand::Export {
            since,
            tenant,
            file,
            connection,
        } => export(&since, tenant, file.as_deref(), &connection).await,
        JobCommand::Get { id, connection } => {
            let client = Client::new(&connection)?;
            let job: JobView = client.get(&format!("/jobs/{id}"), &[]).await?;
            match connection.output.shown()? {
                Shown::Json => print_json(&job)?,
                Shown::Table => print_job(&job),
            }
            Ok(0)
        }
        JobCommand::Logs {
            id,
            follow,
            connection,
        } => {
            let client = Client::new(&connection)?;
            let end = stream_logs(&client, &id, follow).await?;
            Ok(if follow { exit_status(&end) } else { 0 })
        }
        JobCommand::Cancel { id, connection } => {
            let client = Client::new(&connection)?;
            let job: JobView = client
                .post(&format!("/jobs/{id}/cancel"), &serde_json::json!({}))
                .await
                .with_context(|| format!("cannot cancel job {id}"))?;
            match connection.output.shown()? {
                Shown::Json => print_json(&job)?,
                Shown::Table if job.state == "cancelled" => println!("job {id} cancelled"),
                Shown::Table => println!("job {id} is {}, stopping it", job.state),
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str, exit_code: Option<i32>) -> LogsView {
        LogsView {
            chunks: Vec::new(),
            next: 0,
            state: state.into(),
            exit_code,
            complete: true,
        }
    }

    #[test]
    fn wait_exits_with_the_jobs_exit_code() {
        assert_eq!(exit_status(&view("succeeded", Some(0))), 0);
        assert_eq!(exit_status(&view("failed", Some(3))), 3);
        assert_eq!(exit_status(&view("dead_lettered", Some(7))), 7);
        assert_eq!(exit_status(&view("timed_out", None)), 1);
        assert_eq!(exit_status(&view("cancelled", None)), 1);
        assert_eq!(exit_status(&view("failed", Some(-1))), 1);
        assert_eq!(exit_status(&view("failed", Some(256))), 1);
    }

    #[test]
    fn sla_classes_are_checked_and_shown() {
        assert_eq!(parse_sla("best-effort").unwrap(), "best_effort");
        assert_eq!(parse_sla("critical").unwrap(), "critical");
        assert!(
            parse_sla("urgent")
                .unwrap_err()
                .contains("unknown sla class")
        );
        assert_eq!(short_duration(4.4), "4s");
        assert_eq!(short_duration(-125.0), "2m 5s");
        assert_eq!(short_duration(7300.0), "2h 1m");
        let mut job: JobView = serde_json::from_value(serde_json::json!({
            "id": "j-1", "state": "queued", "tenant": "t", "queue": "default", "priority": 0,
            "command_line": "true", "attempts": 0, "worker_id": null, "exit_code": null,
            "reason": null, "submitted_at": "2026-01-01T00:00:00Z", "started_at": null,
            "finished_at": null, "finished": false, "spec": {},
            "sla": {"class": "high", "deadline": "2026-01-01T00:15:00Z", "time_left_secs": 30.0,
                    "risk": "at_risk", "met": null, "no_preempt": false, "preemptions": []}
        }))
        .unwrap();
        assert_eq!(
            sla_lines(&job),
            [
                "sla: high, deadline 2026-01-01T00:15:00Z (30s left), AT RISK: starts before every job not at risk"
            ]
        );
        job.sla.met = Some(false);
        job.sla.risk = "none".into();
        assert!(sla_lines(&job)[0].ends_with("(missed)"));
    }

    #[test]
    fn env_needs_a_name() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("nothing").is_err());
    }
}
