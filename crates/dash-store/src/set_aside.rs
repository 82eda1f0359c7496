//! Events set aside: what the store refused for the event's own data (see
//! [`StoreError::is_data_error`]). A buffer actor whose batch fails that way splits it until the
//! refused events stand alone, stores the rest, and hands each refused one here, where it is kept
//! byte for byte with the store's error and counted on its pipeline. Both backends share the SQL
//! text (SQLite reads `$N` as the N-th parameter).

use crate::{BatchEvent, Store, StoreError};

const INSERT: &str = "INSERT INTO events_set_aside \
     (pipeline_id, event_id, event_time_ms, received_at_ms, payload, error, set_aside_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

const COUNT: &str = "UPDATE pipelines SET set_aside_count = set_aside_count + 1 WHERE id = $1";

/// Longest store error kept with a set-aside event.
const ERROR_MAX: usize = 1000;

/// How many events are set aside, in all, and when the latest was.
const SUMMARY: &str = "SELECT CAST(COALESCE(SUM(set_aside_count), 0) AS BIGINT), \
     (SELECT MAX(set_aside_at_ms) FROM events_set_aside) FROM pipelines";

impl Store {
    /// Keeps `event` aside with the store's `error`, counted on its pipeline; `false` when it was
    /// set aside before (a replay). One transaction.
    pub async fn set_aside(&self, event: &BatchEvent, error: &str, now_ms: i64) -> Result<bool, StoreError> {
        let error = bounded_text(error);
        let new = on_backend!(self, writer, |pool| {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(INSERT)
                .bind(&*event.pipeline)
                .bind(event.event.id.as_bytes())
                .bind(event.event.time_ms)
                .bind(event.event.received_ms)
                .bind(event.event.payload.as_bytes())
                .bind(&error)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted > 0 {
                sqlx::query(COUNT).bind(&*event.pipeline).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            inserted > 0
        });
        Ok(new)
    }

    /// Events set aside over every pipeline, and when the latest was (unix ms).
    pub async fn set_aside_summary(&self) -> Result<(i64, Option<i64>), StoreError> {
        let summary = on_backend!(self, readers, |pool| {
            sqlx::query_as::<_, (i64, Option<i64>)>(SUMMARY).fetch_one(pool).await?
        });
        Ok(summary)
    }
}

/// The error's text, without control characters, at most [`ERROR_MAX`] bytes.
fn bounded_text(error: &str) -> String {
    let mut text: String = error.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.len() > ERROR_MAX {
        let mut cut = ERROR_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

impl StoreError {
    /// Whether the store refused the batch for what its events hold, so that writing it again
    /// as it is can never succeed: PostgreSQL's data exceptions (SQLSTATE class 22: bad JSON,
    /// NUL in text, numbers out of range), integrity failures other than a duplicate key or a
    /// check (class 23) and program limits (class 54: stack depth, too large); SQLite's too-big, mismatch and
    /// constraint failures other than uniqueness. Connection, lock, timeout, disk and every other
    /// error are not: they pass, so the batch is retried as it is.
    pub fn is_data_error(&self) -> bool {
        let Self::Database(sqlx::Error::Database(db)) = self else { return false };
        if db.is_unique_violation() {
            return false;
        }
        let Some(code) = db.code() else { return false };
        if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
            // 23514 (check violation) is left out: on the partitioned layout a row routed to
            // the default partition while maintenance attaches that day's partition fails with
            // it, and succeeds when written again.
            return code.starts_with("22") || (code.starts_with("23") && code != "23514") || code.starts_with("54");
        }
        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // Extended result codes: the primary code is the low byte. SQLITE_TOOBIG (18),
            // SQLITE_CONSTRAINT (19), SQLITE_MISMATCH (20).
            let primary = code.parse::<i32>().map_or(0, |c| c & 0xff);
            return (18..=20).contains(&primary);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_bounded_and_plain() {
        assert_eq!(bounded_text("a\nb\u{0}c"), "a b c");
        let long = "é".repeat(800);
        let cut = bounded_text(&long);
        assert!(cut.len() <= ERROR_MAX && cut.chars().all(|c| c == 'é'));
    }
}
