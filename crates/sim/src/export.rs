//! `hodei job export`: a trace from the server's job history, so users replay their own load.
//!
//! Pure: the CLI fetches the jobs and hands them here as [`HistoryJob`]s; this decides
//! which of them make the trace and what each record says.

use std::collections::BTreeMap;

use crate::trace::TraceJob;

const DAY_MS: u64 = 86_400_000;

/// A job of the history, as the job listing shows it (times in ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryJob {
    pub submitted_ms: u64,
    /// The start of its last attempt, if it ever started.
    pub started_ms: Option<u64>,
    /// When it ended for good, if it has.
    pub finished_ms: Option<u64>,
    pub tenant: String,
    pub queue: String,
    pub priority: i32,
    pub sla_class: String,
    pub cpu: u32,
    pub memory_mb: u64,
    pub labels: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
}

/// What was left out of an export, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Submitted before `since`.
    pub older: usize,
    /// Not ended yet (queued, assigned or running): no run time to replay.
    pub unfinished: usize,
    /// Ended without ever starting (cancelled or dead-lettered in the queue).
    pub never_ran: usize,
}

/// The trace of the jobs submitted at or after `since_ms` that ran and ended, sorted by
/// submission. Offsets count from 00:00 UTC of the first exported job's day, so that the
/// simulator (whose clock starts at midnight) sees each job at its time of day. The run
/// time is the last attempt's, from its start to the job's end; a job ended without an exit
/// code (timed out, lost) is exported with exit code -1. A job that asked for no cores is
/// exported asking for 1 (the trace's default).
pub fn trace_of(history: &[HistoryJob], since_ms: u64) -> (Vec<TraceJob>, Skipped) {
    let mut skipped = Skipped::default();
    let mut kept: Vec<(&HistoryJob, u64, u64)> = Vec::new();
    for job in history {
        if job.submitted_ms < since_ms {
            skipped.older += 1;
            continue;
        }
        let Some(finished) = job.finished_ms else {
            skipped.unfinished += 1;
            continue;
        };
        let Some(started) = job.started_ms else {
            skipped.never_ran += 1;
            continue;
        };
        kept.push((job, started, finished.max(started)));
    }
    kept.sort_by_key(|(job, _, _)| job.submitted_ms);
    let origin = kept.first().map_or(0, |(job, _, _)| {
        job.submitted_ms - job.submitted_ms % DAY_MS
    });
    let trace = kept
        .into_iter()
        .map(|(job, started, finished)| TraceJob {
            submit_offset_s: (job.submitted_ms - origin) as f64 / 1000.0,
            tenant: job.tenant.clone(),
            queue: job.queue.clone(),
            priority: job.priority,
            sla_class: job.sla_class.clone(),
            cpu: job.cpu.max(1),
            memory_mb: job.memory_mb,
            labels: job.labels.clone(),
            run_s: (finished - started) as f64 / 1000.0,
            exit_code: job.exit_code.unwrap_or(-1),
        })
        .collect();
    (trace, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(submitted_ms: u64, started: Option<u64>, finished: Option<u64>) -> HistoryJob {
        HistoryJob {
            submitted_ms,
            started_ms: started,
            finished_ms: finished,
            tenant: "acme".into(),
            queue: "default".into(),
            priority: 5,
            sla_class: "high".into(),
            cpu: 0,
            memory_mb: 512,
            labels: BTreeMap::from([("os".to_owned(), "linux".to_owned())]),
            exit_code: Some(3),
        }
    }

    #[test]
    fn ended_jobs_since_the_cut_become_records_at_their_time_of_day() {
        // 2026-11-23 09:00:00 UTC and ten seconds later.
        let nine = 1_795_392_000_000 + 9 * 3_600_000;
        let history = vec![
            job(nine + 10_000, Some(nine + 12_000), Some(nine + 42_500)),
            job(nine, Some(nine + 1_000), Some(nine + 5_000)),
            job(nine - 3_600_000, Some(nine), Some(nine + 1)),
            job(nine + 20_000, None, None),
            job(nine + 30_000, None, Some(nine + 31_000)),
        ];
        let (trace, skipped) = trace_of(&history, nine - 1);
        assert_eq!(
            skipped,
            Skipped {
                older: 1,
                unfinished: 1,
                never_ran: 1
            }
        );
        assert_eq!(trace.len(), 2);
        assert_eq!(trace[0].submit_offset_s, 9.0 * 3600.0);
        assert_eq!(trace[1].submit_offset_s, 9.0 * 3600.0 + 10.0);
        assert_eq!((trace[0].run_s, trace[1].run_s), (4.0, 30.5));
        let first = &trace[0];
        assert_eq!(
            (
                first.priority,
                first.sla_class.as_str(),
                first.cpu,
                first.memory_mb
            ),
            (5, "high", 1, 512)
        );
        assert_eq!(first.exit_code, 3);
        assert_eq!(first.labels["os"], "linux");
        // Every record passes the trace's own checks.
        for record in &trace {
            record.check().unwrap();
        }
    }

    #[test]
    fn a_job_without_an_exit_code_exports_minus_one_and_nothing_gives_nothing() {
        let mut lost = job(1_000, Some(2_000), Some(3_000));
        lost.exit_code = None;
        let (trace, _) = trace_of(&[lost], 0);
        assert_eq!(trace[0].exit_code, -1);
        assert_eq!(trace_of(&[], 0).0, Vec::new());
    }
}
