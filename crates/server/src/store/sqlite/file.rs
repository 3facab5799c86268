//! The SQLite database file: created private to the server's user, and its WAL kept
//! small by a checkpoint loop of its own.

use std::io;
use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;

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
/// writer, so the WAL stays small without a commit ever paying for it. Stops when the
/// store's writer pool closes.
pub(super) async fn checkpoint_loop(mut conn: sqlx::SqliteConnection, writer: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !writer.is_closed() {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}
