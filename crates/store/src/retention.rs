//! Retention and drain records, in both SQL dialects: the statements differ only in their
//! placeholders (`?N` for SQLite, `$N` for PostgreSQL).

use hodei_core::{AfterDrain, JobState, WorkerId, WorkerState};
use hodei_ports::store::Error;

/// The terminal job states as an SQL list: `'succeeded', 'failed', ...` (constants, not
/// input).
pub(crate) fn finished_states() -> String {
    JobState::ALL
        .iter()
        .filter(|state| state.is_terminal())
        .map(|state| format!("'{}'", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `DELETE` of at most `$2` finished jobs changed before `$1`, oldest first. Their output
/// goes with them (`ON DELETE CASCADE`).
pub(crate) fn prune_jobs_sql(placeholder: fn(u8) -> String) -> String {
    format!(
        "DELETE FROM jobs WHERE sequence IN (SELECT sequence FROM jobs \
         WHERE state IN ({}) AND updated_at_ms < {} ORDER BY updated_at_ms LIMIT {})",
        finished_states(),
        placeholder(1),
        placeholder(2),
    )
}

/// `DELETE` of at most `$2` terminated workers changed before `$1`, oldest first.
pub(crate) fn prune_workers_sql(placeholder: fn(u8) -> String) -> String {
    format!(
        "DELETE FROM workers WHERE id IN (SELECT id FROM workers \
         WHERE state = '{}' AND updated_at_ms < {} ORDER BY updated_at_ms LIMIT {})",
        WorkerState::Terminated.as_str(),
        placeholder(1),
        placeholder(2),
    )
}

/// The drained workers' query.
pub(crate) fn drained_sql() -> String {
    format!(
        "SELECT id, drain_after FROM workers WHERE state = '{}' ORDER BY id",
        WorkerState::Draining.as_str()
    )
}

/// A row of [`drained_sql`] decoded; no recorded `drain_after` is the default, terminate.
pub(crate) fn decode_drained(
    (id, after): (String, Option<String>),
) -> Result<(WorkerId, AfterDrain), Error> {
    let worker = WorkerId::new(id.clone())
        .map_err(|err| Error::Corrupt(format!("worker {id}: {}", err.reason)))?;
    let after = match after {
        None => AfterDrain::Terminate,
        Some(after) => after
            .parse()
            .map_err(|_| Error::Corrupt(format!("worker {id}: drain_after {after:?}")))?,
    };
    Ok((worker, after))
}

/// A bound on rows for SQL (`LIMIT`), which both databases take as a 64-bit integer.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An instant for SQL, clamped into `i64`.
pub(crate) fn sql_millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}
