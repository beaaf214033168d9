//! The PostgreSQL store: the same tables as SQLite (migrations in `migrations_pg/`), for
//! servers that keep their state on a database that outlives one machine.
//!
//! Every write is one statement or one transaction, committed by PostgreSQL before it is
//! acknowledged (with the server's `synchronous_commit`, on by default, that means flushed to
//! its WAL). Lifecycle transitions are compare-and-set `UPDATE ... WHERE id = $1 AND state =
//! $2`. Under READ COMMITTED, the default isolation this store relies on, a second writer of
//! the same row waits for the first to commit and then re-checks the `WHERE` against the row
//! the first left, so exactly one of two racing transitions matches, as in SQLite.
//!
//! Where SQLite lets a transaction go on after a failed statement, PostgreSQL aborts it, so
//! nothing here relies on a statement failing inside a transaction: a taken job id is found by
//! `ON CONFLICT DO NOTHING RETURNING`, not by a unique violation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hodei_core::cost::{AttemptTotals, AttemptUsage, PoolUsage, hour_start};
use hodei_core::lease::{Lease, Member};
use hodei_core::pool_pass::ArrivalProfile;
use hodei_core::tenancy::Tenant;
use hodei_core::{
    AfterDrain, Job, JobId, JobState, PoolSpec, TenantName, Worker, WorkerId, WorkerState,
};
use hodei_ports::store::{
    CredentialRecord, Error, JobFilter, LogChunk, LogStream, Store, WorkerFilter, WorkerRecord,
};
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::jobs::{
    JobRow, collect_results, conflict, decode_job, decode_sequence, encode_job, is_database_error,
    is_refused, missed_update, repeats_a_job,
};
use crate::sqlite::{
    MAX_TRANSITION_ATTEMPTS, PoolRow, WorkerRow, decode_pool, decode_worker, map_migrate_error,
    millis_since_epoch,
};
use crate::{credentials, retention, usage};
use crate::{profiles, tenants};

/// PostgreSQL's numbered placeholder.
fn pg_placeholder(n: u8) -> String {
    format!("${n}")
}

/// Connections per server. Every API call, agent stream and loop uses one only for the length
/// of a statement or a short transaction, so a few serve many; the contract's sixteen
/// concurrent writers fit without waiting.
pub const MAX_CONNECTIONS: u32 = 16;

/// How long a call waits for a free connection (or a new one to connect) before failing as
/// [`Error::Unavailable`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Store`] in a PostgreSQL database, laid out as [`SqliteStore`](crate::SqliteStore)'s
/// (the same tables and JSON columns). Cloning is cheap and shares the connections.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Set on a leader's store: every job write checks the lease is still at this epoch.
    fence: Option<Fence>,
}

/// A leader's claim: the lease it holds and the epoch it holds it with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    lease: String,
    epoch: u64,
}

impl PostgresStore {
    /// Runs one of retention's deletes (`before_ms`, then `limit`); the rows deleted.
    async fn prune(&self, sql: &str, before_ms: u64, limit: usize) -> Result<usize, Error> {
        let deleted = sqlx::query(sql)
            .bind(retention::sql_millis(before_ms))
            .bind(retention::sql_limit(limit))
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?;
        Ok(usize::try_from(deleted.rows_affected()).unwrap_or(usize::MAX))
    }

    /// Connects to the database named by `url` (`postgres://user:password@host:port/db`, with
    /// libpq's query parameters such as `sslmode`) and brings its schema up to date. The
    /// database must exist; the user needs the right to create tables in it.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, MAX_CONNECTIONS).await
    }

    /// [`PostgresStore::connect`] with a pool of at most `max_connections` (at least 1): a
    /// replica's lease loop has connections of its own, so that renewing never waits behind
    /// the dispatcher's writes for a free one.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, Error> {
        Self::connect_replica(url, max_connections, None).await
    }

    /// [`PostgresStore::connect_with`] for a replica: with `idle_in_transaction`, the database
    /// ends a session of this pool that leaves a transaction open and silent that long
    /// (`idle_in_transaction_session_timeout`), rolling it back. A leader cut off from the
    /// database mid-transaction would otherwise hold its share lock on the lease row (taken by
    /// every fenced write) for as long as the connection looks alive, and no other replica
    /// could take the lease.
    pub async fn connect_replica(
        url: &str,
        max_connections: u32,
        idle_in_transaction: Option<Duration>,
    ) -> Result<Self, Error> {
        let mut options = PgConnectOptions::from_str(url).map_err(|err| {
            // The URL may hold a password: name the problem, not the URL.
            Error::Unavailable(format!("invalid [store] url: {err}"))
        })?;
        if let Some(limit) = idle_in_transaction {
            options = options.options([(
                "idle_in_transaction_session_timeout",
                limit.as_millis().max(1),
            )]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_pg_error)?;
        sqlx::migrate!("./migrations_pg")
            .run(&pool)
            .await
            .map_err(map_migrate_error_pg)?;
        Ok(Self { pool, fence: None })
    }

    /// The same store (same connections) for the leader holding `lease` with `epoch`: each
    /// job write (insert or update, one or a batch) runs in a transaction that first reads the
    /// lease row `FOR SHARE` and fails with [`Error::Fenced`], writing nothing, when another
    /// epoch holds it. The share lock makes a takeover wait for writes in progress, and a write
    /// that starts after a takeover sees the new epoch, so a paused old leader cannot record
    /// an assignment once another replica leads.
    pub fn fenced(&self, lease: &str, epoch: u64) -> Self {
        Self {
            pool: self.pool.clone(),
            fence: Some(Fence {
                lease: lease.to_owned(),
                epoch,
            }),
        }
    }

    /// A transaction whose first statement checks the fence, or `None` for an unfenced store.
    async fn fenced_transaction(
        &self,
    ) -> Result<Option<sqlx::Transaction<'static, Postgres>>, Error> {
        let Some(fence) = &self.fence else {
            return Ok(None);
        };
        let mut transaction = self.pool.begin().await.map_err(map_pg_error)?;
        check_fence(&mut transaction, fence).await?;
        Ok(Some(transaction))
    }

    /// Waits for running statements to finish and closes every connection. Later calls fail
    /// with [`Error::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Inserts the jobs given column by column in `$1..$6`, in array order so that sequences
/// follow it; a taken id is skipped. The ids inserted come back with their sequences.
const BATCH_INSERT: &str = "INSERT INTO jobs \
     (id, state, tenant, queue, worker_id, job_json, created_at_ms, updated_at_ms) \
     SELECT id, state, tenant, queue, worker_id, job_json, $7, $7 \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
     WITH ORDINALITY AS u (id, state, tenant, queue, worker_id, job_json, position) \
     ORDER BY position \
     ON CONFLICT (id) DO NOTHING \
     RETURNING id, sequence";

/// Compare-and-set of the jobs given column by column in `$1..$7`: each job whose stored state
/// is still its `expected` takes the new values. Under READ COMMITTED a row another writer
/// holds is waited for and its `WHERE` re-checked on what that writer committed. The ids
/// changed come back.
const BATCH_UPDATE: &str = "UPDATE jobs SET \
     state = u.state, tenant = u.tenant, queue = u.queue, worker_id = u.worker_id, \
     job_json = u.job_json, updated_at_ms = $8 \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[]) AS u (id, expected, state, tenant, queue, worker_id, job_json) \
     WHERE jobs.id = u.id AND jobs.state = u.expected \
     RETURNING jobs.id";

/// Jobs as one array per column, for the batched statements.
struct JobColumns<'a> {
    ids: Vec<&'a str>,
    expected: Vec<&'static str>,
    states: Vec<&'static str>,
    tenants: Vec<&'a str>,
    queues: Vec<&'a str>,
    worker_ids: Vec<Option<&'a str>>,
    job_jsons: Vec<String>,
}

impl<'a> JobColumns<'a> {
    /// Columns of `jobs`, each with the state it is expected in (updates) or `None` (inserts).
    fn new(
        jobs: impl ExactSizeIterator<Item = (&'a Job, Option<JobState>)>,
    ) -> Result<Self, Error> {
        let mut columns = Self {
            ids: Vec::with_capacity(jobs.len()),
            expected: Vec::with_capacity(jobs.len()),
            states: Vec::with_capacity(jobs.len()),
            tenants: Vec::with_capacity(jobs.len()),
            queues: Vec::with_capacity(jobs.len()),
            worker_ids: Vec::with_capacity(jobs.len()),
            job_jsons: Vec::with_capacity(jobs.len()),
        };
        for (job, expected) in jobs {
            columns.ids.push(job.id.as_str());
            if let Some(expected) = expected {
                columns.expected.push(expected.as_str());
            }
            columns.states.push(job.state.as_str());
            columns.tenants.push(job.spec.tenant.as_str());
            columns.queues.push(job.spec.queue.as_str());
            columns
                .worker_ids
                .push(job.worker_id.as_ref().map(|id| id.as_str()));
            columns.job_jsons.push(encode_job(job)?);
        }
        Ok(columns)
    }
}

/// `(attempt, sequence, stream, data)` of one log row.
type LogRow = (i64, i64, String, Vec<u8>);

const WORKER_COLUMNS: &str = "id, state, registered, worker_json, updated_at_ms";

#[async_trait]
impl Store for PostgresStore {
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error> {
        let worker_json = serde_json::to_string(worker)
            .map_err(|err| Error::Corrupt(format!("cannot encode worker {}: {err}", worker.id)))?;
        let now = millis_since_epoch(SystemTime::now());
        let inserted = sqlx::query(
            "INSERT INTO workers \
             (id, pool, state, registered, worker_json, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, FALSE, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(worker.id.as_str())
        .bind(worker.metadata.pool.as_deref())
        .bind(state.as_str())
        .bind(worker_json)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        if inserted.rows_affected() == 0 {
            return Err(Error::WorkerExists(worker.id.clone()));
        }
        Ok(())
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error> {
        sqlx::query_as::<_, WorkerRow>(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_pg_error)?
        .map(decode_worker)
        .transpose()
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error> {
        // The id column is `COLLATE "C"`: byte order, as `WorkerId`'s `Ord`.
        sqlx::query_as::<_, WorkerRow>(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers \
             WHERE ($1::text IS NULL OR pool = $1) AND (NOT $2 OR state <> $3) \
             ORDER BY id"
        ))
        .bind(filter.pool.as_deref())
        .bind(filter.live_only)
        .bind(WorkerState::Terminated.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?
        .into_iter()
        .map(decode_worker)
        .collect()
    }

    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error> {
        // Compare-and-set, as in SQLite: decide on the state read, write only if it is still
        // that state. A writer that lost the race sees 0 rows (READ COMMITTED re-checks the
        // WHERE on the winner's row) and decides again.
        for _ in 0..MAX_TRANSITION_ATTEMPTS {
            let current = self
                .get_worker(id)
                .await?
                .ok_or_else(|| Error::WorkerNotFound(id.clone()))?;
            let next = current.state.transition(to)?;
            let updated = sqlx::query_as::<_, WorkerRow>(&format!(
                "UPDATE workers SET state = $1, updated_at_ms = $2 \
                 WHERE id = $3 AND state = $4 RETURNING {WORKER_COLUMNS}"
            ))
            .bind(next.as_str())
            .bind(millis_since_epoch(SystemTime::now()))
            .bind(id.as_str())
            .bind(current.state.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_pg_error)?;
            if let Some(row) = updated {
                return decode_worker(row);
            }
        }
        Err(Error::Unavailable(format!(
            "worker {id} kept changing under concurrent transitions"
        )))
    }

    async fn set_registered(&self, id: &WorkerId, registered: bool) -> Result<(), Error> {
        let updated =
            sqlx::query("UPDATE workers SET registered = $1, updated_at_ms = $2 WHERE id = $3")
                .bind(registered)
                .bind(millis_since_epoch(SystemTime::now()))
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .map_err(map_pg_error)?;
        if updated.rows_affected() == 0 {
            return Err(Error::WorkerNotFound(id.clone()));
        }
        Ok(())
    }

    async fn set_worker_drain(
        &self,
        id: &WorkerId,
        after: Option<AfterDrain>,
    ) -> Result<(), Error> {
        let updated = sqlx::query("UPDATE workers SET drain_after = $1 WHERE id = $2")
            .bind(after.map(AfterDrain::as_str))
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?;
        if updated.rows_affected() == 0 {
            return Err(Error::WorkerNotFound(id.clone()));
        }
        Ok(())
    }

    async fn drained_workers(&self) -> Result<Vec<(WorkerId, AfterDrain)>, Error> {
        sqlx::query_as::<_, (String, Option<String>)>(&retention::drained_sql())
            .fetch_all(&self.pool)
            .await
            .map_err(map_pg_error)?
            .into_iter()
            .map(retention::decode_drained)
            .collect()
    }

    async fn prune_workers(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        self.prune(
            &retention::prune_workers_sql(pg_placeholder),
            before_ms,
            limit,
        )
        .await
    }

    async fn prune_jobs(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        self.prune(&retention::prune_jobs_sql(pg_placeholder), before_ms, limit)
            .await
    }

    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        let spec_json = serde_json::to_string(pool)
            .map_err(|err| Error::Corrupt(format!("cannot encode pool {}: {err}", pool.name)))?;
        sqlx::query(
            "INSERT INTO pools (name, spec_json, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE \
             SET spec_json = excluded.spec_json, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&pool.name)
        .bind(spec_json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(())
    }

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error> {
        sqlx::query_as::<_, PoolRow>("SELECT name, spec_json FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_pg_error)?
            .map(decode_pool)
            .transpose()
    }

    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error> {
        sqlx::query_as::<_, PoolRow>("SELECT name, spec_json FROM pools ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_pg_error)?
            .into_iter()
            .map(decode_pool)
            .collect()
    }

    async fn delete_pool(&self, name: &str) -> Result<bool, Error> {
        let deleted = sqlx::query("DELETE FROM pools WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn insert_job(&self, job: &Job) -> Result<Job, Error> {
        if let Some(mut transaction) = self.fenced_transaction().await? {
            let inserted = insert_job_on(&mut transaction, job).await?;
            transaction.commit().await.map_err(map_pg_error)?;
            return Ok(inserted);
        }
        let mut connection = self.pool.acquire().await.map_err(map_pg_error)?;
        insert_job_on(&mut connection, job).await
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        sqlx::query_as::<_, JobRow>("SELECT sequence, id, state, job_json FROM jobs WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_pg_error)?
            .map(decode_job)
            .transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, Error> {
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT sequence, id, state, job_json FROM jobs WHERE TRUE",
        );
        if !filter.states.is_empty() {
            let states: Vec<&str> = JobState::ALL
                .into_iter()
                .filter(|state| filter.states.contains(state))
                .map(JobState::as_str)
                .collect();
            query.push(" AND state = ANY(").push_bind(states).push(")");
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
            query
                .push(" AND (job_json::jsonb -> 'spec' ->> 'sla_class') = ")
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
            .fetch_all(&self.pool)
            .await
            .map_err(map_pg_error)?
            .into_iter()
            .map(decode_job)
            .collect()
    }

    async fn update_job(&self, job: &Job, expected: JobState) -> Result<(), Error> {
        if let Some(mut transaction) = self.fenced_transaction().await? {
            update_job_on(&mut transaction, job, expected).await?;
            transaction.commit().await.map_err(map_pg_error)?;
            return Ok(());
        }
        let mut connection = self.pool.acquire().await.map_err(map_pg_error)?;
        update_job_on(&mut connection, job, expected).await
    }

    async fn insert_jobs(&self, jobs: &[Job]) -> Result<Vec<Result<Job, Error>>, Error> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let columns = JobColumns::new(jobs.iter().map(|job| (job, None)))?;
        // One statement, so nothing to roll back: all rows or none.
        let statement = sqlx::query_as(BATCH_INSERT)
            .bind(&columns.ids)
            .bind(&columns.states)
            .bind(&columns.tenants)
            .bind(&columns.queues)
            .bind(&columns.worker_ids)
            .bind(&columns.job_jsons)
            .bind(millis_since_epoch(SystemTime::now()));
        let inserted: Vec<(String, i64)> = match self.fenced_transaction().await? {
            Some(mut transaction) => {
                let inserted = statement
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(map_pg_error)?;
                transaction.commit().await.map_err(map_pg_error)?;
                inserted
            }
            None => statement
                .fetch_all(&self.pool)
                .await
                .map_err(map_pg_error)?,
        };
        let mut sequences: HashMap<String, i64> = inserted.into_iter().collect();
        jobs.iter()
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
            .collect()
    }

    async fn update_jobs(
        &self,
        updates: &[(Job, JobState)],
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let mut transaction = self.pool.begin().await.map_err(map_pg_error)?;
        if let Some(fence) = &self.fence {
            check_fence(&mut transaction, fence).await?;
        }
        let mut results: Vec<Option<Result<(), Error>>> = updates.iter().map(|_| None).collect();
        let mut single = Vec::new();
        let mut batched = Vec::with_capacity(updates.len());
        if repeats_a_job(updates) {
            single.extend(0..updates.len());
        } else {
            for (index, (job, expected)) in updates.iter().enumerate() {
                if is_refused(job, *expected) {
                    single.push(index);
                } else {
                    batched.push(index);
                }
            }
        }
        if !batched.is_empty() {
            let columns = JobColumns::new(
                batched
                    .iter()
                    .map(|index| (&updates[*index].0, Some(updates[*index].1))),
            )?;
            let updated: Vec<String> = sqlx::query_scalar(BATCH_UPDATE)
                .bind(&columns.ids)
                .bind(&columns.expected)
                .bind(&columns.states)
                .bind(&columns.tenants)
                .bind(&columns.queues)
                .bind(&columns.worker_ids)
                .bind(&columns.job_jsons)
                .bind(millis_since_epoch(SystemTime::now()))
                .fetch_all(&mut *transaction)
                .await
                .map_err(map_pg_error)?;
            let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
            let missed: Vec<&str> = columns
                .ids
                .iter()
                .copied()
                .filter(|id| !updated.contains(id))
                .collect();
            let stored: HashMap<String, String> = if missed.is_empty() {
                HashMap::new()
            } else {
                sqlx::query_as::<_, (String, String)>(
                    "SELECT id, state FROM jobs WHERE id = ANY($1)",
                )
                .bind(&missed)
                .fetch_all(&mut *transaction)
                .await
                .map_err(map_pg_error)?
                .into_iter()
                .collect()
            };
            for index in batched {
                let (job, expected) = &updates[index];
                let stored = stored.get(job.id.as_str()).map(String::as_str);
                match missed_update(job, *expected, &updated, stored)? {
                    Some(result) => results[index] = Some(result),
                    // Moved away and back by another writer between the two statements (no
                    // lock is held across them under READ COMMITTED): compare again alone.
                    None => single.push(index),
                }
            }
        }
        single.sort_unstable();
        for index in single {
            let (job, expected) = &updates[index];
            match update_job_on(&mut transaction, job, *expected).await {
                Err(error) if is_database_error(&error) => return Err(error),
                result => results[index] = Some(result),
            }
        }
        transaction.commit().await.map_err(map_pg_error)?;
        Ok(collect_results(results))
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<(), Error> {
        if chunks.is_empty() {
            return Ok(());
        }
        // Jobs are never deleted, so a job found here is still there for the insert; the
        // foreign key would refuse it otherwise. Checking first names the unknown job.
        let mut wanted: Vec<&str> = Vec::new();
        let mut seen = HashSet::new();
        for chunk in chunks {
            if seen.insert(&chunk.job_id) {
                wanted.push(chunk.job_id.as_str());
            }
        }
        let found: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
            .bind(&wanted)
            .fetch_all(&self.pool)
            .await
            .map_err(map_pg_error)?;
        let found: HashSet<&str> = found.iter().map(String::as_str).collect();
        if let Some(missing) = chunks
            .iter()
            .find(|chunk| !found.contains(chunk.job_id.as_str()))
        {
            return Err(Error::JobNotFound(missing.job_id.clone()));
        }
        // One statement for the whole call, so it is stored whole or not at all. Of chunks
        // repeated within the call the first is kept, as a re-sent one is ignored.
        let mut keys = HashSet::new();
        let mut columns = LogColumns::default();
        for chunk in chunks {
            if keys.insert((&chunk.job_id, chunk.attempt, chunk.sequence)) {
                columns.push(chunk)?;
            }
        }
        sqlx::query(
            "INSERT INTO job_logs (job_id, attempt, sequence, stream, data) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::bytea[]) \
             ON CONFLICT (job_id, attempt, sequence) DO NOTHING",
        )
        .bind(columns.job_ids)
        .bind(columns.attempts)
        .bind(columns.sequences)
        .bind(columns.streams)
        .bind(columns.data)
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(())
    }

    async fn read_logs(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
    ) -> Result<Vec<LogChunk>, Error> {
        let rows = sqlx::query_as::<_, LogRow>(
            "SELECT attempt, sequence, stream, data FROM job_logs WHERE job_id = $1 \
             ORDER BY attempt, sequence LIMIT $2 OFFSET $3",
        )
        .bind(id.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?;
        // Only an empty page needs telling apart "no such job" from "nothing (more) to read".
        if rows.is_empty() {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_pg_error)?;
            if exists.is_none() {
                return Err(Error::JobNotFound(id.clone()));
            }
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

    async fn insert_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        let spec_json = serde_json::to_string(pool)
            .map_err(|err| Error::Corrupt(format!("cannot encode pool {}: {err}", pool.name)))?;
        // `ON CONFLICT DO NOTHING`: of concurrent creates of one name, the one that commits
        // first inserts; the others wait for it and then insert nothing.
        let inserted = sqlx::query(
            "INSERT INTO pools (name, spec_json, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&pool.name)
        .bind(spec_json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        if inserted.rows_affected() == 0 {
            return Err(Error::PoolExists(pool.name.clone()));
        }
        Ok(())
    }

    async fn put_arrival_profile(&self, pool: &str, profile: &ArrivalProfile) -> Result<(), Error> {
        let json = profiles::encode(pool, profile)?;
        sqlx::query(
            "INSERT INTO pool_arrival_profiles (pool, profile_json, updated_at_ms) \
             VALUES ($1, $2, $3) ON CONFLICT (pool) DO UPDATE \
             SET profile_json = excluded.profile_json, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(pool)
        .bind(json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(())
    }

    async fn arrival_profiles(&self) -> Result<Vec<(String, ArrivalProfile)>, Error> {
        sqlx::query_as::<_, (String, String)>(
            "SELECT pool, profile_json FROM pool_arrival_profiles ORDER BY pool",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?
        .into_iter()
        .map(profiles::decode)
        .collect()
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        let json = tenants::encode(tenant)?;
        sqlx::query(
            "INSERT INTO tenants (name, tenant_json, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE \
             SET tenant_json = excluded.tenant_json, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant.name.as_str())
        .bind(json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        // The name column is `COLLATE "C"`: byte order, as in SQLite.
        sqlx::query_as::<_, (String, String)>("SELECT name, tenant_json FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_pg_error)?
            .into_iter()
            .map(tenants::decode)
            .collect()
    }

    async fn delete_tenant(&self, name: &TenantName) -> Result<bool, Error> {
        let deleted = sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn insert_credential(&self, record: &CredentialRecord) -> Result<(), Error> {
        let inserted = sqlx::query(
            "INSERT INTO credentials (id, role, worker_id, origin, tenant, description, \
             issued_by, secret_sha256, created_at_ms, revoked_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&record.id)
        .bind(record.role.as_str())
        .bind(record.worker_id.as_ref().map(WorkerId::as_str))
        .bind(record.origin.map(credentials::origin_str))
        .bind(record.tenant.as_ref().map(TenantName::as_str))
        .bind(&record.description)
        .bind(record.issued_by.as_deref())
        .bind(&record.secret_sha256)
        .bind(millis_since_epoch(record.created_at))
        .bind(record.revoked_at.map(millis_since_epoch))
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        if inserted.rows_affected() == 0 {
            return Err(Error::CredentialExists(record.id.clone()));
        }
        Ok(())
    }

    async fn list_credentials(&self) -> Result<Vec<CredentialRecord>, Error> {
        sqlx::query_as::<_, credentials::CredentialRow>(
            "SELECT id, role, worker_id, origin, tenant, description, issued_by, secret_sha256, \
             created_at_ms, revoked_at_ms FROM credentials ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?
        .into_iter()
        .map(credentials::decode)
        .collect()
    }

    async fn revoke_credential(&self, id: &str, at: SystemTime) -> Result<Vec<String>, Error> {
        // One statement: the credential and the live ones it issued are revoked together.
        let mut ids: Vec<String> = sqlx::query_scalar(
            "UPDATE credentials SET revoked_at_ms = $2 \
             WHERE (id = $1 OR issued_by = $1) AND revoked_at_ms IS NULL RETURNING id",
        )
        .bind(id)
        .bind(millis_since_epoch(at))
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?;
        ids.sort();
        Ok(ids)
    }

    async fn record_attempt_usage(&self, usage: &[AttemptUsage]) -> Result<(), Error> {
        if usage.is_empty() {
            return Ok(());
        }
        let mut columns = AttemptUsageColumns::default();
        for row in usage {
            columns.job_ids.push(&row.job_id);
            columns.attempts.push(i64::from(row.attempt));
            columns.tenants.push(&row.tenant);
            columns.queues.push(&row.queue);
            columns.pools.push(&row.pool);
            columns.worker_ids.push(&row.worker_id);
            columns.ended.push(usage::to_i64(row.ended_at_ms));
            columns.worker_seconds.push(row.worker_seconds);
            columns.costs.push(row.cost);
        }
        // One statement: all rows or none. A row already stored, or twice in the batch, is
        // skipped (`DO NOTHING` may meet one key twice in a statement, unlike `DO UPDATE`).
        sqlx::query(
            "INSERT INTO attempt_usage (job_id, attempt, tenant, queue, pool, worker_id, \
             ended_at_ms, worker_seconds, cost) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::int8[], $8::float8[], $9::float8[]) \
             ON CONFLICT (job_id, attempt, worker_id, ended_at_ms) DO NOTHING",
        )
        .bind(&columns.job_ids)
        .bind(&columns.attempts)
        .bind(&columns.tenants)
        .bind(&columns.queues)
        .bind(&columns.pools)
        .bind(&columns.worker_ids)
        .bind(&columns.ended)
        .bind(&columns.worker_seconds)
        .bind(&columns.costs)
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(())
    }

    async fn add_pool_usage(&self, usage: &[PoolUsage]) -> Result<(), Error> {
        if usage.is_empty() {
            return Ok(());
        }
        // `ON CONFLICT DO UPDATE` may not touch a row twice in one statement, so rows of the
        // same pool and hour are summed here first (in input order, as SQLite adds them one
        // by one). Sorted keys make concurrent batches lock rows in one order: no deadlock.
        let mut sums: BTreeMap<(&str, i64), [f64; 4]> = BTreeMap::new();
        for row in usage {
            let key = (
                row.pool.as_str(),
                usage::to_i64(hour_start(row.hour_start_ms)),
            );
            let sum = sums.entry(key).or_insert([0.0; 4]);
            sum[0] += row.worker_seconds;
            sum[1] += row.busy_seconds;
            sum[2] += row.cost;
            sum[3] += row.at_max_waiting_seconds;
        }
        let mut pools = Vec::with_capacity(sums.len());
        let mut hours = Vec::with_capacity(sums.len());
        let mut values: [Vec<f64>; 4] = Default::default();
        for ((pool, hour), sum) in sums {
            pools.push(pool);
            hours.push(hour);
            for (column, value) in values.iter_mut().zip(sum) {
                column.push(value);
            }
        }
        let [worker_seconds, busy_seconds, cost, at_max] = values;
        sqlx::query(
            "INSERT INTO pool_usage AS p (pool, hour_start_ms, worker_seconds, busy_seconds, \
             cost, at_max_waiting_seconds) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::float8[], $4::float8[], \
             $5::float8[], $6::float8[]) \
             ON CONFLICT (pool, hour_start_ms) DO UPDATE SET \
             worker_seconds = p.worker_seconds + excluded.worker_seconds, \
             busy_seconds = p.busy_seconds + excluded.busy_seconds, \
             cost = p.cost + excluded.cost, \
             at_max_waiting_seconds = p.at_max_waiting_seconds + excluded.at_max_waiting_seconds",
        )
        .bind(&pools)
        .bind(&hours)
        .bind(&worker_seconds)
        .bind(&busy_seconds)
        .bind(&cost)
        .bind(&at_max)
        .execute(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(())
    }

    async fn attempt_totals(&self, since_ms: u64) -> Result<Vec<AttemptTotals>, Error> {
        let rows: Vec<(String, String, String, i64, f64, f64)> = sqlx::query_as(
            "SELECT tenant, queue, pool, COUNT(*), SUM(worker_seconds), SUM(cost) \
             FROM attempt_usage WHERE ended_at_ms >= $1 \
             GROUP BY tenant, queue, pool ORDER BY tenant, queue, pool",
        )
        .bind(usage::to_i64(since_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(tenant, queue, pool, attempts, worker_seconds, cost)| AttemptTotals {
                    tenant,
                    queue,
                    pool,
                    attempts: usage::to_u64(attempts),
                    worker_seconds,
                    cost,
                },
            )
            .collect())
    }

    async fn pool_usage(&self, since_ms: u64) -> Result<Vec<PoolUsage>, Error> {
        let rows: Vec<(String, i64, f64, f64, f64, f64)> = sqlx::query_as(
            "SELECT pool, MIN(hour_start_ms), SUM(worker_seconds), SUM(busy_seconds), \
             SUM(cost), SUM(at_max_waiting_seconds) FROM pool_usage WHERE hour_start_ms >= $1 \
             GROUP BY pool ORDER BY pool",
        )
        .bind(usage::to_i64(hour_start(since_ms)))
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(pool, hour, worker_seconds, busy_seconds, cost, at_max)| PoolUsage {
                    pool,
                    hour_start_ms: usage::to_u64(hour),
                    worker_seconds,
                    busy_seconds,
                    cost,
                    at_max_waiting_seconds: at_max,
                },
            )
            .collect())
    }

    async fn job_usage(&self, id: &JobId) -> Result<Vec<AttemptUsage>, Error> {
        type Row = (String, i64, String, String, String, String, i64, f64, f64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT job_id, attempt, tenant, queue, pool, worker_id, ended_at_ms, \
             worker_seconds, cost FROM attempt_usage WHERE job_id = $1 \
             ORDER BY attempt, ended_at_ms",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map_pg_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(job_id, attempt, tenant, queue, pool, worker_id, ended, secs, cost)| {
                    AttemptUsage {
                        job_id,
                        attempt: u32::try_from(attempt).unwrap_or(0),
                        tenant,
                        queue,
                        pool,
                        worker_id,
                        ended_at_ms: usage::to_u64(ended),
                        worker_seconds: secs,
                        cost,
                    }
                },
            )
            .collect())
    }

    async fn heartbeat_member(
        &self,
        id: &str,
        url: &str,
        forget_ms: u64,
    ) -> Result<(Vec<Member>, u64), Error> {
        let now: i64 = sqlx::query_scalar(
            "INSERT INTO cluster_members (id, url, seen_ms) \
             VALUES ($1, $2, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT) \
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, seen_ms = EXCLUDED.seen_ms \
             RETURNING seen_ms",
        )
        .bind(id)
        .bind(url)
        .fetch_one(&self.pool)
        .await
        .map_err(map_pg_error)?;
        sqlx::query("DELETE FROM cluster_members WHERE seen_ms < $1")
            .bind(now.saturating_sub(i64::try_from(forget_ms).unwrap_or(i64::MAX)))
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?;
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT id, url, seen_ms FROM cluster_members ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(map_pg_error)?;
        let members = rows
            .into_iter()
            .map(|(id, url, seen_ms)| Member {
                id,
                url,
                seen_ms: u64::try_from(seen_ms).unwrap_or(0),
            })
            .collect();
        Ok((members, u64::try_from(now).unwrap_or(0)))
    }

    async fn read_lease(&self, name: &str) -> Result<(Option<Lease>, u64), Error> {
        // The database's clock: every replica judges expiry on the same one.
        let row: LeaseRow = sqlx::query_as(
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT, \
             l.holder, l.holder_url, l.epoch, l.expires_ms \
             FROM (SELECT 1) AS one LEFT JOIN leader_lease AS l ON l.name = $1",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(map_pg_error)?;
        let (now, holder, holder_url, epoch, expires_ms) = row;
        let now = u64::try_from(now)
            .map_err(|_| Error::Corrupt(format!("the database's clock reads {now} ms")))?;
        let lease = match (holder, holder_url, epoch, expires_ms) {
            (Some(holder), Some(holder_url), Some(epoch), Some(expires_ms)) => Some(Lease {
                holder,
                holder_url,
                epoch: u64::try_from(epoch)
                    .map_err(|_| Error::Corrupt(format!("lease {name}: epoch {epoch}")))?,
                expires_ms: u64::try_from(expires_ms).unwrap_or(0),
            }),
            _ => None,
        };
        Ok((lease, now))
    }

    async fn write_lease(
        &self,
        name: &str,
        expected: Option<&Lease>,
        lease: &Lease,
    ) -> Result<bool, Error> {
        let epoch = lease_number(lease.epoch)?;
        let expires = lease_number(lease.expires_ms)?;
        let written = match expected {
            None => sqlx::query(
                "INSERT INTO leader_lease (name, holder, holder_url, epoch, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&lease.holder)
            .bind(&lease.holder_url)
            .bind(epoch)
            .bind(expires)
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?,
            Some(old) => sqlx::query(
                "UPDATE leader_lease SET holder = $2, holder_url = $3, epoch = $4, \
                 expires_ms = $5 \
                 WHERE name = $1 AND holder = $6 AND epoch = $7 AND expires_ms = $8",
            )
            .bind(name)
            .bind(&lease.holder)
            .bind(&lease.holder_url)
            .bind(epoch)
            .bind(expires)
            .bind(&old.holder)
            .bind(lease_number(old.epoch)?)
            .bind(lease_number(old.expires_ms)?)
            .execute(&self.pool)
            .await
            .map_err(map_pg_error)?,
        };
        Ok(written.rows_affected() == 1)
    }
}

/// Attempt usage rows as one array per column, for one `INSERT ... SELECT FROM UNNEST(...)`.
#[derive(Default)]
struct AttemptUsageColumns<'a> {
    job_ids: Vec<&'a str>,
    attempts: Vec<i64>,
    tenants: Vec<&'a str>,
    queues: Vec<&'a str>,
    pools: Vec<&'a str>,
    worker_ids: Vec<&'a str>,
    ended: Vec<i64>,
    worker_seconds: Vec<f64>,
    costs: Vec<f64>,
}

/// Log chunks as one array per column, for one `INSERT ... SELECT FROM UNNEST(...)`.
#[derive(Default)]
struct LogColumns<'a> {
    job_ids: Vec<&'a str>,
    attempts: Vec<i64>,
    sequences: Vec<i64>,
    streams: Vec<&'static str>,
    data: Vec<&'a [u8]>,
}

impl<'a> LogColumns<'a> {
    fn push(&mut self, chunk: &'a LogChunk) -> Result<(), Error> {
        let sequence = i64::try_from(chunk.sequence).map_err(|_| {
            Error::Corrupt(format!(
                "job {}: log sequence {} is beyond what the store keeps",
                chunk.job_id, chunk.sequence
            ))
        })?;
        self.job_ids.push(chunk.job_id.as_str());
        self.attempts.push(i64::from(chunk.attempt));
        self.sequences.push(sequence);
        self.streams.push(chunk.stream.as_str());
        self.data.push(&chunk.data);
        Ok(())
    }
}

/// `(now_ms, holder, holder_url, epoch, expires_ms)`: the clock, and the lease if any.
type LeaseRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn lease_number(value: u64) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::Corrupt(format!("lease value {value} out of range")))
}

/// Fails with [`Error::Fenced`] unless the lease is still at the fence's epoch, holding a share
/// lock on its row until the transaction ends: a takeover waits for this transaction.
async fn check_fence(connection: &mut PgConnection, fence: &Fence) -> Result<(), Error> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM leader_lease WHERE name = $1 FOR SHARE")
            .bind(&fence.lease)
            .fetch_optional(&mut *connection)
            .await
            .map_err(map_pg_error)?;
    let current = current
        .and_then(|epoch| u64::try_from(epoch).ok())
        .unwrap_or(0);
    if current == fence.epoch {
        Ok(())
    } else {
        Err(Error::Fenced {
            ours: fence.epoch,
            current,
        })
    }
}

async fn insert_job_on(connection: &mut PgConnection, job: &Job) -> Result<Job, Error> {
    let job_json = encode_job(job)?;
    let now = millis_since_epoch(SystemTime::now());
    // No row back means the id is taken; the statement does not fail, so a transaction
    // around it goes on.
    let sequence: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs \
         (id, state, tenant, queue, worker_id, job_json, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
         ON CONFLICT (id) DO NOTHING RETURNING sequence",
    )
    .bind(job.id.as_str())
    .bind(job.state.as_str())
    .bind(job.spec.tenant.as_str())
    .bind(job.spec.queue.as_str())
    .bind(job.worker_id.as_ref().map(|id| id.as_str()))
    .bind(job_json)
    .bind(now)
    .fetch_optional(&mut *connection)
    .await
    .map_err(map_pg_error)?;
    let sequence = sequence.ok_or_else(|| Error::JobExists(job.id.clone()))?;
    let mut stored = job.clone();
    stored.sequence = decode_sequence(&job.id, sequence)?;
    Ok(stored)
}

async fn update_job_on(
    connection: &mut PgConnection,
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
            "UPDATE jobs SET state = $1, tenant = $2, queue = $3, worker_id = $4, \
             job_json = $5, updated_at_ms = $6 \
             WHERE id = $7 AND state = $8",
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
        .map_err(map_pg_error)?;
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

async fn stored_state(
    connection: &mut PgConnection,
    id: &JobId,
) -> Result<Option<JobState>, Error> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut *connection)
        .await
        .map_err(map_pg_error)?;
    state
        .map(|state| {
            state
                .parse::<JobState>()
                .map_err(|err| Error::Corrupt(format!("job {id}: {err}")))
        })
        .transpose()
}

/// SQLSTATE classes (the first two characters) that mean the database cannot be used right
/// now rather than that a statement or the data is wrong: connection exceptions (08),
/// transaction rollbacks such as serialization failures and deadlocks (40), insufficient
/// resources (53), operator intervention such as a shutdown (57), system errors (58).
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
const PG_UNAVAILABLE_CLASSES: [&str; 5] = ["08", "40", "53", "57", "58"];

/// Single SQLSTATEs that are retryable too: a lock not available (55P03) and a write sent to
/// a read-only standby (25006), which a failover to a new primary cures.
const PG_UNAVAILABLE_CODES: [&str; 2] = ["55P03", "25006"];

/// Whether a SQLSTATE means [`Error::Unavailable`].
fn pg_code_is_unavailable(code: &str) -> bool {
    PG_UNAVAILABLE_CODES.contains(&code)
        || code
            .get(..2)
            .is_some_and(|class| PG_UNAVAILABLE_CLASSES.contains(&class))
}

/// Sorts sqlx failures into retryable ([`Error::Unavailable`]) and not ([`Error::Corrupt`]).
fn map_pg_error(err: sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) => map_pg_database_error(db.as_ref()),
        sqlx::Error::Migrate(err) => map_migrate_error_pg(*err),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Error::Unavailable(err.to_string()),
        sqlx::Error::Protocol(message) => Error::Unavailable(format!("protocol: {message}")),
        other => Error::Corrupt(other.to_string()),
    }
}

fn map_pg_database_error(err: &dyn DatabaseError) -> Error {
    let code = err.code().map(|code| code.into_owned()).unwrap_or_default();
    let message = format!("postgres error {code}: {}", err.message());
    // A unique violation is Corrupt too: every insert that may meet a taken key says
    // `ON CONFLICT`, so one that fails on it is a bug.
    if pg_code_is_unavailable(&code) {
        Error::Unavailable(message)
    } else {
        Error::Corrupt(message)
    }
}

fn map_migrate_error_pg(err: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Execute(err) => map_pg_error(err),
        MigrateError::ExecuteMigration(err, version) => match map_pg_error(err) {
            Error::Unavailable(message) => {
                Error::Unavailable(format!("migration {version}: {message}"))
            }
            other => Error::Corrupt(format!("migration {version}: {other}")),
        },
        other => map_migrate_error(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_rollback_errors_are_retryable_others_are_not() {
        for (code, retryable) in [
            ("08006", true),  // connection failure
            ("08001", true),  // cannot connect
            ("40001", true),  // serialization failure
            ("40P01", true),  // deadlock detected
            ("53300", true),  // too many connections
            ("57P01", true),  // admin shutdown
            ("55P03", true),  // lock not available
            ("25006", true),  // read-only transaction (a standby)
            ("23505", false), // unique violation
            ("42P01", false), // undefined table
            ("22P02", false), // invalid text representation
            ("", false),
        ] {
            assert_eq!(pg_code_is_unavailable(code), retryable, "{code}");
        }
    }
}
