//! The SQLite store: one file in WAL mode with `synchronous=FULL`, so that nothing the store
//! acknowledged is lost on a crash, and lifecycle transitions as compare-and-set updates, so that
//! two writers cannot both move a worker or a job. The job queries live in [`crate::jobs`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hodei_core::cost::{AttemptTotals, AttemptUsage, PoolUsage};
use hodei_core::pool_pass::ArrivalProfile;
use hodei_core::tenancy::Tenant;
use hodei_core::{
    AfterDrain, Job, JobId, JobState, PoolSpec, TenantName, Worker, WorkerId, WorkerState,
};
use hodei_ports::store::{
    CredentialRecord, Error, JobFilter, LogChunk, Store, WorkerFilter, WorkerRecord,
};
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{credentials, jobs, retention};
use crate::{profiles, tenants};

/// SQLite's numbered placeholder.
fn sqlite_placeholder(n: u8) -> String {
    format!("?{n}")
}

/// How long a statement waits for another connection's write lock before giving up as
/// [`Error::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections for reads from a database file. WAL lets readers run beside the one writer.
const MAX_READERS: u32 = 4;

/// How often a transition re-reads and retries after losing a race before reporting the store
/// as unavailable. Every lost race means another transition won, so this is only reached under
/// a storm of writes to one worker or job.
pub(crate) const MAX_TRANSITION_ATTEMPTS: usize = 64;

/// A [`Store`] in a SQLite database.
///
/// Workers live in table `workers`: the [`Worker`] as JSON beside the columns that queries
/// filter on (`pool`, `state`, `registered`); pools in table `pools` as JSON. Jobs live in
/// table `jobs` the same way (the [`Job`] as JSON beside `state`, `tenant`, `queue`,
/// `worker_id`, with `sequence` as the rowid), their output in `job_logs`. Timestamps are
/// kept in milliseconds since the Unix epoch. Cloning is cheap and shares the connections.
///
/// Every write goes through one connection (`writer`): writers queue for it in the async
/// pool instead of contending for SQLite's write lock, whose busy handler sleeps (1 ms, then
/// 2, 5, 10 ... ms) and so added milliseconds to commits that met another writer's. Reads
/// use the other connections (`pool`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file and its parent directory if missing, and
    /// brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(parent).await.map_err(|err| {
                Error::Unavailable(format!(
                    "cannot create directory {}: {err}",
                    parent.display()
                ))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(map_sqlx_error)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_READERS)
            .connect_with(options)
            .await
            .map_err(map_sqlx_error)?;
        Self::migrated(pool, writer).await
    }

    /// A private in-memory database, for tests. It lives in a single connection that is never
    /// closed, so everything is gone when the store is dropped.
    pub async fn in_memory() -> Result<Self, Error> {
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(map_sqlx_error)?;
        Self::migrated(pool.clone(), pool).await
    }

    async fn migrated(pool: SqlitePool, writer: SqlitePool) -> Result<Self, Error> {
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(map_migrate_error)?;
        Ok(Self { pool, writer })
    }

    /// Waits for running statements to finish and closes every connection. Later calls fail
    /// with [`Error::Unavailable`].
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs one of retention's deletes (`before_ms`, then `limit`) on the writer; the rows
    /// deleted.
    async fn prune(&self, sql: &str, before_ms: u64, limit: usize) -> Result<usize, Error> {
        let deleted = sqlx::query(sql)
            .bind(retention::sql_millis(before_ms))
            .bind(retention::sql_limit(limit))
            .execute(&self.writer)
            .await
            .map_err(map_sqlx_error)?;
        Ok(usize::try_from(deleted.rows_affected()).unwrap_or(usize::MAX))
    }
}

/// `(id, state, registered, worker_json, updated_at_ms)`, in that order in every `SELECT`.
pub(crate) type WorkerRow = (String, String, bool, String, i64);

/// `(name, spec_json)`.
pub(crate) type PoolRow = (String, String);

#[async_trait]
impl Store for SqliteStore {
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error> {
        let worker_json = serde_json::to_string(worker)
            .map_err(|err| Error::Corrupt(format!("cannot encode worker {}: {err}", worker.id)))?;
        let now = millis_since_epoch(SystemTime::now());
        sqlx::query(
            "INSERT INTO workers \
             (id, pool, state, registered, worker_json, created_at_ms, updated_at_ms) \
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?5)",
        )
        .bind(worker.id.as_str())
        .bind(worker.metadata.pool.as_deref())
        .bind(state.as_str())
        .bind(worker_json)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(|err| match &err {
            sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
                Error::WorkerExists(worker.id.clone())
            }
            _ => map_sqlx_error(err),
        })?;
        Ok(())
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error> {
        sqlx::query_as::<_, WorkerRow>(
            "SELECT id, state, registered, worker_json, updated_at_ms \
             FROM workers WHERE id = ?1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_sqlx_error)?
        .map(decode_worker)
        .transpose()
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error> {
        // `ORDER BY id` uses SQLite's BINARY collation, which orders like `WorkerId`'s `Ord`.
        sqlx::query_as::<_, WorkerRow>(
            "SELECT id, state, registered, worker_json, updated_at_ms FROM workers \
             WHERE (?1 IS NULL OR pool = ?1) AND (?2 = 0 OR state <> ?3) \
             ORDER BY id",
        )
        .bind(filter.pool.as_deref())
        .bind(filter.live_only)
        .bind(WorkerState::Terminated.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx_error)?
        .into_iter()
        .map(decode_worker)
        .collect()
    }

    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error> {
        // Compare-and-set: decide on the state we read, write only if it is still that state.
        // Losing the race means another writer moved the worker, so decide again on what it
        // left; no lock is held while deciding.
        for _ in 0..MAX_TRANSITION_ATTEMPTS {
            let current = self
                .get_worker(id)
                .await?
                .ok_or_else(|| Error::WorkerNotFound(id.clone()))?;
            let next = current.state.transition(to)?;
            let updated = sqlx::query_as::<_, WorkerRow>(
                "UPDATE workers SET state = ?1, updated_at_ms = ?2 \
                 WHERE id = ?3 AND state = ?4 \
                 RETURNING id, state, registered, worker_json, updated_at_ms",
            )
            .bind(next.as_str())
            .bind(millis_since_epoch(SystemTime::now()))
            .bind(id.as_str())
            .bind(current.state.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(map_sqlx_error)?;
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
            sqlx::query("UPDATE workers SET registered = ?1, updated_at_ms = ?2 WHERE id = ?3")
                .bind(registered)
                .bind(millis_since_epoch(SystemTime::now()))
                .bind(id.as_str())
                .execute(&self.writer)
                .await
                .map_err(map_sqlx_error)?;
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
        let updated = sqlx::query("UPDATE workers SET drain_after = ?1 WHERE id = ?2")
            .bind(after.map(AfterDrain::as_str))
            .bind(id.as_str())
            .execute(&self.writer)
            .await
            .map_err(map_sqlx_error)?;
        if updated.rows_affected() == 0 {
            return Err(Error::WorkerNotFound(id.clone()));
        }
        Ok(())
    }

    async fn drained_workers(&self) -> Result<Vec<(WorkerId, AfterDrain)>, Error> {
        sqlx::query_as::<_, (String, Option<String>)>(&retention::drained_sql())
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx_error)?
            .into_iter()
            .map(retention::decode_drained)
            .collect()
    }

    async fn prune_workers(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        self.prune(
            &retention::prune_workers_sql(sqlite_placeholder),
            before_ms,
            limit,
        )
        .await
    }

    async fn prune_jobs(&self, before_ms: u64, limit: usize) -> Result<usize, Error> {
        self.prune(
            &retention::prune_jobs_sql(sqlite_placeholder),
            before_ms,
            limit,
        )
        .await
    }

    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        let spec_json = serde_json::to_string(pool)
            .map_err(|err| Error::Corrupt(format!("cannot encode pool {}: {err}", pool.name)))?;
        sqlx::query(
            "INSERT INTO pools (name, spec_json, updated_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE \
             SET spec_json = excluded.spec_json, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&pool.name)
        .bind(spec_json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.writer)
        .await
        .map_err(map_sqlx_error)?;
        Ok(())
    }

    async fn insert_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        let spec_json = serde_json::to_string(pool)
            .map_err(|err| Error::Corrupt(format!("cannot encode pool {}: {err}", pool.name)))?;
        sqlx::query("INSERT INTO pools (name, spec_json, updated_at_ms) VALUES (?1, ?2, ?3)")
            .bind(&pool.name)
            .bind(spec_json)
            .bind(millis_since_epoch(SystemTime::now()))
            .execute(&self.writer)
            .await
            .map_err(|err| match &err {
                sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
                    Error::PoolExists(pool.name.clone())
                }
                _ => map_sqlx_error(err),
            })?;
        Ok(())
    }

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error> {
        sqlx::query_as::<_, PoolRow>("SELECT name, spec_json FROM pools WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx_error)?
            .map(decode_pool)
            .transpose()
    }

    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error> {
        sqlx::query_as::<_, PoolRow>("SELECT name, spec_json FROM pools ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx_error)?
            .into_iter()
            .map(decode_pool)
            .collect()
    }

    async fn delete_pool(&self, name: &str) -> Result<bool, Error> {
        let deleted = sqlx::query("DELETE FROM pools WHERE name = ?1")
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(map_sqlx_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn put_arrival_profile(&self, pool: &str, profile: &ArrivalProfile) -> Result<(), Error> {
        let json = profiles::encode(pool, profile)?;
        sqlx::query(
            "INSERT INTO pool_arrival_profiles (pool, profile_json, updated_at_ms) \
             VALUES (?1, ?2, ?3) ON CONFLICT (pool) DO UPDATE \
             SET profile_json = excluded.profile_json, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(pool)
        .bind(json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(map_sqlx_error)?;
        Ok(())
    }

    async fn arrival_profiles(&self) -> Result<Vec<(String, ArrivalProfile)>, Error> {
        sqlx::query_as::<_, (String, String)>(
            "SELECT pool, profile_json FROM pool_arrival_profiles ORDER BY pool",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx_error)?
        .into_iter()
        .map(profiles::decode)
        .collect()
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        let json = tenants::encode(tenant)?;
        sqlx::query(
            "INSERT INTO tenants (name, tenant_json, updated_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE \
             SET tenant_json = excluded.tenant_json, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant.name.as_str())
        .bind(json)
        .bind(millis_since_epoch(SystemTime::now()))
        .execute(&self.writer)
        .await
        .map_err(map_sqlx_error)?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        sqlx::query_as::<_, (String, String)>("SELECT name, tenant_json FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx_error)?
            .into_iter()
            .map(tenants::decode)
            .collect()
    }

    async fn delete_tenant(&self, name: &TenantName) -> Result<bool, Error> {
        let deleted = sqlx::query("DELETE FROM tenants WHERE name = ?1")
            .bind(name.as_str())
            .execute(&self.writer)
            .await
            .map_err(map_sqlx_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), Error> {
        credentials::insert(&self.writer, credential).await
    }

    async fn list_credentials(&self) -> Result<Vec<CredentialRecord>, Error> {
        credentials::list(&self.pool).await
    }

    async fn revoke_credential(&self, id: &str, at: SystemTime) -> Result<Vec<String>, Error> {
        credentials::revoke(&self.writer, id, at).await
    }

    async fn insert_job(&self, job: &Job) -> Result<Job, Error> {
        jobs::insert_job(&self.writer, job).await
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        jobs::get_job(&self.pool, id).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, Error> {
        jobs::list_jobs(&self.pool, filter).await
    }

    async fn update_job(&self, job: &Job, expected: JobState) -> Result<(), Error> {
        jobs::update_job(&self.writer, job, expected).await
    }

    async fn insert_jobs(&self, new: &[Job]) -> Result<Vec<Result<Job, Error>>, Error> {
        jobs::insert_jobs(&self.writer, new).await
    }

    async fn update_jobs(
        &self,
        updates: &[(Job, JobState)],
    ) -> Result<Vec<Result<(), Error>>, Error> {
        jobs::update_jobs(&self.writer, updates).await
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<(), Error> {
        jobs::append_logs(&self.writer, chunks).await
    }

    async fn read_logs(
        &self,
        id: &JobId,
        after: usize,
        limit: usize,
    ) -> Result<Vec<LogChunk>, Error> {
        jobs::read_logs(&self.pool, id, after, limit).await
    }

    async fn record_attempt_usage(&self, usage: &[AttemptUsage]) -> Result<(), Error> {
        crate::usage::record_attempt_usage(&self.writer, usage).await
    }

    async fn add_pool_usage(&self, usage: &[PoolUsage]) -> Result<(), Error> {
        crate::usage::add_pool_usage(&self.writer, usage).await
    }

    async fn attempt_totals(&self, since_ms: u64) -> Result<Vec<AttemptTotals>, Error> {
        crate::usage::attempt_totals(&self.pool, since_ms).await
    }

    async fn pool_usage(&self, since_ms: u64) -> Result<Vec<PoolUsage>, Error> {
        crate::usage::pool_usage(&self.pool, since_ms).await
    }

    async fn job_usage(&self, id: &JobId) -> Result<Vec<AttemptUsage>, Error> {
        crate::usage::job_usage(&self.pool, id).await
    }
}

pub(crate) fn decode_worker(
    (id, state, registered, worker_json, updated_at_ms): WorkerRow,
) -> Result<WorkerRecord, Error> {
    let worker: Worker = serde_json::from_str(&worker_json)
        .map_err(|err| Error::Corrupt(format!("worker {id}: invalid worker json: {err}")))?;
    if worker.id.as_str() != id {
        return Err(Error::Corrupt(format!(
            "row {id} holds worker {}",
            worker.id
        )));
    }
    let state = state
        .parse::<WorkerState>()
        .map_err(|err| Error::Corrupt(format!("worker {id}: {err}")))?;
    Ok(WorkerRecord {
        worker,
        state,
        registered,
        updated_at: time_from_millis(updated_at_ms)?,
    })
}

pub(crate) fn decode_pool((name, spec_json): PoolRow) -> Result<PoolSpec, Error> {
    let pool: PoolSpec = serde_json::from_str(&spec_json)
        .map_err(|err| Error::Corrupt(format!("pool {name}: invalid pool json: {err}")))?;
    if pool.name != name {
        return Err(Error::Corrupt(format!(
            "row {name} holds pool {}",
            pool.name
        )));
    }
    Ok(pool)
}

/// Milliseconds since the Unix epoch; instants before it are stored as the epoch.
pub(crate) fn millis_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn time_from_millis(millis: i64) -> Result<SystemTime, Error> {
    u64::try_from(millis)
        .ok()
        .and_then(|millis| UNIX_EPOCH.checked_add(Duration::from_millis(millis)))
        .ok_or_else(|| Error::Corrupt(format!("timestamp {millis} ms is out of range")))
}

/// Primary SQLite result codes (the low byte of an extended code) that mean the database could
/// not be used right now, rather than that a statement or the data is wrong.
/// <https://www.sqlite.org/rescode.html>
const SQLITE_UNAVAILABLE: [i32; 9] = [
    5,  // SQLITE_BUSY
    6,  // SQLITE_LOCKED
    7,  // SQLITE_NOMEM
    8,  // SQLITE_READONLY
    9,  // SQLITE_INTERRUPT
    10, // SQLITE_IOERR
    13, // SQLITE_FULL
    14, // SQLITE_CANTOPEN
    15, // SQLITE_PROTOCOL
];

/// Sorts sqlx failures into retryable ([`Error::Unavailable`]) and not ([`Error::Corrupt`]).
pub(crate) fn map_sqlx_error(err: sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) => map_database_error(db.as_ref()),
        sqlx::Error::Migrate(err) => map_migrate_error(*err),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Error::Unavailable(err.to_string()),
        // Decoding failures, missing columns, protocol errors: the data or our SQL is wrong,
        // and retrying will not fix it.
        other => Error::Corrupt(other.to_string()),
    }
}

fn map_database_error(err: &dyn DatabaseError) -> Error {
    let code = err.code().and_then(|code| code.parse::<i32>().ok());
    let message = format!("sqlite error {}: {}", code.unwrap_or(-1), err.message());
    match code {
        Some(code) if SQLITE_UNAVAILABLE.contains(&(code & 0xff)) => Error::Unavailable(message),
        _ => Error::Corrupt(message),
    }
}

pub(crate) fn map_migrate_error(err: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Execute(err) => map_sqlx_error(err),
        MigrateError::ExecuteMigration(err, version) => match map_sqlx_error(err) {
            Error::Unavailable(message) => {
                Error::Unavailable(format!("migration {version}: {message}"))
            }
            other => Error::Corrupt(format!("migration {version}: {other}")),
        },
        // The database was migrated by another build of Hodei, or edited by hand.
        other => Error::Corrupt(format!("database schema: {other}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail by panicking.
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_databases_use_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("nested/dir/hodei.db"))
            .await
            .unwrap();
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(journal_mode, "wal");
        // 2 is FULL; the pragma is per connection: the writer's is what makes commits
        // durable, and every reader the pool may hand out is opened the same way.
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(synchronous, 2);
        for _ in 0..MAX_READERS {
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(synchronous, 2);
        }
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(foreign_keys, 1);
    }

    #[test]
    fn sqlite_busy_and_io_errors_are_retryable() {
        for (code, retryable) in [
            (5, true),
            (517, true),
            (6, true),
            (10, true),
            (266, true),
            (11, false),
            (1, false),
            (2067, false),
        ] {
            assert_eq!(
                SQLITE_UNAVAILABLE.contains(&(code & 0xff)),
                retryable,
                "code {code}"
            );
        }
    }

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(time_from_millis(millis_since_epoch(time)).unwrap(), time);
        assert_eq!(millis_since_epoch(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(matches!(time_from_millis(-1), Err(Error::Corrupt(_))));
    }
}
