//! Retention: deleting what is older than the horizon, a batch at a time, with the same
//! SQL on both backends.
//!
//! Every id the server writes is a UUIDv7, whose leading 48 bits are its row's
//! creation time in milliseconds, and both databases compare uuids bytewise: the rows
//! created before the horizon are then within a range of the primary key (the stored
//! time still decides each row). Each table is walked in id
//! order from a cursor, so the rows that must stay (a pending delivery and its event, a
//! delivery that finished after the horizon) are stepped over once per run, never
//! scanned again by every batch, and no index is added to the hot tables for it.
//!
//! Tables go children first: attempts, then finished deliveries left without attempts,
//! then events left without deliveries, then finished recoveries.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::common::{Column, Dialect, Tables};
use super::rows::Micros;
use super::StoreResult;

/// A table retention purges, in the order a run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionTable {
    Attempts,
    Deliveries,
    Events,
    Recoveries,
}

impl RetentionTable {
    pub const ALL: [RetentionTable; 4] = [
        RetentionTable::Attempts,
        RetentionTable::Deliveries,
        RetentionTable::Events,
        RetentionTable::Recoveries,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetentionTable::Attempts => "attempts",
            RetentionTable::Deliveries => "deliveries",
            RetentionTable::Events => "events",
            RetentionTable::Recoveries => "recoveries",
        }
    }

    /// The next ids after `$1` below `$2` (`$3` of them), a range of the primary key.
    pub(crate) fn candidates_sql(self) -> String {
        format!(
            "SELECT id FROM {} WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3",
            self.as_str()
        )
    }

    /// Of the table's rows in a range of ids, those that may go. The id range only
    /// finds the candidates quickly; the stored time decides, so a row whose id is not
    /// a UUIDv7 of its time (imported, say) is never deleted early.
    fn deletable(self) -> &'static str {
        match self {
            RetentionTable::Attempts => "created_at < $3",
            RetentionTable::Deliveries => {
                "status <> 'pending' AND updated_at < $3 \
                 AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = deliveries.id)"
            }
            RetentionTable::Events => {
                "created_at < $3 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)"
            }
            RetentionTable::Recoveries => "status <> 'running' AND updated_at < $3",
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeStep {
    pub deleted: u64,
    /// Where the next batch starts; `None`: the table is done for this run.
    pub next: Option<Uuid>,
}

/// The smallest UUIDv7 of the millisecond `at`: every id created before it sorts
/// below.
pub fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// When a UUIDv7 was made, if `id` is one.
pub fn v7_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

// The bounds are those of the impl of `Tables` in `common`.
impl<DB: Dialect> Tables<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    Uuid: Column<DB>,
    Micros: Column<DB>,
    i64: Column<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    /// Looks at the next `batch` rows of `table` after `after` created before
    /// `horizon`, and deletes those that may go, in one write transaction.
    pub async fn purge(
        &self,
        table: RetentionTable,
        horizon: DateTime<Utc>,
        after: Uuid,
        batch: usize,
    ) -> StoreResult<PurgeStep> {
        let name = table.as_str();
        let mut tx = DB::begin_write(&self.write).await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(&table.candidates_sql())
            .bind(after)
            .bind(v7_floor(horizon))
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = ids.last().copied() else {
            return Ok(PurgeStep {
                deleted: 0,
                next: None,
            });
        };
        let done = sqlx::query(&format!(
            "DELETE FROM {name} WHERE id > $1 AND id <= $2 AND {}",
            table.deletable()
        ))
        .bind(after)
        .bind(last)
        .bind(Micros(horizon))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PurgeStep {
            deleted: DB::rows_affected(&done),
            next: (ids.len() >= batch).then_some(last),
        })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_floor_of_an_instant_sorts_below_every_id_made_after_it() {
        let at = DateTime::parse_from_rfc3339("2026-11-02T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let floor = v7_floor(at);
        assert_eq!(floor.get_version_num(), 7);
        assert_eq!(v7_time(floor), Some(at));
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.timestamp()).unwrap(),
            122_000_000,
        ));
        let after = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.timestamp()).unwrap(),
            124_000_000,
        ));
        assert!(before < floor && floor < after);
        assert!(Uuid::now_v7() > floor);
        assert_eq!(v7_time(Uuid::new_v4()), None);
    }
}
