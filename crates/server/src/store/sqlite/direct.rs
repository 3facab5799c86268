//! The write paths every event takes (publishing, recording a plain outcome), run on a
//! connection of the store's own, in the calling task.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every statement's
//! result and every row back through a channel, each hand-off waking the runtime: a
//! B2 event cost about 20 wakes of the runtime from the writer's thread alone (`strace
//! -c` of that thread: 20 `write`s to the runtime's waker per event), more CPU than the
//! statements themselves. Here the statements run where the caller is, through
//! prepared statements kept for the life of the store, and nothing is handed over.
//!
//! SQLite's write lock keeps direct writes and the writes through sqlx's writer pool
//! apart. A direct write takes the lock without waiting (a busy timeout of zero), so
//! the runtime thread does not sleep in SQLite's busy handler for it; if a write
//! through the pool holds it, the direct write waits for the pool's one connection
//! instead (held until that write ends) and then tries again, waiting in the busy
//! handler only if another process holds the lock. A write through the pool that finds a
//! direct one holding the lock waits in the busy handler on its own thread. The pool's
//! connection is not the direct writes' lock: sqlx pings a connection each time it goes
//! back to the pool, a round trip to its thread per write.
//!
//! A direct write runs start to end without an await, so a caller that stops waiting
//! cannot leave a transaction open behind it. It holds the runtime thread meanwhile: a
//! WAL commit writes to the page cache and syncs nothing (the checkpoint syncs, on its
//! own connection), so it is over as soon as SQLite's own work is, which the writer's
//! thread spent anyway.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::SqlitePool;
use tokio::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::super::rows::Micros;
use super::super::{StoreError, StoreResult};

/// The store's own write connection (see the module docs).
#[derive(Clone)]
pub(crate) struct Direct {
    conn: Arc<Mutex<Connection>>,
    /// The writer pool, whose one connection a write through it holds to its end.
    writer: SqlitePool,
    /// How long a write waits for another process's lock.
    busy_timeout: Duration,
    /// In memory: the pool's one connection also serves the reads, and a shared cache
    /// answers a write meeting a read with an error rather than a wait, so a direct
    /// write holds that connection throughout.
    in_memory: bool,
}

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

/// Statements kept prepared: every direct write's, with room to spare.
const PREPARED: usize = 32;

impl Direct {
    /// Opens the database `options` name, already created and migrated through
    /// `writer`, with the writer's settings: `pragmas` are the writer's
    /// per-connection ones (name, value).
    pub fn open(
        options: &SqliteConnectOptions,
        in_memory: bool,
        writer: SqlitePool,
        busy_timeout: Duration,
        pragmas: &[(&str, &str)],
    ) -> StoreResult<Direct> {
        let name = options.get_filename().to_string_lossy().into_owned();
        // An in-memory database is shared between connections only through a shared
        // cache, which is how sqlx opens it too (under the same name).
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if in_memory {
            flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
        }
        let conn = Connection::open_with_flags(name, flags).map_err(to_store)?;
        // Taking the lock never waits (see `write`).
        conn.busy_timeout(Duration::ZERO).map_err(to_store)?;
        conn.set_prepared_statement_cache_capacity(PREPARED);
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(to_store)?;
        for (name, value) in pragmas {
            conn.pragma_update(None, name, value).map_err(to_store)?;
        }
        Ok(Direct {
            conn: Arc::new(Mutex::new(conn)),
            writer,
            busy_timeout,
            in_memory,
        })
    }

    /// Runs `work` in a write transaction. `work` answering `Some` commits, `None`
    /// rolls back (it found the write is not its to make), as does an error.
    pub async fn write<R>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<Option<R>>,
    ) -> StoreResult<Option<R>> {
        // A write that panicked left nothing behind: its transaction rolled back as it
        // unwound.
        let mut conn = self.conn.lock().await;
        let _reads = if self.in_memory {
            Some(self.writer.acquire().await?)
        } else {
            None
        };
        match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => return finish(tx, work),
            Err(e) if is_busy(&e) && !self.in_memory => {}
            Err(e) => return Err(to_store(e)),
        }
        // A write through the pool holds the lock, or another process does: the
        // pool's connection comes back when the first ends, and the second is waited
        // for as any write waits for it.
        let _writer = self.writer.acquire().await?;
        conn.busy_timeout(self.busy_timeout).map_err(to_store)?;
        let done = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => finish(tx, work),
            Err(e) => Err(to_store(e)),
        };
        conn.busy_timeout(Duration::ZERO).map_err(to_store)?;
        done
    }

    /// Keeps direct writes out until the guard drops (the checkpoint's held pass).
    pub async fn hold(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().await
    }
}

/// Ends `tx` as `work` says.
fn finish<R>(
    tx: Transaction<'_>,
    work: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<Option<R>>,
) -> StoreResult<Option<R>> {
    match work(&tx).map_err(to_store)? {
        Some(done) => {
            tx.commit().map_err(to_store)?;
            Ok(Some(done))
        }
        // Dropping the transaction rolls it back.
        None => Ok(None),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy)
}

/// A rusqlite error as the store reports database errors: SQLite's own failures keep
/// their extended code, so `StoreError::is_transient` reads them as it reads sqlx's.
pub(crate) fn to_store(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            StoreError::Database(sqlx::Error::Database(Box::new(Failure {
                code: failure.extended_code,
                message: message.unwrap_or_else(|| failure.to_string()),
            })))
        }
        other => StoreError::Internal(format!("direct write: {other}")),
    }
}

/// A failure SQLite reported on a direct write.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for Failure {}

impl DatabaseError for Failure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        // SQLite's extended codes for the constraint kinds the store tells apart.
        match self.code {
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// A statement of a shape built at run time, with its parameters in order (each `?`
/// in the text takes the next).
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Value>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            params: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    pub fn bind(&mut self, value: impl Into<Value>) -> &mut Sql {
        self.text.push('?');
        self.params.push(value.into());
        self
    }

    /// An id, as the schema stores it (16 bytes).
    pub fn bind_id(&mut self, id: Uuid) -> &mut Sql {
        self.bind(id.as_bytes().to_vec())
    }

    /// An instant, as the schema stores it (microseconds since the epoch).
    pub fn bind_at(&mut self, at: Micros) -> &mut Sql {
        self.bind(at.0.timestamp_micros())
    }

    /// `ids` as a list of parameters, for an `IN (...)`.
    pub fn bind_ids<'i>(&mut self, ids: impl IntoIterator<Item = &'i Uuid>) -> &mut Sql {
        for (i, id) in ids.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind_id(*id);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::batched::tests::{rows, writer};
    use super::*;

    /// [`writer`]'s pool and a direct connection to the same file.
    async fn open(dir: &tempfile::TempDir) -> (SqlitePool, Direct, SqliteConnectOptions) {
        let (pool, options) = writer(dir).await;
        let direct =
            Direct::open(&options, false, pool.clone(), Duration::from_secs(5), &[]).unwrap();
        (pool, direct, options)
    }

    fn insert(tx: &Transaction<'_>, n: i64) -> rusqlite::Result<usize> {
        tx.prepare_cached("INSERT INTO t VALUES (?1)")?.execute([n])
    }

    #[tokio::test]
    async fn a_write_commits_what_it_answers_and_nothing_it_declines_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, direct, _) = open(&dir).await;
        let done = direct.write(|tx| insert(tx, 1).map(Some)).await.unwrap();
        assert_eq!(done, Some(1));
        let declined = direct
            .write(|tx| insert(tx, 2).map(|_| None::<()>))
            .await
            .unwrap();
        assert_eq!(declined, None);
        // The second insert breaks the key: the first goes with it.
        let failed = direct
            .write(|tx| {
                insert(tx, 3)?;
                insert(tx, 1).map(Some)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&failed, StoreError::Database(sqlx::Error::Database(e))
                if e.kind() == ErrorKind::UniqueViolation),
            "{failed:?}"
        );
        assert!(!failed.is_transient(), "{failed:?}");
        // Readers through sqlx see what was committed, and only that.
        assert_eq!(rows(&pool).await, vec![1]);
    }

    #[tokio::test]
    async fn a_write_through_the_pool_is_waited_for_and_an_idle_pool_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, direct, _) = open(&dir).await;
        // The pool's connection taken but writing nothing: no reason to wait.
        let idle = pool.acquire().await.unwrap();
        let write = direct.write(|tx| insert(tx, 1).map(Some));
        let done = tokio::time::timeout(Duration::from_secs(5), write).await;
        assert_eq!(done.expect("waited for an idle pool").unwrap(), Some(1));
        drop(idle);

        // A transaction through the pool holds SQLite's lock: the direct write waits
        // for it to end, then goes in.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let write = direct.write(|tx| insert(tx, 3).map(Some));
        tokio::pin!(write);
        let early = tokio::time::timeout(Duration::from_millis(50), &mut write).await;
        assert!(
            early.is_err(),
            "wrote while a write through the pool was open"
        );
        tx.commit().await.unwrap();
        assert_eq!(write.await.unwrap(), Some(1));
        assert_eq!(rows(&pool).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn another_process_holding_the_lock_is_a_transient_error() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _, options) = open(&dir).await;
        // As a CLI in another process would: a write lock held outside this store.
        let other = Connection::open(dir.path().join("t.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let impatient = Direct::open(&options, false, pool.clone(), Duration::ZERO, &[]).unwrap();
        let busy = impatient
            .write(|tx| insert(tx, 1).map(Some))
            .await
            .unwrap_err();
        assert!(busy.is_transient(), "{busy:?}");
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            impatient.write(|tx| insert(tx, 1).map(Some)).await.unwrap(),
            Some(1)
        );
    }

    #[tokio::test]
    async fn a_write_that_panicked_leaves_nothing_and_the_next_one_works() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, direct, _) = open(&dir).await;
        let panicked = {
            let direct = direct.clone();
            tokio::spawn(async move {
                direct
                    .write(|tx| {
                        let inserted = insert(tx, 1)?;
                        assert_eq!(inserted, 0, "a bug in a direct write");
                        Ok(Some(()))
                    })
                    .await
            })
            .await
        };
        assert!(panicked.is_err(), "the write should have panicked");
        assert_eq!(
            direct.write(|tx| insert(tx, 2).map(Some)).await.unwrap(),
            Some(1)
        );
        assert_eq!(rows(&pool).await, vec![2]);
    }

    #[test]
    fn sql_numbers_nothing_and_keeps_parameters_in_order() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut q = Sql::new("SELECT 1 WHERE x IN (");
        q.bind_ids([&a, &b]).push(") AND y = ").bind(5_i64);
        assert_eq!(q.text, "SELECT 1 WHERE x IN (?, ?) AND y = ?");
        assert_eq!(
            q.params,
            vec![
                Value::Blob(a.as_bytes().to_vec()),
                Value::Blob(b.as_bytes().to_vec()),
                Value::Integer(5),
            ]
        );
    }
}
