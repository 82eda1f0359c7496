//! The TimescaleDB layout: `events` is a hypertable on `event_time` with one-day chunks, and
//! everything else is as on the partitioned layout. In particular the per-minute rollup is
//! written in each batch's transaction (the same statement as on the partitioned layout), so a
//! series is exactly as true as the event count whatever TimescaleDB's job scheduler does:
//! history older than any refresh window, late events and retention deletes are all exact. No
//! continuous aggregate is used; databases that got one from an earlier version have it dropped
//! (and the rollup rebuilt from the events) at their next migration.
//!
//! Supported: TimescaleDB 2.x loaded through `shared_preload_libraries`, with the Timescale
//! License or Apache-only (`timescaledb.license = 'apache'`): only Apache features are used
//! (hypertables, `drop_chunks`). A server where the extension is installed but not preloaded,
//! or cannot be created, gets the partitioned layout; a database keeps the layout it has.
//!
//! Chunks are made ahead of the batches that need them ([`ensure_chunks`]): a transaction that
//! creates a chunk holds a lock on the hypertable until it commits, so creating one inside a
//! batch would make every other batch in flight wait on it (and, several batches in flight per
//! partition, could hold them all until `lock_timeout`). A chunk is made in a short transaction
//! of its own by inserting a placeholder row and deleting it; the chunk stays.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;

use crate::StoreError;

/// What the server offers: whether `timescaledb` is installed, whether it is preloaded, and
/// (when loaded) its license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub available: bool,
    pub preloaded: bool,
    /// `timescale` or `apache`; `None` when the library is not loaded.
    pub license: Option<String>,
}

impl Offer {
    /// Why the hypertable layout cannot be used here, if it cannot.
    pub fn refusal(&self) -> Option<&'static str> {
        match (self.available, self.preloaded) {
            (false, _) => Some("the timescaledb extension is not installed"),
            (true, false) => Some("timescaledb is installed but not in shared_preload_libraries"),
            (true, true) => None,
        }
    }
}

/// Reads the server's offer without touching the extension (creating it when it is not
/// preloaded ends the connection with a FATAL error). Readable by any role:
/// `shared_preload_libraries` itself is hidden from roles that are not superusers, but
/// TimescaleDB's loader, once preloaded, defines its server-start settings in every session
/// (`timescaledb.max_background_workers`, context `postmaster`), which is how "preloaded" is told.
pub async fn offer(conn: &mut PgConnection) -> Result<Offer, StoreError> {
    let (available, preloaded, license): (bool, bool, Option<String>) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), \
         EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers' \
                 AND context = 'postmaster'), \
         current_setting('timescaledb.license', true)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Offer { available, preloaded, license: license.filter(|l| !l.is_empty()) })
}

/// Creates the extension, the hypertable and its index, in the caller's transaction.
pub async fn create_events(conn: &mut PgConnection) -> Result<(), StoreError> {
    let create_table = format!("CREATE TABLE IF NOT EXISTS events ({})", crate::postgres::EVENTS_COLUMNS);
    let statements: [&str; 4] = [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        &create_table,
        "SELECT create_hypertable('events', 'event_time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)",
        // Ascending: new events append at its right-hand end (see migration 0005).
        "CREATE INDEX IF NOT EXISTS events_pipeline_time ON events (pipeline_id, event_time)",
    ];
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// An earlier version's continuous aggregate: dropped, and the rollup table rebuilt from the
/// events it was standing in for. Idempotent; true when there was one.
pub async fn retire_continuous_aggregate(conn: &mut PgConnection) -> Result<bool, StoreError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('event_rollup_minute_cagg') IS NOT NULL").fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(false);
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("DELETE FROM event_rollup_minute").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO event_rollup_minute (pipeline_id, minute, event_count) \
         SELECT pipeline_id, date_trunc('minute', event_time), count(*) FROM events GROUP BY 1, 2",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("DROP MATERIALIZED VIEW event_rollup_minute_cagg").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(true)
}

/// Makes sure a chunk covers each of `days` (starts of UTC days, unix ms); returns how many
/// were made. Each in a short transaction of its own, outside any batch.
pub async fn ensure_chunks(conn: &mut PgConnection, days: &[i64]) -> Result<u64, StoreError> {
    let mut made = 0;
    for &day in days {
        let at: DateTime<Utc> = DateTime::from_timestamp_millis(day).unwrap_or_default();
        let covered: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.chunks \
             WHERE hypertable_schema = current_schema() AND hypertable_name = 'events' \
             AND range_start <= $1 AND range_end > $1)",
        )
        .bind(at)
        .fetch_one(&mut *conn)
        .await?;
        if covered {
            continue;
        }
        // sqlx's transaction: dropped unfinished (an error, a cancelled task), it is rolled back
        // before the connection is used again, placeholder and all.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO events (pipeline_id, event_id, event_time, received_at, payload) \
             VALUES ('', '', $1, $1, '{}')",
        )
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM events WHERE pipeline_id = '' AND event_id = '' AND event_time = $1")
            .bind(at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        made += 1;
    }
    Ok(made)
}

/// Drops the chunks that end before `before`; returns how many went.
pub async fn drop_chunks_before(conn: &mut PgConnection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    // Databases set up before retention was per pipeline had a table-wide policy, which would
    // drop what a longer-lived pipeline keeps.
    // (Policies exist only under the Timescale License: an Apache-only server has none to remove.)
    let policy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_retention' AND hypertable_name = 'events')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if policy
        && let Err(err) =
            sqlx::query("SELECT remove_retention_policy('events', if_exists => TRUE)").execute(&mut *conn).await
    {
        // A server that has since gone Apache-only cannot remove it; drop_chunks still works.
        tracing::warn!(error = %err, "timescaledb: an earlier retention policy could not be removed");
    }
    let dropped: Vec<String> = sqlx::query_scalar("SELECT drop_chunks('events', older_than => $1)::text")
        .bind(before)
        .fetch_all(&mut *conn)
        .await?;
    Ok(dropped.len() as u64)
}
