//! Usage queries: attempts' worker time and cost, and pools' held time in hourly buckets
//! (tables `attempt_usage` and `pool_usage`, migration 0006).

use hodei_core::JobId;
use hodei_core::cost::{AttemptTotals, AttemptUsage, PoolUsage, hour_start};
use hodei_ports::store::Error;
use sqlx::SqlitePool;

use crate::sqlite::map_sqlx_error;

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Attempts' usage rows per `INSERT` statement: each statement is one round trip to sqlx's
/// SQLite thread, so a batch of ended attempts costs a few, not one per attempt. 100 rows of
/// 9 values stay far below SQLite's limit of 32,766 bound values.
const USAGE_ROWS_PER_STATEMENT: usize = 100;

/// The `INSERT` of `rows` attempts' usage; a row already there is skipped.
fn insert_attempt_usage_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO attempt_usage (job_id, attempt, tenant, queue, pool, worker_id, \
         ended_at_ms, worker_seconds, cost) VALUES {values} \
         ON CONFLICT (job_id, attempt, worker_id, ended_at_ms) DO NOTHING"
    )
}

pub(crate) async fn record_attempt_usage(
    pool: &SqlitePool,
    usage: &[AttemptUsage],
) -> Result<(), Error> {
    if usage.is_empty() {
        return Ok(());
    }
    let mut transaction = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx_error)?;
    for chunk in usage.chunks(USAGE_ROWS_PER_STATEMENT) {
        let sql = insert_attempt_usage_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(&row.job_id)
                .bind(i64::from(row.attempt))
                .bind(&row.tenant)
                .bind(&row.queue)
                .bind(&row.pool)
                .bind(&row.worker_id)
                .bind(to_i64(row.ended_at_ms))
                .bind(row.worker_seconds)
                .bind(row.cost);
        }
        query
            .execute(&mut *transaction)
            .await
            .map_err(map_sqlx_error)?;
    }
    transaction.commit().await.map_err(map_sqlx_error)
}

pub(crate) async fn add_pool_usage(pool: &SqlitePool, usage: &[PoolUsage]) -> Result<(), Error> {
    if usage.is_empty() {
        return Ok(());
    }
    let mut transaction = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx_error)?;
    for row in usage {
        sqlx::query(
            "INSERT INTO pool_usage (pool, hour_start_ms, worker_seconds, busy_seconds, cost, \
             at_max_waiting_seconds) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (pool, hour_start_ms) DO UPDATE SET \
             worker_seconds = worker_seconds + excluded.worker_seconds, \
             busy_seconds = busy_seconds + excluded.busy_seconds, \
             cost = cost + excluded.cost, \
             at_max_waiting_seconds = at_max_waiting_seconds + excluded.at_max_waiting_seconds",
        )
        .bind(&row.pool)
        .bind(to_i64(hour_start(row.hour_start_ms)))
        .bind(row.worker_seconds)
        .bind(row.busy_seconds)
        .bind(row.cost)
        .bind(row.at_max_waiting_seconds)
        .execute(&mut *transaction)
        .await
        .map_err(map_sqlx_error)?;
    }
    transaction.commit().await.map_err(map_sqlx_error)
}

pub(crate) async fn attempt_totals(
    pool: &SqlitePool,
    since_ms: u64,
) -> Result<Vec<AttemptTotals>, Error> {
    let rows: Vec<(String, String, String, i64, f64, f64)> = sqlx::query_as(
        "SELECT tenant, queue, pool, COUNT(*), SUM(worker_seconds), SUM(cost) \
         FROM attempt_usage WHERE ended_at_ms >= ? \
         GROUP BY tenant, queue, pool ORDER BY tenant, queue, pool",
    )
    .bind(to_i64(since_ms))
    .fetch_all(pool)
    .await
    .map_err(map_sqlx_error)?;
    Ok(rows
        .into_iter()
        .map(
            |(tenant, queue, pool, attempts, worker_seconds, cost)| AttemptTotals {
                tenant,
                queue,
                pool,
                attempts: to_u64(attempts),
                worker_seconds,
                cost,
            },
        )
        .collect())
}

pub(crate) async fn pool_usage(pool: &SqlitePool, since_ms: u64) -> Result<Vec<PoolUsage>, Error> {
    let rows: Vec<(String, i64, f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT pool, MIN(hour_start_ms), SUM(worker_seconds), SUM(busy_seconds), SUM(cost), \
         SUM(at_max_waiting_seconds) FROM pool_usage WHERE hour_start_ms >= ? \
         GROUP BY pool ORDER BY pool",
    )
    .bind(to_i64(hour_start(since_ms)))
    .fetch_all(pool)
    .await
    .map_err(map_sqlx_error)?;
    Ok(rows
        .into_iter()
        .map(
            |(pool, hour, worker_seconds, busy_seconds, cost, at_max)| PoolUsage {
                pool,
                hour_start_ms: to_u64(hour),
                worker_seconds,
                busy_seconds,
                cost,
                at_max_waiting_seconds: at_max,
            },
        )
        .collect())
}

pub(crate) async fn job_usage(pool: &SqlitePool, id: &JobId) -> Result<Vec<AttemptUsage>, Error> {
    type Row = (String, i64, String, String, String, String, i64, f64, f64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT job_id, attempt, tenant, queue, pool, worker_id, ended_at_ms, worker_seconds, \
         cost FROM attempt_usage WHERE job_id = ? ORDER BY attempt, ended_at_ms",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await
    .map_err(map_sqlx_error)?;
    Ok(rows
        .into_iter()
        .map(
            |(job_id, attempt, tenant, queue, pool, worker_id, ended, secs, cost)| AttemptUsage {
                job_id,
                attempt: u32::try_from(attempt).unwrap_or(0),
                tenant,
                queue,
                pool,
                worker_id,
                ended_at_ms: to_u64(ended),
                worker_seconds: secs,
                cost,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_inserts_have_one_placeholder_per_column_of_every_row() {
        let sql = insert_attempt_usage_sql(3);
        assert_eq!(sql.matches('?').count(), 27);
        assert!(sql.ends_with("DO NOTHING"));
    }
}
