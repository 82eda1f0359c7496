//! A view's history: the events stored before the view was made (or last changed), counted into
//! its states a bounded step at a time, without holding intake.
//!
//! - **The cut.** Making or changing a view records, under its pipeline's lock, which batches
//!   had committed: on PostgreSQL the snapshot of that moment (every event row carries the
//!   transaction that wrote it, `batch_xid`); on SQLite, whose single writer orders everything,
//!   the number of the last batch (every event row carries its batch's, `batch_seq`). A batch
//!   that sees a view counts its events into it live; such a batch had not committed at the
//!   view's cut. History counts exactly the events committed before the cut, so each event is
//!   counted once, whatever the timing.
//! - **A step** reads the next at most `max_events` events of the history after the view's mark
//!   (the last event counted, in a fixed order of events), with no lock held, and counts them.
//!   Only then does it take the pipeline's lock, for as long as merging the step's cells into the
//!   stored states takes, and moves the mark in the same transaction. A step that finds the mark
//!   moved (another node took the same step) leaves it. However many events a minute holds,
//!   a step reads at most `max_events` of them.

use std::collections::HashMap;

use dash_domain::now_ms;
use dash_views::{BatchCounter, CountedView, Groups, ViewSpec};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use crate::view_rollups::{ROLLED, Rolled};
use crate::views::{
    BackfillProgress, PipelineChanges, RAISE_VIEWS_VERSION, REQUEST_RESTART, StateRows, StoredRow, StoredStates,
    decode_stored, restart_sql_pg, restart_sql_sqlite, spec_from, stored_states_pg, stored_states_sqlite,
    write_states_pg, write_states_sqlite,
};
use crate::{Store, StoreError};

/// Events one history step counts at most. The step reads them with no lock held; merging their
/// cells holds the pipeline's lock (at most one cell per event; usually the view's groups times
/// the minutes the events span, far fewer).
pub const BACKFILL_STEP_EVENTS: i64 = 20_000;

/// The last event a view's history has counted: its time exactly as stored (PostgreSQL orders
/// by time, then key: microseconds there) and its key (the event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    at: i64,
    key: String,
}

/// A view's history as stored: the columns of [`HISTORY_ROW`].
type HistoryColumns =
    (String, String, i64, Option<String>, Option<i64>, Option<String>, bool, Option<i64>, i64, Option<i64>);

const HISTORY_ROW: &str = "SELECT spec, state_key, generation, history_cut, history_mark_time, history_mark_key, \
    history_restart, backfilled_at, backfill_events, backfill_total FROM views WHERE pipeline_id = $1 AND view_id = $2";

#[derive(Debug, Clone)]
pub(crate) struct HistoryRow {
    spec: String,
    /// Where its states are kept.
    key: String,
    generation: i64,
    cut: Option<String>,
    mark: Option<Mark>,
    /// A batch met a state it cannot read: the view is to start over.
    restart: bool,
    progress: BackfillProgress,
}

impl HistoryRow {
    fn from_columns(
        (spec, key, generation, cut, mark_time, mark_key, restart, done_at, done, total): HistoryColumns,
    ) -> Self {
        Self {
            spec,
            key,
            generation,
            cut,
            mark: mark_key.map(|key| Mark { at: mark_time.unwrap_or(0), key }),
            restart,
            progress: BackfillProgress { done: done_at.is_some(), events_done: done, events_total: total },
        }
    }
}

/// One event of a view's history: where it sits in the order, and what views read.
struct HistoryEvent {
    mark: Mark,
    time_ms: i64,
    payload: String,
    event_type: Option<String>,
}

/// What a step counted, before it is merged.
struct Counted {
    views: Vec<CountedView>,
    /// How many groups the view had when these were counted.
    groups_known: usize,
}

/// Counts `events` into the view whose states are under `key`.
fn count(key: &str, spec: &ViewSpec, groups: Vec<String>, events: &[HistoryEvent]) -> Counted {
    let groups_known = groups.len();
    let views = vec![(key.to_owned(), spec.clone())];
    let mut counter = BatchCounter::new(&views, HashMap::from([(key.to_owned(), Groups::new(groups))]));
    for event in events {
        counter.add(event.time_ms, &event.payload, event.event_type.as_deref());
    }
    Counted { views: counter.finish(), groups_known }
}

/// The events of the history after `mark`, at most `limit`, in the backend's order.
const SQLITE_EVENTS: &str = "SELECT event_time, event_time, event_id, payload, event_type FROM events \
    WHERE pipeline_id = $1 AND event_id > $2 AND (batch_seq IS NULL OR batch_seq <= CAST($3 AS INTEGER)) \
    ORDER BY event_id LIMIT $4";
/// On PostgreSQL by (time, id) along the events' (pipeline, time) index: `event_time >= $2`
/// bounds the index scan, the row comparison leaves out what was counted at that time; with no
/// mark yet ($2 and $3 NULL) it reads from the first event.
const POSTGRES_EVENTS: &str = "SELECT (extract(epoch FROM event_time) * 1000000)::int8, \
    floor(extract(epoch FROM event_time) * 1000)::int8, event_id, payload::text, event_type FROM events \
    WHERE pipeline_id = $1 AND event_time >= COALESCE($2, '-infinity') \
    AND (event_time, event_id) > (COALESCE($2, '-infinity'), COALESCE($3, '')) \
    AND (batch_xid IS NULL OR pg_visible_in_snapshot(batch_xid, $4::pg_snapshot)) \
    ORDER BY event_time, event_id LIMIT $5";

/// Where the event sits (its stored time, see [`Mark`]), its time in ms, id, payload, type.
type EventColumns = (i64, i64, String, String, Option<String>);

fn history_event((at, time_ms, key, payload, event_type): EventColumns) -> HistoryEvent {
    HistoryEvent { mark: Mark { at, key }, time_ms, payload, event_type }
}

impl Store {
    /// Counts the next step of a view's history (at most `max_events` events, see
    /// [`BACKFILL_STEP_EVENTS`]). `None` when the view is gone or has moved to another
    /// generation (that generation's history takes over).
    pub async fn backfill_step(
        &self,
        pipeline: &str,
        view: &str,
        generation: i64,
        max_events: i64,
    ) -> Result<Option<BackfillProgress>, StoreError> {
        let max_events = max_events.max(1);
        // Read with no lock held: the view's row, the next events, its groups.
        let row: Option<HistoryColumns> = on_backend!(self, readers, |pool| {
            sqlx::query_as(HISTORY_ROW).bind(pipeline).bind(view).fetch_optional(pool).await?
        });
        let Some(row) = row.map(HistoryRow::from_columns) else { return Ok(None) };
        if row.generation != generation {
            return Ok(None);
        }
        if row.restart {
            return self.restart_history(pipeline, view, generation).await;
        }
        if row.progress.done {
            return Ok(Some(row.progress));
        }
        let spec = spec_from(&row.spec)?;
        // A view made before any batch numbered: every stored event is its history.
        let cut = row.cut.clone().unwrap_or_else(|| self.no_cut().to_owned());
        let total = match row.progress.events_total {
            Some(_) => None,
            None => Some(self.events_stored(pipeline).await?),
        };
        let mut events = self.history_events(pipeline, &cut, row.mark.as_ref(), max_events).await?;
        let finished = (events.len() as i64) < max_events;
        if !finished {
            hold_back_last_run(&mut events);
        }
        let groups = self.view_groups(pipeline, &row.key).await?;
        let counted = count(&row.key, &spec, groups, &events);
        let step = Step {
            view,
            key: &row.key,
            spec: &spec,
            generation,
            from: row.mark.as_ref(),
            events: &events,
            finished,
            total,
        };
        let (progress, locked) = match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                let merged = merge_step(&mut *tx, pipeline, &step, counted).await?;
                tx.commit().await?;
                merged
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                let merged = merge_step(&mut *tx, pipeline, &step, counted).await?;
                tx.commit().await?;
                merged
            }
        };
        metrics::histogram!("dash_view_history_lock_seconds").record(locked.elapsed().as_secs_f64());
        Ok(progress)
    }

    /// Starts a view over that a batch asked to (see `REQUEST_RESTART`): `None`, its next
    /// generation takes over.
    async fn restart_history(
        &self,
        pipeline: &str,
        view: &str,
        generation: i64,
    ) -> Result<Option<BackfillProgress>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                restart_locked(&mut *tx, pipeline, view, generation).await?;
                tx.commit().await?;
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                restart_locked(&mut *tx, pipeline, view, generation).await?;
                tx.commit().await?;
            }
        }
        Ok(None)
    }

    /// The cut of a view that has none (made by a release before cuts, during a rolling
    /// upgrade): every event stored is history.
    fn no_cut(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "9223372036854775807",
            Store::Postgres(_) => "9223372036854775807:9223372036854775807:",
        }
    }

    async fn events_stored(&self, pipeline: &str) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT CAST(COALESCE(sum(event_count), 0) AS BIGINT) FROM event_rollup_minute \
            WHERE pipeline_id = $1";
        Ok(on_backend!(self, readers, |pool| sqlx::query_scalar(SQL).bind(pipeline).fetch_one(pool).await?))
    }

    /// The groups stored under a view's states `key`.
    async fn view_groups(&self, pipeline: &str, key: &str) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT grp FROM view_groups WHERE pipeline_id = $1 AND view_id = $2";
        Ok(on_backend!(self, readers, |pool| sqlx::query_scalar(SQL).bind(pipeline).bind(key).fetch_all(pool).await?))
    }

    async fn history_events(
        &self,
        pipeline: &str,
        cut: &str,
        after: Option<&Mark>,
        limit: i64,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        let rows: Vec<EventColumns> = match self {
            Store::Sqlite(s) => {
                sqlx::query_as(SQLITE_EVENTS)
                    .bind(pipeline)
                    .bind(after.map_or("", |m| m.key.as_str()))
                    .bind(cut)
                    .bind(limit)
                    .fetch_all(&s.readers)
                    .await?
            }
            Store::Postgres(s) => {
                sqlx::query_as(POSTGRES_EVENTS)
                    .bind(pipeline)
                    .bind(after.map(|m| chrono::DateTime::from_timestamp_micros(m.at).unwrap_or_default()))
                    .bind(after.map(|m| m.key.as_str()))
                    .bind(cut)
                    .bind(limit)
                    .fetch_all(&s.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(history_event).collect())
    }
}

/// Leaves the events that share the last one's place in the order to the next step (unless that
/// would leave none): the next step reads after the mark, so a run of events in one place split
/// between two steps would lose its rest. On PostgreSQL two events can share a place: the same id
/// stored again once the dedupe window has passed, at the same time.
fn hold_back_last_run(events: &mut Vec<HistoryEvent>) {
    let Some(last) = events.last().map(|e| e.mark.clone()) else { return };
    let keep = events.iter().rposition(|e| e.mark != last).map_or(0, |i| i + 1);
    if keep > 0 {
        events.truncate(keep);
    }
}

/// A step's reading, to merge under the lock.
struct Step<'a> {
    view: &'a str,
    /// Where its states are kept.
    key: &'a str,
    spec: &'a ViewSpec,
    generation: i64,
    /// The mark the events were read after.
    from: Option<&'a Mark>,
    events: &'a [HistoryEvent],
    /// Fewer events than asked for: the history ends with these.
    finished: bool,
    /// The events to count in all, when the first step learnt it.
    total: Option<i64>,
}

/// Starts the view over if it is still at `generation` and asked to be.
async fn restart_locked<T: StatesTx>(
    tx: &mut T,
    pipeline: &str,
    view: &str,
    generation: i64,
) -> Result<(), StoreError> {
    tx.lock_pipeline(pipeline).await?;
    if let Some(row) = tx.history_row(pipeline, view).await?
        && row.generation == generation
        && row.restart
    {
        tx.restart_view(pipeline, view).await?;
    }
    Ok(())
}

/// Merges a step's counted cells into the view's states and moves its mark, in a transaction
/// holding the pipeline's lock. Left undone (the progress as it stands) when another step moved
/// the mark meanwhile. With the progress, when the lock was taken.
async fn merge_step<T: StatesTx>(
    tx: &mut T,
    pipeline: &str,
    step: &Step<'_>,
    counted: Counted,
) -> Result<(Option<BackfillProgress>, std::time::Instant), StoreError> {
    tx.lock_pipeline(pipeline).await?;
    let locked = std::time::Instant::now();
    let progress = merge_locked(tx, pipeline, step, counted).await?;
    Ok((progress, locked))
}

async fn merge_locked<T: StatesTx>(
    tx: &mut T,
    pipeline: &str,
    step: &Step<'_>,
    counted: Counted,
) -> Result<Option<BackfillProgress>, StoreError> {
    let Some(row) = tx.history_row(pipeline, step.view).await? else { return Ok(None) };
    if row.generation != step.generation {
        return Ok(None);
    }
    if row.restart {
        tx.restart_view(pipeline, step.view).await?;
        return Ok(None);
    }
    if row.progress.done || row.mark.as_ref() != step.from {
        return Ok(Some(row.progress));
    }
    // Groups taken by live batches since the events were counted: count again with them (in
    // memory), so the step names the groups a batch would.
    let groups = tx.groups(pipeline, step.key).await?;
    let counted =
        if groups.len() == counted.groups_known { counted } else { count(step.key, step.spec, groups, step.events) };
    let changes = PipelineChanges { per_view: counted.views };
    let keys: Vec<(&str, i64, &str)> = changes.keys().collect();
    let stored = tx.stored_states(pipeline, &keys).await?;
    let StoredStates { cells, newer, broken } = decode_stored(pipeline, stored);
    drop(keys);
    if !broken.is_empty() {
        tx.restart_view(pipeline, step.view).await?;
        return Ok(None);
    }
    let (rows, new_groups) = changes.merged(cells, &newer);
    tx.write_states(pipeline, rows, new_groups).await?;
    let mark = step.events.last().map(|e| &e.mark).or(step.from);
    let progress =
        tx.save_history(pipeline, step.view, mark, step.events.len() as i64, step.total, step.finished).await?;
    Ok(Some(progress))
}

const SAVE_HISTORY: &str = "UPDATE views SET history_mark_time = $3, history_mark_key = $4, \
    backfill_events = backfill_events + $5, backfill_total = COALESCE(backfill_total, $6), backfilled_at = $7 \
    WHERE pipeline_id = $1 AND view_id = $2 \
    RETURNING backfill_events, backfill_total, backfilled_at";

/// What a history step (and a rollup step, [`crate::view_rollups`]) needs of a transaction, on
/// either backend: the same steps, each backend's own statements.
pub(crate) trait StatesTx {
    /// Takes the lock every batch of the pipeline takes before it counts into views.
    async fn lock_pipeline(&mut self, pipeline: &str) -> Result<(), StoreError>;
    async fn history_row(&mut self, pipeline: &str, view: &str) -> Result<Option<HistoryRow>, StoreError>;
    /// The groups stored under a view's states `key`.
    async fn groups(&mut self, pipeline: &str, key: &str) -> Result<Vec<String>, StoreError>;
    async fn stored_states(&mut self, pipeline: &str, keys: &[(&str, i64, &str)])
    -> Result<Vec<StoredRow>, StoreError>;
    async fn write_states(
        &mut self,
        pipeline: &str,
        rows: StateRows,
        new_groups: Vec<(String, String)>,
    ) -> Result<(), StoreError>;
    /// Moves the mark, adds `counted` to the progress, and ends the history when `finished`.
    async fn save_history(
        &mut self,
        pipeline: &str,
        view: &str,
        mark: Option<&Mark>,
        counted: i64,
        total: Option<i64>,
        finished: bool,
    ) -> Result<BackfillProgress, StoreError>;
    /// Starts the view over (a state of it cannot be read).
    async fn restart_view(&mut self, pipeline: &str, view: &str) -> Result<(), StoreError>;
    /// Asks for the view whose states are under `key` to start over (see `REQUEST_RESTART`).
    async fn request_restart(&mut self, pipeline: &str, key: &str) -> Result<(), StoreError>;
    /// The definition of the view whose states are under `key`, if its levels may be rolled
    /// (its history done, no restart asked for).
    async fn rolling_view(&mut self, pipeline: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// How far each level of the view whose states are under `key` is rolled.
    async fn rolled(&mut self, pipeline: &str, key: &str) -> Result<Rolled, StoreError>;
    /// The time of the first state under `key`.
    async fn first_state(&mut self, pipeline: &str, key: &str) -> Result<Option<i64>, StoreError>;
    /// The states under `key` in `[from, to)`, at most `limit`, by time.
    async fn states_between(
        &mut self,
        pipeline: &str,
        key: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError>;
    /// Records how far a level is rolled, and makes batches read it (`views_version`).
    async fn set_rolled(&mut self, pipeline: &str, key: &str, level: &str, to: i64) -> Result<(), StoreError>;
}

/// The statements of [`StatesTx`] whose SQL is the same on both backends, written once for both
/// impls.
macro_rules! history_statements {
    () => {
        async fn history_row(&mut self, pipeline: &str, view: &str) -> Result<Option<HistoryRow>, StoreError> {
            let row: Option<HistoryColumns> =
                sqlx::query_as(HISTORY_ROW).bind(pipeline).bind(view).fetch_optional(&mut *self).await?;
            Ok(row.map(HistoryRow::from_columns))
        }

        async fn groups(&mut self, pipeline: &str, key: &str) -> Result<Vec<String>, StoreError> {
            Ok(sqlx::query_scalar("SELECT grp FROM view_groups WHERE pipeline_id = $1 AND view_id = $2")
                .bind(pipeline)
                .bind(key)
                .fetch_all(&mut *self)
                .await?)
        }

        async fn save_history(
            &mut self,
            pipeline: &str,
            view: &str,
            mark: Option<&Mark>,
            counted: i64,
            total: Option<i64>,
            finished: bool,
        ) -> Result<BackfillProgress, StoreError> {
            let (events_done, events_total, done_at): (i64, Option<i64>, Option<i64>) = sqlx::query_as(SAVE_HISTORY)
                .bind(pipeline)
                .bind(view)
                .bind(mark.map(|m| m.at))
                .bind(mark.map(|m| m.key.as_str()))
                .bind(counted)
                .bind(total)
                .bind(finished.then(now_ms))
                .fetch_one(&mut *self)
                .await?;
            Ok(BackfillProgress { done: done_at.is_some(), events_done, events_total })
        }

        async fn request_restart(&mut self, pipeline: &str, key: &str) -> Result<(), StoreError> {
            sqlx::query(REQUEST_RESTART).bind(pipeline).bind(key).execute(&mut *self).await?;
            Ok(())
        }

        async fn rolling_view(&mut self, pipeline: &str, key: &str) -> Result<Option<String>, StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT spec FROM views WHERE pipeline_id = $1 AND state_key = $2 \
                 AND backfilled_at IS NOT NULL AND NOT history_restart",
            )
            .bind(pipeline)
            .bind(key)
            .fetch_optional(&mut *self)
            .await?)
        }

        async fn rolled(&mut self, pipeline: &str, key: &str) -> Result<Rolled, StoreError> {
            let rows: Vec<(String, i64)> =
                sqlx::query_as(ROLLED).bind(pipeline).bind(key).fetch_all(&mut *self).await?;
            Ok(Rolled::from_rows(rows))
        }

        async fn first_state(&mut self, pipeline: &str, key: &str) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT minute FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 ORDER BY minute LIMIT 1",
            )
            .bind(pipeline)
            .bind(key)
            .fetch_optional(&mut *self)
            .await?)
        }

        async fn states_between(
            &mut self,
            pipeline: &str,
            key: &str,
            from: i64,
            to: i64,
            limit: i64,
        ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT minute, grp, state FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 \
                 AND minute >= $3 AND minute < $4 ORDER BY minute LIMIT $5",
            )
            .bind(pipeline)
            .bind(key)
            .bind(from)
            .bind(to)
            .bind(limit)
            .fetch_all(&mut *self)
            .await?)
        }

        async fn set_rolled(&mut self, pipeline: &str, key: &str, level: &str, to: i64) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO view_rollups (pipeline_id, state_key, level, rolled_to) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (pipeline_id, state_key, level) DO UPDATE SET rolled_to = excluded.rolled_to",
            )
            .bind(pipeline)
            .bind(key)
            .bind(level)
            .bind(to)
            .execute(&mut *self)
            .await?;
            sqlx::query(RAISE_VIEWS_VERSION).bind(pipeline).execute(&mut *self).await?;
            Ok(())
        }
    };
}

impl StatesTx for SqliteConnection {
    history_statements!();

    async fn lock_pipeline(&mut self, _pipeline: &str) -> Result<(), StoreError> {
        // `BEGIN IMMEDIATE` took the writer.
        Ok(())
    }

    async fn restart_view(&mut self, pipeline: &str, view: &str) -> Result<(), StoreError> {
        restart_sql_sqlite(self, pipeline, view).await
    }

    async fn stored_states(
        &mut self,
        pipeline: &str,
        keys: &[(&str, i64, &str)],
    ) -> Result<Vec<StoredRow>, StoreError> {
        stored_states_sqlite(self, pipeline, keys).await
    }

    async fn write_states(
        &mut self,
        pipeline: &str,
        rows: StateRows,
        new_groups: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        write_states_sqlite(self, pipeline, rows, new_groups).await.map(drop)
    }
}

impl StatesTx for PgConnection {
    history_statements!();

    async fn lock_pipeline(&mut self, pipeline: &str) -> Result<(), StoreError> {
        // The lock every batch commit takes.
        sqlx::query("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE").bind(pipeline).execute(&mut *self).await?;
        Ok(())
    }

    async fn restart_view(&mut self, pipeline: &str, view: &str) -> Result<(), StoreError> {
        restart_sql_pg(self, pipeline, view).await
    }

    async fn stored_states(
        &mut self,
        pipeline: &str,
        keys: &[(&str, i64, &str)],
    ) -> Result<Vec<StoredRow>, StoreError> {
        stored_states_pg(self, pipeline, keys).await
    }

    async fn write_states(
        &mut self,
        pipeline: &str,
        rows: StateRows,
        new_groups: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        write_states_pg(self, pipeline, rows, new_groups).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: i64, key: &str) -> HistoryEvent {
        HistoryEvent { mark: Mark { at, key: key.to_owned() }, time_ms: at, payload: "{}".into(), event_type: None }
    }

    #[test]
    fn a_step_never_ends_inside_a_run_of_events_in_one_place() {
        let marks =
            |events: &[HistoryEvent]| events.iter().map(|e| (e.mark.at, e.mark.key.clone())).collect::<Vec<_>>();
        let mut events = vec![at(1, "a"), at(2, "b"), at(2, "c"), at(2, "c")];
        hold_back_last_run(&mut events);
        assert_eq!(marks(&events), [(1, "a".to_owned()), (2, "b".to_owned())]);
        let mut events = vec![at(1, "a"), at(2, "b")];
        hold_back_last_run(&mut events);
        assert_eq!(marks(&events), [(1, "a".to_owned())], "the last event is read again next step");
        let mut events = vec![at(2, "c"), at(2, "c")];
        hold_back_last_run(&mut events);
        assert_eq!(events.len(), 2, "a step made of one place keeps it");
    }
}
