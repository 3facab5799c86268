//! The SQLite database file: created private to the server's user, and its WAL kept
//! small by a checkpoint loop of its own.

use std::io;
use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;

use super::direct::Direct;

/// How often the WAL is checkpointed (see [`checkpoint_loop`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Creates a directory and its missing parents, readable only by the server's user
/// (0700 on Unix). An existing directory keeps its mode: it may be the operator's.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The database holds signing secrets and `auth_header` values, so only the server's
/// user may read it. Creates the parent directory (0700) and the file (0600) before
/// SQLite opens it; SQLite gives the `-wal` and `-shm` files it creates later the
/// database file's permissions. Files left readable to others (by an older version)
/// are tightened.
pub(super) fn prepare_private_file(file: &Path) -> io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut path = file.as_os_str().to_owned();
            path.push(suffix);
            let path = std::path::PathBuf::from(path);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                if let Err(e) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                {
                    tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "database file is readable by other users and cannot be restricted"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Checkpoints the WAL into the database file every [`CHECKPOINT_EVERY`], in PASSIVE
/// mode: it copies what no reader still needs and never waits for (nor blocks) the
/// writer, so no commit pays for the copying. Stops when the store's writer pool
/// closes.
///
/// SQLite starts the WAL over from its beginning only when a write begins with every
/// frame already copied. Under steady writes a commit nearly always runs across the
/// end of the copy (and the copy then looks complete), so the WAL would grow for as
/// long as the load lasts: about 100 KB per event, every frame a new block of the
/// file and another entry for every read to search. So whenever the WAL moved since
/// the last round, what came in during the copy is copied again with the writer
/// held: a few frames and two syncs (an fsync took 0.25 ms on the usual machine) that
/// writes wait for, after which the next write starts the WAL over.
pub(super) async fn checkpoint_loop(
    mut conn: sqlx::SqliteConnection,
    writer: SqlitePool,
    direct: Direct,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    while !writer.is_closed() {
        tick.tick().await;
        let copied = match checkpoint(&mut conn).await {
            Ok(progress) => progress,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                continue;
            }
        };
        if last == Some(copied) && copied.copied == copied.log {
            // Nothing written since the last round, and all of it copied.
            continue;
        }
        // The direct writes, then the writer pool's one connection (in the order a
        // direct write takes them): no write is in progress meanwhile.
        let _direct = direct.hold().await;
        let Ok(_held) = writer.acquire().await else {
            continue;
        };
        match checkpoint(&mut conn).await {
            Ok(progress) => last = Some(progress),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// What a checkpoint left: frames in the WAL, and how many of them are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    log: i64,
    copied: i64,
}

/// One PASSIVE checkpoint on `conn`.
async fn checkpoint(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<Progress> {
    let (_busy, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await?;
    Ok(Progress { log, copied })
}
