//! The TimescaleDB path, kept small and in one place because it cannot be tested on machines
//! without the extension (the native-partitioning path is the tested one).
//!
//! What it sets up, once per database, outside any transaction (continuous aggregates cannot
//! be created inside one):
//! - `events` as a hypertable on `event_time`, one-day chunks;
//! - the (pipeline, time) index the read API scans backwards;
//! - `event_rollup_minute_cagg`, a real-time continuous aggregate of events per minute, with a
//!   refresh policy; the batch path then skips the app-maintained rollup table;
//!
//! Retention is per pipeline, so there is no TimescaleDB retention policy (it knows one age
//! for the whole table): maintenance drops the chunks no pipeline keeps anything in and
//! deletes the rest row by row.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;

use crate::StoreError;

/// The continuous aggregate the series query reads on this layout.
pub const ROLLUP_VIEW: &str = "event_rollup_minute_cagg";

/// Whether the server offers the extension at all (creating it may still fail, e.g. when it is
/// not in `shared_preload_libraries` or the role may not create extensions).
pub async fn available(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')")
        .fetch_one(&mut *conn)
        .await?)
}

/// Creates the extension, the hypertable, the aggregate and its refresh policy. Idempotent.
pub async fn create_events(conn: &mut PgConnection) -> Result<(), StoreError> {
    let create_table = format!("CREATE TABLE IF NOT EXISTS events ({})", crate::postgres::EVENTS_COLUMNS);
    let statements: [&str; 6] = [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        &create_table,
        "SELECT create_hypertable('events', 'event_time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)",
        "CREATE INDEX IF NOT EXISTS events_pipeline_time ON events (pipeline_id, event_time)",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS event_rollup_minute_cagg
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT pipeline_id, time_bucket(INTERVAL '1 minute', event_time) AS minute, count(*) AS event_count
            FROM events GROUP BY pipeline_id, minute
            WITH NO DATA",
        "SELECT add_continuous_aggregate_policy('event_rollup_minute_cagg',
            start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)",
    ];
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Drops the chunks that end before `before`; returns how many went.
pub async fn drop_chunks_before(conn: &mut PgConnection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    // Databases set up before retention was per pipeline had a table-wide policy, which would
    // drop what a longer-lived pipeline keeps.
    sqlx::query("SELECT remove_retention_policy('events', if_exists => TRUE)").execute(&mut *conn).await?;
    let dropped: Vec<String> = sqlx::query_scalar("SELECT drop_chunks('events', older_than => $1)::text")
        .bind(before)
        .fetch_all(&mut *conn)
        .await?;
    Ok(dropped.len() as u64)
}
