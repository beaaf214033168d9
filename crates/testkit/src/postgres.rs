//! A fresh PostgreSQL database per test, in the throwaway cluster that `scripts/with-postgres`
//! (run by `scripts/test`) starts and names in `HODEI_TEST_POSTGRES_URL`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// The variable naming the test cluster: a URL whose user may create databases.
pub const POSTGRES_URL_VAR: &str = "HODEI_TEST_POSTGRES_URL";

/// Creates an empty database in the test cluster and returns its URL, or `None` (after saying
/// so on stderr) when [`POSTGRES_URL_VAR`] is unset outside CI. Under CI (`CI` set) a missing
/// cluster fails the test: `scripts/test` always provides one. The databases are left in
/// place; the cluster and everything in it is removed when the script ends.
pub async fn scratch_database(test: &str) -> Option<String> {
    let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
        if std::env::var_os("CI").is_some() {
            panic!("{POSTGRES_URL_VAR} is unset under CI: run the tests with scripts/test");
        }
        eprintln!(
            "SKIPPED {test}: {POSTGRES_URL_VAR} is unset; run scripts/test \
             (or scripts/with-postgres cargo test ...) to test on PostgreSQL"
        );
        return None;
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "hodei_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(connection) => connection,
        Err(err) => panic!("cannot connect to the test cluster {admin_url}: {err}"),
    };
    if let Err(err) = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
    {
        panic!("cannot create database {name}: {err}");
    }
    let _ = admin.close().await;
    Some(with_database(&admin_url, &name))
}

/// `url` with its database (the path) replaced by `name`, query parameters kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_the_path_of_the_url() {
        for (url, want) in [
            (
                "postgres://u@127.0.0.1:5432/postgres",
                "postgres://u@127.0.0.1:5432/db",
            ),
            ("postgres://u@host:1", "postgres://u@host:1/db"),
            (
                "postgres://u:p@host/postgres?sslmode=disable",
                "postgres://u:p@host/db?sslmode=disable",
            ),
        ] {
            assert_eq!(with_database(url, "db"), want);
        }
    }
}
