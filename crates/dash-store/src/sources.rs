//! Polling sources: what a pipeline fetches and when, and what its polls did.
//!
//! The store keeps the source as opaque JSON (`spec`); its meaning belongs to the job runner.
//! Both backends share the SQL text: SQLite reads `$N` as the N-th parameter too.

use sqlx::Row;

use crate::{Store, StoreError};

/// A pipeline's source as stored, with the record of its polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub pipeline: String,
    /// The source as configured (JSON text, secrets included: never show it as is).
    pub spec: String,
    /// Unix ms of the last change to `spec`.
    pub updated_at: i64,
    pub cursor: Option<String>,
    pub runs: i64,
    pub failures: i64,
    pub consecutive_failures: i64,
    pub events_total: i64,
    pub last_tick: Option<i64>,
    pub last_run_at: Option<i64>,
    pub last_ok_at: Option<i64>,
    pub last_events: Option<i64>,
    pub last_error: Option<String>,
}

/// How one poll ended, as the job runner reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Fetched and handed to intake: how many events the response held.
    Fetched { events: i64 },
    /// Every attempt failed; the last error, safe to show (no secrets).
    Failed { error: String },
}

const SOURCE_COLUMNS: &str = "pipeline_id, spec, updated_at, cursor, runs, failures, consecutive_failures, \
     events_total, last_tick, last_run_at, last_ok_at, last_events, last_error";

const UPSERT: &str = "INSERT INTO pipeline_sources (pipeline_id, spec, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (pipeline_id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at";

const DELETE: &str = "DELETE FROM pipeline_sources WHERE pipeline_id = $1";

const RECORD_RUN: &str = "UPDATE pipeline_sources SET \
     runs = runs + 1, last_tick = $2, last_run_at = $3, \
     failures = failures + $4, \
     consecutive_failures = CASE WHEN $4 = 1 THEN consecutive_failures + 1 ELSE 0 END, \
     last_ok_at = CASE WHEN $4 = 0 THEN $3 ELSE last_ok_at END, \
     last_events = CASE WHEN $4 = 0 THEN $5 ELSE last_events END, \
     events_total = events_total + $5, \
     last_error = $6 \
     WHERE pipeline_id = $1";

/// A cursor only moves forward in tick order: a slow poll of an older tick cannot undo a newer one.
const SAVE_CURSOR: &str = "UPDATE pipeline_sources SET cursor = $2, cursor_tick = $3 \
     WHERE pipeline_id = $1 AND (cursor_tick IS NULL OR cursor_tick < $3)";

macro_rules! source_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, sqlx::Error>(SourceRecord {
            pipeline: row.try_get("pipeline_id")?,
            spec: row.try_get("spec")?,
            updated_at: row.try_get("updated_at")?,
            cursor: row.try_get("cursor")?,
            runs: row.try_get("runs")?,
            failures: row.try_get("failures")?,
            consecutive_failures: row.try_get("consecutive_failures")?,
            events_total: row.try_get("events_total")?,
            last_tick: row.try_get("last_tick")?,
            last_run_at: row.try_get("last_run_at")?,
            last_ok_at: row.try_get("last_ok_at")?,
            last_events: row.try_get("last_events")?,
            last_error: row.try_get("last_error")?,
        })
    }};
}

impl Store {
    /// Sets (or replaces) a pipeline's source. The pipeline must exist.
    pub async fn set_source(&self, pipeline: &str, spec: &str, now_ms: i64) -> Result<(), StoreError> {
        let result = on_backend!(self, writer, |pool| {
            sqlx::query(UPSERT).bind(pipeline).bind(spec).bind(now_ms).execute(pool).await.map(|_| ())
        });
        match result {
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::NotFound(pipeline.to_owned()))
            }
            other => Ok(other?),
        }
    }

    /// Removes a pipeline's source; `false` when it had none.
    pub async fn remove_source(&self, pipeline: &str) -> Result<bool, StoreError> {
        let done = on_backend!(self, writer, |pool| {
            sqlx::query(DELETE).bind(pipeline).execute(pool).await.map(|r| r.rows_affected())
        })?;
        Ok(done > 0)
    }

    pub async fn source(&self, pipeline: &str) -> Result<Option<SourceRecord>, StoreError> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM pipeline_sources WHERE pipeline_id = $1");
        let found = on_backend!(self, readers, |pool| {
            match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pipeline).fetch_optional(pool).await? {
                Some(row) => Some(source_from_row!(row)?),
                None => None,
            }
        });
        Ok(found)
    }

    pub async fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM pipeline_sources ORDER BY pipeline_id");
        let found = on_backend!(self, readers, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
            rows.iter().map(|row| source_from_row!(row)).collect::<Result<Vec<_>, _>>()?
        });
        Ok(found)
    }

    /// Records one poll (one tick): counts, last error, last events.
    pub async fn record_poll(
        &self,
        pipeline: &str,
        tick_ms: i64,
        at_ms: i64,
        outcome: &PollOutcome,
    ) -> Result<(), StoreError> {
        let (failed, events, error): (i64, i64, Option<&str>) = match outcome {
            PollOutcome::Fetched { events } => (0, *events, None),
            PollOutcome::Failed { error } => (1, 0, Some(error)),
        };
        on_backend!(self, writer, |pool| {
            sqlx::query(RECORD_RUN)
                .bind(pipeline)
                .bind(tick_ms)
                .bind(at_ms)
                .bind(failed)
                .bind(events)
                .bind(error)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// Saves the cursor a poll of `tick_ms` read, unless a later tick already saved one.
    pub async fn save_cursor(&self, pipeline: &str, cursor: &str, tick_ms: i64) -> Result<(), StoreError> {
        on_backend!(self, writer, |pool| {
            sqlx::query(SAVE_CURSOR).bind(pipeline).bind(cursor).bind(tick_ms).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }
}
