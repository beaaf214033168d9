//! Jobs and their output in SQLite: the queries behind the job half of
//! [`SqliteStore`](crate::SqliteStore), kept apart from the worker half.
//!
//! State changes are compare-and-set `UPDATE`s (`... WHERE id = ? AND state = ?`), so of two
//! writers that both read a job as queued, only one moves it. Output is appended in one
//! transaction per call, and a chunk re-sent after a reconnect is ignored by its primary key.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::SystemTime;

use hodei_core::{Job, JobId, JobState};
use hodei_ports::store::{Error, JobFilter, LogChunk, LogStream};
use sqlx::error::ErrorKind;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use crate::sqlite::{MAX_TRANSITION_ATTEMPTS, map_sqlx_error, millis_since_epoch};

/// `(sequence, id, state, job_json)`, in that order in every `SELECT`.
pub(crate) type JobRow = (i64, String, String, String);

/// `(attempt, sequence, stream, data)`.
type LogRow = (i64, i64, String, Vec<u8>);

/// Rows per multi-row `INSERT` of log chunks, largest first. One statement per chunk would cost
/// a round trip to the connection's thread each; a few fixed sizes keep the number of distinct
/// statements (each prepared once per connection and cached) small, and write any batch in at
/// most one statement per size beyond the full batches of the largest.
const LOG_BATCH_SIZES: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// The `INSERT OR IGNORE` for each of [`LOG_BATCH_SIZES`], built on first use.
static LOG_INSERTS: [OnceLock<String>; LOG_BATCH_SIZES.len()] =
    [const { OnceLock::new() }; LOG_BATCH_SIZES.len()];

pub(crate) async fn insert_job(pool: &SqlitePool, job: &Job) -> Result<Job, Error> {
    let mut connection = pool.acquire().await.map_err(map_sqlx_error)?;
    insert_job_on(&mut connection, job).await
}

async fn insert_job_on(connection: &mut SqliteConnection, job: &Job) -> Result<Job, Error> {
    let job_json = encode_job(job)?;
    let now = millis_since_epoch(SystemTime::now());
    let sequence: i64 = sqlx::query_scalar(
        "INSERT INTO jobs \
         (id, state, tenant, queue, worker_id, job_json, created_at_ms, updated_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
         RETURNING sequence",
    )
    .bind(job.id.as_str())
    .bind(job.state.as_str())
    .bind(job.spec.tenant.as_str())
    .bind(job.spec.queue.as_str())
    .bind(job.worker_id.as_ref().map(|id| id.as_str()))
    .bind(job_json)
    .bind(now)
    .fetch_one(&mut *connection)
    .await
    .map_err(|err| match &err {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
            Error::JobExists(job.id.clone())
        }
        _ => map_sqlx_error(err),
    })?;
    let mut stored = job.clone();
    stored.sequence = decode_sequence(&job.id, sequence)?;
    Ok(stored)
}

pub(crate) async fn get_job(pool: &SqlitePool, id: &JobId) -> Result<Option<Job>, Error> {
    sqlx::query_as::<_, JobRow>("SELECT sequence, id, state, job_json FROM jobs WHERE id = ?1")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx_error)?
        .map(decode_job)
        .transpose()
}

pub(crate) async fn list_jobs(pool: &SqlitePool, filter: &JobFilter) -> Result<Vec<Job>, Error> {
    // The SQL text depends on which filters are set; each variant is prepared once per
    // connection and cached. States are listed in a fixed order without repeats so that equal
    // filters give equal text.
    let mut query =
        QueryBuilder::<Sqlite>::new("SELECT sequence, id, state, job_json FROM jobs WHERE 1 = 1");
    if !filter.states.is_empty() {
        query.push(" AND state IN (");
        let mut states = query.separated(", ");
        for state in JobState::ALL
            .into_iter()
            .filter(|state| filter.states.contains(state))
        {
            states.push_bind(state.as_str());
        }
        query.push(")");
    }
    if let Some(tenant) = &filter.tenant {
        query.push(" AND tenant = ").push_bind(tenant.as_str());
    }
    if let Some(queue) = &filter.queue {
        query.push(" AND queue = ").push_bind(queue.as_str());
    }
    if let Some(worker_id) = &filter.worker_id {
        query
            .push(" AND worker_id = ")
            .push_bind(worker_id.as_str());
    }
    if let Some(class) = filter.sla_class {
        // Every stored spec names its class (the field predates SLA tracking).
        query
            .push(" AND json_extract(job_json, '$.spec.sla_class') = ")
            .push_bind(class.as_str());
    }
    match filter.limit {
        None => {
            query.push(" ORDER BY sequence");
        }
        Some(limit) => {
            query
                .push(" ORDER BY sequence DESC LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }
    query
        .build_query_as::<JobRow>()
        .fetch_all(pool)
        .await
        .map_err(map_sqlx_error)?
        .into_iter()
        .map(decode_job)
        .collect()
}

pub(crate) async fn update_job(
    pool: &SqlitePool,
    job: &Job,
    expected: JobState,
) -> Result<(), Error> {
    let mut connection = pool.acquire().await.map_err(map_sqlx_error)?;
    update_job_on(&mut connection, job, expected).await
}

/// Whether an error concerns the whole database rather than one job: a batch stops there.
pub(crate) fn is_database_error(error: &Error) -> bool {
    matches!(
        error,
        Error::Unavailable(_) | Error::Corrupt(_) | Error::Fenced { .. }
    )
}

/// Several updates in one `BEGIN IMMEDIATE` transaction: one commit for all. Each update
/// gets its own result (a conflict fails that one only); a database error fails them all
/// and nothing is written.
pub(crate) async fn update_jobs(
    pool: &SqlitePool,
    updates: &[(Job, JobState)],
) -> Result<Vec<Result<(), Error>>, Error> {
    let mut transaction = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx_error)?;
    let results = update_jobs_on(&mut transaction, updates).await?;
    transaction.commit().await.map_err(map_sqlx_error)?;
    Ok(results)
}

/// Compare-and-set of every row in `?1` (a JSON array of [`BatchRow`]s) in one statement:
/// each job whose stored state is still the row's `expected` takes the row's values. The ids
/// of the jobs it changed come back.
///
/// Each statement costs a round trip to sqlx's SQLite thread; one per batch instead of one per
/// job is what the dispatcher's batches are for. `json_each` keeps the text the same whatever
/// the batch size, so it is prepared once per connection.
const BATCH_UPDATE: &str = "UPDATE jobs SET \
     state = u.value ->> 'state', tenant = u.value ->> 'tenant', \
     queue = u.value ->> 'queue', worker_id = u.value ->> 'worker_id', \
     job_json = u.value ->> 'job_json', updated_at_ms = ?2 \
     FROM json_each(?1) AS u \
     WHERE jobs.id = u.value ->> 'id' AND jobs.state = u.value ->> 'expected' \
     RETURNING jobs.id";

/// Inserts every row in `?1` (a JSON array of [`BatchRow`]s) in array order, so sequences
/// follow it; a taken id is skipped. The ids inserted come back with their sequences. (`WHERE
/// true` keeps `ON CONFLICT` from parsing as a join constraint.)
const BATCH_INSERT: &str = "INSERT INTO jobs \
     (id, state, tenant, queue, worker_id, job_json, created_at_ms, updated_at_ms) \
     SELECT u.value ->> 'id', u.value ->> 'state', u.value ->> 'tenant', \
     u.value ->> 'queue', u.value ->> 'worker_id', u.value ->> 'job_json', ?2, ?2 \
     FROM json_each(?1) AS u WHERE true ORDER BY u.key \
     ON CONFLICT (id) DO NOTHING \
     RETURNING id, sequence";

/// The stored state of every job whose id is in `?1` (a JSON array of ids).
const STATES_OF: &str = "SELECT id, state FROM jobs WHERE id IN (SELECT value FROM json_each(?1))";

/// One job of a batched statement, as a JSON object read back with `->>`.
#[derive(serde::Serialize)]
struct BatchRow<'a> {
    id: &'a str,
    /// The state the job must still be in (updates only).
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'static str>,
    state: &'static str,
    tenant: &'a str,
    queue: &'a str,
    worker_id: Option<&'a str>,
    job_json: String,
}

impl<'a> BatchRow<'a> {
    fn new(job: &'a Job, expected: Option<JobState>) -> Result<Self, Error> {
        Ok(Self {
            id: job.id.as_str(),
            expected: expected.map(JobState::as_str),
            state: job.state.as_str(),
            tenant: job.spec.tenant.as_str(),
            queue: job.spec.queue.as_str(),
            worker_id: job.worker_id.as_ref().map(|id| id.as_str()),
            job_json: encode_job(job)?,
        })
    }
}

fn encode_rows<T: serde::Serialize>(rows: &[T]) -> Result<String, Error> {
    serde_json::to_string(rows)
        .map_err(|err| Error::Corrupt(format!("cannot encode a batch of jobs: {err}")))
}

/// [`update_jobs`] on a connection inside a transaction: the legal updates of distinct jobs
/// in one statement, then one read of the stored states of those that did not apply.
async fn update_jobs_on(
    connection: &mut SqliteConnection,
    updates: &[(Job, JobState)],
) -> Result<Vec<Result<(), Error>>, Error> {
    if repeats_a_job(updates) {
        let mut results = Vec::with_capacity(updates.len());
        for (job, expected) in updates {
            match update_job_on(&mut *connection, job, *expected).await {
                Err(error) if is_database_error(&error) => return Err(error),
                result => results.push(result),
            }
        }
        return Ok(results);
    }
    let mut results: Vec<Option<Result<(), Error>>> = updates.iter().map(|_| None).collect();
    let mut rows = Vec::with_capacity(updates.len());
    let mut batched = Vec::with_capacity(updates.len());
    for (index, (job, expected)) in updates.iter().enumerate() {
        if is_refused(job, *expected) {
            match update_job_on(&mut *connection, job, *expected).await {
                Err(error) if is_database_error(&error) => return Err(error),
                result => results[index] = Some(result),
            }
            continue;
        }
        rows.push(BatchRow::new(job, Some(*expected))?);
        batched.push(index);
    }
    if !rows.is_empty() {
        let updated: Vec<String> = sqlx::query_scalar(BATCH_UPDATE)
            .bind(encode_rows(&rows)?)
            .bind(millis_since_epoch(SystemTime::now()))
            .fetch_all(&mut *connection)
            .await
            .map_err(map_sqlx_error)?;
        let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
        let missed: Vec<&str> = batched
            .iter()
            .map(|index| updates[*index].0.id.as_str())
            .filter(|id| !updated.contains(id))
            .collect();
        let stored: HashMap<String, String> = if missed.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (String, String)>(STATES_OF)
                .bind(encode_rows(&missed)?)
                .fetch_all(&mut *connection)
                .await
                .map_err(map_sqlx_error)?
                .into_iter()
                .collect()
        };
        for index in batched {
            let (job, expected) = &updates[index];
            let stored = stored.get(job.id.as_str()).map(String::as_str);
            results[index] = Some(match missed_update(job, *expected, &updated, stored)? {
                Some(result) => result,
                // The write lock is held: nothing can have moved it in between.
                None => {
                    return Err(Error::Corrupt(format!(
                        "job {} is {expected} but its update did not apply",
                        job.id
                    )));
                }
            });
        }
    }
    Ok(collect_results(results))
}

/// Whether a batch updates some job more than once: the later update compares against the
/// earlier one's state, which one statement cannot do, so such a batch is applied in order.
pub(crate) fn repeats_a_job(updates: &[(Job, JobState)]) -> bool {
    let mut ids = HashSet::new();
    !updates.iter().all(|(job, _)| ids.insert(&job.id))
}

/// Whether the state machine refuses `expected -> job.state`: such an update is not sent
/// with the batch, and the single update reports what the store holds.
pub(crate) fn is_refused(job: &Job, expected: JobState) -> bool {
    job.state != expected && expected.transition(job.state).is_err()
}

/// The result of one update of a batched statement, given whether it applied (its id in
/// `updated`) and otherwise the state stored now (`None`: no such job). `None` when the job is
/// in the expected state all the same, so only a single update can tell.
pub(crate) fn missed_update(
    job: &Job,
    expected: JobState,
    updated: &HashSet<&str>,
    stored: Option<&str>,
) -> Result<Option<Result<(), Error>>, Error> {
    if updated.contains(job.id.as_str()) {
        return Ok(Some(Ok(())));
    }
    let Some(state) = stored else {
        return Ok(Some(Err(Error::JobNotFound(job.id.clone()))));
    };
    let actual = state
        .parse::<JobState>()
        .map_err(|err| Error::Corrupt(format!("job {}: {err}", job.id)))?;
    Ok((actual != expected).then(|| Err(conflict(job, expected, actual))))
}

/// Per-update results, every slot filled by the batch functions.
pub(crate) fn collect_results(results: Vec<Option<Result<(), Error>>>) -> Vec<Result<(), Error>> {
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(Error::Corrupt("an update got no result".to_owned())))
        })
        .collect()
}

/// Several inserts in one transaction and one statement, as [`update_jobs`]. Of a batch that
/// names one id twice, the first is inserted and the second is [`Error::JobExists`], as when
/// inserted one after the other.
pub(crate) async fn insert_jobs(
    pool: &SqlitePool,
    jobs: &[Job],
) -> Result<Vec<Result<Job, Error>>, Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = jobs
        .iter()
        .map(|job| BatchRow::new(job, None))
        .collect::<Result<Vec<_>, Error>>()?;
    let rows = encode_rows(&rows)?;
    let mut transaction = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx_error)?;
    let inserted: Vec<(String, i64)> = sqlx::query_as(BATCH_INSERT)
        .bind(rows)
        .bind(millis_since_epoch(SystemTime::now()))
        .fetch_all(&mut *transaction)
        .await
        .map_err(map_sqlx_error)?;
    let mut sequences: HashMap<String, i64> = inserted.into_iter().collect();
    let results = jobs
        .iter()
        .map(|job| {
            // `remove`: a second copy of an id in the batch finds it taken.
            Ok(match sequences.remove(job.id.as_str()) {
                Some(sequence) => {
                    let mut stored = job.clone();
                    stored.sequence = decode_sequence(&job.id, sequence)?;
                    Ok(stored)
                }
                None => Err(Error::JobExists(job.id.clone())),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    transaction.commit().await.map_err(map_sqlx_error)?;
    Ok(results)
}

async fn update_job_on(
    connection: &mut SqliteConnection,
    job: &Job,
    expected: JobState,
) -> Result<(), Error> {
    if job.state != expected
        && let Err(illegal) = expected.transition(job.state)
    {
        // Nothing will be written, but a job that is gone or moved on is reported as such
        // first, as a successful compare would have.
        return match stored_state(&mut *connection, &job.id).await? {
            None => Err(Error::JobNotFound(job.id.clone())),
            Some(actual) if actual != expected => Err(conflict(job, expected, actual)),
            Some(_) => Err(Error::IllegalJobTransition(illegal)),
        };
    }
    let job_json = encode_job(job)?;
    for _ in 0..MAX_TRANSITION_ATTEMPTS {
        // The stored sequence is kept: it is the store's, like the submission order it records.
        let updated = sqlx::query(
            "UPDATE jobs SET state = ?1, tenant = ?2, queue = ?3, worker_id = ?4, \
             job_json = ?5, updated_at_ms = ?6 \
             WHERE id = ?7 AND state = ?8",
        )
        .bind(job.state.as_str())
        .bind(job.spec.tenant.as_str())
        .bind(job.spec.queue.as_str())
        .bind(job.worker_id.as_ref().map(|id| id.as_str()))
        .bind(&job_json)
        .bind(millis_since_epoch(SystemTime::now()))
        .bind(job.id.as_str())
        .bind(expected.as_str())
        .execute(&mut *connection)
        .await
        .map_err(map_sqlx_error)?;
        if updated.rows_affected() > 0 {
            return Ok(());
        }
        match stored_state(&mut *connection, &job.id).await? {
            None => return Err(Error::JobNotFound(job.id.clone())),
            Some(actual) if actual != expected => return Err(conflict(job, expected, actual)),
            // Moved away and back between the two statements: compare again.
            Some(_) => {}
        }
    }
    Err(Error::Unavailable(format!(
        "job {} kept changing under concurrent updates",
        job.id
    )))
}

pub(crate) async fn append_logs(pool: &SqlitePool, chunks: &[LogChunk]) -> Result<(), Error> {
    if chunks.is_empty() {
        return Ok(());
    }
    // IMMEDIATE takes the write lock up front: a deferred transaction that reads first could
    // find its snapshot stale when it comes to write and fail with SQLITE_BUSY at once, with
    // no busy timeout to wait it out. Returning early drops the transaction, rolling it back,
    // so a batch is stored whole or not at all.
    let mut transaction = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx_error)?;
    let mut known: HashSet<&JobId> = HashSet::new();
    for chunk in chunks {
        if known.insert(&chunk.job_id) && !job_exists(&mut *transaction, &chunk.job_id).await? {
            return Err(Error::JobNotFound(chunk.job_id.clone()));
        }
    }
    let rows = chunks
        .iter()
        .map(LogValues::new)
        .collect::<Result<Vec<_>, Error>>()?;
    let mut rest = rows.as_slice();
    for (size, sql) in LOG_BATCH_SIZES.iter().zip(&LOG_INSERTS) {
        let sql = sql.get_or_init(|| batch_insert_sql(*size));
        while let Some((batch, tail)) = rest.split_at_checked(*size) {
            let mut insert = sqlx::query(sql.as_str());
            for row in batch {
                insert = row.bind(insert);
            }
            insert
                .execute(&mut *transaction)
                .await
                .map_err(map_sqlx_error)?;
            rest = tail;
        }
    }
    transaction.commit().await.map_err(map_sqlx_error)
}

pub(crate) async fn read_logs(
    pool: &SqlitePool,
    id: &JobId,
    after: usize,
    limit: usize,
) -> Result<Vec<LogChunk>, Error> {
    let rows = sqlx::query_as::<_, LogRow>(
        "SELECT attempt, sequence, stream, data FROM job_logs WHERE job_id = ?1 \
         ORDER BY attempt, sequence LIMIT ?2 OFFSET ?3",
    )
    .bind(id.as_str())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(map_sqlx_error)?;
    // Only an empty page needs telling apart "no such job" from "nothing (more) to read".
    if rows.is_empty() && !job_exists(pool, id).await? {
        return Err(Error::JobNotFound(id.clone()));
    }
    rows.into_iter()
        .map(|(attempt, sequence, stream, data)| {
            Ok(LogChunk {
                job_id: id.clone(),
                attempt: u32::try_from(attempt).map_err(|_| {
                    Error::Corrupt(format!("job {id}: log attempt {attempt} is out of range"))
                })?,
                sequence: u64::try_from(sequence).map_err(|_| {
                    Error::Corrupt(format!("job {id}: log sequence {sequence} is out of range"))
                })?,
                stream: LogStream::parse(&stream).ok_or_else(|| {
                    Error::Corrupt(format!("job {id}: unknown log stream {stream:?}"))
                })?,
                data,
            })
        })
        .collect()
}

/// One chunk's column values, checked to fit SQLite's signed 64-bit integers.
struct LogValues<'a> {
    job_id: &'a str,
    attempt: i64,
    sequence: i64,
    stream: &'static str,
    data: &'a [u8],
}

impl<'a> LogValues<'a> {
    fn new(chunk: &'a LogChunk) -> Result<Self, Error> {
        let sequence = i64::try_from(chunk.sequence).map_err(|_| {
            Error::Corrupt(format!(
                "job {}: log sequence {} is beyond what the store keeps",
                chunk.job_id, chunk.sequence
            ))
        })?;
        Ok(Self {
            job_id: chunk.job_id.as_str(),
            attempt: i64::from(chunk.attempt),
            sequence,
            stream: chunk.stream.as_str(),
            data: &chunk.data,
        })
    }

    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>
    where
        'a: 'q,
    {
        query
            .bind(self.job_id)
            .bind(self.attempt)
            .bind(self.sequence)
            .bind(self.stream)
            .bind(self.data)
    }
}

/// `INSERT OR IGNORE` of `rows` chunks.
fn batch_insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT OR IGNORE INTO job_logs (job_id, attempt, sequence, stream, data) VALUES {values}"
    )
}

async fn stored_state(
    connection: &mut SqliteConnection,
    id: &JobId,
) -> Result<Option<JobState>, Error> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
        .bind(id.as_str())
        .fetch_optional(&mut *connection)
        .await
        .map_err(map_sqlx_error)?;
    state
        .map(|state| {
            state
                .parse::<JobState>()
                .map_err(|err| Error::Corrupt(format!("job {id}: {err}")))
        })
        .transpose()
}

async fn job_exists<'c, E>(executor: E, id: &JobId) -> Result<bool, Error>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1")
        .bind(id.as_str())
        .fetch_optional(executor)
        .await
        .map_err(map_sqlx_error)?;
    Ok(found.is_some())
}

pub(crate) fn conflict(job: &Job, expected: JobState, actual: JobState) -> Error {
    Error::JobStateConflict {
        job_id: job.id.clone(),
        expected,
        actual,
    }
}

pub(crate) fn encode_job(job: &Job) -> Result<String, Error> {
    serde_json::to_string(job)
        .map_err(|err| Error::Corrupt(format!("cannot encode job {}: {err}", job.id)))
}

pub(crate) fn decode_job((sequence, id, state, job_json): JobRow) -> Result<Job, Error> {
    let mut job: Job = serde_json::from_str(&job_json)
        .map_err(|err| Error::Corrupt(format!("job {id}: invalid job json: {err}")))?;
    if job.id.as_str() != id {
        return Err(Error::Corrupt(format!("row {id} holds job {}", job.id)));
    }
    job.state = state
        .parse::<JobState>()
        .map_err(|err| Error::Corrupt(format!("job {id}: {err}")))?;
    job.sequence = decode_sequence(&job.id, sequence)?;
    Ok(job)
}

pub(crate) fn decode_sequence(id: &JobId, sequence: i64) -> Result<u64, Error> {
    u64::try_from(sequence)
        .map_err(|_| Error::Corrupt(format!("job {id}: sequence {sequence} is negative")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail by panicking.
mod tests {
    use super::*;

    #[test]
    fn streams_round_trip_through_their_column_names() {
        for stream in [LogStream::Stdout, LogStream::Stderr, LogStream::Output] {
            assert_eq!(LogStream::parse(stream.as_str()), Some(stream));
        }
        assert_eq!(LogStream::parse("stdin"), None);
    }

    #[tokio::test]
    async fn batched_statements_find_each_job_by_its_id_index() {
        let store = crate::SqliteStore::in_memory().await.unwrap();
        for sql in [BATCH_UPDATE, STATES_OF] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .bind("[]")
                    .bind(0_i64)
                    .fetch_all(store.pool())
                    .await
                    .unwrap();
            let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            assert!(
                details.iter().any(
                    |detail| detail.contains("jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)")
                ),
                "{sql}: {details:?}"
            );
            assert!(
                !details.iter().any(|detail| detail.starts_with("SCAN jobs")),
                "{sql}: {details:?}"
            );
        }
    }

    #[test]
    fn batch_inserts_have_one_placeholder_per_column_of_every_row() {
        for size in LOG_BATCH_SIZES {
            let sql = batch_insert_sql(size);
            assert_eq!(sql.matches('?').count(), 5 * size, "{sql}");
            assert!(sql.starts_with("INSERT OR IGNORE"));
        }
        // Each size is half the one before, so every remainder is written in one pass.
        assert!(
            LOG_BATCH_SIZES
                .windows(2)
                .all(|pair| pair[0] == 2 * pair[1])
        );
        assert_eq!(LOG_BATCH_SIZES.last(), Some(&1));
    }
}
