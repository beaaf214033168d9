//! Credentials in SQLite: one row per credential, the secret only as its SHA-256.

use std::time::SystemTime;

use hodei_core::credential::{Role, WorkerOrigin};
use hodei_core::{TenantName, WorkerId};
use hodei_ports::CredentialRecord;
use hodei_ports::store::Error;
use sqlx::SqlitePool;
use sqlx::error::ErrorKind;

use crate::sqlite::{map_sqlx_error, millis_since_epoch, time_from_millis};

/// `(id, role, worker_id, origin, tenant, description, issued_by, secret_sha256,
/// created_at_ms, revoked_at_ms)`.
pub(crate) type CredentialRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
);

pub(crate) fn origin_str(origin: WorkerOrigin) -> &'static str {
    match origin {
        WorkerOrigin::Provisioned => "provisioned",
        WorkerOrigin::Enrolled => "enrolled",
    }
}

pub(crate) fn decode(row: CredentialRow) -> Result<CredentialRecord, Error> {
    let (
        id,
        role,
        worker_id,
        origin,
        tenant,
        description,
        issued_by,
        secret_sha256,
        created,
        revoked,
    ) = row;
    let corrupt = |what: &str, error: &dyn std::fmt::Display| {
        Error::Corrupt(format!("credential {id}: {what}: {error}"))
    };
    let role: Role = role.parse().map_err(|e| corrupt("role", &e))?;
    let worker_id = worker_id
        .map(WorkerId::new)
        .transpose()
        .map_err(|e| corrupt("worker_id", &e))?;
    let origin = match origin.as_deref() {
        None => None,
        Some("provisioned") => Some(WorkerOrigin::Provisioned),
        Some("enrolled") => Some(WorkerOrigin::Enrolled),
        Some(other) => return Err(corrupt("origin", &other)),
    };
    let tenant = tenant
        .map(TenantName::new)
        .transpose()
        .map_err(|e| corrupt("tenant", &e))?;
    Ok(CredentialRecord {
        id,
        role,
        worker_id,
        origin,
        tenant,
        description,
        issued_by,
        secret_sha256,
        created_at: time_from_millis(created)?,
        revoked_at: revoked.map(time_from_millis).transpose()?,
    })
}

pub(crate) async fn insert(pool: &SqlitePool, record: &CredentialRecord) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO credentials (id, role, worker_id, origin, tenant, description, issued_by, \
         secret_sha256, created_at_ms, revoked_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(&record.id)
    .bind(record.role.as_str())
    .bind(record.worker_id.as_ref().map(WorkerId::as_str))
    .bind(record.origin.map(origin_str))
    .bind(record.tenant.as_ref().map(|t| t.as_str().to_owned()))
    .bind(&record.description)
    .bind(record.issued_by.as_deref())
    .bind(&record.secret_sha256)
    .bind(millis_since_epoch(record.created_at))
    .bind(record.revoked_at.map(millis_since_epoch))
    .execute(pool)
    .await
    .map_err(|err| match &err {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
            Error::CredentialExists(record.id.clone())
        }
        _ => map_sqlx_error(err),
    })?;
    Ok(())
}

pub(crate) async fn list(pool: &SqlitePool) -> Result<Vec<CredentialRecord>, Error> {
    sqlx::query_as::<_, CredentialRow>(
        "SELECT id, role, worker_id, origin, tenant, description, issued_by, secret_sha256, \
         created_at_ms, revoked_at_ms FROM credentials ORDER BY created_at_ms, id",
    )
    .fetch_all(pool)
    .await
    .map_err(map_sqlx_error)?
    .into_iter()
    .map(decode)
    .collect()
}

pub(crate) async fn revoke(
    pool: &SqlitePool,
    id: &str,
    at: SystemTime,
) -> Result<Vec<String>, Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "UPDATE credentials SET revoked_at_ms = ?2 \
         WHERE (id = ?1 OR issued_by = ?1) AND revoked_at_ms IS NULL RETURNING id",
    )
    .bind(id)
    .bind(millis_since_epoch(at))
    .fetch_all(pool)
    .await
    .map_err(map_sqlx_error)?;
    let mut ids: Vec<String> = rows.into_iter().map(|(id,)| id).collect();
    ids.sort();
    Ok(ids)
}
