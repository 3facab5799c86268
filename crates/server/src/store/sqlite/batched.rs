//! Write transactions begun in the same command as their first statements.
//!
//! Every command to a SQLite connection is a round trip to the thread that owns it:
//! two thread switches, which on the usual 2-core machine cost more than the
//! statements of an outcome batch themselves. A transaction begun through sqlx's own
//! `begin` is a command of its own. Here `BEGIN IMMEDIATE` goes in front of the first
//! statements, in one command: the connection's thread runs a string of several
//! statements in turn, each binding its own parameters. (The writes every event takes
//! avoid the thread altogether: see `direct`.)
//!
//! sqlx does not know about a transaction begun this way, so [`Batched`] ends it: a
//! command that fails, or a caller that stops waiting, leaves it open, and dropping
//! the guard without [`Batched::commit`] rolls it back before the connection goes
//! back to the pool.

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::super::StoreResult;

/// The statement that begins a [`Batched`] transaction, to put first in its first
/// command.
pub(crate) const BEGIN: &str = "BEGIN IMMEDIATE; ";

/// A write transaction on the writer connection, begun by its first command.
pub(crate) struct Batched {
    conn: Option<PoolConnection<Sqlite>>,
}

impl Batched {
    /// Takes the writer connection; the caller's first command starts with [`BEGIN`].
    pub async fn acquire(writer: &SqlitePool) -> StoreResult<Batched> {
        Ok(Batched {
            conn: Some(writer.acquire().await?),
        })
    }

    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_deref_mut()
            .expect("a batched transaction's connection is there until it ends")
    }

    /// Commits, in a command of its own; nothing is left to roll back.
    pub async fn commit(mut self) -> StoreResult<()> {
        sqlx::query("COMMIT").execute(self.conn()).await?;
        self.conn.take();
        Ok(())
    }
}

impl Drop for Batched {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Not finished: a statement failed or the caller stopped waiting, and the
        // transaction may still be open. The rollback runs before the connection is
        // handed to anyone else (it goes back to the pool when this task drops it);
        // with no transaction open it fails harmlessly.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                        tracing::debug!(error = %e, "rolling back an unfinished write");
                    }
                });
            }
            // No runtime (shutting down): the connection is closed instead, which
            // rolls the transaction back.
            Err(_) => drop(conn.detach()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use super::*;

    /// A one-connection writer pool on a new WAL file in `dir` holding a table `t`,
    /// and the options it was opened with.
    pub(in crate::store::sqlite) async fn writer(
        dir: &tempfile::TempDir,
    ) -> (SqlitePool, SqliteConnectOptions) {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        (pool, options)
    }

    /// What `t` holds, in order.
    pub(in crate::store::sqlite) async fn rows(pool: &SqlitePool) -> Vec<i64> {
        sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_command_failing_halfway_leaves_nothing_and_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = writer(&dir).await;
        {
            let mut tx = Batched::acquire(&pool).await.unwrap();
            let failed = sqlx::query(&format!(
                "{BEGIN}INSERT INTO t VALUES (1); INSERT INTO t VALUES (1); COMMIT"
            ))
            .execute(tx.conn())
            .await;
            assert!(failed.is_err(), "the second insert breaks the key");
        }
        // The one connection comes back rolled back: a new transaction can begin, and
        // the first insert is gone.
        let mut tx = Batched::acquire(&pool).await.unwrap();
        sqlx::query(&format!("{BEGIN}INSERT INTO t VALUES (2)"))
            .execute(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&pool).await, vec![2]);
    }

    #[tokio::test]
    async fn one_command_begins_and_binds_then_the_commit_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = writer(&dir).await;
        let tx = Batched::acquire(&pool).await;
        let mut tx = tx.unwrap();
        let back: Vec<i64> = sqlx::query_scalar(&format!(
            "{BEGIN}INSERT INTO t VALUES (?1); INSERT INTO t VALUES (?2) RETURNING n"
        ))
        .bind(3_i64)
        .bind(4_i64)
        .fetch_all(tx.conn())
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(back, vec![4]);
        assert_eq!(rows(&pool).await, vec![3, 4]);
        // Committed, nothing was rolled back behind it.
        tokio::task::yield_now().await;
        assert_eq!(rows(&pool).await, vec![3, 4]);
    }
}
