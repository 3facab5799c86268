//! A fresh database per test: a SQLite file in a temporary directory, or a fresh schema
//! on a shared PostgreSQL, dropped again when the value is dropped (however the test
//! ends).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection as _;
use uuid::Uuid;

use crate::Error;

/// The variable naming the PostgreSQL the tests may create schemas in.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// Bound on connecting to PostgreSQL and on each schema statement, so a stuck database
/// fails the test instead of hanging it.
const PG_TIMEOUT: Duration = Duration::from_secs(30);

/// Which backend a database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test. Its temporary directory (the SQLite file, logs, data
/// directories) is removed and its PostgreSQL schema dropped with the value.
pub struct TestDb {
    /// The URL a store or `--database-url` opens.
    pub url: String,
    pub backend: Backend,
    dir: tempfile::TempDir,
    schema: Option<Schema>,
}

/// A schema created for one database and dropped with it.
struct Schema {
    admin_url: String,
    name: String,
}

impl TestDb {
    /// A SQLite database at `<dir>/data/sonzai-webhooks.db`, where `--data-dir <dir>/data`
    /// also finds it. Neither the file nor `data/` exists yet: opening creates them.
    pub fn sqlite() -> TestDb {
        let dir = temp_dir().expect("temporary directory");
        let url = format!(
            "sqlite://{}",
            dir.path().join("data/sonzai-webhooks.db").display()
        );
        TestDb {
            url,
            backend: Backend::Sqlite,
            dir,
            schema: None,
        }
    }

    /// A fresh schema on the PostgreSQL of `TEST_DATABASE_URL`, or `None` (with a note
    /// on stderr) when it is not set.
    pub fn postgres() -> Option<TestDb> {
        let admin_url = test_database_url()?;
        Some(TestDb::postgres_at(&admin_url, "t").expect("create a schema on TEST_DATABASE_URL"))
    }

    /// A fresh schema named `<prefix>_<random>` on the PostgreSQL at `admin_url`;
    /// [`TestDb::url`] is `admin_url` with that schema as the search path, so whoever
    /// opens it sees no other test's rows.
    pub fn postgres_at(admin_url: &str, prefix: &str) -> Result<TestDb, Error> {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        let (url, sql) = (admin_url.to_owned(), format!("CREATE SCHEMA {name}"));
        on_own_runtime(move || execute(url, sql))?;
        Ok(TestDb {
            url: with_search_path(admin_url, &name),
            backend: Backend::Postgres,
            dir: temp_dir()?,
            schema: Some(Schema {
                admin_url: admin_url.to_owned(),
                name,
            }),
        })
    }

    /// A temporary directory that lives as long as the database (for data
    /// directories and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory `--data-dir` should name for the server to use this SQLite
    /// database without a URL; `None` on PostgreSQL.
    pub fn sqlite_data_dir(&self) -> Option<PathBuf> {
        (self.backend == Backend::Sqlite).then(|| self.dir.path().join("data"))
    }

    /// The PostgreSQL schema, if this is one.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_ref().map(|s| s.name.as_str())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            // Lingering sessions of a killed server or a failed test may still hold
            // locks; the lock timeout keeps one from hanging the run.
            let sql = format!(
                "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
                schema.name
            );
            if let Err(e) = on_own_runtime(move || execute(schema.admin_url, sql)) {
                eprintln!("warning: could not drop test schema {}: {e}", schema.name);
            }
        }
    }
}

/// The URL of `TEST_DATABASE_URL`, or `None` with a note on stderr when it is unset.
pub fn test_database_url() -> Option<String> {
    match std::env::var(TEST_DATABASE_URL) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping PostgreSQL: {TEST_DATABASE_URL} not set");
            None
        }
    }
}

/// The databases a test should run on: SQLite always, PostgreSQL when configured.
pub fn backends() -> Vec<TestDb> {
    let mut dbs = vec![TestDb::sqlite()];
    dbs.extend(TestDb::postgres());
    dbs
}

/// `url` with a libpq `options` parameter that sets the session's `search_path`.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

fn temp_dir() -> Result<tempfile::TempDir, Error> {
    Ok(tempfile::Builder::new().prefix("sonzai-test-").tempdir()?)
}

/// Runs `sql` (one or more statements, no parameters) on `url`, bounded in time.
async fn execute(url: String, sql: String) -> Result<(), Error> {
    let work = async {
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        sqlx::raw_sql(&sql).execute(&mut conn).await?;
        conn.close().await?;
        Ok::<_, Error>(())
    };
    tokio::time::timeout(PG_TIMEOUT, work)
        .await
        .map_err(|_| format!("`{sql}` did not finish within {PG_TIMEOUT:?}"))?
}

/// Runs `work` to completion on a runtime of its own on a short-lived thread, so the
/// schema helpers work from sync code, from `Drop`, and inside any async runtime.
/// (`work` makes the future on that thread: sqlx futures are not `Send`.)
fn on_own_runtime<T, F, Fut>(work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .join()
    .map_err(|_| Error::from("the database helper thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_is_added_as_a_libpq_option() {
        assert_eq!(
            with_search_path("postgres://u@127.0.0.1:5432/test", "s1"),
            "postgres://u@127.0.0.1:5432/test?options=-c%20search_path%3Ds1"
        );
        assert_eq!(
            with_search_path("postgres://u@h/db?sslmode=disable", "s2"),
            "postgres://u@h/db?sslmode=disable&options=-c%20search_path%3Ds2"
        );
    }

    #[test]
    fn sqlite_database_and_its_directory_go_away_with_the_value() {
        let db = TestDb::sqlite();
        let dir = db.dir().to_path_buf();
        assert!(db.url.starts_with("sqlite://"));
        assert_eq!(db.sqlite_data_dir(), Some(dir.join("data")));
        assert!(dir.is_dir());
        drop(db);
        assert!(!dir.exists());
    }

    #[test]
    fn postgres_schema_is_created_and_dropped() {
        let Some(admin_url) = test_database_url() else {
            return;
        };
        let db = TestDb::postgres_at(&admin_url, "testkit").expect("schema");
        let name = db.schema().expect("a schema").to_owned();
        let count = |url: String, name: String| async move {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
            Ok::<_, Error>(n)
        };
        assert_eq!(
            on_own_runtime({
                let (url, name) = (admin_url.clone(), name.clone());
                move || count(url, name)
            })
            .unwrap(),
            1
        );
        drop(db);
        assert_eq!(on_own_runtime(move || count(admin_url, name)).unwrap(), 0);
    }
}
